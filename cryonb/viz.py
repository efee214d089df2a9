"""Static pictures of cryonb's objects: plain matplotlib :class:`~matplotlib.figure.Figure`\\ s.

Every interactive view in :mod:`cryonb.widgets` draws through one of these functions, so a script,
a report or a headless CI run gets the same picture as the notebook:

===============================  ============================================================
:func:`volume_slices_figure`     orthogonal sections of one or more maps (contrast, low-pass)
:func:`particle_page_figure`     a page of particle images with their defoci
:func:`direction_posterior`      an image's posterior over viewing directions (Mollweide)
:func:`solver_history_figure`    objective, held-out NLL, band limit and IS fraction
:func:`is_study_figure`          importance-sampling error against the fraction of points
===============================  ============================================================

plus the small computations they share (:func:`low_pass`, :func:`contrast_limits`,
:func:`is_study_summary`).  CTF pictures are :func:`cryonb.plotting.ctf_figure`.

Figures are built without pyplot (no global state), as in :mod:`cryonb.plotting`.  Conventions
(``docs/conventions.md``): volumes ``[z, y, x]``, images ``[y, x]`` drawn with row 0 at the top,
coordinates in Å from the box centre (voxel ``N // 2``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from .fourier import (
    fft2_centered,
    fft3_centered,
    frequency_grid_2d,
    frequency_grid_3d,
    ifft2_centered,
    ifft3_centered,
)

__all__ = [
    "AXES",
    "contrast_limits",
    "direction_posterior",
    "figure_png",
    "history_table",
    "is_study_figure",
    "is_study_summary",
    "is_study_table",
    "low_pass",
    "particle_page_figure",
    "resolve_is_columns",
    "solver_history_figure",
    "volume_slices_figure",
]

AXES = ("z", "y", "x")  # volume axes in array order


# --------------------------------------------------------------------------- shared helpers
def figure_png(fig: Figure, dpi: float = 80) -> bytes:
    """The figure as PNG bytes (for ``ipywidgets.Image`` or a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def contrast_limits(values: ArrayLike, percentiles: Sequence[float] = (1.0, 99.0)
                    ) -> tuple[float, float]:
    """Grey-scale limits: the given percentiles of ``values`` (never an empty range)."""
    lo, hi = (float(v) for v in np.percentile(np.asarray(values), percentiles))
    if not hi > lo:
        hi = lo + 1e-12 * max(1.0, abs(lo))
    return lo, hi


def low_pass(x: ArrayLike, pixel_size_A: float, resolution_A: float | None, *, ndim: int = 3,
             edge_width_px: float = 2.0) -> NDArray:
    """Low-pass filter images (``ndim=2``) or a volume (``ndim=3``) to ``resolution_A``.

    The filter is 1 for ``|k| <= 1 / resolution_A``, falls as a raised cosine over
    ``edge_width_px`` Fourier pixels and is 0 beyond.  ``resolution_A`` of ``None`` or at or
    below Nyquist (``2 * pixel_size_A``) returns the input unchanged (as float).
    """
    arr = np.asarray(x)
    if resolution_A is None or resolution_A <= 2.0 * pixel_size_A * (1 + 1e-9):
        return arr.astype(np.result_type(arr.dtype, np.float32), copy=False)
    n = arr.shape[-1]
    if ndim == 3:
        kx, ky, kz = frequency_grid_3d(n)
        radius_px = np.sqrt(kx**2 + ky**2 + kz**2)
        fft, ifft = fft3_centered, ifft3_centered
    elif ndim == 2:
        kx, ky = frequency_grid_2d(n)
        radius_px = np.sqrt(kx**2 + ky**2)
        fft, ifft = fft2_centered, ifft2_centered
    else:
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    cutoff_px = n * pixel_size_A / float(resolution_A)
    ramp = np.clip((radius_px - cutoff_px) / max(edge_width_px, 1e-9), 0.0, 1.0)
    gain = 0.5 * (1.0 + np.cos(np.pi * ramp))
    out = ifft(fft(arr.astype(np.float64)) * gain).real
    return out.astype(np.float32)


def _centred_extent(n: int, pixel_size_A: float) -> tuple[float, float, float, float]:
    """imshow extent in Å with voxel N//2 at 0 (row 0 at the top)."""
    lo = (-(n // 2) - 0.5) * pixel_size_A
    hi = (n - n // 2 - 0.5) * pixel_size_A
    return (lo, hi, hi, lo)


# --------------------------------------------------------------------------- volumes
def volume_slices_figure(
    volumes: ArrayLike | Sequence[ArrayLike],
    pixel_size_A: float,
    *,
    titles: Sequence[str] | None = None,
    position: Sequence[int] | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    low_pass_A: float | None = None,
    size_in: float = 2.4,
) -> Figure:
    """Three orthogonal sections of each map, one row per map (e.g. reconstruction and truth).

    Parameters
    ----------
    volumes : (N, N, N) array ``[z, y, x]``, or a sequence of such arrays of one shape
    pixel_size_A : float
        Axes in Å from the box centre (voxel ``N // 2`` at 0).
    titles : one label per map
    position : ``(z, y, x)`` voxel indices the sections go through (default: the centre);
        each panel marks the other two sections with dotted lines
    percentiles : grey-scale limits as percentiles of each (filtered) map
    low_pass_A : optional low-pass resolution in Å (:func:`low_pass`)
    """
    if isinstance(volumes, np.ndarray) and volumes.ndim == 3:
        maps = [volumes]
    else:
        maps = [np.asarray(v) for v in volumes]  # type: ignore[union-attr]
    shapes = {m.shape for m in maps}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"maps must be 3D and of one shape, got {sorted(shapes)}; bring them "
                         "to one box first (cryonb.fourier.fourier_crop / fourier_pad)")
    n = maps[0].shape[0]
    pos = [n // 2] * 3 if position is None else [int(p) for p in position]
    pos = [min(max(p, 0), s - 1) for p, s in zip(pos, maps[0].shape, strict=True)]
    labels = list(titles) if titles is not None else [f"map {i + 1}" for i in range(len(maps))]
    fig = Figure(figsize=(3 * size_in + 0.6, size_in * len(maps) + 0.3), layout="constrained")
    axes = fig.subplots(len(maps), 3, squeeze=False)
    offsets_A = [(p - n // 2) * pixel_size_A for p in pos]  # z, y, x
    extent = _centred_extent(n, pixel_size_A)
    for row, (vol, label) in enumerate(zip(maps, labels, strict=True)):
        filtered = low_pass(vol, pixel_size_A, low_pass_A)
        vmin, vmax = contrast_limits(filtered, percentiles)
        sections = [
            (filtered[pos[0]], "x (Å)", "y (Å)", f"z = {offsets_A[0]:+.1f} Å",
             (offsets_A[2], offsets_A[1])),
            (filtered[:, pos[1]], "x (Å)", "z (Å)", f"y = {offsets_A[1]:+.1f} Å",
             (offsets_A[2], offsets_A[0])),
            (filtered[:, :, pos[2]], "y (Å)", "z (Å)", f"x = {offsets_A[2]:+.1f} Å",
             (offsets_A[1], offsets_A[0])),
        ]
        for col, (sec, xlabel, ylabel, name, (h, v)) in enumerate(sections):
            ax = axes[row, col]
            ax.imshow(sec, cmap="gray", vmin=vmin, vmax=vmax, origin="upper", extent=extent)
            ax.axvline(h, color="tab:orange", lw=0.6, ls=":")
            ax.axhline(v, color="tab:orange", lw=0.6, ls=":")
            ax.set_title(f"{label}: {name}" if col == 0 else name, fontsize=8)
            ax.set_xlabel(xlabel, fontsize=7)
            ax.set_ylabel(ylabel, fontsize=7)
            ax.tick_params(labelsize=6)
    if low_pass_A is not None and low_pass_A > 2.0 * pixel_size_A:
        fig.suptitle(f"low-pass {low_pass_A:.1f} Å", fontsize=8)
    return fig


# --------------------------------------------------------------------------- particles
def particle_page_figure(
    images: ArrayLike,
    *,
    indices: Sequence[int] | None = None,
    defocus_A: ArrayLike | None = None,
    n_cols: int = 6,
    percentiles: Sequence[float] = (1.0, 99.0),
    highlight: int | None = None,
    pixel_size_A: float | None = None,
    low_pass_A: float | None = None,
    size_in: float = 1.5,
) -> Figure:
    """A grid of particle images (each with its own contrast), titled by index and defocus.

    Parameters
    ----------
    images : (k, N, N)
    indices : the particles' indices in their dataset (titles; default ``0 .. k-1``)
    defocus_A : (k,) defocus per image (e.g. the mean of U and V), shown in µm
    highlight : an index (from ``indices``) to frame in orange
    pixel_size_A, low_pass_A : low-pass filter the images to ``low_pass_A`` Å first
        (:func:`low_pass`; noisy particles are easier to see at 10-20 Å)
    """
    stack = np.asarray(images)
    if stack.ndim == 2:
        stack = stack[None]
    if low_pass_A is not None and len(stack):
        if pixel_size_A is None:
            raise ValueError("low_pass_A needs pixel_size_A")
        stack = low_pass(stack, pixel_size_A, low_pass_A, ndim=2)
    k = stack.shape[0]
    ids = list(range(k)) if indices is None else [int(i) for i in indices]
    n_cols = max(1, min(n_cols, max(k, 1)))
    n_rows = max(1, -(-k // n_cols))
    fig = Figure(figsize=(size_in * n_cols, size_in * n_rows + 0.2), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    df = None if defocus_A is None else np.asarray(defocus_A, dtype=np.float64)
    for j, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if j >= k:
            ax.axis("off")
            continue
        lo, hi = contrast_limits(stack[j], percentiles)
        ax.imshow(stack[j], cmap="gray", vmin=lo, vmax=hi, origin="upper")
        title = f"#{ids[j]}" + ("" if df is None else f"  {df[j] / 1e4:.2f} µm")
        ax.set_title(title, fontsize=7)
        if highlight is not None and ids[j] == highlight:
            for spine in ax.spines.values():
                spine.set_color("tab:orange")
                spine.set_linewidth(2.5)
    if low_pass_A is not None and pixel_size_A is not None and low_pass_A > 2 * pixel_size_A:
        fig.suptitle(f"low-pass {low_pass_A:.1f} Å", fontsize=8)
    if k == 0:
        axes[0, 0].text(0.5, 0.5, "no particle matches the filters", ha="center",
                        va="center", fontsize=8, transform=axes[0, 0].transAxes)
    return fig


# --------------------------------------------------------------------------- posteriors
def _rot_tilt_deg(directions: NDArray) -> tuple[NDArray, NDArray]:
    d = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    return (np.degrees(np.arctan2(d[..., 1], d[..., 0])),
            np.degrees(np.arccos(np.clip(d[..., 2], -1.0, 1.0))))


def direction_posterior(
    posterior: ArrayLike,
    quadrature: Any,
    *,
    true_rotation: ArrayLike | None = None,
    title: str = "",
    decades: float = 6.0,
) -> Figure:
    """An image's posterior over viewing directions on a Mollweide map.

    Parameters
    ----------
    posterior : (Nd,) probabilities over ``quadrature.directions`` (e.g. a row of
        :attr:`cryonb.likelihood.LikelihoodResult.posterior_directions`), coloured on a log
        scale over ``decades`` below the mode; smaller values (and zeros: points importance
        sampling did not evaluate) are small grey dots
    quadrature : :class:`cryonb.quadrature.Quadrature` (its ``direction_angles_deg``: RELION
        ``rot`` is the longitude, ``90° - tilt`` the latitude)
    true_rotation : (3, 3) the known pose, if any; its direction ``R @ z`` is marked with a cross
    """
    p = np.asarray(posterior, dtype=np.float64).ravel()
    rot, tilt = quadrature.direction_angles_deg
    if p.shape != rot.shape:
        raise ValueError(f"posterior has {p.size} entries for {rot.size} directions")
    lon, lat = np.radians(rot), np.radians(90.0 - tilt)
    fig = Figure(figsize=(5.6, 3.3), layout="constrained")
    ax = fig.add_subplot(projection="mollweide")
    shown = p > p.max() * 10.0**-decades if p.max() > 0 else np.zeros(p.shape, bool)
    ax.scatter(lon[~shown], lat[~shown], s=2, c="0.85", linewidths=0)
    if shown.any():
        order = np.argsort(p[shown])
        pts = ax.scatter(lon[shown][order], lat[shown][order], s=10,
                         c=np.log10(p[shown][order]), cmap="viridis", linewidths=0,
                         vmin=np.log10(p.max()) - decades, vmax=np.log10(p.max()))
        fig.colorbar(pts, ax=ax, shrink=0.6, label="log10 posterior")
        best = int(np.argmax(p))
        ax.plot(lon[best], lat[best], marker="*", ms=11, mfc="none", mec="tab:red", ls="none",
                label=f"mode (rot {rot[best]:.0f}°, tilt {tilt[best]:.0f}°)")
    if true_rotation is not None:
        t_rot, t_tilt = _rot_tilt_deg(np.asarray(true_rotation, dtype=np.float64)[:, 2])
        ax.plot(np.radians(t_rot), np.radians(90.0 - t_tilt), marker="x", ms=9, mew=2,
                color="tab:orange", ls="none",
                label=f"true (rot {float(t_rot):.0f}°, tilt {float(t_tilt):.0f}°)")
    ax.grid(True, lw=0.3)
    ax.tick_params(labelsize=6)
    ax.set_xlabel("rot (longitude)", fontsize=7)
    ax.set_ylabel("90° − tilt (latitude)", fontsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, -0.32), ncol=2)
    ax.set_title((title + "\n" if title else "") + f"{int(shown.sum())} of {p.size} directions "
                 f"within 10^{decades:g} of the mode (grey: below, or not evaluated)",
                 fontsize=8)
    return fig


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


def solver_history_figure(history: Any, *, title: str = "") -> Figure:
    """Objective and held-out NLL, band limit (as a resolution) and fraction of points evaluated.

    ``history``: see :func:`history_table`.  The x axis is the column ``step`` when present
    (iterations counted across phases, e.g. the ab initio job's common start and two halves),
    else ``iteration``; a ``phase`` column draws one line per phase.
    """
    table = history_table(history)
    fig = Figure(figsize=(9.5, 2.8), layout="constrained")
    ax_nll, ax_res, ax_frac = fig.subplots(1, 3)
    if len(table) == 0:
        for ax in (ax_nll, ax_res, ax_frac):
            ax.text(0.5, 0.5, "no iterations yet", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
    xname = "step" if "step" in table else "iteration"
    groups: Any = []
    if len(table):
        groups = table.groupby("phase", sort=False) if "phase" in table else [("", table)]
    for i, (phase, part) in enumerate(groups):
        colour = f"C{i}"
        x = part[xname].to_numpy(float)
        suffix = f" ({phase})" if phase else ""
        ax_nll.plot(x, part["objective"].to_numpy(float), color=colour, lw=0.8, alpha=0.6,
                    label="minibatch" + suffix)
        held = part["heldout_nll"].to_numpy(float)
        ok = np.isfinite(held)
        if ok.any():
            ax_nll.plot(x[ok], held[ok], "o-", color=colour, ms=3, lw=1.2,
                        label="held-out" + suffix)
        w = part["max_freq_invA"].to_numpy(float)
        ax_res.plot(x, 1.0 / w, color=colour, lw=1.2, label=phase or None)
        ax_frac.plot(x, part["fraction_evaluated"].to_numpy(float), color=colour, lw=1.0,
                     label=phase or None)
    if len(table) and (table["objective"] > 0).all():
        ax_nll.set_yscale("log")
    ax_nll.set_ylabel("mean NLL per image")
    ax_nll.set_title("objective", fontsize=9)
    ax_res.set_ylabel("band limit 1/w (Å)")
    ax_res.set_title("resolution of the band limit", fontsize=9)
    ax_res.invert_yaxis()
    ax_frac.set_ylabel("fraction of quadrature points")
    ax_frac.set_title("importance sampling", fontsize=9)
    if len(table) and (table["fraction_evaluated"] > 0).all():
        ax_frac.set_yscale("log")
    for ax in (ax_nll, ax_res, ax_frac):
        ax.set_xlabel(xname)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- IS study
_IS_ALIASES: Mapping[str, tuple[str, ...]] = {
    "s_B": ("s_B", "s_b", "sB", "ess_scale"),
    "band_limit": ("max_freq_invA", "band_limit_invA", "band_limit", "w_invA", "w"),
    "relative_error": ("relative_error", "rel_error", "relative_error_abs", "error"),
    "fraction": ("fraction_evaluated", "fraction", "fraction_of_points"),
}


def _as_frame(table: Any) -> Any:
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table
    if hasattr(table, "to_dataframe"):  # xarray Dataset / DataArray
        return table.to_dataframe().reset_index()
    return pd.DataFrame(table)


def resolve_is_columns(table: Any, *, s_B_column: str | None = None,
                       band_limit_column: str | None = None, error_column: str | None = None,
                       fraction_column: str | None = None) -> dict[str, str]:
    """Column names of an IS study table, keyed ``s_B``, ``band_limit``, ``relative_error``
    and ``fraction``: the ones given, else the first present of the common spellings
    (``s_B``/``ess_scale``; ``max_freq_invA``/``band_limit_invA``/``band_limit``;
    ``relative_error``/``rel_error``; ``fraction_evaluated``/``fraction``)."""
    frame = _as_frame(table)
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
    frame = _as_frame(table)
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
    ax_err.set_ylabel("|relative error| of log p(I | θ, V)")
    ax_frac.set_xlabel("s_B")
    ax_frac.set_ylabel("fraction of points evaluated")
    ax_trade.set_xlabel("fraction of points evaluated")
    ax_trade.set_ylabel("|relative error|")
    if not ax_trade.get_title():
        ax_trade.set_title("error against cost", fontsize=8)
    if ax_err.get_legend_handles_labels()[0]:
        ax_err.legend(fontsize=6)
    return fig
