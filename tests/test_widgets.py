"""Widgets, headless: controls drive the views and the geometry is in Å about the box centre."""

import numpy as np
import pytest

pytest.importorskip("ipyvolume")
pytest.importorskip("skimage")

from cryonb.widgets import default_iso_level, isosurface


def _offset_blob(n=32, centre_px=(5, -3, 2)):
    k = np.arange(n) - n // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    cx, cy, cz = centre_px
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 20.0)


def test_isosurface_is_placed_in_angstrom_about_the_centre():
    view = isosurface(_offset_blob(), 2.0, level=0.5)
    centroid = [float(np.mean(getattr(view.mesh, a))) for a in "xyz"]
    np.testing.assert_allclose(centroid, [10.0, -6.0, 4.0], atol=0.05)  # (5, -3, 2) px * 2 Å


def test_level_slider_recomputes_the_surface():
    view = isosurface(_offset_blob(), 2.0, level=0.3)
    radius_low = np.ptp(np.asarray(view.mesh.x))
    view.level.value = 0.9
    radius_high = np.ptp(np.asarray(view.mesh.x))
    # exp(-r^2/20) = L at r = sqrt(-20 ln L): diameters 2*4.91 and 2*1.45 px, times 2 Å
    assert radius_low == pytest.approx(2 * 2 * np.sqrt(-20 * np.log(0.3)), rel=0.05)
    assert radius_high == pytest.approx(2 * 2 * np.sqrt(-20 * np.log(0.9)), rel=0.15)
    assert view.widget.children[0] is view.level


def test_default_level_encloses_two_percent():
    """The level is the 98th percentile: 160 of 8000 distinct values lie above it (an
    interpolated quantile can move the count by at most one voxel), and for N(0, 1) voxels it
    estimates the normal quantile 2.054 with standard error sqrt(p (1 - p) / n) / phi(2.054)
    = 0.032: 4 standard errors allowed."""
    from scipy.stats import norm

    vol = np.random.default_rng(0).normal(size=(20, 20, 20))
    level = default_iso_level(vol)
    assert abs(int((vol > level).sum()) - 160) <= 1
    se = np.sqrt(0.02 * 0.98 / vol.size) / norm.pdf(norm.ppf(0.98))
    assert level == pytest.approx(norm.ppf(0.98), abs=4 * se)
    ramp = np.arange(1000.0).reshape(10, 10, 10)  # 0 .. 999: exactly 50 values above 949.05
    assert default_iso_level(ramp, enclosed_fraction=0.05) == pytest.approx(949.05, abs=1e-9)


# ----------------------------------------------------------------------------- shared problems
import threading  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402

from cryonb.checkpoint import load_checkpoint  # noqa: E402
from cryonb.ctf import CTFParams  # noqa: E402
from cryonb.dataset import Dataset, GroundTruth  # noqa: E402
from cryonb.image_model import ImageModel  # noqa: E402
from cryonb.likelihood import LikelihoodResult  # noqa: E402
from cryonb.objective import KnownPoseObjective  # noqa: E402
from cryonb.quadrature import Quadrature  # noqa: E402
from cryonb.repo_data import real_data_path  # noqa: E402
from cryonb.rotations import random_rotations  # noqa: E402
from cryonb.sagd import SAGDParams, SAGDSolver, random_spheres  # noqa: E402
from cryonb.widgets import (  # noqa: E402
    ISStudyExplorer,
    ParticleBrowser,
    SolverDashboard,
    VolumeViewer,
)


def _particles(n=20, box=24, psize=4.0, seed=0):
    """Noisy projections of random spheres with CTFs of defocus 1.0 .. 2.9 µm."""
    rng = np.random.default_rng(seed)
    volume = random_spheres(box, rng, n_spheres=5, mass=100.0)
    rot = random_rotations(n, rng)
    defocus = np.linspace(10000.0, 29000.0, n)
    ctf = CTFParams(defocus_u_A=defocus, defocus_v_A=defocus - 200.0, defocus_angle_deg=30.0,
                    voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    images = ImageModel(box, psize).forward(volume, rot, None, ctf)
    images = images + rng.normal(0, images.std(), images.shape)
    return Dataset.from_arrays(images.astype(np.float32), psize, ctf=ctf,
                               truth=GroundTruth(volume=volume, rotations=rot))


def _solver(max_iterations=10**6, callback=None):
    """A tiny least-squares problem with known poses (as in test_sagd.py)."""
    rng = np.random.default_rng(0)
    truth = random_spheres(16, rng, n_spheres=6, mass=200.0)
    rot = random_rotations(80, rng)
    images = ImageModel(16, 4.0).forward(truth, rot) + rng.normal(0, 0.05, (80, 16, 16))
    ds = Dataset.from_arrays(images.astype(np.float32), 4.0, rotations=rot)
    params = SAGDParams(batch_size=20, n_heldout=10, start_max_freq_invA=0.05,
                        target_max_freq_invA=0.1, freq_step_invA=0.025, iterations_per_stage=3,
                        max_iterations=max_iterations, heldout_every=2)
    return SAGDSolver(KnownPoseObjective(ds, 0.05), n_images=80, box_size=16, params=params,
                      rng=np.random.default_rng(1), initial_mass=200.0, callback=callback)


def _wait_for(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


# ----------------------------------------------------------------------------- VolumeViewer
def test_volume_viewer_controls_drive_the_state_and_the_picture():
    view = VolumeViewer({"blob": _offset_blob(24), "copy": _offset_blob(24) * 2}, 2.0,
                        show_3d=False)
    assert view.widget.children and view.isosurfaces == []
    assert view.state.position == (12, 12, 12) and view.index.value == 12
    assert view.figure.axes[0].get_title().startswith("blob")
    before = view.image.value
    view.index.value = 5  # control -> state -> picture
    assert view.state.index == 5 and view.state.position == (5, 12, 12)
    assert view.image.value != before
    assert view.figure.axes[0].get_title() == "blob: z = -14.0 Å"  # (5 - 12) px * 2 Å
    view.axis.value = "x"  # the slider now moves x, starting from x's position
    assert view.state.axis == "x" and view.index.value == 12
    view.index.value = 20
    assert view.state.position == (5, 12, 20)
    before = view.image.value
    view.contrast.value = (10.0, 60.0)
    assert view.state.contrast == (10.0, 60.0) and view.image.value != before


def test_volume_viewer_state_drives_the_controls():
    view = VolumeViewer(_offset_blob(24), 2.0, show_3d=False)
    view.state.axis = "y"
    assert view.axis.value == "y"
    view.state.position = (3, 7, 9)
    assert view.index.value == 7  # the y index
    view.state.low_pass_A = 10.0
    assert view.low_pass.value == pytest.approx(10.0)
    view.state.index = 99  # clipped into the box
    assert view.state.index == 23 and view.index.value == 23


def test_volume_viewer_low_pass_filters_slices_and_surfaces():
    rng = np.random.default_rng(1)
    noisy = (_offset_blob(24) + rng.normal(0, 0.3, (24,) * 3)).astype(np.float32)
    view = VolumeViewer([noisy, _offset_blob(24)], 2.0, titles=["noisy", "clean"])
    assert len(view.isosurfaces) == 2
    n_vertices = len(view.isosurfaces[0].mesh.x)
    before = view.image.value
    view.low_pass.value = 12.0  # Å; Nyquist is 4 Å
    filtered = view.filtered_volumes()[0]
    # the spectrum, by numpy's own FFT: 12 Å in a 24 px box of 2 Å is 4 Fourier px, kept
    # untouched there; the raised-cosine edge (2 px) leaves nothing from 6 px on.  Margin:
    # float32 rounding of the filtered map (6e-8 relative per voxel, incoherent over the
    # DFT's sum) puts ~1e-8 of max|F| into a coefficient; 1e-5 allowed.  A wrong cutoff
    # leaves ~0.2 max|F| (the noise beyond 6 px, checked below) or changes kept coefficients
    k = np.fft.fftfreq(24) * 24
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    spec_in, spec_out = np.fft.fftn(noisy.astype(np.float64)), np.fft.fftn(filtered)
    tol = 1e-5 * np.abs(spec_in).max()
    assert np.abs(spec_out - spec_in)[radius <= 4].max() < tol
    assert np.abs(spec_out)[radius >= 6].max() < tol
    assert np.abs(spec_in)[radius >= 6].max() > 1e4 * tol  # there was noise to remove
    np.testing.assert_array_equal(view.isosurfaces[0].volume, filtered)
    assert len(view.isosurfaces[0].mesh.x) != n_vertices
    assert view.image.value != before and "low-pass 12.0 Å" in view.figure.axes[0].get_title()
    with pytest.raises(ValueError, match="one box"):
        VolumeViewer([noisy, noisy[:20, :20, :20]], 2.0, show_3d=False)


def test_isosurface_set_volume_keeps_the_level_in_range():
    view = isosurface(_offset_blob(), 2.0, level=0.9)
    assert view.mesh.triangles.dtype == np.uint32  # WebGL draws no int64 indices
    view.set_volume(_offset_blob() * 0.5)  # max 0.5 < old level
    assert view.level.max == pytest.approx(0.5, rel=1e-3) and view.level.value <= 0.5
    view.level.value = 0.25
    assert len(view.mesh.x) > 0 and view.mesh.triangles.dtype == np.uint32


# ----------------------------------------------------------------------------- ParticleBrowser
def test_particle_browser_pages_filters_and_selection():
    ds = _particles()
    view = ParticleBrowser(ds, page_size=6)
    s = view.state
    assert (s.n_listed, s.n_pages, s.page, s.selected) == (20, 4, 0, 0)
    assert view.page.max == 3 and "#5" in view.table.value and "#6" not in view.table.value
    before = view.page_image.value
    view.page.value = 2  # control -> state; the selection follows the page
    assert s.page == 2 and s.selected == 12 and view.particle.value == 12
    assert view.page_image.value != before and "#12" in view.table.value
    ctf_before = view.ctf_image.value
    view.particle.value = 3  # jump to particle 3: page 0
    assert s.selected == 3 and s.page == 0 and view.page.value == 0
    assert view.ctf_image.value != ctf_before
    assert view.ctf_figure.axes[0].get_title().startswith("U 13000 Å")  # particle 3's CTF
    # defocus filter on the mean (U + V) / 2 = 9900, 10900, ..., 28900 Å: 9 particles
    view.defocus.value = (20000.0, 28900.0)
    assert s.defocus_range_A == (20000.0, 28900.0)
    assert s.n_listed == 9 and s.n_pages == 2 and view.page.max == 1
    assert np.all(view.mean_defocus_A()[view.listed] >= 20000.0)
    assert view.state.selected in view.listed  # moved onto the filtered page
    s.defocus_range_A = (15000.0, 15500.0)  # state -> control; nothing passes
    assert view.defocus.value == (15000.0, 15500.0)
    assert s.n_listed == 0 and "0 of 20" in view.info.value
    assert "outside the defocus filter" in view.info.value


def test_particle_browser_low_pass_and_posterior():
    ds = _particles()
    view = ParticleBrowser(ds, page_size=4)
    assert "No posterior yet" in view.posterior_note.value
    before = view.page_image.value
    view.low_pass.value = 20.0
    assert view.state.low_pass_A == pytest.approx(20.0) and view.page_image.value != before
    quad = Quadrature.from_counts(60, 6)
    rng = np.random.default_rng(2)
    logp = np.log(rng.dirichlet(np.ones(quad.n_directions), size=3))
    logp[:, :20] = -np.inf  # not evaluated
    res = LikelihoodResult(
        log_likelihood=np.zeros(3), log_marginal_directions=logp,
        log_marginal_inplane=np.full((3, 6), -np.log(6)), log_marginal_shifts=np.zeros((3, 1)),
        map_direction=np.argmax(logp, 1), map_inplane=np.zeros(3, int),
        map_shift=np.zeros(3, int), n_evaluated=np.full(3, 40 * 6), quadrature=quad)
    view.set_likelihood_result(res, indices=[5, 1, 2])  # rows are particles 5, 1, 2
    assert "not among" in view.posterior_note.value  # particle 0 is selected
    view.particle.value = 1
    assert view.posterior_note.value == "" and view.posterior_figure is not None
    assert "particle #1" in view.posterior_figure.axes[0].get_title()
    legend = [t.get_text() for t in view.posterior_figure.axes[0].get_legend().get_texts()]
    assert any(t.startswith("true") for t in legend) and any(t.startswith("mode") for t in legend)
    with pytest.raises(ValueError, match="indices"):
        view.set_likelihood_result(res, indices=[0, 1])


def test_particle_browser_on_real_particles():
    ds = Dataset.from_star(real_data_path("cryodrgn_empiar10076/empiar_10076_7.star"))
    view = ParticleBrowser(ds.fourier_cropped(64), page_size=4)
    assert view.state.n_listed == 7 and view.state.n_pages == 2
    assert view.page_image.value[:4] == b"\x89PNG" and "15301" in view.table.value


# ----------------------------------------------------------------------------- SolverDashboard
def test_dashboard_receives_callbacks_in_the_foreground():
    seen = []
    solver = _solver(callback=lambda s, r: seen.append(r["iteration"]))
    view = SolverDashboard(solver, redraw_interval_s=0.0)
    assert view.monitor.status == "ready" and view.monitor.n_records == 0
    history_before, map_before = view.history_image.value, view.map_image.value
    solver.run(max_steps=4, progress=False)
    assert seen == [0, 1, 2, 3]  # the previous callback is still called
    m = view.monitor
    assert (m.iteration, m.n_records, len(view.records)) == (4, 4, 4)
    assert m.max_freq_invA == pytest.approx(0.075) and m.resolution_A == pytest.approx(1 / 0.075)
    assert m.fraction_evaluated == 1.0
    records = solver.state.records
    assert m.objective == records[-1]["objective"]  # the latest minibatch objective
    # the held-out NLL of iteration 3 (a stage change) is of the map after that step: compute
    # it again from the objective on the final map (known poses, deterministic)
    assert np.isfinite(records[-1]["heldout_nll"])
    again = solver.objective.evaluate(solver.volume, solver.heldout_indices, gradient=False,
                                      record=False, iteration=4)
    assert m.heldout_nll == pytest.approx(float(again.nll.mean()), rel=1e-12)
    assert view.n_redraws >= 4
    assert view.history_image.value != history_before and view.map_image.value != map_before
    assert "iteration 4" in view.map_figure.axes[0].get_title()
    assert "iteration 4" in view.status.value
    lines = view.history_figure.axes[0].get_lines()
    np.testing.assert_array_equal(lines[0].get_xdata(), [0, 1, 2, 3])  # the 4 iterations
    np.testing.assert_allclose(lines[0].get_ydata(), [r["objective"] for r in records],
                               rtol=1e-12)
    view.detach()
    assert solver.callback is not None and solver.callback is view._previous_callback


def test_dashboard_throttles_redraws():
    solver = _solver()
    view = SolverDashboard(solver, redraw_interval_s=600.0)
    n = view.n_redraws
    solver.run(max_steps=5, progress=False)
    assert view.monitor.iteration == 5 and view.n_redraws == n  # labels live, pictures throttled
    view.redraw_interval.value = 0.0  # control -> monitor
    assert view.monitor.redraw_interval_s == 0.0
    solver.run(max_steps=1, progress=False)
    assert view.n_redraws == n + 1
    view.monitor.redraw_interval_s = 7.5  # monitor -> control
    assert view.redraw_interval.value == 7.5


def test_dashboard_runs_in_a_thread_with_pause_resume_save_stop(tmp_path):
    solver = _solver()
    view = SolverDashboard(solver, checkpoint_path=tmp_path / "ckpt.npz", redraw_interval_s=0.2)
    view.start()
    try:
        assert view.running and view.start_button.disabled and not view.stop_button.disabled
        assert _wait_for(lambda: view.monitor.iteration >= 3)
        view.pause_button.click()
        assert view.monitor.status == "paused" and not view.resume_button.disabled

        def settled():  # the iteration in flight ends, then the solver is held
            before = view.monitor.iteration
            time.sleep(0.3)
            return before == view.monitor.iteration == solver.iteration

        assert _wait_for(settled, 30)
        frozen = view.monitor.iteration
        time.sleep(0.5)
        assert view.monitor.iteration == frozen == solver.iteration  # held between iterations
        view.save_button.click()  # written by the paused solver thread
        assert _wait_for(lambda: (tmp_path / "ckpt.npz").exists(), 10)
        assert _wait_for(lambda: "checkpoint written" in view.monitor.message, 10)
        state = load_checkpoint(tmp_path / "ckpt.npz")
        assert state["volume"].shape == (16, 16, 16)
        view.resume_button.click()
        assert view.monitor.status == "running"
        assert _wait_for(lambda: view.monitor.iteration > frozen + 2)
        assert threading.current_thread() is threading.main_thread()  # we stayed responsive
        view.stop_button.click()
        volume = view.wait(60)
    finally:
        solver.request_stop()
        view.resume()
        view._thread.join(60)
    assert view.monitor.status == "stopped" and not view.running
    assert volume.shape == (16, 16, 16) and view.records[-1]["iteration"] == solver.iteration - 1
    assert not view.start_button.disabled and view.stop_button.disabled
    assert "iteration" in view.map_figure.axes[0].get_title()


def test_dashboard_reports_a_finished_run_and_saves_when_idle(tmp_path):
    solver = _solver(max_iterations=6)
    view = SolverDashboard(solver, checkpoint_path=tmp_path / "c.npz", redraw_interval_s=0.0)
    view.start().wait(60)
    assert view.monitor.status == "finished" and view.monitor.iteration == 6
    assert view.monitor.message.startswith("reached max_iterations")
    view.save_checkpoint()  # nothing running: written at once
    assert load_checkpoint(tmp_path / "c.npz")["volume"].shape == (16, 16, 16)


@pytest.mark.slow
def test_dashboard_follows_an_ab_initio_job(tmp_path):
    from cryonb.abinitio import AbInitioConfig, AbInitioRun
    from cryonb.samples import sample_path
    from cryonb.synthetic.particles import (
        SimulationParams,
        load_simulation,
        read_ctf_table,
        simulate_to_files,
    )

    volume = np.asarray(__import__("cryonb.io", fromlist=["read_mrc"]).read_mrc(
        sample_path("emd_1997_64px.mrc"), mmap=False).data)
    simulate_to_files(volume, 3.15625, SimulationParams(n_particles=60, snr=0.1),
                      np.random.default_rng(0), tmp_path / "sim",
                      ctf_table=read_ctf_table(sample_path("ctf_200kV_cryosparc_P12_J24.csv")),
                      progress=False)
    run = AbInitioRun(load_simulation(tmp_path / "sim"), tmp_path / "run",
                      AbInitioConfig(box_size=16, max_iterations=4, iterations_per_stage=2,
                                     batch_size=20, n_heldout=10, max_res_A=30.0,
                                     split_res_A=35.0), progress=False)
    view = SolverDashboard(run, redraw_interval_s=0.0)
    summary = view.start().wait(600)
    assert summary["status"] == "done" and view.monitor.status == "finished"
    phases = [r["phase"] for r in view.records]
    assert phases[0] == "common" and {"half1", "half2"} <= set(phases)
    view.save_checkpoint()
    assert (tmp_path / "run" / "checkpoint.npz").exists()


# ----------------------------------------------------------------------------- ISStudyExplorer
def _is_table():
    rows = []
    for w in (1 / 40, 1 / 20, 1 / 10):
        for s in (1.0, 3.0, 10.0, 30.0):
            for image in range(3):
                rows.append({"s_B": s, "max_freq_invA": w, "image": image,
                             "relative_error": (-1) ** image * 0.1 / s * (1 + image),
                             "fraction_evaluated": min(1.0, s * 0.002 / w)})
    return pd.DataFrame(rows)


def test_is_study_explorer_sliders_and_readout():
    view = ISStudyExplorer(_is_table())
    assert view.state.s_B == 10.0 and view.state.band_limit == pytest.approx(0.1)  # defaults
    assert "mean |relative error| 0.02 " in view.readout.value  # (1 + 2 + 3) * 0.01 / 3
    before = view.image.value
    view.s_B.value = 3.0  # control -> state -> picture
    assert view.state.s_B == 3.0 and view.image.value != before
    row = view.selected_row()
    assert row["fraction"] == pytest.approx(0.06) and row["speedup"] == pytest.approx(1 / 0.06)
    view.state.band_limit = 1 / 40  # state -> control
    assert view.band_limit.value == pytest.approx(1 / 40)
    assert view.band_limit.label == "1/40.0 Å⁻¹"
    assert "s_B = 3:" in view.figure.axes[2].get_title()


def test_is_study_explorer_takes_xarray_and_other_column_names():
    table = _is_table().rename(columns={"s_B": "ess", "relative_error": "err"})
    averaged = table.groupby(["ess", "max_freq_invA"]).mean().to_xarray()
    view = ISStudyExplorer(averaged, s_B_column="ess", error_column="err")
    assert sorted(view.summary["s_B"].unique()) == [1.0, 3.0, 10.0, 30.0]
    with pytest.raises(KeyError, match="s_B"):
        ISStudyExplorer(table)
