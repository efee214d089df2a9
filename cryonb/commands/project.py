"""Project a map with the poses, origins and CTFs of a STAR file (like relion_project).

Example:
  cryonb project map.mrc --star particles.star --out projections.mrcs --ctf

Writes projections.mrcs (pixel size in the header) and projections.star (RELION 3.1) whose
rows reference it.  The map's pixel size must match the STAR's (--angpix overrides the map's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..image_model import ImageModel
from ..io import read_mrc, read_particles_star, write_mrc, write_particles_star
from ..io.errors import input_error


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument("map", type=Path, help="density map (MRC)")
    parser.add_argument("--star", type=Path, required=True, help="STAR file with poses")
    parser.add_argument("--out", type=Path, required=True, help="output stack (.mrcs)")
    parser.add_argument("--ctf", action="store_true", help="apply each particle's CTF")
    parser.add_argument("--pad", type=int, default=2, help="Fourier oversampling (default 2)")
    parser.add_argument("--angpix", type=float, default=None,
                        help="pixel size of the map in Å (default: its header)")
    parser.add_argument("--batch", type=int, default=256, help="images per batch")


def main(args: argparse.Namespace) -> int:
    """Project and write the stack and its STAR file."""
    meta = read_particles_star(args.star)
    mrc = read_mrc(args.map, mmap=False)
    psize = args.angpix if args.angpix is not None else mrc.voxel_size_A
    if psize is None:
        raise input_error(args.map, "the map header has no voxel size",
                          "pass --angpix with the map's pixel size in Å")
    if abs(psize - meta.pixel_size_A) > 1e-3 * meta.pixel_size_A:
        raise input_error(args.map, f"the map's pixel size {psize:.4f} Å differs from the "
                          f"STAR's {meta.pixel_size_A:.4f} Å",
                          "resample the map or pass the right --angpix")
    if meta.rotations is None:
        raise input_error(args.star, "the STAR file has no _rlnAngleRot/Tilt/Psi columns",
                          "give a STAR file with poses")
    volume = np.asarray(mrc.data, dtype=np.float32)
    box = volume.shape[-1]
    n = len(meta)
    shifts = meta.shifts_A if meta.shifts_A is not None else np.zeros((n, 2))
    if args.ctf and meta.ctf is None:
        raise input_error(args.star, "--ctf was given but the STAR file has no CTF columns",
                          "add _rlnDefocusU/V/Angle or drop --ctf")
    model = ImageModel(box, psize, pad=args.pad)
    volume_ft = model.projector.volume_to_fourier(volume)
    from ..fourier import ifft2_centered

    out = np.empty((n, box, box), dtype=np.float32)
    for start in range(0, n, args.batch):
        sl = slice(start, min(n, start + args.batch))
        ctf = meta.ctf.subset(sl) if args.ctf else None
        values = model.forward_points(volume_ft, meta.rotations[sl], shifts[sl], ctf)
        spectra = np.zeros((values.shape[0], box, box), dtype=values.dtype)
        spectra[:, model.mask] = values
        out[sl] = ifft2_centered(spectra).real
    write_mrc(args.out, out, psize)
    star_out = args.out.with_suffix(".star")
    write_particles_star(
        star_out, image_paths=[str(args.out)] * n, image_indices=np.arange(n),
        pixel_size_A=psize, box_size=box, ctf=meta.ctf, rotations=meta.rotations,
        shifts_A=shifts, half_set=meta.half_set,
    )
    print(f"wrote {n} projections of {args.map} to {args.out} and {star_out}")
    return 0
