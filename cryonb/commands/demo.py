"""The main job on the bundled sample data: simulate a small GroEL-GroES data set and show it.

Builds the density of the bundled PDB 1AON model (the paper's synthetic target), simulates
particles through the forward model with real 200 kV CTFs and noise at the requested SNR, and
writes, in --out:
  particles.mrcs, particles.star   the data set (RELION 3.1, true poses, pixel size in headers)
  truth.mrc                        the map that was projected
  simulation.json                  parameters and the achieved SNR
  demo.png                         per particle: projection, x CTF, + noise
  map_sections.png, ctf.png        the map's central sections, the first particle's CTF

Example:
  cryonb demo --out demo_out --n 1000 --snr 0.05 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..image_model import ImageModel
from ..plotting import ctf_figure, image_rows, orthogonal_slices
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


def main(args: argparse.Namespace) -> int:
    """Simulate, write the data set and the pictures, print a summary."""
    sim_args = simulate.build_args(out=args.out, n=args.n, box=args.box,
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
    return 0
