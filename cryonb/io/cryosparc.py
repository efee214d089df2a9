"""cryoSPARC ``.cs`` particle files (numpy structured arrays) -> :class:`ParticleMetadata`.

Field mapping (``../shared/design/CONVENTIONS.md`` §2, ``docs/conventions.md``):

* ``blob/path`` (bytes; a leading ``>`` marks a project-relative path) + ``blob/idx`` (0-based);
  ``blob/psize_A`` is the image pixel size, ``blob/shape`` the box, ``blob/sign`` the contrast
  (``-1`` for dark particles: ``data_sign``).
* ``ctf/df1_A`` -> defocus U, ``ctf/df2_A`` -> V, ``ctf/df_angle_rad`` and
  ``ctf/phase_shift_rad`` in radians (converted to degrees), ``ctf/accel_kv``, ``ctf/cs_mm``,
  ``ctf/amp_contrast``, ``ctf/bfactor`` (Å^2), ``ctf/scale``.
* ``alignments3D/pose``: axis-angle vector (radians); the RELION rotation matrix is its matrix
  (as pyem converts it).  ``alignments3D/shift`` in pixels at ``alignments3D/psize_A``, same sign
  as the RELION origin (pyem).  ``alignments3D/split`` 0/1 -> half-set.  No ``.cs`` file with
  both images and 3D poses was available to verify the pose and shift signs against images.
* Voltage, Cs, amplitude contrast, defocus and pixel size are checked against physical ranges
  (:mod:`cryonb.io.validate`; 0-based rows, as numpy indexes the records).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..ctf import CTFParams
from ..rotations import axis_angle_to_matrix
from .errors import input_error
from .metadata import ParticleMetadata
from .star import resolve_image_path
from .validate import check_cryosparc_records

__all__ = ["read_cryosparc_cs"]

_CTF_FIELDS = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm",
               "ctf/amp_contrast")


def _field(path: Path, records: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(records[name], dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(records), -1).any(axis=1))
        raise input_error(path, f"{name} has non-finite values (first at row {rows[0]})",
                          "re-export the particles from cryoSPARC")
    return values


def read_cryosparc_cs(path: str | os.PathLike, *, datadir: str | os.PathLike | None = None
                      ) -> ParticleMetadata:
    """Read a cryoSPARC particle ``.cs`` file.

    Parameters
    ----------
    path : path-like
    datadir : path-like, optional
        Folder that ``blob/path`` is relative to (the cryoSPARC project folder); default: the
        ``.cs`` file's folder (falling back to the stack's file name alone there).

    Returns
    -------
    ParticleMetadata
        With ``data_sign`` from ``blob/sign``; poses, origins and half-sets from
        ``alignments3D`` when present.

    Raises
    ------
    CryonbInputError
        Missing or unreadable files or fields, non-finite values, and ``ctf/accel_kv``,
        ``ctf/cs_mm``, ``ctf/amp_contrast``, ``ctf/df1_A``, ``ctf/df2_A`` or ``blob/psize_A``
        outside their physical ranges (:data:`cryonb.io.validate.RANGES`; named with field
        and 0-based row).
    """
    path = Path(path)
    if not path.exists():
        raise input_error(path, "the .cs file does not exist", "check the path")
    try:
        records = np.load(path, allow_pickle=False)
    except Exception as exc:
        detail = " ".join(str(exc).split())  # the error stays one line
        raise input_error(path, f"not a readable cryoSPARC .cs file ({detail})",
                          "give the particles .cs file exported by cryoSPARC") from exc
    names = records.dtype.names or ()
    missing = [f for f in ("blob/path", "blob/idx", "blob/psize_A") if f not in names]
    if missing:
        raise input_error(path, f"the .cs file lacks the image fields {missing}",
                          "export the particles with their blob (image) fields from cryoSPARC")
    n = len(records)
    if n == 0:
        raise input_error(path, "the .cs file has no particles", "give a non-empty file")
    check_cryosparc_records(path, records)
    base = path.parent
    datadir_path = Path(datadir) if datadir is not None else None
    raw_paths = [p.decode() if isinstance(p, bytes) else str(p) for p in records["blob/path"]]
    resolved = {p: str(resolve_image_path(p.lstrip(">"), base, datadir_path))
                for p in set(raw_paths)}
    image_paths = np.array([resolved[p] for p in raw_paths], dtype=object)
    image_indices = np.asarray(records["blob/idx"], dtype=np.int64)
    pixel_sizes = _field(path, records, "blob/psize_A")
    if not (pixel_sizes > 0).all():
        raise input_error(path, "blob/psize_A is zero or negative",
                          "set the pixel size when importing the particles into cryoSPARC")
    image_sizes = (np.asarray(records["blob/shape"], dtype=np.int64)[:, -1]
                   if "blob/shape" in names else None)
    data_sign = 1.0
    if "blob/sign" in names:
        signs = np.unique(np.asarray(records["blob/sign"], dtype=np.float64))
        if signs.size != 1 or signs[0] not in (-1.0, 1.0):
            raise input_error(path, f"blob/sign takes the values {signs.tolist()}",
                              "split the particles by contrast sign")
        data_sign = float(signs[0])

    ctf = None
    present = [f for f in _CTF_FIELDS if f in names]
    if present:
        missing = [f for f in _CTF_FIELDS if f not in names]
        if missing:
            raise input_error(path, f"CTF fields are missing: {missing}",
                              "export the particles after CTF estimation")
        ctf = CTFParams(
            defocus_u_A=_field(path, records, "ctf/df1_A"),
            defocus_v_A=_field(path, records, "ctf/df2_A"),
            defocus_angle_deg=np.rad2deg(_field(path, records, "ctf/df_angle_rad")),
            voltage_kV=_field(path, records, "ctf/accel_kv"),
            cs_mm=_field(path, records, "ctf/cs_mm"),
            amplitude_contrast=_field(path, records, "ctf/amp_contrast"),
            phase_shift_deg=(np.rad2deg(_field(path, records, "ctf/phase_shift_rad"))
                             if "ctf/phase_shift_rad" in names else 0.0),
            bfactor_A2=_field(path, records, "ctf/bfactor") if "ctf/bfactor" in names else 0.0,
            scale=_field(path, records, "ctf/scale") if "ctf/scale" in names else 1.0,
        )
    rotations = shifts_A = half_set = None
    if "alignments3D/pose" in names:
        rotations = axis_angle_to_matrix(_field(path, records, "alignments3D/pose"))
        shift_px = _field(path, records, "alignments3D/shift").reshape(n, 2)
        psize3d = (_field(path, records, "alignments3D/psize_A")
                   if "alignments3D/psize_A" in names else pixel_sizes)
        shifts_A = shift_px * psize3d[:, None]
        if "alignments3D/split" in names:
            half_set = np.asarray(records["alignments3D/split"], dtype=np.int8)
    return ParticleMetadata(
        source=path, image_paths=image_paths, image_indices=image_indices,
        pixel_sizes_A=pixel_sizes, image_sizes=image_sizes, ctf=ctf, rotations=rotations,
        shifts_A=shifts_A, half_set=half_set, data_sign=data_sign, ctf_premultiplied=False,
    )
