"""The main job on the bundled sample data: simulate a small GroEL-GroES set, reconstruct it.

Builds the density of the bundled PDB 1AON model (the paper's synthetic target), simulates
particles through the forward model with real 200 kV CTFs and noise at the requested SNR, then
reconstructs them ab initio from a random start (SAGD + importance sampling, gold-standard
halves) within --time-limit minutes, and writes, in --out:
  particles.mrcs, particles.star   the data set (RELION 3.1, true poses, pixel size in headers)
  truth.mrc                        the map that was projected
  simulation.json                  parameters and the achieved SNR
  demo.png                         per particle: projection, x CTF, + noise
  map_sections.png, ctf.png        the map's central sections, the first particle's CTF
  reconstruction/                  a run folder (docs/outputs.md): map.mrc, map_fullbox.mrc,
                                   half maps, particles.star, fsc.png, chimerax.cxc, report.md
  report.md, comparison.png        the run's report (resolutions, band limits, timing, profile,
                                   files) about the simulated data, the map beside the truth

Example:
  cryonb demo --out demo_out --n 1000 --snr 0.05 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..image_model import ImageModel
from ..viz import ctf_figure, image_rows, orthogonal_slices
from . import simulate


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the demo's options."""
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--n", type=int, default=1000, help="number of particles (1000)")
    parser.add_argument("--box", type=int, default=64, help="box size in px (64)")
    parser.add_argument("--pixel-size", type=float, default=5.6, help="pixel size in Å (5.6)")
    parser.add_argument("--snr", type=float, default=0.05,
                        help="signal variance / noise variance over the box (0.05)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--rec-box", type=int, default=32,
                        help="box of the reconstruction, px (32: Fourier-cropped)")
    parser.add_argument("--time-limit", type=float, default=3.0,
                        help="minutes for the reconstruction (3)")
    parser.add_argument("--no-reconstruction", action="store_true",
                        help="only simulate and draw")


def main(args: argparse.Namespace) -> int:
    """Simulate, write the data set and the pictures, print a summary."""
    sim_args = simulate.build_args(out=args.out, n_particles=args.n, box=args.box,
                                   pixel_size=args.pixel_size, snr=args.snr, seed=args.seed)
    simulate.main(sim_args)
    from ..synthetic.particles import load_simulation

    ds = load_simulation(args.out)
    truth = ds.truth
    k = min(len(ds), 8)
    model = ImageModel(ds.box_size, ds.pixel_size_A)
    volume = truth.volume.astype(np.float64)
    ctf = ds.ctf.subset(np.arange(k))
    clean = model.forward(volume, truth.rotations[:k], truth.shifts_A[:k])
    with_ctf = model.forward(volume, truth.rotations[:k], truth.shifts_A[:k], ctf)
    fig = image_rows([clean, with_ctf, ds.images(np.arange(k))],
                     ["projection", "x CTF", f"+ noise (SNR {args.snr:g})"],
                     col_titles=[f"#{i + 1} df {ctf.defocus_u_A[i] / 1e4:.2f} µm"
                                 for i in range(k)])
    out = Path(args.out)
    fig.savefig(out / "demo.png", dpi=80)
    orthogonal_slices(truth.volume, ds.pixel_size_A,
                      f"truth.mrc: {ds.box_size}^3 at {ds.pixel_size_A:g} Å").savefig(
        out / "map_sections.png", dpi=80)
    ctf_figure(ctf, ds.box_size, ds.pixel_size_A).savefig(out / "ctf.png", dpi=80)
    print(f"pictures   {out / 'demo.png'}, {out / 'map_sections.png'}, {out / 'ctf.png'}")
    if args.no_reconstruction:
        return 0
    return _reconstruct(args, ds, out)


def _reconstruct(args: argparse.Namespace, ds, out: Path) -> int:
    from ..abinitio import AbInitioConfig, AbInitioRun
    from ..io import read_mrc
    from ..run_folder import RunFolder, open_lines, report_markdown

    config = AbInitioConfig(box_size=min(args.rec_box, ds.box_size), iterations_per_stage=15,
                            time_limit_min=args.time_limit, seed=args.seed,
                            particle_radius_A=90.0, shift_sigma_A=8.4, shift_extent_A=20.0)
    print(f"ab initio  {len(ds)} particles at {config.box_size} px, "
          f"{args.time_limit:g} min budget ...")
    summary = AbInitioRun(ds, out / "reconstruction", config).run()
    rec_dir = out / "reconstruction"
    aligned = read_mrc(rec_dir / "map_aligned_to_truth.mrc", mmap=False)
    truth = ds.truth.volume
    from ..fourier import fourier_crop

    small_truth = fourier_crop(truth.astype(np.float64), aligned.shape[0], ndim=3)
    image_rows([_sections(small_truth), _sections(np.asarray(aligned.data))],
               ["truth", "ab initio"], col_titles=["z = 0", "y = 0", "x = 0"],
               size_in=2.2).savefig(out / "comparison.png", dpi=80)
    intro = [f"Simulation: {len(ds)} GroEL-GroES particles (PDB 1AON), {ds.box_size} px at "
             f"{ds.pixel_size_A:g} Å, SNR {args.snr:g}, real 200 kV CTFs (`particles.star`, "
             "`particles.mrcs`); the map that was projected: `truth.mrc`.",
             "Pictures: `reconstruction/fsc.png`, `comparison.png` (central sections, truth "
             "above), `demo.png`, `map_sections.png`, `ctf.png`."]
    report = report_markdown(summary, RunFolder(rec_dir).files(), title="cryonb demo report",
                             intro=intro, prefix="reconstruction/")
    (out / "report.md").write_text(report)
    print(report)
    for line in open_lines(rec_dir):
        print(line)
    return 0


def _sections(volume: np.ndarray) -> np.ndarray:
    c = volume.shape[0] // 2
    return np.stack([volume[c], volume[:, c], volume[:, :, c]])
