"""The folder of an ab initio run: its lock, checkpoint and outputs (:class:`RunFolder`).

The job (:class:`cryonb.abinitio.AbInitioRun`) decides what to compute; this module knows
where and how it is written::

    map.mrc                         the ab initio map: mean of sagd_half1.mrc, sagd_half2.mrc
    half1.mrc, half2.mrc            each half's particles reconstructed at its MAP poses (the
                                    gold-standard pair); map_from_halves.mrc their mean
    map_aligned_to_truth.mrc        with a known truth: map.mrc aligned to it
    particles.star                  RELION 3.1: MAP poses and origins, rlnRandomSubset 1/2
    history.csv                     per-iteration objective, held-out NLL, w, L, step, IS fraction
    fsc.png, fsc.csv                half-map FSC (and vs the truth when it is known)
    run.json                        summary, configuration, timing, resolutions
    checkpoint.npz                  everything needed to resume (written atomically)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .checkpoint import RunLock, load_checkpoint, save_checkpoint
from .io.errors import input_error

__all__ = ["RunFolder", "finite", "summary_lines"]


class RunFolder:
    """The files of one run in ``path`` (created on :meth:`lock`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.npz"

    def lock(self) -> RunLock:
        """Create the folder and keep other processes out of it (a context manager)."""
        self.path.mkdir(parents=True, exist_ok=True)
        return RunLock(self.path)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Write ``state`` atomically to ``checkpoint.npz``."""
        return save_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The saved state (None when there is no checkpoint)."""
        return load_checkpoint(self.checkpoint_path) if self.checkpoint_path.exists() else None

    def refuse_resume(self, differ: list[str], saved: dict[str, Any],
                      current: dict[str, Any]) -> None:
        """Raise the input error of a resume whose options ``differ`` change the job."""
        raise input_error(self.checkpoint_path, "it was made with other options: "
                          + ", ".join(f"{k} = {saved.get(k)} (now {current[k]})"
                                      for k in differ),
                          "resume with the same options (only --iterations, --time-limit "
                          "and --checkpoint-min may change) or use another --out")

    # ------------------------------------------------------------------ outputs
    def write_map(self, name: str, volume: NDArray, pixel_size_A: float) -> None:
        """``<name>.mrc`` as float32."""
        from .io import write_mrc

        write_mrc(self.path / f"{name}.mrc", np.asarray(volume, dtype=np.float32),
                  pixel_size_A)

    def write_fsc(self, curves: list[Any], labels: list[str]) -> None:
        """``fsc.png`` and ``fsc.csv`` (one column per curve, on the first curve's shells)."""
        from .viz import fsc_figure

        fsc_figure(curves, labels).savefig(self.path / "fsc.png", dpi=90)
        np.savetxt(self.path / "fsc.csv",
                   np.stack([curves[0].freq_invA] + [c.fsc for c in curves], 1),
                   delimiter=",", header="freq_invA," + ",".join(labels), comments="")

    def write_history(self, solvers: Iterable[tuple[str, Any]]) -> None:
        """``history.csv``: every iteration record of the ``(phase, solver)`` pairs."""
        import pandas as pd

        rows = [{"phase": name, **r} for name, solver in solvers for r in solver.state.records]
        pd.DataFrame(rows).to_csv(self.path / "history.csv", index=False)

    def write_star(self, dataset: Any, rotations: NDArray, shifts_A: NDArray,
                   half_set: NDArray) -> None:
        """``particles.star``: ``dataset``'s particles (their stack rows) with these poses."""
        from .io import write_particles_star

        write_particles_star(
            self.path / "particles.star", image_paths=dataset.source_paths(),
            image_indices=dataset.source_indices(), pixel_size_A=dataset.pixel_size_A,
            box_size=dataset.box_size, ctf=dataset.ctf, rotations=rotations,
            shifts_A=shifts_A, half_set=half_set)

    def write_summary(self, summary: dict[str, Any], config: dict[str, Any]) -> None:
        """``run.json``: the summary and the configuration."""
        (self.path / "run.json").write_text(
            json.dumps({**summary, "config": config}, indent=2, default=float) + "\n")


def finite(value: float) -> float | None:
    """``value``, or None (JSON null) when it is not finite."""
    return float(value) if math.isfinite(value) else None


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The resolution statements of a run's summary (``run.json``) as sentences: the
    half-map resolution (or why there is none) and, with a known truth, the map's."""
    lines = []
    half = summary.get("half_map_resolution")
    if half is None:
        lines.append("half-map resolution (FSC 0.143): none — "
                     f"{summary.get('half_map_null_reason')}")
    else:
        better = "" if half["crossed"] else "better than "
        lines.append(f"half-map resolution (FSC 0.143, gold standard): {better}"
                     f"{half['value_A']:.1f} Å (fitted band limit "
                     f"{summary['fitted_band_limit_A']:.1f} Å)")
    truth = summary.get("truth_resolution")
    if truth is not None:
        better = "" if truth["crossed"] else "better than "
        value = "none" if truth["value_A"] is None else f"{truth['value_A']:.1f} Å"
        lines.append(f"map vs truth (FSC 0.5, aligned): {better}{value}, correlation "
                     f"{summary['truth_correlation']:.3f}")
    return lines
