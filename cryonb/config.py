"""The settings of an ab initio job (:class:`AbInitioConfig`) and their translation into the
solver's parameters.

This module is light (no numba, no likelihood engine): the command line builds its options
from :class:`AbInitioConfig`'s fields, defaults and docstring without importing the
reconstruction code.  :class:`AbInitioConfig` is the one place of every default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .band_limit import BandLimitSchedule
    from .is_schedule import ISSchedule
    from .objective import QuadratureOptions
    from .sagd import SAGDParams

__all__ = ["BUDGET_OPTIONS", "AbInitioConfig", "is_schedule_for", "upgrade_saved"]

#: Options whose change between a run and its resume only changes the budget, not the job.
BUDGET_OPTIONS = ("checkpoint_every_s", "time_limit_min", "max_iterations")


@dataclass(frozen=True)
class AbInitioConfig:
    """Settings of an ab initio run (units in the names).

    Attributes
    ----------
    box_size : int or None
        Fourier-crop the images to this box first, px (None: the smallest box whose Nyquist
        reaches ``max_res_A`` when that is given, else keep).
    max_res_A : float or None
        Target resolution, Å (None: Nyquist of the working box).
    start_res_A : float
        First band limit, Å (paper: 40 Å).
    first_stage_images : int
        The first band-limit stage lasts until this many training images have been seen (at
        most ``common_fraction`` of ``max_iterations`` when that budget is given; with a time
        budget it may end when it has taken half of the common phase's share): the shape is
        decided there, by the number of images seen, whatever the size of the data set.
        Measured on 10,000 GroEL images at 7.5 Å/px, correlation with the truth of the 40 Å
        map: 0.55 after 5,000 images, 0.63 / 0.68 / 0.76 after 15,000 / 20,000 / 30,000; a
        correct 40 Å map scores 0.79.
    split_res_A : float
        Band limit where the two half-sets separate, Å.
    freq_step_invA : float
        Increase of the band limit per stage (frequency marching), 1/Å.
    iterations_per_stage : int
        Longest band-limit stage after the first, iterations (paper: 150); a stage ends
        earlier, after ``min_fitted_iterations``, on a held-out plateau or when the march is
        behind its budget's pace (:mod:`cryonb.marching`).  Also the learning rate's halving
        time and the time scale of the importance-sampling schedule.
    stage_plateau_rel : float or None
        A stage has reached its plateau when the held-out NLL's last two evaluations in it
        (every 5 iterations) improve by less than this fraction (None: no plateau rule).
    batch_size : int
        Images per minibatch (at most a quarter of the data set).
    n_heldout : int
        Held-out images whose mean negative log-likelihood is tracked.
    max_iterations : int or None
        Iteration budget of the whole job (an iteration of the two halves counts once).
    time_limit_min : float or None
        Wall-time budget of the whole job, min.
    seed : int
        Seed of every random generator of the run.
    particle_radius_A : float or None
        Particle radius, Å: sets the angular sampling (None: estimated from the images'
        variance, :func:`cryonb.diagnostics.estimate_particle_radius`).
    shift_sigma_A : float
        Standard deviation of the Gaussian prior on the origins, Å.
    shift_extent_A : float
        Largest origin searched, Å.
    ess_scale : float
        Importance-sampling draws per effective sample (paper: 10).
    is_cooling : float
        How much faster than the reference's schedule (compressed to ``iterations_per_stage``)
        the importance-sampling proposal cools: its uniform share ``alpha`` decays and its
        temperature ``T`` falls this many times faster (:func:`is_schedule_for`).  Default 1
        (the reference's shape): with 3 (T ~1.5 at 1/26 Å⁻¹) the only runs made so far
        ended worse (10k GroEL at 64 px, 10 min: FSC 0.5 vs truth 33.6 Å against
        "better than 27.6 Å" with 1; 128 px, 50 min: stuck at 36 Å), so it stays an option.
    prior : str
        Prior on the density, p(V) in Eq. 5: "exponential" (the paper's, an L1 penalty),
        "gaussian" (zero mean, an L2 penalty) or "none" (maximum likelihood with positivity);
        see :mod:`cryonb.priors`.
    prior_scale : float or None
        The prior's density scale, the mean density inside the particle in the units of the
        normalised images' map: exponential rate 1 / scale, Gaussian sigma scale * sqrt(pi / 2)
        (None: the images' mass over the particle's volume,
        :func:`cryonb.priors.estimate_density_scale`).
    checkpoint_every_s : float
        Time between checkpoints, s.
    common_fraction : float
        The common phase ends (the halves separate) after this fraction of either budget at
        the latest, so that a short budget still leaves two thirds of itself for independent
        halves; the first stage is capped the same way in an iteration budget.
    min_fitted_iterations : int
        A band limit counts as fitted (for the FSC cap and for independent halves) only after
        this many iterations at it; 10 iterations of 100 images let the new shell's
        coefficients move from zero to a third or more of their final size.  Also the
        shortest band-limit stage.
    backend : str
        Where the likelihoods and gradients are computed: "numpy" (CPU, numba) or "cupy"
        (a CUDA GPU; needs CuPy).
    """

    box_size: int | None = None
    max_res_A: float | None = None
    start_res_A: float = 40.0
    first_stage_images: int = 20000
    split_res_A: float = 30.0
    freq_step_invA: float = 0.005
    iterations_per_stage: int = 30
    stage_plateau_rel: float | None = 0.002
    batch_size: int = 100
    n_heldout: int = 50
    max_iterations: int | None = None
    time_limit_min: float | None = None
    seed: int = 0
    particle_radius_A: float | None = None
    shift_sigma_A: float = 10.0
    shift_extent_A: float = 30.0
    ess_scale: float = 10.0
    is_cooling: float = 1.0
    prior: Literal["none", "exponential", "gaussian"] = "exponential"
    prior_scale: float | None = None
    checkpoint_every_s: float = 120.0
    common_fraction: float = 1.0 / 3.0
    min_fitted_iterations: int = 10
    backend: str = "numpy"

    def __post_init__(self) -> None:
        if not 0.0 < self.common_fraction < 1.0:
            raise ValueError(f"common_fraction must lie in (0, 1), got {self.common_fraction}")
        if self.min_fitted_iterations < 1:
            raise ValueError("min_fitted_iterations must be >= 1")
        if self.backend not in ("numpy", "cupy"):
            raise ValueError(f"backend must be 'numpy' or 'cupy', got {self.backend!r}")
        if self.prior not in ("none", "exponential", "gaussian"):
            raise ValueError("prior must be 'none', 'exponential' or 'gaussian', got "
                             f"{self.prior!r}")
        if self.prior_scale is not None and not self.prior_scale > 0:
            raise ValueError(f"prior_scale must be positive, got {self.prior_scale}")

    # ------------------------------------------------------------------ checks
    def check_backend(self) -> str:
        """The backend's name; raises a one-line :class:`~cryonb.io.errors.CryonbInputError`
        (a ValueError) when it cannot be used here (CuPy or a GPU missing)."""
        from .backend import get_backend
        from .io.errors import input_error

        try:
            return get_backend(self.backend).name
        except (RuntimeError, ValueError, ImportError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
            raise input_error(f"backend {self.backend!r}", f"cannot be used: {first}",
                              "choose backend 'numpy'") from None

    def resume_differences(self, saved: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Compared with the configuration ``saved`` (``asdict`` of an earlier run's, a field
        it lacks taking its default): ``(fields that change the job, budget fields that
        changed)``; the checkpoint interval is never reported."""
        defaults = {f.name: f.default for f in fields(self)}
        current = self.as_json()
        saved = upgrade_saved(saved)
        old = {k: saved.get(k, defaults.get(k)) for k in current}
        differ = sorted(k for k in current if k not in BUDGET_OPTIONS and old[k] != current[k])
        changed = [k for k in BUDGET_OPTIONS if old[k] != current[k] and k != "checkpoint_every_s"]
        return differ, changed

    def as_json(self) -> dict[str, Any]:
        """The fields as JSON values (as stored in checkpoints and ``run.json``)."""
        import json

        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> AbInitioConfig:
        """The configuration :meth:`as_json` saved (an older version's upgraded, fields this
        version does not know dropped, missing ones at their defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in upgrade_saved(saved).items() if k in known})

    # ------------------------------------------------------------------ translation
    def band_limits(self, pixel_size_A: float) -> BandLimitSchedule:
        """The job's frequency marching for images of ``pixel_size_A`` (first stage not set:
        see :meth:`sagd_params`)."""
        from .band_limit import BandLimitSchedule

        return BandLimitSchedule.from_resolution(
            start_res_A=self.start_res_A, target_res_A=self.max_res_A, pixel_size_A=pixel_size_A,
            step_invA=self.freq_step_invA, iterations_per_stage=self.iterations_per_stage)

    def split_invA(self, schedule: BandLimitSchedule) -> float:
        """The band limit (1/Å) where the halves separate, within ``schedule``'s range."""
        return schedule.clamp(1.0 / self.split_res_A)

    def sagd_params(self, n_images: int, schedule: BandLimitSchedule) -> SAGDParams:
        """The solver's parameters for ``n_images`` images and the band limits ``schedule``:
        a first stage of ``first_stage_images`` images and a :class:`StagePolicy` without a
        budget (:class:`cryonb.abinitio.AbInitioRun` gives the common phase and each half
        their budgets)."""
        from .marching import StagePolicy
        from .sagd import SAGDParams

        params = SAGDParams(
            batch_size=min(self.batch_size, max(1, n_images // 4)), n_heldout=self.n_heldout,
            **{**schedule.params_fields(), "first_stage_iterations": None},
            eps_halving=self.iterations_per_stage, max_iterations=self.max_iterations,
            heldout_every=5, linesearch_images=min(32, self.batch_size),
            time_limit_s=None if self.time_limit_min is None else 60.0 * self.time_limit_min)
        first = math.ceil(self.first_stage_images / params.batch_size)
        if self.max_iterations is not None:  # leave room for the march in an iteration budget
            first = min(first, int(self.max_iterations * self.common_fraction))
        first = max(1, first)
        shortest = max(1, min(self.min_fitted_iterations, self.iterations_per_stage, first))
        policy = StagePolicy(min_iterations=shortest, iterations=self.iterations_per_stage,
                             first_iterations=first, plateau_rel_tol=self.stage_plateau_rel)
        return replace(params, first_stage_iterations=first, stage_policy=policy)

    def quadrature_options(self, box_size: int, pixel_size_A: float,
                           estimated_radius_A: float | None = None) -> QuadratureOptions:
        """How the objective sizes its pose grids: the radius is ``particle_radius_A``, else
        ``estimated_radius_A`` (from the images), else 0.4 of the box."""
        from .objective import QuadratureOptions

        radius = (self.particle_radius_A or estimated_radius_A
                  or 0.4 * box_size * pixel_size_A)
        return QuadratureOptions(particle_radius_A=radius, shift_sigma_A=self.shift_sigma_A,
                                 shift_extent_A=self.shift_extent_A)

    def is_schedule(self) -> ISSchedule:
        """The importance-sampling schedule (:func:`is_schedule_for` the stage length)."""
        return is_schedule_for(self.iterations_per_stage, self.is_cooling)


def upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A configuration saved by an older cryonb (``run.json``, checkpoints) in today's fields.

    Before ``prior`` there was ``prior_rate`` (None: no prior; a rate: the exponential prior
    of density scale ``1 / rate``).  Other fields are returned as they are.
    """
    if "prior" in saved or "prior_rate" not in saved:
        return dict(saved)
    new = {k: v for k, v in saved.items() if k != "prior_rate"}
    rate = saved["prior_rate"]
    new["prior"] = "none" if rate is None else "exponential"
    new["prior_scale"] = None if rate is None else 1.0 / float(rate)
    return new


def is_schedule_for(iterations_per_stage: int, cooling: float = 1.0) -> ISSchedule:
    """The reference's IS schedule, compressed in time by ``iterations_per_stage / 150`` and
    cooled ``cooling`` times faster (alpha's decay rate times ``cooling``, the temperature's
    scale and both delays over ``cooling``; the chirality flip's end is kept).

    With a :class:`~cryonb.marching.StagePolicy` the schedule's clock advances
    ``iterations_per_stage`` per band-limit step (:attr:`cryonb.sagd.SAGDSolver.sampling_clock`),
    so the temperature is a function of the band limit.
    """
    from .is_schedule import ISSchedule

    if cooling <= 0:
        raise ValueError(f"cooling must be positive, got {cooling}")
    f = iterations_per_stage / 150.0
    ref = ISSchedule.reference()
    return replace(ref, alpha_rate=ref.alpha_rate / f * cooling,
                   alpha_delay=round(ref.alpha_delay * f / cooling),
                   temperature_scale=ref.temperature_scale * f / cooling,
                   temperature_delay=round(ref.temperature_delay * f / cooling),
                   chirality_flip_until=round(ref.chirality_flip_until * f))
