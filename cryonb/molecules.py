"""The three test molecules of the paper's final results (Fig. 11-like), as densities and CTFs.

Each :class:`Molecule` names a bundled sample (``data_samples/``, origins in its README), the
grid it is simulated on (box and pixel size), its symmetry (reconstructions run in C1: the
symmetry is not imposed anywhere) and the table of real CTFs its particles draw from:

======================  =================================  =========  ==================  =====
key                     source                             symmetry   grid (sim.)         CTFs
======================  =================================  =========  ==================  =====
``"groel"``             PDB 1AON (GroEL-GroES-(ADP)7)      C7         64 px, 5.6 Å        [1]_
``"betagal"``           PDB 5A1A (β-galactosidase, 2.2 Å)  D2         64 px, 3.54 Å [2]_  [2]_
``"ribosome70s"``       ASPIRE's 65³ 70S ribosome map      C1         64 px, 5.0 Å [3]_   [1]_
======================  =================================  =========  ==================  =====

.. [1] ``ctf_200kV_cryosparc_P12_J24.csv``: 2,019 real CTFs of a 200 kV, Cs 2.0 mm, Q 0.07
   cryoSPARC job (the paper's microscope).
.. [2] ``ctf_relion_tutorial_betagal.csv``: the 4,786 per-particle CTFs of the RELION 3.1
   tutorial's β-galactosidase set (``run_it025_data.star``: 200 kV, Cs 1.4 mm, Q 0.1), with
   its optics' image pixel size 3.54 Å and box 64 px, which set the simulation grid.
   :func:`betagal_ctf_table` makes the CSV from the STAR file.
.. [3] The map's header has no voxel size (0), and ASPIRE does not state one (a tutorial
   gives ``pixel_size = 5`` Å to images of this map downsampled to 33 px).  **Assumed
   5.0 Å/px** for the 65³ map: the voxels above 5 % of its maximum then span
   270 x 260 x 245 Å (:func:`map_extent_A`), the size of a bacterial 70S ribosome (~250 Å
   across); 5 Å at 33 px taken literally (2.5 Å at 65 px) would make it ~130 Å, too small.
   Its background is 0 but its inside swings negative (the negative voxels sum to −89 % of
   the positive ones, as in a map whose low frequencies were suppressed), which no
   non-negative density — the model of the paper and of cryonb's positivity — can be, and
   which leaves the images with a mean too small to estimate the particle's mass from; the
   molecule's density is therefore the map's positive part (negative voxels set to 0).
   The 65³ map is cut to 64³ in real space (the last plane of each axis, outside the
   particle, is dropped), which keeps its centre voxel 32 = 64 // 2 and its pixel size.

Conventions: volumes ``[z, y, x]`` float32, centre voxel ``N // 2``; atomic models in the
units of :func:`cryonb.synthetic.density.structure_to_density` (Å⁻²), the 70S map in the
file's arbitrary units.  Simulations scale to a given SNR, so the units do not matter there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from .ctf import CTFParams
from .samples import sample_path

__all__ = ["MOLECULES", "Molecule", "betagal_ctf_table", "get_molecule", "map_extent_A",
           "map_radius_A"]

#: The CSV of the β-galactosidase CTFs (made by :func:`betagal_ctf_table`).
BETAGAL_CTF_TABLE = "ctf_relion_tutorial_betagal.csv"
#: Assumed voxel size of ``aspire_clean70SRibosome_vol_65p.mrc`` (see the module docstring).
RIBOSOME_PIXEL_SIZE_A = 5.0
_PAPER_CTF_TABLE = "ctf_200kV_cryosparc_P12_J24.csv"


@dataclass(frozen=True)
class Molecule:
    """A test molecule: where its density comes from and how it is simulated.

    Attributes
    ----------
    key : str
        Short name (``"groel"``, ``"betagal"``, ``"ribosome70s"``).
    title : str
        Name for figures.
    source : str
        File in ``data_samples/``: an atomic model (``kind="model"``) or a map (``"map"``).
    kind : {"model", "map"}
    symmetry : str
        Point group of the molecule (informative: every run is C1).
    box_size : int
        Simulation box, px.
    pixel_size_A : float
        Simulation pixel size, Å.
    ctf_table : str
        CSV of real CTFs in ``data_samples/`` (:func:`cryonb.synthetic.particles.read_ctf_table`).
    pixel_size_source : str
        Where ``pixel_size_A`` comes from.
    """

    key: str
    title: str
    source: str
    kind: Literal["model", "map"]
    symmetry: str
    box_size: int
    pixel_size_A: float
    ctf_table: str
    pixel_size_source: str

    def source_path(self) -> Path:
        """Absolute path of the bundled model or map."""
        return sample_path(self.source)

    def density(self) -> NDArray[np.float32]:
        """The density on the simulation grid, ``(box_size,) * 3`` float32 ``[z, y, x]``.

        A model: :func:`cryonb.synthetic.density.density_from_file` (all chains, centred on the
        centre of mass, atomic B-factors).  A map: read at its assumed voxel size, its
        negative voxels set to 0 (see the module docstring), and cut or zero-padded in real
        space to ``box_size`` about its centre voxel ``N // 2``.
        """
        if self.kind == "model":
            from .synthetic.density import DensityParams, density_from_file

            return density_from_file(self.source_path(),
                                     DensityParams(self.box_size, self.pixel_size_A))
        from .io import read_mrc

        data = np.asarray(read_mrc(self.source_path(), mmap=False).data, dtype=np.float32)
        return _recentre(np.clip(data, 0.0, None), self.box_size)

    def ctfs(self) -> CTFParams:
        """The real CTFs the simulated particles draw from (one row per real particle)."""
        from .synthetic.particles import read_ctf_table

        return read_ctf_table(sample_path(self.ctf_table))


def _recentre(volume: NDArray, box_size: int) -> NDArray[np.float32]:
    """Cut or zero-pad a cube to ``box_size`` keeping voxel ``N // 2`` at ``box_size // 2``."""
    n = volume.shape[0]
    out = np.zeros((box_size,) * 3, dtype=np.float32)
    lo_in = max(0, n // 2 - box_size // 2)
    lo_out = max(0, box_size // 2 - n // 2)
    m = min(n - lo_in, box_size - lo_out)
    out[lo_out:lo_out + m, lo_out:lo_out + m, lo_out:lo_out + m] = \
        volume[lo_in:lo_in + m, lo_in:lo_in + m, lo_in:lo_in + m]
    return out


#: The RELION tutorial's optics (``run_it025_data.star``: ``_rlnImageSize``,
#: ``_rlnImagePixelSize``), the β-galactosidase simulation grid; ``tests/test_molecules.py``
#: checks them against the STAR file and the CTF table.
BETAGAL_BOX_SIZE = 64
BETAGAL_PIXEL_SIZE_A = 3.54


def _molecules() -> dict[str, Molecule]:
    return {
        "groel": Molecule(
            "groel", "GroEL-GroES (1AON)", "1aon.pdb.gz", "model", "C7", 64, 5.6,
            _PAPER_CTF_TABLE, "notebook 02's grid (the paper's 128 px at 2.8 Å, binned 2x)"),
        "betagal": Molecule(
            "betagal", "β-galactosidase (5A1A)", "5a1a.pdb.gz", "model", "D2",
            BETAGAL_BOX_SIZE, BETAGAL_PIXEL_SIZE_A, BETAGAL_CTF_TABLE,
            "the RELION tutorial's optics (_rlnImagePixelSize, _rlnImageSize)"),
        "ribosome70s": Molecule(
            "ribosome70s", "70S ribosome (ASPIRE map)", "aspire_clean70SRibosome_vol_65p.mrc",
            "map", "C1", 64, RIBOSOME_PIXEL_SIZE_A, _PAPER_CTF_TABLE,
            "assumed (header voxel size 0): then 245-270 Å across (above 5 % of the "
            "maximum), the size of a bacterial 70S ribosome"),
    }


#: The three molecules, by key.
MOLECULES: dict[str, Molecule] = _molecules()


def get_molecule(key: str) -> Molecule:
    """The :class:`Molecule` named ``key`` (one of :data:`MOLECULES`)."""
    try:
        return MOLECULES[key]
    except KeyError:
        raise ValueError(f"unknown molecule {key!r}; choose one of {sorted(MOLECULES)}") from None


def map_radius_A(volume: NDArray, pixel_size_A: float, *, fraction: float = 0.99) -> float:
    """Radius (Å) about the centre voxel ``N // 2`` of the sphere holding ``fraction`` of the
    map's integral.

    The integral is signed, so the ringing of a band-limited map (positive and negative lobes
    outside the particle) averages out; use it for maps with a positive total (densities of
    atomic models), not for zero-mean maps (use :func:`map_extent_A`).

    Parameters
    ----------
    volume : (N, N, N) array ``[z, y, x]``
    pixel_size_A : float
    fraction : float
        Share of ``volume.sum()`` inside the radius.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if not vol.sum() > 0:
        raise ValueError("map_radius_A needs a map with a positive integral")
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).ravel()
    order = np.argsort(r, kind="stable")
    cum = np.cumsum(vol.ravel()[order])
    k = int(np.searchsorted(cum, fraction * cum[-1]))
    return float(r[order][min(k, order.size - 1)] * pixel_size_A)


def map_extent_A(volume: NDArray, pixel_size_A: float, *,
                 threshold_fraction: float = 0.05) -> NDArray[np.float64]:
    """Size (Å) along x, y, z of the box enclosing the voxels above ``threshold_fraction`` of
    the map's maximum: ``(number of voxels spanned) * pixel_size_A``, shape (3,)."""
    vol = np.asarray(volume, dtype=np.float64)
    zyx = np.argwhere(vol > threshold_fraction * vol.max())
    span = zyx.max(axis=0) - zyx.min(axis=0) + 1
    return span[::-1].astype(np.float64) * pixel_size_A


def betagal_ctf_table(star_path: str | os.PathLike) -> pd.DataFrame:
    """The per-particle CTFs and optics of a RELION particle STAR file as a CTF table.

    Columns: those of :func:`cryonb.synthetic.particles.read_ctf_table` (``defocus_u_A``,
    ``defocus_v_A``, ``defocus_angle_deg``, ``voltage_kV``, ``cs_mm``, ``amplitude_contrast``,
    ``phase_shift_deg``) and the optics' ``pixel_size_A`` and ``image_size_px``; one row per
    particle, in the file's order, values as read (float64).
    """
    from .io.star import read_particles_star

    meta = read_particles_star(star_path)
    ctf = meta.ctf
    if ctf is None:
        raise ValueError(f"{star_path}: no CTF columns")
    n = len(meta)

    def col(x: NDArray | float) -> NDArray:
        return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))

    return pd.DataFrame({
        "defocus_u_A": col(ctf.defocus_u_A), "defocus_v_A": col(ctf.defocus_v_A),
        "defocus_angle_deg": col(ctf.defocus_angle_deg), "voltage_kV": col(ctf.voltage_kV),
        "cs_mm": col(ctf.cs_mm), "amplitude_contrast": col(ctf.amplitude_contrast),
        "phase_shift_deg": col(ctf.phase_shift_deg), "pixel_size_A": col(meta.pixel_sizes_A),
        "image_size_px": np.broadcast_to(
            np.asarray(meta.image_sizes if meta.image_sizes is not None else 0), (n,)),
    })
