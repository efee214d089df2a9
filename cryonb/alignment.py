"""Superpose a map on a reference: global rotation, translation and hand search.

Ab initio maps come out in an arbitrary orientation, position and hand, so before an FSC against
the truth the map is aligned (``docs/conventions.md``).  The search maximises the real-space
cross-correlation:

1. both maps are Fourier-cropped to a small box (``coarse_box``, default 24 px) and normalised;
2. for each of ~``n_coarse`` rotations (Fibonacci directions x in-plane angles) and each hand
   (the map and its mirror image ``x -> -x``) the rotated map's cross-correlation with the
   reference is computed for all translations at once (FFT); the best is kept;
3. the best rotation is refined at ``fine_box`` px by a local search on a shrinking grid;
4. the result is applied to the full-size map (trilinear rotation about the centre ``N//2`` and a
   Fourier phase shift).

Rotation convention: ``aligned(x) = moving(R^T (x - t))`` (after the mirror if ``flipped``), with
``x`` the (x, y, z) position in Å about the centre voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from .fourier import fft3_centered, fourier_crop, frequency_grid_3d, ifft3_centered
from .quadrature import Quadrature
from .rotations import axis_angle_to_matrix

__all__ = ["Alignment", "align_maps", "apply_alignment", "rotate_volume"]


@dataclass(frozen=True)
class Alignment:
    """A superposition found by :func:`align_maps`.

    Attributes
    ----------
    rotation : (3, 3) rotation matrix acting on (x, y, z)
    shift_A : (3,) translation (x, y, z) in Å, applied after the rotation
    flipped : bool
        The moving map was mirrored (``x -> -x``) first: the other hand.
    correlation : float
        Real-space correlation coefficient of the aligned maps (full size).
    """

    rotation: NDArray
    shift_A: NDArray
    flipped: bool
    correlation: float


def rotate_volume(volume: ArrayLike, rotation: ArrayLike, order: int = 1) -> NDArray:
    """``out(x) = volume(R^T x)`` about the centre voxel ``N//2``; ``[z, y, x]`` arrays."""
    vol = np.asarray(volume, dtype=np.float64)
    r = np.asarray(rotation, dtype=np.float64)
    rev = r.T[::-1, ::-1]  # R^T in (z, y, x) index order
    centre = np.array(vol.shape, dtype=np.float64) // 2
    offset = centre - rev @ centre
    return ndimage.affine_transform(vol, rev, offset=offset, order=order, mode="constant")


def _shift_volume(volume: NDArray, shift_A: NDArray, pixel_size_A: float) -> NDArray:
    n = volume.shape[0]
    kx, ky, kz = frequency_grid_3d(n, pixel_size_A=pixel_size_A)
    phase = np.exp(-2j * np.pi * (kx * shift_A[0] + ky * shift_A[1] + kz * shift_A[2]))
    return ifft3_centered(fft3_centered(volume) * phase).real


def _mirror(volume: NDArray) -> NDArray:
    """``x -> -x`` about the centre ``N//2`` (keeps the centre voxel in place)."""
    n = volume.shape[-1]
    out = volume[:, :, ::-1]
    return np.roll(out, 1, axis=2) if n % 2 == 0 else out


def _normalise(v: NDArray) -> NDArray:
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-30)


def _best_translation(a: NDArray, b_ft_conj: NDArray) -> tuple[float, NDArray]:
    """Max over translations of the circular cross-correlation of ``a`` with ``b``."""
    cc = np.fft.ifftn(np.fft.fftn(a) * b_ft_conj).real
    idx = np.unravel_index(int(np.argmax(cc)), cc.shape)
    n = a.shape[0]
    lag_zyx = np.array([(i + n // 2) % n - n // 2 for i in idx], dtype=np.float64)
    for axis in range(3):  # sub-pixel: parabola through the peak and its two neighbours
        lo, hi = list(idx), list(idx)
        lo[axis], hi[axis] = (idx[axis] - 1) % n, (idx[axis] + 1) % n
        c0, cm, cp = cc[idx], cc[tuple(lo)], cc[tuple(hi)]
        denom = cm - 2 * c0 + cp
        if denom < 0:
            lag_zyx[axis] += 0.5 * (cm - cp) / denom
    # cc peaks at the lag s with a(x + s) = b(x): moving a by t = -s superposes it on b
    return float(cc[idx]), -lag_zyx[::-1]  # translation (x, y, z) in px


def _search(moving: NDArray, reference: NDArray, rotations: NDArray
            ) -> tuple[float, int, NDArray]:
    ref_conj = np.conj(np.fft.fftn(_normalise(reference)))
    best = (-np.inf, 0, np.zeros(3))
    for i, r in enumerate(rotations):
        score, shift = _best_translation(_normalise(rotate_volume(moving, r)), ref_conj)
        if score > best[0]:
            best = (score, i, shift)
    return best


def _local_rotations(center: NDArray, step_rad: float) -> NDArray:
    axes = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -1, 0], [1, 0, 1],
                     [1, 0, -1], [0, 1, 1], [0, 1, -1]], dtype=np.float64)
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    deltas = [np.eye(3)]
    for a in axes:
        for s in (-1, 1):
            deltas.append(axis_angle_to_matrix(a * s * step_rad))
    return np.array([d @ center for d in deltas])


def align_maps(moving: ArrayLike, reference: ArrayLike, pixel_size_A: float, *,
               coarse_box: int = 20, fine_box: int = 40, n_coarse: int = 1500,
               try_mirror: bool = True) -> Alignment:
    """Find the rotation, translation and hand that superpose ``moving`` on ``reference``.

    Both maps are ``(N, N, N)`` ``[z, y, x]`` at the same pixel size.
    """
    mov = np.asarray(moving, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if mov.shape != ref.shape or mov.ndim != 3:
        raise ValueError(f"maps must have the same cubic shape, got {mov.shape} and {ref.shape}")
    n = mov.shape[0]
    cb, fb = min(coarse_box, n), min(fine_box, n)
    coarse_ref = fourier_crop(ref, cb, ndim=3)
    n_dir = max(1, round(n_coarse / 36))
    grid = Quadrature.from_counts(n_dir, max(1, n_coarse // n_dir)).rotations()
    hands = (False, True) if try_mirror else (False,)
    candidates = []
    for flipped in hands:
        m = _mirror(mov) if flipped else mov
        score, i, _ = _search(fourier_crop(m, cb, ndim=3), coarse_ref, grid)
        candidates.append((score, flipped, grid[i]))
    _, flipped, rotation = max(candidates, key=lambda c: c[0])
    m = _mirror(mov) if flipped else mov
    fine_mov, fine_ref = fourier_crop(m, fb, ndim=3), fourier_crop(ref, fb, ndim=3)
    step = np.deg2rad(360.0 / np.sqrt(n_coarse)) / 2
    for _ in range(8):
        local = _local_rotations(rotation, step)
        _, i, _ = _search(fine_mov, fine_ref, local)
        rotation = local[i]
        if i == 0:
            step /= 2
    _, _, shift_px = _search(m, ref, rotation[None])
    shift_A = shift_px * pixel_size_A
    result = Alignment(rotation, shift_A, flipped, 0.0)
    aligned = apply_alignment(mov, result, pixel_size_A)
    corr = float(np.corrcoef(aligned.ravel(), ref.ravel())[0, 1])
    return Alignment(rotation, shift_A, flipped, corr)


def apply_alignment(volume: ArrayLike, alignment: Alignment, pixel_size_A: float) -> NDArray:
    """The map moved by ``alignment`` (mirror, rotate about the centre, translate)."""
    vol = np.asarray(volume, dtype=np.float64)
    if alignment.flipped:
        vol = _mirror(vol)
    vol = rotate_volume(vol, alignment.rotation, order=3)
    return _shift_volume(vol, alignment.shift_A, pixel_size_A)
