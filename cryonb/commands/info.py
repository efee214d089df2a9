"""Summarise and check a particle file (STAR, cryoSPARC .cs) or an MRC map/stack.

Example:
  cryonb info particles.star
  cryonb info map.mrc

For particle files the images are checked too (stacks present, indices in range, square
images, pixel size); problems are reported with the file and the fix.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument("path", type=Path, help="a .star, .cs, .mrc or .mrcs file")
    parser.add_argument("--datadir", type=Path, default=None,
                        help="folder to resolve image paths against (default: the file's)")


def main(args: argparse.Namespace) -> int:
    """Print the summary."""
    suffix = args.path.suffix.lower()
    if suffix in (".mrc", ".mrcs", ".map"):
        from ..io import read_mrc

        mrc = read_mrc(args.path)
        data = np.asarray(mrc.data)
        kind = "stack" if mrc.is_stack else "volume"
        vs = "absent (0)" if mrc.voxel_size_A is None else f"{mrc.voxel_size_A:.4f} Å"
        print(f"{args.path}: {kind} {data.shape}, voxel size {vs}")
        print(f"  min {data.min():.4g}  max {data.max():.4g}  mean {data.mean():.4g}  "
              f"std {data.std():.4g}")
        return 0
    from ..dataset import Dataset

    if suffix == ".cs":
        ds = Dataset.from_cryosparc(args.path, datadir=args.datadir)
    else:
        ds = Dataset.from_star(args.path, datadir=args.datadir)
    print(f"{args.path}: {len(ds)} particles, {ds.box_size} px at {ds.pixel_size_A:.4f} Å/px")
    ctf = ds.ctf
    print(f"  defocus U {ctf.defocus_u_A.min():.0f}-{ctf.defocus_u_A.max():.0f} Å, "
          f"voltage {sorted(set(ctf.voltage_kV.tolist()))} kV, "
          f"Cs {sorted(set(ctf.cs_mm.tolist()))} mm, "
          f"Q {sorted(set(ctf.amplitude_contrast.tolist()))}")
    print(f"  poses: {'yes' if ds.rotations is not None else 'no'}; "
          f"half-sets: {'yes' if ds.half_set is not None else 'no'}; data sign {ds.data_sign:+g}")
    return 0
