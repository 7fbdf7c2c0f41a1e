"""The daemon file: what ``apf run`` says about itself for ``apf status``.

``<factory.statedir>/daemon-<factoryId>.json`` (``...-dry-run.json`` for ``--dry-run``) holds the
pid, host, start time, a heartbeat refreshed every ``factory.sleep`` seconds, the queues that
failed to set up and, after a clean stop, when it stopped. ``daemon_state`` turns it (and the
engine's status file) into "running" / "not running since ..." without trusting a stale file:
the pid must be alive on this host and the heartbeat recent.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopyfactory.config.models import FactoryConfig


def daemon_path(config: FactoryConfig, dry_run: bool = False) -> Path:
    suffix = "-dry-run" if dry_run else ""
    return config.settings.state_path / f"daemon-{config.factory_id}{suffix}.json"


class DaemonFile:
    """Written by ``apf run``: at start, on every heartbeat, and at stop."""

    def __init__(
        self, path: Path, *, conf: str, dry_run: bool, failed_queues: Mapping[str, str], now: float
    ) -> None:
        self.path = path
        self.doc: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "conf": conf,
            "started": now,
            "heartbeat": now,
            "heartbeat_interval": None,
            "dry_run": dry_run,
            "failed_queues": dict(failed_queues),
            "stopped": None,
        }

    def write(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.doc))
            os.replace(tmp, self.path)
            return True
        except OSError:
            return False

    def heartbeat(self, now: float, interval: float) -> bool:
        self.doc["heartbeat"] = now
        self.doc["heartbeat_interval"] = interval
        return self.write()

    def fail_queue(self, name: str, error: str) -> None:
        self.doc["failed_queues"][name] = error

    def stopped(self, now: float) -> bool:
        self.doc["stopped"] = now
        return self.write()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or {} if it is missing, unreadable or not an object."""
    try:
        if not path.is_file():
            return {}
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class DaemonState:
    running: bool
    text: str  # one line for operators
    pid: int | None = None
    heartbeat: float | None = None
    since: float | None = None  # not running: since when (last sign of life)
    dry_run: bool = False
    failed_queues: Mapping[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "text": self.text,
            "pid": self.pid,
            "heartbeat": self.heartbeat,
            "not_running_since": None if self.running else self.since,
            "dry_run": self.dry_run,
            "failed_queues": dict(self.failed_queues or {}),
        }


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def daemon_state(
    daemon: Mapping[str, Any], status: Mapping[str, Any], now: float, *, stale_after: float
) -> DaemonState:
    """Whether the daemon runs, from its daemon file and the engine's status file. Pure but for
    the pid check (``pid_alive``), which is only trusted on the host that wrote the file."""
    from datetime import UTC, datetime

    def when(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    beats = [
        b
        for b in (
            _number(daemon.get("heartbeat")),
            _number(status.get("heartbeat")),
            _number(status.get("time")),
        )
        if b is not None
    ]
    heartbeat = max(beats) if beats else None
    pid_value = daemon.get("pid", status.get("pid"))
    pid = pid_value if isinstance(pid_value, int) and not isinstance(pid_value, bool) else None
    host = daemon.get("host", status.get("host"))
    dry_run = bool(daemon.get("dry_run", status.get("dry_run", False)))
    failed = daemon.get("failed_queues") or status.get("failed_queues") or {}
    failed = {str(k): str(v) for k, v in failed.items()} if isinstance(failed, Mapping) else {}
    stopped = _number(daemon.get("stopped"))
    if heartbeat is None and pid is None:
        return DaemonState(
            False, "daemon: no record of a daemon (apf run has not run with this configuration)"
        )
    local = host in (None, socket.gethostname())
    alive = pid_alive(pid) if (local and pid is not None) else None
    fresh = heartbeat is not None and now - heartbeat <= stale_after
    label = f"pid {pid}" if pid is not None else "pid unknown"
    if host and not local:
        label += f" on {host}"
    dry = " (DRY RUN: acts on nothing)" if dry_run else ""
    if stopped is not None and (alive is not True):
        return DaemonState(
            False,
            f"daemon: not running since {when(stopped)} (stopped cleanly)",
            pid,
            heartbeat,
            stopped,
            dry_run,
            failed,
        )
    if alive is False:
        since = heartbeat or stopped
        text = (
            f"daemon: not running since {when(since)} ({label} is gone)"
            if since
            else f"daemon: not running ({label} is gone)"
        )
        return DaemonState(False, text, pid, heartbeat, since, dry_run, failed)
    if not fresh:
        since = heartbeat
        if alive:
            text = (
                f"daemon: {label} exists but has given no heartbeat since {when(since)}"
                if since
                else f"daemon: {label} exists but never gave a heartbeat"
            )
        else:
            text = (
                f"daemon: not running since {when(since)} (no heartbeat for {now - since:.0f}s)"
                if since
                else "daemon: not running"
            )
        return DaemonState(False, text, pid, heartbeat, since, dry_run, failed)
    age = now - heartbeat if heartbeat is not None else 0.0
    started = _number(daemon.get("started"))
    up = f", up {_duration(now - started)}" if started else ""
    return DaemonState(
        True,
        f"daemon: running ({label}{up}, last heartbeat {age:.0f}s ago){dry}",
        pid,
        heartbeat,
        None,
        dry_run,
        failed,
    )


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
