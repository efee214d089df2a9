"""``VolumeViewer``: orthogonal sections of one map or two side by side, with the 3D surface.

The controls are two-way linked to a :class:`VolumeViewerState` (traitlets); every change of the
state redraws through :func:`cryonb.viz.volume_slices_figure` and, for the low-pass filter,
:func:`cryonb.fourier.lowpass` (the iso-surfaces follow the filtered maps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import traitlets
from numpy.typing import ArrayLike

from ..viz import AXES, volume_slices_figure
from ..viz._common import lowpass_to_resolution
from ._common import new_image, show_figure
from .volume import IsosurfaceView, isosurface

__all__ = ["VolumeView", "VolumeViewer", "VolumeViewerState"]


class VolumeViewerState(traitlets.HasTraits):
    """What the viewer shows.

    Traits
    ------
    axis : "z", "y" or "x"
        The axis the ``index`` slider moves along.
    index : int
        Voxel index of the section normal to ``axis`` (kept in ``position``).
    position : (z, y, x) voxel indices the three sections pass through
    contrast : (low, high) grey-scale limits as percentiles of each map
    low_pass_A : float
        Low-pass resolution in Å; at or below Nyquist (``2 * pixel_size_A``) nothing is filtered.
    """

    axis = traitlets.Enum(AXES, default_value="z")
    index = traitlets.Int(0)
    position = traitlets.Tuple(traitlets.Int(), traitlets.Int(), traitlets.Int())
    contrast = traitlets.Tuple(traitlets.Float(), traitlets.Float(), default_value=(1.0, 99.0))
    low_pass_A = traitlets.Float(0.0)

    def __init__(self, box_size: int, **kwargs: Any) -> None:
        self.box_size = int(box_size)
        centre = self.box_size // 2
        kwargs.setdefault("position", (centre, centre, centre))
        kwargs.setdefault("index", centre)
        super().__init__(**kwargs)

    @traitlets.validate("index")
    def _clip_index(self, proposal: dict) -> int:
        return int(min(max(proposal["value"], 0), self.box_size - 1))

    @traitlets.validate("position")
    def _clip_position(self, proposal: dict) -> tuple[int, int, int]:
        return tuple(int(min(max(p, 0), self.box_size - 1)) for p in proposal["value"])

    @traitlets.observe("index")
    def _index_moves_position(self, change: dict) -> None:
        pos = list(self.position)
        pos[AXES.index(self.axis)] = change["new"]
        self.position = tuple(pos)

    @traitlets.observe("axis")
    def _axis_selects_index(self, change: dict) -> None:
        self.index = self.position[AXES.index(change["new"])]

    @traitlets.observe("position")
    def _position_sets_index(self, change: dict) -> None:
        self.index = change["new"][AXES.index(self.axis)]


@dataclass
class VolumeView:
    """The viewer: display ``widget``; the named controls are linked to ``state``.

    Attributes
    ----------
    widget : ipywidgets.VBox
    state : VolumeViewerState
    axis : ipywidgets.ToggleButtons
    index : ipywidgets.IntSlider
    contrast : ipywidgets.FloatRangeSlider
        Percentiles of each map mapped to black and white.
    low_pass : ipywidgets.FloatSlider
        Resolution in Å; the left end (Nyquist) means no filter.
    image : ipywidgets.Image
        The sections (PNG of :func:`cryonb.viz.volume_slices_figure`).
    isosurfaces : list of IsosurfaceView
        One 3D view per map (empty with ``show_3d=False``).
    figure : matplotlib Figure last drawn
    """

    widget: Any
    state: VolumeViewerState
    axis: Any
    index: Any
    contrast: Any
    low_pass: Any
    image: Any
    isosurfaces: list[IsosurfaceView]
    volumes: list[np.ndarray]
    titles: list[str]
    pixel_size_A: float
    dpi: float = 80
    figure: Any = None
    _filtered: dict = field(default_factory=dict, repr=False)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def filtered_volumes(self) -> list[np.ndarray]:
        """The maps at the state's low-pass resolution (cached per resolution)."""
        key = round(float(self.state.low_pass_A), 4)
        if key not in self._filtered:
            if len(self._filtered) > 8:
                self._filtered.clear()
            self._filtered[key] = [lowpass_to_resolution(v, self.pixel_size_A, key)
                                   for v in self.volumes]
        return self._filtered[key]

    def redraw(self, _change: Any = None) -> None:
        """Redraw the sections from the state."""
        s = self.state
        filtered = self.filtered_volumes()
        titles = self.titles
        if s.low_pass_A > 2.0 * self.pixel_size_A * (1 + 1e-9):
            titles = [f"{t} (low-pass {s.low_pass_A:.1f} Å)" for t in titles]
        fig = volume_slices_figure(filtered, self.pixel_size_A, titles=titles,
                                   position=s.position, percentiles=s.contrast)
        self.figure = show_figure(self.image, fig, self.dpi)

    def _low_pass_changed(self, _change: Any) -> None:
        for view, vol in zip(self.isosurfaces, self.filtered_volumes(), strict=False):
            view.set_volume(vol)
        self.redraw()


def _as_maps(volumes: Any, titles: Sequence[str] | None) -> tuple[list[np.ndarray], list[str]]:
    if isinstance(volumes, Mapping):
        names, maps = list(volumes.keys()), list(volumes.values())
    elif isinstance(volumes, np.ndarray) and volumes.ndim == 3:
        names, maps = ["map"], [volumes]
    else:
        maps = list(volumes)
        names = [f"map {i + 1}" for i in range(len(maps))]
    if titles is not None:
        names = list(titles)
    arrays = [np.asarray(m, dtype=np.float32) for m in maps]
    if not arrays or len(names) != len(arrays):
        raise ValueError("give one or more maps and one title per map")
    return arrays, [str(n) for n in names]


def VolumeViewer(volumes: ArrayLike | Sequence[ArrayLike] | Mapping[str, ArrayLike],
                 pixel_size_A: float, *, titles: Sequence[str] | None = None,
                 show_3d: bool = True, iso_size_px: int = 320, dpi: float = 80,
                 max_low_pass_A: float | None = None) -> VolumeView:
    """Sections, contrast, low-pass and the 3D iso-surface of one map or several side by side.

    Parameters
    ----------
    volumes : a ``[z, y, x]`` map, a sequence of maps of one shape, or ``{title: map}``
        (e.g. ``{"reconstruction": rec, "truth": truth}``)
    pixel_size_A : float
    titles : labels (default: the mapping's keys or "map 1", "map 2", ...)
    show_3d : add an ipyvolume iso-surface per map (:func:`cryonb.widgets.isosurface`)
    max_low_pass_A : right end of the low-pass slider (default: a quarter of the box in Å)
    """
    import ipywidgets as widgets

    maps, names = _as_maps(volumes, titles)
    shapes = {m.shape for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"maps of different shapes {sorted(shapes)}: bring them to one box "
                         "first (cryonb.fourier.fourier_crop / fourier_pad)")
    n = maps[0].shape[0]
    nyquist_A = 2.0 * float(pixel_size_A)
    top_A = max_low_pass_A or max(n * pixel_size_A / 4.0, 4.0 * nyquist_A)
    state = VolumeViewerState(n, low_pass_A=nyquist_A)
    axis = widgets.ToggleButtons(options=list(AXES), description="axis",
                                 style={"button_width": "40px"})
    index = widgets.IntSlider(min=0, max=n - 1, description="index", continuous_update=False)
    contrast = widgets.FloatRangeSlider(min=0.0, max=100.0, step=0.5, description="contrast %",
                                        continuous_update=False, readout_format=".1f")
    low = widgets.FloatSlider(min=nyquist_A, max=top_A, step=max(0.1, (top_A - nyquist_A) / 100),
                              description="low-pass Å", continuous_update=False,
                              readout_format=".1f")
    for control, name in ((axis, "axis"), (index, "index"), (contrast, "contrast"),
                          (low, "low_pass_A")):
        traitlets.link((state, name), (control, "value"))
    image = new_image()
    isos = [isosurface(m, pixel_size_A, size_px=iso_size_px) for m in maps] if show_3d else []
    rows = [widgets.HBox([axis, index]), widgets.HBox([contrast, low]), image]
    if isos:
        rows.append(widgets.HBox([widgets.VBox([widgets.HTML(f"<b>{t}</b>"), v.widget])
                                  for t, v in zip(names, isos, strict=True)]))
    view = VolumeView(widgets.VBox(rows), state, axis, index, contrast, low, image, isos, maps,
                      names, float(pixel_size_A), dpi)
    state.observe(view.redraw, names=["position", "contrast"])
    state.observe(view._low_pass_changed, names=["low_pass_A"])
    view.redraw()
    return view
