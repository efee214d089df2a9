"""Objectives for :class:`cryonb.sagd.SAGDSolver`: the data term over a :class:`Dataset`.

* :class:`MarginalObjective`: the paper's ab initio objective, the negative log-likelihood of
  each image marginalised over the pose quadrature (:class:`cryonb.likelihood.MarginalLikelihood`),
  with importance sampling (:class:`cryonb.importance.ImportanceSampler`) when given.
* :class:`KnownPoseObjective`: the same Gaussian noise model at the dataset's own poses (no
  marginalisation): least-squares refinement with known poses, and an exactly solvable problem
  for testing the solver.

Both work at a band limit ``w`` set by :meth:`set_band_limit` (frequency marching) and return
per-image negative log-likelihoods and the gradient of their sum with respect to the real-space
density.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .dataset import Dataset
from .image_model import ImageModel
from .sagd import Evaluation

__all__ = ["KnownPoseObjective"]


class KnownPoseObjective:
    """``nll_b(V) = ||A_b V - I_b||^2 / (2 sigma^2)`` over the band-limited disc, poses known.

    Parameters
    ----------
    dataset : Dataset
        Images with ``rotations`` (and optionally ``shifts_A``, ``ctf``).
    noise_sigma : float
        Real-space noise standard deviation per pixel.
    pad : int
        Projector oversampling.
    """

    def __init__(self, dataset: Dataset, noise_sigma: float, *, pad: int = 2) -> None:
        if dataset.rotations is None:
            raise ValueError("KnownPoseObjective needs a dataset with poses")
        self.dataset = dataset
        self.noise_sigma = float(noise_sigma)
        self.pad = pad
        self.pixel_size_A = dataset.pixel_size_A
        self.model = ImageModel(dataset.box_size, dataset.pixel_size_A, pad=pad)

    def set_band_limit(self, max_freq_invA: float) -> None:
        """Use the disc ``|k| < max_freq_invA`` from now on."""
        self.model = ImageModel(self.dataset.box_size, self.dataset.pixel_size_A,
                                max_freq_invA=max_freq_invA, pad=self.pad)

    def evaluate(self, volume: NDArray, indices: NDArray, *, gradient: bool, record: bool,
                 reuse: Any = None) -> Evaluation:
        """Per-image NLL and the gradient of their sum (real space, ``(N, N, N)``)."""
        ds, model = self.dataset, self.model
        n = ds.box_size
        idx = np.asarray(indices)
        shifts = None if ds.shifts_A is None else ds.shifts_A[idx]
        ctf = None if ds.ctf is None else ds.ctf.subset(idx)
        from .fourier import fft2_centered

        data = fft2_centered(ds.images(idx).astype(np.float64))[:, model.mask]
        volume_ft = model.projector.volume_to_fourier(np.asarray(volume, dtype=np.float64))
        residual = model.forward_points(volume_ft, ds.rotations[idx], shifts, ctf) - data
        scale = 1.0 / (2.0 * n * n * self.noise_sigma**2)  # Parseval, full disc
        nll = scale * np.sum(np.abs(residual) ** 2, axis=1)
        grad = None
        if gradient:
            back = model.adjoint_points(residual, ds.rotations[idx], shifts, ctf)
            grad = 2.0 * scale * model.projector.fourier_to_volume_adjoint(back)
        return Evaluation(nll=nll, grad=grad, fraction_evaluated=1.0)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
