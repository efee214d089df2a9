"""Importance-sampling study figures (the paper's Figs. 3 and 6) and the tables behind them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from ._common import as_frame
from .curves import history_table

__all__ = ["is_error_curves_figure", "is_study_figure", "is_study_summary", "is_study_table",
           "posterior_kl_figure", "resolve_is_columns"]

# --------------------------------------------------------------------------- IS study
_IS_ALIASES: Mapping[str, tuple[str, ...]] = {
    "s_B": ("s_B", "s_b", "sB", "ess_scale"),
    "band_limit": ("max_freq_invA", "band_limit_invA", "band_limit", "w_invA", "w"),
    "relative_error": ("relative_error", "rel_error", "relative_error_abs", "error"),
    "fraction": ("fraction_evaluated", "fraction", "fraction_of_points"),
}



def resolve_is_columns(table: Any, *, s_B_column: str | None = None,
                       band_limit_column: str | None = None, error_column: str | None = None,
                       fraction_column: str | None = None) -> dict[str, str]:
    """Column names of an IS study table, keyed ``s_B``, ``band_limit``, ``relative_error``
    and ``fraction``: the ones given, else the first present of the common spellings
    (``s_B``/``ess_scale``; ``max_freq_invA``/``band_limit_invA``/``band_limit``;
    ``relative_error``/``rel_error``; ``fraction_evaluated``/``fraction``)."""
    frame = as_frame(table)
    given = {"s_B": s_B_column, "band_limit": band_limit_column,
             "relative_error": error_column, "fraction": fraction_column}
    out = {}
    for key, aliases in _IS_ALIASES.items():
        name = given[key]
        found = name if name is not None else next((a for a in aliases if a in frame), None)
        if found is None or found not in frame:
            raise KeyError(f"IS study table has no {key} column (tried {name or aliases}); "
                           f"columns: {list(frame.columns)}; name it with the *_column "
                           "arguments")
        out[key] = found
    return out


def is_study_table(curves: Mapping[float, Any]) -> Any:
    """A long table from importance-sampling error curves, one per band limit.

    ``curves``: ``{band limit (1/Å): curve}`` where each curve has ``ess_scales`` (S,),
    ``relative_errors`` and ``n_evaluated`` (S, T, B) and ``quadrature_size`` (as
    :class:`cryonb.is_study.ISErrorCurve`).  Returns a DataFrame with columns ``max_freq_invA``,
    ``s_B``, ``trial``, ``image``, ``relative_error`` and ``fraction_evaluated``: the input of
    :func:`is_study_figure` and :func:`cryonb.widgets.ISStudyExplorer`.
    """
    import pandas as pd

    parts = []
    for w, curve in curves.items():
        err = np.asarray(curve.relative_errors, dtype=np.float64)
        frac = np.asarray(curve.n_evaluated, dtype=np.float64) / float(curve.quadrature_size)
        s_idx, t_idx, b_idx = np.indices(err.shape)
        parts.append(pd.DataFrame({
            "max_freq_invA": float(w),
            "s_B": np.asarray(curve.ess_scales, dtype=np.float64)[s_idx.ravel()],
            "trial": t_idx.ravel(), "image": b_idx.ravel(),
            "relative_error": err.ravel(), "fraction_evaluated": frac.ravel()}))
    if not parts:
        raise ValueError("no curves given")
    return pd.concat(parts, ignore_index=True)


def is_study_summary(table: Any, **columns: str | None) -> Any:
    """Mean |relative error| and mean fraction of points per (band limit, s_B).

    Returns a DataFrame with columns ``band_limit``, ``s_B``, ``relative_error`` (mean of the
    absolute values), ``relative_error_max``, ``fraction``, ``speedup`` (1 / fraction) and
    ``n`` (rows averaged), sorted by band limit and s_B.  ``**columns``: the ``*_column``
    arguments of :func:`resolve_is_columns`.
    """
    frame = as_frame(table)
    cols = resolve_is_columns(frame, **columns)
    work = frame[[cols["band_limit"], cols["s_B"]]].copy()
    work.columns = ["band_limit", "s_B"]
    work["err"] = np.abs(frame[cols["relative_error"]].to_numpy(float))
    work["fraction"] = frame[cols["fraction"]].to_numpy(float)
    summary = (work.groupby(["band_limit", "s_B"], sort=True)
               .agg(relative_error=("err", "mean"), relative_error_max=("err", "max"),
                    fraction=("fraction", "mean"), n=("err", "size"))
               .reset_index())
    summary["speedup"] = 1.0 / summary["fraction"]
    return summary


def is_study_figure(table: Any, *, s_B: float | None = None,
                    band_limit: float | None = None, **columns: str | None) -> Figure:
    """The paper's Fig. 6 from a study table: relative error of the IS estimate of
    ``log p(I | theta, V)`` and fraction of quadrature points evaluated against ``s_B``, one
    line per band limit, and the trade-off of error against fraction.

    ``table``: a DataFrame or xarray Dataset with one row per (image, s_B, band limit) or
    already averaged (see :func:`is_study_summary`; column names via the ``*_column``
    arguments of :func:`resolve_is_columns`).  The
    selection ``(s_B, band_limit)`` is circled in every panel.
    """
    summary = is_study_summary(table, **columns)
    fig = Figure(figsize=(10.0, 3.0), layout="constrained")
    ax_err, ax_frac, ax_trade = fig.subplots(1, 3)
    for i, (w, part) in enumerate(summary.groupby("band_limit", sort=True)):
        label = f"w = 1/{1.0 / w:.1f} Å⁻¹" if w > 0 else f"w = {w}"
        style = {"color": f"C{i}", "marker": "o", "ms": 3, "lw": 1.0, "label": label}
        ax_err.plot(part["s_B"], part["relative_error"], **style)
        ax_frac.plot(part["s_B"], part["fraction"], **style)
        ax_trade.plot(part["fraction"], part["relative_error"], **style)
    if s_B is not None and band_limit is not None:
        sel = summary[np.isclose(summary["s_B"], s_B) & np.isclose(summary["band_limit"],
                                                                    band_limit)]
        if len(sel):
            r = sel.iloc[0]
            ring = {"marker": "o", "ms": 11, "mfc": "none", "mec": "k", "mew": 1.5}
            ax_err.plot(r["s_B"], r["relative_error"], **ring)
            ax_frac.plot(r["s_B"], r["fraction"], **ring)
            ax_trade.plot(r["fraction"], r["relative_error"], **ring)
            ax_trade.set_title(f"s_B = {r['s_B']:g}: error {r['relative_error']:.2g}, "
                               f"{r['fraction']:.2g} of points ({r['speedup']:.3g}x)",
                               fontsize=8)
    positive = (summary["relative_error"] > 0).all() and len(summary)
    for ax in (ax_err, ax_frac, ax_trade):
        ax.set_xscale("log")
        ax.tick_params(labelsize=7)
        ax.grid(True, lw=0.3, which="both")
    if positive:
        ax_err.set_yscale("log")
        ax_trade.set_yscale("log")
    ax_frac.set_yscale("log")
    ax_err.set_xlabel("s_B")
    ax_err.set_ylabel("mean |relative error| of log p(I | θ, V)")
    ax_frac.set_xlabel("s_B")
    ax_frac.set_ylabel("fraction of points evaluated")
    ax_trade.set_xlabel("fraction of points evaluated")
    ax_trade.set_ylabel("mean |relative error|")
    if not ax_trade.get_title():
        ax_trade.set_title("error against cost", fontsize=8)
    if ax_err.get_legend_handles_labels()[0]:
        ax_err.legend(fontsize=6)
    return fig


def is_error_curves_figure(curves: Mapping[float, Any], *, reference_error: float = 1e-3,
                           chosen_s_B: float = 10.0) -> Figure:
    """The paper's Fig. 6 from error curves: relative RMSE of the IS estimate of
    ``log p(I | theta, V)`` (left axis) and fraction of quadrature points used (right axis)
    against the ESS scale ``s_B``, one panel per band limit.

    Parameters
    ----------
    curves : ``{band limit (1/Å): curve}``; each curve has ``ess_scales`` (S,),
        ``relative_rmse`` (S,) and ``fraction_evaluated`` (S,) (as
        :class:`cryonb.is_study.ISErrorCurve`, from :func:`cryonb.is_study.is_error_curve`).
        Zero errors (exact estimates) are left off the log axis.
    reference_error : dotted line at this relative error (the paper's 0.1 %)
    chosen_s_B : dashed line at this ``s_B`` (the paper's 10)

    Returns
    -------
    Figure with two axes per band limit (RMSE, then its twin for the fraction).
    """
    if not curves:
        raise ValueError("no curves given")
    fig = Figure(figsize=(4.2 * len(curves), 3.4), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (w, c) in zip(axes, curves.items(), strict=True):
        rmse = np.asarray(c.relative_rmse, dtype=np.float64)
        ax.loglog(c.ess_scales, np.where(rmse > 0, rmse, np.nan), "o-", color="C0",
                  label="relative RMSE of log p")
        ax.axhline(reference_error, color="C0", lw=0.7, ls=":", label=f"{reference_error:.1%}")
        ax.axvline(chosen_s_B, color="0.5", lw=0.7, ls="--", label=f"s_B = {chosen_s_B:g}")
        ax.set_xlabel("ESS scale s_B")
        ax.set_ylabel("relative RMSE", color="C0")
        ax.set_title(f"band limit 1/{1 / w:.0f} Å⁻¹" if w > 0 else f"band limit {w}",
                     fontsize=10)
        twin = ax.twinx()
        twin.loglog(c.ess_scales, c.fraction_evaluated, "s-", color="C3",
                    label="fraction of points used")
        twin.set_ylabel("fraction of quadrature points", color="C3")
        twin.set_ylim(top=1.5)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, fontsize=8, ncols=4, loc="outside lower center")
    fig.suptitle("Fig. 6: importance sampling error and cost", fontsize=10)
    return fig


def posterior_kl_figure(kl: Sequence[ArrayLike], history: Any, n_batches: int) -> Figure:
    """The paper's Fig. 3: KL divergence between the direction posteriors of consecutive
    epochs (left), and the fraction of quadrature points evaluated per minibatch (right).

    Parameters
    ----------
    kl : one (B,) array per epoch from the second on: each particle's KL (nats) of this
        epoch's posterior to the previous one's (:func:`cryonb.is_study.posterior_kl`)
    history : the solver history (:attr:`cryonb.sagd.SAGDSolver.history`, a DataFrame or
        records; columns ``iteration`` and ``fraction_evaluated``)
    n_batches : minibatches per epoch (the x axis is ``iteration / n_batches + 1``)

    Returns
    -------
    Figure with two axes: median, interquartile range and mean of the KL against the epoch
    (2, 3, ...), and the fraction against the epoch (log scale).
    """
    fig = Figure(figsize=(9.0, 3.3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if len(kl):
        epochs = np.arange(2, len(kl) + 2)
        stats = np.array([np.percentile(np.asarray(k, np.float64), [25, 50, 75]) for k in kl])
        ax1.fill_between(epochs, stats[:, 0], stats[:, 2], color="C0", alpha=0.25,
                         label="interquartile range")
        ax1.plot(epochs, stats[:, 1], "o-", color="C0", label="median over particles")
        ax1.plot(epochs, [float(np.mean(k)) for k in kl], "s--", color="C1", label="mean")
        ax1.legend(fontsize=7)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("KL divergence (nats)")
    ax1.set_title("Fig. 3: KL of direction posteriors, epoch vs previous", fontsize=9)
    table = history_table(history)
    if len(table):
        x = table["iteration"].to_numpy(np.float64) / float(n_batches) + 1.0
        ax2.semilogy(x, table["fraction_evaluated"].to_numpy(np.float64), ".-", lw=0.8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("fraction of quadrature points")
    ax2.set_title("points evaluated per minibatch (cf. Fig. 7)", fontsize=9)
    return fig
