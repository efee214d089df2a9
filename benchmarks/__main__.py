"""Run every benchmark module and print a table of ratios (see benchmarks/__init__.py)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

MODULES = ["bench_projection", "likelihood", "abinitio", "out_of_core", "distributed",
           "honest_resolution"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark modules to run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for the JSON results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or MODULES:
        module = importlib.import_module(f"benchmarks.{name}")
        results = module.run()
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
        print(f"\n== {name}: {module.__doc__.strip().splitlines()[0]}")
        for row in results["rows"]:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
