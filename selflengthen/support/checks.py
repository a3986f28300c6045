"""Typed, checked config sections: the one place a user's value is turned into a Python value.

Every section of the Hydra config is a frozen dataclass owned by the package that uses it (a stage's own
settings sit in the stage's file, the engine's in engines/, training's in training/); a field's allowed range
or choices are its metadata, `field(default=1, metadata=rule(ge=1))`. `parse_section` checks a plain dict
against it through pydantic v2 before anything loads: the dataclass's fields become a pydantic model
(`extra="forbid"`, strict, frozen; a range is `Field(ge=...)`, choices a `Literal[...]`, a float must be
finite), so pydantic does the type and range checks:
- unknown keys are an error (a misspelt key must not be silently ignored);
- each value must match its field's type (`iterations=true` is not a number, `lr=abc` is not a float);
- an optional `check(self)` method on the dataclass adds cross-field rules.
Every failure is one `ConfigError` whose message names the key, the value, the rule and the fix: pydantic's
errors are translated into that paragraph here. Nothing heavy is imported here (pydantic is light).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model


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


_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True, arbitrary_types_allowed=True)
_NUMBERS = {"ge", "gt", "le", "lt"}
_RANGE_ERRORS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _as_list(value: Any) -> list:
    return list(value)


def _pydantic_type(annotation: Any, meta: Mapping) -> Any:
    """The pydantic type a field is checked as: its annotation, with the metadata's range on its numbers,
    its choices as a Literal, and a YAML list accepted where a list or tuple is declared (stored as a list,
    its items unchecked, as Hydra hands them over)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_pydantic_type(a, meta) for a in typing.get_args(annotation))]
    if annotation is type(None) or annotation is Any:
        return annotation
    if origin in (list, tuple) or annotation in (list, tuple):
        return Annotated[typing.Union[list, tuple], AfterValidator(_as_list)]
    if origin is dict:
        return dict
    if "choices" in meta:
        return Literal[tuple(meta["choices"])]
    if annotation in (int, float):
        bounds = {k: v for k, v in meta.items() if k in _NUMBERS}
        return Annotated[annotation, Field(**bounds, **({"allow_inf_nan": False} if annotation is float else {}))]
    return annotation


def _base_types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """(the runtime types a field's annotation names, None allowed): only to phrase a message."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        named = [_base_types(a)[0] for a in typing.get_args(annotation) if a is not type(None)]
        return tuple(t for ts in named for t in ts), type(None) in typing.get_args(annotation)
    if origin in (list, tuple) or annotation in (list, tuple):
        return (list,), False
    if origin is dict:
        return (dict,), False
    if annotation is Any:
        return (object,), True
    return ((annotation,) if isinstance(annotation, type) else (object,)), False


def _type_word(types_: tuple[type, ...], optional: bool) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a mapping"}
    words = " or ".join(dict.fromkeys(names.get(t, getattr(t, "__name__", str(t))) for t in types_))
    return words + (" (or null)" if optional else "")


def _fits(value: Any, types_: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types_
    return isinstance(value, types_) or (float in types_ and isinstance(value, int))


def _rule_broken(key: str, value: Any, annotation: Any, meta: Mapping, errors: list[dict]) -> tuple[Any, str]:
    """(the value as shown, the rule it breaks) for one field's pydantic errors, in today's words."""
    types_, optional = _base_types(annotation)
    if float in types_ and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # shown as the number it would have become
    for e in errors:
        if e["type"] in _RANGE_ERRORS:
            bound = next(iter(e.get("ctx", {}).values()))
            bound = meta.get({">=": "ge", ">": "gt", "<=": "le", "<": "lt"}[_RANGE_ERRORS[e["type"]]], bound)
            return value, f"must be {_RANGE_ERRORS[e['type']]} {bound}"
    if "choices" in meta and any(e["type"] == "literal_error" for e in errors) and _fits(value, types_):
        return value, f"must be one of {', '.join(map(str, meta['choices']))}"
    return value, f"must be {_type_word(types_, optional)}"


def _fix(key: str, meta: Mapping, default: Any) -> str:
    return meta.get("fix") or (f"use the default {key}={default!r}" if default is not None
                               else f"see the comment on {key} in selflengthen/conf/")


def _domain(key: str, value: Any, fix: str) -> Any:
    """Our own rules past the type: every library a value reaches (torch, numpy, the engines) stores a whole
    number in 64 bits, and a seed handed to a trainer or engine must fit numpy's 32-bit seed (else training
    fails after a round of generation)."""
    if isinstance(value, int) and not isinstance(value, bool):
        need(-2**63 <= value < 2**63, key, value, "is too large (a whole number must fit in 64 bits)", fix)
        if key.endswith(".seed"):
            need(0 <= value < 2**32, key, value, "must be a whole number from 0 to 4294967295 (numpy's seed range)",
                 f"use {key}=0 or any other number in that range")
    return value


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any, meta_items: tuple) -> TypeAdapter:
    return TypeAdapter(_pydantic_type(annotation, dict(meta_items)), config=_STRICT)


def _hashable(meta: Mapping) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in meta.items()))


def check_value(key: str, value: Any, annotation: Any, meta: Mapping, default: Any = None) -> Any:
    """One value checked against its annotation and `rule(...)` metadata (pydantic, strict); the checked value."""
    fix = _fix(key, meta, default)
    try:
        checked = _adapter(annotation, _hashable(meta)).validate_python(value)
    except ValidationError as exc:
        shown, broken = _rule_broken(key, value, annotation, meta, exc.errors())
        raise ConfigError(f"Config error: {key}={shown!r} — {broken}. Fix: {fix}") from None
    return _domain(key, checked, fix)


@functools.lru_cache(maxsize=None)
def _model(cls) -> type[BaseModel]:
    """The pydantic model that checks section `cls`: its fields, each optional (a key left out keeps the
    dataclass's default, which is not re-checked) but checked when given."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (_pydantic_type(hints[f.name], f.metadata), None) for f in dataclasses.fields(cls)}
    return create_model(f"{cls.__name__}Section", __config__=_STRICT, **fields)


def parse_section(cls, raw: Any, key: str):
    """Build dataclass `cls` from `raw` (dict or OmegaConf node), every field checked by pydantic; `key` names
    the section."""
    raw = as_dict(raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
        checked = _model(cls).model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        need(not unknown, f"{key}.{unknown[0] if unknown else ''}", raw.get(unknown[0]) if unknown else None,
             "is not a known key", f"use one of {', '.join(sorted(fields))} (check the spelling)")
        hints = typing.get_type_hints(cls)
        name = next(n for n in fields if any(e["loc"][:1] == (n,) for e in errors))
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        shown, broken = _rule_broken(f"{key}.{name}", raw[name], hints[name], f.metadata,
                                     [e for e in errors if e["loc"][:1] == (name,)])
        raise ConfigError(f"Config error: {key}.{name}={shown!r} — {broken}. Fix: "
                          f"{_fix(f'{key}.{name}', f.metadata, default)}") from None
    values = {}
    for name, f in fields.items():
        if name in raw:
            default = f.default if f.default is not dataclasses.MISSING else None
            values[name] = _domain(f"{key}.{name}", getattr(checked, name),
                                   _fix(f"{key}.{name}", f.metadata, default))
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
