"""Minibatch likelihoods on a Dask cluster: :class:`DistributedObjective`.

``SAGDSolver(objective, ..., client=client)`` wraps a :class:`~cryonb.objective.MarginalObjective`
in a :class:`DistributedObjective`; on the command line ``cryonb reconstruct --scheduler ADDRESS``
(an existing cluster) or ``--dask-workers N`` (a ``LocalCluster`` of ``N`` single-threaded
worker processes) do the same.  The engine is Dask's own (``distributed``: ``Client.scatter``,
``Client.submit``, ``Client.gather``); nothing here schedules work itself.

Who holds what
--------------
* **Workers** hold the images.  The particles ``0 .. n - 1`` are cut into contiguous shards, one
  per worker thread (a worker with ``t`` threads gets ``t`` shards), and each shard's
  :class:`~cryonb.dataset.Dataset` is scattered once to its worker.  A dataset backed by MRC
  stacks travels as its selection only (the worker opens the stack files itself and reads its
  own rows from the shared file system); an in-memory dataset travels as the shard's
  preprocessed pixels.  For a minibatch each owning worker reads and FFTs its images
  (``MarginalLikelihood.prepare``, kept on the worker for the line search's re-evaluations),
  then computes its images' likelihoods, posterior marginals and the gradient of their sum
  (``MarginalLikelihood.evaluate``), one core per task.
* **The driver** holds the map, the solver state, the random generator and the importance
  sampler's per-particle state.  It draws each image's pose subset
  (``ImportanceSampler.sample``) while the workers read their images, ships the subsets with the
  shard's part of the batch, sums the shards' gradients and records the posteriors
  (``ImportanceSampler.update``).

Why the sampling stays on the driver: the single-process run draws every image's subset from one
generator in batch order, and a multinomial draw consumes the stream by an amount that depends
on the proposal, so no split of that stream over workers reproduces it; drawing on the driver
keeps the result equal to the single-process run for the same seed (the only differences are the
floating-point order of the shard sums), and :meth:`state_dict` is that of the wrapped objective,
so a checkpoint written with a cluster resumes without one and the other way round.  The cost is
that ``sample`` and ``update`` (a few per cent of an evaluation; ``benchmarks/distributed.py``)
run serially on the driver, and that the posterior marginals travel back (only their evaluated
entries: with importance sampling a small fraction of the grid).

Workers need cryonb installed (the same version) and, for stack-backed datasets, the stacks at the
same paths.  A worker that joins later is used from the next band-limit change; if a worker is
lost, the evaluation fails and the run can be resumed from its checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .dataset import Dataset
from .likelihood import LikelihoodResult, MarginalLikelihood, PoseSubset, PreparedImages
from .objective import MarginalObjective, SampledObjective
from .quadrature import Quadrature

__all__ = ["DistributedObjective", "dask_client", "worker_environment"]

_DOMAINS = ("directions", "inplane", "shifts")


# --------------------------------------------------------------------------- transport
def _pack_subsets(subsets: list[PoseSubset] | None, positions: NDArray) -> list | None:
    """The subsets of images ``positions``, an enumerated domain sent as ``None``."""
    if subsets is None:
        return None
    packed = []
    for p in positions:
        s = subsets[int(p)]
        packed.append(tuple(
            None if not np.any(getattr(s, "log_is_" + d)) and _is_range(getattr(s, d))
            else (getattr(s, d), getattr(s, "log_is_" + d)) for d in _DOMAINS))
    return packed


def _is_range(idx: NDArray) -> bool:
    return bool(idx.size > 0 and idx[0] == 0 and idx[-1] == idx.size - 1
                and np.all(np.diff(idx) == 1))


def _unpack_subsets(packed: list | None, quadrature: Quadrature) -> list[PoseSubset] | None:
    if packed is None:
        return None
    sizes = (quadrature.n_directions, quadrature.n_inplane, quadrature.n_shifts)
    out = []
    for entry in packed:
        parts = [(np.arange(n), np.zeros(n)) if e is None else e
                 for e, n in zip(entry, sizes, strict=True)]
        out.append(PoseSubset(parts[0][0], parts[1][0], parts[2][0], parts[0][1], parts[1][1],
                              parts[2][1]))
    return out


def _pack_rows(a: NDArray) -> tuple:
    """A (B, n) log-probability array as its finite entries (``-inf`` elsewhere)."""
    finite = np.isfinite(a)
    if finite.all():
        return (a.shape, None, a)
    flat = np.flatnonzero(finite)
    return (a.shape, flat, a.ravel()[flat])


def _unpack_rows(packed: tuple) -> NDArray:
    shape, flat, values = packed
    if flat is None:
        return values
    out = np.full(shape, -np.inf)
    out.ravel()[flat] = values
    return out


# --------------------------------------------------------------------------- worker tasks
def _one_core() -> None:
    """Tasks are the parallelism: each uses one core (numba; Dask's nanny sets BLAS to 1)."""
    import numba

    numba.set_num_threads(1)


def _prepare_part(shard: Dataset, likelihood: MarginalLikelihood, local: NDArray,
                  noise_sigma: float, dtype: Any) -> PreparedImages:
    """Read and FFT the shard's images ``local`` (runs on the shard's worker)."""
    _one_core()
    ctf = None if shard.ctf is None else shard.ctf.subset(local)
    return likelihood.prepare(shard.images(local), ctf, noise_sigma, dtype=dtype)


def _evaluate_part(likelihood: MarginalLikelihood, prepared: PreparedImages, volume: NDArray,
                   subsets: list | None, gradient: bool) -> dict[str, Any]:
    """Likelihoods, packed posterior marginals and gradient of one shard's images."""
    _one_core()
    volume_ft = likelihood.volume_to_fourier(volume)
    res = likelihood.evaluate(volume_ft, prepared,
                              subsets=_unpack_subsets(subsets, likelihood.quadrature),
                              gradient=gradient)
    return {"log_likelihood": res.log_likelihood, "n_evaluated": res.n_evaluated,
            "map": (res.map_direction, res.map_inplane, res.map_shift),
            "marginals": tuple(_pack_rows(a) for a in (res.log_marginal_directions,
                                                       res.log_marginal_inplane,
                                                       res.log_marginal_shifts)),
            "gradient": res.gradient}


# --------------------------------------------------------------------------- the objective
def _shard_dataset(dataset: Dataset, ids: NDArray) -> Dataset:
    """What a worker needs of particles ``ids``: lazy rows of the stacks, or the pixels."""
    sub = replace(dataset.subset(ids), rotations=None, shifts_A=None, half_set=None, truth=None)
    if dataset.reads_from_files():  # the worker opens the stacks itself
        return sub
    return Dataset.from_arrays(sub.images(), sub.pixel_size_A, ctf=sub.ctf)


@dataclass(frozen=True, eq=False)
class _Part:
    """The images of one minibatch that one shard owns."""

    worker: str
    positions: NDArray  # into the minibatch
    prepared: Any  # Future of PreparedImages on the worker


class DistributedObjective(SampledObjective):
    """A :class:`~cryonb.objective.MarginalObjective` whose likelihoods run on Dask workers.

    Parameters
    ----------
    objective : MarginalObjective
        The in-process objective: its dataset, noise sigma, quadrature options, precision,
        generator and importance sampler are used as they are (the last two stay here, on the
        driver; see the module docstring).
    client : distributed.Client
        A client of the cluster.

    Nothing is sent to the cluster until the first :meth:`evaluate`.  Values, gradients, the
    generator's stream and the sampler's state equal those of ``objective.evaluate`` to
    floating-point tolerance (the shards' sums are added in another order).
    """

    def __init__(self, objective: MarginalObjective, client: Any) -> None:
        if not isinstance(objective, MarginalObjective):
            raise TypeError(f"a Dask client distributes a MarginalObjective, not "
                            f"{type(objective).__name__}")
        self.local = objective
        self.client = client
        self._workers: tuple[str, ...] = ()
        self._bounds: NDArray | None = None  # shard j holds particles bounds[j] .. bounds[j+1]-1
        self._owners: list[str] = []
        self._shards: list[Any] = []
        self._likelihood_future: Any = None
        self._likelihood_sent: tuple[Any, tuple[str, ...]] | None = None
        self._check_workers = True
        self._prefetched: tuple[bytes, Any, list[_Part]] | None = None

    # ------------------------------------------------------------------ the wrapped objective
    @property
    def dataset(self) -> Dataset:
        return self.local.dataset

    @property
    def sampler(self) -> Any:
        """The wrapped objective's importance sampler (on the driver; None: exhaustive)."""
        return self.local.sampler

    @sampler.setter
    def sampler(self, sampler: Any) -> None:
        self.local.sampler = sampler

    @property
    def last_result(self) -> LikelihoodResult | None:
        """The LikelihoodResult of the latest evaluation (also the wrapped objective's)."""
        return self.local.last_result

    @last_result.setter
    def last_result(self, result: LikelihoodResult | None) -> None:
        self.local.last_result = result

    @property
    def rng(self) -> np.random.Generator:
        return self.local.rng

    @property
    def pixel_size_A(self) -> float:
        return self.local.pixel_size_A

    @property
    def likelihood(self) -> MarginalLikelihood | None:
        return self.local.likelihood

    def quadrature_for(self, max_freq_invA: float) -> Quadrature:
        """The wrapped objective's (cached) quadrature at ``max_freq_invA``."""
        return self.local.quadrature_for(max_freq_invA)

    def set_band_limit(self, max_freq_invA: float) -> None:
        """Band limit ``w`` (1/Å); the workers get the new engine with the next evaluation."""
        self.local.set_band_limit(max_freq_invA)
        self._check_workers = True

    def state_dict(self) -> dict[str, Any]:
        """The wrapped objective's (generator and sampler: both live on the driver)."""
        return self.local.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (also one written by the in-process objective)."""
        self.local.load_state_dict(state)

    # ------------------------------------------------------------------ cluster set-up
    @property
    def shard_workers(self) -> list[str]:
        """Worker address of every shard (empty before the first evaluation)."""
        return list(self._owners)

    def _sync(self) -> None:
        """Shards on the current workers, and the current likelihood engine on them."""
        if self._check_workers or self._bounds is None:
            nthreads = self.client.nthreads()
            if not nthreads:
                self.client.wait_for_workers(1)
                nthreads = self.client.nthreads()
            workers = tuple(sorted(nthreads))
            if workers != self._workers:
                self._reshard(workers, [int(nthreads[w]) for w in workers])
            self._check_workers = False
        lik = self.local.likelihood
        if self._likelihood_sent is None or self._likelihood_sent[0] is not lik \
                or self._likelihood_sent[1] != self._workers:
            self._likelihood_future = self.client.scatter(lik, workers=list(self._workers),
                                                          broadcast=True, hash=False)
            self._likelihood_sent = (lik, self._workers)

    def _reshard(self, workers: tuple[str, ...], nthreads: list[int]) -> None:
        owners = [w for w, t in zip(workers, nthreads, strict=True) for _ in range(max(t, 1))]
        n = len(self.local.dataset)
        owners = owners[:max(1, min(len(owners), n))]
        bounds = np.linspace(0, n, len(owners) + 1).round().astype(np.int64)
        self._shards = [self.client.scatter(
            _shard_dataset(self.local.dataset, np.arange(bounds[j], bounds[j + 1])),
            workers=[owner], hash=False) for j, owner in enumerate(owners)]
        self._workers, self._owners, self._bounds = workers, owners, bounds

    def close(self) -> None:
        """Release the shards and the engine held on the workers (re-sent if evaluated again)."""
        self._shards, self._owners, self._workers, self._bounds = [], [], (), None
        self._likelihood_future, self._likelihood_sent = None, None
        self._check_workers, self._prefetched = True, None

    # ------------------------------------------------------------------ evaluation
    def prefetch(self, indices: NDArray) -> None:
        """Let the owning workers read and FFT the images of a coming :meth:`evaluate` now.

        Their tasks have a lower priority than the current evaluation's; the prepared images
        are used if the next :meth:`evaluate` of these indices has the same band limit.
        """
        if self.local.likelihood is None:
            return
        idx = np.asarray(indices, dtype=np.int64)
        self._sync()
        self._prefetched = (idx.tobytes(), self.local.likelihood,
                            self._submit_prepare(idx, priority=-1))

    def _take_prefetched(self, idx: NDArray) -> list[_Part] | None:
        if self._prefetched is None:
            return None
        key, lik, parts = self._prefetched
        if key != idx.tobytes():
            return None
        self._prefetched = None
        return parts if lik is self.local.likelihood else None

    def _submit_prepare(self, idx: NDArray, priority: int = 0) -> list[_Part]:
        assert self._bounds is not None
        shard_of = np.searchsorted(self._bounds, idx, side="right") - 1
        parts = []
        for j in np.unique(shard_of):
            positions = np.flatnonzero(shard_of == j)
            local = idx[positions] - self._bounds[j]
            owner = self._owners[j]
            fut = self.client.submit(
                _prepare_part, self._shards[j], self._likelihood_future, local,
                self.local.noise_sigma, self.local.dtype, workers=[owner],
                allow_other_workers=True, pure=False, priority=priority)
            parts.append(_Part(owner, positions, fut))
        return parts

    def _prepare(self, idx: NDArray) -> list[_Part]:
        """The owning workers start reading their images (or take the prefetched ones)."""
        self._sync()
        return self._take_prefetched(idx) or self._submit_prepare(idx)

    def _compute(self, volume: NDArray, prepared: list[_Part], subsets: Any,
                 gradient: bool) -> LikelihoodResult:
        """The shards' likelihoods on the workers, assembled in the minibatch's order."""
        parts, lik = prepared, self.local.likelihood
        workers = sorted({p.worker for p in parts})
        vol = self.client.scatter(np.asarray(volume, dtype=self.local.dtype), workers=workers,
                                  broadcast=True, hash=False)
        futures = [self.client.submit(
            _evaluate_part, self._likelihood_future, p.prepared, vol,
            _pack_subsets(subsets, p.positions), gradient, workers=[p.worker],
            allow_other_workers=True, pure=False) for p in parts]
        outs = self.client.gather(futures)
        return self._assemble(outs, parts, sum(len(p.positions) for p in parts), lik.quadrature)

    @staticmethod
    def _assemble(outs: list[dict[str, Any]], parts: list[_Part], b: int,
                  quadrature: Quadrature) -> LikelihoodResult:
        """One LikelihoodResult for the minibatch, in its order; the gradients summed."""
        log_l, n_eval = np.zeros(b), np.zeros(b, np.int64)
        maps = [np.zeros(b, np.int64) for _ in range(3)]
        sizes = (quadrature.n_directions, quadrature.n_inplane, quadrature.n_shifts)
        marg = [np.full((b, n), -np.inf) for n in sizes]
        grad = None
        for out, part in zip(outs, parts, strict=True):
            pos = part.positions
            log_l[pos], n_eval[pos] = out["log_likelihood"], out["n_evaluated"]
            for dst, src in zip(maps, out["map"], strict=True):
                dst[pos] = src
            for dst, packed in zip(marg, out["marginals"], strict=True):
                dst[pos] = _unpack_rows(packed)
            if out["gradient"] is not None:
                g = np.asarray(out["gradient"], dtype=np.float64)
                grad = g if grad is None else grad + g
        return LikelihoodResult(
            log_likelihood=log_l, log_marginal_directions=marg[0], log_marginal_inplane=marg[1],
            log_marginal_shifts=marg[2], map_direction=maps[0], map_inplane=maps[1],
            map_shift=maps[2], n_evaluated=n_eval, quadrature=quadrature, gradient=grad)


# --------------------------------------------------------------------------- clients
@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None,
                **cluster_kwargs: Any) -> Iterator[Any]:
    """A ``distributed.Client``: of the scheduler at ``scheduler``, or of a new ``LocalCluster``.

    ``n_workers``: start a ``LocalCluster`` of that many single-threaded worker processes
    (``cluster_kwargs`` go to it) with :func:`worker_environment`; its workers ignore SIGINT,
    so that Ctrl-C in a terminal stops the run through the driver (which checkpoints) instead
    of killing the workers in the middle of an evaluation.  With neither, yields ``None``
    (in-process run).  The client (and a cluster started here) is closed on exit.
    """
    if scheduler is not None and n_workers is not None:
        raise ValueError("give either a scheduler address or a number of local workers")
    if scheduler is None and n_workers is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if n_workers < 1:
        raise ValueError("n_workers must be positive")
    import dask

    kwargs = {"threads_per_worker": 1, "processes": True, **cluster_kwargs}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}), \
            LocalCluster(n_workers=n_workers, **kwargs) as cluster, Client(cluster) as client:
        if kwargs["processes"]:
            client.run(_ignore_sigint)
        yield client


def _ignore_sigint() -> None:
    """Ctrl-C reaches the whole process group: let the driver stop the run, not kill workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_environment() -> dict[str, Any]:
    """Dask's ``distributed.nanny.pre-spawn-environ`` without ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets that variable for its worker processes so that freed memory goes back to the
    operating system at once; setting it also freezes glibc's mmap threshold at 128 kB, so every
    large temporary array of the likelihood (slices, score blocks, the padded map) is a fresh
    ``mmap`` whose pages fault in again.  Measured here: a 100-image importance-sampled
    evaluation took 30-40 % longer with it.  The BLAS / OpenMP thread limits (1) are kept.
    For workers started elsewhere (``dask worker``, dask-jobqueue), set the same with
    ``dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()})`` or the
    ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON`` variable where the nannies start.
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env
