"""3D views of density maps (ipyvolume + an ipywidgets threshold slider)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["IsosurfaceView", "default_iso_level", "isosurface", "isosurface_mesh",
           "surface_half_width_A"]


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


#: Distance of the camera from the centre, in units of the view's cube (side 1): with
#: ipyvolume's 45° field of view the cube's centre plane then spans 1.16, the cube ~86 %.
CAMERA_DISTANCE = 1.4


def surface_half_width_A(volume: ArrayLike, level: float, pixel_size_A: float, *,
                         margin: float = 1.05) -> float:
    """Half-width (Å) of the cube about the box centre that holds every voxel above
    ``level``, times ``margin`` plus one voxel; at most half the box, at least 4 voxels.

    The 3D views' axes span this cube, so a particle that fills a fifth of its box is not
    drawn small inside an empty frame.
    """
    vol = np.asarray(volume)
    n = vol.shape[0]
    box_half = n / 2 * pixel_size_A
    above = np.argwhere(vol > level)
    if not len(above):
        return float(box_half)
    r = float(np.abs(above - n // 2).max()) * pixel_size_A
    return float(min(box_half, max(4 * pixel_size_A, margin * r + pixel_size_A)))


def _set_limits(fig: Any, half_A: float, caption: Any = None) -> None:
    fig.xlim, fig.ylim, fig.zlim = ((-half_A, half_A),) * 3
    if caption is not None:
        caption.value = (f"<small>view: ±{half_A:.0f} Å about the box centre "
                         "(drag to rotate)</small>")


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
    tight : bool
        The axes span the cube holding the surface (:func:`surface_half_width_A`) rather than
        the whole box.
    caption : ipywidgets.HTML (the span of the view, under it)
    """

    widget: Any
    level: Any
    figure: Any
    mesh: Any
    volume: Any = None
    pixel_size_A: float = 1.0
    tight: bool = True
    caption: Any = None
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

        The axes follow the new map (in Å about its centre: the cube holding the surface,
        :func:`surface_half_width_A`, or the whole box when ``tight`` is off); the slider's
        range follows the map.  What the dashboard calls for each new state of a running solver.
        """
        vol = np.asarray(volume, dtype=np.float32)
        if pixel_size_A is not None:
            self.pixel_size_A = float(pixel_size_A)
        if self.volume is None or vol.shape != np.shape(self.volume):
            self.volume = None
        start = default_iso_level(vol) if level is None else float(level)
        if self.tight:
            _set_limits(self.figure, surface_half_width_A(vol, start, self.pixel_size_A),
                        self.caption)
        else:
            _set_limits(self.figure, vol.shape[0] / 2 * self.pixel_size_A, self.caption)
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
               color: str = "#8cb4d2", size_px: int = 420, tight: bool = True,
               view_deg: tuple[float, float] = (0.0, 45.0), show_axes: bool = False
               ) -> IsosurfaceView:
    """An inline iso-surface of a ``[z, y, x]`` map with a threshold slider.

    Parameters
    ----------
    volume : (N, N, N) array, [z, y, x]
    pixel_size_A : float
        Axes in Å with the box centre (voxel N//2) at 0.
    level : float, optional
        Initial iso-level (default :func:`default_iso_level`, 2 % of the voxels above).
    tight : bool
        The axes span the cube that holds the surface at the initial level (plus 10 %), not
        the whole box (a particle in a box twice its size would be drawn small in a large
        frame).  The span is written under the view.
    view_deg : (azimuth, elevation)
        The camera's angles (ipyvolume's: azimuth about the screen's up axis y, elevation
        towards +y).  The default, 45° up, looks at the z axis from 45°: a map whose
        symmetry axis is z (GroEL-GroES) shows its side and its top ring.  The camera sits
        at :data:`CAMERA_DISTANCE` (ipyvolume's default 2 leaves the view's cube at 60 % of
        the canvas).
    show_axes : bool
        Draw ipyvolume's box and axis ticks (small at these sizes; off by default: the span
        is written under the view instead).
    """
    import ipyvolume as ipv  # optional dependency
    import ipywidgets as widgets

    vol = np.asarray(volume, dtype=np.float32)
    start = default_iso_level(vol) if level is None else float(level)
    verts, faces = isosurface_mesh(vol, start, pixel_size_A)
    half = (surface_half_width_A(vol, start, pixel_size_A) if tight
            else vol.shape[0] / 2 * pixel_size_A)
    fig = ipv.Figure(width=size_px, height=size_px)
    mesh = ipv.Mesh(x=verts[:, 0], y=verts[:, 1], z=verts[:, 2],
                    triangles=_webgl_indices(faces), color=color)
    fig.meshes = [mesh]
    caption = widgets.HTML()
    _set_limits(fig, half, caption)
    fig.xlabel, fig.ylabel, fig.zlabel = "x (Å)", "y (Å)", "z (Å)"
    if not show_axes:
        fig.style = {**fig.style, "box": {"visible": False},
                     "axes": {**fig.style.get("axes", {}), "visible": False}}
    azimuth, elevation = (np.deg2rad(float(a)) for a in view_deg)
    distance = CAMERA_DISTANCE
    fig.camera.position = (distance * np.sin(azimuth) * np.cos(elevation),
                           distance * np.sin(elevation),
                           distance * np.cos(azimuth) * np.cos(elevation))
    lo, hi = float(vol.min()), float(vol.max())
    slider = widgets.FloatSlider(value=start, min=lo, max=hi, step=(hi - lo) / 200,
                                 description="level", continuous_update=False,
                                 readout_format=".3g")
    view = IsosurfaceView(widgets.VBox([slider, fig, caption]), slider, fig, mesh, vol,
                          float(pixel_size_A), tight=tight, caption=caption)
    slider.observe(view._on_level, names="value")
    return view
