"""``RunViewer``: a finished run folder in one view; ``compare_runs``: two runs aligned.

:func:`RunViewer` opens the ``--out`` folder of ``cryonb reconstruct`` (read by
:func:`cryonb.run_folder.open_run`) and shows, one section under the other:

* the map and the half-maps: sections, contrast, low-pass and an iso-surface each
  (:func:`cryonb.widgets.VolumeViewer`);
* the FSC of a pair of half-maps with a resolution axis in Å (gold standard ``half1`` /
  ``half2`` or SAGD's ``sagd_half1`` / ``sagd_half2``; :func:`cryonb.metrics.fsc` capped at
  the fitted band limit, :func:`cryonb.viz.fsc_resolution_figure`) and the run's resolution
  statements;
* the history: objective and band limit against solver time
  (:func:`cryonb.viz.run_history_figure`);
* the distribution of the MAP viewing directions of ``particles.star`` on a Mollweide map
  (:func:`cryonb.viz.orientation_figure`);
* pages of particles above the map's projections at their MAP poses with their CTFs
  (:func:`cryonb.reprojection.projection_matching`, :func:`cryonb.viz.projection_matching_figure`).

:func:`compare_runs` superposes the second run's map on the first (rotation, translation and
hand: :func:`cryonb.alignment.align_maps`) and shows both side by side with their FSC against
each other (:func:`cryonb.metrics.score_against_reference`).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..run_folder import FinishedRun, common_grid, open_run
from ..viz import (
    fsc_resolution_figure,
    orientation_figure,
    projection_matching_figure,
    run_history_figure,
)
from ._common import new_image, show_figure
from .slices import VolumeView, VolumeViewer

__all__ = ["CompareRunsView", "RunViewer", "RunViewerView", "compare_runs"]


def _heading(text: str) -> Any:
    import ipywidgets as widgets

    return widgets.HTML(f"<h4 style='margin:8px 0 2px 0'>{html.escape(text)}</h4>")


@dataclass
class RunViewerView:
    """The run viewer: display ``widget``; the named parts are below.

    Attributes
    ----------
    widget : ipywidgets.VBox
    run : FinishedRun
    volumes : VolumeView (map and half-maps; its ``isosurfaces`` are the 3D views)
    fsc_pair : ipywidgets.Dropdown (which pair of maps the FSC is of)
    fsc_image : ipywidgets.Image
    fsc_curve : cryonb.metrics.FSCResult (the one drawn) or None
    history_image, orientation_image, particles_image : ipywidgets.Image
    page : ipywidgets.IntSlider (page of particles beside their reprojections, from 1;
        particles are numbered from 1 in the titles, as in the STAR file's image numbers)
    match : cryonb.reprojection.ProjectionMatch of the page shown, or None
    message : ipywidgets.HTML (what could not be shown, and why)
    """

    widget: Any
    run: FinishedRun
    volumes: VolumeView
    fsc_pair: Any
    fsc_image: Any
    history_image: Any
    orientation_image: Any
    particles_image: Any
    page: Any
    message: Any
    per_page: int = 6
    dpi: float = 80
    fsc_curve: Any = None
    match: Any = None
    fsc_figure: Any = None
    orientation_fig: Any = None
    particles_figure: Any = None

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def draw_fsc(self, _change: Any = None) -> None:
        """Redraw the FSC of the pair chosen in :attr:`fsc_pair`."""
        pairs = {label: (a, b) for label, a, b in self.run.fsc_pairs()}
        if self.fsc_pair.value not in pairs:
            return
        a, b = pairs[self.fsc_pair.value]
        self.fsc_curve = self.run.fsc(a, b)
        w = self.run.band_limit_invA
        which = "fitted" if self.run.summary.get("final_max_freq_invA") else "split"
        cap = "" if w is None else f", capped at the {which} band limit {1 / w:.1f} Å"
        self.fsc_figure = show_figure(self.fsc_image, fsc_resolution_figure(
            [self.fsc_curve], [f"{a} / {b}"], title=f"{self.run.name}: FSC{cap}"), self.dpi)

    def draw_particles(self, _change: Any = None) -> None:
        """Compute and draw the page :attr:`page` of particles beside their reprojections."""
        from ..reprojection import projection_matching

        ds = self.run.particles()
        start = (int(self.page.value) - 1) * self.per_page  # pages counted from 1
        ids = np.arange(start, min(start + self.per_page, len(ds)))
        self.match = projection_matching(self.run.map, self.run.pixel_size_A, ds, ids,
                                         max_freq_invA=self.run.band_limit_invA)
        self.particles_figure = show_figure(
            self.particles_image, projection_matching_figure(self.match), self.dpi)


def RunViewer(run: str | Path | FinishedRun, *, show_3d: bool = True, iso_size_px: int = 260,
              per_page: int = 6, dpi: float = 80) -> RunViewerView:
    """Open a finished run folder: maps, FSC, history, orientations and reprojections.

    Parameters
    ----------
    run : the ``--out`` folder of ``cryonb reconstruct`` (or a :class:`FinishedRun`)
    show_3d : an iso-surface per map
    per_page : particles per page beside their reprojections
    """
    import ipywidgets as widgets

    result = open_run(run)
    names = [n for n in ("map", "half1", "half2") if n in result.maps]
    volumes = VolumeViewer({n: result.maps[n] for n in names}, result.pixel_size_A,
                           show_3d=show_3d, iso_size_px=iso_size_px, dpi=dpi)
    pairs = [label for label, *_ in result.fsc_pairs()]
    fsc_pair = widgets.Dropdown(options=pairs, value=pairs[0] if pairs else None,
                                description="FSC of", layout=widgets.Layout(width="420px"),
                                style={"description_width": "60px"})
    messages: list[str] = []
    n_particles = 0
    try:
        n_particles = len(result.particles())
    except (OSError, ValueError) as exc:  # no particles.star, or its stacks moved
        messages.append(f"particles: {exc}")
    n_pages = max(1, math.ceil(n_particles / per_page))
    page = widgets.IntSlider(min=1, max=n_pages, value=1, description="page",
                             continuous_update=False)
    view = RunViewerView(
        widget=None, run=result, volumes=volumes, fsc_pair=fsc_pair, fsc_image=new_image(),
        history_image=new_image(), orientation_image=new_image(),
        particles_image=new_image(), page=page, message=widgets.HTML(), per_page=per_page,
        dpi=dpi)
    if pairs:
        view.draw_fsc()
        fsc_pair.observe(view.draw_fsc, names="value")
    else:
        messages.append("FSC: no pair of half-maps in the folder")
    if result.history is not None:
        show_figure(view.history_image, run_history_figure(result.history), dpi)
    if n_particles:
        ds = result.particles()
        if ds.rotations is not None:
            view.orientation_fig = show_figure(view.orientation_image, orientation_figure(
                ds.rotations, title="MAP viewing directions (particles.star)"), dpi)
        try:
            view.draw_particles()
            page.observe(view.draw_particles, names="value")
        except (OSError, ValueError) as exc:
            messages.append(f"reprojections: {exc}")
    view.message.value = "<br>".join(html.escape(m) for m in messages)
    lines = "<br>".join(html.escape(x) for x in result.summary_lines())
    view.widget = widgets.VBox([
        widgets.HTML(f"<b>{html.escape(result.name)}</b>: "
                     f"{result.summary.get('n_particles', n_particles)} particles, box "
                     f"{result.box_size} px at {result.pixel_size_A:.3g} Å"),
        view.message,
        _heading("map and half-maps"), volumes.widget,
        _heading("resolution"), widgets.HTML(lines), fsc_pair, widgets.HBox([view.fsc_image]),
        _heading("history"), widgets.HBox([view.history_image]),
        _heading("orientations and projection matching"),
        widgets.HBox([view.orientation_image]), page, widgets.HBox([view.particles_image])])
    return view


# ----------------------------------------------------------------------------- compare
@dataclass
class CompareRunsView:
    """Two runs side by side, the second aligned on the first.

    Attributes
    ----------
    widget : ipywidgets.VBox
    runs : (FinishedRun, FinishedRun)
    alignment : cryonb.alignment.Alignment
        What superposes the second map on the first (``rotation``, ``shift_A``, ``flipped``;
        ``aligned(x) = b(R^T (x - t))`` after the mirror, :func:`cryonb.alignment.align_maps`).
    score : cryonb.metrics.ReferenceScore
        The second map aligned on the first (``aligned``, ``flipped``, ``correlation``) and
        their FSC (``curve``; ``resolution`` at 0.5, ``resolution_0143``).
    volumes : VolumeView (the first map and the second, aligned)
    fsc_image : ipywidgets.Image
    pixel_size_A : float (of the common grid)
    """

    widget: Any
    runs: tuple[FinishedRun, FinishedRun]
    score: Any
    volumes: VolumeView
    fsc_image: Any
    pixel_size_A: float
    alignment: Any = None

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def compare_runs(run_a: str | Path | FinishedRun, run_b: str | Path | FinishedRun, *,
                 show_3d: bool = True, iso_size_px: int = 300, dpi: float = 80
                 ) -> CompareRunsView:
    """Two runs' maps superposed (the second on the first, both hands tried) with their FSC.

    The maps are brought to one grid first (:func:`cryonb.run_folder.common_grid`); the
    FSC is capped at the coarser of the two runs' fitted band limits.
    """
    from dataclasses import replace

    import ipywidgets as widgets

    from ..alignment import align_maps, apply_alignment
    from ..metrics import score_against_reference

    a_run, b_run = open_run(run_a), open_run(run_b)
    a, b, psize = common_grid(a_run.map, a_run.pixel_size_A, b_run.map, b_run.pixel_size_A)
    caps = [w for w in (a_run.band_limit_invA, b_run.band_limit_invA) if w is not None]
    alignment = align_maps(b, a, psize)
    score = replace(score_against_reference(apply_alignment(b, alignment, psize), a, psize,
                                            max_freq_invA=min(caps) if caps else None,
                                            align=False),
                    correlation=float(alignment.correlation), flipped=bool(alignment.flipped))
    la, lb = f"A: {a_run.name}", f"B: {b_run.name} (aligned" + (
        ", hand flipped)" if score.flipped else ")")
    volumes = VolumeViewer({la: a, lb: score.aligned}, psize, show_3d=show_3d,
                           iso_size_px=iso_size_px, dpi=dpi)
    fsc_image = new_image()
    show_figure(fsc_image, fsc_resolution_figure(
        [score.curve], ["A vs B aligned"], title="the two runs against each other"), dpi)
    text = (f"B superposed on A: correlation {score.correlation:.3f}, "
            f"{'other hand (B mirrored)' if score.flipped else 'same hand'}; FSC "
            f"{score.resolution} · {score.resolution_0143}")
    widget = widgets.VBox([widgets.HTML(html.escape(text)), volumes.widget,
                           widgets.HBox([fsc_image])])
    return CompareRunsView(widget, (a_run, b_run), score, volumes, fsc_image, psize, alignment)
