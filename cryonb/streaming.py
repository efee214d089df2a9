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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Prefetcher", "prefetch_batches"]

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
