"""Small matplotlib helpers for pictures people would rather look at than read.

They build :class:`matplotlib.figure.Figure` objects directly (no pyplot state), so they work
the same in notebooks, scripts and headless CLI runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from .ctf import CTFParams, evaluate_ctf
from .fourier import frequency_grid_2d

__all__ = ["ctf_figure", "fsc_figure", "image_rows", "orthogonal_slices"]


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


def ctf_zeros_invA(ctf: CTFParams, angle_deg: float, max_freq_invA: float,
                   n_samples: int = 4000) -> np.ndarray:
    """Frequencies (1/Å) of the CTF's zeros along direction ``angle_deg`` (first particle).

    Found as sign changes on a fine 1D grid, refined linearly.
    """
    k = np.linspace(0.0, max_freq_invA, n_samples)
    a = np.deg2rad(angle_deg)
    values = evaluate_ctf(ctf.subset([0]), k * np.cos(a), k * np.sin(a))[0]
    i = np.flatnonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)
    return k[i] - values[i] * (k[i + 1] - k[i]) / (values[i + 1] - values[i])


def ctf_figure(ctf: CTFParams, box_size: int, pixel_size_A: float) -> Figure:
    """The first particle's CTF: 1D along the U and V axes with its zeros, and in 2D.

    The 1D curves run along the defocus-U direction (``defocus_angle_deg``) and the V
    direction (90° from it), from 0 to Nyquist; grey ticks mark the zeros along U.
    """
    one = ctf.subset([0])
    nyquist = 1.0 / (2.0 * pixel_size_A)
    k = np.linspace(0.0, nyquist, 1000)
    fig = Figure(figsize=(9.0, 3.0), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2.2, 1])
    for offset, name, style in ((0.0, "along U", "-"), (90.0, "along V", "--")):
        a = np.deg2rad(float(one.defocus_angle_deg[0]) + offset)
        ax1.plot(k, evaluate_ctf(one, k * np.cos(a), k * np.sin(a))[0], style, lw=1, label=name)
    for z in ctf_zeros_invA(one, float(one.defocus_angle_deg[0]), nyquist):
        ax1.axvline(z, color="0.8", lw=0.6, zorder=0)
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.set_ylabel("CTF")
    ax1.legend(fontsize=8, loc="upper right")
    ax1.set_title(f"U {one.defocus_u_A[0]:.0f} Å, V {one.defocus_v_A[0]:.0f} Å, "
                  f"{one.voltage_kV[0]:g} kV, Cs {one.cs_mm[0]:g} mm, "
                  f"Q {one.amplitude_contrast[0]:g}, B {one.bfactor_A2[0]:g} Å²", fontsize=8)
    kx, ky = frequency_grid_2d(box_size, pixel_size_A=pixel_size_A)
    image = evaluate_ctf(one, kx, ky)[0]
    ax2.imshow(image, cmap="RdBu_r", vmin=-1, vmax=1, origin="upper",
               extent=(-nyquist, nyquist, nyquist, -nyquist))
    ax2.set_xlabel("kx (1/Å)")
    ax2.set_ylabel("ky (1/Å)")
    ax2.set_title("2D (zero frequency at the centre)", fontsize=8)
    return fig


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
    ax.legend(fontsize=7)
    return fig
