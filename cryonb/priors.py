"""Priors p(V) on the real-space density, behind one small interface, and their scale.

Every prior has ``log_prob(volume) -> float`` and ``grad(volume) -> array`` (the gradient of
``log_prob`` with respect to each voxel, same shape and dtype as ``volume``).  The objective
of Eq. (6) is ``f(V) = -log p(V) - sum_i log p(I_i | theta_i, V)``; the solver minimises it
per image, ``-log p(V) / n_train + mean_i NLL_i`` (as the reference code:
:class:`cryonb.sagd.SAGDSolver`; :func:`cryonb.likelihood.negative_log_posterior` is the
direct sum).

* :class:`NoPrior` -- ``log p = 0`` (maximum likelihood with positivity).
* :class:`ExponentialPrior` -- the paper's prior ``p(V) = prod_v rate exp(-rate V_v)``
  (Eq. 5), an independent exponential on each voxel with inverse scale ``rate`` (in inverse
  density units): an L1 (sparsity) penalty ``rate * sum_v V_v`` on the positive map.
* :class:`GaussianPrior` -- independent ``N(mean, sigma^2)`` per voxel.  With ``mean = 0``
  (what ``--prior gaussian`` uses) it is, by Parseval, the same prior as independent
  zero-mean Gaussians of variance ``sigma^2`` on the map's unitary Fourier coefficients (a
  flat spectrum): an L2 (Tikhonov / ridge) penalty ``sum_v V_v^2 / (2 sigma^2)``.

The paper says it compares three priors and keeps the exponential ("a simple independent
exponential prior worked well"); its comparison is not in the text we have.

The scale from the data (:func:`particle_mean_density`, :func:`estimate_density_scale`,
:func:`make_prior`)
-----------------------------------------------------------------------------------------
Both priors are set by one density scale ``rho``, the mean density inside the particle:
``rho = mass / ((4/3) pi r^3)`` with ``mass`` the sum of voxels of the map that explains the
images' DC (:func:`cryonb.diagnostics.estimate_mass`) and ``r`` the particle radius in voxels
(:func:`cryonb.diagnostics.estimate_particle_radius`, or the one given).  The exponential is
the maximum-entropy density on ``V >= 0`` with mean ``rho``, so ``rate = 1 / rho``; the
Gaussian is the zero-mean one whose half-normal on ``V >= 0`` (positivity truncates the rest)
has the same mean, ``sigma * sqrt(2 / pi) = rho``, so ``sigma = rho * sqrt(pi / 2)``.  The
reference code ties its rate to the map's scale the same way (``0.9 / modelscale``, its
``modelscale`` a per-voxel density from the images' DC; about twice our rate on its synthetic
GroEL, where ``modelscale`` is 0.43 against a density of 1-1.5 inside the protein).  The
radius estimate encloses the *blurred* particle (about 2.5 px beyond a ball's edge, see
:func:`~cryonb.diagnostics.estimate_particle_radius`), so ``rho`` is the mean over that
slightly larger sphere: below the mean inside a compact particle by ``(R / (R + 2.5 px))^3``,
and well below the density of the protein itself when the particle is hollow or elongated.

Works on NumPy and CuPy arrays (the array's own namespace is used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .backend import backend_of

__all__ = ["PRIOR_NAMES", "ExponentialPrior", "GaussianPrior", "NoPrior", "Prior",
           "describe_prior", "estimate_density_scale", "make_prior", "particle_mean_density"]

#: The priors :func:`make_prior` (and ``AbInitioConfig.prior`` / ``--prior``) knows.
PRIOR_NAMES = ("none", "exponential", "gaussian")


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

    name: ClassVar[str] = "none"

    def log_prob(self, volume: Any) -> float:
        """0.0."""
        return 0.0

    def grad(self, volume: Any) -> Any:
        """Zeros like ``volume``."""
        return backend_of(volume).xp.zeros_like(volume)


@dataclass(frozen=True)
class GaussianPrior:
    """Independent Gaussian per voxel, ``V_v ~ N(mean, sigma^2)``.

    ``log p = -sum_v (V_v - mean)^2 / (2 sigma^2) - (n / 2) log(2 pi sigma^2)``.  With
    ``mean = 0`` this equals i.i.d. ``N(0, sigma^2)`` on the unitary DFT coefficients of the
    map (Parseval): a white, zero-mean Fourier prior.

    Parameters
    ----------
    sigma : float
        Standard deviation, density units.
    mean : float
        Mean, density units.
    """

    name: ClassVar[str] = "gaussian"
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

    name: ClassVar[str] = "exponential"
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


# --------------------------------------------------------------------------- the scale
def particle_mean_density(mass: float, radius_A: float, pixel_size_A: float) -> float:
    """Mean density inside a sphere of ``radius_A`` holding ``mass``: the priors' scale ``rho``.

    Parameters
    ----------
    mass : float
        Sum of the map's voxels (density units x voxels), e.g.
        :func:`cryonb.diagnostics.estimate_mass`.
    radius_A : float
        Particle radius, Å.
    pixel_size_A : float
        Voxel size of the map, Å.

    Returns
    -------
    float
        ``mass / ((4/3) pi (radius_A / pixel_size_A)^3)``, density units per voxel.
    """
    r_px = float(radius_A) / float(pixel_size_A)
    if not (r_px > 0 and mass > 0 and math.isfinite(mass)):
        raise ValueError(f"need a positive mass and radius, got {mass} and {radius_A} Å")
    return float(mass) / (4.0 / 3.0 * math.pi * r_px**3)


def estimate_density_scale(dataset: Any, *, radius_A: float | None = None,
                           mass: float | None = None) -> float:
    """The priors' density scale ``rho`` from a data set's images (module docstring).

    Parameters
    ----------
    dataset : cryonb.dataset.Dataset
        The images the map will be fitted to, normalised (``Dataset.normalized()``, zero
        background mean) and at the working box: ``rho`` is in the units of the map fitted to
        *these* images, per voxel of *their* grid.
    radius_A : float, optional
        Particle radius, Å (default: :func:`cryonb.diagnostics.estimate_particle_radius`).
    mass : float, optional
        Sum of voxels (default: :func:`cryonb.diagnostics.estimate_mass`).

    Returns
    -------
    float
        :func:`particle_mean_density` of the two.
    """
    from .diagnostics import estimate_mass, estimate_particle_radius

    mass = estimate_mass(dataset) if mass is None else mass
    radius_A = estimate_particle_radius(dataset) if radius_A is None else radius_A
    return particle_mean_density(mass, radius_A, dataset.pixel_size_A)


def make_prior(name: str, density_scale: float | None = None) -> Prior:
    """The prior ``name`` (one of :data:`PRIOR_NAMES`) of density scale ``rho``.

    Parameters
    ----------
    name : {"none", "exponential", "gaussian"}
    density_scale : float, optional
        ``rho``, the mean density of the prior on ``V >= 0`` (density units; needed unless
        ``name`` is "none"): the exponential's ``rate = 1 / rho``, the zero-mean Gaussian's
        ``sigma = rho * sqrt(pi / 2)``.

    Returns
    -------
    Prior
    """
    if name not in PRIOR_NAMES:
        raise ValueError(f"prior must be one of {', '.join(PRIOR_NAMES)}, got {name!r}")
    if name == "none":
        return NoPrior()
    if density_scale is None or not density_scale > 0 or not math.isfinite(density_scale):
        raise ValueError(f"the {name} prior needs a positive density scale, got "
                         f"{density_scale}")
    if name == "exponential":
        return ExponentialPrior(rate=1.0 / density_scale)
    return GaussianPrior(sigma=density_scale * math.sqrt(math.pi / 2.0))


def describe_prior(prior: Prior | None) -> dict[str, Any]:
    """What ``run.json`` records of a prior: its ``name`` and parameters (``rate`` per
    density unit, or ``sigma`` and ``mean`` in density units); ``{"name": "none"}`` for
    None."""
    if prior is None or isinstance(prior, NoPrior):
        return {"name": "none"}
    if isinstance(prior, ExponentialPrior):
        return {"name": prior.name, "rate": prior.rate, "density_scale": 1.0 / prior.rate}
    if isinstance(prior, GaussianPrior):
        return {"name": prior.name, "sigma": prior.sigma, "mean": prior.mean,
                "density_scale": prior.sigma * math.sqrt(2.0 / math.pi)}
    return {"name": getattr(prior, "name", type(prior).__name__)}
