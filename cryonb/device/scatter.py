"""Scatter-add: the one operation of the device path that the array API standard lacks.

``out[i] = sum over j with index[j] == i of values[j]`` is what back-projection (the adjoint of
trilinear slicing) needs.  The standard has no scatter or ``add.at``, so this module holds the
only backend-specific code of the device path, three small branches chosen from the array type:

* NumPy: ``numpy.bincount`` with weights (exact, one pass);
* CuPy: ``cupyx.scatter_add`` (atomic adds on the GPU);  # CuPy-specific
* any other namespace (``array_api_strict`` in the tests): :func:`segment_sum`, a sort-based
  segmented sum written with standard functions only -- ``argsort``, ``take``,
  ``cumulative_sum`` (accumulated in float64) and ``searchsorted``.  It costs
  ``O(n log n + size)`` and its rounding error is that of a float64 prefix sum (about
  ``1e-16 * sum |values|`` per output), so it is a portable fallback, not the fast path.

The fallback was chosen over a one-hot matrix product (``(n x size)`` entries: 10^8 already
for a 16-px problem) and over a round trip through NumPy (which would hide non-standard
calls from the strict tests).
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .namespace import complex_from_parts, namespace_of

__all__ = ["scatter_add", "segment_sum"]


def scatter_add(values: Any, index: Any, size: int, *, method: str = "auto") -> Any:
    """Sum ``values`` into ``size`` bins given by ``index``.

    Parameters
    ----------
    values : (n,) real or complex array
    index : (n,) integer array with entries in ``[0, size)``, same namespace as ``values``
    size : number of bins
    method : ``"auto"`` (the namespace's own scatter when there is one, else
        :func:`segment_sum`) or ``"generic"`` (always :func:`segment_sum`)

    Returns
    -------
    (size,) array of the dtype of ``values``, in its namespace
    """
    if method not in ("auto", "generic"):
        raise ValueError(f"unknown method {method!r}; use 'auto' or 'generic'")
    xp = namespace_of(values, index)
    is_complex = xp.isdtype(values.dtype, "complex floating")
    if method == "auto" and array_api_compat.is_numpy_array(values):
        def one(v: Any) -> Any:
            return np.bincount(index, weights=v, minlength=size)
    elif method == "auto" and array_api_compat.is_cupy_array(values):
        import cupyx  # CuPy-specific: atomic scatter-add on the GPU

        def one(v: Any) -> Any:
            out = xp.zeros(size, dtype=v.dtype)
            cupyx.scatter_add(out, index, v)
            return out
    else:
        def one(v: Any) -> Any:
            return segment_sum(v, index, size)
    if not is_complex:
        return xp.astype(one(values), values.dtype)
    rdt = xp.real(values).dtype
    return complex_from_parts(xp.astype(one(xp.real(values)), rdt),
                              xp.astype(one(xp.imag(values)), rdt))


def segment_sum(values: Any, index: Any, size: int) -> Any:
    """Array-API-only scatter-add of real ``values`` (see the module notes); float64 output."""
    xp = namespace_of(values, index)
    order = xp.argsort(index, stable=True)
    keys = xp.take(index, order)
    prefix = xp.cumulative_sum(xp.take(xp.astype(values, xp.float64), order),
                               include_initial=True)                      # (n + 1,)
    bins = xp.arange(size, dtype=index.dtype)
    start = xp.searchsorted(keys, bins, side="left")
    stop = xp.searchsorted(keys, bins, side="right")
    return xp.take(prefix, stop) - xp.take(prefix, start)
