"""Typed options from one TOML file: a table of the file becomes a dataclass, checked field by field.

Every stage keeps its options in a dataclass whose defaults are the operators' (for example
:class:`dsacont.service.loop.ServiceOptions`, :class:`dsacont.service.options.PipelineOptions`).
One TOML file can set any of them, a table per dataclass::

    # dsacont.toml
    [service]
    max_inflight = 2
    incomplete_timeout_s = 600

    [pipeline]
    tiles_per_mosaic = 12
    imaging = { niter = 2000 }

:func:`load_toml` reads the file; :func:`from_mapping` builds a dataclass from one table (unknown
keys and wrong types are errors naming the file, the table and the key); :func:`merge` overrides
single fields (command-line flags over the file), as :func:`dataclasses.replace` does.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path

from dsacont.errors import ConfigError


def load_toml(path) -> dict:
    """Read the TOML file at ``path`` as a dict.

    Raises ConfigError naming the file when it is unreadable or not valid TOML.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the options file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"options file {path} is not valid TOML: {exc}") from exc


def _check(value, tp, where: str):
    """``value`` converted to the annotated type ``tp`` (ints are accepted for floats), or ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    base = origin or tp
    if base is typing.Any:
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(base, type) and dataclasses.is_dataclass(base) and isinstance(value, dict):
        return from_mapping(base, value, where=where)
    if isinstance(base, type) and isinstance(value, base):
        return value
    name = getattr(base, "__name__", str(base))
    raise ConfigError(f"{where}: expected {name}, got {type(value).__name__} {value!r}")


def from_mapping(cls, data: dict | None, *, where: str = ""):
    """Build the dataclass ``cls`` with the fields set in ``data`` (defaults elsewhere).

    Raises
    ------
    ConfigError
        For a key that is not a field of ``cls`` (the message lists the known ones) or a value of
        the wrong type; ``where`` (e.g. ``"dsacont.toml [service]"``) prefixes the message.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    data = dict(data or {})
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    values = {k: _check(v, hints[k], f"{where or cls.__name__}: {k}") for k, v in data.items()}
    return cls(**values)


def merge(options, overrides: dict | None):
    """Copy the dataclass ``options`` with the fields in ``overrides`` replaced (type-checked)."""
    if not overrides:
        return options
    checked = from_mapping(type(options), overrides, where=f"{type(options).__name__} override")
    return dataclasses.replace(options, **{k: getattr(checked, k) for k in overrides})


def load(cls, path, table: str):
    """``from_mapping(cls, <table> of the TOML file at path)``; the defaults when the table is absent."""
    return from_mapping(cls, load_toml(path).get(table), where=f"{path} [{table}]")
