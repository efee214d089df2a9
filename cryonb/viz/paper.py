"""The paper's figures (Brubaker, Punjani & Fleet 2015) from :mod:`cryonb.experiments` results.

* :func:`map_gallery_figure` -- maps side by side, one column each: a static iso-surface
  (marching cubes, drawn with matplotlib's 3D axes) above the projection along z;
* :func:`snapshots_figure` -- Fig. 5: the map against compute time, the start on the left,
  each column labelled with the solver time, the band limit and its FSC 0.5 against the truth
  (:class:`cryonb.experiments.AlignedSnapshot`), the truth on the right;
* :func:`domain_fractions_figure` -- Fig. 7: the fraction of quadrature points evaluated, all
  and per domain, against iteration, above the band limit (as a resolution);
* :func:`refinement_scores_figure` -- Fig. 9's numbers: FSC 0.5 against the truth of each
  projection-matching iteration per start, with SAGD's as a line.

The figures take plain values and duck-typed results (``.snapshot``, ``.aligned``,
``.resolution``); nothing here computes science.  Conventions (``docs/conventions.md``):
volumes ``[z, y, x]``, iso-surface axes in Å from the box centre (voxel ``N // 2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from ._common import contrast_limits
from .maps import snapshot_view
from .runs import plot_domain_fractions

__all__ = ["domain_fractions_figure", "iso_level", "map_gallery_figure",
           "refinement_scores_figure", "snapshots_figure"]



def iso_level(volume: ArrayLike, enclosed_fraction: float = 0.06) -> float:
    """The density above which ``enclosed_fraction`` of the voxels lie (GroEL-GroES fills
    about 6 % of a box twice its length); for a map with more voxels at its maximum (a
    uniform sphere), half way between its minimum and maximum."""
    vol = np.asarray(volume, dtype=np.float64)
    level = float(np.quantile(vol, 1.0 - enclosed_fraction))
    lo, hi = float(vol.min()), float(vol.max())
    return level if lo < level < hi else 0.5 * (lo + hi)


def _draw_iso(ax: Any, volume: ArrayLike, pixel_size_A: float, level: float) -> bool:
    """An iso-surface of ``volume`` on 3D axes ``ax``; False when none can be drawn (flat map,
    or scikit-image missing)."""
    vol = np.asarray(volume, dtype=np.float32)
    if not vol.min() < level < vol.max():
        return False
    try:
        from skimage.measure import marching_cubes
    except ImportError:  # optional dependency (widgets extra)
        return False
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    verts, faces, normals, _ = marching_cubes(vol, level=level)
    centre = np.array(vol.shape) // 2
    xyz = (verts - centre)[:, ::-1] * pixel_size_A  # (x, y, z) in Å
    light = np.array([0.4, 0.3, 0.85])
    shade = np.clip(np.abs(normals[faces].mean(axis=1)[:, ::-1] @ light), 0.15, 1.0)
    colours = np.outer(shade, [0.55, 0.7, 0.95])
    ax.add_collection3d(Poly3DCollection(xyz[faces], facecolors=colours, edgecolors="none"))
    half = vol.shape[0] / 2 * pixel_size_A
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-half, half)
    return True


def map_gallery_figure(volumes: Sequence[ArrayLike], titles: Sequence[str],
                       pixel_size_A: float, *, enclosed_fraction: float = 0.06,
                       projection: bool = True, size_in: float = 1.7,
                       suptitle: str = "") -> Figure:
    """Maps side by side: an iso-surface of each (top) and its projection along z (below).

    Parameters
    ----------
    volumes : (N, N, N) maps ``[z, y, x]`` of one pixel size (e.g. aligned to one truth)
    titles : one per map (may hold line breaks)
    pixel_size_A : Å per voxel (the iso-surfaces' axes)
    enclosed_fraction : each map's iso-level encloses this fraction of its voxels
        (:func:`iso_level`)
    projection : draw the projection row (:func:`cryonb.viz.snapshot_view`)
    """
    maps = [np.asarray(v, dtype=np.float64) for v in volumes]
    if len(maps) != len(titles):
        raise ValueError(f"{len(maps)} maps for {len(titles)} titles")
    n = max(1, len(maps))
    rows = 2 if projection else 1
    fig = Figure(figsize=(size_in * n + 0.3, size_in * rows + 0.7), layout="constrained")
    for j, (vol, title) in enumerate(zip(maps, titles, strict=True)):
        ax = fig.add_subplot(rows, n, j + 1, projection="3d")
        ax.view_init(elev=20, azim=35)
        if not _draw_iso(ax, vol, pixel_size_A, iso_level(vol, enclosed_fraction)):
            ax.text2D(0.5, 0.5, "no surface", ha="center", fontsize=7, transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title, fontsize=7)
        if projection:
            img = snapshot_view(vol, "projection")
            lo, hi = contrast_limits(img, (0.5, 99.5))
            ax2 = fig.add_subplot(rows, n, n + j + 1)
            ax2.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="upper")
            ax2.set_xticks([])
            ax2.set_yticks([])
            if j == 0:
                ax2.set_ylabel("projection along z", fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig


def snapshots_figure(aligned: Sequence[Any], pixel_size_A: float, *,
                     truth: ArrayLike | None = None, enclosed_fraction: float = 0.06,
                     title: str = "") -> Figure:
    """Fig. 5: the map against compute time, start on the left, each aligned to the truth.

    ``aligned``: :class:`cryonb.experiments.AlignedSnapshot` (``.aligned``, ``.label``: solver
    time, band limit, FSC 0.5 against the truth); ``truth`` (same grid) is drawn last.
    """
    volumes = [a.aligned for a in aligned]
    titles = [a.label for a in aligned]
    if truth is not None:
        volumes.append(np.asarray(truth))
        titles.append("truth")
    return map_gallery_figure(volumes, titles, pixel_size_A, enclosed_fraction=enclosed_fraction,
                              suptitle=title or "the map against solver time (aligned to the "
                              "truth; FSC 0.5 capped at each band limit)")


def domain_fractions_figure(table: Any, *, title: str = "") -> Figure:
    """Fig. 7: fraction of quadrature points evaluated against iteration, per domain.

    ``table``: :func:`cryonb.experiments.domain_fraction_table` (columns ``step``, ``phase``,
    ``band_limit_A``, ``fraction_evaluated``, ``fraction_<domain>``), drawn against ``step``:
    the iterations recorded, one phase after the other (a half-set counts its own iterations
    from the split).  Top: the fractions (log scale) with the phases' boundaries dotted;
    bottom: the band limit in Å.
    """
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax, ax_w = fig.subplots(2, 1, sharex=True, height_ratios=(2.2, 1.0))
    if len(table) == 0:
        ax.text(0.5, 0.5, "no iterations recorded", ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
        return fig
    x = table["step"].to_numpy(float)
    plot_domain_fractions(ax, x, {k: table[k].to_numpy(float) for k in table.columns
                                  if str(k).startswith("fraction_")}, step=True)
    phases = table["phase"].to_numpy()
    for i in np.flatnonzero(phases[1:] != phases[:-1]) + 1:
        for a in (ax, ax_w):
            a.axvline(x[i], color="0.5", lw=0.7, ls=":")
        ax.text(x[i], 1.0, f" {phases[i]}", fontsize=6, va="top",
                transform=ax.get_xaxis_transform())
    ax.set_title(title or "importance sampling: quadrature points evaluated", fontsize=9)
    ax_w.plot(x, table["band_limit_A"].to_numpy(float), color="C3", drawstyle="steps-post")
    ax_w.invert_yaxis()
    ax_w.set_ylabel("band limit (Å)")
    ax_w.set_xlabel("iteration (the common phase, then the first half-set)")
    for a in (ax, ax_w):
        a.tick_params(labelsize=7)
    return fig


def refinement_scores_figure(results: dict[str, Any], *, reference: dict[str, float] | None
                             = None, title: str = "") -> Figure:
    """FSC 0.5 against the truth per projection-matching iteration, one line per start.

    ``results``: ``{start: RefinementResult}`` (``band_limits_invA``, ``scores``; unscored
    iterations are skipped, a "better than" score drawn as an open marker); ``reference``:
    ``{label: resolution_A}`` drawn as horizontal lines (e.g. SAGD from a random start; None
    or infinite values are left out).
    """
    fig = Figure(figsize=(5.2, 3.0), layout="constrained")
    ax = fig.subplots()
    for i, (name, res) in enumerate(results.items()):
        pts = [(k + 1, s.resolution) for k, s in enumerate(res.scores) if s is not None]
        if res.start_score is not None:
            pts.insert(0, (0, res.start_score.resolution))
        if not pts:
            continue
        k = np.array([p[0] for p in pts], dtype=float)
        r = np.array([p[1].value_A for p in pts], dtype=float)
        crossed = np.array([p[1].crossed for p in pts])
        ax.plot(k, r, color=f"C{i}", lw=1.2, label=f"projection matching from {name}")
        ax.plot(k[crossed], r[crossed], "o", color=f"C{i}", ms=4)
        ax.plot(k[~crossed], r[~crossed], "o", mfc="none", color=f"C{i}", ms=5)
    for j, (label, value) in enumerate((reference or {}).items()):
        if value is not None and np.isfinite(value):  # None / inf: below 0.5 from the start
            ax.axhline(value, color=f"C{len(results) + j}", ls="--", lw=1.2, label=label)
    ax.invert_yaxis()
    ax.set_xlabel("iteration (0: the start; 1: global search, then local)")
    ax.set_ylabel("FSC 0.5 vs truth (Å)")
    ax.set_title(title or "refinement from poor starts, scored against the truth", fontsize=9)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    return fig
