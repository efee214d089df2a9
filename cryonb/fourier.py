"""Centred FFTs, frequency grids, radial shells, band limits, Fourier cropping and padding.

Conventions (see ``docs/conventions.md``)
-----------------------------------------
* Arrays are indexed ``[..., y, x]`` (images) and ``[z, y, x]`` (volumes).
* The real-space origin and the zero frequency both sit at index ``N // 2`` on every axis,
  for even and odd ``N`` (``ifftshift`` before, ``fftshift`` after the transform).
* The forward transform is **unnormalised** (NumPy's default):
  ``F[k] = sum_x f[x] exp(-2 pi i k.x / N)``; the inverse carries ``1 / N**d``.
  With this choice the 2D FT of a projection (a plain sum of voxels along z, as
  ``relion_project`` computes it) equals the central slice of the 3D FT, with no factor.
* Frequencies are returned in cycles per Å (1/Å) when a pixel size is given, else in
  Fourier pixels (integer frequency index ``k``; physical frequency ``k / (N * pixel_size_A)``).

All functions take arrays of any backend (NumPy or CuPy) and work on the trailing axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import Backend, backend_of, get_backend

__all__ = [
    "band_limit_mask",
    "crop_center",
    "fft2_centered",
    "fft3_centered",
    "flip_hand",
    "fourier_crop",
    "fourier_indices",
    "fourier_pad",
    "frequency_grid_2d",
    "frequency_grid_3d",
    "ifft2_centered",
    "ifft3_centered",
    "nyquist_invA",
    "pad_center",
    "radial_average",
    "radial_index",
]


def nyquist_invA(pixel_size_A: float) -> float:
    """The Nyquist frequency ``1 / (2 pixel_size_A)`` in 1/Å: the one place of this formula."""
    return 0.5 / float(pixel_size_A)


def _fftc(x: Any, axes: tuple[int, ...], inverse: bool) -> Any:
    bk = backend_of(x)
    f = bk.fft
    shifted = f.ifftshift(x, axes=axes)
    out = f.ifftn(shifted, axes=axes) if inverse else f.fftn(shifted, axes=axes)
    return f.fftshift(out, axes=axes)


def fft2_centered(x: Any) -> Any:
    """Unnormalised centred 2D FFT over the last two axes (DC at index N//2)."""
    return _fftc(x, (-2, -1), inverse=False)


def ifft2_centered(x: Any) -> Any:
    """Inverse of :func:`fft2_centered` (carries the 1/N^2 factor)."""
    return _fftc(x, (-2, -1), inverse=True)


def fft3_centered(x: Any) -> Any:
    """Unnormalised centred 3D FFT over the last three axes (DC at index N//2)."""
    return _fftc(x, (-3, -2, -1), inverse=False)


def ifft3_centered(x: Any) -> Any:
    """Inverse of :func:`fft3_centered` (carries the 1/N^3 factor)."""
    return _fftc(x, (-3, -2, -1), inverse=True)


def fourier_indices(n: int, backend: Backend | None = None, dtype: Any = np.float64) -> Any:
    """Integer frequency (or real-space) indices ``arange(n) - n//2`` of a centred axis."""
    xp = get_backend(backend).xp
    return xp.arange(n, dtype=dtype) - (n // 2)


def frequency_grid_2d(
    n: int, pixel_size_A: float | None = None, backend: Backend | None = None
) -> tuple[Any, Any]:
    """Centred 2D frequency grid.

    Returns
    -------
    kx, ky : arrays, shape (n, n), indexed [y, x]
        Frequencies in 1/Å if ``pixel_size_A`` is given, else in Fourier pixels.
    """
    k = fourier_indices(n, backend)
    if pixel_size_A is not None:
        k = k / (n * float(pixel_size_A))
    xp = get_backend(backend).xp
    ky, kx = xp.meshgrid(k, k, indexing="ij")
    return kx, ky


def frequency_grid_3d(
    n: int, pixel_size_A: float | None = None, backend: Backend | None = None
) -> tuple[Any, Any, Any]:
    """Centred 3D frequency grid ``(kx, ky, kz)``, each shaped (n, n, n) and indexed [z, y, x]."""
    k = fourier_indices(n, backend)
    if pixel_size_A is not None:
        k = k / (n * float(pixel_size_A))
    xp = get_backend(backend).xp
    kz, ky, kx = xp.meshgrid(k, k, k, indexing="ij")
    return kx, ky, kz


def radial_index(shape: tuple[int, ...], backend: Backend | None = None) -> Any:
    """Shell index ``round(|k|)`` in Fourier pixels for a centred grid (RELION's FSC shells).

    Parameters
    ----------
    shape : tuple of int
        A cubic or square shape, ``(n, n)`` or ``(n, n, n)``.
    """
    n = shape[-1]
    if any(s != n for s in shape):
        raise ValueError(f"radial_index needs a square or cubic shape, got {shape}")
    if len(shape) == 2:
        kx, ky = frequency_grid_2d(n, backend=backend)
        r = (kx**2 + ky**2) ** 0.5
    elif len(shape) == 3:
        kx, ky, kz = frequency_grid_3d(n, backend=backend)
        r = (kx**2 + ky**2 + kz**2) ** 0.5
    else:
        raise ValueError(f"radial_index supports 2D and 3D shapes, got {shape}")
    xp = get_backend(backend).xp
    return xp.rint(r).astype(xp.int64)


def radial_average(x: Any, n_shells: int | None = None) -> Any:
    """Mean of ``x`` over shells ``round(|k|) = 0 .. n_shells-1`` of a centred square/cube.

    Works on the trailing 2 or 3 axes depending on whether ``x.ndim`` is 2 or 3.
    """
    bk = backend_of(x)
    xp = bk.xp
    idx = radial_index(x.shape, backend=bk).ravel()
    n_shells = x.shape[-1] // 2 + 1 if n_shells is None else n_shells
    keep = idx < n_shells
    sums = xp.bincount(idx[keep], weights=x.ravel()[keep].real, minlength=n_shells)
    counts = xp.bincount(idx[keep], minlength=n_shells)
    return sums / xp.maximum(counts, 1)


def band_limit_mask(
    n: int,
    radius_px: float | None = None,
    *,
    pixel_size_A: float | None = None,
    max_freq_invA: float | None = None,
    backend: Backend | None = None,
) -> Any:
    """Boolean disc of the centred 2D grid with ``|k| < radius`` (strict).

    Give either ``radius_px`` (Fourier pixels) or ``pixel_size_A`` and ``max_freq_invA``
    (radius = ``max_freq_invA * n * pixel_size_A``).  The default radius is ``n / 2``
    (Nyquist), which excludes the unpaired Nyquist row and column of an even box, so the
    masked spectrum of a real image stays Hermitian.
    """
    if radius_px is None:
        if max_freq_invA is not None:
            if pixel_size_A is None:
                raise ValueError("max_freq_invA needs pixel_size_A")
            radius_px = float(max_freq_invA) * n * float(pixel_size_A)
        else:
            radius_px = n / 2
    radius_px = min(float(radius_px), n / 2)
    kx, ky = frequency_grid_2d(n, backend=backend)
    return (kx**2 + ky**2) < radius_px**2


def crop_center(x: Any, new_n: int, ndim: int = 2) -> Any:
    """Crop the trailing ``ndim`` axes of ``x`` to ``new_n``, keeping index N//2 at new_n//2."""
    n = x.shape[-1]
    if new_n > n:
        raise ValueError(f"cannot crop size {n} to a larger size {new_n}")
    start = n // 2 - new_n // 2
    sl = (Ellipsis,) + (slice(start, start + new_n),) * ndim
    return x[sl]


def pad_center(x: Any, new_n: int, ndim: int = 2, value: float = 0.0) -> Any:
    """Zero-pad the trailing ``ndim`` axes of ``x`` to ``new_n``, keeping the centre N//2."""
    xp = backend_of(x).xp
    n = x.shape[-1]
    if new_n < n:
        raise ValueError(f"cannot pad size {n} to a smaller size {new_n}")
    out = xp.full(x.shape[:-ndim] + (new_n,) * ndim, value, dtype=x.dtype)
    start = new_n // 2 - n // 2
    sl = (Ellipsis,) + (slice(start, start + n),) * ndim
    out[sl] = x
    return out


def fourier_crop(x: Any, new_n: int, ndim: int = 2) -> Any:
    """Downsample real images (ndim=2) or volumes (ndim=3) by cropping their spectrum.

    The pixel size grows by ``N / new_n``.  Values are scaled by ``(new_n / N)**ndim`` so that
    a smooth signal keeps its real-space values (the mean is preserved).  For an even
    ``new_n`` the unpaired Nyquist row/column is zeroed so the result is real.
    """
    n = x.shape[-1]
    if new_n == n:
        return x
    if new_n > n:
        raise ValueError(f"fourier_crop: new size {new_n} is larger than {n}; use fourier_pad")
    fft = fft2_centered if ndim == 2 else fft3_centered
    ifft = ifft2_centered if ndim == 2 else ifft3_centered
    spec = crop_center(fft(x), new_n, ndim)
    spec = _zero_unpaired_nyquist(spec, ndim)
    out = ifft(spec).real * (new_n / n) ** ndim
    return out.astype(x.dtype, copy=False)


def fourier_pad(x: Any, new_n: int, ndim: int = 2) -> Any:
    """Upsample real images or volumes by zero-padding their spectrum (inverse of crop).

    The pixel size shrinks by ``n / new_n``; values are scaled by ``(new_n / n)**ndim`` so that
    real-space values (and the mean) are kept.  Every Fourier coefficient below the input's
    Nyquist frequency keeps its physical frequency (1/Å) and its value: a map padded to the
    images' box (``map_fullbox.mrc``) has the same FSC against a reference as the map itself,
    shell for shell, and nothing above the input's Nyquist.

    Exactly the right inverse of :func:`fourier_crop`: ``fourier_crop(fourier_pad(x, m), n)``
    returns ``x`` for any ``x`` without content on an even box's unpaired Nyquist planes (odd
    ``n``, or any output of :func:`fourier_crop`); those planes are zeroed first, as
    :func:`fourier_crop` does.  It is also ``(new_n / n)**ndim`` times the adjoint of
    :func:`fourier_crop` from ``new_n`` to ``n``.

    Parameters
    ----------
    x : array, shape (..., n, n) for ``ndim=2`` or (..., n, n, n) for ``ndim=3``
        Real images ``[..., y, x]`` or volumes ``[..., z, y, x]``.
    new_n : int
        The new box, px (``>= n``).
    ndim : int
        2 (images) or 3 (volumes).

    Returns
    -------
    array, shape (..., new_n, ..., new_n), the dtype of ``x``
    """
    n = x.shape[-1]
    if new_n == n:
        return x
    fft = fft2_centered if ndim == 2 else fft3_centered
    ifft = ifft2_centered if ndim == 2 else ifft3_centered
    spec = _zero_unpaired_nyquist(fft(x), ndim)
    out = ifft(pad_center(spec, new_n, ndim)).real * (new_n / n) ** ndim
    return out.astype(x.dtype, copy=False)


def flip_hand(volume: Any) -> Any:
    """The mirror image of a volume along z about its centre: the other hand.

    ``out(x, y, z) = volume(x, y, -z)`` with the origin at index ``N // 2`` on every axis (the
    convention of this module), so the centre voxel stays in place and the mirror of a map
    centred in its box is centred too.  On an even box the plane ``z = -N/2`` has no partner
    and maps onto itself.  In Fourier space this is ``F(kx, ky, -kz)``.  The pixel size is
    unchanged.  Applying it twice returns the input.

    Parameters
    ----------
    volume : array, shape (..., N, N, N), indexed [z, y, x]

    Returns
    -------
    array, same shape and dtype
    """
    xp = backend_of(volume).xp
    n = volume.shape[-3]
    out = xp.flip(volume, axis=-3)
    return xp.roll(out, 1, axis=-3) if n % 2 == 0 else out


def _zero_unpaired_nyquist(spec: Any, ndim: int) -> Any:
    n = spec.shape[-1]
    if n % 2:
        return spec
    spec = spec.copy()
    for axis in range(1, ndim + 1):
        idx = [slice(None)] * spec.ndim
        idx[-axis] = 0
        spec[tuple(idx)] = 0
    return spec


def lowpass(x: Any, pixel_size_A: float, max_freq_invA: float, *, ndim: int = 3,
            edge_px: float = 2.0, strict: bool = False) -> Any:
    """Low-pass real images (ndim=2) or volumes (ndim=3) at ``max_freq_invA`` (1/Å).

    Frequencies below ``max_freq_invA`` are kept, with a raised-cosine edge ``edge_px`` Fourier
    pixels wide above it; with ``strict`` the edge lies below it instead, so that nothing above
    ``max_freq_invA`` remains (e.g. the halves' start after a gold-standard split).  The result
    keeps the input's dtype.
    """
    n = x.shape[-1]
    radius_px = float(max_freq_invA) * n * float(pixel_size_A)
    if strict:
        radius_px = max(radius_px - edge_px, 0.5)
    if ndim == 2:
        kx, ky = frequency_grid_2d(n, backend=backend_of(x))
        r = (kx**2 + ky**2) ** 0.5
        fft, ifft = fft2_centered, ifft2_centered
    else:
        kx, ky, kz = frequency_grid_3d(n, backend=backend_of(x))
        r = (kx**2 + ky**2 + kz**2) ** 0.5
        fft, ifft = fft3_centered, ifft3_centered
    xp = backend_of(x).xp
    t = xp.clip((r - radius_px) / max(edge_px, 1e-9), 0.0, 1.0)
    window = 0.5 * (1.0 + xp.cos(np.pi * t))
    return ifft(fft(x) * window).real.astype(x.dtype, copy=False)
