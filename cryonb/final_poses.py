"""Final poses: each particle's MAP pose under a map, by a local search around its last posterior.

One job: after the solver, the pose of every particle under its half's final map and the
half's particles back-projected at those poses (:func:`final_poses`).  Instead of a new pass
over the quadrature, each particle is scored only on the subset its importance sampler's last
record points to (:meth:`cryonb.importance.ImportanceSampler.local_subsets`: per domain the
smallest set of points holding ``mass`` of the stored marginal diffused onto the current grid,
log importance weights 0).  The score is exact on that subset, so the MAP pose is the
exhaustive one whenever the subset holds it; particles never visited are scored on every
point.  An objective without a sampler is scored exhaustively.  Particles are batched by the
direction their subset points to (:func:`batch_order`), and a batch whose images' subsets
overlap is scored on their union by the engine's dense path when that is cheaper
(:func:`batch_union`).

The scoring goes through the objective's own ``evaluate`` (so a Dask-distributed objective
scores on its workers and reads ahead as in the solver): for the pass its sampler is replaced
by a :class:`LocalSearch`, which answers ``sample`` with the local subsets, and put back after.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .backprojection import BackprojectionAccumulator
from .dataset import Dataset
from .image_model import ImageModel
from .likelihood import PoseSubset
from .quadrature import Quadrature

__all__ = ["HalfPoses", "LocalSearch", "batch_order", "batch_union", "final_poses",
           "map_pose_pass"]


@dataclass(frozen=True)
class LocalSearch:
    """Stands in for an objective's importance sampler: ``sample`` returns the local subsets
    of ``sampler`` (:meth:`~cryonb.importance.ImportanceSampler.local_subsets`) at ``mass``."""

    sampler: Any
    mass: float = 0.999
    known: dict[int, PoseSubset] | None = None  # subsets computed already, by particle
    merge: bool = True  # one union subset per batch where it is cheaper (:func:`batch_union`)

    def sample(self, particle_ids: NDArray, quadrature: Quadrature, iteration: int,
               rng: np.random.Generator) -> list[PoseSubset]:
        """The local subsets (``iteration`` and ``rng`` are not used: nothing is drawn); a
        subset of more than :data:`DENSE_FRACTION` of the grid is replaced by the whole grid,
        which the engine's dense path scores faster (and the MAP pose is then exhaustive);
        with ``merge``, the batch shares the union of its subsets where that costs less
        (:func:`batch_union`)."""
        ids = np.asarray(particle_ids, dtype=np.int64)
        if self.known is not None and all(int(i) in self.known for i in ids):
            subsets = [self.known[int(i)] for i in ids]
        else:
            subsets = self.sampler.local_subsets(ids, quadrature, self.mass)
        limit = DENSE_FRACTION * quadrature.size
        full = PoseSubset.full(quadrature)
        subsets = [full if sub.n_points > limit else sub for sub in subsets]
        shared = batch_union(subsets, quadrature.size) if self.merge else None
        return [shared] * len(subsets) if shared is not None else subsets

    def seen(self, particle_ids: NDArray) -> NDArray:
        """The wrapped sampler's mask of particles with a recorded posterior."""
        return self.sampler.seen(particle_ids)

    def update(self, particle_ids: NDArray, subsets: Any, result: Any, iteration: int) -> None:
        """Record the posteriors in the wrapped sampler (a level of the coarse-to-fine
        search)."""
        self.sampler.update(particle_ids, subsets, result, iteration)


@dataclass(frozen=True, eq=False)
class HalfPoses:
    """The final poses of one half's particles and their reconstruction.

    Attributes
    ----------
    rotations : (n, 3, 3) RELION rotation matrices of the MAP poses
    shifts_A : (n, 2) origins (x, y) in Å
    volume : (N, N, N) direct Fourier inversion of the particles at those poses (float32 from
        :func:`final_poses`, float64 from :func:`map_pose_pass`)
    indices : (n, 3) int64 (direction, in-plane, shift) indices of the poses in the quadrature
    n_evaluated : (n,) quadrature points scored per particle
    quadrature_size : points of the full quadrature the poses were searched on
    """

    rotations: NDArray
    shifts_A: NDArray
    volume: NDArray
    indices: NDArray
    n_evaluated: NDArray
    quadrature_size: int

    @property
    def fraction_evaluated(self) -> float:
        """Mean fraction of the quadrature scored per particle."""
        return float(np.mean(self.n_evaluated)) / self.quadrature_size


def final_poses(halves: list[tuple[Any, NDArray, Dataset]], model: ImageModel, *,
                mass: float = 0.99, batch_size: int = 200,
                progress: bool = True) -> list[HalfPoses]:
    """MAP poses of every half's particles under its map, and each half back-projected there.

    Parameters
    ----------
    halves : ``(objective, volume, dataset)`` per half: a marginal objective with its band
        limit set (its ``sampler`` holds the particles' last posteriors), the half's map, and
        the dataset whose images the objective scores (the same particles, same order)
    model : the image model of the reconstructions (box, pixel size, band limit)
    mass : the share of each domain's diffused last posterior its subset holds.  0.99: on
        10,000 GroEL particles (48 px, 837,900 poses) it scored 1.3 % of the grid in 81 s
        against the former IS pass's 7.8 % in 213 s, with the same quality (the exhaustive MAP
        found for 59 % of particles, 57.5 % before; mean log-score shortfall 2.2 nats, both);
        0.999: 3.5 % in 179 s, 61.5 % and 1.9 nats
    batch_size : particles scored per call of the engine
    progress : show a progress bar over particles (tqdm)

    Returns
    -------
    one :class:`HalfPoses` per half
    """
    from tqdm.auto import tqdm

    out = []
    total = sum(len(ds) for _, _, ds in halves)
    with tqdm(total=total, desc="final poses", unit="particle", disable=not progress,
              smoothing=0.1) as bar:
        for objective, volume, dataset in halves:
            out.append(_one_half(objective, volume, dataset, model, mass, batch_size, bar))
    return out


def batch_order(directions: NDArray, batch_size: int) -> NDArray:
    """An order of particles in which each run of ``batch_size`` looks along nearby directions.

    ``directions`` (n, 3): a direction per particle, or a short / non-finite vector for "no
    direction" (those come last).  The sphere is cut into ``~sqrt(n / batch_size)`` bands of
    equal area (equal height in z), each walked in longitude, alternately east and west, so a
    batch covers a patch of about ``1 / (n / batch_size)`` of the sphere.  The engine slices the
    map once per batch for the union of its particles' rotations, so this makes that union (and
    the slicing, most of the cost of a local search) several times smaller than in input order.
    """
    v = np.asarray(directions, dtype=np.float64)
    norm = np.linalg.norm(v, axis=1)
    known = np.isfinite(norm) & (norm > 0.5)
    u = np.where(known[:, None], v / np.where(known, norm, 1.0)[:, None], 0.0)
    n_bands = max(1, round(np.sqrt(len(v) / max(1, batch_size))))
    band = np.minimum(((u[:, 2] + 1.0) / 2.0 * n_bands).astype(np.int64), n_bands - 1)
    phi = np.arctan2(u[:, 1], u[:, 0])
    return np.lexsort((np.where(band % 2 == 1, -phi, phi), band, ~known))


def batch_union(subsets: list[PoseSubset], grid_size: int) -> PoseSubset | None:
    """One subset for a whole batch -- per domain the union of the images' subsets -- when
    scoring every image on it costs less than scoring each on its own, else None.

    Every image then shares one tensor-product subset, which the engine scores as one group by
    its dense path (slices shared by all images, matrix products; without the gradient about
    :data:`SPARSE_COST_RATIO_NO_GRADIENT` times cheaper per point than the per-image path).  The
    union holds each image's own subset, so the search stays exact on a superset: the MAP pose
    is at least as good.  Cost model, in dense point-costs: ``B |U|`` for the union against
    ``sum_b n_b`` (whole-grid subsets: dense already) or ``ratio * n_b`` (local subsets); the
    batches come from :func:`batch_order`, so their images look along nearby directions and the
    union of their directions is small.  Subsets with importance weights are never merged.
    ``grid_size``: points of the whole quadrature.
    """
    if len(subsets) < 2 or any(s.has_importance_weights for s in subsets):
        return None
    union = [np.unique(np.concatenate([getattr(s, d) for s in subsets]))
             for d in ("directions", "inplane", "shifts")]
    n_union = int(np.prod([len(u) for u in union]))
    sizes = np.array([s.n_points for s in subsets], dtype=np.float64)
    whole = sizes >= grid_size  # the whole grid: scored by the dense path anyway
    own = float(np.sum(np.where(whole, sizes, SPARSE_COST_RATIO_NO_GRADIENT * sizes)))
    if len(subsets) * n_union >= own:
        return None
    return PoseSubset(*union, *(np.zeros(len(u)) for u in union))


def _centres(sampler: Any, quadrature: Quadrature, mass: float, batch_size: int,
             n: int) -> tuple[NDArray, dict[int, PoseSubset]]:
    """(n, 3) mean direction of each particle's local subset: near a direction for a compact
    subset, short for a broad or multimodal one (those are batched last, by :func:`batch_order`);
    and the subsets themselves, by particle (the pass scores them without recomputing)."""
    out = np.zeros((n, 3))
    subsets: dict[int, PoseSubset] = {}
    for start in range(0, n, batch_size):
        ids = np.arange(start, min(n, start + batch_size))
        for b, sub in zip(ids, sampler.local_subsets(ids, quadrature, mass), strict=True):
            out[b] = quadrature.directions[sub.directions].mean(axis=0)
            subsets[int(b)] = sub
    return out, subsets


#: a local subset above this fraction of the grid is scored as the whole grid: without the
#: gradient the engine's sparse path costs ~16 times the dense one per point (measured, 200
#: GroEL images at 26 Å, 1.4e6 poses, load 4-5: 8.4 % of the grid locally 16.2 s, 68 % 114 s,
#: all of it densely 12.4 s; with the gradient, in the solver, ``SPARSE_COST_RATIO``), so the
#: break-even lies near 6 %, and the exact MAP over every point is worth a little time
DENSE_FRACTION = 0.03
#: per point, the engine's per-image (sparse) path without the gradient against its dense
#: path: the ~16 of the measurement above (8.4 % of the grid locally 16.2 s, all of it 12.4 s)
SPARSE_COST_RATIO_NO_GRADIENT = 16.0
#: the local search around the solver's last posteriors is used when it scores at most this
#: fraction of the grid; otherwise (posteriors recorded hot, or never) the coarse-to-fine search
BROAD_FRACTION = 0.05
#: the coarse-to-fine search starts exhaustively at this band limit, 1/Å, and doubles it
COARSE_START_INVA = 1.0 / 40.0
#: ... and only when the final grid has at least this many times the coarse grid's points
#: (below, an exhaustive pass at the final band limit is cheaper: at 26 Å the coarse 40 Å
#: pass cost 2.3 s per 200 images and left subsets of 8.4 % of the 4.7 times larger grid)
COARSE_MIN_RATIO = 16.0


def _broad(sampler: Any, quadrature: Quadrature, mass: float, n: int) -> bool:
    """Would the local subsets of the solver's records cover more than
    :data:`BROAD_FRACTION` of the grid (measured on up to 200 particles spread over the set)?"""
    ids = np.unique(np.linspace(0, n - 1, min(n, 200)).astype(np.int64))
    sizes = [s.n_points for s in sampler.local_subsets(ids, quadrature, mass)]
    return float(np.mean(sizes)) > BROAD_FRACTION * quadrature.size


def _coarse_to_fine(objective: Any, volume: NDArray, n: int, mass: float, batch_size: int,
                    bar: Any) -> Any:
    """Posteriors of every particle from a search that starts exhaustively at a coarse band
    limit and refines locally: band limits ``COARSE_START_INVA * 2^k`` below the objective's
    own, each level searched on the ``mass`` subsets of the previous level's posterior
    (recorded at T = 1 in a sampler of its own), which is returned for the final level.

    The posterior at half the band limit, at T = 1, holds the MAP pose of the finer grid
    inside its ``mass`` set when the data agree across the band (the grid refines smoothly);
    it costs an exhaustive pass at the coarse band limit (grid points ~ w^5 smaller) plus
    local passes.  The objective is left at its own band limit.
    """
    from .importance import ImportanceSampler, ISSchedule

    w_final = float(objective.likelihood.quadrature.max_freq_invA)
    levels = []
    w = min(COARSE_START_INVA, w_final)
    while w < w_final * (1 - 1e-9):
        levels.append(w)
        w *= 2.0
    scout = ImportanceSampler(n, ISSchedule.constant(0.0, 1.0))
    saved = objective.sampler
    bar.total = (bar.total or 0) + n * len(levels)
    bar.refresh()
    try:
        for k, w in enumerate(levels):
            objective.set_band_limit(w)
            objective.sampler = None if k == 0 else LocalSearch(scout, mass)
            for start in range(0, n, batch_size):
                local = np.arange(start, min(n, start + batch_size))
                objective.evaluate(volume, local, gradient=False, record=k > 0, iteration=0)
                if k == 0:  # exhaustive: record the posteriors here
                    scout.update(local, None, objective.last_result, 0)
                bar.update(len(local))
                bar.set_postfix(level=f"{1 / w:.0f} Å")
    finally:
        objective.sampler = saved
        objective.set_band_limit(w_final)
    return scout


def _one_half(objective: Any, volume: NDArray, dataset: Dataset, model: ImageModel,
              mass: float, batch_size: int, bar: Any) -> HalfPoses:
    n = len(dataset)
    sampler = objective.sampler
    quadrature = objective.likelihood.quadrature
    order = np.arange(n)
    if sampler is not None:
        guide = sampler
        if _broad(sampler, quadrature, mass, n):
            coarse = objective.quadrature_for(min(COARSE_START_INVA, quadrature.max_freq_invA))
            guide = (_coarse_to_fine(objective, volume, n, mass, batch_size, bar)
                     if quadrature.size >= COARSE_MIN_RATIO * coarse.size else None)
        if guide is not None:
            centres, subsets = _centres(guide, quadrature, mass, batch_size, n)
            order = batch_order(centres, batch_size)
            objective.sampler = LocalSearch(guide, mass, subsets)
        else:  # broad records on a grid too small for coarse-to-fine: exhaustive
            objective.sampler = None
    batches = [order[k: k + batch_size] for k in range(0, n, batch_size)]
    try:
        half = map_pose_pass(objective, volume, dataset, model, batches, bar=bar)
    finally:
        objective.sampler = sampler
    return replace(half, volume=half.volume.astype(np.float32))


def map_pose_pass(objective: Any, volume: NDArray, dataset: Dataset, model: ImageModel,
                  batches: list[NDArray], *, iteration: int = 0, bar: Any = None) -> HalfPoses:
    """Score every batch of ``dataset`` under ``volume`` with ``objective`` as it stands (its
    sampler, if any, gives each image's subset), keep each image's MAP pose and back-project
    the images there (direct Fourier inversion with ``model``).

    ``batches``: particle indices, each a call of the engine (the next one is read ahead);
    ``iteration`` goes to the objective's sampler; ``bar``: a tqdm bar to advance.  Nothing is
    recorded.  Returns a :class:`HalfPoses` whose volume is float64 (as inverted).
    """
    n = len(dataset)
    rotations, shifts = np.zeros((n, 3, 3)), np.zeros((n, 2))
    indices, n_evaluated = np.zeros((n, 3), dtype=np.int64), np.zeros(n, dtype=np.int64)
    acc = BackprojectionAccumulator(model)
    size = objective.likelihood.quadrature.size
    for k, local in enumerate(batches):
        if k + 1 < len(batches):  # read the next batch while this one is scored
            objective.prefetch(batches[k + 1])
        objective.evaluate(volume, local, gradient=False, record=False, iteration=iteration)
        res = objective.last_result
        rotations[local], shifts[local] = res.map_rotations, res.map_shifts_A
        indices[local] = np.stack([res.map_direction, res.map_inplane, res.map_shift], 1)
        n_evaluated[local] = res.n_evaluated
        acc.add(dataset.images(local), res.map_rotations, res.map_shifts_A,
                None if dataset.ctf is None else dataset.ctf.subset(local))
        if bar is not None:
            bar.update(len(local))
            done = np.concatenate(batches[: k + 1])
            bar.set_postfix(points=f"{n_evaluated[done].mean() / size:.2%}")
    return HalfPoses(rotations, shifts, acc.direct_inversion(), indices, n_evaluated,
                     int(size))
