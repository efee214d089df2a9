"""``ISStudyExplorer``: browse an importance-sampling study table (the paper's Fig. 6).

The study itself (exact against importance-sampled ``log p(I | theta, V)`` over ``s_B`` and band
limits) is computed elsewhere; this view takes its table.  Two sliders pick ``s_B`` and the band
limit (linked to an :class:`ISStudyState`); the picture is :func:`cryonb.viz.is_study_figure`
with the pick circled, and a line reports its error, fraction of points and speed-up
(:func:`cryonb.viz.is_study_summary`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import traitlets

from ..viz import is_study_figure, is_study_summary, resolve_is_columns
from ._common import new_image, show_figure

__all__ = ["ISStudyExplorer", "ISStudyState", "ISStudyView"]


class ISStudyState(traitlets.HasTraits):
    """The selected study point: ``s_B`` and ``band_limit`` (1/Å)."""

    s_B = traitlets.Float()
    band_limit = traitlets.Float()


@dataclass
class ISStudyView:
    """The explorer: display ``widget``; ``s_B`` and ``band_limit`` sliders link to ``state``.

    Attributes
    ----------
    widget : ipywidgets.VBox
    state : ISStudyState
    s_B, band_limit : ipywidgets.SelectionSlider (the values present in the table)
    readout : ipywidgets.HTML
        The selected point's mean |relative error|, fraction of points and speed-up.
    image : ipywidgets.Image
    summary : pandas.DataFrame (:func:`cryonb.viz.is_study_summary`)
    """

    widget: Any
    state: ISStudyState
    s_B: Any
    band_limit: Any
    readout: Any
    image: Any
    table: Any
    summary: Any
    columns: dict
    figure: Any = None
    dpi: float = 80

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def selected_row(self) -> Any:
        """The summary row of the selection (a pandas Series), or None."""
        s = self.summary
        hit = s[np.isclose(s["s_B"], self.state.s_B)
                & np.isclose(s["band_limit"], self.state.band_limit)]
        return None if hit.empty else hit.iloc[0]

    def redraw(self, _change: Any = None) -> None:
        """Redraw the figure and the readout from the state."""
        fig = is_study_figure(self.table, s_B=self.state.s_B, band_limit=self.state.band_limit,
                              s_B_column=self.columns["s_B"],
                              band_limit_column=self.columns["band_limit"],
                              error_column=self.columns["relative_error"],
                              fraction_column=self.columns["fraction"])
        self.figure = show_figure(self.image, fig, self.dpi)
        row = self.selected_row()
        if row is None:
            self.readout.value = (f"<i>no rows at s_B = {self.state.s_B:g}, band limit "
                                  f"{self.state.band_limit:g} Å⁻¹</i>")
        else:
            self.readout.value = html.escape(
                f"s_B = {row['s_B']:g}, band limit {row['band_limit']:.4g} Å⁻¹ "
                f"(1/{1.0 / row['band_limit']:.1f} Å): mean |relative error| "
                f"{row['relative_error']:.3g} (max {row['relative_error_max']:.3g}), "
                f"fraction of points {row['fraction']:.3g}, speed-up {row['speedup']:.3g}x "
                f"over {int(row['n'])} rows")


def ISStudyExplorer(table: Any, *, s_B_column: str | None = None,
                    band_limit_column: str | None = None, error_column: str | None = None,
                    fraction_column: str | None = None, dpi: float = 80) -> ISStudyView:
    """Sliders over ``s_B`` and the band limit of an importance-sampling study table.

    Parameters
    ----------
    table : pandas.DataFrame or xarray.Dataset
        One row per (image, s_B, band limit), or already averaged, with columns for ``s_B``,
        the band limit (1/Å), the relative error of the IS estimate and the fraction of
        quadrature points evaluated.  Common names are found automatically
        (:func:`cryonb.viz.resolve_is_columns`); others are named with the ``*_column``
        arguments.
    """
    import ipywidgets as widgets

    frame = table.to_dataframe().reset_index() if hasattr(table, "to_dataframe") else table
    cols = resolve_is_columns(frame, s_B_column=s_B_column, band_limit_column=band_limit_column,
                              error_column=error_column, fraction_column=fraction_column)
    summary = is_study_summary(frame, s_B_column=cols["s_B"],
                               band_limit_column=cols["band_limit"],
                               error_column=cols["relative_error"],
                               fraction_column=cols["fraction"])
    if summary.empty:
        raise ValueError("the IS study table has no rows")
    s_values = sorted(float(v) for v in summary["s_B"].unique())
    w_values = sorted(float(v) for v in summary["band_limit"].unique())
    default_s = min(s_values, key=lambda v: abs(np.log(v / 10.0)) if v > 0 else np.inf)
    state = ISStudyState(s_B=default_s, band_limit=w_values[-1])
    s_slider = widgets.SelectionSlider(options=[(f"{v:g}", v) for v in s_values],
                                       value=state.s_B, description="s_B",
                                       continuous_update=False)
    w_slider = widgets.SelectionSlider(
        options=[(f"1/{1.0 / v:.1f} Å⁻¹" if v > 0 else f"{v:g}", v) for v in w_values],
        value=state.band_limit, description="band limit", continuous_update=False,
        layout=widgets.Layout(width="420px"))
    traitlets.link((state, "s_B"), (s_slider, "value"))
    traitlets.link((state, "band_limit"), (w_slider, "value"))
    view = ISStudyView(widget=None, state=state, s_B=s_slider, band_limit=w_slider,
                       readout=widgets.HTML(), image=new_image(), table=frame, summary=summary,
                       columns=cols, dpi=dpi)
    view.widget = widgets.VBox([widgets.HBox([s_slider, w_slider]), view.readout, view.image])
    state.observe(view.redraw, names=["s_B", "band_limit"])
    view.redraw()
    return view
