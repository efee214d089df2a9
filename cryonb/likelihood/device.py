"""The device likelihood engine (array API): Eq. 4, its posterior marginals and gradient.

One job: :class:`DeviceMarginalLikelihood`, the marginal likelihood (Eq. 4) and its gradient
in the GEMM form, with array-API operations only (CuPy on a GPU).

:class:`DeviceMarginalLikelihood` computes what :class:`cryonb.likelihood.MarginalLikelihood`
computes -- the same model, constants, half-plane, outputs (a
:class:`~cryonb.likelihood.LikelihoodResult`) and importance-sampling subsets -- with array-API
operations only, so it runs on CuPy (and on any namespace of the standard).  Data stay on the
host: :meth:`DeviceMarginalLikelihood.prepare` moves one minibatch of images to the device
(FFT, half-plane, CTF there), :meth:`DeviceMarginalLikelihood.evaluate` moves the Fourier
volume (if it is not there already) and returns host arrays (posteriors, MAP indices and the
real-space gradient), which the solver keeps on the host.

With ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 Re<a, b>`` the pose-dependent part of the score of
rotation ``r``, image ``b`` and shift ``s`` is ::

    score[r, b, s] = Re sum_k X_r(k) Z_bs(k)  -  sum_k H_b(k) |X_r(k)|^2

with ``X_r`` the half-plane slice, ``Z_bs = m c_b exp(2 pi i k.t_s) conj(y_b) / (N^2 sigma_b^2)``,
``H_b = m c_b^2 / (2 N^2 sigma_b^2)`` and ``m`` the half-plane weights (1 or 2).  Writing
``W = conj(Z)``, ``Re(X Z) = Re X Re W + Im X Im W``, so the cross term of a block of rotations
with all images and shifts is one real GEMM ``[Re X, Im X] @ [Re W, Im W]^T`` of shape
``(n_rot x 2Mh) @ (2Mh x B*Ns)`` and the norm term is the thin GEMM ``|X|^2 @ H^T``.  The
log-sum-exp runs over rotations x shifts per image (exactly per direction block, then across
blocks); the gradient is ``G_r = sum_{b,s} pi_{rbs} W_bs - X_r sum_b pi_rb 2 H_b`` (one GEMM
of the posterior with ``[Re W, Im W]``), back-projected and mapped through the adjoint of
:meth:`DeviceProjector.volume_to_fourier`.  Blocks of whole directions bound the memory
(``block_bytes``); scores are kept for the gradient pass when they fit in ``cache_bytes``.

Use :func:`~cryonb.likelihood.make_engine` to get the engine that suits a backend: the
numba/NumPy :class:`~cryonb.likelihood.MarginalLikelihood` for NumPy, this class otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from functools import cached_property
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..backend import NUMPY, get_backend
from ..ctf import CTFParams
from ..device.ctf import evaluate_ctf
from ..device.fourier import fft2_centered
from ..device.namespace import (
    complex_dtype,
    complex_from_parts,
    real_dtype,
    resolve_namespace,
    to_host,
    to_namespace,
)
from ..device.projection import DeviceProjector, shift_phases
from ..image_model import ImageModel
from ..quadrature import Quadrature
from .grouping import _Accumulator, _Group, group_images
from .types import (
    LikelihoodResult,
    PoseSubset,
    PreparedImages,
    _log_norm,
    _logsumexp,
    _noise_sigmas,
    estimate_noise_sigma,
    hermitian_half_plane,
)

__all__ = ["DeviceMarginalLikelihood"]


class _GradientBuffer:
    """Collects gradient rows (device) with their rotations (host); back-projects in blocks."""

    def __init__(self, projector: DeviceProjector, coords: Any, cdt: Any, max_rows: int) -> None:
        xp = projector.xp
        p = projector.padded_size
        self.projector, self.coords, self.xp = projector, coords, xp
        self.volume = xp.zeros((p, p, p), dtype=cdt)
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
        if self.rows:
            rows = self.rows[0] if len(self.rows) == 1 else self.xp.concat(self.rows, axis=0)
            self.volume = self.volume + self.projector.backproject(
                rows, np.concatenate(self.rots), self.coords)
        self.rots, self.rows, self.n = [], [], 0


@dataclass(frozen=True, eq=False)
class DeviceMarginalLikelihood:
    """Marginal likelihood over a :class:`Quadrature`, posterior marginals and gradient,
    computed in an array-API namespace (CuPy on a GPU; NumPy or ``array_api_strict`` in tests).

    Parameters
    ----------
    model : ImageModel
        Box, pixel size, band limit, padding, gridding correction and CTF sign (its geometry is
        read on the host; its own backend is not used for the computation).
    quadrature : Quadrature
        Pose and shift grid.
    xp : module or None
        The array namespace: ``cupy``, ``numpy``, ``array_api_strict``, ... (NumPy and CuPy are
        wrapped by ``array_api_compat``); ``None`` takes the namespace of ``model.backend``.
    block_bytes : int
        Working-block size: the scores of one block of directions against all images and
        shifts, the ``W`` matrix of one image group, one batch of back-projected rows.
    cache_bytes : int
        Scores and slices are kept between the value and gradient passes if they fit.

    Examples
    --------
    >>> lik = DeviceMarginalLikelihood(model, quadrature, xp=cupy)     # doctest: +SKIP
    >>> batch = lik.prepare(host_images, ctf, noise_sigma=1.0)          # moved to the GPU
    >>> res = lik.evaluate(lik.volume_to_fourier(host_volume), batch, gradient=True)
    >>> res.log_likelihood, res.gradient                                # NumPy, on the host
    """

    model: ImageModel
    quadrature: Quadrature
    xp: Any = None
    block_bytes: int = 64 * 2**20
    cache_bytes: int = 512 * 2**20

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle by the namespace's module name (modules themselves do not pickle), so the
        engine can be sent to other processes (e.g. Dask workers)."""
        return (_rebuild, (self.model, self.quadrature, self.namespace.__name__,
                           self.block_bytes, self.cache_bytes))

    # ------------------------------------------------------------------ geometry
    @cached_property
    def namespace(self) -> ModuleType:
        """The array-API namespace used for the computation."""
        if self.xp is None:
            return get_backend(self.model.backend).namespace
        return resolve_namespace(self.xp)

    @cached_property
    def projector(self) -> DeviceProjector:
        """The :class:`DeviceProjector` of the model's geometry, in :attr:`namespace`."""
        m = self.model
        return DeviceProjector(m.box_size, self.namespace, pad=m.pad,
                               gridding_correction=m.gridding_correction)

    @cached_property
    def _host_model(self) -> ImageModel:
        """The model with NumPy arrays: its frequency geometry is computed on the host."""
        return replace(self.model, backend=NUMPY)

    @cached_property
    def _coords_host(self) -> NDArray:
        return np.asarray(self._host_model.coords_px, dtype=np.float64)

    @cached_property
    def half_plane(self) -> tuple[NDArray, NDArray]:
        """``(index into model.coords_px, weight)`` of the Hermitian half-plane (host)."""
        return hermitian_half_plane(self._coords_host, self.model.box_size)

    @cached_property
    def n_disc(self) -> int:
        """M, the number of frequencies in the band-limit disc."""
        return int(self._coords_host.shape[0])

    @cached_property
    def _half_coords(self) -> Any:
        return to_namespace(self.namespace, self._coords_host[self.half_plane[0]])

    @cached_property
    def _half_freqs(self) -> Any:
        return self._half_coords / (self.model.box_size * self.model.pixel_size_A)

    @cached_property
    def _half_weight(self) -> Any:
        return to_namespace(self.namespace, self.half_plane[1])

    @cached_property
    def _half_flat(self) -> Any:
        """Positions of the half-plane points in a flattened (N, N) centred spectrum."""
        disc = np.flatnonzero(self._host_model.mask.ravel())
        return to_namespace(self.namespace, disc[self.half_plane[0]].astype(np.int64))

    def volume_to_fourier(self, volume: ArrayLike | Any) -> Any:
        """Real (N, N, N) volume (host or device) -> padded spectrum on the device."""
        return self.projector.volume_to_fourier(volume)

    # ------------------------------------------------------------------ data
    def prepare(self, images: Any, ctf: CTFParams | None = None,
                noise_sigma: float | ArrayLike | None = None,
                dtype: Any = np.float32) -> PreparedImages:
        """Move a batch of images to the device and reduce it to half-plane Fourier data.

        Parameters
        ----------
        images : (B, N, N) real images, (B, N, N) complex centred spectra, or (B, M) complex
            Fourier values at ``model.coords_px``; host (NumPy) or device arrays
        ctf : CTFParams of length B, or None
        noise_sigma : real-space noise standard deviation per pixel, scalar or (B,); ``None``
            estimates it from real images (:func:`~cryonb.likelihood.estimate_noise_sigma`)
        dtype : float32 (default) or float64, the precision of the computation

        Returns
        -------
        PreparedImages with ``data`` (B, Mh) and ``ctf`` (B, Mh) on the device,
        ``noise_sigma`` and ``log_norm`` (B,) on the host
        """
        xp = self.namespace
        n = self.model.box_size
        single = np.dtype(dtype) in (np.float32, np.complex64)
        rdt, cdt = (xp.float32, xp.complex64) if single else (xp.float64, xp.complex128)
        arr = to_namespace(xp, images)
        is_complex = xp.isdtype(arr.dtype, "complex floating")
        if arr.ndim == 3 and tuple(arr.shape[1:]) == (n, n):
            if not is_complex and noise_sigma is None:
                noise_sigma = estimate_noise_sigma(to_host(arr))
            spectra = (xp.astype(arr, xp.complex128) if is_complex
                       else fft2_centered(xp.astype(arr, xp.float64)))
            y = xp.take(xp.reshape(spectra, (arr.shape[0], n * n)), self._half_flat, axis=1)
        elif arr.ndim == 2 and arr.shape[1] == self.n_disc:
            index = to_namespace(xp, self.half_plane[0])
            y = xp.take(xp.astype(arr, xp.complex128), index, axis=1)
        else:
            raise ValueError(f"images must be (B, {n}, {n}) or (B, {self.n_disc}), "
                             f"got {tuple(arr.shape)}")
        if noise_sigma is None:
            raise ValueError("noise_sigma is needed for Fourier-space input")
        b = y.shape[0]
        sigma = _noise_sigmas(noise_sigma, b)
        power = xp.real(y) ** 2 + xp.imag(y) ** 2
        energy = to_host(xp.sum(self._half_weight * power, axis=1))
        log_norm = _log_norm(energy, sigma, n, self.n_disc)
        ctf_vals = None
        if ctf is not None:
            if len(ctf) != b:
                raise ValueError(f"got {len(ctf)} CTFs for {b} images")
            f = self._half_freqs
            ctf_vals = xp.astype(evaluate_ctf(ctf, f[:, 0], f[:, 1],
                                              convention=self.model.ctf_convention), rdt)
        return PreparedImages(xp.astype(y, cdt), ctf_vals, sigma, log_norm)

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
        volume_ft : complex (P, P, P) padded spectrum (host or device), from
            :meth:`volume_to_fourier` or ``model.projector.volume_to_fourier``; its precision
            (complex64 / complex128) sets the precision of the computation
        images : PreparedImages from :meth:`prepare`, or raw images (then ``ctf`` and
            ``noise_sigma`` are passed to :meth:`prepare`)
        subsets : one :class:`~cryonb.likelihood.PoseSubset` per image (importance sampling),
            or None for the exhaustive sum over the whole quadrature
        gradient : also return ``d/dV sum_b log p(I_b | V)`` for the real-space volume

        Returns
        -------
        LikelihoodResult with host (NumPy) arrays; ``gradient`` is (N, N, N) in the precision
        of ``volume_ft``
        """
        xp = self.namespace
        vft = to_namespace(xp, volume_ft)
        cdt = complex_dtype(xp, vft.dtype)
        rdt = real_dtype(xp, cdt)
        vft = xp.astype(vft, cdt)
        single = rdt == xp.float32
        if not isinstance(images, PreparedImages):
            images = self.prepare(images, ctf, noise_sigma,
                                  dtype=np.float32 if single else np.float64)
        data = to_namespace(xp, images.data, dtype=cdt)
        ctf_vals = None if images.ctf is None else to_namespace(xp, images.ctf, dtype=rdt)
        q = self.quadrature
        b = int(data.shape[0])
        out = _Accumulator.empty(b, q)
        mh = len(self.half_plane[0])
        itemsize = 4 if single else 8
        buffer = None
        if gradient:
            buffer = _GradientBuffer(self.projector, self._half_coords, cdt,
                                     self.block_bytes // (2 * mh * itemsize))
        for group in self._groups(b, subsets, mh, itemsize):
            self._evaluate_group(vft, data, ctf_vals, images.noise_sigma, group, out, buffer)
        grad = None
        if buffer is not None:
            buffer.flush()
            grad = to_host(self.projector.fourier_to_volume_adjoint(buffer.volume))
        return LikelihoodResult(
            log_likelihood=out.log_l + images.log_norm,
            log_marginal_directions=out.log_d, log_marginal_inplane=out.log_i,
            log_marginal_shifts=out.log_s, map_direction=out.map_d, map_inplane=out.map_i,
            map_shift=out.map_s, n_evaluated=out.n_eval, quadrature=q, gradient=grad)

    def _groups(self, b: int, subsets: list[PoseSubset] | None, mh: int, itemsize: int
                ) -> list[_Group]:
        """Group images by identical subsets; split groups so that ``W`` fits in a block."""
        return [g for cluster in group_images(self.quadrature, b, subsets, mh, itemsize,
                                              self.block_bytes) for g in cluster]

    def _group_data(self, data: Any, ctf_vals: Any, noise_sigma: NDArray, g: _Group,
                    cdt: Any) -> tuple[Any, Any]:
        """``wv`` (G*nS, 2Mh) = ``[Re W, Im W]`` with ``W = conj(Z)``; ``h2`` (G, Mh) = 2 H."""
        xp = self.namespace
        n = self.model.box_size
        idx = to_namespace(xp, g.images)
        kappa = to_namespace(xp, 1.0 / (n * n * noise_sigma[g.images] ** 2))       # (G,) f64
        base = kappa[:, None] * self._half_weight[None, :]                        # (G, Mh) f64
        if ctf_vals is not None:
            c = xp.astype(xp.take(ctf_vals, idx, axis=0), xp.float64)
            base = base * c
            h2 = base * c
        else:
            h2 = base
        shifts = to_namespace(xp, self.quadrature.shifts_A[g.shifts], dtype=xp.float64)
        phases = shift_phases(self._half_freqs, shifts)                           # (nS, Mh)
        dy = base * xp.astype(xp.take(data, idx, axis=0), xp.complex128)           # (G, Mh)
        w = xp.astype(dy[:, None, :] * xp.conj(phases)[None, :, :], cdt)           # (G, nS, Mh)
        w = xp.reshape(w, (len(g.images) * len(g.shifts), -1))
        rdt = real_dtype(xp, cdt)
        return xp.concat([xp.real(w), xp.imag(w)], axis=1), xp.astype(h2, rdt)

    def _evaluate_group(self, vft: Any, data: Any, ctf_vals: Any, noise_sigma: NDArray,
                        g: _Group, out: _Accumulator, buffer: _GradientBuffer | None) -> None:
        xp = self.namespace
        q = self.quadrature
        cdt = vft.dtype
        rdt = real_dtype(xp, cdt)
        n_img, n_d, n_i, n_s = len(g.images), len(g.directions), len(g.inplane), len(g.shifts)
        mh = len(self.half_plane[0])
        wv, h2 = self._group_data(data, ctf_vals, noise_sigma, g, cdt)
        half_h_t = xp.matrix_transpose(0.5 * h2)                                  # (Mh, G)
        lwd_q, lwi_q, lws_q = q.log_weights()
        lwd, lwi = lwd_q[g.directions] + g.lis_d, lwi_q[g.inplane] + g.lis_i
        lws = to_namespace(xp, lws_q[g.shifts] + g.lis_s, dtype=rdt)
        lis_s = to_namespace(xp, g.lis_s, dtype=rdt)

        itemsize = 4 if rdt == xp.float32 else 8
        row_bytes = itemsize * (n_img * n_s + 4 * mh)
        k_d = int(max(1, min(n_d, self.block_bytes // max(1, row_bytes * n_i))))
        chunks = [(d0, min(n_d, d0 + k_d)) for d0 in range(0, n_d, k_d)]
        keep = (buffer is not None
                and n_d * n_i * (n_img * n_s + 2 * mh) * itemsize <= self.cache_bytes)

        def scores(d0: int, d1: int) -> tuple[NDArray, Any, Any]:
            rots = q.rotations_for(g.directions[d0:d1], g.inplane)                # host
            x = self.projector.slice(vft, rots, self._half_coords)                # (n_c, Mh)
            xr, xi = xp.real(x), xp.imag(x)
            cross = xp.concat([xr, xi], axis=1) @ xp.matrix_transpose(wv)         # (n_c, G*nS)
            norm = (xr * xr + xi * xi) @ half_h_t                                 # (n_c, G)
            lwr = to_namespace(xp, (lwd[d0:d1, None] + lwi[None, :]).ravel(), dtype=rdt)
            full = (xp.reshape(cross, (-1, n_img, n_s))
                    + (lwr[:, None] - norm)[:, :, None] + lws[None, None, :])
            return rots, x, full

        log_d = np.full((n_img, n_d), -np.inf)
        block_max, block_i, block_s, cached = [], [], [], []
        best = np.full(n_img, -np.inf)
        for d0, d1 in chunks:
            rots, x, full = scores(d0, d1)
            cm = to_host(xp.max(full, axis=(0, 2))).astype(np.float64)           # (G,)
            cm_safe = np.where(np.isfinite(cm), cm, 0.0)
            e = xp.exp(full - to_namespace(xp, cm_safe, dtype=rdt)[None, :, None])
            er = xp.reshape(xp.sum(e, axis=2), (d1 - d0, n_i, n_img))
            with np.errstate(divide="ignore"):
                log_d[:, d0:d1] = (np.log(to_host(xp.sum(er, axis=1)).astype(np.float64)).T
                                   + cm_safe[:, None])
            block_max.append(cm)
            block_i.append(to_host(xp.sum(er, axis=0)).astype(np.float64).T)     # (G, nI)
            block_s.append(to_host(xp.sum(e, axis=0)).astype(np.float64))        # (G, nS)
            # MAP over quadrature weight x likelihood (importance weights taken out)
            fq = full
            if g.has_is:
                lis_r = to_namespace(xp, (g.lis_d[d0:d1, None] + g.lis_i[None, :]).ravel(),
                                     dtype=rdt)
                fq = full - lis_r[:, None, None] - lis_s[None, None, :]
            per_image = xp.reshape(xp.permute_dims(fq, (1, 0, 2)), (n_img, -1))
            value = to_host(xp.max(per_image, axis=1)).astype(np.float64)
            where = to_host(xp.argmax(per_image, axis=1))
            for j in np.flatnonzero(value > best):
                r, s = divmod(int(where[j]), n_s)
                dd, ii = divmod(r, n_i)
                out.map_d[g.images[j]] = g.directions[d0 + dd]
                out.map_i[g.images[j]] = g.inplane[ii]
                out.map_s[g.images[j]] = g.shifts[s]
                best[j] = value[j]
            if keep:
                cached.append((rots, x, full))

        # combine the blocks: log marginals relative to the largest finite block maximum
        log_l = _logsumexp(log_d, axis=1)                                         # (G,)
        bm = np.stack(block_max)                                                  # (n_chunks, G)
        top = np.max(np.where(np.isfinite(bm), bm, -np.inf), axis=0)
        top = np.where(np.isfinite(top), top, 0.0)
        scale = np.where(np.isfinite(bm), np.exp(np.where(np.isfinite(bm), bm, 0.0) - top), 0.0)
        sum_i = sum(s[:, None] * blk for s, blk in zip(scale, block_i, strict=True))
        sum_s = sum(s[:, None] * blk for s, blk in zip(scale, block_s, strict=True))
        with np.errstate(divide="ignore"):
            log_i = np.log(sum_i) + (top - log_l)[:, None]
            log_s = np.log(sum_s) + (top - log_l)[:, None]
        for j, im in enumerate(g.images):
            out.log_d[im, g.directions] = log_d[j] - log_l[j]
            out.log_i[im, g.inplane] = log_i[j]
            out.log_s[im, g.shifts] = log_s[j]
        out.log_l[g.images] = log_l
        out.n_eval[g.images] = n_d * n_i * n_s

        if buffer is None:
            return
        # gradient pass: G_r = sum_{b,s} pi W - X_r * sum_b pi_rb 2H_b, posterior pi from log_l
        ll = to_namespace(xp, log_l, dtype=rdt)
        for k, (d0, d1) in enumerate(chunks):
            rots, x, full = cached[k] if keep else scores(d0, d1)
            p = xp.exp(full - ll[None, :, None])                                  # (n_c, G, nS)
            rows = xp.reshape(p, (p.shape[0], -1)) @ wv                           # (n_c, 2Mh)
            pr = xp.sum(p, axis=2)                                                # (n_c, G)
            grad_rows = complex_from_parts(rows[:, :mh], rows[:, mh:]) - (pr @ h2) * x
            buffer.add(rots, grad_rows)


def _rebuild(model: ImageModel, quadrature: Quadrature, namespace: str, block_bytes: int,
             cache_bytes: int) -> DeviceMarginalLikelihood:
    return DeviceMarginalLikelihood(model, quadrature, xp=importlib.import_module(namespace),
                                    block_bytes=block_bytes, cache_bytes=cache_bytes)
