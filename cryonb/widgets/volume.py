"""3D views of density maps (ipyvolume + an ipywidgets threshold slider)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["IsosurfaceView", "default_iso_level", "isosurface", "isosurface_mesh"]


def default_iso_level(volume: ArrayLike, enclosed_fraction: float = 0.02) -> float:
    """The density level above which ``enclosed_fraction`` of the voxels lie (default 2 %)."""
    return float(np.quantile(np.asarray(volume), 1.0 - enclosed_fraction))


def isosurface_mesh(volume: ArrayLike, level: float, pixel_size_A: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface of a ``[z, y, x]`` map.

    Returns
    -------
    vertices_A : (V, 3) positions (x, y, z) in Å, box centre (voxel N//2) at 0
    triangles : (T, 3) vertex indices
    """
    from skimage.measure import marching_cubes  # optional dependency (widgets extra)

    vol = np.asarray(volume, dtype=np.float32)
    if not vol.min() < level < vol.max():
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts_zyx, faces, _, _ = marching_cubes(vol, level=level)
    centre = np.array(vol.shape) // 2
    verts_A = (verts_zyx - centre)[:, ::-1] * pixel_size_A
    return verts_A, faces.astype(np.int64)


def _webgl_indices(faces: np.ndarray) -> np.ndarray:
    """Triangle indices as uint32: WebGL cannot draw int64 indices (nothing is rendered and the
    browser logs ``GL_INVALID_ENUM: glDrawElements``)."""
    return np.ascontiguousarray(faces, dtype=np.uint32)


@dataclass
class IsosurfaceView:
    """An inline iso-surface: ``widget`` (display it) with its named controls.

    Attributes
    ----------
    widget : ipywidgets.VBox
        The slider above the 3D figure.
    level : ipywidgets.FloatSlider
        The iso-level; moving it recomputes the surface.
    figure : ipyvolume.Figure
    mesh : ipyvolume.Mesh
    volume : ndarray
        The map the surface is drawn from (replace it with :meth:`set_volume`).
    pixel_size_A : float
    """

    widget: Any
    level: Any
    figure: Any
    mesh: Any
    volume: Any = None
    pixel_size_A: float = 1.0
    _quiet: bool = field(default=False, repr=False)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def redraw(self) -> None:
        """Recompute the surface of :attr:`volume` at the slider's level."""
        v, f = isosurface_mesh(self.volume, self.level.value, self.pixel_size_A)
        with self.mesh.hold_sync():
            self.mesh.x, self.mesh.y, self.mesh.z, self.mesh.triangles = (
                v[:, 0], v[:, 1], v[:, 2], _webgl_indices(f))

    def set_volume(self, volume: ArrayLike) -> None:
        """Draw another map of the same box (e.g. low-pass filtered) at the current level.

        The slider's range follows the new map's range (the level is clipped into it).
        """
        vol = np.asarray(volume, dtype=np.float32)
        if self.volume is not None and vol.shape != np.shape(self.volume):
            raise ValueError(f"new map {vol.shape} differs from {np.shape(self.volume)}")
        self.volume = vol
        lo, hi = float(vol.min()), float(vol.max())
        level = min(max(self.level.value, lo), hi)
        quiet, self._quiet = self._quiet, True
        try:  # keep min <= max at every step (the slider validates each assignment)
            if lo > self.level.max:
                self.level.max, self.level.min = hi, lo
            else:
                self.level.min, self.level.max = lo, hi
            self.level.step = (hi - lo) / 200 if hi > lo else 1e-6
            self.level.value = level
        finally:
            self._quiet = quiet
        if not quiet:
            self.redraw()

    def show_map(self, volume: ArrayLike, pixel_size_A: float | None = None,
                 level: float | None = None) -> None:
        """Draw another map, of any box, at ``level`` (default: its 2 % level), once.

        The axes follow the new box (in Å about its centre); the slider's range follows the
        map.  What the dashboard calls for each new state of a running solver.
        """
        vol = np.asarray(volume, dtype=np.float32)
        if pixel_size_A is not None:
            self.pixel_size_A = float(pixel_size_A)
        if self.volume is None or vol.shape != np.shape(self.volume):
            half = vol.shape[0] / 2 * self.pixel_size_A
            self.figure.xlim, self.figure.ylim, self.figure.zlim = ((-half, half),) * 3
            self.volume = None
        start = default_iso_level(vol) if level is None else float(level)
        self._quiet = True
        try:
            self.set_volume(vol)
            self.level.value = min(max(start, self.level.min), self.level.max)
        finally:
            self._quiet = False
        self.redraw()

    def _on_level(self, _change: dict) -> None:
        if not self._quiet:
            self.redraw()


def isosurface(volume: ArrayLike, pixel_size_A: float, level: float | None = None, *,
               color: str = "#8cb4d2", size_px: int = 420) -> IsosurfaceView:
    """An inline iso-surface of a ``[z, y, x]`` map with a threshold slider.

    Parameters
    ----------
    volume : (N, N, N) array, [z, y, x]
    pixel_size_A : float
        Axes in Å with the box centre (voxel N//2) at 0.
    level : float, optional
        Initial iso-level (default :func:`default_iso_level`, 2 % of the voxels above).
    """
    import ipyvolume as ipv  # optional dependency
    import ipywidgets as widgets

    vol = np.asarray(volume, dtype=np.float32)
    start = default_iso_level(vol) if level is None else float(level)
    verts, faces = isosurface_mesh(vol, start, pixel_size_A)
    half = vol.shape[0] / 2 * pixel_size_A
    fig = ipv.Figure(width=size_px, height=size_px)
    mesh = ipv.Mesh(x=verts[:, 0], y=verts[:, 1], z=verts[:, 2],
                    triangles=_webgl_indices(faces), color=color)
    fig.meshes = [mesh]
    fig.xlim, fig.ylim, fig.zlim = (-half, half), (-half, half), (-half, half)
    fig.xlabel, fig.ylabel, fig.zlabel = "x (Å)", "y (Å)", "z (Å)"
    lo, hi = float(vol.min()), float(vol.max())
    slider = widgets.FloatSlider(value=start, min=lo, max=hi, step=(hi - lo) / 200,
                                 description="level", continuous_update=False,
                                 readout_format=".3g")
    view = IsosurfaceView(widgets.VBox([slider, fig]), slider, fig, mesh, vol,
                          float(pixel_size_A))
    slider.observe(view._on_level, names="value")
    return view
