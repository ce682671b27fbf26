"""The public API's arguments, checked where they enter: a wrong type or value is one UserError naming the
argument, not an AttributeError or TypeError from deep inside.

Config dataclasses are checked against their own field declarations (one declaration per concept), so a
field added later is checked too; a field of a type not listed in _TAKES is left to its own checks.
"""

import os
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

from transferlab.errors import UserError, one_line, quoted

# declared type -> (the Python types a value may have, how a message names them)
_TAKES: dict[type, tuple[tuple[type, ...], str]] = {
    Path: ((str, os.PathLike), "a path (str or Path)"), int: ((int,), "a whole number"),
    float: ((int, float), "a number"), str: ((str,), "a string"), bool: ((bool,), "True or False"),
    type(None): ((type(None),), "None")}


def _got(value: object) -> str:
    if value is None:
        return "got None"
    if is_dataclass(value):
        return f"got a {type(value).__name__}"
    shown = quoted(value) if isinstance(value, (str, os.PathLike)) else one_line(repr(value))
    return f"got {type(value).__name__} {shown[:80]}"


def _takes(declared: object) -> tuple[tuple[type, ...], str, object] | None:
    """(accepted types, their description, the item type of a tuple field) or None when not a plain declaration."""
    union = isinstance(declared, types.UnionType) or typing.get_origin(declared) is typing.Union
    accepted, words, item = [], [], None
    for kind in typing.get_args(declared) if union else (declared,):
        if typing.get_origin(kind) is tuple:
            args = typing.get_args(kind)
            if len(args) != 2 or args[1] is not Ellipsis:
                return None
            accepted += [tuple, list]
            words.append("a tuple")
            item = args[0]
        elif kind in _TAKES:
            accepted += _TAKES[kind][0]
            words.append(_TAKES[kind][1])
        else:
            return None
    return tuple(accepted), " or ".join(words), item


def _is_a(value: object, accepted: tuple[type, ...]) -> bool:
    """bool is an int to Python, never to a user: True is refused where a number is wanted."""
    return isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)


def check_field_types(config: object) -> None:
    """Each field of a config dataclass has a value of its declared type, or one UserError naming it."""
    owner = type(config).__name__
    for field in fields(config):
        takes = _takes(field.type)
        if takes is None:
            continue
        accepted, words, item = takes
        value = getattr(config, field.name)
        if not _is_a(value, accepted):
            raise UserError(f"{owner}(): {field.name} must be {words} ({_got(value)})")
        item_takes = _takes(item) if item is not None and isinstance(value, (tuple, list)) else None
        for member in value if item_takes else ():
            if not _is_a(member, item_takes[0]):
                raise UserError(f"{owner}(): {field.name} must hold only {item_takes[1]} values "
                                f"({_got(member)} in it)")


def check_instance(function: str, argument: str, value: object, kind: type, example: str) -> None:
    if not isinstance(value, kind):
        raise UserError(f"{function}(): {argument} must be a {kind.__name__}, e.g. {example} ({_got(value)})")


def check_path(function: str, argument: str, value: object) -> Path:
    if not _is_a(value, (str, os.PathLike)) or str(value) == "":
        raise UserError(f"{function}(): {argument} must be a path (str or Path) ({_got(value)})")
    return Path(value)


def check_paths(function: str, argument: str, value: object) -> list[Path]:
    """One path or a list/tuple of them; a single string is one path, never a sequence of letters."""
    if _is_a(value, (str, os.PathLike)):
        return [check_path(function, argument, value)]
    if not isinstance(value, (list, tuple)) or is_dataclass(value):
        raise UserError(f"{function}(): {argument} must be a path or a list of paths ({_got(value)})")
    return [check_path(function, argument, v) for v in value]


def check_whole_number(function: str, argument: str, value: object, low: int, high: int) -> int:
    if not _is_a(value, (int,)) or not low <= value <= high:
        raise UserError(f"{function}(): {argument} must be a whole number from {low} to {high} ({_got(value)})")
    return value


def check_flag(function: str, argument: str, value: object, none_means: str = "") -> bool | None:
    """True or False; None too where `none_means` says what it leaves to the function."""
    if not isinstance(value, bool) and not (none_means and value is None):
        raise UserError(f"{function}(): {argument} must be True, False{f' or None ({none_means})' if none_means else ''}"
                        f" ({_got(value)})")
    return value
