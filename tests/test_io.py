"""MRC, STAR and cryoSPARC I/O: round trips, every bundled real set, and each bad input."""

import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryonb.io import (
    CryonbInputError,
    MrcStackWriter,
    read_cryosparc_cs,
    read_mrc,
    read_particles_star,
    write_mrc,
    write_particles_star,
)
from cryonb.rotations import euler_to_matrix, matrix_to_euler, random_rotations

REAL = Path(__file__).parent / "data" / "real"


# ----------------------------------------------------------------------------- MRC
def test_mrc_volume_round_trip_keeps_axes_and_voxel_size(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(6, 7, 8)).astype(np.float32)  # [z, y, x], all sizes distinct
    write_mrc(tmp_path / "v.mrc", vol, 2.8)
    out = read_mrc(tmp_path / "v.mrc")
    assert isinstance(out.data, np.memmap)  # lazy
    np.testing.assert_array_equal(out.data, vol)
    assert out.voxel_size_A == pytest.approx(2.8, rel=1e-6)
    assert not out.is_stack and out.header_ok
    with mrcfile.open(tmp_path / "v.mrc") as mrc:  # x is the fastest axis in the header
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (8, 7, 6)
        assert float(mrc.voxel_size.x) == pytest.approx(2.8, rel=1e-6)
    loaded = read_mrc(tmp_path / "v.mrc", mmap=False)
    assert not isinstance(loaded.data, np.memmap)
    np.testing.assert_array_equal(loaded.data, vol)


def test_mrc_stack_is_marked_as_stack(tmp_path):
    stack = np.random.default_rng(1).normal(size=(3, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", stack, 1.5)
    with mrcfile.open(tmp_path / "s.mrcs") as mrc:
        assert mrc.is_image_stack() and int(mrc.header.ispg) == 0
    out = read_mrc(tmp_path / "s.mrcs")
    assert out.is_stack and out.shape == (3, 16, 16)
    single = read_mrc(write_mrc(tmp_path / "one.mrcs", stack[:1], 1.5))
    assert single.shape == (1, 16, 16)


def test_mrc_nonstandard_axis_order_is_permuted(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # [z, y, x]
    with mrcfile.new(tmp_path / "t.mrc") as mrc:
        mrc.set_data(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # stored [x, y, z]
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 3, 2, 1
        mrc.voxel_size = 1.0
    np.testing.assert_array_equal(read_mrc(tmp_path / "t.mrc").data, vol)


def test_stack_writer_writes_chunks_and_exact_header_stats(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.normal(3.0, 2.0, size=(10, 12, 12)).astype(np.float32)
    with MrcStackWriter(tmp_path / "w.mrcs", 10, 12, 2.8) as writer:
        writer.write(4, images[4:])  # any order
        writer.write(0, images[:4])
    out = read_mrc(tmp_path / "w.mrcs")
    np.testing.assert_array_equal(out.data, images)
    assert out.voxel_size_A == pytest.approx(2.8, rel=1e-6) and out.is_stack
    with mrcfile.open(tmp_path / "w.mrcs") as mrc:
        assert float(mrc.header.dmean) == pytest.approx(images.mean(dtype=np.float64), rel=1e-5)
        assert float(mrc.header.rms) == pytest.approx(images.std(dtype=np.float64), rel=1e-5)
        assert float(mrc.header.dmax) == images.max()
    with pytest.raises(RuntimeError, match="never written"):
        with MrcStackWriter(tmp_path / "x.mrcs", 3, 12, 2.8) as writer:
            writer.write(0, images[:2])


def test_mrc_without_map_id_is_read_permissively_with_a_warning():
    with pytest.warns(RuntimeWarning, match="strict validation"):
        out = read_mrc(REAL / "cryodrgn_relion31" / "relion31.mrcs")
    assert not out.header_ok and out.shape == (5, 256, 256)
    assert out.voxel_size_A == 1.0  # the header's (wrong) value; STAR's 2.806 Å wins in Dataset
    with mrcfile.open(REAL / "cryodrgn_relion31" / "relion31.mrcs", permissive=True) as mrc:
        np.testing.assert_array_equal(out.data, mrc.data)


def test_header_pixel_size_zero_is_none():
    assert read_mrc(REAL / "aspire_sample" / "sample.mrcs").voxel_size_A is None


def test_write_mrc_refuses_missing_pixel_size(tmp_path):
    with pytest.raises(ValueError, match="pixel size"):
        write_mrc(tmp_path / "a.mrc", np.zeros((4, 4, 4)), 0.0)


# --------------------------------------------------------------------------- bad MRC
def test_truncated_mrc_is_named_with_the_fix(tmp_path):
    path = write_mrc(tmp_path / "cut.mrcs", np.ones((4, 32, 32)), 1.0)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 1000)
    with pytest.raises(CryonbInputError, match="truncated") as err:
        read_mrc(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_non_mrc_file_is_named(tmp_path):
    path = tmp_path / "notes.mrc"
    path.write_text("this is not a map\n" * 200)
    with pytest.raises(CryonbInputError, match="not an MRC file") as err:
        read_mrc(path)
    assert str(path) in str(err.value)
    tiny = tmp_path / "tiny.mrc"
    tiny.write_bytes(b"\0" * 100)
    with pytest.raises(CryonbInputError, match="1024-byte MRC header"):
        read_mrc(tiny)


def test_missing_mrc_is_named(tmp_path):
    with pytest.raises(CryonbInputError, match="does not exist"):
        read_mrc(tmp_path / "absent.mrc")


# ----------------------------------------------------------------------------- STAR: real
@pytest.mark.parametrize("name", ["relion31.star", "relion31.v2.star"])
def test_relion31_real_set(name):
    meta = read_particles_star(REAL / "cryodrgn_relion31" / name)
    assert len(meta) == 5 and meta.pixel_size_A == 2.806 and meta.box_size == 256
    ctf = meta.ctf
    np.testing.assert_allclose(ctf.voltage_kV, 300.0)
    np.testing.assert_allclose(ctf.cs_mm, 0.01)
    np.testing.assert_allclose(ctf.amplitude_contrast, 0.1)
    assert ctf.defocus_u_A[0] == 13108.082418 and ctf.defocus_v_A[1] == 12643.518499
    assert ctf.defocus_angle_deg[0] == -160.39
    np.testing.assert_allclose(
        meta.rotations[0], euler_to_matrix(-102.30296, 82.318041, 124.706463), atol=1e-12)
    rot, tilt, psi = matrix_to_euler(meta.rotations[:1])
    np.testing.assert_allclose([rot[0], tilt[0], psi[0]], [-102.30296, 82.318041, 124.706463])
    np.testing.assert_allclose(meta.shifts_A[:2], [[0.019324, -0.64686], [-0.25248, 0.403454]])
    assert meta.image_paths[0].endswith("relion31.mrcs")
    np.testing.assert_array_equal(meta.image_indices, np.arange(5))


def test_relion5_real_set_two_stacks_out_of_order():
    meta = read_particles_star(REAL / "relion5.star")
    assert len(meta) == 17  # every row kept (cryoDRGN #420)
    assert meta.pixel_size_A == 0.89 and meta.box_size == 448
    np.testing.assert_allclose(meta.ctf.voltage_kV, 100.0)
    np.testing.assert_allclose(meta.ctf.cs_mm, 1.6)
    names = [Path(p).name for p in meta.image_paths[:4]]
    assert names == ["toy_images_a.mrcs", "toy_images_b.mrcs", "toy_images_a.mrcs",
                     "toy_images_a.mrcs"]
    np.testing.assert_array_equal(meta.image_indices[:4], [0, 1, 2, 3])
    np.testing.assert_allclose(meta.shifts_A[1], [1.259694, 2.626956])
    assert meta.half_set[0] == 0 and meta.half_set[1] == 1
    assert meta.ctf.defocus_u_A[0] == 11949.06133


def test_empiar10076_star_and_cs_give_the_same_particles():
    star = read_particles_star(REAL / "cryodrgn_empiar10076" / "empiar_10076_7.star")
    cs = read_cryosparc_cs(REAL / "cryodrgn_empiar10076" / "empiar_10076_7.cs")
    assert len(star) == len(cs) == 7
    assert star.pixel_size_A == pytest.approx(1e4 * 5 / 38168, rel=1e-12)  # 1.309998 Å
    assert cs.pixel_size_A == pytest.approx(star.pixel_size_A, rel=1e-6)
    np.testing.assert_array_equal(star.image_indices, cs.image_indices)
    assert list(star.image_paths) == list(cs.image_paths)
    for field in ("defocus_u_A", "defocus_v_A", "voltage_kV", "cs_mm", "amplitude_contrast"):
        np.testing.assert_allclose(getattr(star.ctf, field), getattr(cs.ctf, field), rtol=1e-6)
    np.testing.assert_allclose(star.ctf.defocus_angle_deg, cs.ctf.defocus_angle_deg, atol=1e-5)
    assert star.data_sign == 1.0 and cs.data_sign == -1.0  # blob/sign marks dark particles
    assert star.rotations is None and cs.rotations is None


def test_aspire_relion30_set_origins_in_pixels():
    meta = read_particles_star(REAL / "aspire_sample" / "sample_relion_data.star")
    psize = 1e4 * 5.0 / 37369.207031
    assert len(meta) == 17 and meta.pixel_size_A == pytest.approx(psize, rel=1e-12)
    np.testing.assert_allclose(meta.shifts_A[0], np.array([0.1996, 0.1996]) * psize)
    np.testing.assert_allclose(
        meta.rotations[0], euler_to_matrix(109.186640, 122.200343, 71.118492), atol=1e-12)
    assert meta.half_set[0] == 1 and meta.half_set[2] == 0  # _rlnRandomSubset 2 and 1


def test_relion30_refinement_without_amplitude_contrast_warns():
    with pytest.warns(RuntimeWarning, match="AmplitudeContrast"):
        meta = read_particles_star(REAL / "FinalRefinement-OriginalParticles-PfCRT.star")
    assert meta.pixel_size_A == pytest.approx(1e4 * 1.035 / 10000.0)
    np.testing.assert_allclose(meta.ctf.amplitude_contrast, 0.0)  # RELION's default
    np.testing.assert_allclose(meta.shifts_A[0], np.array([-0.14063, -0.04688]) * 1.035)


def test_optics_groups_are_looked_up_per_particle():
    path = REAL / "relion31.6opticsgroups.star"
    meta = read_particles_star(path)
    blocks = starfile.read(path)
    optics = blocks["optics"].set_index("rlnOpticsGroup")
    groups = blocks["particles"]["rlnOpticsGroup"].to_numpy()
    np.testing.assert_allclose(meta.ctf.cs_mm, optics.loc[groups, "rlnSphericalAberration"])
    np.testing.assert_allclose(meta.pixel_sizes_A, optics.loc[groups, "rlnImagePixelSize"])
    with pytest.raises(CryonbInputError, match=r"1.24, 1.25"):
        _ = meta.pixel_size_A


def test_cryosparc_export_with_project_paths():
    meta = read_cryosparc_cs(REAL / "cryosparc_J2_particles_exported.cs")
    assert len(meta) == 22 and meta.pixel_size_A == pytest.approx(1.345, rel=1e-6)
    assert "/J1/imported/" in meta.image_paths[0] and ">" not in meta.image_paths[0]
    assert meta.box_size == 300 and meta.rotations is None


def test_cryosparc_3d_alignments_convert_units(tmp_path):
    records = np.load(REAL / "cryosparc_J2_particles_exported.cs")[:3]
    fields = [(name, records.dtype[name]) for name in records.dtype.names
              if not name.startswith("alignments2D")]
    fields += [("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,)),
               ("alignments3D/psize_A", "<f4"), ("alignments3D/split", "<u4")]
    out = np.zeros(3, dtype=fields)
    for name in records.dtype.names:
        if name in out.dtype.names:
            out[name] = records[name]
    out["alignments3D/pose"] = [[0.0, 0.0, np.pi / 2], [np.pi, 0, 0], [0.1, 0.2, 0.3]]
    out["alignments3D/shift"] = [[1.0, -2.0], [0, 0], [3, 4]]
    out["alignments3D/psize_A"] = 2.0
    out["alignments3D/split"] = [0, 1, 1]
    with open(tmp_path / "p.cs", "wb") as fh:
        np.save(fh, out)
    meta = read_cryosparc_cs(tmp_path / "p.cs")
    np.testing.assert_allclose(meta.rotations[0], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-7)
    np.testing.assert_allclose(meta.rotations[1], np.diag([1.0, -1, -1]), atol=1e-7)
    np.testing.assert_allclose(meta.shifts_A[0], [2.0, -4.0])  # px at alignments3D/psize_A
    np.testing.assert_array_equal(meta.half_set, [0, 1, 1])
    np.testing.assert_allclose(meta.ctf.defocus_angle_deg[0],
                               np.rad2deg(records["ctf/df_angle_rad"][0]), rtol=1e-6)


# --------------------------------------------------------------------------- STAR round trip
def test_star_round_trip(tmp_path, random_ctf):
    rng = np.random.default_rng(3)
    n = 12
    ctf = random_ctf(rng, n, defocus_u_A=(8000, 30000), defocus_v_A=(8000, 30000),
                     defocus_angle_deg=(-180, 180),
                     voltage_kV=np.where(np.arange(n) % 3 == 0, 300.0, 200.0),
                     amplitude_contrast=0.07, phase_shift_deg=(0, 90), bfactor_A2=(0, 100),
                     scale=(0.5, 1))
    rotations = random_rotations(n, rng)
    shifts = rng.normal(0, 5, (n, 2))
    half = rng.integers(0, 2, n)
    stacks = [str(tmp_path / "stacks" / ("a.mrcs" if i % 2 else "b.mrcs")) for i in range(n)]
    indices = rng.permutation(n)  # out of order, two stacks
    star = write_particles_star(tmp_path / "p.star", image_paths=stacks, image_indices=indices,
                                pixel_size_A=2.8, box_size=128, ctf=ctf, rotations=rotations,
                                shifts_A=shifts, half_set=half)
    text = star.read_text()
    assert text.startswith("# version 30001")
    assert "stacks/a.mrcs" in text and str(tmp_path) not in text  # relative paths
    meta = read_particles_star(star)
    assert meta.pixel_size_A == 2.8 and meta.box_size == 128
    np.testing.assert_array_equal(meta.image_indices, indices)
    assert [Path(p).resolve() for p in meta.image_paths] == [Path(p).resolve() for p in stacks]
    for field, tol in (("defocus_u_A", 1e-6), ("defocus_angle_deg", 1e-6), ("voltage_kV", 0),
                       ("phase_shift_deg", 1e-6), ("bfactor_A2", 1e-6), ("scale", 1e-6)):
        np.testing.assert_allclose(getattr(meta.ctf, field), getattr(ctf, field), atol=tol)
    np.testing.assert_allclose(meta.rotations, rotations, atol=1e-7)
    np.testing.assert_allclose(meta.shifts_A, shifts, atol=1e-6)
    np.testing.assert_array_equal(meta.half_set, half)
    optics = starfile.read(star)["optics"]
    assert len(optics) == 2  # 200 and 300 kV
    assert set(optics["rlnVoltage"]) == {200.0, 300.0}


# --------------------------------------------------------------------------- bad STAR
def _write_star(path, particles, optics=None):
    blocks = {"particles": pd.DataFrame(particles)}
    if optics is not None:
        blocks = {"optics": pd.DataFrame(optics), **blocks}
    starfile.write(blocks, path)
    return path


_OPTICS = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g"], "rlnVoltage": [300.0],
           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
           "rlnImagePixelSize": [1.5], "rlnImageSize": [16], "rlnImageDimensionality": [2]}


def _particles(n=2, **extra):
    return {"rlnImageName": [f"{i + 1}@s.mrcs" for i in range(n)], "rlnOpticsGroup": [1] * n,
            "rlnDefocusU": [1e4] * n, "rlnDefocusV": [1e4] * n, "rlnDefocusAngle": [0.0] * n,
            **extra}


def test_missing_ctf_columns_are_listed(tmp_path):
    optics = {k: v for k, v in _OPTICS.items() if k != "rlnVoltage"}
    path = _write_star(tmp_path / "p.star", _particles(), optics)
    with pytest.raises(CryonbInputError, match="_rlnVoltage") as err:
        read_particles_star(path)
    assert str(path) in str(err.value)


def test_absent_and_zero_pixel_size(tmp_path):
    optics = {k: v for k, v in _OPTICS.items() if k != "rlnImagePixelSize"}
    path = _write_star(tmp_path / "a.star", _particles(), optics)
    with pytest.raises(CryonbInputError, match="no pixel size"):
        read_particles_star(path)
    assert read_particles_star(path, pixel_size_A=1.2).pixel_size_A == 1.2
    path = _write_star(tmp_path / "z.star", _particles(), {**_OPTICS, "rlnImagePixelSize": [0.0]})
    with pytest.raises(CryonbInputError, match="zero"):
        read_particles_star(path)


def test_nan_in_star_column_and_bad_image_name(tmp_path):
    path = _write_star(tmp_path / "n.star", _particles(rlnAngleRot=[1.0, np.nan],
                                                       rlnAngleTilt=[0.0, 0.0],
                                                       rlnAnglePsi=[0.0, 0.0]), _OPTICS)
    with pytest.raises(CryonbInputError, match=r"_rlnAngleRot .*data row 2"):
        read_particles_star(path)
    path = _write_star(tmp_path / "b.star", {**_particles(), "rlnImageName": ["s.mrcs", "x"]},
                       _OPTICS)
    with pytest.raises(CryonbInputError, match="N@stack"):
        read_particles_star(path)


def test_not_a_star_file(tmp_path):
    with pytest.raises(CryonbInputError, match="does not exist"):
        read_particles_star(tmp_path / "absent.star")
    path = tmp_path / "m.star"
    _write_star(path, {"rlnMicrographName": ["a.mrc"], "rlnDefocusU": [1.0]})
    with pytest.raises(CryonbInputError, match="_rlnImageName"):
        read_particles_star(path)


def test_cli_reports_one_clear_line(tmp_path, capsys):
    from cryonb.cli import main

    path = _write_star(tmp_path / "p.star", _particles(), _OPTICS)  # s.mrcs does not exist
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "s.mrcs" in err and "--datadir" in err


# --------------------------------------------------------------------- physical value ranges
def test_star_values_at_the_range_limits_are_read_and_beyond_them_named(tmp_path):
    from cryonb.io.validate import RANGES

    edge = {**_OPTICS, "rlnVoltage": [60.0], "rlnSphericalAberration": [0.0],
            "rlnAmplitudeContrast": [0.0], "rlnImagePixelSize": [0.1]}
    path = _write_star(tmp_path / "edge.star",
                       {**_particles(), "rlnDefocusU": [-2e4, 2e5], "rlnDefocusV": [0.0, 1e4]},
                       edge)
    meta = read_particles_star(path)  # overfocus, zero defocus, Cs corrector, Q = 0: all valid
    np.testing.assert_allclose(meta.ctf.defocus_u_A, [-2e4, 2e5])
    assert meta.ctf.cs_mm[0] == 0.0 and meta.pixel_size_A == pytest.approx(0.1)
    assert RANGES["amplitude_contrast"].describe() == "0 <= value < 1"
    path = _write_star(tmp_path / "v.star", _particles(), {**_OPTICS, "rlnVoltage": [3e5]})
    with pytest.raises(CryonbInputError, match=r"_rlnVoltage is 300000 in the optics table, "
                       r"data row 1, outside the physical range 60 to 1000 kV") as err:
        read_particles_star(path)
    assert err.value.path == str(path) and "kV" in err.value.fix
    path = _write_star(tmp_path / "d.star", {**_particles(), "rlnDefocusU": [1e4, 3e5]}, _OPTICS)
    with pytest.raises(CryonbInputError, match=r"_rlnDefocusU is 300000 in the particles table, "
                       r"data row 2"):
        read_particles_star(path)


def test_pixel_size_override_skips_the_files_pixel_size_range(tmp_path):
    path = _write_star(tmp_path / "p.star", _particles(), {**_OPTICS, "rlnImagePixelSize": [500.0]})
    with pytest.raises(CryonbInputError, match="_rlnImagePixelSize is 500"):
        read_particles_star(path)
    assert read_particles_star(path, pixel_size_A=1.2).pixel_size_A == 1.2


def test_cryosparc_values_beyond_the_ranges_are_named_with_0_based_row(tmp_path):
    records = np.load(REAL / "cryosparc_J2_particles_exported.cs")
    records["ctf/amp_contrast"][0] = 0.0  # allowed: the lower limit
    records["ctf/cs_mm"][7] = 25.0
    path = tmp_path / "p.cs"
    with open(path, "wb") as fh:
        np.save(fh, records)
    with pytest.raises(CryonbInputError, match=r"ctf/cs_mm is 25 in the \.cs file, "
                       r"row \(0-based\) 7, outside the physical range 0 to 20 mm"):
        read_cryosparc_cs(path)
    records["ctf/cs_mm"][7] = 2.7
    with open(path, "wb") as fh:
        np.save(fh, records)
    assert read_cryosparc_cs(path).ctf.amplitude_contrast[0] == 0.0
