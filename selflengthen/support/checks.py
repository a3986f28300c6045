"""Typed, checked config sections: the one place a user's value is turned into a Python value.

Every section of the Hydra config is a frozen dataclass owned by the package that uses it (a stage's own
settings sit in the stage's file, the engine's in engines/, training's in training/). `parse_section`
builds one from a plain dict and checks every key before anything loads:
- unknown keys are an error (a misspelt key must not be silently ignored);
- each value must match its field's type (`iterations=true` is not a number, `lr=abc` is not a float);
- ranges come from the field's metadata: `field(default=1, metadata=rule(ge=1))`;
- an optional `check(self)` method on the dataclass adds cross-field rules.
Every failure is one `ConfigError` whose message names the key, the value, the rule and the fix.
Nothing heavy is imported here.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping, Optional


class ConfigError(ValueError):
    """A config value that makes no sense. The message names the key and how to fix it."""


def need(cond: bool, key: str, value: Any, rule: str, fix: str) -> None:
    if not cond:
        raise ConfigError(f"Config error: {key}={value!r} — {rule}. Fix: {fix}")


def rule(*, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
         choices: tuple | None = None, fix: str | None = None) -> dict:
    """Field metadata: the allowed range or choices, and an optional fix text."""
    return {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, fix=fix).items() if v is not None}


def as_dict(node: Any) -> dict:
    """A plain dict from an OmegaConf node or a mapping (None -> {})."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if node is not None and not isinstance(node, Mapping):
        raise ConfigError(f"Config error: a config section was given one value ({node!r}) instead of key=value "
                          f"settings. Fix: set a key inside the section, e.g. run.name=my_run, not run=<value>.")
    return dict(node or {})


def _types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """(accepted runtime types, None allowed) for a field annotation (strings resolved by the caller)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(annotation)
        accepted: list[type] = []
        for a in args:
            if a is type(None):
                continue
            accepted += list(_types(a)[0])
        return tuple(accepted), type(None) in args
    if origin in (list, tuple):
        return (list, tuple), False
    if origin is dict:
        return (dict,), False
    if annotation is Any:
        return (object,), True
    return (annotation,), False


def _coerce(value: Any, types: tuple[type, ...]) -> tuple[bool, Any]:
    """Whether `value` fits `types`, and the value to store (an int where a float is expected becomes float)."""
    if isinstance(value, bool):
        return bool in types, value  # a bool is an int in Python, never a number here
    if float in types and isinstance(value, int):
        return True, float(value)
    if float in types and isinstance(value, float):
        return math.isfinite(value), value
    if (list in types or tuple in types) and isinstance(value, (list, tuple)):
        return True, list(value)
    return isinstance(value, types), value


def _type_word(types: tuple[type, ...], optional: bool) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a mapping"}
    words = " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))
    return words + (" (or null)" if optional else "")


def check_value(key: str, value: Any, annotation: Any, meta: Mapping, default: Any = None) -> Any:
    types, optional = _types(annotation)
    fix = meta.get("fix") or (f"use the default {key}={default!r}" if default is not None else f"see the comment on {key} in conf/")
    if value is None:
        need(optional, key, value, f"must be {_type_word(types, optional)}", fix)
        return None
    ok, value = _coerce(value, types)
    need(ok, key, value, f"must be {_type_word(types, optional)}", fix)
    if isinstance(value, int) and not isinstance(value, bool):
        # every library a value reaches (torch, numpy, the engines) stores it in 64 bits; a seed handed to a
        # trainer or engine must fit numpy's 32-bit seed (else training fails after a round of generation)
        need(-2**63 <= value < 2**63, key, value, "is too large (a whole number must fit in 64 bits)", fix)
        if key.endswith(".seed"):
            need(0 <= value < 2**32, key, value, "must be a whole number from 0 to 4294967295 (numpy's seed range)",
                 f"use {key}=0 or any other number in that range")
    if "choices" in meta:
        need(value in meta["choices"], key, value, f"must be one of {', '.join(map(str, meta['choices']))}", fix)
    for op, word, test in (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
                           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)):
        if op in meta and isinstance(value, (int, float)):
            need(test(value, meta[op]), key, value, f"must be {word} {meta[op]}", fix)
    return value


def parse_section(cls, raw: Any, key: str):
    """Build dataclass `cls` from `raw` (dict or OmegaConf node), checking every field; `key` names the section."""
    raw = as_dict(raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    need(not unknown, f"{key}.{unknown[0] if unknown else ''}", raw.get(unknown[0]) if unknown else None,
         "is not a known key", f"use one of {', '.join(sorted(fields))} (check the spelling)")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        values[name] = check_value(f"{key}.{name}", raw[name], hints[name], f.metadata, default)
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError:
            raise
        except ValueError as exc:  # a cross-field rule phrased as a plain ValueError
            raise ConfigError(f"Config error: {key} — {exc}") from exc
    return obj


def section_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def optional_int(value: Any, key: str, fix: str) -> Optional[int]:
    return check_value(key, value, Optional[int], {"ge": 1, "fix": fix})
