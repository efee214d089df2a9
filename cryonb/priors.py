"""Priors p(V) on the real-space density, behind one small interface.

Every prior has ``log_prob(volume) -> float`` and ``grad(volume) -> array`` (the gradient of
``log_prob`` with respect to each voxel, same shape and dtype as ``volume``).  The objective
of Eq. (6) is ``f(V) = -log p(V) - sum_i log p(I_i | theta_i, V)``; see
:func:`cryonb.likelihood.negative_log_posterior`.

* :class:`NoPrior` -- ``log p = 0``.
* :class:`GaussianPrior` -- independent ``N(mean, sigma^2)`` per voxel.
* :class:`ExponentialPrior` -- the paper's prior ``p(V) = prod_v rate exp(-rate V_v)``
  (Eq. 5), an independent exponential on each voxel with inverse scale ``rate`` (in inverse
  density units).

Works on NumPy and CuPy arrays (the array's own namespace is used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .backend import backend_of

__all__ = ["ExponentialPrior", "GaussianPrior", "NoPrior", "Prior"]


@runtime_checkable
class Prior(Protocol):
    """A log-density on real-space volumes (N, N, N)."""

    def log_prob(self, volume: Any) -> float:
        """``log p(volume)`` (float)."""
        ...

    def grad(self, volume: Any) -> Any:
        """``d log p / d volume``, same shape and dtype as ``volume``."""
        ...


@dataclass(frozen=True)
class NoPrior:
    """The flat (improper) prior: ``log p = 0``, zero gradient."""

    def log_prob(self, volume: Any) -> float:
        """0.0."""
        return 0.0

    def grad(self, volume: Any) -> Any:
        """Zeros like ``volume``."""
        return backend_of(volume).xp.zeros_like(volume)


@dataclass(frozen=True)
class GaussianPrior:
    """Independent Gaussian per voxel, ``V_v ~ N(mean, sigma^2)``.

    ``log p = -sum_v (V_v - mean)^2 / (2 sigma^2) - (n / 2) log(2 pi sigma^2)``.
    """

    sigma: float
    mean: float = 0.0

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")

    def log_prob(self, volume: Any) -> float:
        """Normalised log-density (float)."""
        xp = backend_of(volume).xp
        d = volume.astype(np.float64) - self.mean
        n = volume.size
        return float(-xp.sum(d * d) / (2 * self.sigma**2)
                     - 0.5 * n * np.log(2 * np.pi * self.sigma**2))

    def grad(self, volume: Any) -> Any:
        """``-(V - mean) / sigma^2``."""
        return (-(volume - self.mean) / self.sigma**2).astype(volume.dtype, copy=False)


@dataclass(frozen=True)
class ExponentialPrior:
    """The paper's independent exponential prior, ``p(V) = prod_v rate exp(-rate V_v)``.

    Parameters
    ----------
    rate : float
        Inverse scale lambda (1 / density units).  The reference implementation uses
        ``0.9 / modelscale``, ``modelscale`` being its per-voxel density scale.
    strict : bool
        The density is supported on ``V >= 0`` only.  With ``strict=False`` (default, as the
        reference) ``log_prob`` uses the linear extension ``log(rate) - rate V_v`` for every
        voxel, negative ones included, so the objective stays differentiable and the
        gradient is the constant ``-rate`` everywhere; positivity is the optimiser's job
        (truncation of negative voxels to 0 after each step, Section 3.2).  With
        ``strict=True`` any negative voxel gives ``log_prob = -inf`` (``grad`` is unchanged).
        At exactly 0 the right derivative ``-rate`` is used.
    """

    rate: float
    strict: bool = False

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be positive, got {self.rate}")

    def log_prob(self, volume: Any) -> float:
        """``sum_v (log(rate) - rate V_v)`` (or ``-inf`` if ``strict`` and any ``V_v < 0``)."""
        xp = backend_of(volume).xp
        if self.strict and bool(xp.any(volume < 0)):
            return float("-inf")
        total = float(xp.sum(volume.astype(np.float64)))
        return volume.size * float(np.log(self.rate)) - self.rate * total

    def grad(self, volume: Any) -> Any:
        """The constant ``-rate``."""
        return backend_of(volume).xp.full_like(volume, -self.rate)
