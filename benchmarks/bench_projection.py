"""Projection (central slices + CTF + shifts) throughput, as ratios measured in one run.

* ``numba_vs_numpy``: speed-up of the numba slice kernel over the vectorised NumPy path.
* ``gemm_equiv``: time of one batch of slices expressed in units of the time the machine's BLAS
  needs for a complex64 GEMM of the same output size (B x M) and inner dimension 64 — how far
  a gather-bound kernel is from dense linear algebra on this machine.
* ``vs_relion``: cryonb's ``project`` pipeline against ``relion_project`` on the same volume,
  poses and CTFs (when RELION is installed): RELION time / cryonb time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import best_time


def _best(fn, repeat=3):
    return best_time(fn, repeat)


def _gemm_time(b, m, k=64):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((b, k)) + 1j * rng.standard_normal((b, k))).astype(np.complex64)
    c = (rng.standard_normal((k, m)) + 1j * rng.standard_normal((k, m))).astype(np.complex64)
    return _best(lambda: a @ c)


def _relion_ratio(box=64, n=500):
    if shutil.which("relion_project") is None:
        return None
    import mrcfile
    import pandas as pd
    import starfile

    from cryonb.rotations import matrix_to_euler, random_rotations

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vol = rng.standard_normal((box,) * 3).astype(np.float32)
        with mrcfile.new(tmp / "vol.mrc") as m:
            m.set_data(vol)
            m.voxel_size = 2.0
        rot, tilt, psi = matrix_to_euler(random_rotations(n, rng))
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"],
                               "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                               "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [2.0],
                               "rlnImageSize": [box], "rlnImageDimensionality": [2]})
        parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@x.mrcs" for i in range(n)],
                              "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                              "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0,
                              "rlnDefocusU": 15000.0, "rlnDefocusV": 14000.0,
                              "rlnDefocusAngle": 10.0, "rlnOpticsGroup": 1})
        starfile.write({"optics": optics, "particles": parts}, tmp / "in.star")
        env = dict(os.environ)
        t_relion = _best(lambda: subprocess.run(
            ["relion_project", "--i", "vol.mrc", "--o", "r", "--ang", "in.star", "--ctf",
             "--pad", "2"], cwd=tmp, check=True, capture_output=True, env=env), repeat=2)
        cryonb = shutil.which("cryonb")
        t_cryonb = _best(lambda: subprocess.run(
            [cryonb, "project", "vol.mrc", "--star", "in.star", "--out", "c.mrcs", "--ctf"],
            cwd=tmp, check=True, capture_output=True, env=env), repeat=2)
        return {"box": box, "n_images": n, "relion_s_over_cryonb_s": round(t_relion / t_cryonb, 2)}


def run() -> dict:
    from cryonb.image_model import ImageModel
    from cryonb.projection import Projector
    from cryonb.rotations import random_rotations

    rows = []
    rng = np.random.default_rng(0)
    for box, batch in ((64, 512), (128, 128)):
        model = ImageModel(box, 2.0)
        vol_ft = model.projector.volume_to_fourier(
            rng.standard_normal((box,) * 3).astype(np.float32))
        rot = random_rotations(batch, rng)
        coords = model.coords_px
        fast = model.projector
        fast.slice(vol_ft, rot[:2], coords)  # compile
        slow = Projector(box, use_numba=False)
        t_fast = _best(lambda fast=fast, vol_ft=vol_ft, rot=rot, coords=coords:
                       fast.slice(vol_ft, rot, coords))
        t_slow = _best(lambda slow=slow, vol_ft=vol_ft, rot=rot, coords=coords:
                       slow.slice(vol_ft, rot[:32], coords), repeat=1) * (batch / 32)
        t_gemm = _gemm_time(batch, coords.shape[0])
        rows.append({"box": box, "batch": batch, "points": int(coords.shape[0]),
                     "numba_vs_numpy": round(t_slow / t_fast, 1),
                     "gemm_equiv": round(t_fast / t_gemm, 2)})
    relion = _relion_ratio()
    if relion is not None:
        rows.append(relion)
    else:
        rows.append({"vs_relion": "skipped (relion_project not installed)"})
    return {"rows": rows}
