"""Marginal likelihood (Eq. 4): brute force, reference agreement, gradient, posterior, priors."""

import numpy as np
import pytest
from scipy.special import logsumexp

from cryonb.fourier import fft2_centered, ifft2_centered
from cryonb.image_model import ImageModel
from cryonb.likelihood import (
    MarginalLikelihood,
    PoseSubset,
    estimate_noise_sigma,
    hermitian_half_plane,
    negative_log_posterior,
    reference_log_joint,
)
from cryonb.priors import ExponentialPrior, GaussianPrior, NoPrior, Prior


@pytest.fixture
def problem(tiny_problem):
    """``problem(box=14, n_img=3, sigma=3.0, seed=0, ctf=True, w=0.13)``: conftest's tiny
    problem (random volume, images at grid poses, noise sigma per pixel, band limit w 1/Å),
    with random CTFs without a phase shift; unpacks as (model, quad, vol, ctf, images, true_r,
    true_s)."""
    def make(box=14, n_img=3, sigma=3.0, seed=0, ctf=True, w=0.13):
        return tiny_problem(box, n_img, sigma=sigma, seed=seed, max_freq_invA=w,
                            ctf={"phase_shift_deg": None} if ctf else None)
    return make


@pytest.mark.parametrize("box", [12, 13])
def test_hermitian_half_plane(box):
    model = ImageModel(box, pixel_size_A=2.0)
    coords = model.coords_px
    idx, w = hermitian_half_plane(coords, box)
    assert w.sum() == len(coords)  # every disc point counted exactly once
    assert np.count_nonzero(w == 1) == 1 and np.all(coords[idx][w == 1] == 0)
    half = {tuple(k) for k in coords[idx].astype(int).tolist()}
    for k in coords.astype(int).tolist():  # exactly one of k, -k in the half plane
        assert (tuple(k) in half) != (tuple(-np.array(k)) in half) or k == [0, 0]
    # full grid of an even box: the Nyquist row/column points are self-conjugate or paired
    k = np.arange(box) - box // 2
    ky, kx = np.meshgrid(k, k, indexing="ij")
    full = np.stack([kx.ravel(), ky.ravel()], -1)
    _, w_f = hermitian_half_plane(full, box)
    assert w_f.sum() == box * box
    assert np.count_nonzero(w_f == 1) == (4 if box % 2 == 0 else 1)


@pytest.mark.parametrize("box", [14, 15])
def test_marginal_likelihood_equals_brute_force_through_image_model(box, problem):
    """log p(I|V) = log sum_pose w exp(-||I_bl - forward(V, pose)||^2 / 2s^2 - M/2 log 2pi s^2)."""
    model, quad, vol, ctf, images, _, _ = problem(box)
    sigma = 3.0
    spec = fft2_centered(images)
    spec[:, ~model.mask] = 0
    images_bl = ifft2_centered(spec).real
    m = int(model.mask.sum())
    lwd, lwi, lws = quad.log_weights()
    rots = quad.rotations()
    brute = np.empty((len(images), quad.n_rotations, quad.n_shifts))
    for b in range(len(images)):
        for r in range(quad.n_rotations):
            d, i = quad.split_pose_index(r)
            pred = model.forward(vol, np.repeat(rots[r][None], quad.n_shifts, 0), quad.shifts_A,
                                 ctf.subset([b] * quad.n_shifts))
            err = ((images_bl[b][None] - pred) ** 2).sum(axis=(1, 2))
            brute[b, r] = (-err / (2 * sigma**2) - 0.5 * m * np.log(2 * np.pi * sigma**2)
                           + lwd[d] + lwi[i] + lws)
    expected = logsumexp(brute, axis=(1, 2))
    lik = MarginalLikelihood(model, quad)
    res = lik.evaluate(model.projector.volume_to_fourier(vol),
                       lik.prepare(images, ctf, sigma, dtype=np.float64))
    np.testing.assert_allclose(res.log_likelihood, expected, rtol=1e-10, atol=0)


PATHS = {"gemm": {"small_group_size": 0}, "gemm-blocks": {"small_group_size": 0,
                                                         "block_bytes": 3000},
         "gemm-groups": {"small_group_size": 0, "block_bytes": 3000, "cache_bytes": 0},
         "numpy": {"small_group_size": 0, "use_numba": False},
         "kernel": {}}


@pytest.mark.parametrize("ctf", [True, False])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_fast_path_matches_numpy_reference(ctf, path, problem):
    """GEMM path (half plane, norm expansion, blocks, image groups) and the numba path for
    small groups = direct full-disc residuals."""
    model, quad, vol, c, images, _, _ = problem(13, n_img=4, ctf=ctf, seed=1)
    vft = model.projector.volume_to_fourier(vol)
    table = reference_log_joint(model, vft, images, c, 3.0, quad)        # (B, Nd, Ni, Ns)
    total = logsumexp(table, axis=(1, 2, 3))
    lik = MarginalLikelihood(model, quad, **PATHS[path])
    res = lik.evaluate(vft, images, c, 3.0)  # raw images: prepared on the fly (float64 volume)
    np.testing.assert_allclose(res.log_likelihood, total, rtol=1e-12)
    post = table - total[:, None, None, None]
    np.testing.assert_allclose(res.log_marginal_directions, logsumexp(post, axis=(2, 3)),
                               atol=1e-9)
    np.testing.assert_allclose(res.log_marginal_inplane, logsumexp(post, axis=(1, 3)), atol=1e-9)
    np.testing.assert_allclose(res.log_marginal_shifts, logsumexp(post, axis=(1, 2)), atol=1e-9)
    flat = table.reshape(len(table), -1).argmax(axis=1)
    d, i, s = np.unravel_index(flat, table.shape[1:])
    np.testing.assert_array_equal(res.map_direction, d)
    np.testing.assert_array_equal(res.map_inplane, i)
    np.testing.assert_array_equal(res.map_shift, s)
    np.testing.assert_array_equal(res.n_evaluated, quad.size)
    np.testing.assert_allclose(res.fraction_evaluated, 1.0)
    np.testing.assert_allclose(res.posterior_directions.sum(axis=1), 1.0)


def test_input_forms_agree(problem):
    """Real images, full complex spectra and disc points give the same PreparedImages."""
    model, quad, _, c, images, _, _ = problem(12, n_img=2)
    lik = MarginalLikelihood(model, quad)
    spectra = fft2_centered(images)
    a = lik.prepare(images, c, 3.0, dtype=np.float64)
    b = lik.prepare(spectra, c, 3.0, dtype=np.float64)
    p = lik.prepare(spectra[:, model.mask], c, 3.0, dtype=np.float64)
    for other in (b, p):
        np.testing.assert_allclose(other.data, a.data, atol=1e-12)
        np.testing.assert_allclose(other.log_norm, a.log_norm, rtol=1e-14)
    with pytest.raises(ValueError, match="noise_sigma"):
        lik.prepare(spectra, c)


def test_float32_path_close_to_float64(problem):
    model, quad, vol, c, images, _, _ = problem(14, n_img=3, seed=2)
    lik = MarginalLikelihood(model, quad)
    r64 = lik.evaluate(model.projector.volume_to_fourier(vol),
                       lik.prepare(images, c, 3.0, dtype=np.float64), gradient=True)
    r32 = lik.evaluate(model.projector.volume_to_fourier(vol.astype(np.float32)),
                       lik.prepare(images, c, 3.0), gradient=True)
    assert r32.gradient.dtype == np.float32
    np.testing.assert_allclose(r32.log_likelihood, r64.log_likelihood, rtol=1e-6)
    err = np.abs(r32.gradient - r64.gradient).max() / np.abs(r64.gradient).max()
    assert err < 1e-4


@pytest.mark.parametrize(("with_subsets", "path"), [(False, "gemm"), (True, "gemm"),
                                                    (True, "kernel")])
def test_gradient_matches_finite_differences(with_subsets, path, problem):
    """d/dV sum_b log p(I_b | V) by central differences in float64, relative error < 1e-5."""
    model, quad, vol, c, images, _, _ = problem(12, n_img=3, sigma=4.0, seed=3)
    if path == "gemm":  # small blocks and no score cache: the gradient pass recomputes
        lik = MarginalLikelihood(model, quad, block_bytes=4000, cache_bytes=0,
                                 small_group_size=0)
    else:
        lik = MarginalLikelihood(model, quad)
    batch = lik.prepare(images, c, 4.0, dtype=np.float64)
    subsets = None
    if with_subsets:
        rng = np.random.default_rng(0)
        subsets = [PoseSubset(np.sort(rng.choice(8, 5, replace=False)), [0, 2, 3],
                              np.arange(quad.n_shifts), rng.normal(0, 0.5, 5),
                              rng.normal(0, 0.5, 3), rng.normal(0, 0.5, quad.n_shifts))
                   for _ in range(3)]

    def f(v):
        return lik.evaluate(model.projector.volume_to_fourier(v), batch,
                            subsets=subsets).log_likelihood.sum()

    grad = lik.evaluate(model.projector.volume_to_fourier(vol), batch, subsets=subsets,
                        gradient=True).gradient
    assert grad.shape == vol.shape and grad.dtype == np.float64
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(3):
        u = rng.standard_normal(vol.shape)
        h = 1e-4
        fd = (f(vol + h * u) - f(vol - h * u)) / (2 * h)
        errors.append(abs(fd - np.vdot(grad, u)) / abs(fd))
    for flat in rng.choice(vol.size, 3, replace=False):  # single voxels
        e = np.zeros(vol.size)
        e[flat] = 1.0
        e = e.reshape(vol.shape)
        h = 1e-4
        fd = (f(vol + h * e) - f(vol - h * e)) / (2 * h)
        errors.append(abs(fd - grad.ravel()[flat]) / max(abs(fd), 1e-3 * np.abs(grad).max()))
    assert max(errors) < 1e-5, errors


GRADIENT_MODES = {"sparse": {"cache_bytes": 0},  # the posterior terms kept between passes
                  "recompute": {"cache_bytes": 0, "sparse_bytes": 0},  # scores recomputed
                  "sparse-pruned": {"cache_bytes": 0, "sparse_bytes": 4000},
                  "sparse-numpy": {"cache_bytes": 0, "use_numba": False},
                  "recompute-numpy": {"cache_bytes": 0, "sparse_bytes": 0, "use_numba": False}}


@pytest.mark.parametrize("sigma", [0.05, 4.0])
@pytest.mark.parametrize("mode", sorted(GRADIENT_MODES))
def test_gradient_modes_agree(mode, sigma, problem):
    """The gradient pass without the score cache (from the kept posterior terms, or with the
    scores recomputed) equals the pass over all cached scores; with nearly noiseless images
    (sigma 0.05) most rotations have a posterior that is exactly 0 in float64 for every image
    and are skipped, and the result still matches central differences."""
    model, quad, vol, c, images, _, _ = problem(12, n_img=3, sigma=sigma, seed=3)
    lik = MarginalLikelihood(model, quad, block_bytes=4000, small_group_size=0,
                             **GRADIENT_MODES[mode])
    every = MarginalLikelihood(model, quad, small_group_size=0)
    batch = lik.prepare(images, c, sigma, dtype=np.float64)
    vft = model.projector.volume_to_fourier(vol)
    res = lik.evaluate(vft, batch, gradient=True)
    ref = every.evaluate(vft, batch, gradient=True)
    np.testing.assert_array_equal(ref.n_gradient, ref.n_evaluated)
    if sigma < 1:
        assert res.n_gradient.max() <= ref.n_evaluated.min() // 4     # most terms skipped
    np.testing.assert_allclose(res.log_likelihood, ref.log_likelihood, rtol=1e-10)
    np.testing.assert_allclose(res.gradient, ref.gradient, rtol=0,
                               atol=1e-10 * np.abs(ref.gradient).max())
    if sigma > 1:
        return  # finite differences at sigma 4: test_gradient_matches_finite_differences
    u = np.random.default_rng(1).standard_normal(vol.shape)
    h = 1e-5

    def f(v):
        return lik.evaluate(model.projector.volume_to_fourier(v), batch).log_likelihood.sum()

    fd = (f(vol + h * u) - f(vol - h * u)) / (2 * h)
    assert abs(fd - np.vdot(res.gradient, u)) / abs(fd) < 1e-5


def test_true_pose_has_highest_posterior_on_noiseless_images(problem):
    model, quad, vol, c, images, true_r, true_s = problem(16, n_img=5, sigma=0.0, seed=4,
                                                         w=0.15)
    lik = MarginalLikelihood(model, quad)
    res = lik.evaluate(model.projector.volume_to_fourier(vol.astype(np.float32)),
                       lik.prepare(images, c, noise_sigma=1.0))
    d, i = quad.split_pose_index(true_r)
    np.testing.assert_array_equal(res.map_direction, d)
    np.testing.assert_array_equal(res.map_inplane, i)
    np.testing.assert_array_equal(res.map_shift, true_s)
    np.testing.assert_array_equal(res.log_marginal_directions.argmax(axis=1), d)
    np.testing.assert_array_equal(res.log_marginal_inplane.argmax(axis=1), i)
    np.testing.assert_array_equal(res.log_marginal_shifts.argmax(axis=1), true_s)
    np.testing.assert_allclose(res.map_rotations, quad.rotations()[true_r], atol=1e-12)
    np.testing.assert_allclose(res.map_shifts_A, quad.shifts_A[true_s])
    assert np.all(res.posterior_directions.max(axis=1) > 0.99)
    assert np.all(res.ess_directions < 1.02)


def test_subsets_give_the_importance_weighted_sum(problem):
    """Per-image subsets with log weights: log sum over the subset of exp(table + log a)."""
    model, quad, vol, c, images, _, _ = problem(12, n_img=3, seed=5)
    vft = model.projector.volume_to_fourier(vol)
    table = reference_log_joint(model, vft, images, c, 3.0, quad)
    rng = np.random.default_rng(2)
    subsets = [PoseSubset.full(quad)]
    for _ in range(2):
        d = np.sort(rng.choice(quad.n_directions, 3, replace=False))
        i = np.sort(rng.choice(quad.n_inplane, 2, replace=False))
        s = np.sort(rng.choice(quad.n_shifts, 4, replace=False))
        subsets.append(PoseSubset(d, i, s, rng.normal(size=3), rng.normal(size=2),
                                  rng.normal(size=4)))
    lik = MarginalLikelihood(model, quad)
    batch = lik.prepare(images, c, 3.0, dtype=np.float64)
    for small_group_size in (2**18, 0):  # numba kernel path and GEMM path
        lik = MarginalLikelihood(model, quad, small_group_size=small_group_size)
        _check_subsets(lik.evaluate(vft, batch, subsets=subsets), subsets, table, quad)
    with pytest.raises(ValueError, match="subsets"):
        lik.evaluate(vft, batch, subsets=subsets[:2])
    with pytest.raises(ValueError, match="empty"):
        PoseSubset([], [0], [0], [], [0.0], [0.0])
    bad = PoseSubset([99], [0], [0], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="out of range"):
        lik.evaluate(vft, batch, subsets=[bad] * 3)


def _check_subsets(res, subsets, table, quad):
    for b, sub in enumerate(subsets):
        t = table[b][np.ix_(sub.directions, sub.inplane, sub.shifts)]
        t_is = (t + sub.log_is_directions[:, None, None] + sub.log_is_inplane[None, :, None]
                + sub.log_is_shifts[None, None, :])
        assert res.log_likelihood[b] == pytest.approx(logsumexp(t_is), rel=1e-12)
        assert res.n_evaluated[b] == sub.n_points
        # MAP excludes the importance weights
        dd, ii, ss = np.unravel_index(t.argmax(), t.shape)
        assert (res.map_direction[b], res.map_inplane[b], res.map_shift[b]) == (
            sub.directions[dd], sub.inplane[ii], sub.shifts[ss])
        outside = np.setdiff1d(np.arange(quad.n_directions), sub.directions)
        assert np.all(np.isneginf(res.log_marginal_directions[b, outside]))
        assert logsumexp(res.log_marginal_shifts[b]) == pytest.approx(0.0, abs=1e-12)


def test_estimate_noise_sigma():
    rng = np.random.default_rng(3)
    imgs = rng.normal(5.0, 2.5, (20, 32, 32))
    imgs[:, 8:24, 8:24] += 100.0  # a "particle" in the centre is ignored
    assert estimate_noise_sigma(imgs) == pytest.approx(2.5, rel=0.03)
    assert estimate_noise_sigma(imgs, method="mad") == pytest.approx(2.5, rel=0.05)
    assert estimate_noise_sigma(imgs, radius_px=12) == pytest.approx(2.5, rel=0.03)


# ---------------------------------------------------------------------------------- priors
@pytest.mark.parametrize("prior", [NoPrior(), GaussianPrior(2.0, mean=0.5), ExponentialPrior(0.9)])
def test_prior_gradients_match_finite_differences(prior):
    assert isinstance(prior, Prior)
    rng = np.random.default_rng(4)
    v = np.abs(rng.normal(1.0, 1.0, (6, 6, 6)))
    g = prior.grad(v)
    assert g.shape == v.shape
    u = rng.standard_normal(v.shape)
    h = 1e-5
    fd = (prior.log_prob(v + h * u) - prior.log_prob(v - h * u)) / (2 * h)
    assert fd == pytest.approx(np.vdot(g, u), rel=1e-7, abs=1e-9)


def test_prior_values():
    v = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    assert NoPrior().log_prob(v) == 0.0
    assert ExponentialPrior(0.5).log_prob(v) == pytest.approx(4 * np.log(0.5) - 0.5 * 6)
    g = GaussianPrior(1.0)
    assert g.log_prob(v) == pytest.approx(-14 / 2 - 2 * np.log(2 * np.pi))
    neg = v - 1.0
    assert ExponentialPrior(0.5).log_prob(neg) == pytest.approx(4 * np.log(0.5) - 0.5 * 2)
    assert ExponentialPrior(0.5, strict=True).log_prob(neg) == -np.inf
    np.testing.assert_array_equal(ExponentialPrior(0.5).grad(neg), -0.5)
    with pytest.raises(ValueError):
        ExponentialPrior(0.0)


def test_negative_log_posterior_value_and_gradient(problem):
    model, quad, vol, c, images, _, _ = problem(12, n_img=2, seed=6)
    vol = np.abs(vol)
    lik = MarginalLikelihood(model, quad)
    batch = lik.prepare(images, c, 3.0, dtype=np.float64)
    prior = ExponentialPrior(0.7)
    value, grad, res = negative_log_posterior(lik, vol, batch, prior, prior_weight=0.25)
    assert value == pytest.approx(-0.25 * prior.log_prob(vol) - res.log_likelihood.sum())
    u = np.random.default_rng(0).standard_normal(vol.shape)
    h = 1e-4
    fp = negative_log_posterior(lik, vol + h * u, batch, prior, prior_weight=0.25)[0]
    fm = negative_log_posterior(lik, vol - h * u, batch, prior, prior_weight=0.25)[0]
    assert (fp - fm) / (2 * h) == pytest.approx(np.vdot(grad, u), rel=1e-6)


@pytest.mark.parametrize("with_subsets", [False, True])
def test_evaluate_reports_phase_timings(with_subsets, problem):
    """``LikelihoodResult.timings``: wall seconds of the five phases, summing to about the
    call's wall time (the names are read by the objective)."""
    import time

    model, quad, vol, ctf, images, _, _ = problem()
    lik = MarginalLikelihood(model, quad)
    prep = lik.prepare(images, ctf, 3.0)
    subsets = None
    if with_subsets:
        sub = PoseSubset(np.arange(2), np.arange(quad.n_inplane), np.arange(quad.n_shifts),
                         np.zeros(2), np.zeros(quad.n_inplane), np.zeros(quad.n_shifts))
        subsets = [sub] * len(images)
    vft = lik.volume_to_fourier(vol)
    t0 = time.perf_counter()
    res = lik.evaluate(vft, prep, subsets=subsets, gradient=True)
    wall = time.perf_counter() - t0
    assert list(res.timings) == ["slicing_s", "scores_s", "sweeps_s", "gradient_s", "other_s"]
    assert all(v >= 0 for v in res.timings.values())
    assert res.timings["gradient_s"] > 0 and res.timings["scores_s"] > 0
    assert sum(res.timings.values()) <= wall


def test_drop_negligible_bounds_the_dropped_mass():
    """Terms below eps / n per image (n: the image's terms) are zeroed: at most eps of an
    image's posterior mass goes, every larger term stays as it was, and exactly the rotation
    rows left with a term are live."""
    from cryonb.likelihood.host import _drop_negligible

    rng = np.random.default_rng(0)
    n_r, n_img, n_s = np.array([7, 3, 5]), np.array([1, 2, 1]), np.array([4, 4, 6])
    n_c = n_img * n_s
    blocks = []
    for g in range(3):  # a peaked posterior per image: log p spread over ~60 nats
        lp = rng.normal(0.0, 12.0, (n_r[g], n_img[g], n_s[g]))
        lp -= np.log(np.exp(lp).sum(axis=(0, 2), keepdims=True))
        blocks.append(np.exp(lp).astype(np.float32))
    p = np.concatenate([b.ravel() for b in blocks])
    before = p.copy()
    rot_ptr = np.concatenate([[0], np.cumsum(n_r)])
    col_ptr = np.concatenate([[0], np.cumsum(n_c)])
    eps = float(np.finfo(np.float32).eps)
    live = _drop_negligible(p, rot_ptr, col_ptr, n_s, eps)
    off = 0
    for g, b in enumerate(blocks):
        after = p[off: off + b.size].reshape(b.shape)
        tau = eps / (n_r[g] * n_s[g])
        dropped = b - after
        assert np.all(dropped.sum(axis=(0, 2)) <= eps)                    # per image
        np.testing.assert_array_equal(after[b >= tau], b[b >= tau])
        assert np.all(after[b < tau] == 0)
        rows = live[rot_ptr[g]: rot_ptr[g + 1]]
        np.testing.assert_array_equal(rows, (b >= tau).reshape(n_r[g], -1).any(axis=1))
        off += b.size
    assert (before != p).any() and not live.all()  # the test has something to drop


@pytest.mark.parametrize("small_group_size", [None, 0])  # small-group kernels, dense pass
def test_float32_importance_sampled_gradient_close_to_float64(small_group_size, problem):
    """With peaked posteriors most sampled rotations carry less than eps / n of an image's
    mass and are not back-projected; the float32 gradient stays within 1e-4 of float64's."""
    model, quad, vol, c, images, _, _ = problem(14, n_img=3, sigma=0.5, seed=2)
    lik = (MarginalLikelihood(model, quad) if small_group_size is None
           else MarginalLikelihood(model, quad, small_group_size=0, cache_bytes=0))
    rng = np.random.default_rng(0)
    subsets = [PoseSubset(np.sort(rng.choice(quad.n_directions, quad.n_directions // 2,
                                             replace=False)),
                          np.arange(quad.n_inplane), np.arange(quad.n_shifts),
                          np.zeros(quad.n_directions // 2), np.zeros(quad.n_inplane),
                          np.zeros(quad.n_shifts)) for _ in range(3)]
    r64 = lik.evaluate(model.projector.volume_to_fourier(vol),
                       lik.prepare(images, c, 0.5, dtype=np.float64), subsets=subsets,
                       gradient=True)
    r32 = lik.evaluate(model.projector.volume_to_fourier(vol.astype(np.float32)),
                       lik.prepare(images, c, 0.5), subsets=subsets, gradient=True)
    assert np.all(r32.n_gradient < r32.n_evaluated // 2)  # most terms dropped
    np.testing.assert_allclose(r32.log_likelihood, r64.log_likelihood, rtol=1e-5)
    err = np.abs(r32.gradient - r64.gradient).max() / np.abs(r64.gradient).max()
    assert err < 1e-4
