"""The distribution of viewing directions: an equal-area histogram on a Mollweide map.

A particle's viewing direction is given by its RELION Euler angles ``rot`` (longitude) and
``tilt`` (``90° - tilt`` is the latitude), the convention of
:func:`cryonb.viz.direction_posterior` and
:attr:`cryonb.quadrature.Quadrature.direction_angles_deg`.
The bins are equal in solid angle (equal steps in longitude and in ``sin(latitude)``), so a
uniform distribution of directions fills them evenly, as the Mollweide projection (equal-area)
shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from ..rotations import matrix_to_euler

__all__ = ["DirectionHistogram", "direction_histogram", "orientation_figure"]


@dataclass(frozen=True, eq=False)
class DirectionHistogram:
    """Counts of viewing directions in equal-area bins (:func:`direction_histogram`).

    Attributes
    ----------
    counts : (n_lat, n_lon) int
        Row 0 is the southern-most band (latitude -90°, tilt 180°).
    lon_edges_rad : (n_lon + 1,) longitude (``rot``) edges, -π .. π
    lat_edges_rad : (n_lat + 1,) latitude (``90° - tilt``) edges, -π/2 .. π/2, equal steps in
        ``sin(latitude)``
    """

    counts: NDArray
    lon_edges_rad: NDArray
    lat_edges_rad: NDArray

    @property
    def n(self) -> int:
        """Number of directions counted."""
        return int(self.counts.sum())

    def bin_of(self, rot_deg: float, tilt_deg: float) -> tuple[int, int]:
        """``(row, column)`` of the bin holding the direction ``(rot, tilt)`` (degrees)."""
        lon, lat = _lon_lat(np.atleast_1d(rot_deg), np.atleast_1d(tilt_deg))
        row, col = _bins(lon, lat, len(self.lon_edges_rad) - 1, len(self.lat_edges_rad) - 1)
        return int(row[0]), int(col[0])


def _lon_lat(rot_deg: NDArray, tilt_deg: NDArray) -> tuple[NDArray, NDArray]:
    lon = np.radians((np.asarray(rot_deg, dtype=np.float64) + 180.0) % 360.0 - 180.0)
    lat = np.radians(90.0 - np.asarray(tilt_deg, dtype=np.float64))
    return lon, lat


def _bins(lon: NDArray, lat: NDArray, n_lon: int, n_lat: int) -> tuple[NDArray, NDArray]:
    col = np.clip(np.floor((lon + np.pi) / (2 * np.pi) * n_lon), 0, n_lon - 1).astype(int)
    row = np.clip(np.floor((np.sin(lat) + 1.0) / 2.0 * n_lat), 0, n_lat - 1).astype(int)
    return row, col


def direction_histogram(rotations: ArrayLike | None = None, *,
                        angles_deg: tuple[ArrayLike, ArrayLike] | None = None,
                        n_lon: int = 36, n_lat: int = 18) -> DirectionHistogram:
    """Histogram of viewing directions in ``n_lat x n_lon`` equal-area bins.

    Parameters
    ----------
    rotations : (n, 3, 3) RELION rotation matrices (e.g. ``Dataset.from_star(...).rotations``)
    angles_deg : ``(rot, tilt)`` arrays in degrees, instead of ``rotations``
    n_lon, n_lat : bins in longitude (``rot``) and in ``sin(latitude)``
    """
    if (rotations is None) == (angles_deg is None):
        raise ValueError("give rotations or angles_deg")
    if rotations is not None:
        rot, tilt, _ = matrix_to_euler(np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3))
    else:
        rot, tilt = (np.asarray(a, dtype=np.float64).ravel() for a in angles_deg)
    lon, lat = _lon_lat(rot, tilt)
    row, col = _bins(lon, lat, n_lon, n_lat)
    counts = np.zeros((n_lat, n_lon), dtype=np.int64)
    np.add.at(counts, (row, col), 1)
    return DirectionHistogram(counts, np.linspace(-np.pi, np.pi, n_lon + 1),
                              np.arcsin(np.linspace(-1.0, 1.0, n_lat + 1)))


def orientation_figure(rotations: ArrayLike | None = None, *,
                       angles_deg: tuple[ArrayLike, ArrayLike] | None = None,
                       n_lon: int = 36, n_lat: int = 18, title: str = "") -> Figure:
    """The viewing directions of particles as an equal-area histogram on a Mollweide map.

    Parameters: as :func:`direction_histogram`.  The colour is the number of particles per bin
    (each bin covers ``4π / (n_lon n_lat)`` sr); the title gives the total and how uneven the
    coverage is (largest bin over the mean, empty bins).
    """
    hist = direction_histogram(rotations, angles_deg=angles_deg, n_lon=n_lon, n_lat=n_lat)
    fig = Figure(figsize=(5.6, 3.3), layout="constrained")
    ax = fig.add_subplot(projection="mollweide")
    lon, lat = np.meshgrid(hist.lon_edges_rad, hist.lat_edges_rad)
    mesh = ax.pcolormesh(lon, lat, hist.counts, cmap="viridis", shading="flat",
                         vmin=0, vmax=max(1, int(hist.counts.max())))
    fig.colorbar(mesh, ax=ax, shrink=0.6, label="particles per bin")
    ax.grid(True, lw=0.3, color="0.7")
    ax.tick_params(labelsize=6)
    ax.tick_params(axis="x", labelsize=5, labelcolor="0.85")  # longitudes sit on the map
    ax.set_xlabel("rot (longitude)", fontsize=7)
    ax.set_ylabel("90° − tilt (latitude)", fontsize=7)
    mean = hist.n / hist.counts.size if hist.counts.size else 0.0
    empty = int((hist.counts == 0).sum())
    uneven = f"max / mean {hist.counts.max() / mean:.1f}" if mean > 0 else "no particles"
    ax.set_title((title + "\n" if title else "") + f"{hist.n} particles in {hist.counts.size} "
                 f"equal-area bins: {uneven}, {empty} empty", fontsize=8)
    return fig
