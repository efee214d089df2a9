"""numba kernels for the CPU hot loops.

* Trilinear slice extraction and its adjoint.  Each has a vectorised NumPy/CuPy twin in
  :mod:`cryonb.projection`; the tests check that both agree.  Coordinates are given in voxel
  units of the (padded) Fourier grid, relative to its centre ``P // 2`` (``P`` = the side of the
  array passed, which may be a centred sub-cube); volumes are indexed ``[z, y, x]``.
* The passes over a block of pose scores of :class:`cryonb.likelihood.MarginalLikelihood`
  (``score[r, b * nS + s]`` for rotation ``r``, image ``b``, shift ``s``): completing the GEMM
  cross terms into scores with their maxima, the exponential sums of the value pass and the
  posterior of the gradient pass, each one parallel sweep instead of several NumPy passes with
  temporaries.  Their NumPy twins are in :mod:`cryonb.likelihood.scores`.  Exponentials of arguments
  below ``lo`` (chosen below the underflow threshold of the dtype) are not evaluated: they are
  exactly 0 in that dtype.
* The scores and gradient rows of many small image groups (importance-sampled images, each
  with its own small pose subset) at once: single-threaded small GEMMs per group, threads
  across groups (:meth:`cryonb.likelihood.MarginalLikelihood.evaluate`).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

__all__ = [
    "backproject_trilinear",
    "csr_posterior",
    "csr_rows_accumulate",
    "csr_rows_to_dense",
    "group_tasks",
    "score_block_complete",
    "score_block_count_above",
    "score_block_exp_sums",
    "score_block_gather_above",
    "score_block_posterior",
    "slice_trilinear",
    "small_group_gradients",
    "small_group_scores",
    "subtract_h_term",
]


# ------------------------------------------------------------------------------ exponentials
def exp_segment(d, e, ib, lo):  # pragma: no cover - replaced by the overload in jitted code
    """``e[k] = exp(d[k])``, 0 where ``d[k] <= lo``; ``ib`` is (2, len(d)) int32 scratch.

    float32: a branch-free (vectorised) Cephes ``expf`` -- range reduction by ln 2, a degree-6
    polynomial, the power of two built in the exponent bits (in two factors, so that results
    below 2^-126 round once into the sub-normal range) -- within 1 ulp of the C library's
    ``expf``; the C library above 88.  float64: the C library's ``exp``.
    """
    raise NotImplementedError("only callable from numba-compiled code")


@overload(exp_segment, jit_options={"fastmath": False})
def _exp_segment_impl(d, e, ib, lo):  # pragma: no cover - compiled
    if d.dtype == types.float32:
        def impl(d, e, ib, lo):
            m = d.shape[0]
            i1 = ib[0]
            i2 = ib[1]
            for k in range(m):  # no branches: vectorised
                x = min(max(d[k], np.float32(-104.0)), np.float32(88.0))
                n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
                r = (x - n * np.float32(0.693359375)) - n * np.float32(-2.12194440e-4)
                z = r * r
                e[k] = ((((((np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r
                            + np.float32(8.3334519073e-3)) * r + np.float32(4.1665795894e-2)) * r
                          + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1)) * z
                        + r + np.float32(1.0))
                ni = np.int32(n)
                n1 = max(ni, np.int32(-126))
                i1[k] = (n1 + np.int32(127)) << 23
                i2[k] = (ni - n1 + np.int32(127)) << 23
            f1 = i1.view(np.float32)
            f2 = i2.view(np.float32)
            for k in range(m):  # vectorised
                t = (e[k] * f1[k]) * f2[k]
                e[k] = t if d[k] > lo else np.float32(0.0)
            for k in range(m):  # beyond the polynomial's range: never in practice
                if d[k] > 88.0:
                    e[k] = np.exp(d[k])
        return impl

    def impl64(d, e, ib, lo):
        for k in range(d.shape[0]):
            v = d[k]
            e[k] = np.exp(v) if v > lo else 0.0
    return impl64


@numba.njit(parallel=True, fastmath=False, cache=True)
def slice_trilinear(volume, rotations, coords, scale, out):  # pragma: no cover - jitted
    """out[b, m] = trilinear sample of ``volume`` at ``scale * R_b @ (kx_m, ky_m, 0)``.

    volume : (P, P, P) complex; rotations : (B, 3, 3) float; coords : (M, 2) float (kx, ky);
    out : (B, M) complex, overwritten.  Points outside the grid give 0.
    """
    p = volume.shape[0]
    c = p // 2
    n_rot = rotations.shape[0]
    n_pts = coords.shape[0]
    for b in numba.prange(n_rot):
        r = rotations[b]
        ax, bx = r[0, 0] * scale, r[0, 1] * scale
        ay, by = r[1, 0] * scale, r[1, 1] * scale
        az, bz = r[2, 0] * scale, r[2, 1] * scale
        for m in range(n_pts):
            kx = coords[m, 0]
            ky = coords[m, 1]
            x = ax * kx + bx * ky + c
            y = ay * kx + by * ky + c
            z = az * kx + bz * ky + c
            x0 = int(np.floor(x))
            y0 = int(np.floor(y))
            z0 = int(np.floor(z))
            fx = x - x0
            fy = y - y0
            fz = z - z0
            if 0 <= x0 < p - 1 and 0 <= y0 < p - 1 and 0 <= z0 < p - 1:
                # all 8 corners inside (the usual case): no checks, real and imaginary parts
                # accumulated separately
                gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
                re = 0.0
                im = 0.0
                for dz in range(2):
                    wz = fz if dz else gz
                    for dy in range(2):
                        w0 = wz * (fy if dy else gy)
                        v0 = volume[z0 + dz, y0 + dy, x0]
                        v1 = volume[z0 + dz, y0 + dy, x0 + 1]
                        re += w0 * gx * v0.real + w0 * fx * v1.real
                        im += w0 * gx * v0.imag + w0 * fx * v1.imag
                out[b, m] = complex(re, im)
                continue
            acc = 0j
            for dz in range(2):
                zi = z0 + dz
                if zi < 0 or zi >= p:
                    continue
                wz = fz if dz else 1.0 - fz
                for dy in range(2):
                    yi = y0 + dy
                    if yi < 0 or yi >= p:
                        continue
                    wy = fy if dy else 1.0 - fy
                    for dx in range(2):
                        xi = x0 + dx
                        if xi < 0 or xi >= p:
                            continue
                        wx = fx if dx else 1.0 - fx
                        acc += wz * wy * wx * volume[zi, yi, xi]
            out[b, m] = acc


@numba.njit(parallel=True, fastmath=False, cache=True)
def backproject_trilinear(values, rotations, coords, scale, volume, n_slabs):  # pragma: no cover
    """Adjoint of :func:`slice_trilinear`: scatter-add ``values`` (B, M) into ``volume`` (P,P,P).

    The z axis is split into ``n_slabs`` slabs, one per thread; each thread visits every point
    and writes only the corners in its own slab, so there are no write races and no
    per-thread copies of the volume.
    """
    p = volume.shape[0]
    c = p // 2
    n_rot = rotations.shape[0]
    n_pts = coords.shape[0]
    slab = (p + n_slabs - 1) // n_slabs
    for s in numba.prange(n_slabs):
        z_lo = s * slab
        z_hi = min(p, z_lo + slab)
        for b in range(n_rot):
            r = rotations[b]
            for m in range(n_pts):
                kx = coords[m, 0] * scale
                ky = coords[m, 1] * scale
                z = r[2, 0] * kx + r[2, 1] * ky + c
                z0 = int(np.floor(z))
                if z0 + 1 < z_lo or z0 >= z_hi:
                    continue
                x = r[0, 0] * kx + r[0, 1] * ky + c
                y = r[1, 0] * kx + r[1, 1] * ky + c
                x0 = int(np.floor(x))
                y0 = int(np.floor(y))
                fx = x - x0
                fy = y - y0
                fz = z - z0
                v = values[b, m]
                for dz in range(2):
                    zi = z0 + dz
                    if zi < z_lo or zi >= z_hi:
                        continue
                    wz = fz if dz else 1.0 - fz
                    for dy in range(2):
                        yi = y0 + dy
                        if yi < 0 or yi >= p:
                            continue
                        wy = fy if dy else 1.0 - fy
                        for dx in range(2):
                            xi = x0 + dx
                            if xi < 0 or xi >= p:
                                continue
                            wx = fx if dx else 1.0 - fx
                            volume[zi, yi, xi] += wz * wy * wx * v


@numba.njit(parallel=True, fastmath=False, cache=True)
def score_block_complete(full, n_shift, lwr, norm, lws, lis_r, lis_s, row_max, row_fmax,
                         row_farg):  # pragma: no cover - jitted
    """Complete cross terms into scores, in place, and take their maxima per row and image.

    full : (R, G * nS) real, ``<x_r, z_bs>`` on entry and on exit
    ``(full + (lwr[r] - norm[r, b])) + lws[s]`` (evaluated in that order, in the dtype of
    ``full``); lwr, lis_r : (R,); norm : (R, G); lws, lis_s : (nS,), same dtype as ``full``.
    row_max, row_fmax : (R, G) float64, the maxima over ``s`` of the score and of the score
    minus ``lis_r[r] + lis_s[s]`` (the MAP criterion); row_farg : (R, G) int64, the first ``s``
    where the latter is reached.
    """
    n_rows = full.shape[0]
    n_img = norm.shape[1]
    for r in numba.prange(n_rows):
        for b in range(n_img):
            base = lwr[r] - norm[r, b]
            c0 = b * n_shift
            m = -np.inf
            fm = -np.inf
            fa = 0
            for s in range(n_shift):
                v = (full[r, c0 + s] + base) + lws[s]
                full[r, c0 + s] = v
                if v > m:
                    m = v
                f = (v - lis_r[r]) - lis_s[s]
                if f > fm:
                    fm = f
                    fa = s
            row_max[r, b] = m
            row_fmax[r, b] = fm
            row_farg[r, b] = fa


@numba.njit(parallel=True, fastmath=False, cache=True)
def score_block_exp_sums(full, n_shift, ref, lo, row_sum, part_sums):  # pragma: no cover
    """Sums of ``e = exp(full[r, b * nS + s] - ref[b])`` (in the dtype of ``full``).

    row_sum : (R, G) float64, ``sum_s e``; part_sums : (K, G, nS) float64, ``sum_r e`` over the
    K contiguous slabs of rows (one per parallel task; the caller adds them).
    """
    n_rows = full.shape[0]
    n_img = ref.shape[0]
    n_parts = part_sums.shape[0]
    step = (n_rows + n_parts - 1) // n_parts
    for k in numba.prange(n_parts):
        part = part_sums[k]
        part[:, :] = 0.0
        d = np.empty(n_shift, dtype=full.dtype)
        e = np.empty(n_shift, dtype=full.dtype)
        ib = np.empty((2, n_shift), dtype=np.int32)
        for r in range(k * step, min(n_rows, (k + 1) * step)):
            for b in range(n_img):
                c0 = b * n_shift
                rb = ref[b]
                for s in range(n_shift):
                    d[s] = full[r, c0 + s] - rb
                exp_segment(d, e, ib, lo)
                acc = 0.0
                for s in range(n_shift):
                    acc += e[s]
                    part[b, s] += e[s]
                row_sum[r, b] = acc


@numba.njit(parallel=True, fastmath=False, cache=True)
def score_block_posterior(full, n_shift, log_l, lo, row_sum):  # pragma: no cover - jitted
    """Scores -> posterior in place: ``full[r, b * nS + s] = exp(full - log_l[b])`` (in the dtype
    of ``full``); row_sum : (R, G), ``sum_s`` of the posterior."""
    n_rows = full.shape[0]
    n_img = log_l.shape[0]
    for r in numba.prange(n_rows):
        d = np.empty(n_shift, dtype=full.dtype)
        e = np.empty(n_shift, dtype=full.dtype)
        ib = np.empty((2, n_shift), dtype=np.int32)
        for b in range(n_img):
            c0 = b * n_shift
            lb = log_l[b]
            for s in range(n_shift):
                d[s] = full[r, c0 + s] - lb
            exp_segment(d, e, ib, lo)
            acc = 0.0
            for s in range(n_shift):
                full[r, c0 + s] = e[s]
                acc += e[s]
            row_sum[r, b] = acc


@numba.njit(parallel=True, fastmath=False, cache=True)
def score_block_count_above(full, n_shift, thr, counts):  # pragma: no cover - jitted
    """counts[r] = number of ``full[r, b * nS + s] > thr[b]``."""
    n_rows = full.shape[0]
    n_img = thr.shape[0]
    for r in numba.prange(n_rows):
        n = 0
        for b in range(n_img):
            t = thr[b]
            c0 = b * n_shift
            for s in range(n_shift):
                if full[r, c0 + s] > t:
                    n += 1
        counts[r] = n


@numba.njit(parallel=True, fastmath=False, cache=True)
def score_block_gather_above(full, n_shift, thr, ptr, cols, vals):  # pragma: no cover
    """The terms counted by :func:`score_block_count_above`, row by row (CSR with row
    pointers ``ptr``): their columns ``b * nS + s`` and values."""
    n_rows = full.shape[0]
    n_img = thr.shape[0]
    for r in numba.prange(n_rows):
        k = ptr[r]
        if ptr[r + 1] == k:
            continue
        for b in range(n_img):
            t = thr[b]
            c0 = b * n_shift
            for s in range(n_shift):
                v = full[r, c0 + s]
                if v > t:
                    cols[k] = c0 + s
                    vals[k] = v
                    k += 1


@numba.njit(parallel=True, fastmath=False, cache=True)
def csr_posterior(ptr, cols, vals, n_shift, log_l, lo, p, row_nnz):  # pragma: no cover
    """Posterior of stored scores (CSR rows ``ptr``, columns ``b * nS + s``, values):
    ``p[e] = exp(vals[e] - log_l[b])`` in the dtype of ``vals`` (0 below ``lo``); row_nnz[r]
    = number of nonzero ``p`` in row ``r``."""
    for r in numba.prange(ptr.shape[0] - 1):
        e0 = ptr[r]
        m = ptr[r + 1] - e0
        d = np.empty(m, dtype=vals.dtype)
        e = np.empty(m, dtype=vals.dtype)
        ib = np.empty((2, m), dtype=np.int32)
        for k in range(m):
            d[k] = vals[e0 + k] - log_l[cols[e0 + k] // n_shift]
        exp_segment(d, e, ib, lo)
        n = 0
        for k in range(m):
            p[e0 + k] = e[k]
            if e[k] != 0:
                n += 1
        row_nnz[r] = n


@numba.njit(parallel=True, fastmath=False, cache=True)
def csr_rows_accumulate(rows, ptr, cols, p, n_shift, z, out, pr):  # pragma: no cover
    """For the CSR rows ``rows[i]``: ``out[i] += sum_e p[e] z[cols[e]]`` and
    ``pr[i, cols[e] // n_shift] += p[e]`` (zero terms skipped).  One task per row."""
    width = z.shape[1]
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        o = out[i]
        for e in range(ptr[r], ptr[r + 1]):
            w = p[e]
            if w == 0:
                continue
            c = cols[e]
            zr = z[c]
            for k in range(width):
                o[k] += w * zr[k]
            pr[i, c // n_shift] += w


@numba.njit(parallel=True, fastmath=False, cache=True)
def csr_rows_to_dense(rows, ptr, cols, p, out):  # pragma: no cover - jitted
    """``out[i, cols[e]] = p[e]`` for the CSR rows ``rows[i]`` (``out`` zeroed by the
    caller)."""
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        for e in range(ptr[r], ptr[r + 1]):
            out[i, cols[e]] = p[e]


@numba.njit(parallel=True, fastmath=False, cache=True)
def subtract_h_term(pr, h2, xv, out):  # pragma: no cover - jitted
    """``out[i] -= (sum_b pr[i, b] h2[b]) * x_i`` with ``xv``, ``out`` (n, 2Mh) interleaved
    complex and the real ``h2`` (G, Mh) acting on both parts; zero ``pr`` skipped."""
    n_img, mh = h2.shape
    for i in numba.prange(out.shape[0]):
        h = np.zeros(mh, dtype=out.dtype)
        for b in range(n_img):
            w = pr[i, b]
            if w != 0:
                for k in range(mh):
                    h[k] += w * h2[b, k]
        o = out[i]
        x = xv[i]
        for k in range(mh):
            o[2 * k] -= h[k] * x[2 * k]
            o[2 * k + 1] -= h[k] * x[2 * k + 1]


# ------------------------------------------------------------------------ small image groups
@numba.njit(parallel=True, fastmath=True, cache=True)
def small_group_scores(xt, rows, rot_ptr, zv, col_ptr, hrep, img_ptr, n_shift, lwr, lws,
                       out_ptr, tasks, out):  # pragma: no cover - jitted
    """Scores of many small groups: for group g, rotation a (slice row ``rows[a]`` of ``xt``),
    image m and shift s: ``<x, zv[m, s]> - <x^2, hrep[m]> + lwr[a] + lws[m, s]``.

    xt : (n_table, 2Mh) interleaved real slices; zv : (sum G nS, 2Mh); hrep : (sum G, 2Mh);
    out : flat, group g at ``out_ptr[g]`` laid out (n_r, G, nS).  One parallel task per row
    ``(g, a0, a1)`` of ``tasks``: the group's rotations ``a0:a1`` (see :func:`group_tasks`);
    four shifts share each pass over the slice.
    """
    k = xt.shape[1]
    for t in numba.prange(tasks.shape[0]):
        g = tasks[t, 0]
        r0 = rot_ptr[g]
        c0 = col_ptr[g]
        i0 = img_ptr[g]
        nc = col_ptr[g + 1] - c0
        ni = img_ptr[g + 1] - i0
        ns = n_shift[g]
        o = out_ptr[g]
        for a in range(tasks[t, 1], tasks[t, 2]):
            x = xt[rows[r0 + a]]
            for im in range(ni):
                nrm = x[0] * 0
                h = hrep[i0 + im]
                for j in range(k):
                    nrm += x[j] * x[j] * h[j]
                base = lwr[r0 + a] - nrm
                s = 0
                while s < ns:
                    c = im * ns + s
                    if s + 4 <= ns:
                        z0, z1, z2, z3 = zv[c0 + c], zv[c0 + c + 1], zv[c0 + c + 2], zv[c0 + c + 3]
                        a0 = a1 = a2 = a3 = x[0] * 0
                        for j in range(k):
                            xj = x[j]
                            a0 += xj * z0[j]
                            a1 += xj * z1[j]
                            a2 += xj * z2[j]
                            a3 += xj * z3[j]
                        out[o + a * nc + c] = a0 + base + lws[c0 + c]
                        out[o + a * nc + c + 1] = a1 + base + lws[c0 + c + 1]
                        out[o + a * nc + c + 2] = a2 + base + lws[c0 + c + 2]
                        out[o + a * nc + c + 3] = a3 + base + lws[c0 + c + 3]
                        s += 4
                        continue
                    zr = zv[c0 + c]
                    acc = x[0] * 0
                    for j in range(k):
                        acc += x[j] * zr[j]
                    out[o + a * nc + c] = acc + base + lws[c0 + c]
                    s += 1


def group_tasks(rot_ptr, col_ptr, n_tasks):
    """``(T, 3)`` int64 tasks ``(g, a0, a1)`` for :func:`small_group_scores` and
    :func:`small_group_gradients`: each group's rotations cut into runs of similar work
    (rotations x columns), about ``n_tasks`` in all, so that threads stay balanced."""
    n_r = np.diff(rot_ptr)
    work = n_r * np.maximum(np.diff(col_ptr), 1)
    per = max(1, int(work.sum()) // max(1, n_tasks))
    out = []
    for g in range(len(n_r)):
        step = max(1, per // max(1, int(work[g] // max(1, n_r[g]))))
        for a0 in range(0, int(n_r[g]), step):
            out.append((g, a0, min(int(n_r[g]), a0 + step)))
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


@numba.njit(parallel=True, fastmath=True, cache=True)
def small_group_gradients(p, out_ptr, xt, rows, rot_ptr, zv, col_ptr, h2rep, img_ptr,
                          n_shift, tasks, grad):  # pragma: no cover - jitted
    """Gradient rows of many small groups (interleaved real, one row per group rotation):
    ``grad[a] = sum_{m,s} p[a,m,s] zv[m,s] - x_a * sum_m (sum_s p[a,m,s]) h2rep[m]``.
    Posterior weights that are exactly 0 are skipped.  One parallel task per row of
    ``tasks`` (:func:`group_tasks`)."""
    k = xt.shape[1]
    for t in numba.prange(tasks.shape[0]):
        g = tasks[t, 0]
        r0 = rot_ptr[g]
        c0 = col_ptr[g]
        i0 = img_ptr[g]
        nc = col_ptr[g + 1] - c0
        ni = img_ptr[g + 1] - i0
        ns = n_shift[g]
        o = out_ptr[g]
        tmp = np.empty(k, dtype=grad.dtype)  # thread-local accumulator (vectorises)
        for a in range(tasks[t, 1], tasks[t, 2]):
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
