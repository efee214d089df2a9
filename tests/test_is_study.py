"""cryonb.is_study: IS error curves, restricted exact sums, posterior recording and KL."""

import numpy as np
import pytest
from scipy.special import logsumexp

from cryonb.ctf import CTFParams
from cryonb.image_model import ImageModel
from cryonb.importance import ImportanceSampler, ISSchedule, log_estimate
from cryonb.is_study import (
    ISErrorCurve,
    PosteriorRecorder,
    cyclic_symmetry,
    is_error_curve,
    posterior_kl,
    record_posteriors,
    relative_error,
    restricted_subsets,
)
from cryonb.likelihood import MarginalLikelihood, reference_log_joint
from cryonb.quadrature import Quadrature
from cryonb.sagd import Evaluation


def _problem(noise=3.0, n_img=4, seed=0):
    rng = np.random.default_rng(seed)
    box = 16
    model = ImageModel(box, pixel_size_A=3.0, max_freq_invA=0.14)
    quad = Quadrature.from_counts(150, 12, shift_spacing_A=2.0, shift_extent_A=3.0,
                                  shift_sigma_A=3.0)
    vol = rng.standard_normal((box,) * 3)
    ctf = CTFParams(defocus_u_A=rng.uniform(1e4, 2e4, n_img), defocus_v_A=1.5e4,
                    defocus_angle_deg=0.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    true_r = rng.choice(quad.n_rotations, n_img, replace=False)
    true_s = rng.integers(0, quad.n_shifts, n_img)
    rots = quad.rotations()[true_r]
    images = model.forward(vol, rots, quad.shifts_A[true_s], ctf)
    images = images + rng.normal(0, noise, images.shape)
    lik = MarginalLikelihood(model, quad)
    batch = lik.prepare(images, ctf, noise, dtype=np.float64)
    vft = model.projector.volume_to_fourier(vol)
    return model, quad, lik, batch, vft, ctf, images, rots, quad.shifts_A[true_s]


def test_relative_error():
    np.testing.assert_allclose(relative_error([-99.0, -101.0], [-100.0, -100.0]), [0.01, 0.01])


def test_error_curve_is_exact_when_everything_is_enumerated_and_small_otherwise():
    _, quad, lik, batch, vft, *_ = _problem()
    ids = np.array([4, 1, 7, 2])
    sampler = ImportanceSampler(10, ISSchedule.constant(0.05), ess_scale=3.0)
    exact = record_posteriors(lik, vft, batch, sampler, ids)
    assert sampler.seen(ids).all()
    curve = is_error_curve(lik, vft, batch, sampler, ids, [2.0, 10.0, 1e6],
                           np.random.default_rng(0), exact=exact, n_trials=3)
    assert sampler.ess_scale == 3.0  # restored
    assert isinstance(curve, ISErrorCurve)
    assert curve.estimates.shape == (3, 3, 4) and curve.n_evaluated.shape == (3, 3, 4)
    assert curve.quadrature_size == quad.size
    # a huge s_B enumerates every domain: the exact sum, nothing evaluated again
    np.testing.assert_array_equal(curve.estimates[2], np.broadcast_to(exact.log_likelihood,
                                                                      (3, 4)))
    assert curve.relative_rmse[2] == 0.0 and curve.fraction_evaluated[2] == 1.0
    # fewer points at smaller s_B; below the paper's 0.1 % at s_B = 10
    assert curve.fraction_evaluated[0] < curve.fraction_evaluated[1] < 1.0
    assert curve.speedup[1] > 1.0
    assert 0 < curve.relative_rmse[1] < 1e-3
    np.testing.assert_allclose(curve.abs_rmse,
                               np.sqrt(np.mean((curve.estimates - exact.log_likelihood) ** 2,
                                               axis=(1, 2))))
    assert "s_B" in curve.table()
    # exact=None computes the exhaustive sum itself
    again = is_error_curve(lik, vft, batch, sampler, ids, [1e6], np.random.default_rng(0))
    np.testing.assert_allclose(again.exact, exact.log_likelihood, rtol=1e-12)


def test_error_curve_estimates_are_the_is_estimator():
    """The estimates equal Eq. (13) evaluated on the reference table for the same draws."""
    model, quad, lik, batch, vft, ctf, images, *_ = _problem(n_img=2)
    ids = np.array([0, 1])
    sampler = ImportanceSampler(2, ISSchedule.constant(0.05))
    record_posteriors(lik, vft, batch, sampler, ids)
    curve = is_error_curve(lik, vft, batch, sampler, ids, [1.0], np.random.default_rng(5))
    sampler.ess_scale = 1.0
    subsets = sampler.sample(ids, quad, 1, np.random.default_rng(5))  # the same draws
    table = reference_log_joint(model, vft, images, ctf, 3.0, quad)
    for b in range(2):
        np.testing.assert_allclose(curve.estimates[0, 0, b], log_estimate(table[b], subsets[b]),
                                   rtol=1e-9)
        assert curve.exact[b] == pytest.approx(logsumexp(table[b]), rel=1e-9)


def test_cyclic_symmetry():
    ops = cyclic_symmetry(7)
    assert ops.shape == (7, 3, 3)
    np.testing.assert_allclose(np.linalg.matrix_power(ops[1], 7), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(ops[:, :, 2], np.tile([0.0, 0.0, 1.0], (7, 1)), atol=1e-12)
    np.testing.assert_allclose(ops[0], np.eye(3), atol=1e-15)
    x = cyclic_symmetry(4, axis=(2.0, 0.0, 0.0))
    np.testing.assert_allclose(x[1] @ [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], atol=1e-12)


def test_restricted_subsets_cover_the_true_pose_and_bound_the_sum():
    _, quad, lik, batch, vft, _, _, rots, shifts = _problem(noise=0.3)
    subs = restricted_subsets(quad, rots, shifts, cap_spacings=2.0, shift_radius_A=2.5)
    exact = lik.evaluate(vft, batch)
    part = lik.evaluate(vft, batch, subsets=subs)
    for b, s in enumerate(subs):
        assert exact.map_direction[b] in s.directions
        assert s.inplane.size == quad.n_inplane
        assert np.all(np.linalg.norm(quad.shifts_A[s.shifts] - shifts[b], axis=1) <= 2.5 + 1e-9)
        assert not s.has_importance_weights
        ang = np.arccos(np.clip(quad.directions[s.directions] @ rots[b][:, 2], -1, 1))
        assert ang.max() <= 2.0 * quad.direction_spacing_rad + 1e-9
        assert s.n_points < quad.size
    # a part of the positive terms, and all of the mass when the posterior is sharp
    assert np.all(part.log_likelihood <= exact.log_likelihood + 1e-9)
    np.testing.assert_allclose(part.log_likelihood, exact.log_likelihood, rtol=1e-8)
    # symmetry mates add caps around the rotated directions
    ops = cyclic_symmetry(3)
    sym = restricted_subsets(quad, rots[:1], shifts[:1], symmetry=ops, cap_spacings=1.0)[0]
    for op in ops:
        nearest = int(np.argmax(quad.directions @ (op @ rots[0])[:, 2]))
        assert nearest in sym.directions


class _FakeObjective:
    """Returns a fixed posterior per image; counts calls."""

    pixel_size_A = 2.5

    def __init__(self, quad):
        self.quad = quad
        self.last_result = None
        self.band = None

    def set_band_limit(self, w):
        self.band = w

    def evaluate(self, volume, indices, *, gradient, record, iteration=0, reuse=None):
        from cryonb.likelihood import LikelihoodResult

        idx = np.asarray(indices)
        n, q = len(idx), self.quad
        logd = np.log(np.full((n, q.n_directions), 1.0 / q.n_directions))
        logd[:, 0] += iteration  # changes with the iteration
        logd -= logsumexp(logd, axis=1, keepdims=True)
        zero = np.zeros(n, np.int64)
        self.last_result = LikelihoodResult(
            np.zeros(n), logd, np.full((n, q.n_inplane), -np.log(q.n_inplane)),
            np.full((n, q.n_shifts), -np.log(q.n_shifts)), zero, zero, zero,
            np.full(n, q.size), q)
        return Evaluation(np.zeros(n), None)

    def state_dict(self):
        return {"x": 1}

    def load_state_dict(self, state):
        self.loaded = state


def test_posterior_recorder_and_kl():
    quad = Quadrature.from_counts(40, 6, shift_spacing_A=2.0, shift_extent_A=2.0)
    rec = PosteriorRecorder(_FakeObjective(quad))
    assert rec.pixel_size_A == 2.5  # delegated
    rec.set_band_limit(0.1)
    assert rec.objective.band == 0.1
    assert rec.state_dict() == {"x": 1}
    rec.evaluate(None, [3, 5], gradient=False, record=True, iteration=0)
    rec.evaluate(None, [3], gradient=False, record=False, iteration=9)  # line search: ignored
    rec.evaluate(None, [5], gradient=False, record=True, iteration=2, reuse=object())
    first = rec.snapshot()
    assert sorted(first) == [3, 5]
    np.testing.assert_allclose(first[3][1], np.full(40, 1 / 40), rtol=1e-6)
    rec.evaluate(None, [3, 5, 7], gradient=False, record=True, iteration=3)
    second = rec.snapshot([3, 5, 11])
    assert sorted(second) == [3, 5]
    ids, kl = posterior_kl(first, first)
    np.testing.assert_array_equal(ids, [3, 5])
    np.testing.assert_allclose(kl, 0.0, atol=1e-10)
    # the fake posterior at iteration t: direction 0 has weight e^t, the 39 others 1, over
    # Z_t = e^t + 39.  Both particles were recorded at t = 0, then 3: neither the line
    # search's t = 9 (record=False) nor t = 2 (reuse=) was recorded.
    # KL(p_t || p_s) = p_t(0) (t - s) + log(Z_s / Z_t).  float32 storage: ~1e-7 relative per
    # probability, 1e-5 allowed on the KL
    def posterior(t):
        p = np.ones(40)
        p[0] = np.exp(t)
        return p / p.sum()

    def kl_exact(t, s):
        z_t, z_s = np.exp(t) + 39, np.exp(s) + 39
        return np.exp(t) / z_t * (t - s) + np.log(z_s / z_t)

    for snap, pid, t in ((first, 5, 0), (second, 3, 3), (second, 5, 3)):
        np.testing.assert_allclose(snap[pid][1], posterior(t), rtol=1e-6)
    ids, raw = posterior_kl(second, first, smooth=False)
    np.testing.assert_array_equal(ids, [3, 5])
    np.testing.assert_allclose(raw, [kl_exact(3, 0)] * 2, rtol=1e-5)
    # smoothed: both posteriors go through the same Markov kernel (one grid), so by the
    # data-processing inequality the divergence can only shrink; it stays positive
    ids, kl = posterior_kl(second, first)
    assert np.all(kl > 0) and np.all(kl < raw), (kl, raw)
