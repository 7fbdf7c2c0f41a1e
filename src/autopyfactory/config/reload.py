"""Re-reading the configuration off the decision path (``config.reconfig``, SIGHUP).

``ConfigWatcher.poll()`` reads every source again (http(s) URLs with a conditional GET: a 304
reuses the text it has), validates the result with the same loader as ``apf run``, and returns a
``ReloadResult``: a new valid config when something changed; otherwise the reason to keep the
running one. The caller runs the start-up checks (``preflight``), swaps the config in, and calls
``remember(config)`` so that the next poll compares with what runs. It never raises for bad input
and never blocks longer than the sources' deadlines. Call it from a thread of its own (the
daemon's supervisor, or the engine's reload thread) and hand ``result.config`` to
``Factory.request_reload``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_factory_config
from autopyfactory.config.models import FactoryConfig
from autopyfactory.config.sources import (
    HTTP_TIMEOUT,
    NotModified,
    SourceText,
    fetch,
    is_url,
    read_source,
    redact_url,
)


@dataclass(frozen=True)
class ReloadResult:
    config: FactoryConfig | None = None  # swap this in
    unchanged: bool = False  # nothing changed: keep running as is
    problems: tuple[str, ...] = ()  # why the new configuration is refused (the running one stays)
    sources_not_modified: int = 0  # http sources answered 304

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Cached:
    text: str
    etag: str | None
    last_modified: str | None


@dataclass
class ConfigWatcher:
    """Remembers what it read, to answer "did anything change?" and to send conditional GETs."""

    conf: str
    timeout: float = HTTP_TIMEOUT
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _digest: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    not_modified: int = 0  # http sources that answered 304 in the last poll

    def remember(self, config: FactoryConfig) -> None:
        """The configuration now running (its digest is what "changed" compares with)."""
        self._digest = config_digest(config)

    def fetcher(self, source: str, base: Path | None) -> SourceText:
        if not is_url(source):
            return read_source(source, base, timeout=self.timeout)
        cached = self._cache.get(source)
        got = fetch(
            source,
            timeout=self.timeout,
            etag=cached.etag if cached else None,
            last_modified=cached.last_modified if cached else None,
        )
        if isinstance(got, NotModified):
            assert cached is not None
            self.not_modified += 1
            return SourceText(redact_url(source), cached.text, cached.etag, cached.last_modified)
        self._cache[source] = _Cached(got.text, got.etag, got.last_modified)
        return got

    def poll(self) -> ReloadResult:
        with self._lock:
            self.not_modified = 0
            try:
                config = load_factory_config(self.conf, fetcher=self.fetcher)
            except ConfigError as exc:
                return ReloadResult(problems=tuple(str(p) for p in exc.problems))
            except Exception as exc:  # never let a reload kill the thread that asked
                return ReloadResult(problems=(f"{self.conf}: cannot reload: {type(exc).__name__}",))
            digest = config_digest(config)
            if digest == self._digest:
                return ReloadResult(unchanged=True, sources_not_modified=self.not_modified)
            # the caller runs the start-up checks, swaps the config in, then calls remember()
            return ReloadResult(config=config, sources_not_modified=self.not_modified)


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "sha256:" + hashlib.sha256(value.get_secret_value().encode()).hexdigest()
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def config_digest(config: FactoryConfig) -> str:
    """Changes whenever any effective value changes (secrets enter only as hashes)."""
    doc = {
        "factory": sorted(config.factory_raw.items()),
        "queues": {n: q.fingerprint() for n, q in config.queues.items()},
        "auth": {n: [p.plugin, _plain(p.options)] for n, p in config.auth.items()},
        "monitors": {n: [m.plugin, m.monitorURL, _plain(m.options)] for n, m in config.monitors.items()},
        "policy": _plain(config.policy) if config.policy is not None else None,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
