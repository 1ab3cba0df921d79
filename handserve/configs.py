"""The one configuration mechanism of both halves: typed settings from a file, variables and flags.

``TrainConfig`` (training) and ``ServiceConfig`` (serving) are :class:`Settings` subclasses
(pydantic-settings). Each field is declared once with :func:`setting`: its type, its default, its
flag help and its constraints; a comment above it says why the default is what it is. From that
one declaration come

- the ``--flag`` (:meth:`Settings.add_arguments`, one per field, ``None`` when not given so
  that an unset flag overrides nothing);
- the precedence: defaults < config file (YAML, TOML or JSON) < ``HANDSERVE_<FIELD>`` variables
  (only for classes that set :attr:`Settings.ENV_PREFIX`: the service, whose worker processes
  can be configured through nothing else) < flags;
- the refusals: an unknown key, a wrong type or a value out of range is a :class:`ConfigError`
  whose every line names where the bad value came from (``--flag``, ``$VARIABLE`` or
  ``file: key``), what it must be and what it got; a typo never falls back to a default.

Training reads no variables: a run is reproduced from its saved ``config.json`` alone.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import Field, ValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names key and source."""


def read_config_file(path: Path | str) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file into a flat mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ConfigError(f"{path}: unknown config format (use .yaml, .toml or .json)")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    # ValueError: JSON's error, and undecodable text
    except (OSError, yaml.YAMLError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of key: value")
    return data


def setting(
    default: Any = PydanticUndefined,
    help: str = "",
    *,
    shown: str | None = None,
    **constraints: Any,
) -> Any:
    """One field of a :class:`Settings` class: its default, its flag help and its constraints
    (``ge``, ``gt``, ``lt``, ``default_factory``..., as for :func:`pydantic.Field`).

    ``shown`` is the default the help states when the field's own default (``None``) means
    "decided from other fields".
    """
    extra: dict[str, Any] | None = {"shown_default": shown} if shown is not None else None
    return Field(default, description=help, json_schema_extra=extra, **constraints)


@dataclass(frozen=True)
class _Sources:
    """Where :meth:`Settings.load` found values, for the settings sources and for errors."""

    path: str | None = None
    file: dict[str, Any] = field(default_factory=dict)
    environ: Mapping[str, str] | None = None  # None: os.environ
    flags: dict[str, Any] = field(default_factory=dict)


#: The sources of the :meth:`Settings.load` call in progress (pydantic-settings asks the class
#: for its sources from inside ``__init__``, so they travel in a context variable).
_SOURCES: contextvars.ContextVar[_Sources | None] = contextvars.ContextVar(
    "handserve_config_sources", default=None
)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source reading a given mapping (``handserve serve`` checks the
    environment it is about to hand to ``bentoml serve``, not its own)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}


class Settings(BaseSettings):
    """Base of every handserve configuration class (frozen; unknown keys refused)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    #: ``HANDSERVE_`` to read ``HANDSERVE_<FIELD>`` variables (between the file and the flags);
    #: ``None`` reads no variables at all, not even by accident (``SEED=1`` in a shell).
    ENV_PREFIX: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (or keyword arguments) < variables < file < defaults, highest first."""
        sources = _SOURCES.get() or _Sources()  # None: a plain ``Cls(**values)``
        chain: list[PydanticBaseSettingsSource] = [init_settings]
        if cls.ENV_PREFIX is not None:
            environ = sources.environ
            chain.append(
                env_settings if environ is None else _MappingEnvSource(settings_cls, environ)
            )
        chain.append(InitSettingsSource(settings_cls, init_kwargs=sources.file))
        return tuple(chain)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        *,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Self:
        """Defaults < the file at ``path`` < variables (see :attr:`ENV_PREFIX`; ``environ``
        or ``os.environ``) < ``flags`` (by field name; ``None`` values are ignored).

        Raises:
            ConfigError: every unknown key, wrong type or bad value, each naming its source.
        """
        sources = _Sources(
            path=None if path is None else str(path),
            file=read_config_file(path) if path is not None else {},
            environ=environ,
            flags={k: v for k, v in (flags or {}).items() if v is not None},
        )
        token = _SOURCES.set(sources)
        try:
            return cls(**sources.flags)
        except ValidationError as exc:
            raise ConfigError(cls._explain(exc, sources)) from None
        finally:
            _SOURCES.reset(token)

    @classmethod
    def _explain(cls, exc: ValidationError, sources: _Sources) -> str:
        """One line per problem: ``SOURCE: what must hold, got VALUE``."""
        given = os.environ if sources.environ is None else sources.environ
        environ = {k.upper(): v for k, v in given.items()}
        lines, unknown = [], []
        for err in exc.errors(include_url=False):
            name = str(err["loc"][0]) if err["loc"] else ""
            if err["type"] == "extra_forbidden":
                unknown.append(name)
                continue
            what = _what(err)
            source = cls._given(name, sources, environ) if name else None
            if source is None:  # a rule across fields: name every value that was given
                values = [
                    f"{w}={v!r}" if w.startswith(("-", "$")) else f"{w}: {n}={v!r}"
                    for n in cls.model_fields
                    if (g := cls._given(n, sources, environ)) is not None
                    for w, v in [g]
                ]
                lines.append(f"{what} (given: {', '.join(values) or 'defaults only'})")
                continue
            where, value = source
            dotted = ".".join(str(p) for p in err["loc"])
            lines.append(f"{where}: {dotted} {what}, got {value!r}")
        if unknown:
            where = f"{sources.path}: " if sources.path else ""
            known = ", ".join(cls.model_fields)
            lines.insert(0, f"{where}unknown key(s) {', '.join(unknown)}; known keys: {known}")
        return "; ".join(lines)

    @classmethod
    def _given(
        cls, name: str, sources: _Sources, environ: Mapping[str, str]
    ) -> tuple[str, Any] | None:
        """Where the value of field ``name`` came from (the highest source), and the value."""
        if name in sources.flags:
            return "--" + name.replace("_", "-"), sources.flags[name]
        if cls.ENV_PREFIX is not None and (var := cls.ENV_PREFIX + name.upper()) in environ:
            return "$" + var, environ[var]
        if name in sources.file:
            return str(sources.path), sources.file[name]
        return None

    # ------------------------------------------------------------------ flags
    @classmethod
    def add_arguments(
        cls, parser: argparse.ArgumentParser, *, only: Iterable[str] | None = None
    ) -> None:
        """One ``--flag`` per field (or per field in ``only``), its type, choices and help from
        the field; every default is ``None``, so that a flag not given overrides nothing."""
        wanted = set(cls.model_fields if only is None else only)
        for name, info in cls.model_fields.items():
            if name not in wanted:
                continue
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            shown = extra.get("shown_default")
            if shown is None:
                shown = repr(info.get_default(call_default_factory=True))
            kw: dict[str, Any] = {
                "dest": name,
                "default": None,
                "help": f"{info.description} (default: {shown})",
            }
            base = _flag_type(info.annotation)
            if base is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(base) is typing.Literal:
                kw["choices"] = typing.get_args(base)
            elif typing.get_origin(base) in (tuple, list):
                kw.update(nargs="+", type=typing.get_args(base)[0])
            elif base in (int, float):
                kw["type"] = base
            # everything else stays text: str, and mappings written as "a=1,b=2"
            parser.add_argument("--" + name.replace("_", "-"), **kw)

    @classmethod
    def flags_given(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The flags of :meth:`add_arguments` that were given, by field name."""
        return {k: v for k, v in vars(args).items() if k in cls.model_fields and v is not None}

    def to_dict(self) -> dict[str, Any]:
        """Every value, JSON-ready (what a run folder saves as ``config.json``)."""
        return self.model_dump(mode="json")


def _flag_type(hint: Any) -> Any:
    """The type a flag parses: ``X | None`` and ``Annotated[X, ...]`` unwrapped to ``X``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


#: pydantic's constraint errors as "must be" phrases, by error type.
_MUST = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
}


def _what(err: Any) -> str:
    """What must hold, as a phrase: ``must be >= 1``; a validator's own message as it is."""
    template = _MUST.get(err["type"])
    if template is not None:
        try:
            return template.format(**err.get("ctx", {}))
        except (KeyError, IndexError):
            pass
    message = str(err.get("ctx", {}).get("error", err["msg"]))
    return message.removeprefix("Value error, ").replace("Input should be", "must be", 1)
