"""Direct reference sums of the likelihood, and the objective of Eq. 6 on a batch.

One job: :func:`reference_log_joint`, the direct NumPy evaluation of every term
``log(w_d w_i w_s p(I_b | R_{d,i}, t_s, V))`` of Eq. 4 over the full disc (explicit residuals,
no half-plane, no norm expansion: the sum the tests trust), and
:func:`negative_log_posterior`, the minibatch objective of Eq. 6 ``f(V) = -prior_weight log p(V)
- sum_b log p(I_b | V)`` with its gradient, from any engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..backend import get_backend
from ..ctf import CTFParams
from ..fourier import fft2_centered
from ..image_model import ImageModel
from ..priors import NoPrior, Prior
from ..quadrature import Quadrature
from .engine import Engine
from .types import LikelihoodResult, PoseSubset, PreparedImages

__all__ = ["negative_log_posterior", "reference_log_joint"]


def negative_log_posterior(
    likelihood: Engine,
    volume: Any,
    images: PreparedImages,
    prior: Prior | None = None,
    *,
    subsets: list[PoseSubset] | None = None,
    prior_weight: float = 1.0,
) -> tuple[float, Any, LikelihoodResult]:
    """Objective of Eq. (6) on a batch: ``f(V) = -prior_weight log p(V) - sum_b log p(I_b | V)``.

    Parameters
    ----------
    likelihood : an :class:`~.engine.Engine` (host or device)
    volume : (N, N, N) real-space density [z, y, x] (float32 or float64)
    images : PreparedImages of the batch
    prior : a :class:`~cryonb.priors.Prior` (default :class:`~cryonb.priors.NoPrior`)
    subsets : importance-sampled subsets (one per image) or None (exhaustive)
    prior_weight : e.g. ``batch_size / n_particles`` for a minibatch estimate of Eq. (6)

    Returns
    -------
    value : float
    gradient : (N, N, N) ``df/dV``, same dtype as ``volume``
    result : the LikelihoodResult
    """
    prior = NoPrior() if prior is None else prior
    vol_ft = likelihood.volume_to_fourier(volume)
    res = likelihood.evaluate(vol_ft, images, subsets=subsets, gradient=True)
    value = -prior_weight * prior.log_prob(volume) - float(np.sum(res.log_likelihood))
    grad = -prior_weight * prior.grad(volume) - res.gradient
    return value, grad.astype(volume.dtype, copy=False), res


def reference_log_joint(
    model: ImageModel,
    volume_ft: Any,
    images: Any,
    ctf: CTFParams | None,
    noise_sigma: float | ArrayLike,
    quadrature: Quadrature,
) -> NDArray:
    """Direct evaluation of ``log(w_d w_i w_s p(I_b | R_{d,i}, t_s, V))`` (NumPy reference).

    Residuals are formed explicitly over the **full** disc (no half-plane, no norm expansion),
    through ``model.forward_points``, in the precision of ``volume_ft``.  For tests and small
    problems only.

    Parameters
    ----------
    images : (B, M) complex Fourier values at ``model.coords_px`` or (B, N, N) real images
    noise_sigma : scalar or (B,)

    Returns
    -------
    (B, Nd, Ni, Ns) float64; ``logsumexp`` over the last three axes is ``log p(I_b | V)``.
    """
    xp = get_backend(model.backend).xp
    n = model.box_size
    data = xp.asarray(images)
    if data.ndim == 3:
        data = fft2_centered(data.astype(np.complex128))[:, model.mask]
    b, m = data.shape
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), (b,))
    q = quadrature
    rots = q.rotations()
    lwd, lwi, lws = q.log_weights()
    out = np.empty((b, q.n_directions, q.n_inplane, q.n_shifts))
    for j in range(b):
        cj = None if ctf is None else ctf.subset([j] * q.n_shifts)
        for r in range(q.n_rotations):
            rr = np.broadcast_to(rots[r], (q.n_shifts, 3, 3))
            pred = model.forward_points(volume_ft, rr, q.shifts_A, cj)         # (Ns, M)
            resid = data[j][None, :] - pred
            e = np.asarray(xp.sum(resid.real**2 + resid.imag**2, axis=1), dtype=np.float64)
            d, i = divmod(r, q.n_inplane)
            out[j, d, i] = (-e / (2.0 * n * n * sigma[j] ** 2)
                            - 0.5 * m * np.log(2 * np.pi * sigma[j] ** 2)
                            + lwd[d] + lwi[i] + lws)
    return out
