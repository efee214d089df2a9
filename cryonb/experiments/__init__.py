"""The paper's experiments, one module each, for ``notebooks/05_paper_figures.ipynb``.

==========================  ==================================================================
:mod:`.snapshots`           Fig. 5 (the map against compute time, aligned to the truth) and
                            Fig. 7 (fraction of quadrature points per domain) from one run:
                            :class:`RunRecorder`, :func:`align_snapshots`,
                            :func:`domain_fraction_table`, :func:`history_fraction_table` (from
                            a finished run's ``history.csv``)
:mod:`.poor_starts`         Fig. 9: projection-matching refinement (hard assignment, local
                            search) from poor starts: :func:`projection_matching_refinement`,
                            :func:`poor_start_volumes`
:mod:`.priors_compare`      Section 4: the three priors on the same data and seed:
                            :func:`compare_priors`, :func:`priors_table`
==========================  ==================================================================

The figures are in :mod:`cryonb.viz.paper`.
"""

from .poor_starts import (
    LocalWindow,
    RefinementParams,
    RefinementResult,
    poor_start_volumes,
    projection_matching_refinement,
    sphere_volume,
)
from .priors_compare import PriorRun, compare_priors, prior_configs, priors_table
from .snapshots import (
    AlignedSnapshot,
    RunRecorder,
    Snapshot,
    align_snapshots,
    domain_fraction_table,
    evenly_spaced,
    fractions_by_band_limit,
    history_fraction_table,
    snapshot_table,
)

__all__ = [
    "AlignedSnapshot",
    "LocalWindow",
    "PriorRun",
    "RefinementParams",
    "RefinementResult",
    "RunRecorder",
    "Snapshot",
    "align_snapshots",
    "compare_priors",
    "domain_fraction_table",
    "evenly_spaced",
    "fractions_by_band_limit",
    "history_fraction_table",
    "poor_start_volumes",
    "prior_configs",
    "priors_table",
    "projection_matching_refinement",
    "snapshot_table",
    "sphere_volume",
]
