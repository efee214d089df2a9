"""Helpers shared by the views: matplotlib figures shown as PNG images in ``ipywidgets.Image``.

A PNG in an ``Image`` widget renders the same in JupyterLab, in a saved notebook and in headless
tests (no ipympl, no output capture), and a test can compare the bytes before and after a change.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from ..viz import figure_png

__all__ = ["new_image", "show_figure"]


def new_image(**layout: Any) -> Any:
    """An empty PNG ``ipywidgets.Image`` (width follows the figure unless given)."""
    import ipywidgets as widgets

    return widgets.Image(format="png", layout=widgets.Layout(**layout))


def show_figure(image: Any, fig: Figure, dpi: float = 80) -> Figure:
    """Render ``fig`` into ``image`` (an ``ipywidgets.Image``) and return it.

    The image's width is set to the PNG's (figure width times ``dpi``, in CSS pixels), so a
    flex row beside other views (an iso-surface) cannot squeeze the picture out of shape.
    """
    image.value = figure_png(fig, dpi=dpi)
    image.layout.width = f"{round(fig.get_size_inches()[0] * dpi)}px"
    return fig
