"""The ab initio job: Dataset -> preprocessing -> SAGD with importance sampling -> maps and poses.

This module wires the library objects together and owns the run folder (outputs and
checkpoints); :class:`cryonb.sagd.SAGDSolver` itself does no I/O.

Gold standard: the solver runs on all training images until the band limit reaches
``split_res_A`` (a common low-resolution start, as RELION does) or until the common phase has
used ``common_fraction`` of the iteration or time budget, whichever comes first.  Then two
solvers continue independently on two random halves of the data, each from the common map
low-passed so that it has no content above the split band limit (the edge of the low-pass ends
at it): above the split the halves share nothing.  The half-maps give the FSC 0.143
(:func:`cryonb.metrics.half_map_resolution`), capped at the band limit both halves have
*fitted* (run ``min_fitted_iterations`` iterations at); their average is ``map.mrc``.  When
the budget ends before the halves have fitted their own data, there are no independent halves:
``run.json`` then reports ``half_map_resolution_A_0143: null`` with the reason.  With a known
truth the map is also scored against it at FSC 0.5 (aligned, both hands, same cap).

Checkpoints hold only completed iterations: if an iteration raises, the last good checkpoint is
left as it was.  A resume refuses options that change the job (budgets may change; the first
stage keeps its saved length and the run says so).  One process at a time works in a run
folder (:class:`cryonb.checkpoint.RunLock`).

Run folder::

    map.mrc                         the ab initio map: mean of sagd_half1.mrc, sagd_half2.mrc
    half1.mrc, half2.mrc            each half's particles reconstructed at its MAP poses (the
                                    gold-standard pair); map_from_halves.mrc their mean
    particles.star                  RELION 3.1: MAP poses and origins, rlnRandomSubset 1/2
    history.csv                     per-iteration objective, held-out NLL, w, L, step, IS fraction
    fsc.png, fsc.csv                half-map FSC (and vs the truth when it is known)
    run.json                        configuration, timing, resolutions (see _finish)
    checkpoint.npz                  everything needed to resume (written atomically)
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .checkpoint import RunLock, load_checkpoint, save_checkpoint
from .dataset import Dataset
from .diagnostics import estimate_mass
from .fourier import lowpass
from .importance import ImportanceSampler, ISSchedule
from .io.errors import input_error
from .objective import MarginalObjective, QuadratureOptions
from .priors import ExponentialPrior
from .sagd import (
    GradientMemory,
    SAGDParams,
    SAGDSolver,
    band_limit_at,
    random_spheres,
)

__all__ = ["AbInitioConfig", "AbInitioRun", "estimate_mass", "is_schedule_for", "summary_lines"]


@dataclass(frozen=True)
class AbInitioConfig:
    """Settings of an ab initio run (units in the names).

    ``box_size``: Fourier-crop the images to this box first (None: keep).  ``max_res_A``:
    target resolution (None: Nyquist of the working box).  ``start_res_A``: first band limit
    (paper: 40 Å).  ``first_stage_epochs``: the first band-limit stage lasts this many
    passes over the training images (at least ``iterations_per_stage`` iterations, at most a
    third of ``max_iterations`` when that budget is given): the shape
    is decided there (measured on 10,000 GroEL images at 7.5 Å/px, correlation with the truth
    of the 40 Å map: 0.55 after 0.5 epoch, 0.63 / 0.68 / 0.76 after 1.5 / 2 / 3 epochs; a
    correct 40 Å map scores 0.79).  ``split_res_A``: where the two half-sets separate.  Budgets:
    ``max_iterations`` and ``time_limit_min`` (the whole job; an iteration of the two halves
    counts once).  ``common_fraction``: the common phase ends (the halves separate) after this
    fraction of either budget at the latest, so that a short budget still leaves two thirds of
    itself for independent halves; the first stage is capped the same way in an iteration
    budget.  ``min_fitted_iterations``: a band limit counts as fitted (for the FSC cap and for
    independent halves) only after this many iterations at it; 10 iterations of 100 images
    let the new shell's coefficients move from zero to a third or more of their final size
    (the learning rate is about 1 then).  ``checkpoint_every_s``: how often to save.
    ``prior_rate``: the exponential prior's rate per unit density (None: no prior).
    """

    box_size: int | None = None
    max_res_A: float | None = None
    start_res_A: float = 40.0
    first_stage_epochs: float = 3.0
    split_res_A: float = 30.0
    freq_step_invA: float = 0.005
    iterations_per_stage: int = 30
    batch_size: int = 100
    n_heldout: int = 50
    max_iterations: int | None = None
    time_limit_min: float | None = None
    seed: int = 0
    particle_radius_A: float | None = None
    shift_sigma_A: float = 10.0
    shift_extent_A: float = 30.0
    ess_scale: float = 10.0
    prior_rate: float | None = None
    checkpoint_every_s: float = 120.0
    gold_standard: bool = True
    common_fraction: float = 1.0 / 3.0
    min_fitted_iterations: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.common_fraction < 1.0:
            raise ValueError(f"common_fraction must lie in (0, 1), got {self.common_fraction}")
        if self.min_fitted_iterations < 1:
            raise ValueError("min_fitted_iterations must be >= 1")


#: Options whose change between a run and its resume only changes the budget, not the job.
BUDGET_OPTIONS = ("checkpoint_every_s", "time_limit_min", "max_iterations")


def is_schedule_for(iterations_per_stage: int) -> ISSchedule:
    """The reference's IS schedule, compressed in time by ``iterations_per_stage / 150``."""
    f = iterations_per_stage / 150.0
    ref = ISSchedule.reference()
    return replace(ref, alpha_rate=ref.alpha_rate / f, alpha_delay=round(ref.alpha_delay * f),
                   temperature_scale=ref.temperature_scale * f,
                   temperature_delay=round(ref.temperature_delay * f),
                   chirality_flip_until=round(ref.chirality_flip_until * f))


@dataclass
class _Half:
    name: str
    dataset: Dataset
    ids: NDArray  # indices into the working dataset
    solver: SAGDSolver


@dataclass
class AbInitioRun:
    """One ab initio job on ``dataset`` writing into ``out_dir`` (see the module docstring).

    Call :meth:`run`; with ``resume=True`` it continues from ``out_dir/checkpoint.npz``.
    ``client``: a ``distributed.Client``; every solver then computes its minibatches on the
    cluster's workers (:mod:`cryonb.distributed`; same results as without).
    """

    dataset: Dataset
    out_dir: Path
    config: AbInitioConfig = field(default_factory=AbInitioConfig)
    progress: bool = True
    callback: Any = None
    client: Any = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self._stop = False
        self._last_checkpoint = 0.0
        self.phase = "common"
        self.halves: list[_Half] = []
        self.messages: list[str] = []  # what the run wants the user to know (CLI prints)
        self.split_max_freq_invA: float | None = None

    # ------------------------------------------------------------------ set-up
    def _prepare(self) -> None:
        cfg = self.config
        ds = self.dataset.normalized()
        if cfg.box_size is not None and cfg.box_size < ds.box_size:
            ds = ds.fourier_cropped(cfg.box_size)
        self.work = ds
        self.noise_sigma = ds.estimate_noise_sigma()
        nyquist = 0.5 / ds.pixel_size_A
        target = nyquist if cfg.max_res_A is None else min(nyquist, 1.0 / cfg.max_res_A)
        start = min(1.0 / cfg.start_res_A, target)
        split = min(max(1.0 / cfg.split_res_A, start), target)
        params = SAGDParams(
            batch_size=min(cfg.batch_size, max(1, len(ds) // 4)), n_heldout=cfg.n_heldout,
            start_max_freq_invA=start, target_max_freq_invA=target,
            freq_step_invA=cfg.freq_step_invA, iterations_per_stage=cfg.iterations_per_stage,
            eps_halving=cfg.iterations_per_stage,
            max_iterations=cfg.max_iterations,
            time_limit_s=None if cfg.time_limit_min is None else 60.0 * cfg.time_limit_min)
        first = int(np.ceil(cfg.first_stage_epochs * params.split_sizes(len(ds))[1]))
        if cfg.max_iterations is not None:  # leave room for the march in an iteration budget
            first = min(first, int(cfg.max_iterations * cfg.common_fraction))
        self.params = replace(params, first_stage_iterations=max(cfg.iterations_per_stage, first))
        self.split_freq = split
        self.mass = estimate_mass(ds)
        if not np.isfinite(self.mass) or self.mass <= 0:
            raise input_error(getattr(self.dataset, "source_path", None) or "particles",
                              "the images' mean density is not positive, so the particles "
                              "look dark (cannot estimate their mass)",
                              "flip the contrast (cryonb reconstruct --invert, or "
                              "Dataset.inverted())")
        self.rng = np.random.default_rng(cfg.seed)
        self.objective_rng = np.random.default_rng([cfg.seed, 1])
        radius = cfg.particle_radius_A or 0.4 * ds.box_size * ds.pixel_size_A
        self.qopts = QuadratureOptions(particle_radius_A=radius, shift_sigma_A=cfg.shift_sigma_A,
                                       shift_extent_A=cfg.shift_extent_A)
        self.prior = None
        if cfg.prior_rate is not None:
            self.prior = ExponentialPrior(cfg.prior_rate)

    def _objective(self, dataset: Dataset, rng: np.random.Generator) -> MarginalObjective:
        sampler = ImportanceSampler(len(dataset), is_schedule_for(self.config.iterations_per_stage),
                                    ess_scale=self.config.ess_scale)
        return MarginalObjective(dataset, self.noise_sigma, rng=rng, sampler=sampler,
                                 quadrature=self.qopts)

    def _common_solver(self) -> SAGDSolver:
        params = replace(self.params, target_max_freq_invA=self.split_freq,
                         max_iterations=None, time_limit_s=None, patience=10**9)
        # random spheres, low-passed to the first band limit: the sharp sphere edges would
        # otherwise survive (the gradients never reach those frequencies) in both half-maps
        start = random_spheres(self.work.box_size, self.rng, mass=self.mass)
        start = np.maximum(lowpass(start, self.work.pixel_size_A, params.start_max_freq_invA),
                           0.0)
        return SAGDSolver(self._objective(self.work, self.objective_rng),
                          n_images=len(self.work), box_size=self.work.box_size, params=params,
                          rng=self.rng, prior=self.prior, initial_volume=start,
                          callback=self._on_record, client=self.client)

    def _split(self, volume: NDArray, iteration: int, w_split: float) -> None:
        """Start the two half-set solvers from the common map at band limit ``w_split``."""
        # the halves share only the common map's content at or below the split band limit:
        # the low-pass edge ends there (no positivity afterwards, which would put the shared
        # map's content back above it); the halves' own steps apply positivity
        volume = lowpass(volume, self.work.pixel_size_A, w_split, strict=True)
        self.split_max_freq_invA = w_split
        ids = np.arange(len(self.work))
        halves = (self.work.half_set if self.work.half_set is not None
                  and np.isin(self.work.half_set, (0, 1)).all() else None)
        if halves is None:
            halves = np.zeros(len(ids), dtype=np.int8)
            halves[self.rng.permutation(len(ids))[len(ids) // 2:]] = 1
        self.half_labels = halves
        self.halves = []
        for h in (0, 1):
            sel = ids[halves == h]
            sub = self.work.subset(sel)
            # the halves go on with the common run's clock: learning rate and importance
            # sampling continue without a jump; their band limit starts at the split
            params = replace(self.params, start_max_freq_invA=w_split,
                             first_stage_iterations=None, max_iterations=None,
                             time_limit_s=None, iteration_offset=iteration,
                             clock_first_stage_iterations=self.params.first_stage_iterations)
            solver = SAGDSolver(self._objective(sub, np.random.default_rng([self.config.seed,
                                                                             10 + h])),
                                n_images=len(sub), box_size=self.work.box_size, params=params,
                                rng=np.random.default_rng([self.config.seed, 20 + h]),
                                prior=self.prior, initial_volume=volume, callback=self._on_record,
                                client=self.client)
            self._carry_over_sampling(solver.objective, sel)
            self.halves.append(_Half(f"half{h + 1}", sub, sel, solver))
        self._split_iteration = iteration
        self._release_common()

    def _release_common(self) -> None:
        """Free what the common solver no longer needs once the halves have their copies.

        Its stored minibatch gradients and its importance-sampling state (1.8 kB per particle,
        0.36 GB at 200,000 particles) are then neither kept in memory nor written to the
        checkpoints; its map, iteration count and history stay.
        """
        self.common.memory = GradientMemory(self.common.box_size)
        objective = getattr(self.common.objective, "local", self.common.objective)
        objective.sampler = None

    def _carry_over_sampling(self, objective: MarginalObjective, ids: NDArray) -> None:
        """Start a half's importance sampler from the common run's state of its particles."""
        common = self.common.objective.sampler
        if common is None or objective.sampler is None:
            return
        state = common.state_dict()
        for key, value in state.items():
            if key == "quad_id" or key.split("_")[0] in ("idx", "logp", "rest"):
                state[key] = value[ids]
        objective.sampler.load_state_dict(state, objective.quadrature_for)

    # ------------------------------------------------------------------ loop
    def _on_record(self, solver: SAGDSolver, record: dict) -> None:
        if self.callback is not None:
            self.callback(self, solver, record)

    def request_stop(self) -> None:
        """Stop after the current iteration and checkpoint (also on SIGINT / SIGTERM)."""
        self._stop = True
        for h in self.halves:
            h.solver.request_stop()

    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Run (or resume) to the end; returns the summary written to ``run.json``.

        Raises :class:`cryonb.io.errors.CryonbInputError` when another process works in
        ``out_dir`` or when a resume is asked with options that change the job.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.out_dir):
            return self._run(resume)

    def _run(self, resume: bool) -> dict[str, Any]:
        self._prepare()
        ckpt = self.out_dir / "checkpoint.npz"
        state = load_checkpoint(ckpt) if resume and ckpt.exists() else None
        if state is not None:
            self._check_resume(state)
        self.common = self._common_solver()
        if state is not None:
            self._load(state)
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, lambda *_: self.request_stop())
            except ValueError:  # not the main thread
                pass
        try:
            self._loop()
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        # reached only when the loop ended between iterations (finished, budget, or a stop
        # request): an exception inside an iteration leaves the last good checkpoint alone
        self.checkpoint()
        if self._stop and not self._finished():
            return {"status": "interrupted", "checkpoint": str(ckpt)}
        return self._finish()

    def _finished(self) -> bool:
        return self.phase == "halves" and all(h.solver.done for h in self.halves)

    def _elapsed_s(self) -> float:
        return self.common.state.elapsed_s + sum(h.solver.state.elapsed_s for h in self.halves)

    def _budget_exhausted(self) -> str:
        cfg = self.config
        if cfg.time_limit_min is not None and self._elapsed_s() >= 60.0 * cfg.time_limit_min:
            return f"reached the time limit of {cfg.time_limit_min:g} min"
        total = self.common.iteration + sum(h.solver.iteration for h in self.halves) // 2
        if cfg.max_iterations is not None and total >= cfg.max_iterations:
            return f"reached max_iterations = {cfg.max_iterations}"
        return ""

    def _common_budget_used(self) -> bool:
        """The common phase has had its share (``common_fraction``) of a budget."""
        cfg, frac = self.config, self.config.common_fraction
        if (cfg.time_limit_min is not None
                and self.common.state.elapsed_s >= frac * 60.0 * cfg.time_limit_min):
            return True
        return (cfg.max_iterations is not None
                and self.common.iteration >= max(1, int(frac * cfg.max_iterations)))

    def _split_now(self, forced: bool) -> None:
        """End the common phase: at the split band limit, or (``forced``, the budget decided)
        at the band limit the common map was last fitted at."""
        it = self.common.iteration
        w = self.split_freq
        if forced:
            w = min(w, band_limit_at(max(it - 1, 0), self.common.params)[1])
        self._split(self.common.volume, it, w)
        self.phase = "halves"

    def fitted_band_limit_invA(self) -> float | None:
        """The band limit (1/Å) the current map has been fitted to: the highest one its
        solver(s) ran ``min_fitted_iterations`` iterations at (both halves after the split);
        None before that."""
        n = self.config.min_fitted_iterations
        if self.phase == "common" or not self.halves:
            return self.common.fitted_band_limit_invA(n)
        limits = [h.solver.fitted_band_limit_invA(n) for h in self.halves]
        return None if any(w is None for w in limits) else float(min(limits))

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        t_last = time.monotonic()
        bar = tqdm(desc="ab initio", unit="it", disable=not self.progress)
        try:
            self._iterate(bar, t_last)
        finally:
            bar.close()

    def _iterate(self, bar: Any, t_last: float) -> None:
        while not self._stop and not self._finished():
            reason = self._budget_exhausted()
            if reason and self.phase == "halves":
                for h in self.halves:
                    h.solver.state.stop_reason = h.solver.state.stop_reason or reason
                break
            if reason:  # still in the common phase: split now and stop both halves at once
                self._split_now(forced=True)
                continue
            if self.phase == "common":
                self.common.step()
                _, w = band_limit_at(self.common.iteration, self.common.params)
                if w >= self.split_freq - 1e-12 or self.common.done:
                    self._split_now(forced=False)
                elif self._common_budget_used():
                    self._split_now(forced=True)
            else:
                for h in self.halves:
                    if not h.solver.done:
                        h.solver.step()
            solver = self.common if self.phase == "common" else self.halves[0].solver
            last = solver.state.records[-1] if solver.state.records else None
            bar.update(1)
            if last is not None:
                bar.set_postfix(phase=self.phase, res=f"{1 / last['max_freq_invA']:.1f}Å",
                                nll=f"{last['objective']:.4g}",
                                points=f"{last['fraction_evaluated']:.2%}")
            if time.monotonic() - t_last >= self.config.checkpoint_every_s:
                self.checkpoint()
                t_last = time.monotonic()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Path:
        """Save the full state (atomic)."""
        state: dict[str, Any] = {"phase": self.phase, "common": self.common.state_dict(),
                                 "config": json.dumps(asdict(self.config)),
                                 "first_stage_iterations": int(self.params.first_stage_iterations
                                                               or 0)}
        if self.phase == "halves":
            state["half_labels"] = self.half_labels
            state["split_iteration"] = self._split_iteration
            state["split_max_freq_invA"] = float(self.split_max_freq_invA or 0.0)
            for h in self.halves:
                state[h.name] = h.solver.state_dict()
        return save_checkpoint(self.out_dir / "checkpoint.npz", state)

    def _check_resume(self, state: dict[str, Any]) -> None:
        """Refuse a resume whose options change the job; keep the saved schedule when only the
        budget changed (and say so in :attr:`messages`)."""
        saved = json.loads(str(state["config"]))
        current = json.loads(json.dumps(asdict(self.config)))
        differ = sorted(k for k in current
                        if k not in BUDGET_OPTIONS and saved.get(k) != current[k])
        if differ:
            raise input_error(self.out_dir / "checkpoint.npz", "it was made with other "
                              "options: " + ", ".join(f"{k} = {saved.get(k)} (now {current[k]})"
                                                      for k in differ),
                              "resume with the same options (only --iterations, --time-limit "
                              "and --checkpoint-min may change) or use another --out")
        first = int(state.get("first_stage_iterations", 0)) or None
        if first is not None and first != self.params.first_stage_iterations:
            self.params = replace(self.params, first_stage_iterations=first)
        changed = [k for k in BUDGET_OPTIONS if saved.get(k) != current[k]
                   and k != "checkpoint_every_s"]
        if changed:
            self.messages.append(
                "resuming with a new budget (" + ", ".join(f"{k} {saved.get(k)} -> {current[k]}"
                                                           for k in changed)
                + f"); the schedule is the saved one: first stage {first} iterations")

    def _load(self, state: dict[str, Any]) -> None:
        self.common.load_state_dict(state["common"])
        self.phase = str(state["phase"])
        if self.phase == "halves":
            self.work = replace(self.work, half_set=np.asarray(state["half_labels"], np.int8))
            # the common map is the one the halves started from (it takes no step after it)
            self._split(self.common.volume, int(state["split_iteration"]),
                        float(state["split_max_freq_invA"]))
            for h in self.halves:
                h.solver.load_state_dict(state[h.name])

    # ------------------------------------------------------------------ results
    def _finish(self) -> dict[str, Any]:
        """Write the maps, FSC, history, poses and ``run.json``; return the summary.

        ``map.mrc`` is the mean of the two SAGD half-set maps (``sagd_half1/2.mrc``).  Those are
        not independent enough for a gold-standard FSC: they start from one common map, and
        positivity (truncating negative density multiplies a map by its own support) turns
        their shared low frequencies into matching high ones, so they agree above the split
        whatever their data say.  ``half1.mrc`` / ``half2.mrc`` are therefore, as in RELION,
        each half's own particles reconstructed (direct Fourier inversion, no positivity) at
        the MAP poses found under that half's final map, band-limited at the fitted band
        limit; ``map_from_halves.mrc`` is their mean.

        ``run.json`` (units in the names): ``half_map_resolution_A_0143`` (gold standard: FSC
        0.143 of ``half1.mrc`` / ``half2.mrc`` capped at the fitted band limit; the crossing
        or, when it never crosses, the limit it is better than — ``half_map_resolution.crossed``
        — null when there are no independent halves, with ``half_map_null_reason``),
        ``final_max_freq_invA`` (the fitted band limit, 1/Å), ``split_max_freq_invA``, and with
        a known truth ``truth_resolution_A_05`` (FSC 0.5 of ``map.mrc`` against the truth after
        alignment, same cap; ``truth_resolution_from_halves`` for ``map_from_halves.mrc``).
        """
        from .io import write_mrc, write_particles_star
        from .metrics import half_map_resolution, score_against_reference
        from .plotting import fsc_figure

        ds, out = self.work, self.out_dir
        psize = ds.pixel_size_A
        sagd = [h.solver.volume.astype(np.float32) for h in self.halves]
        write_mrc(out / "sagd_half1.mrc", sagd[0], psize)
        write_mrc(out / "sagd_half2.mrc", sagd[1], psize)
        final = (sagd[0] + sagd[1]) / 2
        write_mrc(out / "map.mrc", final, psize)
        # above the band limit the halves have fitted, their content is made by positivity
        # from what lies below it (no data were fitted there): every FSC stops at that limit
        fitted = self.fitted_band_limit_invA()
        n_min = self.config.min_fitted_iterations
        cap = fitted if fitted is not None else (self.common.fitted_band_limit_invA(n_min)
                                                 or self.split_max_freq_invA)
        rotations, shifts, halves = self._map_poses(cap)
        for i, half in enumerate(halves):
            write_mrc(out / f"half{i + 1}.mrc", half, psize)
        from_halves = (halves[0] + halves[1]) / 2
        write_mrc(out / "map_from_halves.mrc", from_halves, psize)
        resolution, curve = half_map_resolution(halves[0], halves[1], psize, max_freq_invA=cap)
        reason = self._no_gold_standard(fitted, resolution)
        curves = [curve]
        labels = ["half-maps" if reason is None else "half-maps (not independent)"]
        summary: dict[str, Any] = {
            "status": "done", "n_particles": len(ds), "box_size": ds.box_size,
            "pixel_size_A": psize,
            "half_map_resolution_A_0143": None if reason else _finite(resolution.value_A),
            "half_map_resolution": None if reason else resolution.to_dict(),
            "half_map_null_reason": reason,
            "final_max_freq_invA": fitted,
            "fitted_band_limit_A": None if fitted is None else 1.0 / fitted,
            "split_max_freq_invA": self.split_max_freq_invA,
            "last_max_freq_invA": min(_last_band_limit(h.solver) for h in self.halves),
            "stop_reasons": [h.solver.stop_reason for h in self.halves],
            "iterations": {"common": self.common.iteration,
                           **{h.name: h.solver.iteration for h in self.halves}},
            "wall_time_s": self._elapsed_s(),
            "messages": list(self.messages),
        }
        if ds.truth is not None and ds.truth.volume is not None:
            score = score_against_reference(final, ds.truth.volume, psize, max_freq_invA=cap)
            write_mrc(out / "map_aligned_to_truth.mrc", score.aligned.astype(np.float32), psize)
            other = score_against_reference(from_halves, ds.truth.volume, psize,
                                            max_freq_invA=cap)
            curves += [score.curve, other.curve]
            labels += ["map vs truth", "map from halves vs truth"]
            summary.update({"truth_resolution_A_05": _finite(score.resolution.value_A),
                            "truth_resolution": score.resolution.to_dict(),
                            "truth_resolution_0143": score.resolution_0143.to_dict(),
                            "truth_correlation": score.correlation,
                            "hand_flipped": score.flipped,
                            "truth_resolution_from_halves": other.resolution.to_dict()})
        fsc_figure(curves, labels).savefig(out / "fsc.png", dpi=90)
        np.savetxt(out / "fsc.csv", np.stack([curves[0].freq_invA] + [c.fsc for c in curves], 1),
                   delimiter=",", header="freq_invA," + ",".join(labels), comments="")
        self._write_history(out / "history.csv")
        write_particles_star(
            out / "particles.star",
            image_paths=[str(p) for p in self._source_paths()],
            image_indices=self._source_indices(), pixel_size_A=self.dataset.pixel_size_A,
            box_size=self.dataset.box_size, ctf=self.dataset.ctf, rotations=rotations,
            shifts_A=shifts, half_set=self.half_labels)
        (out / "run.json").write_text(json.dumps({**summary, "config": asdict(self.config)},
                                                 indent=2, default=float) + "\n")
        return summary

    def _no_gold_standard(self, fitted: float | None, resolution: Any) -> str | None:
        """Why the half-maps give no gold-standard resolution (None: they do)."""
        n_min = self.config.min_fitted_iterations
        steps = min(h.solver.iteration for h in self.halves)
        if fitted is None or steps < n_min:
            return (f"the budget ended {steps} iterations after the split; a half needs "
                    f"{n_min} at a band limit to have fitted its own data, so each half's "
                    "map, and the poses found under it, are still the common run's: no "
                    "independent half-maps")
        split = self.split_max_freq_invA
        if resolution.crossed and split and resolution.value_A > 1.0 / split + 1e-6:
            return (f"the half-map FSC falls to 0.143 at {resolution.value_A:.1f} Å, coarser "
                    f"than the split at {1.0 / split:.1f} Å, where the halves still share "
                    "the common start: no independent estimate")
        return None

    def _write_history(self, path: Path) -> None:
        rows = []
        for name, solver in [("common", self.common)] + [(h.name, h.solver) for h in self.halves]:
            for r in solver.state.records:
                rows.append({"phase": name, **r})
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False)

    def _map_poses(self, max_freq_invA: float) -> tuple[NDArray, NDArray, list[NDArray]]:
        """MAP rotation and origin (Å) of every particle under its half's final map, and each
        half's particles reconstructed at those poses (direct Fourier inversion, band limit
        ``max_freq_invA``): ``(rotations (n, 3, 3), shifts (n, 2), [half1, half2])``."""
        from .backprojection import BackprojectionAccumulator
        from .image_model import ImageModel

        n = len(self.work)
        rotations = np.zeros((n, 3, 3))
        shifts = np.zeros((n, 2))
        maps = []
        # the band limit comes from the schedule, which is clamped at the box's Nyquist
        model = ImageModel(self.work.box_size, self.work.pixel_size_A,
                           max_freq_invA=max_freq_invA)
        for h in self.halves:
            obj = h.solver.objective
            acc = BackprojectionAccumulator(model)
            if obj.likelihood is None:  # the budget ran out before this half took a step
                obj.set_band_limit(h.solver.params.start_max_freq_invA)
            for start in range(0, len(h.ids), 200):
                local = np.arange(start, min(len(h.ids), start + 200))
                if start + 200 < len(h.ids):  # read the next batch while this one is scored
                    obj.prefetch(np.arange(start + 200, min(len(h.ids), start + 400)))
                obj.evaluate(h.solver.volume, local, gradient=False, record=False,
                             iteration=h.solver.clock)
                res = obj.last_result
                rotations[h.ids[local]] = res.map_rotations
                shifts[h.ids[local]] = res.map_shifts_A
                acc.add(h.dataset.images(local), res.map_rotations, res.map_shifts_A,
                        None if h.dataset.ctf is None else h.dataset.ctf.subset(local))
            maps.append(acc.direct_inversion().astype(np.float32))
        return rotations, shifts, maps

    def _source_paths(self) -> list[str]:
        src = self.dataset._source
        if hasattr(src, "stack_paths"):
            sel = self.dataset._selection
            return [src.stack_paths[s] for s in src.stack_of[sel]]
        return ["images.mrcs"] * len(self.dataset)

    def _source_indices(self) -> NDArray:
        src = self.dataset._source
        if hasattr(src, "index_in_stack"):
            return src.index_in_stack[self.dataset._selection]
        return np.arange(len(self.dataset))


def _finite(value: float) -> float | None:
    """``value``, or None (JSON null) when it is not finite."""
    return float(value) if math.isfinite(value) else None


def _last_band_limit(solver: SAGDSolver) -> float:
    """The band limit (1/Å) of ``solver``'s last iteration (its start before any)."""
    records = solver.state.records
    return float(records[-1]["max_freq_invA"] if records else solver.params.start_max_freq_invA)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The resolution statements of a run's summary (``run.json``) as sentences: the
    half-map resolution (or why there is none) and, with a known truth, the map's."""
    lines = []
    half = summary.get("half_map_resolution")
    if half is None:
        lines.append("half-map resolution (FSC 0.143): none — "
                     f"{summary.get('half_map_null_reason')}")
    else:
        better = "" if half["crossed"] else "better than "
        lines.append(f"half-map resolution (FSC 0.143, gold standard): {better}"
                     f"{half['value_A']:.1f} Å (fitted band limit "
                     f"{summary['fitted_band_limit_A']:.1f} Å)")
    truth = summary.get("truth_resolution")
    if truth is not None:
        better = "" if truth["crossed"] else "better than "
        value = "none" if truth["value_A"] is None else f"{truth['value_A']:.1f} Å"
        lines.append(f"map vs truth (FSC 0.5, aligned): {better}{value}, correlation "
                     f"{summary['truth_correlation']:.3f}")
    return lines
