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


def test_first_visits_are_counted_per_evaluation():
    """``fraction_first_visit``: the share of a batch with no recorded posterior before the
    evaluation (1 for a fresh sampler, the unseen share after a partial record, NaN without a
    sampler); the profile averages it and prints "-" where it is unknown."""
    from cryonb.dataset import Dataset
    from cryonb.importance import ImportanceSampler, ISSchedule
    from cryonb.objective import MarginalObjective, QuadratureOptions

    rng = np.random.default_rng(0)
    n, box = 12, 16
    ds = Dataset.from_arrays(rng.standard_normal((n, box, box)), 6.0)
    vol = rng.standard_normal((box,) * 3)
    opts = QuadratureOptions(shift_sigma_A=6.0, shift_extent_A=6.0)
    obj = MarginalObjective(ds, 1.0, rng=rng, quadrature=opts,
                            sampler=ImportanceSampler(n, ISSchedule.constant(0.5)))
    obj.set_band_limit(0.03)
    first = obj.evaluate(vol, np.arange(0, 6), gradient=False, record=True, iteration=0)
    again = obj.evaluate(vol, np.arange(3, 9), gradient=False, record=True, iteration=1)
    assert first.fraction_first_visit == 1.0 and again.fraction_first_visit == 0.5
    plain = MarginalObjective(ds, 1.0, rng=rng, quadrature=opts)
    plain.set_band_limit(0.03)
    assert np.isnan(plain.evaluate(vol, np.arange(3), gradient=False,
                                   record=False).fraction_first_visit)
    recs = [{"max_freq_invA": 0.03, "fraction_evaluated": 1.0, "fraction_first_visit": v}
            for v in (first.fraction_first_visit, again.fraction_first_visit)]
    rows = profile_table([("half1", recs), ("half2", [{"max_freq_invA": 0.03,
                                                       "fraction_evaluated": 1.0}])])
    assert rows[0]["fraction_first_visit"] == pytest.approx(0.75)
    assert np.isnan(rows[1]["fraction_first_visit"])
    lines = format_profile(rows).splitlines()
    assert "new" in lines[0].split() and "75%" in lines[1].split() and "-" in lines[2].split()


def test_domain_fractions_are_measured_from_the_drawn_subsets():
    """Per domain, the mean share of its points scored: hand-made subsets give their sizes
    over the domain's; a sampled evaluation's per-domain fractions multiply to its overall
    fraction for one image, reach the sampler's history and the solver's record."""
    from cryonb.dataset import Dataset
    from cryonb.importance import ImportanceSampler, ISSchedule, evaluated_domain_fractions
    from cryonb.likelihood import PoseSubset
    from cryonb.objective import MarginalObjective, QuadratureOptions
    from cryonb.viz import domain_fractions

    rng = np.random.default_rng(1)
    n, box = 10, 16
    ds = Dataset.from_arrays(rng.standard_normal((n, box, box)), 6.0)
    vol = rng.standard_normal((box,) * 3)
    opts = QuadratureOptions(shift_sigma_A=6.0, shift_extent_A=6.0)
    obj = MarginalObjective(ds, 1.0, rng=rng, quadrature=opts,
                            sampler=ImportanceSampler(n, ISSchedule.constant(0.05, 1.0),
                                                      dense_fraction=1.0))
    obj.set_band_limit(0.03)
    q = obj.likelihood.quadrature
    sizes = (q.n_directions, q.n_inplane, q.n_shifts)
    hand = [PoseSubset(np.arange(2), np.arange(3), np.arange(1), np.zeros(2), np.zeros(3),
                       np.zeros(1)), PoseSubset.full(q)]
    got = evaluated_domain_fractions(hand, q)
    for d, k, size in zip(("directions", "inplane", "shifts"), (2, 3, 1), sizes, strict=True):
        assert got[f"fraction_{d}"] == pytest.approx((k / size + 1.0) / 2)
    assert evaluated_domain_fractions(None, q) == {f"fraction_{d}": 1.0
                                                   for d in ("directions", "inplane", "shifts")}
    # a visited image's draw from a sharp record: fewer points than the grid in some domain
    obj.evaluate(vol, np.arange(n), gradient=False, record=True, iteration=0)
    one = obj.evaluate(vol, np.array([4]), gradient=False, record=True, iteration=1)
    f = one.fraction_domains
    assert np.prod([f[f"fraction_{d}"] for d in ("directions", "inplane", "shifts")]) \
        == pytest.approx(one.fraction_evaluated)
    assert one.fraction_evaluated < 1.0
    entry = obj.sampler.history[-1]
    assert domain_fractions(entry, sizes, obj.sampler.ess_scale) == f
