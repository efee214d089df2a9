"""Per-particle metadata read from STAR or cryoSPARC files, in cryonb's internal conventions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ..ctf import CTFParams
from .errors import input_error

__all__ = ["ParticleMetadata"]


@dataclass(frozen=True)
class ParticleMetadata:
    """What a particle file says about n particles, converted to cryonb's conventions.

    Conventions (``docs/conventions.md``): image indices 0-based, angles as rotation matrices
    (RELION ZYZ), origins in Å with RELION's sign, half-sets 0/1 (-1 unassigned), pixel sizes in
    Å from the metadata (never from MRC headers).

    Attributes
    ----------
    source : Path
        The STAR or ``.cs`` file.
    image_paths : ndarray of str, shape (n,)
        Resolved path of the stack holding each particle.
    image_indices : ndarray of int64, shape (n,)
        0-based position of each particle in its stack.
    pixel_sizes_A : ndarray of float64, shape (n,)
        Pixel size of each particle's image, Å.
    image_sizes : ndarray of int64, shape (n,), or None
        Box size in px from the metadata (``_rlnImageSize``, ``blob/shape``) when given.
    ctf : CTFParams or None
        None when the file has no CTF columns at all.
    rotations : ndarray, shape (n, 3, 3), or None
    shifts_A : ndarray, shape (n, 2), or None
        Origins (x, y), Å, RELION sign.
    half_set : ndarray of int8, shape (n,), or None
    data_sign : float
        Multiply the images by this to get RELION's contrast (white particles); cryoSPARC's
        ``blob/sign``, +1 for STAR files.
    ctf_premultiplied : bool
        ``_rlnCtfDataAreCtfPremultiplied = 1``.
    table : pandas.DataFrame
        The particle table as read (columns without the leading underscore).
    """

    source: Path
    image_paths: NDArray
    image_indices: NDArray
    pixel_sizes_A: NDArray
    image_sizes: NDArray | None
    ctf: CTFParams | None
    rotations: NDArray | None
    shifts_A: NDArray | None
    half_set: NDArray | None
    data_sign: float = 1.0
    ctf_premultiplied: bool = False
    table: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    def __len__(self) -> int:
        return int(self.image_indices.shape[0])

    @property
    def pixel_size_A(self) -> float:
        """The common pixel size in Å; an error if the particles' pixel sizes differ."""
        sizes = np.unique(np.round(self.pixel_sizes_A, 6))
        if sizes.size > 1 and (sizes.max() - sizes.min()) > 1e-4 * sizes.max():
            raise input_error(
                self.source,
                f"the particles have {sizes.size} different pixel sizes "
                f"({', '.join(f'{s:g}' for s in sizes)} Å, from their optics groups)",
                "rescale them to one pixel size (e.g. relion_image_handler --rescale_angpix) "
                "or select the optics groups that share one")
        return float(self.pixel_sizes_A[0])

    @property
    def box_size(self) -> int | None:
        """The common box size from the metadata in px, or None when the metadata lack it."""
        if self.image_sizes is None:
            return None
        sizes = np.unique(self.image_sizes)
        if sizes.size > 1:
            raise input_error(self.source, f"the particles have different box sizes {sizes}",
                              "re-extract or resample them to one box size")
        return int(sizes[0])
