"""Load autopyfactory.conf, queues.conf, auth.conf and monitor.conf into typed, validated models.

Every problem is collected (not just the first) and names file:line, section and key. Unknown
keys: a key under a plugin namespace (``sched.``, ``batchsubmit.``...) that no plugin declares is
an error with a "did you mean"; any other unknown key that is close to a known key is an error
(a typo); other keys are the operator's own interpolation variables (``vo``-style helpers),
which AutoPyFactory configs use widely, and are shown by ``apf check`` as variables.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from autopyfactory.config.errors import ConfigError, ConfigProblem
from autopyfactory.config.ini import (
    RawConfig,
    RawSection,
    interpolate,
    key_line,
    read_directory,
    read_sources,
)
from autopyfactory.config.models import (
    AuthProfile,
    FactoryConfig,
    FactorySettings,
    MonitorSection,
    PluginSpec,
    QueueConfig,
    QueueSettings,
)
from autopyfactory.config.validate import literal, options_from_keys
from autopyfactory.plugins import base as plugins
from autopyfactory.plugins.base import PluginError, did_you_mean

QUEUE_PLUGIN_KINDS = ("wmsstatus", "batchstatus", "batchsubmit", "sched", "monitor")
# Keys AutoPyFactory configs still carry but no code reads (apf-reference 3.2, 4.2, 10.1.6)
_DEAD_QUEUE_PREFIXES = ("sched.activated.", "sched.simple.", "sched.trivial.")
_DEAD_QUEUE_KEYS = {"override", "batchsubmit.condorbase.submitargs"}
_RESERVED_QUEUE_NAMESPACES = ("globusrsl.", "nordugridrsl.")
_DEAD_FACTORY_KEYS = {
    "proxymanager.enabled",
    "proxymanager.sleep",
    "monitor.section",
    "monitor.interval",
    "configplugin",
    "cyclesToDo",
    "sleepTime",
    "confFiles",
    "versionTag",
    "config.queues.agis.defaultsfile",
}
_FACTORY_PATH_KEYS = (
    "queueDirConf", "authConf", "monitorConf", "mappingsConf", "baseLogDir", "policyConf", "proxyConf"
)  # fmt: skip


def _aliases(model: type[BaseModel]) -> dict[str, str]:
    return {(info.alias or name): name for name, info in model.model_fields.items()}


QUEUE_KEYS = _aliases(QueueSettings)
FACTORY_KEYS = _aliases(FactorySettings)


@functools.cache
def _plugin_prefixes(kind: str) -> dict[str, str]:
    """Every key prefix any installed plugin of ``kind`` reads -> the plugin's name."""
    out: dict[str, str] = {}
    for name in plugins.names(kind):
        try:
            cls = plugins.load(kind, name)
        except PluginError:
            out[f"{kind}.{name.lower()}."] = name
            continue
        for prefix in cls.prefixes():
            out.setdefault(prefix, name)
    return out


def _file_of(section: RawSection, name: str):
    def file_of(key: str) -> str | None:
        origin = section.origin.get(key)
        if not origin:
            return None
        line = key_line(origin, name, key) or key_line(origin, "DEFAULT", key)
        return f"{origin}:{line}" if line else origin

    return file_of


def validate_model(
    model: type[BaseModel], values: Mapping[str, str], *, file_of, section: str
) -> tuple[BaseModel | None, list[ConfigProblem]]:
    """Validate plain keys against a pydantic model (aliases are the key names)."""
    keys = _aliases(model)
    data = {k: literal(v) for k, v in values.items() if k in keys}
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else None
            alias = next((a for a, n in keys.items() if n == key or a == key), key)
            if err["type"] == "missing":
                msg = "required key is missing"
            else:
                msg = f"{err['msg']} (got {err.get('input')!r})"
            problems.append(ConfigProblem(file_of(alias) if alias else None, section, alias, msg))
        return None, problems


def build_queue(name: str, section: RawSection) -> tuple[QueueConfig | None, list[ConfigProblem]]:
    """One queues.conf section -> QueueConfig, or the problems that stop it."""
    values = section.values
    file_of = _file_of(section, name)
    problems: list[ConfigProblem] = []

    def problem(key: str | None, message: str, warning: bool = False) -> None:
        problems.append(ConfigProblem(file_of(key) if key else None, name, key, message, warning))

    settings, errs = validate_model(QueueSettings, values, file_of=file_of, section=name)
    problems.extend(errs)

    specs: dict[str, list[PluginSpec]] = {kind: [] for kind in QUEUE_PLUGIN_KINDS}
    used_prefixes: set[str] = set()
    plugin_refs = [("wmsstatus", "wmsstatusplugin"), ("batchstatus", "batchstatusplugin")]
    plugin_refs += [("batchsubmit", "batchsubmitplugin"), ("sched", "schedplugin")]
    for kind, key in plugin_refs:
        text = literal(values.get(key, "")) or ""
        for plugin_name in [p.strip() for p in text.split(",") if p.strip()]:
            try:
                cls = plugins.load(kind, plugin_name)
            except PluginError as exc:
                problem(key, str(exc))
                continue
            used_prefixes.update(cls.prefixes())
            options, errs = options_from_keys(cls, values, file_of=file_of, section_name=name)
            problems.extend(errs)
            if options is not None:
                specs[kind].append(PluginSpec(kind, plugin_name, cls, options))

    for key in values:
        if key in QUEUE_KEYS or any(key.startswith(p) for p in used_prefixes):
            continue
        _classify_unknown_queue_key(key, used_prefixes, problem)

    if any(not p.warning for p in problems) or settings is None:
        return None, problems
    assert isinstance(settings, QueueSettings)
    return (
        QueueConfig(
            name=name,
            settings=settings,
            wmsstatus=specs["wmsstatus"][0] if specs["wmsstatus"] else None,
            batchstatus=specs["batchstatus"][0],
            batchsubmit=specs["batchsubmit"][0],
            sched=tuple(specs["sched"]),
            raw=dict(values),
            origin=dict(section.origin),
        ),
        problems,
    )


def _classify_unknown_queue_key(key: str, used_prefixes: set[str], problem) -> None:
    if key in _DEAD_QUEUE_KEYS or key.endswith(".allowed") or key.startswith(_DEAD_QUEUE_PREFIXES):
        problem(key, "key is obsolete in AutoPyFactory and ignored", warning=True)
        return
    if key.startswith(_RESERVED_QUEUE_NAMESPACES):
        return
    kind = key.split(".", 1)[0]
    if kind in QUEUE_PLUGIN_KINDS and "." in key:
        known = _plugin_prefixes(kind)
        if any(key.startswith(p) for p in known):
            return  # a key of an installed plugin this queue does not use (often from DEFAULT)
        namespace = key.rsplit(".", 1)[0] + "." if key.count(".") >= 2 else key
        hint = did_you_mean(namespace, list(known))
        problem(key, f"no installed {kind} plugin reads keys under {namespace!r}{hint}")
        return
    hint = did_you_mean(key, list(QUEUE_KEYS))
    if hint:
        problem(key, f"unknown key{hint}")
    # otherwise: an operator's interpolation variable


def build_queues(raw: RawConfig) -> tuple[dict[str, QueueConfig], list[ConfigProblem]]:
    queues: dict[str, QueueConfig] = {}
    problems = list(raw.problems)
    for name, section in raw.sections.items():
        queue, errs = build_queue(name, section)
        problems.extend(errs)
        if queue is not None:
            queues[name] = queue
    return queues, problems


def load_queue_sections(
    paths: Sequence[str], settings: FactorySettings | None = None
) -> dict[str, QueueConfig]:
    """Read queues.conf files (APF merge semantics) into QueueConfigs; raise ConfigError."""
    raw = interpolate(read_sources(paths))
    queues, problems = build_queues(raw)
    if any(not p.warning for p in problems):
        raise ConfigError(problems)
    return queues


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _resolve_paths(values: dict[str, str], base: Path) -> None:
    for key in (*_FACTORY_PATH_KEYS, "factory.statedir"):
        value = literal(values.get(key, "") or "")
        if value and not value.startswith(("~", "/", "file://", "http://", "https://")):
            values[key] = os.path.normpath(base / value)


def load_factory_config(conf: str | os.PathLike[str] | Sequence[str]) -> FactoryConfig:
    """autopyfactory.conf (comma list allowed) and everything it names. Raises ConfigError."""
    sources = (
        _split(conf)
        if isinstance(conf, str)
        else [str(c) for c in ([conf] if isinstance(conf, os.PathLike) else conf)]
    )
    if not sources:
        raise ConfigError([ConfigProblem(None, None, None, "no configuration file given")])
    base = Path(sources[0].removeprefix("file://")).expanduser().resolve().parent
    raw = interpolate(read_sources(sources))
    problems = list(raw.problems)
    if problems:
        raise ConfigError(problems)
    if "Factory" not in raw.sections:
        raise ConfigError([ConfigProblem(sources[0], "Factory", None, "the [Factory] section is missing")])
    fsec = raw.sections["Factory"]
    fvalues = dict(fsec.values)
    _resolve_paths(fvalues, base)
    file_of = _file_of(fsec, "Factory")
    settings, errs = validate_model(FactorySettings, fvalues, file_of=file_of, section="Factory")
    problems.extend(errs)
    problems.extend(_check_factory_keys(fvalues, file_of))
    for other in raw.sections:
        if other != "Factory":
            problems.append(
                ConfigProblem(sources[0], other, None, "section ignored (only [Factory] is read)", True)
            )
    if settings is None:
        raise ConfigError(problems)
    assert isinstance(settings, FactorySettings)

    queue_raw = read_sources(_split(settings.queueConf), base)
    if settings.queueDirConf:
        queue_raw.merge(read_directory(settings.queueDirConf, base))
    queue_raw = interpolate(queue_raw)
    queues, errs = build_queues(queue_raw)
    problems.extend(errs)

    auth: dict[str, AuthProfile] = {}
    if settings.authConf and settings.authmanager_enabled:
        auth, errs = _load_auth(_split(settings.authConf), base)
        problems.extend(errs)
    if settings.proxyConf:
        from autopyfactory.config.proxyconf import load_proxy_conf

        legacy, errs = load_proxy_conf(_split(settings.proxyConf), base, auth)
        problems.extend(errs)
        auth = {**auth, **legacy}
    monitors: dict[str, MonitorSection] = {}
    if settings.monitorConf:
        monitors, errs = _load_monitors(_split(settings.monitorConf), base)
        problems.extend(errs)
    for queue in queues.values():
        for section in _split(queue.settings.monitorsection):
            if section not in monitors:
                hint = did_you_mean(section, list(monitors))
                line = _file_of(queue_raw.sections[queue.name], queue.name)("monitorsection")
                problems.append(
                    ConfigProblem(
                        line, queue.name, "monitorsection", f"no monitor.conf section {section!r}{hint}"
                    )
                )
    policy = None
    if settings.policyConf:
        from autopyfactory.config.policy import check_queues, load_policy

        try:
            policy = load_policy(settings.policyConf)
            problems.extend(check_queues(policy, queues, file=settings.policyConf))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if any(not p.warning for p in problems):
        raise ConfigError(problems)
    return FactoryConfig(
        settings=settings,
        queues=queues,
        auth=auth,
        monitors=monitors,
        files=tuple(dict.fromkeys([*raw.files, *queue_raw.files])),
        warnings=tuple(str(p) for p in problems if p.warning),
        factory_raw=fvalues,
        policy=policy,
    )


def _check_factory_keys(values: Mapping[str, str], file_of) -> list[ConfigProblem]:
    problems = []
    for key in values:
        if key in FACTORY_KEYS or key.startswith("config.queues.agis."):
            continue
        parts = key.split(".")
        if len(parts) == 3 and parts[0] in ("wmsstatus", "batchstatus") and parts[2] in ("sleep", "maxage"):
            value = literal(values[key])
            try:
                if value is not None and float(value) <= 0:
                    raise ValueError
            except ValueError:
                problems.append(
                    ConfigProblem(
                        file_of(key),
                        "Factory",
                        key,
                        f"must be a positive number of seconds (got {values[key]!r})",
                    )
                )
            continue
        if key in _DEAD_FACTORY_KEYS or key.startswith("proxymanager."):
            problems.append(ConfigProblem(file_of(key), "Factory", key, "key is obsolete and ignored", True))
            continue
        hint = did_you_mean(key, list(FACTORY_KEYS))
        if hint:
            problems.append(ConfigProblem(file_of(key), "Factory", key, f"unknown key{hint}"))
        else:
            problems.append(ConfigProblem(file_of(key), "Factory", key, "unknown key, ignored", True))
    return problems


def _load_auth(sources: Sequence[str], base: Path) -> tuple[dict[str, AuthProfile], list[ConfigProblem]]:
    raw = interpolate(read_sources(sources, base))
    problems = list(raw.problems)
    profiles: dict[str, AuthProfile] = {}
    for name, section in raw.sections.items():
        file_of = _file_of(section, name)
        plugin_name = literal(section.values.get("plugin", "") or "")
        if not plugin_name:
            problems.append(ConfigProblem(file_of("plugin"), name, "plugin", "required key is missing"))
            continue
        try:
            cls = plugins.load("auth", plugin_name)
        except PluginError as exc:
            problems.append(ConfigProblem(file_of("plugin"), name, "plugin", str(exc)))
            continue
        options, errs = options_from_keys(cls, section.values, file_of=file_of, section_name=name)
        problems.extend(errs)
        prefixes = tuple(_plugin_prefixes("auth"))
        for key in section.values:
            if key in ("plugin", "authbasedir", "enabled") or key.startswith(cls.prefixes()):
                continue
            if key.startswith(prefixes):
                continue  # another auth plugin's key, e.g. set in DEFAULT
            problems.append(ConfigProblem(file_of(key), name, key, "unknown key, ignored", True))
        if options is not None:
            profiles[name] = AuthProfile(name=name, plugin=plugin_name, options=options)
    return profiles, problems


def _load_monitors(
    sources: Sequence[str], base: Path
) -> tuple[dict[str, MonitorSection], list[ConfigProblem]]:
    raw = interpolate(read_sources(sources, base))
    problems = list(raw.problems)
    out: dict[str, MonitorSection] = {}
    for name, section in raw.sections.items():
        file_of = _file_of(section, name)
        plugin_name = literal(section.values.get("monitorplugin", "") or "")
        if not plugin_name:
            problems.append(
                ConfigProblem(file_of("monitorplugin"), name, "monitorplugin", "required key is missing")
            )
            continue
        try:
            cls = plugins.load("monitor", plugin_name)
        except PluginError as exc:
            problems.append(ConfigProblem(file_of("monitorplugin"), name, "monitorplugin", str(exc)))
            continue
        options, errs = options_from_keys(cls, section.values, file_of=file_of, section_name=name)
        problems.extend(errs)
        if options is not None:
            out[name] = MonitorSection(
                name=name,
                plugin=plugin_name,
                options=options,
                monitorURL=literal(section.values.get("monitorURL", "") or ""),
            )
    return out, problems
