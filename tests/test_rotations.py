"""RELION Euler angles, matrices, quaternions, uniform draws and distances."""

import numpy as np
import pytest

from cryonb.rotations import (
    axis_angle_to_matrix,
    euler_to_matrix,
    geodesic_distance_deg,
    matrix_to_axis_angle,
    matrix_to_euler,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotations,
)


def test_euler_matrix_is_rz_ry_rz():
    # Hand computation: Rz(90) Ry(90) Rz(0) maps x -> (0, 0, -1)... check columns explicitly.
    r = euler_to_matrix(90.0, 90.0, 0.0)
    expected = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    np.testing.assert_allclose(r, expected, atol=1e-15)
    # a pure rot is an active rotation about z: x -> y
    np.testing.assert_allclose(euler_to_matrix(90.0, 0.0, 0.0) @ [1, 0, 0], [0, 1, 0], atol=1e-15)


def test_euler_round_trip_including_poles():
    rng = np.random.default_rng(0)
    r = random_rotations(500, rng)
    back = euler_to_matrix(*matrix_to_euler(r))
    np.testing.assert_allclose(back, r, atol=1e-10)
    for tilt in (0.0, 180.0):
        r0 = euler_to_matrix(40.0, tilt, 25.0)
        np.testing.assert_allclose(euler_to_matrix(*matrix_to_euler(r0)), r0, atol=1e-10)
    rot, tilt, psi = matrix_to_euler(euler_to_matrix(10.0, 50.0, -70.0))
    np.testing.assert_allclose([rot, tilt, psi], [10.0, 50.0, -70.0], atol=1e-10)


def test_quaternion_and_axis_angle_round_trip():
    rng = np.random.default_rng(1)
    r = random_rotations(300, rng)
    q = matrix_to_quaternion(r)
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(q), r, atol=1e-12)
    np.testing.assert_allclose(axis_angle_to_matrix(matrix_to_axis_angle(r)), r, atol=1e-10)
    # 90 degrees about z
    np.testing.assert_allclose(axis_angle_to_matrix([0, 0, np.pi / 2]),
                               euler_to_matrix(90.0, 0.0, 0.0), atol=1e-15)


def test_random_rotations_are_uniform():
    """Haar measure: E[R] = 0 and the rotation angle has density (1 - cos t) / pi."""
    r = random_rotations(20000, np.random.default_rng(2))
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape),
                               atol=1e-12)
    assert np.abs(r.mean(axis=0)).max() < 0.02
    angle = np.deg2rad(geodesic_distance_deg(np.eye(3), r))
    # mean angle of the Haar distribution is pi/2 + 2/pi
    assert abs(angle.mean() - (np.pi / 2 + 2 / np.pi)) < 0.02


@pytest.mark.parametrize("deg", [0.0, 1e-3, 37.0, 179.0])
def test_geodesic_distance(deg):
    a = random_rotations(1, np.random.default_rng(3))[0]
    b = a @ euler_to_matrix(0.0, deg, 0.0)
    assert geodesic_distance_deg(a, b) == pytest.approx(deg, abs=1e-5)
