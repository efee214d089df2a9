"""Importance sampling of the pose quadrature (Section 3.3, Eqs. 9-14).

Estimator
---------
For each image, independent multinomial draws of ``n_X`` indices from proposals ``q^X`` over the
directions, in-plane angles and shifts of a :class:`~cryonb.quadrature.Quadrature` give the
tensor-product estimate (Eqs. 10-13, with the reference code's split of R into direction and
in-plane angle)::

    p(I | V) ~ sum_{d in J_D} sum_{i in J_I} sum_{s in J_S} a_d a_i a_s w_d w_i w_s p(I | d,i,s,V)
    a_j = count_j / (n_X q^X_j)                   (the importance weight of a distinct index j)

Each factor has expectation 1 at every point and the three draws are independent, so the
estimate of ``p(I | V)`` (not of its log) is unbiased whenever ``q > 0`` everywhere (``alpha > 0``
guarantees it).  Only the distinct indices are evaluated, by
:meth:`cryonb.likelihood.MarginalLikelihood.evaluate` with the :class:`PoseSubset` returned by
:meth:`ImportanceSampler.sample`.  When ``n_X >= enumerate_fraction * |D_X|`` the domain is
enumerated instead (weights 1), so with all points the estimate *is* the exact sum.

Proposal (Eq. 14)
-----------------
``q_j = alpha / |D| + (1 - alpha) phi~_j / Z`` with ``phi~ = sum_i phi_i^(1/T) K_ij`` the annealed
posterior marginal of the image's previous visit, diffused by a kernel ``K`` onto the current
grid: von Mises-Fisher on S^2 and S^1 with the reference's concentration (the kernel falls to 1/4
(S^2) or 1/2 (S^1) one grid spacing away, ALGORITHM.md 8.4) and a Gaussian of ``0.67`` grid
spacings on shifts -- the spacing being that of the grid the posterior was recorded on, so the
same code carries a distribution over to a finer grid when the band limit grows.  The number of
draws is ``n = min(ceil(s_B * ESS(q)), |D|)`` with ``ESS(q) = 1 / sum q^2`` and ``s_B = 10``.
Early on (``alpha = 1``) every point is evaluated.  The reference's extra "global" population
term (not in the paper) is not implemented.

State (memory per particle)
---------------------------
Per particle and domain ``d`` (directions, in-plane angles, shifts) only the ``K_d`` largest
entries of the previous posterior marginal are kept (at T = 1: the annealing is applied when the
next proposal is made, at that visit's temperature), each as an int32 index into the grid it was
recorded on and a float32 log-probability, plus one float32 for the leftover mass (spread
uniformly over the domain on the next visit), and one int16 naming that grid.  The arrays are
allocated for ``K_d`` slots whether or not they are all used (a domain with fewer points, or
a particle never visited, leaves slots empty), so the cost per particle is fixed::

    bytes per particle = 2 + sum_d (8 K_d + 4)

independent of the quadrature size (for 128 px at 2.8 Å with the default shift range,
1.7 x 10^6 points at 1/40 Å^-1 and 4.3 x 10^8 at 1/10 Å^-1).  With the defaults
``K = (128, 32, 64)``: 1,806 bytes (:attr:`ImportanceSampler.bytes_per_particle`), i.e. 72 MB
for 40,000 particles and 361 MB for 200,000; checkpoints store the same arrays.  Dense work
arrays exist only per minibatch (:meth:`ImportanceSampler.proposals`:
``8 B (|D_directions| + |D_inplane| + |D_shifts|)`` bytes for ``B`` images).  Everything is
NumPy on the host; randomness comes only from the ``rng`` argument.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from .is_schedule import ISSchedule
from .likelihood import LikelihoodResult, PoseSubset
from .quadrature import Quadrature

__all__ = [
    "DOMAINS",
    "DomainSample",
    "ISSchedule",
    "ImportanceSampler",
    "draw_domain",
    "evaluated_domain_fractions",
    "log_estimate",
]

#: the three domains of the quadrature, in the order of its points (direction, in-plane, shift)
DOMAINS = ("directions", "inplane", "shifts")
_DOMAINS = DOMAINS

#: per quadrature point, the host engine's sparse path (an image on its own pose subset) costs
#: about this many times its dense path (images sharing the whole grid, by GEMMs), value and
#: gradient: measured on 100 GroEL images at 26 Å (1.4e6 poses; subsets from T = 1 / 1.5
#: records: 2.9 % / 5.6 % of the grid), dense 26.1 / 24.6 s, sparse 4.4 / 8.9 s: 5.8 and
#: 6.5 times (load 6-8).  Above ``1 / SPARSE_COST_RATIO`` of the grid an image's sampled
#: subset is dearer than the exact sum over every point.
SPARSE_COST_RATIO = 8.0


# ---------------------------------------------------------------------------------- primitives
@dataclass(frozen=True, eq=False)
class DomainSample:
    """Distinct indices drawn from one domain and their log importance weights ``log(c/(n q))``."""

    indices: NDArray
    log_weights: NDArray
    n_draws: int
    ess: float
    enumerated: bool


def evaluated_domain_fractions(subsets: Sequence[PoseSubset] | None,
                               quadrature: Quadrature) -> dict[str, float]:
    """Per domain, the mean over images of the fraction of its points an evaluation scored.

    Parameters
    ----------
    subsets : one :class:`~cryonb.likelihood.PoseSubset` per image (what
        :meth:`ImportanceSampler.sample` drew, exhaustive ones included), or None (every
        point of every image)
    quadrature : the grid the subsets index

    Returns
    -------
    ``{"fraction_directions": ..., "fraction_inplane": ..., "fraction_shifts": ...}``, each in
    (0, 1]: the measured Fig. 7 of the paper (distinct indices, so a point drawn twice counts
    once).
    """
    sizes = (quadrature.n_directions, quadrature.n_inplane, quadrature.n_shifts)
    if subsets is None or len(subsets) == 0:
        return {f"fraction_{d}": 1.0 for d in DOMAINS}
    return {f"fraction_{d}": float(np.mean([len(getattr(s, d)) for s in subsets])) / size
            for d, size in zip(DOMAINS, sizes, strict=True)}


def draw_domain(q: ArrayLike, ess_scale: float, rng: np.random.Generator,
                enumerate_fraction: float = 0.95) -> DomainSample:
    """Draw ``n = min(ceil(ess_scale * ESS(q)), |D|)`` indices from ``q`` (multinomial).

    Parameters
    ----------
    q : (|D|,) proposal, positive, summing to 1
    ess_scale : s_B
    rng : random generator (the only source of randomness)
    enumerate_fraction : if ``n >= enumerate_fraction * |D|`` every index is returned with
        weight 1 instead (the exact sum)

    Returns
    -------
    DomainSample with sorted distinct indices and ``log(count / (n q))``
    """
    q = np.asarray(q, dtype=np.float64).ravel()
    q = q / q.sum()
    size = q.size
    ess = float(1.0 / np.sum(q * q))
    n = int(min(size, np.ceil(ess_scale * ess - 1e-9)))
    n = max(n, 1)
    if n >= enumerate_fraction * size:
        return DomainSample(np.arange(size), np.zeros(size), size, ess, True)
    counts = rng.multinomial(n, q)
    idx = np.flatnonzero(counts)
    logw = np.log(counts[idx] / (n * q[idx]))
    return DomainSample(idx, logw, n, ess, False)


def _smallest_covering(p: NDArray, mass: float) -> list[NDArray]:
    """Per row of ``p`` (B, n; rows sum to 1), the sorted indices of the fewest entries whose
    sum is at least ``mass`` (largest first; at most all of them)."""
    order = np.argsort(-p, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    # entries before the one that reaches mass, plus that one (1e-12: rounding of the sums)
    count = np.minimum((cum < mass - 1e-12).sum(axis=1) + 1, p.shape[1])
    return [np.sort(order[b, :c]) for b, c in enumerate(count)]


def log_estimate(log_terms: ArrayLike, subset: PoseSubset) -> float:
    """The IS estimate (Eq. 13) of ``log sum_{d,i,s} exp(log_terms[d, i, s])`` from a subset.

    ``log_terms`` (Nd, Ni, Ns) holds ``log(w_d w_i w_s p(I | d, i, s))``; the result is
    ``log sum_{subset} a_d a_i a_s exp(log_terms)``, what
    :meth:`~cryonb.likelihood.MarginalLikelihood.evaluate` returns for the same subset.
    """
    t = np.asarray(log_terms, dtype=np.float64)
    sub = t[np.ix_(subset.directions, subset.inplane, subset.shifts)]
    sub = (sub + subset.log_is_directions[:, None, None] + subset.log_is_inplane[None, :, None]
           + subset.log_is_shifts[None, None, :])
    m = sub.max()
    return float(m + np.log(np.exp(sub - m).sum()))


def _top_k(logp: NDArray, idx: NDArray, k: int) -> tuple[NDArray, NDArray, float]:
    """Keep the k most probable entries of a normalised sparse log-distribution.

    Returns the indices, their log-probabilities and the dropped mass (0 when nothing is
    dropped: the rounding of ``1 - sum p`` would become a real mass once annealed).
    """
    if idx.size <= k:
        return idx, logp, 0.0
    part = np.argpartition(-logp, k - 1)[:k]
    idx, logp = idx[part], logp[part]
    rest = float(max(0.0, 1.0 - np.exp(logp).sum()))
    return idx, logp, rest


# ---------------------------------------------------------------------------------- sampler
class ImportanceSampler:
    """Per-particle importance distributions over a pose quadrature (Eq. 14).

    Use one sampler for the whole run.  For each minibatch::

        subsets = sampler.sample(ids, quadrature, iteration, rng)      # one PoseSubset per image
        result = likelihood.evaluate(volume_ft, batch, subsets=subsets, gradient=True)
        sampler.update(ids, subsets, result, iteration)                # record the posterior

    Parameters
    ----------
    n_particles : number of particles in the data set (state is indexed by particle id)
    schedule : :class:`ISSchedule` (default: the reference's)
    ess_scale : s_B, samples per effective sample (paper: 10)
    max_entries : (K_directions, K_inplane, K_shifts) stored entries per particle
    enumerate_fraction : enumerate a domain when ``n >= enumerate_fraction * |D|``
    fisher_pscale : the reference's ``pscale`` of the von Mises-Fisher kernels
    shift_sigma_scale : Gaussian shift kernel width in grid spacings (reference 0.67)
    kernel_cutoff : kernel values below this are dropped (neighbour lists)
    sample_directions, sample_inplane, sample_shifts : importance-sample this domain (else
        enumerate it)
    dense_fraction : an image whose drawn subset would hold more than this fraction of the grid
        gets every point instead (the exact sum: cheaper than the engine's sparse path above
        ``1 / SPARSE_COST_RATIO``, and without variance); 1 disables the switch

    Attributes
    ----------
    history : list of dicts per :meth:`sample` call: ``iteration``, ``fraction_evaluated``
        (mean over the batch of evaluated / total quadrature points), ``speedup``
        (its inverse), ``n_points``, the fraction of each domain's points drawn
        (``fraction_directions`` ..., :func:`evaluated_domain_fractions`) and mean proposal ESS
        per domain
    """

    def __init__(
        self,
        n_particles: int,
        schedule: ISSchedule | None = None,
        *,
        ess_scale: float = 10.0,
        max_entries: tuple[int, int, int] = (128, 32, 64),
        enumerate_fraction: float = 0.95,
        fisher_pscale: float = 1.0,
        shift_sigma_scale: float = 0.67,
        kernel_cutoff: float = 1e-4,
        sample_directions: bool = True,
        sample_inplane: bool = True,
        sample_shifts: bool = True,
        dense_fraction: float = 1.0 / SPARSE_COST_RATIO,
    ) -> None:
        if n_particles < 1:
            raise ValueError("n_particles must be positive")
        self.n_particles = int(n_particles)
        self.schedule = ISSchedule.reference() if schedule is None else schedule
        self.ess_scale = float(ess_scale)
        self.max_entries = tuple(int(k) for k in max_entries)
        self.enumerate_fraction = float(enumerate_fraction)
        self.fisher_pscale = float(fisher_pscale)
        self.shift_sigma_scale = float(shift_sigma_scale)
        self.kernel_cutoff = float(kernel_cutoff)
        self.dense_fraction = float(dense_fraction)
        self.sample_domain = dict(zip(_DOMAINS, (sample_directions, sample_inplane,
                                                 sample_shifts), strict=True))
        self._quadratures: list[Quadrature] = []
        self._quad_id = np.full(self.n_particles, -1, dtype=np.int16)
        self._idx = {d: np.full((self.n_particles, k), -1, dtype=np.int32)
                     for d, k in zip(_DOMAINS, self.max_entries, strict=True)}
        self._logp = {d: np.full((self.n_particles, k), -np.inf, dtype=np.float32)
                      for d, k in zip(_DOMAINS, self.max_entries, strict=True)}
        self._rest = {d: np.ones(self.n_particles, dtype=np.float32) for d in _DOMAINS}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ bookkeeping
    @property
    def bytes_per_particle(self) -> int:
        """Bytes of per-particle state (independent of the quadrature size)."""
        total = self._quad_id.itemsize
        for d in _DOMAINS:
            total += (self._idx[d].itemsize * self._idx[d].shape[1]
                      + self._logp[d].itemsize * self._logp[d].shape[1] + self._rest[d].itemsize)
        return int(total)

    @property
    def fraction_evaluated(self) -> float:
        """Fraction of quadrature points evaluated in the last sampled batch (1.0 before any)."""
        return float(self.history[-1]["fraction_evaluated"]) if self.history else 1.0

    @property
    def speedup(self) -> float:
        """1 / :attr:`fraction_evaluated` of the last batch."""
        return 1.0 / self.fraction_evaluated

    def seen(self, particle_ids: ArrayLike) -> NDArray:
        """Boolean mask: has a posterior been recorded for these particles?"""
        return self._quad_id[np.asarray(particle_ids, dtype=np.int64)] >= 0

    def _quadrature_index(self, quadrature: Quadrature) -> int:
        for k, q in enumerate(self._quadratures):
            if q is quadrature:
                return k
        used = set(np.unique(self._quad_id[self._quad_id >= 0]).tolist())
        for k in range(len(self._quadratures)):  # reuse the slot of a grid nobody refers to
            if k not in used:
                self._quadratures[k] = quadrature
                return k
        if len(self._quadratures) >= np.iinfo(np.int16).max:
            raise RuntimeError("too many distinct quadratures")
        self._quadratures.append(quadrature)
        return len(self._quadratures) - 1

    # ------------------------------------------------------------------ proposals
    def proposals(self, particle_ids: ArrayLike, quadrature: Quadrature, iteration: int
                  ) -> dict[str, NDArray]:
        """Dense proposals ``q`` of Eq. (14) for a batch: (B, Nd), (B, Ni), (B, Ns) per domain."""
        ids = np.asarray(particle_ids, dtype=np.int64).ravel()
        alpha = self.schedule.alpha(iteration)
        beta = self.schedule.inverse_temperature(iteration)
        flip = self.schedule.chirality_flip(iteration)
        sizes = {"directions": quadrature.n_directions, "inplane": quadrature.n_inplane,
                 "shifts": quadrature.n_shifts}
        out = {d: np.full((len(ids), sizes[d]), 1.0 / sizes[d]) for d in _DOMAINS}
        qid = self._quad_id[ids]
        for k in np.unique(qid[qid >= 0]):
            rows = np.flatnonzero(qid == k)
            old = self._quadratures[k]
            for d in _DOMAINS:
                smooth = self._smoothed(ids[rows], d, old, quadrature, flip, beta)
                out[d][rows] = alpha / sizes[d] + (1.0 - alpha) * smooth
        for d in _DOMAINS:
            out[d] /= out[d].sum(axis=1, keepdims=True)
        return out

    def _smoothed(self, ids: NDArray, domain: str, old: Quadrature, new: Quadrature,
                  flip: bool, beta: float = 1.0) -> NDArray:
        """Kernel-diffused stored marginals, annealed ``p^beta`` on the grid they were recorded
        on, on the new grid: (len(ids), |D_new|), rows sum to 1.

        The stored entries ``p_j`` become ``p_j^beta`` and the uniform remainder ``r`` (spread
        over the ``m`` unstored points) ``m (r / m)^beta``, then each row is normalised: the
        annealing of the whole recorded marginal, whatever its truncation.
        """
        idx, logp, rest = self._idx[domain][ids], self._logp[domain][ids], self._rest[domain][ids]
        valid = idx >= 0
        rows = np.broadcast_to(np.arange(len(ids))[:, None], idx.shape)[valid]
        src = idx[valid]
        prob = np.exp(beta * logp[valid].astype(np.float64))
        old_size = {"directions": old.n_directions, "inplane": old.n_inplane,
                    "shifts": old.n_shifts}[domain]
        m = np.maximum(old_size - valid.sum(axis=1), 1).astype(np.float64)
        with np.errstate(divide="ignore"):
            rest = m * np.exp(beta * (np.log(rest.astype(np.float64)) - np.log(m)))
        if beta == 0.0:
            rest = m  # T = infinity: every unstored point counts as much as a stored one
        total = np.bincount(rows, weights=prob, minlength=len(ids)) + rest
        prob = prob / total[rows]
        rest = rest / total
        uniq, inv = np.unique(src, return_inverse=True)
        if domain == "directions":
            kern = new.direction_kernel(old.directions[uniq],
                                        old.fisher_kappa(2, self.fisher_pscale),
                                        self.kernel_cutoff, antipodal=flip)
        elif domain == "inplane":
            kern = new.inplane_kernel(old.inplane_rad[uniq],
                                      old.fisher_kappa(1, self.fisher_pscale),
                                      self.kernel_cutoff, half_turn=flip)
        else:
            kern = new.shift_kernel(old.shifts_A[uniq],
                                    self.shift_sigma_scale * old.shift_spacing_A)
        # normalise each kernel row so that a source spreads exactly its own mass
        norm = np.asarray(kern.sum(axis=1)).ravel()
        kern = sp.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ kern
        weights = sp.csr_matrix((prob, (rows, inv)), shape=(len(ids), len(uniq)))
        smooth = np.asarray((weights @ kern).todense())
        size = smooth.shape[1]
        smooth += rest[:, None] / size
        total = smooth.sum(axis=1, keepdims=True)
        return smooth / np.where(total > 0, total, 1.0)

    # ------------------------------------------------------------------ sampling
    def sample(self, particle_ids: ArrayLike, quadrature: Quadrature, iteration: int,
               rng: np.random.Generator) -> list[PoseSubset]:
        """Draw one :class:`PoseSubset` per particle from its Eq. (14) proposal.

        Parameters
        ----------
        particle_ids : (B,) particle indices (0-based, < n_particles)
        quadrature : the current grid
        iteration : sets alpha and the chirality flip through the schedule
        rng : numpy Generator

        Returns
        -------
        list of B PoseSubset (pass to ``MarginalLikelihood.evaluate(..., subsets=...)``)
        """
        ids = np.asarray(particle_ids, dtype=np.int64).ravel()
        props = self.proposals(ids, quadrature, iteration)
        subsets = []
        full, n_full = PoseSubset.full(quadrature), 0
        ess = {d: [] for d in _DOMAINS}
        for b in range(len(ids)):
            draws = {}
            for d in _DOMAINS:
                if self.sample_domain[d]:
                    draws[d] = draw_domain(props[d][b], self.ess_scale, rng,
                                           self.enumerate_fraction)
                else:
                    size = props[d].shape[1]
                    draws[d] = DomainSample(np.arange(size), np.zeros(size), size,
                                            float(size), True)
                ess[d].append(draws[d].ess)
            n_drawn = np.prod([draws[d].indices.size for d in _DOMAINS])
            if n_drawn > self.dense_fraction * quadrature.size:
                subsets.append(full)
                n_full += 1
                continue
            subsets.append(PoseSubset(
                draws["directions"].indices, draws["inplane"].indices, draws["shifts"].indices,
                draws["directions"].log_weights, draws["inplane"].log_weights,
                draws["shifts"].log_weights))
        n_points = np.array([s.n_points for s in subsets], dtype=np.float64)
        frac = float(np.mean(n_points / quadrature.size))
        self.history.append({
            "iteration": int(iteration), "fraction_evaluated": frac, "speedup": 1.0 / frac,
            "n_points": int(n_points.sum()), "alpha": self.schedule.alpha(iteration),
            "fraction_exact": n_full / max(1, len(ids)),
            **evaluated_domain_fractions(subsets, quadrature),
            **{f"ess_{d}": float(np.mean(ess[d])) for d in _DOMAINS}})
        return subsets

    def local_subsets(self, particle_ids: ArrayLike, quadrature: Quadrature,
                      mass: float = 0.999, *, flip: bool = False) -> list[PoseSubset]:
        """A restricted exact search around each particle's last posterior (final poses).

        Per domain, the smallest set of points of ``quadrature`` that holds ``mass`` of the
        stored marginal diffused onto it (the proposal of Eq. 14 with ``alpha = 0``; its
        uniform remainder included, so a broad or uninformative record gives a large set);
        every log importance weight is 0, so the engine's sum over the subset is the exact sum
        restricted to it, and its MAP pose the exact MAP pose wherever the subset holds it.
        Particles never visited get every point.  ``flip``: also keep mirror poses (the
        chirality kernel of :meth:`ISSchedule.chirality_flip`).
        """
        ids = np.asarray(particle_ids, dtype=np.int64).ravel()
        qid = self._quad_id[ids]
        picks: dict[str, list[NDArray]] = {}
        for d, size in zip(_DOMAINS, (quadrature.n_directions, quadrature.n_inplane,
                                      quadrature.n_shifts), strict=True):
            picks[d] = [np.arange(size)] * len(ids)
            for k in np.unique(qid[qid >= 0]):
                rows = np.flatnonzero(qid == k)
                smooth = self._smoothed(ids[rows], d, self._quadratures[k], quadrature, flip)
                for r, chosen in zip(rows, _smallest_covering(smooth, mass), strict=True):
                    picks[d][r] = chosen
        return [PoseSubset(*(picks[d][b] for d in _DOMAINS),
                           *(np.zeros(picks[d][b].size) for d in _DOMAINS))
                for b in range(len(ids))]

    # ------------------------------------------------------------------ recording
    def update(self, particle_ids: ArrayLike, subsets: list[PoseSubset] | None,
               result: LikelihoodResult, iteration: int) -> None:
        """Record each particle's posterior marginals for its next visit.

        For the evaluated points of each domain: ``v = log phi - log a`` (the posterior with
        this domain's importance weights removed), normalised, truncated to the ``K`` largest
        entries (the rest of the mass is kept as a uniform remainder).  ``subsets=None`` means
        the exhaustive evaluation.  The record is the posterior itself (T = 1): the annealing
        ``phi^(1/T)`` of Eq. (14) is applied when the proposal is made (:meth:`proposals`),
        at the temperature of *that* visit, so a record made long ago (a particle is visited
        once or twice in a short run) is not proposed at the hotter temperature it was made at.
        ``iteration`` is kept for the signature (the record does not depend on it).
        """
        ids = np.asarray(particle_ids, dtype=np.int64).ravel()
        if len(ids) != len(result.log_likelihood):
            raise ValueError("particle_ids and result have different lengths")
        quad = result.quadrature
        k = self._quadrature_index(quad)
        marg = {"directions": result.log_marginal_directions,
                "inplane": result.log_marginal_inplane, "shifts": result.log_marginal_shifts}
        for b, pid in enumerate(ids):
            sub = PoseSubset.full(quad) if subsets is None else subsets[b]
            for d in _DOMAINS:
                idx = getattr(sub, d)
                lis = getattr(sub, "log_is_" + d)
                with np.errstate(invalid="ignore"):
                    v = marg[d][b, idx] - lis
                finite = np.isfinite(v)
                idx, v = idx[finite], v[finite]
                row_i, row_p = self._idx[d][pid], self._logp[d][pid]
                row_i[:] = -1
                row_p[:] = -np.inf
                if idx.size == 0:  # nothing usable: the next proposal is uniform
                    self._rest[d][pid] = 1.0
                    continue
                v = v - v.max()
                v = v - np.log(np.exp(v).sum())
                top_idx, top_logp, rest = _top_k(v, idx, self.max_entries[_DOMAINS.index(d)])
                row_i[: top_idx.size] = top_idx
                row_p[: top_idx.size] = top_logp
                self._rest[d][pid] = rest
            self._quad_id[pid] = k

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Per-particle state as arrays (for checkpoints); grids are referred to by band limit.

        Keys: ``quad_id`` (P,), ``band_limits`` (number of grids,), and per domain
        ``idx_<domain>``, ``logp_<domain>`` (P, K) and ``rest_<domain>`` (P,).
        """
        # a grid no particle uses is not rebuilt by load_state_dict (None): no band limit kept
        limits = [np.nan if q is None or q.max_freq_invA is None else float(q.max_freq_invA)
                  for q in self._quadratures]
        state: dict[str, Any] = {"quad_id": self._quad_id.copy(),
                                 "band_limits": np.asarray(limits, dtype=np.float64)}
        for d in _DOMAINS:
            state[f"idx_{d}"] = self._idx[d].copy()
            state[f"logp_{d}"] = self._logp[d].copy()
            state[f"rest_{d}"] = self._rest[d].copy()
        return state

    def subset(self, particle_ids: ArrayLike) -> ImportanceSampler:
        """A sampler (same settings, no history) for particles ``particle_ids`` only, whose
        particle ``i`` starts from this one's state of ``particle_ids[i]``; it shares the
        grids.  E.g. a half-set's sampler: ``half.load_state_dict(common.subset(ids)
        .state_dict(), quadrature_for)``."""
        ids = np.asarray(particle_ids, dtype=np.int64)
        out = copy.copy(self)
        out.n_particles = int(ids.size)
        out.history = []
        out._quadratures = list(self._quadratures)
        out._quad_id = self._quad_id[ids].copy()
        out._idx = {d: v[ids].copy() for d, v in self._idx.items()}
        out._logp = {d: v[ids].copy() for d, v in self._logp.items()}
        out._rest = {d: v[ids].copy() for d, v in self._rest.items()}
        return out

    def load_state_dict(self, state: dict[str, Any],
                        quadrature_for: Callable[[float], Quadrature]) -> None:
        """Restore :meth:`state_dict`; ``quadrature_for(max_freq_invA)`` rebuilds each grid."""
        quad_id = np.asarray(state["quad_id"], dtype=np.int16)
        if quad_id.shape != self._quad_id.shape:
            raise ValueError(f"state is for {quad_id.shape[0]} particles, not {self.n_particles}")
        limits = np.asarray(state["band_limits"], dtype=np.float64).ravel()
        used = np.unique(quad_id[quad_id >= 0])
        if np.any(~np.isfinite(limits[used])):
            raise ValueError("a stored grid has no band limit and cannot be rebuilt")
        arrays = {}
        for d in _DOMAINS:
            idx = np.asarray(state[f"idx_{d}"], dtype=np.int32)
            if idx.shape != self._idx[d].shape:
                raise ValueError(f"state stores {idx.shape[1]} {d} entries per particle, "
                                 f"this sampler {self._idx[d].shape[1]}")
            arrays[d] = (idx, np.asarray(state[f"logp_{d}"], dtype=np.float32),
                         np.asarray(state[f"rest_{d}"], dtype=np.float32))
        self._quadratures = [quadrature_for(float(w)) if k in used else None  # type: ignore
                             for k, w in enumerate(limits)]
        self._quad_id = quad_id.copy()
        for d, (idx, logp, rest) in arrays.items():
            self._idx[d], self._logp[d], self._rest[d] = idx.copy(), logp.copy(), rest.copy()

    def stored_distribution(self, particle_id: int, domain: str) -> tuple[NDArray, NDArray, float]:
        """``(indices, probabilities, uniform remainder)`` stored for one particle and domain.

        Indices refer to the quadrature the particle was last evaluated on.
        """
        idx = self._idx[domain][particle_id]
        keep = idx >= 0
        return (idx[keep].astype(np.int64),
                np.exp(self._logp[domain][particle_id][keep].astype(np.float64)),
                float(self._rest[domain][particle_id]))
