"""Static pictures of cryonb's objects: plain matplotlib :class:`~matplotlib.figure.Figure`\\ s.

Every interactive view in :mod:`cryonb.widgets` and every notebook draws through one of these
functions, so a script, a report or a headless CI run gets the same picture as the notebook:

================================  ===========================================================
:func:`volume_slices_figure`      orthogonal sections of one or more maps (contrast, low-pass)
:func:`orthogonal_slices`         the central sections of one map
:func:`image_rows`                a grid of images, one row per stack
:func:`particle_page_figure`      a page of particle images with their defoci
:func:`direction_posterior`       an image's posterior over viewing directions (Mollweide)
:func:`ctf_figure`                a CTF in 1D (along U and V, with its zeros) and in 2D
:func:`fsc_figure`                FSC curves with their resolutions
:func:`fsc_resolution_figure`     the same with a resolution (Å) axis on top
:func:`orientation_figure`        viewing directions of particles: equal-area Mollweide
                                  histogram (:func:`direction_histogram`)
:func:`snapshot_strip_figure`     small views of a map as it develops (one per band limit)
:func:`projection_matching_figure`  particles above the map's projections at their poses
:func:`run_history_figure`        objective and band limit against solver time
:func:`is_domains_figure`         fraction of quadrature points evaluated per domain
:func:`solver_history_figure`     objective, held-out NLL, band limit and IS fraction
:func:`is_study_figure`           IS error and cost against ``s_B`` from a study table
:func:`is_error_curves_figure`    the paper's Fig. 6 from :class:`cryonb.is_study.ISErrorCurve`\\ s
:func:`posterior_kl_figure`       the paper's Fig. 3: posterior KL between epochs
================================  ===========================================================

plus the small computations they share (:func:`contrast_limits`, :func:`figure_png`,
:func:`ctf_zeros_invA`, :func:`history_table`, :func:`is_study_table`,
:func:`is_study_summary`, :func:`resolve_is_columns`, :func:`history_time_table`,
:func:`domain_fractions`, :func:`snapshot_view`).  Low-pass filtering is
:func:`cryonb.fourier.lowpass`.

Figures are built without pyplot (no global state).  Modules: :mod:`.maps` (volumes, images,
posteriors, snapshots, reprojections), :mod:`.ctf`, :mod:`.curves` (FSC, solver history),
:mod:`.runs` (a run: FSC in Å, history against time, IS per domain), :mod:`.orientations`
(direction histograms), :mod:`.is_figures` (importance-sampling study).  Conventions
(``docs/conventions.md``): volumes ``[z, y, x]``, images ``[y, x]`` drawn with row 0 at the
top, coordinates in Å from the box centre.
"""

from ._common import AXES, contrast_limits, figure_png
from .ctf import ctf_figure, ctf_zeros_invA
from .curves import add_resolution_axis, fsc_figure, history_table, solver_history_figure
from .is_figures import (
    is_error_curves_figure,
    is_study_figure,
    is_study_summary,
    is_study_table,
    posterior_kl_figure,
    resolve_is_columns,
)
from .maps import (
    direction_posterior,
    image_rows,
    orthogonal_slices,
    particle_page_figure,
    projection_matching_figure,
    snapshot_strip_figure,
    snapshot_view,
    volume_slices_figure,
)
from .orientations import DirectionHistogram, direction_histogram, orientation_figure
from .runs import (
    domain_fractions,
    fsc_resolution_figure,
    history_time_table,
    is_domains_figure,
    run_history_figure,
)

__all__ = [
    "AXES",
    "DirectionHistogram",
    "add_resolution_axis",
    "contrast_limits",
    "ctf_figure",
    "ctf_zeros_invA",
    "direction_histogram",
    "direction_posterior",
    "domain_fractions",
    "figure_png",
    "fsc_figure",
    "fsc_resolution_figure",
    "history_table",
    "history_time_table",
    "image_rows",
    "is_domains_figure",
    "is_error_curves_figure",
    "is_study_figure",
    "is_study_summary",
    "is_study_table",
    "orientation_figure",
    "orthogonal_slices",
    "particle_page_figure",
    "posterior_kl_figure",
    "projection_matching_figure",
    "resolve_is_columns",
    "run_history_figure",
    "snapshot_strip_figure",
    "snapshot_view",
    "solver_history_figure",
    "volume_slices_figure",
]
