"""Array backend selection: NumPy (default) or CuPy, per object or per ``with`` block.

No backend is chosen at import time.  Objects that compute take a ``backend`` argument;
when it is ``None`` they use the backend of the innermost :func:`use_backend` block,
else NumPy.  CuPy is imported lazily, only when asked for.

A third name, ``"array_api_strict"``, selects the strict array-API namespace of the
``array-api-strict`` package (a test dependency): it runs the backend-generic device path of
:mod:`cryonb.device` on the host, to check that it uses the standard only.  Only the objects
that route to :mod:`cryonb.device` (e.g. :class:`cryonb.objective.MarginalObjective`) accept it.

Examples
--------
>>> from cryonb.backend import get_backend, use_backend
>>> get_backend().name
'numpy'
>>> with use_backend("numpy"):
...     get_backend().name
'numpy'
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["Backend", "cupy_available", "get_backend", "use_backend"]


@dataclass(frozen=True)
class Backend:
    """An array namespace and its FFT module.

    Attributes
    ----------
    name : str
        ``"numpy"``, ``"cupy"`` or ``"array_api_strict"``.
    xp : module
        The array namespace (``numpy``, ``cupy`` or ``array_api_strict``).
    fft : module
        Its FFT module (``numpy.fft``, ``cupy.fft``, ``array_api_strict.fft``).
    """

    name: str
    xp: ModuleType
    fft: ModuleType

    @property
    def is_numpy(self) -> bool:
        """True for the host (NumPy) backend, where numba kernels may be used."""
        return self.name == "numpy"

    @property
    def namespace(self) -> ModuleType:
        """The array-API-standard namespace of this backend, used by :mod:`cryonb.device`.

        ``array_api_compat``'s wrapper for NumPy and CuPy; the module itself otherwise.
        """
        import array_api_compat

        return array_api_compat.array_namespace(self.xp.empty(0))

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Move ``array`` to this backend's device (no copy if it is already there)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_host(self, array: Any) -> np.ndarray:
        """Return ``array`` as a NumPy array on the host."""
        if self.name == "cupy" and not isinstance(array, np.ndarray):
            return array.get()
        return np.asarray(array)


NUMPY = Backend("numpy", np, np.fft)

_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "cryonb_backend", default=None
)


def cupy_available() -> bool:
    """True if CuPy imports and sees a usable CUDA device."""
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # ImportError, CUDARuntimeError, ...
        return False


def _make_backend(name: str) -> Backend:
    if name == "numpy":
        return NUMPY
    if name == "cupy":
        if not cupy_available():
            raise RuntimeError(
                "backend 'cupy' was requested but CuPy is not installed or no CUDA device "
                "is available; install it with `pip install cryonb[gpu]` on a machine with "
                "a GPU, or use backend='numpy'."
            )
        import cupy

        return Backend("cupy", cupy, cupy.fft)
    if name == "array_api_strict":  # testing only: the device path in a strict namespace
        try:
            import array_api_strict
        except ImportError as err:
            raise RuntimeError("backend 'array_api_strict' needs the array-api-strict package "
                               "(`pip install cryonb[test]`)") from err
        return Backend("array_api_strict", array_api_strict, array_api_strict.fft)
    raise ValueError(f"unknown backend {name!r}; expected 'numpy', 'cupy' or "
                     "'array_api_strict'")


def get_backend(backend: str | Backend | None = None) -> Backend:
    """Resolve a backend.

    Parameters
    ----------
    backend : {"numpy", "cupy", "array_api_strict"}, Backend or None
        An explicit choice; ``None`` means the backend of the innermost
        :func:`use_backend` block, or NumPy outside any block.
    """
    if isinstance(backend, Backend):
        return backend
    if backend is None:
        current = _current.get()
        return current if current is not None else NUMPY
    return _make_backend(backend)


@contextlib.contextmanager
def use_backend(backend: str | Backend) -> Iterator[Backend]:
    """Make ``backend`` the default for objects created or called inside the block."""
    resolved = get_backend(backend)
    token = _current.set(resolved)
    try:
        yield resolved
    finally:
        _current.reset(token)


def backend_of(array: Any) -> Backend:
    """The backend an array lives on (NumPy unless it is a CuPy array)."""
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return NUMPY
    module = type(array).__module__
    if module.startswith("cupy"):
        return _make_backend("cupy")
    return NUMPY
