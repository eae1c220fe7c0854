"""Configs are dataclasses, loaded from YAML or dicts, strictly.

Unknown keys and wrong types are errors naming the key and the file (with a close-match hint), so a
typo never silently falls back to a default. YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gfmkit.files import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, missing or of the wrong type; the message names key and file."""


def load_config(cls: type[T], source: str | os.PathLike | Mapping[str, Any], *, where: str | None = None) -> T:
    """Build dataclass ``cls`` from a YAML file path or a mapping, validating every key and type.

    ``where`` names the origin in error messages (defaults to the file path, or ``<dict>``).
    """
    if isinstance(source, Mapping):
        data, origin = source, where or "<dict>"
    else:
        path = Path(source)
        origin = where or str(path)
        try:
            data = read_yaml(path, origin)
        except FileNotFoundError:
            raise ConfigError(f"{origin}: no such config file") from None
        data = {} if data is None else data
    return _build(cls, data, origin, prefix="")


def read_yaml(path: str | os.PathLike, origin: str | None = None) -> Any:
    """The data of the YAML file ``path``, read with ``yaml.safe_load`` (tags that build Python objects
    are refused); invalid YAML is a :class:`ConfigError` in one line: file, line, column and the problem."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin or path}: not valid YAML{yaml_problem(exc)}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """``" at line L, column C: problem"`` for a YAML error (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    hint = " (YAML indents with spaces, never tabs)" if "\\t" in problem else ""  # PyYAML writes the tab as backslash-t
    return f"{where}: {problem}{hint}"


def config_to_dict(obj: Any) -> Any:
    """Plain-data view of a config (enums to values, paths to strings), suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    return obj


def save_config(obj: Any, path: str | os.PathLike) -> Path:
    """Write a config dataclass as YAML (atomically); :func:`load_config` reads it back equal."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(obj), sort_keys=False))


def _build(cls: type[T], data: Any, origin: str, prefix: str) -> T:
    label = prefix.rstrip(".") or "the top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: {label} must be a mapping of keys to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{origin}: unknown key '{prefix}{key}'{hint}; known keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], origin, f"{prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{origin}: missing required key '{prefix}{name}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: {label}: {exc}") from None


def _coerce(tp: Any, value: Any, origin: str, key: str) -> Any:
    origin_tp = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{origin}: key '{key}' expects {expected}, got {type(value).__name__} {value!r}")

    if tp is Any:
        return value
    if origin_tp in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(option, value, origin, key)
            except ConfigError:
                continue
        fail(" or ".join(_type_name(a) for a in args))
    if origin_tp is typing.Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, origin, prefix=f"{key}.")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            fail("one of " + ", ".join(repr(m.value) for m in tp))
    if origin_tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(_type_name(tp))
        if origin_tp is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                fail(f"{len(args)} items")
            return tuple(_coerce(a, v, origin, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, origin, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin_tp is tuple else items
    if origin_tp in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            fail("a mapping")
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, origin, key): _coerce(vt, v, origin, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if tp is Path:
        if not isinstance(value, (str, os.PathLike)):
            fail("a path")
        return Path(value)
    raise TypeError(f"config type {tp!r} of key '{key}' is not supported by gfmkit.config")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
