"""The image-formation model: volume -> CTF-modulated, shifted, band-limited 2D projections.

``image = IFFT2[ mask(k) * CTF(k) * exp(2 pi i k . origin) * slice_R(FFT3[volume])(k) ]``

with RELION's conventions throughout (:mod:`cryonb.rotations`, :mod:`cryonb.ctf`,
:func:`cryonb.projection.shift_phases`): unnormalised centred FFTs, so a projection with no
CTF is the plain sum of voxels along the viewing direction, exactly as ``relion_project``
computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from .backend import Backend, get_backend
from .ctf import CTFParams, evaluate_ctf
from .fourier import band_limit_mask, fft2_centered, fourier_indices, ifft2_centered
from .projection import Projector, shift_phases

__all__ = ["ImageModel"]


@dataclass(frozen=True)
class ImageModel:
    """Forward operator (volume -> images) and its exact adjoint.

    Parameters
    ----------
    box_size : int
        N: volumes are (N, N, N) and images (N, N), both indexed with the centre at N//2.
    pixel_size_A : float
        Pixel (and voxel) size in Å.
    max_freq_invA : float or None
        Band limit w in 1/Å: only frequencies with |k| < w are kept.  ``None`` keeps the
        whole Nyquist disc |k| < 1 / (2 pixel_size_A).
    pad : int
        Fourier oversampling of the projector (2 = RELION's default).
    gridding_correction : bool
        See :class:`cryonb.projection.Projector`.
    ctf_convention : {"relion", "ctffind"}
        Sign of the CTF (see :mod:`cryonb.ctf`).
    backend : {"numpy", "cupy"}, Backend or None
        ``None`` follows :func:`cryonb.backend.use_backend`.
    """

    box_size: int
    pixel_size_A: float
    max_freq_invA: float | None = None
    pad: int = 2
    gridding_correction: bool = True
    ctf_convention: Literal["relion", "ctffind"] = "relion"
    backend: str | Backend | None = None

    def __post_init__(self) -> None:
        if not self.pixel_size_A or self.pixel_size_A <= 0:
            raise ValueError(f"pixel_size_A must be positive, got {self.pixel_size_A}")
        if self.max_freq_invA is not None and self.max_freq_invA <= 0:
            raise ValueError(f"max_freq_invA must be positive, got {self.max_freq_invA}")

    @property
    def _backend(self) -> Backend:
        return get_backend(self.backend)

    @cached_property
    def projector(self) -> Projector:
        """The :class:`Projector` used by this model."""
        return Projector(self.box_size, pad=self.pad,
                         gridding_correction=self.gridding_correction, backend=self.backend)

    @cached_property
    def mask(self) -> Any:
        """Boolean (N, N) band-limit disc on the centred grid."""
        return band_limit_mask(self.box_size, pixel_size_A=self.pixel_size_A,
                               max_freq_invA=self.max_freq_invA, backend=self._backend)

    @cached_property
    def coords_px(self) -> Any:
        """(M, 2) frequencies (kx, ky) in Fourier pixels of the points inside :attr:`mask`."""
        xp = self._backend.xp
        k = fourier_indices(self.box_size, self._backend)
        ky, kx = xp.meshgrid(k, k, indexing="ij")
        return xp.stack([kx[self.mask], ky[self.mask]], axis=-1)

    @property
    def freqs_invA(self) -> Any:
        """(M, 2) frequencies (kx, ky) in 1/Å of the points inside :attr:`mask`."""
        return self.coords_px / (self.box_size * self.pixel_size_A)

    # ------------------------------------------------------------------ point form
    def modulation(self, n: int, shifts_A: Any = None, ctf: CTFParams | None = None,
                   dtype: Any = np.complex128) -> Any:
        """Per-image factor CTF(k) * phase(k) at the band-limited points, (n, M) or None."""
        xp = self._backend.xp
        factor = None
        freqs = self.freqs_invA
        if ctf is not None:
            if len(ctf) != n:
                raise ValueError(f"got {len(ctf)} CTFs for {n} images")
            factor = evaluate_ctf(ctf, freqs[:, 0], freqs[:, 1], convention=self.ctf_convention,
                                  backend=self._backend).astype(dtype)
        if shifts_A is not None:
            shifts_A = xp.asarray(shifts_A, dtype=np.float64).reshape(-1, 2)
            if shifts_A.shape[0] != n:
                raise ValueError(f"got {shifts_A.shape[0]} shifts for {n} images")
            phase = shift_phases(freqs, shifts_A).astype(dtype)
            factor = phase if factor is None else factor * phase
        return factor

    def forward_points(self, volume_ft: Any, rotations: Any, shifts_A: Any = None,
                       ctf: CTFParams | None = None) -> Any:
        """Band-limited Fourier samples of the images, (B, M), from a prepared Fourier volume.

        ``volume_ft`` comes from ``model.projector.volume_to_fourier(volume)``; reuse it across
        batches when the volume does not change.
        """
        values = self.projector.slice(volume_ft, rotations, self.coords_px)
        factor = self.modulation(values.shape[0], shifts_A, ctf, dtype=values.dtype)
        return values if factor is None else values * factor

    def adjoint_points(self, values: Any, rotations: Any, shifts_A: Any = None,
                       ctf: CTFParams | None = None) -> Any:
        """Adjoint of :meth:`forward_points`: (B, M) -> padded Fourier volume (P, P, P)."""
        factor = self.modulation(values.shape[0], shifts_A, ctf, dtype=values.dtype)
        if factor is not None:
            values = values * factor.conj()
        return self.projector.backproject(values, rotations, self.coords_px)

    # ------------------------------------------------------------------ image form
    def forward(self, volume: Any, rotations: Any, shifts_A: Any = None,
                ctf: CTFParams | None = None, *, real_space: bool = True) -> Any:
        """Simulate images.

        Parameters
        ----------
        volume : (N, N, N) real density, [z, y, x], float32 or float64
        rotations : (B, 3, 3) RELION-convention rotation matrices
        shifts_A : (B, 2) RELION origins (x, y) in Å, or None
        ctf : CTFParams of length B, or None
        real_space : bool
            True: real images (B, N, N).  False: their centred unnormalised 2D FT (B, N, N),
            zero outside the band-limit disc.

        Returns
        -------
        array (B, N, N), real (same precision as ``volume``) or complex
        """
        xp = self._backend.xp
        volume = xp.asarray(volume)
        volume_ft = self.projector.volume_to_fourier(volume)
        values = self.forward_points(volume_ft, rotations, shifts_A, ctf)
        n = self.box_size
        spectra = xp.zeros((values.shape[0], n, n), dtype=values.dtype)
        spectra[:, self.mask] = values
        if not real_space:
            return spectra
        return ifft2_centered(spectra).real.astype(volume.dtype, copy=False)

    def adjoint(self, images: Any, rotations: Any, shifts_A: Any = None,
                ctf: CTFParams | None = None, *, real_space: bool = True) -> Any:
        """Exact adjoint of :meth:`forward` (real inner product): (B, N, N) -> (N, N, N) real."""
        xp = self._backend.xp
        images = xp.asarray(images)
        n = self.box_size
        if images.shape[-2:] != (n, n):
            raise ValueError(f"expected images of shape (B, {n}, {n}), got {images.shape}")
        if real_space:
            complex_dtype = np.complex64 if images.dtype == np.float32 else np.complex128
            spectra = fft2_centered(images.astype(complex_dtype)) / float(n * n)
        else:
            spectra = images
        values = spectra[:, self.mask]
        volume_ft = self.adjoint_points(values, rotations, shifts_A, ctf)
        return self.projector.fourier_to_volume_adjoint(volume_ft)
