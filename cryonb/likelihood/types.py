"""Shared data types of the likelihood engines and their small host helpers.

One job: the values that cross the boundary between the engines (:mod:`.host`,
:mod:`.device`), importance sampling (:mod:`cryonb.importance`) and the solver --
:class:`PreparedImages` (a minibatch reduced to half-plane Fourier data), :class:`PoseSubset`
(the tensor-product quadrature subset of one image with its importance weights, Eqs. 10-13)
and :class:`LikelihoodResult` (the per-image log-likelihood of Eq. 4, its posterior marginals,
MAP poses and gradient) -- and the helpers both engines use: the Hermitian half-plane of the
band-limit disc (the weights ``m`` of the sum in Eq. 4), the noise estimate ``sigma_b`` of the
Gaussian noise model, dtype helpers and a float64 log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..fourier import fourier_indices
from ..quadrature import Quadrature

__all__ = [
    "LikelihoodResult",
    "PoseSubset",
    "PreparedImages",
    "estimate_noise_sigma",
    "hermitian_half_plane",
]


# ---------------------------------------------------------------------------------- helpers
def hermitian_half_plane(coords_px: ArrayLike, box_size: int) -> tuple[NDArray, NDArray]:
    """Select one member of each Hermitian pair of a symmetric set of 2D frequencies.

    Parameters
    ----------
    coords_px : (M, 2) integer frequencies ``(kx, ky)`` (e.g. ``ImageModel.coords_px``); the set
        must be closed under ``k -> -k`` (modulo N for Nyquist components)
    box_size : N

    Returns
    -------
    index : (Mh,) int64, the points with ``ky > 0`` or ``(ky == 0 and kx >= 0)`` (for even N
        the rows ``ky = -N/2`` are treated like ``ky = 0``), in their original order
    weight : (Mh,) float64, 2 for points whose partner ``-k`` is a different point, 1 for
        self-conjugate points (``k = 0``; ``kx, ky in {0, -N/2}`` for even N)

    ``sum_{all M} f(k) = sum_{half} weight * f(k)`` for every ``f`` with ``f(-k) = f(k)``.
    """
    k = np.rint(np.asarray(coords_px, dtype=np.float64)).astype(np.int64)
    n = int(box_size)
    wrapped = (k + n // 2) % n - n // 2  # canonical representative of k mod N
    neg = (-k + n // 2) % n - n // 2
    self_conj = np.all(wrapped == neg, axis=1)
    # keep k when it is lexicographically (ky, kx) above its partner -k: the upper half plane,
    # the right half of the ky = 0 row and, for even N, of the unpaired ky = -N/2 row
    upper = (wrapped[:, 1] > neg[:, 1]) | ((wrapped[:, 1] == neg[:, 1])
                                           & (wrapped[:, 0] > neg[:, 0]))
    keep = upper | self_conj
    present = {tuple(p) for p in wrapped.tolist()}
    missing = [tuple(p) for p in neg[upper].tolist() if tuple(p) not in present]
    if missing:
        raise ValueError(f"frequency set is not Hermitian-symmetric, e.g. {missing[0]} missing")
    index = np.flatnonzero(keep)
    weight = np.where(self_conj[index], 1.0, 2.0)
    return index, weight


def estimate_noise_sigma(images: ArrayLike, radius_px: float | None = None,
                         method: str = "std") -> float:
    """Noise standard deviation per pixel from the pixels outside the particle (pooled).

    The paper: "the standard deviation of pixels around the boundary of the particle images".

    Parameters
    ----------
    images : (B, N, N) real images
    radius_px : pixels farther than this from the centre ``N // 2`` are used
        (default ``N / 2 - 1.5``, the reference's: the corners of the box)
    method : ``"std"`` (standard deviation after subtracting each image's background mean) or
        ``"mad"`` (``1.4826 * median |x - median|``, robust, as the reference)
    """
    img = np.asarray(images, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    n = img.shape[-1]
    r = n / 2 - 1.5 if radius_px is None else float(radius_px)
    k = fourier_indices(n)
    yy, xx = np.meshgrid(k, k, indexing="ij")
    outside = (xx**2 + yy**2) > r * r
    if outside.sum() < 2:
        raise ValueError("no background pixels outside radius_px")
    pix = img[:, outside]
    if method == "std":
        pix = pix - pix.mean(axis=1, keepdims=True)
        return float(np.sqrt((pix**2).sum() / max(pix.size - pix.shape[0], 1)))
    if method == "mad":
        pix = pix - np.median(pix, axis=1, keepdims=True)
        return float(1.4826 * np.median(np.abs(pix)))
    raise ValueError(f"unknown method {method!r}; use 'std' or 'mad'")


def _real_dtype(dtype: Any) -> Any:
    return np.float32 if np.dtype(dtype) in (np.float32, np.complex64) else np.float64


def _complex_dtype(dtype: Any) -> Any:
    return np.complex64 if _real_dtype(dtype) == np.float32 else np.complex128


def _noise_sigmas(noise_sigma: float | ArrayLike, b: int) -> NDArray:
    """(b,) float64 noise standard deviations from a scalar or (b,), checked positive."""
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), (b,)).copy()
    if np.any(sigma <= 0):
        raise ValueError("noise_sigma must be positive")
    return sigma


def _log_norm(energy: NDArray, sigma: NDArray, box_size: int, n_disc: int) -> NDArray:
    """The pose-independent part of the log-likelihood of Eq. 4,
    ``-energy / (2 N^2 sigma^2) - (M / 2) log(2 pi sigma^2)`` with ``energy = sum_half m |y|^2``."""
    n = box_size
    return -energy / (2.0 * n * n * sigma**2) - 0.5 * n_disc * np.log(2 * np.pi * sigma**2)


def _logsumexp(a: NDArray, axis: int = -1) -> NDArray:
    a = np.asarray(a, dtype=np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True, eq=False)
class PreparedImages:
    """Images reduced to what the likelihood needs; reuse across evaluations of one batch.

    Attributes
    ----------
    data : (B, Mh) complex, the images' centred FFT at the half-plane points
    ctf : (B, Mh) real CTF at the same points, or None (no CTF)
    noise_sigma : (B,) float64, real-space noise standard deviation per pixel
    log_norm : (B,) float64, the pose-independent part of the log-likelihood,
        ``-sum_half m |y|^2 / (2 N^2 sigma^2) - (M / 2) log(2 pi sigma^2)``
    """

    data: Any
    ctf: Any
    noise_sigma: NDArray
    log_norm: NDArray

    @property
    def n_images(self) -> int:
        """B."""
        return int(self.data.shape[0])

    def subset(self, index: ArrayLike) -> PreparedImages:
        """The images selected by ``index``."""
        idx = np.asarray(index)
        return PreparedImages(self.data[idx], None if self.ctf is None else self.ctf[idx],
                              self.noise_sigma[idx], self.log_norm[idx])


@dataclass(frozen=True, eq=False)
class PoseSubset:
    """A tensor-product subset of the quadrature for one image, with importance weights.

    The image is evaluated at every ``(directions[a], inplane[b], shifts[c])``; the term gets
    the quadrature weight times ``exp(log_is_directions[a] + log_is_inplane[b] +
    log_is_shifts[c])``, the importance weights ``count / (n q)`` of Eq. (10)-(13).  Zero log
    weights with all indices give the exhaustive sum.
    """

    directions: NDArray
    inplane: NDArray
    shifts: NDArray
    log_is_directions: NDArray
    log_is_inplane: NDArray
    log_is_shifts: NDArray

    def __post_init__(self) -> None:
        for name in ("directions", "inplane", "shifts"):
            v = np.asarray(getattr(self, name), np.int64).ravel()
            if v.size == 0:
                raise ValueError(f"empty {name}: a PoseSubset needs at least one index per domain")
            object.__setattr__(self, name, v)
        for name, ref in (("log_is_directions", self.directions),
                          ("log_is_inplane", self.inplane), ("log_is_shifts", self.shifts)):
            v = np.asarray(getattr(self, name), np.float64).ravel()
            if v.shape != ref.shape:
                raise ValueError(f"{name} has shape {v.shape}, expected {ref.shape}")
            object.__setattr__(self, name, v)

    @classmethod
    def full(cls, quadrature: Quadrature) -> PoseSubset:
        """Every point, importance weight 1 (the exhaustive sum)."""
        nd, ni, ns = quadrature.n_directions, quadrature.n_inplane, quadrature.n_shifts
        return cls(np.arange(nd), np.arange(ni), np.arange(ns), np.zeros(nd), np.zeros(ni),
                   np.zeros(ns))

    @property
    def n_points(self) -> int:
        """Number of (direction, in-plane, shift) points evaluated."""
        return len(self.directions) * len(self.inplane) * len(self.shifts)

    @property
    def has_importance_weights(self) -> bool:
        """True unless every log importance weight is 0."""
        return bool(np.any(self.log_is_directions) or np.any(self.log_is_inplane)
                    or np.any(self.log_is_shifts))

    def _key(self) -> bytes:
        return b"|".join(a.tobytes() for a in (self.directions, self.inplane, self.shifts,
                                               self.log_is_directions, self.log_is_inplane,
                                               self.log_is_shifts))


@dataclass(frozen=True, eq=False)
class LikelihoodResult:
    """Output of :meth:`MarginalLikelihood.evaluate`.

    Attributes
    ----------
    log_likelihood : (B,) float64, ``log p(I_b | theta_b, V)`` of Eq. (4) (its importance
        sampling estimate, Eq. 13, when subsets were given)
    log_marginal_directions, log_marginal_inplane, log_marginal_shifts : (B, Nd), (B, Ni),
        (B, Ns) float64 normalised log posterior marginals (``-inf`` at points not evaluated;
        with importance sampling, the IS-weighted estimates)
    map_direction, map_inplane, map_shift : (B,) int64 indices of the posterior mode over the
        evaluated points (quadrature weights times likelihood, importance weights excluded)
    n_evaluated : (B,) int64, number of quadrature points evaluated per image
    quadrature : the :class:`Quadrature` the indices refer to
    gradient : (N, N, N) real or None: ``d/dV sum_b log p(I_b | theta_b, V)`` w.r.t. the
        real-space volume (the *positive* log-likelihood; see :func:`negative_log_posterior`)
    n_gradient : (B,) int64 or None: number of (rotation, shift) terms per image whose
        posterior entered the gradient; rotations where the posterior of every image of a
        group underflows to 0 in the working precision are skipped (their terms are exact
        zeros), so this is at most ``n_evaluated``.  None without gradient.
    timings : wall seconds per phase of the evaluation, filled by the host engine
        (:meth:`MarginalLikelihood.evaluate`): ``"slicing_s"`` (projection slices,
        interpolation), ``"scores_s"`` (score GEMMs and the small-group score kernels),
        ``"sweeps_s"`` (exponential sums, posteriors, marginals), ``"gradient_s"`` (gradient
        rows, back-projection and the adjoint to the 3D Fourier grid), ``"other_s"`` (the rest);
        empty when the engine does not measure them.
    """

    log_likelihood: NDArray
    log_marginal_directions: NDArray
    log_marginal_inplane: NDArray
    log_marginal_shifts: NDArray
    map_direction: NDArray
    map_inplane: NDArray
    map_shift: NDArray
    n_evaluated: NDArray
    quadrature: Quadrature
    gradient: Any = None
    n_gradient: NDArray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def posterior_directions(self) -> NDArray:
        """(B, Nd) posterior marginal probabilities over directions."""
        return np.exp(self.log_marginal_directions)

    @property
    def posterior_inplane(self) -> NDArray:
        """(B, Ni) posterior marginal probabilities over in-plane angles."""
        return np.exp(self.log_marginal_inplane)

    @property
    def posterior_shifts(self) -> NDArray:
        """(B, Ns) posterior marginal probabilities over shifts."""
        return np.exp(self.log_marginal_shifts)

    @property
    def fraction_evaluated(self) -> NDArray:
        """(B,) fraction of the quadrature's points evaluated."""
        return self.n_evaluated / float(self.quadrature.size)

    @staticmethod
    def _ess(logp: NDArray) -> NDArray:
        return 1.0 / np.sum(np.exp(2.0 * logp), axis=1)

    @property
    def ess_directions(self) -> NDArray:
        """(B,) effective number of directions ``1 / sum p^2``."""
        return self._ess(self.log_marginal_directions)

    @property
    def ess_inplane(self) -> NDArray:
        """(B,) effective number of in-plane angles."""
        return self._ess(self.log_marginal_inplane)

    @property
    def ess_shifts(self) -> NDArray:
        """(B,) effective number of shifts."""
        return self._ess(self.log_marginal_shifts)

    @property
    def map_rotations(self) -> NDArray:
        """(B, 3, 3) RELION rotation matrices of the posterior modes."""
        return self.quadrature.direction_matrices[self.map_direction] @ \
            self.quadrature.inplane_matrices[self.map_inplane]

    @property
    def map_shifts_A(self) -> NDArray:
        """(B, 2) origins (x, y) in Å of the posterior modes."""
        return self.quadrature.shifts_A[self.map_shift]

    @property
    def map_euler_deg(self) -> NDArray:
        """(B, 3) RELION ``(rot, tilt, psi)`` in degrees of the posterior modes."""
        return self.quadrature.euler_angles_deg(self.map_direction, self.map_inplane)


