"""Ab initio end to end on a tiny problem: recovery, outputs, resume (also after SIGKILL)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from cryonb.abinitio import AbInitioConfig, AbInitioRun, estimate_mass, summary_lines
from cryonb.checkpoint import load_checkpoint
from cryonb.cli import main as cli_main
from cryonb.dataset import Dataset
from cryonb.fourier import radial_index
from cryonb.io import read_mrc
from cryonb.metrics import fsc, half_map_resolution
from cryonb.synthetic.particles import SimulationParams, load_simulation, simulate_to_files

BOX, PSIZE = 16, 12.0


def _blobs(rng):
    k = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((BOX,) * 3)
    for c in [(-3, 0, 1), (2, 2, -2), (0, -3, -2), (3, -1, 3), (-1, 3, 2)]:
        vol += rng.uniform(0.5, 1.5) * np.exp(
            -((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 1.2**2))
    return vol.astype(np.float32)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("tiny")
    params = SimulationParams(n_particles=240, snr=1.0, shift_sigma_A=5.0, bfactor_A2=50.0,
                              defocus_range_A=(8000.0, 20000.0))
    simulate_to_files(_blobs(rng), PSIZE, params, rng, out, progress=False)
    return out


CONFIG = AbInitioConfig(start_res_A=40.0, split_res_A=30.0, freq_step_invA=1 / 120,
                        first_stage_images=200, iterations_per_stage=4, batch_size=40,
                        n_heldout=20,
                        particle_radius_A=50.0, shift_sigma_A=5.0, shift_extent_A=10.0,
                        max_iterations=16, checkpoint_every_s=3600.0, min_fitted_iterations=3)


def test_mass_estimate_matches_the_truth(tiny_set):
    ds = load_simulation(tiny_set)
    mass = estimate_mass(ds.normalized())
    # normalisation divides by the noise sigma: compare in the same units
    sigma = ds.estimate_noise_sigma()
    assert mass * sigma == pytest.approx(float(ds.truth.volume.sum()), rel=0.15)


def test_abinitio_outputs_and_resume_equals_uninterrupted(tiny_set, tmp_path):
    ds = load_simulation(tiny_set)
    straight = AbInitioRun(ds, tmp_path / "straight", CONFIG, progress=False).run()
    assert straight["status"] == "done"
    out = tmp_path / "straight"
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "particles.star", "history.csv",
                 "fsc.png", "fsc.csv", "run.json", "checkpoint.npz"):
        assert (out / name).exists(), name
    final = read_mrc(out / "map.mrc")
    assert final.voxel_size_A == pytest.approx(PSIZE) and final.shape == (BOX,) * 3
    assert (np.asarray(final.data) >= 0).all()  # positivity
    poses = Dataset.from_star(out / "particles.star")
    assert poses.rotations.shape == (240, 3, 3)
    assert set(np.unique(poses.half_set)) == {0, 1}

    # after the split the common solver keeps only its map and history: its stored gradients
    # and importance-sampling state are neither in memory nor in the checkpoint
    saved = load_checkpoint(out / "checkpoint.npz")
    assert saved["common"]["memory"]["coeffs"].size == 0
    assert "sampler" not in saved["common"]["objective"]
    assert all("sampler" in saved[h]["objective"] for h in ("half1", "half2"))
    assert saved["common"]["volume"].shape == (BOX,) * 3

    # interrupted after 6 common/half steps (as Ctrl-C does), then resumed
    calls = {"n": 0}

    def stop_soon(run, solver, record):
        calls["n"] += 1
        if calls["n"] == 9:
            run.request_stop()

    first = AbInitioRun(ds, tmp_path / "resumed", CONFIG, progress=False, callback=stop_soon)
    assert first.run()["status"] == "interrupted"
    second = AbInitioRun(ds, tmp_path / "resumed", CONFIG, progress=False)
    assert second.run(resume=True)["status"] == "done"
    np.testing.assert_array_equal(read_mrc(tmp_path / "resumed" / "map.mrc").data, final.data)


def test_first_stage_lasts_its_images_and_the_halves_continue_its_schedule(tiny_set, tmp_path):
    # 400 images in batches of 40 = 10 iterations, which is also the half of the common
    # phase's share (a third of 60) the budget's pace leaves the first stage
    ds = load_simulation(tiny_set)
    config = replace(CONFIG, first_stage_images=400, max_iterations=60)
    AbInitioRun(ds, tmp_path, config, progress=False).run()
    rows = np.genfromtxt(tmp_path / "history.csv", delimiter=",", names=True, dtype=None,
                         encoding="utf-8")
    common = rows[rows["phase"] == "common"]
    assert len(common) == 10 and (common["stage"] == 0).all()
    assert np.all(common["eps"] == 2.0)
    # the split comes with the next band limit (1/30 Å^-1); the halves take the learning rate
    # the second stage has in the schedule (halved once), not one reduced by the long stage
    half1 = rows[rows["phase"] == "half1"]
    assert half1["max_freq_invA"][0] == pytest.approx(1 / 30.0)
    assert half1["eps"][0] == 1.0
    # an iteration budget keeps two thirds of itself for the march
    capped = AbInitioRun(ds, tmp_path / "capped", replace(config, max_iterations=18),
                         progress=False)
    capped._prepare()
    assert capped.params.first_stage_iterations == 6


def test_half_map_fsc_stops_at_the_band_limit_the_halves_reached(tiny_set, tmp_path):
    # above the band limit no data were fitted: the half-maps (each half's particles
    # reconstructed at its poses) stop there, and so does their FSC
    ds = load_simulation(tiny_set)
    # box kept: without it the working box would be cropped to the target (next test)
    config = replace(CONFIG, max_res_A=30.0, max_iterations=12, box_size=BOX)
    summary = AbInitioRun(ds, tmp_path, config, progress=False).run()
    w_final = summary["final_max_freq_invA"]
    assert w_final == pytest.approx(1 / 30.0)  # below Nyquist, 1/24
    halves = [read_mrc(tmp_path / f"half{i}.mrc").data for i in (1, 2)]
    shells = np.fft.ifftshift(radial_index(halves[0].shape)) / (BOX * PSIZE)
    for half in halves:
        # only the leak of trilinear gridding on the 2x padded grid and of the crop back to
        # the box lies above (0.4 % of the power measured; a map not band-limited at 1/30 of
        # the 1/24 Nyquist would have about a third of its noise power there)
        spectrum = np.abs(np.fft.fftn(half)) ** 2
        assert spectrum[shells > w_final + 1e-9].sum() < 0.02 * spectrum.sum()
    # the reported figure is the FSC 0.143 of the written half-maps at that cap
    res, _ = half_map_resolution(halves[0], halves[1], PSIZE, max_freq_invA=w_final)
    if summary["half_map_resolution"] is None:  # crosses where the halves share the start
        assert f"{res.value_A:.1f} Å" in summary["half_map_null_reason"]
        assert res.value_A > 1 / summary["split_max_freq_invA"]
    else:
        assert summary["half_map_resolution"] == res.to_dict()
    written = np.loadtxt(tmp_path / "fsc.csv", delimiter=",", skiprows=1)
    beyond = written[:, 0] > w_final + 1e-9
    assert np.isnan(written[beyond, 1]).all() and np.isfinite(written[~beyond, 1]).all()


def test_the_working_box_follows_the_target_and_the_radius_the_images(tiny_set, tmp_path):
    from cryonb.diagnostics import estimate_particle_radius

    ds = load_simulation(tiny_set)
    run = AbInitioRun(ds, tmp_path, replace(CONFIG, max_res_A=30.0, particle_radius_A=None),
                      progress=False)
    run._prepare()
    # the smallest even box whose Nyquist 2 * 16 * 12 Å / b reaches 30 Å: ceil(12.8) = 13,
    # made even: 14 (Nyquist 27.4 Å)
    assert run.work.box_size == 14 and run.work.pixel_size_A == pytest.approx(BOX * PSIZE / 14)
    assert run.particle_radius_A == pytest.approx(estimate_particle_radius(run.work))
    assert run.qopts.particle_radius_A == run.particle_radius_A
    assert any("estimated from the images" in m for m in run.messages)


def test_no_independent_halves_gives_a_null_resolution_with_its_reason(tiny_set, tmp_path):
    # 6 iterations: 2 common, then the budget ends 4 iterations after the split, fewer than a
    # half needs to have fitted its own data: the "halves" are still the common map
    ds = load_simulation(tiny_set)
    config = replace(CONFIG, max_iterations=6, min_fitted_iterations=5)
    summary = AbInitioRun(ds, tmp_path, config, progress=False).run()
    assert summary["iterations"] == {"common": 2, "half1": 4, "half2": 4}
    assert summary["half_map_resolution_A_0143"] is None
    assert summary["half_map_resolution"] is None
    assert "no independent half-maps" in summary["half_map_null_reason"]
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["half_map_resolution_A_0143"] is None and saved["half_map_null_reason"]
    assert any("none" in line for line in summary_lines(summary))


def test_halves_share_nothing_above_the_split_and_see_disjoint_images(tiny_set, tmp_path):
    ds = load_simulation(tiny_set)
    run = AbInitioRun(ds, tmp_path, CONFIG, progress=False)
    run.run()
    (a, b) = run.halves
    start_a, start_b = a.solver.initial_volume, b.solver.initial_volume
    np.testing.assert_array_equal(start_a, start_b)
    # no Fourier content above the split band limit in the maps the halves start from
    split = run.split_max_freq_invA
    spectrum = np.abs(np.fft.fftshift(np.fft.fftn(start_a))) ** 2
    shells = radial_index(start_a.shape) / (BOX * PSIZE)
    above = spectrum[shells > split + 1e-9].sum() / spectrum.sum()
    assert above < 1e-20, above
    # each half saw only its own images, and the two sets partition the data
    assert np.intersect1d(a.ids, b.ids).size == 0
    assert np.union1d(a.ids, b.ids).size == len(ds)
    assert len(a.dataset) == a.ids.size and len(b.dataset) == b.ids.size
    # they have moved apart where only their own data shaped them
    above_split = fsc(a.solver.volume, b.solver.volume, PSIZE).freq_invA > split
    ft_a, ft_b = np.fft.fftn(a.solver.volume), np.fft.fftn(b.solver.volume)
    mask = np.fft.ifftshift(shells > split)
    diff = np.abs(ft_a[mask] - ft_b[mask]).sum() / np.abs(ft_a[mask]).sum()
    assert above_split.any() and diff > 0.05, diff


def test_the_time_budget_caps_the_common_phase(tiny_set, tmp_path):
    # stages of at least 250 iterations: neither the first stage's images nor the budget's
    # pace end the first stage before the 2 s share of the common phase is used up
    ds = load_simulation(tiny_set)
    config = replace(CONFIG, max_iterations=None, time_limit_min=0.1, first_stage_images=10000,
                     iterations_per_stage=1000, min_fitted_iterations=1000)
    run = AbInitioRun(ds, tmp_path, config, progress=False)
    summary = run.run()
    common_s = run.common.state.elapsed_s
    clock = [r["wall_time_s"] for r in run.common.state.records]
    last_iteration_s = clock[-1] - (clock[-2] if len(clock) > 1 else 0.0)
    # split at the first iteration past a third of the 6 s: the budget is checked after each
    # iteration, so it is passed by at most the last one (not the mean: under load the
    # iterations' lengths differ)
    assert clock[-1] == pytest.approx(common_s)
    assert 2.0 <= common_s <= 2.0 + last_iteration_s + 1e-6
    assert summary["iterations"]["half1"] >= 1
    # split before the first stage ended: the halves start at the band limit fitted so far
    assert summary["split_max_freq_invA"] == pytest.approx(1 / 40.0)


def test_is_schedule_and_learning_rate_continue_across_the_split(tiny_set, tmp_path,
                                                                  monkeypatch):
    from cryonb.objective import MarginalObjective

    seen = []
    evaluate = MarginalObjective.evaluate

    def spy(self, volume, indices, *, iteration, record, **kwargs):
        if record:
            seen.append((self.dataset is run.work, iteration))
        return evaluate(self, volume, indices, iteration=iteration, record=record, **kwargs)

    monkeypatch.setattr(MarginalObjective, "evaluate", spy)
    ds = load_simulation(tiny_set)
    config = replace(CONFIG, first_stage_images=400, max_iterations=30)
    run = AbInitioRun(ds, tmp_path, config, progress=False)
    run.run()
    common = [it for is_common, it in seen if is_common]
    halves = [it for is_common, it in seen if not is_common]
    last, first = max(common), min(halves)
    # the halves go on with the common run's sampling clock (SAGDSolver.sampling_clock:
    # iterations_per_stage per band-limit step plus the iterations into the stage, at most a
    # stage): the common run's last iteration is a stage into the first band limit, the
    # halves' first one starts the next band limit, which is the same time
    assert first in (last, last + 1), (last, first)
    schedule = config.is_schedule()
    for name in ("alpha", "temperature"):
        f = getattr(schedule, name)
        before, at, after = f(last - 1), f(last), f(first)
        # the step across the split is no larger than the step before it (within rounding)
        assert abs(after - at) <= abs(at - before) + 1e-9, (name, before, at, after)
    rows = np.genfromtxt(tmp_path / "history.csv", delimiter=",", names=True, dtype=None,
                         encoding="utf-8")
    eps_common = rows["eps"][rows["phase"] == "common"][-1]
    eps_half = rows["eps"][rows["phase"] == "half1"][0]
    assert eps_half in (eps_common, eps_common / 2)  # at most the schedule's own halving
    # the iteration clock (learning rate) continues too
    assert rows["clock"][rows["phase"] == "half1"][0] == rows["clock"][rows["phase"]
                                                                       == "common"][-1] + 1


def test_a_failed_iteration_leaves_the_last_good_checkpoint(tiny_set, tmp_path, monkeypatch):
    from cryonb.sagd import SAGDSolver

    ds = load_simulation(tiny_set)
    config = replace(CONFIG, checkpoint_every_s=0.0)
    AbInitioRun(ds, tmp_path / "straight", config, progress=False).run()
    calls = {"n": 0}
    heldout = SAGDSolver._heldout_nll

    # held-out evaluations: common iteration 0, then the first iteration of half1 and of half2
    # (a new stage each); the third comes after half2's map and SAG memory update, with half1's
    # step of the same round already taken
    def fail_on_third(self, volume):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return heldout(self, volume)

    monkeypatch.setattr(SAGDSolver, "_heldout_nll", fail_on_third)
    run = AbInitioRun(ds, tmp_path / "failed", config, progress=False)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run.run()
    assert run.halves[0].solver.iteration == 1 and run.halves[1].solver.iteration == 0
    # the checkpoint is the last completed round: the split, both halves at iteration 0
    saved = load_checkpoint(tmp_path / "failed" / "checkpoint.npz")
    assert saved["phase"] == "halves"
    # (3 common iterations: the pace of the 16-iteration budget ends the first stage after
    # 3 of the common phase's 5, and the next band limit is the split's)
    assert json.loads(str(saved["common"]["scalars"]))["iteration"] == 3
    assert all(json.loads(str(saved[h]["scalars"]))["iteration"] == 0
               for h in ("half1", "half2"))
    monkeypatch.setattr(SAGDSolver, "_heldout_nll", heldout)
    AbInitioRun(ds, tmp_path / "failed", config, progress=False).run(resume=True)
    np.testing.assert_array_equal(read_mrc(tmp_path / "failed" / "map.mrc").data,
                                  read_mrc(tmp_path / "straight" / "map.mrc").data)


def test_resume_refuses_other_options_and_keeps_the_schedule_on_a_new_budget(tiny_set,
                                                                             tmp_path, capsys):
    star = str(tiny_set / "particles.star")
    # first stage: 3 epochs (15 iterations) capped at a third of the budget: 3 of 9, 4 of 12
    common = ["--start-res", "40", "--split-res", "30", "--iterations-per-stage", "2",
              "--particle-radius", "50", "--shift-sigma", "5", "--shift-extent", "10",
              "--no-progress", "--out", str(tmp_path)]
    assert cli_main(["reconstruct", star, "--batch-size", "40", "--iterations", "9",
                     *common]) == 0
    capsys.readouterr()
    assert cli_main(["reconstruct", star, "--batch-size", "30", "--iterations", "9", "--resume",
                     *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size = 40 (now 30)" in err[0] and "--resume" not in err[0]
    assert cli_main(["reconstruct", star, "--batch-size", "40", "--iterations", "12",
                     "--resume", *common]) == 0
    err = capsys.readouterr().err
    assert "max_iterations 9 -> 12" in err and "first stage 3 iterations" in err
    assert json.loads((tmp_path / "run.json").read_text())["iterations"]["common"] == 3


def test_a_second_run_on_the_same_folder_is_refused(tiny_set, tmp_path):
    from cryonb.checkpoint import RunLock
    from cryonb.io.errors import CryonbInputError

    ds = load_simulation(tiny_set)
    with RunLock(tmp_path):
        with pytest.raises(CryonbInputError, match=r"another cryonb run \(pid"):
            AbInitioRun(ds, tmp_path, CONFIG, progress=False).run()
    # released afterwards
    with RunLock(tmp_path):
        pass


def _groel_set(path, box, psize, n, snr, seed):
    from cryonb.samples import sample_path
    from cryonb.synthetic.density import DensityParams, density_from_file
    from cryonb.synthetic.particles import read_ctf_table

    truth = density_from_file(sample_path("1aon.pdb.gz"), DensityParams(box, psize))
    simulate_to_files(truth, psize, SimulationParams(n_particles=n, snr=snr),
                      np.random.default_rng(seed), path, progress=False,
                      ctf_table=read_ctf_table(sample_path("ctf_200kV_cryosparc_P12_J24.csv")))
    return truth


def _start_correlation(truth, psize, seed):
    """What the low-passed random start itself scores against the truth (after alignment)."""
    from cryonb.alignment import align_maps
    from cryonb.fourier import lowpass
    from cryonb.sagd import random_spheres

    start = random_spheres(truth.shape[0], np.random.default_rng(seed), mass=truth.sum())
    return align_maps(np.maximum(lowpass(start, psize, 1 / 40), 0.0), truth, psize).correlation


def _assert_recovers(tmp_path, *, box, psize, n, snr, iterations, per_stage, gain, max_res_A,
                     seed=1):
    """Ab initio on a simulated GroEL set: the map must beat the random start's correlation
    with the truth by ``gain`` (and 0.7), cross FSC 0.5 against the truth within
    ``max_res_A``, and a gold-standard figure, when there is one, must not be far better
    than the truth's (0.65 of it)."""
    truth = _groel_set(tmp_path / "data", box, psize, n, snr, seed=seed)
    cfg = AbInitioConfig(iterations_per_stage=per_stage, max_iterations=iterations,
                         particle_radius_A=90.0, shift_sigma_A=8.4, shift_extent_A=20.0,
                         seed=seed)
    summary = AbInitioRun(load_simulation(tmp_path / "data"), tmp_path / "run", cfg,
                          progress=False).run()
    baseline = _start_correlation(truth, psize, seed)
    assert summary["truth_correlation"] > max(0.7, baseline + gain), (summary, baseline)
    assert summary["truth_resolution"]["crossed"]
    assert summary["truth_resolution_A_05"] <= max_res_A
    if summary["half_map_resolution_A_0143"] is None:
        assert summary["half_map_null_reason"]
    else:
        assert summary["half_map_resolution_A_0143"] > 0.65 * summary["truth_resolution_A_05"]


def test_abinitio_recovers_a_small_groel_against_the_truth(tmp_path):
    """GroEL-GroES (1AON) at 24 px / 14.9 Å (Nyquist 29.9 Å), 600 particles at SNR 0.1, an
    iteration budget of 60 (deterministic for the seed, whatever the machine's load).

    Measured (seed 1): correlation with the truth 0.787 after alignment, against 0.423 for the
    low-passed random start; FSC 0.5 against the truth 41.7 Å (capped at the fitted 29.9 Å);
    half-map FSC 0.143 32.4 Å (seed 2: 0.768 / 0.464, 41.3 Å, 31.8 Å).  The bounds leave
    room for rounding-level differences between machines, not for a failed recovery: a map
    that kept the start's shape stays near its correlation (the 16-px test problem, where
    nothing is learnt, ends within 0.01 of its start), a wrong-handed or misaligned one far
    below 0.7; the start itself scores 152 Å at FSC 0.5.
    """
    # the gold-standard figure is measured at 0.78 of the truth's: the halves share the
    # common map's errors below the split
    _assert_recovers(tmp_path, box=24, psize=14.93, n=600, snr=0.1, iterations=60,
                     per_stage=10, gain=0.2, max_res_A=55.0)


@pytest.mark.slow
@pytest.mark.timeout(2700)  # 120 iterations at 32 px: 24 min measured with load 5 on 2 cores
def test_abinitio_recovers_groel_from_a_random_start(tmp_path):
    """GroEL-GroES (1AON) at 32 px / 11.2 Å (Nyquist 22.4 Å), SNR 0.05, 800 particles, an
    iteration budget of 120 (deterministic for the seed, so the result does not depend on the
    machine's load as a time budget's did; since issue 14 the stages are paced on the budget,
    which changed the split of the 120 iterations: the figures below were measured before and
    the bounds still hold, 860 s on 2026-12-03 under load 4-5).

    Measured (seed 1, 2026-12-02): correlation with the truth 0.784 after alignment, against
    0.408 for the low-passed random start; FSC 0.5 against the truth 32.1 Å, capped at the
    fitted 22.4 Å; the half-map FSC 0.143 fell at 30.6 Å, just coarser than the split (30 Å),
    so the run reported no gold-standard figure.  Bounds: the correlation must clear the start
    by 0.25 and 0.7 (0.08 below the measurement: rounding-level differences between machines
    move it by < 0.01; a recovery that failed stays within a few hundredths of the start, as
    the 16-px test problem does), FSC 0.5 within 40 Å (25 % above the measurement; the start
    itself scores 147 Å).
    """
    _assert_recovers(tmp_path, box=32, psize=11.2, n=800, snr=0.05, iterations=120,
                     per_stage=15, gain=0.25, max_res_A=40.0)


def test_known_pose_cli_matches_the_truth(tiny_set, tmp_path):
    assert cli_main(["reconstruct", str(tiny_set / "particles.star"), "--out", str(tmp_path),
                     "--known-poses", "--no-progress"]) == 0
    rec = read_mrc(tmp_path / "map.mrc")
    truth = read_mrc(tiny_set / "truth.mrc").data
    curve = fsc(rec.data, truth, PSIZE)
    assert curve.fsc[1:6].min() > 0.9, curve.fsc
    assert (tmp_path / "half1.mrc").exists() and (tmp_path / "fsc.png").exists()


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(tiny_set, tmp_path):
    args = [sys.executable, "-m", "cryonb.cli", "reconstruct", str(tiny_set / "particles.star"),
            "--start-res", "40", "--split-res", "30", "--iterations-per-stage", "4",
            "--batch-size", "40", "--particle-radius", "50", "--shift-sigma", "5",
            "--shift-extent", "10", "--iterations", "16", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*args, "--out", str(tmp_path / "straight")], check=True, env=env,
                   capture_output=True, timeout=900)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed), "--checkpoint-min", "0.002"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not (killed / "checkpoint.npz").exists():
        time.sleep(0.2)
    time.sleep(3.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "map.mrc").exists(), "the run finished before it could be killed"
    subprocess.run([*args, "--out", str(killed), "--resume"], check=True, env=env,
                   capture_output=True, timeout=900)
    np.testing.assert_array_equal(read_mrc(killed / "map.mrc").data,
                                  read_mrc(tmp_path / "straight" / "map.mrc").data)
    shutil.rmtree(killed)


def test_posteriors_of_the_run_equal_the_direct_sum(tiny_set, tmp_path):
    """``AbInitioRun.posteriors`` (what notebook 03 browses) evaluates every quadrature point:
    its per-image log-likelihood equals the log-sum-exp of the direct reference sum of Eq. 4
    over the same images, noise sigma, model and quadrature."""
    from scipy.special import logsumexp

    from cryonb.image_model import ImageModel
    from cryonb.likelihood import reference_log_joint

    ds = load_simulation(tiny_set)
    run = AbInitioRun(ds, tmp_path / "post", CONFIG, progress=False)
    ids = np.arange(5)
    truth = np.asarray(ds.truth.volume, np.float64)
    result = run.posteriors(truth, ids, max_freq_invA=1 / 30)
    work = run.work
    assert (result.n_evaluated == result.quadrature.size).all()
    model = ImageModel(work.box_size, work.pixel_size_A, max_freq_invA=1 / 30)
    joint = reference_log_joint(model, model.projector.volume_to_fourier(truth),
                                work.images(ids), work.ctf.subset(ids),
                                work.estimate_noise_sigma(), result.quadrature)
    direct = logsumexp(joint.reshape(len(ids), -1), axis=1)
    # float32 scores over ~200 Fourier pixels: agreement to 1e-5 of the log-likelihood's size
    np.testing.assert_allclose(result.log_likelihood, direct, rtol=1e-5,
                               atol=1e-5 * np.abs(direct).max())


def test_is_cooling_runs_the_schedule_clock_faster():
    """``is_schedule_for(n, c)`` at iteration t is the uncooled schedule at c t (alpha, T),
    with the chirality flip's end kept; the default cooling is the config's."""
    from cryonb.config import is_schedule_for

    slow, fast = is_schedule_for(30), is_schedule_for(30, 2.5)  # delays 10 and 4: exact
    for t in (12, 40, 100, 400):  # past the delays (where both clamp to their start)
        assert fast.alpha(t) == pytest.approx(slow.alpha(2.5 * t), rel=1e-12)
        assert fast.temperature(t) == pytest.approx(slow.temperature(2.5 * t), rel=1e-12)
    assert fast.chirality_flip_until == slow.chirality_flip_until
    default = AbInitioConfig().is_schedule()
    assert default == is_schedule_for(30, AbInitioConfig().is_cooling)
    with pytest.raises(ValueError, match="cooling"):
        is_schedule_for(30, 0.0)
