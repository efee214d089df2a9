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
folder (:class:`cryonb.checkpoint.RunLock`, through :class:`cryonb.run_folder.RunFolder`).

The run folder's files are listed in :mod:`cryonb.run_folder`; the settings and their
translation to the solver's parameters are in :mod:`cryonb.config`.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .config import BUDGET_OPTIONS, AbInitioConfig, is_schedule_for, upgrade_saved
from .dataset import Dataset
from .diagnostics import box_for_resolution, estimate_mass, estimate_particle_radius
from .fourier import lowpass
from .importance import ImportanceSampler
from .io.errors import input_error
from .objective import MarginalObjective
from .priors import describe_prior, make_prior, particle_mean_density
from .profiling import profile_table
from .run_folder import RunFolder, finite, summary_lines
from .sagd import SAGDSolver, random_spheres

__all__ = ["BUDGET_OPTIONS", "AbInitioConfig", "AbInitioRun", "estimate_mass",
           "is_schedule_for", "summary_lines"]


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
    cluster's workers (:mod:`cryonb.distributed`; same results as without).  Once running,
    ``run.work`` is the data set it fits (normalised, Fourier-cropped to ``box_size``) and
    :meth:`posteriors` gives the pose posteriors of its images under a map.
    """

    dataset: Dataset
    out_dir: Path
    config: AbInitioConfig = field(default_factory=AbInitioConfig)
    progress: bool = True
    callback: Any = None
    client: Any = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.folder = RunFolder(self.out_dir)
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
        box = cfg.box_size
        if box is None and cfg.max_res_A is not None:  # the working box from the target
            box = box_for_resolution(ds.box_size, ds.pixel_size_A, cfg.max_res_A)
        if box is not None and box < ds.box_size:
            ds = ds.fourier_cropped(box)
        self.work = ds
        self.noise_sigma = ds.estimate_noise_sigma()
        # the band-limit schedule is made once here (Nyquist of the working box applied)
        self.band_limits = cfg.band_limits(ds.pixel_size_A)
        self.params = cfg.sagd_params(len(ds), self.band_limits)
        self.split_freq = cfg.split_invA(self.band_limits)
        self.mass = estimate_mass(ds)
        if not np.isfinite(self.mass) or self.mass <= 0:
            raise input_error(getattr(self.dataset, "source_path", None) or "particles",
                              "the images' mean density is not positive, so the particles "
                              "look dark (cannot estimate their mass)",
                              "flip the contrast (cryonb reconstruct --invert, or "
                              "Dataset.inverted())")
        self.rng = np.random.default_rng(cfg.seed)
        self.objective_rng = np.random.default_rng([cfg.seed, 1])
        self.particle_radius_A = cfg.particle_radius_A or estimate_particle_radius(ds)
        if cfg.particle_radius_A is None:
            self.messages.append(f"particle radius {self.particle_radius_A:.0f} Å estimated "
                                 "from the images (sets the angular sampling; "
                                 "--particle-radius to choose)")
        self.qopts = cfg.quadrature_options(ds.box_size, ds.pixel_size_A,
                                            self.particle_radius_A)
        # the prior's density scale: the images' mass over the particle's volume (priors.py)
        scale = cfg.prior_scale
        if scale is None and cfg.prior != "none":
            scale = particle_mean_density(self.mass, self.particle_radius_A, ds.pixel_size_A)
            self.messages.append(f"{cfg.prior} prior of density scale {scale:.4g} (the images' "
                                 "mass over the particle's volume; --prior-scale to choose)")
        self.prior = make_prior(cfg.prior, scale)

    def _objective(self, dataset: Dataset, rng: np.random.Generator) -> MarginalObjective:
        sampler = ImportanceSampler(len(dataset), self.config.is_schedule(),
                                    ess_scale=self.config.ess_scale)
        return MarginalObjective(dataset, self.noise_sigma, rng=rng, sampler=sampler,
                                 quadrature=self.qopts, backend=self.config.backend)

    def posteriors(self, volume: NDArray, indices: NDArray, *,
                   max_freq_invA: float | None = None) -> Any:
        """The pose and shift posteriors of the working images ``indices`` under ``volume``.

        Parameters
        ----------
        volume : ndarray, shape (N, N, N)
            A map on the run's working grid (box ``N`` = ``run.work.box_size``), e.g. its
            ``map.mrc``.
        indices : ndarray of int, shape (B,)
            Images of ``run.work`` (the normalised, Fourier-cropped images the run fits).
        max_freq_invA : float or None
            Band limit, 1/Å (None: the schedule's target).

        Returns
        -------
        LikelihoodResult
            Every quadrature point evaluated (no importance sampling), with the run's noise
            sigma and quadrature options; what :class:`cryonb.widgets.ParticleBrowser` shows.
        """
        if not hasattr(self, "work"):
            self._prepare()
        objective = MarginalObjective(self.work, self.noise_sigma,
                                      rng=np.random.default_rng(self.config.seed),
                                      quadrature=self.qopts, backend=self.config.backend)
        w = self.band_limits.target_invA if max_freq_invA is None else max_freq_invA
        objective.set_band_limit(w)  # at most Nyquist (MarginalObjective.model_for)
        objective.evaluate(np.asarray(volume), np.asarray(indices), gradient=False, record=False)
        return objective.last_result

    def _common_solver(self) -> SAGDSolver:
        cfg = self.config
        # paced on the common phase's share of the budget: the first stage may take half of
        # it, the split band limit is reached at 90 % (the forced split is the backstop)
        policy = replace(self.params.stage_policy, first_share=0.5, reach=0.9,
                         budget_s=None if cfg.time_limit_min is None
                         else cfg.common_fraction * 60.0 * cfg.time_limit_min,
                         budget_iterations=None if cfg.max_iterations is None
                         else max(1, int(cfg.common_fraction * cfg.max_iterations)))
        params = replace(self.params, target_max_freq_invA=self.split_freq,
                         max_iterations=None, time_limit_s=None, patience=10**9,
                         stage_policy=policy)
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
        policy = self._halves_policy(iteration)
        for h in (0, 1):
            sel = ids[halves == h]
            sub = self.work.subset(sel)
            # the halves go on with the common run's clock: learning rate and importance
            # sampling continue without a jump; their band limit starts at the split
            params = replace(self.params, start_max_freq_invA=w_split,
                             first_stage_iterations=None, max_iterations=None,
                             time_limit_s=None, iteration_offset=iteration,
                             clock_first_stage_iterations=self.params.first_stage_iterations,
                             clock_start_max_freq_invA=self.params.start_max_freq_invA,
                             stage_policy=policy)
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

    def _halves_policy(self, split_iteration: int) -> Any:
        """Each half's stage policy: paced on its own share of what the budget has left at
        the split (the halves step in turn, so each gets half of the time left), reaching
        the target band limit at 80 % of it."""
        cfg, policy = self.config, self.params.stage_policy
        budget_s = None
        if cfg.time_limit_min is not None:
            budget_s = max(0.0, 60.0 * cfg.time_limit_min - self.common.state.elapsed_s) / 2
        budget_its = (None if cfg.max_iterations is None
                      else max(1, cfg.max_iterations - split_iteration))
        return replace(policy, first_iterations=policy.iterations, first_share=0.0, reach=0.8,
                       budget_s=budget_s, budget_iterations=budget_its)

    def _release_common(self) -> None:
        """Free what the common solver no longer needs once the halves have their copies.

        Its stored minibatch gradients and its importance-sampling state (1.8 kB per particle,
        0.36 GB at 200,000 particles) are then neither kept in memory nor written to the
        checkpoints; its map, iteration count and history stay.
        """
        self.common.release_memory()
        self.common.objective.sampler = None

    def _carry_over_sampling(self, objective: MarginalObjective, ids: NDArray) -> None:
        """Start a half's importance sampler from the common run's state of its particles."""
        common = self.common.objective.sampler
        if common is None or objective.sampler is None:
            return
        objective.sampler.load_state_dict(common.subset(ids).state_dict(),
                                          objective.quadrature_for)

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
        self.config.check_backend()  # one clear line, before any work
        with self.folder.lock():
            return self._run(resume)

    @classmethod
    def from_checkpoint(cls, dataset: Dataset, out_dir: str | Path, **kwargs: Any) -> AbInitioRun:
        """The job of run folder ``out_dir`` as it stood at its last checkpoint, not running:
        the saved configuration on ``dataset`` (the job's input particles), with the working
        images, the common solver and, after the split, :attr:`halves` (maps, records, sampler
        records, schedule clock) restored as a resume does.  ``kwargs``: ``progress``,
        ``callback``, ``client``.  Raises FileNotFoundError without a checkpoint."""
        state = RunFolder(Path(out_dir)).load_checkpoint()
        if state is None:
            raise FileNotFoundError(f"{out_dir}: no checkpoint.npz")
        config = AbInitioConfig.from_json(json.loads(str(state["config"])))
        run = cls(dataset, Path(out_dir), config, **kwargs)
        run._restore(state)
        return run

    def _restore(self, state: dict[str, Any] | None) -> None:
        self._prepare()
        if state is not None:
            self._check_resume(state)
        self.common = self._common_solver()
        if state is not None:
            self._load(state)

    def _run(self, resume: bool) -> dict[str, Any]:
        self._restore(self.folder.load_checkpoint() if resume else None)
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
            return {"status": "interrupted", "checkpoint": str(self.folder.checkpoint_path)}
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
            w = min(w, self.common.last_band_limit_invA)
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
        total, done = self._progress()
        timed = self.config.time_limit_min is not None  # total: the budget, s; ETA from it
        bar = tqdm(desc="ab initio", unit="s" if timed else "it", total=total, initial=done,
                   disable=not self.progress, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s "
                   "[{elapsed}<{remaining}{postfix}]" if timed else None)
        try:
            self._iterate(bar, t_last)
        finally:
            bar.close()

    def _progress(self) -> tuple[float | None, float]:
        """The progress bar's total and position: the time budget and the solver time used
        (s) under ``time_limit_min``, else the iteration budget (None without one) and the
        iterations done, counted as :meth:`_budget_exhausted` counts them."""
        if self.config.time_limit_min is not None:
            budget_s = 60.0 * self.config.time_limit_min
            return int(budget_s) if budget_s.is_integer() else budget_s, int(self._elapsed_s())
        done = self.common.iteration + sum(h.solver.iteration for h in self.halves) // 2
        return self.config.max_iterations, done

    def _iterate(self, bar: Any, t_last: float) -> None:
        while not self._stop and not self._finished():
            reason = self._budget_exhausted()
            if reason and self.phase == "halves":
                for h in self.halves:
                    h.solver.stop(reason)
                break
            if reason:  # still in the common phase: split now and stop both halves at once
                self._split_now(forced=True)
                continue
            if self.phase == "common":
                self.common.step()
                w = self.common.next_band_limit_invA
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
            bar.update(self._progress()[1] - bar.n)
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
        return self.folder.save_checkpoint(state)

    def _check_resume(self, state: dict[str, Any]) -> None:
        """Refuse a resume whose options change the job; keep the saved schedule when only the
        budget changed (and say so in :attr:`messages`)."""
        saved = upgrade_saved(json.loads(str(state["config"])))
        current = self.config.as_json()
        differ, changed = self.config.resume_differences(saved)
        if differ:
            self.folder.refuse_resume(differ, saved, current)
        first = int(state.get("first_stage_iterations", 0)) or None
        if first is not None and first != self.params.first_stage_iterations:
            policy = replace(self.params.stage_policy, first_iterations=first,
                             min_iterations=min(first, self.params.stage_policy.min_iterations))
            self.params = replace(self.params, first_stage_iterations=first,
                                  stage_policy=policy)
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
        from .metrics import half_map_resolution, score_against_reference

        ds, out = self.work, self.folder
        psize = ds.pixel_size_A
        sagd = [h.solver.volume.astype(np.float32) for h in self.halves]
        out.write_map("sagd_half1", sagd[0], psize)
        out.write_map("sagd_half2", sagd[1], psize)
        final = (sagd[0] + sagd[1]) / 2
        out.write_final_map(final, psize, self.dataset.box_size, self.dataset.pixel_size_A)
        # above the band limit the halves have fitted, their content is made by positivity
        # from what lies below it (no data were fitted there): every FSC stops at that limit
        fitted = self.fitted_band_limit_invA()
        n_min = self.config.min_fitted_iterations
        cap = fitted if fitted is not None else (self.common.fitted_band_limit_invA(n_min)
                                                 or self.split_max_freq_invA)
        rotations, shifts, halves = self._map_poses(cap)
        for i, half in enumerate(halves):
            out.write_map(f"half{i + 1}", half, psize)
        from_halves = (halves[0] + halves[1]) / 2
        out.write_map("map_from_halves", from_halves, psize)
        resolution, curve = half_map_resolution(halves[0], halves[1], psize, max_freq_invA=cap)
        reason = self._no_gold_standard(fitted, resolution)
        curves = [curve]
        labels = ["half-maps" if reason is None else "half-maps (not independent)"]
        summary: dict[str, Any] = {
            "status": "done", "n_particles": len(ds), "box_size": ds.box_size,
            "mode": "ab initio", "input_box_size": self.dataset.box_size,
            "input_pixel_size_A": self.dataset.pixel_size_A,
            "pixel_size_A": psize, "particle_radius_A": self.particle_radius_A,
            "half_map_resolution_A_0143": None if reason else finite(resolution.value_A),
            "half_map_resolution": None if reason else resolution.to_dict(),
            "half_map_null_reason": reason,
            "final_max_freq_invA": fitted,
            "fitted_band_limit_A": None if fitted is None else 1.0 / fitted,
            "split_max_freq_invA": self.split_max_freq_invA,
            "last_max_freq_invA": min(h.solver.last_band_limit_invA for h in self.halves),
            "stop_reasons": [h.solver.stop_reason for h in self.halves],
            "iterations": {"common": self.common.iteration,
                           **{h.name: h.solver.iteration for h in self.halves}},
            "wall_time_s": self._elapsed_s(),
            "final_poses_s": self.final_poses_s,
            "messages": list(self.messages),
            "prior": describe_prior(self.prior),
        }
        if ds.truth is not None and ds.truth.volume is not None:
            score = score_against_reference(final, ds.truth.volume, psize, max_freq_invA=cap)
            out.write_map("map_aligned_to_truth", score.aligned, psize)
            other = score_against_reference(from_halves, ds.truth.volume, psize,
                                            max_freq_invA=cap)
            curves += [score.curve, other.curve]
            labels += ["map vs truth", "map from halves vs truth"]
            summary.update({"truth_resolution_A_05": finite(score.resolution.value_A),
                            "truth_resolution": score.resolution.to_dict(),
                            "truth_resolution_0143": score.resolution_0143.to_dict(),
                            "truth_correlation": score.correlation,
                            "hand_flipped": score.flipped,
                            "truth_resolution_from_halves": other.resolution.to_dict()})
        summary["profile"] = profile_table(
            [("common", self.common.state.records)]
            + [(h.name, h.solver.state.records) for h in self.halves])
        out.write_fsc(curves, labels)
        out.write_history([("common", self.common)] + [(h.name, h.solver) for h in self.halves])
        out.write_star(self.dataset, rotations, shifts, self.half_labels)
        out.write_summary(summary, asdict(self.config))
        out.write_chimerax()
        out.write_report(summary)
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

    def _map_poses(self, max_freq_invA: float) -> tuple[NDArray, NDArray, list[NDArray]]:
        """MAP rotation and origin (Å) of every particle under its half's final map, and each
        half's particles reconstructed at those poses (direct Fourier inversion, band limit
        ``max_freq_invA``): ``(rotations (n, 3, 3), shifts (n, 2), [half1, half2])``.

        A local search around each particle's last posterior (:mod:`cryonb.final_poses`);
        its wall time is :attr:`final_poses_s`."""
        from .final_poses import final_poses
        from .image_model import ImageModel

        t0 = time.perf_counter()
        n = len(self.work)
        rotations, shifts = np.zeros((n, 3, 3)), np.zeros((n, 2))
        # the band limit comes from the schedule, which is clamped at the box's Nyquist
        model = ImageModel(self.work.box_size, self.work.pixel_size_A,
                           max_freq_invA=max_freq_invA)
        for h in self.halves:
            if h.solver.objective.likelihood is None:  # the budget ran out before a step
                h.solver.objective.set_band_limit(h.solver.band_limits.start_invA)
        found = final_poses([(h.solver.objective, h.solver.volume, h.dataset)
                             for h in self.halves], model, progress=self.progress)
        for h, f in zip(self.halves, found, strict=True):
            rotations[h.ids], shifts[h.ids] = f.rotations, f.shifts_A
        self.final_poses_s = time.perf_counter() - t0
        return rotations, shifts, [f.volume for f in found]
