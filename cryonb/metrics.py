"""Map comparison: Fourier shell correlation with RELION's shell rule, and resolution.

``FSC(i) = Re sum_{shell i} F1 F2* / sqrt(sum |F1|^2 sum |F2|^2)`` over shells
``i = round(|k|)`` (k in Fourier pixels of the centred grid), ``i = 0 .. N//2``
(RELION ``src/fftw.cpp::getFSC``).  The reported resolution is ``N * pixel_size / i`` at the last
shell before the FSC first drops below the threshold (0.143 for independent half-maps, 0.5 for a
map against a known reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .fourier import fft3_centered, radial_index

__all__ = ["FSCResult", "fsc", "resolution_at"]


@dataclass(frozen=True, eq=False)
class FSCResult:
    """An FSC curve.

    Attributes
    ----------
    shell : ndarray of int, (N//2 + 1,)
        Shell index i (Fourier pixels).
    freq_invA : ndarray, (N//2 + 1,)
        Spatial frequency of each shell, 1/Å (``i / (N * pixel_size_A)``).
    fsc : ndarray, (N//2 + 1,)
    pixel_size_A : float
    box_size : int
    """

    shell: NDArray
    freq_invA: NDArray
    fsc: NDArray
    pixel_size_A: float
    box_size: int

    def resolution_A(self, threshold: float = 0.143) -> float:
        """Resolution (Å) at the first crossing of ``threshold`` (see :func:`resolution_at`)."""
        return resolution_at(self.fsc, self.box_size, self.pixel_size_A, threshold)


def fsc(map1: ArrayLike, map2: ArrayLike, pixel_size_A: float, *,
        max_freq_invA: float | None = None) -> FSCResult:
    """Fourier shell correlation of two cubic maps ``(N, N, N)`` (RELION's shells).

    ``max_freq_invA``: the band limit the maps were fitted to (1/Å), or None.  Shells above it
    are NaN (not determined) and the resolution cannot pass it.  Use it for maps from a
    band-limited fit: there, the content above the band limit is not fitted to any data, only
    made by the positivity truncation from the content below it, so two half-maps that agree
    below the limit also agree above it and their FSC would claim a resolution nothing supports.
    """
    a = np.asarray(map1, dtype=np.float64)
    b = np.asarray(map2, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"fsc needs two cubic maps of the same shape, got {a.shape}, {b.shape}")
    n = a.shape[0]
    fa, fb = fft3_centered(a), fft3_centered(b)
    shells = radial_index(a.shape).ravel()
    n_shells = n // 2 + 1
    keep = shells < n_shells
    idx = shells[keep]
    cross = np.bincount(idx, (fa * fb.conj()).real.ravel()[keep], n_shells)
    pa = np.bincount(idx, (np.abs(fa) ** 2).ravel()[keep], n_shells)
    pb = np.bincount(idx, (np.abs(fb) ** 2).ravel()[keep], n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(pa * pb > 0, cross / np.sqrt(pa * pb), 0.0)
    shell = np.arange(n_shells)
    if max_freq_invA is not None:
        curve[shell / (n * pixel_size_A) > max_freq_invA + 1e-12] = np.nan
    return FSCResult(shell, shell / (n * pixel_size_A), curve, float(pixel_size_A), n)


def resolution_at(curve: ArrayLike, box_size: int, pixel_size_A: float,
                  threshold: float = 0.143) -> float:
    """``N * pixel_size / i`` for the last shell ``i`` before the curve first drops below
    ``threshold`` or becomes NaN (not determined; shell 0 is skipped); Nyquist
    (``2 * pixel_size``) if it never does, ``inf`` if shell 1 is already below."""
    values = np.asarray(curve, dtype=np.float64)
    below = np.flatnonzero(~(values[1:] >= threshold))
    if below.size == 0:
        return box_size * pixel_size_A / (values.size - 1)
    last_good = int(below[0])  # shell index of the last shell at or above the threshold
    if last_good == 0:
        return float("inf")
    return box_size * pixel_size_A / last_good
