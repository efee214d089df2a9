"""Kept for old imports: :class:`FinishedRun`, :func:`open_run` and :func:`common_grid` live
in :mod:`cryonb.run_folder` (reading a run folder is I/O, not a view)."""

from ..run_folder import FSC_PAIRS, FinishedRun, common_grid, open_run

__all__ = ["FSC_PAIRS", "FinishedRun", "common_grid", "open_run"]
