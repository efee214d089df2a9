"""Rotations: RELION ZYZ Euler angles, matrices, quaternions, random draws, distances.

Convention (RELION, see ``docs/conventions.md``)
------------------------------------------------
``R = Rz(rot) @ Ry(tilt) @ Rz(psi)`` with active right-handed rotation matrices and angles in
degrees.  ``R`` is the transpose of RELION's ``Euler_angles2matrix`` and equals
``scipy.spatial.transform.Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True)``.
A projection with pose ``R`` samples the volume's FT at ``R @ (kx, ky, 0)``; in real space a
density point ``p`` (relative to the centre) appears in the image at ``(R.T @ p)[:2]``.

Quaternions are scalar-first ``(w, x, y, z)`` with ``w >= 0``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "axis_angle_to_matrix",
    "euler_to_matrix",
    "geodesic_distance_deg",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
    "random_rotations",
]


def _rz(a: NDArray) -> NDArray:
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    rows = [np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)]
    return np.stack(rows, -2)


def _ry(a: NDArray) -> NDArray:
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    rows = [np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)]
    return np.stack(rows, -2)


def euler_to_matrix(rot_deg: ArrayLike, tilt_deg: ArrayLike, psi_deg: ArrayLike) -> NDArray:
    """RELION Euler angles (degrees) to rotation matrices ``Rz(rot) Ry(tilt) Rz(psi)``.

    Parameters
    ----------
    rot_deg, tilt_deg, psi_deg : array_like, broadcastable, shape (...)

    Returns
    -------
    ndarray, shape (..., 3, 3), float64
    """
    rot, tilt, psi = np.broadcast_arrays(
        *(np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (rot_deg, tilt_deg, psi_deg))
    )
    return _rz(rot) @ _ry(tilt) @ _rz(psi)


def matrix_to_euler(matrices: ArrayLike) -> tuple[NDArray, NDArray, NDArray]:
    """Rotation matrices to RELION Euler angles ``(rot, tilt, psi)`` in degrees.

    ``tilt`` is in [0, 180]; at the poles (tilt 0 or 180) ``psi`` is set to 0 and the whole
    in-plane angle is put in ``rot``.
    """
    r = np.asarray(matrices, dtype=np.float64)
    tilt = np.arccos(np.clip(r[..., 2, 2], -1.0, 1.0))
    sin_tilt = np.sqrt(r[..., 0, 2] ** 2 + r[..., 1, 2] ** 2)
    pole = sin_tilt < 1e-9
    rot = np.arctan2(r[..., 1, 2], r[..., 0, 2])
    psi = np.arctan2(r[..., 2, 1], -r[..., 2, 0])
    # At a pole R = Rz(rot +- psi) (up to the tilt flip); keep psi = 0.
    rot_pole = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    rot_pole_flip = np.arctan2(-r[..., 1, 0], -r[..., 0, 0])
    rot_pole = np.where(r[..., 2, 2] > 0, rot_pole, rot_pole_flip)
    rot = np.where(pole, rot_pole, rot)
    psi = np.where(pole, 0.0, psi)
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def quaternion_to_matrix(q: ArrayLike) -> NDArray:
    """Unit quaternions ``(w, x, y, z)``, shape (..., 4), to rotation matrices (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(matrices: ArrayLike) -> NDArray:
    """Rotation matrices (..., 3, 3) to unit quaternions ``(w, x, y, z)`` with ``w >= 0``."""
    r = np.asarray(matrices, dtype=np.float64)
    # Shepperd's method, written branch-free: pick the largest diagonal combination.
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    cands = np.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    choice = np.argmax(cands, axis=-1)
    t = np.sqrt(np.maximum(np.take_along_axis(cands, choice[..., None], -1)[..., 0], 1e-300))
    q = np.empty((*r.shape[:-2], 4))
    s = 0.5 / t
    a = r
    opts = [
        np.stack([0.5 * t, (a[..., 2, 1] - a[..., 1, 2]) * s, (a[..., 0, 2] - a[..., 2, 0]) * s,
                  (a[..., 1, 0] - a[..., 0, 1]) * s], -1),
        np.stack([(a[..., 2, 1] - a[..., 1, 2]) * s, 0.5 * t, (a[..., 0, 1] + a[..., 1, 0]) * s,
                  (a[..., 0, 2] + a[..., 2, 0]) * s], -1),
        np.stack([(a[..., 0, 2] - a[..., 2, 0]) * s, (a[..., 0, 1] + a[..., 1, 0]) * s, 0.5 * t,
                  (a[..., 1, 2] + a[..., 2, 1]) * s], -1),
        np.stack([(a[..., 1, 0] - a[..., 0, 1]) * s, (a[..., 0, 2] + a[..., 2, 0]) * s,
                  (a[..., 1, 2] + a[..., 2, 1]) * s, 0.5 * t], -1),
    ]
    for i, opt in enumerate(opts):
        q = np.where((choice == i)[..., None], opt, q)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(rotvec: ArrayLike) -> NDArray:
    """Axis-angle vectors (..., 3), angle = norm in radians (cryoSPARC ``pose``), to matrices."""
    v = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)
    half = theta / 2
    # sin(half)/theta, with its limit 1/2 at theta = 0
    factor = np.where(theta > 1e-12, np.sin(half) / np.where(theta > 1e-12, theta, 1.0), 0.5)
    q = np.concatenate([np.cos(half)[..., None], v * factor[..., None]], -1)
    return quaternion_to_matrix(q)


def matrix_to_axis_angle(matrices: ArrayLike) -> NDArray:
    """Rotation matrices (..., 3, 3) to axis-angle vectors (..., 3), angle in radians."""
    q = matrix_to_quaternion(matrices)
    w = np.clip(q[..., 0], -1.0, 1.0)
    theta = 2 * np.arccos(w)
    sin_half = np.sqrt(np.maximum(1 - w * w, 0.0))
    factor = np.where(sin_half > 1e-12, theta / np.where(sin_half > 1e-12, sin_half, 1.0), 2.0)
    return q[..., 1:] * factor[..., None]


def random_rotations(n: int, rng: np.random.Generator) -> NDArray:
    """``n`` rotations drawn uniformly (Haar measure) on SO(3), shape (n, 3, 3).

    Uses normalised 4D Gaussian vectors as unit quaternions, which are uniform on S^3.
    """
    q = rng.standard_normal((n, 4))
    return quaternion_to_matrix(q)


def geodesic_distance_deg(r1: ArrayLike, r2: ArrayLike) -> NDArray:
    """Angle (degrees, in [0, 180]) of the rotation ``r1.T @ r2``; broadcasts over leading axes."""
    a = np.asarray(r1, dtype=np.float64)
    b = np.asarray(r2, dtype=np.float64)
    trace = np.einsum("...ji,...ji->...", a, b)  # trace(a.T @ b)
    return np.rad2deg(np.arccos(np.clip((trace - 1) / 2, -1.0, 1.0)))
