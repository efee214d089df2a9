"""Reconstruction with known poses (refinement checks, half-maps).

Two steps, both with the exact operators of :class:`cryonb.image_model.ImageModel` ``A``:

1. **Direct Fourier inversion** (RELION-style, without iterative gridding): accumulate on the
   padded Fourier grid ``D = sum_b P_b^T[conj(c_b phase_b) I_b]`` and ``W = sum_b P_b^T[c_b^2]``
   (``P_b^T`` the trilinear back-projection, the adjoint of slicing) and take ``D / (W + lambda)``
   back to real space.  Trilinear weighting leaves a smooth low-frequency bias (a few % of the
   mass leaks out of the box).
2. **Conjugate gradients** on the normal equations ``(A^T A + ridge) v = A^T I`` of the
   least-squares problem ``min_v sum_b ||A_b v - I_b||^2``, started from step 1.  ``A^T A`` needs
   only the poses and CTFs (forward then adjoint in Fourier space), not the images, so each
   iteration is one slice + back-projection pass over the metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from .ctf import CTFParams
from .fourier import crop_center, fft2_centered, ifft3_centered
from .image_model import ImageModel

__all__ = ["BackprojectionAccumulator", "reconstruct_known_poses"]


class BackprojectionAccumulator:
    """Running sums ``D``, ``W`` and ``A^T I`` over batches of images with known poses.

    Parameters
    ----------
    model : ImageModel
        Box, pixel size, band limit and padding of the reconstruction.
    """

    def __init__(self, model: ImageModel) -> None:
        self.model = model
        p = model.projector.padded_size
        self.data = np.zeros((p, p, p), dtype=np.complex128)
        self.weight = np.zeros((p, p, p), dtype=np.float64)
        self.n_images = 0

    def add(self, images: NDArray, rotations: NDArray, shifts_A: NDArray | None,
            ctf: CTFParams | None) -> None:
        """Add real images ``(B, N, N)`` with their rotations, origins (Å) and CTFs."""
        model = self.model
        values = fft2_centered(np.asarray(images, dtype=np.float64))[:, model.mask]
        self.data += model.adjoint_points(values, rotations, shifts_A, ctf)
        if ctf is None:
            sq = np.ones(values.shape)
        else:
            sq = np.abs(model.modulation(len(values), None, ctf)) ** 2
        self.weight += model.projector.backproject(sq.astype(np.complex128), rotations,
                                                   model.coords_px).real
        self.n_images += len(values)

    def direct_inversion(self, wiener_lambda: float | None = None) -> NDArray:
        """``D / (W + lambda)`` in real space, ``(N, N, N)`` float64 ``[z, y, x]``.

        ``wiener_lambda`` defaults to 1e-3 of the mean positive weight.
        """
        if self.n_images == 0:
            raise ValueError("no images were added")
        positive = self.weight > 0
        lam = (1e-3 * float(self.weight[positive].mean()) if wiener_lambda is None
               else float(wiener_lambda))
        spectrum = np.where(positive, self.data / (self.weight + lam), 0.0)
        return crop_center(ifft3_centered(spectrum).real, self.model.box_size, ndim=3)

    def adjoint_data(self) -> NDArray:
        """``A^T I`` summed over the images, ``(N, N, N)`` (real-space adjoint of ``forward``)."""
        n = self.model.box_size
        return self.model.projector.fourier_to_volume_adjoint(self.data) / float(n * n)


def _normal_operator(model: ImageModel, poses: Callable[[], Iterator[tuple]]
                     ) -> Callable[[NDArray], NDArray]:
    n = model.box_size

    def apply(volume: NDArray) -> NDArray:
        volume_ft = model.projector.volume_to_fourier(volume)
        acc = np.zeros_like(volume_ft)
        for rotations, shifts_A, ctf in poses():
            values = model.forward_points(volume_ft, rotations, shifts_A, ctf)
            acc += model.adjoint_points(values, rotations, shifts_A, ctf)
        return model.projector.fourier_to_volume_adjoint(acc) / float(n * n)

    return apply


def reconstruct_known_poses(dataset, model: ImageModel | None = None, *, n_iterations: int = 10,
                            ridge: float = 0.0, batch_size: int = 500,
                            progress: bool = True) -> NDArray:
    """Least-squares reconstruction of a map from a :class:`cryonb.dataset.Dataset` with poses.

    Parameters
    ----------
    dataset : Dataset
        With ``rotations`` (and optionally ``shifts_A``, ``ctf``).
    model : ImageModel, optional
        Default: the dataset's box and pixel size, Nyquist band limit, 2x padding.
    n_iterations : int
        Conjugate-gradient iterations after the direct inversion (0 = direct inversion only).
    ridge : float
        Tikhonov weight added to ``A^T A`` (0: the iterations regularise by stopping early).

    Returns
    -------
    ndarray (N, N, N) float32, ``[z, y, x]``, same units as the images' projections.
    """
    if dataset.rotations is None:
        raise ValueError("known-pose reconstruction needs poses: the dataset has no rotations")
    if model is None:
        model = ImageModel(dataset.box_size, dataset.pixel_size_A)
    acc = BackprojectionAccumulator(model)
    with tqdm(total=len(dataset), desc="back-project", unit="img", disable=not progress) as bar:
        for batch in dataset.batches(batch_size):
            acc.add(batch.images, batch.rotations, batch.shifts_A, batch.ctf)
            bar.update(len(batch.indices))
    x = acc.direct_inversion()
    if n_iterations <= 0:
        return x.astype(np.float32)

    def poses() -> Iterator[tuple]:
        for start in range(0, len(dataset), batch_size):
            sl = slice(start, start + batch_size)
            yield (dataset.rotations[sl],
                   None if dataset.shifts_A is None else dataset.shifts_A[sl],
                   None if dataset.ctf is None else dataset.ctf.subset(sl))

    normal = _normal_operator(model, poses)
    b = acc.adjoint_data()
    r = b - normal(x) - ridge * x
    p = r.copy()
    rr = float(np.vdot(r, r))
    for _ in tqdm(range(n_iterations), desc="conjugate gradients", disable=not progress):
        q = normal(p) + ridge * p
        alpha = rr / float(np.vdot(p, q))
        x += alpha * p
        r -= alpha * q
        rr_new = float(np.vdot(r, r))
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x.astype(np.float32)
