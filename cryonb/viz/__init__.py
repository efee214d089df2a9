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
:func:`snapshots_figure`          the paper's Fig. 5: the map against solver time, aligned
:func:`domain_fractions_figure`   the paper's Fig. 7: points evaluated per domain, band limit
:func:`map_gallery_figure`        maps side by side (Fig. 9's starts and results)
:func:`refinement_scores_figure`  FSC 0.5 vs truth per projection-matching iteration (Fig. 9)
:func:`final_results_figure`      Fig. 11-like: truth, ab initio and true-pose maps, FSCs
================================  ===========================================================

plus the small computations they share (:func:`contrast_limits`, :func:`figure_png`,
:func:`ctf_zeros_invA`, :func:`history_table`, :func:`is_study_table`,
:func:`is_study_summary`, :func:`resolve_is_columns`, :func:`history_time_table`,
:func:`domain_fractions`, :func:`plot_domain_fractions`, :func:`snapshot_view`,
:func:`iso_level`).  Low-pass filtering is
:func:`cryonb.fourier.lowpass`.

Figures are built without pyplot (no global state).  Modules: :mod:`.maps` (volumes, images,
posteriors, snapshots, reprojections), :mod:`.ctf`, :mod:`.curves` (FSC, solver history),
:mod:`.runs` (a run: FSC in Å, history against time, IS per domain), :mod:`.orientations`
(direction histograms), :mod:`.is_figures` (importance-sampling study), :mod:`.paper` (the
paper's Figs. 5, 7 and 9), :mod:`.molecules` (Fig. 11-like final results).  Conventions
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
from .molecules import final_results_figure
from .orientations import DirectionHistogram, direction_histogram, orientation_figure
from .paper import (
    domain_fractions_figure,
    iso_level,
    map_gallery_figure,
    refinement_scores_figure,
    snapshots_figure,
)
from .runs import (
    domain_fractions,
    fsc_resolution_figure,
    history_time_table,
    is_domains_figure,
    plot_domain_fractions,
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
    "domain_fractions_figure",
    "figure_png",
    "final_results_figure",
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
    "iso_level",
    "map_gallery_figure",
    "orientation_figure",
    "orthogonal_slices",
    "particle_page_figure",
    "plot_domain_fractions",
    "posterior_kl_figure",
    "projection_matching_figure",
    "refinement_scores_figure",
    "resolve_is_columns",
    "run_history_figure",
    "snapshot_strip_figure",
    "snapshot_view",
    "snapshots_figure",
    "solver_history_figure",
    "volume_slices_figure",
]
