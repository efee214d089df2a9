"""``cryonb info`` on particles: the contrast check, noise, particle radius and recommended box.

Each printed number is compared with the library function the run uses and, where the data are
simulated, with the simulation's own truth (its noise sigma, the molecule's size, the Nyquist
rule that defines the box).
"""

import re

import numpy as np
import pytest

from cryonb.cli import main
from cryonb.dataset import Dataset
from cryonb.diagnostics import box_for_resolution, estimate_particle_radius
from cryonb.samples import sample_path
from cryonb.synthetic.density import DensityParams, density_from_file
from cryonb.synthetic.particles import SimulationParams, read_ctf_table, simulate_to_files

BOX, PSIZE = 32, 8.0  # GroEL-GroES (1AON, ~230 Å across) in a 256 Å box


@pytest.fixture(scope="module")
def white(tmp_path_factory):
    """200 white GroEL-GroES particles at SNR 0.05 with real 200 kV CTFs."""
    truth = density_from_file(sample_path("1aon.pdb.gz"), DensityParams(BOX, PSIZE))
    out = tmp_path_factory.mktemp("white")
    table = read_ctf_table(sample_path("ctf_200kV_cryosparc_P12_J24.csv"))
    return simulate_to_files(truth, PSIZE, SimulationParams(n_particles=200, snr=0.05),
                             np.random.default_rng(0), out, progress=False, ctf_table=table)


@pytest.fixture(scope="module")
def dark_star(white, tmp_path_factory):
    out = tmp_path_factory.mktemp("dark")
    return Dataset.from_star(white.star_path).inverted().write(out / "dark.star")


def _info(capsys, *argv) -> str:
    assert main(["info", *map(str, argv)]) == 0
    return capsys.readouterr().out


def _line(text: str, start: str) -> str:
    (line,) = [s.strip() for s in text.splitlines() if s.strip().startswith(start)]
    return line


def test_info_reports_white_contrast_noise_and_radius(white, capsys):
    out = _info(capsys, white.star_path)
    ds = Dataset.from_star(white.star_path)
    assert "white particles" in _line(out, "contrast:")
    noise = float(re.search(r"sigma ([0-9.eE+-]+)", _line(out, "noise:")).group(1))
    assert noise == pytest.approx(ds.estimate_noise_sigma(), rel=1e-3)
    assert noise == pytest.approx(white.noise_sigma, rel=0.05)  # the simulation's own sigma
    radius = float(re.search(r"radius: (\d+) Å", _line(out, "particle radius:")).group(1))
    assert radius == round(estimate_particle_radius(ds.normalized()))
    # GroEL-GroES: a barrel ~140 Å wide and ~190 Å long, so a radius between 70 and 130 Å
    assert 70 <= radius <= 130


@pytest.mark.parametrize("max_res_A", [40.0, 30.0, 15.0])
def test_info_recommends_the_smallest_box_whose_nyquist_reaches_the_target(white, capsys,
                                                                          max_res_A):
    out = _info(capsys, white.star_path, "--max-res", max_res_A)
    line = _line(out, "recommended")
    box = int(re.search(r"working box (\d+) px", line).group(1))
    psize = float(re.search(r"px at ([0-9.]+) Å/px", line).group(1))
    band = float(re.search(r"band limit ([0-9.]+) 1/Å", line).group(1))
    assert box == box_for_resolution(BOX, PSIZE, max_res_A)
    assert psize == pytest.approx(PSIZE * BOX / box, abs=1e-3)
    assert band == pytest.approx(1 / (2 * psize), abs=1e-4)
    # independent of box_for_resolution: its Nyquist reaches the target, the next smaller
    # even box's does not (or it is the images' own box)
    if 2 * PSIZE > max_res_A:  # the images cannot reach the target: their own box, said so
        assert box == BOX and f"own Nyquist, {2 * PSIZE:.1f} Å, does not reach" in line
    else:
        assert 2 * PSIZE * BOX / box <= max_res_A + 1e-9
        assert box == BOX or 2 * PSIZE * BOX / (box - 2) > max_res_A
    assert f"--max-res {max_res_A:g}" in line


def test_info_flags_dark_particles_and_the_fix(dark_star, capsys):
    out = _info(capsys, dark_star)
    line = _line(out, "contrast:")
    assert "DARK" in line and "--invert" in line
    assert "white particles" in _line(_info(capsys, dark_star, "--invert"), "contrast:")
