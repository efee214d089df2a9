"""The parameters of :class:`cryonb.sagd.SAGDSolver` and its learning-rate clock.

:class:`SAGDParams` (the paper's defaults where it gives them), :func:`schedule_iteration`
(the job's clock with a long first stage counted as one stage) and :func:`learning_rate_at`
(Eq. 8's ``eps``).  Re-exported by :mod:`cryonb.sagd`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .band_limit import BandLimitSchedule
from .marching import StagePolicy

__all__ = ["SAGDParams", "band_limit_at", "learning_rate_at", "schedule_iteration"]


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class SAGDParams:
    """Parameters of :class:`SAGDSolver` (defaults: the paper's, where it gives them).

    Attributes
    ----------
    batch_size : int
        Images per minibatch (paper: 200).
    n_heldout : int
        Held-out images whose mean NLL is tracked (paper: 100; reference code: 200).
    start_max_freq_invA, target_max_freq_invA : float
        Band limit schedule endpoints, 1/Å (paper: 1/40 to 1/10).
    freq_step_invA : float
        Increase of the band limit per stage, 1/Å (reference: 0.005).
    iterations_per_stage : int
        Iterations between increases (reference: 150; the first stage lasts
        ``first_stage_iterations`` if given).
    first_stage_iterations : int or None
        Length of the first stage (the reference code spends 400 iterations, about two epochs,
        at 50 and 40 Å); see :func:`learning_rate_at` for its effect on the learning rate.
    eps_min, eps_halving : float, int
        Learning-rate schedule ``max(eps_min, 2^(1 - floor(it / eps_halving)))``.
    L0 : float
        Initial Lipschitz estimate.
    linesearch_every : int
        Run the line search every this many iterations (and at every band-limit change).
    linesearch_max_steps : int
    linesearch_images : int or None
        Test the line search's sufficient decrease on this many images of the batch (None:
        all), when the objective can restrict its reuse token (``restrict_token``).
    heldout_every : int
        Evaluate the held-out set every this many iterations (and at band-limit changes).
    patience : int
        At the target band limit, stop after this many held-out evaluations without an
        improvement of more than ``heldout_rel_tol`` (relative).
    heldout_rel_tol : float
    max_iterations, max_epochs, time_limit_s : optional budgets
    positivity : bool
        Truncate negative densities after each step (paper: yes).
    iteration_offset : int
        Iterations of the job before this solver, for a solver that continues another's work
        (a half-set after the common start): the job's clock is ``iteration +
        iteration_offset``.  The objective (importance-sampling schedules) gets the clock, the
        learning rate :func:`schedule_iteration` of it; the band-limit schedule is not offset.
    clock_first_stage_iterations : int or None
        The job's first-stage length for :func:`schedule_iteration` (None:
        ``first_stage_iterations``): a half-set continues the common run's clock, whose long
        first stage it does not repeat in its own band-limit schedule.
    stage_policy : StagePolicy or None
        When given, the band limit steps up when :meth:`StagePolicy.advance` says the stage
        is over (progress, budget pace, longest length; :mod:`cryonb.marching`) instead of
        on the fixed clock of ``iterations_per_stage`` / ``first_stage_iterations``.
    clock_start_max_freq_invA : float or None
        The job's first band limit, from which :attr:`SAGDSolver.sampling_clock` counts the
        band-limit steps (None: ``start_max_freq_invA``; a half-set gives the common run's).
    """

    batch_size: int = 200
    n_heldout: int = 100
    start_max_freq_invA: float = 1.0 / 40.0
    target_max_freq_invA: float = 1.0 / 10.0
    freq_step_invA: float = 0.005
    iterations_per_stage: int = 150
    first_stage_iterations: int | None = None
    eps_min: float = 1.0 / 16.0
    eps_halving: int = 150
    L0: float = 1.0
    linesearch_every: int = 5
    linesearch_max_steps: int = 20
    linesearch_images: int | None = None
    heldout_every: int = 10
    patience: int = 5
    heldout_rel_tol: float = 1e-4
    max_iterations: int | None = None
    max_epochs: float | None = None
    time_limit_s: float | None = None
    positivity: bool = True
    iteration_offset: int = 0
    clock_first_stage_iterations: int | None = None
    stage_policy: StagePolicy | None = None
    clock_start_max_freq_invA: float | None = None

    def split_sizes(self, n_images: int) -> tuple[int, int]:
        """``(held-out images, training batches)`` for a data set of ``n_images``."""
        n_held = min(self.n_heldout, max(0, n_images - self.batch_size))
        return n_held, max(1, (n_images - n_held) // self.batch_size)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.n_heldout < 0:
            raise ValueError("batch_size must be >= 1 and n_heldout >= 0")
        if not 0 < self.start_max_freq_invA <= self.target_max_freq_invA:
            raise ValueError("need 0 < start_max_freq_invA <= target_max_freq_invA")
        if self.iterations_per_stage < 1 or self.freq_step_invA <= 0:
            raise ValueError("iterations_per_stage and freq_step_invA must be positive")


def band_limit_at(iteration: int, params: SAGDParams) -> tuple[int, float]:
    """``(stage, w)``: the band-limit stage and band limit (1/Å) at ``iteration`` (0-based);
    :meth:`BandLimitSchedule.at` of the parameters' schedule."""
    return BandLimitSchedule.from_params(params).at(iteration)


def schedule_iteration(iteration: int, params: SAGDParams) -> int:
    """The job's clock ``iteration + iteration_offset`` with a long first stage counted as
    ``iterations_per_stage``.

    The learning rate follows it, so lengthening the first stage (all of it at the first rate
    when ``eps_halving`` equals ``iterations_per_stage``) does not shrink the later steps.  A
    solver that continues another's work takes the other's iteration count as its
    ``iteration_offset`` and its first-stage length as ``clock_first_stage_iterations``, so
    the schedule goes on without a jump.
    """
    t = iteration + params.iteration_offset
    first = (params.clock_first_stage_iterations if params.clock_first_stage_iterations
             is not None else params.first_stage_iterations)
    per_stage = params.iterations_per_stage
    if first is not None and first > per_stage:
        t = t * per_stage // first if t < first else t - (first - per_stage)
    return t


def learning_rate_at(iteration: int, params: SAGDParams) -> float:
    """``eps = max(eps_min, 2^(1 - floor(t / eps_halving)))``, ``t`` the
    :func:`schedule_iteration`."""
    t = schedule_iteration(iteration, params)
    return max(params.eps_min, 2.0 ** (1 - t // params.eps_halving))
