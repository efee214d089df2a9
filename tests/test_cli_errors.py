"""Every user-facing error of ``cryonb reconstruct`` is one line naming the file and the fix.

Each case runs the CLI on small files written in tmp_path and checks: exit code 1, exactly one
line on stderr (``cryonb reconstruct: error: ...``), no traceback, and the thing named (file,
column, table, row or option).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryonb.cli import main
from cryonb.ctf import CTFParams
from cryonb.dataset import Dataset
from cryonb.diagnostics import check_contrast, dark_p_value
from cryonb.io import CryonbInputError
from cryonb.samples import sample_path
from cryonb.synthetic.density import DensityParams, density_from_file
from cryonb.synthetic.particles import SimulationParams, read_ctf_table, simulate_to_files

REAL = Path(__file__).parent / "data" / "real"
BOX, PSIZE = 32, 8.0  # GroEL-GroES (1AON, 232 Å across) fits 32 px at 8 Å


@pytest.fixture(scope="module")
def white_star(tmp_path_factory):
    """200 white (RELION-convention) GroEL-GroES particles at SNR 0.05, with true poses."""
    truth = density_from_file(sample_path("1aon.pdb.gz"), DensityParams(BOX, PSIZE))
    out = tmp_path_factory.mktemp("white")
    table = read_ctf_table(sample_path("ctf_200kV_cryosparc_P12_J24.csv"))
    result = simulate_to_files(truth, PSIZE, SimulationParams(n_particles=200, snr=0.05),
                               np.random.default_rng(0), out, progress=False, ctf_table=table)
    return result.star_path


@pytest.fixture(scope="module")
def dark_star(white_star, tmp_path_factory):
    """The same particles with the stack's sign flipped (dark particles, as on the detector)."""
    out = tmp_path_factory.mktemp("dark")
    return Dataset.from_star(white_star).inverted().write(out / "dark.star")


def _reconstruct(capsys, *argv):
    code = main(["reconstruct", *map(str, argv)])
    return code, capsys.readouterr().err


def _assert_one_line(code, err, *names):
    assert code == 1
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cryonb reconstruct: error: ")
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


# ----------------------------------------------------------------------- contrast (--invert)
def test_dark_particles_fail_before_reconstruction_pointing_to_invert(dark_star, tmp_path,
                                                                      capsys):
    code, err = _reconstruct(capsys, dark_star, "--out", tmp_path / "run", "--no-progress")
    line = _assert_one_line(code, err, dark_star, "dark", "pass --invert")
    n_negative = int(re.search(r"(\d+) of 200 images score negative", line).group(1))
    assert n_negative > 180  # the white set scores 8 of 200 negative
    assert not (tmp_path / "run").exists()  # nothing was reconstructed or written


def test_invert_on_white_particles_says_drop_invert(white_star, tmp_path, capsys):
    code, err = _reconstruct(capsys, white_star, "--out", tmp_path / "run", "--invert")
    _assert_one_line(code, err, white_star, "dark", "drop --invert")


def test_check_contrast_passes_white_and_inverted_dark_and_undecided_sets(white_star, dark_star):
    white = check_contrast(Dataset.from_star(white_star), white_star)
    assert np.median(white) > 0.2
    flipped = check_contrast(Dataset.from_star(dark_star).inverted(), dark_star)
    np.testing.assert_allclose(flipped, white, rtol=1e-4, atol=1e-5)
    # pure noise: no particle, scores negative about half the time -> never called dark
    rng = np.random.default_rng(3)
    n = 200
    ctf = CTFParams(defocus_u_A=rng.uniform(1e4, 3e4, n), defocus_v_A=2e4, defocus_angle_deg=0.0,
                    voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    noise = Dataset.from_arrays(rng.normal(size=(n, BOX, BOX)).astype(np.float32), PSIZE, ctf=ctf)
    scores = check_contrast(noise, "noise")
    assert 0.2 < (scores < 0).mean() < 0.8
    assert check_contrast(Dataset.from_arrays(np.zeros((2, 8, 8), np.float32), 1.0), "x") is None
    with pytest.raises(CryonbInputError, match="dark"):
        check_contrast(Dataset.from_star(dark_star), dark_star)


def test_dark_p_value_is_the_one_sided_sign_test():
    assert dark_p_value(-np.ones(7)) == pytest.approx(2.0**-7)  # 7 of 7 negative: dark
    assert dark_p_value(np.r_[-np.ones(5), np.ones(5)]) > 0.5  # undecided
    assert dark_p_value(np.ones(10)) == pytest.approx(1.0)
    assert dark_p_value(np.array([])) == 1.0


def test_dark_particles_give_one_line_from_the_console_script(dark_star, tmp_path):
    exe = shutil.which("cryonb", path=str(Path(sys.executable).parent))
    assert exe is not None
    proc = subprocess.run([exe, "reconstruct", str(dark_star), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    _assert_one_line(proc.returncode, proc.stderr, dark_star, "--invert")
    assert proc.stdout == ""


# ----------------------------------------------------------------------------------- --box
@pytest.mark.parametrize("known_poses", [False, True])
@pytest.mark.parametrize("box, problem", [(8, "at least 16"), (14, "at least 16"),
                                          (17, "even"), (64, "larger than")])
def test_bad_box_names_the_option_the_value_and_the_images_box(white_star, tmp_path, capsys,
                                                               box, problem, known_poses):
    argv = [white_star, "--out", tmp_path / "run", "--box", box, "--no-progress"]
    code, err = _reconstruct(capsys, *argv, *(["--known-poses"] if known_poses else []))
    _assert_one_line(code, err, white_star, f"--box {box}", problem, f"{BOX} px")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ optics and CTF ranges
_OPTICS = {"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["g1", "g2"],
           "rlnVoltage": [300.0, 300.0], "rlnSphericalAberration": [2.7, 2.7],
           "rlnAmplitudeContrast": [0.1, 0.1], "rlnImagePixelSize": [1.5, 1.5],
           "rlnImageSize": [16, 16], "rlnImageDimensionality": [2, 2]}


def _particles(n=3):
    return {"rlnImageName": [f"{i + 1}@s.mrcs" for i in range(n)],
            "rlnOpticsGroup": [1, 2, 2][:n], "rlnDefocusU": [1e4] * n, "rlnDefocusV": [1e4] * n,
            "rlnDefocusAngle": [0.0] * n}


def _star_with(path, table, column, row, value):
    optics, particles = dict(_OPTICS), _particles()
    target = optics if table == "optics" else particles
    target[column] = list(target[column])
    target[column][row - 1] = value
    starfile.write({"optics": pd.DataFrame(optics), "particles": pd.DataFrame(particles)}, path)
    return path


@pytest.mark.parametrize("table, column, row, value", [
    ("optics", "rlnVoltage", 2, 300000.0),  # V instead of kV
    ("optics", "rlnVoltage", 1, 30.0),
    ("optics", "rlnSphericalAberration", 1, -2.7),
    ("optics", "rlnSphericalAberration", 2, 2700.0),  # µm instead of mm
    ("optics", "rlnAmplitudeContrast", 2, 10.0),  # percent instead of a fraction
    ("optics", "rlnAmplitudeContrast", 1, 1.0),
    ("optics", "rlnImagePixelSize", 2, 0.0),
    ("optics", "rlnImagePixelSize", 1, 106.0),  # pm instead of Å
    ("particles", "rlnDefocusU", 3, -5e4),
    ("particles", "rlnDefocusV", 2, 2.5e5),
])
def test_out_of_range_star_value_names_file_column_table_and_row(tmp_path, capsys, table,
                                                                 column, row, value):
    path = _star_with(tmp_path / "p.star", table, column, row, value)
    code, err = _reconstruct(capsys, path, "--out", tmp_path / "run")
    _assert_one_line(code, err, path, f"_{column} is {value:g}", f"{table} table",
                     f"data row {row}", "outside the physical range", "Fix: correct")


def test_relion30_pixel_size_from_detector_and_magnification_is_range_checked(tmp_path, capsys):
    particles = {**_particles(), "rlnVoltage": [300.0] * 3, "rlnSphericalAberration": [2.7] * 3,
                 "rlnAmplitudeContrast": [0.1] * 3, "rlnDetectorPixelSize": [5.0, 5.0, 5.0],
                 "rlnMagnification": [38168.0, 38168.0, 100.0]}  # row 3: 500 Å
    del particles["rlnOpticsGroup"]
    path = tmp_path / "p30.star"
    starfile.write({"images": pd.DataFrame(particles)}, path)
    code, err = _reconstruct(capsys, path, "--out", tmp_path / "run")
    _assert_one_line(code, err, path, "_rlnDetectorPixelSize / _rlnMagnification", "is 500",
                     "particles table, data row 3")


@pytest.mark.parametrize("field, value", [("ctf/accel_kv", 3e5), ("ctf/cs_mm", -1.0),
                                          ("ctf/amp_contrast", 7.0), ("ctf/df1_A", -1e5),
                                          ("ctf/df2_A", 1e6), ("blob/psize_A", 0.01)])
def test_out_of_range_cs_field_names_file_field_and_0_based_row(tmp_path, capsys, field, value):
    records = np.load(REAL / "cryosparc_J2_particles_exported.cs")
    records[field][4] = value
    path = tmp_path / "p.cs"
    with open(path, "wb") as fh:
        np.save(fh, records)
    code, err = _reconstruct(capsys, path, "--out", tmp_path / "run")
    _assert_one_line(code, err, path, f"{field} is {np.float32(value):g}", "row (0-based) 4",
                     "outside the physical range")


# --------------------------------------------------------------- missing or foreign files
def test_missing_and_foreign_files_give_one_line(tmp_path, capsys):
    code, err = _reconstruct(capsys, tmp_path / "absent.star", "--out", tmp_path / "run")
    _assert_one_line(code, err, "absent.star", "does not exist")
    code, err = _reconstruct(capsys, tmp_path / "absent.cs", "--out", tmp_path / "run")
    _assert_one_line(code, err, "absent.cs", "does not exist")
    text = tmp_path / "notes.star"
    text.write_text("these are my notes\nnot a STAR file at all {\n")
    code, err = _reconstruct(capsys, text, "--out", tmp_path / "run")
    _assert_one_line(code, err, text)
    micrographs = tmp_path / "micrographs.star"
    starfile.write({"micrographs": pd.DataFrame({"rlnMicrographName": ["a.mrc"]})}, micrographs)
    code, err = _reconstruct(capsys, micrographs, "--out", tmp_path / "run")
    _assert_one_line(code, err, micrographs, "_rlnImageName")
    bogus_cs = tmp_path / "p.cs"
    bogus_cs.write_bytes(b"\x00\x01 not numpy")
    code, err = _reconstruct(capsys, bogus_cs, "--out", tmp_path / "run")
    _assert_one_line(code, err, bogus_cs, "cryoSPARC")
    assert not (tmp_path / "run").exists()
