"""Simulate a particle data set (the paper's synthetic GroEL set by default) with ground truth.

Writes, in --out:
  particles.mrcs    noisy CTF-modulated, shifted projections (pixel size in the header)
  particles.star    RELION 3.1 STAR: true poses, origins (Å), CTFs, half-sets
  truth.mrc         the density that was projected
  simulation.json   the parameters and the achieved SNR

SNR = variance of the noiseless images (all pixels of the box, all particles) over the noise
variance.  With only --out, a small GroEL set is made from the bundled PDB 1AON model and the
bundled real 200 kV CTF table (paper: --n 40000 --box 128 --pixel-size 2.8).

Examples:
  cryonb simulate --out groel_small
  cryonb simulate --pdb 1aon.pdb.gz --n 40000 --box 128 --pixel-size 2.8 --snr 0.05 --out groel
  cryonb simulate --map emd_1997.map --n 2000 --box 64 --pixel-size 4 --out from_map
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..fourier import crop_center, fourier_crop, fourier_pad, pad_center
from ..io import read_mrc
from ..io.errors import input_error
from ..samples import sample_path
from ..synthetic.density import DensityParams, density_from_file
from ..synthetic.particles import SimulationParams, read_ctf_table, simulate_to_files
from .options import add_dataclass_options, dataclass_from_args


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pdb", type=Path, default=None,
                        help="atomic model, PDB/mmCIF, gzipped or not (default: bundled 1AON)")
    source.add_argument("--map", type=Path, default=None, help="density map (MRC) instead")
    parser.add_argument("--chains", default=None, help="keep only these chains, e.g. ABC")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--box", type=int, default=64, help="box size in px (64)")
    parser.add_argument("--pixel-size", type=float, default=5.6, help="pixel size in Å (5.6)")
    parser.add_argument("--ctf-table", type=Path, default=None,
                        help="CSV of real CTFs to draw from (default: the bundled 200 kV table)")
    parser.add_argument("--ctf-ranges", action="store_true",
                        help="draw CTFs from --defocus-range, --astigmatism, --voltage, --cs "
                        "and --amplitude-contrast instead of from a table")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_dataclass_options(parser.add_argument_group("simulation (SimulationParams)"),
                          SimulationParams, rename=RENAME, defaults=DEFAULTS)


#: SimulationParams fields whose option keeps its established name.
RENAME = {"n_particles": "--n", "chunk_size": "--chunk"}
#: Defaults of the SimulationParams fields that have none.
DEFAULTS = {"n_particles": 1000}


def build_args(**values: object) -> argparse.Namespace:
    """The namespace ``cryonb simulate`` would parse, with defaults, overridden by ``values``."""
    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(["--out", str(values.pop("out"))])
    for key, value in values.items():
        if not hasattr(args, key):
            raise TypeError(f"cryonb simulate has no option {key!r}")
        setattr(args, key, value)
    return args


def _volume_from_map(path: Path, box: int, pixel_size_A: float) -> np.ndarray:
    """Resample a map to ``box`` px at ``pixel_size_A`` by Fourier crop/pad and centre crop/pad."""
    mrc = read_mrc(path, mmap=False)
    data = np.asarray(mrc.data, dtype=np.float64)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise input_error(path, f"the map is not a cube ({data.shape})", "give a cubic map")
    if mrc.voxel_size_A is None:
        raise input_error(path, "the map header has no voxel size",
                          "set it (e.g. relion_image_handler --angpix) before simulating")
    n = data.shape[0]
    m = round(n * mrc.voxel_size_A / pixel_size_A)
    if abs(n * mrc.voxel_size_A / m - pixel_size_A) > 1e-3 * pixel_size_A:
        warnings.warn(f"{path}: {n} px at {mrc.voxel_size_A:.4f} Å resamples to {m} px at "
                      f"{n * mrc.voxel_size_A / m:.4f} Å, not exactly {pixel_size_A} Å",
                      RuntimeWarning, stacklevel=2)
    data = fourier_crop(data, m, ndim=3) if m < n else fourier_pad(data, m, ndim=3)
    data = crop_center(data, box, ndim=3) if m > box else pad_center(data, box, ndim=3)
    return data.astype(np.float32)


def main(args: argparse.Namespace) -> int:
    """Make the density, simulate, write, print a summary."""
    box, psize = args.box, args.pixel_size
    if box < 8 or psize <= 0:
        raise SystemExit("cryonb simulate: error: --box must be >= 8 and --pixel-size > 0")
    if args.map is not None:
        volume = _volume_from_map(args.map, box, psize)
        source = str(args.map)
    else:
        pdb = args.pdb if args.pdb is not None else sample_path("1aon.pdb.gz")
        try:
            volume = density_from_file(pdb, DensityParams(box, psize), chains=args.chains)
        except ValueError as err:
            raise input_error(pdb, str(err), "choose a larger --box or --pixel-size") from err
        source = str(pdb)
    table = None
    if not args.ctf_ranges:
        table_path = args.ctf_table or sample_path("ctf_200kV_cryosparc_P12_J24.csv")
        try:
            table = read_ctf_table(table_path)
        except (ValueError, OSError) as err:
            raise input_error(table_path, f"not a usable CTF table ({err})",
                              "give a CSV with columns defocus_u_A, defocus_v_A, "
                              "defocus_angle_deg, voltage_kV, cs_mm, amplitude_contrast") from err
    try:
        params = dataclass_from_args(SimulationParams, args)
    except ValueError as err:  # SimulationParams' own checks (e.g. --snr 0)
        raise SystemExit(f"cryonb simulate: error: {err}") from err
    result = simulate_to_files(volume, psize, params, np.random.default_rng(args.seed), args.out,
                               ctf_table=table, progress=not args.no_progress)
    summary = {
        "source": source, "n_particles": params.n_particles, "box_size": box, "pixel_size_A": psize,
        "seed": args.seed, "ctf_table": None if table is None else str(table_path),
        "requested_snr": params.snr, "achieved_snr": result.achieved_snr,
        "noise_sigma": result.noise_sigma, "signal_variance": result.signal_variance,
        "params": asdict(params),
    }
    (Path(args.out) / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"density    {source} -> {result.truth_path} ({box}^3 at {psize:g} Å/px)")
    print(f"particles  {params.n_particles} x {box}^2 px -> {result.stack_path}")
    print(f"metadata   RELION 3.1 STAR with true poses -> {result.star_path}")
    print(f"SNR        requested {params.snr:g}, achieved {result.achieved_snr:.4g} "
          f"(noise sigma {result.noise_sigma:.4g})")
    return 0
