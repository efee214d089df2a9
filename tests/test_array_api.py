"""The device path (cryonb.device) against the host path, in NumPy, array_api_strict and CuPy.

Every test runs the backend-generic code in each namespace: NumPy (through array_api_compat),
``array_api_strict`` (which rejects any call outside the array API standard, so a NumPy-only
call in cryonb.device fails here) and CuPy (skipped without a GPU).  The truths are the host
implementations: the numba slice/back-projection kernels, ``cryonb.fourier``, ``cryonb.ctf``,
``reference_log_joint`` (explicit full-disc residuals) and ``MarginalLikelihood``.
"""

import pickle
from functools import lru_cache

import numpy as np
import pytest
from scipy.special import logsumexp

from cryonb.backend import get_backend, use_backend
from cryonb.ctf import evaluate_ctf
from cryonb.dataset import Dataset
from cryonb.device import DeviceMarginalLikelihood, DeviceProjector, shift_phases
from cryonb.device import fourier as dfourier
from cryonb.device.ctf import evaluate_ctf as device_ctf
from cryonb.device.namespace import to_host, to_namespace
from cryonb.device.scatter import scatter_add
from cryonb.fourier import fft2_centered, fft3_centered, ifft2_centered, ifft3_centered
from cryonb.image_model import ImageModel
from cryonb.likelihood import MarginalLikelihood, PoseSubset, reference_log_joint
from cryonb.objective import MarginalObjective, QuadratureOptions
from cryonb.projection import shift_phases as host_shift_phases
from cryonb.rotations import random_rotations


@pytest.fixture
def xp(backend):
    """The array-API namespace of each backend (conftest's ``backend``: NumPy, array_api_strict,
    CuPy; array_api_compat's wrapper for NumPy/CuPy)."""
    return backend.namespace


def _rel(a, b):
    a, b = to_host(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def problem(cached_tiny_problem):
    """``problem(box=13, n_img=4, seed=1, ctf=True) -> (model, quad, vol, ctf, images)``:
    conftest's tiny problem (random volume, noisy images at grid poses, sigma 3 per pixel,
    random CTFs with phase shifts); cached, so callers must not modify the arrays."""
    def make(box=13, n_img=4, seed=1, ctf=True):
        return cached_tiny_problem(box, n_img, seed=seed, ctf=ctf)[:5]
    return make


@lru_cache
def _reference(problem, ctf):
    """``reference_log_joint`` table (B, Nd, Ni, Ns) and the host engine's gradient."""
    model, quad, vol, c, images = problem(ctf=ctf)
    host_ft = model.projector.volume_to_fourier(vol)
    table = reference_log_joint(model, host_ft, images, c, 3.0, quad)
    grad = MarginalLikelihood(model, quad).evaluate(host_ft, images, c, 3.0, gradient=True)
    return table, grad.gradient


# ---------------------------------------------------------------------------- FFT, CTF, shifts
@pytest.mark.parametrize("n", [12, 13])
def test_centred_ffts_match_host(xp, n):
    rng = np.random.default_rng(n)
    img = rng.standard_normal((3, n, n))
    vol = rng.standard_normal((n, n, n))
    f2 = dfourier.fft2_centered(to_namespace(xp, img))
    f3 = dfourier.fft3_centered(to_namespace(xp, vol))
    assert _rel(f2, fft2_centered(img)) < 1e-13
    assert _rel(f3, fft3_centered(vol)) < 1e-13
    assert _rel(dfourier.ifft2_centered(f2), ifft2_centered(fft2_centered(img))) < 1e-13
    assert _rel(dfourier.ifft3_centered(f3), ifft3_centered(fft3_centered(vol))) < 1e-13


@pytest.mark.parametrize("convention", ["relion", "ctffind"])
def test_ctf_matches_host(xp, random_ctf, convention):
    rng = np.random.default_rng(2)
    params = random_ctf(rng, 5)
    k = rng.uniform(-0.25, 0.25, (2, 300))
    got = device_ctf(params, to_namespace(xp, k[0]), to_namespace(xp, k[1]),
                     convention=convention)
    want = evaluate_ctf(params, k[0], k[1], convention=convention)
    assert got.shape == (5, 300)
    np.testing.assert_allclose(to_host(got), want, rtol=0, atol=1e-12)


def test_shift_phases_match_host(xp):
    rng = np.random.default_rng(3)
    freqs, shifts = rng.uniform(-0.2, 0.2, (50, 2)), rng.normal(0, 4, (6, 2))
    got = shift_phases(to_namespace(xp, freqs), to_namespace(xp, shifts))
    np.testing.assert_allclose(to_host(got), host_shift_phases(freqs, shifts), atol=1e-12)


# ---------------------------------------------------------------------------- slicing
@pytest.mark.parametrize(("box", "dtype", "tol"), [(12, np.float64, 1e-10),
                                                  (13, np.float64, 1e-10),
                                                  (12, np.float32, 1e-5)])
def test_slice_matches_numba(xp, box, dtype, tol):
    rng = np.random.default_rng(box)
    model = ImageModel(box, pixel_size_A=2.0)
    vol = rng.standard_normal((box,) * 3).astype(dtype)
    host_ft = model.projector.volume_to_fourier(vol)
    proj = DeviceProjector(box, xp, chunk_points=200)  # several rotation chunks
    dev_ft = proj.volume_to_fourier(vol)
    assert _rel(dev_ft, host_ft) < tol
    rot = random_rotations(6, rng)
    got = proj.slice(host_ft, rot, model.coords_px)
    assert got.dtype == (xp.complex64 if dtype == np.float32 else xp.complex128)
    assert _rel(got, model.projector.slice(host_ft, rot, model.coords_px)) < tol


def test_backprojection_is_the_adjoint_and_matches_numba(xp):
    rng = np.random.default_rng(4)
    box = 12
    model = ImageModel(box, pixel_size_A=2.0)
    proj = DeviceProjector(box, xp, chunk_points=300)
    p = proj.padded_size
    rot = random_rotations(5, rng)
    coords = model.coords_px
    v = rng.standard_normal((p, p, p)) + 1j * rng.standard_normal((p, p, p))
    y = rng.standard_normal((5, len(coords))) + 1j * rng.standard_normal((5, len(coords)))
    av = to_host(proj.slice(v, rot, coords))
    aty = to_host(proj.backproject(to_namespace(xp, y), rot, coords))
    lhs, rhs = np.vdot(av, y).real, np.vdot(v, aty).real  # <A v, y> = <v, A^T y>
    assert abs(lhs - rhs) < 1e-12 * abs(lhs)
    assert _rel(aty, model.projector.backproject(y, rot, coords)) < 1e-12
    # the gridded FFT and its adjoint: <F v, w> = <v, F^T w> (real inner product)
    vol = rng.standard_normal((box,) * 3)
    fv = to_host(proj.volume_to_fourier(vol))
    ftw = to_host(proj.fourier_to_volume_adjoint(to_namespace(xp, v)))
    lhs, rhs = np.vdot(fv, v).real, float(np.sum(vol * ftw))
    assert abs(lhs - rhs) < 1e-12 * abs(lhs)


@pytest.mark.parametrize("method", ["auto", "generic"])
def test_scatter_add_equals_add_at(xp, method):
    rng = np.random.default_rng(5)
    index = rng.integers(0, 40, 500)
    index[:10] = 7  # heavy repeats
    values = rng.standard_normal(500) + 1j * rng.standard_normal(500)
    want = np.zeros(50, complex)
    np.add.at(want, index, values)
    got = scatter_add(to_namespace(xp, values), to_namespace(xp, index), 50, method=method)
    np.testing.assert_allclose(to_host(got), want, rtol=0, atol=1e-12)
    assert np.all(to_host(got)[40:] == 0)


# ---------------------------------------------------------------------------- likelihood
def test_prepare_matches_host_engine(xp, problem):
    model, quad, _, c, images = problem()
    host = MarginalLikelihood(model, quad).prepare(images, c, 3.0, dtype=np.float64)
    dev = DeviceMarginalLikelihood(model, quad, xp=xp).prepare(images, c, 3.0,
                                                               dtype=np.float64)
    assert _rel(dev.data, host.data) < 1e-13
    assert _rel(dev.ctf, host.ctf) < 1e-12
    np.testing.assert_allclose(dev.log_norm, host.log_norm, rtol=1e-13)


@pytest.mark.parametrize("ctf", [True, False])
@pytest.mark.parametrize("blocks", ["one", "many"])
def test_marginal_likelihood_matches_reference(xp, problem, ctf, blocks):
    """Value, posterior marginals and MAP = explicit full-disc residuals (reference_log_joint);
    gradient = the host engine's.  "many": several direction blocks, image groups, no cache."""
    model, quad, vol, c, images = problem(ctf=ctf)
    opts = {"one": {}, "many": {"block_bytes": 12_000, "cache_bytes": 0}}[blocks]
    lik = DeviceMarginalLikelihood(model, quad, xp=xp, **opts)
    table, want_grad = _reference(problem, ctf)                          # (B, Nd, Ni, Ns)
    total = logsumexp(table, axis=(1, 2, 3))
    res = lik.evaluate(lik.volume_to_fourier(vol), images, c, 3.0, gradient=True)
    np.testing.assert_allclose(res.log_likelihood, total, rtol=1e-12)
    post = table - total[:, None, None, None]
    np.testing.assert_allclose(res.log_marginal_directions, logsumexp(post, axis=(2, 3)),
                               atol=1e-9)
    np.testing.assert_allclose(res.log_marginal_inplane, logsumexp(post, axis=(1, 3)), atol=1e-9)
    np.testing.assert_allclose(res.log_marginal_shifts, logsumexp(post, axis=(1, 2)), atol=1e-9)
    d, i, s = np.unravel_index(table.reshape(len(table), -1).argmax(axis=1), table.shape[1:])
    np.testing.assert_array_equal(res.map_direction, d)
    np.testing.assert_array_equal(res.map_inplane, i)
    np.testing.assert_array_equal(res.map_shift, s)
    np.testing.assert_array_equal(res.n_evaluated, quad.size)
    assert isinstance(res.gradient, np.ndarray) and res.gradient.shape == vol.shape
    assert _rel(res.gradient, want_grad) < 1e-11


def test_gradient_matches_finite_difference(xp, problem):
    model, quad, vol, c, images = problem(box=12, n_img=3, seed=6)
    lik = DeviceMarginalLikelihood(model, quad, xp=xp)
    batch = lik.prepare(images, c, 3.0, dtype=np.float64)
    grad = lik.evaluate(lik.volume_to_fourier(vol), batch, gradient=True).gradient
    direction = np.random.default_rng(7).standard_normal(vol.shape)
    h = 1e-4

    def f(v):
        return float(np.sum(lik.evaluate(lik.volume_to_fourier(v), batch).log_likelihood))

    numeric = (f(vol + h * direction) - f(vol - h * direction)) / (2 * h)
    assert numeric == pytest.approx(float(np.sum(grad * direction)), rel=1e-6)


def test_float32_is_close_to_float64_reference(xp, problem):
    model, quad, vol, c, images = problem(seed=8)
    want = MarginalLikelihood(model, quad).evaluate(model.projector.volume_to_fourier(vol),
                                                    images, c, 3.0, gradient=True)
    lik = DeviceMarginalLikelihood(model, quad, xp=xp)
    res = lik.evaluate(lik.volume_to_fourier(vol.astype(np.float32)),
                       lik.prepare(images, c, 3.0, dtype=np.float32), gradient=True)
    assert res.gradient.dtype == np.float32
    np.testing.assert_allclose(res.log_likelihood, want.log_likelihood, rtol=1e-5)
    np.testing.assert_allclose(res.log_marginal_directions, want.log_marginal_directions,
                               atol=2e-3)
    assert _rel(res.gradient, want.gradient) < 1e-3


def test_importance_subsets_match_host_engine(xp, problem):
    """Per-image subsets with importance weights (two images share one): same as the host
    engine's numba kernels."""
    model, quad, vol, c, images = problem(seed=9)
    rng = np.random.default_rng(10)

    def subset():
        d = np.sort(rng.choice(quad.n_directions, 3, replace=False))
        i = np.sort(rng.choice(quad.n_inplane, 2, replace=False))
        s = np.sort(rng.choice(quad.n_shifts, 4, replace=False))
        return PoseSubset(d, i, s, rng.normal(0, 0.3, 3), rng.normal(0, 0.3, 2),
                          rng.normal(0, 0.3, 4))

    shared = subset()
    subsets = [shared, subset(), shared, subset()]
    host_ft = model.projector.volume_to_fourier(vol)
    want = MarginalLikelihood(model, quad).evaluate(host_ft, images, c, 3.0, subsets,
                                                    gradient=True)
    lik = DeviceMarginalLikelihood(model, quad, xp=xp)
    res = lik.evaluate(host_ft, images, c, 3.0, subsets, gradient=True)
    np.testing.assert_allclose(res.log_likelihood, want.log_likelihood, rtol=1e-12)
    for name in ("log_marginal_directions", "log_marginal_inplane", "log_marginal_shifts"):
        np.testing.assert_allclose(getattr(res, name), getattr(want, name), atol=1e-9)
    for name in ("map_direction", "map_inplane", "map_shift", "n_evaluated"):
        np.testing.assert_array_equal(getattr(res, name), getattr(want, name))
    assert _rel(res.gradient, want.gradient) < 1e-11


# ---------------------------------------------------------------------------- selection
@pytest.mark.parametrize("how", ["argument", "block"])
@pytest.mark.parametrize("backend", ["array_api_strict", "cupy"], ids=["strict", "cupy"],
                         indirect=True)
def test_objective_runs_the_device_engine_for_other_backends(backend, how, problem):
    """``MarginalObjective(..., backend=B)`` or ``with use_backend(B)``: the device engine, with
    the same values and gradient as the host engine."""
    backend = backend.name  # conftest's Backend; the objective is given its name, as before
    model, _, vol, c, images = problem(box=12, seed=11)
    ds = Dataset.from_arrays(images, model.pixel_size_A, ctf=c)
    options = QuadratureOptions(undersample=4.0, shift_undersample=2.0, shift_extent_A=4.0)

    def objective(**kwargs):
        return MarginalObjective(ds, 3.0, rng=np.random.default_rng(0), quadrature=options,
                                 dtype=np.float64, prefetch=False, **kwargs)

    idx = np.array([0, 2, 3])
    host = objective()
    host.set_band_limit(0.1)
    want = host.evaluate(vol, idx, gradient=True, record=False)
    if how == "argument":
        dev = objective(backend=backend)
        dev.set_band_limit(0.1)
        got = dev.evaluate(vol, idx, gradient=True, record=False)
    else:
        with use_backend(backend):
            dev = objective()
            dev.set_band_limit(0.1)
            got = dev.evaluate(vol, idx, gradient=True, record=False)
    assert type(host.likelihood) is MarginalLikelihood
    assert type(dev.likelihood) is DeviceMarginalLikelihood
    assert dev.likelihood.namespace is get_backend(backend).namespace
    np.testing.assert_allclose(got.nll, want.nll, rtol=1e-12)
    assert _rel(got.grad, want.grad) < 1e-11


def test_device_engine_pickles(xp, problem):
    """Sent to another process (e.g. a Dask worker), the engine keeps its namespace."""
    model, quad, vol, c, images = problem(box=12, seed=12)
    lik = DeviceMarginalLikelihood(model, quad, xp=xp, block_bytes=2**20)
    copy = pickle.loads(pickle.dumps(lik))
    assert copy.namespace is lik.namespace and copy.block_bytes == 2**20
    a = lik.evaluate(lik.volume_to_fourier(vol), images, c, 3.0)
    b = copy.evaluate(copy.volume_to_fourier(vol), images, c, 3.0)
    np.testing.assert_array_equal(a.log_likelihood, b.log_likelihood)
