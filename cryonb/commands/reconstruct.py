"""Reconstruct a 3D map from particles: ab initio from a random start (default) or known poses.

Ab initio: SAGD with importance sampling over poses and shifts (Brubaker, Punjani & Fleet
2015), frequency marching from --start-res to --max-res, a common low-resolution start then two
independent half-sets (gold standard).  Checkpoints every --checkpoint-min minutes and on
Ctrl-C / SIGTERM; --resume continues from the last one (also after SIGKILL).
--scheduler ADDRESS (an existing Dask cluster) or --dask-workers N (a local one) compute each
minibatch on the workers, each reading its own shard of the particles; the results are the same.

Writes in --out: map.mrc (mean of the SAGD half-set maps sagd_half1/2.mrc), map_fullbox.mrc
(map.mrc Fourier-padded to the input images' box and pixel size, for RELION refinement),
map_flipped_hand.mrc (the other hand), half1.mrc and half2.mrc (each half's particles
reconstructed at its MAP poses: the gold-standard pair, FSC 0.143 in run.json, or null with the
reason when the budget ended before the halves were independent), map_from_halves.mrc,
particles.star (MAP poses, rlnRandomSubset), history.csv, fsc.png/.csv, chimerax.cxc (open it in
ChimeraX: maps at an sdLevel), run.json, report.md, checkpoint.npz (docs/outputs.md).  With
--known-poses: map.mrc by least-squares reconstruction with the STAR file's poses (half maps from
rlnRandomSubset), with map_fullbox.mrc, map_flipped_hand.mrc, fsc.png, chimerax.cxc, run.json
and report.md.  Without --box or --max-res on images above 128 px a note suggests --max-res.

Every setting of cryonb.abinitio.AbInitioConfig is an option generated from the dataclass
(cryonb.commands.options): its default and its description come from there and --help shows
both.  Established names are kept: box_size is --box, max_iterations --iterations, and
checkpoint_every_s is --checkpoint-min, in minutes.

Examples:
  cryonb reconstruct demo_out/particles.star --out rec --box 32 --time-limit 10
  cryonb reconstruct particles.star --out rec --resume
  cryonb reconstruct particles.star --out rec --dask-workers 2
  cryonb reconstruct particles.star --out rec --scheduler tcp://10.0.0.5:8786
  cryonb reconstruct particles.star --out refined --known-poses
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: AbInitioConfig fields whose option keeps its established name (README, docs, scripts).
RENAME = {"box_size": "--box", "max_iterations": "--iterations",
          "checkpoint_every_s": "--checkpoint-min"}
#: AbInitioConfig fields given in other units on the command line: (unit, field per unit).
UNITS = {"checkpoint_every_s": ("min", 60.0)}
#: Allowed values of AbInitioConfig's string fields (ignored while a field does not exist).
CHOICES = {"backend": ("numpy", "cupy")}
#: AbInitioConfig fields without an option (none: every field is a CLI option).
EXCLUDE: tuple[str, ...] = ()


def _config_class() -> type:
    """:class:`AbInitioConfig`, from the light :mod:`cryonb.config` when that module exists."""
    try:
        from ..config import AbInitioConfig
    except ModuleNotFoundError as err:
        if err.name != "cryonb.config":
            raise
        from ..abinitio import AbInitioConfig
    return AbInitioConfig


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options: the run's own, then one per :class:`AbInitioConfig` field."""
    from .options import add_dataclass_options

    parser.add_argument("particles", type=Path, help="RELION .star or cryoSPARC .cs")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--datadir", type=Path, default=None,
                        help="folder the image paths are relative to")
    parser.add_argument("--invert", action="store_true", help="flip the contrast first")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    parser.add_argument("--known-poses", action="store_true",
                        help="reconstruct with the file's poses instead of ab initio")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="compute minibatches on this Dask cluster (tcp://host:8786)")
    cluster.add_argument("--dask-workers", type=int, default=None, metavar="N",
                         help="start a local Dask cluster of N single-threaded worker processes")
    config = parser.add_argument_group(
        "ab initio settings (cryonb.abinitio.AbInitioConfig; --box also applies to "
        f"--known-poses and must be even and at least {MIN_BOX} px)")
    add_dataclass_options(config, _config_class(), exclude=EXCLUDE, rename=RENAME, units=UNITS,
                          choices=CHOICES)
    # replaced by --first-stage-images (the first stage is sized by images seen, not epochs):
    # kept so that old scripts get one clear line instead of "unrecognized arguments"
    parser.add_argument("--first-stage-epochs", type=float, default=None,
                        help=argparse.SUPPRESS)


MIN_BOX = 16  # px: smallest --box accepted (see _check_box)


def _check_box(args: argparse.Namespace, ds) -> None:
    """Raise a one-line error unless ``--box`` is even, >= ``MIN_BOX`` and <= the images' box.

    ``Dataset.fourier_cropped`` itself accepts any box from 8 px to the images' box (it only
    crops).  cryonb's reconstructions are tested down to 16 px (``tests/test_abinitio.py``);
    below that a particle spans a handful of pixels and the band-limit schedule has almost
    no frequencies left.  Cropped boxes must be even, as RELION's extraction boxes are (the
    Fourier origin at ``N // 2``).  ``--box`` equal to the images' box (no cropping) is always
    accepted.
    """
    from ..io.errors import input_error

    box = args.box_size
    if box is None or box == ds.box_size:
        return
    if box > ds.box_size:
        raise input_error(args.particles, f"--box {box} is larger than the images' box of "
                          f"{ds.box_size} px (cryonb only Fourier-crops, never pads)",
                          f"pass --box {ds.box_size} or smaller, or drop --box")
    if box < MIN_BOX or box % 2:
        raise input_error(args.particles, f"--box {box} is not an even number of at least "
                          f"{MIN_BOX} px (the images' box is {ds.box_size} px)",
                          f"pass an even --box from {MIN_BOX} to {ds.box_size}")


def _load(args: argparse.Namespace):
    from ..dataset import Dataset

    if args.particles.suffix.lower() == ".cs":
        ds = Dataset.from_cryosparc(args.particles, datadir=args.datadir)
    else:
        ds = Dataset.from_star(args.particles, datadir=args.datadir)
    return ds.inverted() if args.invert else ds


def _known_poses(args: argparse.Namespace, ds, config) -> int:
    """Least-squares maps at the file's poses, written like an ab initio run's (RunFolder)."""
    from ..backprojection import reconstruct_known_poses
    from ..diagnostics import box_for_resolution
    from ..io.errors import input_error
    from ..metrics import half_map_resolution
    from ..run_folder import RunFolder, finite, open_lines, summary_lines

    if ds.rotations is None:
        raise input_error(args.particles, "--known-poses needs _rlnAngleRot/Tilt/Psi",
                          "run ab initio (drop --known-poses) or give a refined STAR file")
    t0 = time.perf_counter()
    full = ds
    box = config.box_size
    if box is None and config.max_res_A is not None:  # as the ab initio run chooses it
        box = box_for_resolution(ds.box_size, ds.pixel_size_A, config.max_res_A)
    if box is not None and box < ds.box_size:
        ds = ds.fourier_cropped(box)
    folder = RunFolder(args.out)
    folder.path.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    volume = reconstruct_known_poses(ds, progress=progress)
    folder.write_final_map(volume, ds.pixel_size_A, full.box_size, full.pixel_size_A)
    print(f"map        {args.out / 'map.mrc'} ({ds.box_size}^3 at {ds.pixel_size_A:.4f} Å); "
          f"map_fullbox.mrc ({full.box_size}^3 at {full.pixel_size_A:.4f} Å)")
    summary: dict = {
        "status": "done", "mode": "known poses", "n_particles": len(ds),
        "box_size": ds.box_size, "pixel_size_A": ds.pixel_size_A,
        "input_box_size": full.box_size, "input_pixel_size_A": full.pixel_size_A,
        "half_map_resolution_A_0143": None, "half_map_resolution": None,
        "half_map_null_reason": "no half-sets: the file has no rlnRandomSubset (1 or 2) for "
                                "every particle"}
    if ds.half_set is not None and np.isin(ds.half_set, (0, 1)).all():
        halves = [reconstruct_known_poses(h, progress=progress) for h in ds.halves()]
        for i, half in enumerate(halves):
            folder.write_map(f"half{i + 1}", half, ds.pixel_size_A)
        resolution, curve = half_map_resolution(halves[0], halves[1], ds.pixel_size_A,
                                                max_freq_invA=None)
        folder.write_fsc([curve], ["half-maps"])
        summary.update(half_map_resolution_A_0143=finite(resolution.value_A),
                       half_map_resolution=resolution.to_dict(), half_map_null_reason=None)
    summary["wall_time_s"] = time.perf_counter() - t0
    folder.write_summary(summary, {"known_poses": True, "box_size": box,
                                   "max_res_A": config.max_res_A, "invert": args.invert})
    folder.write_chimerax()
    folder.write_report(summary, title="cryonb known-pose reconstruction report")
    for line in summary_lines(summary) + open_lines(args.out):
        print(line)
    return 0


#: Images larger than this (px) trigger :func:`full_box_warning`.
LARGE_BOX = 128


def full_box_warning(config, box_size: int, pixel_size_A: float) -> str | None:
    """The one-line warning when an ab initio run would work at a large full box.

    Parameters
    ----------
    config : AbInitioConfig
        Neither ``box_size`` (``--box``) nor ``max_res_A`` (``--max-res``) set: the run keeps
        the images' box and marches the band limit to its Nyquist.
    box_size : int
        The images' box, px; only boxes above :data:`LARGE_BOX` are warned about.
    pixel_size_A : float
        The images' pixel size, Å.

    Returns
    -------
    str or None
        The warning (None: nothing to warn about), with the box that ``--max-res`` at
        :data:`cryonb.commands.info.RECOMMENDED_MAX_RES_A` would choose
        (:func:`cryonb.diagnostics.box_for_resolution`).
    """
    from ..diagnostics import box_for_resolution
    from .info import RECOMMENDED_MAX_RES_A

    if config.box_size is not None or config.max_res_A is not None or box_size <= LARGE_BOX:
        return None
    res = RECOMMENDED_MAX_RES_A
    small = box_for_resolution(box_size, pixel_size_A, res)
    return (f"no --box or --max-res: ab initio at the images' full {box_size}-px box, the band "
            f"limit marching to Nyquist ({2 * pixel_size_A:.1f} Å), is slow and rarely helps; "
            f"--max-res {res:g} works at a {small}-px box "
            f"({pixel_size_A * box_size / small:.2f} Å/px)")


def main(args: argparse.Namespace) -> int:
    """Run the reconstruction and print a summary."""
    from .options import dataclass_from_args

    if getattr(args, "first_stage_epochs", None) is not None:
        raise SystemExit("cryonb reconstruct: error: --first-stage-epochs was replaced by "
                         "--first-stage-images (e.g. 3 epochs of 10,000 particles: "
                         "--first-stage-images 30000)")
    try:
        config = dataclass_from_args(_config_class(), args)
    except ValueError as err:  # AbInitioConfig's own checks (e.g. --common-fraction 2)
        raise SystemExit(f"cryonb reconstruct: error: {err}") from err
    ds = _load(args)
    _check_box(args, ds)
    if not args.known_poses:
        from ..diagnostics import check_contrast

        check_contrast(ds, args.particles, fix="drop --invert (the flipped particles are dark)"
                       if args.invert else "pass --invert to flip the contrast")
    if args.known_poses:
        return _known_poses(args, ds, config)
    warning = full_box_warning(config, ds.box_size, ds.pixel_size_A)
    if warning is not None:
        print(f"note: {warning}", file=sys.stderr)
    from ..abinitio import AbInitioRun, summary_lines
    from ..distributed import dask_client
    from ..run_folder import open_lines

    with dask_client(args.scheduler, args.dask_workers) as client:
        if client is not None:
            print(f"Dask: {len(client.nthreads())} workers, dashboard {client.dashboard_link}")
        run = AbInitioRun(ds, args.out, config, progress=not args.no_progress, client=client)
        summary = run.run(resume=args.resume)
    for message in run.messages:
        print(f"note: {message}", file=sys.stderr)
    if summary["status"] != "done":
        print(f"interrupted; resume with: cryonb reconstruct {args.particles} --out {args.out} "
              "--resume (same options)")
        return 130
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "profile")},
                     indent=2, default=float))
    from ..profiling import format_profile

    print("time per iteration by phase and band limit, s (run.json: profile):")
    print(format_profile(summary["profile"]))
    for line in summary_lines(summary) + open_lines(args.out):
        print(line)
    print(f"report     {args.out / 'report.md'}")
    return 0
