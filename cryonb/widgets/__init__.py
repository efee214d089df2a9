"""Inline, interactive views for JupyterLab (optional extra ``cryonb[widgets]``).

Each builder takes library objects and returns a view holding the widget and its named
controls; all computation is a library call.
"""

from .volume import IsosurfaceView, default_iso_level, isosurface, isosurface_mesh

__all__ = ["IsosurfaceView", "default_iso_level", "isosurface", "isosurface_mesh"]
