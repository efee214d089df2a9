"""Resolution measures: Fourier shell correlation with RELION's shells, and where it crosses.

This module is the only place in cryonb that turns an FSC curve into a resolution.

``FSC(i) = Re sum_{shell i} F1 F2* / sqrt(sum |F1|^2 sum |F2|^2)`` over shells
``i = round(|k|)`` (k in Fourier pixels of the centred grid), ``i = 0 .. N//2``
(RELION ``src/fftw.cpp::getFSC``); shell ``i`` is at ``i / (N * pixel_size)`` 1/Å.

Thresholds (the field's criteria):

* :data:`HALF_MAP_THRESHOLD` = 0.143 for two *independent* half-maps (Rosenthal & Henderson
  2003): the FSC of the full map against a perfect map is then about 0.5;
* :data:`REFERENCE_THRESHOLD` = 0.5 for a map against a known reference (e.g. the truth of a
  simulation).

The crossing is interpolated linearly in spatial frequency between the last shell at or above the
threshold and the first shell below it.  A curve is capped at the band limit the map was fitted
to (``max_freq_invA``): shells above it are NaN, because their content comes from the positivity
truncation of what lies below it, not from data.  A curve that stays above the threshold up to
its last determined shell has not crossed: its :class:`Resolution` says "better than X Å",
X being that shell's resolution — never a bare Nyquist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .fourier import fft3_centered, nyquist_invA, radial_index

__all__ = [
    "HALF_MAP_THRESHOLD",
    "REFERENCE_THRESHOLD",
    "FSCResult",
    "ReferenceScore",
    "Resolution",
    "crossing",
    "fsc",
    "half_map_resolution",
    "score_against_reference",
]

#: FSC threshold for two independent half-maps (Rosenthal & Henderson 2003).
HALF_MAP_THRESHOLD = 0.143
#: FSC threshold for a map against a known reference map.
REFERENCE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Resolution:
    """A resolution read off an FSC curve at a threshold.

    Attributes
    ----------
    value_A : float
        Where the curve crosses ``threshold`` (Å, interpolated), or, when it never crosses, the
        resolution of its last determined shell (then the map is *better than* this).
        ``inf`` when the curve is below the threshold from the first shell on.
    threshold : float
        The FSC threshold (0.143 half-maps, 0.5 against a reference).
    crossed : bool
        False: the curve stays at or above the threshold up to ``limit_A`` ("better than").
    limit_A : float
        The finest resolution the curve was determined to: the band limit the maps were fitted
        to (``max_freq_invA``), or the box's Nyquist without one (Å).
    """

    value_A: float
    threshold: float
    crossed: bool
    limit_A: float

    def __str__(self) -> str:
        if not self.crossed:
            return f"better than {self.value_A:.1f} Å (FSC {self.threshold:g} not crossed)"
        return f"{self.value_A:.1f} Å (FSC {self.threshold:g})"

    @property
    def label(self) -> str:
        """Short form: ``"12.3 Å"`` or ``"<14.9 Å"`` (better than)."""
        return f"{'' if self.crossed else '<'}{self.value_A:.1f} Å"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``value_A`` None when infinite) and the short :attr:`label`."""
        value = None if not math.isfinite(self.value_A) else round(self.value_A, 3)
        return {"value_A": value, "threshold": self.threshold, "crossed": self.crossed,
                "limit_A": round(self.limit_A, 3), "label": self.label}


def crossing(freq_invA: ArrayLike, curve: ArrayLike, threshold: float, *,
             limit_A: float | None = None) -> Resolution:
    """Where ``curve`` (FSC per shell at ``freq_invA``, shell 0 first) first drops below
    ``threshold``.

    NaN shells are "not determined" and end the curve.  Linear interpolation in frequency
    between the last shell at or above the threshold and the next one.  ``limit_A``: the
    resolution the curve was determined to (default: its last shell).
    """
    f = np.asarray(freq_invA, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    determined = np.flatnonzero(np.isnan(c[1:]))
    n_det = c.size if determined.size == 0 else int(determined[0]) + 1  # shells 0 .. n_det-1
    if limit_A is None:
        limit_A = 1.0 / f[n_det - 1] if n_det > 1 else math.inf
    if n_det < 2:
        return Resolution(math.inf, threshold, True, limit_A)
    below = np.flatnonzero(c[1:n_det] < threshold)
    if below.size == 0:
        return Resolution(float(1.0 / f[n_det - 1]), threshold, False, limit_A)
    i = int(below[0]) + 1  # first shell below
    hi, lo = c[i - 1], c[i]
    if not hi >= threshold:  # shell 0 below as well
        return Resolution(math.inf, threshold, True, limit_A)
    frac = (hi - threshold) / (hi - lo) if hi > lo else 0.0
    f_cross = f[i - 1] + frac * (f[i] - f[i - 1])
    return Resolution(float(1.0 / f_cross) if f_cross > 0 else math.inf, threshold, True,
                      limit_A)


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
        NaN above ``max_freq_invA``.
    pixel_size_A : float
    box_size : int
    max_freq_invA : float or None
        The band limit the curve is capped at (None: none, up to Nyquist).
    """

    shell: NDArray
    freq_invA: NDArray
    fsc: NDArray
    pixel_size_A: float
    box_size: int
    max_freq_invA: float | None = None

    @property
    def limit_A(self) -> float:
        """The finest resolution the curve is determined to (Å): band limit or Nyquist."""
        nyquist = 1.0 / nyquist_invA(self.pixel_size_A)
        if self.max_freq_invA is None:
            return nyquist
        return max(1.0 / self.max_freq_invA, nyquist)

    def resolution(self, threshold: float) -> Resolution:
        """The :class:`Resolution` at ``threshold`` (see :func:`crossing`)."""
        return crossing(self.freq_invA, self.fsc, threshold, limit_A=self.limit_A)


def fsc(map1: ArrayLike, map2: ArrayLike, pixel_size_A: float, *,
        max_freq_invA: float | None = None) -> FSCResult:
    """Fourier shell correlation of two cubic maps ``(N, N, N)`` (RELION's shells).

    ``max_freq_invA``: the band limit the maps were fitted to (1/Å), or None.  Shells above it
    are NaN (not determined) and the resolution cannot pass it.  Use it for maps from a
    band-limited fit: there, the content above the band limit is not fitted to any data, only
    made by the positivity truncation from the content below it, so two maps that agree below
    the limit also agree above it and their FSC would claim a resolution nothing supports.
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
    freq = shell / (n * pixel_size_A)
    limit = None
    if max_freq_invA is not None:
        limit = float(max_freq_invA)
        curve[freq > limit + 1e-12] = np.nan
    return FSCResult(shell, freq, curve, float(pixel_size_A), n, limit)


def half_map_resolution(half1: ArrayLike, half2: ArrayLike, pixel_size_A: float, *,
                        max_freq_invA: float | None) -> tuple[Resolution, FSCResult]:
    """Gold-standard resolution of two independent half-maps: FSC 0.143, capped at the band
    limit ``max_freq_invA`` (1/Å) both were fitted to.  Returns the resolution and the curve.

    The maps must be independent: reconstructions of disjoint halves of the data that share no
    content above the frequency where they separated (see :mod:`cryonb.abinitio` for why SAGD's
    own half-maps, kept non-negative from a common start, are not).
    """
    curve = fsc(half1, half2, pixel_size_A, max_freq_invA=max_freq_invA)
    return curve.resolution(HALF_MAP_THRESHOLD), curve


@dataclass(frozen=True, eq=False)
class ReferenceScore:
    """A map scored against a known reference by :func:`score_against_reference`.

    Attributes
    ----------
    resolution : Resolution
        FSC 0.5 (the criterion for a map against a known map), capped at the fitted band limit.
    resolution_0143 : Resolution
        FSC 0.143 of the same curve, for reference only.
    curve : FSCResult
        The capped curve of the aligned map against the reference.
    aligned : ndarray (N, N, N)
        The map superposed on the reference.
    correlation : float
        Real-space correlation after alignment.
    flipped : bool
        The hand was inverted to match.
    """

    resolution: Resolution
    resolution_0143: Resolution
    curve: FSCResult
    aligned: NDArray
    correlation: float
    flipped: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {"resolution_05": self.resolution.to_dict(),
                "resolution_0143": self.resolution_0143.to_dict(),
                "correlation": round(float(self.correlation), 4), "flipped": bool(self.flipped)}


def score_against_reference(volume: ArrayLike, reference: ArrayLike, pixel_size_A: float, *,
                            max_freq_invA: float | None, align: bool = True) -> ReferenceScore:
    """Score a map against a known reference, as the field does: superpose it (rotation,
    translation, both hands; :func:`cryonb.alignment.align_maps`), then FSC 0.5 capped at the
    band limit ``max_freq_invA`` (1/Å) the map was fitted to.

    ``volume`` and ``reference``: cubic maps of the same pixel size (Å); a reference of another
    box is Fourier-cropped or padded to the map's box first (same pixel size and field of view
    assumed: both are a Fourier crop of the same data).
    """
    from .alignment import align_maps, apply_alignment
    from .fourier import fourier_crop, fourier_pad

    vol = np.asarray(volume, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape[0] > vol.shape[0]:
        ref = fourier_crop(ref, vol.shape[0], ndim=3)
    elif ref.shape[0] < vol.shape[0]:
        ref = fourier_pad(ref, vol.shape[0], ndim=3)
    if align:
        alignment = align_maps(vol, ref, pixel_size_A)
        aligned = apply_alignment(vol, alignment, pixel_size_A)
        corr, flipped = float(alignment.correlation), bool(alignment.flipped)
    else:
        aligned = vol
        a, b = vol - vol.mean(), ref - ref.mean()
        corr, flipped = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())), False
    curve = fsc(aligned, ref, pixel_size_A, max_freq_invA=max_freq_invA)
    return ReferenceScore(curve.resolution(REFERENCE_THRESHOLD),
                          curve.resolution(HALF_MAP_THRESHOLD), curve, aligned, corr, flipped)
