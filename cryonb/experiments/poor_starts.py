"""Fig. 9 of Brubaker, Punjani & Fleet (2015): what goes wrong without marginalisation.

The common alternative to the paper's method is iterative refinement by *projection
matching* (hard assignment): each image gets the single best pose under the current map,
the images are back-projected at those poses, and the new map is used for the next round.
Started from a poor map it locks onto that map's wrong features.
:func:`projection_matching_refinement` is that method with cryonb's own operators:

1. iteration 1: each image's MAP pose (rotation and origin) under the start map over the
   whole quadrature of Eq. 4 at the iteration's band limit (the exhaustive search of
   :class:`cryonb.objective.MarginalObjective` without importance sampling; the mode of
   quadrature weight times likelihood, so the Gaussian origin prior is included);
2. every later iteration: the MAP pose searched *locally* around the image's previous pose
   (:class:`LocalWindow`: directions and in-plane angles within ``local_radius`` grid
   spacings, origins within ``local_radius`` shift spacings, on the grid of the iteration's
   band limit), as refinement programs do after a global start;
3. after each search, the images back-projected at their poses: direct Fourier inversion
   (:class:`cryonb.backprojection.BackprojectionAccumulator`) band-limited at the
   iteration's band limit, in the images' own units (what the likelihood needs: no rescaling).

With a known truth every iteration's map is aligned to it (rotation, translation, hand) and
scored at FSC 0.5, capped at its band limit (:func:`cryonb.metrics.score_against_reference`).
:func:`poor_start_volumes` makes the starts: a uniform sphere and a wrong structure (an
atomic model's density, e.g. β-galactosidase 5A1A), both scaled to the images' mass.

Conventions (``docs/conventions.md``): maps ``[z, y, x]``, RELION rotations and origins (Å),
band limits in 1/Å.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..dataset import Dataset
from ..final_poses import map_pose_pass
from ..likelihood import PoseSubset
from ..metrics import ReferenceScore, score_against_reference
from ..objective import MarginalObjective, QuadratureOptions
from ..quadrature import Quadrature

__all__ = ["LocalWindow", "RefinementParams", "RefinementResult", "poor_start_volumes",
           "projection_matching_refinement", "sphere_volume"]


@dataclass(frozen=True)
class RefinementParams:
    """Settings of :func:`projection_matching_refinement`.

    Attributes
    ----------
    local_radius : float
        Half-width of the local search, in grid spacings of each domain (directions:
        ``Quadrature.direction_spacing_rad``; in-plane: ``inplane_spacing_rad``; origins:
        ``shift_spacing_A``).  The nearest grid point is always included.
    batch_size : int
        Images scored per call of the likelihood engine.
    positivity : bool
        Clip each back-projected map at 0 (False: the plain direct inversion).
    """

    local_radius: float = 2.0
    batch_size: int = 100
    positivity: bool = False

    def __post_init__(self) -> None:
        if not self.local_radius > 0:
            raise ValueError(f"local_radius must be positive, got {self.local_radius}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True, eq=False)
class RefinementResult:
    """Per iteration of :func:`projection_matching_refinement` (``K`` iterations, ``n`` images).

    Attributes
    ----------
    volumes : (K, N, N, N) float64 map after each iteration (back-projection at its poses)
    band_limits_invA : (K,) band limit of each iteration's search and back-projection, 1/Å
    rotations : (K, n, 3, 3) each image's pose found at each iteration
    shifts_A : (K, n, 2) its origin (x, y), Å
    pose_indices : (K, n, 3) int64 (direction, in-plane, shift) indices in that iteration's grid
    fraction_evaluated : (K,) mean fraction of the iteration's quadrature scored per image
        (1 for the global search)
    wall_time_s : (K,) seconds since the refinement began, at the end of each iteration
    scores : K ReferenceScore (aligned to the truth, FSC 0.5) or None: without a truth, and
        before the last iteration unless every iteration was scored
    start_score : the start map's ReferenceScore (at the first band limit) or None

    Notes
    -----
    The last iteration's score is :attr:`final_score`.
    """

    volumes: NDArray
    band_limits_invA: NDArray
    rotations: NDArray
    shifts_A: NDArray
    pose_indices: NDArray
    fraction_evaluated: NDArray
    wall_time_s: NDArray
    scores: list[ReferenceScore | None]
    start_score: ReferenceScore | None

    def __len__(self) -> int:
        return int(self.volumes.shape[0])

    @property
    def final(self) -> NDArray:
        """The last iteration's map."""
        return self.volumes[-1]

    @property
    def final_score(self) -> ReferenceScore | None:
        """The last iteration's score against the truth (None without one)."""
        return self.scores[-1]


@dataclass(frozen=True)
class LocalWindow:
    """Stands in for a :class:`MarginalObjective`'s importance sampler: ``sample`` returns,
    per image, the grid points near its previous pose (no importance weights, so the engine's
    sum is the exact one restricted to them and its mode the local MAP pose).

    Attributes
    ----------
    rotations : (n, 3, 3) previous pose of every image of the dataset (by dataset index)
    shifts_A : (n, 2) previous origins, Å
    radius : half-width in grid spacings (see :class:`RefinementParams`)
    """

    rotations: NDArray
    shifts_A: NDArray
    radius: float = 2.0

    def sample(self, particle_ids: NDArray, quadrature: Quadrature, iteration: int,
               rng: np.random.Generator) -> list[PoseSubset]:
        """The local subsets of ``particle_ids`` on ``quadrature`` (nothing is drawn)."""
        ids = np.asarray(particle_ids, dtype=np.int64).ravel()
        angle_d = self.radius * quadrature.direction_spacing_rad
        chord = 2.0 * np.sin(min(np.pi, angle_d) / 2.0) + 1e-12
        angle_i = self.radius * quadrature.inplane_spacing_rad
        radius_s = self.radius * float(quadrature.shift_spacing_A) + 1e-9
        out = []
        for b in ids:
            r = self.rotations[b]
            direction = r[:, 2]  # R @ z
            dirs = np.union1d(quadrature.direction_tree.query_ball_point(direction, chord),
                              [quadrature.direction_tree.query(direction)[1]]).astype(np.int64)
            # the in-plane angle that best matches R at each candidate direction:
            # R_d^T R = Rz(psi) for the exact direction
            m = np.einsum("kji,jl->kil", quadrature.direction_matrices[dirs], r)
            psi = np.arctan2(m[:, 1, 0], m[:, 0, 0])
            gap = np.abs(np.angle(np.exp(1j * (quadrature.inplane_rad[None, :]
                                               - psi[:, None]))))
            near = (gap <= angle_i + 1e-12).any(axis=0)
            near[np.argmin(gap, axis=1)] = True
            shifts = np.union1d(quadrature.shift_tree.query_ball_point(self.shifts_A[b],
                                                                       radius_s),
                                [quadrature.shift_tree.query(self.shifts_A[b])[1]]
                                ).astype(np.int64)
            inplane = np.flatnonzero(near)
            out.append(PoseSubset(dirs, inplane, shifts, np.zeros(dirs.size),
                                  np.zeros(inplane.size), np.zeros(shifts.size)))
        return out

    def update(self, particle_ids: NDArray, subsets: Any, result: Any, iteration: int) -> None:
        """Nothing is learnt (the poses are passed in)."""


def _band_limits(max_freq_invA: float | Sequence[float], iterations: int) -> NDArray:
    w = np.atleast_1d(np.asarray(max_freq_invA, dtype=np.float64))
    if w.size == 1:
        w = np.full(iterations, float(w[0]))
    if w.size != iterations or not (w > 0).all():
        raise ValueError(f"give one positive band limit or one per iteration ({iterations}), "
                         f"got {w.size}")
    return w


def projection_matching_refinement(
    dataset: Dataset,
    start_volume: ArrayLike,
    *,
    iterations: int,
    rng: np.random.Generator,
    max_freq_invA: float | Sequence[float],
    noise_sigma: float | None = None,
    quadrature: QuadratureOptions | None = None,
    params: RefinementParams | None = None,
    truth: ArrayLike | None = None,
    score_every_iteration: bool = False,
    progress: bool = False,
) -> RefinementResult:
    """Iterative refinement by projection matching from ``start_volume`` (see the module
    docstring): a global MAP-pose search, then local ones, each followed by a back-projection.

    Parameters
    ----------
    dataset : Dataset
        The images and CTFs (poses, if any, are not used), e.g. an ab initio run's ``run.work``
        (normalised, Fourier-cropped); box ``N`` and pixel size as ``start_volume``'s.
    start_volume : (N, N, N) the first map, ``[z, y, x]``, in the images' units (e.g. scaled
        to :func:`cryonb.diagnostics.estimate_mass` of the images)
    iterations : number of search + back-projection rounds (the first is global)
    rng : draws nothing in the searches (they are exhaustive on their subsets); passed to the
        objective, which needs a generator
    max_freq_invA : band limit (1/Å) of every iteration, or one per iteration (frequency
        marching); at most the images' Nyquist
    noise_sigma : real-space noise sigma per pixel (default: ``dataset.estimate_noise_sigma()``)
    quadrature : the pose grid's options (e.g. an ab initio run's ``qopts``)
    params : RefinementParams
    truth : (M, M, M) the true map (Fourier-cropped to ``N``): the final map is scored
    score_every_iteration : with ``truth``, score the start and every iteration too (one
        alignment each, a few seconds at 24 px)
    progress : print one line per iteration

    Returns
    -------
    RefinementResult
    """
    params = params or RefinementParams()
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    widths = _band_limits(max_freq_invA, iterations)
    volume = np.asarray(start_volume, dtype=np.float64)
    n, box = len(dataset), dataset.box_size
    if volume.shape != (box,) * 3:
        raise ValueError(f"start_volume must have shape {(box,) * 3}, got {volume.shape}")
    sigma = dataset.estimate_noise_sigma() if noise_sigma is None else float(noise_sigma)
    objective = MarginalObjective(dataset, sigma, rng=rng, quadrature=quadrature,
                                  dtype=np.float64, prefetch=False)
    psize = dataset.pixel_size_A
    start_score = (None if truth is None or not score_every_iteration else
                   score_against_reference(volume, truth, psize, max_freq_invA=widths[0]))
    t0 = time.perf_counter()
    vols, rots, shifts, idx, frac, times, scores = [], [], [], [], [], [], []
    rotations = shifts_A = None
    for k, w in enumerate(widths):
        objective.set_band_limit(float(w))
        objective.sampler = (None if rotations is None
                             else LocalWindow(rotations, shifts_A, params.local_radius))
        batches = [np.arange(a, min(n, a + params.batch_size))
                   for a in range(0, n, params.batch_size)]
        found = map_pose_pass(objective, volume, dataset, objective.model_for(float(w)),
                              batches, iteration=k)
        rotations, shifts_A, indices = found.rotations, found.shifts_A, found.indices
        n_eval = found.n_evaluated
        volume = found.volume
        if params.positivity:
            volume = np.maximum(volume, 0.0)
        size = objective.likelihood.quadrature.size
        vols.append(volume)
        rots.append(rotations)
        shifts.append(shifts_A)
        idx.append(indices)
        frac.append(float(n_eval.mean()) / size)
        times.append(time.perf_counter() - t0)
        wanted = truth is not None and (score_every_iteration or k == iterations - 1)
        score = (score_against_reference(volume, truth, psize, max_freq_invA=float(w))
                 if wanted else None)
        scores.append(score)
        if progress:
            res_label = "" if score is None else f", FSC 0.5 vs truth {score.resolution.label}"
            print(f"projection matching {k + 1}/{iterations} at {1 / w:.1f} Å: "
                  f"{frac[-1]:.2%} of {size} poses per image{res_label}")
    return RefinementResult(np.stack(vols), widths, np.stack(rots), np.stack(shifts),
                            np.stack(idx), np.array(frac), np.array(times), scores,
                            start_score)


def sphere_volume(box_size: int, pixel_size_A: float, radius_A: float, *,
                  mass: float = 1.0) -> NDArray:
    """A uniform sphere of ``radius_A`` about the centre voxel ``N // 2``, total ``mass``
    (sum of voxels), ``(N, N, N)`` float64."""
    k = (np.arange(box_size) - box_size // 2) * pixel_size_A
    z, y, x = np.meshgrid(k, k, k, indexing="ij", sparse=True)
    inside = (x * x + y * y + z * z <= radius_A * radius_A).astype(np.float64)
    if inside.sum() == 0:
        raise ValueError(f"a sphere of {radius_A} Å holds no voxel of {pixel_size_A} Å")
    return inside * (mass / inside.sum())


def poor_start_volumes(box_size: int, pixel_size_A: float, mass: float, *,
                       sphere_radius_A: float, wrong_structure: str | Path | None = None,
                       wrong_name: str = "wrong structure", lowpass_A: float | None = 40.0
                       ) -> dict[str, NDArray]:
    """The poor starts of Fig. 9, each of total ``mass``: ``"sphere"`` (uniform, radius
    ``sphere_radius_A``) and, with ``wrong_structure`` (a PDB/mmCIF file), ``wrong_name``: its
    atomic model's density (:func:`cryonb.synthetic.density.density_from_file`, centred on its
    centre of mass) on the same grid, low-passed at ``lowpass_A`` (Å; the first band limit of
    a refinement, and no ringing of a coarse grid), clipped at 0."""
    from ..synthetic.density import DensityParams, density_from_file

    starts = {"sphere": sphere_volume(box_size, pixel_size_A, sphere_radius_A, mass=mass)}
    if wrong_structure is not None:
        dens = np.maximum(np.asarray(density_from_file(
            wrong_structure, DensityParams(box_size, pixel_size_A, lowpass_A=lowpass_A)),
            dtype=np.float64), 0.0)
        starts[wrong_name] = dens * (mass / dens.sum())
    return starts
