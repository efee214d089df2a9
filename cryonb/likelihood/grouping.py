"""Grouping of a minibatch's images by pose subset, shared by both likelihood engines.

One job: turn the optional per-image :class:`~.types.PoseSubset` list into groups of images
that share one tensor-product subset of the quadrature (the exhaustive sum of Eq. 4 is one
subset; importance sampling, Eqs. 10-13, gives one per image), each small enough that its
``Z`` matrix (``Z_bs = m c_b exp(2 pi i k.t_s) conj(y_b) / (N^2 sigma_b^2)``, the cross-term
factor of the score expansion of Eq. 4) fits in one working block; and hold the per-image
outputs (log-likelihood, posterior marginals, MAP indices) filled group by group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..quadrature import Quadrature
from .types import PoseSubset

__all__ = ["TIMING_KEYS", "group_images"]

#: the phases of ``LikelihoodResult.timings`` (wall seconds), in this order
TIMING_KEYS = ("slicing_s", "scores_s", "sweeps_s", "gradient_s", "other_s")


@dataclass
class _Group:
    """Images sharing one tensor-product subset of the quadrature."""

    images: NDArray
    directions: NDArray
    inplane: NDArray
    shifts: NDArray
    lis_d: NDArray  # (nD,) log importance weights
    lis_i: NDArray
    lis_s: NDArray

    @property
    def has_is(self) -> bool:
        return bool(np.any(self.lis_d) or np.any(self.lis_i) or np.any(self.lis_s))

    @property
    def n_scores(self) -> int:
        return len(self.images) * len(self.directions) * len(self.inplane) * len(self.shifts)


@dataclass
class _Accumulator:
    """Per-image outputs filled group by group."""

    log_d: NDArray
    log_i: NDArray
    log_s: NDArray
    log_l: NDArray
    map_d: NDArray
    map_i: NDArray
    map_s: NDArray
    n_eval: NDArray
    n_grad: NDArray
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_KEYS, 0.0))

    def tick(self, key: str, t0: float) -> float:
        """Add the wall time since ``t0`` (``time.perf_counter``) to ``timings[key]``; returns
        the current time (the start of the next phase)."""
        now = time.perf_counter()
        self.timings[key] += now - t0
        return now

    def tick_outer(self, key: str, t0: float, inner0: float) -> None:
        """As :meth:`tick` for a phase that contains others: the time they added since
        ``inner0 = inner()`` at ``t0`` is not counted twice."""
        inner = self.inner()
        self.tick(key, t0)
        self.timings[key] -= inner - inner0

    def inner(self) -> float:
        """Time so far in the phases that run inside others (slicing, scores, sweeps)."""
        t = self.timings
        return t["slicing_s"] + t["scores_s"] + t["sweeps_s"]

    @classmethod
    def empty(cls, b: int, q: Quadrature) -> _Accumulator:
        """Outputs of ``b`` images: log marginals ``-inf`` (points not evaluated), zeros."""
        return cls(log_d=np.full((b, q.n_directions), -np.inf),
                   log_i=np.full((b, q.n_inplane), -np.inf),
                   log_s=np.full((b, q.n_shifts), -np.inf), log_l=np.zeros(b),
                   map_d=np.zeros(b, np.int64), map_i=np.zeros(b, np.int64),
                   map_s=np.zeros(b, np.int64), n_eval=np.zeros(b, np.int64),
                   n_grad=np.zeros(b, np.int64))


def group_images(quadrature: Quadrature, b: int, subsets: list[PoseSubset] | None, mh: int,
                 itemsize: int, block_bytes: int) -> list[list[_Group]]:
    """Group ``b`` images by identical subsets, split so that each group's ``Z`` fits in a block.

    Parameters
    ----------
    quadrature : the quadrature the subsets index
    b : number of images
    subsets : one :class:`PoseSubset` per image, or None (every image: the whole quadrature)
    mh : number of half-plane frequencies
    itemsize : bytes of the working real dtype
    block_bytes : a group's ``Z`` (``G * nS`` rows of ``2 Mh`` reals) stays within this

    Returns
    -------
    One list of :class:`_Group` per distinct subset, in order of first appearance.
    """
    q = quadrature
    if subsets is None:
        subsets_by_key = {b"full": (PoseSubset.full(q), list(range(b)))}
    else:
        if len(subsets) != b:
            raise ValueError(f"got {len(subsets)} subsets for {b} images")
        subsets_by_key = {}
        sizes = (q.n_directions, q.n_inplane, q.n_shifts)
        for j, s in enumerate(subsets):
            for arr, size in zip((s.directions, s.inplane, s.shifts), sizes, strict=True):
                if arr.min() < 0 or arr.max() >= size:
                    raise ValueError(f"subset {j} has indices out of range [0, {size})")
            key = s._key()
            if key in subsets_by_key:
                subsets_by_key[key][1].append(j)
            else:
                subsets_by_key[key] = (s, [j])
    clusters = []
    for s, members in subsets_by_key.values():
        per_image = max(1, len(s.shifts) * 2 * mh * itemsize)
        size = max(1, block_bytes // per_image)
        groups = []
        for start in range(0, len(members), size):
            groups.append(_Group(np.asarray(members[start:start + size], dtype=np.int64),
                                 s.directions, s.inplane, s.shifts, s.log_is_directions,
                                 s.log_is_inplane, s.log_is_shifts))
        clusters.append(groups)
    return clusters
