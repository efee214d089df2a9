"""``ParticleBrowser``: pages of particle images with their CTFs and, once a map exists, posteriors.

The controls are two-way linked to a :class:`ParticleBrowserState`; pictures come from
:func:`cryonb.viz.particle_page_figure`, :func:`cryonb.viz.ctf_figure` and
:func:`cryonb.viz.direction_posterior`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import traitlets
from numpy.typing import ArrayLike, NDArray

from ..fourier import nyquist_invA
from ..viz import ctf_figure, direction_posterior, particle_page_figure
from ._common import new_image, show_figure

__all__ = ["ParticleBrowser", "ParticleBrowserState", "ParticleBrowserView"]


class ParticleBrowserState(traitlets.HasTraits):
    """What the browser shows.

    Traits
    ------
    defocus_range_A : (low, high)
        Particles whose mean defocus ``(U + V) / 2`` lies in this range (Å) are listed.
    page : int
        Page of the listed particles (0-based).
    selected : int
        Dataset index of the particle whose CTF and posterior are shown.
    low_pass_A : float
        Low-pass resolution of the displayed images, Å (at or below Nyquist: unfiltered).
    n_listed, n_pages : int (read by the view; set by the browser)
    """

    defocus_range_A = traitlets.Tuple(traitlets.Float(), traitlets.Float())
    page = traitlets.Int(0)
    selected = traitlets.Int(0)
    low_pass_A = traitlets.Float(0.0)
    n_listed = traitlets.Int(0)
    n_pages = traitlets.Int(1)


#: Padding of the CTF table's cells (the notebook's default CSS leaves none).
_CELL = "padding:2px 8px; text-align:right; border-bottom:1px solid #ddd"


def _ctf_table_html(dataset: Any, ids: NDArray, selected: int) -> str:
    """The page's CTF parameters; particles numbered from 1 (RELION's image numbers), defoci
    in µm."""
    ctf = dataset.ctf
    head = ("particle", "defocus U (µm)", "defocus V (µm)", "angle (°)", "kV", "Cs (mm)", "Q",
            "phase shift (°)", "B (Å²)")
    rows = []
    for i in ids:
        i = int(i)
        if ctf is None:
            cells = [f"#{i + 1}"] + ["–"] * (len(head) - 1)
        else:
            cells = [f"#{i + 1}", f"{ctf.defocus_u_A[i] / 1e4:.3f}",
                     f"{ctf.defocus_v_A[i] / 1e4:.3f}",
                     f"{ctf.defocus_angle_deg[i]:.1f}", f"{ctf.voltage_kV[i]:g}",
                     f"{ctf.cs_mm[i]:g}", f"{ctf.amplitude_contrast[i]:g}",
                     f"{ctf.phase_shift_deg[i]:g}", f"{ctf.bfactor_A2[i]:g}"]
        style = ' style="background:#ffe0b2"' if i == selected else ""
        rows.append(f"<tr{style}>" + "".join(f'<td style="{_CELL}">{html.escape(c)}</td>'
                                             for c in cells) + "</tr>")
    header = "<tr>" + "".join(f'<th style="{_CELL}">{h}</th>' for h in head) + "</tr>"
    return ('<table style="font-size:11px; border-collapse:collapse; margin:6px 0">' + header
            + "".join(rows) + "</table>")


def _describe(dataset: Any) -> str:
    """One line about the data set, without file paths."""
    return (f"{len(dataset)} particles, {dataset.box_size} px at {dataset.pixel_size_A:.4g} "
            "Å/px")


@dataclass
class ParticleBrowserView:
    """The browser: display ``widget``; the named controls are linked to ``state``.

    Attributes
    ----------
    widget : ipywidgets.VBox
    state : ParticleBrowserState
    defocus : ipywidgets.FloatRangeSlider (µm; linked to the state's Å)
    page : ipywidgets.IntSlider (pages from 1; the state's ``page`` + 1)
    particle : ipywidgets.BoundedIntText
        Number of the selected particle from 1 (the state's ``selected`` + 1; jumps to its
        page).
    low_pass : ipywidgets.FloatSlider
        Low-pass resolution of the images, Å (the left end, Nyquist, means unfiltered).
    info : ipywidgets.HTML
    page_image, ctf_image, posterior_image : ipywidgets.Image
    table : ipywidgets.HTML
        CTF parameters of the page's particles.
    listed : ndarray
        Dataset indices passing the filter.
    likelihood_result, result_indices
        The posterior source (see :meth:`set_likelihood_result`).
    """

    widget: Any
    state: ParticleBrowserState
    defocus: Any
    page: Any
    particle: Any
    low_pass: Any
    info: Any
    page_image: Any
    ctf_image: Any
    posterior_image: Any
    posterior_note: Any
    table: Any
    dataset: Any
    page_size: int
    listed: NDArray
    likelihood_result: Any = None
    result_indices: NDArray | None = None
    page_figure: Any = None
    ctf_figure: Any = None
    posterior_figure: Any = None
    dpi: float = 80

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ derived values
    def mean_defocus_A(self) -> NDArray:
        """(n,) mean defocus ``(U + V) / 2`` of every particle (zeros without CTFs)."""
        ctf = self.dataset.ctf
        if ctf is None:
            return np.zeros(len(self.dataset))
        return 0.5 * (np.asarray(ctf.defocus_u_A) + np.asarray(ctf.defocus_v_A))

    def page_ids(self) -> NDArray:
        """Dataset indices on the current page."""
        start = self.state.page * self.page_size
        return self.listed[start:start + self.page_size]

    # ------------------------------------------------------------------ reactions
    def _filter_changed(self, _change: Any = None) -> None:
        lo, hi = self.state.defocus_range_A
        df = self.mean_defocus_A()
        tol = 1e-6 * max(1.0, abs(hi))
        self.listed = np.flatnonzero((df >= lo - tol) & (df <= hi + tol))
        n_pages = max(1, -(-len(self.listed) // self.page_size))
        self.state.n_listed, self.state.n_pages = len(self.listed), n_pages
        self.page.max = max(n_pages, self.page.min)  # the slider counts pages from 1
        self.state.page = min(self.state.page, n_pages - 1)
        self._page_changed()

    def _page_changed(self, _change: Any = None) -> None:
        ids = self.page_ids()
        if len(ids) and self.state.selected not in ids:
            self.state.selected = int(ids[0])  # redraws through _selected_changed
            return
        self.redraw_page()

    def _selected_changed(self, change: Any = None) -> None:
        sel = self.state.selected
        where = np.flatnonzero(self.listed == sel)
        if where.size and sel not in self.page_ids():
            self.state.page = int(where[0]) // self.page_size  # redraws the page
        else:
            self.redraw_page()
        self.redraw_particle()

    # ------------------------------------------------------------------ drawing
    def redraw_page(self) -> None:
        """The page of images, its CTF table and the summary line."""
        ids = self.page_ids()
        images = (self.dataset.images(ids) if len(ids)
                  else np.zeros((0, self.dataset.box_size, self.dataset.box_size)))
        defocus = self.mean_defocus_A()[ids] if self.dataset.ctf is not None else None
        fig = particle_page_figure(images, indices=ids + 1, defocus_A=defocus,
                                   highlight=self.state.selected + 1,
                                   pixel_size_A=self.dataset.pixel_size_A,
                                   low_pass_A=self.state.low_pass_A)
        self.page_figure = show_figure(self.page_image, fig, self.dpi)
        self.table.value = _ctf_table_html(self.dataset, ids, self.state.selected)
        sel = self.state.selected
        outside = "" if sel in self.listed else " (outside the defocus filter)"
        self.info.value = (f"{self.state.n_listed} of {len(self.dataset)} particles in the "
                           f"defocus range; page {self.state.page + 1} of {self.state.n_pages}; "
                           f"selected #{sel + 1}{outside}. "
                           f"{html.escape(_describe(self.dataset))}")

    def redraw_particle(self) -> None:
        """The selected particle's CTF and, if known, its posterior over directions."""
        ds, sel = self.dataset, self.state.selected
        if ds.ctf is not None:
            fig = ctf_figure(ds.ctf.subset([sel]), ds.box_size, ds.pixel_size_A)
            self.ctf_figure = show_figure(self.ctf_image, fig, self.dpi)
        res = self.likelihood_result
        if res is None:
            self.posterior_note.value = ("<i>No posterior yet: pass likelihood_result= (e.g. "
                                         "MarginalObjective.last_result) once a map exists.</i>")
            self.posterior_image.layout.display = "none"
            return
        rows = np.flatnonzero(np.asarray(self.result_indices) == sel)
        if rows.size == 0:
            self.posterior_note.value = (f"<i>Particle #{sel + 1} is not among the "
                                         f"{len(self.result_indices)} images of the likelihood "
                                         "result.</i>")
            self.posterior_image.layout.display = "none"
            return
        row = int(rows[0])
        truth = None
        if ds.truth is not None and ds.truth.rotations is not None:
            truth = ds.truth.rotations[sel]
        fig = direction_posterior(res.posterior_directions[row], res.quadrature,
                                  true_rotation=truth, title=f"particle #{sel + 1}")
        self.posterior_note.value = ""
        self.posterior_image.layout.display = None
        self.posterior_figure = show_figure(self.posterior_image, fig, self.dpi)

    def set_likelihood_result(self, result: Any, indices: ArrayLike | None = None) -> None:
        """Show posteriors from ``result`` (a :class:`cryonb.likelihood.LikelihoodResult`) whose
        rows are the dataset's particles ``indices`` (default ``0 .. B-1``)."""
        self.likelihood_result = result
        if result is not None:
            n_rows = np.asarray(result.log_likelihood).shape[0]
            idx = np.arange(n_rows) if indices is None else np.asarray(indices, np.int64)
            if idx.shape != (n_rows,):
                raise ValueError(f"{idx.size} indices for {n_rows} rows of the result")
            self.result_indices = idx
        self.redraw_particle()


def ParticleBrowser(dataset: Any, likelihood_result: Any = None, *,
                    result_indices: ArrayLike | None = None, page_size: int = 12,
                    low_pass_A: float | None = 20.0, dpi: float = 80) -> ParticleBrowserView:
    """Browse a :class:`cryonb.dataset.Dataset`: image pages, CTFs, defocus filter, posteriors.

    Parameters
    ----------
    dataset : Dataset
        Images are read page by page (after the dataset's own preprocessing).
    likelihood_result : cryonb.likelihood.LikelihoodResult, optional
        Posteriors of some particles under a map (``MarginalObjective.last_result``); its rows
        are the particles ``result_indices`` (default ``0 .. B-1``).
    page_size : int
        Images per page.
    low_pass_A : float or None
        The images' low-pass at the start, Å (clipped to the slider's range; None: unfiltered).
        Particles at a real SNR are invisible at Nyquist; 15-20 Å shows them.

    The controls number pages and particles from 1 (RELION's image numbers in a stack) and
    show defoci in µm; the state keeps dataset indices (from 0) and Å.
    """
    import ipywidgets as widgets

    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset holds no particle")
    state = ParticleBrowserState()
    if dataset.ctf is not None:
        df = 0.5 * (np.asarray(dataset.ctf.defocus_u_A) + np.asarray(dataset.ctf.defocus_v_A))
        lo, hi = float(np.floor(df.min())), float(np.ceil(df.max()))
    else:
        lo, hi = 0.0, 0.0
    hi = max(hi, lo + 1.0)
    state.defocus_range_A = (lo, hi)
    defocus = widgets.FloatRangeSlider(min=lo / 1e4, max=hi / 1e4,
                                       step=max(1e-4, (hi - lo) / 200 / 1e4),
                                       value=(lo / 1e4, hi / 1e4), description="defocus µm",
                                       readout_format=".2f", continuous_update=False,
                                       layout=widgets.Layout(width="420px"))
    page = widgets.IntSlider(min=1, max=1, description="page", continuous_update=False)
    particle = widgets.BoundedIntText(min=1, max=n, description="particle #",
                                      layout=widgets.Layout(width="180px"))
    nyquist_A = 1.0 / nyquist_invA(dataset.pixel_size_A)
    top_A = max(40.0, 4.0 * nyquist_A)
    state.low_pass_A = (nyquist_A if low_pass_A is None
                        else float(min(max(low_pass_A, nyquist_A), top_A)))
    low = widgets.FloatSlider(min=nyquist_A, max=top_A, step=max(0.1, (top_A - nyquist_A) / 100),
                              description="low-pass Å", readout_format=".1f",
                              continuous_update=False)
    view = ParticleBrowserView(
        widget=None, state=state, defocus=defocus, page=page, particle=particle, low_pass=low,
        info=widgets.HTML(), page_image=new_image(), ctf_image=new_image(),
        posterior_image=new_image(), posterior_note=widgets.HTML(), table=widgets.HTML(),
        dataset=dataset, page_size=int(page_size), listed=np.arange(n), dpi=dpi)
    if likelihood_result is not None:
        view.likelihood_result = likelihood_result
        n_rows = np.asarray(likelihood_result.log_likelihood).shape[0]
        view.result_indices = (np.arange(n_rows) if result_indices is None
                               else np.asarray(result_indices, np.int64))
    # the controls number pages and particles from 1 and show defoci in µm; the state keeps
    # dataset indices (from 0) and Å
    to_um = (lambda r: (r[0] / 1e4, r[1] / 1e4), lambda r: (r[0] * 1e4, r[1] * 1e4))
    plus_one = (lambda i: i + 1, lambda i: i - 1)
    traitlets.link((state, "defocus_range_A"), (defocus, "value"), transform=to_um)
    traitlets.link((state, "page"), (page, "value"), transform=plus_one)
    traitlets.link((state, "selected"), (particle, "value"), transform=plus_one)
    traitlets.link((state, "low_pass_A"), (low, "value"))
    view.widget = widgets.VBox([
        widgets.HBox([defocus, page]), widgets.HBox([particle, low]), view.info,
        view.page_image,
        view.ctf_image, view.posterior_note, view.posterior_image, view.table])
    view._filter_changed()
    view.redraw_particle()
    state.observe(view._filter_changed, names=["defocus_range_A"])
    state.observe(view._page_changed, names=["page"])
    state.observe(view._selected_changed, names=["selected"])
    state.observe(lambda _change: view.redraw_page(), names=["low_pass_A"])
    return view
