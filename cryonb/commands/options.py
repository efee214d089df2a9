"""Command-line options generated from a config dataclass: one default, in the dataclass.

:func:`add_dataclass_options` registers one option per field of a dataclass: the name from
the field's (``foo_bar_A`` -> ``--foo-bar``: underscores become dashes, a trailing unit
suffix such as ``_A``, ``_invA``, ``_s`` or ``_min`` is dropped), the type and the default
from the field, the help from the class docstring's numpydoc ``Attributes`` section (``name :
type`` lines with the description indented below; grouped entries ``a, b : type`` share
theirs).  ``bool`` fields become ``--x/--no-x``, ``X | None`` fields parse ``X``, ``Literal``
fields and the ``choices`` mapping restrict the values, ``tuple[X, X]`` fields take two
values.  The parsed namespace holds every value in the field's own units (``units`` converts
on parsing), so :func:`dataclass_from_args` builds the dataclass back directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_dataclass_options", "dataclass_from_args", "field_help", "option_name",
           "parse_attributes"]

#: Unit suffixes dropped from a field's name to make its option's name (``shift_sigma_A``).
UNIT_SUFFIXES = ("_invA", "_A2", "_A", "_deg", "_px", "_kV", "_mm", "_min", "_s")

_SCALARS = (int, float, str, Path)


def option_name(field_name: str) -> str:
    """``shift_sigma_A`` -> ``--shift-sigma``, ``time_limit_min`` -> ``--time-limit``."""
    name = field_name
    for suffix in UNIT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return "--" + name.replace("_", "-")


def parse_attributes(doc: str | None) -> dict[str, str]:
    """Field name -> description from a numpydoc ``Attributes`` section (one line each).

    An entry is a line at the section's indentation, ``name : type`` or ``a, b : type``
    (the type is optional); its description is the more indented lines below, joined by
    spaces.  The section ends at the next section header (a line underlined by dashes).
    Entries without a description are left out.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    start = next((i + 2 for i in range(len(lines) - 1) if lines[i].strip() == "Attributes"
                  and re.fullmatch(r"-{3,}", lines[i + 1].strip())), None)
    if start is None:
        return {}
    result: dict[str, str] = {}
    names: list[str] = []
    text: list[str] = []

    def flush() -> None:
        if names and text:
            for name in names:
                result[name] = " ".join(text)

    for i in range(start, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()):
            break  # the next section
        if line[:1].isspace():
            text.append(line.strip())
            continue
        flush()
        head = line.split(":", 1)[0]
        names = [n.strip() for n in head.split(",") if n.strip().isidentifier()]
        text = []
    flush()
    return result


def _inline_descriptions(doc: str | None, names: Iterable[str]) -> dict[str, str]:
    """Fallback for prose docstrings: the text after ``` ``name``: ``` up to the next one."""
    text = " ".join(inspect.cleandoc(doc or "").split())
    marks = [(m.start(), m.end(), m.group(1)) for m in re.finditer(r"``(\w+)``:\s", text)]
    wanted = set(names)
    result = {}
    for k, (_, end, name) in enumerate(marks):
        stop = marks[k + 1][0] if k + 1 < len(marks) else len(text)
        if name in wanted:
            result[name] = text[end:stop].strip()
    return result


def field_help(cls: type) -> dict[str, str]:
    """Field name -> description, from the numpydoc ``Attributes`` section of ``cls``.

    A docstring without that section falls back on prose of the form ``` ``name``: text ```.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    found = parse_attributes(cls.__doc__)
    if not found:
        found = _inline_descriptions(cls.__doc__, names)
    return {name: found[name] for name in names if name in found}


def _type_hints(cls: type) -> dict[str, Any]:
    """The fields' types, evaluated; a type that cannot be evaluated is left out."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # e.g. a type imported only under TYPE_CHECKING
        namespace = vars(sys.modules.get(cls.__module__, typing))
        hints = {}
        for f in dataclasses.fields(cls):
            try:
                hints[f.name] = eval(f.type, dict(namespace)) if isinstance(f.type, str) \
                    else f.type
            except Exception:
                continue
        return hints


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(hint)):
            return args[0], True
    return hint, False


def _scaled(convert: Callable[[str], Any], factor: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return convert(text) * factor

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse's error messages
    return parse


def _shown(value: Any, factor: float) -> str:
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, tuple | list):
        return " ".join(_shown(v, factor) for v in value)
    if isinstance(value, int | float):
        return f"{value / factor:g}"
    return str(value)


def add_dataclass_options(
    parser: Any,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    units: Mapping[str, tuple[str, float]] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    help_fallback: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Add one option per init field of the dataclass ``cls`` to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
    cls : dataclass type
    exclude : field names
        Fields left out (their dataclass default then applies).
    rename : mapping
        Field name -> option string, where the generated name (:func:`option_name`) would
        differ from an established one (``{"max_iterations": "--iterations"}``).
    units : mapping
        Field name -> ``(unit, factor)``: the option takes the value in ``unit`` and the field
        holds ``factor`` times it (``{"checkpoint_every_s": ("min", 60.0)}``).
    choices : mapping
        Field name -> allowed values.  Entries for fields ``cls`` does not (yet) have are
        ignored, so the option appears when the field does.
    defaults : mapping
        Field name -> default, for fields without a dataclass default (otherwise the option
        is required).
    help_fallback : mapping
        Field name -> help, used only for fields the docstring does not describe.

    Returns
    -------
    dict
        Field name -> option string, for the fields added.  Each option's ``dest`` is its
        field's name and the parsed value is in the field's units.

    Fields whose type has no command-line form (not int, float, str, Path, bool, Literal,
    tuple of those, or one of them or None) or cannot be evaluated are skipped (the tests
    of each command check that none of its config's fields is).
    """
    rename, units, choices, defaults = rename or {}, units or {}, choices or {}, defaults or {}
    help_fallback = help_fallback or {}
    excluded = set(exclude)
    hints = _type_hints(cls)
    docs = field_help(cls)
    added: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in excluded or f.name not in hints:
            continue
        flag = rename.get(f.name, option_name(f.name))
        if flag in added.values():
            raise ValueError(f"{cls.__name__}: two fields map to {flag}; pass rename=")
        hint, optional = _unwrap(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name}
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        elif f.name in defaults:
            default = defaults[f.name]
        else:
            default, kwargs["required"] = None, True
        unit, factor = units.get(f.name, (None, 1.0))
        allowed = choices.get(f.name)
        nargs = None
        if hint is bool and not optional:
            kwargs["action"] = argparse.BooleanOptionalAction
            convert = None
        elif typing.get_origin(hint) is typing.Literal:
            allowed = allowed or typing.get_args(hint)
            convert = type(allowed[0])
        elif typing.get_origin(hint) is tuple:
            inner = set(typing.get_args(hint)) - {Ellipsis}
            if len(inner) != 1 or not set(inner) <= set(_SCALARS):
                continue
            convert = inner.pop()
            nargs = len(typing.get_args(hint)) if Ellipsis not in typing.get_args(hint) else "+"
        elif hint in _SCALARS:
            convert = hint
        else:
            continue
        if convert is not None:
            kwargs["type"] = _scaled(convert, factor) if unit else convert
            if allowed is not None:
                kwargs["choices"] = list(allowed)
            else:
                kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
            if nargs is not None:
                kwargs["nargs"] = nargs
        description = docs.get(f.name) or help_fallback.get(f.name) or f.name.replace("_", " ")
        if unit:
            description += f" [{unit}]"
        kwargs["help"] = (f"{description} (default: {_shown(default, factor)})"
                          .replace("%", "%%"))
        kwargs["default"] = default
        parser.add_argument(flag, **kwargs)
        added[f.name] = flag
    return added


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """``cls`` from the values :func:`add_dataclass_options` parsed into ``args``.

    Fields not in ``args`` (excluded ones) keep their dataclass defaults; ``overrides`` win.
    """
    values: dict[str, Any] = {}
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init and hasattr(args, f.name):
            value = getattr(args, f.name)
            if typing.get_origin(_unwrap(hints.get(f.name))[0]) is tuple and value is not None:
                value = tuple(value)
            values[f.name] = value
    values.update(overrides)
    return cls(**values)
