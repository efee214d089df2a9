"""SAGDSolver mechanics on an exactly solvable problem (known poses, least squares)."""

import numpy as np
import pytest

from cryonb.checkpoint import load_checkpoint, save_checkpoint
from cryonb.dataset import Dataset
from cryonb.image_model import ImageModel
from cryonb.objective import KnownPoseObjective
from cryonb.rotations import random_rotations
from cryonb.sagd import (
    Evaluation,
    GradientMemory,
    SAGDParams,
    SAGDSolver,
    band_limit_at,
    learning_rate_at,
    random_spheres,
)


def _problem(n_images=120, box=16, psize=4.0, sigma=0.05, seed=0):
    rng = np.random.default_rng(seed)
    truth = random_spheres(box, rng, n_spheres=6, mass=200.0)
    model = ImageModel(box, psize)
    rot = random_rotations(n_images, rng)
    images = model.forward(truth, rot) + rng.normal(0, sigma, (n_images, box, box))
    ds = Dataset.from_arrays(images.astype(np.float32), psize, rotations=rot)
    return ds, truth, sigma


def test_schedules_follow_the_paper():
    p = SAGDParams(start_max_freq_invA=1 / 40, target_max_freq_invA=0.1, freq_step_invA=0.005,
                   iterations_per_stage=150)
    assert band_limit_at(0, p) == (0, pytest.approx(0.025))
    assert band_limit_at(149, p)[1] == pytest.approx(0.025)
    assert band_limit_at(150, p)[1] == pytest.approx(0.030)
    assert band_limit_at(10**6, p)[1] == pytest.approx(0.1)
    assert [learning_rate_at(i, p) for i in (0, 149, 150, 300, 450, 2000)] == [
        2.0, 2.0, 1.0, 0.5, 0.25, 1 / 16]


def test_a_long_first_stage_keeps_the_later_learning_rates():
    p = SAGDParams(iterations_per_stage=30, eps_halving=30, first_stage_iterations=300)
    assert band_limit_at(299, p)[1] == pytest.approx(0.025)
    assert band_limit_at(300, p)[1] == pytest.approx(0.030)
    assert band_limit_at(330, p)[1] == pytest.approx(0.035)
    # the whole first stage at the first rate, then halving per stage as without it
    assert [learning_rate_at(i, p) for i in (0, 299, 300, 329, 330, 360)] == [
        2.0, 2.0, 1.0, 1.0, 0.5, 0.25]
    # a solver continuing after it (a half-set) with the offset AbInitioRun gives it
    half = SAGDParams(iterations_per_stage=30, eps_halving=30, iteration_offset=330 - 270)
    assert learning_rate_at(0, half) == learning_rate_at(330, p)


def test_gradient_memory_round_trip_and_band_limit():
    rng = np.random.default_rng(1)
    mem = GradientMemory(12)
    grads = [rng.normal(size=(12,) * 3) for _ in range(3)]
    mem.update(0, grads[0], radius_px=100)
    mem.update(1, grads[1], radius_px=100)
    mem.update(0, grads[2], radius_px=100)  # replaces batch 0
    np.testing.assert_allclose(mem.mean(), (grads[1] + grads[2]) / 2, atol=1e-5)
    other = GradientMemory(12)
    other.load_state_dict(mem.state_dict())
    np.testing.assert_array_equal(other.mean(), mem.mean())
    low = GradientMemory(12)
    low.update(0, grads[0], radius_px=3)
    spectrum = np.fft.fftn(low.mean())
    k = np.fft.fftfreq(12) * 12
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    assert np.abs(spectrum[r > 3.01]).max() < 1e-9
    assert low.nbytes < mem.nbytes / 10


def test_sagd_reduces_the_error_to_the_truth():
    ds, truth, sigma = _problem()
    objective = KnownPoseObjective(ds, sigma)
    params = SAGDParams(batch_size=20, n_heldout=20, start_max_freq_invA=0.05,
                        target_max_freq_invA=0.125, freq_step_invA=0.025,
                        iterations_per_stage=15, max_iterations=90, eps_halving=30)
    solver = SAGDSolver(objective, n_images=len(ds), box_size=16, params=params,
                        rng=np.random.default_rng(2), initial_mass=200.0)
    start_error = np.linalg.norm(solver.volume - truth) / np.linalg.norm(truth)
    solver.run(progress=False)
    error = np.linalg.norm(solver.volume - truth) / np.linalg.norm(truth)
    assert solver.stop_reason.startswith("reached max_iterations")
    assert error < 0.5 * start_error, (start_error, error)
    hist = solver.history
    assert hist.sizes["iteration"] == 90
    held = hist["heldout_nll"].dropna("iteration")
    assert held.size >= 9 and float(held[-1]) < float(held[0])
    assert float(hist["max_freq_invA"][-1]) == pytest.approx(0.125)
    assert (solver.volume >= 0).all()


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    ds, _, sigma = _problem(n_images=80, seed=3)
    params = SAGDParams(batch_size=20, n_heldout=10, start_max_freq_invA=0.05,
                        target_max_freq_invA=0.1, freq_step_invA=0.025, iterations_per_stage=6,
                        max_iterations=20)

    def make():
        return SAGDSolver(KnownPoseObjective(ds, sigma), n_images=len(ds), box_size=16,
                          params=params, rng=np.random.default_rng(5), initial_mass=150.0)

    straight = make()
    straight.run(progress=False)
    first = make()
    first.run(max_steps=7, progress=False)
    save_checkpoint(tmp_path / "ckpt.npz", first.state_dict())
    resumed = make()
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.npz"))
    assert resumed.iteration == 7
    resumed.run(progress=False)
    np.testing.assert_array_equal(resumed.volume, straight.volume)
    assert resumed.history.sizes["iteration"] == 20


class _LeastSquares:
    """``nll_i(v) = 0.5 * ||A_i v - b_i||^2``: an exact quadratic satisfying ``Objective``."""

    pixel_size_A = 1.0  # Objective protocol: band limits in Fourier px

    def __init__(self, A, b, box):
        self.A, self.b, self.box = A, b, box

    def set_band_limit(self, max_freq_invA):
        pass

    def evaluate(self, volume, indices, *, gradient, record, iteration, reuse=None):
        A, b = self.A[indices], self.b[indices]
        r = np.einsum("imd,d->im", A, volume.ravel()) - b
        grad = np.einsum("imd,im->d", A, r).reshape(volume.shape) if gradient else None
        return Evaluation(0.5 * (r**2).sum(axis=1), grad)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _least_squares_solver(A, b, box, v0, L0, steps=1):
    params = SAGDParams(batch_size=4, n_heldout=0, L0=L0, linesearch_every=1,
                        linesearch_max_steps=40, max_iterations=steps)
    return SAGDSolver(_LeastSquares(A, b, box), n_images=len(A), box_size=box, params=params,
                      rng=np.random.default_rng(0), initial_volume=v0)


def test_line_search_takes_the_smallest_grid_L_with_sufficient_decrease():
    """For a quadratic the sufficient-decrease test is exactly ``L >= g'Hg / g'g``.

    With ``f(v) = (1/n) sum_i 0.5 ||A_i v - b_i||^2`` over the batch (``H = (1/n) sum A_i'A_i``):
    ``f(V - g/L) = f(V) - g'g / L + g'Hg / (2 L^2)``, so ``f(V - g/L) <= f(V) - g'g / (2L)``
    iff ``L >= c = g'Hg / g'g`` (the curvature along g, at most the Lipschitz constant
    ``lambda_max(H)``).  The search tries ``L_prev/2, L_prev, 2 L_prev, ...`` so the accepted
    L is ``L_prev/2`` when that already passes, otherwise the one grid point in ``[c, 2c)``.
    The test predicts every L exactly from the normal equations (not from the solver's
    objective calls), starting far above the curvature (L halves once per step) and far below
    it (L doubles within one search).  Where a grid point is close to c the two sides of the
    test differ by ``(g'g / 2L) |c/L - 1|``; the test checks that this is above 1e-9 (1 + f),
    six orders above rounding in f (~1e-15 relative), so no comparison is a coin toss.
    """
    rng = np.random.default_rng(4)
    box, n, m = 3, 8, 6
    d = box**3
    A = rng.normal(size=(n, m, d))
    b = rng.normal(size=(n, m)) + 2.0
    v0 = rng.uniform(0.5, 1.5, size=(box,) * 3)
    lipschitz = max(np.linalg.eigvalsh(np.einsum("imd,ime->de", A[i], A[i]) / 4).max()
                    for i in (np.arange(0, 4), np.arange(4, 8), np.arange(8)))  # any batch
    for L0 in (64.0 * lipschitz, 1e-4 * lipschitz):
        solver = _least_squares_solver(A, b, box, v0, L0, steps=12)
        L_prev = L0
        while not solver.done:
            volume = solver.volume.copy()
            record = solver.step()
            idx = solver.batch_indices(record["batch"])
            H = np.einsum("imd,ime->de", A[idx], A[idx]) / len(idx)
            g = H @ volume.ravel() - np.einsum("imd,im->d", A[idx], b[idx]) / len(idx)
            g2, c = g @ g, g @ H @ g / (g @ g)
            k = max(0, int(np.ceil(np.log2(c / (L_prev / 2)))))  # grid point L_prev/2 * 2^k
            expected = L_prev / 2 * 2.0**k

            def f(v, idx=idx):
                r = np.einsum("imd,d->im", A[idx], v.ravel()) - b[idx]
                return 0.5 * (r**2).sum() / len(idx)

            # set-up check: at the grid points around c the test's two sides differ by
            # (g'g / 2L) |c/L - 1| (from the expansion above), far above rounding in f
            for grid_L in {expected, max(expected / 2, L_prev / 2)}:
                assert g2 / (2 * grid_L) * abs(c / grid_L - 1) > 1e-9 * (1 + f(volume))
            L = record["L"]
            assert L == expected, (L, expected, c, L_prev)

            # the accepted L passes the test; L/2 fails it unless L is the start of the grid
            assert f(volume.ravel() - g / L) <= f(volume) - g2 / (2 * L)
            if L > L_prev / 2:
                assert f(volume.ravel() - g / (L / 2)) > f(volume) - g2 / L
                assert c <= L < 2 * c  # within the factor 2 of the curvature along g
            assert c <= lipschitz * (1 + 1e-12)
            L_prev = L
        if L0 > lipschitz:  # halved once per step from 64 lambda_max: 12 steps reach [c, 2c)
            assert L_prev < 2 * lipschitz


def test_line_search_keeps_L_at_a_zero_gradient():
    """At an exact solution of every equation the gradient is 0.0 exactly (integer data) and
    the search returns the current L untouched; the step leaves the map as it is."""
    rng = np.random.default_rng(5)
    box, n, m = 3, 8, 6
    A = rng.integers(-2, 3, size=(n, m, box**3)).astype(np.float64)
    v_star = rng.integers(1, 4, size=(box,) * 3).astype(np.float64)
    b = np.einsum("imd,d->im", A, v_star.ravel())
    solver = _least_squares_solver(A, b, box, v_star, L0=3.25)
    record = solver.step()
    assert record["L"] == 3.25 and record["objective"] == 0.0
    np.testing.assert_array_equal(solver.volume, v_star)


class _RestrictableLeastSquares(_LeastSquares):
    """The quadratic with a reuse token that names its images, restrictable to some rows."""

    def __init__(self, A, b, box):
        super().__init__(A, b, box)
        self.calls = []

    def evaluate(self, volume, indices, *, gradient, record, iteration, reuse=None):
        if reuse is not None:
            assert np.array_equal(reuse, indices)  # the token is of the same images
        self.calls.append((len(indices), gradient))
        ev = super().evaluate(volume, indices, gradient=gradient, record=record,
                              iteration=iteration)
        return Evaluation(ev.nll, ev.grad, token=np.asarray(indices))

    def restrict_token(self, token, rows):
        return token[rows]


def test_the_line_search_on_part_of_the_batch_tests_that_part_with_the_batch_gradient():
    """With ``linesearch_images = 3`` of batches of 8, every trial evaluates 3 images, and the
    accepted L is the smallest grid point where ``f_3(V - g/L) <= f_3(V) - g'g / (2L)``,
    ``f_3`` the mean over those 3 images and ``g`` the gradient of the whole batch."""
    from dataclasses import replace

    rng = np.random.default_rng(7)
    box, n, m = 3, 16, 6
    A = rng.normal(size=(n, m, box**3))
    b = rng.normal(size=(n, m)) + 2.0
    v0 = rng.uniform(0.5, 1.5, size=(box,) * 3)
    objective = _RestrictableLeastSquares(A, b, box)
    params = SAGDParams(batch_size=8, n_heldout=0, L0=1e-3, linesearch_every=1,
                        linesearch_max_steps=40, max_iterations=4, linesearch_images=3)
    solver = SAGDSolver(objective, n_images=n, box_size=box, params=params,
                        rng=np.random.default_rng(0), initial_volume=v0)
    L_prev = params.L0
    for _ in range(4):
        volume = solver.volume.copy()
        objective.calls.clear()
        record = solver.step()
        idx = solver.batch_indices(record["batch"])
        part = idx[:3]
        g = (np.einsum("imd,ime->de", A[idx], A[idx]) @ volume.ravel()
             - np.einsum("imd,im->d", A[idx], b[idx])) / len(idx)

        def f3(v, part=part):
            r = np.einsum("imd,d->im", A[part], np.ravel(v)) - b[part]
            return 0.5 * (r**2).sum() / len(part)

        L = record["L"]
        assert objective.calls[0] == (8, True)
        assert all(c == (3, False) for c in objective.calls[1:]) and len(objective.calls) > 1
        assert f3(volume.ravel() - g / L) <= f3(volume) - g @ g / (2 * L)
        if L > L_prev / 2:  # not the first grid point: the one before it failed
            assert f3(volume.ravel() - g / (L / 2)) > f3(volume) - g @ g / L
        L_prev = L
    # without restrict_token the whole batch is searched
    plain = SAGDSolver(_LeastSquares(A, b, box), n_images=n, box_size=box,
                       params=replace(params, max_iterations=1), rng=np.random.default_rng(0),
                       initial_volume=v0)
    plain.step()
