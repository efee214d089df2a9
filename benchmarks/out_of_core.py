"""Out of core: peak memory of simulating and reconstructing a 200,000-particle stack on disk.

Run from the repository root: ``python -m benchmarks.out_of_core [--quick] [--keep]`` (the full
run took 2.5 hours on 2 cores shared with other jobs: 97 min to simulate, 6 min to stream the
stack once, 10 min of SAGD, then 38 min for the pose pass over every particle).

1. **Data**: ``cryonb simulate --n 200000 --box 128 --pixel-size 2.8 --snr 0.05`` (the paper's
   synthetic GroEL geometry, bundled 1AON model and CTF table) into
   ``benchmarks/results/out_of_core_<mode>/data`` (git-ignored): one 13.1 GB float32 stack.
   Wall time and peak resident memory from ``/usr/bin/time -v``.
2. **Streaming**: one shuffled epoch over every particle in a child process:
   ``Dataset.from_star(...).normalized().fourier_cropped(64).batches(100, rng, prefetch=1)``
   (background mean, noise scale, Fourier crop to the working box, next batch read ahead):
   read rate and peak memory.
3. **Reconstruction**: ``cryonb reconstruct --box 64 --time-limit 10`` (ab initio: SAGD with
   importance sampling, gold-standard halves, then the MAP pose of every particle and
   ``particles.star``), under ``/usr/bin/time -v``.  The band limits are kept low (start 60 Å,
   split 50 Å, target 40 Å, origins searched to 20 Å) so that the final pose pass, which scores
   every one of the 200,000 particles on the full pose grid (most were never visited in 10
   minutes, so importance sampling cannot help), takes tens of minutes, not hours; the
   benchmark is about memory, not resolution.  The checkpoint's importance-sampling state
   and SAG gradient memory are measured from ``checkpoint.npz``.
4. Peak memory is reported against the size of the stack on disk.  On success the stack,
   the STAR file and the checkpoint are deleted (``--keep`` keeps them); after a failure they
   are kept and a rerun reuses the simulated data.

The last line is machine-readable: ``RESULT stack_GB=X peak_rss_GB=Y ratio=Z`` (the
reconstruction's peak resident memory over the stack size on disk, GB = 1e9 bytes).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOX, PSIZE, SNR, WORK_BOX = 128, 2.8, 0.05, 64
N_PARTICLES = {"full": 200_000, "quick": 2_000}
TIME_LIMIT_MIN = {"full": 10.0, "quick": 0.5}
RECONSTRUCT_ARGS = ["--box", str(WORK_BOX), "--start-res", "60", "--split-res", "50",
                    "--max-res", "40", "--shift-extent", "20", "--iterations-per-stage", "20",
                    "--batch-size", "100", "--checkpoint-min", "5", "--seed", "0",
                    "--no-progress"]


def _time_v(cmd: list[str], stdout: Path, stderr: Path) -> tuple[float, float]:
    """Run ``cmd`` under ``/usr/bin/time -v``: (wall s, peak resident bytes)."""
    t0 = time.perf_counter()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        rc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, stdout=out,
                            stderr=err).returncode
    wall = time.perf_counter() - t0
    text = stderr.read_text(errors="replace")
    if rc != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({rc}); see {stderr}:\n{text[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return wall, (int(match.group(1)) * 1024 if match else float("nan"))


def _cryonb() -> str:
    return shutil.which("cryonb") or str(Path(sys.executable).with_name("cryonb"))


def _simulate(data: Path, n: int) -> dict:
    """Simulate (or reuse a complete earlier simulation): wall time and peak memory."""
    record = data / "benchmark_simulate.json"
    stack = data / "particles.mrcs"
    expected = 1024 + n * BOX * BOX * 4
    if record.exists() and stack.exists() and stack.stat().st_size == expected:
        print(f"[out_of_core] reusing {stack}", flush=True)
        return json.loads(record.read_text())
    if data.exists():
        shutil.rmtree(data)
    free = shutil.disk_usage(ROOT).free
    if free < 1.3 * expected:
        raise RuntimeError(f"{free / 1e9:.1f} GB free on disk; the stack needs "
                           f"{expected / 1e9:.1f} GB")
    data.mkdir(parents=True)
    wall, peak = _time_v([_cryonb(), "simulate", "--n", str(n), "--box", str(BOX),
                          "--pixel-size", str(PSIZE), "--snr", str(SNR), "--out", str(data),
                          "--no-progress"], data / "simulate.out", data / "simulate.time")
    result = {"simulate_s": round(wall, 1), "simulate_peak_rss_GB": round(peak / 1e9, 3)}
    record.write_text(json.dumps(result))
    return result


def _stream_worker(star: str, box: int, batch_size: int) -> int:
    """Child: one shuffled epoch of preprocessed minibatches; prints a JSON line."""
    import numpy as np

    from cryonb.dataset import Dataset

    t0 = time.perf_counter()
    ds = Dataset.from_star(star)
    raw_box = ds.box_size
    ds = ds.normalized().fourier_cropped(box)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    n, checksum = 0, 0.0
    for batch in ds.batches(batch_size, np.random.default_rng(0), prefetch=1):
        n += len(batch.indices)
        checksum += float(batch.images[:, 0, 0].sum())
    seconds = time.perf_counter() - t0
    print(json.dumps({"n_images": n, "open_s": t_open, "epoch_s": seconds,
                      "raw_GB": n * raw_box**2 * 4 / 1e9, "checksum": checksum}))
    return 0


def _checkpoint_parts(path: Path) -> dict:
    """Bytes of the importance-sampling state and the SAG gradient memory in a checkpoint."""
    sampler = memory = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if "/sampler/" in info.filename:
                sampler += info.file_size
            elif "/memory/" in info.filename:
                memory += info.file_size
    return {"is_state_MB": round(sampler / 1e6, 1), "sag_memory_MB": round(memory / 1e6, 1)}


def run(quick: bool = False, keep: bool = False) -> dict:
    """Simulate, stream, reconstruct; returns ``{"rows": [...], "result": {...}}``."""
    mode = "quick" if quick else "full"
    n = N_PARTICLES[mode]
    work = ROOT / "benchmarks" / "results" / f"out_of_core_{mode}"
    data, rec = work / "data", work / "reconstruction"
    work.mkdir(parents=True, exist_ok=True)
    sim = _simulate(data, n)
    stack_bytes = (data / "particles.mrcs").stat().st_size
    print(f"[out_of_core] simulated {n} particles ({stack_bytes / 1e9:.2f} GB) in "
          f"{sim['simulate_s']:.0f} s, peak {sim['simulate_peak_rss_GB']:.2f} GB", flush=True)

    star = str(data / "particles.star")
    wall, stream_peak = _time_v([sys.executable, "-m", "benchmarks.out_of_core", "--stream",
                                 star], work / "stream.out", work / "stream.time")
    stream = json.loads((work / "stream.out").read_text().strip().splitlines()[-1])
    print(f"[out_of_core] streamed one epoch in {stream['epoch_s']:.0f} s, peak "
          f"{stream_peak / 1e9:.2f} GB", flush=True)

    if rec.exists():
        shutil.rmtree(rec)
    rec_wall, rec_peak = _time_v(
        [_cryonb(), "reconstruct", star, "--out", str(rec), "--time-limit",
         str(TIME_LIMIT_MIN[mode]), *RECONSTRUCT_ARGS], work / "reconstruct.out",
        work / "reconstruct.time")
    summary = json.loads((rec / "run.json").read_text())
    parts = _checkpoint_parts(rec / "checkpoint.npz")
    iterations = summary["iterations"]
    visited = (iterations["common"] + iterations["half1"] + iterations["half2"]) * 100
    print(f"[out_of_core] reconstructed in {rec_wall:.0f} s, peak {rec_peak / 1e9:.2f} GB",
          flush=True)

    gb = stack_bytes / 1e9
    rows = [
        {"step": "simulate", "n_particles": n, "box": BOX, "stack_GB": round(gb, 2),
         "wall_s": sim["simulate_s"], "peak_rss_GB": sim["simulate_peak_rss_GB"],
         "peak_over_stack": round(sim["simulate_peak_rss_GB"] / gb, 4)},
        {"step": "stream one epoch", "working_box": WORK_BOX, "batch": 100,
         "wall_s": round(wall, 1), "epoch_s": round(stream["epoch_s"], 1),
         "read_GB_per_s": round(stream["raw_GB"] / stream["epoch_s"], 3),
         "peak_rss_GB": round(stream_peak / 1e9, 3),
         "peak_over_stack": round(stream_peak / stack_bytes, 4)},
        {"step": "reconstruct", "working_box": WORK_BOX, "time_limit_min": TIME_LIMIT_MIN[mode],
         "wall_s": round(rec_wall, 1), "sagd_s": round(summary["wall_time_s"], 1),
         "iterations": iterations, "images_visited": visited,
         "epochs_of_minibatches": round(visited / n, 3), "pose_pass_images": n,
         **parts, "peak_rss_GB": round(rec_peak / 1e9, 3),
         "peak_over_stack": round(rec_peak / stack_bytes, 4)},
    ]
    result = {"stack_GB": round(gb, 2), "peak_rss_GB": round(rec_peak / 1e9, 3),
              "ratio": round(rec_peak / stack_bytes, 4)}
    if not keep:
        shutil.rmtree(data)
        for name in ("checkpoint.npz", "particles.star"):
            (rec / name).unlink(missing_ok=True)
    out = {"rows": rows, "result": result}
    (work / "summary.json").write_text(json.dumps(out, indent=2))
    return out


def report(results: dict) -> None:
    for row in results["rows"]:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    r = results["result"]
    print(f"RESULT stack_GB={r['stack_GB']} peak_rss_GB={r['peak_rss_GB']} ratio={r['ratio']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.out_of_core",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 particles (smoke test)")
    parser.add_argument("--keep", action="store_true", help="keep the stack and checkpoint")
    parser.add_argument("--stream", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stream:
        return _stream_worker(args.stream, WORK_BOX, 100)
    report(run(quick=args.quick, keep=args.keep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
