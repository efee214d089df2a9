"""Central slices (trilinear, via ``take``) and their exact adjoint on the device.

The same operator as :class:`cryonb.projection.Projector` (whose numba kernels are the host
fast path): ``volume --gridding pre-division--> zero-pad to P = pad * N --centred 3D FFT-->
trilinear samples at pad * R @ (kx, ky, 0)``, with RELION's rotation convention and the
Fourier centre at ``P // 2``.  Slicing gathers the 8 corners of every sample point with
``xp.take`` on the flattened volume; back-projection scatters the same weights with
:func:`cryonb.device.scatter.scatter_add`.  Coordinates are computed in float64 whatever the
precision of the volume, as in the numba kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .fourier import crop_center, fft3_centered, ifft3_centered, pad_center
from .namespace import complex_dtype, namespace_of, real_dtype, to_namespace
from .scatter import scatter_add

__all__ = ["DeviceProjector", "shift_phases"]


def shift_phases(freqs_invA: Any, shifts_A: Any) -> Any:
    """Phase ramps ``exp(+2 pi i k . origin)`` that move images by RELION origins.

    Parameters
    ----------
    freqs_invA : (M, 2) float array, frequencies ``(kx, ky)`` in 1/Å
    shifts_A : (S, 2) float array of the same namespace, origins ``(x, y)`` in Å

    Returns
    -------
    (S, M) complex array (complex128 for float64 input, complex64 for float32)
    """
    xp = namespace_of(freqs_invA, shifts_A)
    phase = 2.0 * math.pi * (shifts_A[:, 0:1] * freqs_invA[None, :, 0]
                             + shifts_A[:, 1:2] * freqs_invA[None, :, 1])
    cdt = complex_dtype(xp, phase.dtype)
    return xp.exp(xp.astype(phase, cdt) * xp.asarray(1j, dtype=cdt))


@dataclass(frozen=True)
class DeviceProjector:
    """Fourier-slice operator for ``box_size``^3 volumes in an array-API namespace.

    Parameters
    ----------
    box_size : int
        N, the real-space box.
    xp : module
        The array namespace (``array_api_compat.numpy``, ``array_api_compat.cupy``,
        ``array_api_strict``, ...).
    pad : int
        Fourier oversampling (2 = RELION's default).
    gridding_correction : bool
        Pre-divide the volume by ``sinc^2(x / P)`` per axis (the trilinear kernel's image).
    chunk_points : int
        Slices and back-projections are computed for at most this many sample points
        (rotations x frequencies) at a time, which bounds the index and weight temporaries
        (about 200 bytes per point).
    """

    box_size: int
    xp: ModuleType
    pad: int = 2
    gridding_correction: bool = True
    chunk_points: int = 2**20

    @property
    def padded_size(self) -> int:
        """P = pad * N."""
        return self.pad * self.box_size

    def _gridding_weights(self, dtype: Any) -> Any:
        """Separable real-space factor ``1 / sinc^2(x / P)``, (N, N, N)."""
        xp = self.xp
        x = (np.arange(self.box_size) - self.box_size // 2) / self.padded_size
        w = to_namespace(xp, 1.0 / np.sinc(x) ** 2, dtype=xp.float64)  # (N,) host -> device
        return xp.astype(w[:, None, None] * w[None, :, None] * w[None, None, :], dtype)

    def volume_to_fourier(self, volume: ArrayLike | Any) -> Any:
        """Real (N, N, N) volume (host or device) -> padded centred spectrum (P, P, P), complex.

        Precision follows the volume (float32 -> complex64, float64 -> complex128).
        """
        xp = self.xp
        vol = to_namespace(xp, volume)
        n = self.box_size
        if tuple(vol.shape) != (n, n, n):
            raise ValueError(f"expected a volume of shape {(n, n, n)}, got {tuple(vol.shape)}")
        if self.gridding_correction:
            vol = vol * self._gridding_weights(vol.dtype)
        return fft3_centered(pad_center(vol, self.padded_size, ndim=3))

    def fourier_to_volume_adjoint(self, volume_ft: Any) -> Any:
        """Exact adjoint of :meth:`volume_to_fourier` (real inner product): (P,)*3 -> (N,)*3."""
        xp = self.xp
        rdt = real_dtype(xp, volume_ft.dtype)
        vol = xp.real(ifft3_centered(volume_ft)) * float(self.padded_size) ** 3
        vol = xp.astype(crop_center(vol, self.box_size, ndim=3), rdt)
        if self.gridding_correction:
            vol = vol * self._gridding_weights(rdt)
        return vol

    def _rotation_chunks(self, rotations: Any, n_points: int) -> list[tuple[Any, int, int]]:
        """Rotations as a (B, 3, 3) float64 array and ``[start, stop)`` chunks of them."""
        xp = self.xp
        rot = xp.reshape(to_namespace(xp, rotations, dtype=xp.float64), (-1, 3, 3))
        b = rot.shape[0]
        step = max(1, self.chunk_points // max(1, n_points))
        return [(rot[s:min(b, s + step), ...], s, min(b, s + step)) for s in range(0, b, step)]

    def _corners(self, rot: Any, k: Any) -> list[tuple[Any, Any]]:
        """For each of the 8 trilinear corners: flat indices (B*M,) and weights (B, M) float64.

        ``rot`` (B, 3, 3) and ``k`` (M, 2) are float64 arrays of the namespace.  Corners
        outside the padded grid get index 0 and weight 0.
        """
        xp = self.xp
        p = self.padded_size
        c = p // 2
        kx = k[:, 0][None, :] * self.pad
        ky = k[:, 1][None, :] * self.pad
        pos = [rot[:, a, 0:1] * kx + rot[:, a, 1:2] * ky + c for a in range(3)]  # x, y, z
        base = [xp.floor(v) for v in pos]
        frac = [v - b for v, b in zip(pos, base, strict=True)]
        ibase = [xp.astype(b, xp.int64) for b in base]
        out = []
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    i = [ibase[0] + dx, ibase[1] + dy, ibase[2] + dz]
                    w = ((frac[0] if dx else 1.0 - frac[0])
                         * (frac[1] if dy else 1.0 - frac[1])
                         * (frac[2] if dz else 1.0 - frac[2]))
                    inside = ((i[0] >= 0) & (i[0] < p) & (i[1] >= 0) & (i[1] < p)
                              & (i[2] >= 0) & (i[2] < p))
                    flat = (i[2] * p + i[1]) * p + i[0]
                    flat = xp.where(inside, flat, xp.zeros_like(flat))
                    out.append((xp.reshape(flat, (-1,)), w * xp.astype(inside, w.dtype)))
        return out

    def slice(self, volume_ft: Any, rotations: ArrayLike | Any, coords_px: ArrayLike | Any
              ) -> Any:
        """Sample central slices.

        Parameters
        ----------
        volume_ft : complex (P, P, P) from :meth:`volume_to_fourier` (host or device)
        rotations : (B, 3, 3) RELION rotation matrices
        coords_px : (M, 2) frequencies (kx, ky) in Fourier pixels of the N-box

        Returns
        -------
        complex (B, M) in the namespace, same precision as ``volume_ft``
        """
        xp = self.xp
        vft = to_namespace(xp, volume_ft)
        flat_volume = xp.reshape(vft, (-1,))
        rdt = real_dtype(xp, vft.dtype)
        k = to_namespace(xp, coords_px, dtype=xp.float64)
        parts = []
        for rot, _, _ in self._rotation_chunks(rotations, k.shape[0]):
            out = None
            for flat, w in self._corners(rot, k):
                term = xp.reshape(xp.take(flat_volume, flat), w.shape) * xp.astype(w, rdt)
                out = term if out is None else out + term
            parts.append(out)
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)

    def backproject(self, values: Any, rotations: ArrayLike | Any, coords_px: ArrayLike | Any
                    ) -> Any:
        """Exact adjoint of :meth:`slice`: (B, M) complex values -> (P, P, P) complex volume."""
        xp = self.xp
        vals = to_namespace(xp, values)
        if not xp.isdtype(vals.dtype, "complex floating"):
            vals = xp.astype(vals, complex_dtype(xp, vals.dtype))
        rdt = real_dtype(xp, vals.dtype)
        k = to_namespace(xp, coords_px, dtype=xp.float64)
        p = self.padded_size
        total = None
        for rot, start, stop in self._rotation_chunks(rotations, k.shape[0]):
            corners = self._corners(rot, k)
            v = vals[start:stop, ...]
            index = xp.concat([flat for flat, _ in corners])
            contrib = xp.concat([xp.reshape(v * xp.astype(w, rdt), (-1,)) for _, w in corners])
            part = scatter_add(contrib, index, p**3)
            total = part if total is None else total + part
        return xp.reshape(total, (p, p, p))
