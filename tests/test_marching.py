"""The stage policy (cryonb.marching): when the band limit steps up, and its use by the solver."""

import math
from dataclasses import replace

import numpy as np
import pytest

from cryonb.checkpoint import load_checkpoint, save_checkpoint
from cryonb.config import AbInitioConfig
from cryonb.marching import StagePolicy
from cryonb.objective import KnownPoseObjective
from cryonb.sagd import SAGDParams, SAGDSolver
from tests.test_sagd import _problem


def _records(heldout):
    return [{"heldout_nll": h, "stage": 1} for h in heldout]


def test_a_stage_ends_at_its_longest_length_and_never_before_the_shortest():
    p = StagePolicy(min_iterations=3, iterations=5, first_iterations=8)
    nan = math.nan
    assert p.advance(0, 4, _records([nan] * 7), 0.0, 7) == ""
    assert p.advance(0, 4, _records([nan] * 8), 0.0, 8) == "stage length 8"
    assert p.advance(1, 4, _records([nan] * 5), 0.0, 13) == "stage length 5"
    # the target band limit (stage == n_stages) is never left
    assert p.advance(4, 4, _records([nan] * 50), 0.0, 80) == ""
    # a budget far behind its pace still waits for the shortest stage
    paced = replace(p, budget_iterations=10)
    assert paced.advance(1, 4, _records([nan] * 2), 0.0, 9) == ""
    assert paced.advance(1, 4, _records([nan] * 3), 0.0, 9).startswith("budget pace")


def test_the_pace_spreads_the_stages_over_the_budget():
    # first stage half of the budget, target reached at 80 % of the rest: with 4 stages after
    # the first, stage k is asked for from 0.5 + 0.4 * (k - 1) / 4 of the budget
    p = StagePolicy(min_iterations=1, iterations=10**6, first_iterations=10**6,
                    budget_s=100.0, first_share=0.5, reach=0.8)
    assert [p.paced_stage(u, 4) for u in (0.0, 0.49, 0.5, 0.59, 0.61, 0.79, 0.81, 0.95)] == [
        0, 0, 1, 1, 2, 3, 4, 4]
    assert p.budget_used(25.0, 3) == pytest.approx(0.25)
    both = replace(p, budget_iterations=10)
    assert both.budget_used(25.0, 5) == pytest.approx(0.5)  # the larger of time and iterations
    assert replace(p, budget_s=None).budget_used(25.0, 3) is None


def test_a_held_out_plateau_ends_a_stage_after_the_first():
    p = StagePolicy(min_iterations=3, iterations=100, first_iterations=100, plateau_rel_tol=0.01)
    nan = math.nan
    improving = [1000.0, nan, 980.0, nan, 960.0]  # 2 % per evaluation
    flat = [1000.0, nan, 980.0, nan, 975.0]  # the last gain is 0.5 %
    assert p.advance(1, 4, _records(improving), 0.0, 50) == ""
    assert p.advance(1, 4, _records(flat), 0.0, 50) == "held-out plateau"
    # the first stage is not cut by a plateau (the shape is still forming)
    assert p.advance(0, 4, _records(flat), 0.0, 50) == ""
    # two evaluations (the first taken right at the band-limit change) are not enough
    assert p.advance(1, 4, _records([1000.0, nan, 999.9]), 0.0, 50) == ""


def _solver(ds, sigma, policy, max_iterations=18):
    params = SAGDParams(batch_size=20, n_heldout=10, start_max_freq_invA=0.05,
                        target_max_freq_invA=0.125, freq_step_invA=0.025,
                        iterations_per_stage=6, first_stage_iterations=6,
                        max_iterations=max_iterations, heldout_every=2, stage_policy=policy)
    return SAGDSolver(KnownPoseObjective(ds, sigma), n_images=len(ds), box_size=16,
                      params=params, rng=np.random.default_rng(5), initial_mass=150.0)


def test_the_solver_steps_the_band_limit_when_the_policy_says_and_resumes_identically(
        tmp_path):
    ds, _, sigma = _problem(n_images=80, seed=3)
    # an iteration budget of 18 paced from the start (no first share, reach 100 %): 3 stages
    # after the first, the k-th asked for from iteration 6 (k - 1); shortest stage 2
    policy = StagePolicy(min_iterations=2, iterations=50, first_iterations=50,
                         budget_iterations=18, reach=1.0)
    straight = _solver(ds, sigma, policy)
    straight.run(progress=False)
    stages = [int(r["stage"]) for r in straight.state.records]
    # paced_stage(it / 18) = 1 + floor(3 it / 18): stage 1 from it 0 (after the 2 shortest
    # iterations of stage 0), 2 from 6, 3 from 12
    assert stages == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3]
    w = [r["max_freq_invA"] for r in straight.state.records]
    assert w[0] == pytest.approx(0.05) and w[-1] == pytest.approx(0.125)
    assert straight.last_band_limit_invA == pytest.approx(0.125)
    # the decision is a function of the saved records: a resumed solver takes the same ones
    first = _solver(ds, sigma, policy)
    first.run(max_steps=7, progress=False)
    save_checkpoint(tmp_path / "ckpt.npz", first.state_dict())
    resumed = _solver(ds, sigma, policy)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.npz"))
    assert resumed.next_stage() == first.next_stage()
    resumed.run(progress=False)
    np.testing.assert_array_equal(resumed.volume, straight.volume)


def test_the_config_sizes_the_first_stage_by_images_not_epochs():
    from cryonb.band_limit import BandLimitSchedule

    cfg = AbInitioConfig(first_stage_images=20000, batch_size=100)
    schedule = BandLimitSchedule.from_resolution(start_res_A=40, target_res_A=None,
                                                 pixel_size_A=5.6, step_invA=0.005,
                                                 iterations_per_stage=30)
    for n in (10_000, 200_000):
        params = cfg.sagd_params(n, schedule)
        assert params.first_stage_iterations == 200
        assert params.stage_policy.first_iterations == 200
        assert params.stage_policy.min_iterations == cfg.min_fitted_iterations
    capped = replace(cfg, max_iterations=300).sagd_params(10_000, schedule)
    assert capped.first_stage_iterations == 100  # a third of the iteration budget


def test_the_sampling_clock_counts_band_limit_steps_not_iterations():
    # the IS schedule follows the band limit: iterations_per_stage (6) per step from the
    # job's first band limit, plus the iterations into the stage (at most 6)
    ds, _, sigma = _problem(n_images=80, seed=3)
    policy = StagePolicy(min_iterations=2, iterations=50, first_iterations=50,
                         budget_iterations=18, reach=1.0)
    solver = _solver(ds, sigma, policy)
    seen = []
    evaluate = solver.objective.evaluate

    def spy(volume, indices, *, gradient, record, iteration=0, reuse=None):
        if gradient:
            seen.append(iteration)
        return evaluate(volume, indices, gradient=gradient, record=record,
                        iteration=iteration, reuse=reuse)

    solver.objective.evaluate = spy
    solver.run(progress=False)
    # stages 0 (2 its), 1 (4), 2 (6), 3 (6): see the test above
    assert seen == [0, 1, 6, 7, 8, 9, *range(12, 18), *range(18, 24)]
    # a half-set counts from the job's first band limit (here 0: two steps of 0.025 below 0.05)
    half = _solver(ds, sigma, policy)
    half.params = replace(half.params, clock_start_max_freq_invA=0.0)
    half.step()
    assert half.sampling_clock == 2 * 6
