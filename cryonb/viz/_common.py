"""What the figure modules share: PNG export, grey-scale limits, low-pass to a resolution."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from ..fourier import lowpass

__all__ = ["AXES", "contrast_limits", "figure_png", "gaussian_lowpass", "lowpass_to_resolution",
           "normalised_map"]

AXES = ("z", "y", "x")  # volume axes in array order


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


def lowpass_to_resolution(x: ArrayLike, pixel_size_A: float, resolution_A: float | None, *,
                          ndim: int = 3) -> NDArray:
    """:func:`cryonb.fourier.lowpass` at ``1 / resolution_A``, skipped when there is nothing to do.

    Parameters
    ----------
    x : (..., N, N) images (``ndim=2``) or (N, N, N) volume ``[z, y, x]`` (``ndim=3``)
    pixel_size_A : float
        Å per pixel.
    resolution_A : float or None
        Keep ``|k| <= 1 / resolution_A`` (1/Å), raised-cosine edge 2 Fourier pixels wide above
        it.  ``None``, or a resolution at or finer than Nyquist (``2 * pixel_size_A``, what the
        figures' sliders start at), returns the input unchanged.

    Returns
    -------
    Array of ``x``'s shape, floating point (float64 for float64 input, else at least float32).
    """
    arr = np.asarray(x)
    arr = arr.astype(np.result_type(arr.dtype, np.float32), copy=False)
    if resolution_A is None or resolution_A <= 2.0 * pixel_size_A * (1 + 1e-9):
        return arr
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    return lowpass(arr, pixel_size_A, 1.0 / float(resolution_A), ndim=ndim)


def centred_extent(n: int, pixel_size_A: float) -> tuple[float, float, float, float]:
    """imshow extent in Å with voxel N//2 at 0 (row 0 at the top)."""
    lo = (-(n // 2) - 0.5) * pixel_size_A
    hi = (n - n // 2 - 0.5) * pixel_size_A
    return (lo, hi, hi, lo)


def as_frame(table: Any) -> Any:
    """A pandas DataFrame from a DataFrame, an xarray object or records."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table
    if hasattr(table, "to_dataframe"):  # xarray Dataset / DataArray
        return table.to_dataframe().reset_index()
    return pd.DataFrame(table)


def normalised_map(volume: ArrayLike) -> NDArray:
    """``(v - mean) / std`` over the box, float64: maps on one scale, so that one iso-level
    (in standard deviations, as ChimeraX's ``sdLevel``) compares them at the same density
    whatever their mass or normalisation."""
    v = np.asarray(volume, dtype=np.float64)
    sd = float(v.std())
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


def gaussian_lowpass(volume: ArrayLike, pixel_size_A: float, resolution_A: float) -> NDArray:
    """A ``(N, N, N)`` map low-passed by a Gaussian whose amplitude is 1/2 at
    ``1 / resolution_A``: ``exp(-ln 2 (|k| resolution_A)^2)``, float64.

    For pictures that compare maps at one resolution: a Gaussian has no edge, so unlike a
    sharp (or narrow raised-cosine) cut and unlike a Fourier crop it adds no ringing.
    """
    v = np.asarray(volume, dtype=np.float64)
    n = v.shape[-1]
    k = np.fft.fftfreq(n, d=float(pixel_size_A))
    kr = np.fft.rfftfreq(n, d=float(pixel_size_A))
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2
    gain = np.exp(-np.log(2.0) * k2 * float(resolution_A) ** 2)
    return np.fft.irfftn(np.fft.rfftn(v) * gain, s=v.shape, axes=(0, 1, 2))
