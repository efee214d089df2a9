"""cryonb: ab initio cryo-EM reconstruction in the style of Brubaker, Punjani & Fleet (2015).

The library is a set of small composable objects (see ``docs/architecture.md`` for who owns
what, and ``docs/conventions.md`` for units and conventions, which follow RELION):

- :class:`Dataset`: particle images with their CTFs and pixel size (RELION STAR / cryoSPARC).
- :class:`ImageModel`: the forward model of Eq. 1-2 (slice, CTF, shift) at one band limit.
- :class:`Quadrature`: the pose and shift quadrature points and weights of Eq. 4.
- :class:`ImportanceSampler`: the importance-sampling proposals of Eqs. 10-14.
- :class:`SAGDSolver`: Stochastic Average Gradient Descent (Eqs. 7-8) with frequency marching.
- :class:`AbInitioRun`: the whole job: common start, half-set split, outputs.

They are imported lazily, so ``import cryonb`` stays cheap and picks no backend.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("cryonb")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "Dataset": "cryonb.dataset",
    "ImageModel": "cryonb.image_model",
    "Quadrature": "cryonb.quadrature",
    "ImportanceSampler": "cryonb.importance",
    "SAGDSolver": "cryonb.sagd",
    "AbInitioRun": "cryonb.abinitio",
    "AbInitioConfig": "cryonb.abinitio",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import the design objects on first use (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cryonb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
