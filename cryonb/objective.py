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

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .backend import Backend, get_backend
from .dataset import Dataset
from .evaluation import Evaluation
from .fourier import nyquist_invA
from .image_model import ImageModel
from .importance import evaluated_domain_fractions
from .likelihood import Engine, make_engine
from .quadrature import Quadrature
from .streaming import Prefetcher

__all__ = ["KnownPoseObjective", "MarginalObjective", "QuadratureOptions", "SampledObjective"]


@dataclass(frozen=True)
class QuadratureOptions:
    """How :class:`MarginalObjective` sizes its pose quadrature at each band limit.

    See :meth:`cryonb.quadrature.Quadrature.for_band_limit`.  ``particle_radius_A`` sets the
    angular spacing (default: half the box); ``shift_sigma_A`` / ``shift_extent_A`` the Gaussian
    shift prior and its truncation.
    """

    particle_radius_A: float | None = None
    undersample: float = 1.0
    shift_undersample: float = 1.0
    shift_sigma_A: float | None = 10.0
    shift_extent_A: float = 30.0


class SampledObjective:
    """The one sample -> evaluate -> record path of the marginal objectives.

    Subclasses (:class:`MarginalObjective`, :class:`cryonb.distributed.DistributedObjective`)
    have ``likelihood`` (the engine, None before ``set_band_limit``), ``sampler`` (an
    :class:`~cryonb.importance.ImportanceSampler` or None), ``rng`` and ``last_result``, and
    implement how images are prepared (:meth:`_prepare`) and scored (:meth:`_compute`).
    """

    likelihood: Any
    sampler: Any
    rng: np.random.Generator
    last_result: Any

    def _prepare(self, idx: NDArray) -> Any:
        """Start reading and transforming images ``idx``; returns what :meth:`_compute` takes."""
        raise NotImplementedError

    def _compute(self, volume: NDArray, prepared: Any, subsets: Any, gradient: bool) -> Any:
        """The ``LikelihoodResult`` of the prepared images on their pose ``subsets``."""
        raise NotImplementedError

    def evaluate(self, volume: NDArray, indices: NDArray, *, gradient: bool, record: bool,
                 iteration: int = 0, reuse: Any = None) -> Evaluation:
        """Per-image marginal NLL, and the gradient of their sum w.r.t. the real-space map.

        The images are prepared first (read while the pose subsets are drawn), the importance
        sampler draws each image's subset, the engine scores them, and with ``record`` the
        sampler learns the posteriors; ``reuse`` (a previous ``token``) skips the first two.
        """
        lik = self.likelihood
        if lik is None:
            raise RuntimeError("call set_band_limit() first")
        idx = np.asarray(indices, dtype=np.int64)
        clock = time.perf_counter
        t0 = clock()
        times = {"io": 0.0, "is": 0.0}
        seen = getattr(self.sampler, "seen", None)  # optional in a sampler's protocol
        first = float("nan") if seen is None else 1.0 - float(np.mean(seen(idx)))
        if reuse is not None:
            prepared, subsets = reuse
        else:
            prepared = self._prepare(idx)
            t1 = clock()
            times["io"] = t1 - t0
            subsets = None
            if self.sampler is not None:
                subsets = self.sampler.sample(idx, lik.quadrature, iteration, self.rng)
            times["is"] = clock() - t1
        t2 = clock()
        result = self._compute(volume, prepared, subsets, gradient)
        t3 = clock()
        if record and self.sampler is not None and reuse is None:
            self.sampler.update(idx, subsets, result, iteration)
            times["is"] += clock() - t3
        times.update(_engine_times(result, t3 - t2))
        self.last_result = result
        fraction = float(np.mean(result.n_evaluated)) / lik.quadrature.size
        grad = None if result.gradient is None else -np.asarray(result.gradient, np.float64)
        return Evaluation(nll=-np.asarray(result.log_likelihood, dtype=np.float64), grad=grad,
                          fraction_evaluated=fraction, fraction_first_visit=first,
                          fraction_domains=evaluated_domain_fractions(subsets, lik.quadrature),
                          token=(prepared, subsets), timings=times)


    def restrict_token(self, token: Any, rows: NDArray) -> Any:
        """The reuse ``token`` of an evaluation narrowed to its images ``rows`` (None when the
        prepared images cannot be subset, e.g. on another device or on Dask workers)."""
        prepared, subsets = token
        subset = getattr(prepared, "subset", None)
        if subset is None or getattr(self, "backend", None) != "numpy":
            return None
        rows = np.asarray(rows, dtype=np.int64)
        return subset(rows), None if subsets is None else [subsets[i] for i in rows]


class MarginalObjective(SampledObjective):
    """The paper's objective: ``-log p(I_b | V)`` marginalised over poses and shifts (Eq. 4).

    Parameters
    ----------
    dataset : Dataset
        Images with CTFs (poses, if any, are ignored).
    noise_sigma : float
        Real-space noise standard deviation per pixel (1 after ``Dataset.normalized()``).
    rng : numpy.random.Generator
        Draws the importance samples.
    sampler : ImportanceSampler, optional
        Per-particle importance sampling (None: exhaustive sums).
    quadrature : QuadratureOptions
    pad : int
        Projector oversampling.
    dtype : float32 (default) or float64
        Precision of the likelihood computation.
    prefetch : bool
        Read the batches announced by :meth:`prefetch` in a background thread (default);
        False reads every batch when it is evaluated.  The results are the same.
    backend : {"numpy", "cupy", "array_api_strict"}, Backend or None
        Where the likelihood and gradient are computed (``None``: the backend of the
        enclosing :func:`~cryonb.backend.use_backend` block, else NumPy).  NumPy uses the numba
        engine (:class:`~cryonb.likelihood.MarginalLikelihood`); any other backend the
        array-API engine :class:`~cryonb.device.DeviceMarginalLikelihood`, with the images
        moved to the device batch by batch (see :func:`cryonb.likelihood.make_engine`).
    """

    def __init__(self, dataset: Dataset, noise_sigma: float, *, rng: np.random.Generator,
                 sampler: Any = None, quadrature: QuadratureOptions | None = None,
                 pad: int = 2, dtype: Any = np.float32, prefetch: bool = True,
                 backend: str | Backend | None = None) -> None:
        self.dataset = dataset
        self.backend = get_backend(backend).name  # a name: the objective stays picklable
        self.prefetcher = Prefetcher(dataset.images) if prefetch else None
        self.noise_sigma = float(noise_sigma)
        self.rng = rng
        self.sampler = sampler
        self.options = quadrature or QuadratureOptions()
        self.pad = pad
        self.dtype = np.dtype(dtype)
        self.pixel_size_A = dataset.pixel_size_A
        self.max_freq_invA: float | None = None
        self._quadratures: dict[float, Quadrature] = {}
        self.likelihood: Engine | None = None
        self.last_result: Any = None  # the LikelihoodResult of the latest evaluate()

    def model_for(self, max_freq_invA: float) -> ImageModel:
        """The image model at band limit ``max_freq_invA`` (at most the images' Nyquist)."""
        w = min(float(max_freq_invA), nyquist_invA(self.dataset.pixel_size_A))
        return ImageModel(self.dataset.box_size, self.dataset.pixel_size_A, max_freq_invA=w,
                          pad=self.pad)

    def quadrature_for(self, max_freq_invA: float) -> Quadrature:
        """The (cached) quadrature of the image model at band limit ``max_freq_invA``: grid
        and model share their band limit (:meth:`Quadrature.for_model`)."""
        key = round(float(max_freq_invA), 10)
        if key not in self._quadratures:
            o = self.options
            model = ImageModel(self.dataset.box_size, self.dataset.pixel_size_A,
                               max_freq_invA=key, pad=self.pad)
            self._quadratures[key] = Quadrature.for_model(
                model, particle_radius_A=o.particle_radius_A, undersample=o.undersample,
                shift_undersample=o.shift_undersample, shift_sigma_A=o.shift_sigma_A,
                shift_extent_A=o.shift_extent_A)
        return self._quadratures[key]

    def set_band_limit(self, max_freq_invA: float) -> None:
        """Band limit ``w`` (1/Å): image model, quadrature and likelihood engine follow."""
        model = self.model_for(max_freq_invA)
        self.max_freq_invA = model.max_freq_invA
        self.likelihood = make_engine(model, self.quadrature_for(model.max_freq_invA),
                                      backend=self.backend)

    def _prepare(self, idx: NDArray) -> Any:
        ctf = None if self.dataset.ctf is None else self.dataset.ctf.subset(idx)
        return self.likelihood.prepare(_read_images(self, idx), ctf, self.noise_sigma,
                                       dtype=self.dtype)

    def _compute(self, volume: NDArray, prepared: Any, subsets: Any, gradient: bool) -> Any:
        lik = self.likelihood
        t0 = time.perf_counter()
        volume_ft = lik.volume_to_fourier(np.asarray(volume, dtype=self.dtype))
        t_fft = time.perf_counter() - t0
        result = lik.evaluate(volume_ft, prepared, subsets=subsets, gradient=gradient)
        timings = getattr(result, "timings", None)
        if isinstance(timings, dict):
            timings["fft3d_s"] = t_fft
        return result

    def prefetch(self, indices: NDArray) -> None:
        """Start reading the images of a coming :meth:`evaluate` in the background."""
        if self.prefetcher is not None:
            self.prefetcher.request(indices)

    def state_dict(self) -> dict[str, Any]:
        """The sampling generator's state and the importance sampler's per-particle state."""
        state: dict[str, Any] = {"rng": json.dumps(self.rng.bit_generator.state)}
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; grids are rebuilt from their band limits."""
        self.rng.bit_generator.state = json.loads(str(state["rng"]))
        if self.sampler is not None and "sampler" in state:
            self.sampler.load_state_dict(state["sampler"], self.quadrature_for)


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
    prefetch : bool
        As for :class:`MarginalObjective`.
    """

    def __init__(self, dataset: Dataset, noise_sigma: float, *, pad: int = 2,
                 prefetch: bool = True) -> None:
        if dataset.rotations is None:
            raise ValueError("KnownPoseObjective needs a dataset with poses")
        self.dataset = dataset
        self.prefetcher = Prefetcher(dataset.images) if prefetch else None
        self.noise_sigma = float(noise_sigma)
        self.pad = pad
        self.pixel_size_A = dataset.pixel_size_A
        self.model = ImageModel(dataset.box_size, dataset.pixel_size_A, pad=pad)

    def set_band_limit(self, max_freq_invA: float) -> None:
        """Use the disc ``|k| < max_freq_invA`` from now on."""
        self.model = ImageModel(self.dataset.box_size, self.dataset.pixel_size_A,
                                max_freq_invA=max_freq_invA, pad=self.pad)

    def evaluate(self, volume: NDArray, indices: NDArray, *, gradient: bool, record: bool,
                 iteration: int = 0, reuse: Any = None) -> Evaluation:
        """Per-image NLL and the gradient of their sum (real space, ``(N, N, N)``)."""
        ds, model = self.dataset, self.model
        n = ds.box_size
        idx = np.asarray(indices)
        shifts = None if ds.shifts_A is None else ds.shifts_A[idx]
        ctf = None if ds.ctf is None else ds.ctf.subset(idx)
        from .fourier import fft2_centered

        data = fft2_centered(_read_images(self, idx).astype(np.float64))[:, model.mask]
        volume_ft = model.projector.volume_to_fourier(np.asarray(volume, dtype=np.float64))
        residual = model.forward_points(volume_ft, ds.rotations[idx], shifts, ctf) - data
        scale = 1.0 / (2.0 * n * n * self.noise_sigma**2)  # Parseval, full disc
        nll = scale * np.sum(np.abs(residual) ** 2, axis=1)
        grad = None
        if gradient:
            back = model.adjoint_points(residual, ds.rotations[idx], shifts, ctf)
            grad = 2.0 * scale * model.projector.fourier_to_volume_adjoint(back)
        return Evaluation(nll=nll, grad=grad, fraction_evaluated=1.0)

    def prefetch(self, indices: NDArray) -> None:
        """Start reading the images of a coming :meth:`evaluate` in the background."""
        if self.prefetcher is not None:
            self.prefetcher.request(indices)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


def _engine_times(result: Any, total_s: float) -> dict[str, float]:
    """The engine call's ``total_s`` split into the profile's phases by the result's own
    ``timings`` (:data:`cryonb.profiling.ENGINE_PHASES`; what they do not cover is ``engine``)."""
    from .profiling import ENGINE_PHASES

    own = getattr(result, "timings", None) or {}
    times = {phase: float(own.get(key, 0.0)) for key, phase in ENGINE_PHASES.items()
             if phase != "engine"}
    times["engine"] = max(0.0, total_s - sum(times.values()))
    return times


def _read_images(objective: MarginalObjective | KnownPoseObjective, indices: NDArray) -> NDArray:
    """The objective's images ``indices``: prefetched if announced, else read now."""
    if objective.prefetcher is None:
        return objective.dataset.images(indices)
    return objective.prefetcher.get(indices)
