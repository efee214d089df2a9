"""Quadrature over poses: viewing directions (S^2) x in-plane angles (S^1) x 2D shifts.

Eq. (4) of Brubaker, Punjani & Fleet (2015) replaces the integral over SO(3) x R^2 by

``p(I | theta, V) ~ sum_d sum_i sum_s  w^D_d w^I_i w^S_s  p(I | theta, R_{d,i}, t_s, V)``

:class:`Quadrature` owns only this geometry: the points, their weights (each domain's weights
sum to 1, so the uniform prior on SO(3) and the Gaussian shift prior are built in) and the
neighbour/kernel structure used by the importance sampler.  It never sees images or volumes.

Grid choice
-----------
* **Directions**: a Fibonacci (golden-angle) spiral on the sphere, equal area per point, with
  the reference implementation's count rule ``N_D = ceil((3.6 / dtheta)^2)`` (its Saff-Kuijlaars
  "sk97" spiral uses the same rule, ALGORITHM.md 5.2).  The Fibonacci lattice is at least as
  uniform as the sk97 spiral, exists for every ``N_D`` (HEALPix only for ``12 * 4^k`` and needs
  healpy), and its points are given in closed form.  Weights are uniform, ``1 / N_D``.
* **In-plane angles**: ``N_I = ceil(2 pi / dtheta)`` equispaced angles offset by half a step,
  weights ``1 / N_I`` (reference, ALGORITHM.md 5.3).  Direction x in-plane is a product grid on
  the Hopf fibration S^1 -> SO(3) -> S^2 with the ZYZ section, hence Haar-uniform.
* **Shifts**: a square lattice centred on 0 truncated to the disc ``|t| <= extent``, weights
  ``exp(-|t|^2 / (2 sigma^2))`` normalised to 1 (a truncated Gaussian prior).

Sizes follow the band limit ``w`` (1/Å), ALGORITHM.md 5.1: one Fourier pixel at the band edge
subtends ``dtheta = us * arctan(1 / (w D))`` where ``D`` is the box size ``N * pixel_size_A``
(the reference) or, if given, the particle diameter ``2 * particle_radius_A`` (Nyquist: a
density of diameter D has a Fourier transform smooth on the scale 1/D, and rotating by dtheta
moves the band edge by ``w dtheta``).  The shift spacing is ``us_S / (2 w)`` Å (the reference's
``auto`` Gauss-Legendre rule has the same spacing), capped at ``max_shift_spacing_sigma *
sigma`` so that the Gaussian prior itself stays resolved at low ``w``.  So ``N_D ~ w^2``,
``N_I ~ w`` and ``N_S ~ w^2``: higher ``w`` gives more points.

Pose order and rotations
------------------------
A pose ``(d, i)`` is the RELION rotation ``R = Rz(rot_d) Ry(tilt_d) Rz(psi_i)`` (degrees, see
:mod:`cryonb.rotations`), so that ``R @ z = direction_d`` and the in-plane angle is RELION's
``psi``.  Flat pose index ``r = d * N_I + i`` (direction-major), as in :meth:`rotations`.
Shifts are RELION origins ``(x, y)`` in Å in the image frame.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from .fourier import nyquist_invA

__all__ = [
    "Quadrature",
    "fibonacci_sphere",
    "reference_undersampling",
    "shift_lattice",
]

GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))
_SPIRAL_CONSTANT = 3.6  # N_D = ceil((3.6 / spacing)^2), the reference's sk97 rule


def fibonacci_sphere(n: int) -> NDArray:
    """``n`` near-uniform unit vectors (x, y, z) on the sphere (golden-angle spiral), (n, 3).

    ``z_j = 1 - (2 j + 1) / n`` (equal-area bands, no point on a pole) and azimuth
    ``j * pi (3 - sqrt 5)``.
    """
    if n < 1:
        raise ValueError(f"need at least one direction, got {n}")
    j = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * j + 1.0) / n
    rho = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = j * GOLDEN_ANGLE
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=-1)


def shift_lattice(spacing_A: float, extent_A: float, sigma_A: float | None
                  ) -> tuple[NDArray, NDArray]:
    """Square lattice of shifts truncated to a disc, with normalised Gaussian prior weights.

    Parameters
    ----------
    spacing_A : lattice spacing in Å
    extent_A : disc radius in Å (points with ``|t| <= extent_A`` are kept; 0 gives one point)
    sigma_A : standard deviation of the isotropic Gaussian prior in Å; ``None`` = flat

    Returns
    -------
    shifts_A : (Ns, 2) float64, (x, y) in Å, sorted by radius (the origin first)
    weights : (Ns,) float64, summing to 1
    """
    if spacing_A <= 0:
        raise ValueError(f"spacing_A must be positive, got {spacing_A}")
    n = int(np.floor(extent_A / spacing_A + 1e-9))
    k = np.arange(-n, n + 1, dtype=np.float64) * spacing_A
    ky, kx = np.meshgrid(k, k, indexing="ij")
    pts = np.stack([kx.ravel(), ky.ravel()], axis=-1)
    r2 = (pts**2).sum(axis=1)
    keep = r2 <= extent_A**2 * (1 + 1e-9) + 1e-12
    pts, r2 = pts[keep], r2[keep]
    order = np.lexsort((np.arctan2(pts[:, 1], pts[:, 0]), np.round(r2, 9)))
    pts, r2 = pts[order], r2[order]
    logw = np.zeros_like(r2) if sigma_A is None else -r2 / (2.0 * float(sigma_A) ** 2)
    w = np.exp(logw - logw.max())
    return pts, w / w.sum()


def reference_undersampling(stage: int) -> tuple[float, float]:
    """The reference run's undersampling factors ``(us_rotation, us_shift)`` at a band-limit stage.

    ALGORITHM.md 5.6: rotations 1.5 (stages 0-1), 1.25 (2-3), then 1.0; shifts 1.5, 1.25,
    1.0 (until stage 8), 0.75 (until stage 16), then 0.5.
    """
    us_r = 1.5 if stage < 2 else 1.25 if stage < 4 else 1.0
    us_s = 1.5 if stage < 2 else 1.25 if stage < 4 else 1.0 if stage < 8 else (
        0.75 if stage < 16 else 0.5)
    return us_r, us_s


def _rz(a: NDArray) -> NDArray:
    c, s = np.cos(a), np.sin(a)
    out = np.zeros((*np.shape(a), 3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = c, -s, s, c
    out[..., 2, 2] = 1.0
    return out


def _ry(a: NDArray) -> NDArray:
    c, s = np.cos(a), np.sin(a)
    out = np.zeros((*np.shape(a), 3, 3))
    out[..., 0, 0], out[..., 0, 2], out[..., 2, 0], out[..., 2, 2] = c, s, -s, c
    out[..., 1, 1] = 1.0
    return out


def _ball_pairs(tree: cKDTree, points: NDArray, radius: float) -> tuple[NDArray, NDArray]:
    """(row, col) pairs of grid points within ``radius`` of each point; the nearest grid point
    stands in for an empty neighbourhood."""
    lists = tree.query_ball_point(points, radius)
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    cols = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64,
                       count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(points)), lengths)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        _, near = tree.query(points[empty])
        rows = np.concatenate([rows, empty])
        cols = np.concatenate([cols, np.asarray(near, dtype=np.int64)])
    return rows, cols


@dataclass(frozen=True, eq=False)
class Quadrature:
    """Weighted points on S^2 (directions) x S^1 (in-plane) x R^2 (shifts).

    Build it with :meth:`for_band_limit` (sizes from the band limit, as in the paper) or
    :meth:`from_counts`; the constructor takes explicit points.

    Parameters
    ----------
    directions : (Nd, 3) unit vectors (x, y, z): viewing directions ``R @ z`` in the volume frame
    inplane_rad : (Ni,) in-plane angles (RELION ``psi``) in radians
    shifts_A : (Ns, 2) RELION origins (x, y) in Å
    direction_weights, inplane_weights, shift_weights : (Nd,), (Ni,), (Ns,) or None
        Quadrature weights (prior included), normalised to sum to 1; ``None`` = uniform.
    shift_spacing_A : float or None
        Lattice spacing of the shifts (bandwidth of the sampler's shift kernel); estimated
        from the nearest-neighbour distances when ``None``.
    max_freq_invA : float or None
        The band limit this grid was made for (information only).
    """

    directions: NDArray
    inplane_rad: NDArray
    shifts_A: NDArray
    direction_weights: NDArray | None = None
    inplane_weights: NDArray | None = None
    shift_weights: NDArray | None = None
    shift_spacing_A: float | None = None
    max_freq_invA: float | None = None

    def __post_init__(self) -> None:
        d = np.asarray(self.directions, dtype=np.float64).reshape(-1, 3)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        psi = np.mod(np.asarray(self.inplane_rad, dtype=np.float64).ravel(), 2 * np.pi)
        t = np.asarray(self.shifts_A, dtype=np.float64).reshape(-1, 2)
        object.__setattr__(self, "directions", d)
        object.__setattr__(self, "inplane_rad", psi)
        object.__setattr__(self, "shifts_A", t)
        for name, n in (("direction_weights", len(d)), ("inplane_weights", len(psi)),
                        ("shift_weights", len(t))):
            w = getattr(self, name)
            w = np.full(n, 1.0 / n) if w is None else np.asarray(w, dtype=np.float64).ravel()
            if w.shape != (n,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
                raise ValueError(f"{name} must be {n} non-negative finite numbers")
            object.__setattr__(self, name, w / w.sum())
        if self.shift_spacing_A is None:
            if len(t) > 1:
                dist, _ = cKDTree(t).query(t, k=2)
                spacing = float(np.median(dist[:, 1]))
            else:
                spacing = float("inf")
            object.__setattr__(self, "shift_spacing_A", spacing)

    # ------------------------------------------------------------------ factories
    @classmethod
    def for_band_limit(
        cls,
        max_freq_invA: float,
        *,
        box_size: int | None = None,
        pixel_size_A: float | None = None,
        particle_radius_A: float | None = None,
        undersample: float = 1.0,
        shift_undersample: float = 1.0,
        shift_sigma_A: float | None = 10.0,
        shift_extent_A: float = 60.0,
        max_shift_spacing_sigma: float = 1.0,
    ) -> Quadrature:
        """Grid sized for band limit ``w = max_freq_invA`` (the reference's rules).

        Parameters
        ----------
        max_freq_invA : band limit w in 1/Å
        box_size, pixel_size_A : the box ``D = N * pixel_size_A`` sets the angular spacing
            (reference rule) unless ``particle_radius_A`` is given (``D = 2 * radius``)
        undersample : factor ``us`` on the angular spacing (reference: 1.5, 1.25, 1.0 by stage)
        shift_undersample : factor on the shift spacing (reference: 1.5 ... 0.5 by stage)
        shift_sigma_A, shift_extent_A : Gaussian shift prior and its truncation radius (the
            reference's 10 Å and 60 Å); ``shift_sigma_A=None`` gives a flat prior on the disc
        max_shift_spacing_sigma : cap of the shift spacing in units of ``shift_sigma_A``

        Notes
        -----
        ``dtheta = undersample * arctan(1 / (w D))``, ``N_D = ceil((3.6 / dtheta)^2)``,
        ``N_I = ceil(2 pi / dtheta)``, shift spacing ``min(shift_undersample / (2 w),
        max_shift_spacing_sigma * shift_sigma_A)``.  With N = 128, 2.8 Å and the reference
        factors this gives N_D = 300, 2673, 6002, 37465 and N_I = 31, 91, 136, 338 at
        w = 0.02, 0.04, 0.06, 0.15 1/Å (ALGORITHM.md 5.8).
        """
        if max_freq_invA <= 0:
            raise ValueError("max_freq_invA must be positive")
        if particle_radius_A is not None:
            diameter = 2.0 * float(particle_radius_A)
        elif box_size is not None and pixel_size_A is not None:
            diameter = float(box_size) * float(pixel_size_A)
        else:
            raise ValueError("give particle_radius_A, or box_size and pixel_size_A")
        dtheta = undersample * np.arctan(1.0 / (max_freq_invA * diameter))
        n_dir = int(np.ceil((_SPIRAL_CONSTANT / dtheta) ** 2 - 1e-9))
        n_inp = int(np.ceil(2 * np.pi / dtheta - 1e-9))
        spacing = shift_undersample / (2.0 * max_freq_invA)
        if shift_sigma_A is not None:
            spacing = min(spacing, max_shift_spacing_sigma * float(shift_sigma_A))
        return cls.from_counts(n_dir, n_inp, shift_spacing_A=spacing,
                               shift_extent_A=shift_extent_A, shift_sigma_A=shift_sigma_A,
                               max_freq_invA=max_freq_invA)

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> Quadrature:
        """:meth:`for_band_limit` at the band limit, box and pixel size of an ``ImageModel``."""
        w = model.max_freq_invA
        if w is None:
            w = nyquist_invA(model.pixel_size_A)
        kwargs.setdefault("box_size", model.box_size)
        kwargs.setdefault("pixel_size_A", model.pixel_size_A)
        return cls.for_band_limit(w, **kwargs)

    @classmethod
    def from_counts(
        cls,
        n_directions: int,
        n_inplane: int,
        *,
        shift_spacing_A: float = 1.0,
        shift_extent_A: float = 0.0,
        shift_sigma_A: float | None = None,
        max_freq_invA: float | None = None,
    ) -> Quadrature:
        """Fibonacci directions, equispaced in-plane angles and a shift lattice of given sizes."""
        psi = (np.arange(n_inplane) + 0.5) * (2 * np.pi / n_inplane)
        shifts, w_s = shift_lattice(shift_spacing_A, shift_extent_A, shift_sigma_A)
        return cls(fibonacci_sphere(n_directions), psi, shifts, shift_weights=w_s,
                   shift_spacing_A=float(shift_spacing_A), max_freq_invA=max_freq_invA)

    # ------------------------------------------------------------------ sizes
    @property
    def n_directions(self) -> int:
        """Nd."""
        return int(self.directions.shape[0])

    @property
    def n_inplane(self) -> int:
        """Ni."""
        return int(self.inplane_rad.shape[0])

    @property
    def n_shifts(self) -> int:
        """Ns."""
        return int(self.shifts_A.shape[0])

    @property
    def n_rotations(self) -> int:
        """Nd * Ni."""
        return self.n_directions * self.n_inplane

    @property
    def size(self) -> int:
        """Nd * Ni * Ns, the number of points of Eq. (4)."""
        return self.n_rotations * self.n_shifts

    @property
    def direction_spacing_rad(self) -> float:
        """Mean nearest-neighbour spacing of the directions, ``sqrt(4 pi / Nd)`` radians."""
        return float(np.sqrt(4 * np.pi / self.n_directions))

    @property
    def inplane_spacing_rad(self) -> float:
        """``2 pi / Ni`` radians."""
        return float(2 * np.pi / self.n_inplane)

    def summary(self) -> str:
        """One line: sizes and spacings."""
        return (f"Quadrature: {self.n_directions} directions x {self.n_inplane} in-plane x "
                f"{self.n_shifts} shifts = {self.size:.3g} points; spacing "
                f"{np.degrees(self.direction_spacing_rad):.2f} deg (dir), "
                f"{np.degrees(self.inplane_spacing_rad):.2f} deg (in-plane), "
                f"{self.shift_spacing_A:.3g} Å (shift)")

    # ------------------------------------------------------------------ rotations
    @cached_property
    def direction_angles_deg(self) -> tuple[NDArray, NDArray]:
        """RELION ``(rot, tilt)`` in degrees of each direction, (Nd,) each."""
        d = self.directions
        tilt = np.degrees(np.arccos(np.clip(d[:, 2], -1.0, 1.0)))
        rot = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
        return rot, tilt

    @cached_property
    def direction_matrices(self) -> NDArray:
        """``Rz(rot) Ry(tilt)`` per direction, (Nd, 3, 3): maps z to the direction."""
        rot, tilt = self.direction_angles_deg
        return _rz(np.radians(rot)) @ _ry(np.radians(tilt))

    @cached_property
    def inplane_matrices(self) -> NDArray:
        """``Rz(psi)`` per in-plane angle, (Ni, 3, 3)."""
        return _rz(self.inplane_rad)

    def rotations_for(self, directions: ArrayLike, inplane: ArrayLike) -> NDArray:
        """Rotations of the tensor product of direction and in-plane indices.

        Returns
        -------
        (len(directions) * len(inplane), 3, 3) float64, direction-major.
        """
        d = np.asarray(directions, dtype=np.int64).ravel()
        i = np.asarray(inplane, dtype=np.int64).ravel()
        out = self.direction_matrices[d][:, None] @ self.inplane_matrices[i][None, :]
        return out.reshape(-1, 3, 3)

    def rotations(self) -> NDArray:
        """All (Nd * Ni, 3, 3) RELION rotation matrices, pose index ``r = d * Ni + i``."""
        return self.rotations_for(np.arange(self.n_directions), np.arange(self.n_inplane))

    def euler_angles_deg(self, directions: ArrayLike, inplane: ArrayLike) -> NDArray:
        """RELION ``(rot, tilt, psi)`` in degrees of the poses ``(directions[k], inplane[k])``.

        Returns
        -------
        (n, 3) float64
        """
        d = np.asarray(directions, dtype=np.int64)
        i = np.asarray(inplane, dtype=np.int64)
        rot, tilt = self.direction_angles_deg
        return np.stack([rot[d], tilt[d], np.degrees(self.inplane_rad[i])], axis=-1)

    def split_pose_index(self, r: ArrayLike) -> tuple[NDArray, NDArray]:
        """Flat pose index ``d * Ni + i`` -> ``(d, i)``."""
        return np.divmod(np.asarray(r, dtype=np.int64), self.n_inplane)

    def log_weights(self) -> tuple[NDArray, NDArray, NDArray]:
        """Logs of the three weight vectors (``-inf`` for zero weights)."""
        with np.errstate(divide="ignore"):
            return (np.log(self.direction_weights), np.log(self.inplane_weights),
                    np.log(self.shift_weights))

    # ------------------------------------------------------------------ neighbour structure
    @cached_property
    def direction_tree(self) -> cKDTree:
        """KD-tree of the direction unit vectors (chord distance ``2 sin(angle / 2)``)."""
        return cKDTree(self.directions)

    @cached_property
    def shift_tree(self) -> cKDTree:
        """KD-tree of the shifts (Å)."""
        return cKDTree(self.shifts_A)

    def direction_kernel(self, points: ArrayLike, kappa: float, cutoff: float = 1e-4,
                         antipodal: bool = False) -> sp.csr_matrix:
        """von Mises-Fisher kernel from arbitrary directions to the grid, sparse (n, Nd).

        ``K[j, d] = exp(kappa (points_j . directions_d - 1))``, kept where it exceeds ``cutoff``
        (neighbour lists from :attr:`direction_tree`).  ``antipodal=True`` uses
        ``max(p . d, -p . d)`` (the reference's "chirality flip": d and -d count as one).
        Every row has at least its nearest grid point.
        """
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        cos_min = max(-1.0, 1.0 + np.log(cutoff) / max(kappa, 1e-300))
        chord = np.sqrt(max(0.0, 2.0 - 2.0 * cos_min)) + 1e-12
        rows, cols = _ball_pairs(self.direction_tree, p, chord)
        if antipodal:
            r2, c2 = _ball_pairs(self.direction_tree, -p, chord)
            key = np.unique(np.concatenate([rows, r2]) * self.n_directions
                            + np.concatenate([cols, c2]))
            rows, cols = np.divmod(key, self.n_directions)
        c = np.einsum("ij,ij->i", self.directions[cols], p[rows])
        if antipodal:
            c = np.abs(c)
        vals = np.exp(kappa * (c - 1.0))
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(p), self.n_directions))

    def inplane_kernel(self, angles_rad: ArrayLike, kappa: float, cutoff: float = 1e-4,
                       half_turn: bool = False) -> sp.csr_matrix:
        """von Mises kernel ``exp(kappa (cos(a - psi) - 1))`` to the in-plane grid, (n, Ni).

        ``half_turn=True`` uses ``max(cos(a - psi), cos(a + pi - psi))`` (chirality flip).
        """
        a = np.asarray(angles_rad, dtype=np.float64).ravel()
        c = np.cos(a[:, None] - self.inplane_rad[None, :])
        if half_turn:
            c = np.abs(c)
        k = np.exp(kappa * (c - 1.0))
        k[k < cutoff] = 0.0
        nearest = np.argmax(c, axis=1)
        k[np.arange(len(a)), nearest] = np.maximum(k[np.arange(len(a)), nearest], cutoff)
        return sp.csr_matrix(k)

    def shift_kernel(self, points_A: ArrayLike, sigma_A: float, n_sigma: float = 3.0
                     ) -> sp.csr_matrix:
        """Gaussian kernel ``exp(-|t - t_s|^2 / (2 sigma^2))`` to the shift grid, sparse (n, Ns).

        Neighbours within ``n_sigma * sigma_A`` (from :attr:`shift_tree`); every row has at
        least its nearest grid point.
        """
        p = np.asarray(points_A, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(sigma_A) or sigma_A <= 0:
            sigma_A = 1e-6
        rows, cols = _ball_pairs(self.shift_tree, p, n_sigma * sigma_A + 1e-9)
        d2 = ((self.shifts_A[cols] - p[rows]) ** 2).sum(axis=1)
        vals = np.exp(-d2 / (2 * sigma_A**2))
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(p), self.n_shifts))

    def direction_neighbors(self, max_angle_rad: float) -> sp.csr_matrix:
        """Grid-to-grid neighbour graph: sparse (Nd, Nd) of angular distances (radians).

        Entries exist for pairs within ``max_angle_rad`` (the diagonal is stored as a tiny
        positive number so that it is not dropped).
        """
        chord = 2 * np.sin(min(np.pi, max_angle_rad) / 2) + 1e-12
        pairs = self.direction_tree.query_pairs(chord, output_type="ndarray")
        i = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(self.n_directions)])
        j = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(self.n_directions)])
        cos = np.clip((self.directions[i] * self.directions[j]).sum(axis=1), -1.0, 1.0)
        ang = np.maximum(np.arccos(cos), 1e-300)
        return sp.csr_matrix((ang, (i, j)), shape=(self.n_directions,) * 2)

    # ------------------------------------------------------------------ refinement
    def fisher_kappa(self, dim: int, pscale: float = 1.0) -> float:
        """Concentration at which the kernel falls to ``1 / (2^dim pscale)`` one spacing away.

        ``kappa = ln(2^dim pscale) / (1 - cos(spacing))`` (the reference's rule, ALGORITHM.md
        8.4): ``dim = 2`` for directions (spacing :attr:`direction_spacing_rad`), ``dim = 1``
        for in-plane angles (:attr:`inplane_spacing_rad`).
        """
        spacing = self.direction_spacing_rad if dim == 2 else self.inplane_spacing_rad
        return float(np.log(2.0**dim * pscale) / (1.0 - np.cos(min(spacing, np.pi))))

    def transfer(
        self,
        target: Quadrature,
        p_directions: ArrayLike | None = None,
        p_inplane: ArrayLike | None = None,
        p_shifts: ArrayLike | None = None,
        *,
        shift_sigma_scale: float = 0.67,
    ) -> tuple[NDArray | None, NDArray | None, NDArray | None]:
        """Carry marginal distributions from this grid onto ``target`` (e.g. finer, higher w).

        Each point's mass is spread over the target's points with this grid's kernel (von
        Mises-Fisher on S^2 and S^1 with :meth:`fisher_kappa`, Gaussian with
        ``shift_sigma_scale * shift_spacing_A`` on shifts), each kernel row normalised.
        ``None`` inputs give ``None``.  Arrays are (Nd,), (Ni,), (Ns,) of this grid; the
        outputs those of ``target``.
        """
        out: list[NDArray | None] = []
        if p_directions is None:
            out.append(None)
        else:
            k = target.direction_kernel(self.directions, self.fisher_kappa(2))
            out.append(_spread(k, p_directions))
        if p_inplane is None:
            out.append(None)
        else:
            k = target.inplane_kernel(self.inplane_rad, self.fisher_kappa(1))
            out.append(_spread(k, p_inplane))
        if p_shifts is None:
            out.append(None)
        else:
            sigma = shift_sigma_scale * self.shift_spacing_A
            k = target.shift_kernel(self.shifts_A, sigma)
            out.append(_spread(k, p_shifts))
        return out[0], out[1], out[2]


def _spread(kernel: sp.csr_matrix, p: ArrayLike) -> NDArray:
    """Each source spreads its own mass with its (row-normalised) kernel row."""
    norm = np.asarray(kernel.sum(axis=1)).ravel()
    w = np.asarray(p, dtype=np.float64).ravel() / np.where(norm > 0, norm, 1.0)
    return _normalise(kernel.T @ w)


def _normalise(p: NDArray) -> NDArray:
    p = np.asarray(p, dtype=np.float64).ravel()
    s = p.sum()
    return p / s if s > 0 else np.full(p.shape, 1.0 / p.size)
