"""When the band limit steps up: a stage policy driven by progress and by the budget.

With a :class:`StagePolicy` (``SAGDParams.stage_policy``) the solver no longer steps the band
limit every ``iterations_per_stage`` iterations of a fixed clock; before each iteration it asks
:meth:`StagePolicy.advance` whether the current stage is over, from what the stage's iteration
records say.  A stage (band limit) ends

* when it has run its longest length (``first_iterations`` for the first stage, where the shape
  is decided by the number of images seen, ``iterations`` for the others), or
* after at least ``min_iterations`` iterations (what a band limit needs to count as fitted),
  when the held-out likelihood has reached a plateau: its last two evaluations in the stage
  improve by less than ``plateau_rel_tol`` (relative), or
* after at least ``min_iterations`` iterations, when the march is behind the budget's pace:
  the budget (time ``budget_s`` of this solver, or ``budget_iterations``) is paced so that the
  first stage may take ``first_share`` of it and the march reaches the target band limit when
  ``reach`` of it is used (the rest fits the target band limit).

So a short budget spends itself climbing as far as its pace allows (each band limit still
fitted ``min_iterations`` iterations), a long one marches on progress, and without a budget the
stages take at most their longest length.  The decision is a pure function of the records,
which checkpoints keep: a resumed run takes the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["StagePolicy"]


@dataclass(frozen=True)
class StagePolicy:
    """Rules for ending a band-limit stage (see the module docstring).

    Attributes
    ----------
    min_iterations : int
        Shortest stage, iterations (the band limit then counts as fitted).
    iterations : int
        Longest stage after the first, iterations.
    first_iterations : int
        Longest first stage, iterations.
    plateau_rel_tol : float or None
        Relative held-out improvement below which a stage has reached its plateau (None: no
        plateau rule).
    budget_s : float or None
        This solver's time budget, s (its own elapsed time), for the pace rule.
    budget_iterations : int or None
        This solver's iteration budget, for the pace rule.
    first_share : float
        Share of the budget the first stage may take before the pace rule moves it on.
    reach : float
        Share of the budget at which the pace has the march at its target band limit.
    """

    min_iterations: int = 10
    iterations: int = 30
    first_iterations: int = 30
    plateau_rel_tol: float | None = None
    budget_s: float | None = None
    budget_iterations: int | None = None
    first_share: float = 0.0
    reach: float = 0.8

    def __post_init__(self) -> None:
        if not 1 <= self.min_iterations <= min(self.iterations, self.first_iterations):
            raise ValueError("need 1 <= min_iterations <= iterations, first_iterations")
        if not (0.0 <= self.first_share < 1.0 and 0.0 < self.reach <= 1.0):
            raise ValueError("need 0 <= first_share < 1 and 0 < reach <= 1")

    def budget_used(self, elapsed_s: float, iterations: int) -> float | None:
        """Fraction of the budget used (the larger of time and iterations; None: no budget)."""
        used = []
        if self.budget_s is not None and self.budget_s > 0:
            used.append(elapsed_s / self.budget_s)
        if self.budget_iterations is not None and self.budget_iterations > 0:
            used.append(iterations / self.budget_iterations)
        return max(used) if used else None

    def paced_stage(self, used: float, n_stages: int) -> int:
        """The stage the pace asks for when ``used`` of the budget is spent."""
        if n_stages <= 0 or used < self.first_share:
            return 0
        span = (1.0 - self.first_share) * self.reach
        return min(n_stages, 1 + math.floor(n_stages * (used - self.first_share) / span))

    def advance(self, stage: int, n_stages: int, records: Sequence[Mapping[str, Any]],
                elapsed_s: float, iterations: int) -> str:
        """Why the stage ``stage`` is over ("" while it goes on).

        Parameters
        ----------
        stage : int
            Current stage (0: the first).
        n_stages : int
            Stages after the first (the last one is the target band limit).
        records : sequence of dict
            The iteration records of the current stage (``heldout_nll``: NaN when the
            held-out set was not evaluated).
        elapsed_s : float
            The solver's elapsed time, s.
        iterations : int
            The solver's iterations so far.
        """
        if stage >= n_stages:
            return ""
        n = len(records)
        longest = self.first_iterations if stage == 0 else self.iterations
        if n >= longest:
            return f"stage length {longest}"
        if n < self.min_iterations:
            return ""
        used = self.budget_used(elapsed_s, iterations)
        if used is not None and stage < self.paced_stage(used, n_stages):
            return f"budget pace ({used:.0%} used)"
        if self.plateau_rel_tol is not None and stage > 0:
            held = [float(r["heldout_nll"]) for r in records
                    if math.isfinite(float(r["heldout_nll"]))]
            if len(held) >= 3:  # the first is taken right at the band-limit change
                gain = held[-2] - held[-1]
                if gain < self.plateau_rel_tol * abs(held[-1]):
                    return "held-out plateau"
        return ""
