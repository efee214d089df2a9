"""The host likelihood engine (NumPy + numba): Eq. 4, its posterior marginals and gradient.

One job: :class:`MarginalLikelihood`, the marginal likelihood of particle images over the pose
quadrature (Eq. 4) and its gradient with respect to the volume, on the CPU.  The GEMM passes are
in :mod:`.dense`, the sparse store in :mod:`.sparse`, the sweeps over score blocks in
:mod:`.scores`; :func:`~cryonb.likelihood.make_engine` picks this engine for NumPy.

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
(:mod:`cryonb._kernels`, :mod:`.scores`); the value pass is one sweep per block (:mod:`.fused`),
which, when the block is kept for the gradient, leaves the exponentials in it so that the
posterior is one multiplication per term.  The gradient has the same structure: per rotation,
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
GEMMs per image, threads across runs of rotations), which avoids thousands of tiny
multi-threaded BLAS calls.
float32/complex64 by default (the precision of ``volume_ft``), float64 for tests.  Each call
reports its wall time per phase in ``LikelihoodResult.timings``.
:func:`~cryonb.likelihood.reference_log_joint` is the direct NumPy evaluation kept for tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..backend import Backend, get_backend
from ..ctf import CTFParams, evaluate_ctf
from ..fourier import fft2_centered
from ..image_model import ImageModel
from ..projection import shift_phases
from ..quadrature import Quadrature
from .dense import _BackprojectBuffer, _DensePass, _SliceTable
from .grouping import _Accumulator, _Group, group_images
from .types import (
    LikelihoodResult,
    PoseSubset,
    PreparedImages,
    _complex_dtype,
    _log_norm,
    _logsumexp,
    _noise_sigmas,
    _real_dtype,
    estimate_noise_sigma,
    hermitian_half_plane,
)

__all__ = ["MarginalLikelihood"]


def _drop_negligible(p: NDArray, rot_ptr: NDArray, col_ptr: NDArray, n_shift: NDArray,
                     eps: float) -> NDArray:
    """Zero, in place, the posterior terms of the small groups below ``eps / n`` (``n`` the
    number of terms of an image: rotations x shifts of its group) and return which rotation
    rows keep a term.

    ``p`` holds group ``g``'s posterior as (rotations, images x shifts) blocks, one after
    another.  The dropped mass of an image is at most ``eps`` (the working precision's
    epsilon): its gradient changes by less than the rounding of its own sum of ``n`` terms,
    and rotations left without a term are not back-projected (in an importance-sampled batch
    most of the sampled rotations of an image carry no mass: 74 % of them at 26 Å on GroEL,
    where back-projecting them took 2/3 of the gradient's time).
    """
    n_r = np.diff(rot_ptr)
    n_c = np.diff(col_ptr)
    tau = (eps / np.maximum(n_r * n_shift, 1)).astype(p.dtype)      # per group
    p[p < np.repeat(tau, n_r * n_c)] = 0
    row_len = np.repeat(n_c, n_r)
    live = np.zeros(len(row_len), dtype=bool)
    nonempty = row_len > 0
    starts = np.concatenate([[0], np.cumsum(row_len)[:-1]])[nonempty]
    if len(starts):
        live[nonempty] = np.maximum.reduceat(p, starts) > 0
    return live


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

    def volume_to_fourier(self, volume: Any) -> Any:
        """Real (N, N, N) volume -> padded centred spectrum (P, P, P) for :meth:`evaluate`
        (``model.projector.volume_to_fourier``; complex64 for float32, complex128 else)."""
        return self.model.projector.volume_to_fourier(volume)

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
        sigma = _noise_sigmas(noise_sigma, b)
        w = xp.asarray(half_w)
        energy = bk.to_host(xp.sum(w * (y.real**2 + y.imag**2), axis=1))
        log_norm = _log_norm(energy, sigma, n, self.n_disc)
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
        t_start = time.perf_counter()
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
        acc = _Accumulator.empty(b, q)
        mh = len(self.half_plane[0])
        proj = self.model.projector
        # slices and back-projection only touch the centred sub-cube of the band limit
        t0 = time.perf_counter()
        vol_s = proj.crop_support(volume_ft, self._support_size)
        t0 = acc.tick("slicing_s", t0)
        buffer = None
        if gradient:
            row_bytes = 2 * mh * np.dtype(rdt).itemsize
            buffer = _BackprojectBuffer(self.model, self._half_coords, cdt,
                                        self.block_bytes // row_bytes, self._support_size)
            acc.tick("gradient_s", t0)
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
            t0 = time.perf_counter()
            table = _SliceTable(self, vol_s, np.fromiter(pending_rot, np.int64), q_ni)
            acc.tick("slicing_s", t0)
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
            t0 = time.perf_counter()
            buffer.flush()
            grad = proj.fourier_to_volume_adjoint(buffer.volume)
            acc.tick("gradient_s", t0)
        timings = acc.timings
        timings["other_s"] = max(0.0, time.perf_counter() - t_start
                                 - sum(v for k, v in timings.items() if k != "other_s"))
        return LikelihoodResult(
            log_likelihood=acc.log_l + prep.log_norm,
            log_marginal_directions=acc.log_d, log_marginal_inplane=acc.log_i,
            log_marginal_shifts=acc.log_s, map_direction=acc.map_d, map_inplane=acc.map_i,
            map_shift=acc.map_s, n_evaluated=acc.n_eval, quadrature=q, gradient=grad,
            n_gradient=acc.n_grad if gradient else None, timings=timings)

    def _groups(self, b: int, subsets: list[PoseSubset] | None, mh: int, rdt: Any
                ) -> list[list[_Group]]:
        """Group images by identical subsets, split so that each group's Z fits in a block;
        one list of groups per distinct subset."""
        return group_images(self.quadrature, b, subsets, mh, np.dtype(rdt).itemsize,
                            self.block_bytes)

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
        t0 = time.perf_counter()
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
        import numba

        from .._kernels import group_tasks, small_group_gradients, small_group_scores

        tasks = group_tasks(ptrs[0], ptrs[1], 8 * numba.get_num_threads())
        small_group_scores(xt, rows, ptrs[0], zv_all, ptrs[1], 0.5 * hrep_all, ptrs[2],
                           n_shift_arr, lwr_all, lws_all, ptrs[3], tasks, out)
        t0 = acc.tick("scores_s", t0)
        log_l_elem = np.empty(len(out)) if buffer is not None else None
        for k, g in enumerate(groups):
            n_d, n_i, n_s = len(g.directions), len(g.inplane), len(g.shifts)
            full = out[out_ptr[k]:out_ptr[k + 1]].reshape(n_d * n_i, len(g.images), n_s)
            log_l = self._reduce_full(full, g, acc)
            if log_l_elem is not None:
                log_l_elem[out_ptr[k]:out_ptr[k + 1]] = np.broadcast_to(
                    log_l[None, :, None], full.shape).ravel()
        if buffer is None:
            acc.tick("sweeps_s", t0)
            return
        p = np.exp(out - log_l_elem.astype(rdt))
        live = _drop_negligible(p, ptrs[0], ptrs[1], n_shift_arr, np.finfo(rdt).eps)
        for k, g in enumerate(groups):
            acc.n_grad[g.images] = int(live[ptrs[0][k]:ptrs[0][k + 1]].sum()) * len(g.shifts)
        t0 = acc.tick("sweeps_s", t0)
        grad = np.empty((rows.shape[0], xt.shape[1]), dtype=rdt)
        small_group_gradients(p, ptrs[3], xt, rows, ptrs[0], zv_all, ptrs[1], hrep_all,
                              ptrs[2], n_shift_arr, tasks, grad)
        d, i = np.divmod(table.flat[rows[live]], q.n_inplane)
        rots = q.direction_matrices[d] @ q.inplane_matrices[i]
        buffer.add(rots, grad[live].view(cdt))
        acc.tick("gradient_s", t0)

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
