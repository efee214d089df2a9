"""Centred FFTs and centred crop/pad for the device path (array API + its ``fft`` extension).

Same conventions as :mod:`cryonb.fourier` (see ``docs/conventions.md``): arrays indexed
``[..., y, x]`` / ``[z, y, x]``; origin and zero frequency at index ``N // 2`` on every axis;
unnormalised forward transform, ``1 / N**d`` on the inverse.  The FFT comes from the arrays'
own namespace (``xp.fft``: ``numpy.fft``, ``cupy.fft`` (cuFFT), ``array_api_strict.fft``).
Padding is built with ``concat`` (no in-place writes), so it also suits immutable namespaces.
"""

from __future__ import annotations

from typing import Any

from .namespace import complex_dtype, namespace_of

__all__ = [
    "crop_center",
    "fft2_centered",
    "fft3_centered",
    "fourier_indices",
    "ifft2_centered",
    "ifft3_centered",
    "pad_center",
]


def _fftc(x: Any, ndim: int, inverse: bool) -> Any:
    xp = namespace_of(x)
    if not xp.isdtype(x.dtype, "complex floating"):  # the standard's FFTs take complex input
        x = xp.astype(x, complex_dtype(xp, x.dtype))
    axes = tuple(range(-ndim, 0))
    shifted = xp.fft.ifftshift(x, axes=axes)
    out = xp.fft.ifftn(shifted, axes=axes) if inverse else xp.fft.fftn(shifted, axes=axes)
    return xp.fft.fftshift(out, axes=axes)


def fft2_centered(x: Any) -> Any:
    """Unnormalised centred 2D FFT over the last two axes (DC at index N//2); complex output."""
    return _fftc(x, 2, inverse=False)


def ifft2_centered(x: Any) -> Any:
    """Inverse of :func:`fft2_centered` (carries the 1/N^2 factor)."""
    return _fftc(x, 2, inverse=True)


def fft3_centered(x: Any) -> Any:
    """Unnormalised centred 3D FFT over the last three axes (DC at index N//2)."""
    return _fftc(x, 3, inverse=False)


def ifft3_centered(x: Any) -> Any:
    """Inverse of :func:`fft3_centered` (carries the 1/N^3 factor)."""
    return _fftc(x, 3, inverse=True)


def fourier_indices(xp: Any, n: int, dtype: Any = None) -> Any:
    """``arange(n) - n // 2`` in namespace ``xp`` (float64 unless ``dtype`` is given)."""
    return xp.arange(n, dtype=xp.float64 if dtype is None else dtype) - (n // 2)


def crop_center(x: Any, new_n: int, ndim: int) -> Any:
    """Crop the trailing ``ndim`` axes to ``new_n``, keeping index N//2 at new_n//2."""
    n = x.shape[-1]
    if new_n > n:
        raise ValueError(f"cannot crop size {n} to a larger size {new_n}")
    start = n // 2 - new_n // 2
    return x[(..., *(slice(start, start + new_n),) * ndim)]


def pad_center(x: Any, new_n: int, ndim: int) -> Any:
    """Zero-pad the trailing ``ndim`` axes to ``new_n``, keeping the centre N//2."""
    xp = namespace_of(x)
    n = x.shape[-1]
    if new_n < n:
        raise ValueError(f"cannot pad size {n} to a smaller size {new_n}")
    before = new_n // 2 - n // 2
    after = new_n - n - before
    for axis in range(x.ndim - ndim, x.ndim):
        parts = []
        for width in (before, None, after):
            if width is None:
                parts.append(x)
            elif width > 0:
                shape = list(x.shape)
                shape[axis] = width
                parts.append(xp.zeros(tuple(shape), dtype=x.dtype))
        x = xp.concat(parts, axis=axis)
    return x
