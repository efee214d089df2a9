"""Dask: speed-up of 2 local workers over 1, and the per-iteration overhead of the cluster.

Run from the repository root: ``python -m benchmarks.distributed`` (about 10 minutes on 2 cores).

Data: 600 GroEL-GroES particles (bundled 1AON model, real 200 kV CTFs, B = 500 Å², SNR 0.05,
origins N(0, 8.4 Å)) simulated into an MRC stack in a temporary folder (deleted at the end) and
read back as a stack-backed, normalised :class:`~cryonb.dataset.Dataset`: box 64 at 5.6 Å, the
workers read their own shards from the file.  The importance sampler is warmed up once (every
particle's posterior under the true map at 1/40 Å^-1, exhaustive) with the paper's final
schedule (alpha = 0.05, T = 1.25), so the SAGD iterations are in the steady, importance-sampled
regime of a run; the map starts from the true map low-passed to 1/40 Å^-1.

Configurations, each in its own child process from the same saved state (same seed, same work;
two rounds over all four, interleaved, keeping each one's best time, because the machine is
shared with other jobs):

* ``inprocess_1t``: the in-process objective with 1 thread (``NUMBA_NUM_THREADS``,
  ``OMP/OPENBLAS/MKL_NUM_THREADS`` = 1) -- the same compute resources as one Dask worker;
* ``inprocess_2t``: the in-process objective with both cores (the default);
* ``dask_1w`` / ``dask_2w``: ``SAGDSolver(..., client=client)`` on a ``LocalCluster`` of 1 / 2
  single-threaded worker processes (the driver in the child process).

Rows
----
* ``sagd``: ``K = 5`` SAGD iterations (batch 100; the 100 held-out images and the line search
  once, at the 5th) at band limit 1/30 Å^-1, after one untimed iteration (numba's cache,
  shards sent, grids built).  ``s_per_it`` is the mean wall time per iteration;
  ``speedup_2w_vs_1w`` = dask_1w / dask_2w; ``overhead_s_per_it`` = dask_1w - inprocess_1t per
  iteration (scheduling, scatter of the map, results back, sampling on the driver not
  overlapping); ``vs_inprocess_2t`` = inprocess_2t / dask_2w (what the cluster gains on this
  machine over the default in-process run); ``driver_is_frac`` is the fraction of dask_2w's
  time spent in ``ImportanceSampler.sample`` / ``update`` on the driver (serial);
  ``max_rel_diff`` compares the final map with inprocess_2t's (float32 likelihoods).
* ``exhaustive``: one evaluation with gradient of a 100-image batch over the whole 1/40 Å^-1
  grid (no importance sampling: the first visit of a particle) -- the compute-bound case.

Why 2 workers give less than 2x here: each worker Fourier-transforms the whole (padded) map for
every evaluation and back-projects its gradient, a fixed cost per worker that does not shrink
with the shard, and importance sampling makes the per-image part small (about 0.2 % of the grid
evaluated).  Bigger minibatches (or fewer workers per minibatch) amortise it; the exhaustive row
shows the compute-bound limit.

The last line is machine-readable:
``RESULT speedup_2_vs_1=X overhead_s_per_iteration=Y speedup_exhaustive_2_vs_1=Z``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BOX, PSIZE, N_PARTICLES, SNR = 64, 5.6, 600, 0.05
BATCH, HELDOUT, K_ITERATIONS, ROUNDS = 100, 100, 5, 2
W_WARM, W_RUN = 1 / 40, 1 / 30
ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}
CONFIGS = {"inprocess_1t": (0, ONE_THREAD), "inprocess_2t": (0, {}), "dask_1w": (1, {}),
           "dask_2w": (2, {})}


# ----------------------------------------------------------------------------- set-up
def _dataset(work: Path):
    from cryonb.synthetic.particles import load_simulation

    ds = load_simulation(work / "data")
    return ds.normalized()


def _objective(ds, rng_seed: int, sampler: bool = True):
    from cryonb.importance import ImportanceSampler, ISSchedule
    from cryonb.objective import MarginalObjective, QuadratureOptions

    s = ImportanceSampler(len(ds), ISSchedule.constant(0.05, 1.25)) if sampler else None
    return MarginalObjective(ds, ds.estimate_noise_sigma(), rng=np.random.default_rng(rng_seed),
                             sampler=s, quadrature=QuadratureOptions(
                                 particle_radius_A=0.4 * BOX * PSIZE, shift_sigma_A=8.4,
                                 shift_extent_A=20.0))


def _prepare(work: Path) -> dict:
    """Simulate the stack, warm the sampler up on the true map, save the starting state."""
    from cryonb.checkpoint import save_checkpoint
    from cryonb.fourier import lowpass
    from cryonb.samples import sample_path
    from cryonb.synthetic.density import DensityParams, density_from_file
    from cryonb.synthetic.particles import (
        SimulationParams,
        load_simulation,
        read_ctf_table,
        simulate_to_files,
    )

    rng = np.random.default_rng(0)
    volume = density_from_file(sample_path("1aon.pdb.gz"),
                               DensityParams(box_size=BOX, pixel_size_A=PSIZE))
    table = read_ctf_table(sample_path("ctf_200kV_cryosparc_P12_J24.csv"))
    simulate_to_files(volume, PSIZE, SimulationParams(n_particles=N_PARTICLES, snr=SNR), rng,
                      work / "data", ctf_table=table, progress=False)
    raw = load_simulation(work / "data")
    # the map in the units of the normalised images (noise sigma 1)
    truth = np.asarray(raw.truth.volume, dtype=np.float64) / raw.estimate_noise_sigma()
    ds = _dataset(work)
    obj = _objective(ds, 1)
    obj.set_band_limit(W_WARM)
    t0 = time.perf_counter()
    for start in range(0, len(ds), BATCH):
        obj.evaluate(truth, np.arange(start, min(len(ds), start + BATCH)), gradient=False,
                     record=True, iteration=0)
    warm_s = time.perf_counter() - t0
    start_map = np.maximum(lowpass(truth, PSIZE, W_WARM), 0.0)
    save_checkpoint(work / "state.npz", {"objective": obj.state_dict(), "volume": start_map,
                                         "truth": truth})
    return {"warmup_s": round(warm_s, 1)}


# ----------------------------------------------------------------------------- one config
def _child(mode: str, work: Path) -> dict:
    """Time K SAGD iterations and one exhaustive evaluation in this process."""
    from cryonb.checkpoint import load_checkpoint
    from cryonb.distributed import DistributedObjective, dask_client
    from cryonb.sagd import SAGDParams, SAGDSolver

    n_workers = CONFIGS[mode][0]
    state = load_checkpoint(work / "state.npz")
    ds = _dataset(work)
    with dask_client(n_workers=n_workers or None, dashboard_address=None) as client:
        obj = _objective(ds, 2)
        obj.load_state_dict(state["objective"])  # the warmed-up sampler and its generator
        params = SAGDParams(batch_size=BATCH, n_heldout=HELDOUT, start_max_freq_invA=W_RUN,
                            target_max_freq_invA=W_RUN, iterations_per_stage=10**6,
                            heldout_every=5, max_iterations=10**6)
        solver = SAGDSolver(obj, n_images=len(ds), box_size=BOX, params=params,
                            rng=np.random.default_rng(3), initial_volume=state["volume"],
                            client=client)
        solver.step()  # untimed: caches, shards, grids
        sampler, driver_s = obj.sampler, [0.0]
        for name in ("sample", "update"):
            method = getattr(sampler, name)

            def timed(*args, _method=method, **kwargs):
                t = time.perf_counter()
                try:
                    return _method(*args, **kwargs)
                finally:
                    driver_s[0] += time.perf_counter() - t

            setattr(sampler, name, timed)
        t0 = time.perf_counter()
        for _ in range(K_ITERATIONS):
            solver.step()
        sagd_s = time.perf_counter() - t0

        exhaustive = _objective(ds, 4, sampler=False)
        ex_obj = exhaustive if client is None else DistributedObjective(exhaustive, client)
        ex_obj.set_band_limit(W_WARM)
        idx = np.arange(BATCH)
        ex_obj.evaluate(state["volume"], idx[:4], gradient=True, record=False)  # warm-up
        t0 = time.perf_counter()
        ev = ex_obj.evaluate(state["volume"], idx, gradient=True, record=False)
        exhaustive_s = time.perf_counter() - t0
    np.save(work / f"final_{mode}.npy", solver.volume)
    return {"sagd_s": sagd_s, "driver_is_s": driver_s[0], "exhaustive_s": exhaustive_s,
            "exhaustive_nll": float(ev.nll.sum()),
            "fraction_evaluated": float(np.mean([r["fraction_evaluated"]
                                                 for r in solver.state.records[1:]]))}


def _run_child(mode: str, work: Path) -> dict:
    env = {**os.environ, **CONFIGS[mode][1]}
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".venv" / "numba_cache"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.distributed", "--child", mode,
                           "--work", str(work)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def run() -> dict:
    """All configurations in one run; rows of seconds and the ratios between them."""
    work = Path(tempfile.mkdtemp(prefix="cryonb-bench-dask-"))
    try:
        info = _prepare(work)
        # rounds interleave the configurations; the best of each is kept (shared machine)
        runs = [{mode: _run_child(mode, work) for mode in CONFIGS} for _ in range(ROUNDS)]
        res = {m: {**min((r[m] for r in runs), key=lambda x: x["sagd_s"]),
                   "exhaustive_s": min(r[m]["exhaustive_s"] for r in runs)} for m in CONFIGS}
        ref = np.load(work / "final_inprocess_2t.npy")
        diffs = {m: float(np.abs(np.load(work / f"final_{m}.npy") - ref).max()
                          / np.abs(ref).max()) for m in CONFIGS}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_it = {m: res[m]["sagd_s"] / K_ITERATIONS for m in CONFIGS}
    rows = [{"row": "sagd", "config": m, "s_per_it": round(per_it[m], 3),
             "driver_is_frac": round(res[m]["driver_is_s"] / res[m]["sagd_s"], 3),
             "fraction_evaluated": round(res[m]["fraction_evaluated"], 4),
             "max_rel_diff": f"{diffs[m]:.1e}"} for m in CONFIGS]
    nll_ref = res["inprocess_2t"]["exhaustive_nll"]
    rows += [{"row": "exhaustive", "config": m, "s": round(res[m]["exhaustive_s"], 2),
              "nll_rel_diff": f"{abs(res[m]['exhaustive_nll'] / nll_ref - 1):.1e}"}
             for m in CONFIGS]
    speedup = per_it["dask_1w"] / per_it["dask_2w"]
    overhead = per_it["dask_1w"] - per_it["inprocess_1t"]
    ex_speedup = res["dask_1w"]["exhaustive_s"] / res["dask_2w"]["exhaustive_s"]
    rows.append({"row": "summary", "speedup_2w_vs_1w": round(speedup, 2),
                 "overhead_s_per_it": round(overhead, 3),
                 "overhead_frac_of_1t": round(overhead / per_it["inprocess_1t"], 3),
                 "vs_inprocess_2t": round(per_it["inprocess_2t"] / per_it["dask_2w"], 2),
                 "exhaustive_speedup_2w_vs_1w": round(ex_speedup, 2),
                 "exhaustive_overhead_frac": round(res["dask_1w"]["exhaustive_s"]
                                                   / res["inprocess_1t"]["exhaustive_s"] - 1, 3),
                 **info})
    print(f"RESULT speedup_2_vs_1={speedup:.2f} overhead_s_per_iteration={overhead:.3f} "
          f"speedup_exhaustive_2_vs_1={ex_speedup:.2f}")
    return {"rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed")
    parser.add_argument("--child", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.work)))
        return 0
    for row in run()["rows"]:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
