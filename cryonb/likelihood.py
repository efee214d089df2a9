"""Marginal likelihood of particle images over the pose quadrature (Eq. 4) and its gradient.

Model and constants
-------------------
For image ``b`` with CTF ``c_b``, white real-space Gaussian noise of standard deviation
``sigma_b`` per pixel, pose ``R`` and shift (RELION origin) ``t``, the band-limited
log-likelihood is the real-space Gaussian log-density of the image's projection onto the
band-limited subspace (the ``M`` frequencies ``|k| < w`` of :class:`~cryonb.image_model.ImageModel`,
an ``M``-dimensional real subspace of images)::

    log p(I_b | R, t, V) = -||I_b - A_b(R, t) V||^2 / (2 sigma_b^2) - (M / 2) log(2 pi sigma_b^2)
                         = -sum_{|k|<w} |dF_k|^2 / (2 N^2 sigma_b^2) - (M/2) log(2 pi sigma_b^2)

(Parseval for the unnormalised centred FFT: ``sum |F|^2 = N^2 sum |f|^2``), with
``dF = FFT(I_b) - c_b exp(2 pi i k.t) slice_R(V)``.  The disc is Hermitian, so the sum runs over
the half-plane ``ky > 0 or (ky = 0 and kx >= 0)`` with weight 2 for each paired point and 1 for
the self-conjugate point ``k = 0`` (the strict mask ``|k| < w <= N/2`` contains no Nyquist
point); slices of a real volume are Hermitian up to rounding (except within one padded voxel of
the padded grid's edge), so nothing is lost.  Both terms are kept, so the value equals the
brute-force real-space Gaussian density of the band-limited image (``tests/test_likelihood.py``
checks this to 1e-10); what is dropped is the density of the image outside the band limit,
which does not depend on ``V`` or the pose.
The marginal over the quadrature (Eq. 4) is ``log sum_{d,i,s} w_d w_i w_s p(I | R_{d,i}, t_s, V)``
in log-sum-exp form; the weights include the uniform prior on SO(3) and the Gaussian shift
prior, each normalised to 1.

Fast path
---------
With ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 Re<a, b>`` the pose-dependent part of the score is

``score[r, (b, s)] = Re sum_k X_r(k) Z_bs(k)  -  sum_k H_b(k) |X_r(k)|^2``

with ``X_r`` the half-plane slice at rotation ``r``, ``Z_bs = m c_b exp(2 pi i k.t_s) conj(y_b)
/ (N^2 sigma_b^2)`` and ``H_b = m c_b^2 / (2 N^2 sigma_b^2)``.  Viewing the complex arrays as
interleaved reals, the cross term of a block of rotations with all images and shifts is **one
real GEMM** ``(n_rot x 2M) @ (2M x B*Ns)`` -- half the flops of the complex GEMM, because only
the real part is needed -- and the norm term is a thin GEMM ``(n_rot x 2M) @ (2M x B)``.  Slices
are computed once per block of rotations and shared by every image and shift (and by every
image group with the same pose subset); the CTF is never rotated (the volume is).  The sweeps
over a block of scores (completing them with the norm and prior terms and taking maxima, the
exponential sums of the online log-sum-exp, the posterior) are parallel numba kernels
(:mod:`cryonb._kernels`).  The gradient has the same structure: per rotation,
``G_r = sum_{b,s} pi_{r,b,s} conj(Z_bs) - X_r * sum_b pi_{r,b} 2 H_b`` (a product of the
posterior with the same ``Z``), then one back-projection of all ``G_r`` and the adjoint of
``projector.volume_to_fourier``.  Terms whose posterior underflows to 0 in the working precision
contribute exact zeros and are skipped: the value pass keeps the scores that can still have a
nonzero posterior (those above the partial log-likelihood so far plus the underflow threshold)
and the slices of their rotations, while they fit in ``sparse_bytes``; the gradient pass then
needs no second score GEMM, and multiplies the posterior by ``Z`` with a sparse kernel (or one
GEMM where it is dense), over the rotations where it is nonzero.  When all scores fit in
``cache_bytes`` they are kept instead; when neither fits, the gradient pass recomputes slices
and scores of the rotations where some posterior can be nonzero (3 GEMMs instead of 2 there).
Slicing and back-projection work on the centred sub-cube of the padded Fourier grid that the
band limit reaches.  Importance-sampled images each have their own small subset; their slices
are taken once per batch (one call for the union of their rotations) and their scores and
gradient rows are computed by two numba kernels over all of them at once (single-threaded small
GEMMs per image, threads across images), which avoids thousands of tiny multi-threaded BLAS
calls.
float32/complex64 by default (the precision of ``volume_ft``), float64 for tests.
:func:`reference_log_joint` is the direct NumPy evaluation kept for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from .backend import Backend, get_backend
from .ctf import CTFParams, evaluate_ctf
from .fourier import fft2_centered, fourier_indices
from .image_model import ImageModel
from .priors import NoPrior, Prior
from .projection import shift_phases
from .quadrature import Quadrature

__all__ = [
    "LikelihoodResult",
    "MarginalLikelihood",
    "PoseSubset",
    "PreparedImages",
    "estimate_noise_sigma",
    "hermitian_half_plane",
    "negative_log_posterior",
    "reference_log_joint",
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


@dataclass
class _Group:
    """Images sharing one tensor-product subset of the quadrature."""

    images: NDArray
    directions: NDArray
    inplane: NDArray
    shifts: NDArray
    lis_d: NDArray  # (nD,) log importance weights
    lis_i: NDArray
    lis_s: NDArray

    @property
    def has_is(self) -> bool:
        return bool(np.any(self.lis_d) or np.any(self.lis_i) or np.any(self.lis_s))

    @property
    def n_scores(self) -> int:
        return len(self.images) * len(self.directions) * len(self.inplane) * len(self.shifts)


@dataclass
class _Accumulator:
    """Per-image outputs filled group by group."""

    log_d: NDArray
    log_i: NDArray
    log_s: NDArray
    log_l: NDArray
    map_d: NDArray
    map_i: NDArray
    map_s: NDArray
    n_eval: NDArray
    n_grad: NDArray


class _BackprojectBuffer:
    """Collects gradient rows and back-projects them in large blocks into one volume (the
    centred ``size``-cube of the padded grid that the slices touch, with the numba kernel)."""

    def __init__(self, model: ImageModel, coords: Any, cdt: Any, max_rows: int, size: int
                 ) -> None:
        proj = model.projector
        bk = get_backend(proj.backend)
        self.proj, self.coords, self.xp = proj, coords, bk.xp
        self.numba = bk.is_numpy and proj.use_numba is not False
        p = size if self.numba else proj.padded_size
        self.volume = bk.xp.zeros((p, p, p), dtype=cdt)
        self.max_rows = max(1, max_rows)
        self.rots: list[NDArray] = []
        self.rows: list[Any] = []
        self.n = 0

    def add(self, rots: NDArray, rows: Any) -> None:
        self.rots.append(rots)
        self.rows.append(rows)
        self.n += rows.shape[0]
        if self.n >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        xp = self.xp
        rots = np.concatenate(self.rots).astype(np.float64, copy=False)
        rows = self.rows[0] if len(self.rows) == 1 else xp.concatenate(self.rows)
        rows = xp.ascontiguousarray(rows.astype(self.volume.dtype, copy=False))
        if self.numba:
            import numba

            from ._kernels import backproject_trilinear

            backproject_trilinear(rows, rots, np.ascontiguousarray(self.coords, np.float64),
                                  float(self.proj.pad), self.volume, numba.get_num_threads())
        else:
            self.volume += self.proj.backproject(rows, rots, self.coords)
        self.rots, self.rows, self.n = [], [], 0


class _SliceTable:
    """Half-plane slices of a set of quadrature rotations, computed in one call."""

    def __init__(self, lik: MarginalLikelihood, volume_ft: Any, flat: NDArray, n_inplane: int
                 ) -> None:
        self.flat = np.sort(np.asarray(flat, dtype=np.int64))
        self.n_inplane = n_inplane
        d, i = np.divmod(self.flat, n_inplane)
        q = lik.quadrature
        rots = q.direction_matrices[d] @ q.inplane_matrices[i]
        self.x = lik.model.projector.slice(volume_ft, rots, lik._half_coords)
        self.xp = get_backend(lik.model.backend).xp

    def rows(self, directions: NDArray, inplane: NDArray) -> Any:
        """Slices of the tensor product (direction-major), (len(d) * len(i), Mh)."""
        return self.rows_flat((directions[:, None] * self.n_inplane + inplane[None, :]).ravel())

    def rows_flat(self, flat: NDArray) -> Any:
        """Slices of the flat pose indices ``d * Ni + i``, (len(flat), Mh)."""
        return self.x[self.xp.asarray(np.searchsorted(self.flat, flat))]


# ---------------------------------------------------------------------------------- engine
@dataclass(frozen=True, eq=False)
class MarginalLikelihood:
    """Marginal likelihood over a :class:`Quadrature`, posterior marginals and gradient.

    Parameters
    ----------
    model : ImageModel
        Sets the box, pixel size, band limit ``w`` (the disc ``|k| < w``), projector and CTF sign.
    quadrature : Quadrature
        Pose and shift grid (made for the same band limit, e.g. ``Quadrature.for_model(model)``).
    block_bytes : int
        Size of the working blocks (scores of one block of rotations against all images and
        shifts; the Z matrix of one image group).
    cache_bytes : int
        Scores and slices are kept between the value pass and the gradient pass if they fit.
    small_group_size : int
        Image groups with at most this many scores (rotations x images x shifts; typically one
        importance-sampled image) are evaluated together by one numba kernel over a shared
        table of slices, instead of one small multi-threaded BLAS call each.
    use_numba : bool or None
        Use the numba kernels for small groups and for the sweeps over score blocks (NumPy
        backend only; else vectorised NumPy/CuPy); ``None`` = yes.
    sparse_bytes : int
        When the scores do not fit in ``cache_bytes``, those whose posterior can be nonzero in
        the working precision (and the slices of their rotations) are kept if they fit, and the
        gradient pass needs no second score GEMM; else it recomputes the scores of the
        rotations where some posterior is nonzero.

    Examples
    --------
    >>> lik = MarginalLikelihood(model, Quadrature.for_model(model))      # doctest: +SKIP
    >>> batch = lik.prepare(images, ctf, noise_sigma=estimate_noise_sigma(images))
    >>> res = lik.evaluate(model.projector.volume_to_fourier(vol), batch, gradient=True)
    >>> res.log_likelihood, res.posterior_directions, res.gradient.shape
    """

    model: ImageModel
    quadrature: Quadrature
    block_bytes: int = 64 * 2**20
    cache_bytes: int = 512 * 2**20
    small_group_size: int = 2**18
    use_numba: bool | None = None
    sparse_bytes: int = 256 * 2**20

    @property
    def _backend(self) -> Backend:
        return get_backend(self.model.backend)

    @cached_property
    def half_plane(self) -> tuple[NDArray, NDArray]:
        """``(index into model.coords_px, weight)`` of the Hermitian half-plane (host arrays)."""
        bk = self._backend
        return hermitian_half_plane(bk.to_host(self.model.coords_px), self.model.box_size)

    @cached_property
    def n_disc(self) -> int:
        """M, the number of frequencies in the band-limit disc (real dimension of the data)."""
        return int(self.model.coords_px.shape[0])

    @cached_property
    def _half_coords(self) -> Any:
        xp = self._backend.xp
        return xp.asarray(self._backend.to_host(self.model.coords_px)[self.half_plane[0]])

    @cached_property
    def _half_freqs(self) -> Any:
        return self._half_coords / (self.model.box_size * self.model.pixel_size_A)

    @cached_property
    def _support_size(self) -> int:
        """Side of the centred sub-cube of the padded Fourier grid touched by the slices."""
        k = self._backend.to_host(self._half_coords)
        return self.model.projector.support_size(float(np.sqrt((k * k).sum(axis=1)).max()))

    @cached_property
    def _conj_phases(self) -> dict[Any, Any]:
        """``conj(shift_phases)`` of all quadrature shifts (nS, Mh) per complex dtype (lazy)."""
        return {}

    def _shift_phases_conj(self, shifts: NDArray, cdt: Any) -> Any:
        key = np.dtype(cdt)
        if key not in self._conj_phases:
            xp = self._backend.xp
            ph = shift_phases(self._half_freqs, xp.asarray(self.quadrature.shifts_A))
            self._conj_phases[key] = ph.conj().astype(cdt)
        return self._conj_phases[key][self._backend.xp.asarray(shifts)]

    # ------------------------------------------------------------------ data
    def prepare(self, images: Any, ctf: CTFParams | None = None,
                noise_sigma: float | ArrayLike | None = None,
                dtype: Any = np.float32) -> PreparedImages:
        """Reduce a batch of images to half-plane Fourier data.

        Parameters
        ----------
        images : (B, N, N) real images, (B, N, N) complex centred spectra, or (B, M) complex
            Fourier values at ``model.coords_px`` (e.g. from ``model.forward_points``)
        ctf : CTFParams of length B, or None
        noise_sigma : real-space noise standard deviation per pixel, scalar or (B,); ``None``
            estimates it from real images with :func:`estimate_noise_sigma`
        dtype : float32 (default) or float64, the precision of the computation

        Returns
        -------
        PreparedImages
        """
        bk = self._backend
        xp = bk.xp
        n = self.model.box_size
        half_idx, half_w = self.half_plane
        arr = xp.asarray(images)
        if arr.ndim == 3 and arr.shape[1:] == (n, n):
            if not xp.iscomplexobj(arr):
                if noise_sigma is None:
                    noise_sigma = estimate_noise_sigma(bk.to_host(arr))
                spectra = fft2_centered(arr.astype(np.complex128))
            else:
                spectra = arr.astype(np.complex128)
            values = spectra[:, self.model.mask]
        elif arr.ndim == 2 and arr.shape[1] == self.n_disc:
            values = arr.astype(np.complex128)
        else:
            raise ValueError(f"images must be (B, {n}, {n}) or (B, {self.n_disc}), "
                             f"got {arr.shape}")
        if noise_sigma is None:
            raise ValueError("noise_sigma is needed for Fourier-space input")
        b = values.shape[0]
        y = values[:, xp.asarray(half_idx)]
        sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), (b,)).copy()
        if np.any(sigma <= 0):
            raise ValueError("noise_sigma must be positive")
        w = xp.asarray(half_w)
        energy = bk.to_host(xp.sum(w * (y.real**2 + y.imag**2), axis=1))
        log_norm = (-energy / (2.0 * n * n * sigma**2)
                    - 0.5 * self.n_disc * np.log(2 * np.pi * sigma**2))
        ctf_vals = None
        if ctf is not None:
            if len(ctf) != b:
                raise ValueError(f"got {len(ctf)} CTFs for {b} images")
            f = self._half_freqs
            ctf_vals = evaluate_ctf(ctf, f[:, 0], f[:, 1], convention=self.model.ctf_convention,
                                    backend=bk).astype(_real_dtype(dtype))
        return PreparedImages(y.astype(_complex_dtype(dtype)), ctf_vals, sigma, log_norm)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        volume_ft: Any,
        images: PreparedImages | Any,
        ctf: CTFParams | None = None,
        noise_sigma: float | ArrayLike | None = None,
        subsets: list[PoseSubset] | None = None,
        *,
        gradient: bool = False,
    ) -> LikelihoodResult:
        """Marginal log-likelihoods, posterior marginals, MAP poses and optionally the gradient.

        Parameters
        ----------
        volume_ft : complex (P, P, P) from ``model.projector.volume_to_fourier(volume)``; its
            precision (complex64 / complex128) sets the precision of the computation
        images : PreparedImages from :meth:`prepare`, or raw images (then ``ctf`` and
            ``noise_sigma`` are passed to :meth:`prepare`)
        subsets : one :class:`PoseSubset` per image (importance sampling), or None for the
            exhaustive sum over the whole quadrature
        gradient : also return ``d/dV sum_b log p(I_b | V)`` for the real-space volume

        Returns
        -------
        LikelihoodResult
        """
        cdt = _complex_dtype(volume_ft.dtype)
        rdt = _real_dtype(cdt)
        if not isinstance(images, PreparedImages):
            images = self.prepare(images, ctf, noise_sigma, dtype=rdt)
        prep = images
        if prep.data.dtype != cdt:
            prep = PreparedImages(prep.data.astype(cdt),
                                  None if prep.ctf is None else prep.ctf.astype(rdt),
                                  prep.noise_sigma, prep.log_norm)
        q = self.quadrature
        b = prep.n_images
        acc = _Accumulator(
            log_d=np.full((b, q.n_directions), -np.inf), log_i=np.full((b, q.n_inplane), -np.inf),
            log_s=np.full((b, q.n_shifts), -np.inf), log_l=np.zeros(b),
            map_d=np.zeros(b, np.int64), map_i=np.zeros(b, np.int64),
            map_s=np.zeros(b, np.int64), n_eval=np.zeros(b, np.int64),
            n_grad=np.zeros(b, np.int64))
        mh = len(self.half_plane[0])
        proj = self.model.projector
        # slices and back-projection only touch the centred sub-cube of the band limit
        vol_s = proj.crop_support(volume_ft, self._support_size)
        buffer = None
        if gradient:
            row_bytes = 2 * mh * np.dtype(rdt).itemsize
            buffer = _BackprojectBuffer(self.model, self._half_coords, cdt,
                                        self.block_bytes // row_bytes, self._support_size)
        clusters = self._groups(b, subsets, mh, rdt)
        q_ni = q.n_inplane
        slice_bytes = mh * np.dtype(cdt).itemsize
        pending: list[list[_Group]] = []
        pending_rot: set[int] = set()

        use_kernels = self._backend.is_numpy and self.use_numba is not False
        pending_bytes = [0]

        def is_small(g: _Group) -> bool:
            return use_kernels and g.n_scores <= self.small_group_size

        def run_pending() -> None:
            # one slice call for the union of the rotations of several small groups
            if not pending:
                return
            table = _SliceTable(self, vol_s, np.fromiter(pending_rot, np.int64), q_ni)
            small = [g for cl in pending for g in cl if is_small(g)]
            if small:
                self._evaluate_small_groups(prep, small, table, acc, buffer)
            for cl in pending:
                large = [g for g in cl if not is_small(g)]
                if large:
                    self._evaluate_dense(vol_s, prep, large, acc, buffer, table)
            pending.clear()
            pending_rot.clear()
            pending_bytes[0] = 0

        budget = self.cache_bytes // 4
        for cluster in clusters:
            g0 = cluster[0]
            n_rot = len(g0.directions) * len(g0.inplane)
            if n_rot * slice_bytes > budget:   # large: slice block by block
                self._evaluate_dense(vol_s, prep, cluster, acc, buffer, None)
                continue
            flat = (g0.directions[:, None] * q_ni + g0.inplane[None, :]).ravel()
            z_bytes = sum(len(g.images) for g in cluster) * len(g0.shifts) * slice_bytes
            if ((len(pending_rot) + n_rot) * slice_bytes > budget
                    or pending_bytes[0] + z_bytes > budget):
                run_pending()
            pending.append(cluster)
            pending_rot.update(flat.tolist())
            pending_bytes[0] += z_bytes
        run_pending()
        grad = None
        if buffer is not None:
            buffer.flush()
            grad = proj.fourier_to_volume_adjoint(buffer.volume)
        return LikelihoodResult(
            log_likelihood=acc.log_l + prep.log_norm,
            log_marginal_directions=acc.log_d, log_marginal_inplane=acc.log_i,
            log_marginal_shifts=acc.log_s, map_direction=acc.map_d, map_inplane=acc.map_i,
            map_shift=acc.map_s, n_evaluated=acc.n_eval, quadrature=q, gradient=grad,
            n_gradient=acc.n_grad if gradient else None)

    def _groups(self, b: int, subsets: list[PoseSubset] | None, mh: int, rdt: Any
                ) -> list[list[_Group]]:
        """Group images by identical subsets, split so that each group's Z fits in a block;
        one list of groups per distinct subset."""
        q = self.quadrature
        if subsets is None:
            subsets_by_key = {b"full": (PoseSubset.full(q), list(range(b)))}
        else:
            if len(subsets) != b:
                raise ValueError(f"got {len(subsets)} subsets for {b} images")
            subsets_by_key = {}
            sizes = (q.n_directions, q.n_inplane, q.n_shifts)
            for j, s in enumerate(subsets):
                for arr, size in zip((s.directions, s.inplane, s.shifts), sizes, strict=True):
                    if arr.min() < 0 or arr.max() >= size:
                        raise ValueError(f"subset {j} has indices out of range [0, {size})")
                key = s._key()
                if key in subsets_by_key:
                    subsets_by_key[key][1].append(j)
                else:
                    subsets_by_key[key] = (s, [j])
        clusters = []
        itemsize = np.dtype(rdt).itemsize
        for s, members in subsets_by_key.values():
            per_image = max(1, len(s.shifts) * 2 * mh * itemsize)
            size = max(1, self.block_bytes // per_image)
            groups = []
            for start in range(0, len(members), size):
                groups.append(_Group(np.asarray(members[start:start + size]), s.directions,
                                     s.inplane, s.shifts, s.log_is_directions,
                                     s.log_is_inplane, s.log_is_shifts))
            clusters.append(groups)
        return clusters

    def _group_data(self, prep: PreparedImages, g: _Group, cdt: Any) -> tuple[Any, Any]:
        """``zv`` (G*nS, 2Mh): conj(Z) as interleaved reals; ``h2`` (G, Mh) = kappa m c^2."""
        xp = self._backend.xp
        rdt = _real_dtype(cdt)
        n = self.model.box_size
        mh = len(self.half_plane[0])
        kappa = 1.0 / (n * n * prep.noise_sigma[g.images] ** 2)                 # (G,)
        m = xp.asarray(self.half_plane[1])
        idx = xp.asarray(g.images)
        base = xp.asarray(kappa)[:, None] * m[None, :]                          # (G, Mh) f64
        if prep.ctf is not None:
            c = prep.ctf[idx].astype(np.float64)
            base = base * c
            h2 = base * c
        else:
            h2 = base
        phases_c = self._shift_phases_conj(g.shifts, cdt)                      # (nS, Mh)
        dy = (base * prep.data[idx].astype(np.complex128)).astype(cdt)         # (G, Mh)
        zc = dy[:, None, :] * phases_c[None]                                   # (G, nS, Mh)
        zv = zc.view(rdt).reshape(len(g.images) * len(g.shifts), 2 * mh)
        return zv, h2.astype(rdt)

    def _evaluate_small_groups(self, prep: PreparedImages, groups: list[_Group],
                               table: _SliceTable, acc: _Accumulator,
                               buffer: _BackprojectBuffer | None) -> None:
        """Evaluate many small groups (importance-sampled images) with two numba kernels."""
        q = self.quadrature
        cdt = table.x.dtype
        rdt = _real_dtype(cdt)
        xt = table.x.view(rdt)
        lwd_q, lwi_q, lws_q = q.log_weights()
        rot_rows, zvs, hreps, lwrs, lwss = [], [], [], [], []
        rot_ptr, col_ptr, img_ptr, out_ptr = [0], [0], [0], [0]
        n_shift = []
        for g in groups:
            flat = (g.directions[:, None] * q.n_inplane + g.inplane[None, :]).ravel()
            rot_rows.append(np.searchsorted(table.flat, flat))
            zv, h2 = self._group_data(prep, g, cdt)
            zvs.append(zv)
            hreps.append(np.repeat(h2, 2, axis=1))
            lwrs.append(((lwd_q[g.directions] + g.lis_d)[:, None]
                         + (lwi_q[g.inplane] + g.lis_i)[None, :]).ravel())
            lwss.append(np.tile(lws_q[g.shifts] + g.lis_s, len(g.images)))
            n_r, n_c = len(flat), zv.shape[0]
            rot_ptr.append(rot_ptr[-1] + n_r)
            col_ptr.append(col_ptr[-1] + n_c)
            img_ptr.append(img_ptr[-1] + len(g.images))
            out_ptr.append(out_ptr[-1] + n_r * n_c)
            n_shift.append(len(g.shifts))
        rows = np.concatenate(rot_rows).astype(np.int64)
        zv_all = np.ascontiguousarray(np.concatenate(zvs))
        hrep_all = np.ascontiguousarray(np.concatenate(hreps)).astype(rdt)
        ptrs = [np.asarray(p, dtype=np.int64) for p in (rot_ptr, col_ptr, img_ptr, out_ptr)]
        n_shift_arr = np.asarray(n_shift, dtype=np.int64)
        lwr_all = np.concatenate(lwrs).astype(rdt)
        lws_all = np.concatenate(lwss).astype(rdt)
        out = np.empty(out_ptr[-1], dtype=rdt)
        _small_group_scores(xt, rows, ptrs[0], zv_all, ptrs[1], 0.5 * hrep_all, ptrs[2],
                           n_shift_arr, lwr_all, lws_all, ptrs[3], out)
        log_l_elem = np.empty(len(out)) if buffer is not None else None
        for k, g in enumerate(groups):
            n_d, n_i, n_s = len(g.directions), len(g.inplane), len(g.shifts)
            full = out[out_ptr[k]:out_ptr[k + 1]].reshape(n_d * n_i, len(g.images), n_s)
            log_l = self._reduce_full(full, g, acc)
            if log_l_elem is not None:
                log_l_elem[out_ptr[k]:out_ptr[k + 1]] = np.broadcast_to(
                    log_l[None, :, None], full.shape).ravel()
        if buffer is None:
            return
        p = np.exp(out - log_l_elem.astype(rdt))
        grad = np.empty((rows.shape[0], xt.shape[1]), dtype=rdt)
        _small_group_gradients(p, ptrs[3], xt, rows, ptrs[0], zv_all, ptrs[1], hrep_all,
                              ptrs[2], n_shift_arr, grad)
        d, i = np.divmod(table.flat[rows], q.n_inplane)
        rots = q.direction_matrices[d] @ q.inplane_matrices[i]
        buffer.add(rots, grad.view(cdt))

    def _reduce_full(self, full: NDArray, g: _Group, acc: _Accumulator) -> NDArray:
        """Log-likelihood, marginals and MAP of one group from all its scores (n_r, G, n_s)."""
        n_d, n_i, n_s = len(g.directions), len(g.inplane), len(g.shifts)
        n_img = len(g.images)
        f = full.astype(np.float64)
        cm = f.max(axis=(0, 2))
        cm = np.where(np.isfinite(cm), cm, 0.0)
        e = np.exp(f - cm[None, :, None])
        er = e.sum(axis=2).reshape(n_d, n_i, n_img)
        with np.errstate(divide="ignore"):
            log_d = np.log(er.sum(axis=1)).T + cm[:, None]                      # (G, nD)
            log_l = _logsumexp(log_d, axis=1)
            log_i = np.log(er.sum(axis=0)).T + (cm - log_l)[:, None]
            log_s = np.log(e.sum(axis=0)) + (cm - log_l)[:, None]
        if g.has_is:
            lis_r = (g.lis_d[:, None] + g.lis_i[None, :]).ravel()
            f = f - lis_r[:, None, None] - g.lis_s[None, None, :]
        for j, im in enumerate(g.images):
            flat = int(np.argmax(f[:, j, :]))
            r, s = divmod(flat, n_s)
            dd, ii = divmod(r, n_i)
            acc.map_d[im], acc.map_i[im], acc.map_s[im] = (g.directions[dd], g.inplane[ii],
                                                           g.shifts[s])
            acc.log_d[im, g.directions] = log_d[j] - log_l[j]
            acc.log_i[im, g.inplane] = log_i[j]
            acc.log_s[im, g.shifts] = log_s[j]
        acc.log_l[g.images] = log_l
        acc.n_eval[g.images] = n_d * n_i * n_s
        acc.n_grad[g.images] = n_d * n_i * n_s
        return log_l

    def _dense_plan(self, group_sizes: list[int], n_d: int, n_i: int, n_s: int, itemsize: int,
                    gradient: bool) -> tuple[int, bool]:
        """Directions per block and whether the scores are kept for the gradient pass.

        One block holds the scores of one image group (the largest) and the slices of
        ``k_d * n_i`` rotations within ``block_bytes``; the scores of all groups and blocks are
        kept when they fit in ``cache_bytes``.
        """
        mh = len(self.half_plane[0])
        row_bytes = itemsize * (max(group_sizes) * n_s + 4 * mh)
        k_d = int(max(1, min(n_d, self.block_bytes // max(1, row_bytes * n_i))))
        total_cache = n_d * n_i * itemsize * (sum(group_sizes) * n_s + 2 * mh)
        return k_d, bool(gradient and total_cache <= self.cache_bytes)

    def _evaluate_dense(self, volume_ft: Any, prep: PreparedImages, groups: list[_Group],
                        acc: _Accumulator, buffer: _BackprojectBuffer | None,
                        table: _SliceTable | None) -> None:
        """Image groups that share one pose subset, by GEMMs over blocks of rotations
        (in chunks of groups whose ``Z`` matrices together fit in ``4 * block_bytes``)."""
        mh = len(self.half_plane[0])
        itemsize = np.dtype(_real_dtype(volume_ft.dtype)).itemsize
        chunk: list[_Group] = []
        size = 0
        for g in groups:
            z = len(g.images) * len(g.shifts) * 2 * mh * itemsize
            if chunk and size + z > 4 * self.block_bytes:
                _DensePass(self, volume_ft, prep, chunk, acc, buffer, table).run()
                chunk, size = [], 0
            chunk.append(g)
            size += z
        _DensePass(self, volume_ft, prep, chunk, acc, buffer, table).run()


class _DensePass:
    """Evaluation of image groups that share one pose subset, by GEMMs over blocks of rotations.

    Value pass, per block of whole directions: one slice call shared by all groups; per group
    the cross-term GEMM, the thin norm GEMM and two sweeps over the scores (complete them and
    take row maxima; exponential sums).  The terms whose posterior can still be nonzero in the
    working precision (score above the partial log-likelihood so far + ``lo`` - margin) are kept
    in a sparse store while it fits in ``sparse_bytes``.  Gradient pass, one of:

    * ``cache``: all scores were kept (small problems): posterior, one GEMM with ``Z`` per
      group, for the blocks with a nonzero posterior;
    * ``sparse``: the posterior from the store, over the rotations where it is nonzero, times
      ``Z`` (a sparse kernel when it is sparse, else scattered into a dense block and one GEMM);
    * ``recompute``: slices and scores again (a second cross-term GEMM) over the rotations
      where some image's posterior can be nonzero.

    Terms whose posterior underflows to 0 contribute exact zeros, so the three give the same
    gradient.  The gradient rows of a block are summed over the groups and back-projected once.
    """

    def __init__(self, lik: MarginalLikelihood, volume_ft: Any, prep: PreparedImages,
                 groups: list[_Group], acc: _Accumulator, buffer: _BackprojectBuffer | None,
                 table: _SliceTable | None) -> None:
        self.lik, self.vol, self.groups, self.acc = lik, volume_ft, groups, acc
        self.buffer, self.table = buffer, table
        self.bk = bk = lik._backend
        xp = bk.xp
        self.cdt = volume_ft.dtype
        self.rdt = rdt = _real_dtype(self.cdt)
        q = self.q = lik.quadrature
        g0 = self.g0 = groups[0]
        self.n_d, self.n_i, self.n_s = len(g0.directions), len(g0.inplane), len(g0.shifts)
        if self.n_d == 0 or self.n_i == 0 or self.n_s == 0:
            raise ValueError("a pose subset is empty")
        self.kernels = bk.is_numpy and lik.use_numba is not False
        self.lo = _EXP_LO[np.dtype(rdt).char]
        # Z and H of all groups in one array (group j: rows col_off[j]:col_off[j+1])
        sizes = [len(g.images) for g in groups]
        self.img_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.col_off = self.img_off * self.n_s
        union = _Group(np.concatenate([g.images for g in groups]), g0.directions, g0.inplane,
                       g0.shifts, g0.lis_d, g0.lis_i, g0.lis_s)
        self.zv, self.h2 = lik._group_data(prep, union, self.cdt)   # (sum G nS, 2Mh), (sum G, Mh)
        self.hrep = xp.repeat(0.5 * self.h2, 2, axis=1)               # (sum G, 2Mh)
        lwd_q, lwi_q, lws_q = q.log_weights()
        self.lwd = lwd_q[g0.directions] + g0.lis_d
        self.lwi = lwi_q[g0.inplane] + g0.lis_i
        self.lws = xp.asarray((lws_q[g0.shifts] + g0.lis_s).astype(rdt))
        self.lis_s = xp.asarray(g0.lis_s.astype(rdt))
        self.k_d, self.keep = lik._dense_plan(sizes, self.n_d, self.n_i, self.n_s,
                                              np.dtype(rdt).itemsize, buffer is not None)
        self.fbuf = (None if self.keep
                     else xp.empty(self.k_d * self.n_i * max(sizes) * self.n_s, dtype=rdt))
        self.states = [_DenseState.empty(n, self.n_d, self.n_i, self.n_s) for n in sizes]

    # ------------------------------------------------------------------ pieces
    def _zv(self, j: int) -> Any:
        return self.zv[self.col_off[j]:self.col_off[j + 1]]

    def rotations(self, rows: NDArray) -> NDArray:
        """(len(rows), 3, 3) rotations of the subset's flat rows ``d * nI + i``."""
        d, i = np.divmod(rows, self.n_i)
        q, g0 = self.q, self.g0
        return q.direction_matrices[g0.directions[d]] @ q.inplane_matrices[g0.inplane[i]]

    def slices(self, rows: NDArray, rots: NDArray) -> Any:
        """(len(rows), Mh) half-plane slices."""
        if self.table is None:
            return self.lik.model.projector.slice(self.vol, rots, self.lik._half_coords)
        d, i = np.divmod(rows, self.n_i)
        return self.table.rows_flat(self.g0.directions[d] * self.q.n_inplane
                                    + self.g0.inplane[i])

    def scores(self, j: int, rows: NDArray, x: Any) -> tuple[Any, tuple[NDArray, ...]]:
        """Completed scores (n_c, G * nS) of group ``j`` at ``rows`` and their row maxima."""
        xp, rdt = self.bk.xp, self.rdt
        zv = self._zv(j)
        xv = x.view(rdt)
        n_c = xv.shape[0]
        if self.fbuf is None:
            full = xv @ zv.T                                                     # (n_c, G*nS)
        else:
            full = xp.matmul(xv, zv.T, out=self.fbuf[: n_c * zv.shape[0]].reshape(n_c, -1))
        hrep = self.hrep[self.img_off[j]:self.img_off[j + 1]]
        norm = (xv * xv) @ hrep.T                                                # (n_c, G)
        d, i = np.divmod(rows, self.n_i)
        g0 = self.g0
        lwr = (self.lwd[d] + self.lwi[i]).astype(rdt)
        lis_r = (g0.lis_d[d] + g0.lis_i[i]).astype(rdt)
        return full, _complete_scores(self.bk, full, self.n_s, lwr, norm, self.lws, lis_r,
                                      self.lis_s, self.kernels)

    # ------------------------------------------------------------------ passes
    def run(self) -> None:
        n_rows = self.n_d * self.n_i
        gradient = self.buffer is not None
        bound = np.full(n_rows, -np.inf)  # max over images of (row max - partial log l)
        store = (_SparseStore(self.bk, self.lik.sparse_bytes, self.n_s, len(self.groups),
                              self.kernels) if gradient and not self.keep else None)
        cached: list[tuple[NDArray, NDArray, Any, list[Any]]] = []
        for d0 in range(0, self.n_d, self.k_d):
            d1 = min(self.n_d, d0 + self.k_d)
            rows = np.arange(d0 * self.n_i, d1 * self.n_i)
            rots = self.rotations(rows)
            x = self.slices(rows, rots)
            fulls = []
            has = np.zeros(len(rows), dtype=bool)  # rows with a term in the sparse store
            if store is not None:
                store.begin_block(int(rows[0]), len(rows))
            for j, g in enumerate(self.groups):
                full, stats = self.scores(j, rows, x)
                partial = self.states[j].add_block(self.bk, full, stats, self.n_s, d0, d1,
                                                   self.lo, self.kernels, g, self.acc)
                if not gradient:
                    continue
                blk = slice(d0 * self.n_i, d1 * self.n_i)
                bound[blk] = np.maximum(bound[blk], (stats[0] - partial[None, :]).max(axis=1))
                if self.keep:
                    fulls.append(full)
                elif store is not None:
                    has |= store.add(j, full, partial + (self.lo - _SKIP_MARGIN))
            if self.keep:
                cached.append((rows, rots, x, fulls))
            elif store is not None:
                store.end_block(has, x)
                if store.full:
                    store = store.pruned([st.partial + (self.lo - _SKIP_MARGIN)
                                          for st in self.states])
        log_ls = [st.finish(g, self.acc) for st, g in zip(self.states, self.groups, strict=True)]
        if not gradient:
            return
        ll = np.concatenate(log_ls)
        if self.keep:
            self._gradient_cached(cached, ll, bound)
        elif store is not None:
            self._gradient_sparse(store, ll)
        else:
            self._gradient_recompute(ll, bound)

    def _images(self) -> NDArray:
        return np.concatenate([g.images for g in self.groups])

    def _add_rows(self, rots: NDArray, x: Any, g_real: Any, pr: Any) -> None:
        """Gradient rows ``g_real - (pr @ H) * x`` to the back-projection buffer."""
        if self.kernels:
            from ._kernels import subtract_h_term

            subtract_h_term(np.ascontiguousarray(pr), self.h2, x.view(self.rdt), g_real)
            self.buffer.add(rots, g_real.view(self.cdt))
            return
        grad = g_real.view(self.cdt)
        grad -= (pr @ self.h2) * x
        self.buffer.add(rots, grad)

    def _dense_rows(self, rots: NDArray, x: Any, full_of: Any, ll: Any) -> None:
        """Gradient rows of a block from the scores of each group (``full_of(j)``)."""
        xp = self.bk.xp
        g_real = None
        prs = []
        for j in range(len(self.groups)):
            p = full_of(j)
            prs.append(_posterior(self.bk, p, self.n_s, ll[self.img_off[j]:self.img_off[j + 1]],
                                  self.lo, self.kernels))                        # (n_c, G)
            part = p @ self._zv(j)                                               # (n_c, 2Mh)
            if g_real is None:
                g_real = part
            else:
                g_real += part
        self._add_rows(rots, x, g_real, prs[0] if len(prs) == 1 else xp.concatenate(prs, 1))

    def _gradient_cached(self, cached: list, ll: NDArray, bound: NDArray) -> None:
        ll_dev = self.bk.xp.asarray(ll.astype(self.rdt))
        live = bound >= self.lo - _SKIP_MARGIN
        n_live = 0
        for rows, rots, x, fulls in cached:
            if live[rows].any():
                n_live += len(rows)
                self._dense_rows(rots, x, fulls.__getitem__, ll_dev)
        self.acc.n_grad[self._images()] = n_live * self.n_s

    def _gradient_recompute(self, ll: NDArray, bound: NDArray) -> None:
        ll_dev = self.bk.xp.asarray(ll.astype(self.rdt))
        kept = np.flatnonzero(bound >= self.lo - _SKIP_MARGIN)
        step = self.k_d * self.n_i
        for k0 in range(0, len(kept), step):
            rows = kept[k0:k0 + step]
            rots = self.rotations(rows)
            x = self.slices(rows, rots)
            self._dense_rows(rots, x, lambda j, r=rows, x=x: self.scores(j, r, x)[0], ll_dev)
        self.acc.n_grad[self._images()] = len(kept) * self.n_s

    def _gradient_sparse(self, store: _SparseStore, ll: NDArray) -> None:
        bk, xp, rdt = self.bk, self.bk.xp, self.rdt
        n_img = len(ll)
        n_cols = n_img * self.n_s
        lls = [ll[self.img_off[j]:self.img_off[j + 1]].astype(rdt)
               for j in range(len(self.groups))]
        counts = np.zeros(n_img, dtype=np.int64)
        for blk in store.blocks:
            live = np.zeros(blk.n_rows, dtype=bool)
            posts = []
            nnz = 0
            for j, csr in enumerate(blk.groups):
                if csr is None:
                    posts.append(None)
                    continue
                p, row_nnz = _csr_posterior(bk, csr, self.n_s, lls[j], self.lo, self.kernels)
                posts.append(p)
                live |= row_nnz > 0
                nnz += int(row_nnz.sum())
            rows = np.flatnonzero(live)
            if len(rows) == 0:
                continue
            n_c = len(rows)
            rots = self.rotations(blk.row0 + rows)
            x = blk.slices(rows, xp)
            if self.kernels and nnz * _SPARSE_DENSITY < n_c * n_cols:
                from ._kernels import csr_rows_accumulate

                g_real = np.zeros((n_c, self.zv.shape[1]), dtype=rdt)
                pr = np.zeros((n_c, n_img), dtype=rdt)
                for j, csr in enumerate(blk.groups):
                    if csr is None:
                        continue
                    i0, i1 = self.img_off[j], self.img_off[j + 1]
                    csr_rows_accumulate(rows, csr[0], csr[1], posts[j], self.n_s, self._zv(j),
                                        g_real, pr[:, i0:i1])
                    counts[i0:i1] += np.bincount(csr[1][posts[j] > 0] // self.n_s,
                                                 minlength=i1 - i0)
                self._add_rows(rots, x, g_real, pr)
                continue
            dense = xp.zeros((n_c, n_cols), dtype=rdt)
            for j, csr in enumerate(blk.groups):
                if csr is not None:
                    _csr_to_dense(bk, rows, csr, posts[j],
                                  dense[:, self.col_off[j]:self.col_off[j + 1]], self.kernels)
            g_real = dense @ self.zv                                             # (n_c, 2Mh)
            counts += n_c * self.n_s
            self._add_rows(rots, x, g_real, dense.reshape(n_c, n_img, self.n_s).sum(axis=2))
        self.acc.n_grad[self._images()] = counts


@dataclass
class _StoredBlock:
    """The kept terms of one block of rows: per group a CSR ``(ptr, cols, vals)`` over the
    block's rows (or None), and the slices of the rows that have terms."""

    row0: int
    n_rows: int
    groups: list[Any]
    slice_rows: NDArray | None = None   # local rows, increasing
    x: Any = None

    def slices(self, rows: NDArray, xp: Any) -> Any:
        """Kept slices of the local ``rows`` (each must have terms)."""
        return self.x[xp.asarray(np.searchsorted(self.slice_rows, rows))]

    @property
    def nbytes(self) -> int:
        n = sum(8 * (len(c[0]) + len(c[1])) + c[2].nbytes for c in self.groups if c is not None)
        return n + (0 if self.x is None else self.x.nbytes + 8 * len(self.slice_rows))


class _SparseStore:
    """Scores above per-image thresholds and the slices of their rotations, block by block,
    within a memory budget (CSR per block and image group).

    When the budget is exceeded the store is pruned with the current (higher) thresholds, and
    given up (``pruned`` returns None) when that does not free half of it.
    """

    def __init__(self, bk: Backend, budget_bytes: int, n_s: int, n_groups: int,
                 kernels: bool) -> None:
        self.bk, self.n_s, self.n_groups, self.kernels = bk, n_s, n_groups, kernels
        self.budget = max(0, budget_bytes)
        self.blocks: list[_StoredBlock] = []
        self.bytes = 0

    @property
    def full(self) -> bool:
        return self.bytes > self.budget

    def begin_block(self, row0: int, n_rows: int) -> None:
        self.blocks.append(_StoredBlock(row0, n_rows, [None] * self.n_groups))

    def add(self, j: int, full: Any, thresholds: NDArray) -> NDArray:
        """Terms of group ``j``'s scores ``full`` (n_c, G * nS) above ``thresholds`` (G,) per
        image; returns the rows with a term (host bool mask)."""
        thr = thresholds.astype(full.dtype)
        n_c = full.shape[0]
        if self.kernels:
            from ._kernels import score_block_count_above, score_block_gather_above

            counts = np.empty(n_c, dtype=np.int64)
            score_block_count_above(full, self.n_s, thr, counts)
            ptr = np.concatenate([[0], np.cumsum(counts)])
            cols = np.empty(ptr[-1], dtype=np.int64)
            vals = np.empty(ptr[-1], dtype=full.dtype)
            score_block_gather_above(full, self.n_s, thr, ptr, cols, vals)
        else:
            xp = self.bk.xp
            r, cols = xp.nonzero(full > xp.asarray(np.repeat(thr, self.n_s))[None, :])
            vals = full[r, cols]
            counts = np.bincount(self.bk.to_host(r), minlength=n_c)
            ptr = np.concatenate([[0], np.cumsum(counts)])
        if ptr[-1]:
            blk = self.blocks[-1]
            blk.groups[j] = (ptr, cols, vals)
            self.bytes += 8 * (len(ptr) + len(cols)) + vals.nbytes
        return counts > 0

    def end_block(self, has: NDArray, x: Any) -> None:
        """Keep the slices ``x`` of the block's rows that have terms (``has``)."""
        blk = self.blocks[-1]
        if not has.any():
            self.blocks.pop()
            return
        blk.slice_rows = np.flatnonzero(has)
        blk.x = x[self.bk.xp.asarray(blk.slice_rows)]
        self.bytes += blk.x.nbytes + 8 * len(blk.slice_rows)

    def pruned(self, thresholds: list[NDArray]) -> _SparseStore | None:
        """Drop the terms below the per-image ``thresholds`` (one array per group) and the
        slices no longer used; None if more than half the budget is still in use."""
        xp = self.bk.xp
        blocks = []
        for blk in self.blocks:
            has = np.zeros(blk.n_rows, dtype=bool)
            for j, csr in enumerate(blk.groups):
                if csr is None:
                    continue
                ptr, cols, vals = csr
                keep = vals > xp.asarray(thresholds[j].astype(vals.dtype))[cols // self.n_s]
                rows = np.repeat(np.arange(blk.n_rows), np.diff(ptr))[self.bk.to_host(keep)]
                counts = np.bincount(rows, minlength=blk.n_rows)
                blk.groups[j] = ((np.concatenate([[0], np.cumsum(counts)]), cols[keep],
                                  vals[keep]) if len(rows) else None)
                has |= counts > 0
            if has.any():
                used = has[blk.slice_rows]
                blk.x = blk.x[xp.asarray(used)]
                blk.slice_rows = blk.slice_rows[used]
                blocks.append(blk)
        self.blocks = blocks
        self.bytes = sum(b.nbytes for b in blocks)
        return None if self.bytes > self.budget // 2 else self


def _csr_posterior(bk: Backend, csr: tuple[Any, Any, Any], n_s: int, log_l: NDArray,
                   lo: float, kernels: bool) -> tuple[Any, NDArray]:
    """Posterior ``exp(v - log_l[col // nS])`` of stored terms (0 when it underflows) and the
    number of nonzero terms per row."""
    ptr, cols, vals = csr
    if kernels:
        from ._kernels import csr_posterior

        p = np.empty_like(vals)
        row_nnz = np.empty(len(ptr) - 1, dtype=np.int64)
        csr_posterior(ptr, cols, vals, n_s, log_l, lo, p, row_nnz)
        return p, row_nnz
    xp = bk.xp
    d = vals - xp.asarray(log_l)[cols // n_s]
    p = xp.where(d > lo, xp.exp(d), 0).astype(vals.dtype)
    rows = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    row_nnz = np.bincount(rows, weights=bk.to_host(p > 0), minlength=len(ptr) - 1)
    return p, row_nnz.astype(np.int64)


def _csr_to_dense(bk: Backend, rows: NDArray, csr: tuple[Any, Any, Any], p: Any, out: Any,
                  kernels: bool) -> None:
    """``out[i, cols] = p`` for the stored terms of the local rows ``rows[i]``."""
    ptr, cols, _ = csr
    if kernels:
        from ._kernels import csr_rows_to_dense

        csr_rows_to_dense(rows, ptr, cols, p, out)
        return
    xp = bk.xp
    pos = np.full(len(ptr) - 1, -1)
    pos[rows] = np.arange(len(rows))
    r = np.repeat(pos, np.diff(ptr))
    sel = r >= 0
    out[xp.asarray(r[sel]), cols[xp.asarray(sel)]] = p[xp.asarray(sel)]


@dataclass
class _DenseState:
    """Running sums of one image group over the blocks of the value pass (online log-sum-exp
    relative to ``run_max``)."""

    run_max: NDArray   # (G,)
    sum_i: NDArray     # (G, nI)
    sum_s: NDArray     # (G, nS)
    best: NDArray      # (G,) best MAP criterion so far
    log_d: NDArray     # (G, nD)
    partial: NDArray   # (G,) log of the sum over the blocks so far

    @classmethod
    def empty(cls, n_img: int, n_d: int, n_i: int, n_s: int) -> _DenseState:
        return cls(np.full(n_img, -np.inf), np.zeros((n_img, n_i)), np.zeros((n_img, n_s)),
                   np.full(n_img, -np.inf), np.full((n_img, n_d), -np.inf),
                   np.full(n_img, -np.inf))

    def add_block(self, bk: Backend, full: Any, stats: tuple[NDArray, ...], n_s: int, d0: int,
                  d1: int, lo: float, kernels: bool, g: _Group, acc: _Accumulator) -> NDArray:
        """Fold in the scores of directions ``d0:d1``; returns the partial log-likelihoods."""
        row_max, row_fmax, row_farg = stats
        n_img, n_i = len(g.images), len(g.inplane)
        rdt = full.dtype
        cm = row_max.max(axis=0)                                                # (G,)
        cm_safe = np.where(np.isfinite(cm), cm, 0.0)
        row_sum, s_s = _exp_sums(bk, full, n_s, cm_safe.astype(rdt), lo, kernels)
        er = row_sum.reshape(d1 - d0, n_i, n_img)
        with np.errstate(divide="ignore"):
            self.log_d[:, d0:d1] = (np.log(er.sum(axis=1)) + cm_safe[None, :]).T
        s_i = er.sum(axis=0).T                                                  # (G, nI)
        new_max = np.maximum(self.run_max, cm)
        ref = np.where(np.isfinite(new_max), new_max, 0.0)
        a = np.where(np.isfinite(self.run_max), np.exp(self.run_max - ref), 0.0)
        bfac = np.where(np.isfinite(cm), np.exp(cm_safe - ref), 0.0)
        self.sum_i = self.sum_i * a[:, None] + s_i * bfac[:, None]
        self.sum_s = self.sum_s * a[:, None] + s_s * bfac[:, None]
        self.run_max = new_max
        # MAP over quadrature weight x likelihood (first maximum in (rotation, shift) order)
        fmax = row_fmax.max(axis=0)
        for j in np.flatnonzero(fmax > self.best):
            r = int(np.argmax(row_fmax[:, j]))
            dd, ii = divmod(r, n_i)
            im = g.images[j]
            acc.map_d[im] = g.directions[d0 + dd]
            acc.map_i[im] = g.inplane[ii]
            acc.map_s[im] = g.shifts[int(row_farg[r, j])]
            self.best[j] = fmax[j]
        self.partial = np.logaddexp(self.partial, _logsumexp(self.log_d[:, d0:d1], axis=1))
        return self.partial

    def finish(self, g: _Group, acc: _Accumulator) -> NDArray:
        """Write the group's log-likelihoods and marginals; returns ``log_l`` (G,)."""
        log_l = _logsumexp(self.log_d, axis=1)
        with np.errstate(divide="ignore"):
            ref = np.where(np.isfinite(self.run_max), self.run_max, 0.0)[:, None] - log_l[:, None]
            log_i = np.log(self.sum_i) + ref
            log_s = np.log(self.sum_s) + ref
        for j, im in enumerate(g.images):
            acc.log_d[im, g.directions] = self.log_d[j] - log_l[j]
            acc.log_i[im, g.inplane] = log_i[j]
            acc.log_s[im, g.shifts] = log_s[j]
        acc.log_l[g.images] = log_l
        acc.n_eval[g.images] = len(g.directions) * len(g.inplane) * len(g.shifts)
        return log_l


# ------------------------------------------------------------------------- score block passes
# exponentials of arguments below these are exactly 0 in the dtype (float32: e^-104 < 2^-150)
_EXP_LO = {"f": -110.0, "d": -750.0}
_SKIP_MARGIN = 16.0  # rounding of the recomputed scores and of log_l in the working dtype
_SPARSE_DENSITY = 16  # the gradient uses the sparse kernel below 1/16 nonzero posterior terms


def _complete_scores(bk: Backend, full: Any, n_s: int, lwr: NDArray, norm: Any, lws: Any,
                     lis_r: NDArray, lis_s: Any, kernels: bool) -> tuple[NDArray, ...]:
    """Cross terms -> scores in place, ``(full + (lwr - norm)) + lws``, viewed (n_c, G, nS);
    returns (row_max, row_fmax, row_farg), each (n_c, G) on the host: the maxima over shifts
    of the score and of the MAP criterion (score minus log importance weights), and the first
    shift reaching the latter."""
    n_c, n_img = norm.shape
    if kernels:
        from ._kernels import score_block_complete

        row_max = np.empty((n_c, n_img))
        row_fmax = np.empty((n_c, n_img))
        row_farg = np.empty((n_c, n_img), dtype=np.int64)
        score_block_complete(full, n_s, lwr, np.ascontiguousarray(norm), lws, lis_r, lis_s,
                             row_max, row_fmax, row_farg)
        return row_max, row_fmax, row_farg
    xp = bk.xp
    f3 = full.reshape(n_c, n_img, n_s)
    f3 += (xp.asarray(lwr)[:, None] - norm)[:, :, None]
    f3 += lws[None, None, :]
    fq = f3 - xp.asarray(lis_r)[:, None, None] - lis_s[None, None, :]
    return (bk.to_host(f3.max(axis=2)).astype(np.float64),
            bk.to_host(fq.max(axis=2)).astype(np.float64), bk.to_host(fq.argmax(axis=2)))


def _exp_sums(bk: Backend, full: Any, n_s: int, ref: NDArray, lo: float, kernels: bool
              ) -> tuple[NDArray, NDArray]:
    """``e = exp(score - ref[b])``: ``(sum_s e (n_c, G), sum_r e (G, nS))``, float64 on the
    host."""
    n_img = len(ref)
    n_c = full.shape[0]
    if kernels:
        from ._kernels import score_block_exp_sums

        row_sum = np.empty((n_c, n_img))
        parts = np.empty((min(n_c, 4 * numba.get_num_threads()), n_img, n_s))
        score_block_exp_sums(full, n_s, ref, lo, row_sum, parts)
        return row_sum, parts.sum(axis=0)
    xp = bk.xp
    e = xp.exp(full.reshape(n_c, n_img, n_s) - xp.asarray(ref)[None, :, None])
    return (bk.to_host(e.sum(axis=2)).astype(np.float64),
            bk.to_host(e.sum(axis=0)).astype(np.float64))


def _posterior(bk: Backend, full: Any, n_s: int, log_l: Any, lo: float, kernels: bool) -> Any:
    """Scores -> posterior ``exp(score - log_l[b])`` in place; returns ``sum_s`` (n_c, G)."""
    n_c, n_img = full.shape[0], len(log_l)
    if kernels:
        from ._kernels import score_block_posterior

        row_sum = np.empty((n_c, n_img), dtype=full.dtype)
        score_block_posterior(full, n_s, log_l, lo, row_sum)
        return row_sum
    xp = bk.xp
    p = full.reshape(n_c, n_img, n_s)
    xp.subtract(p, log_l[None, :, None], out=p)
    xp.exp(p, out=p)
    return p.sum(axis=2)


# ---------------------------------------------------------------------------------- kernels
@numba.njit(parallel=True, fastmath=True, cache=True)
def _small_group_scores(xt, rows, rot_ptr, zv, col_ptr, hrep, img_ptr, n_shift, lwr, lws,
                        out_ptr, out):  # pragma: no cover - jitted
    """Scores of many small groups: for group g, rotation a (slice row ``rows[a]`` of ``xt``),
    image m and shift s: ``<x, zv[m, s]> - <x^2, hrep[m]> + lwr[a] + lws[m, s]``.

    xt : (n_table, 2Mh) interleaved real slices; zv : (sum G nS, 2Mh); hrep : (sum G, 2Mh);
    out : flat, group g at ``out_ptr[g]`` laid out (n_r, G, nS).  One thread per group.
    """
    n_groups = rot_ptr.shape[0] - 1
    k = xt.shape[1]
    for g in numba.prange(n_groups):
        r0 = rot_ptr[g]
        c0 = col_ptr[g]
        i0 = img_ptr[g]
        nr = rot_ptr[g + 1] - r0
        nc = col_ptr[g + 1] - c0
        ni = img_ptr[g + 1] - i0
        ns = n_shift[g]
        o = out_ptr[g]
        for a in range(nr):
            row = rows[r0 + a]
            for im in range(ni):
                nrm = xt[row, 0] * 0
                for j in range(k):
                    v = xt[row, j]
                    nrm += v * v * hrep[i0 + im, j]
                base = lwr[r0 + a] - nrm
                for s in range(ns):
                    c = im * ns + s
                    acc = xt[row, 0] * 0
                    for j in range(k):
                        acc += xt[row, j] * zv[c0 + c, j]
                    out[o + a * nc + c] = acc + base + lws[c0 + c]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _small_group_gradients(p, out_ptr, xt, rows, rot_ptr, zv, col_ptr, h2rep, img_ptr,
                           n_shift, grad):  # pragma: no cover - jitted
    """Gradient rows of many small groups (interleaved real, one row per group rotation):
    ``grad[a] = sum_{m,s} p[a,m,s] zv[m,s] - x_a * sum_m (sum_s p[a,m,s]) h2rep[m]``.
    Posterior weights that are exactly 0 are skipped."""
    n_groups = rot_ptr.shape[0] - 1
    k = xt.shape[1]
    for g in numba.prange(n_groups):
        r0 = rot_ptr[g]
        c0 = col_ptr[g]
        i0 = img_ptr[g]
        nr = rot_ptr[g + 1] - r0
        nc = col_ptr[g + 1] - c0
        ni = img_ptr[g + 1] - i0
        ns = n_shift[g]
        o = out_ptr[g]
        tmp = np.empty(k, dtype=grad.dtype)  # thread-local accumulator (vectorises)
        for a in range(nr):
            row = rows[r0 + a]
            tmp[:] = 0
            for im in range(ni):
                pr = p[o] * 0
                for s in range(ns):
                    c = im * ns + s
                    w = p[o + a * nc + c]
                    if w == 0:
                        continue
                    pr += w
                    zrow = zv[c0 + c]
                    for j in range(k):
                        tmp[j] += w * zrow[j]
                if pr != 0:
                    hrow = h2rep[i0 + im]
                    xrow = xt[row]
                    for j in range(k):
                        tmp[j] -= pr * hrow[j] * xrow[j]
            grad[r0 + a, :] = tmp


# ---------------------------------------------------------------------------------- objective
def negative_log_posterior(
    likelihood: MarginalLikelihood,
    volume: Any,
    images: PreparedImages,
    prior: Prior | None = None,
    *,
    subsets: list[PoseSubset] | None = None,
    prior_weight: float = 1.0,
) -> tuple[float, Any, LikelihoodResult]:
    """Objective of Eq. (6) on a batch: ``f(V) = -prior_weight log p(V) - sum_b log p(I_b | V)``.

    Parameters
    ----------
    likelihood : MarginalLikelihood
    volume : (N, N, N) real-space density [z, y, x] (float32 or float64)
    images : PreparedImages of the batch
    prior : a :class:`~cryonb.priors.Prior` (default :class:`~cryonb.priors.NoPrior`)
    subsets : importance-sampled subsets (one per image) or None (exhaustive)
    prior_weight : e.g. ``batch_size / n_particles`` for a minibatch estimate of Eq. (6)

    Returns
    -------
    value : float
    gradient : (N, N, N) ``df/dV``, same dtype as ``volume``
    result : the LikelihoodResult
    """
    prior = NoPrior() if prior is None else prior
    vol_ft = likelihood.model.projector.volume_to_fourier(volume)
    res = likelihood.evaluate(vol_ft, images, subsets=subsets, gradient=True)
    value = -prior_weight * prior.log_prob(volume) - float(np.sum(res.log_likelihood))
    grad = -prior_weight * prior.grad(volume) - res.gradient
    return value, grad.astype(volume.dtype, copy=False), res


# ---------------------------------------------------------------------------------- reference
def reference_log_joint(
    model: ImageModel,
    volume_ft: Any,
    images: Any,
    ctf: CTFParams | None,
    noise_sigma: float | ArrayLike,
    quadrature: Quadrature,
) -> NDArray:
    """Direct evaluation of ``log(w_d w_i w_s p(I_b | R_{d,i}, t_s, V))`` (NumPy reference).

    Residuals are formed explicitly over the **full** disc (no half-plane, no norm expansion),
    through ``model.forward_points``, in the precision of ``volume_ft``.  For tests and small
    problems only.

    Parameters
    ----------
    images : (B, M) complex Fourier values at ``model.coords_px`` or (B, N, N) real images
    noise_sigma : scalar or (B,)

    Returns
    -------
    (B, Nd, Ni, Ns) float64; ``logsumexp`` over the last three axes is ``log p(I_b | V)``.
    """
    xp = get_backend(model.backend).xp
    n = model.box_size
    data = xp.asarray(images)
    if data.ndim == 3:
        data = fft2_centered(data.astype(np.complex128))[:, model.mask]
    b, m = data.shape
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), (b,))
    q = quadrature
    rots = q.rotations()
    lwd, lwi, lws = q.log_weights()
    out = np.empty((b, q.n_directions, q.n_inplane, q.n_shifts))
    for j in range(b):
        cj = None if ctf is None else ctf.subset([j] * q.n_shifts)
        for r in range(q.n_rotations):
            rr = np.broadcast_to(rots[r], (q.n_shifts, 3, 3))
            pred = model.forward_points(volume_ft, rr, q.shifts_A, cj)         # (Ns, M)
            resid = data[j][None, :] - pred
            e = np.asarray(xp.sum(resid.real**2 + resid.imag**2, axis=1), dtype=np.float64)
            d, i = divmod(r, q.n_inplane)
            out[j, d, i] = (-e / (2.0 * n * n * sigma[j] ** 2)
                            - 0.5 * m * np.log(2 * np.pi * sigma[j] ** 2)
                            + lwd[d] + lwi[i] + lws)
    return out
