"""Synthetic particle sets: SNR, exact round trip of what is written, determinism, RELION."""

import hashlib
import shutil
import subprocess

import numpy as np
import pytest

from cryonb.cli import main as cli_main
from cryonb.dataset import Dataset
from cryonb.image_model import ImageModel
from cryonb.io import read_mrc
from cryonb.metrics import fsc
from cryonb.synthetic.particles import (
    SimulationParams,
    load_simulation,
    read_ctf_table,
    simulate_to_files,
)


def _blob_volume(box, rng, n_blobs=8, width_px=2.5):
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((box,) * 3)
    for _ in range(n_blobs):
        c = rng.uniform(-box / 5, box / 5, 3)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * width_px**2))
    return vol.astype(np.float32)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    rng = np.random.default_rng(0)
    volume = _blob_volume(32, rng)
    out = tmp_path_factory.mktemp("sim")
    params = SimulationParams(n_particles=300, snr=0.2, shift_sigma_A=6.0, chunk_size=70)
    result = simulate_to_files(volume, 3.0, params, np.random.default_rng(1), out,
                               progress=False)
    return volume, params, result


def test_written_files_reproduce_the_truth_and_the_snr(simulated):
    volume, params, result = simulated
    ds = Dataset.from_star(result.star_path)
    truth = result.truth
    assert ds.pixel_size_A == 3.0 and ds.box_size == 32 and len(ds) == 300
    assert read_mrc(result.stack_path).voxel_size_A == pytest.approx(3.0)
    assert read_mrc(result.truth_path).voxel_size_A == pytest.approx(3.0)
    np.testing.assert_array_equal(read_mrc(result.truth_path).data, volume)
    # re-read poses, origins and CTFs equal those drawn (to the STAR's 6 decimals)
    np.testing.assert_allclose(ds.rotations, truth.rotations, atol=1e-6)
    np.testing.assert_allclose(ds.shifts_A, truth.shifts_A, atol=1e-6)
    np.testing.assert_allclose(ds.ctf.defocus_u_A, truth.ctf.defocus_u_A, atol=1e-6)
    np.testing.assert_allclose(ds.ctf.bfactor_A2, truth.ctf.bfactor_A2, atol=1e-6)
    np.testing.assert_allclose(ds.ctf.bfactor_A2, 500.0)  # the envelope rides in the CTF
    # the images are the forward model of the STAR's own poses and CTFs plus noise
    clean = ImageModel(32, 3.0).forward(volume.astype(np.float64), ds.rotations, ds.shifts_A,
                                        ds.ctf)
    noise = ds.images().astype(np.float64) - clean
    assert noise.mean() == pytest.approx(0.0, abs=3 * result.noise_sigma / np.sqrt(noise.size))
    assert noise.std() == pytest.approx(result.noise_sigma, rel=0.01)
    achieved = clean.var() / noise.var()  # SNR over all pixels of the box, all particles
    assert achieved == pytest.approx(params.snr, rel=0.05)
    assert result.achieved_snr == pytest.approx(achieved, rel=1e-3)
    # the noise is white and independent of the signal
    assert abs(np.corrcoef(noise.ravel(), clean.ravel())[0, 1]) < 0.01


def test_load_simulation_carries_the_ground_truth(simulated):
    volume, _, result = simulated
    ds = load_simulation(result.star_path.parent)
    assert ds.rotations is None and ds.shifts_A is None  # ab initio input
    np.testing.assert_allclose(ds.truth.rotations, result.truth.rotations, atol=1e-6)
    np.testing.assert_array_equal(ds.truth.volume, volume)
    assert ds.truth.volume_pixel_size_A == pytest.approx(3.0)
    sub = ds.subset([5, 2])
    np.testing.assert_allclose(sub.truth.shifts_A, result.truth.shifts_A[[5, 2]], atol=1e-6)


def _digest(path):
    """Hash of a written file without its creation-time stamp (mrcfile writes the date and time
    into the first MRC header label, starfile into a ``# Created by`` comment)."""
    data = path.read_bytes()
    if path.suffix in (".mrc", ".mrcs"):
        data = data[:224] + data[1024:]  # 224..1023: nlabl's ten 80-byte labels
    else:
        data = b"".join(line for line in data.splitlines(keepends=True)
                        if not line.startswith(b"# Created by"))
    return hashlib.sha256(data).hexdigest()


def test_same_seed_same_files(tmp_path):
    volume = _blob_volume(16, np.random.default_rng(2))
    params = SimulationParams(n_particles=40, snr=0.5, chunk_size=15)
    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        res = simulate_to_files(volume, 4.0, params, np.random.default_rng(seed), tmp_path / name,
                                progress=False)
        runs.append((_digest(res.stack_path), _digest(res.star_path)))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0] and runs[0][1] != runs[2][1]


def test_chunk_size_does_not_change_the_result(tmp_path):
    volume = _blob_volume(16, np.random.default_rng(3))
    stacks = []
    for chunk in (7, 100):
        params = SimulationParams(n_particles=30, snr=0.5, chunk_size=chunk)
        res = simulate_to_files(volume, 4.0, params, np.random.default_rng(0),
                                tmp_path / str(chunk), progress=False)
        stacks.append(np.asarray(read_mrc(res.stack_path).data))
    np.testing.assert_allclose(stacks[0], stacks[1], rtol=1e-5, atol=1e-5)


def test_bundled_ctf_table_is_the_papers_microscope():
    from cryonb.samples import sample_path

    table = read_ctf_table(sample_path("ctf_200kV_cryosparc_P12_J24.csv"))
    assert len(table) == 2019
    np.testing.assert_allclose(table.voltage_kV, 200.0)
    np.testing.assert_allclose(table.cs_mm, 2.0)
    np.testing.assert_allclose(table.amplitude_contrast, 0.07)
    assert 7000 < table.defocus_u_A.min() < table.defocus_u_A.max() < 46000


def test_cli_default_is_a_small_groel_set(tmp_path, capsys):
    assert cli_main(["simulate", "--out", str(tmp_path), "--no-progress"]) == 0
    ds = load_simulation(tmp_path)
    assert len(ds) == 1000 and ds.box_size == 64 and ds.pixel_size_A == 5.6
    np.testing.assert_allclose(ds.ctf.voltage_kV, 200.0)
    truth = ds.truth.volume
    # 1AON centred: the density's centre of mass is at the box centre N//2
    grid = np.indices(truth.shape).reshape(3, -1)
    positive = np.clip(truth, 0, None).ravel()
    com = grid @ positive / positive.sum()
    np.testing.assert_allclose(com, 32, atol=0.3)
    out = capsys.readouterr().out
    assert "achieved" in out and (tmp_path / "simulation.json").exists()


def test_cli_from_a_map_resamples_it(tmp_path):
    from cryonb.samples import sample_path

    assert cli_main(["simulate", "--map", str(sample_path("emd_1997_64px.mrc")), "--n", "10",
                     "--box", "48", "--pixel-size", "4.2", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    truth = read_mrc(tmp_path / "truth.mrc")
    assert truth.shape == (48, 48, 48) and truth.voxel_size_A == pytest.approx(4.2)


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_reconstruct") is None,
                    reason="RELION is not installed (apt-get install relion)")
def test_relion_reconstructs_the_simulation_with_the_true_poses(tmp_path):
    """relion_reconstruct reads our STAR/MRCS (poses, origins in Å, CTF) and recovers the map."""
    rng = np.random.default_rng(4)
    volume = _blob_volume(32, rng, n_blobs=10, width_px=1.0)
    params = SimulationParams(n_particles=1500, snr=1.0, shift_sigma_A=5.0, bfactor_A2=0.0)
    res = simulate_to_files(volume, 3.0, params, rng, tmp_path, progress=False)
    subprocess.run(["relion_reconstruct", "--i", "particles.star", "--o", "rec.mrc", "--ctf"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=600)
    rec = read_mrc(tmp_path / "rec.mrc")
    assert rec.voxel_size_A == pytest.approx(3.0, rel=1e-4)
    curve = fsc(rec.data, volume, 3.0)
    assert curve.fsc[1:12].min() > 0.9, curve.fsc  # to 1/(32*3/11) = 1/8.7 Å
    assert curve.resolution(0.5).value_A < 8.0
    # a mirrored map (wrong hand or wrong axis order) would not agree
    assert fsc(rec.data, volume[:, :, ::-1], 3.0).fsc[4:12].max() < 0.5
    assert res.achieved_snr == pytest.approx(1.0, rel=0.05)
