"""Strict loading of nested dataclasses from YAML, with `dotted.key=value` overrides.

The loader knows nothing of the recipe: the dataclass annotations are the schema. Overrides are written into
the parsed YAML before anything is checked, so a key from the command line goes through the same checks as
a key from the file, and every problem is a `RecipeError` naming the file or the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe that cannot be used: unreadable file, bad override, unknown key or wrong value."""


def load_dataclass(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Reads the YAML file at `path`, applies `dotted.key=value` overrides and builds `cls` strictly.

    Fields the YAML and the overrides leave out keep their dataclass defaults.
    """
    data = _read_yaml(Path(path))
    for override in overrides:
        _apply_override(data, override)
    return _build(cls, data, prefix="")


def build_dataclass(cls: type[T], data: Any, prefix: str = "") -> T:
    """`cls` from a mapping, as strictly as from a recipe file: unknown keys and wrong types are a
    `RecipeError` naming the dotted key under `prefix`; fields the mapping leaves out keep their defaults."""
    return _build(cls, data, prefix)


def recipe_to_dict(obj: Any) -> dict:
    """The dataclass `obj` as plain nested dicts and lists, ready for YAML or JSON."""
    return dataclasses.asdict(obj)


def save_recipe(obj: Any, path: str | Path) -> None:
    """Writes `obj` as YAML, in field order, so that `load_dataclass(type(obj), path)` rebuilds it."""
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(obj), sort_keys=False))


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:  # an empty file asks for every default
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _apply_override(data: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    names = key.strip().split(".")
    if not sep or not all(names):
        raise RecipeError(f"override {override!r}: expected dotted.key=value, e.g. train.lr=1e-3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"override {override!r}: malformed YAML value ({getattr(e, 'problem', None) or e})") from None
    node = data
    for depth, name in enumerate(names[:-1], start=1):
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {override!r}: {'.'.join(names[:depth])!r} is not a mapping")
    node[names[-1]] = value


def _build(cls: type[T], data: Any, prefix: str) -> T:
    if not isinstance(data, dict):
        raise _type_error(prefix, cls, data)
    hints = typing.get_type_hints(cls)  # resolves the string annotations of `from __future__ import annotations`
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            raise RecipeError(_unknown_key(key, str(name), names, prefix))
        values[name] = _convert(hints[name], value, key)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not types.NoneType]
        if len(others) != 1:
            raise TypeError(f"{key}: unsupported field type {tp}; only Optional[X] unions are supported")
        return None if value is None else _convert(others[0], value, key)
    if origin is Literal:
        return _choose(args, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, tp, value)
        return [_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp not in (int, float, str, bool, dict):
        raise TypeError(f"{key}: unsupported field type {tp}")
    if type(value) is tp:  # `type is`, not isinstance: a bool is not an int
        return value
    if tp is float and type(value) is int:
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise _type_error(key, tp, value)


def _choose(choices: tuple, value: Any, key: str) -> Any:
    if any(type(value) is type(c) and value == c for c in choices):  # 1 is not True, "1" is not 1
        return value
    listed = ", ".join(map(repr, choices))
    by_text = {str(c): c for c in choices}
    close = difflib.get_close_matches(str(value), by_text, n=1)
    hint = f"; did you mean {by_text[close[0]]!r}?" if close else ""
    raise RecipeError(f"{key}: {value!r} is not one of {listed}{hint}")


def _unknown_key(key: str, name: str, names: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        suggestion = f"{prefix}.{close[0]}" if prefix else close[0]
        return f"unknown key {key!r}; did you mean {suggestion!r}?"
    where = f" in {prefix!r}" if prefix else ""
    return f"unknown key {key!r}; valid keys{where}: {', '.join(names)}"


def _type_error(key: str, tp: Any, value: Any) -> RecipeError:
    if dataclasses.is_dataclass(tp):
        expected = f"a mapping of {tp.__name__} fields"
    else:
        expected = {list: "a list", dict: "a mapping"}.get(typing.get_origin(tp) or tp, tp.__name__)
    return RecipeError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")
