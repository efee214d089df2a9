"""Pictures of maps and images: sections of volumes, image grids, particle pages, a strip of
map snapshots, particles beside their reprojections, and an image's posterior over viewing
directions.

Conventions (``docs/conventions.md``): volumes ``[z, y, x]``, images ``[y, x]`` drawn with row 0
at the top, coordinates in Å from the box centre (voxel ``N // 2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from ._common import (
    centred_extent,
    contrast_limits,
    gaussian_lowpass,
    lowpass_to_resolution,
    normalised_map,
)

__all__ = ["direction_posterior", "gaussian_lowpass", "image_rows", "maps_for_comparison",
           "normalised_map", "orthogonal_slices",
           "particle_page_figure",
           "projection_matching_figure", "snapshot_strip_figure", "volume_slices_figure"]


def image_rows(rows: Sequence[ArrayLike], row_titles: Sequence[str], *,
               col_titles: Sequence[str] | None = None, size_in: float = 1.6) -> Figure:
    """A grid of grey-scale images: one row per stack in ``rows`` (each (k, N, N)).

    Images are drawn with the array's row 0 at the top (``origin="upper"``), x to the right,
    each with its own contrast (1st-99th percentile).
    """
    n_rows = len(rows)
    n_cols = max(len(np.asarray(r)) for r in rows)
    fig = Figure(figsize=(size_in * n_cols + 1.2, size_in * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, (stack, title) in enumerate(zip(rows, row_titles, strict=True)):
        stack = np.asarray(stack)
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(stack):
                ax.axis("off")
                continue
            lo, hi = np.percentile(stack[j], [1, 99])
            ax.imshow(stack[j], cmap="gray", vmin=lo, vmax=hi, origin="upper")
            if j == 0:
                ax.set_ylabel(title, fontsize=9)
            if i == 0 and col_titles is not None:
                ax.set_title(col_titles[j], fontsize=8)
    return fig


def orthogonal_slices(volume: ArrayLike, pixel_size_A: float, title: str = "") -> Figure:
    """Central z, y and x sections of a (N, N, N) volume indexed [z, y, x]."""
    vol = np.asarray(volume)
    c = vol.shape[0] // 2
    fig = Figure(figsize=(7.5, 2.8), layout="constrained")
    axes = fig.subplots(1, 3)
    extent_A = vol.shape[0] * pixel_size_A
    for ax, (sec, name) in zip(axes, [(vol[c], "z = 0 (x right, y down)"),
                                      (vol[:, c], "y = 0 (x right, z down)"),
                                      (vol[:, :, c], "x = 0 (y right, z down)")], strict=True):
        ax.imshow(sec, cmap="gray", origin="upper", extent=(0, extent_A, extent_A, 0))
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("Å", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


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
    low_pass_A : optional low-pass resolution in Å (:func:`cryonb.fourier.lowpass` at
        ``1 / low_pass_A``; none at or below Nyquist)
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
    extent = centred_extent(n, pixel_size_A)
    for row, (vol, label) in enumerate(zip(maps, labels, strict=True)):
        filtered = lowpass_to_resolution(vol, pixel_size_A, low_pass_A)
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
        (:func:`cryonb.fourier.lowpass`; noisy particles are easier to see at 10-20 Å)
    """
    stack = np.asarray(images)
    if stack.ndim == 2:
        stack = stack[None]
    if low_pass_A is not None and len(stack):
        if pixel_size_A is None:
            raise ValueError("low_pass_A needs pixel_size_A")
        stack = lowpass_to_resolution(stack, pixel_size_A, low_pass_A, ndim=2)
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




# --------------------------------------------------------------------------- snapshots
def snapshot_view(volume: ArrayLike, kind: str = "projection") -> NDArray:
    """What a snapshot strip shows of a ``[z, y, x]`` map: its ``"projection"`` along z (the
    sum, as an image of the particle would show it), its ``"max"`` projection, or its central
    z ``"section"``."""
    vol = np.asarray(volume, dtype=np.float64)
    if kind == "projection":
        return vol.sum(axis=0)
    if kind == "max":
        return vol.max(axis=0)
    if kind == "section":
        return vol[vol.shape[0] // 2]
    raise ValueError(f"kind must be 'projection', 'max' or 'section', got {kind!r}")


def snapshot_strip_figure(snapshots: Sequence[tuple[ArrayLike, str]], *,
                          kind: str = "projection", max_shown: int = 10,
                          size_in: float = 1.4) -> Figure:
    """A strip of small views of a map as it develops, one per snapshot, left to right.

    Parameters
    ----------
    snapshots : ``(volume, label)`` pairs in time order, e.g. one per band limit, labelled
        with the wall time (``"1.2 min\n40 Å"``)
    kind : see :func:`snapshot_view`
    max_shown : at most this many, evenly spaced, the first and the last kept
    """
    items = list(snapshots)
    if len(items) > max_shown:
        keep = np.unique(np.round(np.linspace(0, len(items) - 1, max_shown)).astype(int))
        items = [items[i] for i in keep]
    n = max(1, len(items))
    fig = Figure(figsize=(size_in * n + 0.3, size_in + 0.45), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if not items:
        axes[0].text(0.5, 0.5, "no snapshot yet", ha="center", va="center", fontsize=7,
                     transform=axes[0].transAxes)
    for ax, (volume, label) in zip(axes, items, strict=False):
        img = snapshot_view(volume, kind)
        lo, hi = contrast_limits(img, (0.5, 99.5))
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="upper")
        ax.set_title(label, fontsize=6)
    return fig


# --------------------------------------------------------------------------- reprojections
def projection_matching_figure(match: Any, *, n_cols: int = 6, size_in: float = 1.25
                               ) -> Figure:
    """Particles (top of each pair) above the map's projections at their poses (below).

    ``match``: a :class:`cryonb.reprojection.ProjectionMatch`; both images of a pair share
    one grey scale (the particle's); each pair is titled with its index and correlation.
    """
    k = len(match.indices)
    n_cols = max(1, min(n_cols, max(k, 1)))
    n_pairs = max(1, -(-k // n_cols))
    fig = Figure(figsize=(size_in * n_cols + 0.6, 2 * size_in * n_pairs + 0.35),
                 layout="constrained")
    axes = fig.subplots(2 * n_pairs, n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for j in range(n_pairs * n_cols):
        top, bottom = axes[2 * (j // n_cols), j % n_cols], axes[2 * (j // n_cols) + 1, j % n_cols]
        if j >= k:
            top.axis("off")
            bottom.axis("off")
            continue
        lo, hi = contrast_limits(match.images[j], (1.0, 99.0))
        top.imshow(match.images[j], cmap="gray", vmin=lo, vmax=hi, origin="upper")
        bottom.imshow(match.reprojections[j], cmap="gray", vmin=lo, vmax=hi, origin="upper")
        top.set_title(f"#{int(match.indices[j]) + 1}  r = {float(match.correlation[j]):.2f}",
                      fontsize=7)
        if j % n_cols == 0:
            top.set_ylabel("particle", fontsize=7)
            bottom.set_ylabel("map at pose", fontsize=7)
    if k == 0:
        axes[0, 0].text(0.5, 0.5, "no particle", ha="center", va="center", fontsize=8,
                        transform=axes[0, 0].transAxes)
    band = ("" if match.max_freq_invA is None
            else f", both band-limited to {1.0 / match.max_freq_invA:.1f} Å")
    fig.suptitle(f"particles and the map's projections at their MAP poses with their CTFs{band}",
                 fontsize=8)
    return fig


def maps_for_comparison(maps: Any, pixel_size_A: float, resolution_A: float | None = None
                        ) -> dict[str, NDArray]:
    """Maps brought to one scale and one resolution for side-by-side pictures.

    Each map is normalised (:func:`normalised_map`: zero mean, unit standard deviation over
    the box) and, with ``resolution_A``, Gaussian-filtered to it (:func:`gaussian_lowpass`,
    amplitude 1/2 there; no ringing).  One iso-level, in standard deviations, then shows
    every map at the same density.

    Parameters
    ----------
    maps : mapping name -> (N, N, N) map ``[z, y, x]``, all of one box and pixel size
    pixel_size_A : float
    resolution_A : e.g. the run's fitted band limit ``1 / final_max_freq_invA``; None keeps
        every frequency
    """
    out = {}
    for name, volume in dict(maps).items():
        v = normalised_map(volume)
        if resolution_A is not None:
            v = normalised_map(gaussian_lowpass(v, pixel_size_A, resolution_A))
        out[str(name)] = v
    return out
