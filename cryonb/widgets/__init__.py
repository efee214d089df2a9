"""Inline, interactive views for JupyterLab (optional extra ``cryonb[widgets]``).

Each builder takes library objects and returns a small view (a dataclass) holding the widget to
display and its named controls; the controls are two-way linked to a traitlets state object, and
all computation and drawing is a library call (:mod:`cryonb.viz` has the same pictures as plain
matplotlib figures for scripts and reports).

=======================  ==================================================================
:func:`isosurface`       3D iso-surface of a map with a level slider (ipyvolume)
:func:`VolumeViewer`     orthogonal sections (axis, index, contrast, low-pass) + iso-surfaces,
                         for one map or several side by side
:func:`ParticleBrowser`  pages of particle images, CTFs, defocus filter, posteriors over
                         directions
:func:`SolverDashboard`  live history, band limit, IS fraction per domain, sections and
                         iso-surface of the map, snapshots against time, half-set FSC in Å
                         and ETA of a running solver or ab initio job (background thread;
                         pause, resume, stop, checkpoint)
:func:`RunViewer`        a finished run folder: maps and half-maps, FSC in Å, history,
                         orientation distribution, particles beside their reprojections
:func:`compare_runs`     two runs superposed (hand included) side by side, with their FSC
:func:`ISStudyExplorer`  error against fraction of points of an importance-sampling study
=======================  ==================================================================
"""

from ..run_folder import FinishedRun, common_grid, open_run
from .dashboard import SolverDashboard, SolverDashboardView, SolverMonitor
from .dashboard_panels import BudgetProgress, LivePanels, budget_progress
from .is_study import ISStudyExplorer, ISStudyState, ISStudyView
from .particles import ParticleBrowser, ParticleBrowserState, ParticleBrowserView
from .run_viewer import CompareRunsView, RunViewer, RunViewerView, compare_runs
from .slices import VolumeView, VolumeViewer, VolumeViewerState
from .volume import IsosurfaceView, default_iso_level, isosurface, isosurface_mesh

__all__ = [
    "BudgetProgress",
    "CompareRunsView",
    "FinishedRun",
    "ISStudyExplorer",
    "ISStudyState",
    "ISStudyView",
    "IsosurfaceView",
    "LivePanels",
    "ParticleBrowser",
    "ParticleBrowserState",
    "ParticleBrowserView",
    "RunViewer",
    "RunViewerView",
    "SolverDashboard",
    "SolverDashboardView",
    "SolverMonitor",
    "VolumeView",
    "VolumeViewer",
    "VolumeViewerState",
    "budget_progress",
    "common_grid",
    "compare_runs",
    "default_iso_level",
    "isosurface",
    "isosurface_mesh",
    "open_run",
]
