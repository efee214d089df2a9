"""cryonb benchmarks: run with ``./run bench`` (or ``python -m benchmarks``).

Figures are reported as ratios measured in the same run (against the machine's own BLAS GEMM
rate, against the vectorised NumPy path, against RELION on the same data), never as a lone
absolute time.
"""
