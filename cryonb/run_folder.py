"""The folder of an ab initio run: its lock, checkpoint and outputs (:class:`RunFolder`).

The job (:class:`cryonb.abinitio.AbInitioRun`) decides what to compute; this module knows
where and how it is written (every file and ``run.json`` field: ``docs/outputs.md``)::

    map.mrc                         the ab initio map: mean of sagd_half1.mrc, sagd_half2.mrc
    map_fullbox.mrc                 map.mrc Fourier-padded to the input images' box and pixel
                                    size (the reference for a RELION / cryoSPARC refinement)
    map_flipped_hand.mrc            map.mrc mirrored along z: the other hand
    half1.mrc, half2.mrc            each half's particles reconstructed at its MAP poses (the
                                    gold-standard pair); map_from_halves.mrc their mean
    sagd_half1.mrc, sagd_half2.mrc  the two SAGD half-set maps (not independent)
    map_aligned_to_truth.mrc        with a known truth: map.mrc aligned to it
    particles.star                  RELION 3.1: MAP poses and origins, rlnRandomSubset 1/2
    history.csv                     per-iteration objective, held-out NLL, w, L, step, IS fraction
    fsc.png, fsc.csv                half-map FSC (and vs the truth when it is known)
    chimerax.cxc                    opens map and half-maps in ChimeraX at an sdLevel
    run.json                        summary, configuration, timing, resolutions
    report.md                       the summary as prose: resolutions, band limits, timing,
                                    profile, files
    checkpoint.npz                  everything needed to resume (written atomically)

A finished folder is read back by :func:`open_run` (a :class:`FinishedRun`: maps, ``run.json``,
``history.csv``, ``particles.star``), which the views (:func:`cryonb.widgets.RunViewer`,
:func:`cryonb.widgets.compare_runs`) and scripts share; :func:`common_grid` brings two runs'
maps to one grid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .checkpoint import RunLock, load_checkpoint, save_checkpoint
from .io.errors import input_error

__all__ = ["CHIMERAX_SD_LEVEL", "FILES", "FSC_PAIRS", "KNOWN_POSE_FILES", "FinishedRun",
           "RunFolder", "common_grid", "finite", "open_lines", "open_run", "report_markdown",
           "summary_lines"]

#: Contour level of ``chimerax.cxc``, in standard deviations of each map (ChimeraX's
#: ``sdLevel``): the maps' absolute scale follows the particles' normalisation and mass, so
#: no absolute level fits every run.
CHIMERAX_SD_LEVEL = 3.0

#: Every file an ab initio run folder can hold, with what it contains (``report.md``'s list).
FILES: dict[str, str] = {
    "map.mrc": "the ab initio map at the working box: mean of the two SAGD half-set maps",
    "map_fullbox.mrc": "map.mrc Fourier-padded to the input images' box and pixel size "
                       "(reference for a RELION / cryoSPARC refinement with particles.star)",
    "map_flipped_hand.mrc": "map.mrc mirrored along z: the other hand (ab initio cannot tell "
                            "the hands apart)",
    "half1.mrc": "half-set 1's particles reconstructed at their MAP poses (gold standard)",
    "half2.mrc": "half-set 2's particles reconstructed at their MAP poses (gold standard)",
    "map_from_halves.mrc": "mean of half1.mrc and half2.mrc",
    "sagd_half1.mrc": "SAGD map of half-set 1 (not independent of sagd_half2.mrc)",
    "sagd_half2.mrc": "SAGD map of half-set 2",
    "map_aligned_to_truth.mrc": "map.mrc superposed on the known truth (simulations)",
    "particles.star": "RELION 3.1 STAR file of the input stacks with the MAP poses, origins "
                      "(Å) and rlnRandomSubset",
    "history.csv": "one row per iteration and solver: objective, held-out NLL, band limit, "
                   "step, fraction of quadrature points, phase timings",
    "fsc.png": "FSC curves against frequency (1/Å, top axis in Å)",
    "fsc.csv": "the FSC curves, one column per curve",
    "chimerax.cxc": "ChimeraX script: opens map and half-maps at an sdLevel",
    "run.json": "summary and configuration (fields: docs/outputs.md)",
    "report.md": "the run's report: resolutions, band limits, timing, profile, files",
    "checkpoint.npz": "everything needed to resume (--resume)",
}

#: The files of a ``cryonb reconstruct --known-poses`` folder that differ from :data:`FILES`.
KNOWN_POSE_FILES: dict[str, str] = {
    **FILES,
    "map.mrc": "least-squares reconstruction at the STAR file's poses (all particles)",
    "half1.mrc": "reconstruction of the particles with rlnRandomSubset 1",
    "half2.mrc": "reconstruction of the particles with rlnRandomSubset 2",
    "fsc.png": "half-map FSC against frequency (1/Å, top axis in Å)",
    "fsc.csv": "the half-map FSC",
}


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

    def write_final_map(self, volume: NDArray, pixel_size_A: float, input_box_size: int,
                        input_pixel_size_A: float) -> None:
        """``map.mrc``, ``map_fullbox.mrc`` and ``map_flipped_hand.mrc``.

        Parameters
        ----------
        volume : ndarray, shape (n, n, n), [z, y, x]
            The map at the working box ``n``.
        pixel_size_A : float
            Its voxel size, Å (the working images' pixel size).
        input_box_size : int
            The input images' box ``N >= n``, px: ``map_fullbox.mrc`` is ``volume``
            Fourier-padded to it (:func:`cryonb.fourier.fourier_pad`; a copy when ``N == n``).
        input_pixel_size_A : float
            The input images' pixel size, Å, written in ``map_fullbox.mrc``'s header; it must
            equal ``pixel_size_A * n / N`` (what ``Dataset.fourier_cropped`` made).

        Raises
        ------
        ValueError
            When the pixel sizes and boxes do not describe one Fourier crop.
        """
        from .fourier import flip_hand, fourier_pad

        n = volume.shape[-1]
        implied = pixel_size_A * n / input_box_size
        if input_box_size < n or abs(implied - input_pixel_size_A) > 1e-6 * input_pixel_size_A:
            raise ValueError(f"a {n}-px map at {pixel_size_A} Å is not a Fourier crop of a "
                             f"{input_box_size}-px box at {input_pixel_size_A} Å")
        self.write_map("map", volume, pixel_size_A)
        full = fourier_pad(np.asarray(volume, dtype=np.float64), int(input_box_size), ndim=3)
        self.write_map("map_fullbox", full, input_pixel_size_A)
        self.write_map("map_flipped_hand", flip_hand(np.asarray(volume)), pixel_size_A)

    def write_chimerax(self, maps: Sequence[str] = ("map", "half1", "half2"), *,
                       sd_level: float = CHIMERAX_SD_LEVEL) -> Path:
        """``chimerax.cxc``: open ``maps`` (names without ``.mrc``; missing ones skipped).

        The first is shown as a surface, the others (the half-maps) as meshes, hidden; each
        at ``sd_level`` standard deviations of its own values (ChimeraX ``sdLevel``), so the
        level fits whatever the map's scale.  Paths are relative: ChimeraX runs a ``.cxc``
        in the file's folder.
        """
        names = [m for m in maps if (self.path / f"{m}.mrc").exists()]
        lines = ["# cryonb: open this run's maps in UCSF ChimeraX, in a new session:",
                 "#   chimerax chimerax.cxc   (or File > Open; paths are relative to this file)",
                 f"# Contour levels are in standard deviations of each map (sdLevel "
                 f"{sd_level:g}), not absolute:",
                 "# the maps' scale follows the particles' normalisation. Change with e.g.",
                 "#   volume #1 sdLevel 2",
                 *[f"open {m}.mrc" for m in names]]
        if names:
            lines.append(f"volume #1 sdLevel {sd_level:g} style surface")
        if len(names) > 1:
            others = f"#2-{len(names)}" if len(names) > 2 else "#2"
            lines += [f"volume {others} sdLevel {sd_level:g} style mesh",
                      f"volume {others} hide",
                      f"# show the half-maps with: volume {others} show"]
        lines.append("view")
        path = self.path / "chimerax.cxc"
        path.write_text("\n".join(lines) + "\n")
        return path

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

    def files(self) -> list[str]:
        """The names of the files in the folder (sorted as in :data:`FILES`, others last;
        hidden ones, such as the lock ``.cryonb.lock``, left out)."""
        names = ({p.name for p in self.path.iterdir() if p.is_file()
                  and not p.name.startswith(".")} if self.path.exists() else set())
        return sorted(names, key=self._order)

    def write_report(self, summary: Mapping[str, Any], **kwargs: Any) -> Path:
        """``report.md``: :func:`report_markdown` of ``summary`` and the folder's files
        (``report.md`` included); ``kwargs`` go to :func:`report_markdown`."""
        path = self.path / "report.md"
        files = sorted(set(self.files()) | {"report.md"}, key=self._order)
        path.write_text(report_markdown(summary, files, **kwargs))
        return path

    @staticmethod
    def _order(name: str) -> tuple[int, str]:
        order = list(FILES)
        return (order.index(name) if name in order else len(order), name)


def finite(value: float) -> float | None:
    """``value``, or None (JSON null) when it is not finite."""
    return float(value) if math.isfinite(value) else None


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The resolution statements of a run's summary (``run.json``) as sentences: the
    half-map resolution (or why there is none) and, with a known truth, the map's."""
    lines = []
    half = summary.get("half_map_resolution")
    if half is None:
        lines.append("half-map resolution (FSC 0.143): none — "
                     f"{summary.get('half_map_null_reason')}")
    else:
        better = "" if half["crossed"] else "better than "
        fitted = summary.get("fitted_band_limit_A")
        limit = ("no band limit: up to Nyquist" if fitted is None
                 else f"fitted band limit {fitted:.1f} Å")
        lines.append(f"half-map resolution (FSC 0.143, gold standard): {better}"
                     f"{half['value_A']:.1f} Å ({limit})")
    truth = summary.get("truth_resolution")
    if truth is not None:
        better = "" if truth["crossed"] else "better than "
        value = "none" if truth["value_A"] is None else f"{truth['value_A']:.1f} Å"
        lines.append(f"map vs truth (FSC 0.5, aligned): {better}{value}, correlation "
                     f"{summary['truth_correlation']:.3f}")
    return lines


def open_lines(folder: str | Path, *, sd_level: float = CHIMERAX_SD_LEVEL) -> list[str]:
    """How to look at a run folder's map: ChimeraX (``chimerax.cxc``) and RELION."""
    folder = Path(folder)
    return [f"open in ChimeraX: chimerax {folder / 'chimerax.cxc'}  (map and half-maps at "
            f"sdLevel {sd_level:g}; e.g. `volume #1 sdLevel 2` to lower it)",
            f"refine in RELION: {folder / 'map_fullbox.mrc'} (input box and pixel size) as "
            f"the reference, {folder / 'particles.star'} as the particles"]


def report_markdown(summary: Mapping[str, Any], files: Sequence[str], *,
                    title: str = "cryonb reconstruction report", intro: Sequence[str] = (),
                    prefix: str = "") -> str:
    """A run's ``report.md``: data, resolutions, band limits, timing, profile, files.

    Parameters
    ----------
    summary : mapping
        The run's summary (``run.json`` without ``config``): from
        :meth:`cryonb.abinitio.AbInitioRun.run` or ``cryonb reconstruct --known-poses``
        (``mode: "known poses"``).  Missing fields are left out.
    files : sequence of str
        The folder's file names, listed with their :data:`FILES` description.
    title : str
        The heading.
    intro : sequence of str
        Markdown bullets (without the ``* ``) put first, e.g. the demo's description of its
        simulated data.
    prefix : str
        Prepended to every file name (the folder's path relative to the report).
    """
    s = summary
    known = s.get("mode") == "known poses"
    described = KNOWN_POSE_FILES if known else FILES
    out = [f"# {title}", ""]
    out += [f"* {line}" for line in intro]
    if "n_particles" in s:
        psize = s["pixel_size_A"]
        box_in, psize_in = s.get("input_box_size", s["box_size"]), s.get("input_pixel_size_A",
                                                                          psize)
        how = ("known poses from the STAR file (least squares)" if known else
               "ab initio from random spheres (SAGD + importance sampling, gold-standard "
               "halves)")
        out.append(f"* Data: {s['n_particles']} particles, {box_in} px at {psize_in:.4g} "
                   f"Å/px; reconstructed {how} at {s['box_size']} px, {psize:.4g} Å/px "
                   f"(Nyquist {2 * psize:.1f} Å).")
    if s.get("particle_radius_A") is not None:
        out.append(f"* Particle radius {s['particle_radius_A']:.0f} Å (sets the angular "
                   "sampling).")
    out += ["", "## Resolution", ""] + [f"* {line}" for line in summary_lines(s)]
    if s.get("hand_flipped") is not None:
        out.append(f"* The superposition on the truth {'flipped' if s['hand_flipped'] else 'kept'}"
                   " the hand.")
    out += _band_limit_lines(s) + _timing_lines(s)
    if s.get("profile"):
        from .profiling import format_profile

        out += ["", "## Time per iteration by phase and band limit (s)", "", "```",
                format_profile(s["profile"]), "```"]
    if s.get("messages"):
        out += ["", "## Notes", ""] + [f"* {m}" for m in s["messages"]]
    out += ["", "## Files", "", "| file | contents |", "|---|---|"]
    out += [f"| `{prefix}{f}` | {described.get(f, '')} |" for f in files]
    out += ["", "## Open the map", "",
            f"* ChimeraX: `chimerax {prefix}chimerax.cxc` (map and half-maps at sdLevel "
            f"{CHIMERAX_SD_LEVEL:g}; `volume #1 sdLevel 2` to lower the level). If the map "
            f"looks like the mirror image of the known structure, open "
            f"`{prefix}map_flipped_hand.mrc`.",
            f"* RELION / cryoSPARC refinement: `{prefix}map_fullbox.mrc` (the input box and "
            f"pixel size) as the reference, `{prefix}particles.star` as the particles.", ""]
    return "\n".join(out)


def _band_limit_lines(s: Mapping[str, Any]) -> list[str]:
    def res(key: str) -> str:
        w = s.get(key)
        return "none" if not w else f"{1.0 / w:.1f} Å (1/{1.0 / w:.1f} Å⁻¹)"

    if not any(s.get(k) for k in ("split_max_freq_invA", "final_max_freq_invA",
                                  "last_max_freq_invA")):
        return []
    return ["", "## Band limits", "",
            f"* Split into independent halves at {res('split_max_freq_invA')}: the halves share "
            "only the common map below it.",
            ("* Fitted band limit (each half ran min_fitted_iterations at it): "
             + (f"{res('final_max_freq_invA')}; every FSC stops there."
                if s.get("final_max_freq_invA") else "none: the halves did not run long "
                "enough at one band limit.")),
            f"* Last band limit reached: {res('last_max_freq_invA')}."]


def _timing_lines(s: Mapping[str, Any]) -> list[str]:
    lines = []
    if s.get("wall_time_s") is not None:
        its = s.get("iterations") or {}
        per = ", ".join(f"{k} {v}" for k, v in its.items())
        lines.append(f"* Solver: {s['wall_time_s'] / 60:.1f} min ({s['wall_time_s']:.0f} s)"
                     + (f"; iterations: {per}" if per else "") + ".")
    if s.get("final_poses_s") is not None:
        lines.append(f"* Final poses (MAP pose of every particle under its half's map): "
                     f"{s['final_poses_s']:.0f} s.")
    if s.get("stop_reasons"):
        lines.append(f"* Stopped: {'; '.join(dict.fromkeys(s['stop_reasons']))}.")
    return ["", "## Timing", "", *lines] if lines else []


# ----------------------------------------------------------------------------- reading
#: FSC pairs a run folder may hold: (label, first map, second map).
FSC_PAIRS = (("gold standard: half1 / half2", "half1", "half2"),
             ("SAGD half-sets: sagd_half1 / sagd_half2", "sagd_half1", "sagd_half2"))


@dataclass
class FinishedRun:
    """The outputs of one run (see the module docstring); arrays in memory, float32.

    Attributes
    ----------
    path : Path
    summary : dict (``run.json``; empty without one)
    pixel_size_A : float (of ``map.mrc``)
    maps : dict of name -> (N, N, N) ``[z, y, x]``: ``"map"`` and whichever of ``half1``,
        ``half2``, ``sagd_half1``, ``sagd_half2``, ``map_from_halves`` exist
    history : pandas DataFrame (``history.csv``) or None
    """

    path: Path
    summary: dict[str, Any]
    pixel_size_A: float
    maps: dict[str, NDArray]
    history: Any = None
    _particles: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The folder's name."""
        return self.path.name

    @property
    def map(self) -> NDArray:
        """``map.mrc``."""
        return self.maps["map"]

    @property
    def box_size(self) -> int:
        return int(self.map.shape[0])

    @property
    def band_limit_invA(self) -> float | None:
        """The band limit the maps were fitted to (``final_max_freq_invA``; the split's when
        the halves fitted none), 1/Å; None when ``run.json`` has neither."""
        s = self.summary
        w = s.get("final_max_freq_invA") or s.get("split_max_freq_invA")
        return None if w is None else float(w)

    def fsc_pairs(self) -> list[tuple[str, str, str]]:
        """The FSC pairs whose two maps are in the folder."""
        return [p for p in FSC_PAIRS if p[1] in self.maps and p[2] in self.maps]

    def fsc(self, first: str = "half1", second: str = "half2") -> Any:
        """:func:`cryonb.metrics.fsc` of two of the maps, capped at :attr:`band_limit_invA`."""
        from .metrics import fsc

        return fsc(self.maps[first], self.maps[second], self.pixel_size_A,
                   max_freq_invA=self.band_limit_invA)

    def particles(self) -> Any:
        """The particles of ``particles.star`` with their MAP poses (a lazy
        :class:`~cryonb.dataset.Dataset` at the original box; read once)."""
        if self._particles is None:
            from .dataset import Dataset

            star = self.path / "particles.star"
            if not star.exists():
                raise FileNotFoundError(f"{star}: no particles.star in the run folder")
            self._particles = Dataset.from_star(star)
        return self._particles

    def summary_lines(self) -> list[str]:
        """The resolution statements of ``run.json`` (:func:`summary_lines`)."""
        if "half_map_resolution" not in self.summary and "half_map_null_reason" not in \
                self.summary:
            return []
        return summary_lines(self.summary)


def open_run(path: str | Path | FinishedRun) -> FinishedRun:
    """Read a run folder (``map.mrc`` is required, every other file optional)."""
    from .io import read_mrc

    if isinstance(path, FinishedRun):
        return path
    folder = Path(path)
    if not (folder / "map.mrc").exists():
        raise FileNotFoundError(f"{folder}: no map.mrc; give the --out folder of a finished "
                                "`cryonb reconstruct`")
    main = read_mrc(folder / "map.mrc", mmap=False)
    psize = float(main.voxel_size_A or 1.0)
    maps = {"map": np.asarray(main.data, dtype=np.float32)}
    for name in ("half1", "half2", "sagd_half1", "sagd_half2", "map_from_halves"):
        f = folder / f"{name}.mrc"
        if f.exists():
            data = np.asarray(read_mrc(f, mmap=False).data, dtype=np.float32)
            if data.shape == maps["map"].shape:
                maps[name] = data
    summary = {}
    if (folder / "run.json").exists():
        summary = json.loads((folder / "run.json").read_text())
    history = None
    if (folder / "history.csv").exists():
        import pandas as pd

        history = pd.read_csv(folder / "history.csv")
    return FinishedRun(folder, summary, psize, maps, history)


def common_grid(a: NDArray, pixel_a_A: float, b: NDArray, pixel_b_A: float
                ) -> tuple[NDArray, NDArray, float]:
    """Two cubic maps on one grid: ``(a, b, pixel_size_A)``.

    Same pixel size, other boxes: the larger is cropped about its centre (real space).  Same
    field of view (``N * pixel``), other pixel sizes: the finer is Fourier-cropped.  Anything
    else raises ``ValueError``.
    """
    from .fourier import crop_center, fourier_crop

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = a.shape[0], b.shape[0]
    if abs(pixel_a_A - pixel_b_A) <= 1e-3 * pixel_a_A:
        n = min(na, nb)
        return (crop_center(a, n, ndim=3) if na > n else a,
                crop_center(b, n, ndim=3) if nb > n else b, float(pixel_a_A))
    if abs(na * pixel_a_A - nb * pixel_b_A) <= 1e-3 * na * pixel_a_A:
        if na > nb:
            return fourier_crop(a, nb, ndim=3), b, float(pixel_b_A)
        return a, fourier_crop(b, na, ndim=3), float(pixel_a_A)
    raise ValueError(f"maps of {na} px at {pixel_a_A:.4g} Å and {nb} px at {pixel_b_A:.4g} Å "
                     "share neither pixel size nor field of view: resample one first "
                     "(cryonb.fourier.fourier_crop / fourier_pad)")
