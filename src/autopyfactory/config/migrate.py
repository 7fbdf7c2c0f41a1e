"""AutoPyFactory 2.4 keys: what became of each one (apf-reference.md section 4).

Every key APF 2.4 documents either works as is, is an **alias** of its new name (accepted with a
warning that names both), or is **obsolete** (dropped with a warning saying what to use instead).
The same table drives ``apf check --migrate``, which prints the files rewritten with new names.

Retired plugin names (``Fillactivated``, ``CondorGRAM``...) give an error saying what replaces them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Alias:
    new: str  # the new key (may use \1 from the pattern)
    note: str = ""


@dataclass(frozen=True)
class Obsolete:
    instead: str


Rule = Alias | Obsolete

_ALLOWED = Obsolete(
    "listing the plugin in schedplugin is the permission (AutoPyFactory stopped reading it in 2013); remove the key"
)
_OLD_SCHED = Obsolete(
    "the plugin was removed from AutoPyFactory in 2013; use Ready with MaxPerCycle, MinPerCycle, "
    "MaxPending, MaxToRun and StatusTest"
)

QUEUE_RULES: tuple[tuple[re.Pattern[str], Rule], ...] = (
    (re.compile(r"sched\.(statustest|statusoffline)\.allowed"), _ALLOWED),
    (re.compile(r"sched\.(activated|simple|trivial)\..+"), _OLD_SCHED),
    (
        re.compile(r"sched\.fillactivated\..+"),
        Obsolete("Fillactivated was broken in AutoPyFactory; use Ready"),
    ),
    (
        re.compile(r"sched\.keepnqueuelife\..+"),
        Obsolete("KeepNQueueLife was broken in AutoPyFactory; use MinPending"),
    ),
    (
        re.compile(r"override"),
        Obsolete("AutoPyFactory never read it (later sources always win key by key); remove it"),
    ),
    (
        re.compile(r"batchsubmit\.condorbase\.submitargs"),
        Obsolete("remote submission is set with batchsubmit.<plugin>.scheddhost/scheddport"),
    ),
    (re.compile(r"batchsubmit\.([a-z0-9]+)\.peaceful"), Alias(r"batchsubmit.\1.overlay.peaceful")),
    (re.compile(r"batchsubmit\.([a-z0-9]+)\.killorder"), Alias(r"batchsubmit.\1.overlay.killorder")),
)

FACTORY_RULES: tuple[tuple[re.Pattern[str], Rule], ...] = (
    (
        re.compile(r"monitorURL"),
        Obsolete(
            "the monitor URL belongs in monitor.conf: a section with monitorplugin = APF and "
            "monitorURL = ..., named by each queue's monitorsection (and monitorConf in [Factory])"
        ),
    ),
    (
        re.compile(r"proxymanager\..+|proxyConf"),
        Obsolete(
            "ProxyManager was removed in AutoPyFactory 2.4.11: put X509 profiles in auth.conf "
            "(authConf) and name them in batchsubmit.<plugin>.proxy"
        ),
    ),
    (
        re.compile(r"monitor\.section|monitor\.interval"),
        Obsolete("queues name their monitor.conf sections with monitorsection; monitors report every cycle"),
    ),
    (re.compile(r"configplugin"), Obsolete("use config.queues.plugin = File")),
    (
        re.compile(r"cyclesToDo|sleepTime|confFiles"),
        Obsolete(
            "AutoPyFactory injected it from the command line and never read it; use cycles, or apf run --cycles"
        ),
    ),
    (re.compile(r"versionTag"), Obsolete("not used")),
    (
        re.compile(r"config\.queues\.agis\..+"),
        Obsolete(
            "AGIS was retired (CRIC replaced it): generate queue sections offline and point "
            "queueConf or queueDirConf at them"
        ),
    ),
    (
        re.compile(r"wmsstatus\.queue\.(sleep|maxage)"),
        Obsolete("the Queue WMS plugin was a stub in AutoPyFactory; remove the key"),
    ),
)

# Plugin names AutoPyFactory had that are gone, by kind: what to use instead.
RETIRED_PLUGINS: Mapping[tuple[str, str], str] = {
    ("sched", "Fillactivated"): "it was broken in AutoPyFactory; use Ready",
    ("sched", "KeepNQueueLife"): "it was broken in AutoPyFactory; use MinPending",
    (
        "sched",
        "Activated",
    ): "it was removed in 2013; use Ready, MaxPerCycle, MinPerCycle, MaxPending, MaxToRun",
    ("sched", "SimpleNQueue"): "it was removed in 2013; use KeepNRunning or MinPending",
    ("sched", "Simple"): "it was removed; use Ready",
    ("sched", "Trivial"): "it was removed; use Fixed",
    ("sched", "MaxToSubmit"): "it was a stub in AutoPyFactory; use a policy quota (policyConf)",
    ("sched", "MinToSubmit"): "it was a stub in AutoPyFactory; use MinPerCycle",
    ("batchsubmit", "CondorGRAM"): "GRAM was retired; use CondorOSGCE or CondorNordugrid",
    (
        "batchsubmit",
        "Exec",
    ): "it was broken in AutoPyFactory; use Local (or Slurm/PBS/LSF for a batch system)",
    ("batchsubmit", "CondorDeltaCloud"): "it was removed; use CondorEC2",
    ("batchsubmit", "EucaBatchSubmitPlugin"): "it was removed; use CondorEC2",
    ("batchstatus", "CondorEC2"): "its job is done by Condor (VM nodes are matched by instance id)",
    ("wmsstatus", "Queue"): "it was a stub in AutoPyFactory that always gave 0; use Sim, Panda or Condor",
}


@dataclass(frozen=True)
class Migration:
    """What happens to one key: renamed to ``new`` (alias), or dropped (``new`` None)."""

    key: str
    new: str | None
    message: str


def _apply(rules: tuple[tuple[re.Pattern[str], Rule], ...], key: str) -> Migration | None:
    for pattern, rule in rules:
        match = pattern.fullmatch(key)
        if match is None:
            continue
        if isinstance(rule, Obsolete):
            return Migration(key, None, f"obsolete AutoPyFactory key, ignored: {rule.instead}")
        new = match.expand(rule.new)
        if new == key:
            return None
        note = f" ({rule.note})" if rule.note else ""
        return Migration(key, new, f"AutoPyFactory 2.4 name of {new!r}; accepted, please rename it{note}")
    return None


def queue_key(key: str, declares: Callable[[str], bool] = lambda key: False) -> Migration | None:
    """The migration of a queues.conf key, unless a plugin declares the key as it is."""
    if declares(key):
        return None
    return _apply(QUEUE_RULES, key)


def factory_key(key: str) -> Migration | None:
    return _apply(FACTORY_RULES, key)


def migrate_values(
    values: Mapping[str, str], migrations: Mapping[str, Migration]
) -> tuple[dict[str, str], list[Migration]]:
    """Apply migrations to a section: aliases take the new name (unless it is set too), obsolete
    keys go. Returns the new values and the migrations that applied."""
    out: dict[str, str] = {}
    applied: list[Migration] = []
    for key, value in values.items():
        migration = migrations.get(key)
        if migration is None:
            out.setdefault(key, value)
            continue
        applied.append(migration)
        if migration.new is not None and migration.new not in values:
            out[migration.new] = value
    return out, applied


def rewrite_text(text: str, migrations: Mapping[str, Migration]) -> str:
    """A file's text with aliases renamed and obsolete keys commented out with the reason.

    Works line by line so comments, order and interpolation stay as the operator wrote them."""
    out: list[str] = []
    key_line = re.compile(r"^(?P<key>[^\s=:#;\[][^=:]*?)(?P<rest>\s*[=:].*)$")
    skipping = False
    for line in text.splitlines():
        if skipping and line[:1].isspace() and line.strip():
            out.append("#" + line)  # continuation of a dropped value
            continue
        skipping = False
        match = key_line.match(line)
        migration = migrations.get(match.group("key")) if match else None
        if match is None or migration is None:
            out.append(line)
            continue
        if migration.new is None:
            out.append(f"# apf: {migration.message}")
            out.append("# " + line)
            skipping = True
        else:
            out.append(migration.new + match.group("rest"))
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


# -- whole configurations (apf check --migrate) ---------------------------------------------------

_X509_SUFFIXES = (
    "proxyfile",
    "vorole",
    "flavor",
    "lifetime",
    "checktime",
    "minlife",
    "renew",
    "baseproxy",
    "usercert",
    "userkey",
    "owner",
    "initdelay",
    "interruptcheck",
    "myproxy_hostname",
    "myproxy_username",
    "myproxy_passphrase",
    "retriever_list",
    "voms.args",
    "remote_host",
    "remote_user",
    "remote_owner",
    "remote_group",
)


@dataclass(frozen=True)
class MigratedFile:
    path: str
    text: str
    changes: tuple[str, ...]
    sensitive: bool = False  # an auth file: shown only with secret values hidden

    def shown(self) -> str:
        """The text to print: for auth files, secret values and stray lines are hidden; URL
        passwords are hidden everywhere."""
        text = hide_secrets(self.text) if self.sensitive else self.text
        return _URL_PASSWORD.sub(r"\1***@", text)


_URL_PASSWORD = re.compile(r"(\w+://[^\s/:@]*:)[^\s/@]+@")


def hide_secrets(text: str) -> str:
    """An auth file for display: keys, headers and comments stay; every value but ``plugin`` and
    every other line (a pasted key, a continuation) is hidden. A secret pasted into the wrong key
    must not show either."""
    key_line = re.compile(r"^(?P<key>[^\s=:#;\[][^=:]*?)\s*[=:]")
    out: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or re.match(r"^\s*\[.+\]", line):
            out.append(line)
            continue
        match = key_line.match(line) if not line[:1].isspace() else None
        if match is None:
            out.append("    <hidden>" if line[:1].isspace() else "<hidden line>")
        elif match.group("key") == "plugin":
            out.append(line)
        else:
            out.append(f"{match.group('key')} = <hidden: copy it from the original>")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _keys_by_section(text: str) -> dict[str, list[str]]:
    from autopyfactory.config.ini import scan_locations

    keys, _ = scan_locations(text)
    out: dict[str, list[str]] = {}
    for section, key in keys:
        out.setdefault(section, []).append(key)
    return out


def migrate_legacy_proxy_sections(text: str) -> tuple[str, list[str]]:
    """proxy.conf (AutoPyFactory's ProxyManager) sections -> auth.conf X509 profiles."""
    sections = _keys_by_section(text)
    legacy = {
        name
        for name, keys in sections.items()
        if name != "DEFAULT" and "plugin" not in keys and any(k in _X509_SUFFIXES for k in keys)
    }
    if not legacy and not any(k in _X509_SUFFIXES for k in sections.get("DEFAULT", [])):
        return text, []
    out: list[str] = []
    changes: list[str] = []
    section: str | None = None
    key_line = re.compile(r"^(?P<key>[^\s=:#;\[][^=:]*?)(?P<rest>\s*[=:].*)$")
    for line in text.splitlines():
        header = re.match(r"^\s*\[(?P<name>.+)\]", line)
        if header:
            section = header.group("name")
            out.append(line)
            if section in legacy:
                out.append("plugin = X509")
                changes.append(f"[{section}]: proxy.conf profile -> plugin = X509, keys prefixed with x509.")
            continue
        match = key_line.match(line)
        if match and (section in legacy or section == "DEFAULT") and match.group("key") in _X509_SUFFIXES:
            out.append("x509." + line)
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else ""), changes


def migrate_configuration(conf: str) -> list[MigratedFile]:
    """Every local file of a configuration, rewritten with new key names (nothing is written).

    Works on configurations that do not load today (that is the point): the files are found from
    the raw ``[Factory]`` section."""
    from pathlib import Path

    from autopyfactory.config.declared import declared
    from autopyfactory.config.ini import read_documents
    from autopyfactory.config.sources import local_path, read_file

    first = conf.split(",")[0].strip()
    base = local_path(first).resolve().parent
    out: list[MigratedFile] = []

    def rewrite(path: Path, rules: Callable[[str], Migration | None], auth: bool = False) -> None:
        doc = read_file(path)
        text = doc.text
        changes: list[str] = []
        if auth:
            text, changes = migrate_legacy_proxy_sections(text)
        found = {}
        for keys in _keys_by_section(text).values():
            for key in keys:
                migration = rules(key)
                if migration is not None:
                    found[key] = migration
        changes += [
            f"{m.key} -> {m.new}" if m.new else f"{m.key}: removed ({m.message.split(': ', 1)[-1]})"
            for m in found.values()
        ]
        out.append(MigratedFile(str(path), rewrite_text(text, found), tuple(changes), sensitive=auth))

    factory_path = local_path(first)
    rewrite(factory_path, factory_key)
    raw = read_documents([read_file(factory_path)]).sections.get("Factory")
    values = raw.values if raw is not None else {}

    def files(key: str) -> list[Path]:
        return [
            local_path(v.strip(), base)
            for v in values.get(key, "").split(",")
            if v.strip()
            and v.strip() not in ("None", "none")
            and not v.strip().startswith(("http://", "https://"))
        ]

    for path in files("queueConf"):
        rewrite(path, lambda k: queue_key(k, declared))
    for directory in files("queueDirConf"):
        for path in sorted(directory.glob("*.conf")) if directory.is_dir() else []:
            rewrite(path, lambda k: queue_key(k, declared))
    for path in files("authConf"):
        rewrite(path, lambda k: None, auth=True)
    for path in files("monitorConf"):
        rewrite(path, lambda k: None)
    return out
