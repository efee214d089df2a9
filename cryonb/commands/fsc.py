"""Fourier shell correlation of two maps, with optional superposition (rotation, shift, hand).

Prints the resolution at FSC = 0.143 and 0.5 (RELION's shells, first crossing) and writes the
curve as CSV and PNG next to --out (if given).

Examples:
  cryonb fsc half1.mrc half2.mrc
  cryonb fsc map.mrc truth.mrc --align --out fsc_vs_truth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..io import read_mrc
from ..io.errors import input_error


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument("map1", type=Path)
    parser.add_argument("map2", type=Path, help="the reference when --align is given")
    parser.add_argument("--align", action="store_true",
                        help="superpose map1 on map2 first (rotation, translation, both hands)")
    parser.add_argument("--mask", type=Path, default=None,
                        help="a mask map (same box) multiplied into both maps")
    parser.add_argument("--angpix", type=float, default=None,
                        help="pixel size in Å (default: the headers)")
    parser.add_argument("--out", type=Path, default=None, help="prefix for .csv and .png")


def _load(path: Path) -> tuple[np.ndarray, float | None]:
    mrc = read_mrc(path, mmap=False)
    data = np.asarray(mrc.data, dtype=np.float64)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise input_error(path, f"not a cubic map ({data.shape})", "give a cubic 3D map")
    return data, mrc.voxel_size_A


def main(args: argparse.Namespace) -> int:
    """Compute and print."""
    from ..metrics import HALF_MAP_THRESHOLD, REFERENCE_THRESHOLD, fsc

    a, pa = _load(args.map1)
    b, pb = _load(args.map2)
    if a.shape != b.shape:
        raise input_error(args.map1, f"its box {a.shape} differs from {args.map2}'s {b.shape}",
                          "resample one map to the other's box")
    psize = args.angpix or pa or pb
    if psize is None:
        raise input_error(args.map1, "no pixel size in either header", "pass --angpix")
    if pa and pb and abs(pa - pb) > 1e-3 * pa and args.angpix is None:
        raise input_error(args.map1, f"pixel size {pa:.4f} Å differs from {args.map2}'s "
                          f"{pb:.4f} Å", "resample one map, or pass --angpix to override")
    if args.mask is not None:
        mask, _ = _load(args.mask)
        a, b = a * mask, b * mask
    if args.align:
        from ..alignment import align_maps, apply_alignment

        result = align_maps(a, b, psize)
        a = apply_alignment(a, result, psize)
        print(f"aligned: hand {'flipped' if result.flipped else 'kept'}, shift "
              f"{np.round(result.shift_A, 2)} Å, correlation {result.correlation:.4f}")
    curve = fsc(a, b, psize)
    for threshold in (HALF_MAP_THRESHOLD, REFERENCE_THRESHOLD):
        print(f"FSC {threshold:<5}: {curve.resolution(threshold)}")
    if args.out is not None:
        from ..viz import fsc_figure

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(out.with_suffix(".csv"), np.stack([curve.shell, curve.freq_invA, curve.fsc], 1),
                   delimiter=",", header="shell,freq_invA,fsc", comments="")
        fsc_figure([curve], [f"{args.map1.name} vs {args.map2.name}"]).savefig(
            out.with_suffix(".png"), dpi=90)
        print(f"curve: {out.with_suffix('.csv')}, {out.with_suffix('.png')}")
    return 0
