"""Studies of importance sampling (IS): its error against the exact sum, and posterior stability.

Helpers behind the paper's Fig. 6 (relative error of ``log p(I | theta, V)`` under IS against
the exhaustive sum of Eq. 4, and the fraction of quadrature points used, as functions of the
ESS scale ``s_B``) and Fig. 3 (KL divergence of the per-particle direction posteriors between
consecutive epochs), used by ``notebooks/04_importance_sampling_study.ipynb`` and
``benchmarks/likelihood.py``.

* :func:`record_posteriors`: one (exhaustive or restricted) evaluation whose posteriors are
  recorded in an :class:`~cryonb.importance.ImportanceSampler`, giving realistic proposals.
* :func:`is_error_curve`: IS estimates at several ``s_B`` against the exact values
  (:class:`ISErrorCurve`).
* :func:`restricted_subsets`: the part of the quadrature around each image's true pose and its
  symmetry mates, for exact sums where the whole grid is too large (box 128 at 1/10 Å^-1).
* :class:`PosteriorRecorder` and :func:`posterior_kl`: per-particle direction posteriors
  during an :class:`~cryonb.sagd.SAGDSolver` run and the KL divergence between two snapshots.

:mod:`cryonb.is_study_run` applies :func:`is_error_curve` to a finished run folder (the run's
own sampler at its final band limit).  The error measure the notebooks and the explorer
report is the mean |relative error| (:attr:`ISErrorCurve.mean_relative_error`); the paper's
Fig. 6 axis, the relative RMSE, is printed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from .likelihood import LikelihoodResult, MarginalLikelihood, PoseSubset, PreparedImages
from .quadrature import Quadrature
from .rotations import axis_angle_to_matrix

__all__ = [
    "ISErrorCurve",
    "PosteriorRecorder",
    "cyclic_symmetry",
    "is_error_curve",
    "posterior_kl",
    "record_posteriors",
    "relative_error",
    "restricted_subsets",
]


# ---------------------------------------------------------------------------------- errors
def relative_error(estimate: ArrayLike, exact: ArrayLike) -> NDArray:
    """``|estimate - exact| / |exact|`` elementwise (the paper's Fig. 6 measure for log p)."""
    est = np.asarray(estimate, dtype=np.float64)
    ex = np.asarray(exact, dtype=np.float64)
    return np.abs(est - ex) / np.abs(ex)


@dataclass(frozen=True, eq=False)
class ISErrorCurve:
    """IS estimates of ``log p(I_b | theta_b, V)`` at several ESS scales against exact values.

    Attributes
    ----------
    ess_scales : (S,) the ``s_B`` values
    exact : (B,) exact log-likelihoods (exhaustive sum of Eq. 4, or a restricted sum)
    estimates : (S, T, B) IS estimates (T independent draws per scale)
    n_evaluated : (S, T, B) quadrature points evaluated per image
    quadrature_size : number of points of the whole quadrature (per image)
    """

    ess_scales: NDArray
    exact: NDArray
    estimates: NDArray
    n_evaluated: NDArray
    quadrature_size: int

    @property
    def relative_errors(self) -> NDArray:
        """(S, T, B) ``|estimate - exact| / |exact|``."""
        return relative_error(self.estimates, self.exact[None, None, :])

    @property
    def mean_relative_error(self) -> NDArray:
        """(S,) mean |relative error| over draws and images: the measure the notebooks, their
        tables and :func:`cryonb.widgets.ISStudyExplorer` report
        (:func:`cryonb.viz.is_study_summary` gives the same numbers)."""
        return np.mean(self.relative_errors, axis=(1, 2))

    @property
    def max_relative_error(self) -> NDArray:
        """(S,) largest |relative error| over draws and images."""
        return np.max(self.relative_errors, axis=(1, 2))

    @property
    def relative_rmse(self) -> NDArray:
        """(S,) root mean square of the relative errors over draws and images (the paper's
        Fig. 6 axis)."""
        return np.sqrt(np.mean(self.relative_errors**2, axis=(1, 2)))

    @property
    def abs_rmse(self) -> NDArray:
        """(S,) root mean square error of the log-likelihood in nats."""
        return np.sqrt(np.mean((self.estimates - self.exact[None, None, :]) ** 2, axis=(1, 2)))

    @property
    def fraction_evaluated(self) -> NDArray:
        """(S,) mean fraction of the quadrature's points evaluated per image (Fig. 6)."""
        return np.mean(self.n_evaluated, axis=(1, 2)) / float(self.quadrature_size)

    @property
    def speedup(self) -> NDArray:
        """(S,) all points / mean evaluated points per image."""
        return 1.0 / self.fraction_evaluated

    def table(self) -> str:
        """A plain-text table, one row per ``s_B``: mean and max |relative error|, relative
        RMSE, RMSE in nats, fraction of points and speed-up."""
        lines = [f"{'s_B':>8} {'mean |rel. err|':>15} {'max':>9} {'rel. RMSE':>10} "
                 f"{'RMSE (nats)':>12} {'fraction':>10} {'speed-up':>10}"]
        for s, m, mx, r, a, f, x in zip(self.ess_scales, self.mean_relative_error,
                                        self.max_relative_error, self.relative_rmse,
                                        self.abs_rmse, self.fraction_evaluated, self.speedup,
                                        strict=True):
            lines.append(f"{s:8.3g} {m:15.2e} {mx:9.2e} {r:10.2e} {a:12.3g} {f:10.3g} "
                         f"{x:10.3g}")
        return "\n".join(lines)


def record_posteriors(likelihood: MarginalLikelihood, volume_ft: Any, images: PreparedImages,
                      sampler: Any, particle_ids: ArrayLike, *,
                      subsets: list[PoseSubset] | None = None,
                      iteration: int = 0) -> LikelihoodResult:
    """Evaluate the images (exhaustively, or on ``subsets``) and record their posteriors.

    The sampler's next proposals for these particles are then the kernel-smoothed, annealed
    posteriors of this evaluation (Eq. 14 with the sampler's schedule at ``iteration``).  With
    ``subsets`` holding zero importance weights (e.g. :func:`restricted_subsets`), the result's
    log-likelihoods are the exact sums restricted to those points.

    Returns
    -------
    the :class:`~cryonb.likelihood.LikelihoodResult` (no gradient)
    """
    ids = np.asarray(particle_ids, dtype=np.int64).ravel()
    result = likelihood.evaluate(volume_ft, images, subsets=subsets)
    sampler.update(ids, subsets, result, iteration)
    return result


def is_error_curve(
    likelihood: MarginalLikelihood,
    volume_ft: Any,
    images: PreparedImages,
    sampler: Any,
    particle_ids: ArrayLike,
    ess_scales: ArrayLike,
    rng: np.random.Generator,
    *,
    exact: ArrayLike | LikelihoodResult | None = None,
    iteration: int = 1,
    n_trials: int = 1,
    progress: bool = False,
) -> ISErrorCurve:
    """Draw IS subsets at each ``s_B`` from the sampler's current proposals and evaluate them.

    Parameters
    ----------
    likelihood, volume_ft, images : the engine, the prepared volume and the batch
    sampler : an :class:`~cryonb.importance.ImportanceSampler` holding recorded posteriors for
        ``particle_ids`` (e.g. from :func:`record_posteriors`); its ``ess_scale`` is restored
    particle_ids : (B,) the sampler's ids of the images
    ess_scales : the ``s_B`` values
    rng : draws the samples
    exact : (B,) exact log-likelihoods or a LikelihoodResult; default: one exhaustive
        evaluation
    iteration : passed to :meth:`~cryonb.importance.ImportanceSampler.sample` (schedule)
    n_trials : independent draws per ``s_B``
    progress : a progress bar (tqdm) over the ``S * n_trials`` draws, with their ETA

    Images whose draw covers the whole quadrature (every domain enumerated) are not evaluated
    again: their estimate is the exact value.
    """
    ids = np.asarray(particle_ids, dtype=np.int64).ravel()
    q = likelihood.quadrature
    if exact is None:
        exact = likelihood.evaluate(volume_ft, images)
    if isinstance(exact, LikelihoodResult):
        exact = exact.log_likelihood
    exact = np.asarray(exact, dtype=np.float64).ravel()
    if exact.shape != ids.shape or images.n_images != ids.size:
        raise ValueError("particle_ids, images and exact must have the same length")
    scales = np.asarray(ess_scales, dtype=np.float64).ravel()
    est = np.empty((scales.size, n_trials, ids.size))
    n_eval = np.empty((scales.size, n_trials, ids.size), dtype=np.int64)
    saved = sampler.ess_scale
    from tqdm.auto import tqdm

    bar = tqdm(total=scales.size * n_trials, desc="IS draws", unit="draw",
               disable=not progress)
    try:
        for k, s in enumerate(scales):
            sampler.ess_scale = float(s)
            for t in range(n_trials):
                subsets = sampler.sample(ids, q, iteration, rng)
                points = np.array([sub.n_points for sub in subsets], dtype=np.int64)
                todo = np.flatnonzero(points < q.size)
                est[k, t] = exact
                if todo.size:
                    res = likelihood.evaluate(volume_ft, images.subset(todo),
                                              subsets=[subsets[j] for j in todo])
                    est[k, t, todo] = res.log_likelihood
                n_eval[k, t] = points
                bar.update(1)
                bar.set_postfix(s_B=f"{s:g}", points=f"{points.mean() / q.size:.2%}")
    finally:
        sampler.ess_scale = saved
        bar.close()
    return ISErrorCurve(scales, exact, est, n_eval, int(q.size))


# ---------------------------------------------------------------------------------- restriction
def cyclic_symmetry(order: int, axis: ArrayLike = (0.0, 0.0, 1.0)) -> NDArray:
    """The ``order`` rotations of the cyclic group C_n about ``axis`` (volume frame), (n, 3, 3).

    For a map with this symmetry the poses ``S_k @ R`` give the same projections as ``R``
    (cryonb's convention; the bundled 1AON map is close to C7 about z).
    """
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    angles = 2 * np.pi * np.arange(int(order)) / int(order)
    return axis_angle_to_matrix(angles[:, None] * a[None, :])


def restricted_subsets(quadrature: Quadrature, rotations: ArrayLike, shifts_A: ArrayLike, *,
                       symmetry: ArrayLike | None = None, cap_spacings: float = 6.0,
                       shift_radius_A: float = 20.0) -> list[PoseSubset]:
    """Per image, the quadrature points near its true pose: an exact sum over them is cheap.

    For image ``b`` with true rotation ``R_b`` and origin ``t_b``: the directions within
    ``cap_spacings`` direction spacings of ``S_k R_b z`` for every symmetry operator ``S_k``
    (default: the identity only), **all** in-plane angles, and the shifts within
    ``shift_radius_A`` of ``t_b`` (at least the nearest one).  Importance weights are zero, so
    ``MarginalLikelihood.evaluate(..., subsets=...)`` returns the sum of the Eq. (4) terms
    (full-grid weights) over these points.  When the posterior lies inside, the rest of the sum
    is negligible and this is the exact ``log p(I | theta, V)``.

    Returns
    -------
    list of B :class:`~cryonb.likelihood.PoseSubset`
    """
    rots = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    shifts = np.asarray(shifts_A, dtype=np.float64).reshape(-1, 2)
    if shifts.shape[0] != rots.shape[0]:
        raise ValueError("rotations and shifts_A must have the same length")
    ops = np.eye(3)[None] if symmetry is None else np.asarray(symmetry, np.float64).reshape(
        -1, 3, 3)
    radius = cap_spacings * quadrature.direction_spacing_rad
    chord = 2.0 * np.sin(min(np.pi, radius) / 2.0) + 1e-12
    inplane = np.arange(quadrature.n_inplane)
    out = []
    for r, t in zip(rots, shifts, strict=True):
        dirs = (ops @ r)[:, :, 2]                                       # (n_ops, 3) S_k R z
        near = quadrature.direction_tree.query_ball_point(dirs, chord)
        d_idx = np.unique(np.concatenate([np.asarray(x, np.int64) for x in near]
                                         + [quadrature.direction_tree.query(dirs)[1]]))
        s_idx = np.asarray(quadrature.shift_tree.query_ball_point(t, shift_radius_A + 1e-9),
                           dtype=np.int64)
        if s_idx.size == 0:
            s_idx = np.atleast_1d(np.asarray(quadrature.shift_tree.query(t)[1], np.int64))
        s_idx = np.sort(s_idx)
        out.append(PoseSubset(d_idx, inplane, s_idx, np.zeros(d_idx.size),
                              np.zeros(inplane.size), np.zeros(s_idx.size)))
    return out


# ---------------------------------------------------------------------------------- epochs
class PosteriorRecorder:
    """Wraps an objective (e.g. :class:`~cryonb.objective.MarginalObjective`) for a solver and
    keeps every particle's latest direction posterior.

    After each evaluation with ``record=True`` (the solver's minibatch and held-out passes, not
    its line search), the wrapped objective's ``last_result.posterior_directions`` is stored
    per particle with its quadrature.  Everything else is delegated, so pass the recorder to
    :class:`~cryonb.sagd.SAGDSolver` in place of the objective and call :meth:`snapshot` at
    the end of each epoch.
    """

    def __init__(self, objective: Any) -> None:
        self.objective = objective
        self.latest: dict[int, tuple[Quadrature, NDArray]] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "objective":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.objective, name)

    def set_band_limit(self, max_freq_invA: float) -> None:
        """Delegated."""
        self.objective.set_band_limit(max_freq_invA)

    def evaluate(self, volume: NDArray, indices: NDArray, *, gradient: bool, record: bool,
                 iteration: int = 0, reuse: Any = None) -> Any:
        """Delegated; the direction posteriors of recording evaluations are kept."""
        ev = self.objective.evaluate(volume, indices, gradient=gradient, record=record,
                                     iteration=iteration, reuse=reuse)
        if record and reuse is None:
            res = self.objective.last_result
            post = res.posterior_directions.astype(np.float32)
            for j, i in enumerate(np.asarray(indices).ravel().tolist()):
                self.latest[int(i)] = (res.quadrature, post[j])
        return ev

    def state_dict(self) -> dict[str, Any]:
        """Delegated."""
        return self.objective.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Delegated."""
        self.objective.load_state_dict(state)

    def snapshot(self, particle_ids: ArrayLike | None = None) -> dict[int, tuple[Quadrature,
                                                                                 NDArray]]:
        """A copy of the latest posteriors (of ``particle_ids`` if given, when recorded)."""
        if particle_ids is None:
            return dict(self.latest)
        return {int(i): self.latest[int(i)] for i in np.asarray(particle_ids).ravel()
                if int(i) in self.latest}


def _smoothing(source: Quadrature, target: Quadrature, pscale: float) -> sp.csr_matrix:
    """Row-normalised von Mises-Fisher kernel from ``source``'s directions to ``target``'s."""
    k = target.direction_kernel(source.directions, source.fisher_kappa(2, pscale))
    norm = np.asarray(k.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ k


def posterior_kl(new: dict[int, tuple[Quadrature, NDArray]],
                 old: dict[int, tuple[Quadrature, NDArray]], *, smooth: bool = True,
                 pscale: float = 1.0, floor: float = 1e-12) -> tuple[NDArray, NDArray]:
    """``KL(new || old)`` in nats of each particle's direction posterior in both snapshots.

    Both distributions are put on the grid of ``new`` by the importance sampler's kernel (von
    Mises-Fisher that falls to 1/4 one grid spacing away, :meth:`Quadrature.fisher_kappa`),
    from each one's own grid: importance-sampled posteriors are zero at the points that were not
    drawn, and without smoothing the divergence would be infinite; the smoothing also carries a
    posterior across a change of grid.  ``smooth=False`` requires equal grids and uses the
    raw posteriors with a ``floor``.

    Parameters
    ----------
    new, old : snapshots from :meth:`PosteriorRecorder.snapshot`

    Returns
    -------
    particle_ids : (P,) the particles present in both, sorted
    kl : (P,) KL divergences in nats
    """
    ids = np.array(sorted(set(new) & set(old)), dtype=np.int64)
    kl = np.empty(ids.size)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, i in enumerate(ids.tolist()):
        groups.setdefault((id(new[i][0]), id(old[i][0])), []).append(k)
    for members in groups.values():
        q_new = new[int(ids[members[0]])][0]
        q_old = old[int(ids[members[0]])][0]
        p = np.stack([new[int(ids[k])][1] for k in members]).astype(np.float64)
        r = np.stack([old[int(ids[k])][1] for k in members]).astype(np.float64)
        if smooth:
            p = np.asarray(_smoothing(q_new, q_new, pscale).T @ p.T).T
            r = np.asarray(_smoothing(q_old, q_new, pscale).T @ r.T).T
        elif q_new is not q_old and q_new.n_directions != q_old.n_directions:
            raise ValueError("smooth=False needs both posteriors on the same grid")
        p = np.maximum(p, floor)
        r = np.maximum(r, floor)
        p /= p.sum(axis=1, keepdims=True)
        r /= r.sum(axis=1, keepdims=True)
        kl[members] = np.sum(p * (np.log(p) - np.log(r)), axis=1)
    return ids, kl
