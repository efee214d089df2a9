"""cryonb: ab initio cryo-EM reconstruction in the style of Brubaker, Punjani & Fleet (2015).

The library is a set of small composable objects; see ``docs/conventions.md`` for units and
conventions, which follow RELION.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryonb")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
