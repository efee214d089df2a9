"""The live panels of :func:`cryonb.widgets.SolverDashboard` beyond the history and sections.

* a 3D iso-surface of the current map (:func:`cryonb.widgets.isosurface`), redrawn with the
  other figures (throttled by the dashboard's ``redraw_interval_s``);
* a strip of snapshots of the map against solver time, one per band limit
  (:func:`cryonb.viz.snapshot_strip_figure`);
* the FSC of the two half-set maps in Å once the halves run
  (:func:`cryonb.metrics.fsc` capped at :meth:`cryonb.abinitio.AbInitioRun.fitted_band_limit_invA`;
  SAGD's half-maps share the common start, so this is a progress indicator, not the
  gold standard the job computes at its end);
* the fraction of quadrature points evaluated per domain (the solver record's measured
  ``fraction_directions`` ..., :func:`cryonb.importance.evaluated_domain_fractions`;
  :func:`cryonb.viz.is_domains_figure`);
* the budget's progress and an ETA (:func:`budget_progress`).

Everything read from the solver or the job goes through public attributes: ``solver.volume``,
``solver.state`` (``elapsed_s``, ``records``), ``solver.params``, ``solver.objective``
(``pixel_size_A``, ``sampler``, ``likelihood.quadrature``), ``run.common``, ``run.halves``
(``name``, ``solver``), ``run.config`` and ``run.fitted_band_limit_invA()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..importance import DOMAINS
from ..viz import fsc_resolution_figure, is_domains_figure, snapshot_strip_figure
from ._common import new_image, show_figure

__all__ = ["BudgetProgress", "LivePanels", "budget_progress", "format_duration",
           "target_progress"]


@dataclass(frozen=True)
class BudgetProgress:
    """How far a run is through its budget (:func:`budget_progress`).

    Attributes
    ----------
    elapsed_s : solver time so far
    fraction : share of the budget used, 0 .. 1 (NaN without a budget)
    remaining_s : solver time left, from whichever budget ends first (NaN unknown)
    budget : the budget in words (``"3 min"``, ``"40 iterations"``, ``""``)
    """

    elapsed_s: float
    fraction: float
    remaining_s: float
    budget: str

    def finished_text(self, reason: str = "") -> str:
        """``"finished after 1 min 5 s (62 % of 3 min): reason"`` (what the run used)."""
        used = "" if not math.isfinite(self.fraction) else (
            f" ({100 * self.fraction:.0f} % of {self.budget})")
        return (f"finished after {format_duration(self.elapsed_s)} of solver time{used}"
                + (f": {reason}" if reason else ""))

    def text(self) -> str:
        """``"ETA 1 min 5 s (62 % of 3 min)"``; without a budget, the time so far."""
        if not math.isfinite(self.fraction):
            return f"{format_duration(self.elapsed_s)} so far (no budget: ETA unknown)"
        eta = ("–" if not math.isfinite(self.remaining_s)
               else format_duration(self.remaining_s))
        return f"ETA {eta} ({100 * self.fraction:.0f} % of {self.budget})"


def format_duration(seconds: float) -> str:
    """``"4.2 s"``, ``"45 s"``, ``"3 min 20 s"``, ``"1 h 05 min"``."""
    if not math.isfinite(seconds):
        return "–"
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def budget_progress(elapsed_s: float, iterations: int, *, time_limit_s: float | None = None,
                    max_iterations: int | None = None) -> BudgetProgress:
    """Progress and time left under a time limit and/or an iteration budget.

    The time left is ``time_limit_s - elapsed_s`` for a time limit and ``elapsed_s /
    iterations * (max_iterations - iterations)`` for an iteration budget (the mean pace so
    far); with both, the budget that ends first decides.  Excludes what a job does after its
    loop (the final-pose pass and the outputs).
    """
    fractions, remaining, words = [], [], []
    if time_limit_s is not None and time_limit_s > 0:
        fractions.append(elapsed_s / time_limit_s)
        remaining.append(max(0.0, time_limit_s - elapsed_s))
        words.append(format_duration(time_limit_s).replace(" 00 s", ""))
    if max_iterations is not None and max_iterations > 0:
        fractions.append(iterations / max_iterations)
        remaining.append(max(0, max_iterations - iterations) * elapsed_s / iterations
                         if iterations > 0 else math.nan)
        words.append(f"{max_iterations} iterations")
    if not fractions:
        return BudgetProgress(float(elapsed_s), math.nan, math.nan, "")
    i = int(np.argmax(fractions))
    known = [r for r in remaining if math.isfinite(r)]
    return BudgetProgress(float(elapsed_s), float(min(1.0, fractions[i])),
                          float(min(known)) if known else math.nan, " or ".join(words))


def _is_job(target: Any) -> bool:
    from ..abinitio import AbInitioRun

    return isinstance(target, AbInitioRun)


def target_progress(target: Any) -> BudgetProgress:
    """:func:`budget_progress` of a :class:`~cryonb.sagd.SAGDSolver` (its ``params``) or of
    an :class:`~cryonb.abinitio.AbInitioRun` (its ``config``; iterations counted as the job
    counts them: the common ones plus half of the halves')."""
    if _is_job(target):
        common = getattr(target, "common", None)
        if common is None:
            return budget_progress(0.0, 0)
        halves = list(target.halves)
        elapsed = common.state.elapsed_s + sum(h.solver.state.elapsed_s for h in halves)
        its = common.iteration + sum(h.solver.iteration for h in halves) // 2
        cfg = target.config
        limit = None if cfg.time_limit_min is None else 60.0 * cfg.time_limit_min
        return budget_progress(elapsed, its, time_limit_s=limit,
                               max_iterations=cfg.max_iterations)
    p = target.params
    return budget_progress(target.state.elapsed_s, target.iteration,
                           time_limit_s=p.time_limit_s, max_iterations=p.max_iterations)


@dataclass
class LivePanels:
    """The dashboard's extra panels and what they collect from the solver's thread.

    Attributes
    ----------
    iso : IsosurfaceView or None (``show_3d=False``)
    strip_image, fsc_image, is_image : ipywidgets.Image
    progress_bar : ipywidgets.FloatProgress (fraction of the budget)
    eta : ipywidgets.HTML (:meth:`BudgetProgress.text`)
    snapshots : list of (volume, label, band limit 1/Å, solver time s), one per band limit
    domain_rows : list of dict, one per record (``step``, ``fraction_evaluated``,
        ``fraction_<domain>``)
    fsc_curve : the last half-map FSC drawn (:class:`cryonb.metrics.FSCResult`) or None
    finished : None while running; once the run ended (:meth:`finish`), its reason, and the
        ETA reads :meth:`BudgetProgress.finished_text`
    """

    iso: Any
    strip_image: Any
    fsc_image: Any
    is_image: Any
    progress_bar: Any
    eta: Any
    snapshot_kind: str = "projection"
    snapshots: list = field(default_factory=list)
    domain_rows: list = field(default_factory=list)
    fsc_curve: Any = None
    strip_figure: Any = None
    fsc_figure: Any = None
    is_figure: Any = None
    progress: BudgetProgress | None = None
    finished: str | None = None
    _seen_band: set = field(default_factory=set, repr=False)

    # ------------------------------------------------------------------ solver thread
    def collect(self, target: Any, solver: Any, record: dict, phase: str, step: int) -> None:
        """Take what the panels need from one iteration (on the solver's thread)."""
        self.progress = target_progress(target)
        w = float(record["max_freq_invA"])
        key = round(w, 9)
        if phase in ("", "common", "half1") and key not in self._seen_band:
            self._seen_band.add(key)
            t = self.progress.elapsed_s
            self.snapshots.append((solver.volume.copy(),
                                   f"{format_duration(t)}\n{1.0 / w:.1f} Å", w, t))
        row = {"step": step, "phase": phase,
               "fraction_evaluated": float(record["fraction_evaluated"]),
               **{f"fraction_{d}": float(record.get(f"fraction_{d}", math.nan))
                  for d in DOMAINS}}
        self.domain_rows.append(row)

    def snapshot(self, target: Any) -> dict[str, Any]:
        """Copies of the half-set maps (when the job's halves have run) and the FSC's cap."""
        out: dict[str, Any] = {"snapshots": list(self.snapshots),
                               "domain_rows": list(self.domain_rows), "halves": None}
        if _is_job(target) and len(target.halves) == 2 and all(
                h.solver.iteration > 0 for h in target.halves):
            cap = target.fitted_band_limit_invA()
            if cap is None:
                cap = min(h.solver.last_band_limit_invA for h in target.halves)
            out["halves"] = [h.solver.volume.copy() for h in target.halves]
            out["fsc_cap"] = float(cap)
            out["fsc_iterations"] = [h.solver.iteration for h in target.halves]
        return out

    def finish(self, reason: str = "") -> None:
        """The run has ended: the ETA shows what it used (and why it stopped) from now on."""
        self.finished = str(reason)
        if self.progress is not None:
            self.eta.value = self.progress.finished_text(self.finished)

    # ------------------------------------------------------------------ drawing thread
    def draw(self, snap: dict[str, Any], dpi: float) -> None:
        """Redraw every panel from :meth:`snapshot` (plus ``volume``, ``pixel_size_A``)."""
        from ..metrics import fsc

        if self.progress is not None:
            self.eta.value = (self.progress.text() if self.finished is None
                              else self.progress.finished_text(self.finished))
            if math.isfinite(self.progress.fraction):
                self.progress_bar.value = self.progress.fraction
        if self.iso is not None and snap.get("volume") is not None:
            vol = np.asarray(snap["volume"], dtype=np.float32)
            if float(vol.max()) > float(vol.min()):
                self.iso.show_map(vol, float(snap["pixel_size_A"]))
        snaps = [(v, label) for v, label, *_ in snap.get("snapshots", [])]
        self.strip_figure = show_figure(
            self.strip_image, snapshot_strip_figure(snaps, kind=self.snapshot_kind), dpi)
        self.is_figure = show_figure(self.is_image, is_domains_figure(snap.get(
            "domain_rows", [])), dpi)
        if snap.get("halves") is not None:
            psize = float(snap["pixel_size_A"])
            a, b = snap["halves"]
            self.fsc_curve = fsc(a, b, psize, max_freq_invA=snap["fsc_cap"])
            its = ", ".join(str(i) for i in snap["fsc_iterations"])
            self.fsc_figure = show_figure(self.fsc_image, fsc_resolution_figure(
                [self.fsc_curve], ["SAGD half-maps"],
                title=f"SAGD half-sets now (iterations {its}); not yet the gold standard"),
                dpi)


def live_panels(show_3d: bool = True, iso_size_px: int = 300,
                snapshot_kind: str = "projection") -> LivePanels:
    """Empty panels (the dashboard fills them)."""
    import ipywidgets as widgets

    iso = None
    if show_3d:
        from .volume import isosurface

        # a small ball until the first redraw brings the solver's map (an empty mesh would
        # leave ipyvolume without a view in the browser)
        k = np.arange(8) - 4
        seed = np.exp(-(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
                      / 4.0).astype(np.float32)
        iso = isosurface(seed, 1.0, level=0.5, size_px=iso_size_px)
    return LivePanels(iso=iso, strip_image=new_image(flex="0 0 auto"),
                      fsc_image=new_image(flex="0 0 auto"), is_image=new_image(flex="0 0 auto"),
                      snapshot_kind=snapshot_kind,
                      progress_bar=widgets.FloatProgress(min=0.0, max=1.0, value=0.0,
                                                         description="budget"),
                      eta=widgets.HTML("no iterations yet"))
