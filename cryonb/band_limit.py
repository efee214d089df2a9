"""Frequency marching (paper Section 3.2): the band-limit schedule, in one place.

:class:`BandLimitSchedule` is built once from resolutions in Å (or from
:class:`cryonb.sagd.SAGDParams`), with the target clamped at Nyquist there and nowhere else;
the solver (:meth:`cryonb.sagd.SAGDSolver.step`, resume), the gold-standard split
(:mod:`cryonb.abinitio`) and the dashboard ask it for the band limit of an iteration.

The band limit ``w`` starts at ``start_invA`` and grows by ``step_invA`` every
``iterations_per_stage`` iterations (the first stage lasts ``first_stage_iterations`` if
given) up to ``target_invA``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .fourier import nyquist_invA

__all__ = ["BandLimitSchedule"]


@dataclass(frozen=True)
class BandLimitSchedule:
    """The band limit (1/Å) as a function of the iteration.

    Attributes
    ----------
    start_invA : float
        First band limit, 1/Å.
    target_invA : float
        Last band limit, 1/Å (at most ``nyquist_invA``).
    step_invA : float
        Increase per stage, 1/Å.
    iterations_per_stage : int
        Iterations between increases.
    first_stage_iterations : int or None
        Length of the first stage (None: ``iterations_per_stage``).
    nyquist_invA : float
        Nyquist frequency ``1 / (2 pixel size)`` of the images (inf: not known).
    """

    start_invA: float
    target_invA: float
    step_invA: float = 0.005
    iterations_per_stage: int = 150
    first_stage_iterations: int | None = None
    nyquist_invA: float = math.inf

    def __post_init__(self) -> None:
        if not 0 < self.start_invA <= self.target_invA:
            raise ValueError("need 0 < start_invA <= target_invA")
        if self.target_invA > self.nyquist_invA + 1e-12:
            raise ValueError("target_invA lies above Nyquist")
        if self.iterations_per_stage < 1 or self.step_invA <= 0:
            raise ValueError("iterations_per_stage and step_invA must be positive")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_resolution(cls, *, start_res_A: float, target_res_A: float | None,
                        pixel_size_A: float, step_invA: float, iterations_per_stage: int,
                        first_stage_iterations: int | None = None) -> BandLimitSchedule:
        """From resolutions in Å; ``target_res_A=None`` (or finer than Nyquist): Nyquist."""
        nyquist = nyquist_invA(pixel_size_A)
        target = nyquist if target_res_A is None else min(nyquist, 1.0 / target_res_A)
        return cls(start_invA=min(1.0 / start_res_A, target), target_invA=target,
                   step_invA=step_invA, iterations_per_stage=iterations_per_stage,
                   first_stage_iterations=first_stage_iterations, nyquist_invA=nyquist)

    @classmethod
    def from_params(cls, params: Any) -> BandLimitSchedule:
        """The schedule of a :class:`cryonb.sagd.SAGDParams` (no Nyquist: it was applied
        where the parameters were made)."""
        return cls(start_invA=params.start_max_freq_invA,
                   target_invA=params.target_max_freq_invA, step_invA=params.freq_step_invA,
                   iterations_per_stage=params.iterations_per_stage,
                   first_stage_iterations=params.first_stage_iterations)

    def params_fields(self) -> dict[str, Any]:
        """The :class:`cryonb.sagd.SAGDParams` fields of this schedule (for ``replace``)."""
        return {"start_max_freq_invA": self.start_invA,
                "target_max_freq_invA": self.target_invA, "freq_step_invA": self.step_invA,
                "iterations_per_stage": self.iterations_per_stage,
                "first_stage_iterations": self.first_stage_iterations}

    def with_(self, **changes: Any) -> BandLimitSchedule:
        """A copy with ``changes`` (dataclass fields)."""
        return replace(self, **changes)

    def clamp(self, max_freq_invA: float) -> float:
        """``max_freq_invA`` brought into ``[start_invA, target_invA]``."""
        return min(max(float(max_freq_invA), self.start_invA), self.target_invA)

    # ------------------------------------------------------------------ queries
    @property
    def n_stages(self) -> int:
        """Number of increases from the start to the target."""
        return math.ceil((self.target_invA - self.start_invA) / self.step_invA - 1e-9)

    def at(self, iteration: int) -> tuple[int, float]:
        """``(stage, w)``: the stage and band limit (1/Å) at ``iteration`` (0-based) of the
        fixed schedule (a solver with a :class:`cryonb.marching.StagePolicy` decides its
        stages itself and asks :meth:`of_stage` for their band limits)."""
        first = self.first_stage_iterations or self.iterations_per_stage
        stage = 0 if iteration < first else 1 + (iteration - first) // self.iterations_per_stage
        stage = min(stage, self.n_stages)
        return int(stage), self.of_stage(stage)

    def of_stage(self, stage: int) -> float:
        """The band limit (1/Å) of ``stage`` (0: ``start_invA``; at most ``target_invA``)."""
        return float(min(self.target_invA, self.start_invA + stage * self.step_invA))

    def reached_target(self, max_freq_invA: float) -> bool:
        """True when ``max_freq_invA`` is the target band limit."""
        return max_freq_invA >= self.target_invA - 1e-12

    @staticmethod
    def fitted(records: Iterable[Mapping[str, Any]], min_iterations: int) -> float | None:
        """The highest band limit (1/Å) the iteration ``records`` (each with
        ``max_freq_invA``) spent at least ``min_iterations`` iterations at (None if none)."""
        counts: dict[float, int] = {}
        for r in records:
            key = round(float(r["max_freq_invA"]), 12)
            counts[key] = counts.get(key, 0) + 1
        fitted = [w for w, n in counts.items() if n >= min_iterations]
        return max(fitted) if fitted else None
