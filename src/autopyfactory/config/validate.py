"""Turn a section's string keys into a plugin's typed ``Options``, one problem per bad key."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

from autopyfactory.config.errors import ConfigProblem
from autopyfactory.plugins.base import Plugin, PluginOptions, did_you_mean

_NONE = {"None", "none"}


def literal(value: str) -> str | None:
    """AutoPyFactory's literals: None/none become None (True/False are parsed by the typed model)."""
    return None if value.strip() in _NONE else value


@functools.cache
def known_suffixes(options_cls: type[PluginOptions]) -> dict[str, str]:
    """key suffix -> field name."""
    out: dict[str, str] = {}
    for name, info in options_cls.model_fields.items():
        if name in options_cls.dynamic.values():
            continue
        out[info.alias or name] = name
    return out


def _is_secret(options_cls: type[PluginOptions], field: str) -> bool:
    info = options_cls.model_fields.get(field)
    return info is not None and "SecretStr" in repr(info.annotation)


def plugin_keys(cls: type[Plugin], section: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """suffix -> (value, full key); the most specific prefix wins (APF's key renaming)."""
    picked: dict[str, tuple[str, str]] = {}
    for prefix in cls.prefixes():
        for key, value in section.items():
            if key.startswith(prefix):
                suffix = key[len(prefix) :]
                picked.setdefault(suffix, (value, key))
    return picked


def options_from_keys(
    cls: type[Plugin],
    section: Mapping[str, str],
    *,
    file_of: Callable[[str], str | None] = lambda key: None,
    section_name: str | None = None,
) -> tuple[PluginOptions | None, list[ConfigProblem]]:
    """Validate every key a plugin reads from ``section``; unknown keys under its prefixes are errors."""
    options_cls = cls.Options
    suffixes = known_suffixes(options_cls)
    problems: list[ConfigProblem] = []
    data: dict[str, Any] = {}
    key_of_field: dict[str, str] = {}
    dynamic: dict[str, dict[str, str]] = {name: {} for name in options_cls.dynamic.values()}

    def problem(key: str, message: str) -> None:
        problems.append(ConfigProblem(file_of(key), section_name, key, message))

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

    try:
        options = options_cls.model_validate(data)
        return (None if problems else options), problems
    except ValidationError as exc:
        default_key = cls.prefixes()[0]
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else ""
            field = suffixes.get(loc, loc)
            key = key_of_field.get(field) or default_key + loc
            if err["type"] == "missing":
                problem(key, f"required key is missing (plugin {cls.name})")
                continue
            message = err["msg"]
            if (
                loc  # a whole-model check's input is every value, secrets included
                and not _is_secret(options_cls, field)
                and "input" in err
                and not isinstance(err["input"], SecretStr)
            ):
                message += f" (got {err['input']!r})"
            problem(key, message)
        return None, problems
