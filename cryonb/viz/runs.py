"""Pictures of a run as it goes and once it is done: the FSC read in Å, the history against
wall time, and the fraction of quadrature points importance sampling evaluates per domain.

``history`` tables are the job's ``history.csv`` (or the records a solver's callback gets,
with a ``phase`` column: ``common``, ``half1``, ``half2``; see :func:`cryonb.viz.history_table`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from ..importance import DOMAINS  # re-exported: the importance-sampled domains
from .curves import (
    add_resolution_axis,
    fsc_figure,
    history_groups,
    history_table,
    label_history_axes,
    plot_phase_history,
)

__all__ = ["DOMAINS", "domain_fractions", "fsc_resolution_figure", "history_time_table",
           "is_domains_figure", "plot_domain_fractions", "run_history_figure"]

def fsc_resolution_figure(curves: Sequence, labels: Sequence[str], *, title: str = "",
                          thresholds: Sequence[float] = (0.143, 0.5)) -> Figure:
    """:func:`cryonb.viz.fsc_figure` (frequency to Nyquist, resolution in Å on a second axis
    on top: :func:`cryonb.viz.curves.add_resolution_axis`) with a title."""
    fig = fsc_figure(curves, labels, thresholds=thresholds)
    ax = fig.axes[0]
    if not ax.child_axes:
        if len(curves):
            ax.set_xlim(0.0, max(float(c.freq_invA[-1]) for c in curves))
        add_resolution_axis(ax)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def history_time_table(history: Any) -> Any:
    """The history with ``job_time_s``: seconds of solver time since the job began.

    The two halves step in turn after the common start, so a half's record at iteration ``i``
    comes ``common + half1(i) + half2(i)`` seconds into the job (each solver's own
    ``wall_time_s`` counts only its own steps).  Without phases, ``job_time_s`` is
    ``wall_time_s``.
    """
    table = history_table(history).copy()
    if not len(table) or "wall_time_s" not in table:
        table["job_time_s"] = np.nan
        return table
    if "phase" not in table:
        table["job_time_s"] = table["wall_time_s"].to_numpy(float)
        return table
    common = table["phase"] == "common"
    start = float(table.loc[common, "wall_time_s"].max()) if common.any() else 0.0
    halves = [p for p in table["phase"].unique() if p != "common"]
    per_half = {p: table.loc[table["phase"] == p].set_index("iteration")["wall_time_s"]
                for p in halves}
    job = table["wall_time_s"].to_numpy(float).copy()
    for i in np.flatnonzero(~common.to_numpy()):
        it = table["iteration"].iat[i]
        total = start
        for series in per_half.values():
            upto = series[series.index <= it]
            total += float(upto.iloc[-1]) if len(upto) else 0.0
        job[i] = total
    table["job_time_s"] = job
    return table


def run_history_figure(history: Any, *, title: str = "") -> Figure:
    """Objective (minibatch, held-out) and band limit (as a resolution) against job time.

    ``history``: ``history.csv`` of a run or callback records (see :func:`history_time_table`).
    """
    table = history_time_table(history)
    fig = Figure(figsize=(8.5, 2.8), layout="constrained")
    ax_nll, ax_res = fig.subplots(1, 2)
    for i, (phase, part) in enumerate(history_groups(table, (ax_nll, ax_res))):
        t = part["job_time_s"].to_numpy(float) / 60.0
        plot_phase_history(ax_nll, ax_res, t, part, phase, f"C{i}", step=True)
    label_history_axes(fig, table, ax_nll, ax_res, xlabel="solver time (min)",
                       res_title="frequency marching", title=title)
    return fig


def domain_fractions(entry: dict[str, Any], domain_sizes: Sequence[int],
                     ess_scale: float, enumerate_fraction: float = 0.95) -> dict[str, float]:
    """Fraction of each domain's points drawn, from one entry of an importance sampler's
    ``history`` (mean proposal ESS per domain, ``ess_directions`` ...).

    The sampler records, per domain, the mean fraction of its points it drew
    (``fraction_directions`` ..., :func:`cryonb.importance.evaluated_domain_fractions`); those
    are returned.  An entry without them (a sampler of an older version) gives the estimate
    from the batch's mean ESS: ``n / |D|`` with ``n = min(ceil(s_B ESS), |D|)``, 1 when
    ``n >= enumerate_fraction |D|`` (:func:`cryonb.importance.draw_domain`).

    Returns
    -------
    ``{"fraction_directions": ..., "fraction_inplane": ..., "fraction_shifts": ...}``
    """
    if all(f"fraction_{d}" in entry for d in DOMAINS):
        return {f"fraction_{d}": float(entry[f"fraction_{d}"]) for d in DOMAINS}
    out = {}
    for d, size in zip(DOMAINS, domain_sizes, strict=True):
        ess = float(entry.get(f"ess_{d}", np.nan))
        if not np.isfinite(ess) or size <= 0:
            out[f"fraction_{d}"] = math.nan
            continue
        n = min(size, max(1, math.ceil(ess_scale * ess - 1e-9)))
        out[f"fraction_{d}"] = 1.0 if n >= enumerate_fraction * size else n / size
    return out


def plot_domain_fractions(ax: Any, x: ArrayLike, columns: dict[str, ArrayLike], *,
                          step: bool = False) -> None:
    """Draw the fractions of points evaluated on ``ax``: all points in black, each domain in
    its colour, on a log axis when every value is positive; a series of NaN is left out.

    ``columns``: ``{"fraction_evaluated": (n,), "fraction_directions": (n,), ...}`` against
    ``x`` (n,); ``step``: draw as steps (a value holds until the next iteration).
    """
    x = np.asarray(x, dtype=np.float64)
    series = [("fraction_evaluated", "all points", "k", 1.6)] + [
        (f"fraction_{d}", d, f"C{i}", 1.0) for i, d in enumerate(DOMAINS)]
    positive = True
    for key, label, colour, lw in series:
        y = np.asarray(columns.get(key, np.full(len(x), np.nan)), dtype=np.float64)
        if np.isfinite(y).any():
            ax.plot(x, y, color=colour, lw=lw, label=label,
                    drawstyle="steps-post" if step else "default")
            positive &= bool((y[np.isfinite(y)] > 0).all())
    if positive and ax.lines:
        ax.set_yscale("log")
    ax.set_ylabel("fraction evaluated")
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="lower left")


def is_domains_figure(rows: Sequence[dict[str, Any]], *, title: str = "") -> Figure:
    """Fraction of quadrature points importance sampling evaluates, per domain and overall.

    ``rows``: one dict per iteration with ``step`` and ``fraction_evaluated`` and, when known,
    ``fraction_directions``, ``fraction_inplane``, ``fraction_shifts`` (the share of each
    domain's points scored: :func:`cryonb.importance.evaluated_domain_fractions`).  The
    paper's Fig. 7 with the band limit below is :func:`cryonb.viz.domain_fractions_figure`.
    """
    fig = Figure(figsize=(4.6, 2.8), layout="constrained")
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "no iterations yet", ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
    keys = ["fraction_evaluated", *(f"fraction_{d}" for d in DOMAINS)]
    plot_domain_fractions(ax, [r["step"] for r in rows],
                          {k: [r.get(k, np.nan) for r in rows] for k in keys})
    ax.set_xlabel("iteration (all phases)")
    ax.set_title(title or "importance sampling: points evaluated", fontsize=9)
    return fig
