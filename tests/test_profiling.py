"""Per-iteration timings: the records' phases cover the iteration, and the profile table."""

import numpy as np
import pytest

from cryonb.objective import KnownPoseObjective
from cryonb.profiling import PHASES, field_name, format_profile, profile_table
from cryonb.sagd import SAGDParams, SAGDSolver
from tests.test_sagd import _problem


def test_the_phases_of_a_record_add_up_to_its_iteration():
    ds, _, sigma = _problem(n_images=60, seed=1)
    params = SAGDParams(batch_size=20, n_heldout=10, start_max_freq_invA=0.05,
                        target_max_freq_invA=0.1, freq_step_invA=0.05, iterations_per_stage=3,
                        max_iterations=6, heldout_every=2, linesearch_every=2)
    solver = SAGDSolver(KnownPoseObjective(ds, sigma), n_images=len(ds), box_size=16,
                        params=params, rng=np.random.default_rng(0), initial_mass=150.0)
    solver.run(progress=False)
    for r in solver.state.records:
        parts = sum(r[field_name(p)] for p in PHASES)
        # what lies outside the phases is bookkeeping of a few dict and array operations:
        # under 10 ms whatever the machine's load (an iteration here takes tens of ms)
        assert 0.0 <= r["t_iteration_s"] - parts < 0.01, (r["t_iteration_s"], parts)
        assert min(r[field_name(p)] for p in PHASES) >= 0.0
        # a line search / held-out evaluation took time only where one ran (an evaluation of
        # 10-20 images takes a millisecond or more; skipping one, a few microseconds)
        ran = r["iteration"] % 2 == 0 or r["iteration"] == 3
        assert (r["t_linesearch_s"] > 2e-4) == ran and (r["t_heldout_s"] > 2e-4) == ran
    history = solver.history
    assert history["t_engine_s"].attrs["units"] == "s"
    rows = profile_table([("common", solver.state.records)])
    assert [(row["resolution_A"], row["iterations"]) for row in rows] == [
        (pytest.approx(20.0), 3), (pytest.approx(10.0), 3)]
    first = solver.state.records[:3]
    assert rows[0]["t_engine_s"] == pytest.approx(np.mean([r["t_engine_s"] for r in first]))
    text = format_profile(rows)
    assert len(text.splitlines()) == 3 and "linesearch" in text.splitlines()[0]


def test_records_without_timings_count_zero():
    rows = profile_table([("half1", [{"max_freq_invA": 0.05, "fraction_evaluated": 0.5}])])
    assert rows[0]["t_scores_s"] == 0.0 and rows[0]["fraction_evaluated"] == 0.5
