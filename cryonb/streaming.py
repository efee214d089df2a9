"""Read minibatches ahead of use in a background thread, so disk reads overlap compute.

Two forms of the same idea:

* :func:`prefetch_batches` -- an iterator over ``Batch`` objects for a known sequence of index
  batches (``Dataset.batches`` uses it): while the caller works on batch ``k``, batch ``k + 1``
  (up to ``k + depth``) is read and preprocessed.
* :class:`Prefetcher` -- request / get by index array, for a loop that knows its next batch only
  one step ahead (:class:`cryonb.sagd.SAGDSolver` asks its objective to
  :meth:`~cryonb.objective.MarginalObjective.prefetch` the next minibatch; the objective then
  :meth:`Prefetcher.get` s the images).  A ``get`` for indices that were never requested reads
  them directly, so prefetching changes when pixels are read, never which.

Memory: at most ``depth`` (iterator) or ``capacity`` (prefetcher) batches are read ahead, plus
the one in use; the result is identical to reading directly (same function, another thread).
An exception raised while reading is raised again in the caller, at the batch it belongs to.
Reading is thread-safe: image sources open their own file handles per read
(:class:`cryonb.dataset.Dataset`); file reads release the GIL, and so do the solver's heavy
kernels (BLAS, numba), so the two threads run at the same time.

Where the pixels come from: an :class:`ImageSource`, in memory (:class:`ArraySource`) or
rows of MRC stacks read with positioned file reads (:class:`StackSource`).
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .io.errors import input_error
from .io.mrc import read_mrc

__all__ = ["ArraySource", "ImageSource", "Prefetcher", "StackLayout", "StackSource",
           "prefetch_batches"]

T = TypeVar("T")


def prefetch_batches(dataset: Any, index_batches: Iterable[ArrayLike], depth: int = 1
                     ) -> Iterator[Any]:
    """Yield ``dataset.batch(indices)`` for each index array, reading ``depth`` batches ahead.

    Parameters
    ----------
    dataset : Dataset
        Anything with ``batch(indices) -> Batch`` (a :class:`cryonb.dataset.Dataset`).
    index_batches : iterable of int arrays
        Particle indices of each batch, in the order they are wanted.
    depth : int
        Batches read ahead in one background thread (0: read in the caller's thread).

    Yields
    ------
    Batch
        In the order of ``index_batches``; equal to ``dataset.batch(indices)``.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    indices_iter = iter(index_batches)
    if depth == 0:
        for idx in indices_iter:
            yield dataset.batch(np.asarray(idx, dtype=np.int64))
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryonb-prefetch")
    pending: deque[Future] = deque()

    def submit() -> None:
        for idx in indices_iter:
            pending.append(pool.submit(dataset.batch, np.asarray(idx, dtype=np.int64)))
            return

    try:
        for _ in range(depth + 1):  # the batch to yield next, and `depth` more
            submit()
        while pending:
            batch = pending.popleft().result()  # re-raises the reader's exception here
            submit()
            yield batch
    finally:  # also when the caller stops early: drop what was not started, wait for the rest
        pool.shutdown(wait=True, cancel_futures=True)


class Prefetcher(Generic[T]):
    """Read index batches ahead with ``read(indices)`` in one background thread.

    Parameters
    ----------
    read : callable
        ``read(indices) -> T``, e.g. ``dataset.images``.
    capacity : int
        Requests kept at most; a new request beyond it drops the oldest one.  The solver asks
        for the next batch before it reads the current one, so 2.

    Examples
    --------
    >>> p = Prefetcher(dataset.images)          # doctest: +SKIP
    >>> p.request(next_indices)                 # returns at once, reading starts
    >>> images = p.get(indices)                 # the prefetched read, or a direct one

    The object pickles without its thread or pending reads (e.g. to send an objective to a
    worker process); the thread starts on the first request.
    """

    def __init__(self, read: Callable[[NDArray], T], capacity: int = 2) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.read = read
        self.capacity = int(capacity)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[NDArray, Future]] = deque()
        self.hits = 0  # gets served by a prefetched read
        self.misses = 0  # gets read directly

    def request(self, indices: ArrayLike) -> None:
        """Start reading ``indices`` in the background (returns immediately)."""
        idx = np.array(indices, dtype=np.int64)  # a copy: the caller may reuse its array
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryonb-prefetch")
        self._pending.append((idx, self._pool.submit(self.read, idx)))
        while len(self._pending) > self.capacity:
            _, dropped = self._pending.popleft()
            dropped.cancel()

    def get(self, indices: ArrayLike) -> T:
        """``read(indices)``: from a matching request if there is one, else read now.

        Raises whatever ``read`` raised, also when it ran in the background.  Requests for
        other indices stay pending.
        """
        idx = np.asarray(indices, dtype=np.int64)
        for k, (want, future) in enumerate(self._pending):
            if want.shape == idx.shape and np.array_equal(want, idx):
                del self._pending[k]
                self.hits += 1
                return future.result()
        self.misses += 1
        return self.read(idx)

    def close(self) -> None:
        """Drop pending requests and stop the thread (a later request starts a new one)."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"read": self.read, "capacity": self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["read"], state["capacity"])  # type: ignore[misc]


# --------------------------------------------------------------------------- image sources
class ImageSource(Protocol):
    """Where raw pixels come from: ``read(indices)`` -> float32 ``(k, N, N)``."""

    n_images: int
    box_size: int

    def read(self, indices: NDArray) -> NDArray: ...

    def describe(self, index: int) -> str: ...


@dataclass(frozen=True, eq=False)
class ArraySource:
    array: NDArray  # (n, N, N)

    @property
    def n_images(self) -> int:
        return int(self.array.shape[0])

    @property
    def box_size(self) -> int:
        return int(self.array.shape[-1])

    def read(self, indices: NDArray) -> NDArray:
        return np.asarray(self.array[indices], dtype=np.float32)

    def describe(self, index: int) -> str:
        return f"in-memory image {index}"


@dataclass(frozen=True)
class StackLayout:
    """Where one stack's pixels lie: image ``i`` starts at byte ``offset + i * N * N * itemsize``.

    ``memmap`` is set instead for the rare stacks whose axis order needs a transpose.
    """

    dtype: np.dtype
    offset: int
    memmap: NDArray | None = None


@dataclass(frozen=True, eq=False)
class StackSource:
    """Particles in MRC stacks: ``stack_paths[stack_of[i]]``, image ``index_in_stack[i]``.

    Pixels are read with positioned file reads (one per run of consecutive images), not through
    a memory map: pages touched through a map count towards the process's resident memory and
    stay there while memory is plentiful (reading a 1 GB stack through ``np.memmap`` raised the
    RSS by 1 GB; these reads by the batch size), whereas file reads leave the caching to the
    operating system's page cache.  Files are opened per read, so reads are thread-safe and
    no file handles stay open, whatever the number of stacks.
    """

    stack_paths: tuple[str, ...]
    stack_of: NDArray
    index_in_stack: NDArray
    box_size: int
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_images(self) -> int:
        return int(self.stack_of.shape[0])

    def _layout(self, s: int) -> StackLayout:
        with self._lock:
            if s not in self._cache:
                with warnings.catch_warnings():  # header problems were reported on load
                    warnings.simplefilter("ignore", RuntimeWarning)
                    data = read_mrc(self.stack_paths[s], mmap=True).data
                if isinstance(data, np.memmap) and data.flags.c_contiguous:
                    layout = StackLayout(data.dtype, int(data.offset))
                else:  # a transposed axis order: index the map
                    layout = StackLayout(data.dtype, 0, data[None] if data.ndim == 2 else data)
                self._cache[s] = layout
            return self._cache[s]

    def read(self, indices: NDArray) -> NDArray:
        indices = np.asarray(indices, dtype=np.int64)
        n = self.box_size
        out = np.empty((indices.size, n, n), dtype=np.float32)
        stacks = self.stack_of[indices]
        for s in np.unique(stacks):
            where = np.flatnonzero(stacks == s)
            positions = self.index_in_stack[indices[where]]
            order = np.argsort(positions, kind="stable")  # read the file forwards
            where, positions = where[order], positions[order]
            layout = self._layout(int(s))
            if layout.memmap is not None:
                out[where] = layout.memmap[positions]
                continue
            # runs of consecutive images are read at once
            starts = np.flatnonzero(np.diff(positions, prepend=-2) != 1)
            stops = np.append(starts[1:], positions.size)
            image_bytes = n * n * layout.dtype.itemsize
            with open(self.stack_paths[s], "rb", buffering=0) as fh:
                for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
                    buffer = np.empty((b - a, n, n), dtype=layout.dtype)
                    _read_exactly(fh, layout.offset + int(positions[a]) * image_bytes, buffer,
                                  self.stack_paths[s])
                    out[where[a:b]] = buffer
        return out

    def describe(self, index: int) -> str:
        return (f"{self.stack_paths[self.stack_of[index]]} image "
                f"{self.index_in_stack[index] + 1} (1-based)")

    def __getstate__(self) -> dict:  # file layouts and locks are not sent to other processes
        return {"stack_paths": self.stack_paths, "stack_of": self.stack_of,
                "index_in_stack": self.index_in_stack, "box_size": self.box_size}

    def __setstate__(self, state: dict) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_lock", threading.Lock())


def _read_exactly(fh: Any, offset: int, buffer: NDArray, path: str) -> None:
    """Fill ``buffer`` with the bytes of ``fh`` from ``offset`` (short reads are continued)."""
    view = memoryview(buffer.reshape(-1)).cast("B")
    fh.seek(offset)
    done = 0
    while done < view.nbytes:
        got = fh.readinto(view[done:])
        if not got:
            raise input_error(path, f"the file ended at byte {offset + done} while reading "
                              f"{view.nbytes} bytes from byte {offset}; it was truncated "
                              "after it was opened", "re-copy or regenerate the stack")
        done += got
