"""Small matplotlib helpers for pictures people would rather look at than read.

They build :class:`matplotlib.figure.Figure` objects directly (no pyplot state), so they work
the same in notebooks, scripts and headless CLI runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

__all__ = ["image_rows", "orthogonal_slices"]


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
