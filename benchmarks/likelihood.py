"""Marginal likelihood + gradient throughput against the machine's GEMM rate, and the IS speed-up.

Run from the repository root: ``python -m benchmarks.likelihood`` (about 5 minutes on 2 cores).
Everything is measured in one run on synthetic GroEL-GroES images (bundled 1AON model, real
200 kV CTFs, B = 500 Å², SNR 0.05, origins N(0, 8.4 Å)), at box 64 (5.6 Å) and box 128
(2.8 Å), two band limits each, with the reference's grids (``Quadrature.for_band_limit``:
angular spacing from the box, shift prior sigma 10 Å truncated at 60 Å).

Columns
-------
* ``points/s``: (rotation, shift, image) terms of Eq. (4) per second for the **exhaustive**
  marginal likelihood **with its gradient** (``MarginalLikelihood.evaluate(gradient=True)`` on
  a batch of ``B_rate`` images).  The exhaustive grid is too large to run whole, so the rate is
  measured on a subset of ``n_dir`` directions (x all in-plane angles x all shifts: the same
  code path, block sizes and batch as the full grid; the score cache is disabled when the full
  grid would not fit it).  The costs paid once per call, whatever the number of points (the
  images' ``Z`` matrices, the 3D FFT of the gradient's adjoint, buffers), are measured
  separately by the same call on one rotation (``t_call_s``) and taken out:
  ``points/s = points / (t - t_call)``, the rate of the full grid, where they are amortised
  over ~1e9 points per image.  ``t_full`` extrapolates the time of one exhaustive evaluation
  per image (``t_call / B_rate`` included).
* ``grad_terms``: fraction of the terms whose posterior entered the gradient (the engine skips
  the terms whose posterior underflows to 0 in float32 and takes the others from the value
  pass, see ``cryonb.likelihood``; here, on a subset of random directions normalised on
  itself, the posterior is much less concentrated than on the full grid).
* ``GFLOP/s``: the useful GEMM work done, ``4 Mh`` flops per term of the score GEMM
  ``(rotations x 2Mh) @ (2Mh x images*shifts)`` (``Mh`` = half-plane frequencies; real-packed:
  ``Re<a, b>`` as one real dot product of length ``2Mh``) plus ``4 Mh`` per term of the
  gradient product of the posterior with the same data (only the terms it was computed for,
  ``grad_terms``); 2 flops per multiply-add.  Slicing, exponentials, back-projection and any
  recomputation are overhead, not counted.  (Before the gradient skipped terms this was
  ``8 Mh`` per term.)
* ``gemm_frac``: GFLOP/s over the rate of a complex64 ``numpy.matmul`` measured in this run with
  the shapes of one block of the engine: ``(rotations of a block x Mh) @ (Mh x images*shifts)``,
  8 flops per complex multiply-add.  ``sgemm_frac``: the same over the rate of the GEMM the
  engine actually runs, float32 ``(rotations x 2Mh) @ (2Mh x images*shifts)`` (transposed
  right operand), 2 flops per multiply-add, measured in the same way.  ``frac_call``:
  ``gemm_frac`` with the per-call costs included (the ratio for this one call of ``n_dir``
  directions).
* ``is_speedup``: exhaustive points / points evaluated per image by importance sampling at
  ``s_B = 10``; ``is_time_x``: the time speed-up, extrapolated exhaustive time / measured IS
  time of ``MarginalLikelihood.evaluate`` (value only, per image); ``is_gap`` = ``is_speedup /
  is_time_x``, how much more an IS point costs than an exhaustive one (slices are shared by
  every image and shift of the exhaustive grid but by only ~10 shifts of one image under IS);
  ``is_time_x_all``: the same with the sampler's draws (``ImportanceSampler.sample``)
  included; ``is_phases``: the fractions of the IS evaluation time in the phases of
  ``LikelihoodResult.timings`` (slicing / scores / sweeps / gradient / other).
  ``is_rel_err``: RMS over images and 2 draws of ``|log p_IS - log p| / |log p|``.
  Proposals: the posterior of one evaluation with the **true** map is recorded in an
  ``ImportanceSampler`` (``alpha = 0.05``, ``T = 1.25``: the paper's final values), then
  samples are drawn from it (the converged regime of Fig. 6/7).
* ``exact``: what ``log p`` is compared with.  ``full``: the exhaustive sum.  ``restricted``:
  when the full grid is too large, the exact sum over the points near each image's true pose
  (``cryonb.is_study.restricted_subsets``): directions within 4 grid spacings of the true
  direction and of its 6 mates under the map's C7 symmetry about z (measured correlation
  0.97), all in-plane angles, shifts within 10 Å of the true origin.  The same evaluation
  provides the recorded posterior.  ``edge`` is the posterior mass on the outer part of that
  region (directions beyond 3 spacings of every mate / shifts beyond 7.5 Å, max over images):
  when it is small the posterior has decayed well inside the region, and the mass left
  outside is smaller still.  The IS draws are not restricted (they cover the whole grid).

Threads: ``OMP_WAIT_POLICY`` is set to ``PASSIVE`` (unless already set) so that idle OpenMP
threads of numba's kernels do not spin while OpenBLAS runs on the same cores (measured: a few
tens of per cent faster at box 64, 1/40 Å^-1, than ``ACTIVE`` on this shared 2-core machine).
``OPENBLAS_NUM_THREADS=1`` was tried too: within the noise of the other jobs' load (faster at
1/40, slower at 1/20), so OpenBLAS keeps its default (all cores).  The GEMM reference is the
best of 3 runs before and after each measurement, the engine the best of 2, which keeps the
ratio steadier under load.

The last line is machine-readable: ``RESULT gemm_fraction=F is_speedup=X is_rel_error=E`` for
box 128 at the final band limit 1/10 Å^-1 with ``s_B = 10`` (``gemm_frac``: complex64 reference,
per-call costs amortised).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy / numba start threads

import time

import numpy as np

from benchmarks import best_time

CONFIGS = [  # (box, pixel size Å, band limit 1/Å)
    (64, 5.6, 1 / 40),
    (64, 5.6, 1 / 20),
    (128, 2.8, 1 / 20),
    (128, 2.8, 1 / 10),
]
B_RATE = 16          # images in the throughput batch
B_IS = 8             # images in the importance-sampling study
ESS_SCALE = 10.0
FULL_EXACT_FLOPS = 1e12   # above this, the exact sum is restricted (see the docstring)
RATE_FLOPS = 1e11           # target work of one throughput measurement
SNR = 0.05
PHASES = ("slicing_s", "scores_s", "sweeps_s", "gradient_s", "other_s")


def _best(fn, repeat=2):
    return best_time(fn, repeat)


def _cgemm_gflops(rows, inner, cols):
    """complex64 ``(rows x inner) @ (inner x cols)``, 8 flops per multiply-add."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((rows, inner)) + 1j * rng.standard_normal((rows, inner))).astype(
        np.complex64)
    b = (rng.standard_normal((inner, cols)) + 1j * rng.standard_normal((inner, cols))).astype(
        np.complex64)
    a @ b  # warm up
    t = _best(lambda: a @ b, repeat=3)
    return 8.0 * rows * inner * cols / t / 1e9


def _sgemm_gflops(rows, inner, cols):
    """float32 ``(rows x inner) @ (inner x cols)`` with the right operand stored transposed,
    as the engine's score GEMM; 2 flops per multiply-add."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, inner), dtype=np.float32)
    b = rng.standard_normal((cols, inner), dtype=np.float32)
    out = np.empty((rows, cols), dtype=np.float32)
    np.matmul(a, b.T, out=out)  # warm up
    t = _best(lambda: np.matmul(a, b.T, out=out), repeat=3)
    return 2.0 * rows * inner * cols / t / 1e9


def _simulate(box, pixel_size_A, n, rng):
    """Noisy images of the 1AON map with the true poses, origins and CTFs (in memory)."""
    from cryonb.image_model import ImageModel
    from cryonb.samples import sample_path
    from cryonb.synthetic.density import DensityParams, density_from_file
    from cryonb.synthetic.particles import SimulationParams, draw_particles, read_ctf_table

    volume = density_from_file(sample_path("1aon.pdb.gz"),
                               DensityParams(box_size=box, pixel_size_A=pixel_size_A))
    table = read_ctf_table(sample_path("ctf_200kV_cryosparc_P12_J24.csv"))
    truth = draw_particles(SimulationParams(n_particles=n), rng, table)
    model = ImageModel(box, pixel_size_A)
    clean = model.forward(volume.astype(np.float64), truth.rotations, truth.shifts_A, truth.ctf)
    sigma = float(np.sqrt(clean.var() / SNR))
    images = clean + rng.normal(0.0, sigma, clean.shape)
    return volume, images.astype(np.float32), truth.ctf, truth, sigma


class _TimedEngine:
    """The engine with the wall time of its ``evaluate`` calls summed (``seconds``) and the
    phases of :attr:`LikelihoodResult.timings` summed too."""

    def __init__(self, lik):
        self.lik, self.quadrature = lik, lik.quadrature
        self.seconds, self.timings = 0.0, {}

    def evaluate(self, *args, **kwargs):
        t0 = time.perf_counter()
        res = self.lik.evaluate(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        for k, v in res.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        return res


def _block_shape(lik, n_img, mh):
    """Rows of one block, image columns of one group and whether the scores are cached, as
    ``MarginalLikelihood`` chooses them for the full grid."""
    q = lik.quadrature
    sizes = [len(g.images) for g in lik._groups(n_img, None, mh, np.float32)[0]]
    k_d, keep = lik._dense_plan(sizes, q.n_directions, q.n_inplane, q.n_shifts, 4, True)
    return k_d * q.n_inplane, sizes[0], keep


def _edge_mass(res, subsets, q, truth_rots, truth_shifts, sym, cap_inner, shift_inner):
    """Posterior mass outside the inner part of each restricted region, directions and
    shifts (max over images)."""
    edge_d, edge_s = [], []
    for b, sub in enumerate(subsets):
        dirs = (sym @ truth_rots[b])[:, :, 2]
        ang = np.arccos(np.clip(q.directions[sub.directions] @ dirs.T, -1, 1)).min(axis=1)
        outer_d = ang > cap_inner * q.direction_spacing_rad
        dist = np.linalg.norm(q.shifts_A[sub.shifts] - truth_shifts[b], axis=1)
        outer_s = dist > shift_inner
        p_d = np.exp(res.log_marginal_directions[b, sub.directions])
        p_s = np.exp(res.log_marginal_shifts[b, sub.shifts])
        edge_d.append(p_d[outer_d].sum())
        edge_s.append(p_s[outer_s].sum())
    return float(np.max(edge_d)), float(np.max(edge_s))


def _one_config(box, pixel_size_A, w, rng):
    from cryonb.image_model import ImageModel
    from cryonb.importance import ImportanceSampler, ISSchedule
    from cryonb.is_study import (
        cyclic_symmetry,
        is_error_curve,
        record_posteriors,
        restricted_subsets,
    )
    from cryonb.likelihood import MarginalLikelihood, PoseSubset
    from cryonb.quadrature import Quadrature

    n_img = max(B_RATE, B_IS)
    volume, images, ctf, truth, sigma = _simulate(box, pixel_size_A, n_img, rng)
    model = ImageModel(box, pixel_size_A, max_freq_invA=w)
    q = Quadrature.for_band_limit(w, box_size=box, pixel_size_A=pixel_size_A)
    probe = MarginalLikelihood(model, q)
    mh = len(probe.half_plane[0])
    flops_per_point = 8.0 * mh   # score and gradient products, for the size of the subset
    # the full grid's cache decision, reproduced on the subset
    cache = probe.cache_bytes if _block_shape(probe, B_RATE, mh)[2] else 0
    lik = MarginalLikelihood(model, q, cache_bytes=cache)
    prep = lik.prepare(images, ctf, sigma)
    vol_ft = model.projector.volume_to_fourier(volume)  # float32 -> complex64

    # ---- exhaustive rate on a subset of directions
    per_dir = q.n_inplane * q.n_shifts * B_RATE * flops_per_point
    n_dir = int(np.clip(round(RATE_FLOPS / per_dir), 2, q.n_directions))
    dirs = np.sort(rng.choice(q.n_directions, n_dir, replace=False))
    sub = PoseSubset(dirs, np.arange(q.n_inplane), np.arange(q.n_shifts), np.zeros(n_dir),
                     np.zeros(q.n_inplane), np.zeros(q.n_shifts))
    batch = prep.subset(np.arange(B_RATE))
    warm = PoseSubset(dirs[:1], sub.inplane, sub.shifts, np.zeros(1), sub.log_is_inplane,
                      sub.log_is_shifts)
    lik.evaluate(vol_ft, batch.subset([0, 1]), subsets=[warm, warm], gradient=True)
    rows, group, _ = _block_shape(lik, B_RATE, mh)
    gemm = _cgemm_gflops(rows, mh, group * q.n_shifts)
    sgemm = _sgemm_gflops(rows, 2 * mh, group * q.n_shifts)
    # per-call costs: the same call on one rotation (one direction, one in-plane angle)
    one = PoseSubset(dirs[:1], sub.inplane[:1], sub.shifts, np.zeros(1), np.zeros(1),
                     sub.log_is_shifts)
    t_call = _best(lambda: lik.evaluate(vol_ft, batch, subsets=[one] * B_RATE, gradient=True),
                   repeat=2)
    res_box = []

    def run_rate():
        res_box[:] = [lik.evaluate(vol_ft, batch, subsets=[sub] * B_RATE, gradient=True)]

    t_rate = _best(run_rate, repeat=2)
    t_value = _best(lambda: lik.evaluate(vol_ft, batch, subsets=[sub] * B_RATE), repeat=1)
    gemm = max(gemm, _cgemm_gflops(rows, mh, group * q.n_shifts))
    sgemm = max(sgemm, _sgemm_gflops(rows, 2 * mh, group * q.n_shifts))
    points = n_dir * q.n_inplane * q.n_shifts * B_RATE
    grad_terms = float(res_box[0].n_gradient.sum())
    useful_flops = 4.0 * mh * (points + grad_terms)
    t_points = max(t_rate - t_call, 1e-9)
    rate = points / t_points
    gflops = useful_flops / t_points / 1e9
    t_full = q.size / rate + t_call / B_RATE  # s per image, value + gradient
    # value only; its per-call costs are at most t_call (no adjoint), so this errs low
    t_full_value = q.size * max(t_value - t_call, 1e-9) / points + t_call / B_RATE

    # ---- importance sampling at s_B = 10 from a recorded posterior
    ids = np.arange(B_IS)
    is_batch = prep.subset(ids)
    sampler = ImportanceSampler(B_IS, ISSchedule.constant(0.05, 1.25), ess_scale=ESS_SCALE)
    full_flops = q.size * B_IS * 4.0 * mh
    if full_flops <= FULL_EXACT_FLOPS:
        exact_kind, subsets = "full", None
    else:
        sym = cyclic_symmetry(7)
        exact_kind = "restricted"
        subsets = restricted_subsets(q, truth.rotations[ids], truth.shifts_A[ids],
                                     symmetry=sym, cap_spacings=4.0, shift_radius_A=10.0)
    t0 = time.perf_counter()
    exact = record_posteriors(lik, vol_ft, is_batch, sampler, ids, subsets=subsets)
    t_exact = time.perf_counter() - t0
    if subsets is not None:
        edge = _edge_mass(exact, subsets, q, truth.rotations[ids], truth.shifts_A[ids],
                          cyclic_symmetry(7), 3.0, 7.5)
    timed = _TimedEngine(lik)
    t0 = time.perf_counter()
    curve = is_error_curve(timed, vol_ft, is_batch, sampler, ids, [ESS_SCALE],
                           np.random.default_rng(1), exact=exact, n_trials=2)
    t_is_all = (time.perf_counter() - t0) / (2 * B_IS)
    t_is = timed.seconds / (2 * B_IS)
    is_speedup = float(curve.speedup[0])
    is_time_x = t_full_value / t_is
    return {
        "box": box, "px_A": pixel_size_A, "w": f"1/{1 / w:.0f}",
        "grid": f"{q.n_directions}x{q.n_inplane}x{q.n_shifts}", "points": f"{q.size:.2e}",
        "Mh": mh, "n_dir": n_dir, "points/s": f"{rate:.3g}", "t_call_s": round(t_call, 2),
        "grad_terms": f"{grad_terms / points:.2g}", "GFLOP/s": round(gflops, 1),
        "gemm_GFLOP/s": round(gemm, 1), "gemm_frac": round(gflops / gemm, 3),
        "sgemm_GFLOP/s": round(sgemm, 1), "sgemm_frac": round(gflops / sgemm, 3),
        "frac_call": round(useful_flops / t_rate / 1e9 / gemm, 3),
        "t_full_s": f"{t_full:.3g}", "exact": exact_kind,
        "is_speedup": f"{is_speedup:.4g}",
        "is_time_x": f"{is_time_x:.3g}",
        "is_gap": f"{is_speedup / is_time_x:.3g}",
        "is_time_x_all": f"{t_full_value / t_is_all:.3g}",
        "is_phases": "/".join(f"{timed.timings.get(k, 0.0) / t_is / (2 * B_IS):.2f}"
                              for k in PHASES),
        "is_rel_err": f"{float(curve.relative_rmse[0]):.2e}",
        "is_err_nats": f"{float(curve.abs_rmse[0]):.3g}",
        "edge": "-" if subsets is None else f"{edge[0]:.0e}/{edge[1]:.0e}",
        "t_exact_s": round(t_exact, 1),
    }


def run(verbose: bool = False) -> dict:
    """All configurations; ``rows`` for ``python -m benchmarks``."""
    rng = np.random.default_rng(0)
    rows = []
    for box, px, w in CONFIGS:
        t0 = time.perf_counter()
        row = _one_config(box, px, w, rng)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        if verbose:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return {"rows": rows}


def main() -> int:
    t0 = time.perf_counter()
    print(__doc__.strip().splitlines()[0])
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(default)')} "
          f"cores={os.cpu_count()}")
    rows = run(verbose=True)["rows"]
    cols = ["box", "w", "grid", "points", "Mh", "points/s", "t_call_s", "grad_terms",
            "GFLOP/s", "gemm_GFLOP/s", "gemm_frac", "sgemm_GFLOP/s", "sgemm_frac", "frac_call",
            "t_full_s", "exact", "is_speedup", "is_time_x", "is_gap", "is_time_x_all",
            "is_phases", "is_rel_err", "is_err_nats", "edge"]
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print()
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).rjust(width[c]) for c in cols))
    print(f"total {time.perf_counter() - t0:.0f} s")
    final = rows[-1]
    print(f"RESULT gemm_fraction={final['gemm_frac']} is_speedup={final['is_speedup']} "
          f"is_time_x={final['is_time_x']} is_rel_error={final['is_rel_err']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
