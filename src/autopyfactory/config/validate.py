"""Turn a section's string keys into typed models, one problem per bad key.

Besides each model's own declarations, every number of every model must be finite and within
``NUMBER_MAX`` (a third-party plugin that forgets a bound still cannot take ``nan`` or ``1e308``).
Values are quoted in messages only when they cannot be secret: never for secret keys (``SecretStr``
fields, or names like ``token``/``password``), never from a sensitive source (auth.conf), and URLs
lose their password.
"""

from __future__ import annotations

import functools
import math
import re
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from autopyfactory.config.bounds import NUMBER_MAX
from autopyfactory.config.errors import ConfigProblem, Location
from autopyfactory.plugins.base import Plugin, PluginOptions, did_you_mean

_NONE = {"None", "none"}
_SECRET_NAME = re.compile(
    r"pass(word|phrase)?|secret|token|privatekey|privkey|credential|apikey|access_key", re.I
)

Locator = Callable[[str], "Location | str | None"]


def literal(value: str) -> str | None:
    """AutoPyFactory's literals: None/none become None (True/False are parsed by the typed model)."""
    return None if value.strip() in _NONE else value


def secret_key(key: str) -> bool:
    """A key whose value must never be shown (by its name; SecretStr fields are checked too)."""
    return bool(_SECRET_NAME.search(key.rsplit(".", 1)[-1]))


def shown(key: str | None, value: object, *, sensitive: bool = False) -> str:
    """`` (got 'x')`` for messages, or ``''`` when the value may be secret."""
    if sensitive or (key is not None and secret_key(key)) or isinstance(value, SecretStr):
        return ""
    text = str(value)
    if "://" in text and "@" in text:
        try:
            parts = urllib.parse.urlsplit(text)
            if parts.password:
                netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
                text = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        except ValueError:
            return ""
    if len(text) > 80:
        text = text[:77] + "..."
    return f" (got {text!r})"


@functools.cache
def known_suffixes(options_cls: type[PluginOptions]) -> dict[str, str]:
    """key suffix -> field name."""
    out: dict[str, str] = {}
    for name, info in options_cls.model_fields.items():
        if name in options_cls.dynamic.values():
            continue
        out[info.alias or name] = name
    return out


def _is_secret(model: type[BaseModel], field: str) -> bool:
    info = model.model_fields.get(field)
    return info is not None and "SecretStr" in repr(info.annotation)


@functools.cache
def _numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields whose type admits a number (int or float, possibly optional or annotated)."""

    def numeric(annotation: Any) -> bool:
        if annotation in (int, float):
            return True
        return any(numeric(a) for a in typing.get_args(annotation))

    return frozenset(n for n, info in model.model_fields.items() if numeric(info.annotation))


def _non_finite(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return not math.isfinite(float(value))
    except ValueError:
        return False


def number_problems(model: BaseModel) -> list[tuple[str, str]]:
    """(field, message) for every number that is not finite or beyond ``NUMBER_MAX``."""
    out = []
    for name in _numeric_fields(type(model)):
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            out.append((name, "must be a finite number"))
        elif abs(value) > NUMBER_MAX:
            out.append((name, f"is out of range (at most {NUMBER_MAX:g} in size)"))
    return out


def plugin_keys(cls: type[Plugin], section: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """suffix -> (value, full key); the most specific prefix wins (APF's key renaming)."""
    picked: dict[str, tuple[str, str]] = {}
    for prefix in cls.prefixes():
        for key, value in section.items():
            if key.startswith(prefix):
                suffix = key[len(prefix) :]
                picked.setdefault(suffix, (value, key))
    return picked


def _message(err: Any, key: str | None, secret: bool, sensitive: bool) -> str:
    if err["type"] == "missing":
        return "required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    if not secret and "input" in err and not isinstance(err["input"], dict):
        message += shown(key, err["input"], sensitive=sensitive)
    return message


def validate_model(
    model: type[BaseModel],
    values: Mapping[str, str],
    *,
    file_of: Locator,
    section: str,
    sensitive: bool = False,
) -> tuple[BaseModel | None, list[ConfigProblem]]:
    """Validate plain keys against a pydantic model (aliases are the key names)."""
    keys = {(info.alias or name): name for name, info in model.model_fields.items()}
    data = {k: literal(v) for k, v in values.items() if k in keys}
    names = {n: a for a, n in keys.items()}
    numeric = _numeric_fields(model)
    infinite = [k for k, v in data.items() if keys[k] in numeric and _non_finite(v)]
    if infinite:
        return None, [
            ConfigProblem.at(
                file_of(k), section, k, "must be a finite number" + shown(k, data[k], sensitive=sensitive)
            )
            for k in infinite
        ]
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else None
            key = names.get(loc, loc) if loc else None
            secret = loc is not None and _is_secret(model, keys.get(loc, loc))
            problems.append(
                ConfigProblem.at(
                    file_of(key) if key else None, section, key, _message(err, key, secret, sensitive)
                )
            )
        return None, problems
    problems = [ConfigProblem.at(file_of(names[f]), section, names[f], m) for f, m in number_problems(result)]
    return (None if problems else result), problems


def options_from_keys(
    cls: type[Plugin],
    section: Mapping[str, str],
    *,
    file_of: Locator = lambda key: None,
    section_name: str | None = None,
    sensitive: bool = False,
) -> tuple[PluginOptions | None, list[ConfigProblem]]:
    """Validate every key a plugin reads from ``section``; unknown keys under its prefixes are errors."""
    options_cls = cls.Options
    suffixes = known_suffixes(options_cls)
    problems: list[ConfigProblem] = []
    data: dict[str, Any] = {}
    key_of_field: dict[str, str] = {}
    dynamic: dict[str, dict[str, str]] = {name: {} for name in options_cls.dynamic.values()}

    def problem(key: str, message: str) -> None:
        problems.append(ConfigProblem.at(file_of(key), section_name, key, message))

    for suffix, (value, key) in plugin_keys(cls, section).items():
        dyn = next((p for p in options_cls.dynamic if suffix.startswith(p)), None)
        if dyn is not None:
            dynamic[options_cls.dynamic[dyn]][suffix[len(dyn) :]] = value
            continue
        if suffix not in suffixes:
            prefix = key[: len(key) - len(suffix)]
            hint = did_you_mean(suffix, list(suffixes))
            hint = hint.replace("'", "'" + prefix, 1) if hint else ""
            problem(key, f"unknown key for plugin {cls.name}{hint}")
            continue
        field = suffixes[suffix]
        data[suffix] = literal(value)
        key_of_field[field] = key
    for name, values in dynamic.items():
        if values:
            data[name] = values
    numeric = _numeric_fields(options_cls)
    infinite = [s for s, v in data.items() if suffixes.get(s) in numeric and _non_finite(v)]
    for suffix in infinite:
        key = key_of_field[suffixes[suffix]]
        problem(key, "must be a finite number" + shown(key, data[suffix], sensitive=sensitive))
        del data[suffix]  # the other keys are still checked

    try:
        options = options_cls.model_validate(data)
    except ValidationError as exc:
        default_key = cls.prefixes()[0]
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else ""
            field = suffixes.get(loc, loc)
            key = key_of_field.get(field) or (default_key + loc if loc else default_key.rstrip("."))
            if err["type"] == "missing":
                problem(key, f"required key is missing (plugin {cls.name})")
                continue
            secret = _is_secret(options_cls, field) or isinstance(err.get("input"), SecretStr)
            problem(key, _message(err, key, secret, sensitive))
        return None, problems
    for field, message in number_problems(options):
        key = key_of_field.get(field) or cls.prefixes()[0] + field
        problem(key, message)
    return (None if problems else options), problems
