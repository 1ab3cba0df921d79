"""Typed, frozen configuration classes loaded from YAML/TOML/JSON files and overridden by flags.

A config class is a pydantic dataclass with :data:`STRICT` settings (``TrainConfig``); pydantic
checks the types and this module turns its first complaint into one line naming the source, the
key, what it must be and what it got, so a typo in a config never silently falls back to a
default. ``add_arguments`` makes one ``--flag`` per field. Precedence: defaults < config file <
command-line flags. ``ServiceConfig`` (pydantic-settings) shares :func:`read_config_file` and
:class:`ConfigError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names key and source."""


def read_config_file(path: Path | str) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file into a flat mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format (use .yaml, .toml or .json)")
    except (OSError, yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of key: value")
    return data


#: The pydantic settings of every config class: types checked strictly (an int is accepted where
#: a float is wanted, nothing else is converted), unknown keys refused.
STRICT = ConfigDict(strict=True, extra="forbid")

#: What a value of the wrong type should have been, by pydantic error type.
_WANTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
}


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _explain(exc: ValidationError, cls: type, values: dict[str, Any], source: str) -> str:
    """pydantic's first error as one line: the source, the key, what it must be, what it got."""
    error = exc.errors()[0]
    if not error["loc"]:  # a check in __post_init__ (a value out of range): its own message
        return f"{source}: {error.get('ctx', {}).get('error', error['msg'])}"
    name = str(error["loc"][0])
    got = values.get(name)
    if error["type"] == "literal_error":
        hint = typing.get_type_hints(cls)[name]
        args = typing.get_args(hint)
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), hint)
        choices = ", ".join(repr(a) for a in typing.get_args(literal))
        return f"{source}: {name!r} must be one of {choices}, got {got!r}"
    wanted = _WANTED.get(error["type"])
    if wanted is None:
        return f"{source}: {name!r}: {error['msg']}, got {got!r}"
    return f"{source}: {name!r} must be {wanted}, got {got!r}"


def build(cls: type[T], values: dict[str, Any], source: str) -> T:
    """Make a ``cls`` (a pydantic dataclass) from ``values``, refusing unknown keys, wrong types."""
    known = _field_names(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    try:
        return cls(**values)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, cls, values, source)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load(cls: type[T], path: Path | str | None, overrides: dict[str, Any]) -> T:
    """Defaults, then the file at ``path`` (if any), then ``overrides`` (flags that were given)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_config_file(path))
        build(cls, values, str(path))  # report file errors against the file
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build(cls, values, "command line" if path is None else f"{path} + command line")


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """One ``--flag`` per dataclass field, defaulting to None so unset flags do not override.

    The help text is the field's ``help`` metadata and its default (or its
    ``shown_default`` metadata, for a default that depends on other fields).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = f.metadata.get("shown_default", repr(default))
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if origin in (typing.Union, types.UnionType) and len(args) == 1 else hint
        if base is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif typing.get_origin(base) is typing.Literal:
            parser.add_argument(
                flag, dest=f.name, choices=typing.get_args(base), default=None, help=help_text
            )
        elif typing.get_origin(base) in (tuple, list):
            inner = typing.get_args(base)[0]
            parser.add_argument(
                flag, dest=f.name, nargs="+", type=inner, default=None, help=help_text
            )
        elif base in (int, float, str):
            parser.add_argument(flag, dest=f.name, type=base, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags that were given (not None), by field name."""
    names = set(_field_names(cls))
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def to_dict(cfg: Any) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
