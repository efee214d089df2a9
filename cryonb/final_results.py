"""Final results on one molecule (the paper's Fig. 11, here with a known truth).

:func:`final_result` runs, for one :class:`cryonb.molecules.Molecule`:

1. **simulate** particles from its density with its real CTFs
   (:func:`cryonb.synthetic.particles.simulate_to_files`: uniform poses, Gaussian origins,
   white noise at ``snr``);
2. **ab initio** from a random start (:class:`cryonb.abinitio.AbInitioRun`, C1, the settings of
   :class:`FinalResultParams`); its map ``map.mrc`` is the mean of the two half-set maps;
3. the **true-pose limit**: the same working images (normalised, Fourier-cropped to
   ``rec_box``) reconstructed at their *true* poses and origins
   (:func:`cryonb.backprojection.reconstruct_known_poses`, least squares by conjugate
   gradients, band-limited at the ab initio run's fitted band limit) — what the data support
   when the poses are known;
4. both maps **aligned** to the truth (rotation, translation and both hands: the run aligns
   its ``map.mrc`` itself, ``map_aligned_to_truth.mrc``; the true-pose map goes through
   :func:`cryonb.metrics.score_against_reference`) and scored by the FSC 0.5 against the truth
   Fourier-cropped to ``rec_box``, every curve capped at the fitted band limit (above it no
   data were fitted; a curve that stays above 0.5 up to it gives "better than").

Wall times are measured with :func:`time.perf_counter` around each step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .metrics import REFERENCE_THRESHOLD, FSCResult, Resolution, fsc
from .molecules import Molecule, get_molecule

__all__ = ["FinalResult", "FinalResultParams", "final_result"]


@dataclass(frozen=True)
class FinalResultParams:
    """Settings of :func:`final_result` (units in the names).

    Attributes
    ----------
    n_particles : int
        Particles simulated (paper, Fig. 11: 40,000 synthetic GroEL-GroES images, 128 px at
        2.8 Å; its other two molecules were real ATP synthase sets of 46,105 and 5,984).
    snr : float
        Signal over noise variance of the images (paper: 0.05).
    shift_sigma_A : float
        Standard deviation of the simulated origins, Å.
    rec_box : int
        Working box of the reconstructions, px (images Fourier-cropped to it).
    time_limit_min : float or None
        Ab initio wall-time budget, min.
    max_iterations : int or None
        Ab initio iteration budget.
    iterations_per_stage, batch_size, n_heldout, min_fitted_iterations : int
        :class:`cryonb.config.AbInitioConfig` fields.
    particle_radius_A : float or None
        Radius for the angular sampling (None: from the images).
    true_pose_iterations : int
        Conjugate-gradient iterations of the true-pose reconstruction.
    seed : int
        Seed of the simulation and the run.
    config_overrides : dict
        Further :class:`~cryonb.config.AbInitioConfig` fields (e.g. ``{"prior": "none"}``).
    """

    n_particles: int = 600
    snr: float = 0.05
    shift_sigma_A: float = 8.4
    rec_box: int = 24
    time_limit_min: float | None = 0.5
    max_iterations: int | None = None
    iterations_per_stage: int = 6
    batch_size: int = 60
    n_heldout: int = 40
    min_fitted_iterations: int = 10
    particle_radius_A: float | None = None
    true_pose_iterations: int = 10
    seed: int = 0
    config_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FinalResult:
    """The ab initio map and the true-pose limit of one molecule, scored against the truth.

    Attributes
    ----------
    molecule : Molecule
    params : FinalResultParams
    pixel_size_A : float
        Working pixel size, Å (the simulation's times ``box / rec_box``).
    max_freq_invA : float
        Band limit every curve is capped at (the ab initio run's fitted band limit), 1/Å.
    truth : ndarray (rec_box,) * 3
        The density the particles were made from, Fourier-cropped to the working box.
    abinitio, true_pose : ndarray (rec_box,) * 3
        The two maps, aligned to ``truth`` (``[z, y, x]``, the images' units).
    abinitio_fsc, true_pose_fsc : FSCResult
        Against ``truth``, capped at ``max_freq_invA``.
    abinitio_res05, true_pose_res05 : Resolution
        FSC 0.5 of those curves.
    abinitio_flipped, true_pose_flipped : bool
        The alignment chose the mirror hand.
    achieved_snr : float
    simulate_s, abinitio_s, true_pose_s, score_s : float
        Wall times, s: simulation; ab initio run (with its final-pose pass and its own
        scoring); true-pose reconstruction; the two alignments and FSCs here.
    summary : dict
        The run's ``run.json`` summary.
    run_dir : Path
    """

    molecule: Molecule
    params: FinalResultParams
    pixel_size_A: float
    max_freq_invA: float
    truth: NDArray
    abinitio: NDArray
    true_pose: NDArray
    abinitio_fsc: FSCResult
    true_pose_fsc: FSCResult
    abinitio_res05: Resolution
    true_pose_res05: Resolution
    abinitio_flipped: bool
    true_pose_flipped: bool
    achieved_snr: float
    simulate_s: float
    abinitio_s: float
    true_pose_s: float
    score_s: float
    summary: dict[str, Any]
    run_dir: Path

    def row(self) -> dict[str, Any]:
        """One table row (JSON-ready): the molecule, the resolutions, the ab initio map's
        real-space correlation with the truth (after alignment), the iterations (common +
        per half), the solver time and the wall times."""
        its = self.summary.get("iterations") or {}
        corr = self.summary.get("truth_correlation")
        solver_s = self.summary.get("wall_time_s")
        return {
            "molecule": self.molecule.title, "symmetry (run in C1)": self.molecule.symmetry,
            "particles": self.params.n_particles, "box (px)": self.params.rec_box,
            "pixel (Å)": round(self.pixel_size_A, 3),
            "band limit (Å)": round(1.0 / self.max_freq_invA, 1),
            "ab initio FSC 0.5": self.abinitio_res05.label,
            "true poses FSC 0.5": self.true_pose_res05.label,
            "ab initio hand flipped": self.abinitio_flipped,
            "correlation": None if corr is None else round(float(corr), 3),
            "iterations (common + half)": f"{its.get('common', 0)} + {its.get('half1', 0)}",
            "solver (s)": None if solver_s is None else round(float(solver_s), 1),
            "ab initio (s)": round(self.abinitio_s, 1),
            "true poses (s)": round(self.true_pose_s, 1),
            "simulate (s)": round(self.simulate_s, 1),
        }


def final_result(molecule: str | Molecule, params: FinalResultParams, out_dir: str | Path, *,
                 progress: bool = False) -> FinalResult:
    """Simulate, reconstruct ab initio and at the true poses, and score both against the truth.

    Parameters
    ----------
    molecule : str or Molecule
        A key of :data:`cryonb.molecules.MOLECULES` or a :class:`Molecule`.
    params : FinalResultParams
    out_dir : path
        Folder for ``data/`` (the simulated set) and ``abinitio/`` (the run folder).
    progress : bool
        Progress bars.

    Returns
    -------
    FinalResult
    """
    from .abinitio import AbInitioConfig, AbInitioRun
    from .backprojection import reconstruct_known_poses
    from .fourier import fourier_crop
    from .image_model import ImageModel
    from .metrics import score_against_reference
    from .synthetic.particles import SimulationParams, load_simulation, simulate_to_files

    mol = get_molecule(molecule) if isinstance(molecule, str) else molecule
    out = Path(out_dir)
    rng = np.random.default_rng(params.seed)

    t0 = time.perf_counter()
    density = mol.density()
    sim = simulate_to_files(
        density, mol.pixel_size_A,
        SimulationParams(n_particles=params.n_particles, snr=params.snr,
                         shift_sigma_A=params.shift_sigma_A),
        rng, out / "data", ctf_table=mol.ctfs(), progress=progress)
    dataset = load_simulation(out / "data")
    simulate_s = time.perf_counter() - t0

    config = AbInitioConfig(
        box_size=params.rec_box, time_limit_min=params.time_limit_min,
        max_iterations=params.max_iterations, iterations_per_stage=params.iterations_per_stage,
        batch_size=params.batch_size, n_heldout=params.n_heldout,
        min_fitted_iterations=params.min_fitted_iterations,
        particle_radius_A=params.particle_radius_A, shift_sigma_A=params.shift_sigma_A,
        seed=params.seed, **params.config_overrides)
    t0 = time.perf_counter()
    run = AbInitioRun(dataset, out / "abinitio", config, progress=progress)
    summary = run.run()
    abinitio_s = time.perf_counter() - t0
    work = run.work
    psize = float(work.pixel_size_A)
    cap = run.fitted_band_limit_invA() or float(summary["split_max_freq_invA"])

    t0 = time.perf_counter()
    truth_poses = work.truth
    posed = work.with_poses(truth_poses.rotations, truth_poses.shifts_A)
    model = ImageModel(work.box_size, psize, max_freq_invA=cap)
    true_pose = reconstruct_known_poses(posed, model, n_iterations=params.true_pose_iterations,
                                        progress=progress)
    true_pose_s = time.perf_counter() - t0

    from .io import read_mrc

    # the run aligned map.mrc to the truth (rotation, translation, both hands) and wrote it as
    # map_aligned_to_truth.mrc: score that here with the same cap; align the true-pose map
    t0 = time.perf_counter()
    truth = fourier_crop(density.astype(np.float64), work.box_size, ndim=3)
    aligned = np.asarray(read_mrc(run.out_dir / "map_aligned_to_truth.mrc", mmap=False).data,
                         dtype=np.float64)
    ab_curve = fsc(aligned, truth, psize, max_freq_invA=cap)
    tp = score_against_reference(true_pose, truth, psize, max_freq_invA=cap)
    score_s = time.perf_counter() - t0

    return FinalResult(
        molecule=mol, params=params, pixel_size_A=psize, max_freq_invA=float(cap),
        truth=truth.astype(np.float32), abinitio=aligned.astype(np.float32),
        true_pose=tp.aligned.astype(np.float32), abinitio_fsc=ab_curve,
        true_pose_fsc=tp.curve, abinitio_res05=ab_curve.resolution(REFERENCE_THRESHOLD),
        true_pose_res05=tp.resolution, abinitio_flipped=bool(summary.get("hand_flipped")),
        true_pose_flipped=tp.flipped,
        achieved_snr=float(sim.achieved_snr), simulate_s=simulate_s, abinitio_s=abinitio_s,
        true_pose_s=true_pose_s, score_s=score_s, summary=summary, run_dir=run.out_dir)
