"""SAGDSolver mechanics on an exactly solvable problem (known poses, least squares)."""

import numpy as np
import pytest

from cryonb.checkpoint import load_checkpoint, save_checkpoint
from cryonb.dataset import Dataset
from cryonb.image_model import ImageModel
from cryonb.objective import KnownPoseObjective
from cryonb.rotations import random_rotations
from cryonb.sagd import (
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
