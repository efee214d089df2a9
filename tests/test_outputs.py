"""What a run folder holds for the user (issue 16): the full-box and hand-flipped maps, the
ChimeraX script, the FSC figure's Å axis, report.md and the progress bar's budget.

The padding is checked against identities that do not use it (crop after pad, the adjoint of
the crop, FFT coefficients); the run's files against the maps they were made from.
"""

import json
import re
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest

import cryonb.backprojection  # noqa: F401  (binds the real tqdm before the bars are patched)
from cryonb.abinitio import AbInitioConfig, AbInitioRun
from cryonb.cli import main as cli_main
from cryonb.commands.reconstruct import LARGE_BOX, full_box_warning
from cryonb.diagnostics import box_for_resolution
from cryonb.fourier import fft3_centered, flip_hand, fourier_crop, fourier_pad
from cryonb.io import read_mrc
from cryonb.metrics import fsc
from cryonb.profiling import format_profile
from cryonb.run_folder import FILES, summary_lines
from cryonb.synthetic.particles import SimulationParams, load_simulation, simulate_to_files
from cryonb.viz import fsc_figure

BOX_IN, PSIZE_IN = 32, 6.0  # the images: 32 px at 6 Å
BOX = 16  # the working box: 12 Å/px


def _blobs(n: int, width_px: float) -> np.ndarray:
    k = np.arange(n) - n // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((n,) * 3)
    scale = n / 16
    for i, c in enumerate([(-3, 0, 1), (2, 2, -2), (0, -3, -2), (3, -1, 3), (-1, 3, 2)]):
        c = np.asarray(c) * scale
        vol += (0.6 + 0.2 * i) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
                                        / (2 * (width_px * scale) ** 2))
    return vol


def _without_nyquist(volume) -> np.ndarray:
    """``volume`` (even box) without its unpaired Nyquist planes (frequency index -N/2 on each
    axis, which a real map on a larger grid cannot hold alone), zeroed with NumPy's FFT."""
    spec = np.fft.fftn(np.asarray(volume, np.float64))
    n = spec.shape[0]
    spec[n // 2], spec[:, n // 2], spec[:, :, n // 2] = 0, 0, 0
    return np.fft.ifftn(spec).real


# ----------------------------------------------------------------------- Fourier pad / crop
@pytest.mark.parametrize(("n", "big", "ndim"), [(16, 32, 3), (15, 24, 3), (16, 40, 2),
                                                (17, 34, 2)])
def test_pad_then_crop_returns_the_original(n, big, ndim):
    rng = np.random.default_rng(1)
    # any map without content on an even box's unpaired Nyquist planes: a crop's output
    x = fourier_crop(rng.standard_normal((2,) + (n + 6,) * ndim), n, ndim=ndim)
    padded = fourier_pad(x, big, ndim=ndim)
    assert padded.shape == (2,) + (big,) * ndim
    np.testing.assert_allclose(fourier_crop(padded, n, ndim=ndim), x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(padded.mean(axis=tuple(range(1, ndim + 1))),
                               x.mean(axis=tuple(range(1, ndim + 1))), rtol=1e-12)


def test_pad_is_the_scaled_adjoint_of_crop():
    rng = np.random.default_rng(2)
    n, big = 12, 20
    x, y = rng.standard_normal((big,) * 3), rng.standard_normal((n,) * 3)
    lhs = np.vdot(fourier_crop(x, n, ndim=3), y)
    rhs = (n / big) ** 3 * np.vdot(x, fourier_pad(y, big, ndim=3))
    assert lhs == pytest.approx(rhs, rel=1e-10)


def test_padded_map_keeps_every_coefficient_and_the_fsc_against_a_band_limited_reference():
    rng = np.random.default_rng(3)
    big, n, psize = 48, 24, 2.5
    reference = _blobs(big, 0.9) + 0.05 * rng.standard_normal((big,) * 3)
    small = fourier_crop(reference, n, ndim=3)  # the working map: 5 Å/px, Nyquist 10 Å
    padded = fourier_pad(small, big, ndim=3)
    # FSC against the reference band-limited at the small box's Nyquist (a cube |k_i| < n/2):
    # 1 on every shell below it, as the coefficients are the reference's own
    curve = fsc(padded, reference, psize)
    np.testing.assert_allclose(curve.fsc[1:n // 2], 1.0, atol=1e-12)
    assert curve.freq_invA[n // 2] == pytest.approx(0.5 / (psize * big / n))
    # the spectrum outside the cube |k_i| < n/2 is zero, inside it is the reference's
    spec, ref_spec = fft3_centered(padded), fft3_centered(reference)
    k = np.abs(np.arange(big) - big // 2)
    inside = (k[:, None, None] < n // 2) & (k[None, :, None] < n // 2) & (k[None, None] < n // 2)
    assert np.abs(spec[~inside]).max() < 1e-9 * np.abs(spec).max()
    np.testing.assert_allclose(spec[inside], ref_spec[inside], rtol=0,
                               atol=1e-9 * np.abs(ref_spec).max())


@pytest.mark.parametrize("n", [16, 15])
def test_flip_hand_mirrors_z_about_the_centre(n):
    c = n // 2
    vol = np.zeros((n,) * 3)
    vol[c + 3, c - 2, c + 1] = 1.0  # (z, y, x) = (3, -2, 1) from the centre
    vol[c, c, c] = 2.0
    flipped = flip_hand(vol)
    assert flipped[c - 3, c - 2, c + 1] == 1.0 and flipped[c, c, c] == 2.0
    assert flipped.sum() == 3.0
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n,) * 3)
    np.testing.assert_array_equal(flip_hand(flip_hand(x)), x)
    # in Fourier space: F(kx, ky, -kz) (index j -> (2c - j) mod n along z)
    spec, spec_flipped = fft3_centered(x), fft3_centered(flip_hand(x))
    mirror = (2 * c - np.arange(n)) % n
    np.testing.assert_allclose(spec_flipped, spec[mirror], atol=1e-10)


# ----------------------------------------------------------------------- FSC figure
def test_fsc_figure_has_a_resolution_axis_in_angstrom():
    rng = np.random.default_rng(5)
    psize = 4.0
    a = _blobs(32, 1.0)
    curve = fsc(a, a + 0.2 * rng.standard_normal(a.shape), psize)
    fig = fsc_figure([curve], ["half-maps"])
    ax = fig.axes[0]
    (top,) = ax.child_axes
    assert top.get_xlabel() == "resolution (Å)"
    low, high = ax.get_xlim()
    assert high == pytest.approx(curve.freq_invA.max())  # Nyquist, 1/8 Å
    ticks = np.asarray(top.get_xticks())
    labels = [t.get_text() for t in top.get_xticklabels()]
    assert len(ticks) >= 4 and labels == [f"{d:g}" for d in ticks]
    assert ((1 / ticks >= low) & (1 / ticks <= high)).all()
    assert 8.0 in ticks  # the finest listed value at Nyquist
    # the top axis is 1 / frequency: once drawn, its fine end is the Nyquist resolution
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    assert min(top.get_xlim()) == pytest.approx(2 * psize)


# ----------------------------------------------------------------------- the run folder
@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """240 particles of 32 px at 6 Å from a blob map (SNR 1), with their truth."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("images")
    params = SimulationParams(n_particles=240, snr=1.0, shift_sigma_A=5.0, bfactor_A2=50.0,
                              defocus_range_A=(8000.0, 20000.0))
    simulate_to_files(_blobs(BOX_IN, 1.2).astype(np.float32), PSIZE_IN, params, rng, out,
                      progress=False)
    return out


CONFIG = AbInitioConfig(box_size=BOX, start_res_A=40.0, split_res_A=30.0,
                        freq_step_invA=1 / 120, first_stage_images=200, iterations_per_stage=4,
                        batch_size=40, n_heldout=20, particle_radius_A=50.0, shift_sigma_A=5.0,
                        shift_extent_A=10.0, max_iterations=12, checkpoint_every_s=3600.0,
                        min_fitted_iterations=3)


class _Bar:
    """Records what the ab initio run tells its progress bars (a stand-in for tqdm, patched
    into ``tqdm.auto`` where the run imports it when it starts a bar)."""

    made: ClassVar[list] = []

    def __init__(self, iterable=None, *args, total=None, initial=0, unit="it", **kwargs):
        self.iterable = iterable
        self.total, self.n, self.unit, self.positions = total, initial, unit, []
        _Bar.made.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def update(self, k):
        self.n += k
        self.positions.append(self.n)

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def run_folder(image_set, tmp_path_factory):
    import tqdm.auto

    out = tmp_path_factory.mktemp("run")
    ds = load_simulation(image_set)
    _Bar.made = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tqdm.auto, "tqdm", _Bar)
        run = AbInitioRun(ds, out, CONFIG, progress=True)
        summary = run.run()
    return out, summary, run, list(_Bar.made)


def test_full_box_map_is_map_padded_to_the_input_box_and_pixel_size(run_folder, image_set):
    out, summary, _, _ = run_folder
    small, full = read_mrc(out / "map.mrc", mmap=False), read_mrc(out / "map_fullbox.mrc",
                                                                    mmap=False)
    assert small.shape == (BOX,) * 3 and small.voxel_size_A == pytest.approx(2 * PSIZE_IN)
    assert full.shape == (BOX_IN,) * 3
    assert full.voxel_size_A == pytest.approx(PSIZE_IN, rel=1e-6)  # the input's, in the header
    assert (summary["input_box_size"], summary["input_pixel_size_A"]) == (BOX_IN, PSIZE_IN)
    # cropped back: map.mrc without its unpaired Nyquist planes
    map_small = np.asarray(small.data, np.float64)
    expected = _without_nyquist(map_small)
    cropped = fourier_crop(np.asarray(full.data, np.float64), BOX, ndim=3)
    np.testing.assert_allclose(cropped, expected, rtol=0, atol=1e-5 * np.abs(map_small).max())
    assert np.abs(expected - map_small).max() < 0.05 * np.abs(map_small).max()
    # against the truth: the same FSC shell for shell below the working Nyquist
    truth = np.asarray(read_mrc(image_set / "truth.mrc", mmap=False).data, np.float64)
    at_full = fsc(full.data, truth, PSIZE_IN)
    at_work = fsc(small.data, fourier_crop(truth, BOX, ndim=3), 2 * PSIZE_IN)
    np.testing.assert_allclose(at_full.freq_invA[:BOX // 2], at_work.freq_invA[:BOX // 2])
    np.testing.assert_allclose(at_full.fsc[1:BOX // 2], at_work.fsc[1:BOX // 2], atol=1e-4)


def test_flipped_hand_map_is_map_mirrored_along_z(run_folder):
    out = run_folder[0]
    small = read_mrc(out / "map.mrc", mmap=False)
    flipped = read_mrc(out / "map_flipped_hand.mrc", mmap=False)
    assert flipped.voxel_size_A == pytest.approx(small.voxel_size_A)
    np.testing.assert_array_equal(flipped.data, flip_hand(np.asarray(small.data)))
    assert not np.array_equal(flipped.data, small.data)  # a map without that mirror symmetry


def test_chimerax_script_opens_the_maps_at_an_sd_level(run_folder):
    out = run_folder[0]
    lines = (out / "chimerax.cxc").read_text().splitlines()
    commands = [line for line in lines if line and not line.startswith("#")]
    opened = [c.split()[1] for c in commands if c.startswith("open ")]
    assert opened == ["map.mrc", "half1.mrc", "half2.mrc"]
    assert all((out / name).exists() for name in opened)  # relative to the script's folder
    assert "volume #1 sdLevel 3 style surface" in commands
    assert "volume #2-3 sdLevel 3 style mesh" in commands
    # no absolute contour level anywhere (the maps' scale follows the normalisation)
    assert not any(re.search(r"\blevel\b", c) for c in commands)


def test_report_states_the_run_json_numbers_and_lists_every_file(run_folder):
    out = run_folder[0]
    report = (out / "report.md").read_text()
    saved = json.loads((out / "run.json").read_text())
    for line in summary_lines(saved):
        assert line in report
    assert format_profile(saved["profile"]) in report
    assert f"{1 / saved['split_max_freq_invA']:.1f} Å" in report
    assert f"{saved['wall_time_s']:.0f} s" in report
    listed = re.findall(r"^\| `([^`]+)` \| (.*) \|$", report, flags=re.M)
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}  # not the lock
    assert {name for name, _ in listed} == names | {"report.md"}
    assert all(FILES[name] == text for name, text in listed)
    assert str(out) not in report  # relative names only


def test_progress_bar_counts_the_iteration_budget(run_folder):
    _, summary, run, bars = run_folder
    (bar,) = [b for b in bars if b.unit == "it"]
    assert bar.total == CONFIG.max_iterations
    done = run.common.iteration + sum(h.solver.iteration for h in run.halves) // 2
    assert bar.n == done and bar.positions == sorted(bar.positions)
    final = [b for b in bars if b.unit == "particle"]  # the final-pose pass
    assert final and final[0].total == summary["n_particles"] == final[0].n


def test_progress_bar_counts_the_time_budget_in_seconds(image_set, tmp_path, monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made = []
    budget_min = 0.04
    config = replace(CONFIG, max_iterations=None, time_limit_min=budget_min)
    run = AbInitioRun(load_simulation(image_set), tmp_path, config, progress=True)
    run.run()
    (bar,) = [b for b in _Bar.made if b.unit == "s"]
    assert bar.total == pytest.approx(60 * budget_min)
    assert bar.n == int(run._elapsed_s())  # whole seconds of solver time
    assert bar.n >= 60 * budget_min or all(h.solver.done for h in run.halves)


def test_known_poses_write_the_same_viewing_files(image_set, tmp_path, capsys):
    out = tmp_path / "known"
    assert cli_main(["reconstruct", str(image_set / "particles.star"), "--out", str(out),
                     "--known-poses", "--box", str(BOX), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    full = read_mrc(out / "map_fullbox.mrc", mmap=False)
    small = read_mrc(out / "map.mrc", mmap=False)
    assert full.shape == (BOX_IN,) * 3 and full.voxel_size_A == pytest.approx(PSIZE_IN)
    np.testing.assert_allclose(fourier_crop(np.asarray(full.data, np.float64), BOX, ndim=3),
                               _without_nyquist(small.data),
                               atol=1e-5 * np.abs(small.data).max())
    saved = json.loads((out / "run.json").read_text())
    assert saved["mode"] == "known poses" and saved["box_size"] == BOX
    half1, half2 = (read_mrc(out / f"half{i}.mrc", mmap=False).data for i in (1, 2))
    value = fsc(half1, half2, 2 * PSIZE_IN).resolution(0.143).value_A
    assert saved["half_map_resolution_A_0143"] == pytest.approx(value)
    report = (out / "report.md").read_text()
    assert summary_lines(saved)[0] in report and summary_lines(saved)[0] in printed
    assert "chimerax.cxc" in printed and "sdLevel" in printed
    assert "open half2.mrc" in (out / "chimerax.cxc").read_text()


# ----------------------------------------------------------------------- full-box warning
def test_full_box_warning_only_without_box_or_max_res_on_a_large_box():
    big = LARGE_BOX + 32
    warning = full_box_warning(AbInitioConfig(), big, 1.1)
    assert warning is not None and "\n" not in warning
    assert f"{big}-px" in warning and "--max-res 15" in warning
    assert f"at a {box_for_resolution(big, 1.1, 15.0)}-px box" in warning
    assert f"Nyquist ({2 * 1.1:.1f} Å)" in warning
    assert full_box_warning(AbInitioConfig(), LARGE_BOX, 1.1) is None
    assert full_box_warning(AbInitioConfig(box_size=64), big, 1.1) is None
    assert full_box_warning(AbInitioConfig(max_res_A=12.0), big, 1.1) is None

