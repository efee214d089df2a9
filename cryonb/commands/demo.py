"""Forward-model demo: simulate a small particle stack from the bundled GroEL map.

Writes, in --out:
  particles.mrcs   noisy CTF-modulated, shifted projections (pixel size in the header)
  particles.star   RELION 3.1 STAR with the true poses, origins (Å) and CTFs
  truth.mrc        the map that was projected
  demo.png         the map's sections and, per particle, clean / CTF / noisy images

Example:
  cryonb demo --out demo_out --n 32 --snr 0.1 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..ctf import CTFParams
from ..image_model import ImageModel
from ..io import read_mrc, write_mrc, write_particles_star
from ..plotting import image_rows, orthogonal_slices
from ..rotations import random_rotations
from ..samples import sample_path


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the demo's options."""
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--map", type=Path, default=None,
                        help="density map to project (default: the bundled EMD-1997 GroEL map)")
    parser.add_argument("--n", type=int, default=32, help="number of particles (default 32)")
    parser.add_argument("--snr", type=float, default=0.1,
                        help="signal variance / noise variance over the box (default 0.1)")
    parser.add_argument("--shift-sigma", type=float, default=3.0,
                        help="standard deviation of the origins, Å (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def main(args: argparse.Namespace) -> int:
    """Simulate, write the stack, STAR, map and picture, and print a summary."""
    rng = np.random.default_rng(args.seed)
    map_path = args.map if args.map is not None else sample_path("emd_1997_64px.mrc")
    mrc = read_mrc(map_path, mmap=False)
    if mrc.voxel_size_A is None:
        raise SystemExit(f"{map_path}: the header has no voxel size; set it before projecting")
    volume = np.asarray(mrc.data, dtype=np.float32)
    box, psize = volume.shape[-1], float(mrc.voxel_size_A)

    n = args.n
    rotations = random_rotations(n, rng)
    shifts_A = rng.normal(0.0, args.shift_sigma, (n, 2))
    defocus_u = rng.uniform(10000.0, 25000.0, n)
    ctf = CTFParams(  # the paper's microscope: 200 kV, Cs 2.0 mm, amplitude contrast 0.07
        defocus_u_A=defocus_u,
        defocus_v_A=defocus_u - rng.uniform(0.0, 500.0, n),
        defocus_angle_deg=rng.uniform(-180.0, 180.0, n),
        voltage_kV=200.0, cs_mm=2.0, amplitude_contrast=0.07,
    )
    model = ImageModel(box, psize)
    clean = model.forward(volume, rotations, shifts_A)
    with_ctf = model.forward(volume, rotations, shifts_A, ctf)
    noise_sigma = float(np.sqrt(with_ctf.var() / args.snr))
    noisy = (with_ctf + rng.normal(0.0, noise_sigma, with_ctf.shape)).astype(np.float32)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_mrc(out / "particles.mrcs", noisy, psize)
    write_mrc(out / "truth.mrc", volume, psize)
    write_particles_star(
        out / "particles.star",
        image_paths=[str(out / "particles.mrcs")] * n, image_indices=np.arange(n),
        pixel_size_A=psize, box_size=box, ctf=ctf, rotations=rotations, shifts_A=shifts_A,
    )
    k = min(n, 8)
    fig = image_rows([clean[:k], with_ctf[:k], noisy[:k]],
                     ["projection", "x CTF", f"+ noise (SNR {args.snr:g})"],
                     col_titles=[f"#{i + 1} df {defocus_u[i] / 1e4:.2f} µm" for i in range(k)])
    fig.savefig(out / "demo.png", dpi=80)
    orthogonal_slices(volume, psize, f"{map_path.name}: {box}^3 at {psize:.3f} Å").savefig(
        out / "map_sections.png", dpi=80)
    print(f"map        {map_path} ({box}^3 voxels, {psize:.4f} Å/px)")
    print(f"particles  {n} x {box}^2 px -> {out / 'particles.mrcs'}")
    print(f"metadata   RELION 3.1 STAR -> {out / 'particles.star'}")
    print(f"noise      sigma {noise_sigma:.4g} for SNR {args.snr:g} "
          f"(achieved {with_ctf.var() / noisy.__sub__(with_ctf).var():.4g})")
    print(f"pictures   {out / 'demo.png'}, {out / 'map_sections.png'}")
    return 0
