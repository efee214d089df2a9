"""The paper's Fig. 6 on a finished run: its own importance-sampling proposals, final band limit.

:mod:`cryonb.is_study` measures the error of importance sampling (IS) against the exhaustive sum
of Eq. 4 for any sampler; this module feeds it the sampler of a run that has ended, so that the
proposals are exactly the ones the solver would have drawn (each particle's posterior of its
last visit, possibly under an older map and at a lower band limit, annealed and mixed at the
schedule's ``alpha`` and ``T``), and the exact values are the sums under the half's final map.

* :func:`load_run_half`: one half-set of a run folder rebuilt from ``checkpoint.npz`` by
  :meth:`cryonb.abinitio.AbInitioRun.from_checkpoint` (as a resume does): the half's
  :class:`~cryonb.objective.MarginalObjective` at its last band limit, whose
  :class:`~cryonb.importance.ImportanceSampler` holds the run's records, the half's final SAGD
  map and the schedule clock of its last iteration.
* :func:`run_is_study`: n images of that half, the exhaustive sum under the half's map and the IS
  estimates for a list of ``s_B`` (:func:`cryonb.is_study.is_error_curve`), returned as a
  :class:`RunISStudy` (mean |relative error| -- the notebooks' and the explorer's measure --
  beside the paper's relative RMSE, and the fraction of points).

The command that measured the box-128 run: ``docs/reconstruction.md`` (section "Paper figures").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .config import AbInitioConfig
from .dataset import Dataset
from .importance import ImportanceSampler
from .is_study import ISErrorCurve, is_error_curve
from .objective import MarginalObjective

__all__ = ["RunHalf", "RunISStudy", "load_run_half", "run_is_study"]


@dataclass(frozen=True, eq=False)
class RunHalf:
    """One half-set of a run, as it stood at the run's last checkpoint.

    Attributes
    ----------
    name : ``"half1"`` or ``"half2"``
    objective : the half's :class:`~cryonb.objective.MarginalObjective` (its ``dataset`` the
        half's working images, in the run's order), band limit set to the half's last one, its
        ``sampler`` holding the run's per-particle records
    volume : (N, N, N) float64 ``[z, y, x]``: the half's final SAGD map (``sagd_halfX.mrc``)
    indices : (n,) int64, the half's particles in the run's working data set
    band_limit_invA : the band limit of the half's last iteration, 1/Å
    sampling_clock : the schedule clock (``alpha``, ``T``) of that iteration
        (:attr:`cryonb.sagd.SAGDSolver.sampling_clock`, restored with the checkpoint)
    config : the run's configuration
    """

    name: str
    objective: MarginalObjective
    volume: NDArray
    indices: NDArray
    band_limit_invA: float
    sampling_clock: int
    config: AbInitioConfig

    @property
    def sampler(self) -> ImportanceSampler:
        """The run's importance sampler of this half."""
        return self.objective.sampler


@dataclass(frozen=True, eq=False)
class RunISStudy:
    """Fig. 6 of one run: IS estimates from the run's own proposals against the exact sums.

    Attributes
    ----------
    curve : the :class:`~cryonb.is_study.ISErrorCurve` (``exact`` (B,), ``estimates`` (S, T, B))
    half : the :class:`RunHalf` the images belong to
    particle_ids : (B,) the images, indices into the half's particles
        (``half.indices[particle_ids]`` in the run's working set)
    exhaustive_s : wall time of the exhaustive sums, s
    sampling_s : wall time of the IS draws and their evaluation, s
    """

    curve: ISErrorCurve
    half: RunHalf
    particle_ids: NDArray
    exhaustive_s: float
    sampling_s: float

    @property
    def band_limit_invA(self) -> float:
        """The band limit of the study (the half's last), 1/Å."""
        return self.half.band_limit_invA

    def rows(self) -> list[dict[str, float]]:
        """One dict per ``s_B``: ``s_B``, ``mean_relative_error``, ``max_relative_error``,
        ``relative_rmse``, ``rmse_nats``, ``fraction_evaluated``, ``speedup``."""
        c = self.curve
        return [{"s_B": float(s), "mean_relative_error": float(m), "max_relative_error": float(x),
                 "relative_rmse": float(r), "rmse_nats": float(a), "fraction_evaluated": float(f),
                 "speedup": float(v)}
                for s, m, x, r, a, f, v in zip(c.ess_scales, c.mean_relative_error,
                                               c.max_relative_error, c.relative_rmse, c.abs_rmse,
                                               c.fraction_evaluated, c.speedup, strict=True)]

    def table(self) -> str:
        """The setting (band limit, grid, clock, images, wall times) and one row per ``s_B``."""
        h, c = self.half, self.curve
        schedule = h.sampler.schedule
        q = h.objective.likelihood.quadrature
        head = (f"{h.name}, {c.exact.size} images, {c.estimates.shape[1]} draws per s_B; band "
                f"limit {h.band_limit_invA:.4g} 1/Å (1/{1 / h.band_limit_invA:.1f} Å), "
                f"{h.objective.dataset.box_size} px at {h.objective.pixel_size_A:.3g} Å\n"
                f"{q.summary()}\nschedule clock {h.sampling_clock}: alpha "
                f"{schedule.alpha(h.sampling_clock):.3g}, T "
                f"{1 / schedule.inverse_temperature(h.sampling_clock):.3g}; exhaustive sums "
                f"{self.exhaustive_s:.0f} s, IS draws {self.sampling_s:.0f} s")
        return head + "\n" + c.table()


def _open_dataset(dataset: Dataset | str | Path) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    path = Path(dataset)
    if path.is_dir():
        from .synthetic.particles import load_simulation

        return load_simulation(path)
    return Dataset.from_star(path)


def load_run_half(run_folder: str | Path, dataset: Dataset | str | Path, *,
                  half: int = 1) -> RunHalf:
    """Half-set ``half`` of a run as it stood at its last checkpoint, at its last band limit.

    Parameters
    ----------
    run_folder : the ``--out`` folder of a run (``checkpoint.npz`` after the split is needed)
    dataset : the run's input particles: a :class:`~cryonb.dataset.Dataset` (as given to
        :class:`~cryonb.abinitio.AbInitioRun`), a STAR file, or a folder written by
        :func:`cryonb.synthetic.particles.simulate_to_files`
    half : 1 or 2

    Returns
    -------
    RunHalf
        From :meth:`cryonb.abinitio.AbInitioRun.from_checkpoint` (the job rebuilt as a resume
        does: the saved configuration, working images, noise sigma, quadrature options,
        importance-sampling records and schedule clock are the run's).
    """
    from .abinitio import AbInitioRun

    if half not in (1, 2):
        raise ValueError(f"half must be 1 or 2, got {half}")
    run = AbInitioRun.from_checkpoint(_open_dataset(dataset), Path(run_folder), progress=False)
    if run.phase != "halves":
        raise ValueError(f"{run_folder}: the run stopped before the split into half-sets")
    part = run.halves[half - 1]
    solver = part.solver
    if not solver.state.records:
        raise ValueError(f"{run_folder}: {part.name} took no step")
    return RunHalf(part.name, solver.objective, np.array(solver.volume, dtype=np.float64),
                   np.asarray(part.ids, dtype=np.int64), solver.last_band_limit_invA,
                   solver.sampling_clock, run.config)


def run_is_study(run_folder: str | Path | RunHalf, dataset: Dataset | str | Path | None,
                 rng: np.random.Generator, *, half: int = 1, n_images: int = 25,
                 ess_scales: ArrayLike = (1.0, 2.0, 4.0, 10.0, 20.0), n_trials: int = 2,
                 particle_ids: ArrayLike | None = None, batch_size: int = 5,
                 dtype: Any = np.float64, progress: bool = True) -> RunISStudy:
    """Fig. 6 with a finished run's own proposals, at its final band limit.

    Parameters
    ----------
    run_folder : a run folder (see :func:`load_run_half`) or a :class:`RunHalf` loaded already
    dataset : the run's input particles (see :func:`load_run_half`; None with a RunHalf)
    rng : draws the importance samples
    half : which half-set (1 or 2)
    n_images : images of the half, evenly spread over its particles that have a record
    ess_scales : the ``s_B`` values (the paper: 10)
    n_trials : independent draws per ``s_B``
    particle_ids : the images instead (indices into the half's particles)
    batch_size : images per exhaustive evaluation
    dtype : precision of every evaluation, exhaustive and sampled.  float64 (default): the
        exact sums are exact to ~1e-12; in float32 (the solver's precision) their rounding
        alone differed from the direct float64 sum by up to 7.5e-5 of ``|log p|`` on a 16-px
        test run, the size of the IS errors being measured
    progress : progress bars (tqdm, with ETA) over the exhaustive sums and the draws

    Returns
    -------
    RunISStudy
        The exact value of each image is the exhaustive Eq. 4 sum over the whole quadrature of
        the half's last band limit under its final map; the estimates come from the half's
        sampler at the schedule clock of its last iteration (``alpha``, ``T``), with the run's
        engine and noise sigma.  An image whose draw covers the whole grid has the
        exact value (error 0).
    """
    from tqdm.auto import tqdm

    run = run_folder if isinstance(run_folder, RunHalf) else load_run_half(
        run_folder, dataset, half=half)
    objective, sampler = run.objective, run.sampler
    if particle_ids is None:
        seen = np.flatnonzero(sampler.seen(np.arange(len(objective.dataset))))
        if seen.size == 0:
            raise ValueError(f"{run.name}: no particle has a recorded posterior")
        pick = np.unique(np.linspace(0, seen.size - 1, min(n_images, seen.size)).round())
        ids = seen[pick.astype(np.int64)]
    else:
        ids = np.asarray(particle_ids, dtype=np.int64).ravel()
    lik = objective.likelihood
    data = objective.dataset
    prepared = lik.prepare(data.images(ids), None if data.ctf is None else data.ctf.subset(ids),
                           objective.noise_sigma, dtype=dtype)
    volume_ft = lik.volume_to_fourier(np.asarray(run.volume, dtype=dtype))
    t0 = time.perf_counter()
    exact = np.empty(ids.size)
    with tqdm(total=ids.size, desc="exhaustive Eq. 4", unit="image",
              disable=not progress) as bar:
        for start in range(0, ids.size, batch_size):
            rows = np.arange(start, min(ids.size, start + batch_size))
            exact[rows] = lik.evaluate(volume_ft, prepared.subset(rows)).log_likelihood
            bar.update(rows.size)
    t1 = time.perf_counter()
    curve = is_error_curve(lik, volume_ft, prepared, sampler, ids, ess_scales, rng,
                           exact=exact, iteration=run.sampling_clock, n_trials=n_trials,
                           progress=progress)
    return RunISStudy(curve, run, ids, t1 - t0, time.perf_counter() - t1)
