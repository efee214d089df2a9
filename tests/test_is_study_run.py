"""cryonb.is_study_run: Fig. 6 on a finished run, with the run's own sampler at its final band
limit; checked against the live run it was written by and against the direct Eq. 4 sum."""

import numpy as np
import pytest
from scipy.special import logsumexp
from test_abinitio import BOX, PSIZE, _blobs  # the same tiny blob molecule

from cryonb.abinitio import AbInitioConfig, AbInitioRun
from cryonb.importance import log_estimate
from cryonb.is_study_run import load_run_half, run_is_study
from cryonb.likelihood import reference_log_joint
from cryonb.synthetic.particles import SimulationParams, load_simulation, simulate_to_files

CONFIG = AbInitioConfig(start_res_A=40.0, split_res_A=30.0, freq_step_invA=1 / 120,
                        first_stage_images=200, iterations_per_stage=4, batch_size=40,
                        n_heldout=20, particle_radius_A=None, shift_sigma_A=5.0,
                        shift_extent_A=10.0, max_iterations=16, checkpoint_every_s=3600.0,
                        min_fitted_iterations=3, is_cooling=3.0, max_res_A=30.0,
                        box_size=BOX)
# the last band limit, 1/30 Å^-1, is below Nyquist (1/24): exactly at Nyquist the engine's sum
# and the direct one differed by up to 0.008 nats for some images (the unpaired Nyquist row
# of an even box), which is not what this file tests


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished run (the radius estimated, as in the box-128 run) and the live run."""
    rng = np.random.default_rng(0)
    data = tmp_path_factory.mktemp("data")
    params = SimulationParams(n_particles=240, snr=1.0, shift_sigma_A=5.0, bfactor_A2=50.0,
                              defocus_range_A=(8000.0, 20000.0))
    simulate_to_files(_blobs(rng), PSIZE, params, rng, data, progress=False)
    out = tmp_path_factory.mktemp("run")
    run = AbInitioRun(load_simulation(data), out, CONFIG, progress=False)
    assert run.run()["status"] == "done"
    return run, out, data


def test_the_rebuilt_half_is_the_live_half(finished):
    run, out, data = finished
    for h in (1, 2):
        half = load_run_half(out, data, half=h)
        live = run.halves[h - 1]
        solver = live.solver
        assert half.name == f"half{h}"
        np.testing.assert_array_equal(half.indices, live.ids)
        np.testing.assert_array_equal(half.volume, solver.volume)
        assert half.band_limit_invA == solver.last_band_limit_invA
        # the schedule clock of the last iteration, as the live solver had it
        assert half.sampling_clock == solver.sampling_clock
        obj, live_obj = half.objective, solver.objective
        assert obj.noise_sigma == run.noise_sigma
        assert obj.options == run.qopts  # the radius estimated by the run, from run.json
        np.testing.assert_array_equal(obj.dataset.images(np.arange(5)),
                                      live.dataset.images(np.arange(5)))
        q, live_q = obj.likelihood.quadrature, live_obj.likelihood.quadrature
        assert q.size == live_q.size
        np.testing.assert_array_equal(q.directions, live_q.directions)
        # the proposals (Eq. 14) of every particle equal the live sampler's at that clock
        ids = np.arange(len(live.dataset))
        mine = half.sampler.proposals(ids, q, half.sampling_clock)
        theirs = live_obj.sampler.proposals(ids, live_q, solver.sampling_clock)
        for d in ("directions", "inplane", "shifts"):
            np.testing.assert_array_equal(mine[d], theirs[d])
    # the schedule clock is not the job's iteration clock (what a solver reported after a
    # resume before this was restored with the checkpoint): the clock check above can fail
    assert solver.state.records[-1]["clock"] != solver.sampling_clock


@pytest.mark.slow  # the direct float64 sum: ~2 min on 2 cores under load
def test_run_study_against_the_direct_sum_and_the_draws(finished):
    _, out, data = finished
    half = load_run_half(out, data, half=1)
    scales = [0.5, 10.0, 1e6]
    seed = 3
    study = run_is_study(half, None, np.random.default_rng(seed), n_images=2,
                         ess_scales=scales, n_trials=2, batch_size=4, progress=False)
    curve, ids = study.curve, study.particle_ids
    assert ids.size == 2 and half.sampler.seen(ids).all()
    obj = half.objective
    lik = obj.likelihood
    model, q = lik.model, lik.quadrature
    # exact: the direct Eq. 4 sum (float64 reference, residuals formed explicitly) of the
    # images under the half's map; the study runs in float64 too: agreement to rounding
    images = obj.dataset.images(ids)
    ctf = obj.dataset.ctf.subset(ids)
    table = reference_log_joint(model, model.projector.volume_to_fourier(half.volume), images,
                                ctf, obj.noise_sigma, q)
    direct = logsumexp(table.reshape(len(ids), -1), axis=1)
    np.testing.assert_allclose(curve.exact, direct, rtol=1e-9)
    # s_B large enough to enumerate every domain: the exact value, error 0, every point
    np.testing.assert_array_equal(curve.estimates[2], np.broadcast_to(curve.exact, (2, 2)))
    assert curve.mean_relative_error[2] == 0.0 and curve.fraction_evaluated[2] == 1.0
    # the first draw is the half's sampler's own draw at its clock: replay it with the seed
    assert curve.fraction_evaluated[0] < 1.0  # some images really are importance-sampled
    sampler = half.sampler
    saved = sampler.ess_scale
    sampler.ess_scale = scales[0]
    try:
        subsets = sampler.sample(ids, q, half.sampling_clock, np.random.default_rng(seed))
    finally:
        sampler.ess_scale = saved
    for b, sub in enumerate(subsets):
        assert curve.n_evaluated[0, 0, b] == sub.n_points
        np.testing.assert_allclose(curve.estimates[0, 0, b], log_estimate(table[b], sub),
                                   rtol=1e-9)
    # the error measure: mean |relative error|, as the explorer's summary computes it
    from cryonb.viz import is_study_summary, is_study_table

    summary = is_study_summary(is_study_table({study.band_limit_invA: curve}))
    np.testing.assert_allclose(summary["relative_error"], curve.mean_relative_error,
                               rtol=1e-12)
    np.testing.assert_allclose(curve.mean_relative_error,
                               np.mean(np.abs(curve.estimates - direct) / np.abs(direct),
                                       axis=(1, 2)), rtol=0, atol=1e-8)
    rows = study.rows()
    assert [r["s_B"] for r in rows] == scales
    assert "mean |rel. err|" in study.table() and "schedule clock" in study.table()


def test_refuses_what_it_cannot_rebuild(finished, tmp_path):
    _, out, data = finished
    with pytest.raises(FileNotFoundError):
        load_run_half(tmp_path, data)
    with pytest.raises(ValueError):
        load_run_half(out, data, half=3)
