"""Sweeps over a block of pose scores of the host engine (numba kernels or NumPy twins).

One job: the element-wise passes over a block ``score[r, b * nS + s]`` (rotation ``r``, image
``b``, shift ``s``) of the GEMM form of Eq. 4, ``score = Re <X_r, Z_bs> - <|X_r|^2, H_b> +
log w_r + log w_s``: completing the cross terms into scores with their maxima (the MAP
criterion of the posterior mode), the exponential sums of the online log-sum-exp of the
marginal (Eq. 4) and the posterior ``pi = exp(score - log p(I_b | V))`` of the gradient pass.
Each calls the parallel kernel of :mod:`cryonb._kernels` when ``kernels`` is true and is the
vectorised NumPy/CuPy twin otherwise (``tests/test_score_kernels.py`` checks both agree).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray

from ..backend import Backend

__all__: list[str] = []


# ------------------------------------------------------------------------- score block passes
# exponentials of arguments below these are exactly 0 in the dtype (float32: e^-104 < 2^-150)
_EXP_LO = {"f": -110.0, "d": -750.0}
_SKIP_MARGIN = 16.0  # rounding of the recomputed scores and of log_l in the working dtype


def _complete_scores(bk: Backend, full: Any, n_s: int, lwr: NDArray, norm: Any, lws: Any,
                     lis_r: NDArray, lis_s: Any, kernels: bool) -> tuple[NDArray, ...]:
    """Cross terms -> scores in place, ``(full + (lwr - norm)) + lws``, viewed (n_c, G, nS);
    returns (row_max, row_fmax, row_farg), each (n_c, G) on the host: the maxima over shifts
    of the score and of the MAP criterion (score minus log importance weights), and the first
    shift reaching the latter."""
    n_c, n_img = norm.shape
    if kernels:
        from .._kernels import score_block_complete

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
        from .._kernels import score_block_exp_sums

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
        from .._kernels import score_block_posterior

        row_sum = np.empty((n_c, n_img), dtype=full.dtype)
        score_block_posterior(full, n_s, log_l, lo, row_sum)
        return row_sum
    xp = bk.xp
    p = full.reshape(n_c, n_img, n_s)
    xp.subtract(p, log_l[None, :, None], out=p)
    xp.exp(p, out=p)
    return p.sum(axis=2)



def _value_sweep(bk: Backend, full: Any, n_s: int, lwr: NDArray, norm: Any, lws: Any,
                 lis_r: NDArray, lis_s: Any, lo: float, mode: int, kernels: bool
                 ) -> tuple[tuple[NDArray, ...], tuple[NDArray, NDArray], tuple[Any, Any]]:
    """The value pass over a block of cross terms: :func:`_complete_scores` and
    :func:`_exp_sums` relative to the block's maxima ``cm`` (0 where none is finite), fused
    into one sweep with the numba kernel (:func:`.fused.value_sweep`).

    ``mode`` 0: ``full`` may be left as it is or hold the scores; 1: it holds the scores;
    2: it holds ``exp(score - row_ref)``.  Returns ``(stats, (sum_s e, sum_r e), (row_sum,
    row_ref))``: the maxima of :func:`_complete_scores`; the exponential sums relative to
    ``cm`` (float64, host); and the sums over shifts relative to the reference of each row's
    exponentials with that reference, (n_c, G) each (for :func:`_posterior_from_exps`).
    """
    if kernels:
        from .fused import value_sweep

        return value_sweep(full, n_s, lwr, norm, lws, lis_r, lis_s, lo, mode)
    xp = bk.xp
    stats = _complete_scores(bk, full, n_s, lwr, norm, lws, lis_r, lis_s, kernels=False)
    cm = stats[0].max(axis=0)
    cm_safe = np.where(np.isfinite(cm), cm, 0.0)
    ref = cm_safe.astype(full.dtype)
    row_sum, s_s = _exp_sums(bk, full, n_s, ref, lo, kernels=False)
    if mode == 2:
        f3 = full.reshape(full.shape[0], len(ref), n_s)
        xp.subtract(f3, xp.asarray(ref)[None, :, None], out=f3)
        xp.exp(f3, out=f3)
    return stats, (row_sum, s_s), (row_sum, np.broadcast_to(ref, row_sum.shape))


def _posterior_from_exps(bk: Backend, full: Any, n_s: int, rows: tuple[Any, Any],
                         log_l: NDArray, kernels: bool) -> Any:
    """Exponentials written by :func:`_value_sweep` (mode 2) -> posterior ``exp(score -
    log_l[b])`` in place (one multiplication per term); returns ``sum_s`` (n_c, G)."""
    if kernels:
        from .fused import posterior_from_exps

        return posterior_from_exps(full, n_s, rows[0], rows[1], log_l)
    xp = bk.xp
    row_sum, row_ref = rows
    with np.errstate(invalid="ignore"):
        scale = np.exp(np.asarray(row_ref, np.float64) - np.asarray(log_l, np.float64)[None, :])
    scale = np.where(np.isfinite(scale), scale, 0.0)
    f3 = full.reshape(full.shape[0], scale.shape[1], n_s)
    f3[...] = (f3.astype(np.float64) * xp.asarray(scale)[:, :, None]).astype(full.dtype)
    return (np.asarray(row_sum) * scale).astype(full.dtype)
