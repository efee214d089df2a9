"""Checks to make on a data set before reconstructing: contrast sign and working box size.

* :func:`contrast_scores`: are the particles white (RELION's convention, which cryonb's
  image model and CTF assume) or dark?  Each image is phase-flipped with its CTF (so every
  frequency carries the particle with the sign of the density), low-pass filtered to
  ``resolution_A`` and its mean in a central disc compared with the mean in an outer ring.
  White particles give positive scores; mostly negative scores mean dark particles:
  use :meth:`cryonb.dataset.Dataset.inverted`.
* :func:`box_for_resolution`: the smallest Fourier-cropped box whose Nyquist frequency still
  reaches a target resolution (``Dataset.fourier_cropped``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from .ctf import evaluate_ctf
from .fourier import fft2_centered, fourier_indices, frequency_grid_2d, ifft2_centered
from .viz import low_pass

__all__ = ["box_for_resolution", "contrast_scores"]


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
    smooth = low_pass(flipped, dataset.pixel_size_A, res, ndim=2).astype(np.float64)
    k = fourier_indices(n)
    r = np.hypot(k[:, None], k[None, :]) / n
    disc = r < inner_fraction
    ring = (r >= ring_fractions[0]) & (r < ring_fractions[1])
    spread = smooth.std(axis=(1, 2))
    spread[spread == 0] = 1.0
    return (smooth[:, disc].mean(axis=1) - smooth[:, ring].mean(axis=1)) / spread


def box_for_resolution(box_size: int, pixel_size_A: float, target_resolution_A: float) -> int:
    """Smallest even box ``b <= box_size`` whose Nyquist (``2 * pixel_size_A * box_size / b``)
    is at or finer than ``target_resolution_A`` (at least 8; ``box_size`` if none is smaller).
    """
    b = math.ceil(2.0 * box_size * pixel_size_A / float(target_resolution_A) - 1e-9)
    b += b % 2
    return int(min(box_size, max(8, b)))
