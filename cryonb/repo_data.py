"""Paths of the real particle data bundled with the source repository (``tests/data/real``).

These are test fixtures with provenance notes (``tests/data/real/PROVENANCE.md``), not installed
with the package; notebooks use them as a stand-in for a user's own data when run from a clone.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REAL_DATA_DIR", "real_data_path"]

REAL_DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "real"


def real_data_path(name: str) -> Path:
    """Absolute path of a bundled real-data file, e.g.
    ``real_data_path("cryodrgn_empiar10076/empiar_10076_7.star")``.

    Raises
    ------
    FileNotFoundError
        Naming the folder and what it holds, when ``name`` is not there (for example in an
        installed package, which does not carry the test data).
    """
    path = REAL_DATA_DIR / name
    if not path.exists():
        available = (sorted(str(p.relative_to(REAL_DATA_DIR)) for p in REAL_DATA_DIR.rglob("*")
                            if p.is_file() and p.name != "PROVENANCE.md")
                     if REAL_DATA_DIR.is_dir() else [])
        raise FileNotFoundError(
            f"real data {name!r} not found in {REAL_DATA_DIR}; available: {available}. "
            "These files ship with the source repository (tests/data/real/), not the package.")
    return path
