"""The ``cryonb`` command line: one subcommand per module in :mod:`cryonb.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence

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


def build_parser(options_of: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered.

    ``options_of``: the subcommands whose options are registered too (None: all).  Options
    generated from a config dataclass import its module (``reconstruct`` imports
    :mod:`cryonb.abinitio`), so :func:`main` registers only those of the command it runs.
    """
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
        if options_of is None or name in options_of:
            module.add_args(p)
        p.set_defaults(command_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cryonb`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([command] if command in COMMANDS else [])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .io.errors import CryonbInputError

    try:
        return int(args.command_module.main(args) or 0)
    except CryonbInputError as err:
        print(f"cryonb {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
