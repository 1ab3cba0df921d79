"""Typed, frozen configuration dataclasses loaded from YAML/TOML and overridden by flags.

Shared by ``TrainConfig`` and ``ServiceConfig``: one place rejects unknown keys and wrong types
with a message that names the key and the file, so a typo in a config never silently falls back
to a default. Precedence: dataclass defaults < config file < command-line flags.
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


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check ``value`` against the field's type; allow int→float and list→tuple only."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: bad value for {name!r}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: {name!r} must be one of {choices}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {name!r} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(name, v, inner, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {name!r} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {name!r} must be true or false, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: {name!r} must be a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {name!r} must be an integer, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {name!r} must be a string, got {value!r}")
    return value


def build(cls: type[T], values: dict[str, Any], source: str) -> T:
    """Make a ``cls`` from ``values``, rejecting unknown keys and wrong types."""
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    coerced = {k: _coerce(k, v, hints[k], source) for k, v in values.items()}
    try:
        return cls(**coerced)
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

    The help text is the field's ``help`` metadata and its default.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
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
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def to_dict(cfg: Any) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
