"""Curves: FSC, and the solver's history (objective, band limit, importance sampling)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["RESOLUTION_TICKS_A", "add_resolution_axis", "fsc_figure", "history_groups",
           "history_table", "label_history_axes", "plot_phase_history",
           "solver_history_figure"]


def fsc_figure(curves: Sequence, labels: Sequence[str], *,
               thresholds: Sequence[float] = (0.143, 0.5)) -> Figure:
    """FSC curves (:class:`cryonb.metrics.FSCResult`) against spatial frequency, with thresholds
    and the resolution at each threshold in the legend (``<X Å``: the curve stays above it up
    to its band limit, X)."""
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.subplots()
    for curve, label in zip(curves, labels, strict=True):
        res = ", ".join(f"{curve.resolution(t).label}@{t:g}" for t in thresholds)
        ax.plot(curve.freq_invA[1:], curve.fsc[1:], lw=1.2, label=f"{label} ({res})")
    for t in thresholds:
        ax.axhline(t, color="0.6", lw=0.6, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.02)
    ax.set_xlim(0.0, max(float(np.nanmax(c.freq_invA)) for c in curves) if curves else 0.5)
    add_resolution_axis(ax)
    ax.legend(fontsize=7)
    return fig


#: Resolutions (Å) :func:`add_resolution_axis` may label, coarse to fine.
RESOLUTION_TICKS_A = (200.0, 100.0, 60.0, 40.0, 30.0, 25.0, 20.0, 15.0, 12.0, 10.0, 8.0, 7.0,
                      6.0, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0)


def _inverse(x: Any) -> Any:
    """``1 / x`` for the frequency <-> resolution axis, finite at 0."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(np.abs(x) > 1e-12, 1.0 / np.where(x == 0, 1.0, x), 1e12)


def add_resolution_axis(ax: Any, *, max_ticks: int = 7) -> Any:
    """A top axis in Å (resolution ``1 / frequency``) over an axis in 1/Å.

    Ticks are values ``d`` of :data:`RESOLUTION_TICKS_A` inside the current x range (set the
    limits first), each at frequency ``1 / d``: from the finest down, a value is kept when it
    lies at least ``1 / (max_ticks + 1)`` of the range from the last one kept.  Returns the
    secondary axis.
    """
    from matplotlib.ticker import FixedLocator

    low, high = sorted(ax.get_xlim())
    gap = (high - low) / (max_ticks + 1)
    inside: list[float] = []
    for d in reversed(RESOLUTION_TICKS_A):
        if low < 1.0 / d <= high and (not inside or 1.0 / inside[-1] - 1.0 / d >= gap):
            inside.append(d)
    top = ax.secondary_xaxis("top", functions=(_inverse, _inverse))
    top.xaxis.set_major_locator(FixedLocator(inside))
    top.xaxis.set_minor_locator(FixedLocator([]))
    top.set_xticks(inside, [f"{d:g}" for d in inside])
    top.set_xlabel("resolution (Å)")
    top.tick_params(labelsize=7)
    return top


# --------------------------------------------------------------------------- solver history
def history_table(history: Any) -> Any:
    """A solver history as a pandas DataFrame.

    Accepts :attr:`cryonb.sagd.SAGDSolver.history` (xarray), a DataFrame (e.g. the ab initio
    job's ``history.csv``) or a list of record dicts (``callback(solver, record)``, optionally
    with a ``phase``).  With a ``phase`` column and no ``step`` column, a ``step`` column is
    added: the iteration, counted after the ``"common"`` phase's iterations for the other
    phases (the ab initio job's two halves run side by side after the common start).
    """
    import pandas as pd

    if isinstance(history, pd.DataFrame):
        table = history.reset_index(drop=True)
    elif hasattr(history, "to_dataframe"):
        table = history.to_dataframe().reset_index()
    else:
        table = pd.DataFrame(list(history))
    if len(table) and "phase" in table and "step" not in table:
        common = table["phase"] == "common"
        offset = int(table.loc[common, "iteration"].max()) + 1 if common.any() else 0
        table = table.assign(step=table["iteration"] + np.where(common, 0, offset))
    return table


def plot_phase_history(ax_nll: Any, ax_res: Any, x: Any, part: Any, phase: str, colour: str,
                       *, step: bool) -> None:
    """One phase's curves of a history table (:func:`history_table`) against ``x`` (N,):
    minibatch and held-out NLL on ``ax_nll``, the band limit in Å on ``ax_res`` (a step
    curve when ``step``)."""
    suffix = f" ({phase})" if phase else ""
    ax_nll.plot(x, part["objective"].to_numpy(float), color=colour, lw=0.8, alpha=0.6,
                label="minibatch" + suffix)
    held = part["heldout_nll"].to_numpy(float)
    ok = np.isfinite(held)
    if ok.any():
        ax_nll.plot(x[ok], held[ok], "o-", color=colour, ms=3, lw=1.2, label="held-out" + suffix)
    res_A = 1.0 / part["max_freq_invA"].to_numpy(float)
    if step:
        ax_res.step(x, res_A, where="post", color=colour, lw=1.2, label=phase or None)
    else:
        ax_res.plot(x, res_A, color=colour, lw=1.2, label=phase or None)


def history_groups(table: Any, axes: Sequence[Any]) -> list[tuple[str, Any]]:
    """The ``(phase, rows)`` groups of a history table (one ``("", table)`` without a
    ``phase`` column); an empty table writes "no iterations yet" on each of ``axes``."""
    if not len(table):
        for ax in axes:
            ax.text(0.5, 0.5, "no iterations yet", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
        return []
    return list(table.groupby("phase", sort=False)) if "phase" in table else [("", table)]


def label_history_axes(fig: Figure, table: Any, ax_nll: Any, ax_res: Any, *, xlabel: str,
                       res_title: str, others: Sequence[Any] = (), title: str = "") -> None:
    """The labelling every history figure shares: the objective panel (log scale when every
    value is positive), the band-limit panel in Å (finer resolution up), and for all panels
    (``ax_nll``, ``ax_res`` and ``others``) the x label, small ticks, a legend when there
    are labelled lines, and the figure's title."""
    if len(table) and (table["objective"] > 0).all():
        ax_nll.set_yscale("log")
    ax_nll.set_ylabel("mean NLL per image")
    ax_nll.set_title("objective", fontsize=9)
    ax_res.set_ylabel("band limit 1/w (Å)")
    ax_res.set_title(res_title, fontsize=9)
    ax_res.invert_yaxis()
    for ax in (ax_nll, ax_res, *others):
        ax.set_xlabel(xlabel)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)


def solver_history_figure(history: Any, *, title: str = "") -> Figure:
    """Objective and held-out NLL, band limit (as a resolution) and fraction of points evaluated.

    ``history``: see :func:`history_table`.  The x axis is the column ``step`` when present
    (iterations counted across phases, e.g. the ab initio job's common start and two halves),
    else ``iteration``; a ``phase`` column draws one line per phase.
    """
    table = history_table(history)
    fig = Figure(figsize=(9.5, 2.8), layout="constrained")
    ax_nll, ax_res, ax_frac = fig.subplots(1, 3)
    xname = "step" if "step" in table else "iteration"
    for i, (phase, part) in enumerate(history_groups(table, (ax_nll, ax_res, ax_frac))):
        colour = f"C{i}"
        x = part[xname].to_numpy(float)
        plot_phase_history(ax_nll, ax_res, x, part, phase, colour, step=False)
        ax_frac.plot(x, part["fraction_evaluated"].to_numpy(float), color=colour, lw=1.0,
                     label=phase or None)
    ax_frac.set_ylabel("fraction of quadrature points")
    ax_frac.set_title("importance sampling", fontsize=9)
    if len(table) and (table["fraction_evaluated"] > 0).all():
        ax_frac.set_yscale("log")
    label_history_axes(fig, table, ax_nll, ax_res, xlabel=xname,
                       res_title="resolution of the band limit", others=(ax_frac,),
                       title=title)
    return fig


