"""Projection matching: particle images beside the map's projections at their poses.

The nearest thing in an ab initio job to 2D classes: each particle next to what the forward
model (:class:`cryonb.image_model.ImageModel`: slice, CTF, origin, band limit; Eqs. 1-2 of
Brubaker, Punjani & Fleet 2015) predicts for it at its MAP pose under the map.  A good map and
good poses give reprojections that look like low-pass filtered particles; a wrong pose or map
shows at once.

For each particle the reprojection is scaled by the least-squares factor that best fits the
band-limited image (the map's density scale is arbitrary), and the agreement is the Pearson
correlation of the two within the band limit and the particle circle::

    match = projection_matching(volume, pixel_size_A, dataset, indices, max_freq_invA=w)
    match.correlation          # (k,) one per particle

Conventions (``docs/conventions.md``): volumes ``[z, y, x]``, images ``[y, x]``, RELION
rotations and origins (Å).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .fourier import fft2_centered, fourier_indices, ifft2_centered
from .image_model import ImageModel

__all__ = ["ProjectionMatch", "band_limited", "projection_matching", "reproject"]


@dataclass(frozen=True, eq=False)
class ProjectionMatch:
    """Particles and the map's projections at their poses (:func:`projection_matching`).

    Attributes
    ----------
    indices : (k,) int
        The particles' indices in the dataset.
    images : (k, N, N)
        The particle images at the map's box, band-limited like the reprojections.
    reprojections : (k, N, N)
        ``ImageModel.forward`` of the map at each particle's pose, origin and CTF, scaled by
        :attr:`scale`.
    correlation : (k,)
        Pearson correlation of image and reprojection inside the particle circle.
    scale : (k,)
        Least-squares factor applied to each reprojection.
    pixel_size_A : float
    max_freq_invA : float or None
        The band limit both were filtered to (None: Nyquist).
    """

    indices: NDArray
    images: NDArray
    reprojections: NDArray
    correlation: NDArray
    scale: NDArray
    pixel_size_A: float
    max_freq_invA: float | None

    def __len__(self) -> int:
        return len(self.indices)


def band_limited(images: ArrayLike, pixel_size_A: float, max_freq_invA: float | None) -> NDArray:
    """``images`` (..., N, N) with every frequency ``|k| >= max_freq_invA`` set to zero (the
    :class:`~cryonb.image_model.ImageModel`'s sharp disc); unchanged for None."""
    arr = np.asarray(images, dtype=np.float64)
    if max_freq_invA is None:
        return arr
    model = ImageModel(arr.shape[-1], pixel_size_A, max_freq_invA=max_freq_invA)
    return ifft2_centered(fft2_centered(arr) * np.asarray(model.mask)).real


def reproject(volume: ArrayLike, pixel_size_A: float, rotations: ArrayLike,
              shifts_A: ArrayLike | None = None, ctf: Any = None, *,
              max_freq_invA: float | None = None) -> NDArray:
    """Projections of ``volume`` (N, N, N) at ``rotations`` (k, 3, 3), RELION origins
    ``shifts_A`` (k, 2) and CTFs (:class:`~cryonb.ctf.CTFParams` of length k, or None), band
    limit ``max_freq_invA`` (1/Å): :meth:`cryonb.image_model.ImageModel.forward`."""
    vol = np.asarray(volume, dtype=np.float64)
    model = ImageModel(vol.shape[0], pixel_size_A, max_freq_invA=max_freq_invA)
    return np.asarray(model.forward(vol, np.asarray(rotations, dtype=np.float64), shifts_A, ctf))


def _circle(n: int, radius_px: float) -> NDArray:
    k = fourier_indices(n)
    y, x = np.meshgrid(k, k, indexing="ij")
    return x * x + y * y <= radius_px * radius_px


def projection_matching(volume: ArrayLike, pixel_size_A: float, dataset: Any,
                        indices: ArrayLike | None = None, *,
                        rotations: ArrayLike | None = None, shifts_A: ArrayLike | None = None,
                        max_freq_invA: float | None = None,
                        radius_px: float | None = None) -> ProjectionMatch:
    """Particles of ``dataset`` beside the projections of ``volume`` at their poses.

    Parameters
    ----------
    volume : (N, N, N) map ``[z, y, x]``, e.g. a run's ``map.mrc``
    pixel_size_A : float
        The map's voxel size.  The dataset is Fourier-cropped to the map's box ``N`` first
        (a run's ``particles.star`` points at the original stacks); its pixel size must then
        equal the map's.
    dataset : :class:`cryonb.dataset.Dataset`
        Images, CTFs and (unless given) the poses: ``dataset.rotations`` / ``shifts_A``, e.g.
        the MAP poses of a run's ``particles.star``.
    indices : (k,) particles (default: all)
    rotations, shifts_A : (k, 3, 3) and (k, 2) poses to use instead of the dataset's
    max_freq_invA : band limit (1/Å) of the reprojections and of the images compared with
        them, e.g. the run's ``final_max_freq_invA`` (None: Nyquist)
    radius_px : particle circle for the correlation (default: ``0.45 N``)

    Returns
    -------
    ProjectionMatch
    """
    vol = np.asarray(volume, dtype=np.float64)
    n = vol.shape[0]
    ds = dataset if dataset.box_size == n else dataset.fourier_cropped(n)
    if abs(ds.pixel_size_A - pixel_size_A) > 1e-3 * pixel_size_A:
        raise ValueError(f"the particles at the map's box ({n} px) have {ds.pixel_size_A:.4g} Å "
                         f"pixels and the map {pixel_size_A:.4g} Å: give the map that goes "
                         "with these particles (the run's map.mrc and particles.star)")
    idx = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    if rotations is None:
        if ds.rotations is None:
            raise ValueError("the dataset has no poses: pass rotations (e.g. read a run's "
                             "particles.star)")
        rotations = ds.rotations[idx]
        if shifts_A is None and ds.shifts_A is not None:
            shifts_A = ds.shifts_A[idx]
    ctf = None if ds.ctf is None else ds.ctf.subset(idx)
    proj = reproject(vol, pixel_size_A, rotations, shifts_A, ctf, max_freq_invA=max_freq_invA)
    images = band_limited(ds.images(idx), pixel_size_A, max_freq_invA)
    inside = _circle(n, 0.45 * n if radius_px is None else radius_px)
    a = images[:, inside]
    b = proj[:, inside]
    a0 = a - a.mean(axis=1, keepdims=True)
    b0 = b - b.mean(axis=1, keepdims=True)
    bb = np.einsum("ij,ij->i", b0, b0)
    ab = np.einsum("ij,ij->i", a0, b0)
    aa = np.einsum("ij,ij->i", a0, a0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(aa * bb > 0, ab / np.sqrt(aa * bb), 0.0)
        scale = np.where(bb > 0, ab / bb, 0.0)
    offset = a.mean(axis=1) - scale * b.mean(axis=1)
    scaled = proj * scale[:, None, None] + offset[:, None, None]
    return ProjectionMatch(idx, images, scaled, corr, scale, float(pixel_size_A),
                           None if max_freq_invA is None else float(max_freq_invA))
