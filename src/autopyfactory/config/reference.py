"""The key reference: every key of every installed plugin, [Factory] and queue sections, with its
type, default, bounds and description, read from the declarations (``apf plugins``, docs/keys.md).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from autopyfactory.plugins import base as plugins
from autopyfactory.plugins.keys import AUTH_META, NeedsModules

KIND_TITLES = {
    "wmsstatus": "WMS status (wmsstatusplugin): where demand comes from",
    "batchstatus": "batch status (batchstatusplugin): where pilots are observed",
    "batchsubmit": "batch submit (batchsubmitplugin): where pilots are submitted",
    "sched": "scheduler (schedplugin): the chain that decides how many",
    "monitor": "monitor (monitor.conf monitorplugin)",
    "auth": "auth profile (auth.conf plugin)",
}


# Keys declared in plugins/base.py (SubmitOptions), whose declarations carry only comments; the
# lead moves these into Field(description=...) there (tests check every key has a description).
_BASE_DESCRIPTIONS = {
    "overlay_peaceful": "True (AutoPyFactory's default): a negative decision takes nothing back",
    "overlay_killorder": "which running pilots go first when taking pilots back: newest or oldest",
    "overlay_kill_running": "taking back running pilots removes them instead of draining them",
}


@dataclass(frozen=True)
class KeyDoc:
    key: str
    type: str
    default: str
    bounds: str
    description: str
    required: bool = False


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        optional = any(a is type(None) for a in args)
        return " | ".join(names) + (" | None" if optional else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (dict, typing.Mapping):
        return "keys under this prefix"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type):
        return {"str": "text", "int": "integer", "float": "number", "bool": "True/False"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation).replace("typing.", "")


def _bounds(info: FieldInfo) -> str:
    out = []
    for item in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
    return ", ".join(out)


def _default(info: FieldInfo) -> tuple[str, bool]:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "(required)", True
    if info.default_factory is not None:
        return "(empty)", False
    value = info.default
    if isinstance(value, SecretStr):
        return "(hidden)", False
    return ("None" if value is None else str(value)), False


def model_keys(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> Iterator[KeyDoc]:
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        default, required = _default(info)
        description = info.description or _BASE_DESCRIPTIONS.get(name, "")
        extra = info.json_schema_extra
        if isinstance(extra, dict) and AUTH_META in extra:
            meta = extra[AUTH_META]
            assert isinstance(meta, dict)
            kinds = " or ".join(meta["kinds"])
            names = "names" if meta["many"] else "name"
            description = f"{description} [auth.conf profile {names}: {kinds}]".strip()
        yield KeyDoc(
            prefix + (info.alias or name),
            _type_name(info.annotation),
            default,
            _bounds(info),
            description,
            required,
        )


def plugin_keys(cls: type[plugins.Plugin]) -> list[KeyDoc]:
    options = cls.Options
    dynamic_fields = tuple(options.dynamic.values())
    prefix = cls.prefixes()[0]
    docs = list(model_keys(options, prefix, skip=dynamic_fields))
    for dyn in options.dynamic:
        docs.append(KeyDoc(f"{prefix}{dyn}<NAME>", "text", "-", "", "one line NAME = value per key"))
    return docs


def plugin_summary(cls: type[plugins.Plugin]) -> str:
    """The first line of the class docstring, else of its module's."""
    import sys

    for text in (cls.__doc__, getattr(sys.modules.get(cls.__module__), "__doc__", None)):
        lines = (text or "").strip().splitlines()
        if lines:
            return lines[0].strip().rstrip(".").replace("``", "")
    return ""


def plugin_text(kind: str, name: str) -> str:
    """``apf plugins NAME``: everything an operator needs to configure one plugin."""
    cls = plugins.load(kind, name)
    lines = [f"{kind} plugin {name}: {plugin_summary(cls)}".rstrip(": ")]
    lines.append(f"  module: {cls.__module__}")
    if len(cls.prefixes()) > 1:
        lines.append(f"  key prefixes (most specific first): {', '.join(cls.prefixes())}")
    if issubclass(cls, NeedsModules) and cls.requires:
        for req in cls.requires:
            lines.append(f"  needs: Python module {req.module} ({req.install})")
    keys = plugin_keys(cls)
    if not keys:
        lines.append("  (no keys)")
    lines += _key_lines(keys)
    return "\n".join(lines)


def _key_lines(keys: list[KeyDoc]) -> list[str]:
    lines = []
    for k in keys:
        bounds = f", {k.bounds}" if k.bounds else ""
        lines.append(f"  {k.key}  ({k.type}{bounds}; default {k.default})")
        if k.description:
            lines.append(f"      {k.description}")
    return lines


def settings_text(model: type[BaseModel], title: str) -> str:
    return "\n".join([title, *_key_lines(list(model_keys(model)))])


def listing() -> str:
    """``apf plugins``: every installed plugin by kind."""
    lines = []
    for kind in KIND_TITLES:
        lines.append(f"{KIND_TITLES[kind]}:")
        for name in plugins.names(kind):
            try:
                cls = plugins.load(kind, name)
                summary = plugin_summary(cls)
            except plugins.PluginError as exc:
                summary = f"(cannot load: {_load_error(exc)})"
            lines.append(f"  {name:<18} {summary}".rstrip())
    lines.append("apf plugins NAME shows a plugin's keys; --factory and --queue show the section keys")
    return "\n".join(lines)


def _md_table(keys: list[KeyDoc]) -> list[str]:
    rows = ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
    for k in keys:
        cells = [f"`{k.key}`", k.type, f"`{k.default}`", k.bounds, k.description]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def markdown() -> str:
    """docs/keys.md: generated, do not edit (``apf plugins --markdown > docs/keys.md``)."""
    from autopyfactory.config.models import FactorySettings, QueueSettings

    out = [
        "# Configuration key reference",
        "",
        "Generated from the key declarations by `apf plugins --markdown`; do not edit by hand",
        "(`tests/test_trust_plugins.py` checks it is current). `apf plugins NAME` shows the same for",
        "one plugin. Numbers must also be finite and at most 1e9 in size; identifiers follow the",
        "rules in the README (Configuration).",
        "",
        "## [Factory] (autopyfactory.conf)",
        "",
        *_md_table(list(model_keys(FactorySettings))),
        "",
        "Poll settings per plugin: `wmsstatus.<plugin>.sleep`, `wmsstatus.<plugin>.maxage`,",
        "`batchstatus.<plugin>.sleep`, `batchstatus.<plugin>.maxage` (seconds, 0.1 to 366 days).",
        "",
        "## Queue sections (queues.conf), generic keys",
        "",
        *_md_table(list(model_keys(QueueSettings))),
        "",
    ]
    for kind, title in KIND_TITLES.items():
        out += [f"## {title[0].upper()}{title[1:]}", ""]
        for name in plugins.names(kind):
            try:
                cls = plugins.load(kind, name)
            except plugins.PluginError as exc:
                out += [f"### {name}", "", f"Not loadable: {_load_error(exc)}", ""]
                continue
            out += [f"### {name}", "", plugin_summary(cls) or "-", ""]
            if len(cls.prefixes()) > 1:
                out += [
                    f"Key prefixes, most specific first: {', '.join(f'`{p}`' for p in cls.prefixes())}.",
                    "",
                ]
            if issubclass(cls, NeedsModules) and cls.requires:
                out += [f"Needs: {'; '.join(f'`{r.module}` ({r.install})' for r in cls.requires)}.", ""]
            keys = plugin_keys(cls)
            out += (_md_table(keys) if keys else ["No keys."]) + [""]
    return "\n".join(out).rstrip() + "\n"


def _load_error(exc: Exception) -> str:
    text = str(exc)
    marker = "failed to load: "
    return text.split(marker, 1)[1] if marker in text else text
