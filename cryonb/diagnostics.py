"""Checks to make on a data set before reconstructing: contrast sign and working box size.

* :func:`contrast_scores`: are the particles white (RELION's convention, which cryonb's
  image model and CTF assume) or dark?  Each image is phase-flipped with its CTF (so every
  frequency carries the particle with the sign of the density), low-pass filtered to
  ``resolution_A`` and its mean in a central disc compared with the mean in an outer ring.
  White particles give positive scores; mostly negative scores mean dark particles:
  use :meth:`cryonb.dataset.Dataset.inverted`.
* :func:`check_contrast`: raise a :class:`~cryonb.io.errors.CryonbInputError` when the scores
  show dark particles beyond reasonable doubt (a one-sided sign test, see there).
* :func:`box_for_resolution`: the smallest Fourier-cropped box whose Nyquist frequency still
  reaches a target resolution (``Dataset.fourier_cropped``).
* :func:`estimate_particle_radius`: the particle's radius from the images' excess variance
  (what sets the angular sampling of the pose grids).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .ctf import evaluate_ctf
from .fourier import fft2_centered, fourier_indices, frequency_grid_2d, ifft2_centered, lowpass

__all__ = [
    "box_for_resolution",
    "check_contrast",
    "contrast_scores",
    "dark_p_value",
    "estimate_mass",
    "estimate_particle_radius",
]


def contrast_scores(dataset, *, resolution_A: float = 25.0, n_images: int = 200,
                    inner_fraction: float = 1.0 / 6.0,
                    ring_fractions: tuple[float, float] = (1.0 / 3.0, 0.5)) -> NDArray:
    """Per-image contrast score: > 0 for white particles, < 0 for dark ones.

    Parameters
    ----------
    dataset : cryonb.dataset.Dataset
        With CTFs; images as read (``data_sign`` and preprocessing applied).
    resolution_A : low-pass resolution, Å (raised to 4 pixels if finer)
    n_images : images used (evenly spaced through the data set)
    inner_fraction : radius of the central disc as a fraction of the box
    ring_fractions : inner and outer radius of the background ring as fractions of the box

    Returns
    -------
    (k,) float64: ``(mean(disc) - mean(ring)) / std(image)`` of each filtered image.
    """
    if dataset.ctf is None:
        raise ValueError("contrast_scores needs CTFs (to phase-flip the images)")
    n = dataset.box_size
    idx = np.unique(np.linspace(0, len(dataset) - 1, min(n_images, len(dataset))).astype(int))
    images = dataset.images(idx).astype(np.float64)
    kx, ky = frequency_grid_2d(n, dataset.pixel_size_A)
    flip = np.sign(evaluate_ctf(dataset.ctf.subset(idx), kx, ky))
    flipped = ifft2_centered(fft2_centered(images) * flip).real
    res = max(float(resolution_A), 4.0 * dataset.pixel_size_A)
    smooth = lowpass(flipped, dataset.pixel_size_A, 1.0 / res, ndim=2)
    k = fourier_indices(n)
    r = np.hypot(k[:, None], k[None, :]) / n
    disc = r < inner_fraction
    ring = (r >= ring_fractions[0]) & (r < ring_fractions[1])
    spread = smooth.std(axis=(1, 2))
    spread[spread == 0] = 1.0
    return (smooth[:, disc].mean(axis=1) - smooth[:, ring].mean(axis=1)) / spread


def dark_p_value(scores: NDArray) -> float:
    """One-sided sign-test p-value of "the particles are not dark".

    Under the null hypothesis the contrast scores are as likely positive as negative (no
    particle signal: pure noise, a symmetric distribution about 0); white particles make
    positive scores more likely still.  The p-value is ``P(X >= n_neg)`` for
    ``X ~ Binomial(k, 1/2)``, ``k`` the number of non-zero scores and ``n_neg`` the number of
    negative ones.  Returns 1.0 for no scores.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores) & (scores != 0)]
    k = int(scores.size)
    n_neg = int((scores < 0).sum())
    if k == 0:
        return 1.0
    return math.fsum(math.comb(k, j) for j in range(n_neg, k + 1)) / 2.0**k


def check_contrast(dataset, path: str | os.PathLike, *, fix: str | None = None,
                   p_threshold: float = 0.01, n_images: int = 200) -> NDArray | None:
    """Raise when a data set's particles are dark (inverted contrast); cryonb expects white.

    Rule: the particles are called dark when the :func:`contrast_scores` of up to ``n_images``
    images (evenly spaced) are negative significantly more often than positive, a one-sided
    sign test (:func:`dark_p_value`) below ``p_threshold`` (default 0.01).  This implies a
    negative median score, and it never fires on a set without clear signal (pure noise,
    ambiguous contrast), whose scores are negative about half the time: with the default
    threshold 7 of 7 images, 16 of 20 or 117 of 200 must score negative.  A data set whose
    scores are mostly positive or undecided passes.

    Parameters
    ----------
    dataset : cryonb.dataset.Dataset
        Images as they will be reconstructed (``data_sign`` and ``--invert`` applied).  A data
        set without CTFs is not checked (:func:`contrast_scores` needs them).
    path : path-like
        The particle file, named in the error.
    fix : str, optional
        The advice in the error (default: flip the contrast with ``--invert`` /
        ``Dataset.inverted()``).
    p_threshold : float
        Significance level of the sign test.
    n_images : int
        Images scored.

    Returns
    -------
    (k,) float64 or None
        The scores (None when the data set has no CTFs).

    Raises
    ------
    CryonbInputError
        When the particles are dark, with the median score and the count of negative ones.
    """
    from .io.errors import input_error

    if dataset.ctf is None:
        return None
    scores = contrast_scores(dataset, n_images=n_images)
    p_value = dark_p_value(scores)
    if p_value < p_threshold:
        n_neg = int((scores < 0).sum())
        raise input_error(
            path, f"the particles look dark (inverted contrast): {n_neg} of {scores.size} "
            f"images score negative, median contrast score {np.median(scores):.2f} (sign-test "
            f"p = {p_value:.1e}); cryonb expects white particles (RELION's convention)",
            fix or "pass --invert to flip the contrast (Dataset.inverted() in Python)")
    return scores


def box_for_resolution(box_size: int, pixel_size_A: float, target_resolution_A: float) -> int:
    """Smallest even box ``b <= box_size`` whose Nyquist (``2 * pixel_size_A * box_size / b``)
    is at or finer than ``target_resolution_A`` (at least 8; ``box_size`` if none is smaller).
    """
    b = math.ceil(2.0 * box_size * pixel_size_A / float(target_resolution_A) - 1e-9)
    b += b % 2
    return int(min(box_size, max(8, b)))


def estimate_mass(dataset: Any, n_images: int = 500) -> float:
    """Sum of voxels of the map that explains the images' DC: ``median(sum(I) / CTF(0))``.

    With RELION's CTF sign ``CTF(0) = +Q * scale`` (zero phase shift); images should have a zero
    background mean (``Dataset.normalized()``).
    """
    idx = np.linspace(0, len(dataset) - 1, min(n_images, len(dataset))).astype(np.int64)
    sums = dataset.images(idx).sum(axis=(1, 2), dtype=np.float64)
    if dataset.ctf is None:
        return float(np.median(sums))
    ctf = dataset.ctf.subset(idx)
    ctf0 = np.sin(np.deg2rad(ctf.phase_shift_deg)
                  + np.arctan(ctf.amplitude_contrast / np.sqrt(1 - ctf.amplitude_contrast**2)))
    ctf0 = ctf0 * ctf.scale
    return float(np.median(sums / np.where(np.abs(ctf0) > 1e-3, ctf0, np.nan)))


def estimate_particle_radius(dataset: Any, n_images: int = 2000, fraction: float = 0.95
                             ) -> float:
    """The particle's radius (Å): the radius of the centred disc holding ``fraction`` of the
    images' variance above the noise.

    The mean over images of ``I(x)^2`` (each image phase-flipped with its CTF, which undoes
    the CTF's delocalisation and leaves white noise white) is the noise variance everywhere
    plus the signal's variance where the particles lie; its excess over the noise
    level (the median in the outer ring ``r > 0.45 box``), summed over rings out to that
    ring, reaches ``fraction`` at the returned radius.  On two sets of 10,000 GroEL-GroES
    (1AON) images of 64 px at 5.6 Å made by ``relion_project`` (real 200 kV CTFs, SNR 0.04
    and 0.05) this gives 109 Å, where the truth holds 99 % of its mass (95 % within 95 Å);
    the old default of 0.4 of the box, 143 Å, made the pose grids (points ~ radius^3) 2.3
    times larger.  On balls it overestimates by ~2.5 px (the blur of |CTF| and B-factor).
    The result is clamped to ``[0.15, 0.5]`` of the box.

    Parameters
    ----------
    dataset : Dataset
        Particles, ideally normalised (``Dataset.normalized()``); up to ``n_images`` spread
        over the set are read.
    n_images : int
    fraction : float
        Share of the excess variance inside the radius.
    """
    idx = np.linspace(0, len(dataset) - 1, min(n_images, len(dataset))).astype(np.int64)
    n = dataset.box_size
    power = np.zeros((n, n))
    kx, ky = frequency_grid_2d(n, dataset.pixel_size_A)
    for start in range(0, idx.size, 500):
        part = idx[start:start + 500]
        block = dataset.images(part).astype(np.float64)
        if dataset.ctf is not None:  # phase-flipped: the CTF's delocalisation undone
            flip = np.sign(evaluate_ctf(dataset.ctf.subset(part), kx, ky))
            block = ifft2_centered(fft2_centered(block) * flip).real
        power += (block**2).sum(axis=0)
    power /= idx.size
    k = np.arange(n) - n // 2
    r = np.hypot(*np.meshgrid(k, k, indexing="ij"))
    ring = r.astype(np.int64).ravel()
    outer = int(0.45 * n)
    counts = np.bincount(ring)[: outer + 1]
    level = np.median(power[r > outer])
    # ring means first, then the excess (clipping pixel by pixel would add up the noise)
    per_ring = np.clip(np.bincount(ring, power.ravel())[: outer + 1] / counts - level, 0.0,
                       None) * counts
    total = per_ring.sum()
    psize = dataset.pixel_size_A
    if not total > 0:
        return 0.4 * n * psize
    radius_px = float(np.searchsorted(np.cumsum(per_ring) / total, fraction)) + 0.5
    return float(np.clip(radius_px, 0.15 * n, 0.5 * n) * psize)
