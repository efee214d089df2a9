"""Central-slice projection in Fourier space and its exact adjoint (back-projection).

By the Fourier slice theorem the 2D FT of the projection ``P(x, y) = sum_z V(R (x, y, z))``
equals the 3D FT of ``V`` sampled on the plane ``R @ (kx, ky, 0)`` (RELION's convention,
see :mod:`cryonb.rotations`).  :class:`Projector` implements

``volume (N^3, real) --gridding pre-multiplication--> zero-pad to P = pad * N
--centred unnormalised 3D FFT--> trilinear sampling at pad * R @ (kx, ky, 0)``

and the exact adjoint of that chain.  Frequencies ``(kx, ky)`` are given in Fourier pixels of
the ``N``-box (``k / (N * pixel_size_A)`` in 1/Å).  Oversampling (``pad = 2``, as RELION's
default) reduces the interpolation error; the gridding correction divides the volume by the
real-space image of the trilinear kernel, ``sinc^2(x / P)`` per axis, as RELION does.

The padded 3D transforms are computed axis by axis and pruned: the forward transform skips the
lines that are all zero padding, the adjoint computes only the ``N^3`` outputs it keeps (and
accepts the centred sub-cube of a band-limited Fourier volume, :meth:`Projector.support_size`);
on the NumPy backend they run on all cores (``scipy.fft``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import Backend, backend_of, get_backend
from .fourier import fourier_indices

__all__ = ["Projector", "shift_phases"]


def shift_phases(freqs_invA: Any, shifts_A: Any) -> Any:
    """Phase ramps that move images by RELION origins.

    ``image(x) = projection(x + origin)`` becomes ``exp(+2 pi i k . origin)`` in Fourier space
    (NumPy's forward-FFT sign), so the particle centre appears at ``-origin``.

    Parameters
    ----------
    freqs_invA : array (M, 2)
        Frequencies ``(kx, ky)`` in 1/Å.
    shifts_A : array (B, 2)
        Origins ``(x, y)`` in Å (``_rlnOriginXAngst``, ``_rlnOriginYAngst``).

    Returns
    -------
    complex array (B, M)
    """
    xp = backend_of(freqs_invA).xp
    shifts = xp.asarray(shifts_A, dtype=freqs_invA.dtype)
    phase = 2 * np.pi * (shifts[:, 0:1] * freqs_invA[None, :, 0]
                         + shifts[:, 1:2] * freqs_invA[None, :, 1])
    return xp.exp(1j * phase)


def _dft_lines(bk: Backend, a: Any, axis: int, center_in: int, length: int, lo: int, hi: int,
               sign: int, scale: Any = None) -> Any:
    """Centred DFT of length ``length`` along ``axis``, evaluated at the positions ``lo:hi``.

    ``out[..., x - lo, ...] = scale[x - lo] sum_j a[..., j, ...] exp(sign 2 pi i (j - center_in)
    x / length)`` for the integer positions ``lo <= x < hi`` relative to the centre
    (``hi - lo <= length``): the input is a centred window of a zero-padded line of ``length``
    samples, unnormalised; ``scale`` is an optional real factor per output position.
    """
    xp = bk.xp
    if a.shape[axis] > length or hi - lo > length:
        raise ValueError(f"a line of {a.shape[axis]} samples or {hi - lo} outputs do not fit a "
                         f"transform of {length}")
    if bk.is_numpy:
        import scipy.fft

        fn = scipy.fft.ifft if sign > 0 else scipy.fft.fft
        f = fn(a, n=length, axis=axis, norm="forward" if sign > 0 else "backward",
               workers=os.cpu_count() or 1)
    else:
        f = (bk.fft.ifft(a, n=length, axis=axis) * length if sign > 0
             else bk.fft.fft(a, n=length, axis=axis))
    pos = np.arange(lo, hi)
    phase = np.exp(-sign * 2j * np.pi * center_in * pos / length)
    if scale is not None:
        phase = phase * scale
    shape = [1] * f.ndim
    shape[axis] = hi - lo
    phase = xp.asarray(phase.astype(f.dtype).reshape(shape))
    out_shape = list(f.shape)
    out_shape[axis] = hi - lo
    out = xp.empty(out_shape, dtype=f.dtype)

    def part(start: int, stop: int) -> tuple[slice, ...]:
        sl = [slice(None)] * f.ndim
        sl[axis] = slice(start, stop)
        return tuple(sl)

    n_neg = max(0, min(0, hi) - lo)  # positions x < 0 are at f[length + x]
    if n_neg:
        xp.multiply(f[part(length + lo, length + lo + n_neg)], phase[part(0, n_neg)],
                    out=out[part(0, n_neg)])
    if hi - lo > n_neg:
        start = max(lo, 0)
        xp.multiply(f[part(start, hi)], phase[part(n_neg, hi - lo)],
                    out=out[part(n_neg, hi - lo)])
    return out


@dataclass(frozen=True)
class Projector:
    """Fourier-slice operator for volumes of ``box_size``^3 voxels.

    Parameters
    ----------
    box_size : int
        N, the real-space box of the volume and images (even or odd).
    pad : int
        Oversampling factor of the Fourier grid (1 = none, 2 = RELION's default).
    gridding_correction : bool
        Pre-divide the volume by the trilinear kernel's real-space image.
    backend : {"numpy", "cupy"}, Backend or None
        Array backend; ``None`` follows :func:`cryonb.backend.use_backend`.
    use_numba : bool or None
        Use the numba kernels (NumPy backend only); ``None`` = whenever possible.
    """

    box_size: int
    pad: int = 2
    gridding_correction: bool = True
    backend: str | Backend | None = None
    use_numba: bool | None = None

    def __post_init__(self) -> None:
        if self.box_size < 2:
            raise ValueError(f"box_size must be >= 2, got {self.box_size}")
        if self.pad < 1 or int(self.pad) != self.pad:
            raise ValueError(f"pad must be a positive integer, got {self.pad}")

    @property
    def padded_size(self) -> int:
        """P = pad * N, the size of the Fourier grid."""
        return self.pad * self.box_size

    @property
    def _backend(self) -> Backend:
        return get_backend(self.backend)

    def _numba(self) -> bool:
        if not self._backend.is_numpy:
            return False
        return True if self.use_numba is None else bool(self.use_numba)

    def _gridding_weights(self, dtype: Any) -> Any:
        """Separable real-space factor 1 / sinc^2(x / P), shape (N, N, N)."""
        xp = self._backend.xp
        x = fourier_indices(self.box_size, self._backend) / self.padded_size
        w = 1.0 / xp.sinc(x) ** 2
        return (w[:, None, None] * w[None, :, None] * w[None, None, :]).astype(dtype)

    def volume_to_fourier(self, volume: Any) -> Any:
        """Real volume (N, N, N) -> padded centred Fourier volume (P, P, P), complex.

        The centred unnormalised 3D FFT of the volume zero-padded to ``P`` (real space centre
        ``N // 2`` at ``P // 2``), computed axis by axis without the all-zero lines.
        """
        bk = self._backend
        xp = bk.xp
        volume = xp.asarray(volume)
        n, p = self.box_size, self.padded_size
        if volume.shape != (n, n, n):
            raise ValueError(f"expected a volume of shape {(n, n, n)}, got {volume.shape}")
        if self.gridding_correction:
            volume = volume * self._gridding_weights(volume.dtype)
        cdt = np.complex64 if volume.dtype == np.float32 else np.complex128
        out = volume.astype(cdt)
        for axis in (2, 1, 0):
            out = _dft_lines(bk, out, axis, n // 2, p, -(p // 2), p - p // 2, sign=-1)
        return out

    def support_size(self, max_freq_px: float) -> int:
        """Side ``L`` of the centred sub-cube of the padded Fourier grid that trilinear slicing
        and back-projection at frequencies ``|k| <= max_freq_px`` (N-box pixels) can touch.

        The sub-cube has centre ``L // 2`` at ``P // 2``; ``L = P`` when the support reaches the
        edge of the grid.  :meth:`crop_support` cuts it out, :meth:`fourier_to_volume_adjoint`
        accepts it.
        """
        p = self.padded_size
        r = int(np.ceil(float(max_freq_px) * self.pad)) + 1
        if p // 2 - r < 0 or p // 2 + r > p - 1:
            return p
        return 2 * r + 1

    def crop_support(self, volume_ft: Any, size: int) -> Any:
        """The centred ``(size, size, size)`` sub-cube of a padded Fourier volume (a copy)."""
        p = self.padded_size
        if size == p:
            return volume_ft
        lo = p // 2 - size // 2
        sl = slice(lo, lo + size)
        return volume_ft[sl, sl, sl].copy()

    def fourier_to_volume_adjoint(self, volume_ft: Any) -> Any:
        """Exact adjoint of :meth:`volume_to_fourier` (real inner product): (P,P,P) -> (N,N,N).

        ``volume_ft`` may also be a centred ``(L, L, L)`` sub-cube (:meth:`support_size`) of a
        padded volume that is zero outside it; the result is the same.  Only the ``N^3``
        real-space samples kept by the adjoint of the padding are transformed.
        """
        bk = self._backend
        p, n = self.padded_size, self.box_size
        size = volume_ft.shape[0]
        if volume_ft.shape != (size, size, size) or size > p:
            raise ValueError(f"expected a cube of side <= {p}, got {volume_ft.shape}")
        real_dtype = np.float32 if volume_ft.dtype == np.complex64 else np.float64
        # the separable gridding correction is applied per axis with the output phases
        w = None
        if self.gridding_correction:
            w = 1.0 / np.sinc((np.arange(n) - n // 2) / p) ** 2
        out = volume_ft
        for axis in (0, 1, 2):
            out = _dft_lines(bk, out, axis, size // 2, p, -(n // 2), n - n // 2, sign=+1,
                             scale=w)
        return out.real.astype(real_dtype)

    def slice(self, volume_ft: Any, rotations: Any, coords_px: Any) -> Any:
        """Sample central slices.

        Parameters
        ----------
        volume_ft : complex (P, P, P) from :meth:`volume_to_fourier`, or its centred sub-cube
            from :meth:`crop_support` when all samples fall inside it
        rotations : (B, 3, 3) rotation matrices (RELION convention)
        coords_px : (M, 2) frequencies (kx, ky) in Fourier pixels of the N-box

        Returns
        -------
        complex (B, M), same precision as ``volume_ft``
        """
        xp = self._backend.xp
        real_dtype = np.float32 if volume_ft.dtype == np.complex64 else np.float64
        rotations = xp.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        coords_px = xp.asarray(coords_px, dtype=np.float64).reshape(-1, 2)
        if self._numba():
            from ._kernels import slice_trilinear

            out = np.empty((rotations.shape[0], coords_px.shape[0]), dtype=volume_ft.dtype)
            slice_trilinear(volume_ft, rotations, coords_px, float(self.pad), out)
            return out
        idx, w = self._corners(rotations, coords_px, real_dtype, volume_ft.shape[0])
        flat = volume_ft.reshape(-1)
        return (flat[idx] * w).sum(axis=-1)

    def backproject(self, values: Any, rotations: Any, coords_px: Any) -> Any:
        """Exact adjoint of :meth:`slice`: scatter-add (B, M) values into a (P, P, P) volume."""
        xp = self._backend.xp
        p = self.padded_size
        values = xp.asarray(values)
        real_dtype = np.float32 if values.dtype == np.complex64 else np.float64
        complex_dtype = np.complex64 if real_dtype == np.float32 else np.complex128
        values = values.astype(complex_dtype, copy=False)
        rotations = xp.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        coords_px = xp.asarray(coords_px, dtype=np.float64).reshape(-1, 2)
        out = xp.zeros((p, p, p), dtype=complex_dtype)
        if self._numba():
            import numba

            from ._kernels import backproject_trilinear

            values = np.ascontiguousarray(values.reshape(rotations.shape[0], coords_px.shape[0]))
            backproject_trilinear(values, rotations, coords_px, float(self.pad), out,
                                  numba.get_num_threads())
            return out
        idx, w = self._corners(rotations, coords_px, real_dtype, p)
        contrib = (values[..., None] * w).reshape(-1)
        flat = out.reshape(-1)
        _scatter_add(xp, flat, idx.reshape(-1), contrib)
        return out

    def _corners(self, rotations: Any, coords_px: Any, real_dtype: Any, p: int
                 ) -> tuple[Any, Any]:
        """Flat indices (B, M, 8) and trilinear weights (B, M, 8) into a (p, p, p) grid centred
        at ``p // 2``; outside corners get weight 0."""
        xp = self._backend.xp
        c = p // 2
        k3 = xp.zeros((coords_px.shape[0], 3), dtype=np.float64)
        k3[:, :2] = coords_px * self.pad
        q = xp.einsum("bij,mj->bmi", rotations, k3) + c  # (B, M, 3) as (x, y, z)
        q0 = xp.floor(q)
        f = q - q0
        q0 = q0.astype(np.int64)
        idx_list, w_list = [], []
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    xi, yi, zi = q0[..., 0] + dx, q0[..., 1] + dy, q0[..., 2] + dz
                    w = ((f[..., 0] if dx else 1 - f[..., 0])
                         * (f[..., 1] if dy else 1 - f[..., 1])
                         * (f[..., 2] if dz else 1 - f[..., 2]))
                    inside = (xi >= 0) & (xi < p) & (yi >= 0) & (yi < p) & (zi >= 0) & (zi < p)
                    idx_list.append(xp.where(inside, (zi * p + yi) * p + xi, 0))
                    w_list.append(xp.where(inside, w, 0.0))
        return xp.stack(idx_list, -1), xp.stack(w_list, -1).astype(real_dtype)


def _scatter_add(xp: Any, target: Any, index: Any, values: Any) -> None:
    if xp is np:
        np.add.at(target, index, values)
        return
    import cupyx  # CuPy-specific, exercised only with a GPU

    cupyx.scatter_add(target.real, index, values.real)
    cupyx.scatter_add(target.imag, index, values.imag)
