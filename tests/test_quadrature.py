"""Pose quadrature: sizes from the band limit, weights, rotations, kernels and refinement."""

import itertools

import numpy as np
import pytest

from cryonb.quadrature import Quadrature, fibonacci_sphere, reference_undersampling, shift_lattice
from cryonb.rotations import euler_to_matrix, random_rotations


@pytest.mark.parametrize(("w", "stage", "n_dir", "n_inp"), [
    (0.020, 0, 300, 31), (0.040, 4, 2673, 91), (0.060, 8, 6002, 136), (0.100, 16, 16656, 226),
    (0.150, 26, 37465, 338)])
def test_sizes_follow_the_band_limit_like_the_reference(w, stage, n_dir, n_inp):
    """ALGORITHM.md 5.8: N = 128, 2.8 Å, the reference's undersampling factors by stage."""
    us_r, us_s = reference_undersampling(stage)
    q = Quadrature.for_band_limit(w, box_size=128, pixel_size_A=2.8, undersample=us_r,
                                  shift_undersample=us_s)
    assert (q.n_directions, q.n_inplane) == (n_dir, n_inp)
    assert q.shift_spacing_A == pytest.approx(min(us_s / (2 * w), 10.0))
    assert q.size == n_dir * n_inp * q.n_shifts
    for weights in (q.direction_weights, q.inplane_weights, q.shift_weights):
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_higher_band_limit_gives_more_points():
    sizes = [Quadrature.for_band_limit(w, box_size=64, pixel_size_A=3.0) for w in
             (0.03, 0.06, 0.12)]
    for a, b in itertools.pairwise(sizes):
        assert b.n_directions > a.n_directions and b.n_inplane > a.n_inplane
        assert b.n_shifts >= a.n_shifts
    # the particle diameter instead of the box: fewer points for a smaller particle
    small = Quadrature.for_band_limit(0.06, particle_radius_A=40.0)
    assert small.n_directions < sizes[1].n_directions
    with pytest.raises(ValueError):
        Quadrature.for_band_limit(0.06)


def test_fibonacci_directions_are_near_uniform():
    n = 500
    d = fibonacci_sphere(n)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.abs(d.mean(axis=0)).max() < 1e-2
    # second moments of the uniform distribution: E[d d^T] = I / 3
    np.testing.assert_allclose(d.T @ d / n, np.eye(3) / 3, atol=2e-3)
    # covering radius: every random direction is within ~1 spacing of a grid point
    q = Quadrature.from_counts(n, 4)
    probe = np.random.default_rng(0).standard_normal((2000, 3))
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    dist = np.arccos(np.clip(probe @ d.T, -1, 1)).min(axis=1)
    assert dist.max() < 0.75 * q.direction_spacing_rad
    nn = np.sort(np.arccos(np.clip(d @ d.T, -1, 1)), axis=1)[:, 1]
    assert nn.min() > 0.6 * q.direction_spacing_rad


def test_rotations_order_and_convention():
    q = Quadrature.from_counts(20, 6)
    rots = q.rotations()
    assert rots.shape == (120, 3, 3)
    np.testing.assert_allclose(rots @ np.swapaxes(rots, 1, 2),
                               np.broadcast_to(np.eye(3), rots.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rots), 1.0)
    d, i = q.split_pose_index(np.arange(120))
    np.testing.assert_array_equal(d, np.repeat(np.arange(20), 6))
    np.testing.assert_array_equal(i, np.tile(np.arange(6), 20))
    np.testing.assert_allclose(rots[:, :, 2], q.directions[d], atol=1e-12)  # R z = direction
    eul = q.euler_angles_deg(d, i)
    np.testing.assert_allclose(euler_to_matrix(eul[:, 0], eul[:, 1], eul[:, 2]), rots, atol=1e-12)
    np.testing.assert_allclose(q.rotations_for([3], [0, 5]), rots[[18, 23]])
    np.testing.assert_allclose(np.diff(q.inplane_rad), 2 * np.pi / 6)


def test_rotation_grid_integrates_like_haar_measure():
    """The weighted grid reproduces Haar moments: E[R] = 0 and E[R_ij^2] = 1/3."""
    q = Quadrature.from_counts(400, 12)
    rots = q.rotations()
    w = np.outer(q.direction_weights, q.inplane_weights).ravel()
    np.testing.assert_allclose(np.einsum("r,rij->ij", w, rots), 0.0, atol=5e-3)
    np.testing.assert_allclose(np.einsum("r,rij->ij", w, rots**2), 1 / 3, atol=5e-3)
    mc = random_rotations(20000, np.random.default_rng(0))
    np.testing.assert_allclose(np.einsum("r,rij->ij", w, rots**4), (mc**4).mean(axis=0),
                               atol=0.01)


def test_shift_lattice_and_gaussian_prior():
    shifts, w = shift_lattice(1.0, 8.0, 2.0)
    assert np.all(np.linalg.norm(shifts, axis=1) <= 8.0 + 1e-9)
    np.testing.assert_array_equal(shifts[0], [0.0, 0.0])
    assert w.sum() == pytest.approx(1.0)
    assert len(shifts) == np.count_nonzero(
        np.add.outer(np.arange(-8, 9) ** 2, np.arange(-8, 9) ** 2) <= 64)
    np.testing.assert_allclose(w @ shifts, 0.0, atol=1e-12)
    # the lattice (spacing sigma / 2) integrates the prior's second moment; truncation at 6 sigma
    wide, ww = shift_lattice(1.0, 12.0, 2.0)
    np.testing.assert_allclose((ww[:, None] * wide**2).sum(axis=0), 4.0, rtol=1e-5)
    one, w1 = shift_lattice(5.0, 2.0, 10.0)
    assert one.shape == (1, 2) and w1[0] == 1.0
    flat_s, flat_w = shift_lattice(1.0, 2.0, None)
    np.testing.assert_allclose(flat_w, 1 / len(flat_s))


def test_weights_are_normalised_and_validated():
    q = Quadrature(fibonacci_sphere(5), [0.0, 1.0], [[0, 0], [1, 0]], shift_weights=[3.0, 1.0])
    np.testing.assert_allclose(q.shift_weights, [0.75, 0.25])
    np.testing.assert_allclose(q.direction_weights, 0.2)
    assert q.shift_spacing_A == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Quadrature(fibonacci_sphere(5), [0.0], [[0, 0]], direction_weights=[1, 1, 1, 1, -1])


def test_kernels_match_dense_evaluation():
    q = Quadrature.from_counts(300, 16, shift_spacing_A=1.0, shift_extent_A=5.0)
    rng = np.random.default_rng(1)
    pts = rng.standard_normal((7, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    kappa = q.fisher_kappa(2)
    dense = np.exp(kappa * (pts @ q.directions.T - 1))
    dense[dense < 1e-4] = 0
    np.testing.assert_allclose(q.direction_kernel(pts, kappa, 1e-4).toarray(), dense, atol=1e-12)
    anti = np.exp(kappa * (np.abs(pts @ q.directions.T) - 1))
    anti[anti < 1e-4] = 0
    np.testing.assert_allclose(q.direction_kernel(pts, kappa, 1e-4, antipodal=True).toarray(),
                               anti, atol=1e-12)
    ang = rng.uniform(0, 2 * np.pi, 5)
    kin = q.inplane_kernel(ang, 3.0, 1e-4).toarray()
    ref = np.exp(3.0 * (np.cos(ang[:, None] - q.inplane_rad[None]) - 1))
    ref[ref < 1e-4] = 0
    np.testing.assert_allclose(kin, ref, atol=1e-12)
    sp_ = rng.uniform(-3, 3, (6, 2))
    ks = q.shift_kernel(sp_, 1.2, n_sigma=3).toarray()
    d2 = ((sp_[:, None] - q.shifts_A[None]) ** 2).sum(-1)
    ref = np.where(d2 <= (3 * 1.2) ** 2, np.exp(-d2 / (2 * 1.2**2)), 0)
    np.testing.assert_allclose(ks, ref, atol=1e-12)


def test_fisher_kappa_sets_the_kernel_at_one_spacing():
    q = Quadrature.from_counts(1000, 40)
    k2, k1 = q.fisher_kappa(2), q.fisher_kappa(1)
    assert np.exp(k2 * (np.cos(q.direction_spacing_rad) - 1)) == pytest.approx(0.25)
    assert np.exp(k1 * (np.cos(q.inplane_spacing_rad) - 1)) == pytest.approx(0.5)


def test_direction_neighbors_are_symmetric_and_within_radius():
    q = Quadrature.from_counts(200, 4)
    radius = 2 * q.direction_spacing_rad
    g = q.direction_neighbors(radius)
    assert (g != g.T).nnz == 0
    assert g.data.max() <= radius + 1e-12
    assert np.all(g.getnnz(axis=1) >= 4)  # every point has a few neighbours
    full = np.arccos(np.clip(q.directions @ q.directions.T, -1, 1))
    assert g.nnz == np.count_nonzero(full <= radius)


def test_transfer_to_a_finer_grid_keeps_the_mode():
    coarse = Quadrature.for_band_limit(0.03, box_size=64, pixel_size_A=3.0, shift_extent_A=20)
    fine = Quadrature.for_band_limit(0.06, box_size=64, pixel_size_A=3.0, shift_extent_A=20)
    d0, i0, s0 = 17, 5, 7
    pd, pi, ps = coarse.transfer(fine, np.eye(coarse.n_directions)[d0],
                                 np.eye(coarse.n_inplane)[i0], np.eye(coarse.n_shifts)[s0])
    for p, n in ((pd, fine.n_directions), (pi, fine.n_inplane), (ps, fine.n_shifts)):
        assert p.shape == (n,) and p.sum() == pytest.approx(1.0)
    mean_dir = pd @ fine.directions
    angle = np.arccos(np.clip(mean_dir @ coarse.directions[d0] / np.linalg.norm(mean_dir), -1, 1))
    assert angle < 0.25 * coarse.direction_spacing_rad
    assert np.arccos(np.cos(fine.inplane_rad[pi.argmax()] - coarse.inplane_rad[i0])) <= \
        fine.inplane_spacing_rad
    assert np.linalg.norm(ps @ fine.shifts_A - coarse.shifts_A[s0]) < 0.5 * coarse.shift_spacing_A
    # the mass stays local: within 2 coarse spacings
    near = np.arccos(np.clip(fine.directions @ coarse.directions[d0], -1, 1)) < \
        2 * coarse.direction_spacing_rad
    assert pd[near].sum() > 0.99
