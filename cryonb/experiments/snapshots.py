"""Fig. 5 and Fig. 7 of Brubaker, Punjani & Fleet (2015) from one ab initio run.

* Fig. 5: the map after increasing amounts of computation, from the random start on the left.
  :class:`RunRecorder` is the run's callback (``AbInitioRun(..., callback=recorder)``): it
  keeps the start (the solver's ``initial_volume``) and, per band limit, the map at the last
  iteration at that band limit, with the job's solver time; :func:`align_snapshots` superposes
  each on the truth (rotation, translation and hand: :func:`cryonb.metrics.score_against_reference`)
  and scores it at FSC 0.5, the curve capped at the snapshot's band limit (above it nothing
  was fitted).
* Fig. 7: the fraction of quadrature points importance sampling evaluates, per domain
  (directions, in-plane angles, shifts), against iteration and band limit: every solver record
  holds the training batch's measured fractions (``fraction_directions`` ...,
  :func:`cryonb.importance.evaluated_domain_fractions`); the recorder keeps them and
  :func:`domain_fraction_table` makes the table the figure draws, or
  :func:`history_fraction_table` makes it from a finished run's ``history.csv``.

Only the common phase and the first half-set are recorded by default (the job's map develops
there; the second half repeats the first's schedule on other images).

Conventions (``docs/conventions.md``): maps ``[z, y, x]`` on the run's working grid
(``run.work``: box and pixel size after the Fourier crop), band limits in 1/Å, times in
seconds of solver time since the job began (both halves counted once they run).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..importance import DOMAINS
from ..metrics import FSCResult, Resolution, score_against_reference

__all__ = ["AlignedSnapshot", "RunRecorder", "Snapshot", "align_snapshots",
           "domain_fraction_table", "evenly_spaced", "fractions_by_band_limit",
           "history_fraction_table", "snapshot_table"]



@dataclass(frozen=True, eq=False)
class Snapshot:
    """The map at one moment of a run.

    Attributes
    ----------
    volume : (N, N, N) float64, ``[z, y, x]`` on the run's working grid
    time_s : float
        Solver time of the job when it was taken (0 for the start), s.
    max_freq_invA : float
        Band limit the map was fitted at (the start: the first band limit), 1/Å.
    iteration : int
        The solver's iteration (0 for the start).
    phase : str
        ``"start"``, ``"common"``, ``"half1"`` ...
    """

    volume: NDArray
    time_s: float
    max_freq_invA: float
    iteration: int
    phase: str

    @property
    def label(self) -> str:
        """``"start\\n40 Å"`` or ``"1.2 min\\n30 Å"``: time and band limit."""
        when = "start" if self.phase == "start" else _duration(self.time_s)
        return f"{when}\n{1.0 / self.max_freq_invA:.0f} Å"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60.0:.1f} min"


@dataclass
class RunRecorder:
    """An :class:`~cryonb.abinitio.AbInitioRun` callback that keeps Fig. 5's snapshots and
    Fig. 7's per-domain fractions.

    Parameters
    ----------
    phases : the phases recorded (``"common"``, ``"half1"``, ``"half2"``)
    every : also keep the map every this many iterations (None: only the last one of each
        band limit; a short run may not leave its first band limit)

    Attributes
    ----------
    start : Snapshot or None
        The random start, taken at the first record.
    rows : list of dict
        One per recorded iteration: ``step`` (count of recorded iterations), ``iteration``,
        ``phase``, ``max_freq_invA``, ``time_s``, ``fraction_evaluated`` and, when the solver
        samples, ``fraction_directions``, ``fraction_inplane``, ``fraction_shifts``.
    """

    phases: tuple[str, ...] = ("common", "half1")
    every: int | None = None
    start: Snapshot | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    _by_band: dict[float, Snapshot] = field(default_factory=dict, repr=False)
    _periodic: dict[tuple[str, int], Snapshot] = field(default_factory=dict, repr=False)

    def __call__(self, run: Any, solver: Any, record: dict[str, Any]) -> None:
        """Called by the run after every iteration of every solver."""
        phase = _phase(run, solver)
        if phase not in self.phases:
            return
        w = float(record["max_freq_invA"])
        t = float(run.common.state.elapsed_s
                  + sum(h.solver.state.elapsed_s for h in run.halves))
        if self.start is None and solver.initial_volume is not None:
            self.start = Snapshot(np.array(solver.initial_volume, dtype=np.float64), 0.0, w,
                                  0, "start")
        snap = Snapshot(np.array(solver.volume, dtype=np.float64), t, w,
                        int(record["iteration"]), phase)
        self._by_band[round(w, 9)] = snap
        if self.every is not None and snap.iteration % self.every == 0:
            self._periodic[(phase, snap.iteration)] = snap
        row = {"step": len(self.rows), "iteration": int(record["iteration"]), "phase": phase,
               "max_freq_invA": w, "time_s": t,
               "fraction_evaluated": float(record["fraction_evaluated"]),
               **{f"fraction_{d}": float(record.get(f"fraction_{d}", np.nan))
                  for d in DOMAINS}}
        self.rows.append(row)

    @property
    def snapshots(self) -> list[Snapshot]:
        """The start, then the map at the last iteration of each band limit (and every
        :attr:`every` iterations), in time order."""
        unique = {(s.phase, s.iteration): s for s in (*self._periodic.values(),
                                                      *self._by_band.values())}
        maps = sorted(unique.values(), key=lambda s: s.time_s)
        return ([self.start] if self.start is not None else []) + maps


def _phase(run: Any, solver: Any) -> str:
    for half in run.halves:
        if half.solver is solver:
            return str(half.name)
    return "common"


def evenly_spaced(items: Sequence[Any], max_items: int | None) -> list[Any]:
    """At most ``max_items`` of ``items``, evenly spaced, the first and the last kept."""
    items = list(items)
    if max_items is None or len(items) <= max_items:
        return items
    if max_items < 2:
        return items[-1:] if max_items == 1 else []
    keep = np.unique(np.round(np.linspace(0, len(items) - 1, max_items)).astype(int))
    return [items[i] for i in keep]


@dataclass(frozen=True, eq=False)
class AlignedSnapshot:
    """A :class:`Snapshot` superposed on the truth and scored against it.

    Attributes
    ----------
    snapshot : the map as the run had it
    aligned : (N, N, N) the map after the alignment (rotation, translation, hand)
    curve : FSCResult of ``aligned`` against the truth on the working grid, NaN above the
        snapshot's band limit
    resolution : Resolution at FSC 0.5 (a known reference)
    correlation : real-space correlation after alignment
    flipped : the hand was inverted to match
    """

    snapshot: Snapshot
    aligned: NDArray
    curve: FSCResult
    resolution: Resolution
    correlation: float
    flipped: bool

    @property
    def label(self) -> str:
        """Time, band limit and FSC 0.5 vs truth: ``"1.2 min\\n30 Å\\nvs truth 41.0 Å"``."""
        return f"{self.snapshot.label}\nvs truth {self.resolution.label}"


def align_snapshots(snapshots: Iterable[Snapshot], truth: ArrayLike, pixel_size_A: float, *,
                    max_shown: int | None = None) -> list[AlignedSnapshot]:
    """Superpose each snapshot on the truth and score it at FSC 0.5 (Fig. 5).

    Parameters
    ----------
    snapshots : from :attr:`RunRecorder.snapshots` (start first)
    truth : (M, M, M) the simulated map ``[z, y, x]``; Fourier-cropped to the snapshots' box
        (same field of view, e.g. ``dataset.truth.volume`` of the data the run fitted)
    pixel_size_A : voxel size of the snapshots (``run.work.pixel_size_A``), Å
    max_shown : align only this many, evenly spaced, the start and the last kept

    Returns
    -------
    list of AlignedSnapshot, in the snapshots' order; each FSC is capped at that snapshot's
    band limit (:func:`cryonb.metrics.score_against_reference`).
    """
    out = []
    for snap in evenly_spaced(list(snapshots), max_shown):
        score = score_against_reference(snap.volume, truth, pixel_size_A,
                                        max_freq_invA=snap.max_freq_invA)
        out.append(AlignedSnapshot(snap, score.aligned, score.curve, score.resolution,
                                   float(score.correlation), bool(score.flipped)))
    return out


def snapshot_table(aligned: Sequence[AlignedSnapshot]) -> Any:
    """One row per aligned snapshot: phase, iteration, time (s), band limit (Å), FSC 0.5
    against the truth (Å; ``crossed`` False: "better than"), correlation, hand flipped."""
    import pandas as pd

    return pd.DataFrame([{
        "phase": a.snapshot.phase, "iteration": a.snapshot.iteration,
        "time_s": round(a.snapshot.time_s, 1),
        "band_limit_A": round(1.0 / a.snapshot.max_freq_invA, 1),
        "fsc05_vs_truth_A": round(a.resolution.value_A, 1), "crossed": a.resolution.crossed,
        "correlation": round(a.correlation, 3), "flipped": a.flipped} for a in aligned])


def history_fraction_table(history: Any, phases: Sequence[str] = ("common", "half1")) -> Any:
    """Fig. 7's table from a run's history, the rows of ``phases`` in that order.

    ``history``: a pandas DataFrame of ``history.csv`` (e.g.
    :attr:`cryonb.run_folder.FinishedRun.history`), the path of such a file (``.csv`` or
    ``.csv.gz``) or a run folder holding one.

    ``time_s`` is the solver time of the job: a half-set's own time plus the common phase's.
    A history of an older version, without the per-domain columns, gives NaN there (the
    overall ``fraction_evaluated`` is always recorded).

    Returns
    -------
    the columns of :func:`domain_fraction_table`
    """
    import pandas as pd

    if isinstance(history, (str, Path)):
        path = Path(history)
        table = pd.read_csv(path / "history.csv" if path.is_dir() else path)
    else:
        table = pd.DataFrame(history)
    common_s = 0.0
    if "common" in set(table["phase"]):
        common_s = float(table.loc[table["phase"] == "common", "wall_time_s"].max())
    rows = []
    for phase in phases:
        part = table[table["phase"] == phase]
        offset = 0.0 if phase == "common" else common_s
        for r in part.to_dict("records"):
            rows.append({"step": len(rows), "iteration": int(r["iteration"]), "phase": phase,
                         "max_freq_invA": float(r["max_freq_invA"]),
                         "time_s": float(r["wall_time_s"]) + offset,
                         "fraction_evaluated": float(r["fraction_evaluated"]),
                         **{f"fraction_{d}": float(r.get(f"fraction_{d}", np.nan))
                            for d in DOMAINS}})
    return domain_fraction_table(rows)


def fractions_by_band_limit(table: Any) -> Any:
    """Fig. 7 in numbers: per phase and band limit (in the order run), the iterations and the
    median and smallest fraction of points evaluated, overall and per domain.

    ``table``: :func:`domain_fraction_table` or :func:`history_fraction_table`.

    Returns
    -------
    pandas.DataFrame: ``phase``, ``band_limit_A``, ``iterations``, ``all_median``,
    ``all_min``, ``directions_median``, ``inplane_median``, ``shifts_median``
    """
    import pandas as pd

    rows = []
    keys = table["phase"].astype(str) + "@" + table["max_freq_invA"].round(9).astype(str)
    for _, part in table.groupby(keys, sort=False):
        row = {"phase": part["phase"].iloc[0],
               "band_limit_A": round(float(part["band_limit_A"].iloc[0]), 1),
               "iterations": len(part),
               "all_median": float(part["fraction_evaluated"].median()),
               "all_min": float(part["fraction_evaluated"].min())}
        for d in DOMAINS:
            row[f"{d}_median"] = float(part[f"fraction_{d}"].median())
        rows.append(row)
    return pd.DataFrame(rows)


def domain_fraction_table(rows: Sequence[dict[str, Any]]) -> Any:
    """Fig. 7's table from :attr:`RunRecorder.rows` (or hand-made rows of the same keys).

    Returns
    -------
    pandas.DataFrame, one row per recorded iteration, columns ``step``, ``iteration``,
    ``phase``, ``max_freq_invA``, ``band_limit_A``, ``time_s``, ``fraction_evaluated`` and
    ``fraction_directions``, ``fraction_inplane``, ``fraction_shifts`` (NaN where the solver
    did not sample), each a fraction of that domain's points in (0, 1].
    """
    import pandas as pd

    columns = ["step", "iteration", "phase", "max_freq_invA", "time_s", "fraction_evaluated",
               *(f"fraction_{d}" for d in DOMAINS)]
    table = pd.DataFrame([{c: r.get(c, np.nan) for c in columns} for r in rows],
                         columns=columns)
    table.insert(4, "band_limit_A", 1.0 / table["max_freq_invA"].astype(float))
    return table
