"""Fig. 11-like figure: per molecule the truth, the ab initio map and the true-pose limit.

Draws :class:`cryonb.final_results.FinalResult`\\ s (any object with the same attributes):
one row per molecule, the three maps side by side (projection along z and the central y = 0
section, each map aligned to the truth and shown with its own grey scale) and their FSC curves
against the truth, capped at the run's fitted band limit, with the 0.5 threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ._common import centred_extent, contrast_limits

__all__ = ["final_results_figure"]


def final_results_figure(results: Sequence[Any], *, size_in: float = 1.6) -> Figure:
    """Truth, ab initio and true-pose maps of each result beside their FSC curves.

    Parameters
    ----------
    results : sequence of :class:`cryonb.final_results.FinalResult`
        Attributes used: ``molecule.title``, ``pixel_size_A``, ``truth``, ``abinitio``,
        ``true_pose`` (``(N, N, N)`` ``[z, y, x]``), ``abinitio_fsc``, ``true_pose_fsc``
        (:class:`cryonb.metrics.FSCResult`), ``abinitio_res05``, ``true_pose_res05``,
        ``abinitio_s``, ``max_freq_invA``.
    size_in : float
        Size of one map panel, inches.
    """
    n_rows = len(results)
    fig = Figure(figsize=(3 * size_in + 3.0, 2 * size_in * n_rows + 0.4), layout="constrained")
    grid = fig.add_gridspec(2 * n_rows, 4, width_ratios=[1, 1, 1, 1.9])
    for row, res in enumerate(results):
        maps = [(res.truth, "truth"),
                (res.abinitio, f"ab initio ({res.abinitio_res05.label}, "
                               f"{res.abinitio_s:.0f} s)"),
                (res.true_pose, f"true poses ({res.true_pose_res05.label})")]
        extent = centred_extent(res.truth.shape[0], res.pixel_size_A)
        for col, (vol, label) in enumerate(maps):
            vol = np.asarray(vol, dtype=np.float64)
            c = vol.shape[0] // 2
            for k, (img, name) in enumerate(((vol.sum(axis=0), "projection along z"),
                                             (vol[:, c], "section y = 0"))):
                ax = fig.add_subplot(grid[2 * row + k, col])
                lo, hi = contrast_limits(img)
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="upper", extent=extent)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(label, fontsize=7)
                if col == 0:
                    ax.set_ylabel(f"{res.molecule.title}\n{name}" if k == 0 else name,
                                  fontsize=7)
        ax = fig.add_subplot(grid[2 * row:2 * row + 2, 3])
        for curve, label in ((res.abinitio_fsc, "ab initio"), (res.true_pose_fsc, "true poses")):
            ax.plot(curve.freq_invA[1:], curve.fsc[1:], lw=1.2, label=label)
        ax.axhline(0.5, color="0.6", lw=0.6, ls="--")
        ax.axvline(res.max_freq_invA, color="0.8", lw=0.6, ls=":")
        ax.set_ylim(-0.1, 1.02)
        ax.set_xlim(0.0, float(np.max(res.abinitio_fsc.freq_invA)))
        ax.set_xlabel("1/Å (dotted: fitted band limit)", fontsize=7)
        ax.set_ylabel("FSC vs truth", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    return fig
