"""cryonb benchmarks: run with ``./run bench`` (or ``python -m benchmarks``).

Figures are reported as ratios measured in the same run (against the machine's own BLAS GEMM
rate, against the vectorised NumPy path, against RELION on the same data), never as a lone
absolute time.
"""

import math
import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """The shortest wall time in seconds of ``repeat`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def inverse(value: float | None, digits: int = 2) -> float | None:
    """``1 / value`` rounded (Å <-> 1/Å); None for None, NaN or non-positive."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return round(1.0 / value, digits)
