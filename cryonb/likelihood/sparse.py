"""The sparse store of the host engine: the scores whose posterior can be nonzero, as CSR.

One job: between the value pass and the gradient pass of Eq. 4 (the gradient
``G_r = sum_{b,s} pi_{r,b,s} conj(Z_bs) - X_r sum_b pi_{r,b} 2 H_b``), keep, block by block of
rotations and per image group, the scores above the per-image underflow threshold (their
posterior ``pi`` can be nonzero in the working precision) and the slices of their rotations,
within a memory budget, as CSR ``(ptr, cols, vals)``; and the CSR helpers of the gradient
pass: the posterior of the stored terms and their scatter into a dense block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..backend import Backend

__all__: list[str] = []

_SPARSE_DENSITY = 16  # the gradient uses the sparse kernel below 1/16 nonzero posterior terms


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
            from .._kernels import score_block_count_above, score_block_gather_above

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
        from .._kernels import csr_posterior

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
        from .._kernels import csr_rows_to_dense

        csr_rows_to_dense(rows, ptr, cols, p, out)
        return
    xp = bk.xp
    pos = np.full(len(ptr) - 1, -1)
    pos[rows] = np.arange(len(rows))
    r = np.repeat(pos, np.diff(ptr))
    sel = r >= 0
    out[xp.asarray(r[sel]), cols[xp.asarray(sel)]] = p[xp.asarray(sel)]

