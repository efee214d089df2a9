"""Importance sampling over the quadrature: exactness, unbiasedness, bookkeeping, end to end."""

import numpy as np
import pytest
from scipy.special import logsumexp

from cryonb.importance import ImportanceSampler, ISSchedule, draw_domain, log_estimate
from cryonb.likelihood import LikelihoodResult, MarginalLikelihood, PoseSubset
from cryonb.quadrature import Quadrature

DOMAINS = ("directions", "inplane", "shifts")


def _table(q, seed=0):
    """A peaked synthetic log(w p) table (Nd, Ni, Ns) and its exact log-sum."""
    rng = np.random.default_rng(seed)
    lwd, lwi, lws = q.log_weights()
    ll = (8.0 * (q.directions @ q.directions[7])[:, None, None]
          + 3.0 * np.cos(q.inplane_rad - q.inplane_rad[3])[None, :, None]
          - ((q.shifts_A - q.shifts_A[2]) ** 2).sum(1)[None, None, :] / 4.0
          + 0.5 * rng.standard_normal((q.n_directions, q.n_inplane, q.n_shifts)))
    table = ll + lwd[:, None, None] + lwi[None, :, None] + lws[None, None, :]
    return table, logsumexp(table)


def _result(q, tables):
    """A LikelihoodResult holding the exact posterior marginals of some tables."""
    tot = np.array([logsumexp(t) for t in tables])
    post = [t - s for t, s in zip(tables, tot, strict=True)]
    marg = [np.stack([logsumexp(p, axis=ax) for p in post]) for ax in ((1, 2), (0, 2), (0, 1))]
    zeros = np.zeros(len(tables), np.int64)
    return LikelihoodResult(tot, *marg, zeros, zeros, zeros, np.full(len(tables), q.size), q)


def _subset(draws):
    return PoseSubset(*(d.indices for d in draws), *(d.log_weights for d in draws))


def test_schedules():
    ref = ISSchedule.reference()
    assert ref.alpha(0) == 1.0 and ref.alpha(50) == 1.0
    assert ref.alpha(250) == pytest.approx(0.5)
    assert ref.alpha(2000) == 0.05
    assert ref.temperature(200) == pytest.approx(32.0)
    assert ref.temperature(300) == pytest.approx(8.0)
    assert ref.temperature(800) == pytest.approx(2.0)
    assert ref.temperature(100) == pytest.approx(2.0**15)
    assert ref.inverse_temperature(10) == pytest.approx(2.0**-750)  # no overflow
    assert ref.temperature(10**6) == pytest.approx(1.0, abs=1e-3)
    assert ref.chirality_flip(2499) and not ref.chirality_flip(2500)
    paper = ISSchedule.paper()
    assert paper.alpha(49) == 1.0 and paper.alpha(50) == pytest.approx(2**-0.25)
    assert paper.alpha(99) == pytest.approx(2**-0.25)
    assert paper.temperature(10**6) == 1.25
    const = ISSchedule.constant(0.3, 2.0)
    assert const.alpha(0) == const.alpha(5000) == 0.3
    assert const.temperature(0) == const.temperature(9999) == 2.0
    assert not const.chirality_flip(0)


def test_draw_domain():
    rng = np.random.default_rng(0)
    full = draw_domain(np.full(50, 1 / 50), 10.0, rng)
    assert full.enumerated and full.ess == pytest.approx(50)
    np.testing.assert_array_equal(full.indices, np.arange(50))
    np.testing.assert_array_equal(full.log_weights, 0.0)
    q = np.full(1000, 0.1 / 1000)
    q[10] += 0.9
    s = draw_domain(q, 10.0, rng)
    assert not s.enumerated
    assert s.n_draws == int(np.ceil(10 * s.ess)) and s.ess == pytest.approx(1 / np.sum(q * q))
    counts = np.exp(s.log_weights) * s.n_draws * q[s.indices]
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    assert counts.sum() == pytest.approx(s.n_draws)
    assert 10 in s.indices


def test_all_points_give_the_exact_sum():
    """Unseen particles (alpha = 1 on first visit) are enumerated: the estimate is exact."""
    q = Quadrature.from_counts(60, 12, shift_spacing_A=2.0, shift_extent_A=5.0, shift_sigma_A=3.0)
    table, exact = _table(q)
    sampler = ImportanceSampler(3, ISSchedule.constant(0.2))
    subsets = sampler.sample([0, 1, 2], q, 0, np.random.default_rng(0))
    for sub in subsets:
        assert sub.n_points == q.size and not sub.has_importance_weights
        assert log_estimate(table, sub) == pytest.approx(exact, rel=1e-14)
    assert sampler.fraction_evaluated == 1.0 and sampler.speedup == 1.0


def test_estimator_is_unbiased_with_fewer_points():
    """Mean of p_hat / p over 2000 seeds within 3 standard errors of 1, with < 50% of points."""
    q = Quadrature.from_counts(200, 24, shift_spacing_A=2.0, shift_extent_A=5.0,
                               shift_sigma_A=3.0)
    table, exact = _table(q)
    prev, _ = _table(q, seed=1)  # the previous visit saw a slightly different posterior
    sampler = ImportanceSampler(1, ISSchedule.constant(0.2), ess_scale=2.0,
                                dense_fraction=1.0)  # test the sparse estimator itself
    sampler.update([0], None, _result(q, [prev]), 0)
    props = sampler.proposals([0], q, 1)
    ratios, fractions = [], []
    for seed in range(2000):
        rng = np.random.default_rng(seed)
        sub = _subset([draw_domain(props[d][0], 2.0, rng) for d in DOMAINS])
        ratios.append(np.exp(log_estimate(table, sub) - exact))
        fractions.append(sub.n_points / q.size)
    ratios = np.array(ratios)
    se = ratios.std(ddof=1) / np.sqrt(len(ratios))
    z = (ratios.mean() - 1.0) / se
    assert abs(z) < 3.0, (ratios.mean(), se, z)
    assert se < 0.01  # the test has power: the estimator is accurate to ~1%
    assert np.mean(fractions) < 0.5
    # the sampler's own sample() path draws from the same proposal
    subs = sampler.sample([0], q, 1, np.random.default_rng(123))
    assert subs[0].n_points < q.size and subs[0].has_importance_weights


def test_fraction_evaluated_is_recorded():
    q = Quadrature.from_counts(200, 24, shift_spacing_A=2.0, shift_extent_A=5.0)
    tables = [_table(q, seed=s)[0] for s in range(4)]
    sampler = ImportanceSampler(10, ISSchedule.constant(0.1), ess_scale=3.0, dense_fraction=1.0)
    ids = np.array([2, 5, 7, 9])
    sampler.update(ids[:3], None, _result(q, tables[:3]), 0)  # particle 9 is unseen
    subs = sampler.sample(ids, q, 1, np.random.default_rng(0))
    n = np.array([s.n_points for s in subs])
    assert n[3] == q.size and np.all(n[:3] < q.size)
    rec = sampler.history[-1]
    assert rec["fraction_evaluated"] == pytest.approx(np.mean(n / q.size))
    assert rec["speedup"] == pytest.approx(1 / rec["fraction_evaluated"])
    assert rec["n_points"] == n.sum() and rec["iteration"] == 1
    np.testing.assert_array_equal(sampler.seen(ids), [True, True, True, False])
    # a domain that is not importance-sampled is always enumerated
    no_shift = ImportanceSampler(10, ISSchedule.constant(0.1), ess_scale=3.0,
                                 sample_shifts=False, dense_fraction=1.0)
    no_shift.update(ids[:3], None, _result(q, tables[:3]), 0)
    for sub in no_shift.sample(ids[:3], q, 1, np.random.default_rng(0)):
        np.testing.assert_array_equal(sub.shifts, np.arange(q.n_shifts))
        np.testing.assert_array_equal(sub.log_is_shifts, 0.0)
        assert len(sub.directions) < q.n_directions


def test_state_is_small_and_independent_of_the_quadrature():
    sampler = ImportanceSampler(40000)
    assert sampler.bytes_per_particle == 2 + 3 * 4 + (128 + 32 + 64) * 8  # 1806 bytes
    big = Quadrature.for_band_limit(0.15, box_size=128, pixel_size_A=2.8)
    small = Quadrature.from_counts(30, 6)
    for q in (small, big):
        rng = np.random.default_rng(0)
        marg = [np.log(rng.dirichlet(np.full(n, 0.1), 2) + 1e-300)
                for n in (q.n_directions, q.n_inplane, q.n_shifts)]
        res = LikelihoodResult(np.zeros(2), *marg, np.zeros(2, int), np.zeros(2, int),
                               np.zeros(2, int), np.full(2, q.size), q)
        sampler.update([0, 1], None, res, 100)
        assert sampler.bytes_per_particle == 1806
    idx, p, rest = sampler.stored_distribution(0, "directions")
    assert len(idx) == 128 and p.sum() + rest == pytest.approx(1.0, abs=1e-5)


def test_carry_over_to_a_finer_grid():
    """A posterior recorded on a coarse grid gives a proposal peaked at the same pose on a finer
    grid (band-limit increase)."""
    coarse = Quadrature.for_band_limit(0.03, box_size=64, pixel_size_A=3.0, shift_extent_A=15)
    fine = Quadrature.for_band_limit(0.06, box_size=64, pixel_size_A=3.0, shift_extent_A=15)
    t = np.full((coarse.n_directions, coarse.n_inplane, coarse.n_shifts), -50.0)
    d0, i0, s0 = 40, 9, 6
    t[d0, i0, s0] = 0.0
    sampler = ImportanceSampler(1, ISSchedule.constant(0.05))
    sampler.update([0], None, _result(coarse, [t]), 0)
    props = sampler.proposals([0], fine, 1)
    d_best = fine.directions[props["directions"][0].argmax()]
    assert np.arccos(min(1.0, d_best @ coarse.directions[d0])) < coarse.direction_spacing_rad
    psi = fine.inplane_rad[props["inplane"][0].argmax()]
    assert abs(np.angle(np.exp(1j * (psi - coarse.inplane_rad[i0])))) < coarse.inplane_spacing_rad
    s_best = fine.shifts_A[props["shifts"][0].argmax()]
    assert np.linalg.norm(s_best - coarse.shifts_A[s0]) <= coarse.shift_spacing_A
    subs = sampler.sample([0], fine, 1, np.random.default_rng(0))
    assert subs[0].n_points < 0.05 * fine.size
    assert sampler.history[-1]["speedup"] > 20
    # with the chirality flip the mirror direction -d keeps probability too
    flip = ImportanceSampler(1, ISSchedule.constant(0.05, chirality_flip=True))
    flip.update([0], None, _result(coarse, [t]), 0)
    pd = flip.proposals([0], fine, 1)["directions"][0]
    mirror = np.argmax(-fine.directions @ coarse.directions[d0])
    assert pd[mirror] > 100 * (0.05 / fine.n_directions)


def test_end_to_end_with_the_likelihood(tiny_problem):
    """First visit exhaustive (= exact), then IS with few points: same MAP poses, unbiased
    estimate of the marginal likelihood, mean relative error of log p < 0.1% (paper, Fig. 6)."""
    # box 16 at 3 Å/px, 4 images, 150 x 12 rotations, shifts every 2 Å within 3 Å, noise 3
    model, quad, vol, ctf, images, true_r, true_s = tiny_problem(
        16, 4, seed=0, sigma=3.0, max_freq_invA=0.14, n_directions=150, n_inplane=12,
        shift_spacing_A=2.0, shift_extent_A=3.0, shift_sigma_A=3.0,
        ctf={"defocus_u_A": (1e4, 2e4), "defocus_v_A": 1.5e4, "defocus_angle_deg": 0.0,
             "phase_shift_deg": None, "bfactor_A2": None})
    lik = MarginalLikelihood(model, quad)
    batch = lik.prepare(images, ctf, 3.0, dtype=np.float64)
    vft = model.projector.volume_to_fourier(vol)
    exact = lik.evaluate(vft, batch)
    d_true, i_true = quad.split_pose_index(true_r)
    np.testing.assert_array_equal(exact.map_direction, d_true)

    ids = np.array([3, 0, 8, 5])
    # s_B = 10; the sparse estimator itself (no switch to the exact sum)
    sampler = ImportanceSampler(10, ISSchedule.constant(0.1), dense_fraction=1.0)
    first = sampler.sample(ids, quad, 0, np.random.default_rng(1))
    res1 = lik.evaluate(vft, batch, subsets=first)
    np.testing.assert_allclose(res1.log_likelihood, exact.log_likelihood, rtol=1e-13)
    sampler.update(ids, first, res1, 0)

    ratios, fractions = [], []
    for seed in range(60):
        subs = sampler.sample(ids, quad, 1, np.random.default_rng(100 + seed))
        res = lik.evaluate(vft, batch, subsets=subs)
        ratios.append(np.exp(res.log_likelihood - exact.log_likelihood))
        fractions.append(res.fraction_evaluated.mean())
        assert sampler.fraction_evaluated == pytest.approx(res.fraction_evaluated.mean())
        if seed == 0:
            np.testing.assert_array_equal(res.map_direction, d_true)
            np.testing.assert_array_equal(res.map_inplane, i_true)
            np.testing.assert_array_equal(res.map_shift, true_s)
    ratios = np.array(ratios)  # (seeds, images)
    assert np.mean(fractions) < 0.2
    mean = ratios.mean(axis=0)
    se = ratios.std(axis=0, ddof=1) / np.sqrt(len(ratios))
    assert np.all(np.abs(mean - 1.0) < 3.0 * se + 1e-12), (mean, se)
    rel_err = np.abs(np.log(ratios)) / np.abs(exact.log_likelihood)
    assert rel_err.mean() < 1e-3 and rel_err.max() < 5e-3, rel_err.max()


def test_state_dict_round_trip():
    grids = {0.03: Quadrature.for_band_limit(0.03, box_size=32, pixel_size_A=3.0),
             0.05: Quadrature.for_band_limit(0.05, box_size=32, pixel_size_A=3.0)}
    a = ImportanceSampler(6, ISSchedule.constant(0.1))
    for w, ids in ((0.03, [0, 1]), (0.05, [2, 3])):
        q = grids[w]
        t = np.random.default_rng(int(w * 100)).normal(0, 3, (q.n_directions, q.n_inplane,
                                                              q.n_shifts))
        a.update(ids, None, _result(q, [t, t + 1]), 0)
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = ImportanceSampler(6, ISSchedule.constant(0.1))
    b.load_state_dict(state, grids.__getitem__)
    pa = a.proposals(np.arange(6), grids[0.05], 5)
    pb = b.proposals(np.arange(6), grids[0.05], 5)
    for d in DOMAINS:
        np.testing.assert_array_equal(pa[d], pb[d])
    with pytest.raises(ValueError, match="particles"):
        ImportanceSampler(5).load_state_dict(state, grids.__getitem__)


def test_state_dict_after_a_restore_with_an_unused_grid():
    """A grid no particle refers to any more is not rebuilt on load; saving again must work and
    the next restore must give the same proposals (a checkpoint after --resume)."""
    grids = {0.03: Quadrature.for_band_limit(0.03, box_size=32, pixel_size_A=3.0),
             0.05: Quadrature.for_band_limit(0.05, box_size=32, pixel_size_A=3.0)}
    a = ImportanceSampler(4, ISSchedule.constant(0.1))
    for w in (0.03, 0.05):  # every particle moves on to the finer grid: 0.03 ends unused
        q = grids[w]
        t = np.random.default_rng(int(w * 100)).normal(0, 3, (q.n_directions, q.n_inplane,
                                                              q.n_shifts))
        a.update([0, 1, 2, 3], None, _result(q, [t, t + 1, t + 2, t - 1]), 0)
    b = ImportanceSampler(4, ISSchedule.constant(0.1))
    b.load_state_dict(a.state_dict(), grids.__getitem__)
    again = b.state_dict()  # failed before: the unused grid was None
    c = ImportanceSampler(4, ISSchedule.constant(0.1))
    c.load_state_dict(again, grids.__getitem__)
    pa = a.proposals(np.arange(4), grids[0.05], 5)
    pc = c.proposals(np.arange(4), grids[0.05], 5)
    for d in DOMAINS:
        np.testing.assert_array_equal(pa[d], pc[d])


def _tempered_result(q, tables, temperature):
    """A result whose marginals are the exact ones annealed ``p^(1/T)`` and renormalised."""
    res = _result(q, tables)
    marg = []
    for m in (res.log_marginal_directions, res.log_marginal_inplane, res.log_marginal_shifts):
        t = m / temperature
        marg.append(t - logsumexp(t, axis=1)[:, None])
    zeros = np.zeros(len(tables), np.int64)
    return LikelihoodResult(res.log_likelihood, *marg, zeros, zeros, zeros,
                            np.full(len(tables), q.size), q)


def test_records_are_annealed_when_proposed():
    """A record is the T = 1 posterior; the proposal anneals it at the visit's temperature,
    so it equals the proposal built from the posterior annealed by hand (no truncation)."""
    q = Quadrature.from_counts(60, 12, shift_spacing_A=2.0, shift_extent_A=3.0)
    tables = [_table(q, seed=s)[0] for s in range(3)]
    ids = np.array([0, 1, 2])
    for temperature in (1.0, 2.5, 7.0):
        hot = ImportanceSampler(3, ISSchedule.constant(0.2, temperature))
        hot.update(ids, None, _result(q, tables), 0)
        by_hand = ImportanceSampler(3, ISSchedule.constant(0.2, 1.0))
        by_hand.update(ids, None, _tempered_result(q, tables, temperature), 0)
        a, b = hot.proposals(ids, q, 5), by_hand.proposals(ids, q, 5)
        for d in a:
            np.testing.assert_allclose(a[d], b[d], rtol=1e-5, atol=1e-12)
    # the record itself does not depend on the temperature it was made at
    idx, p, rest = hot.stored_distribution(0, "directions")
    exact = np.exp(_result(q, tables).log_marginal_directions[0])
    np.testing.assert_allclose(p, exact[idx], rtol=1e-5)
    assert rest < 1e-6
    # a truncated record (8 of 60 directions, the rest uniform) flattens as T grows: its
    # proposal's ESS grows with T, and at T = infinity every point weighs alike before the
    # kernel, which leaves the ESS near |D| (kernel edge effects only)
    ess = []
    for temperature in (1.0, 4.0, 16.0, np.inf):
        small = ImportanceSampler(3, ISSchedule.constant(0.0, temperature), max_entries=(8, 4, 4))
        small.update(ids, None, _result(q, tables), 0)
        prop = small.proposals(ids, q, 0)["directions"]
        ess.append(1.0 / np.sum(prop**2, axis=1))
    ess = np.array(ess)
    assert np.all(np.diff(ess, axis=0) > 0), ess
    assert np.all(ess[-1] > 0.9 * q.n_directions), ess[-1]


def test_large_draws_become_the_exact_sum():
    """An image whose drawn subset exceeds ``dense_fraction`` of the grid gets every point
    (weights 1: the exact sum); smaller draws stay importance samples."""
    q = Quadrature.from_counts(200, 24, shift_spacing_A=2.0, shift_extent_A=5.0)
    tables = [_table(q, seed=s)[0] for s in range(4)]
    ids = np.arange(4)
    free = ImportanceSampler(4, ISSchedule.constant(0.1), ess_scale=3.0, dense_fraction=1.0)
    free.update(ids, None, _result(q, tables), 0)
    drawn = [s.n_points / q.size for s in free.sample(ids, q, 1, np.random.default_rng(0))]
    cut = float(np.median(drawn))
    switch = ImportanceSampler(4, ISSchedule.constant(0.1), ess_scale=3.0, dense_fraction=cut)
    switch.update(ids, None, _result(q, tables), 0)
    subs = switch.sample(ids, q, 1, np.random.default_rng(0))  # the same draws as `free`
    for f, sub in zip(drawn, subs, strict=True):
        if f > cut:
            assert sub.n_points == q.size and not sub.has_importance_weights
        else:
            assert sub.n_points / q.size == pytest.approx(f) and sub.has_importance_weights
    n_exact = sum(f > cut for f in drawn)
    assert 0 < n_exact < 4
    assert switch.history[-1]["fraction_exact"] == n_exact / 4
