"""The three test molecules (cryonb.molecules) and the final-result function (cryonb.final_results).

Truths used here, independent of the code under test:

* atom coordinates read straight from the PDB files (fixed columns, masses by element) give the
  particle's centre and the radius holding 99 % of its atoms;
* the RELION STAR file of the β-galactosidase tutorial, parsed here by a few lines of text
  processing, gives the CTFs and optics the bundled CSV must hold exactly;
* noise-free images at their true poses determine a map up to interpolation error, so their
  least-squares reconstruction must match the truth at every shell below the band limit.
"""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from cryonb.metrics import crossing, fsc
from cryonb.molecules import (
    BETAGAL_BOX_SIZE,
    BETAGAL_PIXEL_SIZE_A,
    MOLECULES,
    get_molecule,
    map_extent_A,
    map_radius_A,
)
from cryonb.samples import sample_path

_MASS = {"H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "S": 32.06, "P": 30.974,
         "MG": 24.305, "K": 39.098, "NA": 22.99, "CL": 35.45, "MN": 54.938}


def _pdb_atoms(path):
    """(x, y, z) Å and mass x occupancy of every ATOM/HETATM of the first model."""
    xyz, mass = [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith("ENDMDL"):
                break
            if line.startswith(("ATOM  ", "HETATM")):
                xyz.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
                mass.append(_MASS[line[76:78].strip().upper()] * float(line[54:60]))
    return np.array(xyz), np.array(mass)


@pytest.mark.parametrize("key", ["groel", "betagal"])
def test_model_density_has_the_particles_radius(key):
    mol = MOLECULES[key]
    xyz, mass = _pdb_atoms(mol.source_path())
    centre = (mass[:, None] * xyz).sum(axis=0) / mass.sum()
    r = np.linalg.norm(xyz - centre, axis=1)
    density = mol.density()
    assert density.shape == (mol.box_size,) * 3
    # the whole particle fits (with the 5 Å margin density.py keeps)
    assert r.max() + 5.0 < mol.box_size * mol.pixel_size_A / 2
    # 99 % of the density within the radius of 99 % of the atoms: voxels are binned by their
    # centre's radius (+- half a voxel) and atoms are blurred by B ~ 20-80 Å^2 (sigma < 1 Å)
    # and weighted by scattering rather than mass: a margin of half a pixel + 3 Å
    margin = mol.pixel_size_A / 2 + 3.0
    assert abs(map_radius_A(density, mol.pixel_size_A, fraction=0.99)
               - np.percentile(r, 99)) < margin
    assert abs(map_radius_A(density, mol.pixel_size_A, fraction=0.5)
               - np.percentile(r, 50)) < margin


def test_ribosome_map_is_cut_without_losing_the_particle_and_has_a_ribosomes_size():
    from cryonb.io import read_mrc

    mol = MOLECULES["ribosome70s"]
    raw = np.asarray(read_mrc(mol.source_path(), mmap=False).data, dtype=np.float32)
    assert raw.shape == (65, 65, 65)
    density = mol.density()
    # voxel 32 stays the centre: the 64^3 map is the file's positive part without its last
    # plane on each axis
    np.testing.assert_array_equal(density, np.clip(raw, 0.0, None)[:64, :64, :64])
    assert density.min() >= 0.0 and density.sum() > 0.5 * np.clip(raw, 0.0, None).sum()
    dropped = np.abs(raw).sum() - np.abs(raw[:64, :64, :64]).sum()
    assert dropped < 1e-3 * np.abs(raw).sum()
    # the assumed 5 Å/px gives a particle of a bacterial 70S ribosome's size (~250 Å, i.e.
    # within 200-300 Å along every axis); 2.5 Å/px would give ~130 Å
    extent = map_extent_A(density, mol.pixel_size_A, threshold_fraction=0.05)
    assert np.all((extent > 200.0) & (extent < 300.0)), extent


def _star_loop(text: str, block: str) -> pd.DataFrame:
    """The loop of ``data_<block>`` as strings, columns without ``_rln``."""
    lines = text.split(f"data_{block}", 1)[1].splitlines()
    cols, rows = [], []
    for line in lines[1:]:
        s = line.strip()
        if s.startswith("data_"):
            break
        if s.startswith("_rln"):
            cols.append(s.split()[0][4:])
        elif cols and s and not s.startswith(("#", "loop_")):
            rows.append(s.split())
    return pd.DataFrame(rows, columns=cols)


def test_betagal_ctf_table_round_trips_the_star_values_exactly():
    with gzip.open(sample_path("relion_tutorial_betagal_run_it025_data.star.gz"), "rt") as f:
        text = f.read()
    optics = _star_loop(text, "optics")
    parts = _star_loop(text, "particles")
    table = pd.read_csv(sample_path("ctf_relion_tutorial_betagal.csv"), comment="#")
    assert len(table) == len(parts) == 4786
    for col, star in (("defocus_u_A", "DefocusU"), ("defocus_v_A", "DefocusV"),
                      ("defocus_angle_deg", "DefocusAngle"), ("phase_shift_deg", "PhaseShift")):
        np.testing.assert_array_equal(table[col].to_numpy(), parts[star].astype(float).to_numpy())
    for col, star in (("voltage_kV", "Voltage"), ("cs_mm", "SphericalAberration"),
                      ("amplitude_contrast", "AmplitudeContrast"),
                      ("pixel_size_A", "ImagePixelSize"), ("image_size_px", "ImageSize")):
        assert len(optics) == 1
        assert np.all(table[col].to_numpy() == float(optics[star].iloc[0])), col
    # the values the simulation uses
    mol = get_molecule("betagal")
    assert (mol.box_size, mol.pixel_size_A) == (BETAGAL_BOX_SIZE, BETAGAL_PIXEL_SIZE_A)
    assert (mol.box_size, mol.pixel_size_A) == (int(optics["ImageSize"].iloc[0]),
                                                float(optics["ImagePixelSize"].iloc[0]))
    ctf = mol.ctfs()
    np.testing.assert_array_equal(ctf.defocus_u_A, parts["DefocusU"].astype(float).to_numpy())
    assert np.all(np.asarray(ctf.voltage_kV) == 200.0) and np.all(np.asarray(ctf.cs_mm) == 1.4)
    assert np.all(np.asarray(ctf.amplitude_contrast) == 0.1)


def test_get_molecule_names_the_choices():
    with pytest.raises(ValueError, match="betagal"):
        get_molecule("lysozyme")


def test_final_result_true_pose_limit_on_noise_free_data(tmp_path):
    """Tiny case: exact poses and (almost) no noise reconstruct the truth below the cap."""
    from cryonb.final_results import FinalResultParams, final_result

    params = FinalResultParams(n_particles=160, snr=1e4, rec_box=16, time_limit_min=None,
                               max_iterations=3, iterations_per_stage=2, batch_size=40,
                               n_heldout=8, min_fitted_iterations=1, particle_radius_A=100.0,
                               true_pose_iterations=15, seed=3)
    res = final_result("groel", params, tmp_path)
    assert res.truth.shape == res.abinitio.shape == res.true_pose.shape == (16,) * 3
    assert res.pixel_size_A == pytest.approx(5.6 * 64 / 16)
    assert res.achieved_snr == pytest.approx(1e4, rel=0.05)
    below = res.true_pose_fsc.freq_invA <= res.max_freq_invA + 1e-12
    assert np.all(np.isnan(res.true_pose_fsc.fsc[~below]))
    # shells below the cap, without the Nyquist shell N // 2 (whose unpaired planes the
    # Fourier-cropped truth has zeroed, while the reconstruction need not)
    shells = below & (res.true_pose_fsc.shell < 16 // 2)
    assert shells.sum() >= 3
    assert np.all(res.true_pose_fsc.fsc[shells] > 0.95), res.true_pose_fsc.fsc
    assert not res.true_pose_flipped
    # the stored curves and resolutions are those of the stored maps
    again = fsc(res.abinitio, res.truth, res.pixel_size_A, max_freq_invA=res.max_freq_invA)
    np.testing.assert_allclose(again.fsc[below], res.abinitio_fsc.fsc[below], atol=1e-5)
    for curve, r05 in ((res.abinitio_fsc, res.abinitio_res05),
                       (res.true_pose_fsc, res.true_pose_res05)):
        ref = crossing(curve.freq_invA, curve.fsc, 0.5, limit_A=curve.limit_A)
        assert (r05.value_A, r05.crossed) == (ref.value_A, ref.crossed)
    assert not res.true_pose_res05.crossed  # FSC > 0.95 everywhere: "better than" the cap
    assert res.true_pose_res05.value_A >= 1.0 / res.max_freq_invA - 1e-9  # not past the cap
    assert set(res.row()) >= {"molecule", "ab initio FSC 0.5", "true poses FSC 0.5"}
