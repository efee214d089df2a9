"""Static pictures (cryonb.viz) and the data checks they rely on (cryonb.diagnostics)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cryonb.ctf import CTFParams
from cryonb.dataset import Dataset
from cryonb.diagnostics import box_for_resolution, contrast_scores
from cryonb.fourier import fft3_centered, frequency_grid_3d
from cryonb.image_model import ImageModel
from cryonb.quadrature import Quadrature
from cryonb.repo_data import real_data_path
from cryonb.rotations import random_rotations
from cryonb.sagd import random_spheres
from cryonb.viz import (
    contrast_limits,
    direction_posterior,
    figure_png,
    history_table,
    is_study_figure,
    is_study_summary,
    is_study_table,
    particle_page_figure,
    solver_history_figure,
    volume_slices_figure,
)
from cryonb.viz._common import lowpass_to_resolution as low_pass


def test_low_pass_keeps_low_and_removes_high_frequencies():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(20, 20, 20))
    out = low_pass(vol, 2.0, 10.0)  # cutoff 1/10 Å^-1 = 4 Fourier px, edge 2 px
    kx, ky, kz = frequency_grid_3d(20)
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    ratio = np.abs(fft3_centered(out)) / np.abs(fft3_centered(vol))
    np.testing.assert_allclose(ratio[r <= 4], 1.0, atol=1e-5)
    assert ratio[r >= 6].max() < 1e-5
    assert np.array_equal(low_pass(vol, 2.0, 4.0), vol.astype(np.float64))  # Nyquist: no-op
    assert low_pass(vol[0], 2.0, 10.0, ndim=2).shape == (20, 20)


def test_contrast_limits_are_percentiles_and_never_empty():
    assert contrast_limits(np.arange(101.0), (10, 90)) == (10.0, 90.0)
    lo, hi = contrast_limits(np.ones(5))
    assert hi > lo


def test_volume_slices_figure_positions_and_titles():
    """Each panel draws the section through ``position`` of its map (numpy indexing of the
    ``[z, y, x]`` array is the truth), grey limits at the 1st / 99th percentiles, axes in Å
    with voxel N//2 at 0 (pixel edges at -8.5 and +7.5 px), and dotted lines at the other two
    sections."""
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(16, 16, 16))
    other = np.exp(vol)  # another grey-scale range
    fig = volume_slices_figure([vol, other], 3.0, titles=["a", "b"], position=(4, 8, 12))
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["a: z = -12.0 Å", "y = +0.0 Å", "x = +12.0 Å"]
    assert titles[3].startswith("b:")
    marks = [(12.0, 0.0), (12.0, -12.0), (0.0, -12.0)]  # (vertical, horizontal) lines, Å
    for row, m in enumerate((vol, other)):
        lo, hi = np.percentile(m, [1.0, 99.0])
        for col, section in enumerate((m[4], m[:, 8], m[:, :, 12])):
            ax = fig.axes[3 * row + col]
            (image,) = ax.get_images()
            np.testing.assert_array_equal(np.asarray(image.get_array()), section)
            np.testing.assert_allclose(image.get_clim(), (lo, hi), rtol=1e-12)
            np.testing.assert_allclose(image.get_extent(), [-25.5, 22.5, 22.5, -25.5])
            v_line, h_line = ax.get_lines()
            assert (v_line.get_xdata()[0], h_line.get_ydata()[0]) == marks[col]
    assert figure_png(fig)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="one shape"):
        volume_slices_figure([vol, vol[:8, :8, :8]], 3.0)


def test_particle_page_figure():
    images = np.random.default_rng(0).normal(size=(5, 16, 16))
    fig = particle_page_figure(images, indices=[10, 11, 12, 13, 14],
                               defocus_A=[1e4, 1.5e4, 2e4, 2.5e4, 3e4], n_cols=3, highlight=12,
                               pixel_size_A=2.0, low_pass_A=8.0)
    assert len(fig.axes) == 6 and fig.axes[1].get_title() == "#11  1.50 µm"
    assert not fig.axes[5].axison  # the empty slot
    assert particle_page_figure(np.zeros((0, 16, 16))).axes[0].texts
    with pytest.raises(ValueError, match="pixel_size_A"):
        particle_page_figure(images, low_pass_A=8.0)


def test_direction_posterior_marks_the_mode_and_the_truth():
    quad = Quadrature.from_counts(100, 4)
    p = np.zeros(quad.n_directions)
    p[7], p[8] = 0.9, 0.1
    rot = quad.rotations_for([7], [0])[0]
    fig = direction_posterior(p, quad, true_rotation=rot, title="x")
    ax = fig.axes[0]
    assert ax.name == "mollweide" and "2 of 100 directions" in ax.get_title()
    r, t = quad.direction_angles_deg
    legend = [txt.get_text() for txt in ax.get_legend().get_texts()]
    assert legend[0] == f"mode (rot {r[7]:.0f}°, tilt {t[7]:.0f}°)"
    assert legend[1] == f"true (rot {r[7]:.0f}°, tilt {t[7]:.0f}°)"  # R @ z is direction 7
    with pytest.raises(ValueError, match="100 directions"):
        direction_posterior(p[:10], quad)


def _records(n, phase=None):
    out = []
    for i in range(n):
        rec = {"iteration": i, "stage": 0, "max_freq_invA": 0.025 + 0.005 * (i // 3),
               "objective": 100.0 / (i + 1), "heldout_nll": np.nan if i % 2 else 90.0 / (i + 1),
               "L": 1.0, "eps": 1.0, "step_size": 1.0, "fraction_evaluated": 1.0 / (i + 1),
               "wall_time_s": float(i), "batch": 0}
        if phase:
            rec["phase"] = phase
        out.append(rec)
    return out


def test_solver_history_figure_from_records_frames_and_phases():
    fig = solver_history_figure(_records(6))
    ax_nll, ax_res, ax_frac = fig.axes
    assert len(ax_nll.get_lines()) == 2  # minibatch + held-out
    np.testing.assert_allclose(ax_res.get_lines()[0].get_ydata()[-1], 1 / 0.03)
    assert ax_frac.get_yscale() == "log"
    job = pd.DataFrame(_records(4, "common") + _records(2, "half1") + _records(2, "half2"))
    table = history_table(job)
    assert table["step"].tolist() == [0, 1, 2, 3, 4, 5, 4, 5]  # halves side by side
    assert len(solver_history_figure(job).axes[1].get_lines()) == 3
    assert solver_history_figure([]).axes[0].texts  # nothing yet


def test_is_study_summary_table_and_figure():
    curve = SimpleNamespace(ess_scales=np.array([1.0, 10.0]),
                            relative_errors=np.array([[[0.1, 0.3]], [[0.01, 0.03]]]),
                            n_evaluated=np.array([[[10, 30]], [[100, 300]]]),
                            quadrature_size=1000)
    table = is_study_table({0.05: curve, 0.1: curve})
    assert len(table) == 8 and set(table.columns) >= {"s_B", "max_freq_invA", "relative_error",
                                                      "fraction_evaluated"}
    summary = is_study_summary(table)
    row = summary[(summary["s_B"] == 10.0) & (summary["band_limit"] == 0.1)].iloc[0]
    assert row["relative_error"] == pytest.approx(0.02) and row["fraction"] == pytest.approx(0.2)
    assert row["speedup"] == pytest.approx(5.0) and row["n"] == 2
    fig = is_study_figure(table, s_B=10.0, band_limit=0.1)
    assert len(fig.axes) == 3 and "s_B = 10" in fig.axes[2].get_title()
    with pytest.raises(KeyError, match="relative_error"):
        is_study_summary(table.drop(columns="relative_error"))


def _white_particles(n=12, box=32, psize=5.0):
    rng = np.random.default_rng(0)
    volume = random_spheres(box, rng, n_spheres=8, radius_fraction=0.15, mass=500.0)
    ctf = CTFParams(defocus_u_A=rng.uniform(15000, 25000, n), defocus_v_A=20000.0,
                    defocus_angle_deg=0.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    images = ImageModel(box, psize).forward(volume, random_rotations(n, rng), None, ctf)
    images = images + rng.normal(0, 0.5 * images.std(), images.shape)
    return Dataset.from_arrays(images.astype(np.float32), psize, ctf=ctf)


def test_contrast_scores_tell_white_from_dark_particles():
    ds = _white_particles()
    assert np.median(contrast_scores(ds)) > 0.2  # simulated in RELION's (white) convention
    np.testing.assert_allclose(contrast_scores(ds.inverted()), -contrast_scores(ds))
    with pytest.raises(ValueError, match="CTF"):
        contrast_scores(Dataset.from_arrays(np.zeros((2, 8, 8), np.float32), 1.0))


def test_contrast_scores_on_real_particles_agree_with_cryosparc_sign():
    """EMPIAR-10076: the .cs marks dark particles (blob/sign -1); the STAR file does not."""
    star = Dataset.from_star(real_data_path("cryodrgn_empiar10076/empiar_10076_7.star"))
    cs = Dataset.from_cryosparc(real_data_path("cryodrgn_empiar10076/empiar_10076_7.cs"))
    assert (contrast_scores(star) < 0).all() and (contrast_scores(cs) > 0).all()


def test_box_for_resolution():
    assert box_for_resolution(320, 1.31, 10.0) == 84  # 84 px at 4.99 Å: Nyquist 9.98 Å
    assert box_for_resolution(64, 3.15625, 15.0) == 28
    assert box_for_resolution(64, 3.0, 4.0) == 64  # cannot go finer than the data
    assert box_for_resolution(400, 1.0, 400.0) == 8


def test_real_data_path_names_what_is_there():
    assert real_data_path("PROVENANCE.md").is_file()
    with pytest.raises(FileNotFoundError, match=r"empiar_10076_7\.star"):
        real_data_path("nope.star")


def test_ctf_figure_draws_evaluate_ctf_along_u_and_v():
    from cryonb.ctf import evaluate_ctf
    from cryonb.viz import ctf_figure, ctf_zeros_invA

    ctf = CTFParams(defocus_u_A=[15000.0], defocus_v_A=[14000.0], defocus_angle_deg=[30.0],
                    voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    fig = ctf_figure(ctf, 32, 2.0)
    ax1, ax2 = fig.axes[:2]
    along_u, along_v = ax1.get_lines()[:2]
    k = along_u.get_xdata()
    assert k[0] == 0.0 and k[-1] == pytest.approx(0.25)  # 0 .. Nyquist, 1/Å
    for line, angle in ((along_u, 30.0), (along_v, 120.0)):
        a = np.deg2rad(angle)
        np.testing.assert_allclose(line.get_ydata(),
                                   evaluate_ctf(ctf, k * np.cos(a), k * np.sin(a))[0])
    zeros = ctf_zeros_invA(ctf, 30.0, 0.25)
    a = np.deg2rad(30.0)
    assert len(zeros) > 3
    np.testing.assert_allclose(evaluate_ctf(ctf, zeros * np.cos(a), zeros * np.sin(a))[0], 0.0,
                               atol=1e-3)
    assert "defocus U 1.50 µm, V 1.40 µm" in ax1.get_title()
    # the 2D picture: 512 samples over -Nyquist .. Nyquist, NaN outside the Nyquist circle.
    # Rings are resolved: the phase pi lambda df k^2 turns by pi over dk = 1 / (2 lambda df
    # k), 6.8e-3 1/Å at Nyquist (300 kV: lambda = 0.0197 Å); the box's own grid (1/64 Å)
    # would alias them, the picture's spacing (0.5 / 511) is 7 times finer
    (image,) = ax2.get_images()
    values = np.asarray(np.ma.filled(image.get_array(), np.nan))
    assert values.shape == (512, 512)
    k = np.linspace(-0.25, 0.25, 512)
    kx, ky = np.meshgrid(k, k)
    inside = kx**2 + ky**2 <= 0.25**2
    assert np.isnan(values[~inside]).all() and np.isnan(values[0, 0])
    np.testing.assert_allclose(values[inside], evaluate_ctf(ctf, kx, ky)[0][inside], atol=1e-12)
    ring_width = 1 / (2 * 0.019687 * 15000.0 * 0.25)
    assert 0.5 / 511 < ring_width / 4 and 1 / 64 > ring_width


def test_is_error_curves_figure_plots_rmse_and_fraction():
    from cryonb.viz import is_error_curves_figure

    curve = SimpleNamespace(ess_scales=np.array([1.0, 10.0, 100.0]),
                            relative_rmse=np.array([0.1, 0.01, 0.0]),
                            fraction_evaluated=np.array([0.01, 0.1, 0.5]))
    fig = is_error_curves_figure({0.025: curve, 0.04: curve})
    assert len(fig.axes) == 4  # two panels, each with its twin
    err_line = fig.axes[0].get_lines()[0]
    np.testing.assert_array_equal(err_line.get_xdata(), [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(err_line.get_ydata(), [0.1, 0.01, np.nan])  # exact: no point
    fractions = [ax for ax in fig.axes if ax.get_ylabel() == "fraction of quadrature points"]
    np.testing.assert_array_equal(fractions[0].get_lines()[0].get_ydata(), [0.01, 0.1, 0.5])
    assert fig.axes[0].get_title() == "band limit 1/40 Å⁻¹"
    with pytest.raises(ValueError, match="no curves"):
        is_error_curves_figure({})


def test_posterior_kl_figure_quartiles_and_epochs():
    from cryonb.viz import posterior_kl_figure

    kl = [np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.array([0.5, 0.5, 0.5, 0.5, 2.5])]
    history = pd.DataFrame(_records(8))
    fig = posterior_kl_figure(kl, history, n_batches=4)
    ax1, ax2 = fig.axes
    median, mean = ax1.get_lines()
    np.testing.assert_array_equal(median.get_xdata(), [2, 3])
    np.testing.assert_allclose(median.get_ydata(), [2.0, 0.5])
    np.testing.assert_allclose(mean.get_ydata(), [2.0, 0.9])
    (frac,) = ax2.get_lines()
    np.testing.assert_allclose(frac.get_xdata(), np.arange(8) / 4 + 1)
    np.testing.assert_allclose(frac.get_ydata(), 1.0 / (np.arange(8) + 1))


# ----------------------------------------------------------------------------- issue 16: runs
def test_direction_histogram_counts_every_particle_in_equal_area_bins():
    from cryonb.rotations import euler_to_matrix
    from cryonb.viz import direction_histogram, orientation_figure

    # rot 45°, tilt 90° (latitude 0): column floor((45 + 180) / 10) = 22, row 9 of 18
    known = euler_to_matrix([45.0] * 7 + [-165.0] * 3, [90.0] * 7 + [170.0] * 3, 33.0)
    hist = direction_histogram(known)
    assert hist.n == 10 and hist.counts.shape == (18, 36)
    assert hist.counts[9, 22] == 7 and hist.bin_of(45.0, 90.0) == (9, 22)
    # tilt 170°: latitude -80°, sin = -0.985 -> row 0; rot -165° -> column 1
    assert hist.counts[0, 1] == 3
    # uniform rotations fill equal-area bins evenly: 100 expected per bin, Poisson sd 10
    uniform = direction_histogram(random_rotations(64_800, np.random.default_rng(3)))
    assert uniform.n == 64_800
    assert np.abs(uniform.counts - 100).max() < 50
    assert abs(uniform.counts.std() - 10.0) < 1.5
    np.testing.assert_allclose(np.diff(np.sin(uniform.lat_edges_rad)), 2 / 18)
    fig = orientation_figure(known)
    drawn = fig.axes[0].collections[0].get_array()
    assert float(np.sum(drawn)) == 10 and "10 particles" in fig.axes[0].get_title()


def test_snapshot_strip_keeps_first_and_last_and_labels_them():
    from cryonb.viz import snapshot_strip_figure, snapshot_view

    vols = [np.full((8, 8, 8), float(i)) + np.eye(8)[None] for i in range(15)]
    fig = snapshot_strip_figure([(v, f"t{i}") for i, v in enumerate(vols)], max_shown=5)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["t0", "t4", "t7", "t10", "t14"]  # linspace(0, 14, 5) rounded
    np.testing.assert_array_equal(snapshot_view(vols[2]), 8 * (2 + np.eye(8)))
    np.testing.assert_array_equal(snapshot_view(vols[2], "section"), 2 + np.eye(8))
    with pytest.raises(ValueError, match="kind"):
        snapshot_view(vols[0], "mean")


def test_domain_fractions_follow_the_draw_rule():
    from cryonb.viz import domain_fractions

    entry = {"ess_directions": 5.0, "ess_inplane": 1.9, "ess_shifts": 0.25}
    out = domain_fractions(entry, (100, 20, 9), ess_scale=10.0)
    # 50 of 100; ceil(19) = 19 >= 0.95 * 20 -> enumerated; ceil(2.5) = 3 of 9
    assert out == {"fraction_directions": 0.5, "fraction_inplane": 1.0,
                   "fraction_shifts": pytest.approx(3 / 9)}


def test_history_figures_share_their_labelling():
    """run_history_figure and solver_history_figure label the objective and band-limit
    panels alike (one helper): log objective, Å band limit with finer resolution up."""
    from cryonb.viz import run_history_figure

    records = _records(6)
    for fig, xlabel in ((solver_history_figure(records, title="t"), "iteration"),
                        (run_history_figure(records, title="t"), "solver time (min)")):
        ax_nll, ax_res = fig.axes[:2]
        assert ax_nll.get_ylabel() == "mean NLL per image" and ax_nll.get_yscale() == "log"
        assert ax_res.get_ylabel() == "band limit 1/w (Å)" and ax_res.yaxis_inverted()
        assert all(ax.get_xlabel() == xlabel for ax in fig.axes)
        assert fig.get_suptitle() == "t"
    assert run_history_figure([]).axes[1].texts[0].get_text() == "no iterations yet"


def test_history_time_table_puts_the_halves_after_the_common_start():
    from cryonb.viz import history_time_table, run_history_figure

    table = pd.DataFrame({
        "phase": ["common", "common", "half1", "half2", "half1", "half2"],
        "iteration": [0, 1, 0, 0, 1, 1], "wall_time_s": [1.0, 2.0, 0.5, 0.4, 1.0, 0.9],
        "max_freq_invA": [0.025, 0.03, 0.03, 0.03, 0.04, 0.04],
        "objective": [5.0, 4.0, 3.0, 3.1, 2.0, 2.1], "heldout_nll": [np.nan] * 6})
    t = history_time_table(table)["job_time_s"].to_numpy()
    np.testing.assert_allclose(t, [1.0, 2.0, 2.9, 2.9, 3.9, 3.9])
    fig = run_history_figure(table)
    x = fig.axes[1].get_lines()[1].get_xdata()  # the band limit of half1 against minutes
    np.testing.assert_allclose(x, [2.9 / 60, 3.9 / 60])


def test_fsc_resolution_figure_labels_angstrom_at_their_frequencies():
    from cryonb.metrics import fsc
    from cryonb.viz import fsc_resolution_figure

    rng = np.random.default_rng(0)
    a = random_spheres(24, rng, n_spheres=5, mass=100.0)
    curve = fsc(a, a + rng.normal(0, 0.01, a.shape), 4.0)
    fig = fsc_resolution_figure([curve], ["a vs a + noise"])
    ax = fig.axes[0]
    top = ax.child_axes[0]
    labels = [t.get_text() for t in top.get_xticklabels()]
    ticks = top.get_xticks()
    assert "10" in labels and "20" in labels and top.get_xlabel() == "resolution (Å)"
    np.testing.assert_allclose(ticks, [float(s) for s in labels])
    assert ax.get_xlim() == pytest.approx((0.0, 1 / 8.0))  # to Nyquist of 4 Å pixels


def test_gaussian_lowpass_halves_the_amplitude_at_the_resolution_and_compares_maps():
    """By numpy's own FFT: the gain at |k| is exp(-ln 2 (|k| d)^2), 1/2 at 1/d; no ringing."""
    from cryonb.viz.maps import gaussian_lowpass, maps_for_comparison

    rng = np.random.default_rng(0)
    vol = rng.normal(size=(16, 16, 16))
    out = gaussian_lowpass(vol, 5.0, 20.0)
    k = np.fft.fftfreq(16, 5.0)
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    gain = np.fft.fftn(out) / np.fft.fftn(vol)
    np.testing.assert_allclose(gain.real, np.exp(-np.log(2) * (kk * 20.0) ** 2), atol=1e-9)
    np.testing.assert_allclose(gain.imag, 0.0, atol=1e-9)
    assert np.exp(-np.log(2) * (0.05 * 20.0) ** 2) == pytest.approx(0.5)
    delta = np.zeros((16, 16, 16))
    delta[8, 8, 8] = 1.0
    # negative lobes: only from the Gaussian's tail cut at Nyquist (gain 0.06 there along an
    # axis), under 1 % of the peak; the raised-cosine cut at the same resolution rings at > 5 %
    smooth, sharp = gaussian_lowpass(delta, 5.0, 20.0), low_pass(delta, 5.0, 20.0)
    assert smooth.min() > -0.01 * smooth.max() and sharp.min() < -0.05 * sharp.max()
    pair = maps_for_comparison({"a": 3 * vol + 2, "b": vol}, 5.0, 20.0)
    for v in pair.values():
        assert v.mean() == pytest.approx(0.0, abs=1e-12) and v.std() == pytest.approx(1.0)
    np.testing.assert_allclose(pair["a"], pair["b"], atol=1e-12)  # scale and offset gone
