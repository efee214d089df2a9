"""Array-namespace helpers for the device path: find the namespace, move arrays, dtypes.

The device path is written against the Python array API standard
(https://data-apis.org/array-api/), so it runs on any namespace that implements it: NumPy and
CuPy through ``array_api_compat``'s wrappers, and ``array_api_strict`` in the tests (a minimal
namespace that rejects every call outside the standard).  Everything here is standard except
:func:`to_host`, whose CuPy branch is marked.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "complex_dtype",
    "complex_from_parts",
    "is_single_precision",
    "namespace_of",
    "real_dtype",
    "resolve_namespace",
    "to_host",
    "to_namespace",
]


def namespace_of(*arrays: Any) -> ModuleType:
    """The array-API namespace of ``arrays`` (``array_api_compat.array_namespace``)."""
    return array_api_compat.array_namespace(*arrays)


def resolve_namespace(xp: Any) -> ModuleType:
    """An array-API namespace from a module (``numpy``, ``cupy``, ``array_api_strict``, ...).

    Plain ``numpy`` and ``cupy`` are replaced by their ``array_api_compat`` wrappers, which add
    the standard's names (``concat``, ``permute_dims``, ``astype``, ``atan2``, ...).
    """
    return array_api_compat.array_namespace(xp.empty(0))


def is_single_precision(xp: ModuleType, dtype: Any) -> bool:
    """True for float32 and complex64."""
    return dtype in (xp.float32, xp.complex64)


def real_dtype(xp: ModuleType, dtype: Any) -> Any:
    """float32 for float32/complex64, else float64 (a dtype of namespace ``xp``)."""
    return xp.float32 if is_single_precision(xp, dtype) else xp.float64


def complex_dtype(xp: ModuleType, dtype: Any) -> Any:
    """complex64 for float32/complex64, else complex128 (a dtype of namespace ``xp``)."""
    return xp.complex64 if is_single_precision(xp, dtype) else xp.complex128


def complex_from_parts(re: Any, im: Any) -> Any:
    """``re + 1j * im`` for two real arrays of one namespace (the standard has no ``complex``)."""
    xp = namespace_of(re, im)
    cdt = complex_dtype(xp, re.dtype)
    return xp.astype(re, cdt) + xp.astype(im, cdt) * xp.asarray(1j, dtype=cdt)


def to_namespace(xp: ModuleType, array: ArrayLike | Any, dtype: Any = None) -> Any:
    """``array`` (host NumPy data or an array of ``xp``) as an array of ``xp`` on its device.

    Host data are copied to the device; an array already in ``xp`` is returned as is (cast to
    ``dtype`` when given).
    """
    if array_api_compat.is_array_api_obj(array) and not isinstance(array, np.ndarray):
        if namespace_of(array) is xp:
            return array if dtype is None or array.dtype == dtype else xp.astype(array, dtype)
    host = np.ascontiguousarray(array)
    return xp.asarray(host) if dtype is None else xp.asarray(host, dtype=dtype)


def to_host(array: Any) -> NDArray:
    """``array`` as a NumPy array on the host (a copy when it lives on a device)."""
    if isinstance(array, np.ndarray):
        return array
    if array_api_compat.is_cupy_array(array):  # CuPy-specific: device -> host copy
        return array.get()
    return np.asarray(array)
