"""numba sweeps over blocks of pose scores against their NumPy twins (cryonb.likelihood)."""

import numpy as np
import pytest

from cryonb.backend import get_backend
from cryonb.likelihood import _EXP_LO, _complete_scores, _exp_sums, _posterior


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_sweeps_match_numpy(dtype):
    rng = np.random.default_rng(0)
    bk = get_backend("numpy")
    n_c, n_img, n_s = 37, 3, 29
    lo = _EXP_LO[np.dtype(dtype).char]
    cross = rng.uniform(3 * lo, 50, (n_c, n_img * n_s)).astype(dtype)
    args = (n_s, rng.normal(size=n_c).astype(dtype), rng.uniform(0, 20, (n_c, n_img)).astype(dtype),
            rng.normal(size=n_s).astype(dtype), rng.normal(size=n_c).astype(dtype),
            rng.normal(size=n_s).astype(dtype))
    a, b = cross.copy(), cross.copy()
    stats_k = _complete_scores(bk, a, *args, kernels=True)
    stats_n = _complete_scores(bk, b, *args, kernels=False)
    np.testing.assert_array_equal(a, b)           # same float operations in the same order
    for x, y in zip(stats_k, stats_n, strict=True):
        np.testing.assert_array_equal(x, y)
    ref = a.reshape(n_c, n_img, n_s).max(axis=(0, 2)).astype(dtype)
    # the exponent is formed in the working dtype, then exponentiated
    e64 = np.exp((a.reshape(n_c, n_img, n_s) - ref[None, :, None]).astype(np.float64))
    rows, cols = _exp_sums(bk, a, n_s, ref, lo, kernels=True)
    tol = 2e-7 if dtype == np.float32 else 1e-14
    atol = n_s * np.finfo(dtype).tiny  # sums of sub-normal terms have fewer digits
    np.testing.assert_allclose(rows, e64.sum(axis=2), rtol=tol, atol=atol)
    np.testing.assert_allclose(cols, e64.sum(axis=0), rtol=tol, atol=atol)
    log_l = (ref + 3.0).astype(dtype)
    p = a.copy()
    pr = _posterior(bk, p, n_s, log_l, lo, kernels=True)
    d = (a.reshape(n_c, n_img, n_s) - log_l[None, :, None]).astype(np.float64)
    truth = np.where(d > lo, np.exp(d), 0.0)
    # float32: within 2 ulp (1.2e-7 relative) where normal; exact zeros where exp underflows
    normal = truth > np.finfo(dtype).tiny
    np.testing.assert_allclose(p.reshape(truth.shape)[normal], truth[normal], rtol=tol)
    assert np.all(p.reshape(truth.shape)[truth == 0] == 0)
    np.testing.assert_allclose(pr, truth.sum(axis=2), rtol=2 * tol, atol=atol)
    assert np.any(truth == 0) and np.any(normal & (d < lo / 2))  # both regimes exercised


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("has_is", [False, True])
def test_fused_value_sweep_matches_unfused_and_brute_force(dtype, has_is, kernels):
    """One sweep (complete + maxima + exponential sums, exponentials written in place) gives
    the unfused passes' maxima exactly and their sums to rounding; the posterior from the
    written exponentials matches a float64 brute force."""
    from cryonb.likelihood.scores import _posterior_from_exps, _value_sweep

    rng = np.random.default_rng(1)
    bk = get_backend("numpy")
    n_c, n_img, n_s = 53, 4, 29
    lo = _EXP_LO[np.dtype(dtype).char]
    cross = rng.uniform(3 * lo, 50, (n_c, n_img * n_s)).astype(dtype)
    cross[5, n_s:2 * n_s] = -np.inf  # a row of one image with no finite score
    lis_r = rng.normal(size=n_c).astype(dtype) if has_is else np.zeros(n_c, dtype)
    lis_s = rng.normal(size=n_s).astype(dtype) if has_is else np.zeros(n_s, dtype)
    args = (n_s, rng.normal(size=n_c).astype(dtype), rng.uniform(0, 20, (n_c, n_img)).astype(dtype),
            rng.normal(size=n_s).astype(dtype), lis_r, lis_s)
    scores = cross.copy()
    stats_u = _complete_scores(bk, scores, *args, kernels=True)
    v = scores.reshape(n_c, n_img, n_s).astype(np.float64)
    cm = v.max(axis=(0, 2))
    with np.errstate(invalid="ignore"):
        e64 = np.where(np.isfinite(v), np.exp(v - cm[None, :, None]), 0.0)
    tol = 2e-7 if dtype == np.float32 else 1e-13
    atol = n_s * np.finfo(dtype).tiny
    for mode in (0, 1, 2):
        a = cross.copy()
        stats, (rows, cols), row_info = _value_sweep(bk, a, *args, lo, mode, kernels)
        for x, y in zip(stats, stats_u, strict=True):
            np.testing.assert_array_equal(x, y)
        # the exponent is formed in the working dtype relative to each row's reference, a
        # valid one: at least the row's maximum, at most the block's
        ref = np.asarray(row_info[1])
        fin = np.isfinite(stats[0])
        assert np.all(ref[fin] >= stats[0][fin]) and np.all(ref <= cm[None, :])
        with np.errstate(invalid="ignore"):
            d = (scores.reshape(v.shape) - ref[:, :, None]).astype(np.float64)
            e_ref = np.where(d > lo, np.exp(d), 0.0) * np.exp(ref - cm)[:, :, None]
        np.testing.assert_allclose(rows, e_ref.sum(axis=2), rtol=tol, atol=atol)
        np.testing.assert_allclose(cols, e_ref.sum(axis=0), rtol=tol, atol=atol)
        # against the float64 exponentials: within the rounding of the exponent
        np.testing.assert_allclose(rows, e64.sum(axis=2), rtol=200 * np.finfo(dtype).eps,
                                   atol=atol)
        if mode == 1:
            np.testing.assert_array_equal(a, scores)
        if mode != 2:
            continue
        log_l = cm + 3.0 + np.log(np.arange(1, n_img + 1))
        pr = _posterior_from_exps(bk, a, n_s, row_info, log_l, kernels)
        with np.errstate(invalid="ignore"):
            d64 = v - log_l[None, :, None]
            truth64 = np.where(d64 > lo, np.exp(d64), 0.0)
            truth = e_ref * np.exp(cm - log_l)[None, :, None]
        normal = truth > np.finfo(dtype).tiny
        got = a.reshape(truth.shape)
        # float32: the exponential relative to the row's reference (1 ulp), times a float64
        # factor, rounded once: within 3 ulp where normal, exact zeros where exp underflows;
        # float64: exp(a) exp(b) vs exp(a + b) differ by |a + b| eps, |a + b| up to 750
        ptol = 1.5 * tol if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got[normal], truth[normal], rtol=ptol)
        np.testing.assert_allclose(got[normal], truth64[normal],
                                   rtol=max(200 * np.finfo(dtype).eps, ptol))
        assert np.all(got[truth64 == 0] == 0)
        np.testing.assert_allclose(pr, truth.sum(axis=2), rtol=2 * ptol, atol=atol)
        assert np.any(truth64 == 0) and np.any(normal)
