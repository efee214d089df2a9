"""Electron-scattering density maps of atomic models, computed with gemmi.

Conventions (see ``docs/conventions.md``)
-----------------------------------------
* Volumes are NumPy arrays indexed ``[z, y, x]`` (x fastest); coordinate vectors are
  ``(x, y, z)`` in Å.
* The model's centre of mass (or a given centre) is put at voxel ``N // 2`` on every axis.
* The map is computed in a periodic (P1, cubic) unit cell of edge ``box_size * pixel_size_A``.
  Every atom must lie within ``box_size * pixel_size_A / 2 - 5 Å`` of the centre, otherwise
  :func:`structure_to_density` raises ``ValueError`` rather than let density wrap around.

Units of the density
--------------------
gemmi's :class:`gemmi.DensityCalculatorE` sums, for every atom, the real-space image of the
electron scattering factor of its element (International Tables Vol. C, table 4.3.2.2; Peng et
al. 1996, five Gaussians, no constant term), blurred by the atom's B-factor::

    rho(r) = occ * sum_i a_i (4 pi / (b_i + B))**1.5 * exp(-4 pi**2 r**2 / (b_i + B))

The coefficients ``a_i`` are in Å and ``b_i`` in Å², so the density is in **Å/Å³ = Å⁻²**, and
its integral over space is ``occ * f_e(0) = occ * sum_i a_i`` in Å (see
:func:`total_scattering`).  Multiply by ``h**2 / (2 pi m0 e) = 47.878 V Å²`` to obtain the
Coulomb potential in volts.  On the voxel grid: ``density.sum() * pixel_size_A**3`` ≈
``total_scattering(structure)`` (measured to better than 0.1 % for 1AON, see
``tests/test_density.py``).

Sampling
--------
The map returned is the **band-limited** density: its discrete Fourier coefficients are the
continuous Fourier transform of the atomic density at the lattice frequencies ``k / (N p)``,
for all frequencies of the cube (the unpaired Nyquist planes of an even box are zeroed).  It is
*not* the density sampled point-wise at the voxel centres, which would alias badly for atoms
sharper than the voxel.  It is computed as follows:

1. gemmi evaluates the atoms on a grid ``_OVERSAMPLING`` (= 2) times finer than requested, each
   atom blurred by an extra B-factor ``blur`` (gemmi's ``dc.blur``) chosen so that aliasing on the
   fine grid is below ~1e-5 of the signal at every frequency kept in step 2;
2. the fine grid is Fourier-cropped to ``box_size`` (:func:`cryonb.fourier.fourier_crop`);
3. in Fourier space the spectrum is multiplied by ``exp(+blur s²/4)`` (undoing gemmi's blur),
   ``exp(-bfactor_A2 s²/4)`` and the optional low-pass, ``s = |k|`` in 1/Å.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import gemmi
import numpy as np
from numpy.typing import NDArray

from ..fourier import fft3_centered, fourier_crop, frequency_grid_3d, ifft3_centered

__all__ = [
    "DensityParams",
    "center_of_mass_A",
    "density_from_file",
    "read_structure",
    "select_chains",
    "structure_to_density",
    "total_scattering",
]

#: Margin (Å) kept between the farthest atom and the edge of the periodic box.
EDGE_MARGIN_A = 5.0
#: Integer factor by which gemmi's grid is finer than the requested pixel size.
_OVERSAMPLING = 2
#: Target relative aliasing error on the fine grid, at every frequency that is kept.
_ALIAS_TOL = 1e-5
#: gemmi's density cutoff (Å⁻²) below which an atom's tail is dropped (gemmi's default is 1e-5).
_GEMMI_CUTOFF = 1e-6
#: Width of the soft edge of the low-pass filter, in Fourier pixels.
_LOWPASS_EDGE_PX = 2.0


@dataclass(frozen=True)
class DensityParams:
    """Parameters of a simulated density map.

    Attributes
    ----------
    box_size : int
        Edge of the cubic box, in voxels; the map has shape ``(box_size,) * 3`` ``[z, y, x]``.
    pixel_size_A : float
        Voxel size in Å.
    bfactor_A2 : float
        Extra isotropic B-factor (Å², >= 0) applied to the whole map, on top of the atomic
        B-factors: the spectrum is multiplied by ``exp(-bfactor_A2 * s**2 / 4)``.
    lowpass_A : float or None
        If given, a low-pass filter at this resolution (Å) is applied last: the spectrum is
        multiplied by a raised-cosine edge that equals 0.5 at ``s = 1 / lowpass_A`` and goes from
        1 to 0 over 2 Fourier pixels (``2 / (box_size * pixel_size_A)`` 1/Å).
    use_atomic_bfactors : bool
        If True (default) each atom is blurred by its own B-factor (isotropic ``B`` or
        anisotropic ``ANISOU``, as gemmi does).  If False all atomic B-factors are taken as 0
        (the bare scattering factors), and only ``bfactor_A2`` blurs the map.
    """

    box_size: int
    pixel_size_A: float
    bfactor_A2: float = 0.0
    lowpass_A: float | None = None
    use_atomic_bfactors: bool = True

    def __post_init__(self) -> None:
        if int(self.box_size) != self.box_size or self.box_size < 2:
            raise ValueError(f"box_size must be an integer >= 2, got {self.box_size!r}")
        if not (self.pixel_size_A > 0 and math.isfinite(self.pixel_size_A)):
            raise ValueError(f"pixel_size_A must be positive, got {self.pixel_size_A!r}")
        if not (self.bfactor_A2 >= 0 and math.isfinite(self.bfactor_A2)):
            raise ValueError(f"bfactor_A2 must be >= 0 (Å²), got {self.bfactor_A2!r}")
        if self.lowpass_A is not None and not (
            self.lowpass_A > 0 and math.isfinite(self.lowpass_A)
        ):
            raise ValueError(
                f"lowpass_A must be a positive resolution in Å, got {self.lowpass_A!r}"
            )


def read_structure(path: str | os.PathLike) -> gemmi.Structure:
    """Read an atomic model (PDB or mmCIF, optionally gzipped) with :func:`gemmi.read_structure`.

    All atoms are kept as they are in the file: hydrogens, waters, ligands, ions and alternative
    conformations (alternative conformations are weighted by their occupancies downstream).
    Use :func:`select_chains` or gemmi's ``Model.remove_hydrogens`` / ``remove_ligands_and_waters``
    on the result to drop some of them.

    Parameters
    ----------
    path : str or os.PathLike
        ``.pdb``, ``.ent``, ``.cif``, ``.mmcif`` (``.gz`` allowed); the format is guessed from the
        name, as gemmi does.

    Returns
    -------
    gemmi.Structure
        Coordinates in Å.

    Raises
    ------
    cryonb.io.errors.CryonbInputError
        If the file is missing, unreadable, or holds no atoms.
    """
    from ..io.errors import input_error  # lazy: keeps this module importable on its own

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise input_error(p, "file not found", "check the path (PDB or mmCIF, optionally gzipped)")
    try:
        st = gemmi.read_structure(p)
    except (RuntimeError, ValueError, OSError) as exc:
        raise input_error(
            p,
            f"gemmi cannot read it as a PDB or mmCIF model ({exc})",
            "give a valid .pdb/.cif file (optionally .gz), with a matching extension",
        ) from exc
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise input_error(p, "the file holds no atoms", "give a coordinate file with a model")
    return st


def select_chains(structure: gemmi.Structure, chain_ids: str | Iterable[str]) -> gemmi.Structure:
    """Return a copy of ``structure`` keeping only the chains named ``chain_ids`` (all models).

    Parameters
    ----------
    structure : gemmi.Structure
        Not modified.
    chain_ids : str or iterable of str
        Chain names (``auth`` chain ids as gemmi reads them), e.g. ``"A"`` or ``["A", "H"]``.

    Raises
    ------
    ValueError
        If a requested chain is not in the first model.
    """
    wanted = {chain_ids} if isinstance(chain_ids, str) else set(chain_ids)
    present = {ch.name for ch in structure[0]}
    missing = sorted(wanted - present)
    if missing:
        raise ValueError(f"chain(s) {missing} not in the structure; available: {sorted(present)}")
    st = structure.clone()
    for model in st:
        for name in sorted({ch.name for ch in model} - wanted):
            model.remove_chain(name)
    return st


def _atoms(model: gemmi.Model) -> tuple[NDArray[np.float64], list[gemmi.Element], NDArray]:
    """Positions (n, 3) (x, y, z) in Å, elements and occupancies of all atoms of ``model``."""
    pos, els, occ = [], [], []
    for ch in model:
        for res in ch:
            for at in res:
                pos.append(at.pos.tolist())
                els.append(at.element)
                occ.append(at.occ)
    if not pos:
        raise ValueError("the model has no atoms")
    return np.asarray(pos, dtype=np.float64), els, np.asarray(occ, dtype=np.float64)


def center_of_mass_A(structure: gemmi.Structure) -> NDArray[np.float64]:
    """Mass-weighted centre of the first model, ``(x, y, z)`` in Å, shape (3,).

    Each atom is weighted by its element's standard atomic weight (``gemmi.Element.weight``)
    times its occupancy.
    """
    return _mass_center(*_atoms(structure[0]))


def _mass_center(pos: NDArray, els: list[gemmi.Element], occ: NDArray) -> NDArray[np.float64]:
    weights: dict[str, float] = {}
    w = np.array([weights.setdefault(e.name, e.weight) for e in els]) * occ
    return (w[:, None] * pos).sum(axis=0) / w.sum()


def _fe0(element: gemmi.Element) -> float:
    """``f_e(s=0) = sum_i a_i`` (Å) of gemmi's C4322 electron scattering factor."""
    coef = element.c4322
    if element.atomic_number == 0 or coef is None:
        raise ValueError(
            f"no electron scattering factor (C4322) for element {element.name!r}; "
            "fix the element column of the model"
        )
    return float(sum(coef.a))


def total_scattering(structure: gemmi.Structure) -> float:
    """Expected integral of the density of the first model, in Å.

    ``sum over atoms of occupancy * f_e(0)``, where ``f_e(0) = sum_i a_i`` is the zero-angle
    electron scattering factor of gemmi's C4322 table (the one :class:`gemmi.DensityCalculatorE`
    uses; five Gaussians, no constant term).  A B-factor does not change the integral.
    ``structure_to_density(...).sum() * pixel_size_A**3`` approximates this value.
    """
    _, els, occ = _atoms(structure[0])
    cache: dict[str, float] = {}
    fe0 = np.array([cache.setdefault(e.name, _fe0(e)) for e in els])
    return float((fe0 * occ).sum())


def _min_bfactor(model: gemmi.Model) -> float:
    """Smallest B (Å²) of any atom, using the smallest eigenvalue of anisotropic ADPs."""
    b_min = math.inf
    u_to_b = 8 * math.pi**2
    for ch in model:
        for res in ch:
            for at in res:
                if at.aniso.nonzero():
                    b = u_to_b * min(at.aniso.calculate_eigenvalues())
                else:
                    b = at.b_iso
                b_min = min(b_min, b)
    return b_min


def _minimum_box(r_max_A: float, pixel_size_A: float) -> int:
    n = math.ceil(2 * (r_max_A + EDGE_MARGIN_A) / pixel_size_A)
    return n + (n % 2)  # round up to an even box


def structure_to_density(
    structure: gemmi.Structure,
    params: DensityParams,
    *,
    center: Iterable[float] | NDArray | None = None,
) -> NDArray[np.float32]:
    """Electron-scattering density of the first model of ``structure`` on a cubic grid.

    Parameters
    ----------
    structure : gemmi.Structure
        Atomic model, coordinates in Å.  Only the first model is used; it is not modified.
    params : DensityParams
        Box size, pixel size, extra blur, low-pass.
    center : array-like of 3 floats, optional
        Point ``(x, y, z)`` in Å (model coordinates) placed at voxel ``N // 2`` on every axis.
        Default: the mass-weighted centre :func:`center_of_mass_A`.

    Returns
    -------
    numpy.ndarray, float32, shape (N, N, N), indexed [z, y, x]
        Band-limited density in Å⁻² (electron scattering factor per Å³; × 47.878 gives volts);
        ``density.sum() * pixel_size_A**3 ≈ total_scattering(structure)`` (Å).  See the module
        docstring for how it is sampled.

    Raises
    ------
    ValueError
        If an atom lies farther than ``N * pixel_size_A / 2 - 5 Å`` from the centre (its density
        would wrap around the periodic box); the message gives the minimum box size.  Also for
        an empty model or an element without electron scattering factors.
    """
    n = int(params.box_size)
    p = float(params.pixel_size_A)
    pos, els, occ = _atoms(structure[0])
    for e in {e.name: e for e in els}.values():
        _fe0(e)  # raises for unknown elements
    c = _mass_center(pos, els, occ) if center is None else np.asarray(center, dtype=np.float64)
    if c.shape != (3,):
        raise ValueError(f"center must be (x, y, z) in Å, got shape {c.shape}")

    r_max = float(np.sqrt(((pos - c) ** 2).sum(axis=1)).max())
    if r_max + EDGE_MARGIN_A > n * p / 2:
        raise ValueError(
            f"the model does not fit in a box of {n} px at {p:g} Å/px ({n * p:.1f} Å): its "
            f"farthest atom is {r_max:.1f} Å from the centre, and a {EDGE_MARGIN_A:g} Å margin is "
            f"kept, so the density would wrap around the periodic box. Use a minimum box_size "
            f"of {_minimum_box(r_max, p)} at this pixel size (or a larger pixel size)."
        )

    # --- gemmi on a finer grid, atoms shifted so that `c` is at fine index (m n) // 2 ---
    m = _OVERSAMPLING
    n_fine = m * n
    h = p / m
    st = structure.clone()
    while len(st) > 1:
        del st[len(st) - 1]
    model = st[0]
    shift = (n_fine // 2) * h - c
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*shift)))
    if not params.use_atomic_bfactors:
        for ch in model:
            for res in ch:
                for at in res:
                    at.b_iso = 0.0
                    at.aniso = gemmi.SMat33f(0, 0, 0, 0, 0, 0)

    # Aliasing: a kept frequency s <= s_nyq = 1 / (2 p) receives the atom's spectrum from
    # s' >= (2 m - 1) s_nyq, so the relative error is <= exp(-b_tot ((2m-1)^2 - 1) s_nyq^2 / 4),
    # b_tot = atomic B + blur.  Choose the blur that brings this below _ALIAS_TOL.
    s_nyq = 1.0 / (2.0 * p)
    b_needed = 4.0 * math.log(1.0 / _ALIAS_TOL) / (((2 * m - 1) ** 2 - 1) * s_nyq**2)
    b_min = _min_bfactor(model) if params.use_atomic_bfactors else 0.0
    blur = max(0.0, b_needed - b_min)

    dc = gemmi.DensityCalculatorE()
    length = n_fine * h
    dc.grid.set_unit_cell(gemmi.UnitCell(length, length, length, 90, 90, 90))
    dc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    dc.grid.set_size(n_fine, n_fine, n_fine)
    dc.d_min = 0.0  # keep the grid size set above
    dc.blur = blur
    dc.cutoff = _GEMMI_CUTOFF
    dc.put_model_density_on_grid(model)
    fine = np.asarray(dc.grid).transpose(2, 1, 0).astype(np.float64)  # [x,y,z]->[z,y,x]
    del dc

    # --- Fourier crop to the requested pixel size, then filters on the coarse spectrum ---
    vol = fourier_crop(fine, n, ndim=3)
    del fine
    kx, ky, kz = frequency_grid_3d(n, p)
    s2 = kx**2 + ky**2 + kz**2
    mult = np.exp((blur - params.bfactor_A2) * s2 / 4.0)
    if params.lowpass_A is not None:
        s = np.sqrt(s2)
        width = _LOWPASS_EDGE_PX / (n * p)
        t = np.clip((s - (1.0 / params.lowpass_A - width / 2)) / width, 0.0, 1.0)
        mult *= 0.5 * (1.0 + np.cos(np.pi * t))
    vol = ifft3_centered(fft3_centered(vol) * mult).real
    return np.ascontiguousarray(vol, dtype=np.float32)


def density_from_file(
    path: str | os.PathLike,
    params: DensityParams,
    *,
    chains: str | Iterable[str] | None = None,
) -> NDArray[np.float32]:
    """Read a model and return its density, centred on the selection's centre of mass.

    Parameters
    ----------
    path : str or os.PathLike
        PDB or mmCIF file, optionally gzipped (see :func:`read_structure`).
    params : DensityParams
        Box, pixel size and filters.
    chains : str or iterable of str, optional
        Keep only these chains (see :func:`select_chains`).

    Returns
    -------
    numpy.ndarray, float32, shape (N, N, N), indexed [z, y, x]
        Density in Å⁻², see :func:`structure_to_density`.
    """
    st = read_structure(path)
    if chains is not None:
        st = select_chains(st, chains)
    return structure_to_density(st, params)
