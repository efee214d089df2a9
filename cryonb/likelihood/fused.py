"""Fused numba sweeps over a block of pose scores of the host engine (value and cached gradient).

One job: one pass over a block ``score[r, b * nS + s]`` (rotation ``r``, image ``b``, shift
``s``) of the GEMM form of Eq. 4 instead of three.  :func:`score_block_value` completes the
GEMM cross terms into scores, takes the maxima (the MAP criterion) and the exponential sums of
the online log-sum-exp of the marginal (Eq. 4) in the same sweep, and optionally overwrites the
block with the scores or with the exponentials themselves; when the block is kept for the
gradient (the ``cache`` mode of :class:`~.dense._DensePass`), the posterior
``pi = exp(score - log p(I_b | V))`` is then one multiplication per term
(:func:`score_block_scale`) instead of a second exponential.

Exponentials are taken relative to a running reference per image and parallel task (the
largest row maximum seen so far by that task; the partial sums are rescaled when it grows), so
no exponent is positive, and none underflows that would not underflow relative to the block's
maximum (the reference of the unfused sweeps in :mod:`.scores`, which stay as the NumPy twins
and for the ``recompute`` and ``sparse`` gradient modes).  ``tests/test_score_kernels.py``
checks both against the unfused result and a float64 brute force.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray

from .._kernels import exp_segment

__all__ = ["posterior_from_exps", "score_block_scale", "score_block_value", "value_sweep"]

WRITE_NOTHING, WRITE_SCORES, WRITE_EXPS = 0, 1, 2


# reductions over a row segment may be reordered (sums of exponentials, maxima): vectorised
_REDUCE = {"nnan", "nsz", "reassoc"}


@numba.njit(fastmath=_REDUCE, cache=True)
def _segment_max(v, c0, n):  # pragma: no cover - jitted
    m = -np.inf
    for s in range(c0, c0 + n):
        m = max(m, v[s])
    return m


@numba.njit(fastmath=False, cache=True)
def _first_index(v, c0, n, m):  # pragma: no cover - jitted
    for s in range(n):
        if v[c0 + s] == m:
            return s
    return 0


@numba.njit(fastmath=_REDUCE, cache=True)
def _segment_sum(e, c0, n):  # pragma: no cover - jitted
    acc = 0.0
    for s in range(c0, c0 + n):
        acc += np.float64(e[s])
    return acc


@numba.njit(parallel=True, fastmath=False, cache=True)
def score_block_value(full, n_shift, lwr, norm, lws, lis_r, lis_s, has_is, lo, mode, row_max,
                      row_fmax, row_farg, row_sum, row_ref, part_sums, part_ref
                      ):  # pragma: no cover - jitted
    """Complete, maximise and exponentiate a block of scores in one sweep.

    The score is ``v = (full[r, b * nS + s] + (lwr[r] - norm[r, b])) + lws[s]`` (in the dtype of
    ``full``, in that order, as :func:`cryonb._kernels.score_block_complete`).  Outputs, all
    (R, G) unless stated: ``row_max``, ``row_fmax`` (float64) the maxima over ``s`` of ``v`` and
    of the MAP criterion ``(v - lis_r[r]) - lis_s[s]`` (``v`` itself unless ``has_is``);
    ``row_farg`` its first argmax; ``row_ref`` (dtype of ``full``) the reference ``ref`` of the
    row and ``row_sum`` (float64) ``sum_s e`` with ``e = exp(v - ref)`` (0 where ``v - ref <=
    lo``); ``part_sums`` (K, G, nS) float64 ``sum_r e * exp(ref - part_ref[k, b])`` over the K
    contiguous slabs of rows (one per parallel task), ``part_ref`` (K, G) float64 the
    reference of each slab at its end (``-inf`` where it saw no finite score).  ``mode``: 0
    leaves ``full`` as it is, 1 writes ``v``, 2 writes ``e``.
    """
    n_rows, n_cols = full.shape
    n_img = norm.shape[1]
    n_parts = part_sums.shape[0]
    step = (n_rows + n_parts - 1) // n_parts
    for k in numba.prange(n_parts):
        part = part_sums[k]
        part[:, :] = 0.0
        ref = np.full(n_img, -np.inf, dtype=full.dtype)
        v = np.empty(n_cols, dtype=full.dtype)
        f = np.empty(n_cols, dtype=full.dtype)
        e = np.empty(n_cols, dtype=full.dtype)
        ib = np.empty((2, n_cols), dtype=np.int32)
        for r in range(k * step, min(n_rows, (k + 1) * step)):
            src = full[r]
            for b in range(n_img):  # complete: vectorised
                base = lwr[r] - norm[r, b]
                c0 = b * n_shift
                for s in range(n_shift):
                    v[c0 + s] = (src[c0 + s] + base) + lws[s]
            if has_is:
                for b in range(n_img):
                    c0 = b * n_shift
                    for s in range(n_shift):
                        f[c0 + s] = (v[c0 + s] - lis_r[r]) - lis_s[s]
            for b in range(n_img):
                c0 = b * n_shift
                m = _segment_max(v, c0, n_shift)
                row_max[r, b] = m
                if has_is:
                    fm = _segment_max(f, c0, n_shift)
                    row_fmax[r, b] = fm
                    row_farg[r, b] = _first_index(f, c0, n_shift, fm)
                else:
                    row_fmax[r, b] = m
                    row_farg[r, b] = _first_index(v, c0, n_shift, m)
                rb = ref[b]
                if m > rb:  # a new reference for this image: rescale the slab's sums
                    if rb > -np.inf:
                        scale = np.exp(np.float64(rb) - np.float64(m))
                        for s in range(n_shift):
                            part[b, s] *= scale
                    ref[b] = m
                row_ref[r, b] = ref[b]
            if mode == 1:
                for c in range(n_cols):
                    src[c] = v[c]
            for b in range(n_img):
                rb = ref[b]
                c0 = b * n_shift
                if rb == -np.inf:
                    rb = 0.0  # every score of the row is -inf: e = 0
                for s in range(n_shift):
                    v[c0 + s] = v[c0 + s] - rb
            exp_segment(v, e, ib, lo)
            for b in range(n_img):
                c0 = b * n_shift
                row_sum[r, b] = _segment_sum(e, c0, n_shift)
                pb = part[b]
                for s in range(n_shift):
                    pb[s] += e[c0 + s]
            if mode == 2:
                for c in range(n_cols):
                    src[c] = e[c]
        for b in range(n_img):
            part_ref[k, b] = ref[b]


@numba.njit(parallel=True, fastmath=False, cache=True)
def score_block_scale(full, n_shift, scale):  # pragma: no cover - jitted
    """``full[r, b * nS + s] *= scale[r, b]`` in place, the product formed in float64 and
    rounded once to the dtype of ``full`` (exponentials -> posterior)."""
    n_rows = full.shape[0]
    n_img = scale.shape[1]
    for r in numba.prange(n_rows):
        for b in range(n_img):
            c = scale[r, b]
            c0 = b * n_shift
            if c == 0.0:
                for s in range(n_shift):
                    full[r, c0 + s] = 0.0
                continue
            for s in range(n_shift):
                full[r, c0 + s] = np.float64(full[r, c0 + s]) * c


def value_sweep(full: NDArray, n_s: int, lwr: NDArray, norm: NDArray, lws: NDArray,
                lis_r: NDArray, lis_s: NDArray, lo: float, mode: int
                ) -> tuple[tuple[NDArray, ...], tuple[NDArray, NDArray], tuple[NDArray, NDArray]]:
    """:func:`score_block_value` and the host reduction of its sums to the block's maximum.

    Returns
    -------
    stats : (row_max, row_fmax, row_farg), (n_c, G) each
    sums : ``(sum_s exp(v - cm_b)) (n_c, G), (sum_r exp(v - cm_b)) (G, nS)``, float64, with
        ``cm`` the maxima over the block of the scores (0 where none is finite)
    rows : ``(sum_s exp(v - row_ref), row_ref)``, (n_c, G) each: the row sums relative to the
        reference of the row's exponentials (what ``mode`` 2 wrote, for
        :func:`posterior_from_exps`)
    """
    n_c, n_img = norm.shape
    rdt = full.dtype
    row_max = np.empty((n_c, n_img))
    row_fmax = np.empty((n_c, n_img))
    row_farg = np.empty((n_c, n_img), dtype=np.int64)
    row_sum = np.empty((n_c, n_img))
    row_ref = np.empty((n_c, n_img), dtype=rdt)
    n_parts = max(1, min(n_c, 4 * numba.get_num_threads()))
    parts = np.empty((n_parts, n_img, n_s))
    part_ref = np.empty((n_parts, n_img))
    has_is = bool(np.any(lis_r) or np.any(lis_s))
    score_block_value(full, n_s, lwr, np.ascontiguousarray(norm), lws, lis_r, lis_s, has_is, lo,
                      mode, row_max, row_fmax, row_farg, row_sum, row_ref, parts, part_ref)
    cm = row_max.max(axis=0)
    cm_safe = np.where(np.isfinite(cm), cm, 0.0)
    with np.errstate(invalid="ignore"):
        er = row_sum * np.exp(row_ref.astype(np.float64) - cm_safe[None, :])
        s_s = np.einsum("kbs,kb->bs", parts, np.exp(part_ref - cm_safe[None, :]))
    return (row_max, row_fmax, row_farg), (er, s_s), (row_sum, row_ref)


def posterior_from_exps(full: Any, n_s: int, row_sum_ref: NDArray, row_ref: NDArray,
                        log_l: NDArray) -> NDArray:
    """Exponentials written by ``mode`` 2 -> posterior ``exp(v - log_l[b])`` in place.

    ``row_sum_ref`` (n_c, G) float64 is ``sum_s exp(v - row_ref)``; returns the posterior's
    ``sum_s`` (n_c, G) in the dtype of ``full``.
    """
    with np.errstate(invalid="ignore"):
        scale = np.exp(row_ref.astype(np.float64) - np.asarray(log_l, np.float64)[None, :])
    scale = np.where(np.isfinite(scale), scale, 0.0)
    score_block_scale(full, n_s, scale)
    return (row_sum_ref * scale).astype(full.dtype)
