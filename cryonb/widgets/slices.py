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
    low_pass_on : bool
        The low-pass acts (moving ``low_pass_A`` turns it on); off, the maps are shown as
        they are whatever ``low_pass_A`` reads.
    """

    axis = traitlets.Enum(AXES, default_value="z")
    index = traitlets.Int(0)
    position = traitlets.Tuple(traitlets.Int(), traitlets.Int(), traitlets.Int())
    contrast = traitlets.Tuple(traitlets.Float(), traitlets.Float(), default_value=(1.0, 99.0))
    low_pass_A = traitlets.Float(0.0)
    low_pass_on = traitlets.Bool(False)

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

    @traitlets.observe("low_pass_A")
    def _moving_the_low_pass_turns_it_on(self, _change: dict) -> None:
        self.low_pass_on = True

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
        Resolution in Å (moving it turns the filter on).
    low_pass_on : ipywidgets.Checkbox
        The filter acts; unticked, the maps are unfiltered and the slider is greyed out.
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
    low_pass_on: Any
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

    @property
    def low_pass_resolution_A(self) -> float | None:
        """The resolution the maps are filtered to (Å), None when the filter is off."""
        s = self.state
        if not s.low_pass_on or s.low_pass_A <= 2.0 * self.pixel_size_A * (1 + 1e-9):
            return None
        return float(s.low_pass_A)

    def filtered_volumes(self) -> list[np.ndarray]:
        """The maps at the state's low-pass resolution (cached per resolution)."""
        w = self.low_pass_resolution_A
        key = 0.0 if w is None else round(w, 4)
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
        if self.low_pass_resolution_A is not None:
            titles = [f"{t} (low-pass {s.low_pass_A:.1f} Å)" for t in titles]
        fig = volume_slices_figure(filtered, self.pixel_size_A, titles=titles,
                                   position=s.position, percentiles=s.contrast)
        self.figure = show_figure(self.image, fig, self.dpi)

    def _low_pass_changed(self, _change: Any) -> None:
        self.low_pass.disabled = not self.state.low_pass_on
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
                 show_3d: bool = True, iso_size_px: int = 320, dpi: float = 100,
                 max_low_pass_A: float | None = None, low_pass_A: float | None = None,
                 iso_level: float | Sequence[float] | None = None) -> VolumeView:
    """Sections, contrast, low-pass and the 3D iso-surface of one map or several side by side.

    Parameters
    ----------
    volumes : a ``[z, y, x]`` map, a sequence of maps of one shape, or ``{title: map}``
        (e.g. ``{"reconstruction": rec, "truth": truth}``)
    pixel_size_A : float
    titles : labels (default: the mapping's keys or "map 1", "map 2", ...)
    show_3d : add an ipyvolume iso-surface per map (:func:`cryonb.widgets.isosurface`)
    max_low_pass_A : right end of the low-pass slider (default: a quarter of the box in Å)
    low_pass_A : start with the low-pass on at this resolution (Å; e.g. a run's fitted band
        limit, so that a map and its truth are compared at the resolution the map was fitted
        to, with a soft edge and no ringing); None: off
    iso_level : the 3D views' level, one for all maps or one per map (default: each map's
        2 % level, :func:`cryonb.widgets.default_iso_level`).  For maps normalised alike
        (:func:`cryonb.viz.maps.normalised_map`) one level compares them at the same density
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
    if low_pass_A is not None:
        top_A = max(top_A, float(low_pass_A))
    state = VolumeViewerState(n, low_pass_A=nyquist_A if low_pass_A is None
                              else max(float(low_pass_A), nyquist_A))
    state.low_pass_on = low_pass_A is not None
    axis = widgets.ToggleButtons(options=list(AXES), description="axis",
                                 style={"button_width": "40px"})
    index = widgets.IntSlider(min=0, max=n - 1, description="index", continuous_update=False)
    contrast = widgets.FloatRangeSlider(min=0.0, max=100.0, step=0.5, description="contrast %",
                                        continuous_update=False, readout_format=".1f")
    low = widgets.FloatSlider(min=nyquist_A, max=top_A, step=max(0.1, (top_A - nyquist_A) / 100),
                              description="low-pass Å", continuous_update=False,
                              readout_format=".1f")
    low_on = widgets.Checkbox(description="low-pass", indent=False,
                              layout=widgets.Layout(width="90px"))
    for control, name in ((axis, "axis"), (index, "index"), (contrast, "contrast"),
                          (low, "low_pass_A"), (low_on, "low_pass_on")):
        traitlets.link((state, name), (control, "value"))
    low.disabled = not state.low_pass_on
    image = new_image()
    levels = (list(iso_level) if isinstance(iso_level, Sequence)
              else [iso_level] * len(maps))
    if len(levels) != len(maps):
        raise ValueError(f"{len(levels)} iso-levels for {len(maps)} maps")
    isos = []
    if show_3d:
        w = state.low_pass_A if state.low_pass_on else None
        isos = [isosurface(lowpass_to_resolution(m, pixel_size_A, w), pixel_size_A, lev,
                           size_px=iso_size_px) for m, lev in zip(maps, levels, strict=True)]
    rows = [widgets.HBox([axis, index]), widgets.HBox([contrast, low_on, low]), image]
    if isos:
        rows.append(widgets.HBox([widgets.VBox([widgets.HTML(f"<b>{t}</b>"), v.widget])
                                  for t, v in zip(names, isos, strict=True)]))
    view = VolumeView(widgets.VBox(rows), state, axis, index, contrast, low, low_on, image,
                      isos, maps, names, float(pixel_size_A), dpi)
    state.observe(view.redraw, names=["position", "contrast"])
    state.observe(view._low_pass_changed, names=["low_pass_A", "low_pass_on"])
    view.redraw()
    return view
