"""``Dataset``: particle images (read lazily from disk or held in memory) with their metadata.

A :class:`Dataset` is immutable.  Selection and preprocessing (:meth:`Dataset.subset`,
:meth:`Dataset.halves`, :meth:`Dataset.normalized`, :meth:`Dataset.inverted`,
:meth:`Dataset.fourier_cropped`) return new datasets that share the image source; pixels are read
and processed only when :meth:`Dataset.images` or :meth:`Dataset.batches` is called, so
memory stays bounded by the batch.

Out of core: particles may lie in any number of MRC stacks, referenced by the metadata rows in
any order.  A read groups the requested images by stack and reads each run of consecutive
images with one positioned file read (headers are parsed once per stack; no file stays open and
no stack is memory-mapped for pixels, so the process's resident memory does not fill up with
the pages it has read: the operating system's page cache keeps them instead).  Preprocessing
(background mean, noise scale, Fourier crop to the working box) is applied per batch, and
:meth:`Dataset.batches` reads the next batch in a background thread
(:mod:`cryonb.streaming`).  A run over a 13 GB stack therefore holds a few batches of pixels,
plus per-particle metadata (CTF, poses: ~0.2 kB per particle).

Conventions (``docs/conventions.md``): images ``(n, N, N)`` float32 ``[n, y, x]``, pixel size
in Å from the metadata, RELION contrast (``data_sign`` applied on read), CTFs as
:class:`cryonb.ctf.CTFParams`, poses as rotation matrices, origins in Å (RELION sign),
half-sets 0/1 (-1 unassigned).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .ctf import CTFParams
from .fourier import fourier_crop
from .io.cryosparc import read_cryosparc_cs
from .io.errors import input_error
from .io.metadata import ParticleMetadata
from .io.mrc import MrcStackWriter, read_mrc
from .io.star import read_particles_star, write_particles_star
from .streaming import ArraySource, ImageSource, StackSource, prefetch_batches

__all__ = ["Batch", "Dataset", "GroundTruth"]


# --------------------------------------------------------------------------- preprocessing
def _background_mask(box_size: int, radius_px: float | None) -> NDArray:
    radius = box_size / 2 if radius_px is None else float(radius_px)
    coords = np.arange(box_size) - box_size // 2
    r2 = coords[:, None] ** 2 + coords[None, :] ** 2
    mask = r2 >= radius**2
    if not mask.any():
        raise ValueError(f"no pixel lies outside radius {radius} px in a {box_size} px box")
    return mask


@dataclass(frozen=True)
class _Scale:
    factor: float

    def apply(self, images: NDArray) -> NDArray:
        return images * np.float32(self.factor)


@dataclass(frozen=True)
class _SubtractBackgroundMean:
    radius_fraction: float  # background radius as a fraction of the box size

    def apply(self, images: NDArray) -> NDArray:
        mask = _background_mask(images.shape[-1], self.radius_fraction * images.shape[-1])
        return images - images[:, mask].mean(axis=1)[:, None, None]


@dataclass(frozen=True)
class _FourierCrop:
    box_size: int

    def apply(self, images: NDArray) -> NDArray:
        return fourier_crop(images, self.box_size).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- public types
@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Known answers for simulated data.

    Attributes
    ----------
    volume : ndarray, shape (M, M, M), or None
        The map the particles were simulated from, ``[z, y, x]``.
    volume_pixel_size_A : float or None
    rotations : ndarray, shape (n, 3, 3), or None
        True poses, one per particle of the dataset.
    shifts_A : ndarray, shape (n, 2), or None
        True origins (Å, RELION sign).
    """

    volume: NDArray | None = None
    volume_pixel_size_A: float | None = None
    rotations: NDArray | None = None
    shifts_A: NDArray | None = None

    def subset(self, index: ArrayLike) -> GroundTruth:
        """Poses of the selected particles; the volume is kept."""
        return replace(
            self,
            rotations=None if self.rotations is None else self.rotations[index],
            shifts_A=None if self.shifts_A is None else self.shifts_A[index],
        )


@dataclass(frozen=True, eq=False)
class Batch:
    """A minibatch: ``indices`` into the dataset, images ``(k, N, N)`` and their metadata."""

    indices: NDArray
    images: NDArray
    ctf: CTFParams | None
    rotations: NDArray | None
    shifts_A: NDArray | None


def _normalise_index(index: ArrayLike | slice, n: int) -> NDArray:
    if isinstance(index, slice):
        return np.arange(n)[index]
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean mask of shape {arr.shape} for {n} particles")
        return np.flatnonzero(arr)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"particle index out of range for {n} particles")
    return np.where(arr < 0, arr + n, arr)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Particle images with per-particle CTF, optional poses, half-sets and ground truth.

    Build with :meth:`from_star`, :meth:`from_cryosparc` or :meth:`from_arrays`.

    Attributes
    ----------
    pixel_size_A : float
        Pixel size of the images as returned by :meth:`images` (after any Fourier crop), Å.
    box_size : int
        Side of the images as returned, px.
    ctf : CTFParams or None
    rotations : ndarray, shape (n, 3, 3), or None
        Poses from the metadata (e.g. a previous refinement), if any.
    shifts_A : ndarray, shape (n, 2), or None
    half_set : ndarray of int8, shape (n,), or None
    data_sign : float
        Raw pixels are multiplied by this on read (cryoSPARC ``blob/sign``; :meth:`inverted`).
    truth : GroundTruth or None
    source_name : str
        The file the dataset came from, for messages.
    """

    _source: ImageSource
    _selection: NDArray
    pixel_size_A: float
    box_size: int
    ctf: CTFParams | None = None
    rotations: NDArray | None = None
    shifts_A: NDArray | None = None
    half_set: NDArray | None = None
    data_sign: float = 1.0
    truth: GroundTruth | None = None
    source_name: str = ""
    _steps: tuple = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        images: ArrayLike,
        pixel_size_A: float,
        *,
        ctf: CTFParams | None = None,
        rotations: ArrayLike | None = None,
        shifts_A: ArrayLike | None = None,
        half_set: ArrayLike | None = None,
        truth: GroundTruth | None = None,
    ) -> Dataset:
        """Wrap images held in memory, ``(n, N, N)``, pixel size in Å."""
        array = np.asarray(images)
        if array.ndim != 3 or array.shape[1] != array.shape[2]:
            raise ValueError(f"images must have shape (n, N, N), got {array.shape}")
        if not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
            raise ValueError(f"pixel_size_A must be positive, got {pixel_size_A}")
        n = array.shape[0]
        for name, value in (("ctf", ctf), ("rotations", rotations), ("shifts_A", shifts_A),
                            ("half_set", half_set)):
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries for {n} images")
        return cls(
            _source=ArraySource(array), _selection=np.arange(n), pixel_size_A=float(pixel_size_A),
            box_size=int(array.shape[-1]), ctf=ctf,
            rotations=None if rotations is None else np.asarray(rotations, dtype=np.float64),
            shifts_A=None if shifts_A is None else np.asarray(shifts_A, dtype=np.float64),
            half_set=None if half_set is None else np.asarray(half_set, dtype=np.int8),
            truth=truth, source_name="arrays",
        )

    @classmethod
    def from_star(cls, path: str | os.PathLike, *, datadir: str | os.PathLike | None = None,
                  pixel_size_A: float | None = None, require_ctf: bool = True) -> Dataset:
        """Open a RELION particle STAR file and check its stacks (headers only).

        Parameters
        ----------
        path : path-like
        datadir : path-like, optional
            Folder that relative stack paths start from (default: the STAR file's folder).
        pixel_size_A : float, optional
            Override the metadata's pixel size (Å).
        require_ctf : bool
            Raise if the file has no CTF columns (default); False for CTF-free images.
        """
        meta = read_particles_star(path, datadir=datadir, pixel_size_A=pixel_size_A)
        return cls.from_metadata(meta, require_ctf=require_ctf)

    @classmethod
    def from_cryosparc(cls, path: str | os.PathLike, *, datadir: str | os.PathLike | None = None,
                       require_ctf: bool = True) -> Dataset:
        """Open a cryoSPARC particle ``.cs`` file and check its stacks (headers only)."""
        return cls.from_metadata(read_cryosparc_cs(path, datadir=datadir),
                                 require_ctf=require_ctf)

    @classmethod
    def from_metadata(cls, meta: ParticleMetadata, *, require_ctf: bool = True) -> Dataset:
        """Check the stacks ``meta`` points to and build the dataset (no pixels are read)."""
        src = meta.source
        if meta.ctf is None and require_ctf:
            raise input_error(src, "no CTF columns (_rlnDefocusU, _rlnVoltage, "
                              "_rlnSphericalAberration; cryoSPARC ctf/*)",
                              "add the CTF parameters (run CTF estimation), or pass "
                              "require_ctf=False for images without a CTF")
        if meta.ctf_premultiplied:
            raise input_error(src, "_rlnCtfDataAreCtfPremultiplied = 1: the images were "
                              "multiplied by their CTF, which cryonb's noise model does not "
                              "handle", "re-extract the particles without CTF premultiplication")
        pixel_size = meta.pixel_size_A
        stack_paths, stack_of = np.unique(meta.image_paths.astype(str), return_inverse=True)
        stack_of = stack_of.reshape(-1)
        box = None
        for s, stack in enumerate(stack_paths):
            rows = np.flatnonzero(stack_of == s)
            if not Path(stack).exists():
                raise input_error(src, f"the stack {stack} ({rows.size} particles, first at "
                                  f"data row {rows[0] + 1}) does not exist",
                                  "pass datadir= (--datadir) with the folder the image paths "
                                  "are relative to, or fix the paths")
            mrc = read_mrc(stack, mmap=True)
            shape = mrc.shape if len(mrc.shape) == 3 else (1, *mrc.shape)
            if shape[1] != shape[2]:
                raise input_error(stack, f"the images are not square ({shape[2]} x {shape[1]} "
                                  "px)", "re-extract the particles in a square box")
            if box is None:
                box = shape[1]
            elif shape[1] != box:
                raise input_error(stack, f"its images are {shape[1]} px but other stacks of "
                                  f"{src} hold {box} px images", "re-extract to one box size")
            last = int(meta.image_indices[rows].max())
            if last >= shape[0] or int(meta.image_indices[rows].min()) < 0:
                bad = rows[np.argmax(meta.image_indices[rows])]
                raise input_error(src, f"data row {bad + 1} refers to image {last + 1} of "
                                  f"{stack}, which holds only {shape[0]} images",
                                  "fix the image numbers or use the matching stack")
            header = mrc.voxel_size_A
            if header is not None and abs(header - pixel_size) > 0.01 * pixel_size:
                warnings.warn(f"{stack}: header pixel size {header:.4f} Å differs from the "
                              f"metadata's {pixel_size:.4f} Å; using the metadata",
                              RuntimeWarning, stacklevel=2)
        expected_box = meta.box_size
        if expected_box is not None and expected_box != box:
            raise input_error(src, f"the metadata say {expected_box} px images but the stacks "
                              f"hold {box} px images", "fix _rlnImageSize or use the matching "
                              "stacks")
        source = StackSource(tuple(str(p) for p in stack_paths), stack_of,
                              meta.image_indices.copy(), int(box))
        return cls(
            _source=source, _selection=np.arange(len(meta)), pixel_size_A=pixel_size,
            box_size=int(box), ctf=meta.ctf, rotations=meta.rotations, shifts_A=meta.shifts_A,
            half_set=meta.half_set, data_sign=meta.data_sign, source_name=str(src),
        )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self._selection.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset({len(self)} particles, {self.box_size} px at {self.pixel_size_A:.4f} "
                f"Å/px, ctf={'yes' if self.ctf is not None else 'no'}, "
                f"poses={'yes' if self.rotations is not None else 'no'}, "
                f"source={self.source_name!r})")

    def with_truth(self, truth: GroundTruth) -> Dataset:
        """The same dataset carrying ground truth (poses must have one entry per particle)."""
        for name in ("rotations", "shifts_A"):
            value = getattr(truth, name)
            if value is not None and len(value) != len(self):
                raise ValueError(f"truth.{name} has {len(value)} entries for {len(self)} images")
        return replace(self, truth=truth)

    def with_poses(self, rotations: ArrayLike | None, shifts_A: ArrayLike | None) -> Dataset:
        """The same dataset with other poses (e.g. a reconstruction's estimates)."""
        return replace(
            self,
            rotations=None if rotations is None else np.asarray(rotations, dtype=np.float64),
            shifts_A=None if shifts_A is None else np.asarray(shifts_A, dtype=np.float64),
        )

    # ------------------------------------------------------------------ where the images are
    def reads_from_files(self) -> bool:
        """True when the images are read from MRC stacks (lazily), False when in memory."""
        return hasattr(self._source, "stack_paths")

    def source_paths(self, default: str = "images.mrcs") -> list[str]:
        """The stack file of every particle (``default`` for an in-memory dataset)."""
        src = self._source
        if hasattr(src, "stack_paths"):
            return [str(src.stack_paths[s]) for s in src.stack_of[self._selection]]
        return [default] * len(self)

    def source_indices(self) -> NDArray:
        """Every particle's index (0-based) in its stack (:meth:`source_paths`); for an
        in-memory dataset ``0 .. n - 1``."""
        src = self._source
        if hasattr(src, "index_in_stack"):
            return np.asarray(src.index_in_stack[self._selection])
        return np.arange(len(self))

    # ------------------------------------------------------------------ selection
    def subset(self, index: ArrayLike | slice) -> Dataset:
        """The particles selected by ``index`` (int array, slice or boolean mask)."""
        idx = _normalise_index(index, len(self))
        return replace(
            self,
            _selection=self._selection[idx],
            ctf=None if self.ctf is None else self.ctf.subset(idx),
            rotations=None if self.rotations is None else self.rotations[idx],
            shifts_A=None if self.shifts_A is None else self.shifts_A[idx],
            half_set=None if self.half_set is None else self.half_set[idx],
            truth=None if self.truth is None else self.truth.subset(idx),
        )

    def with_random_halves(self, rng: np.random.Generator) -> Dataset:
        """Assign half-sets 0/1 at random, equal sizes (the first half gets the odd one)."""
        labels = np.zeros(len(self), dtype=np.int8)
        labels[rng.permutation(len(self))[len(self) // 2 + len(self) % 2:]] = 1
        return replace(self, half_set=labels)

    def halves(self, rng: np.random.Generator | None = None) -> tuple[Dataset, Dataset]:
        """Split into the two half-sets (gold standard).

        Uses ``half_set`` when every particle has one; otherwise draws a random equal split with
        ``rng`` (required then).
        """
        ds = self
        if self.half_set is None or not np.isin(self.half_set, (0, 1)).all():
            if rng is None:
                raise ValueError("the dataset has no complete half-set labels; pass rng= to "
                                 "draw a random split")
            ds = self.with_random_halves(rng)
        return ds.subset(ds.half_set == 0), ds.subset(ds.half_set == 1)

    # ------------------------------------------------------------------ pixels
    def images(self, index: ArrayLike | slice | None = None) -> NDArray:
        """Read and preprocess images, float32 ``(k, N, N)``.

        Raises
        ------
        CryonbInputError
            If a raw image holds NaN or infinite pixels (naming the stack and image).
        """
        idx = np.arange(len(self)) if index is None else _normalise_index(index, len(self))
        raw_ids = self._selection[idx]
        images = self._source.read(raw_ids)
        finite = np.isfinite(images).all(axis=(1, 2))
        if not finite.all():
            bad = int(raw_ids[np.argmin(finite)])
            where = self._source.describe(bad)
            raise input_error(where.split(" image ")[0] if " image " in where else
                              self.source_name, f"{where} has NaN or infinite pixels "
                              f"({(~finite).sum()} such images in this read)",
                              "remove those particles (e.g. with relion_star_handler or "
                              "Dataset.subset) or re-extract them")
        if self.data_sign != 1.0:
            images *= np.float32(self.data_sign)
        for step in self._steps:
            images = step.apply(images)
        return images

    def batch(self, index: ArrayLike | slice) -> Batch:
        """One minibatch: the images of ``index`` (read and preprocessed) and their metadata."""
        idx = _normalise_index(index, len(self))
        return Batch(
            indices=idx, images=self.images(idx),
            ctf=None if self.ctf is None else self.ctf.subset(idx),
            rotations=None if self.rotations is None else self.rotations[idx],
            shifts_A=None if self.shifts_A is None else self.shifts_A[idx],
        )

    def batches(self, batch_size: int, rng: np.random.Generator | None = None, *,
                drop_last: bool = False, prefetch: int = 1) -> Iterator[Batch]:
        """Iterate over minibatches (shuffled when ``rng`` is given, in order otherwise).

        ``prefetch`` batches are read ahead in a background thread while the caller works
        (:func:`cryonb.streaming.prefetch_batches`; 0: read on demand).  Memory holds at most
        ``prefetch + 1`` batches of images at a time, whatever the size of the stacks.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        index_batches = (order[start:start + batch_size] for start in range(0, stop, batch_size))
        return prefetch_batches(self, index_batches, depth=prefetch)

    def validate(self, batch_size: int = 512) -> None:
        """Read every image once; raise on NaN/inf pixels (stack headers were checked on load)."""
        for _ in self.batches(batch_size):  # in order, the next batch read ahead
            pass

    # ------------------------------------------------------------------ preprocessing
    def _sample_indices(self, n_images: int, rng: np.random.Generator | None) -> NDArray:
        if n_images >= len(self):
            return np.arange(len(self))
        if rng is None:
            return np.linspace(0, len(self) - 1, n_images).astype(np.int64)
        return np.sort(rng.choice(len(self), n_images, replace=False))

    def estimate_noise_sigma(self, *, radius_px: float | None = None, n_images: int = 1000,
                             rng: np.random.Generator | None = None) -> float:
        """Noise standard deviation from the pixels outside the particle circle.

        Each image's background mean is removed, then the standard deviation of the pooled
        background pixels (``r >= radius_px`` from the centre ``N//2``; default ``N/2``, the
        corners outside the inscribed circle) is returned.  Uses up to ``n_images`` images
        (evenly spaced, or drawn with ``rng``).
        """
        mask = _background_mask(self.box_size, radius_px)
        images = self.images(self._sample_indices(n_images, rng))
        background = images[:, mask].astype(np.float64)
        background -= background.mean(axis=1, keepdims=True)
        return float(np.sqrt(np.mean(background**2)))

    def normalized(self, *, radius_px: float | None = None, n_images: int = 1000,
                   rng: np.random.Generator | None = None) -> Dataset:
        """Subtract each image's background mean and divide by the dataset's noise sigma.

        After this the background pixels have mean 0 and standard deviation ~1 (one scale for
        the whole dataset, so relative image intensities are kept).
        """
        radius = self.box_size / 2 if radius_px is None else float(radius_px)
        centred = replace(self, _steps=(*self._steps,
                                        _SubtractBackgroundMean(radius / self.box_size)))
        sigma = centred.estimate_noise_sigma(radius_px=radius, n_images=n_images, rng=rng)
        if not sigma > 0:
            raise ValueError(f"{self.source_name}: the background has zero variance; cannot "
                             "normalise")
        return replace(centred, _steps=(*centred._steps, _Scale(1.0 / sigma)))

    def inverted(self) -> Dataset:
        """Flip the contrast (dark <-> white particles)."""
        return replace(self, data_sign=-self.data_sign)

    def fourier_cropped(self, box_size: int) -> Dataset:
        """Downsample to ``box_size`` px by Fourier cropping; the pixel size grows accordingly."""
        if box_size > self.box_size or box_size < 8:
            raise ValueError(f"box_size must lie in [8, {self.box_size}], got {box_size}")
        if box_size == self.box_size:
            return self
        return replace(self, _steps=(*self._steps, _FourierCrop(int(box_size))),
                       box_size=int(box_size),
                       pixel_size_A=self.pixel_size_A * self.box_size / box_size)

    # ------------------------------------------------------------------ output
    def write(self, star_path: str | os.PathLike, stack_path: str | os.PathLike | None = None,
              *, batch_size: int = 1024) -> Path:
        """Write the (preprocessed) images to one MRCS stack and a RELION 3.1 STAR file.

        The stack defaults to the STAR path with suffix ``.mrcs``.  Poses, origins and
        half-sets are written when present.
        """
        star_path = Path(star_path)
        stack = Path(stack_path) if stack_path is not None else star_path.with_suffix(".mrcs")
        star_path.parent.mkdir(parents=True, exist_ok=True)
        stack.parent.mkdir(parents=True, exist_ok=True)
        with MrcStackWriter(stack, len(self), self.box_size, self.pixel_size_A) as writer:
            for batch in self.batches(batch_size):  # in order, the next batch read ahead
                writer.write(int(batch.indices[0]), batch.images)
        return write_particles_star(
            star_path, image_paths=[str(stack)] * len(self), image_indices=np.arange(len(self)),
            pixel_size_A=self.pixel_size_A, box_size=self.box_size, ctf=self.ctf,
            rotations=self.rotations, shifts_A=self.shifts_A, half_set=self.half_set,
        )
