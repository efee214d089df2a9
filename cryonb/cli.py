"""The ``cryonb`` command line: one subcommand per module in :mod:`cryonb.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

# subcommand name -> module in cryonb.commands (each has add_args(parser) and main(args))
COMMANDS = {
    "demo": "demo",
    "info": "info",
    "project": "project",
    "simulate": "simulate",
    "reconstruct": "reconstruct",
    "fsc": "fsc",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="cryonb",
        description="Ab initio cryo-EM reconstruction (Brubaker, Punjani & Fleet 2015). "
        "Units are Å and degrees; conventions follow RELION (docs/conventions.md).",
    )
    parser.add_argument("--version", action="version", version=f"cryonb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"cryonb.commands.{module_name}")
        doc = (module.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cryonb`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .io.errors import CryonbInputError

    try:
        return int(args._module.main(args) or 0)
    except CryonbInputError as err:
        print(f"cryonb {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
