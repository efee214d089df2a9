"""Summarise and check a particle file (STAR, cryoSPARC .cs) or an MRC map/stack.

Example:
  cryonb info particles.star
  cryonb info particles.star --max-res 10
  cryonb info map.mrc

For particle files the images are checked too (stacks present, indices in range, square
images, pixel size); problems are reported with the file and the fix.  Then, from the images
(each value computed by the library function that ``cryonb reconstruct`` uses):
  contrast   white or dark particles (cryonb.diagnostics.check_contrast: a sign test on the
             CTF-phase-flipped images; dark ones need --invert)
  noise      the noise sigma outside the particle circle (Dataset.estimate_noise_sigma)
  radius     the particle's radius (cryonb.diagnostics.estimate_particle_radius, on the
             normalised images, as the run estimates it)
  box        the working box for --max-res (cryonb.diagnostics.box_for_resolution) and its
             band limit, the Nyquist frequency of that box
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

#: The resolution (Å) ``cryonb info`` recommends a first ab initio map for (typically 8-15 Å;
#: finer gains little before a refinement and costs a larger box).
RECOMMENDED_MAX_RES_A = 15.0


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument("path", type=Path, help="a .star, .cs, .mrc or .mrcs file")
    parser.add_argument("--datadir", type=Path, default=None,
                        help="folder to resolve image paths against (default: the file's)")
    parser.add_argument("--max-res", type=float, default=RECOMMENDED_MAX_RES_A, metavar="A",
                        help="resolution to recommend a working box for, Å "
                             f"(default {RECOMMENDED_MAX_RES_A:g})")
    parser.add_argument("--invert", action="store_true",
                        help="check the contrast after flipping it (as reconstruct --invert)")


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
    if getattr(args, "invert", False):
        ds = ds.inverted()
    print(f"{args.path}: {len(ds)} particles, {ds.box_size} px at {ds.pixel_size_A:.4f} Å/px")
    ctf = ds.ctf
    print(f"  defocus U {ctf.defocus_u_A.min():.0f}-{ctf.defocus_u_A.max():.0f} Å, "
          f"voltage {sorted(set(ctf.voltage_kV.tolist()))} kV, "
          f"Cs {sorted(set(ctf.cs_mm.tolist()))} mm, "
          f"Q {sorted(set(ctf.amplitude_contrast.tolist()))}")
    print(f"  poses: {'yes' if ds.rotations is not None else 'no'}; "
          f"half-sets: {'yes' if ds.half_set is not None else 'no'}; data sign {ds.data_sign:+g}")
    for line in image_checks(ds, args.path, max_res_A=args.max_res,
                             inverted=getattr(args, "invert", False)):
        print(f"  {line}")
    return 0


def image_checks(ds, path: Path, *, max_res_A: float = RECOMMENDED_MAX_RES_A,
                 inverted: bool = False) -> list[str]:
    """The lines ``cryonb info`` prints about the images: contrast, noise, radius, box.

    Parameters
    ----------
    ds : cryonb.dataset.Dataset
        The particles as they would be reconstructed (``--invert`` applied).
    path : Path
        The particle file (named by the contrast check).
    max_res_A : float
        The target resolution, Å, the recommended box is for.
    inverted : bool
        ``ds`` is flipped (``--invert``): the advice for dark particles is then to drop it.

    Returns
    -------
    list of str
        One line per check, every number from the library function the run uses.
    """
    from ..diagnostics import (
        box_for_resolution,
        check_contrast,
        dark_p_value,
        estimate_particle_radius,
    )
    from ..fourier import nyquist_invA
    from ..io.errors import CryonbInputError

    lines = []
    fix = "drop --invert" if inverted else "pass --invert to cryonb reconstruct"
    try:
        scores = check_contrast(ds, path, fix=fix)
    except CryonbInputError as err:
        lines.append(f"contrast: DARK particles — {err.problem}. Fix: {err.fix}")
    else:
        if scores is None:
            lines.append("contrast: not checked (no CTFs)")
        else:
            lines.append(f"contrast: white particles as cryonb expects (median score "
                         f"{np.median(scores):+.2f}, {(scores > 0).mean():.0%} of "
                         f"{scores.size} images positive; sign-test p(dark) "
                         f"{dark_p_value(scores):.2g})"
                         + (" after --invert" if inverted else ""))
    sigma = ds.estimate_noise_sigma()
    lines.append(f"noise: sigma {sigma:.4g} (image units, pixels outside the particle circle)")
    radius_A = estimate_particle_radius(ds.normalized())
    extent_A = ds.box_size * ds.pixel_size_A
    lines.append(f"particle radius: {radius_A:.0f} Å estimated from the images (diameter "
                 f"{2 * radius_A / extent_A:.0%} of the {extent_A:.0f} Å box)")
    box = box_for_resolution(ds.box_size, ds.pixel_size_A, max_res_A)
    psize = ds.fourier_cropped(box).pixel_size_A
    band_limit = nyquist_invA(psize)
    lines.append(f"recommended for --max-res {max_res_A:g}: working box {box} px at "
                 f"{psize:.3f} Å/px, band limit {band_limit:.4f} 1/Å ({1 / band_limit:.1f} Å, "
                 f"the box's Nyquist): cryonb reconstruct {path} --out run --max-res "
                 f"{max_res_A:g}" + (" --invert" if inverted else "")
                 + (f" (the images' own Nyquist, {1 / band_limit:.1f} Å, does not reach "
                    f"{max_res_A:g} Å: the full box)" if 1 / band_limit > max_res_A else ""))
    return lines
