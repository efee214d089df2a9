"""Shared fixtures: array backends and the tiny problems several test files build.

The problem builders are *factories* (fixtures that return a function), so that each test keeps
choosing its own sizes and seeds and gets exactly the random draws it always had.  They are
session-scoped: module-scoped fixtures may use them.

The library is imported inside the fixtures, not at the top of this file, so a test file that
needs none of them does not depend on those modules importing.

Markers (``slow``, ``relion``) are registered in ``pyproject.toml`` under
``[tool.pytest.ini_options]`` (with ``--strict-markers``), so none are added here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pytest

if TYPE_CHECKING:
    from cryonb.ctf import CTFParams
    from cryonb.image_model import ImageModel
    from cryonb.quadrature import Quadrature

NO_GPU = "needs CuPy and a CUDA GPU (none here or on CI); with one, runs the same comparison"


# ---------------------------------------------------------------------------- backends
@pytest.fixture(params=[pytest.param("numpy", id="numpy"),
                        pytest.param("array_api_strict", id="strict"),
                        pytest.param("cupy", id="cupy")])
def backend(request):
    """A :class:`cryonb.backend.Backend` from :func:`cryonb.backend.get_backend`, once per name.

    ``"numpy"``; ``"array_api_strict"`` (skipped if the array-api-strict package is not
    installed); ``"cupy"`` (skipped unless CuPy imports and sees a CUDA device).  Test ids:
    ``numpy``, ``strict``, ``cupy``.  Parametrize ``backend`` with ``indirect=True`` to run a
    test on a subset of these names.
    """
    from cryonb.backend import cupy_available, get_backend

    name = request.param
    if name == "array_api_strict":
        pytest.importorskip("array_api_strict",
                            reason="needs the array-api-strict package (`pip install "
                                   "cryonb[test]`)")
    elif name == "cupy" and not cupy_available():
        pytest.skip(NO_GPU)
    return get_backend(name)


# ---------------------------------------------------------------------------- CTFs
def make_random_ctf(rng: np.random.Generator, n: int, *,
                    defocus_u_A: Any = (9000.0, 20000.0),
                    defocus_v_A: Any = (9000.0, 20000.0),
                    defocus_angle_deg: Any = (-90.0, 90.0),
                    voltage_kV: Any = 300.0, cs_mm: Any = 2.7, amplitude_contrast: Any = 0.1,
                    phase_shift_deg: Any = (0.0, 30.0), bfactor_A2: Any = (0.0, 50.0),
                    scale: Any = None) -> CTFParams:
    """``n`` CTFs with parameters drawn from ``rng``.

    Each argument is a ``(low, high)`` tuple, drawn as ``rng.uniform(low, high, n)``; any other
    value (a scalar or an array), used as given; or ``None``, left at the :class:`CTFParams`
    default (phase shift 0, B-factor 0, scale 1).  Draws are made in the field order of
    :class:`CTFParams` (defocus u, defocus v, angle, voltage, Cs, amplitude contrast, phase
    shift, B-factor, scale), so a call draws what the equivalent keyword-ordered
    ``CTFParams(defocus_u_A=rng.uniform(...), ...)`` did.  Units: defocus Å, angles degrees,
    voltage kV, Cs mm, B-factor Å².  Defaults: defocus 9000-20000 Å, angle +-90 deg, 300 kV,
    Cs 2.7 mm, amplitude contrast 0.1, phase shift 0-30 deg, B-factor 0-50 Å², scale 1.
    """
    from cryonb.ctf import CTFParams

    given = dict(defocus_u_A=defocus_u_A, defocus_v_A=defocus_v_A,
                 defocus_angle_deg=defocus_angle_deg, voltage_kV=voltage_kV, cs_mm=cs_mm,
                 amplitude_contrast=amplitude_contrast, phase_shift_deg=phase_shift_deg,
                 bfactor_A2=bfactor_A2, scale=scale)
    values = {}
    for name in (f.name for f in dataclasses.fields(CTFParams)):
        value = given[name]
        if value is None:
            continue
        values[name] = rng.uniform(value[0], value[1], n) if isinstance(value, tuple) else value
    return CTFParams(**values)


@pytest.fixture(scope="session")
def random_ctf():
    """Factory ``random_ctf(rng, n, **fields) -> CTFParams``: see :func:`make_random_ctf`."""
    return make_random_ctf


def make_defocus_ramp_ctf(n: int) -> CTFParams:
    """``n`` deterministic CTFs: defocus u = v from 10000 to 20000 Å (``np.linspace``), angle 0,
    300 kV, Cs 2.7 mm, amplitude contrast 0.1."""
    from cryonb.ctf import CTFParams

    return CTFParams(defocus_u_A=np.linspace(1e4, 2e4, n), defocus_v_A=np.linspace(1e4, 2e4, n),
                     defocus_angle_deg=0.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)


@pytest.fixture(scope="session")
def defocus_ramp_ctf():
    """Factory ``defocus_ramp_ctf(n) -> CTFParams``: see :func:`make_defocus_ramp_ctf`."""
    return make_defocus_ramp_ctf


# ---------------------------------------------------------------------------- tiny problems
class TinyProblem(NamedTuple):
    """A tiny reconstruction problem; unpacks as ``model, quad, vol, ctf, images, true_r,
    true_s``."""

    model: ImageModel
    quad: Quadrature
    vol: np.ndarray       # (box, box, box) standard-normal voxels
    ctf: CTFParams | None
    images: np.ndarray    # (n_img, box, box), noisy unless sigma is 0
    true_r: np.ndarray    # (n_img,) rotation index into quad.rotations()
    true_s: np.ndarray    # (n_img,) shift index into quad.shifts_A


def make_tiny_problem(box: int = 13, n_img: int = 4, *, seed: int = 1, sigma: float = 3.0,
                      ctf: bool | Mapping[str, Any] | None = True, pixel_size_A: float = 3.0,
                      max_freq_invA: float = 0.13, n_directions: int = 8, n_inplane: int = 5,
                      shift_spacing_A: float = 2.5, shift_extent_A: float = 3.6,
                      shift_sigma_A: float = 3.0) -> TinyProblem:
    """Random volume and ``n_img`` images at grid poses of a small quadrature.

    ``ImageModel(box, pixel_size_A, max_freq_invA)`` (defaults 3 Å/px, band limit 0.13 1/Å);
    ``Quadrature.from_counts(n_directions, n_inplane, ...)`` (defaults 8 x 5 rotations, shifts
    every 2.5 Å within 3.6 Å, prior sigma 3 Å); a (box,)^3 standard-normal volume.  ``ctf``:
    ``True`` for :func:`make_random_ctf` defaults, a mapping of :func:`make_random_ctf`
    overrides, or ``None``/``False`` for no CTF.  Each image is at a distinct random rotation
    and a random shift of the grid, with Gaussian noise of ``sigma`` per pixel (none if
    ``sigma`` is 0).  Draws from ``np.random.default_rng(seed)`` in this order: volume, CTFs,
    rotation indices, shift indices, noise.
    """
    from cryonb.image_model import ImageModel
    from cryonb.quadrature import Quadrature

    rng = np.random.default_rng(seed)
    model = ImageModel(box, pixel_size_A=pixel_size_A, max_freq_invA=max_freq_invA)
    quad = Quadrature.from_counts(n_directions, n_inplane, shift_spacing_A=shift_spacing_A,
                                  shift_extent_A=shift_extent_A, shift_sigma_A=shift_sigma_A)
    vol = rng.standard_normal((box,) * 3)
    if isinstance(ctf, Mapping):
        c = make_random_ctf(rng, n_img, **ctf)
    else:
        c = make_random_ctf(rng, n_img) if ctf else None
    true_r = rng.choice(quad.n_rotations, n_img, replace=False)
    true_s = rng.integers(0, quad.n_shifts, n_img)
    clean = model.forward(vol, quad.rotations()[true_r], quad.shifts_A[true_s], c)
    images = clean + rng.normal(0, sigma, clean.shape) if sigma else clean
    return TinyProblem(model, quad, vol, c, images, true_r, true_s)


@pytest.fixture(scope="session")
def tiny_problem():
    """Factory ``tiny_problem(box, n_img, *, seed, sigma, ctf, ...) -> TinyProblem``, a fresh
    problem per call: see :func:`make_tiny_problem` (defaults: box 13 px, 3 Å/px, 4 images,
    seed 1, noise sigma 3, random CTFs, 8 x 5 rotations)."""
    return make_tiny_problem


@pytest.fixture(scope="session")
def cached_tiny_problem():
    """As ``tiny_problem``, but memoised for the session (arguments must be hashable, so
    ``ctf`` a bool): callers share the arrays and must not modify them."""
    return lru_cache(make_tiny_problem)


# ---------------------------------------------------------------------------- blob volumes
def make_gaussian_blobs(box: int, centres_px, sigma_px, amps) -> np.ndarray:
    """Sampled sum of isotropic 3D Gaussians on a (box,)^3 grid (float64); centres (x, y, z)
    in voxels relative to voxel ``box // 2``, widths ``sigma_px`` in voxels, peak heights
    ``amps``."""
    from cryonb.fourier import fourier_indices

    k = fourier_indices(box)
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    vol = np.zeros((box,) * 3)
    for (cx, cy, cz), s, a in zip(centres_px, sigma_px, amps, strict=True):
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return vol


@pytest.fixture(scope="session")
def gaussian_blobs():
    """Factory ``gaussian_blobs(box, centres_px, sigma_px, amps) -> (box,)^3 volume``: see
    :func:`make_gaussian_blobs`."""
    return make_gaussian_blobs
