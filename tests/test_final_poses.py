"""Final poses by local search around the last posterior (cryonb/final_poses.py,
ImportanceSampler.local_subsets): exact where the subset holds the posterior, full where
nothing was recorded."""

import numpy as np
import pytest
from scipy.special import logsumexp

from cryonb.dataset import Dataset
from cryonb.final_poses import batch_order, batch_union, final_poses
from cryonb.importance import ImportanceSampler, ISSchedule
from cryonb.likelihood import PoseSubset
from cryonb.objective import MarginalObjective, QuadratureOptions

DOMAINS = ("directions", "inplane", "shifts")
BOX, PSIZE, N_IMG = 24, 4.0, 6
# shifts every 4 Å within 6 Å (9 shifts); at 1/20 Å^-1: 308 directions x 31 in-plane angles
OPTIONS = QuadratureOptions(shift_sigma_A=4.0, shift_extent_A=6.0)
W_COARSE, W_FINE = 0.03, 0.05


@pytest.fixture(scope="module")
def grid_problem():
    """A random (24 px)^3 map and clean images at distinct poses of the 1/20 Å^-1 grid."""
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((BOX,) * 3)
    probe = MarginalObjective(Dataset.from_arrays(np.zeros((1, BOX, BOX)), PSIZE), 1.0,
                              rng=rng, quadrature=OPTIONS)
    probe.set_band_limit(W_FINE)
    quad, model = probe.likelihood.quadrature, probe.likelihood.model
    true_r = rng.choice(quad.n_rotations, N_IMG, replace=False)
    clean = model.forward(vol, quad.rotations()[true_r],
                          quad.shifts_A[rng.integers(0, quad.n_shifts, N_IMG)], None)
    return vol, clean, quad, model, true_r


def _objective(images, sigma, sampler):
    return MarginalObjective(Dataset.from_arrays(images, PSIZE), sigma,
                             rng=np.random.default_rng(1), sampler=sampler, quadrature=OPTIONS,
                             dtype=np.float64)


def _exhaustive(obj, vol, images, sigma):
    lik = obj.likelihood
    prep = lik.prepare(images, None, sigma, dtype=np.float64)
    vft = lik.volume_to_fourier(vol)
    return lik.evaluate(vft, prep), lik, prep, vft


@pytest.fixture(autouse=True)
def _local_subsets_stay_local(monkeypatch):
    """The tests exercise the local search itself: no subset is widened to the whole grid
    (the dense switch has its own test), the coarse-to-fine search is not gated by size and
    batches are not merged (:func:`batch_union` has its own tests)."""
    import cryonb.final_poses as fp

    monkeypatch.setattr(fp, "DENSE_FRACTION", 1.0)
    monkeypatch.setattr(fp, "COARSE_MIN_RATIO", 0.0)
    # ratio 1: a union (at least as large as each subset) never costs less, so no batch merges
    monkeypatch.setattr(fp, "SPARSE_COST_RATIO_NO_GRADIENT", 1.0)


@pytest.mark.parametrize("record_at", [W_COARSE, W_FINE], ids=["coarser-grid", "same-grid"])
def test_noiseless_final_poses_equal_the_exhaustive_map(grid_problem, record_at):
    """After an exhaustive posterior was recorded (on a coarser grid, as after a band-limit
    step, or on the same one), the local search finds the exhaustive MAP pose of every image,
    on a few percent of the grid."""
    vol, images, quad, model, true_r = grid_problem
    sampler = ImportanceSampler(N_IMG, ISSchedule.constant(0.05))  # T = 1: the posterior
    obj = _objective(images, 1.0, sampler)
    obj.set_band_limit(record_at)
    first, *_ = _exhaustive(obj, vol, images, 1.0)
    sampler.update(np.arange(N_IMG), None, first, 0)
    obj.set_band_limit(W_FINE)
    exact, *_ = _exhaustive(obj, vol, images, 1.0)
    d_true, _ = quad.split_pose_index(true_r)
    np.testing.assert_array_equal(exact.map_direction, d_true)  # noiseless: MAP = truth
    (half,) = final_poses([(obj, vol, obj.dataset)], model, batch_size=4, progress=False)
    assert obj.sampler is sampler  # put back after the pass
    np.testing.assert_array_equal(half.indices, np.stack(
        [exact.map_direction, exact.map_inplane, exact.map_shift], 1))
    np.testing.assert_allclose(half.rotations, exact.map_rotations, atol=1e-12)
    np.testing.assert_allclose(half.shifts_A, exact.map_shifts_A, atol=1e-12)
    # a delta posterior diffused by the kernel (a few grid spacings): measured 0.8 % (same
    # grid) and 3.3 % (coarser grid) of the points; 5 % says it stayed local
    assert half.fraction_evaluated < 0.05
    assert half.volume.shape == (BOX,) * 3 and np.all(np.isfinite(half.volume))


@pytest.mark.parametrize("mass", [0.9, 0.99, 0.999])
def test_local_sum_misses_at_most_the_mass_left_out(grid_problem, mass):
    """With noise (posteriors spread over a few points), the restricted sum equals the full
    one up to the posterior mass outside the subset, and keeps the exhaustive MAP.

    Every term is positive and the log importance weights are 0, so ``log L_sub <= log L``
    and ``log L - log L_sub = -log(1 - P(outside))``.  The product subset misses a joint point
    only if it misses one of its coordinates, so ``P(outside) <= sum_d (1 - P_d(S_d))``
    (union bound over the three exact posterior marginals) =: ``leftover``.
    """
    vol, clean, quad, *_ = grid_problem
    sigma = 6.0  # signal std 1.8 per pixel: ESS of the direction marginals up to ~2
    images = clean + np.random.default_rng(5).normal(0, sigma, clean.shape)
    sampler = ImportanceSampler(N_IMG, ISSchedule.constant(0.05))
    obj = _objective(images, sigma, sampler)
    obj.set_band_limit(W_FINE)
    exact, lik, prep, vft = _exhaustive(obj, vol, images, sigma)
    ids = np.arange(N_IMG)
    sampler.update(ids, None, exact, 0)
    subsets = sampler.local_subsets(ids, quad, mass)
    assert all(not s.has_importance_weights for s in subsets)
    local = lik.evaluate(vft, prep, subsets=subsets)
    marg = (exact.log_marginal_directions, exact.log_marginal_inplane, exact.log_marginal_shifts)
    leftover = np.array([sum(-np.expm1(logsumexp(m[b, getattr(s, d)]))
                             for d, m in zip(DOMAINS, marg, strict=True))
                         for b, s in enumerate(subsets)])
    # diffusion only spreads the recorded mass outwards, so a set holding `mass` of the
    # diffused marginal holds about as much of the posterior: 1 - mass per domain is the
    # design, 3 (1 - mass) over the three; measured at most 1.5 (1 - mass)
    assert np.all(leftover <= 3 * (1 - mass) + 1e-12), leftover
    missed = exact.log_likelihood - local.log_likelihood
    tol = 1e-9 * np.abs(exact.log_likelihood)  # float64 sums of ~1e3 nats, rounding only
    assert np.all(missed >= -tol), missed
    assert np.all(missed <= -np.log1p(-leftover) + tol), (missed, leftover)
    # the exhaustive MAP lies in every subset here, so the restricted search returns it
    for b, s in enumerate(subsets):
        assert exact.map_direction[b] in s.directions and exact.map_inplane[b] in s.inplane
        assert exact.map_shift[b] in s.shifts
    for name in ("map_direction", "map_inplane", "map_shift"):
        np.testing.assert_array_equal(getattr(local, name), getattr(exact, name))
    # the subsets are the smallest sets holding `mass` of the alpha = 0 proposal
    props = sampler.subset(ids)
    props.schedule = ISSchedule.constant(0.0)
    q0 = props.proposals(ids, quad, 0)
    for b, s in enumerate(subsets):
        for d in DOMAINS:
            p = q0[d][b]
            chosen = getattr(s, d)
            assert p[chosen].sum() >= mass - 1e-9
            assert p[chosen].sum() - p[chosen].min() < mass  # one fewer would not do
            assert p[chosen].min() >= np.delete(p, chosen).max(initial=0.0) - 1e-15


def test_never_visited_particles_get_the_full_domain(grid_problem, monkeypatch):
    import cryonb.final_poses as fp

    # the coarse-to-fine pass from 0.03 (from 0.025, a factor 2, one of the six images of
    # this random map -- which has no low-resolution shape to speak of -- was misplaced)
    monkeypatch.setattr(fp, "COARSE_START_INVA", W_COARSE)
    vol, images, quad, model, *_ = grid_problem
    sampler = ImportanceSampler(N_IMG, ISSchedule.constant(0.05))
    full = PoseSubset.full(quad)
    for s in sampler.local_subsets([0, 1], quad):
        for d in DOMAINS:
            np.testing.assert_array_equal(getattr(s, d), getattr(full, d))
        assert not s.has_importance_weights
    # visited and unvisited particles in one batch: only the visited ones are restricted
    obj = _objective(images, 1.0, sampler)
    obj.set_band_limit(W_FINE)
    exact, *_ = _exhaustive(obj, vol, images, 1.0)
    sampler.update([1, 3], None, type(exact)(
        exact.log_likelihood[[1, 3]], exact.log_marginal_directions[[1, 3]],
        exact.log_marginal_inplane[[1, 3]], exact.log_marginal_shifts[[1, 3]],
        exact.map_direction[[1, 3]], exact.map_inplane[[1, 3]], exact.map_shift[[1, 3]],
        exact.n_evaluated[[1, 3]], quad), 0)
    subsets = sampler.local_subsets(np.arange(N_IMG), quad, 0.99)
    visited = np.isin(np.arange(N_IMG), [1, 3])
    sizes = np.array([sub.n_points for sub in subsets])
    np.testing.assert_array_equal(sizes[~visited], quad.size)
    assert np.all(sizes[visited] < quad.size)
    # the pass: with most subsets the whole grid, it searches coarse to fine instead (next
    # test) and still finds every exhaustive MAP pose on part of the grid
    (half,) = final_poses([(obj, vol, obj.dataset)], model, progress=False)
    assert np.all(half.n_evaluated < quad.size)
    np.testing.assert_array_equal(half.indices[:, 0], exact.map_direction)
    # an objective without a sampler is scored exhaustively
    plain = _objective(images, 1.0, None)
    plain.set_band_limit(W_FINE)
    (half,) = final_poses([(plain, vol, plain.dataset)], model, progress=False)
    np.testing.assert_array_equal(half.n_evaluated, quad.size)
    np.testing.assert_array_equal(half.indices[:, 0], exact.map_direction)


def test_batch_order_groups_directions():
    """A permutation; particles without a direction last; a batch spans a patch of sphere."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal((2000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[:100] = 0.0  # no direction
    order = batch_order(v, 100)
    np.testing.assert_array_equal(np.sort(order), np.arange(2000))
    assert set(order[-100:].tolist()) == set(range(100))
    # 19 batches of directions over ~4 bands: the mean angle to the batch's mean direction is
    # far below the 90 degrees of random batches
    spread = [np.degrees(np.arccos(np.clip(v[b] @ (m := v[b].mean(0)) / np.linalg.norm(m),
                                           -1, 1))).mean()
              for b in np.split(order[:1900], 19)]
    assert np.median(spread) < 35.0


def test_never_visited_particles_are_found_coarse_to_fine(grid_problem, monkeypatch):
    """With no recorded posterior (every local subset the whole grid), the pass searches
    exhaustively at a coarse band limit, then locally at T = 1 around that posterior: on
    noiseless images it finds the exhaustive MAP of the fine grid, on a fraction of it."""
    import cryonb.final_poses as fp

    vol, images, _, model, _ = grid_problem
    monkeypatch.setattr(fp, "COARSE_START_INVA", W_COARSE)  # levels 0.03, then 0.05
    sampler = ImportanceSampler(N_IMG, ISSchedule.constant(0.05))
    obj = _objective(images, 1.0, sampler)
    obj.set_band_limit(W_FINE)
    exact, *_ = _exhaustive(obj, vol, images, 1.0)
    levels = []
    set_band_limit = obj.set_band_limit
    monkeypatch.setattr(obj, "set_band_limit", lambda w: (levels.append(w), set_band_limit(w)))
    (half,) = final_poses([(obj, vol, obj.dataset)], model, batch_size=4, progress=False)
    assert levels == [W_COARSE, W_FINE]  # the coarse level, then back at the objective's own
    assert obj.likelihood.quadrature.max_freq_invA == W_FINE and obj.sampler is sampler
    np.testing.assert_array_equal(half.indices, np.stack(
        [exact.map_direction, exact.map_inplane, exact.map_shift], 1))
    # the coarse posterior of a noiseless image is nearly a delta: its 0.99 set, diffused by
    # a coarse grid spacing onto the fine grid, is a few per cent of it (as after a coarser
    # record in the test above); 10 % is still far below the whole grid
    assert half.fraction_evaluated < 0.10


def test_wide_subsets_are_scored_on_the_whole_grid(grid_problem, monkeypatch):
    """A subset above DENSE_FRACTION of the grid is replaced by the whole grid (the dense path
    is faster there); below it the subset stays; with broad records on a grid under
    COARSE_MIN_RATIO times the coarse one the pass is exhaustive."""
    import cryonb.final_poses as fp

    vol, images, quad, model, _ = grid_problem
    sampler = ImportanceSampler(N_IMG, ISSchedule.constant(0.05))
    obj = _objective(images, 1.0, sampler)
    obj.set_band_limit(W_FINE)
    exact, *_ = _exhaustive(obj, vol, images, 1.0)
    sampler.update(np.arange(N_IMG), None, exact, 0)  # T = 1, same grid: compact subsets
    local = fp.LocalSearch(sampler, 0.99, merge=False).sample(np.arange(N_IMG), quad, 0,
                                                               None)
    sizes = np.array([sub.n_points for sub in local])
    assert np.all(sizes < quad.size)
    monkeypatch.setattr(fp, "DENSE_FRACTION", float(np.median(sizes)) / quad.size)
    mixed = fp.LocalSearch(sampler, 0.99, merge=False).sample(np.arange(N_IMG), quad, 0,
                                                               None)
    for sub, size in zip(mixed, sizes, strict=True):
        assert sub.n_points == (quad.size if size > np.median(sizes) else size)
    # broad (never visited) records and no room for coarse-to-fine: exhaustive, exact MAP
    monkeypatch.setattr(fp, "COARSE_MIN_RATIO", 1e9)
    fresh = _objective(images, 1.0, ImportanceSampler(N_IMG, ISSchedule.constant(0.05)))
    fresh.set_band_limit(W_FINE)
    (half,) = final_poses([(fresh, vol, fresh.dataset)], model, progress=False)
    np.testing.assert_array_equal(half.n_evaluated, quad.size)
    np.testing.assert_array_equal(half.indices[:, 0], exact.map_direction)


def _subset(d, i, s, log_w=0.0):
    d, i, s = (np.asarray(x) for x in (d, i, s))
    return PoseSubset(d, i, s, np.full(d.size, log_w), np.zeros(i.size), np.zeros(s.size))


def test_batch_union_merges_only_when_cheaper(monkeypatch):
    """The union of a batch's subsets replaces them when B |U| < sum of the per-image costs
    (SPARSE_COST_RATIO_NO_GRADIENT x points for local subsets): identical subsets always,
    disjoint ones whose union would cost more never, and never subsets with importance
    weights (their estimator needs its own subset)."""
    import cryonb.final_poses as fp

    ratio = 16.0  # the module's measured value (the autouse fixture sets 1)
    monkeypatch.setattr(fp, "SPARSE_COST_RATIO_NO_GRADIENT", ratio)
    same = [_subset([3, 4], [0, 1, 2], [0, 1]) for _ in range(5)]
    merged = batch_union(same, 1000)
    assert merged is not None and merged.n_points == 12
    # two overlapping subsets: union 3 x 3 x 2 = 18 points for 2 images (36) against
    # ratio x (12 + 12): merged, and each image's subset lies inside the union
    a, b = _subset([3, 4], [0, 1, 2], [0, 1]), _subset([4, 5], [0, 1, 2], [0, 1])
    u = batch_union([a, b], 1000)
    assert u is not None
    for sub in (a, b):
        for d in DOMAINS:
            assert set(getattr(sub, d)) <= set(getattr(u, d))
    assert not u.has_importance_weights
    # n disjoint single points: union n^3 points for n images, own cost ratio x n
    n = int(np.ceil(np.sqrt(ratio))) + 1
    spread = [_subset([k], [k], [k]) for k in range(n)]
    assert n * n ** 3 > ratio * n and batch_union(spread, 1000) is None
    assert batch_union([_subset([1], [1], [1], log_w=-0.5)] * 3, 1000) is None
    assert batch_union(same[:1], 1000) is None


def test_merged_batches_keep_the_exhaustive_map(grid_problem, monkeypatch):
    """Forced to merge every batch (the union is a superset of each image's subset, scored
    exactly), the final poses are still the exhaustive MAP poses."""
    import cryonb.final_poses as fp

    monkeypatch.setattr(fp, "SPARSE_COST_RATIO_NO_GRADIENT", 1e12)
    vol, images, quad, model, _ = grid_problem
    sampler = ImportanceSampler(N_IMG, ISSchedule.constant(0.05))
    obj = _objective(images, 1.0, sampler)
    obj.set_band_limit(W_COARSE)
    first, *_ = _exhaustive(obj, vol, images, 1.0)
    sampler.update(np.arange(N_IMG), None, first, 0)
    obj.set_band_limit(W_FINE)
    exact, *_ = _exhaustive(obj, vol, images, 1.0)
    (half,) = final_poses([(obj, vol, obj.dataset)], model, batch_size=3, progress=False)
    np.testing.assert_array_equal(half.indices, np.stack(
        [exact.map_direction, exact.map_inplane, exact.map_shift], 1))
    # each batch of 3 (in batch_order) scored its union: the images of a batch count the
    # same points, so there are at most 2 distinct counts, each at least the image's own
    own = np.array([s.n_points for s in sampler.local_subsets(np.arange(N_IMG), quad, 0.99)])
    assert len(np.unique(half.n_evaluated)) <= N_IMG // 3
    assert np.all(half.n_evaluated >= own)
