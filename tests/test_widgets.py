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
    assert not view.state.low_pass_on and view.low_pass.disabled  # off at the start
    np.testing.assert_array_equal(view.filtered_volumes()[0], noisy)
    view.low_pass.value = 12.0  # Å; Nyquist is 4 Å: moving the slider turns the filter on
    assert view.state.low_pass_on and view.low_pass_on.value and not view.low_pass.disabled
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
    view.low_pass_on.value = False  # the checkbox: back to the maps as they are
    assert view.low_pass.disabled and view.low_pass_resolution_A is None
    np.testing.assert_array_equal(view.isosurfaces[0].volume, noisy)
    assert "low-pass" not in view.figure.axes[0].get_title()
    # started on at a resolution (a run's fitted band limit), one iso-level for both maps
    on = VolumeViewer([noisy, _offset_blob(24)], 2.0, low_pass_A=12.0, iso_level=0.4)
    assert on.state.low_pass_on and on.low_pass.value == pytest.approx(12.0)
    np.testing.assert_allclose(on.filtered_volumes()[0], filtered)
    np.testing.assert_allclose(on.isosurfaces[0].volume, filtered, rtol=1e-6)
    assert [v.level.value for v in on.isosurfaces] == pytest.approx([0.4, 0.4])
    with pytest.raises(ValueError, match="iso-levels"):
        VolumeViewer([noisy, noisy], 2.0, iso_level=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one box"):
        VolumeViewer([noisy, noisy[:20, :20, :20]], 2.0, show_3d=False)


def test_isosurface_frames_the_surface_and_looks_from_above_the_side():
    """The blob of radius sqrt(20 ln 2) = 3.7 px at level 0.5, centred (5, -3, 2) px: the
    voxels above the level reach 5 + 3 = 8 px from the centre along x, so the view spans
    1.05 * 8 px * 2 Å + one 2 Å voxel = 18.8 Å, not the box's 32 Å."""
    from cryonb.viz.maps import normalised_map
    from cryonb.widgets.volume import surface_half_width_A

    vol = _offset_blob()
    assert surface_half_width_A(vol, 0.5, 2.0) == pytest.approx(18.8)
    view = isosurface(vol, 2.0, level=0.5)
    assert view.figure.xlim == pytest.approx((-18.8, 18.8)) and "±19 Å" in view.caption.value
    assert not view.figure.style["box"]["visible"] and not view.figure.style["axes"]["visible"]
    # camera at elevation 45 deg, distance 1.4: (0, 1.4 sin 45, 1.4 cos 45)
    np.testing.assert_allclose(view.figure.camera.position, (0.0, 0.7 * np.sqrt(2),
                                                             0.7 * np.sqrt(2)), atol=1e-12)
    whole = isosurface(vol, 2.0, level=0.5, tight=False, show_axes=True)
    assert whole.figure.xlim == pytest.approx((-32.0, 32.0)) and whole.figure.style["box"][
        "visible"]
    view.show_map(np.pad(vol, 8), 2.0, level=0.5)  # a 48-px box: the same surface, same span
    assert view.figure.xlim == pytest.approx((-18.8, 18.8))
    z = normalised_map(3.0 * vol + 7.0)
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)
    np.testing.assert_allclose(z, normalised_map(vol), atol=1e-12)


def test_isosurface_set_volume_keeps_the_level_in_range():
    view = isosurface(_offset_blob(), 2.0, level=0.9)
    assert view.mesh.triangles.dtype == np.uint32  # WebGL draws no int64 indices
    view.set_volume(_offset_blob() * 0.5)  # max 0.5 < old level
    assert view.level.max == pytest.approx(0.5, rel=1e-3) and view.level.value <= 0.5
    view.level.value = 0.25
    assert len(view.mesh.x) > 0 and view.mesh.triangles.dtype == np.uint32


# ----------------------------------------------------------------------------- ParticleBrowser
def test_particle_browser_pages_filters_and_selection():
    """The state keeps dataset indices (from 0) and Å; the controls, the table and the titles
    number pages and particles from 1 and show defoci in µm."""
    ds = _particles()
    view = ParticleBrowser(ds, page_size=6)
    s = view.state
    assert (s.n_listed, s.n_pages, s.page, s.selected) == (20, 4, 0, 0)
    assert (view.page.value, view.page.min, view.page.max, view.particle.value) == (1, 1, 4, 1)
    assert "#6" in view.table.value and "#7" not in view.table.value  # particles 1 .. 6
    assert "page 1 of 4" in view.info.value and "selected #1." in view.info.value
    assert [ax.get_title().split()[0] for ax in view.page_figure.axes[:2]] == ["#1", "#2"]
    before = view.page_image.value
    view.page.value = 3  # control -> state (page index 2); the selection follows the page
    assert s.page == 2 and s.selected == 12 and view.particle.value == 13
    assert view.page_image.value != before and "#13" in view.table.value
    ctf_before = view.ctf_image.value
    view.particle.value = 4  # jump to particle 4 (dataset index 3): page 1
    assert s.selected == 3 and s.page == 0 and view.page.value == 1
    assert view.ctf_image.value != ctf_before
    # particle 4's CTF: defocus U = 10000 + 3 * 1000 Å = 1.30 µm, V 200 Å less
    assert view.ctf_figure.axes[0].get_title().startswith("defocus U 1.30 µm, V 1.28 µm")
    assert "<td" in view.table.value and "padding" in view.table.value
    assert "1.300" in view.table.value and "13000" not in view.table.value  # µm in the table
    # defocus filter on the mean (U + V) / 2 = 0.99, 1.09, ..., 2.89 µm: 9 particles
    view.defocus.value = (2.0, 2.89)  # µm
    assert s.defocus_range_A == pytest.approx((20000.0, 28900.0))
    assert s.n_listed == 9 and s.n_pages == 2 and view.page.max == 2
    assert np.all(view.mean_defocus_A()[view.listed] >= 20000.0 - 1e-6)
    assert view.state.selected in view.listed  # moved onto the filtered page
    s.defocus_range_A = (15000.0, 15500.0)  # state -> control; nothing passes
    assert view.defocus.value == pytest.approx((1.5, 1.55))
    assert s.n_listed == 0 and "0 of 20" in view.info.value
    assert "outside the defocus filter" in view.info.value
    assert view.info.value.endswith("(outside the defocus filter). "
                                    "20 particles, 24 px at 4 Å/px")  # no file path


def test_particle_browser_low_pass_and_posterior():
    ds = _particles()
    view = ParticleBrowser(ds, page_size=4)
    assert view.state.low_pass_A == pytest.approx(20.0)  # the default shows the particles
    assert ParticleBrowser(ds, low_pass_A=None).state.low_pass_A == pytest.approx(8.0)  # Nyquist
    assert "No posterior yet" in view.posterior_note.value
    before = view.page_image.value
    view.low_pass.value = 30.0
    assert view.state.low_pass_A == pytest.approx(30.0) and view.page_image.value != before
    quad = Quadrature.from_counts(60, 6)
    rng = np.random.default_rng(2)
    logp = np.log(rng.dirichlet(np.ones(quad.n_directions), size=3))
    logp[:, :20] = -np.inf  # not evaluated
    res = LikelihoodResult(
        log_likelihood=np.zeros(3), log_marginal_directions=logp,
        log_marginal_inplane=np.full((3, 6), -np.log(6)), log_marginal_shifts=np.zeros((3, 1)),
        map_direction=np.argmax(logp, 1), map_inplane=np.zeros(3, int),
        map_shift=np.zeros(3, int), n_evaluated=np.full(3, 40 * 6), quadrature=quad)
    view.set_likelihood_result(res, indices=[5, 1, 2])  # rows are particles 5, 1, 2 (from 0)
    assert "not among" in view.posterior_note.value  # dataset index 0 is selected
    view.particle.value = 2  # particle 2 = dataset index 1
    assert view.posterior_note.value == "" and view.posterior_figure is not None
    assert "particle #2" in view.posterior_figure.axes[0].get_title()
    legend = [t.get_text() for t in view.posterior_figure.axes[0].get_legend().get_texts()]
    assert any(t.startswith("true") for t in legend) and any(t.startswith("mode") for t in legend)
    with pytest.raises(ValueError, match="indices"):
        view.set_likelihood_result(res, indices=[0, 1])


def test_particle_browser_on_real_particles():
    ds = Dataset.from_star(real_data_path("cryodrgn_empiar10076/empiar_10076_7.star"))
    view = ParticleBrowser(ds.fourier_cropped(64), page_size=4)
    assert view.state.n_listed == 7 and view.state.n_pages == 2
    assert view.page_image.value[:4] == b"\x89PNG" and "1.530" in view.table.value
    star = real_data_path("cryodrgn_empiar10076/empiar_10076_7.star")
    assert str(star.parent) not in view.info.value and "empiar" not in view.info.value


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


def test_dashboard_status_follows_a_foreground_run_and_an_early_finish():
    """``solver.run()`` in the cell: the status reads running, and when a rule other than the
    budget stops the run (here a stop at iteration 3 of a 50-iteration budget), finished with
    the reason; the ETA then states what was used (4 of 50 iterations = 8 %), not the last
    estimate of time left."""
    def plateau(solver, record):
        if record["iteration"] == 3:
            solver.stop("held-out NLL stopped improving (test)")

    solver = _solver(max_iterations=50, callback=plateau)
    view = SolverDashboard(solver, redraw_interval_s=0.0, show_3d=False)
    seen = []
    view.monitor.observe(lambda c: seen.append(c["new"]), names="status")
    assert view.monitor.status == "ready"
    solver.run(max_steps=2, progress=False)
    assert view.monitor.status == "running" and seen == ["running"]
    assert view.panels.eta.value.startswith("ETA")
    solver.run(progress=False)  # stops after iteration 3 (the 4th)
    assert solver.iteration == 4 and view.monitor.status == "finished"
    assert view.monitor.message == "held-out NLL stopped improving (test)"
    assert view.panels.eta.value.startswith("finished after")
    assert "(8 % of 50 iterations): held-out NLL stopped" in view.panels.eta.value
    assert "ETA" not in view.panels.eta.value
    assert "<b>finished</b>" in view.status.value


def test_dashboard_run_in_the_foreground_ends_finished():
    solver = _solver(max_iterations=6)
    view = SolverDashboard(solver, redraw_interval_s=600.0, show_3d=False)
    seen = []
    view.monitor.observe(lambda c: seen.append(c["new"]), names="status")
    volume = view.run()
    assert volume.shape == (16, 16, 16) and solver.iteration == 6
    assert seen[0] == "running" and view.monitor.status == "finished"
    assert view.monitor.message.startswith("reached max_iterations")
    # the final redraw happened although the interval is 600 s, and the ETA is the end
    assert "iteration 6" in view.map_figure.axes[0].get_title()
    assert view.panels.eta.value.startswith("finished after") and "100 % of 6" in \
        view.panels.eta.value
    assert not view.running and not view.start_button.disabled


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


# ----------------------------------------------------------------------------- issue 16
def _tiny_blobs(box=16):
    rng = np.random.default_rng(0)
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((box,) * 3)
    for c in [(-3, 0, 1), (2, 2, -2), (0, -3, -2), (3, -1, 3), (-1, 3, 2)]:
        vol += rng.uniform(0.5, 1.5) * np.exp(
            -((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 1.2**2))
    return vol.astype(np.float32)


RECONSTRUCT = ["--start-res", "40", "--split-res", "30", "--iterations-per-stage", "3",
               "--batch-size", "40", "--particle-radius", "50", "--shift-sigma", "5",
               "--shift-extent", "10", "--iterations", "12", "--min-fitted-iterations", "2",
               "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder made by ``cryonb reconstruct`` on 120 simulated particles (16 px, 12 Å;
    the tiny problem of test_abinitio.py, fewer iterations): about 10 s."""
    from cryonb.cli import main as cli_main
    from cryonb.synthetic.particles import SimulationParams, simulate_to_files

    root = tmp_path_factory.mktemp("tiny_run")
    simulate_to_files(_tiny_blobs(), 12.0, SimulationParams(
        n_particles=120, snr=1.0, shift_sigma_A=5.0, bfactor_A2=50.0,
        defocus_range_A=(8000.0, 20000.0)), np.random.default_rng(0), root / "data",
        progress=False)
    assert cli_main(["reconstruct", str(root / "data" / "particles.star"), "--out",
                     str(root / "run"), *RECONSTRUCT]) == 0
    return root


def test_budget_progress_and_eta():
    from cryonb.widgets import budget_progress
    from cryonb.widgets.dashboard_panels import format_duration

    p = budget_progress(25.0, 10, time_limit_s=100.0)
    assert (p.fraction, p.remaining_s) == (0.25, 75.0)
    assert p.text() == "ETA 1 min 15 s (25 % of 1 min 40 s)"
    p = budget_progress(20.0, 10, max_iterations=40)  # 2 s per iteration, 30 to go
    assert (p.fraction, p.remaining_s, p.budget) == (0.25, 60.0, "40 iterations")
    p = budget_progress(20.0, 10, time_limit_s=50.0, max_iterations=40)  # the time ends first
    assert (p.fraction, p.remaining_s) == (0.4, 30.0) and p.budget == "50 s or 40 iterations"
    p = budget_progress(3.0, 2)
    assert np.isnan(p.fraction) and "ETA unknown" in p.text()
    assert [format_duration(s) for s in (4.24, 45, 200, 3900)] == [
        "4.2 s", "45 s", "3 min 20 s", "1 h 05 min"]


def test_dashboard_draws_the_surface_snapshots_per_band_limit_and_eta():
    solver = _solver(max_iterations=8)
    view = SolverDashboard(solver, redraw_interval_s=0.0)
    panels = view.panels
    assert np.ptp(np.asarray(panels.iso.mesh.x)) < 5  # a placeholder ball before any map
    solver.run(progress=False)
    # 3 iterations per stage at 0.05, 0.075, 0.1 1/Å: one snapshot per band limit
    assert [round(s[2], 4) for s in panels.snapshots] == [0.05, 0.075, 0.1]
    assert [s[1].split("\n")[1] for s in panels.snapshots] == ["20.0 Å", "13.3 Å", "10.0 Å"]
    times = [s[3] for s in panels.snapshots]
    assert times == sorted(times) and times[0] == solver.state.records[0]["wall_time_s"]
    assert [ax.get_title() for ax in panels.strip_figure.axes] == [
        s[1] for s in panels.snapshots]
    # the iso-surface is the final map's at its 2 % level, in Å about the centre
    from cryonb.widgets import default_iso_level, isosurface_mesh

    assert panels.iso.level.value == pytest.approx(default_iso_level(solver.volume), rel=1e-5)
    verts, _ = isosurface_mesh(solver.volume.astype(np.float32), panels.iso.level.value, 4.0)
    np.testing.assert_allclose(np.asarray(panels.iso.mesh.x), verts[:, 0], rtol=1e-5)
    from cryonb.widgets.volume import surface_half_width_A

    half = surface_half_width_A(solver.volume, panels.iso.level.value, 4.0)
    assert 4 * 4.0 <= half <= 32.0  # at most the box: 16 px * 4 Å / 2
    assert panels.iso.figure.xlim == pytest.approx((-half, half))
    # budget: 8 of 8 iterations
    assert panels.progress_bar.value == 1.0 and "100 % of 8 iterations" in panels.eta.value
    # known poses: no importance sampler, every point evaluated
    assert [r["fraction_evaluated"] for r in panels.domain_rows] == [1.0] * 8
    assert np.isnan(panels.domain_rows[0]["fraction_directions"])  # no sampler: unknown
    assert panels.fsc_curve is None  # a bare solver has no halves


def test_dashboard_on_a_job_shows_the_half_set_fsc_and_points_per_domain(tiny_run, tmp_path):
    from cryonb.abinitio import AbInitioConfig, AbInitioRun
    from cryonb.io import read_mrc
    from cryonb.metrics import fsc
    from cryonb.synthetic.particles import load_simulation

    config = AbInitioConfig(start_res_A=40.0, split_res_A=30.0, iterations_per_stage=3,
                            batch_size=40, particle_radius_A=50.0, shift_sigma_A=5.0,
                            shift_extent_A=10.0, max_iterations=12, min_fitted_iterations=2)
    run = AbInitioRun(load_simulation(tiny_run / "data"), tmp_path / "run", config,
                      progress=False)
    view = SolverDashboard(run, redraw_interval_s=0.0, show_3d=False)
    summary = run.run()  # in the foreground: every record redraws
    # the job writes no record after its loop: at its last one the budget (12 iterations)
    # was used, so the status says the final poses and outputs follow
    assert view.monitor.status == "finishing" and "final poses" in view.monitor.message
    panels = view.panels
    out = tmp_path / "run"
    h1, h2 = (read_mrc(out / f"sagd_half{i}.mrc").data for i in (1, 2))
    expected = fsc(h1, h2, summary["pixel_size_A"], max_freq_invA=summary["final_max_freq_invA"])
    np.testing.assert_allclose(panels.fsc_curve.fsc, expected.fsc, atol=1e-5)
    assert panels.fsc_figure.axes[0].child_axes  # the Å axis
    # importance sampling: per domain, fractions in (0, 1], below 1 somewhere by the end
    rows = [r for r in panels.domain_rows if "fraction_directions" in r]
    assert rows and all(0 < r[f"fraction_{d}"] <= 1 for r in rows
                        for d in ("directions", "inplane", "shifts"))
    assert min(r["fraction_directions"] for r in rows) < 1.0
    # snapshots: the common start's band limits and the halves' (half1 stands for both)
    bands = [round(1 / s[2], 1) for s in panels.snapshots]
    assert bands[:2] == [40.0, 33.3] and bands == sorted(bands, reverse=True)
    assert "of 12 iterations" in panels.eta.value


def test_projection_matching_prefers_the_true_pose(tiny_problem):
    from cryonb.reprojection import projection_matching, reproject

    p = tiny_problem(box=16, n_img=6, sigma=0.0, seed=3)
    rot, shifts = p.quad.rotations()[p.true_r], p.quad.shifts_A[p.true_s]
    ds = Dataset.from_arrays(p.images, p.model.pixel_size_A, ctf=p.ctf, rotations=rot,
                             shifts_A=shifts)
    w = p.model.max_freq_invA
    true = projection_matching(p.vol, p.model.pixel_size_A, ds, max_freq_invA=w)
    # noiseless images of the same forward model: reprojection = image
    np.testing.assert_allclose(true.correlation, 1.0, atol=1e-6)
    np.testing.assert_allclose(true.reprojections, true.images, atol=1e-6 * np.abs(
        true.images).max())
    wrong = projection_matching(p.vol, p.model.pixel_size_A, ds, max_freq_invA=w,
                                rotations=np.roll(rot, 1, axis=0), shifts_A=shifts)
    assert (true.correlation > wrong.correlation + 0.2).all(), wrong.correlation
    # with noise the true pose still wins for every particle
    noisy = Dataset.from_arrays(p.images + np.random.default_rng(0).normal(
        0, p.images.std(), p.images.shape), p.model.pixel_size_A, ctf=p.ctf, rotations=rot,
        shifts_A=shifts)
    a = projection_matching(p.vol, p.model.pixel_size_A, noisy, max_freq_invA=w)
    b = projection_matching(p.vol, p.model.pixel_size_A, noisy, max_freq_invA=w,
                            rotations=np.roll(rot, 1, axis=0), shifts_A=shifts)
    assert (a.correlation > b.correlation).all() and (a.correlation > 0.4).all()
    # a map twice as dense: same correlation, half the scale
    double = projection_matching(2 * p.vol, p.model.pixel_size_A, ds, max_freq_invA=w)
    np.testing.assert_allclose(double.scale, true.scale / 2, rtol=1e-9)
    assert reproject(p.vol, p.model.pixel_size_A, rot[:2]).shape == (2, 16, 16)


def test_run_viewer_on_a_run_folder(tiny_run):
    from cryonb.dataset import Dataset as DS
    from cryonb.io import read_mrc
    from cryonb.metrics import fsc
    from cryonb.viz import direction_histogram
    from cryonb.widgets import RunViewer

    out = tiny_run / "run"
    summary = __import__("json").loads((out / "run.json").read_text())
    view = RunViewer(out, iso_size_px=120)
    assert view.message.value == ""
    # maps: the map and the gold-standard halves, one iso-surface each
    assert view.volumes.titles == ["map", "half1", "half2"] and len(view.volumes.isosurfaces) == 3
    np.testing.assert_array_equal(view.volumes.volumes[1], read_mrc(out / "half1.mrc").data)
    before = view.volumes.image.value
    view.volumes.index.value = 3  # a slider moved: new sections
    assert view.volumes.image.value != before
    # FSC: the gold standard, recomputed from the files with the run's cap, as in fsc.csv
    w = summary["final_max_freq_invA"]
    expected = fsc(read_mrc(out / "half1.mrc").data, read_mrc(out / "half2.mrc").data,
                   summary["pixel_size_A"], max_freq_invA=w)
    np.testing.assert_allclose(view.fsc_curve.fsc, expected.fsc, atol=1e-6)
    table = pd.read_csv(out / "fsc.csv")
    np.testing.assert_allclose(view.fsc_curve.fsc, table.iloc[:, 1], atol=1e-5)
    before = view.fsc_image.value
    view.fsc_pair.value = view.fsc_pair.options[1]  # the SAGD half-sets
    assert view.fsc_image.value != before and "sagd_half1" in view.fsc_figure.axes[0].get_legend(
        ).get_texts()[0].get_text()
    # orientations: every particle of particles.star in the histogram, each in its bin
    ds = DS.from_star(out / "particles.star")
    counts = view.orientation_fig.axes[0].collections[0].get_array()
    assert float(np.sum(counts)) == len(ds) == 120
    np.testing.assert_array_equal(np.asarray(counts).reshape(18, 36),
                                  direction_histogram(ds.rotations).counts)
    # projection matching: page 1 then page 3 (pages and particles counted from 1),
    # correlations of real reprojections
    assert view.page.value == 1 and list(view.match.indices) == list(range(6))
    assert view.particles_figure.axes[0].get_title().startswith("#1 ")
    assert np.median(view.match.correlation) > 0.3, view.match.correlation
    view.page.value = 3
    assert list(view.match.indices) == list(range(12, 18))
    assert view.page.max == 20 and view.particles_image.value[:4] == b"\x89PNG"


def test_compare_runs_recovers_a_hand_flip(tmp_path):
    from cryonb.io import write_mrc
    from cryonb.widgets import compare_runs

    vol = _tiny_blobs(20)
    for name, data in (("a", vol), ("b", vol[:, :, ::-1].copy())):
        (tmp_path / name).mkdir()
        write_mrc(tmp_path / name / "map.mrc", data, 10.0)
    view = compare_runs(tmp_path / "a", tmp_path / "b", show_3d=False)
    assert view.score.flipped and view.score.correlation > 0.97
    assert view.score.curve.fsc[1:6].min() > 0.95
    assert "other hand" in view.widget.children[0].value
    same = compare_runs(tmp_path / "a", tmp_path / "a", show_3d=False)
    assert not same.score.flipped and same.score.correlation > 0.99


def _spread_blobs(box=24, scale=2.0, sigma_px=2.0):
    """The five blobs of :func:`_tiny_blobs`, twice as far apart and wider: a map whose
    orientation a 24-px search can pin down."""
    rng = np.random.default_rng(0)
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((box,) * 3)
    for c in [(-3, 0, 1), (2, 2, -2), (0, -3, -2), (3, -1, 3), (-1, 3, 2)]:
        cx, cy, cz = (scale * v for v in c)
        vol += rng.uniform(0.5, 1.5) * np.exp(
            -((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma_px**2))
    return vol.astype(np.float32)


def test_compare_runs_recovers_a_known_rotation_shift_and_hand(tmp_path):
    """B is A moved by a known superposition T0 (mirror, rotation R0 = 40 deg about an oblique
    axis, shift t0 Å; :func:`cryonb.alignment.apply_alignment`).  The superposition of B on
    A must undo it: with M = diag(-1, 1, 1), apply(B, T)(x) = A(M R0^T (M R^T (x - t) - t0))
    = A(x) for R = M R0^T M and t = -M R0^T t0, same mirror (that T restores A to
    correlation 0.9999 is checked first, so the formula is not the thing under test).
    Margins: 5 deg, the local search's first step (360 / sqrt(1500) / 2 = 4.6 deg; a search
    stuck on its coarse grid is >= 10 deg off in-plane) and 5 Å, half a 10 Å voxel."""
    from cryonb.alignment import Alignment, apply_alignment
    from cryonb.io import write_mrc
    from cryonb.rotations import axis_angle_to_matrix
    from cryonb.widgets import compare_runs

    vol = _spread_blobs()
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    r0 = np.asarray(axis_angle_to_matrix(axis * np.deg2rad(40.0))).reshape(3, 3)
    t0 = np.array([12.0, -8.0, 5.0])
    moved = apply_alignment(vol, Alignment(r0, t0, True, 0.0), 10.0)
    m = np.diag([-1.0, 1.0, 1.0])
    expected_r, expected_t = m @ r0.T @ m, -m @ r0.T @ t0
    undone = apply_alignment(moved, Alignment(expected_r, expected_t, True, 0.0), 10.0)
    assert np.corrcoef(undone.ravel(), vol.ravel())[0, 1] > 0.999
    for name, data in (("a", vol), ("b", moved)):
        (tmp_path / name).mkdir()
        write_mrc(tmp_path / name / "map.mrc", data.astype(np.float32), 10.0)
    view = compare_runs(tmp_path / "a", tmp_path / "b", show_3d=False)
    found = view.alignment
    cos = (np.trace(found.rotation.T @ expected_r) - 1) / 2
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert found.flipped and view.score.flipped
    assert angle < 5.0, angle
    np.testing.assert_allclose(found.shift_A, expected_t, atol=5.0)
    assert view.score.correlation == pytest.approx(found.correlation) and \
        found.correlation > 0.98
    # a rotation error of 5 deg (0.087 rad) shifts features 60 Å from the centre by 5.2 Å:
    # a phase error of 2 pi k 5.2 Å, cos = 0.87 at k = 1/60 Å
    k = view.score.curve.freq_invA
    assert view.score.curve.fsc[(k > 0) & (k < 1 / 60)].min() > 0.85
    # (B was written as float32: 6e-8 relative rounding, resampled; 1e-5 of the peak allowed)
    np.testing.assert_allclose(view.score.aligned, apply_alignment(moved, found, 10.0),
                               atol=1e-5 * float(np.abs(moved).max()))
    assert "other hand" in view.widget.children[0].value


def test_open_run_lives_in_run_folder_and_is_re_exported():
    import cryonb.run_folder as rf
    import cryonb.widgets as w
    from cryonb.widgets import run_data

    assert w.open_run is rf.open_run is run_data.open_run
    assert w.FinishedRun is rf.FinishedRun and w.common_grid is rf.common_grid
