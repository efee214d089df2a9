"""The SAG memory of :class:`cryonb.sagd.SAGDSolver`: the latest gradient of every minibatch,
stored band-limited (paper Eq. 8: the step uses the mean of the stored gradients)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["GradientMemory"]


class GradientMemory:
    """The latest gradient of every minibatch, stored band-limited.

    Gradients are kept as the rfft coefficients with ``|k| <= radius_px`` (ordered by radius), so
    a batch costs ``8 * count(radius)`` bytes instead of ``4 N^3``: at N = 128 and
    w = 1/10 Å^-1 (radius 36 px at 2.8 Å) about 0.8 MB instead of 8 MB.  The coefficients beyond
    the band limit at which a gradient was computed carry only interpolation leakage and are
    dropped.  The mean is recomputed from the stored gradients in batch order (not kept as a
    running sum), so a run restored from a checkpoint continues bit for bit.
    """

    def __init__(self, box_size: int) -> None:
        n = box_size
        kz = np.fft.fftfreq(n) * n
        kx = np.fft.rfftfreq(n) * n
        radius = np.sqrt(kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + kx[None, None, :] ** 2)
        self.box_size = n
        self._order = np.argsort(radius.ravel(), kind="stable")
        self._sorted_radius = radius.ravel()[self._order]
        self._shape = radius.shape
        self._stored: dict[int, NDArray] = {}

    def __len__(self) -> int:
        return len(self._stored)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored gradients."""
        return sum(v.nbytes for v in self._stored.values())

    def update(self, batch: int, grad: NDArray, radius_px: float) -> None:
        """Replace batch ``batch``'s stored gradient by ``grad`` (real ``(N, N, N)``)."""
        count = int(np.searchsorted(self._sorted_radius, radius_px, side="right"))
        self._stored[batch] = np.fft.rfftn(grad).ravel()[self._order[:count]].astype(np.complex64)

    def entry(self, batch: int) -> NDArray | None:
        """Batch ``batch``'s stored coefficients (None if none): for :meth:`restore`."""
        return self._stored.get(batch)

    def restore(self, batch: int, entry: NDArray | None) -> None:
        """Put back what :meth:`entry` returned (undo an :meth:`update`)."""
        if entry is None:
            self._stored.pop(batch, None)
        else:
            self._stored[batch] = entry

    def mean(self) -> NDArray:
        """Mean of the stored gradients in real space ``(N, N, N)`` (zeros if none)."""
        if not self._stored:
            return np.zeros((self.box_size,) * 3)
        total = np.zeros(self._order.size, dtype=np.complex128)
        for key in sorted(self._stored):
            coeffs = self._stored[key]
            total[self._order[:coeffs.size]] += coeffs
        spectrum = (total / len(self._stored)).reshape(self._shape)
        return np.fft.irfftn(spectrum, s=(self.box_size,) * 3, axes=(0, 1, 2))

    def state_dict(self) -> dict[str, Any]:
        """Arrays for a checkpoint."""
        keys = sorted(self._stored)
        return {"batches": np.array(keys, dtype=np.int64),
                "sizes": np.array([self._stored[k].size for k in keys], dtype=np.int64),
                "coeffs": (np.concatenate([self._stored[k] for k in keys]) if keys
                           else np.zeros(0, np.complex64))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self._stored.clear()
        offset = 0
        for key, size in zip(state["batches"].tolist(), state["sizes"].tolist(), strict=True):
            self._stored[int(key)] = np.asarray(state["coeffs"][offset:offset + size],
                                                dtype=np.complex64)
            offset += size
