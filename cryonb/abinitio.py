"""The ab initio job: Dataset -> preprocessing -> SAGD with importance sampling -> maps and poses.

This module wires the library objects together and owns the run folder (outputs and
checkpoints); :class:`cryonb.sagd.SAGDSolver` itself does no I/O.

Gold standard: the solver runs on all training images until the band limit reaches
``split_max_freq_invA`` (a common low-resolution start, as RELION does), then two solvers
continue independently on two random halves of the data; the half-maps give the FSC
(threshold 0.143) and their average is ``map.mrc``.

Run folder::

    map.mrc, half1.mrc, half2.mrc   maps with the pixel size in the header
    particles.star                  RELION 3.1: MAP poses and origins, rlnRandomSubset 1/2
    history.csv                     per-iteration objective, held-out NLL, w, L, step, IS fraction
    fsc.png, fsc.csv                half-map FSC (and vs the truth when it is known)
    run.json                        configuration, timing, resolutions
    checkpoint.npz                  everything needed to resume (written atomically)
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

from .checkpoint import load_checkpoint, save_checkpoint
from .dataset import Dataset
from .fourier import lowpass
from .importance import ImportanceSampler, ISSchedule
from .objective import MarginalObjective, QuadratureOptions
from .priors import ExponentialPrior
from .sagd import (
    GradientMemory,
    SAGDParams,
    SAGDSolver,
    band_limit_at,
    random_spheres,
    schedule_iteration,
)

__all__ = ["AbInitioConfig", "AbInitioRun", "estimate_mass", "is_schedule_for"]


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
    ``max_iterations`` and ``time_limit_min`` (per phase total).  ``checkpoint_every_s``: how
    often to save.  ``prior_rate``: the exponential prior's rate per unit density (None: no
    prior).
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


def estimate_mass(dataset: Dataset, n_images: int = 500) -> float:
    """Sum of voxels of the map that explains the images' DC: ``median(sum(I) / CTF(0))``.

    With RELION's CTF sign ``CTF(0) = +Q * scale`` (zero phase shift); images should have a zero
    background mean (``Dataset.normalized()``).
    """
    idx = np.linspace(0, len(dataset) - 1, min(n_images, len(dataset))).astype(np.int64)
    sums = dataset.images(idx).sum(axis=(1, 2), dtype=np.float64)
    if dataset.ctf is None:
        return float(np.median(sums))
    ctf = dataset.ctf.subset(idx)
    ctf0 = np.sin(np.deg2rad(ctf.phase_shift_deg)
                  + np.arctan(ctf.amplitude_contrast / np.sqrt(1 - ctf.amplitude_contrast**2)))
    ctf0 = ctf0 * ctf.scale
    return float(np.median(sums / np.where(np.abs(ctf0) > 1e-3, ctf0, np.nan)))


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
            first = min(first, cfg.max_iterations // 3)
        self.params = replace(params, first_stage_iterations=max(cfg.iterations_per_stage, first))
        self.split_freq = split
        self.mass = estimate_mass(ds)
        if not np.isfinite(self.mass) or self.mass <= 0:
            raise ValueError("cannot estimate the particle's mass from the images' DC; check "
                             "the contrast sign (Dataset.inverted())")
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

    def _split(self, volume: NDArray, iteration: int) -> None:
        # the halves share only the common map's content below the split band limit
        volume = np.maximum(lowpass(volume, self.work.pixel_size_A, self.split_freq), 0.0)
        ids = np.arange(len(self.work))
        halves = (self.work.half_set if self.work.half_set is not None
                  and np.isin(self.work.half_set, (0, 1)).all() else None)
        if halves is None:
            halves = np.zeros(len(ids), dtype=np.int8)
            halves[self.rng.permutation(len(ids))[len(ids) // 2:]] = 1
        self.half_labels = halves
        self.halves = []
        # the schedules (learning rate, importance sampling) go on where the common one is
        offset = schedule_iteration(iteration, self.params)
        for h in (0, 1):
            sel = ids[halves == h]
            sub = self.work.subset(sel)
            params = replace(self.params, start_max_freq_invA=self.split_freq,
                             first_stage_iterations=None, max_iterations=None,
                             time_limit_s=None, iteration_offset=offset)
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
        """Run (or resume) to the end; returns the summary written to ``run.json``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self.common = self._common_solver()
        ckpt = self.out_dir / "checkpoint.npz"
        if resume and ckpt.exists():
            self._load(load_checkpoint(ckpt))
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
                self._split(self.common.volume, self.common.iteration)
                self.phase = "halves"
                continue
            if self.phase == "common":
                self.common.step()
                _, w = band_limit_at(self.common.iteration, self.common.params)
                if w >= self.split_freq - 1e-12 or self.common.done:
                    self._split(self.common.volume, self.common.iteration)
                    self.phase = "halves"
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
                                 "config": json.dumps(asdict(self.config))}
        if self.phase == "halves":
            state["half_labels"] = self.half_labels
            state["split_iteration"] = self._split_iteration
            for h in self.halves:
                state[h.name] = h.solver.state_dict()
        return save_checkpoint(self.out_dir / "checkpoint.npz", state)

    def _load(self, state: dict[str, Any]) -> None:
        saved = json.loads(str(state["config"]))
        current = json.loads(json.dumps(asdict(self.config)))
        budget = ("checkpoint_every_s", "time_limit_min", "max_iterations")  # may change
        differ = sorted(k for k in current if k not in budget and saved.get(k) != current[k])
        if differ:
            raise ValueError(f"{self.out_dir}/checkpoint.npz was made with other settings "
                             f"({', '.join(f'{k}={saved.get(k)}' for k in differ)}); resume "
                             "with the same options (budgets may change) or use another --out")
        self.common.load_state_dict(state["common"])
        self.phase = str(state["phase"])
        if self.phase == "halves":
            self.work = replace(self.work, half_set=np.asarray(state["half_labels"], np.int8))
            self._split(self.common.volume, int(state["split_iteration"]))
            for h in self.halves:
                h.solver.load_state_dict(state[h.name])

    # ------------------------------------------------------------------ results
    def _finish(self) -> dict[str, Any]:
        from .io import write_mrc, write_particles_star
        from .metrics import fsc
        from .plotting import fsc_figure

        ds, out = self.work, self.out_dir
        psize = ds.pixel_size_A
        maps = [h.solver.volume.astype(np.float32) for h in self.halves]
        write_mrc(out / "half1.mrc", maps[0], psize)
        write_mrc(out / "half2.mrc", maps[1], psize)
        final = (maps[0] + maps[1]) / 2
        write_mrc(out / "map.mrc", final, psize)
        # above the band limit the halves reached, their content is made by positivity from
        # what lies below it (no data were fitted there): the FSC stops at that limit
        w_final = self.final_band_limit()
        curves = [fsc(maps[0], maps[1], psize, max_freq_invA=w_final)]
        labels = ["half-maps"]
        summary: dict[str, Any] = {
            "status": "done", "n_particles": len(ds), "box_size": ds.box_size,
            "pixel_size_A": psize, "half_map_resolution_A_0143": curves[0].resolution_A(0.143),
            "final_max_freq_invA": w_final,
            "stop_reasons": [h.solver.stop_reason for h in self.halves],
            "iterations": {"common": self.common.iteration,
                           **{h.name: h.solver.iteration for h in self.halves}},
            "wall_time_s": self.common.state.elapsed_s + sum(h.solver.state.elapsed_s
                                                           for h in self.halves),
        }
        if ds.truth is not None and ds.truth.volume is not None:
            from .alignment import align_maps, apply_alignment
            from .fourier import fourier_crop, fourier_pad

            truth = np.asarray(ds.truth.volume, dtype=np.float64)
            if truth.shape[0] > ds.box_size:
                truth = fourier_crop(truth, ds.box_size, ndim=3)
            elif truth.shape[0] < ds.box_size:
                truth = fourier_pad(truth, ds.box_size, ndim=3)
            alignment = align_maps(final, truth, psize)
            aligned = apply_alignment(final, alignment, psize)
            write_mrc(out / "map_aligned_to_truth.mrc", aligned, psize)
            curves.append(fsc(aligned, truth, psize))
            labels.append("map vs truth")
            summary.update({"truth_resolution_A_05": curves[1].resolution_A(0.5),
                            "truth_correlation": alignment.correlation,
                            "hand_flipped": alignment.flipped})
        fsc_figure(curves, labels).savefig(out / "fsc.png", dpi=90)
        np.savetxt(out / "fsc.csv", np.stack([curves[0].freq_invA] + [c.fsc for c in curves], 1),
                   delimiter=",", header="freq_invA," + ",".join(labels), comments="")
        self._write_history(out / "history.csv")
        rotations, shifts = self._map_poses()
        write_particles_star(
            out / "particles.star",
            image_paths=[str(p) for p in self._source_paths()],
            image_indices=self._source_indices(), pixel_size_A=self.dataset.pixel_size_A,
            box_size=self.dataset.box_size, ctf=self.dataset.ctf, rotations=rotations,
            shifts_A=shifts, half_set=self.half_labels)
        (out / "run.json").write_text(json.dumps({**summary, "config": asdict(self.config)},
                                                 indent=2, default=float) + "\n")
        return summary

    def final_band_limit(self) -> float:
        """The band limit (1/Å) both half-set solvers have reached: the lower of their last."""
        limits = []
        for h in self.halves:
            records = h.solver.state.records
            limits.append(records[-1]["max_freq_invA"] if records
                          else h.solver.params.start_max_freq_invA)
        return float(min(limits))

    def _write_history(self, path: Path) -> None:
        rows = []
        for name, solver in [("common", self.common)] + [(h.name, h.solver) for h in self.halves]:
            for r in solver.state.records:
                rows.append({"phase": name, **r})
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False)

    def _map_poses(self) -> tuple[NDArray, NDArray]:
        """MAP rotation and origin of every particle under its half's final map."""
        n = len(self.work)
        rotations = np.zeros((n, 3, 3))
        shifts = np.zeros((n, 2))
        for h in self.halves:
            obj = h.solver.objective
            if obj.likelihood is None:  # the budget ran out before this half took a step
                obj.set_band_limit(h.solver.params.start_max_freq_invA)
            for start in range(0, len(h.ids), 200):
                local = np.arange(start, min(len(h.ids), start + 200))
                if start + 200 < len(h.ids):  # read the next batch while this one is scored
                    obj.prefetch(np.arange(start + 200, min(len(h.ids), start + 400)))
                obj.evaluate(h.solver.volume, local, gradient=False, record=False,
                             iteration=h.solver.iteration)
                res = obj.last_result
                rotations[h.ids[local]] = res.map_rotations
                shifts[h.ids[local]] = res.map_shifts_A
        return rotations, shifts

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
