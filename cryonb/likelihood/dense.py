"""The GEMM passes of the host engine over image groups that share one pose subset.

One job: evaluate Eq. 4 and its gradient for groups of images with one tensor-product subset
of the quadrature, block by block of rotations.  The pose-dependent score is
``score[r, (b, s)] = Re sum_k X_r(k) Z_bs(k) - sum_k H_b(k) |X_r(k)|^2`` (one real GEMM for
the cross term, a thin GEMM for the norm); the log-likelihood ``log sum_{d,i,s} w_d w_i w_s
p(I | R_{d,i}, t_s, V)`` is an online log-sum-exp over the blocks (:class:`_DenseState`), and
the gradient is ``G_r = sum_{b,s} pi_{r,b,s} conj(Z_bs) - X_r sum_b pi_{r,b} 2 H_b``,
back-projected (:class:`_BackprojectBuffer`).  :class:`_SliceTable` holds the slices of a set
of rotations computed in one call (shared by many small groups).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..backend import get_backend
from ..image_model import ImageModel
from .grouping import _Accumulator, _Group
from .scores import (
    _EXP_LO,
    _SKIP_MARGIN,
    _complete_scores,
    _posterior,
    _posterior_from_exps,
    _value_sweep,
)
from .sparse import _SPARSE_DENSITY, _csr_posterior, _csr_to_dense, _SparseStore
from .types import PreparedImages, _logsumexp, _real_dtype

__all__: list[str] = []


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

            from .._kernels import backproject_trilinear

            backproject_trilinear(rows, rots, np.ascontiguousarray(self.coords, np.float64),
                                  float(self.proj.pad), self.volume, numba.get_num_threads())
        else:
            self.volume += self.proj.backproject(rows, rots, self.coords)
        self.rots, self.rows, self.n = [], [], 0


class _SliceTable:
    """Half-plane slices of a set of quadrature rotations, computed in one call."""

    def __init__(self, lik: Any, volume_ft: Any, flat: NDArray, n_inplane: int
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

    def __init__(self, lik: Any, volume_ft: Any, prep: PreparedImages,
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
        # the gradient keeps the terms whose posterior is above eps / n (n: an image's terms
        # here): an image's dropped mass is below the working precision's epsilon, less than
        # the rounding of its own sum (see host._drop_negligible)
        n_terms = self.n_d * self.n_i * self.n_s
        self.lo_grad = max(self.lo, float(np.log(np.finfo(rdt).eps) - np.log(n_terms)))
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

    def _cross(self, j: int, rows: NDArray, x: Any) -> tuple[Any, ...]:
        """Cross terms (n_c, G * nS) and norms (n_c, G) of group ``j`` (the GEMMs), with the
        log weights of the rows."""
        t0 = time.perf_counter()
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
        self.acc.tick("scores_s", t0)
        return full, norm, lwr, lis_r

    def scores(self, j: int, rows: NDArray, x: Any) -> tuple[Any, tuple[NDArray, ...]]:
        """Completed scores (n_c, G * nS) of group ``j`` at ``rows`` and their row maxima."""
        full, norm, lwr, lis_r = self._cross(j, rows, x)
        t0 = time.perf_counter()
        stats = _complete_scores(self.bk, full, self.n_s, lwr, norm, self.lws, lis_r,
                                 self.lis_s, self.kernels)
        self.acc.tick("sweeps_s", t0)
        return full, stats

    def value_scores(self, j: int, rows: NDArray, x: Any, mode: int) -> tuple[Any, ...]:
        """The value pass of group ``j`` at ``rows`` in one sweep (:func:`.scores._value_sweep`,
        ``mode`` says what ``full`` holds after it): ``(full, stats, sums, row_info)``."""
        full, norm, lwr, lis_r = self._cross(j, rows, x)
        t0 = time.perf_counter()
        out = _value_sweep(self.bk, full, self.n_s, lwr, norm, self.lws, lis_r, self.lis_s,
                           self.lo, mode, self.kernels)
        self.acc.tick("sweeps_s", t0)
        return (full, *out)

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
            t0 = time.perf_counter()
            rots = self.rotations(rows)
            x = self.slices(rows, rots)
            self.acc.tick("slicing_s", t0)
            mode = 2 if self.keep else (1 if store is not None else 0)
            fulls = []
            has = np.zeros(len(rows), dtype=bool)  # rows with a term in the sparse store
            if store is not None:
                store.begin_block(int(rows[0]), len(rows))
            for j, g in enumerate(self.groups):
                full, stats, sums, row_info = self.value_scores(j, rows, x, mode)
                t0 = time.perf_counter()
                partial = self.states[j].add_block(stats, sums, d0, d1, g, self.acc)
                self.acc.tick("sweeps_s", t0)
                if not gradient:
                    continue
                blk = slice(d0 * self.n_i, d1 * self.n_i)
                bound[blk] = np.maximum(bound[blk], (stats[0] - partial[None, :]).max(axis=1))
                if self.keep:
                    fulls.append((full, row_info))
                elif store is not None:
                    t0 = time.perf_counter()
                    has |= store.add(j, full, partial + (self.lo_grad - _SKIP_MARGIN))
                    self.acc.tick("sweeps_s", t0)
            if self.keep:
                cached.append((rows, rots, x, fulls))
            elif store is not None:
                store.end_block(has, x)
                if store.full:
                    store = store.pruned([st.partial + (self.lo_grad - _SKIP_MARGIN)
                                          for st in self.states])
        log_ls = [st.finish(g, self.acc) for st, g in zip(self.states, self.groups, strict=True)]
        if not gradient:
            return
        ll = np.concatenate(log_ls)
        t0, inner0 = time.perf_counter(), self.acc.inner()
        if self.keep:
            self._gradient_cached(cached, ll, bound)
        elif store is not None:
            self._gradient_sparse(store, ll)
        else:
            self._gradient_recompute(ll, bound)
        self.acc.tick_outer("gradient_s", t0, inner0)

    def _images(self) -> NDArray:
        return np.concatenate([g.images for g in self.groups])

    def _add_rows(self, rots: NDArray, x: Any, g_real: Any, pr: Any) -> None:
        """Gradient rows ``g_real - (pr @ H) * x`` to the back-projection buffer."""
        if self.kernels:
            from .._kernels import subtract_h_term

            subtract_h_term(np.ascontiguousarray(pr), self.h2, x.view(self.rdt), g_real)
            self.buffer.add(rots, g_real.view(self.cdt))
            return
        grad = g_real.view(self.cdt)
        grad -= (pr @ self.h2) * x
        self.buffer.add(rots, grad)

    def _dense_rows(self, rots: NDArray, x: Any, post_of: Any) -> None:
        """Gradient rows of a block from the posterior of each group: ``post_of(j)`` gives
        the posterior block (n_c, G * nS) and its sums over shifts (n_c, G)."""
        xp = self.bk.xp
        g_real = None
        prs = []
        for j in range(len(self.groups)):
            p, pr = post_of(j)
            prs.append(pr)
            part = p @ self._zv(j)                                               # (n_c, 2Mh)
            if g_real is None:
                g_real = part
            else:
                g_real += part
        self._add_rows(rots, x, g_real, prs[0] if len(prs) == 1 else xp.concatenate(prs, 1))

    def _gradient_cached(self, cached: list, ll: NDArray, bound: NDArray) -> None:
        live = bound >= self.lo_grad - _SKIP_MARGIN
        n_live = 0
        lls = [ll[self.img_off[j]:self.img_off[j + 1]] for j in range(len(self.groups))]

        def posterior(full_info: tuple[Any, Any], j: int) -> tuple[Any, Any]:
            full, row_info = full_info
            t0 = time.perf_counter()
            pr = _posterior_from_exps(self.bk, full, self.n_s, row_info, lls[j], self.kernels)
            self.acc.tick("sweeps_s", t0)
            return full, pr

        for rows, rots, x, fulls in cached:
            if live[rows].any():
                n_live += len(rows)
                self._dense_rows(rots, x, lambda j, f=fulls: posterior(f[j], j))
        self.acc.n_grad[self._images()] = n_live * self.n_s

    def _recomputed(self, j: int, rows: NDArray, x: Any, ll: Any) -> tuple[Any, Any]:
        """Posterior of group ``j`` at ``rows`` from recomputed scores, and its row sums."""
        p = self.scores(j, rows, x)[0]
        lj = ll[self.img_off[j]:self.img_off[j + 1]]
        t0 = time.perf_counter()
        pr = _posterior(self.bk, p, self.n_s, lj, self.lo_grad, self.kernels)
        self.acc.tick("sweeps_s", t0)
        return p, pr

    def _gradient_recompute(self, ll: NDArray, bound: NDArray) -> None:
        ll_dev = self.bk.xp.asarray(ll.astype(self.rdt))
        kept = np.flatnonzero(bound >= self.lo_grad - _SKIP_MARGIN)
        step = self.k_d * self.n_i
        for k0 in range(0, len(kept), step):
            rows = kept[k0:k0 + step]
            t0 = time.perf_counter()
            rots = self.rotations(rows)
            x = self.slices(rows, rots)
            self.acc.tick("slicing_s", t0)
            self._dense_rows(rots, x, lambda j, r=rows, x=x: self._recomputed(j, r, x, ll_dev))
        self.acc.n_grad[self._images()] = len(kept) * self.n_s

    def _gradient_sparse(self, store: _SparseStore, ll: NDArray) -> None:
        bk, xp, rdt = self.bk, self.bk.xp, self.rdt
        n_img = len(ll)
        n_cols = n_img * self.n_s
        lls = [ll[self.img_off[j]:self.img_off[j + 1]].astype(rdt)
               for j in range(len(self.groups))]
        counts = np.zeros(n_img, dtype=np.int64)
        for blk in store.blocks:
            t0 = time.perf_counter()
            live = np.zeros(blk.n_rows, dtype=bool)
            posts = []
            nnz = 0
            for j, csr in enumerate(blk.groups):
                if csr is None:
                    posts.append(None)
                    continue
                p, row_nnz = _csr_posterior(bk, csr, self.n_s, lls[j], self.lo_grad,
                                            self.kernels)
                posts.append(p)
                live |= row_nnz > 0
                nnz += int(row_nnz.sum())
            self.acc.tick("sweeps_s", t0)
            rows = np.flatnonzero(live)
            if len(rows) == 0:
                continue
            n_c = len(rows)
            rots = self.rotations(blk.row0 + rows)
            x = blk.slices(rows, xp)
            if self.kernels and nnz * _SPARSE_DENSITY < n_c * n_cols:
                from .._kernels import csr_rows_accumulate

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

    def add_block(self, stats: tuple[NDArray, ...], sums: tuple[NDArray, NDArray], d0: int,
                  d1: int, g: _Group, acc: _Accumulator) -> NDArray:
        """Fold in the scores of directions ``d0:d1`` from their value sweep (``stats`` and
        ``sums`` of :func:`.scores._value_sweep`); returns the partial log-likelihoods."""
        row_max, row_fmax, row_farg = stats
        row_sum, s_s = sums
        n_img, n_i = len(g.images), len(g.inplane)
        cm = row_max.max(axis=0)                                                # (G,)
        cm_safe = np.where(np.isfinite(cm), cm, 0.0)
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

