"""numba kernels for the CPU hot loops (trilinear slice extraction and its adjoint).

Each kernel has a vectorised NumPy/CuPy twin in :mod:`cryonb.projection`; the tests check
that both agree.  Coordinates are given in voxel units of the (padded) Fourier grid, relative
to its centre ``P // 2``; volumes are indexed ``[z, y, x]``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["backproject_trilinear", "slice_trilinear"]


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
        for m in range(n_pts):
            kx = coords[m, 0] * scale
            ky = coords[m, 1] * scale
            x = r[0, 0] * kx + r[0, 1] * ky + c
            y = r[1, 0] * kx + r[1, 1] * ky + c
            z = r[2, 0] * kx + r[2, 1] * ky + c
            x0 = int(np.floor(x))
            y0 = int(np.floor(y))
            z0 = int(np.floor(z))
            fx = x - x0
            fy = y - y0
            fz = z - z0
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
