"""Honest resolution: cryonb's reported half-map FSC 0.143 against the truth, on RELION-made data.

Run from the repository root::

    .venv/bin/python -m benchmarks.honest_resolution               # data (cached) + 1 and 4 min
    .venv/bin/python -m benchmarks.honest_resolution --only-data   # make and verify the data only
    .venv/bin/python -m benchmarks.honest_resolution --minutes 1 4 10 --remake-data

(also ``./run bench --only honest_resolution``, with the defaults).  Everything is written under
``benchmarks/results/honest_resolution/`` (git-ignored).

Question: is the resolution ``cryonb reconstruct`` reports for an ab initio run -- the
gold-standard half-map FSC 0.143 of its ``run.json`` (``half_map_resolution_A_0143``; null,
with ``half_map_null_reason``, when the halves are not independent) -- the resolution the map
actually has, i.e. its FSC 0.5 against the truth?  Asked on a data set that cryonb did **not**
simulate (the images are RELION's projections), with ``cryonb reconstruct``'s default options
and only ``--time-limit`` set.

1. **Data** (made once into ``data/``; ``--remake-data`` redoes it; reused only when its
   ``data.json`` records the same ``--n``, ``--snr`` and seed).  The GroEL-GroES density of the
   bundled atomic model ``data_samples/1aon.pdb.gz`` at 64 px, 5.6 Å/px
   (:func:`cryonb.synthetic.density.density_from_file`, as ``cryonb simulate`` makes it),
   written as ``truth.mrc``.  ``--n`` (10,000) poses uniform on SO(3)
   (:func:`cryonb.rotations.random_rotations`; written as RELION ZYZ Euler angles by
   :func:`cryonb.io.write_particles_star`, which converts with
   :func:`cryonb.rotations.matrix_to_euler`), origins N(0, (3 px = 16.8 Å)²) per axis
   (``_rlnOriginXAngst/YAngst``), and real 200 kV CTFs drawn with replacement from the bundled
   table ``data_samples/ctf_200kV_cryosparc_P12_J24.csv``
   (:func:`cryonb.synthetic.particles.read_ctf_table` / ``draw_ctfs``) with the envelope
   B = 500 Å² of the paper's synthetic set (and of ``cryonb simulate``) added to each CTF's
   ``_rlnCtfBfactor``.  These go into ``input.star`` (RELION 3.1, optics group), pointing at a
   stack that does not exist, and ``relion_project --i truth.mrc --ang input.star --o proj
   --ctf --angpix 5.6 --pad 2`` writes the clean, CTF-modulated, shifted projections
   ``proj.mrcs``.  White Gaussian noise is then added with NumPy (seeded), of variance
   ``var(clean) / SNR``: the SNR of ``docs/synthetic_data.md`` (variance of the clean pixels
   over all pixels of the box and all particles, pooled, over the noise variance); the
   *achieved* SNR (over the variance of the noise actually drawn) is reported.  Written:
   ``particles.mrcs`` (noisy stack), ``particles.star`` (true poses and origins, the same CTF
   columns, ``_rlnRandomSubset`` alternating 1/2) and ``particles_noposes.star`` (the same
   without pose, origin and subset columns: cryonb picks its own half-sets, as by default).
2. **Data checks** (once, with the data; stored in ``data.json``):

   * CTF and geometry conventions: RELION's clean images of the first :data:`CTF_CHECK_N`
     particles against :meth:`cryonb.image_model.ImageModel.forward` of the truth with the
     poses, origins and CTFs cryonb reads back from ``particles.star`` (real-space correlation
     per image; must exceed 0.99; the same with the opposite CTF sign, ``ctffind``, is printed
     as the control);
   * known poses: ``cryonb reconstruct data/particles.star --out data/known_poses
     --known-poses``, scored against the truth like the runs (no band-limit cap: Nyquist), and
     its own half-map FSC 0.143 for comparison.

3. **Runs**: for each ``--minutes`` M (default 1 and 4): ``.venv/bin/cryonb reconstruct
   data/particles_noposes.star --out runs/t{M}min --time-limit M --no-progress`` (working
   directory: the work folder; an old ``runs/t{M}min`` is deleted first), as a subprocess; the
   wall time of the whole command and ``os.getloadavg()`` before and after (the machine is
   shared) are recorded, its output goes to ``runs/t{M}min.log``.
4. **Scoring**: ``map.mrc`` of the run folder against ``truth.mrc`` with
   :func:`cryonb.metrics.score_against_reference` (superposed, both hands; FSC 0.5 capped at
   the band limit the map was fitted to: ``final_max_freq_invA`` of ``run.json``; a missing
   key scores to Nyquist with a warning, a null one falls back to ``last_max_freq_invA`` with a
   warning).  If the map's box differs from the truth's, the truth is Fourier-cropped
   (:func:`cryonb.fourier.fourier_crop`) to the map's box, pixel size from the map's header.
   Per budget: wall s, iterations, phase reached (``halves`` once the half-sets have taken
   steps, else ``common``), fitted band limit, the reported half-map 0.143 (value, or null and
   the reason; crossed or "better than" the cap), the truth FSC 0.5 (``<X Å`` when it never
   crossed), the ratio reported / truth and whether it is within :data:`TOLERANCE` (20 %),
   the map's correlation with the truth and its hand.

A markdown table is printed and everything is written to ``honest_resolution.json`` in the
work folder.  The last line is machine-readable::

    RESULT t1_half0143=A t1_truth05=A t4_half0143=A t4_truth05=A

in Å with one decimal, ``<`` in front when the curve did not cross (better than its cap),
``inf`` when it was below its threshold from the first shell, ``null`` when cryonb reported
none (or the run failed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks import inverse

BOX, PSIZE = 64, 5.6
#: Standard deviation of the origins per axis: 3 px (Å).
SHIFT_SIGMA_A = 3 * PSIZE
#: Envelope B-factor added to every CTF (Å², the paper's synthetic set and ``cryonb simulate``).
BFACTOR_A2 = 500.0
#: Seed of the poses, origins and CTF draws; the noise uses ``SEED + 1``.
SEED = 0
#: Particles compared image by image in the CTF-convention check, and its pass mark.
CTF_CHECK_N = 20
CTF_CHECK_MIN_CORR = 0.99
#: Reported half-map 0.143 and truth FSC 0.5 agree when their ratio is within this of 1.
TOLERANCE = 0.20
#: Images per chunk when the noise is added.
CHUNK = 500

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "results" / "honest_resolution"


# ----------------------------------------------------------------------------- helpers
def _cryonb_exe() -> str:
    """The ``cryonb`` entry point next to this interpreter (the venv's), else on PATH."""
    exe = Path(sys.executable).with_name("cryonb")
    if exe.exists():
        return str(exe)
    found = shutil.which("cryonb")
    if found is None:
        raise RuntimeError("no cryonb executable next to the interpreter or on PATH")
    return found


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _load(path: Path) -> tuple[np.ndarray, float]:
    """A map as float64 and its voxel size (Å) from the header."""
    from cryonb.io import read_mrc

    mrc = read_mrc(path, mmap=False)
    return np.asarray(mrc.data, dtype=np.float64), float(mrc.voxel_size_A)


def score_map(volume: np.ndarray, truth: np.ndarray, pixel_size_A: float,
              max_freq_invA: float | None) -> dict:
    """Score ``volume`` against ``truth`` with :func:`cryonb.metrics.score_against_reference`.

    Parameters
    ----------
    volume : ndarray (n, n, n)
        The map (pixel size ``pixel_size_A``).
    truth : ndarray (N, N, N)
        The truth at :data:`PSIZE`; Fourier-cropped to ``n`` when ``n < N``.
    pixel_size_A : float
        The map's voxel size (Å).
    max_freq_invA : float or None
        Band limit the map was fitted to (1/Å); the FSC is capped there.  None: Nyquist.

    Returns
    -------
    dict
        ``res05`` (FSC 0.5, the score), ``res0143`` (the same curve at 0.143, for reference),
        ``correlation``, ``flipped`` and the cap used.
    """
    from cryonb.fourier import fourier_crop
    from cryonb.metrics import score_against_reference

    n = volume.shape[0]
    ref = truth
    if n != truth.shape[0]:
        if n > truth.shape[0]:
            raise ValueError(f"map box {n} is larger than the truth's {truth.shape[0]}")
        ref = fourier_crop(truth, n, ndim=3)
        expected = PSIZE * truth.shape[0] / n
        if abs(expected - pixel_size_A) > 1e-3 * expected:
            warnings.warn(f"map of {n} px at {pixel_size_A:.4f} Å does not cover the truth's "
                          f"{truth.shape[0] * PSIZE:.1f} Å box ({expected:.4f} Å expected)",
                          RuntimeWarning, stacklevel=2)
    score = score_against_reference(volume, ref, pixel_size_A, max_freq_invA=max_freq_invA)
    return {"box": int(n), "pixel_size_A": round(float(pixel_size_A), 5),
            "cap_invA": None if max_freq_invA is None else round(float(max_freq_invA), 6),
            "cap_A": inverse(max_freq_invA),
            "res05": score.resolution.to_dict(),
            "res0143": score.resolution_0143.to_dict(),
            "correlation": round(float(score.correlation), 4), "flipped": bool(score.flipped)}


# ----------------------------------------------------------------------------- data
def _data_ok(data: Path, n: int, snr: float) -> dict | None:
    """The cached data's ``data.json`` when it matches the request and its files exist."""
    meta_path = data / "data.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    files = ["truth.mrc", "particles.mrcs", "particles.star", "particles_noposes.star"]
    if (meta.get("n_particles") != n or meta.get("snr_requested") != snr
            or meta.get("seed") != SEED or not all((data / f).exists() for f in files)):
        return None
    return meta


def _relion_project(data: Path) -> dict:
    """``relion_project`` of ``truth.mrc`` with ``input.star``'s poses and CTFs (in ``data``)."""
    exe = shutil.which("relion_project")
    if exe is None:
        raise RuntimeError("relion_project is not on PATH (apt-get install relion)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    cmd = [exe, "--i", "truth.mrc", "--ang", "input.star", "--o", "proj", "--ctf",
           "--angpix", str(PSIZE), "--pad", "2"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=data, capture_output=True, text=True)
    (data / "relion_project.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"relion_project failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return {"command": " ".join(["relion_project", *cmd[1:]]),
            "version": " ".join(version.split()[:3]), "wall_s": round(time.perf_counter() - t0, 1)}


def _add_noise(clean_path: Path, noisy_path: Path, snr: float) -> dict:
    """Add white Gaussian noise of variance ``var(clean) / snr`` (pooled over all pixels and
    images) to the stack ``clean_path``; write ``noisy_path``.  Returns the SNR figures."""
    import mrcfile

    from cryonb.io import MrcStackWriter

    with mrcfile.mmap(clean_path, mode="r", permissive=True) as mrc:
        clean = mrc.data
        n = clean.shape[0]
        total = total_sq = 0.0
        for start in range(0, n, CHUNK):
            c = np.asarray(clean[start:start + CHUNK], dtype=np.float64)
            total += c.sum()
            total_sq += (c * c).sum()
        count = clean.size
        signal_var = total_sq / count - (total / count) ** 2
        sigma = math.sqrt(signal_var / snr)
        rng = np.random.default_rng(SEED + 1)
        n_sum = n_sq = 0.0
        with MrcStackWriter(noisy_path, n, clean.shape[-1], PSIZE) as writer:
            for start in range(0, n, CHUNK):
                c = np.asarray(clean[start:start + CHUNK], dtype=np.float64)
                noise = rng.normal(0.0, sigma, c.shape)
                n_sum += noise.sum()
                n_sq += (noise * noise).sum()
                writer.write(start, (c + noise).astype(np.float32))
    noise_var = n_sq / count - (n_sum / count) ** 2
    return {"signal_variance": float(signal_var), "noise_sigma": sigma,
            "snr_achieved": round(float(signal_var / noise_var), 6)}


def check_ctf_convention(data: Path, truth: np.ndarray, k: int = CTF_CHECK_N) -> dict:
    """RELION's clean images of the first ``k`` particles against cryonb's forward model.

    The poses, origins and CTFs are read back from ``particles.star`` by cryonb's reader (so
    the STAR round trip is part of the check).  Returns the per-image real-space correlation
    (min, mean), the relative error, and the correlation with the opposite CTF sign.
    """
    import mrcfile

    from cryonb.image_model import ImageModel
    from cryonb.io import read_particles_star

    meta = read_particles_star(data / "particles.star")
    idx = np.arange(min(k, len(meta)))
    with mrcfile.mmap(data / "proj.mrcs", mode="r", permissive=True) as mrc:
        relion = np.asarray(mrc.data[idx], dtype=np.float64)
    out = {"n_images": int(idx.size)}
    for convention in ("relion", "ctffind"):
        model = ImageModel(BOX, PSIZE, pad=2, ctf_convention=convention)
        ours = model.forward(truth, meta.rotations[idx], meta.shifts_A[idx], meta.ctf.subset(idx))
        a = ours - ours.mean(axis=(1, 2), keepdims=True)
        b = relion - relion.mean(axis=(1, 2), keepdims=True)
        corr = (a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2))
                                                   * (b * b).sum(axis=(1, 2)))
        rel = np.linalg.norm(ours - relion, axis=(1, 2)) / np.linalg.norm(relion, axis=(1, 2))
        out[convention] = {"corr_min": round(float(corr.min()), 6),
                           "corr_mean": round(float(corr.mean()), 6),
                           "rel_error_max": round(float(rel.max()), 6)}
    out["passed"] = bool(out["relion"]["corr_min"] > CTF_CHECK_MIN_CORR)
    return out


def check_known_poses(data: Path, truth: np.ndarray) -> dict:
    """``cryonb reconstruct particles.star --known-poses``, scored against the truth (FSC 0.5,
    Nyquist), with its half-map FSC 0.143 (no cap) next to it."""
    from cryonb.metrics import half_map_resolution

    out = data / "known_poses"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [_cryonb_exe(), "reconstruct", "data/particles.star", "--out", "data/known_poses",
           "--known-poses", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=data.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (data / "known_poses.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"known-pose reconstruction failed ({proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    volume, psize = _load(out / "map.mrc")
    result = {"command": "cryonb " + " ".join(cmd[1:]), "wall_s": round(wall, 1),
              **score_map(volume, truth, psize, None)}
    if (out / "half1.mrc").exists() and (out / "half2.mrc").exists():
        h1, _ = _load(out / "half1.mrc")
        h2, _ = _load(out / "half2.mrc")
        res, _ = half_map_resolution(h1, h2, psize, max_freq_invA=None)
        result["half_map_0143"] = res.to_dict()
    return result


def make_data(n: int = 10000, snr: float = 0.05, remake: bool = False) -> dict:
    """Make (or reuse) the RELION-projected data set in ``WORK/data`` and check it.

    Parameters
    ----------
    n : int
        Number of particles.
    snr : float
        Requested SNR (pooled clean-pixel variance over noise variance).
    remake : bool
        Delete and remake the data even when a matching cached set exists.

    Returns
    -------
    dict
        The contents of ``data.json``: counts, SNR requested and achieved, the
        ``relion_project`` command, the CTF-convention check and the known-pose check.
    """
    from cryonb.ctf import CTFParams
    from cryonb.io import write_mrc, write_particles_star
    from cryonb.rotations import euler_to_matrix, matrix_to_euler, random_rotations
    from cryonb.samples import sample_path
    from cryonb.synthetic.density import DensityParams, density_from_file
    from cryonb.synthetic.particles import SimulationParams, draw_ctfs, read_ctf_table

    data = WORK / "data"
    if not remake:
        meta = _data_ok(data, n, snr)
        if meta is not None:
            print(f"[honest_resolution] reusing the data in {data} (--remake-data to redo)",
                  flush=True)
            return meta
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    t0 = time.perf_counter()

    pdb = sample_path("1aon.pdb.gz")
    volume = density_from_file(pdb, DensityParams(BOX, PSIZE))
    write_mrc(data / "truth.mrc", volume, PSIZE)

    rng = np.random.default_rng(SEED)
    rotations = random_rotations(n, rng)
    shifts = rng.normal(0.0, SHIFT_SIGMA_A, (n, 2))
    table_path = sample_path("ctf_200kV_cryosparc_P12_J24.csv")
    ctf: CTFParams = draw_ctfs(n, rng, SimulationParams(n_particles=n, snr=snr,
                                                        bfactor_A2=BFACTOR_A2),
                               read_ctf_table(table_path))
    # the Euler angles the STAR file will hold give back the same matrices
    euler_err = float(np.abs(euler_to_matrix(*matrix_to_euler(rotations)) - rotations).max())
    if euler_err > 1e-9:
        raise RuntimeError(f"matrix -> RELION Euler -> matrix round trip is off by {euler_err}")

    common = {"image_indices": np.arange(n), "pixel_size_A": PSIZE, "box_size": BOX, "ctf": ctf}
    write_particles_star(data / "input.star", image_paths=[str(data / "placeholder.mrcs")] * n,
                         rotations=rotations, shifts_A=shifts, **common)
    relion = _relion_project(data)
    print(f"[honest_resolution] relion_project: {n} images in {relion['wall_s']:.0f} s",
          flush=True)

    noise = _add_noise(data / "proj.mrcs", data / "particles.mrcs", snr)
    stack = [str(data / "particles.mrcs")] * n
    write_particles_star(data / "particles.star", image_paths=stack, rotations=rotations,
                         shifts_A=shifts, half_set=np.arange(n) % 2, **common)
    write_particles_star(data / "particles_noposes.star", image_paths=stack, **common)
    made_s = time.perf_counter() - t0
    print(f"[honest_resolution] noise added: SNR achieved {noise['snr_achieved']:.5f} "
          f"(requested {snr}); data made in {made_s:.0f} s", flush=True)

    truth, _ = _load(data / "truth.mrc")
    ctf_check = check_ctf_convention(data, truth)
    print(f"[honest_resolution] CTF convention: RELION vs cryonb forward, correlation min "
          f"{ctf_check['relion']['corr_min']:.5f} over {ctf_check['n_images']} images "
          f"(opposite CTF sign: {ctf_check['ctffind']['corr_min']:.3f})", flush=True)
    if not ctf_check["passed"]:
        warnings.warn("relion_project's images disagree with cryonb's forward model "
                      f"(correlation {ctf_check['relion']['corr_min']:.4f} <= "
                      f"{CTF_CHECK_MIN_CORR}): the benchmark's data are not what cryonb models",
                      RuntimeWarning, stacklevel=2)
    known = check_known_poses(data, truth)
    print(f"[honest_resolution] known poses: FSC 0.5 vs truth {known['res05']['label']}, "
          f"correlation {known['correlation']:.4f}, half-map 0.143 "
          f"{known.get('half_map_0143', {}).get('label', '-')} ({known['wall_s']:.0f} s)",
          flush=True)

    meta = {"n_particles": n, "box": BOX, "pixel_size_A": PSIZE, "seed": SEED,
            "snr_requested": snr, **noise, "shift_sigma_A": SHIFT_SIGMA_A,
            "bfactor_envelope_A2": BFACTOR_A2, "pdb": pdb.name, "ctf_table": table_path.name,
            "n_optics_groups": len(np.unique(np.stack([ctf.voltage_kV, ctf.cs_mm,
                                                       ctf.amplitude_contrast], 1), axis=0)),
            "euler_round_trip_max_err": euler_err, "relion_project": relion,
            "made_s": round(made_s, 1), "ctf_check": ctf_check, "known_poses": known,
            "files": {"truth": "data/truth.mrc", "clean_stack": "data/proj.mrcs",
                      "stack": "data/particles.mrcs", "star": "data/particles.star",
                      "star_noposes": "data/particles_noposes.star"}}
    _write_json(data / "data.json", meta)
    return meta


# ----------------------------------------------------------------------------- runs
def _band_limit(summary: dict) -> tuple[float | None, str]:
    """The band limit (1/Å) to cap the truth FSC at, and where it came from."""
    if "final_max_freq_invA" not in summary:
        warnings.warn("run.json has no final_max_freq_invA: the truth FSC is read up to "
                      "Nyquist", RuntimeWarning, stacklevel=2)
        return None, "missing: Nyquist"
    value = summary["final_max_freq_invA"]
    if value is None:
        last = summary.get("last_max_freq_invA")
        warnings.warn("run.json's final_max_freq_invA is null (nothing fitted); capping at "
                      f"last_max_freq_invA = {last}", RuntimeWarning, stacklevel=2)
        return (None if last is None else float(last)), "last_max_freq_invA"
    return float(value), "final_max_freq_invA"


def _phase(summary: dict) -> str:
    """``halves`` when the half-sets have taken steps, else ``common``."""
    if "phase" in summary:
        return str(summary["phase"])
    its = summary.get("iterations") or {}
    halves = [v for k, v in its.items() if k != "common"]
    return "halves" if halves and min(halves) > 0 else "common"


def score_run(run_dir: Path, truth: np.ndarray) -> dict:
    """Score one run folder: its reported half-map 0.143 and its FSC 0.5 against the truth.

    Parameters
    ----------
    run_dir : Path
        A ``cryonb reconstruct`` output folder (``map.mrc``, ``run.json``).
    truth : ndarray
        ``truth.mrc`` (64 px, :data:`PSIZE`).

    Returns
    -------
    dict
        Iterations, phase, fitted band limit, the reported half-map figures, the truth score
        (:func:`score_map`), ``ratio`` (reported / truth, Å) and ``within_tolerance``.
    """
    summary = json.loads((run_dir / "run.json").read_text())
    volume, psize = _load(run_dir / "map.mrc")
    cap, cap_source = _band_limit(summary)
    truth_score = score_map(volume, truth, psize, cap)
    half = summary.get("half_map_resolution")
    reported = summary.get("half_map_resolution_A_0143")
    truth_A = truth_score["res05"]["value_A"]
    ratio = None
    if reported is not None and truth_A is not None:
        ratio = round(float(reported) / float(truth_A), 3)
    return {"status": summary.get("status"), "iterations": summary.get("iterations"),
            "phase": _phase(summary), "stop_reasons": summary.get("stop_reasons"),
            "solver_wall_s": summary.get("wall_time_s"),
            "fitted_invA": summary.get("final_max_freq_invA"),
            "fitted_A": inverse(summary.get("final_max_freq_invA")),
            "cap_source": cap_source,
            "half0143_A": reported, "half0143_crossed": None if half is None else half["crossed"],
            "half0143": half, "half_null_reason": summary.get("half_map_null_reason"),
            "truth": truth_score, "ratio": ratio,
            "within_tolerance": None if ratio is None else bool(abs(ratio - 1) <= TOLERANCE),
            "both_crossed": bool(half is not None and half["crossed"]
                                 and truth_score["res05"]["crossed"])}


def _tag(minutes: float) -> str:
    return f"t{minutes:g}"


def run_budget(minutes: float, truth: np.ndarray) -> dict:
    """``cryonb reconstruct data/particles_noposes.star --out runs/t{M}min --time-limit M
    --no-progress`` (defaults otherwise), timed, then scored (:func:`score_run`)."""
    runs = WORK / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    name = f"{_tag(minutes)}min"
    shutil.rmtree(runs / name, ignore_errors=True)
    cmd = [_cryonb_exe(), "reconstruct", "data/particles_noposes.star", "--out",
           f"runs/{name}", "--time-limit", f"{minutes:g}", "--no-progress"]
    print(f"[honest_resolution] running: cryonb {' '.join(cmd[1:])}", flush=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with open(runs / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=WORK, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    row = {"minutes": minutes, "command": "cryonb " + " ".join(cmd[1:]),
           "returncode": proc.returncode, "wall_s": round(wall, 1),
           "load_before": [round(x, 2) for x in load_before],
           "load_after": [round(x, 2) for x in load_after]}
    if proc.returncode != 0 or not (runs / name / "run.json").exists():
        print(f"[honest_resolution] run {name} failed ({proc.returncode}); see "
              f"{runs / f'{name}.log'}", flush=True)
        return {**row, "failed": True}
    return {**row, "failed": False, **score_run(runs / name, truth)}


# ----------------------------------------------------------------------------- driver
def _short(value_A: float | None, crossed: bool | None) -> str:
    """``"22.4"``, ``"<14.9"`` (not crossed), ``"inf"`` or ``"null"`` for the RESULT line."""
    if crossed is None:
        return "null"
    if value_A is None:
        return "inf"
    return f"{'' if crossed else '<'}{value_A:.1f}"


def _summary_row(r: dict) -> dict:
    """The short row of a budget (for ``python -m benchmarks`` and the table)."""
    if r.get("failed"):
        return {"budget_min": r["minutes"], "wall_s": r["wall_s"], "status": "failed"}
    half = r["half0143"]
    half_label = "null" if half is None else f"{'' if half['crossed'] else '<'}" \
                                              f"{half['value_A']:.1f} Å"
    its = r["iterations"] or {}
    return {"budget_min": r["minutes"], "wall_s": r["wall_s"],
            "iterations": "/".join(str(v) for v in its.values()), "phase": r["phase"],
            "fitted_A": r["fitted_A"], "half0143": half_label,
            "truth05": r["truth"]["res05"]["label"], "ratio": r["ratio"],
            "within20": r["within_tolerance"], "correlation": r["truth"]["correlation"],
            "hand": "flipped" if r["truth"]["flipped"] else "same"}


def run(minutes: tuple[float, ...] = (1.0, 4.0), n: int = 10000, snr: float = 0.05,
        remake_data: bool = False, only_data: bool = False) -> dict:
    """The whole benchmark (see the module docstring).

    Parameters
    ----------
    minutes : tuple of float
        ``--time-limit`` of each run.
    n : int
        Particles in the data set.
    snr : float
        Requested SNR of the data set.
    remake_data : bool
        Remake the cached data.
    only_data : bool
        Make and check the data, no runs.

    Returns
    -------
    dict
        ``data`` (:func:`make_data`), ``budgets`` (per run: :func:`run_budget`) and ``rows``
        (one short row per budget); also written to ``honest_resolution.json``.
    """
    WORK.mkdir(parents=True, exist_ok=True)
    data = make_data(n, snr, remake_data)
    result = {"data": data, "budgets": [], "rows": [], "tolerance": TOLERANCE}
    if only_data:
        result["rows"] = [{"data": "only", "snr_achieved": data["snr_achieved"],
                           "ctf_corr_min": data["ctf_check"]["relion"]["corr_min"],
                           "known_poses_res05": data["known_poses"]["res05"]["label"]}]
        _write_json(WORK / "honest_resolution.json", result)
        return result
    truth, _ = _load(WORK / "data" / "truth.mrc")
    for m in minutes:
        r = run_budget(float(m), truth)
        result["budgets"].append(r)
        result["rows"].append(_summary_row(r))
        _write_json(WORK / "honest_resolution.json", result)
    return result


def report(result: dict) -> None:
    """Print the data summary, the markdown table and the RESULT line."""
    d = result["data"]
    c = d["ctf_check"]
    k = d["known_poses"]
    print(f"\nData ({WORK / 'data'}): {d['n_particles']} particles, {d['box']} px at "
          f"{d['pixel_size_A']} Å, origins N(0, {d['shift_sigma_A']:.1f} Å), envelope B "
          f"{d['bfactor_envelope_A2']:g} Å², SNR {d['snr_achieved']:.5f} achieved "
          f"({d['snr_requested']} requested); {d['relion_project']['version']}:\n  "
          f"{d['relion_project']['command']}")
    print(f"CTF convention ({c['n_images']} images, RELION's clean images vs "
          f"ImageModel.forward): correlation min {c['relion']['corr_min']:.5f}, mean "
          f"{c['relion']['corr_mean']:.5f}, relative error max {c['relion']['rel_error_max']:.4f}"
          f"; opposite CTF sign: min {c['ctffind']['corr_min']:.3f}  "
          f"{'PASS' if c['passed'] else 'FAIL'}")
    half_k = k.get("half_map_0143", {}).get("label", "-")
    print(f"Known poses ({k['command']}): FSC 0.5 vs truth {k['res05']['label']} (0.143 of the "
          f"same curve {k['res0143']['label']}), correlation {k['correlation']:.4f}, "
          f"half-map 0.143 {half_k}")
    if not result["budgets"]:
        print("RESULT data_only snr="
              f"{d['snr_achieved']:.5f} ctf_corr={c['relion']['corr_min']:.5f} "
              f"known_poses_truth05={_short(k['res05']['value_A'], k['res05']['crossed'])}")
        return
    print("\n| budget | wall s | load 1 min before/after | iterations | phase | fitted Å "
          "| reported half-map 0.143 | truth FSC 0.5 | ratio | within 20 % | corr | hand |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    tokens = []
    for r in result["budgets"]:
        tag = _tag(r["minutes"])
        load = f"{r['load_before'][0]:.1f}/{r['load_after'][0]:.1f}"
        if r.get("failed"):
            print(f"| {r['minutes']:g} min | {r['wall_s']:.0f} | {load} | failed "
                  f"(rc {r['returncode']}) | | | | | | | | |")
            tokens += [f"{tag}_half0143=null", f"{tag}_truth05=null"]
            continue
        s = _summary_row(r)
        half = s["half0143"] if r["half0143"] is not None else f"null ({r['half_null_reason']})"
        if r["half0143"] is not None and not r["half0143"]["crossed"]:
            half += " (not crossed)"
        truth05 = s["truth05"] + ("" if r["truth"]["res05"]["crossed"] else " (not crossed)")
        ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}"
        within = "-" if s["within20"] is None else ("yes" if s["within20"] else "no")
        fitted = "-" if s["fitted_A"] is None else f"{s['fitted_A']:.1f}"
        print(f"| {r['minutes']:g} min | {r['wall_s']:.0f} | {load} | {s['iterations']} | "
              f"{s['phase']} | {fitted} | {half} | {truth05} | {ratio} | {within} | "
              f"{s['correlation']:.3f} | {s['hand']} |")
        half_tok = _short(r["half0143_A"], r["half0143_crossed"]) \
            if r["half0143"] is not None else "null"
        res05 = r["truth"]["res05"]
        tokens += [f"{tag}_half0143={half_tok}",
                   f"{tag}_truth05={_short(res05['value_A'], bool(res05['crossed']))}"]
    print("(iterations: common/half1/half2; truth FSC 0.5 after alignment (both hands), capped "
          "at the fitted band limit; '<X': never crossed, better than X; load: os.getloadavg() "
          "1-min average before/after the run on 2 shared cores)")
    print(f"results: {WORK / 'honest_resolution.json'}")
    print("RESULT " + " ".join(tokens))


def _set_work(work: Path, seed: int) -> None:
    """Use ``work`` as the work folder and ``seed`` for the data (an independent set, e.g.
    issue 14's: ``--snr 0.04 --seed 1 --work /tmp/set04 --only-data``)."""
    global WORK, SEED
    WORK, SEED = Path(work), int(seed)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.honest_resolution",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 4.0],
                        help="--time-limit of each ab initio run, min (1 4)")
    parser.add_argument("--n", type=int, default=10000, help="particles (10000)")
    parser.add_argument("--snr", type=float, default=0.05, help="requested SNR (0.05)")
    parser.add_argument("--remake-data", action="store_true", help="remake the cached data")
    parser.add_argument("--only-data", action="store_true",
                        help="make and check the data (CTF convention, known poses); no runs")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed of poses, origins, CTFs (noise: seed + 1) ({SEED})")
    parser.add_argument("--work", type=Path, default=WORK,
                        help="work folder (benchmarks/results/honest_resolution)")
    args = parser.parse_args(argv)
    _set_work(args.work, args.seed)
    report(run(tuple(args.minutes), n=args.n, snr=args.snr, remake_data=args.remake_data,
               only_data=args.only_data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
