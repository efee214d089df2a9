"""RELION STAR particle files (3.0, 3.1/4.x, 5.0): read into :class:`ParticleMetadata`, write 3.1.

Reading follows ``../shared/design/CONVENTIONS.md`` §1 and ``docs/conventions.md``:

* RELION 3.0: one table, optics values on each row, origins ``_rlnOriginX/Y`` in pixels, pixel
  size ``1e4 * _rlnDetectorPixelSize[µm] / _rlnMagnification`` (or ``_rlnImagePixelSize``).
* RELION 3.1+: ``data_optics`` and ``data_particles`` in either order, linked by
  ``_rlnOpticsGroup``; a value is looked up in the particle table first, then the optics table.
  Origins ``_rlnOriginXAngst/YAngst`` in Å.
* ``_rlnImageName`` is ``N@stack``, N 1-based; rows may reference stacks in any order.  Relative
  stack paths are resolved against ``datadir`` or the STAR file's folder (falling back to the
  file name alone in that folder).
* Unknown columns are kept in ``ParticleMetadata.table`` and otherwise ignored.
* Voltage, Cs, amplitude contrast, defocus and pixel size are checked against physical ranges
  (:mod:`cryonb.io.validate`) in the optics and particle tables (1-based data rows).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from numpy.typing import ArrayLike, NDArray

from ..ctf import CTFParams
from ..rotations import euler_to_matrix, matrix_to_euler
from .errors import input_error
from .metadata import ParticleMetadata
from .validate import check_range, check_star_table

__all__ = ["read_particles_star", "resolve_image_path", "write_particles_star"]

_CTF_REQUIRED = ("DefocusU", "Voltage", "SphericalAberration")
# Optional CTF columns and RELION's defaults when they are absent (src/ctf.cpp: V = U, angle 0,
# Q0 0, phase shift 0, B 0, scale 1).  A missing amplitude contrast is warned about.
_CTF_DEFAULTS = {"DefocusAngle": 0.0, "AmplitudeContrast": 0.0, "PhaseShift": 0.0,
                 "CtfBfactor": 0.0, "CtfScalefactor": 1.0}
_STAR_VERSION_LINE = "# version 30001\n"


def resolve_image_path(name: str, base_dir: Path, datadir: Path | None = None) -> Path:
    """Resolve a stack path from a metadata file.

    Tries, in order: the path itself if absolute, ``datadir / name``, ``datadir / basename``
    (when ``datadir`` is given, else the same against ``base_dir``).  Returns the first that
    exists, or the first candidate if none does (the caller reports it as missing).
    """
    path = Path(name)
    root = Path(datadir) if datadir is not None else base_dir
    candidates = [path] if path.is_absolute() else []
    candidates += [root / path, root / path.name]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


def _read_blocks(path: Path) -> dict[str, pd.DataFrame]:
    if not path.exists():
        raise input_error(path, "the STAR file does not exist", "check the path")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises various parser errors
        detail = " ".join(str(exc).split())  # the error stays one line
        raise input_error(path, f"not a readable STAR file ({type(exc).__name__}: {detail})",
                          "check that it is a RELION STAR file") from exc
    tables = {name: df for name, df in blocks.items() if isinstance(df, pd.DataFrame)}
    if not tables:
        raise input_error(path, "the STAR file holds no table (loop_)",
                          "give a particle STAR file with a loop_ table")
    return tables


def _particle_and_optics(path: Path, tables: dict[str, pd.DataFrame]
                         ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    with_images = [name for name, df in tables.items() if "rlnImageName" in df.columns]
    if not with_images:
        raise input_error(path, "no table has an _rlnImageName column",
                          "give a particle STAR file (e.g. from Extract or Refine3D), not a "
                          "micrograph or model STAR file")
    name = "particles" if "particles" in with_images else with_images[0]
    particles = tables[name].reset_index(drop=True)
    optics = tables.get("optics")
    if optics is not None and "rlnOpticsGroup" not in optics.columns:
        raise input_error(path, "the optics table has no _rlnOpticsGroup column",
                          "repair the optics table")
    return particles, optics


class _Columns:
    """Look values up in the particle table, then via ``_rlnOpticsGroup`` in the optics table."""

    def __init__(self, path: Path, particles: pd.DataFrame, optics: pd.DataFrame | None):
        self.path, self.particles, self.optics = path, particles, optics
        self.row_of_group: NDArray | None = None
        if optics is not None:
            if "rlnOpticsGroup" not in particles.columns:
                if len(optics) != 1:
                    raise input_error(path, "the particles have no _rlnOpticsGroup column but "
                                      f"there are {len(optics)} optics groups",
                                      "add _rlnOpticsGroup to the particle table")
                self.row_of_group = np.zeros(len(particles), dtype=np.int64)
            else:
                groups = particles["rlnOpticsGroup"].to_numpy()
                index = pd.Index(optics["rlnOpticsGroup"].to_numpy())
                rows = index.get_indexer(groups)
                if (rows < 0).any():
                    bad = sorted(set(groups[rows < 0].tolist()))
                    raise input_error(path, f"particles refer to optics groups {bad} that the "
                                      "optics table lacks", "repair the optics table")
                self.row_of_group = rows

    def has(self, name: str) -> bool:
        column = "rln" + name
        return column in self.particles.columns or (
            self.optics is not None and column in self.optics.columns)

    def get(self, name: str, default: float | None = None) -> NDArray | None:
        column = "rln" + name
        if column in self.particles.columns:
            raw = self.particles[column]
        elif self.optics is not None and column in self.optics.columns:
            raw = self.optics[column].iloc[self.row_of_group].reset_index(drop=True)
        elif default is not None:
            return np.full(len(self.particles), float(default))
        else:
            return None
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise input_error(self.path, f"_{column} has {bad.sum()} missing or non-numeric "
                              f"values (first at data row {rows[0] + 1})",
                              "fill or remove those rows")
        return values


def _pixel_sizes(path: Path, cols: _Columns) -> NDArray:
    sizes = cols.get("ImagePixelSize")
    if sizes is None:
        detector = cols.get("DetectorPixelSize")
        magnification = cols.get("Magnification")
        if detector is None or magnification is None:
            raise input_error(path, "no pixel size: neither _rlnImagePixelSize nor "
                              "_rlnDetectorPixelSize and _rlnMagnification are given",
                              "add _rlnImagePixelSize (Å) to the optics table, or pass "
                              "pixel_size_A= (--angpix) explicitly")
        with np.errstate(divide="ignore", invalid="ignore"):
            sizes = 1e4 * detector / magnification
        check_range(path, "1e4 * _rlnDetectorPixelSize / _rlnMagnification (the pixel size)",
                    sizes, "pixel_size", where="particles table", row_name="data row",
                    first_row=1)
    if not np.all(np.isfinite(sizes) & (sizes > 0)):
        raise input_error(path, "the pixel size is zero, negative or not a number",
                          "fix _rlnImagePixelSize (Å) or pass pixel_size_A= explicitly")
    return sizes


def _parse_image_names(path: Path, names: pd.Series, datadir: Path | None
                       ) -> tuple[NDArray, NDArray]:
    split = names.astype(str).str.split("@", n=1, expand=True)
    if split.shape[1] != 2 or split[1].isna().any():
        row = int(np.flatnonzero(split[1].isna().to_numpy())[0]) if split.shape[1] == 2 else 0
        raise input_error(path, f"_rlnImageName {names.iloc[row]!r} (data row {row + 1}) is not "
                          "of the form N@stack.mrcs", "write image names as N@stack.mrcs")
    indices = pd.to_numeric(split[0], errors="coerce").to_numpy()
    if np.isnan(indices).any() or (indices < 1).any():
        row = int(np.flatnonzero(np.isnan(indices) | (indices < 1))[0])
        raise input_error(path, f"_rlnImageName {names.iloc[row]!r} (data row {row + 1}) has no "
                          "valid 1-based image number", "write image names as N@stack.mrcs, N >= 1")
    base = path.parent
    resolved = {name: str(resolve_image_path(name, base, datadir)) for name in split[1].unique()}
    image_paths = split[1].map(resolved).to_numpy(dtype=object)
    return image_paths, indices.astype(np.int64) - 1


def read_particles_star(path: str | os.PathLike, *, datadir: str | os.PathLike | None = None,
                        pixel_size_A: float | None = None) -> ParticleMetadata:
    """Read a RELION particle STAR file (3.0, 3.1/4.x or 5.0).

    Parameters
    ----------
    path : path-like
    datadir : path-like, optional
        Folder to resolve relative stack paths against (default: the STAR file's folder).
    pixel_size_A : float, optional
        Override the pixel size (Å) for files that lack it.

    Returns
    -------
    ParticleMetadata
        ``ctf`` is None when the file has no CTF columns at all; it is an error when some
        CTF columns are present but not all of ``_rlnDefocusU``, ``_rlnVoltage`` and
        ``_rlnSphericalAberration``.  Other CTF columns take RELION's defaults when absent
        (``DefocusV = DefocusU``, angle 0, amplitude contrast 0 with a warning, phase shift
        0, B-factor 0, scale 1).

    Raises
    ------
    CryonbInputError
        Missing or unreadable files, missing image names, pixel size or CTF columns, NaNs,
        and voltage, Cs, amplitude contrast, defocus or pixel size outside their physical
        ranges (:data:`cryonb.io.validate.RANGES`; named with column, table and 1-based data
        row).
    """
    path = Path(path)
    particles, optics = _particle_and_optics(path, _read_blocks(path))
    if len(particles) == 0:
        raise input_error(path, "the particle table is empty", "give a STAR file with particles")
    skip = ("pixel_size",) if pixel_size_A is not None else ()
    if optics is not None:
        check_star_table(path, optics, "optics table", skip=skip)
    check_star_table(path, particles, "particles table", skip=skip)
    cols = _Columns(path, particles, optics)
    n = len(particles)
    datadir_path = Path(datadir) if datadir is not None else None
    image_paths, image_indices = _parse_image_names(path, particles["rlnImageName"], datadir_path)
    if pixel_size_A is not None:
        pixel_sizes = np.full(n, float(pixel_size_A))
        if not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
            raise input_error(path, f"pixel_size_A={pixel_size_A} is not positive",
                              "pass the pixel size in Å")
    else:
        pixel_sizes = _pixel_sizes(path, cols)
    image_size = cols.get("ImageSize")

    present = [name for name in (*_CTF_REQUIRED, "DefocusV") if cols.has(name)]
    ctf = None
    if present:
        missing = [name for name in _CTF_REQUIRED if not cols.has(name)]
        if missing:
            raise input_error(path, "CTF columns are missing: "
                              + ", ".join("_rln" + m for m in missing),
                              "add them (voltage and Cs usually in the optics table) or re-run "
                              "CTF estimation and re-extract")
        if not cols.has("AmplitudeContrast"):
            warnings.warn(f"{path}: no _rlnAmplitudeContrast; using RELION's default 0. Add the "
                          "column if your data used another value", RuntimeWarning, stacklevel=2)
        defocus_u = cols.get("DefocusU")
        values = {name: cols.get(name, default) for name, default in _CTF_DEFAULTS.items()}
        ctf = CTFParams(
            defocus_u_A=defocus_u,
            defocus_v_A=cols.get("DefocusV") if cols.has("DefocusV") else defocus_u,
            defocus_angle_deg=values["DefocusAngle"], voltage_kV=cols.get("Voltage"),
            cs_mm=cols.get("SphericalAberration"),
            amplitude_contrast=values["AmplitudeContrast"],
            phase_shift_deg=values["PhaseShift"], bfactor_A2=values["CtfBfactor"],
            scale=values["CtfScalefactor"],
        )
    rotations = None
    if all(cols.has(a) for a in ("AngleRot", "AngleTilt", "AnglePsi")):
        rotations = euler_to_matrix(cols.get("AngleRot"), cols.get("AngleTilt"),
                                    cols.get("AnglePsi"))
    shifts_A = None
    if cols.has("OriginXAngst") and cols.has("OriginYAngst"):
        shifts_A = np.stack([cols.get("OriginXAngst"), cols.get("OriginYAngst")], axis=1)
    elif cols.has("OriginX") and cols.has("OriginY"):  # RELION 3.0: pixels
        shifts_px = np.stack([cols.get("OriginX"), cols.get("OriginY")], axis=1)
        shifts_A = shifts_px * pixel_sizes[:, None]
    elif rotations is not None:
        shifts_A = np.zeros((n, 2))
    half_set = None
    if cols.has("RandomSubset"):
        subset = cols.get("RandomSubset").astype(np.int64)
        half_set = np.where(np.isin(subset, (1, 2)), subset - 1, -1).astype(np.int8)
    premultiplied = cols.get("CtfDataAreCtfPremultiplied", 0.0)
    return ParticleMetadata(
        source=path, image_paths=image_paths, image_indices=image_indices,
        pixel_sizes_A=pixel_sizes,
        image_sizes=None if image_size is None else image_size.astype(np.int64),
        ctf=ctf, rotations=rotations, shifts_A=shifts_A, half_set=half_set, data_sign=1.0,
        ctf_premultiplied=bool((premultiplied > 0).any()), table=particles,
    )


def _image_name_column(star_dir: Path, image_paths: Sequence[str | os.PathLike],
                       image_indices: NDArray) -> list[str]:
    names: dict[str, str] = {}
    out = []
    for stack, index in zip(image_paths, image_indices, strict=True):
        key = str(stack)
        if key not in names:
            absolute = Path(key).absolute()
            try:
                names[key] = os.path.relpath(absolute, star_dir.absolute())
            except ValueError:  # different drive (Windows)
                names[key] = str(absolute)
        out.append(f"{int(index) + 1:06d}@{names[key]}")
    return out


def write_particles_star(
    path: str | os.PathLike,
    *,
    image_paths: Sequence[str | os.PathLike],
    image_indices: ArrayLike,
    pixel_size_A: float,
    box_size: int,
    ctf: CTFParams | None = None,
    rotations: ArrayLike | None = None,
    shifts_A: ArrayLike | None = None,
    half_set: ArrayLike | None = None,
    extra_columns: dict[str, ArrayLike] | None = None,
) -> Path:
    """Write a RELION 3.1 particle STAR file (optics table + particle table).

    Parameters
    ----------
    path : path-like
        Output file (overwritten).  Stack paths are written relative to its folder.
    image_paths : sequence of path-like, length n
        Stack of each particle.
    image_indices : array_like of int, shape (n,)
        0-based position in the stack (written 1-based in ``_rlnImageName``).
    pixel_size_A : float
        ``_rlnImagePixelSize`` (Å).
    box_size : int
        ``_rlnImageSize`` (px).
    ctf : CTFParams, optional
        One optics group is written per distinct (voltage, Cs, amplitude contrast).
    rotations : array_like, shape (n, 3, 3), optional
        Written as ``_rlnAngleRot/Tilt/Psi`` (degrees, ZYZ).
    shifts_A : array_like, shape (n, 2), optional
        ``_rlnOriginXAngst/YAngst``.
    half_set : array_like of int, shape (n,), optional
        0/1 written as ``_rlnRandomSubset`` 1/2; -1 (unassigned) is written as 0.
    extra_columns : dict, optional
        More particle columns, keyed by RELION label without the leading ``_`` (e.g.
        ``"rlnClassNumber"``).
    """
    path = Path(path)
    indices = np.asarray(image_indices, dtype=np.int64)
    n = indices.shape[0]
    if len(image_paths) != n:
        raise ValueError(f"{len(image_paths)} image paths for {n} image indices")
    if not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise ValueError(f"pixel_size_A must be positive, got {pixel_size_A}")
    particles = pd.DataFrame(
        {"rlnImageName": _image_name_column(path.parent, image_paths, indices)})
    if ctf is not None:
        if len(ctf) != n:
            raise ValueError(f"ctf has {len(ctf)} particles, expected {n}")
        optics_key = np.stack([ctf.voltage_kV, ctf.cs_mm, ctf.amplitude_contrast], axis=1)
        unique, group = np.unique(optics_key, axis=0, return_inverse=True)
        group = group.reshape(-1)
    else:
        unique, group = np.array([[300.0, 2.7, 0.1]]), np.zeros(n, dtype=np.int64)
    optics = pd.DataFrame({
        "rlnOpticsGroupName": [f"opticsGroup{g + 1}" for g in range(len(unique))],
        "rlnOpticsGroup": np.arange(1, len(unique) + 1),
        "rlnVoltage": unique[:, 0], "rlnSphericalAberration": unique[:, 1],
        "rlnAmplitudeContrast": unique[:, 2],
        "rlnImagePixelSize": float(pixel_size_A), "rlnImageSize": int(box_size),
        "rlnImageDimensionality": 2, "rlnCtfDataAreCtfPremultiplied": 0,
    })
    particles["rlnOpticsGroup"] = group + 1
    if ctf is not None:
        particles["rlnDefocusU"] = ctf.defocus_u_A
        particles["rlnDefocusV"] = ctf.defocus_v_A
        particles["rlnDefocusAngle"] = ctf.defocus_angle_deg
        particles["rlnPhaseShift"] = ctf.phase_shift_deg
        particles["rlnCtfBfactor"] = ctf.bfactor_A2
        particles["rlnCtfScalefactor"] = ctf.scale
    if rotations is not None:
        rot, tilt, psi = matrix_to_euler(np.asarray(rotations))
        particles["rlnAngleRot"] = rot
        particles["rlnAngleTilt"] = tilt
        particles["rlnAnglePsi"] = psi
    if shifts_A is not None:
        shifts = np.asarray(shifts_A, dtype=np.float64).reshape(n, 2)
        particles["rlnOriginXAngst"], particles["rlnOriginYAngst"] = shifts[:, 0], shifts[:, 1]
    if half_set is not None:
        halves = np.asarray(half_set).reshape(n)
        particles["rlnRandomSubset"] = np.where(halves >= 0, halves + 1, 0).astype(np.int64)
    for label, values in (extra_columns or {}).items():
        particles[label] = np.asarray(values)
    tmp = path.with_name(path.name + ".tmp")
    starfile.write({"optics": optics, "particles": particles}, tmp, float_format="%.6f", sep=" ")
    text = tmp.read_text()
    tmp.unlink()
    path.write_text(_STAR_VERSION_LINE + "\n" + text)
    return path
