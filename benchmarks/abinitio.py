"""Ab initio on simulated GroEL: cryonb against RELION 3.1's SGD initial model.

Run from the repository root: ``python -m benchmarks.abinitio [--mode quick|short|full]``.  The
``full`` benchmark does not fit in one working session (RELION's SGD to its GUI's 15 Å on 2
cores can take many hours, then cryonb as long again), so it is run in two halves that share the
work folder ``benchmarks/results/abinitio_<mode>/`` (git-ignored)::

    python -m benchmarks.abinitio --mode full --relion-only --keep --relion-timeout 50
    python -m benchmarks.abinitio --mode full --reuse-relion --cryonb-minutes 20

The first simulates the data, runs RELION (stopped after 50 min), scores its maps and saves
everything in ``relion.json``; the second rescores the kept RELION maps with the current scoring
code (RELION's times come from ``relion.json``), runs cryonb and writes the comparison.  Without
either option both programs run in one go.

1. **Data**: ``cryonb simulate --n 10000 --box 64 --pixel-size 5.6 --snr 0.05`` (bundled 1AON
   model, bundled real 200 kV CTF table, B = 500 Å², origins N(0, 8.4 Å)) into ``data/``.
2. **RELION**: ``relion_refine --sgd --denovo_3dref`` with the 3D-initial-model job's settings of
   the RELION 3.1 GUI (:data:`RELION_ARGS`: 15° sampling, offsets 6 / 2 px, 35 -> 15 Å,
   mini-batches 100 -> 500, flatten and zero-mask the solvent, 200 Å mask, pool 3, 2 threads),
   with the GUI's iteration schedule (50 + 200 + 50, write every 10) scaled by 1/4 to
   :data:`RELION_SCHEDULE` (``full``: 12 + 50 + 13, every 5): this build has no ``--cpu`` / GPU
   path, and at ~1 s per particle per iteration on this machine the default 300 iterations
   would take the better part of a day.  ``full`` keeps the GUI's final
   15 Å; ``short`` and ``quick`` override it (printed in the report and stored as
   ``relion_overrides``).  The STAR file given to RELION has no pose columns.  Wall time, CPU
   time and peak memory from ``/usr/bin/time -v``; ``--relion-timeout MIN`` stops RELION, whose
   result is then the last map it wrote.
3. **cryonb**: :class:`cryonb.abinitio.AbInitioRun` in a child process (for its own peak memory
   and CPU time) with ``time_limit_min`` = ``--cryonb-minutes`` (default: RELION's wall time up
   to its result map), ``particle_radius_A=90``, ``shift_sigma_A=8.4``, ``shift_extent_A=20``,
   seed 0, at the working box :data:`CRYONB_BOX`.  A callback copies the map every
   ``snapshot_s`` seconds of wall time (the common map; after the split the mean of the half
   maps) with the band limit fitted so far (``run.fitted_band_limit_invA()``, else the band
   limit of the step just taken).
4. **Scoring**, the same for both programs: every map (each RELION iteration it wrote, each
   cryonb snapshot, both final maps) is Fourier-padded to 64 px if needed and scored by
   :func:`cryonb.metrics.score_against_reference` against the simulation's truth: superposed on
   it (rotation, translation, both hands), then the FSC read at **0.5** — the criterion for a
   map against a known, noise-free reference (0.143 is the half-map criterion, where the FSC of
   the full map against a perfect map is about 0.5) — with the curve capped at the band limit
   the map was fitted to: above it a map's content was fitted to no data (it comes from
   positivity / solvent flattening of what lies below), so it must not count.  A curve above
   0.5 up to the cap has not crossed: "better than" the cap (``<X`` in the tables).  FSC 0.143
   of the same curve is kept for reference only.  The caps: cryonb, the fitted band limit of
   each snapshot, and for the final map ``final_max_freq_invA`` of its ``run.json``; RELION,
   read from each iteration's ``run_itNNN_model.star`` (see :func:`relion_band_limit`:
   ``_rlnCurrentResolution`` of table ``model_general`` is, in SGD, RELION's scheduled cut-off
   in Å (35 Å at iteration 5 here), but the images and the reconstruction of that iteration
   extend 10 Fourier shells further, to ``_rlnCurrentImageSize / 2`` (40 px, 17.9 Å, at
   iteration 5), which is the cap used, see :data:`RELION_BAND_LIMIT`).  The box is 358.4 Å
   for both programs, so the shells are the same frequencies.
5. **Time to resolution**: for each program the wall time (from its own start) at which its
   FSC 0.5 against the truth first reached each of :data:`THRESHOLDS_A` ("better than X"
   counts as reaching X), with iteration, phase and fitted band limit.  Times are wall clock
   on a machine shared with other jobs (CPU seconds are reported next to them): compare the two
   programs only within one run.

``abinitio.json`` (work folder) is always kept: it is written once RELION is scored and updated
at the end; ``--keep`` keeps the stacks and all maps too (else only the summaries and the two
final maps).  The last line is machine-readable::

    RESULT cryonb_res05=A cryonb_s=S relion_res05=A relion_s=S

the final FSC 0.5 against the truth in Å (prefixed with ``<`` when not crossed: better than
the cap) and the wall seconds of each whole process (RELION's stopped run included).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import inverse

BOX, PSIZE, SNR = 64, 5.6, 0.05

#: RELION 3.1 GUI "3D initial model" settings (everything but the iteration counts).
RELION_ARGS = ["--sgd", "--denovo_3dref", "--ctf", "--K", "1", "--sym", "C1",
               "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc",
               "--pool", "3", "--pad", "2", "--particle_diameter", "200",
               "--oversampling", "1", "--healpix_order", "1", "--offset_range", "6",
               "--offset_step", "2", "--sgd_ini_resol", "35", "--sgd_fin_resol", "15",
               "--sgd_ini_subset", "100", "--sgd_fin_subset", "500", "--j", "2"]

#: SGD iterations (initial, in-between, final, write-out every) and overrides of RELION_ARGS.
#: ``full``: the GUI's 50 / 200 / 50 / 10 scaled by 1/4 (75 iterations), the GUI's 35 -> 15 Å,
#: no override; at 15 Å an iteration from a poor reference has taken RELION up to ~50 min here
#: (every pose stays significant), hence ``--relion-timeout``.  ``short``: 8 iterations
#: (2 / 4 / 2) from 35 to 20 Å with mini-batches of 100 -> 200, what fits in an hour here
#: (measured: ~160 s per 100-particle iteration at 35 Å with --j 2 on a loaded machine).  The
#: smoke test (``quick``) stays at 35 Å and 100-particle mini-batches.
RELION_SCHEDULE = {"full": ((12, 50, 13, 5), {}),
                   "short": ((2, 4, 2, 1), {"--sgd_fin_resol": "20", "--sgd_fin_subset": "200"}),
                   "quick": ((1, 2, 1, 1), {"--sgd_fin_resol": "35", "--sgd_fin_subset": "100"})}

#: Which band limit caps the FSC of a RELION iteration map (both are stored per iteration):
#: ``"image_size"``: ``_rlnCurrentImageSize / 2`` shells of that iteration's model.star, the
#: Fourier extent of the images and of the reconstruction of that iteration (RELION adds
#: ``--incr_size`` (10) shells to its cut-off; 40 px = 17.9 Å at the 35 Å stage, all 64 px at
#: the 15 Å stage); ``"current_resolution"``: the cut-off ``_rlnCurrentResolution`` (SGD: the
#: scheduled one, set at the end of the iteration for the *next* one).  Switching needs no
#: rerun of RELION: ``--reuse-relion`` rescores the kept maps.
RELION_BAND_LIMIT = "image_size"

#: cryonb's working box (Fourier crop of the 64 px images) and iterations per band-limit stage.
#: The cost of an iteration is set by the band limit, not the box (the image frequencies and the
#: pose grid inside a band limit are the same at any box of 358.4 Å): measured, 100 images with
#: gradient, exhaustive, 1/30 and 1/20 Å^-1: 4.9 and 36 s at 48 px, 6.3 and 40 s at 64 px.  The
#: box only caps the band-limit march at its Nyquist: 32 px stops at 22.4 Å, coarser than
#: RELION's 15 Å cut-off, 64 px would march on to 11.2 Å at a higher cost per iteration.  48 px
#: (7.47 Å/px, Nyquist 14.9 Å) reaches RELION's final cut-off for the least.  30 iterations per
#: stage (at most) after a first stage of the default ``first_stage_images`` (200 iterations
#: of 100): the shape is decided in that first stage, the later stages only refine it.
CRYONB_BOX = {"full": 48, "short": 48, "quick": 32}
CRYONB_STAGE_ITERATIONS = {"full": 30, "short": 30, "quick": 10}

N_PARTICLES = {"full": 10000, "short": 10000, "quick": 1000}
SNAPSHOT_S = {"full": 60.0, "short": 30.0, "quick": 10.0}

#: Resolutions (Å, FSC 0.5 against the truth) of the time-to-resolution table.
THRESHOLDS_A = (40.0, 30.0, 25.0, 20.0, 15.0)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
def _time_v(cmd: list[str], cwd: Path, stdout: Path, stderr: Path,
            timeout_s: float | None = None) -> tuple[float, float, float, bool]:
    """Run ``cmd`` under ``/usr/bin/time -v``: (wall s, CPU s (user + sys), peak resident MB,
    timed out).  After ``timeout_s`` the command (not ``time``, which then still reports) gets
    SIGTERM."""
    t0 = time.perf_counter()
    timed_out = False
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=cwd, stdout=out, stderr=err)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            subprocess.run(["pkill", "-TERM", "-P", str(proc.pid)], check=False)
            rc = proc.wait()
    wall = time.perf_counter() - t0
    text = stderr.read_text(errors="replace")
    if rc != 0 and not timed_out:
        raise RuntimeError(f"{cmd[0]} failed ({rc}); see {stderr}:\n{text[-2000:]}")
    _, cpu, peak = _parse_time_v(text)
    return wall, cpu, peak, timed_out


def _parse_time_v(text: str) -> tuple[float, float, float]:
    """(wall s, CPU s (user + sys), peak resident MB) from ``/usr/bin/time -v``'s report (NaN
    where a line is missing)."""
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    wall = float("nan")
    if clock is not None:
        wall = 0.0
        for part in clock.group(1).split(":"):
            wall = 60.0 * wall + float(part)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text))
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return wall, cpu, (int(match.group(1)) / 1024 if match else float("nan"))


def score_map(volume: np.ndarray, truth: np.ndarray, max_freq_invA: float | None,
              pixel_size_A: float = PSIZE) -> dict:
    """Score ``volume`` against the truth with :func:`cryonb.metrics.score_against_reference`
    (aligned, both hands; FSC 0.5 capped at ``max_freq_invA``, the band limit the map was fitted
    to, 1/Å), after Fourier padding to the truth's box if needed."""
    from cryonb.fourier import fourier_pad
    from cryonb.metrics import score_against_reference

    vol = np.asarray(volume, dtype=np.float64)
    if vol.shape[0] != truth.shape[0]:
        vol = fourier_pad(vol, truth.shape[0], ndim=3)
    score = score_against_reference(vol, truth, pixel_size_A, max_freq_invA=max_freq_invA)
    return {"fitted_invA": None if max_freq_invA is None else round(float(max_freq_invA), 6),
            "fitted_A": inverse(max_freq_invA),
            "res05": score.resolution.to_dict(),
            "res0143": score.resolution_0143.to_dict(),
            "correlation": round(float(score.correlation), 4), "flipped": bool(score.flipped)}


def _reached(row: dict, resolution_A: float) -> bool:
    value = row["res05"]["value_A"]  # None: infinite (below 0.5 from the first shell on)
    return value is not None and value <= resolution_A + 1e-6


def time_to_resolution(rows: list[dict], thresholds=THRESHOLDS_A) -> dict:
    """First row (in time) whose FSC 0.5 against the truth reached each threshold (Å): its wall
    time from the program's start, iteration, phase, fitted band limit and resolution."""
    out = {}
    for x in thresholds:
        hit = next((r for r in sorted(rows, key=lambda r: r["t_s"]) if _reached(r, x)), None)
        out[f"{x:g}"] = None if hit is None else {
            "t_s": hit["t_s"], "iteration": hit["iteration"], "phase": hit["phase"],
            "fitted_A": hit["fitted_A"], "res05": hit["res05"]["label"]}
    return out


def _first_time_at(rows: list[dict], resolution_A: float | None) -> float | None:
    if resolution_A is None:
        return None
    for row in sorted(rows, key=lambda r: r["t_s"]):
        if _reached(row, resolution_A):
            return row["t_s"]
    return None


# ----------------------------------------------------------------------------- steps
def simulate(out: Path, n: int, box: int = BOX, pixel_size_A: float = PSIZE,
             snr: float = SNR) -> None:
    cryonb = shutil.which("cryonb") or str(Path(sys.executable).with_name("cryonb"))
    subprocess.run([cryonb, "simulate", "--n", str(n), "--box", str(box), "--pixel-size",
                    str(pixel_size_A), "--snr", str(snr), "--out", str(out), "--no-progress"],
                   check=True, capture_output=True)
    import starfile

    tables = starfile.read(out / "particles.star", always_dict=True)
    parts = tables["particles"]
    parts = parts.drop(columns=[c for c in parts.columns
                                if c.startswith(("rlnAngle", "rlnOrigin"))])
    starfile.write({"optics": tables["optics"], "particles": parts},
                   out / "particles_noposes.star", overwrite=True)


def relion_command(out: Path, schedule) -> list[str]:
    (ini, between, fin, write), overrides = schedule
    args = list(RELION_ARGS)
    for key, value in overrides.items():
        args[args.index(key) + 1] = value
    return ["relion_refine", "--o", str(out / "run"), "--i", "particles_noposes.star",
            "--sgd_ini_iter", str(ini), "--sgd_inbetween_iter", str(between),
            "--sgd_fin_iter", str(fin), "--sgd_write_iter", str(write), *args]


def relion_phase(iteration: int, schedule) -> str:
    """SGD phase of an iteration, as RELION 3.1 sets the cut-off and the mini-batch size
    (``iter < sgd_ini_iter``: initial, then in-between, then final)."""
    (ini, between, _, _), _ = schedule
    if iteration < ini:
        return "initial"
    return "inbetween" if iteration < ini + between else "final"


def _model_general(path: Path) -> dict:
    """Table ``model_general`` of a RELION model.star as a dict (keys without ``_``)."""
    try:
        import starfile

        block = starfile.read(path, always_dict=True)["model_general"]
        if hasattr(block, "iloc"):  # older starfile: a one-row DataFrame
            block = block.iloc[0].to_dict()
        return dict(block)
    except Exception:  # a table starfile cannot parse: read the key/value lines
        text = path.read_text(errors="replace").split("data_model_classes")[0]
        return {k: v for k, v in re.findall(r"^_(rln\w+)\s+(\S+)", text, flags=re.M)}


def relion_band_limit(model_star: Path) -> dict:
    """RELION's band limits of one iteration, from its ``run_itNNN_model.star``.

    ``_rlnCurrentResolution`` (RELION 3.1.3 writes Å, ``inf`` at iteration 0; a value < 1 would
    be read as 1/Å) is, in SGD
    without half sets, the scheduled cut-off (``--sgd_ini_resol``, then a linear ramp in Fourier
    shells, then ``--sgd_fin_resol``; ``MlOptimiser::updateCurrentResolution``), computed at the
    end of the iteration for the next one.  ``_rlnCurrentImageSize`` is the Fourier box the
    images of this iteration were compared and back-projected in: the cut-off of the previous
    iteration plus ``--incr_size`` shells (``updateImageSizeAndResolutionPointers``).  Returns
    both (1/Å) and ``fitted_invA``, the one :data:`RELION_BAND_LIMIT` selects.
    """
    gen = _model_general(model_star)
    cur = float(gen["rlnCurrentResolution"])  # iteration 0: inf (nothing fitted yet)
    cur_invA = None if not (math.isfinite(cur) and cur > 0) else (1.0 / cur if cur >= 1 else cur)
    size_invA = size = None
    if "rlnCurrentImageSize" in gen:
        size = int(float(gen["rlnCurrentImageSize"]))
        ori = int(float(gen.get("rlnOriginalImageSize", BOX)))
        if size > 0:
            size_invA = (size // 2) / (ori * float(gen.get("rlnPixelSize", PSIZE)))
    field = "image_size" if RELION_BAND_LIMIT == "image_size" and size_invA is not None \
        else "current_resolution"
    return {"current_resolution_invA": None if cur_invA is None else round(cur_invA, 6),
            "current_image_size": size,
            "image_size_limit_invA": None if size_invA is None else round(size_invA, 6),
            "fitted_invA": size_invA if field == "image_size" else cur_invA, "field": field}


def run_relion(data: Path, out: Path, schedule, truth: np.ndarray,
               timeout_min: float | None = None) -> dict:
    """RELION's SGD initial model, scored at every written iteration (see
    :func:`score_relion`)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = relion_command(out, schedule)
    start = time.time()
    wall, cpu, peak, timed_out = _time_v(cmd, data, out / "stdout.txt", out / "time.txt",
                                         None if timeout_min is None else 60.0 * timeout_min)
    timing = {"start_epoch": start, "wall_s": wall, "cpu_s": cpu, "peak_mb": peak,
              "timed_out": timed_out, "command": " ".join(cmd)}
    _write_json(out / "timing.json", timing)  # before scoring: a rescoring needs only this
    return score_relion(out, cmd, schedule, timing, truth)


def score_relion(out: Path, cmd: list[str], schedule, timing: dict, truth: np.ndarray) -> dict:
    """Score the maps RELION wrote in ``out`` (times from their modification times minus
    ``timing["start_epoch"]``; ``timing``: the measured run, kept as is for a rescoring).

    ``wall_s`` is the time of RELION's result map: the whole run, or, when it was stopped
    (``timed_out``), the time its last written map appeared (the whole process, with the
    unfinished iteration, is then ``stopped_at_s``).  ``process_wall_s`` is always the whole
    process.
    """
    from cryonb.io import read_mrc

    rows = []
    for path in sorted(out.glob("run_it*_class001.mrc")):
        it = int(re.search(r"_it(\d+)_", path.name).group(1))
        if it == 0:
            continue
        model = path.with_name(f"run_it{it:03d}_model.star")
        limits = relion_band_limit(model) if model.exists() else {"fitted_invA": None}
        score = score_map(read_mrc(path, mmap=False).data, truth, limits["fitted_invA"])
        rows.append({"iteration": it, "phase": relion_phase(it, schedule),
                     "t_s": round(path.stat().st_mtime - timing["start_epoch"], 1),
                     **score, "band_limits": limits})
    if not rows:
        raise RuntimeError(f"RELION wrote no iteration map in {out}; see {out / 'stdout.txt'}")
    rows.sort(key=lambda r: r["iteration"])
    final = rows[-1]
    wall, stopped_at = float(timing["wall_s"]), None
    if timing["timed_out"]:
        stopped_at, wall = round(wall, 1), final["t_s"]
    (_, overrides) = schedule
    return {"command": " ".join(cmd), "overrides": dict(overrides), "timing": dict(timing),
            "timed_out": bool(timing["timed_out"]), "wall_s": round(wall, 1),
            "process_wall_s": round(float(timing["wall_s"]), 1), "stopped_at_s": stopped_at,
            "cpu_s": round(float(timing["cpu_s"])), "peak_mb": round(float(timing["peak_mb"])),
            "band_limit_field": RELION_BAND_LIMIT, "iterations": rows, "final": final,
            "time_to_resolution": time_to_resolution(rows),
            "t_to_final_res05_s": _first_time_at(rows, final["res05"]["value_A"])}


def run_cryonb(data: Path, out: Path, box: int | None, stage_iterations: int | None,
               minutes: float, snapshot_s: float, truth: np.ndarray, *,
               config: dict | None = None, pixel_size_A: float = PSIZE,
               thresholds=THRESHOLDS_A) -> dict:
    """cryonb in a child process with map snapshots, every snapshot scored against the truth.

    ``config``: the AbInitioConfig fields to set (default: this benchmark's, box ``box``,
    ``stage_iterations`` per stage); ``time_limit_min`` is always ``minutes``.
    """
    out.mkdir(parents=True, exist_ok=True)
    if config is None:
        config = {"box_size": box, "particle_radius_A": 90.0, "shift_sigma_A": 8.4,
                  "shift_extent_A": 20.0, "iterations_per_stage": stage_iterations, "seed": 0}
    spec = {"data": str(data), "out": str(out), "snapshot_s": snapshot_s,
            "config": {**config, "time_limit_min": minutes}}
    (out / "spec.json").write_text(json.dumps(spec))
    wall, cpu, peak, _ = _time_v([sys.executable, "-m", "benchmarks.abinitio", "--worker",
                                  str(out / "spec.json")], ROOT, out / "stdout.txt",
                                 out / "time.txt")
    run_json = out / "run" / "run.json"
    final_w = None
    if run_json.exists():
        final_w = json.loads(run_json.read_text()).get("final_max_freq_invA")
    snaps = np.load(out / "snapshots.npz")
    rows = []
    for t, it, phase, w, vol in zip(snaps["t_s"], snaps["iteration"], snaps["phase"],
                                    snaps["band_limit_invA"], snaps["maps"], strict=True):
        w = None if not np.isfinite(w) else float(w)
        if str(phase) == "final" and final_w is not None:
            w = float(final_w)
        rows.append({"t_s": round(float(t), 1), "iteration": int(it), "phase": str(phase),
                     **score_map(vol, truth, w, pixel_size_A)})
    worker = json.loads((out / "worker.json").read_text())
    return {"config": spec["config"], "wall_s": round(wall, 1), "cpu_s": round(cpu),
            "peak_mb": round(peak), "final_max_freq_invA": final_w,
            "snapshots": rows, "final": rows[-1], "summary": worker["summary"],
            "solver_s": round(worker["solver_s"], 1), "map_ready_s": round(worker["loop_end_s"], 1),
            "time_to_resolution": time_to_resolution(rows, thresholds)}


def _fitted_band_limit(run, record) -> float | None:
    """The band limit cryonb has fitted so far (1/Å): ``run.fitted_band_limit_invA()`` where the
    run provides it (and has fitted something), else the band limit of the step just taken."""
    value = getattr(run, "fitted_band_limit_invA", None)
    if callable(value):
        value = value()
    if value is None:
        value = record.get("max_freq_invA") if record is not None else None
    return None if value is None else float(value)


def _worker(spec_path: str) -> int:
    """Child process: the cryonb run with map snapshots (see :func:`run_cryonb`)."""
    t0 = time.perf_counter()
    from cryonb.abinitio import AbInitioConfig, AbInitioRun
    from cryonb.synthetic.particles import load_simulation

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    snaps: list[tuple[float, int, str, float, np.ndarray]] = []
    last = [-np.inf]

    def save() -> None:
        np.savez(out / "snapshots.npz", t_s=np.array([s[0] for s in snaps]),
                 iteration=np.array([s[1] for s in snaps]),
                 phase=np.array([s[2] for s in snaps]),
                 band_limit_invA=np.array([s[3] for s in snaps], dtype=np.float64),
                 maps=np.stack([s[4] for s in snaps]))

    def snapshot(run, solver, record) -> None:
        now = time.perf_counter()
        if now - last[0] < spec["snapshot_s"]:
            return
        if run.phase == "common":
            vol = solver.volume
        elif solver is run.halves[-1].solver:  # both halves have made the same step
            vol = (run.halves[0].solver.volume + run.halves[1].solver.volume) / 2
        else:
            return
        last[0] = now
        w = _fitted_band_limit(run, record)
        snaps.append((now - t0, int(record["iteration"]), run.phase,
                      np.nan if w is None else w, vol.astype(np.float32)))
        if len(snaps) % 10 == 0:
            save()

    class Run(AbInitioRun):
        def _finish(self):  # the final map is ready here; _finish adds poses, FSC, files
            self.loop_end_s = time.perf_counter() - t0
            final = (self.halves[0].solver.volume + self.halves[1].solver.volume) / 2
            w = _fitted_band_limit(self, None)  # run.json's final_max_freq_invA replaces it
            snaps.append((self.loop_end_s, int(self.halves[0].solver.iteration), "final",
                          np.nan if w is None else w, final.astype(np.float32)))
            save()
            return super()._finish()

    run = Run(load_simulation(spec["data"]), out / "run", AbInitioConfig(**spec["config"]),
              progress=False, callback=snapshot)
    summary = run.run()
    (out / "worker.json").write_text(json.dumps(
        {"summary": summary, "solver_s": run._elapsed_s(), "loop_end_s": run.loop_end_s,
         "total_s": time.perf_counter() - t0}, default=str, indent=1))
    return 0


# ----------------------------------------------------------------------------- driver
def reuse_relion(work: Path, schedule, truth: np.ndarray) -> dict:
    """Rescore a RELION run kept in ``work/relion`` with the current scoring code.

    Its timing comes from ``work/relion.json`` (saved by ``--relion-only`` and by every run) or
    ``relion/timing.json`` (saved as soon as RELION ended) when present, else from
    ``relion/time.txt`` (``/usr/bin/time -v``; start = end of ``time.txt``
    minus the wall time; a stopped run cannot be told from a finished one there).
    """
    out = work / "relion"
    for saved in (work / "relion.json", out / "timing.json"):
        if saved.exists():
            old = json.loads(saved.read_text())
            timing = old.get("timing", old)
            return score_relion(out, old["command"].split(), schedule, timing, truth)
    wall, cpu, peak = _parse_time_v((out / "time.txt").read_text())
    if not np.isfinite(wall):
        raise RuntimeError(f"{out / 'time.txt'} has no wall time: RELION did not finish")
    start = (out / "time.txt").stat().st_mtime - wall
    return score_relion(out, relion_command(out, schedule), schedule,
                        {"start_epoch": start, "wall_s": wall, "cpu_s": cpu, "peak_mb": peak,
                         "timed_out": False}, truth)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def run(mode: str = "full", keep: bool = False, relion_timeout_min: float | None = None,
        reuse: bool = False, relion_only: bool = False,
        cryonb_minutes: float | None = None) -> dict:
    """The whole benchmark.  ``reuse``: keep the data and RELION run of an earlier ``--keep``
    (or ``relion_only``) run in the work folder, rescore RELION and run only cryonb;
    ``relion_only``: simulate, run and score RELION, save ``relion.json`` and stop (keeps
    everything)."""
    from cryonb.io import read_mrc

    results = ROOT / "benchmarks" / "results"
    work = results / f"abinitio_{mode}"
    schedule = RELION_SCHEDULE[mode]
    if reuse:
        truth = np.asarray(read_mrc(work / "data" / "truth.mrc", mmap=False).data,
                           dtype=np.float64)
        relion = reuse_relion(work, schedule, truth)
        _write_json(work / "relion.json", relion)
        if relion_only:
            return finish_relion_only(mode, work, relion)
        shutil.rmtree(work / "cryonb", ignore_errors=True)
        return finish(mode, work, work / "data", truth, relion, keep=True,
                      cryonb_minutes=cryonb_minutes)
    if work.exists():
        shutil.rmtree(work)
    data = work / "data"
    t0 = time.perf_counter()
    simulate(data, N_PARTICLES[mode])
    print(f"[abinitio] simulated {N_PARTICLES[mode]} particles in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    truth = np.asarray(read_mrc(data / "truth.mrc", mmap=False).data, dtype=np.float64)

    relion = run_relion(data, work / "relion", schedule, truth, relion_timeout_min)
    _write_json(work / "relion.json", relion)
    if relion_only:
        return finish_relion_only(mode, work, relion)
    return finish(mode, work, data, truth, relion, keep, cryonb_minutes=cryonb_minutes)


def _summary_row(program: str, final: dict, wall_s: float, cpu_s: float, map_ready_s: float,
                 peak_mb: float) -> dict:
    return {"program": program, "res05": final["res05"]["label"],
            "res05_A": final["res05"]["value_A"], "res05_crossed": final["res05"]["crossed"],
            "res0143": final["res0143"]["label"], "fitted_A": final["fitted_A"],
            "correlation": final["correlation"], "wall_s": wall_s, "cpu_s": cpu_s,
            "map_ready_s": map_ready_s, "peak_mb": peak_mb}


def _result(mode: str, relion: dict, cryonb: dict | None, cryonb_minutes: float | None,
            minutes_source: str, status: str) -> dict:
    rows = [_summary_row("relion", relion["final"], relion["process_wall_s"], relion["cpu_s"],
                         relion["wall_s"], relion["peak_mb"])]
    if cryonb is not None:
        rows.append(_summary_row("cryonb", cryonb["final"], cryonb["wall_s"], cryonb["cpu_s"],
                                 cryonb["map_ready_s"], cryonb["peak_mb"]))
    return {"mode": mode, "status": status, "n_particles": N_PARTICLES[mode],
            "relion_overrides": relion["overrides"], "relion_schedule": RELION_SCHEDULE[mode][0],
            "relion_band_limit_field": RELION_BAND_LIMIT,
            "cryonb_minutes": cryonb_minutes, "cryonb_minutes_source": minutes_source,
            "thresholds_A": list(THRESHOLDS_A), "rows": rows,
            "time_to_resolution": {"relion": relion["time_to_resolution"],
                                   "cryonb": None if cryonb is None
                                   else cryonb["time_to_resolution"]},
            "relion": relion, "cryonb": cryonb}


def finish_relion_only(mode: str, work: Path, relion: dict) -> dict:
    result = _result(mode, relion, None, None, "-", "relion_only")
    shutil.copy(sorted(work.glob("relion/run_it*_class001.mrc"))[-1], work / "relion_final.mrc")
    _write_json(work / "abinitio.json", result)
    return result


def finish(mode: str, work: Path, data: Path, truth: np.ndarray, relion: dict, keep: bool,
           cryonb_minutes: float | None = None) -> dict:
    """cryonb with ``cryonb_minutes`` (default RELION's wall time) as its budget, then the
    summary (see :func:`run`).  ``abinitio.json`` is written before cryonb starts and at the
    end."""
    source = "--cryonb-minutes"
    if cryonb_minutes is None:
        cryonb_minutes, source = relion["wall_s"] / 60.0, "RELION wall time"
    print(f"[abinitio] RELION: {relion['wall_s']:.0f} s, FSC0.5 vs truth "
          f"{relion['final']['res05']['label']}; cryonb budget {cryonb_minutes:.1f} min "
          f"({source})", flush=True)
    _write_json(work / "abinitio.json", _result(mode, relion, None, cryonb_minutes, source,
                                                "cryonb running"))
    shutil.copy(sorted(work.glob("relion/run_it*_class001.mrc"))[-1], work / "relion_final.mrc")
    cryonb = run_cryonb(data, work / "cryonb", CRYONB_BOX[mode], CRYONB_STAGE_ITERATIONS[mode],
                        cryonb_minutes, SNAPSHOT_S[mode], truth)
    cryonb["t_to_relion_final_res05_s"] = _first_time_at(cryonb["snapshots"],
                                                         relion["final"]["res05"]["value_A"])
    at_relion_time = [r for r in cryonb["snapshots"] if r["t_s"] <= relion["wall_s"]]
    cryonb["at_relion_wall"] = at_relion_time[-1] if at_relion_time else None

    # keep the final maps and the summaries, drop the big files
    shutil.copy(work / "cryonb" / "run" / "map.mrc", work / "cryonb_final.mrc")
    if not keep:
        for path in (data, work / "relion", work / "cryonb" / "run"):
            shutil.rmtree(path, ignore_errors=True)
        (work / "cryonb" / "snapshots.npz").unlink(missing_ok=True)

    result = _result(mode, relion, cryonb, cryonb_minutes, source, "done")
    _write_json(work / "abinitio.json", result)
    return result


def _fmt(value, spec=".1f") -> str:
    return "-" if value is None else format(value, spec)


def _res_short(res: dict) -> str:
    """``"22.4"`` / ``"<14.9"`` / ``"inf"`` (no unit) for the RESULT line."""
    if res["value_A"] is None:
        return "inf"
    return f"{'' if res['crossed'] else '<'}{res['value_A']:.1f}"


def _print_rows(rows: list[dict], with_phase: bool = True) -> None:
    print(f"  {'phase':9s} {'it':>4s} {'t s':>7s} {'fitted Å':>8s} {'FSC0.5':>9s} "
          f"{'(0.143)':>9s} {'corr':>6s} hand")
    for r in rows:
        print(f"  {r['phase']:9s} {r['iteration']:4d} {r['t_s']:7.0f} "
              f"{_fmt(r['fitted_A']):>8s} {r['res05']['label']:>9s} "
              f"{r['res0143']['label']:>9s} {r['correlation']:6.3f} "
              f"{'flipped' if r['flipped'] else '-'}")


def _print_ttr(result: dict) -> None:
    print("\nTime to resolution (FSC 0.5 vs truth first at or better than X; t = wall s from "
          "the program's start):")
    print(f"  {'program':8s} {'X Å':>5s} {'t s':>7s} {'it':>5s} {'phase':9s} {'fitted Å':>8s} "
          f"{'FSC0.5':>9s}")
    for program, table in result["time_to_resolution"].items():
        if table is None:
            continue
        for x, hit in table.items():
            if hit is None:
                print(f"  {program:8s} {x:>5s} {'-':>7s}")
                continue
            print(f"  {program:8s} {x:>5s} {hit['t_s']:7.0f} {hit['iteration']:5d} "
                  f"{hit['phase']:9s} {_fmt(hit['fitted_A']):>8s} {hit['res05']:>9s}")


def report(result: dict) -> None:
    relion, cryonb = result["relion"], result["cryonb"]
    overrides = " ".join(f"{k} {v}" for k, v in result["relion_overrides"].items()) or "none"
    print(f"\nmode {result['mode']}, {result['n_particles']} particles; RELION schedule "
          f"{result['relion_schedule']} (ini/inbetween/fin/write), overrides of the GUI "
          f"settings: {overrides}; RELION band limit: {result['relion_band_limit_field']}")
    if result["cryonb_minutes"] is not None:
        print(f"cryonb budget: {result['cryonb_minutes']:.1f} min "
              f"({result['cryonb_minutes_source']})")
    print(f"RELION command: {relion['command']}")
    if relion.get("stopped_at_s"):
        print(f"RELION was stopped after {relion['stopped_at_s']:.0f} s (--relion-timeout); its "
              f"result is its last written map, at {relion['wall_s']:.0f} s")
    print("\nScores: FSC 0.5 against the truth after alignment, capped at the fitted band "
          "limit ('<X': not crossed, better than X); FSC 0.143 of the same curve for reference")
    print("RELION per written iteration:")
    _print_rows(relion["iterations"])
    if cryonb is not None:
        print(f"cryonb config: {cryonb['config']}")
        print("cryonb snapshots:")
        _print_rows(cryonb["snapshots"])
        at = cryonb["at_relion_wall"]
        if at is not None:
            print(f"cryonb at RELION's wall time ({relion['wall_s']:.0f} s): t {at['t_s']:.0f} s, "
                  f"FSC0.5 {at['res05']['label']} (fitted {_fmt(at['fitted_A'])} Å)")
        print(f"cryonb first at RELION's final FSC0.5 ({relion['final']['res05']['label']}): "
              f"{_fmt(cryonb['t_to_relion_final_res05_s'], '.0f')} s")
    _print_ttr(result)
    print(f"\n{'program':8s} {'FSC0.5':>9s} {'(0.143)':>9s} {'fitted Å':>8s} {'wall s':>8s} "
          f"{'CPU s':>7s} {'map at s':>9s} {'peak MB':>8s}")
    for row in result["rows"]:
        print(f"{row['program']:8s} {row['res05']:>9s} {row['res0143']:>9s} "
              f"{_fmt(row['fitted_A']):>8s} {row['wall_s']:8.0f} {row['cpu_s']:7.0f} "
              f"{row['map_ready_s']:9.0f} {row['peak_mb']:8.0f}")
    print("(wall s: the whole process; CPU s: user + system of that process (shared machine); "
          "map at s: when the\n final map existed (cryonb: end of the solver loop, before the "
          "MAP poses and the output files;\n RELION: its last written iteration))")
    r = relion
    c_res = _res_short(cryonb["final"]["res05"]) if cryonb is not None else "-"
    c_s = f"{cryonb['wall_s']:.0f}" if cryonb is not None else "-"
    print(f"RESULT cryonb_res05={c_res} cryonb_s={c_s} "
          f"relion_res05={_res_short(r['final']['res05'])} relion_s={r['process_wall_s']:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.abinitio",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--mode", choices=[*sorted(RELION_SCHEDULE), "box128"],
                        default="full",
                        help="full (RELION 75 iterations to 15 Å, hours here), short "
                        "(8 iterations to 20 Å, about 2 x 30 min), quick (1,000 particles, "
                        "smoke test) or box128 (the paper's 128 px / 2.8 Å GroEL set, cryonb "
                        "against its true-pose limit, time to resolution: "
                        "benchmarks/abinitio_box128.py)")
    parser.add_argument("--n", type=int, default=None,
                        help="box128: number of particles (10,000)")
    parser.add_argument("--reuse-data", action="store_true",
                        help="box128: keep the simulated data (and the true-pose map) of an "
                        "earlier run")
    parser.add_argument("--keep", action="store_true", help="keep the stacks and all maps")
    parser.add_argument("--relion-timeout", type=float, default=None, metavar="MIN",
                        help="stop RELION after MIN minutes and score the last map it wrote")
    parser.add_argument("--relion-only", action="store_true",
                        help="simulate, run and score RELION only; saves relion.json in the work "
                        "folder and keeps everything for a later --reuse-relion")
    parser.add_argument("--reuse-relion", action="store_true",
                        help="rescore the RELION run kept in the work folder (by --relion-only or "
                        "--keep; times from its relion.json) and run only cryonb")
    parser.add_argument("--cryonb-minutes", type=float, default=None, metavar="M",
                        help="cryonb's time budget (default: RELION's wall time to its result)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    if args.mode == "box128":
        from benchmarks import abinitio_box128

        return abinitio_box128.main(args.cryonb_minutes, args.n, args.reuse_data)
    report(run(mode=args.mode, keep=args.keep, relion_timeout_min=args.relion_timeout,
               reuse=args.reuse_relion, relion_only=args.relion_only,
               cryonb_minutes=args.cryonb_minutes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
