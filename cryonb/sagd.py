"""Stochastic Average Gradient Descent (SAGD) for ab initio reconstruction (paper Section 3.2).

The solver owns the optimisation loop and its state only; the physics is behind an
:class:`Objective` (:mod:`cryonb.evaluation`; the marginal likelihood over poses is
:mod:`cryonb.objective`), and reading, writing and plotting live elsewhere
(:mod:`cryonb.checkpoint`, :mod:`cryonb.run_folder`, :mod:`cryonb.commands`).

Update (Eqs. 7-8), with ``V`` the real-space density ``(N, N, N)``::

    V <- max(0, V - (eps / L) * (mean of the stored minibatch gradients + grad prior / n_train))

* minibatch gradients are of the mean negative log-likelihood per image of that batch; each
  batch's latest gradient is stored (:class:`GradientMemory`) and the step uses the mean over
  the batches seen so far (SAG);
* ``L`` by backtracking line search on the current batch, accepted when
  ``f(V - g/L) <= f(V) - ||g||^2 / (2L)`` (every ``linesearch_every`` iterations and whenever
  the band limit changes);
* ``eps = max(eps_min, 2^(1 - floor(it / eps_halving)))`` (the paper: 1/16 and 150);
* frequency marching: the band limit ``w`` starts at ``start_max_freq_invA`` (1/40 Å^-1) and
  grows by ``freq_step_invA`` up to the target (:class:`cryonb.band_limit.BandLimitSchedule`,
  the solver's :attr:`SAGDSolver.band_limits`): every ``iterations_per_stage`` iterations, or
  when the ``stage_policy`` (:class:`cryonb.marching.StagePolicy`) says a stage is over;
* positivity by truncation after each step;
* every record carries the seconds of each phase of its iteration (:mod:`cryonb.profiling`).

Parameters and the learning-rate clock: :mod:`cryonb.sagd_params` (re-exported here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .band_limit import BandLimitSchedule
from .evaluation import Evaluation, Objective
from .gradient_memory import GradientMemory
from .importance import DOMAINS
from .marching import StagePolicy
from .priors import NoPrior, Prior
from .profiling import PHASES, field_name
from .sagd_params import SAGDParams, band_limit_at, learning_rate_at, schedule_iteration

__all__ = [
    "BandLimitSchedule",
    "Evaluation",
    "GradientMemory",
    "Objective",
    "SAGDParams",
    "SAGDSolver",
    "StagePolicy",
    "band_limit_at",
    "learning_rate_at",
    "random_spheres",
    "schedule_iteration",
]


# --------------------------------------------------------------------------- initial map
def random_spheres(box_size: int, rng: np.random.Generator, *, n_spheres: int = 20,
                   radius_fraction: float = 0.35, mass: float = 1.0) -> NDArray:
    """A random start: a sum of uniform spheres (the paper's initialisation), ``(N, N, N)``.

    Sphere centres lie within ``radius_fraction * N`` of the centre ``N//2``, radii are drawn in
    ``[0.04, 0.12] * N``; the map is scaled to total ``mass`` (sum of voxels).
    """
    n = box_size
    k = np.arange(n) - n // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij", sparse=True)
    volume = np.zeros((n, n, n), dtype=np.float64)
    for _ in range(n_spheres):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        centre = direction * rng.uniform(0, radius_fraction * n) ** 1.0
        radius = rng.uniform(0.04, 0.12) * n
        inside = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= radius**2
        volume += inside
    total = volume.sum()
    return volume * (mass / total) if total > 0 else volume


# --------------------------------------------------------------------------- the solver
_RECORD_FIELDS = ("iteration", "clock", "stage", "max_freq_invA", "objective", "prior",
                  "heldout_nll",
                  "L", "eps", "step_size", "fraction_evaluated", "fraction_first_visit",
                  *(f"fraction_{d}" for d in DOMAINS),
                  "wall_time_s", "batch", "t_iteration_s", *(field_name(p) for p in PHASES))


@dataclass
class _State:
    volume: NDArray
    heldout: NDArray
    batch_of: NDArray  # batch index of every training image (-1 for held-out)
    order: NDArray  # order of the batches in the current epoch
    iteration: int = 0
    stage: int = -1
    L: float = 1.0
    elapsed_s: float = 0.0
    best_heldout: float = math.inf
    evaluations_without_gain: int = 0
    stop_reason: str = ""
    records: list[dict[str, float]] = field(default_factory=list)


class SAGDSolver:
    """SAGD with frequency marching, line-searched step sizes and a held-out set.

    Parameters
    ----------
    objective : Objective
        Data term over images ``0 .. n_images - 1``.
    n_images : int
    box_size : int
    params : SAGDParams
    rng : numpy.random.Generator
        The only source of randomness (data split, batch order, random start, and whatever the
        objective draws through its own generator).
    prior : Prior, optional
        ``-log p(V)`` enters the objective divided by the number of training images.
    initial_volume : ndarray (N, N, N), optional
        Default: :func:`random_spheres` with ``initial_mass``.
    initial_mass : float
        Sum of voxels of the random start.
    callback : callable, optional
        ``callback(solver, record)`` after every iteration (e.g. a live dashboard).
    client : distributed.Client, optional
        Compute each minibatch's likelihoods and gradient on the Dask cluster's workers, each
        reading its own shard of the particles (the objective is wrapped in a
        :class:`cryonb.distributed.DistributedObjective`; results equal the in-process run for
        the same seed to floating-point tolerance).

    Nothing is computed until :meth:`initialize` (called by :meth:`step`/:meth:`run`).
    """

    def __init__(self, objective: Objective, *, n_images: int, box_size: int,
                 params: SAGDParams | None = None, rng: np.random.Generator,
                 prior: Prior | None = None, initial_volume: NDArray | None = None,
                 initial_mass: float = 1.0,
                 callback: Callable[[SAGDSolver, dict[str, float]], None] | None = None,
                 client: Any = None) -> None:
        if client is not None:
            from .distributed import DistributedObjective

            objective = DistributedObjective(objective, client)  # type: ignore[arg-type]
        self.objective = objective
        self.n_images = int(n_images)
        self.box_size = int(box_size)
        self.params = params or SAGDParams()
        #: the frequency-marching schedule (the one place the band limit is evaluated)
        self.band_limits = BandLimitSchedule.from_params(self.params)
        self.rng = rng
        self.prior = prior or NoPrior()
        self.initial_volume = initial_volume
        self.initial_mass = float(initial_mass)
        self.callback = callback
        self.memory = GradientMemory(self.box_size)
        self._state: _State | None = None
        self._stop_requested = False
        self._sampling_t: int | None = None  # set by step() (see sampling_clock)

    # ------------------------------------------------------------------ set-up and access
    def initialize(self) -> None:
        """Split held-out / training images into batches and make the starting map."""
        if self._state is not None:
            return
        p = self.params
        n_held, n_batches = p.split_sizes(self.n_images)
        perm = self.rng.permutation(self.n_images)
        heldout = np.sort(perm[:n_held])
        train = perm[n_held:]
        batch_of = np.full(self.n_images, -1, dtype=np.int64)
        batch_of[train] = np.arange(len(train)) % n_batches
        if self.initial_volume is not None:
            volume = np.array(self.initial_volume, dtype=np.float64)
            if volume.shape != (self.box_size,) * 3:
                raise ValueError(f"initial_volume must be {(self.box_size,) * 3}")
        else:
            volume = random_spheres(self.box_size, self.rng, mass=self.initial_mass)
        self._state = _State(volume=volume, heldout=heldout, batch_of=batch_of,
                             order=self.rng.permutation(n_batches), L=p.L0)

    @property
    def state(self) -> _State:
        self.initialize()
        assert self._state is not None
        return self._state

    @property
    def volume(self) -> NDArray:
        """The current map ``(N, N, N)`` (float64, ``[z, y, x]``)."""
        return self.state.volume

    @property
    def iteration(self) -> int:
        return self.state.iteration

    @property
    def clock(self) -> int:
        """The job's iteration clock, ``iteration + params.iteration_offset``: what the objective
        (importance-sampling schedules) is given."""
        return self.state.iteration + self.params.iteration_offset

    @property
    def n_batches(self) -> int:
        return int(self.state.order.size)

    @property
    def n_train(self) -> int:
        return int((self.state.batch_of >= 0).sum())

    @property
    def heldout_indices(self) -> NDArray:
        return self.state.heldout

    @property
    def done(self) -> bool:
        """True once a stopping rule has fired (see :attr:`stop_reason`)."""
        return bool(self.state.stop_reason)

    @property
    def stop_reason(self) -> str:
        return self.state.stop_reason

    def stop(self, reason: str) -> None:
        """Mark the run as finished with ``reason`` (kept if a stopping rule fired already)."""
        self.state.stop_reason = self.state.stop_reason or str(reason)

    def release_memory(self) -> None:
        """Drop the stored minibatch gradients (the solver takes no further step after this
        without rebuilding them; its map, iteration count and history stay)."""
        self.memory = GradientMemory(self.box_size)

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop after the current iteration (thread-safe flag)."""
        self._stop_requested = True

    def batch_indices(self, batch: int) -> NDArray:
        """Image indices of training batch ``batch``."""
        return np.flatnonzero(self.state.batch_of == batch)

    @property
    def history(self) -> Any:
        """An ``xarray.Dataset`` indexed by iteration: objective, held-out NLL, w, L, step, ..."""
        import xarray as xr

        records = self.state.records
        # records of an older version may lack the timing fields: NaN there
        data = {name: ("iteration", np.array([r.get(name, math.nan) for r in records],
                                             dtype=np.float64))
                for name in _RECORD_FIELDS if name != "iteration"}
        coords = {"iteration": np.array([int(r["iteration"]) for r in records], dtype=np.int64)}
        ds = xr.Dataset(data, coords=coords)
        ds["max_freq_invA"].attrs["units"] = "1/Å"
        ds["wall_time_s"].attrs["units"] = "s"
        ds["objective"].attrs["long_name"] = ("minibatch mean negative log-likelihood per image"
                                              " + prior")
        ds["prior"].attrs["long_name"] = "-log p(V) / n_train (the part of objective)"
        ds["heldout_nll"].attrs["long_name"] = "held-out mean negative log-likelihood per image"
        for name in ("t_iteration_s", *(field_name(p) for p in PHASES)):
            ds[name].attrs["units"] = "s"
        return ds

    # ------------------------------------------------------------------ pieces of a step
    def _value_and_grad(self, volume: NDArray, indices: NDArray, *, record: bool,
                        reuse: Any = None, gradient: bool = True) -> tuple[float, NDArray | None,
                                                                        Evaluation]:
        ev = self.objective.evaluate(volume, indices, gradient=gradient, record=record,
                                     iteration=self.sampling_clock, reuse=reuse)
        n = len(indices)
        value = float(ev.nll.mean()) + self.prior.log_prob(volume) * -1.0 / self.n_train
        grad = None
        if gradient:
            grad = ev.grad / n - np.asarray(self.prior.grad(volume)) / self.n_train
        return value, grad, ev

    def _line_search(self, volume: NDArray, indices: NDArray, value: float, grad: NDArray,
                     token: Any, L: float | None = None, nll: NDArray | None = None) -> float:
        """Smallest L (largest step) on a doubling grid from ``L / 2`` (default: the current L)
        with the sufficient-decrease test ``f(V - g/L) <= f(V) - ||g||^2 / (2L)``.

        With ``params.linesearch_images`` and an objective that can restrict its reuse token
        (``restrict_token(token, rows)``), ``f`` is the mean over the batch's first
        ``linesearch_images`` images (their per-image NLLs ``nll`` give ``f(V)``), ``g`` still
        the whole batch's gradient: each trial costs that fraction of a batch evaluation.
        """
        L = self.state.L if L is None else L
        g2 = float(np.vdot(grad, grad))
        if g2 == 0:
            return L
        m = self.params.linesearch_images
        restrict = getattr(self.objective, "restrict_token", None)
        if m is not None and nll is not None and restrict is not None and len(indices) > m:
            rows = np.arange(m)
            sub = restrict(token, rows)
            if sub is not None:
                value = value - float(np.mean(nll)) + float(np.mean(nll[rows]))
                indices, token = indices[rows], sub
        trial = L / 2.0
        for _ in range(self.params.linesearch_max_steps):
            candidate = volume - grad / trial
            new_value, _, _ = self._value_and_grad(candidate, indices, record=False, reuse=token,
                                                   gradient=False)
            if new_value <= value - g2 / (2.0 * trial):
                return trial
            trial *= 2.0
        return trial

    def _heldout_nll(self, volume: NDArray) -> float:
        held = self.state.heldout
        if held.size == 0:
            return math.nan
        # held-out particles keep their own importance-sampling state (record=True): it
        # learns only where their poses are, never the map
        ev = self.objective.evaluate(volume, held, gradient=False, record=True,
                                     iteration=self.sampling_clock)
        return float(ev.nll.mean())

    # ------------------------------------------------------------------ one iteration
    def step(self) -> dict[str, float]:
        """Run one SAGD iteration and return its record.

        The solver's state (map, stored gradients, L, stage, iteration, batch order and random
        generator) changes only when the iteration completes: if anything inside raises, it is
        left as it was before the iteration (the objective's own per-particle sampling state
        may have moved on; a checkpoint taken before the iteration restores it too).
        """
        st = self.state
        p = self.params
        t0 = time.perf_counter()
        it = st.iteration
        rng_state = self.rng.bit_generator.state
        stage, w = self.next_stage()
        stage_changed = stage != st.stage
        self._sampling_t = self._sampling_time(w, 0 if stage_changed
                                               else len(self._stage_records()))
        if stage_changed:
            self.objective.set_band_limit(w)
        order = st.order
        if it > 0 and it % self.n_batches == 0:  # new epoch: new batch order
            order = self.rng.permutation(self.n_batches)
        batch = int(order[it % self.n_batches])
        indices = self.batch_indices(batch)
        saved_entry = self.memory.entry(batch)
        times = dict.fromkeys(PHASES, 0.0)
        clock = time.perf_counter
        try:
            self._prefetch_next(it, order)
            value, grad, ev = self._value_and_grad(st.volume, indices, record=True)
            assert grad is not None and ev.grad is not None
            prior_term = -self.prior.log_prob(st.volume) / self.n_train  # inside ``value``
            t1 = clock()
            for phase, seconds in ev.timings.items():
                times[phase] = times.get(phase, 0.0) + seconds
            if not ev.timings:  # an objective that does not break its time down
                times["engine"] = t1 - t0
            L = st.L
            if stage_changed or it % p.linesearch_every == 0:
                L = self._line_search(st.volume, indices, value, grad, ev.token, L, ev.nll)
            t2 = clock()
            times["linesearch"] = t2 - t1
            # the memory holds the likelihood part only; the prior's gradient is exact per step
            radius_px = w * self.box_size * self.objective.pixel_size_A + 2.0
            self.memory.update(batch, ev.grad / len(indices), radius_px)
            eps = learning_rate_at(it, p)
            direction = self.memory.mean() - np.asarray(self.prior.grad(st.volume)) / self.n_train
            volume = st.volume - (eps / L) * direction
            if p.positivity:
                np.maximum(volume, 0.0, out=volume)
            t3 = clock()
            times["update"] = t3 - t2
            heldout = math.nan
            if stage_changed or it % p.heldout_every == 0:
                heldout = self._heldout_nll(volume)
            times["heldout"] = clock() - t3
        except BaseException:
            self.memory.restore(batch, saved_entry)
            self.rng.bit_generator.state = rng_state
            if stage_changed and st.stage >= 0:
                self.objective.set_band_limit(self.last_band_limit_invA)
            raise
        # commit
        if stage_changed:
            st.stage = stage
            st.best_heldout, st.evaluations_without_gain = math.inf, 0
        if not math.isnan(heldout):
            if heldout < st.best_heldout * (1 - p.heldout_rel_tol * np.sign(st.best_heldout)):
                st.best_heldout, st.evaluations_without_gain = heldout, 0
            else:
                st.evaluations_without_gain += 1
        st.order, st.L, st.volume = order, L, volume
        st.iteration = it + 1
        took = time.perf_counter() - t0
        st.elapsed_s += took
        record = {"iteration": it, "clock": it + p.iteration_offset, "stage": stage,
                  "max_freq_invA": w, "objective": value,
                  "prior": prior_term,
                  "heldout_nll": heldout, "L": st.L,
                  "eps": eps, "step_size": eps / st.L,
                  "fraction_evaluated": ev.fraction_evaluated,
                  "fraction_first_visit": ev.fraction_first_visit,
                  **{f"fraction_{d}": ev.fraction_domains.get(f"fraction_{d}", math.nan)
                     for d in DOMAINS},
                  "wall_time_s": st.elapsed_s,
                  "batch": batch, "t_iteration_s": took,
                  **{field_name(ph): float(times.get(ph, 0.0)) for ph in PHASES}}
        st.records.append(record)
        self._check_stop(stage, w)
        if self.callback is not None:
            self.callback(self, record)
        return record

    def next_stage(self) -> tuple[int, float]:
        """``(stage, w)`` of the next iteration: the fixed schedule's, or with a
        :class:`StagePolicy` the current stage or the next one when the policy says the
        current one is over (a pure function of the state and its records)."""
        st, policy = self.state, self.params.stage_policy
        if policy is None:
            return self.band_limits.at(st.iteration)
        if st.stage < 0:
            return 0, self.band_limits.of_stage(0)
        stage = st.stage
        if policy.advance(stage, self.band_limits.n_stages, self._stage_records(),
                          st.elapsed_s, st.iteration):
            stage += 1
        return stage, self.band_limits.of_stage(stage)

    @property
    def sampling_clock(self) -> int:
        """The clock the objective's importance-sampling schedule (alpha, T) follows: the
        job's :attr:`clock` on the fixed schedule; with a :class:`StagePolicy`, the
        iteration the fixed schedule would be at, ``iterations_per_stage`` per band-limit step
        since the job's first band limit plus the iterations into the current stage (at most
        a stage), so the annealing follows the band limit whatever the stages' lengths."""
        return self.clock if self._sampling_t is None else self._sampling_t

    def _sampling_time(self, w: float, into_stage: int) -> int | None:
        p = self.params
        if p.stage_policy is None:
            return None
        w0 = (p.clock_start_max_freq_invA if p.clock_start_max_freq_invA is not None
              else p.start_max_freq_invA)
        steps = max(0, round((w - w0) / p.freq_step_invA))
        return int(steps * p.iterations_per_stage + min(into_stage, p.iterations_per_stage))

    @property
    def next_band_limit_invA(self) -> float:
        """The band limit (1/Å) the next iteration will run at (:meth:`next_stage`)."""
        return self.next_stage()[1]

    @property
    def last_band_limit_invA(self) -> float:
        """The band limit (1/Å) of the last iteration (the start before any)."""
        records = self.state.records
        return float(records[-1]["max_freq_invA"] if records else self.band_limits.start_invA)

    def _stage_records(self) -> list[dict[str, float]]:
        """The records of the current stage (the trailing run of records with its number)."""
        records, stage = self.state.records, self.state.stage
        n = 0
        while n < len(records) and int(records[-1 - n]["stage"]) == stage:
            n += 1
        return records[len(records) - n:]

    def fitted_band_limit_invA(self, min_iterations: int) -> float | None:
        """The highest band limit (1/Å) this solver has run at least ``min_iterations``
        iterations at (None if none): what its map has been fitted to.

        A band limit entered in the last few iterations has not shaped the map yet; counting it
        would let an FSC claim frequencies no data were fitted at.
        """
        return self.band_limits.fitted(self.state.records, min_iterations)

    def _prefetch_next(self, it: int, order: NDArray) -> None:
        """Let the objective read the next iteration's batch while this one is computed.

        Objectives without a ``prefetch(indices)`` method are left alone.  At the end of an
        epoch the next batch order is not drawn yet, so nothing is announced.
        """
        prefetch = getattr(self.objective, "prefetch", None)
        if prefetch is not None and (it + 1) % self.n_batches != 0:
            prefetch(self.batch_indices(int(order[(it + 1) % self.n_batches])))

    def _check_stop(self, stage: int, w: float) -> None:
        st, p = self.state, self.params
        at_target = self.band_limits.reached_target(w)
        if at_target and st.evaluations_without_gain >= p.patience:
            st.stop_reason = "held-out NLL stopped improving at the target band limit"
        elif p.max_iterations is not None and st.iteration >= p.max_iterations:
            st.stop_reason = f"reached max_iterations = {p.max_iterations}"
        elif (p.max_epochs is not None
              and st.iteration * p.batch_size >= p.max_epochs * max(self.n_train, 1)):
            st.stop_reason = f"reached max_epochs = {p.max_epochs}"
        elif p.time_limit_s is not None and st.elapsed_s >= p.time_limit_s:
            st.stop_reason = f"reached the time limit of {p.time_limit_s:.0f} s"

    def run(self, *, max_steps: int | None = None, progress: bool = True,
            on_step: Callable[[SAGDSolver], None] | None = None) -> NDArray:
        """Iterate until a stopping rule fires, :meth:`request_stop`, or ``max_steps``.

        ``on_step(solver)`` runs after each iteration (the CLI uses it to checkpoint).
        Returns the current map.
        """
        from tqdm.auto import tqdm

        self.initialize()
        self._stop_requested = False
        steps = 0
        # a time budget alone: the bar counts solver seconds, so its ETA is the budget's end
        timed = self.params.max_iterations is None and self.params.time_limit_s is not None
        with tqdm(desc="SAGD", unit="s" if timed else "it", disable=not progress,
                  total=self.params.time_limit_s if timed else self.params.max_iterations,
                  initial=round(self.state.elapsed_s, 1) if timed else self.iteration) as bar:
            while not self.done and not self._stop_requested:
                if max_steps is not None and steps >= max_steps:
                    break
                record = self.step()
                steps += 1
                bar.update(round(self.state.elapsed_s, 1) - bar.n if timed else 1)
                bar.set_postfix(w=f"1/{1 / record['max_freq_invA']:.1f}Å",
                                nll=f"{record['objective']:.4g}",
                                frac=f"{record['fraction_evaluated']:.2g}")
                if on_step is not None:
                    on_step(self)
        return self.volume

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit: arrays and JSON-able scalars."""
        st = self.state
        import json

        return {
            "volume": st.volume.copy(), "heldout": st.heldout.copy(),
            "batch_of": st.batch_of.copy(), "order": st.order.copy(),
            "scalars": json.dumps({
                "iteration": st.iteration, "stage": st.stage, "L": st.L,
                "elapsed_s": st.elapsed_s, "best_heldout": st.best_heldout,
                "evaluations_without_gain": st.evaluations_without_gain,
                "stop_reason": st.stop_reason, "records": st.records,
                "rng": self.rng.bit_generator.state, "params": asdict(self.params),
            }),
            "memory": self.memory.state_dict(),
            "objective": self.objective.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the objective's band limit is re-applied)."""
        import json

        scalars = json.loads(str(state["scalars"]))
        self._state = _State(
            volume=np.array(state["volume"], dtype=np.float64),
            heldout=np.asarray(state["heldout"], dtype=np.int64),
            batch_of=np.asarray(state["batch_of"], dtype=np.int64),
            order=np.asarray(state["order"], dtype=np.int64),
            iteration=int(scalars["iteration"]), stage=int(scalars["stage"]),
            L=float(scalars["L"]), elapsed_s=float(scalars["elapsed_s"]),
            best_heldout=float(scalars["best_heldout"]),
            evaluations_without_gain=int(scalars["evaluations_without_gain"]),
            stop_reason=str(scalars["stop_reason"]), records=list(scalars["records"]),
        )
        self.rng.bit_generator.state = scalars["rng"]
        self.memory.load_state_dict(state["memory"])
        if self._state.stage >= 0:
            self.objective.set_band_limit(self.last_band_limit_invA)
        self.objective.load_state_dict(state["objective"])
        # the schedule clock of the last iteration, as step() had set it
        records = self._state.records
        self._sampling_t = (None if not records else self._sampling_time(
            float(records[-1]["max_freq_invA"]), len(self._stage_records()) - 1))
