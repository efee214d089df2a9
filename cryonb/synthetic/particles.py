"""Simulate particle stacks through :class:`cryonb.image_model.ImageModel`.

The generative model of the paper (Eq. 1): ``I = C_theta S_t P_R V + noise`` with

* rotations uniform on SO(3) (or given),
* origins Gaussian, ``N(0, shift_sigma_A^2)`` per axis, in Å (RELION sign),
* per-particle CTFs drawn from a table of real CTFs (or from ranges), with an extra B-factor
  envelope ``exp(-B k^2 / 4)`` (the paper's synthetic set used B = 500 Å^2),
* additive white Gaussian noise of standard deviation ``sigma`` per pixel.

Signal-to-noise ratio
---------------------
``SNR = var_signal / sigma^2`` where ``var_signal`` is the variance of the noiseless
(CTF-modulated, shifted) images over **all pixels of the box and all particles** of the data set
(pooled).  The simulation makes two passes: the first computes ``var_signal`` exactly, the second
regenerates the same images, adds noise of ``sigma = sqrt(var_signal / SNR)`` and writes them.
The achieved SNR reported is ``var_signal`` over the variance of the noise actually drawn.
Note that the value depends on the box size (a larger box dilutes the signal variance).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ..ctf import CTFParams
from ..image_model import ImageModel
from ..rotations import random_rotations

if TYPE_CHECKING:
    from ..dataset import Dataset

__all__ = [
    "SimulatedParticles",
    "SimulationParams",
    "SimulationResult",
    "draw_ctfs",
    "draw_particles",
    "load_simulation",
    "read_ctf_table",
    "simulate_to_files",
]


@dataclass(frozen=True)
class SimulationParams:
    """What to simulate (units in the names).

    Attributes
    ----------
    n_particles : int
    snr : float
        Requested signal variance over noise variance (see the module docstring).
    shift_sigma_A : float
        Standard deviation of the origins per axis, Å (paper: 3 px = 8.4 Å).
    bfactor_A2 : float
        B-factor of the envelope applied with the CTF, Å^2 (paper: 500).
    defocus_range_A : (float, float)
        Uniform defocus range when no CTF table is given.
    astigmatism_A : float
        Maximum |U - V| when no CTF table is given.
    voltage_kV, cs_mm, amplitude_contrast : float
        Microscope when no CTF table is given (paper: 200, 2.0, 0.07).
    max_freq_invA : float or None
        Band limit of the simulation (None = Nyquist).
    pad : int
        Projector oversampling.
    chunk_size : int
        Images simulated and written at once (bounds the memory).
    """

    n_particles: int
    snr: float = 0.05
    shift_sigma_A: float = 8.4
    bfactor_A2: float = 500.0
    defocus_range_A: tuple[float, float] = (10000.0, 40000.0)
    astigmatism_A: float = 500.0
    voltage_kV: float = 200.0
    cs_mm: float = 2.0
    amplitude_contrast: float = 0.07
    max_freq_invA: float | None = None
    pad: int = 2
    chunk_size: int = 500

    def __post_init__(self) -> None:
        if self.n_particles < 1:
            raise ValueError("n_particles must be >= 1")
        if not self.snr > 0:
            raise ValueError("snr must be positive")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")


def read_ctf_table(path: str | Path) -> CTFParams:
    """Read a CSV of CTFs (columns named like :class:`CTFParams` fields; ``#`` comments)."""
    table = pd.read_csv(path, comment="#")
    required = ["defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kV", "cs_mm",
                "amplitude_contrast"]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: CTF table lacks columns {missing}; expected {required}")
    optional = [c for c in ("phase_shift_deg", "bfactor_A2", "scale") if c in table.columns]
    return CTFParams(**{c: table[c].to_numpy(float) for c in required + optional})


def draw_ctfs(n: int, rng: np.random.Generator, params: SimulationParams,
              table: CTFParams | None = None) -> CTFParams:
    """Per-particle CTFs: rows drawn with replacement from ``table``, else from the ranges.

    The simulation's B-factor envelope is added to each CTF's own B-factor.
    """
    if table is not None:
        ctf = table.subset(rng.integers(0, len(table), n))
    else:
        du = rng.uniform(*params.defocus_range_A, n)
        ctf = CTFParams(du, du - rng.uniform(0.0, params.astigmatism_A, n),
                        rng.uniform(-90.0, 90.0, n), params.voltage_kV, params.cs_mm,
                        params.amplitude_contrast)
    return replace(ctf, bfactor_A2=ctf.bfactor_A2 + params.bfactor_A2)


@dataclass(frozen=True, eq=False)
class SimulatedParticles:
    """Ground truth drawn for a simulation: poses, origins and CTFs of every particle."""

    rotations: NDArray  # (n, 3, 3)
    shifts_A: NDArray  # (n, 2)
    ctf: CTFParams
    noise_seed: int

    def __len__(self) -> int:
        return int(self.rotations.shape[0])


def draw_particles(params: SimulationParams, rng: np.random.Generator,
                   ctf_table: CTFParams | None = None,
                   rotations: NDArray | None = None) -> SimulatedParticles:
    """Draw poses (uniform on SO(3) unless given), origins and CTFs for every particle."""
    n = params.n_particles
    if rotations is None:
        rotations = random_rotations(n, rng)
    elif rotations.shape != (n, 3, 3):
        raise ValueError(f"rotations must have shape {(n, 3, 3)}, got {rotations.shape}")
    shifts = rng.normal(0.0, params.shift_sigma_A, (n, 2))
    ctf = draw_ctfs(n, rng, params, ctf_table)
    return SimulatedParticles(np.asarray(rotations, float), shifts, ctf,
                              int(rng.integers(0, 2**63 - 1)))


def _clean_chunks(model: ImageModel, volume_ft, truth: SimulatedParticles, chunk: int,
                  desc: str, progress: bool) -> Iterator[tuple[slice, NDArray]]:
    from ..fourier import ifft2_centered

    n, box = len(truth), model.box_size
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            values = model.forward_points(volume_ft, truth.rotations[sl], truth.shifts_A[sl],
                                          truth.ctf.subset(sl))
            spectra = np.zeros((values.shape[0], box, box), dtype=values.dtype)
            spectra[:, model.mask] = values
            yield sl, ifft2_centered(spectra).real.astype(np.float32)
            bar.update(sl.stop - sl.start)


@dataclass(frozen=True)
class SimulationResult:
    """Where the simulated data set was written and what it achieved."""

    star_path: Path
    stack_path: Path
    truth_path: Path
    noise_sigma: float
    signal_variance: float
    achieved_snr: float
    truth: SimulatedParticles


def simulate_to_files(volume: NDArray, pixel_size_A: float, params: SimulationParams,
                      rng: np.random.Generator, out_dir: str | Path, *,
                      ctf_table: CTFParams | None = None, rotations: NDArray | None = None,
                      progress: bool = True) -> SimulationResult:
    """Simulate a particle stack and write ``particles.mrcs``, ``particles.star``, ``truth.mrc``.

    Memory is bounded by ``params.chunk_size`` images: the stack is written chunk by chunk
    into a memory-mapped MRC file and never held whole.

    Parameters
    ----------
    volume : (N, N, N) real density [z, y, x]
    pixel_size_A : float
    params : SimulationParams
    rng : numpy Generator (the only source of randomness: same seed, same files up to
        their creation-time stamps)
    out_dir : folder to write into (created)
    ctf_table : CTFs to draw from (e.g. :func:`read_ctf_table`), or None for the ranges
    rotations : (n, 3, 3) given poses, or None for uniform draws
    """
    from ..io import MrcStackWriter, write_mrc, write_particles_star

    volume = np.asarray(volume, dtype=np.float32)
    box = volume.shape[-1]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = draw_particles(params, rng, ctf_table, rotations)
    model = ImageModel(box, pixel_size_A, max_freq_invA=params.max_freq_invA, pad=params.pad)
    volume_ft = model.projector.volume_to_fourier(volume.astype(np.float64))

    # pass 1: exact pooled signal variance (nothing stored)
    total, total_sq, count = 0.0, 0.0, 0
    for _, clean in _clean_chunks(model, volume_ft, truth, params.chunk_size,
                                  "signal variance", progress):
        c64 = clean.astype(np.float64)
        total += c64.sum()
        total_sq += (c64 * c64).sum()
        count += c64.size
    signal_var = total_sq / count - (total / count) ** 2
    sigma = float(np.sqrt(signal_var / params.snr))

    # pass 2: the same images plus noise, written chunk by chunk
    noise_rng = np.random.default_rng(truth.noise_seed)
    n_sum, n_sq = 0.0, 0.0
    stack_path = out / "particles.mrcs"
    with MrcStackWriter(stack_path, len(truth), box, pixel_size_A) as writer:
        for sl, clean in _clean_chunks(model, volume_ft, truth, params.chunk_size,
                                       "simulate", progress):
            noise = noise_rng.normal(0.0, sigma, clean.shape)
            n_sum += noise.sum()
            n_sq += (noise * noise).sum()
            writer.write(sl.start, (clean + noise).astype(np.float32))
    noise_var = n_sq / count - (n_sum / count) ** 2

    truth_path = out / "truth.mrc"
    write_mrc(truth_path, volume, pixel_size_A)
    star_path = out / "particles.star"
    n = len(truth)
    write_particles_star(
        star_path, image_paths=[str(stack_path)] * n, image_indices=np.arange(n),
        pixel_size_A=pixel_size_A, box_size=box, ctf=truth.ctf, rotations=truth.rotations,
        shifts_A=truth.shifts_A, half_set=np.arange(n) % 2,
    )
    return SimulationResult(star_path, stack_path, truth_path, sigma, float(signal_var),
                            float(signal_var / noise_var), truth)


def load_simulation(out_dir: str | Path) -> Dataset:
    """Open a simulated data set written by :func:`simulate_to_files` with its ground truth.

    The STAR file's poses and origins are the true ones; they become ``dataset.truth`` (with the
    map ``truth.mrc``) and are removed from the dataset's own poses, as ab initio input.
    """
    from ..dataset import Dataset, GroundTruth
    from ..io import read_mrc

    out = Path(out_dir)
    ds = Dataset.from_star(out / "particles.star")
    truth_map = read_mrc(out / "truth.mrc", mmap=False)
    truth = GroundTruth(volume=np.asarray(truth_map.data, dtype=np.float32),
                        volume_pixel_size_A=truth_map.voxel_size_A,
                        rotations=ds.rotations, shifts_A=ds.shifts_A)
    return ds.with_poses(None, None).with_truth(truth)
