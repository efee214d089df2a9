"""The box-128 mode of the ab initio benchmark: the paper's GroEL setting, time to resolution.

Run from the repository root: ``python -m benchmarks.abinitio --mode box128
[--cryonb-minutes 120] [--n 10000]`` (this module does the work).  The issue's goal: FSC 0.5
against the truth within 1.25 times the true-pose reconstruction's FSC 0.5 on the same data,
within 2 hours on 2 cores, and the time-to-resolution curve.

1. **Data**: ``cryonb simulate --n N --box 128 --pixel-size 2.8 --snr 0.05`` (the paper's GroEL
   set: bundled 1AON model, bundled real 200 kV CTF table, Nyquist 5.6 Å) into ``data/``.
2. **True poses**: ``cryonb reconstruct data/particles.star --known-poses`` (the simulation's
   own poses and origins; direct inversion then 10 conjugate-gradient iterations, with the
   CTF, cross-checked against
   ``relion_reconstruct`` in tests/test_relion_interop.py), scored at FSC 0.5 against the truth
   up to Nyquist: the best any pose estimate can do on these images.
3. **cryonb**: ``AbInitioRun`` with the defaults (no tuning flag; the working box from the data,
   the particle radius estimated) and ``time_limit_min`` = ``--cryonb-minutes``, in a child
   process (:func:`benchmarks.abinitio.run_cryonb`), a map snapshot every :data:`SNAPSHOT_S`
   seconds scored against the truth (aligned, both hands, capped at the band limit fitted so
   far), and the final map capped at ``final_max_freq_invA``.
4. **RELION**: not run in this mode -- its SGD initial model at 128 px needs many hours on this
   machine (at 64 px, 15 Å: ~50 min per iteration from a poor reference, see
   :data:`benchmarks.abinitio.RELION_SCHEDULE`); the box-64 modes compare both programs.

Writes ``benchmarks/results/abinitio_box128/box128.json`` and prints the snapshot table, the
time-to-resolution table and the ratio to the true-pose limit.  The last line::

    RESULT box128 cryonb_res05=A truepose_res05=A ratio=R cryonb_s=S
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.abinitio import (
    _print_rows,
    _print_ttr,
    _write_json,
    run_cryonb,
    score_map,
    simulate,
)

BOX, PSIZE, SNR = 128, 2.8, 0.05
N_PARTICLES = 10000
SNAPSHOT_S = 240.0
#: Resolutions (Å, FSC 0.5 against the truth) of the time-to-resolution table
THRESHOLDS_A = (40.0, 30.0, 25.0, 20.0, 15.0, 12.0, 10.0, 8.0, 7.0, 6.0)
#: the goal: cryonb's FSC 0.5 within this factor of the true-pose reconstruction's
GOAL_RATIO = 1.25

ROOT = Path(__file__).resolve().parents[1]


def true_pose_reference(data: Path, out: Path, truth: np.ndarray, reuse: bool = False) -> dict:
    """Reconstruct from the simulation's images at their true poses and score the map
    (``reuse``: score the map an earlier run left in ``out``)."""
    from cryonb.io import read_mrc

    wall_s = None
    if not (reuse and (out / "map.mrc").exists()):
        exe = shutil.which("cryonb") or str(Path(sys.executable).with_name("cryonb"))
        t0 = time.perf_counter()
        subprocess.run([exe, "reconstruct", str(data / "particles.star"), "--known-poses",
                        "--out", str(out), "--no-progress"], check=True, capture_output=True)
        wall_s = round(time.perf_counter() - t0, 1)
    vol = np.asarray(read_mrc(out / "map.mrc", mmap=False).data, dtype=np.float64)
    return {"wall_s": wall_s, **score_map(vol, truth, None, PSIZE)}


def run(minutes: float = 120.0, n: int = N_PARTICLES, reuse_data: bool = False) -> dict:
    """The box-128 benchmark (see the module docstring); returns what box128.json holds."""
    from cryonb.io import read_mrc

    work = ROOT / "benchmarks" / "results" / "abinitio_box128"
    data = work / "data"
    if not (reuse_data and (data / "truth.mrc").exists()):
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        simulate(data, n, BOX, PSIZE, SNR)
        print(f"[box128] simulated {n} particles ({BOX} px, {PSIZE} Å/px, SNR {SNR}) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    truth = np.asarray(read_mrc(data / "truth.mrc", mmap=False).data, dtype=np.float64)
    reference = true_pose_reference(data, work / "truepose", truth, reuse=reuse_data)
    print(f"[box128] true poses: FSC 0.5 {reference['res05']['label']}", flush=True)
    shutil.rmtree(work / "cryonb", ignore_errors=True)
    result = run_cryonb(data, work / "cryonb", None, None, minutes, SNAPSHOT_S, truth,
                        config={"seed": 0}, pixel_size_A=PSIZE, thresholds=THRESHOLDS_A)
    final = result["final"]["res05"]["value_A"]
    limit = reference["res05"]["value_A"]
    ratio = None if final is None or limit is None else final / limit
    out = {"n_particles": n, "box": BOX, "pixel_size_A": PSIZE, "snr": SNR,
           "cryonb_minutes": minutes, "true_poses": reference, "cryonb": result,
           "ratio_to_true_poses": None if ratio is None else round(ratio, 3),
           "goal_met": ratio is not None and ratio <= GOAL_RATIO
           and result["solver_s"] <= 120 * 60}
    _write_json(work / "box128.json", out)
    report(out)
    return out


def report(out: dict) -> None:
    """Print the snapshot table, the time-to-resolution table and the RESULT line."""
    res = out["cryonb"]
    print(f"\ncryonb snapshots (FSC 0.5 vs truth, capped at the fitted band limit; "
          f"wall {res['wall_s']:.0f} s, solver {res['solver_s']:.0f} s, "
          f"map ready {res['map_ready_s']:.0f} s):")
    _print_rows(res["snapshots"])
    _print_ttr({"time_to_resolution": {"cryonb": res["time_to_resolution"]}})
    ref = out["true_poses"]
    print(f"\ntrue-pose reconstruction: FSC 0.5 {ref['res05']['label']}; cryonb final "
          f"{res['final']['res05']['label']}; ratio {out['ratio_to_true_poses']} "
          f"(goal <= {GOAL_RATIO} within 7200 s: {'met' if out['goal_met'] else 'not met'})")
    print(f"RESULT box128 cryonb_res05={res['final']['res05']['label']} "
          f"truepose_res05={ref['res05']['label']} ratio={out['ratio_to_true_poses']} "
          f"cryonb_s={res['wall_s']:.0f}")


def main(minutes: float | None, n: int | None, reuse_data: bool = False) -> int:
    run(120.0 if minutes is None else minutes, N_PARTICLES if n is None else n, reuse_data)
    return 0
