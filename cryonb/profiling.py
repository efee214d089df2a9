"""Where an iteration's time goes: the per-phase timings of the solver's records.

Every :class:`cryonb.sagd.SAGDSolver` record carries ``t_<phase>_s`` for the phases in
:data:`PHASES` (wall seconds spent in that phase during the iteration) and ``t_iteration_s``
(the whole iteration).  The main (gradient) evaluation is broken down into its parts; the line
search and the held-out evaluation are counted whole:

=============  ===================================================================
``io``         reading the batch, 2D FFT, CTF and whitening (``Engine.prepare``)
``is``         importance sampling: drawing the pose subsets and recording posteriors
``fft3d``      the map's 3D FFT (``Engine.volume_to_fourier``)
``slicing``    central slices of the map (projection, interpolation)
``scores``     score GEMMs and small-group score kernels (the likelihood points)
``sweeps``     exponential sums, posteriors and marginals over the scores
``gradient``   gradient rows and back-projection to the map (with the adjoint FFT)
``engine``     the rest of the likelihood engine's call
``linesearch`` re-evaluations of the line search (every few iterations)
``heldout``    the held-out images' evaluation (every few iterations)
``update``     gradient memory, step and positivity
=============  ===================================================================

:func:`profile_table` averages them per solver and band limit (saved as ``profile`` in
``run.json``), :func:`format_profile` prints that table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ENGINE_PHASES", "PHASES", "field_name", "format_profile", "profile_table"]

#: phases of an iteration, in the order of the table
PHASES = ("io", "is", "fft3d", "slicing", "scores", "sweeps", "gradient", "engine",
          "linesearch", "heldout", "update")
#: the keys of ``LikelihoodResult.timings`` (``fft3d_s`` added by the objective) and the
#: phase each is counted in
ENGINE_PHASES = {"fft3d_s": "fft3d", "slicing_s": "slicing", "scores_s": "scores",
                 "sweeps_s": "sweeps", "gradient_s": "gradient", "other_s": "engine"}


def field_name(phase: str) -> str:
    """The record field of ``phase``: ``t_<phase>_s``."""
    return f"t_{phase}_s"


def profile_table(solvers: Iterable[tuple[str, Iterable[Mapping[str, Any]]]]
                  ) -> list[dict[str, Any]]:
    """Mean seconds per iteration in each phase, per solver and band limit.

    Parameters
    ----------
    solvers : iterable of (name, records)
        E.g. ``[("common", solver.state.records), ("half1", ...)]``.

    Returns
    -------
    list of dict
        One row per (solver, band limit) in the order met: ``solver``, ``max_freq_invA``,
        ``resolution_A``, ``iterations``, ``fraction_evaluated`` (mean),
        ``fraction_first_visit`` (mean share of images with no recorded posterior: scored on
        every point; NaN without a sampler), ``t_iteration_s``
        (mean) and ``t_<phase>_s`` (means; records without timings count as 0).
    """
    rows: list[dict[str, Any]] = []
    for name, records in solvers:
        groups: dict[float, list[Mapping[str, Any]]] = {}
        for r in records:
            groups.setdefault(round(float(r["max_freq_invA"]), 10), []).append(r)
        for w, recs in groups.items():
            n = len(recs)
            row: dict[str, Any] = {
                "solver": name, "max_freq_invA": w, "resolution_A": 1.0 / w, "iterations": n,
                "fraction_evaluated": sum(float(r["fraction_evaluated"]) for r in recs) / n,
                "fraction_first_visit": _mean(recs, "fraction_first_visit", nan_if_none=True),
                "t_iteration_s": _mean(recs, "t_iteration_s")}
            for phase in PHASES:
                row[field_name(phase)] = _mean(recs, field_name(phase))
            rows.append(row)
    return rows


def _mean(records: list[Mapping[str, Any]], key: str, *, nan_if_none: bool = False) -> float:
    missing = math.nan if nan_if_none else 0.0  # a record without the field
    values = [float(r.get(key, missing)) for r in records]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan if nan_if_none else 0.0
    return sum(values) / len(values)


def _share(value: Any) -> str:
    """A share as a percentage, or "-" when unknown (no sampler, or an old record)."""
    v = math.nan if value is None else float(value)
    return f"{v:8.0%}" if math.isfinite(v) else f"{'-':>8}"


def format_profile(rows: list[dict[str, Any]]) -> str:
    """:func:`profile_table`'s rows as a fixed-width text table (seconds per iteration)."""
    head = ["solver", "res Å", "its", "points", "new", "s/it", *PHASES]
    lines = ["  ".join(f"{h:>8}" for h in head)]
    for r in rows:
        cells = [f"{r['solver']:>8}", f"{r['resolution_A']:8.1f}", f"{r['iterations']:8d}",
                 f"{r['fraction_evaluated']:8.2%}", _share(r.get("fraction_first_visit")),
                 f"{r['t_iteration_s']:8.2f}"]
        cells += [f"{r[field_name(p)]:8.3f}" for p in PHASES]
        lines.append("  ".join(cells))
    return "\n".join(lines)
