"""MRC / MRCS files: lazy (memory-mapped) reading and writing with the voxel size.

Conventions (see ``docs/conventions.md``):

* Arrays are ``[z, y, x]`` for volumes and ``[n, y, x]`` for image stacks (x fastest), as
  mrcfile gives them for the standard axis order ``mapc, mapr, maps = 1, 2, 3``; other axis
  orders are permuted on read.
* The voxel size is ``cella / (mx, my, mz)`` in Å.  A header value of 0 is reported as ``None``:
  pixel sizes from STAR / cryoSPARC metadata take precedence over MRC headers.
* Headers are validated strictly first; files that fail (e.g. no ``"MAP "`` id, as written by
  some tools and old EMDB maps) are re-opened with ``permissive=True`` and a warning.
* Stacks are written as RELION does: space group 0 (image stack), float32 (mode 2).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import mrcfile.utils
import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import input_error

__all__ = ["MrcData", "MrcStackWriter", "read_mrc", "read_mrc_header", "write_mrc"]

_HEADER_BYTES = 1024


@dataclass(frozen=True)
class MrcData:
    """An opened MRC file.

    Attributes
    ----------
    path : Path
    data : ndarray
        ``[z, y, x]`` volume, ``[n, y, x]`` stack or ``[y, x]`` image.  A read-only
        ``numpy.memmap`` when opened with ``mmap=True`` (nothing is read until used).
    voxel_size_A : float or None
        Voxel size along x in Å, ``None`` when the header says 0.
    is_stack : bool
        True for image stacks (space group 0 with nz > 1, or a ``.mrcs`` name).
    header_ok : bool
        False when the header failed strict validation and was read permissively.
    """

    path: Path
    data: NDArray
    voxel_size_A: float | None
    is_stack: bool
    header_ok: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``data``."""
        return tuple(self.data.shape)


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]  # (nz, ny, nx) as stored in the file
    dtype: np.dtype
    data_offset: int
    voxel_size_A: float | None
    is_stack: bool
    axis_order: tuple[int, int, int]  # (mapc, mapr, maps)
    header_ok: bool


def _open_header(path: Path) -> _Header:
    if not path.exists():
        raise input_error(path, "the file does not exist", "check the path (and --datadir)")
    if path.is_dir():
        raise input_error(path, "this is a folder, not an MRC file", "give the .mrc/.mrcs file")
    file_size = path.stat().st_size
    if file_size < _HEADER_BYTES:
        raise input_error(path, f"the file has {file_size} bytes, fewer than the 1024-byte MRC "
                          "header: it is truncated or not an MRC file",
                          "re-copy or regenerate the file")
    header_ok = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.open(path, header_only=True, permissive=False)
    except ValueError as strict_error:
        header_ok = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mrc = mrcfile.open(path, header_only=True, permissive=True)
        except Exception as exc:  # pragma: no cover - mrcfile raises several types
            raise input_error(path, f"not a readable MRC file ({exc})",
                              "check that the file is an MRC map or stack") from exc
        strict_message = str(strict_error)
    with mrc:
        header = mrc.header
        nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
        mode = int(header.mode)
        axis_order = (int(header.mapc), int(header.mapr), int(header.maps))
        ext_bytes = int(header.nsymbt)
        voxel = mrc.voxel_size
        ispg = int(header.ispg)
    if min(nx, ny, nz) <= 0 or max(nx, ny, nz) > 1_000_000 or ext_bytes < 0:
        raise input_error(path, f"the header gives impossible dimensions {nx} x {ny} x {nz}: "
                          "this is not an MRC file or its header is corrupt",
                          "check the file type, or re-export it as MRC")
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as exc:
        raise input_error(path, f"unsupported or corrupt MRC mode {mode}",
                          "convert the file to mode 2 (float32), e.g. with relion_image_handler"
                          ) from exc
    if sorted(axis_order) != [1, 2, 3]:
        raise input_error(path, f"invalid axis order mapc/mapr/maps = {axis_order}",
                          "the header is corrupt; re-export the map")
    expected = _HEADER_BYTES + ext_bytes + nx * ny * nz * dtype.itemsize
    if file_size < expected:
        raise input_error(path, f"the file is truncated: the header promises {nz} sections of "
                          f"{ny} x {nx} {dtype} pixels ({expected} bytes) but the file has "
                          f"{file_size} bytes", "re-copy or regenerate the file")
    if not header_ok:
        warnings.warn(f"{path}: the MRC header fails strict validation ({strict_message}); "
                      "read it permissively", RuntimeWarning, stacklevel=3)
    vx = float(voxel.x)
    if vx > 0 and float(voxel.y) > 0 and abs(float(voxel.y) - vx) > 1e-3 * vx:
        warnings.warn(f"{path}: voxel sizes differ along x ({vx}) and y ({float(voxel.y)}); "
                      "using x", RuntimeWarning, stacklevel=3)
    is_stack = (ispg == 0 and nz > 1) or path.suffix.lower() == ".mrcs"
    return _Header(
        shape=(nz, ny, nx), dtype=dtype, data_offset=_HEADER_BYTES + ext_bytes,
        voxel_size_A=vx if vx > 0 else None, is_stack=is_stack, axis_order=axis_order,
        header_ok=header_ok,
    )


def read_mrc_header(path: str | os.PathLike) -> MrcData:
    """Validate a file and return its geometry without touching the pixels.

    Same as :func:`read_mrc` with ``mmap=True``; the pixels are not read.
    """
    return read_mrc(path, mmap=True)


def read_mrc(path: str | os.PathLike, *, mmap: bool = True) -> MrcData:
    """Open an MRC/MRCS file.

    Parameters
    ----------
    path : path-like
    mmap : bool
        Memory-map the pixels (default; reads nothing until used) or load them into memory.

    Returns
    -------
    MrcData
        ``data`` is ``[z, y, x]`` (volume), ``[n, y, x]`` (stack) or ``[y, x]`` (a single image
        stored as a 2D file).

    Raises
    ------
    CryonbInputError
        Missing, truncated or non-MRC files, unsupported modes, impossible headers.
    """
    path = Path(path)
    header = _open_header(path)
    if mmap:
        data: NDArray = np.memmap(path, dtype=header.dtype, mode="r",
                                  offset=header.data_offset, shape=header.shape)
    else:
        count = int(np.prod(header.shape))
        with open(path, "rb") as fh:
            fh.seek(header.data_offset)
            data = np.fromfile(fh, dtype=header.dtype, count=count).reshape(header.shape)
    if header.axis_order != (1, 2, 3):
        # stored axes are (maps, mapr, mapc); output axis j holds spatial axis 3 - j (z, y, x)
        stored = (header.axis_order[2], header.axis_order[1], header.axis_order[0])
        data = data.transpose([stored.index(3 - j) for j in range(3)])
    if data.shape[0] == 1 and not header.is_stack:
        data = data[0]  # a single image or a 2D file
    return MrcData(path=path, data=data, voxel_size_A=header.voxel_size_A,
                   is_stack=header.is_stack, header_ok=header.header_ok)


def _check_voxel_size(voxel_size_A: float) -> float:
    value = float(voxel_size_A)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"voxel_size_A must be a positive number of Å, got {voxel_size_A!r}: "
                         "cryonb always writes the pixel size into MRC headers")
    return value


def write_mrc(path: str | os.PathLike, data: ArrayLike, voxel_size_A: float, *,
              stack: bool | None = None) -> Path:
    """Write a volume, image or stack as float32 MRC with its voxel size.

    Parameters
    ----------
    path : path-like
        Overwritten if it exists.
    data : array_like
        ``[z, y, x]`` volume, ``[n, y, x]`` stack or ``[y, x]`` image.
    voxel_size_A : float
        Pixel size in Å (must be positive).
    stack : bool, optional
        Mark a 3D array as an image stack (space group 0).  Default: True for ``.mrcs`` names.

    Returns
    -------
    Path
    """
    path = Path(path)
    voxel = _check_voxel_size(voxel_size_A)
    array = np.ascontiguousarray(np.asarray(data), dtype=np.float32)
    if stack is None:
        stack = path.suffix.lower() == ".mrcs"
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(array)
        if stack and array.ndim == 3:
            mrc.set_image_stack()
        mrc.voxel_size = (voxel, voxel, voxel)
    return path


class MrcStackWriter:
    """Write a large float32 image stack in chunks, never holding it in memory.

    Parameters
    ----------
    path : path-like
        Output ``.mrcs`` file (overwritten).
    n_images, box_size : int
    pixel_size_A : float

    Examples
    --------
    >>> with MrcStackWriter("particles.mrcs", 1000, 128, 2.8) as writer:  # doctest: +SKIP
    ...     writer.write(0, images[:500])
    ...     writer.write(500, images[500:])

    Header statistics (min, max, mean, rms) are accumulated chunk by chunk and written on close.
    """

    def __init__(self, path: str | os.PathLike, n_images: int, box_size: int,
                 pixel_size_A: float) -> None:
        self.path = Path(path)
        self.n_images = int(n_images)
        self.box_size = int(box_size)
        self.pixel_size_A = _check_voxel_size(pixel_size_A)
        self._file: Any = None
        self._data_offset = 0
        self._written = np.zeros(self.n_images, dtype=bool)
        self._stats = [np.inf, -np.inf, 0.0, 0.0]  # min, max, sum, sum of squares

    def __enter__(self) -> MrcStackWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the file with its final size and header; pixels are written by :meth:`write`.

        Pixels go through ordinary file writes, not a memory map, so the written stack does not
        count towards (or stay in) the process's resident memory.
        """
        shape = (self.n_images, self.box_size, self.box_size)
        with mrcfile.new_mmap(self.path, shape=shape, mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = (self.pixel_size_A,) * 3
            self._data_offset = int(mrc.header.nbytes + mrc.extended_header.nbytes)
        self._file = open(self.path, "r+b")  # closed in close()

    def write(self, start: int, images: ArrayLike) -> None:
        """Write ``images`` (k, box, box) at positions ``start .. start + k - 1`` (0-based)."""
        if self._file is None:
            self.open()
        chunk = np.asarray(images, dtype=np.float32)
        if chunk.ndim != 3 or chunk.shape[1:] != (self.box_size, self.box_size):
            raise ValueError(f"expected images of shape (k, {self.box_size}, {self.box_size}), "
                             f"got {chunk.shape}")
        stop = start + chunk.shape[0]
        if start < 0 or stop > self.n_images:
            raise ValueError(f"images {start}..{stop - 1} do not fit a stack of {self.n_images}")
        assert self._file is not None
        self._file.seek(self._data_offset + start * self.box_size**2 * 4)
        self._file.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())
        self._written[start:stop] = True
        values = chunk.astype(np.float64)
        self._stats[0] = min(self._stats[0], float(values.min()))
        self._stats[1] = max(self._stats[1], float(values.max()))
        self._stats[2] += float(values.sum())
        self._stats[3] += float(np.square(values).sum())

    def close(self) -> None:
        """Write the header statistics and close; an error if images were never written."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if not self._written.all():
            missing = np.flatnonzero(~self._written)
            raise RuntimeError(f"{self.path}: {missing.size} images were never written "
                               f"(first: {missing[0]})")
        count = self._written.size * self.box_size**2
        mean = self._stats[2] / count
        with mrcfile.mmap(self.path, mode="r+") as mrc:  # the pixels are not read
            mrc.header.dmin = self._stats[0]
            mrc.header.dmax = self._stats[1]
            mrc.header.dmean = mean
            mrc.header.rms = np.sqrt(max(self._stats[3] / count - mean**2, 0.0))
