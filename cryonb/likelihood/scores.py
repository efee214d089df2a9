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

