"""Paths of the sample data bundled in the repository's ``data_samples/`` folder."""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_path"]

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "data_samples"


def sample_path(name: str) -> Path:
    """Absolute path of a bundled sample file, e.g. ``sample_path("emd_1997_64px.mrc")``.

    Raises
    ------
    FileNotFoundError
        With the list of available samples, when ``name`` is not bundled.
    """
    path = SAMPLES_DIR / name
    if not path.exists():
        available = sorted(p.name for p in SAMPLES_DIR.glob("*") if p.name != "README.md")
        raise FileNotFoundError(
            f"sample {name!r} not found in {SAMPLES_DIR}; available: {available}. "
            "Samples ship with the source repository (data_samples/)."
        )
    return path
