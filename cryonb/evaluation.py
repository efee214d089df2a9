"""What an objective is to :class:`cryonb.sagd.SAGDSolver`: the :class:`Objective` protocol and
the :class:`Evaluation` it returns.

Its own module so that the solver (:mod:`cryonb.sagd`) and the objectives
(:mod:`cryonb.objective`, :mod:`cryonb.distributed`) import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from numpy.typing import NDArray

__all__ = ["Evaluation", "Objective"]


@dataclass(frozen=True, eq=False)
class Evaluation:
    """What an :class:`Objective` returns for a set of images.

    Attributes
    ----------
    nll : ndarray (B,)
        Negative log-likelihood of each image (marginalised over poses).
    grad : ndarray (N, N, N) or None
        Gradient of ``nll.sum()`` with respect to the real-space density.
    fraction_evaluated : float
        Fraction of the quadrature points evaluated (importance sampling).
    fraction_first_visit : float
        Share of the images whose importance sampler held no posterior before this
        evaluation (a first visit is scored on every point); NaN without a sampler.
    fraction_domains : dict of str to float
        ``fraction_directions``, ``fraction_inplane``, ``fraction_shifts``: per domain, the mean
        fraction of its points scored (:func:`cryonb.importance.evaluated_domain_fractions`);
        empty when the objective does not sample poses.
    token : object
        Opaque; pass back as ``reuse=`` to evaluate again on the same pose samples.
    timings : dict of str to float
        Wall seconds per phase of the evaluation, keyed by :data:`cryonb.profiling.PHASES`
        (``io``, ``is``, ``fft3d``, ``slicing``, ...); empty when the objective does not
        measure them.
    """

    nll: NDArray
    grad: NDArray | None
    fraction_evaluated: float = 1.0
    fraction_first_visit: float = float("nan")
    fraction_domains: dict[str, float] = field(default_factory=dict)
    token: Any = None
    timings: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """The data term the solver minimises (see :class:`cryonb.objective.MarginalObjective`).

    ``pixel_size_A``: the images' pixel size (Å), with which the solver turns band limits in
    1/Å into Fourier pixels.
    """

    pixel_size_A: float

    def set_band_limit(self, max_freq_invA: float) -> None:
        """Work at band limit ``max_freq_invA`` from now on (quadrature follows)."""

    def evaluate(self, volume: NDArray, indices: NDArray, *, gradient: bool, record: bool,
                 iteration: int, reuse: Any = None) -> Evaluation:
        """Per-image NLL (and gradient) of images ``indices`` for ``volume``.

        ``record``: let the evaluation update per-image state (importance sampling);
        ``iteration``: the solver's iteration (schedules); ``reuse``: a previous evaluation's
        ``token`` to evaluate on the same pose samples (line search).
        """

    def state_dict(self) -> dict[str, Any]:
        """Arrays and scalars to checkpoint (e.g. importance-sampling state)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


