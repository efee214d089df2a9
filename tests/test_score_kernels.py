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
