"""Start-up checks shared by ``apf check`` and the daemon's start-up: if check says yes, run can run.

``check_factory(config)`` runs, for a validated ``FactoryConfig``:
- the state directory and ``baseLogDir`` are directories (or can be created) and writable;
- the store opens and is writable (SQLite: the file or its directory; PostgreSQL: the driver is
  installed, the server answers within a timeout, a transaction can write), without creating it;
- per queue: every auth profile a key names (``batchsubmit.<p>.proxy``, ``...authprofile``,
  ``wmsstatus.panda.auth``) exists and is of a kind the key accepts (with "did you mean");
  the optional libraries its plugins import are importable (with the install command);
  and its plugins construct exactly as the engine constructs them (constructors validate keys
  such as a CE's grid resource) and are closed again.

Remote queue sources were already fetched by the loader (with their deadlines). Findings name
the queue and key, or the factory-level thing (store, directory); a queue with an error is listed
in ``report.failed_queues`` and must not be started. Nothing here writes a file.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sqlite3
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopyfactory.config.models import FactoryConfig, QueueConfig
from autopyfactory.plugins.base import FactoryContext, did_you_mean
from autopyfactory.plugins.keys import PSYCOPG, NeedsModules, Requirement, auth_references

MIN_FREE_BYTES = 1 << 20  # a store on a disk with less than this cannot record a pass


@dataclass(frozen=True)
class Finding:
    where: str  # "[Q] batchsubmit.condorosgce.proxy", "store sqlite:////var/apf.db", "factory.statedir"
    message: str
    queue: str | None = None  # the queue that cannot be set up; None: the whole factory
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class PreflightReport:
    findings: tuple[Finding, ...] = ()

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if not f.warning]

    @property
    def factory_errors(self) -> list[Finding]:
        return [f for f in self.errors if f.queue is None]

    @property
    def failed_queues(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in self.errors:
            if f.queue is not None:
                out.setdefault(f.queue, []).append(str(f))
        return out

    @property
    def ok(self) -> bool:
        return not self.errors


def factory_context(config: FactoryConfig) -> FactoryContext:
    """The context the engine lends plugins (the same fields ``Factory`` fills in)."""
    urls = [m.monitorURL for m in config.monitors.values() if m.monitorURL]
    return FactoryContext(
        factory_id=config.factory_id,
        settings=config.settings,
        auth_profiles=dict(config.auth),
        state_dir=config.settings.state_path,
        monitor_url=urls[0] if len(urls) == 1 else None,
    )


def check_factory(
    config: FactoryConfig,
    *,
    store: bool = True,
    dirs: bool = True,
    construct: bool = True,
    timeout: float = 10.0,
    extra_dirs: Mapping[str, Path] | None = None,
) -> PreflightReport:
    """Every start-up check for ``config`` (see the module docstring)."""
    findings: list[Finding] = []
    settings = config.settings
    if dirs:
        findings += check_directory(settings.state_path, "factory.statedir")
        if settings.baseLogDir:
            findings += check_directory(Path(settings.baseLogDir).expanduser(), "baseLogDir")
        for what, path in (extra_dirs or {}).items():
            findings += check_directory(path, what)
    if store:
        findings += check_store(settings.database_url(), timeout=timeout)
    ctx = factory_context(config)
    queues = config.active_queues()
    for queue in queues:
        findings += check_queue_auth(queue, config)
        findings += check_queue_modules(queue)
    if construct:
        failed = {f.queue for f in findings if f.queue and not f.warning}
        findings += construct_plugins([q for q in queues if q.name not in failed], ctx)
    return PreflightReport(tuple(findings))


# -- directories -----------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_directory(path: Path, what: str) -> list[Finding]:
    """``path`` is a writable directory, or could be created as one (nothing is created)."""
    where = f"{what} {path}"
    try:
        if path.exists():
            if not path.is_dir():
                return [Finding(where, "exists but is not a directory")]
            if not os.access(path, os.W_OK | os.X_OK):
                return [Finding(where, f"is not writable by uid {os.geteuid()}")]
            return []
        ancestor = _existing_ancestor(path)
        if not ancestor.is_dir():
            return [Finding(where, f"cannot be created: {ancestor} is not a directory")]
        if not os.access(ancestor, os.W_OK | os.X_OK):
            return [Finding(where, f"cannot be created: {ancestor} is not writable by uid {os.geteuid()}")]
    except OSError as exc:  # e.g. a parent directory this user cannot enter
        return [Finding(where, f"cannot be checked: {exc.strerror or exc} (uid {os.geteuid()})")]
    return []


# -- the store -------------------------------------------------------------------------------------


def redact_db_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def check_store(url: str, *, timeout: float = 10.0) -> list[Finding]:
    """The store can be opened and written, checked without creating or changing anything."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    where = f"store {redact_db_url(url)}"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return [Finding("store.url", "not a database URL")]
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            return []
        return _check_sqlite(Path(database).expanduser(), where)
    if backend == "postgresql":
        return _check_postgres(url, where, timeout)
    return [Finding(where, f"unsupported database {backend!r}: use sqlite or postgresql")]


def _check_sqlite(path: Path, where: str) -> list[Finding]:
    try:
        return _check_sqlite_file(path, where)
    except OSError as exc:
        return [Finding(where, f"cannot be checked: {exc.strerror or exc} (uid {os.geteuid()})")]


def _check_sqlite_file(path: Path, where: str) -> list[Finding]:
    if path.exists():
        if not path.is_file():
            return [Finding(where, f"{path} is not a regular file")]
        if not os.access(path, os.R_OK | os.W_OK):
            return [Finding(where, f"{path} is not readable and writable by uid {os.geteuid()}")]
        if not os.access(path.parent, os.W_OK | os.X_OK):
            # SQLite writes its journal next to the database
            return [Finding(where, f"{path.parent} is not writable (SQLite needs it for its journal)")]
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                conn.execute("PRAGMA schema_version").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return [Finding(where, f"{path} is not a usable SQLite database: {exc}")]
        directory = path.parent
    else:
        problems = check_directory(path.parent, "store directory")
        if problems:
            return [Finding(where, p.message.replace("store directory ", "")) for p in problems]
        directory = _existing_ancestor(path.parent)
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return []
    if free < MIN_FREE_BYTES:
        return [Finding(where, f"the disk holding {directory} is full ({free} bytes free)")]
    return []


def _check_postgres(url: str, where: str, timeout: float) -> list[Finding]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = create_engine(url, connect_args={"connect_timeout": max(1, int(timeout))})
    except ImportError as exc:
        return [
            Finding(where, f"the database driver is not installed ({exc.name or exc}): {PSYCOPG.install}")
        ]
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        return [Finding(where, f"cannot use this URL: {_first_line(exc)}")]
    try:
        with engine.connect() as conn, conn.begin() as tx:
            conn.execute(text("CREATE TEMPORARY TABLE apf_preflight (x integer) ON COMMIT DROP"))
            tx.rollback()
    except SQLAlchemyError as exc:
        return [Finding(where, f"cannot open and write: {_first_line(getattr(exc, 'orig', None) or exc)}")]
    finally:
        engine.dispose()
    return []


def _first_line(exc: BaseException | Any) -> str:
    text = (str(exc) or type(exc).__name__).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# -- queues ----------------------------------------------------------------------------------------


def _queue_specs(queue: QueueConfig) -> list[Any]:
    return [s for s in (queue.wmsstatus, queue.batchstatus, queue.batchsubmit, *queue.sched) if s is not None]


def check_queue_auth(queue: QueueConfig, config: FactoryConfig) -> list[Finding]:
    """Every auth profile a queue's keys name exists and is of an accepted kind."""
    findings = []
    profiles = config.auth
    seen: set[str] = set()
    for spec in _queue_specs(queue):
        for ref in auth_references(spec.cls.Options):
            key = spec.cls.prefixes()[0] + ref.key_suffix
            if key in seen:
                continue
            seen.add(key)
            value = getattr(spec.options, ref.field)
            if not value:
                continue
            names = [n.strip() for n in str(value).split(",")] if ref.many else [str(value).strip()]
            for name in [n for n in names if n and n not in ("None", "none")]:
                message = _profile_problem(name, ref.kinds, profiles, config)
                if message:
                    findings.append(Finding(f"[{queue.name}] {key}", message, queue.name))
    return findings


def _profile_problem(
    name: str, kinds: tuple[str, ...], profiles: Mapping[str, Any], config: FactoryConfig
) -> str | None:
    wanted = " or ".join(kinds)
    profile = profiles.get(name)
    if profile is None:
        if not config.settings.authConf:
            return f"names auth profile {name!r} but [Factory] authConf is not set"
        if not config.settings.authmanager_enabled:
            return f"names auth profile {name!r} but authmanager.enabled = False (auth.conf is not read)"
        defined = ", ".join(sorted(profiles)) or "none"
        return f"auth profile {name!r} is not defined in auth.conf{did_you_mean(name, list(profiles))} (defined: {defined})"
    if profile.plugin not in kinds:
        return f"auth profile {name!r} is a {profile.plugin} profile; this key needs {wanted}"
    return None


def check_queue_modules(queue: QueueConfig) -> list[Finding]:
    findings = []
    for spec in _queue_specs(queue):
        if not issubclass(spec.cls, NeedsModules):
            continue
        for req in spec.cls.requires:
            message = module_problem(req)
            if message:
                key = {"sched": "schedplugin"}.get(spec.kind, f"{spec.kind}plugin")
                findings.append(Finding(f"[{queue.name}] {key} = {spec.name}", message, queue.name))
    return findings


def module_problem(req: Requirement) -> str | None:
    try:
        importlib.import_module(req.module)
    except ImportError as exc:
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({_first_line(exc)})"
        return f"needs the Python module {req.module!r}, which cannot be imported{detail}: {req.install}"
    except Exception as exc:  # a broken installation
        return f"the Python module {req.module!r} fails to import ({_first_line(exc)}): {req.install}"
    return None


def construct_plugins(queues: Iterable[QueueConfig], ctx: FactoryContext) -> list[Finding]:
    """Build every queue's plugins as the engine does, then close them: constructors validate."""
    findings: list[Finding] = []
    pollers: dict[Hashable, str | None] = {}
    for queue in queues:
        made: list[Any] = []
        try:
            for spec in queue.sched:
                spec.cls(spec.options)
            for kind, spec in (("batchstatus", queue.batchstatus), ("wmsstatus", queue.wmsstatus)):
                if spec is None:
                    continue
                key_text = f"{kind}plugin = {spec.name}"
                try:
                    endpoint = spec.cls.endpoint(queue, ctx)
                except Exception as exc:
                    findings.append(Finding(f"[{queue.name}] {key_text}", _first_line(exc), queue.name))
                    continue
                ident = (kind, spec.name, endpoint)
                if ident not in pollers:
                    try:
                        made.append(spec.cls(endpoint, ctx))
                        pollers[ident] = None
                    except Exception as exc:
                        pollers[ident] = _first_line(exc)
                if pollers[ident]:
                    findings.append(Finding(f"[{queue.name}] {key_text}", str(pollers[ident]), queue.name))
            spec = queue.batchsubmit
            try:
                made.append(spec.cls(queue, spec.options, ctx))
            except Exception as exc:
                findings.append(
                    Finding(f"[{queue.name}] batchsubmitplugin = {spec.name}", _first_line(exc), queue.name)
                )
        finally:
            for plugin in made:
                try:
                    plugin.close()
                except Exception:
                    pass
    return findings
