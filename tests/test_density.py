"""Density maps of atomic models (cryonb.synthetic.density), checked on chains of 1AON.

Measured when these tests were written (gemmi 0.7.5): relative error of the integral
1.3e-4 (64 px, 2.8 Å) and 3.0e-4 (64 px, 4 Å); density centroid within 0.03 voxel of N//2;
Fourier coefficients within 1e-4 (of max |F|) of a direct structure-factor sum.
"""

from __future__ import annotations

import re

import gemmi
import numpy as np
import pytest

from cryonb.fourier import fft3_centered, frequency_grid_3d
from cryonb.io.errors import CryonbInputError
from cryonb.samples import sample_path
from cryonb.synthetic.density import (
    DensityParams,
    center_of_mass_A,
    density_from_file,
    read_structure,
    select_chains,
    structure_to_density,
    total_scattering,
)

INTEGRAL_RTOL = 1e-3  # measured 1.3e-4 (2.8 Å) and 3.0e-4 (4 Å)


@pytest.fixture(scope="module")
def structure() -> gemmi.Structure:
    return read_structure(sample_path("1aon.pdb.gz"))


@pytest.fixture(scope="module")
def chain_a(structure: gemmi.Structure) -> gemmi.Structure:
    return select_chains(structure, "A")


@pytest.fixture(scope="module")
def density_a(chain_a: gemmi.Structure) -> np.ndarray:
    return structure_to_density(chain_a, DensityParams(64, 2.8))


def _centroid_xyz(d: np.ndarray) -> np.ndarray:
    """Density-weighted centroid in voxel coordinates, returned as (x, y, z)."""
    d = d.astype(np.float64)
    z, y, x = np.indices(d.shape)
    w = d.sum()
    return np.array([(x * d).sum(), (y * d).sum(), (z * d).sum()]) / w


def _atom_arrays(st: gemmi.Structure) -> tuple[np.ndarray, np.ndarray]:
    """Positions (n, 3) (x, y, z) in Å and occupancy * f_e(0) weights of the first model."""
    pos, w = [], []
    for ch in st[0]:
        for res in ch:
            for at in res:
                pos.append(at.pos.tolist())
                w.append(at.occ * sum(at.element.c4322.a))
    return np.array(pos), np.array(w)


def test_select_chains_copies(structure: gemmi.Structure, chain_a: gemmi.Structure) -> None:
    assert [ch.name for ch in chain_a[0]] == ["A"]
    assert chain_a[0].count_atom_sites() == 3836  # 524 residues + ADP + Mg in 1AON chain A
    assert structure[0].count_atom_sites() == 58870  # the original is untouched
    with pytest.raises(ValueError, match="not in the structure"):
        select_chains(structure, ["A", "Z9"])


@pytest.mark.parametrize(("box", "pixel_A"), [(64, 2.8), (64, 4.0)])
def test_integral_equals_total_scattering(
    chain_a: gemmi.Structure, density_a: np.ndarray, box: int, pixel_A: float
) -> None:
    d = density_a if pixel_A == 2.8 else structure_to_density(chain_a, DensityParams(box, pixel_A))
    assert d.shape == (box, box, box) and d.dtype == np.float32
    expected = total_scattering(chain_a)
    assert expected == pytest.approx(_atom_arrays(chain_a)[1].sum(), rel=1e-9)
    assert expected == pytest.approx(9082.90, abs=0.01)  # Å; 3836 atoms, f_e(0) = 2.51 Å for C
    integral = d.sum(dtype=np.float64) * pixel_A**3
    assert integral == pytest.approx(expected, rel=INTEGRAL_RTOL)


def test_density_centroid_is_box_centre(density_a: np.ndarray) -> None:
    n = density_a.shape[0]
    # the density is weighted by scattering, the centring by mass: they differ by ~0.03 voxel
    np.testing.assert_allclose(_centroid_xyz(density_a), [n // 2] * 3, atol=0.1)


def test_extra_bfactor_keeps_integral_and_damps_high_frequencies(
    chain_a: gemmi.Structure, density_a: np.ndarray
) -> None:
    b, n, p = 100.0, 64, 2.8
    blurred = structure_to_density(chain_a, DensityParams(n, p, bfactor_A2=b))
    assert blurred.sum(dtype=np.float64) == pytest.approx(density_a.sum(dtype=np.float64), rel=1e-5)
    f0 = fft3_centered(density_a.astype(np.float64))
    f1 = fft3_centered(blurred.astype(np.float64))
    kx, ky, kz = frequency_grid_3d(n, p)
    s2 = kx**2 + ky**2 + kz**2
    # every Fourier coefficient is multiplied by exp(-B s^2 / 4)
    err = np.abs(f1 - f0 * np.exp(-b * s2 / 4)).max() / np.abs(f0).max()
    assert err < 1e-5
    high = s2 > (0.25 / p) ** 2  # beyond half Nyquist, where exp(-B s^2/2) < 0.45
    ratio = (np.abs(f1[high]) ** 2).sum() / (np.abs(f0[high]) ** 2).sum()
    assert ratio < np.exp(-b * (0.25 / p) ** 2 / 2)


def test_axis_order_with_off_centre_chain(structure: gemmi.Structure, chain_a) -> None:
    """Chain A, placed as in the whole complex: its density centroid, in [z, y, x] voxels, is at
    (chain A centroid - complex centre) / pixel + N // 2."""
    n, p = 64, 4.0
    com_all = center_of_mass_A(structure)
    d = structure_to_density(chain_a, DensityParams(n, p), center=com_all)
    pos, w = _atom_arrays(chain_a)
    offset_px = ((w[:, None] * pos).sum(0) / w.sum() - com_all) / p  # (x, y, z)
    # the offset is different on every axis, so any permutation or sign flip would be caught
    diffs = np.abs(np.concatenate([offset_px - np.roll(offset_px, 1), 2 * offset_px]))
    assert diffs.min() > 2
    centroid_zyx = _centroid_xyz(d)[::-1]
    expected_zyx = offset_px[::-1] + n // 2
    np.testing.assert_allclose(centroid_zyx, expected_zyx, atol=0.05)  # scattering-weighted
    mass_offset = (center_of_mass_A(chain_a) - com_all) / p
    np.testing.assert_allclose(centroid_zyx, mass_offset[::-1] + n // 2, atol=0.5)


def test_fourier_coefficients_match_direct_structure_factors(structure) -> None:
    """FT of the map = sum over atoms of occ f_e(s) exp(-(B + B_extra) s^2/4) e^{-2 pi i k.r}."""
    st = select_chains(structure, "O")  # one GroES subunit, 725 atoms
    n, p, b_extra = 32, 2.5, 30.0
    d = structure_to_density(st, DensityParams(n, p, bfactor_A2=b_extra))
    f_map = fft3_centered(d.astype(np.float64)) * p**3  # continuous FT, in Å
    kx, ky, kz = frequency_grid_3d(n, p)
    s2 = kx**2 + ky**2 + kz**2
    c = center_of_mass_A(st)
    f_direct = np.zeros_like(f_map)
    for ch in st[0]:
        for res in ch:
            for at in res:
                coef = at.element.c4322
                b_tot = at.b_iso + b_extra
                f = sum(
                    a * np.exp(-(bi + b_tot) * s2 / 4) for a, bi in zip(coef.a, coef.b, strict=True)
                )
                x, y, z = np.array(at.pos.tolist()) - c
                f_direct += at.occ * f * np.exp(-2j * np.pi * (kx * x + ky * y + kz * z))
    inner = (slice(1, None),) * 3  # fourier_crop zeroes the unpaired Nyquist planes
    err = np.abs(f_map[inner] - f_direct[inner]).max() / np.abs(f_direct).max()
    assert err < 1e-3  # measured 1e-4


def test_model_too_large_raises_with_minimum_box(chain_a: gemmi.Structure) -> None:
    p = 2.8
    pos, _ = _atom_arrays(chain_a)
    r_max = np.sqrt(((pos - center_of_mass_A(chain_a)) ** 2).sum(1)).max()  # 51.7 Å
    n_min = int(np.ceil(2 * (r_max + 5.0) / p))
    n_min += n_min % 2
    assert n_min == 42
    with pytest.raises(ValueError, match=r"minimum box_size of 42\b") as info:
        structure_to_density(chain_a, DensityParams(40, p))
    assert re.search(r"51\.7 Å", str(info.value))
    d = structure_to_density(chain_a, DensityParams(n_min, p))  # the suggested box works
    assert d.shape == (42, 42, 42)


def test_missing_file_raises_input_error(tmp_path) -> None:
    missing = tmp_path / "no_such_model.pdb"
    with pytest.raises(CryonbInputError, match=r"no_such_model\.pdb") as info:
        read_structure(missing)
    assert isinstance(info.value, ValueError)
    junk = tmp_path / "junk.cif"
    junk.write_text("not a cif file\n")
    with pytest.raises(CryonbInputError, match=r"junk\.cif"):
        density_from_file(junk, DensityParams(32, 2.8))


def test_density_from_file_matches_structure_path(structure: gemmi.Structure) -> None:
    params = DensityParams(32, 2.8, lowpass_A=8.0)
    d = density_from_file(sample_path("1aon.pdb.gz"), params, chains=["O"])
    ref = structure_to_density(select_chains(structure, "O"), params)
    np.testing.assert_array_equal(d, ref)
    # the low-pass removes everything beyond 1/8 Å^-1 + 1 Fourier pixel
    kx, ky, kz = frequency_grid_3d(32, 2.8)
    s = np.sqrt(kx**2 + ky**2 + kz**2)
    f = np.abs(fft3_centered(d.astype(np.float64)))
    assert f[s > 1 / 8.0 + 1 / (32 * 2.8)].max() < 1e-6 * f.max()
