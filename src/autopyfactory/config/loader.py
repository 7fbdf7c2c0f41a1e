"""Load autopyfactory.conf, queues.conf, auth.conf and monitor.conf into typed, validated models.

Every problem is collected (not just the first) and names file:line, section and key; a bad
``[DEFAULT]`` line is reported once. Unknown keys: a key under a plugin namespace (``sched.``,
``batchsubmit.``...) that no plugin declares is an error with a "did you mean"; any other unknown
key that is close to a known key is an error (a typo); other keys are the operator's own
interpolation variables (``vo``-style helpers), which AutoPyFactory configs use widely, and are
shown by ``apf check`` as variables. AutoPyFactory 2.4 names are migrated (``config.migrate``).
Values from auth.conf are never quoted in messages.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from autopyfactory.config import migrate
from autopyfactory.config.bounds import INTERVAL_MIN, SECONDS_MAX
from autopyfactory.config.declared import QUEUE_PLUGIN_KINDS, declared, plugin_prefixes
from autopyfactory.config.errors import ConfigError, ConfigProblem, Location, dedupe
from autopyfactory.config.ini import (
    RawConfig,
    RawSection,
    interpolate,
    read_directory,
    read_documents,
    source_problem,
)
from autopyfactory.config.models import (
    QUEUE_NAME,
    QUEUE_NAME_RULE,
    AuthProfile,
    FactoryConfig,
    FactorySettings,
    MonitorSection,
    PluginSpec,
    QueueConfig,
    QueueSettings,
)
from autopyfactory.config.sources import SourceError, SourceText, check_regular_file, local_path, read_source
from autopyfactory.config.validate import known_suffixes, literal, options_from_keys, validate_model
from autopyfactory.plugins import base as plugins
from autopyfactory.plugins.base import PluginError, did_you_mean

_RESERVED_QUEUE_NAMESPACES = ("globusrsl.", "nordugridrsl.")
_FACTORY_PATH_KEYS = (
    "queueDirConf", "authConf", "monitorConf", "mappingsConf", "baseLogDir", "policyConf", "proxyConf",
    "web.tokenfile", "web.tls.certfile", "web.tls.keyfile", "web.tls.cafile", "web.reportsdir",
)  # fmt: skip
# [Factory] key namespaces: an unknown key under one of them is a typo, not a variable
_FACTORY_NAMESPACES = (
    "wmsstatus",
    "batchstatus",
    "config",
    "logserver",
    "store",
    "metrics",
    "web",
    "executor",
    "factory",
    "cleanlogs",
    "authmanager",
    "maxperfactory",
)
_AUTH_COMMON_KEYS = ("plugin", "authbasedir", "enabled")

# fetcher(source, base) -> text of one source (tests and config.reconfig pass their own)
Fetcher = Callable[[str, "Path | None"], SourceText]


def _default_fetcher(source: str, base: Path | None) -> SourceText:
    return read_source(source, base)


def _aliases(model: type[BaseModel]) -> dict[str, str]:
    return {(info.alias or name): name for name, info in model.model_fields.items()}


QUEUE_KEYS = _aliases(QueueSettings)
FACTORY_KEYS = _aliases(FactorySettings)


@functools.cache
def _queue_migration(key: str) -> migrate.Migration | None:
    return migrate.queue_key(key, declared)


def _locator(section: RawSection) -> Callable[[str], Location | None]:
    return section.locate


def _load_plugin(kind: str, name: str) -> type[plugins.Plugin]:
    try:
        return plugins.load(kind, name)
    except PluginError as exc:
        retired = migrate.RETIRED_PLUGINS.get((kind, name))
        if retired and name not in plugins.names(kind):
            raise PluginError(f"{kind} plugin {name!r} no longer exists: {retired}") from None
        raise exc from None


def build_queue(name: str, section: RawSection) -> tuple[QueueConfig | None, list[ConfigProblem]]:
    """One queues.conf section -> QueueConfig, or the problems that stop it."""
    locate = _locator(section)
    problems: list[ConfigProblem] = []

    def problem(key: str | None, message: str, warning: bool = False) -> None:
        problems.append(ConfigProblem.at(locate(key) if key else section.header, name, key, message, warning))

    if not QUEUE_NAME.fullmatch(name):
        problem(None, f"a queue name must be {QUEUE_NAME_RULE}")

    migrations = {k: m for k in section.values if (m := _queue_migration(k)) is not None}
    values = section.values
    if migrations:
        values, applied = migrate.migrate_values(section.values, migrations)
        for migration in applied:
            problem(migration.key, migration.message, warning=True)
            if migration.new is not None and migration.key in section.where:
                section.where.setdefault(migration.new, section.where[migration.key])

    settings, errs = validate_model(QueueSettings, values, file_of=locate, section=name)
    problems.extend(errs)

    specs: dict[str, list[PluginSpec]] = {kind: [] for kind in QUEUE_PLUGIN_KINDS}
    used_prefixes: set[str] = set()
    plugin_refs = [("wmsstatus", "wmsstatusplugin"), ("batchstatus", "batchstatusplugin")]
    plugin_refs += [("batchsubmit", "batchsubmitplugin"), ("sched", "schedplugin")]
    for kind, key in plugin_refs:
        text = literal(values.get(key, "")) or ""
        for plugin_name in [p.strip() for p in text.split(",") if p.strip()]:
            try:
                cls = _load_plugin(kind, plugin_name)
            except PluginError as exc:
                problem(key, str(exc))
                continue
            used_prefixes.update(cls.prefixes())
            options, errs = options_from_keys(cls, values, file_of=locate, section_name=name)
            problems.extend(errs)
            if options is not None:
                specs[kind].append(PluginSpec(kind, plugin_name, cls, options))

    for key in values:
        if key in QUEUE_KEYS or any(key.startswith(p) for p in used_prefixes):
            continue
        _classify_unknown_queue_key(key, values[key], problem)

    if any(not p.warning for p in problems) or settings is None:
        return None, problems
    assert isinstance(settings, QueueSettings)
    if not specs["batchstatus"] or not specs["batchsubmit"] or not specs["sched"]:
        return None, problems  # reported above (an empty or unknown plugin name)
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


@functools.cache
def _prefix_keys(kind: str) -> dict[str, tuple[frozenset[str], tuple[str, ...], tuple[str, ...]]]:
    """prefix -> (suffixes, dynamic prefixes, plugin names) over every installed plugin using it."""
    out: dict[str, tuple[set[str], set[str], list[str]]] = {}
    for name in plugins.names(kind):
        try:
            cls = plugins.load(kind, name)
        except PluginError:
            # a plugin that cannot load (retired middleware): its own error says why; its keys
            # are not typos
            out.setdefault(f"{kind}.{name.lower()}.", (set(), {""}, [name]))
            continue
        for prefix in cls.prefixes():
            suffixes, dynamic, names = out.setdefault(prefix, (set(), set(), []))
            suffixes.update(known_suffixes(cls.Options))
            dynamic.update(cls.Options.dynamic)
            names.append(name)
    return {p: (frozenset(s), tuple(d), tuple(n)) for p, (s, d, n) in out.items()}


@functools.lru_cache(maxsize=4096)
def _unused_key_problem(kind: str, prefix: str, suffix: str, value: str) -> str | None:
    """The value of a key of a plugin the queue does not use, checked against its declaration."""
    for name in _prefix_keys(kind)[prefix][2]:
        try:
            cls = plugins.load(kind, name)
        except PluginError:
            continue
        if suffix not in known_suffixes(cls.Options):
            continue
        _, problems = options_from_keys(cls, {prefix + suffix: value}, file_of=lambda key: None)
        errors = [p.message for p in problems if not p.message.startswith("required key is missing")]
        return errors[0] if errors else None
    return None


def _classify_unknown_queue_key(key: str, value: str, problem: Callable[..., None]) -> None:
    if key.startswith(_RESERVED_QUEUE_NAMESPACES):
        return
    kind = key.split(".", 1)[0]
    if kind in QUEUE_PLUGIN_KINDS and "." in key:
        known = _prefix_keys(kind)
        # the most specific prefix: batchsubmit.condorosgce. before batchsubmit.condorce.
        for prefix in sorted((p for p in known if key.startswith(p)), key=len, reverse=True):
            # a key of a plugin this queue does not use (often from DEFAULT): still no typo
            suffixes, dynamic, names = known[prefix]
            suffix = key[len(prefix) :]
            if suffix.startswith(dynamic):
                return
            if suffix in suffixes:
                # no effect on this queue, but a wrong value is still wrong
                message = _unused_key_problem(kind, prefix, suffix, value)
                if message:
                    problem(key, message)
                return
            hint = did_you_mean(suffix, list(suffixes))
            hint = hint.replace("'", "'" + prefix, 1) if hint else ""
            problem(key, f"unknown key for plugin {'/'.join(names)}{hint}")
            return
        namespace = key.rsplit(".", 1)[0] + "." if key.count(".") >= 2 else key
        hint = did_you_mean(namespace, list(known))
        problem(key, f"no installed {kind} plugin reads keys under {namespace!r}{hint}")
        return
    if key.startswith("cancel."):
        hint = did_you_mean(key, [k for k in QUEUE_KEYS if k.startswith("cancel.")])
        problem(key, f"unknown key{hint}")
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
    return queues, dedupe(problems)


def _read_all(
    sources: Sequence[str], base: Path | None, fetcher: Fetcher, *, sensitive: bool = False
) -> RawConfig:
    merged = RawConfig()
    for source in sources:
        source = source.strip()
        if not source:
            continue
        try:
            doc = fetcher(source, base)
        except SourceError as exc:
            merged.problems.append(source_problem(exc))
            continue
        merged.merge(read_documents([doc], sensitive=sensitive))
    return merged


def load_queue_sections(
    paths: Sequence[str], settings: FactorySettings | None = None, *, fetcher: Fetcher = _default_fetcher
) -> dict[str, QueueConfig]:
    """Read queues.conf files (APF merge semantics) into QueueConfigs; raise ConfigError."""
    raw = interpolate(_read_all(paths, None, fetcher))
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


@dataclass(frozen=True)
class _Sources:
    conf: list[str]
    base: Path


def _conf_sources(conf: str | os.PathLike[str] | Sequence[str]) -> _Sources:
    if isinstance(conf, str):
        sources = _split(conf)
    elif isinstance(conf, os.PathLike):
        sources = [os.fspath(conf)]
    else:
        sources = [str(c) for c in conf]
    if not sources:
        raise ConfigError([ConfigProblem("--conf", None, None, "no configuration file given")])
    first = sources[0]
    base = Path.cwd() if first.startswith(("http://", "https://")) else local_path(first).resolve().parent
    return _Sources(sources, base)


def load_factory_config(
    conf: str | os.PathLike[str] | Sequence[str], *, fetcher: Fetcher = _default_fetcher
) -> FactoryConfig:
    """autopyfactory.conf (comma list allowed) and everything it names. Raises ConfigError."""
    src = _conf_sources(conf)
    sources, base = src.conf, src.base
    raw = interpolate(_read_all(sources, None, fetcher))
    problems = list(raw.problems)
    if problems:
        raise ConfigError(problems)
    if "Factory" not in raw.sections:
        raise ConfigError([ConfigProblem(sources[0], "Factory", None, "the [Factory] section is missing")])
    fsec = raw.sections["Factory"]
    fvalues = dict(fsec.values)
    _resolve_paths(fvalues, base)
    locate = _locator(fsec)
    for key, migration in _factory_migrations(fvalues).items():
        problems.append(ConfigProblem.at(locate(key), "Factory", key, migration.message, warning=True))
        fvalues.pop(key)
    settings, errs = validate_model(FactorySettings, fvalues, file_of=locate, section="Factory")
    problems.extend(errs)
    problems.extend(_check_factory_keys(fvalues, locate))
    for other in raw.sections:
        if other != "Factory":
            problems.append(
                ConfigProblem.at(
                    raw.sections[other].header or sources[0],
                    other,
                    None,
                    "section ignored (only [Factory] is read)",
                    True,
                )
            )
    if settings is None:
        raise ConfigError(problems)
    assert isinstance(settings, FactorySettings)
    if settings.logserver_enabled:
        problems.append(
            ConfigProblem.at(
                locate("logserver.enabled"),
                "Factory",
                "logserver.enabled",
                "accepted, but this version does not serve baseLogDir yet (the web server will); "
                "serve it with your web server meanwhile",
                warning=True,
            )
        )

    queue_sources = _split(settings.queueConf)
    if not queue_sources and not settings.queueDirConf:
        problems.append(
            ConfigProblem.at(
                fsec.header, "Factory", "queueConf", "no queue configuration: set queueConf or queueDirConf"
            )
        )
        raise ConfigError(problems)
    queue_raw = _read_all(queue_sources, base, fetcher)
    if settings.queueDirConf:
        queue_raw.merge(read_directory(settings.queueDirConf, base))
    queue_raw = interpolate(queue_raw)
    queues, errs = build_queues(queue_raw)
    problems.extend(errs)
    if not queue_raw.sections and not any(not p.warning for p in errs):
        key = "queueConf" if queue_sources else "queueDirConf"
        problems.append(
            ConfigProblem.at(
                locate(key),
                "Factory",
                key,
                f"no queue sections found in {', '.join(queue_sources + _split(settings.queueDirConf))}",
            )
        )

    auth: dict[str, AuthProfile] = {}
    if settings.authConf and settings.authmanager_enabled:
        auth, errs = _load_auth(_split(settings.authConf), base, fetcher)
        problems.extend(errs)
    if settings.proxyConf:
        from autopyfactory.config.proxyconf import load_proxy_conf

        legacy, errs = load_proxy_conf(_split(settings.proxyConf), base, auth)
        problems.extend(errs)
        auth = {**auth, **legacy}
    monitors: dict[str, MonitorSection] = {}
    if settings.monitorConf:
        monitors, errs = _load_monitors(_split(settings.monitorConf), base, fetcher)
        problems.extend(errs)
    for queue in queues.values():
        for section in _split(queue.settings.monitorsection):
            if section not in monitors:
                hint = did_you_mean(section, list(monitors))
                problems.append(
                    ConfigProblem.at(
                        queue_raw.sections[queue.name].locate("monitorsection"),
                        queue.name,
                        "monitorsection",
                        f"no monitor.conf section {section!r}{hint}",
                    )
                )
    policy = None
    if settings.policyConf:
        from autopyfactory.config.policy import load_policy
        from autopyfactory.config.policy_checks import check_queues

        try:
            if not settings.policyConf.startswith(("http://", "https://")):
                check_regular_file(local_path(settings.policyConf, base))
            policy = load_policy(settings.policyConf)
            problems.extend(check_queues(policy, queues, file=settings.policyConf))
        except SourceError as exc:
            problems.append(ConfigProblem.at(locate("policyConf"), "Factory", "policyConf", exc.message))
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems = dedupe(problems)
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


def _factory_migrations(values: Mapping[str, str]) -> dict[str, migrate.Migration]:
    out = {}
    for key in values:
        if key in FACTORY_KEYS:
            continue
        migration = migrate.factory_key(key)
        if migration is not None:
            out[key] = migration
    return out


# per status plugin in [Factory]: poll interval, staleness (APF's names) and the longest retry delay
POLL_KEYS = ("sleep", "maxage", "maxbackoff")


def poll_key_problem(key: str, value: str) -> str | None:
    """``<wmsstatus|batchstatus>.<plugin>.<sleep|maxage|maxbackoff>`` in [Factory]: the message, or
    None if fine."""
    kind, plugin, what = key.split(".", 2)
    names = {n.lower(): n for n in plugins.names(kind)}
    if plugin not in names:
        hint = did_you_mean(plugin, list(names))
        return f"no installed {kind} plugin {plugin!r}{hint}"
    if what not in POLL_KEYS:
        hint = did_you_mean(what, list(POLL_KEYS))
        hint = hint.replace("'", f"'{kind}.{plugin}.", 1) if hint else ""
        return f"unknown key{hint}: [Factory] takes {kind}.{plugin}.sleep, .maxage and .maxbackoff"
    text = literal(value)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return f"must be a number of seconds (got {value[:40]!r})"
    if not (INTERVAL_MIN <= seconds <= SECONDS_MAX):  # also refuses nan
        return f"must be between {INTERVAL_MIN:g} and {SECONDS_MAX:g} seconds (got {value[:40]!r})"
    return None


def _check_factory_keys(
    values: Mapping[str, str], locate: Callable[[str], Location | None]
) -> list[ConfigProblem]:
    problems = []

    def add(key: str, message: str, warning: bool = False) -> None:
        problems.append(ConfigProblem.at(locate(key), "Factory", key, message, warning))

    for key in values:
        if key in FACTORY_KEYS:
            continue
        parts = key.split(".")
        if len(parts) == 3 and parts[0] in ("wmsstatus", "batchstatus"):
            message = poll_key_problem(key, values[key])
            if message:
                add(key, message)
            continue
        hint = did_you_mean(key, list(FACTORY_KEYS))
        if hint:
            add(key, f"unknown key{hint}")
        elif parts[0] in _FACTORY_NAMESPACES and len(parts) > 1:
            add(key, f"unknown key under {parts[0]!r}: [Factory] has no such key (see apf plugins --factory)")
        else:
            add(key, "unknown key, ignored (an interpolation variable?)", True)
    return problems


def _load_auth(
    sources: Sequence[str], base: Path, fetcher: Fetcher
) -> tuple[dict[str, AuthProfile], list[ConfigProblem]]:
    raw = interpolate(_read_all(sources, base, fetcher, sensitive=True))
    problems = list(raw.problems)
    profiles: dict[str, AuthProfile] = {}
    all_prefixes = tuple(plugin_prefixes("auth"))
    for name, section in raw.sections.items():
        locate = _locator(section)

        def add(
            key: str | None,
            message: str,
            warning: bool = False,
            name: str = name,
            section: RawSection = section,
        ) -> None:
            problems.append(ConfigProblem.at(section.locate(key), name, key, message, warning))

        plugin_name = literal(section.values.get("plugin", "") or "")
        if not plugin_name:
            legacy = {"proxyfile", "vorole", "baseproxy", "usercert"} & set(section.values)
            hint = (
                " (this looks like a proxy.conf profile of AutoPyFactory's ProxyManager: add plugin = X509 "
                "and prefix its keys with x509.; apf check --migrate does it)"
                if legacy
                else ""
            )
            add("plugin", f"required key is missing{hint}")
            continue
        try:
            cls = plugins.load("auth", plugin_name)
        except PluginError as exc:
            add("plugin", str(exc))
            continue
        options, errs = options_from_keys(
            cls, section.values, file_of=locate, section_name=name, sensitive=True
        )
        problems.extend(errs)
        known = [cls.prefixes()[0] + s for s in known_suffixes(cls.Options)]
        for key in section.values:
            if key in _AUTH_COMMON_KEYS or key.startswith(cls.prefixes()):
                continue
            if key.startswith(all_prefixes):
                continue  # another auth plugin's key, e.g. set in DEFAULT
            hint = did_you_mean(key, known) or did_you_mean(cls.prefixes()[0] + key, known)
            if hint:
                add(key, f"unknown key for plugin {cls.name}{hint}")
            else:
                add(key, "unknown key, ignored", True)
        if options is not None:
            profiles[name] = AuthProfile(name=name, plugin=plugin_name, options=options)
    return profiles, problems


def _load_monitors(
    sources: Sequence[str], base: Path, fetcher: Fetcher
) -> tuple[dict[str, MonitorSection], list[ConfigProblem]]:
    raw = interpolate(_read_all(sources, None, fetcher))
    problems = list(raw.problems)
    out: dict[str, MonitorSection] = {}
    for name, section in raw.sections.items():
        locate = _locator(section)
        plugin_name = literal(section.values.get("monitorplugin", "") or "")
        if not plugin_name:
            problems.append(
                ConfigProblem.at(locate("monitorplugin"), name, "monitorplugin", "required key is missing")
            )
            continue
        try:
            cls = plugins.load("monitor", plugin_name)
        except PluginError as exc:
            problems.append(ConfigProblem.at(locate("monitorplugin"), name, "monitorplugin", str(exc)))
            continue
        options, errs = options_from_keys(cls, section.values, file_of=locate, section_name=name)
        problems.extend(errs)
        known = ["monitorplugin", "monitorURL", *(cls.prefixes()[0] + s for s in known_suffixes(cls.Options))]
        for key in section.values:
            if key in ("monitorplugin", "monitorURL") or key.startswith(cls.prefixes()):
                continue
            hint = did_you_mean(key, known)
            if hint:
                problems.append(ConfigProblem.at(locate(key), name, key, f"unknown key{hint}"))
            elif key.startswith("monitor."):
                problems.append(
                    ConfigProblem.at(locate(key), name, key, f"unknown key for plugin {cls.name}")
                )
        url = literal(section.values.get("monitorURL", "") or "")
        if url and not url.startswith(("http://", "https://")):
            problems.append(
                ConfigProblem.at(
                    locate("monitorURL"), name, "monitorURL", "must be an http:// or https:// URL"
                )
            )
            continue
        if options is not None:
            out[name] = MonitorSection(name=name, plugin=plugin_name, options=options, monitorURL=url)
    return out, problems
