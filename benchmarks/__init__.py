"""cryonb benchmarks: run with ``./run bench`` (or ``python -m benchmarks``).

Figures are reported as ratios measured in the same run (against the machine's own BLAS GEMM
rate, against the vectorised NumPy path, against RELION on the same data), never as a lone
absolute time.
"""

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
