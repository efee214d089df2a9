"""The paper's Section 4 comparison of priors p(V) (Eq. 5): the same data, seed and settings
reconstructed with each prior, only ``AbInitioConfig.prior`` changed.

:func:`prior_configs` makes the configurations (a copy of the base one per prior, nothing else
changed: the density scale, when given, is the same for both priors that use one, and by
default each run derives it from the data the same way,
:func:`cryonb.priors.particle_mean_density`);
:func:`compare_priors` runs one :class:`~cryonb.abinitio.AbInitioRun` per prior into
``out_dir/<prior>``, each with its own :class:`~cryonb.experiments.snapshots.RunRecorder`,
and :func:`priors_table` lists, per prior, the FSC 0.5 against the truth of the aligned map
(``run.json``'s ``truth_resolution``), the gold-standard half-map FSC 0.143, the solver time
and the wall time of the whole job.

The paper says it explored several priors and kept the exponential one ("a simple independent
exponential prior worked well"); its comparison is not in the text we have, so the numbers
beside ours are the setting, not a measured table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..abinitio import AbInitioConfig, AbInitioRun
from ..dataset import Dataset
from ..priors import PRIOR_NAMES
from .snapshots import RunRecorder

__all__ = ["PriorRun", "compare_priors", "prior_configs", "priors_table"]


def prior_configs(base: AbInitioConfig, priors: Sequence[str] = PRIOR_NAMES
                  ) -> dict[str, AbInitioConfig]:
    """``{prior: base with only prior changed}`` (``AbInitioConfig`` validates the name)."""
    return {p: replace(base, prior=p) for p in priors}


@dataclass(frozen=True, eq=False)
class PriorRun:
    """One prior's run in :func:`compare_priors`.

    Attributes
    ----------
    prior : ``"none"``, ``"exponential"`` or ``"gaussian"``
    config : the run's configuration
    run : the finished :class:`~cryonb.abinitio.AbInitioRun` (``run.work``, ``run.folder``)
    summary : its ``run.json`` summary
    recorder : the snapshots and per-domain fractions of the run (Figs. 5 and 7)
    wall_time_s : the whole job (solver, final poses, scoring, files), s
    """

    prior: str
    config: AbInitioConfig
    run: AbInitioRun
    summary: dict[str, Any]
    recorder: RunRecorder
    wall_time_s: float

    def aligned_map(self) -> Any:
        """The map aligned to the truth (``map_aligned_to_truth.mrc``; None without a truth)."""
        import numpy as np

        from ..io import read_mrc

        path = self.run.folder.path / "map_aligned_to_truth.mrc"
        return np.array(read_mrc(path).data) if path.exists() else None

    def truth_curve(self) -> Any:
        """FSC of :meth:`aligned_map` against the truth on the working grid, capped where the
        run capped it (``run.json``'s ``truth_resolution.limit_A``); None without a truth."""
        from ..fourier import fourier_crop, fourier_pad
        from ..metrics import fsc

        aligned, truth = self.aligned_map(), self.run.work.truth
        if aligned is None or truth is None or truth.volume is None:
            return None
        ref = truth.volume.astype("float64")
        n = aligned.shape[0]
        ref = (fourier_crop(ref, n, ndim=3) if ref.shape[0] > n
               else fourier_pad(ref, n, ndim=3) if ref.shape[0] < n else ref)
        limit_A = self.summary["truth_resolution"]["limit_A"]
        return fsc(aligned, ref, self.run.work.pixel_size_A, max_freq_invA=1.0 / limit_A)


def compare_priors(dataset: Dataset, out_dir: str | Path, base: AbInitioConfig, *,
                   priors: Sequence[str] = PRIOR_NAMES, snapshot_every: int | None = None,
                   progress: bool = False) -> dict[str, PriorRun]:
    """Run the same job once per prior, into ``out_dir/<prior>``.

    Parameters
    ----------
    dataset : the particles (with ``truth`` for the scores against it)
    out_dir : parent folder of the runs
    base : the settings every run shares (its own ``prior`` is replaced)
    priors : which priors, in order
    snapshot_every : each run's :class:`RunRecorder` also keeps the map every this many
        iterations
    progress : the runs' progress bars

    Returns
    -------
    ``{prior: PriorRun}`` in the order of ``priors``
    """
    out: dict[str, PriorRun] = {}
    for prior, config in prior_configs(base, priors).items():
        recorder = RunRecorder(every=snapshot_every)
        run = AbInitioRun(dataset, Path(out_dir) / prior, config, progress=progress,
                          callback=recorder)
        t0 = time.perf_counter()
        summary = run.run()
        out[prior] = PriorRun(prior, config, run, summary, recorder, time.perf_counter() - t0)
    return out


def priors_table(results: dict[str, PriorRun]) -> Any:
    """One row per prior: its density scale (``run.json``'s ``prior.density_scale``), the
    FSC 0.5 of the aligned map against the truth (Å; ``"<"``: better than, the curve never
    crossed), the half-map FSC 0.143 (None: no independent halves), the correlation with the
    truth, the fitted band limit (Å), the iterations, the solver time and the job's wall time
    (s)."""
    import pandas as pd

    rows = []
    for prior, r in results.items():
        s = r.summary
        truth = s.get("truth_resolution") or {}
        fitted = s.get("fitted_band_limit_A")
        rows.append({
            "prior": prior,
            "density_scale": (s.get("prior") or {}).get("density_scale"),
            "fsc05_vs_truth": truth.get("label"),
            "fsc05_vs_truth_A": truth.get("value_A"),
            "half_map_0143_A": s.get("half_map_resolution_A_0143"),
            "correlation": None if s.get("truth_correlation") is None
            else round(float(s["truth_correlation"]), 3),
            "fitted_band_limit_A": None if fitted is None else round(float(fitted), 1),
            "iterations": sum(s.get("iterations", {}).values()),
            "solver_time_s": round(float(s.get("wall_time_s", float("nan"))), 1),
            "job_time_s": round(r.wall_time_s, 1)})
    return pd.DataFrame(rows)
