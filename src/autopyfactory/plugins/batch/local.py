"""``batchsubmitplugin = Local`` / ``batchstatusplugin = Local``: pilots as real local processes.

Each pilot runs under a small ``sh`` wrapper in its own session and directory
``<statedir>/local/<factory>/<queue>/<pilot id>/``. The wrapper waits for a free slot (``flock`` on
``batchsubmit.local.slots`` lock files, so pilots beyond it stay pending, like a batch queue),
records ``started``, runs the queue's ``executable`` with the AutoPyFactory pilot environment, and
writes the exit code to ``rc``. The directory is the truth the status plugin reads: pilots
survive a factory crash and are adopted after a restart by their tags (the directory path).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from autopyfactory.model import BatchSnapshot, Pilot, PilotState, PilotTags
from autopyfactory.plugins.base import (
    BackendError,
    BatchStatusPlugin,
    BatchSubmitPlugin,
    FactoryContext,
    PluginOptions,
    SubmitOptions,
)
from autopyfactory.plugins.batch import script as pilot_script
from autopyfactory.plugins.batch.script import parse_environ

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

# $1 = pilot dir, $2 = slot dir, $3 = slots (0 = unlimited), $4/$5 = stdout/stderr files, then
# the command.
_WRAPPER = r"""
d=$1; slotdir=$2; slots=$3; out=$4; err=$5; shift 5
echo $$ > "$d/pid.tmp" && mv "$d/pid.tmp" "$d/pid"
if [ "$slots" -gt 0 ]; then
  while :; do
    i=1
    while [ "$i" -le "$slots" ]; do
      exec 9>"$slotdir/slot$i"
      if flock -n 9; then break 2; fi
      i=$((i + 1))
    done
    sleep 1
  done
fi
date +%s > "$d/started.tmp" && mv "$d/started.tmp" "$d/started"
"$@" > "$out" 2> "$err" 9>&-
rc=$?
echo $rc > "$d/rc.tmp" && mv "$d/rc.tmp" "$d/rc"
"""


def local_root(factory: FactoryContext) -> Path:
    return factory.state_dir / "local" / factory.factory_id


def pilot_environment(
    queue: QueueConfig, factory: FactoryContext, tags: PilotTags, backend_id: str, gtag: str
) -> dict[str, str]:
    """AutoPyFactory's pilot environment (apf-reference 5.1): the shared part plus what a local
    pilot knows at submission (its id and where its output goes)."""
    env = pilot_script.pilot_environment(queue, factory, tags, {})
    env.update(
        {
            "GTAG": gtag,
            "APFCID": backend_id,
            "FACTORY_JOBID": f"{socket.gethostname()}#{backend_id}",
        }
    )
    return env


def resolve_executable(queue: QueueConfig) -> str:
    """A relative ``executable`` is looked up beside the config file that set it, then on PATH."""
    exe = queue.settings.executable or ""
    if os.path.isabs(exe):
        return exe
    origin = queue.origin.get("executable")
    if origin:
        candidate = Path(origin).parent / exe
        if candidate.exists():
            return str(candidate.resolve())
    return exe


class LocalSubmitOptions(SubmitOptions):
    slots: int = Field(0, ge=0, description="concurrently running pilots on this host; 0 = no limit")
    environ: str | None = Field(None, description="NAME=value items added to the pilot environment")

    def model_post_init(self, context: object) -> None:
        parse_environ(self.environ)  # reject a malformed environ at load time


class LocalSubmit(BatchSubmitPlugin):
    name = "Local"
    Options = LocalSubmitOptions

    def __init__(self, queue: QueueConfig, options: LocalSubmitOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        if not queue.settings.executable:
            raise BackendError(self.target(), f"queue {queue.name!r} has no 'executable' to run as pilot")
        self.options: LocalSubmitOptions = options
        self.dir = local_root(factory) / _safe(queue.name)
        self.slot_dir = local_root(factory) / "slots" / _safe(queue.name)
        self._children: list[subprocess.Popen[bytes]] = []

    def target(self) -> str:
        return f"local:{self.queue.name}"

    def submit(self, n: int, tags: PilotTags, now: float) -> list[Pilot]:
        self._reap()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.slot_dir.mkdir(parents=True, exist_ok=True)
        argv = [resolve_executable(self.queue)]
        argv += shlex.split(self.queue.settings.executable_arguments or "")
        extra_env = parse_environ(self.options.environ)
        # with baseLogDir, output goes to APF's log tree <baseLogDir>/<day>/<queue>/<id>.out|.err
        # (what the pilot log server serves and baseLogDirUrl names); else into the pilot's dir
        settings = self.factory.settings
        log_dir = pilot_script.log_dir(self.factory, self.queue.name, now, settings.baseLogDir)
        log_url = pilot_script.log_dir(self.factory, self.queue.name, now, settings.baseLogDirUrl)
        if log_dir:
            try:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(
                    self.target(), f"cannot create the log directory {log_dir}: {exc}"
                ) from exc
        pilots = []
        for i in range(n):
            backend_id = f"{tags.intent_id}.{i}"
            pdir = self.dir / backend_id
            pdir.mkdir()
            out = Path(log_dir) / f"{backend_id}.out" if log_dir else pdir / "out"
            err = Path(log_dir) / f"{backend_id}.err" if log_dir else pdir / "err"
            gtag = f"{log_url}/{backend_id}.out" if log_dir and log_url else str(out)
            (pdir / "tags").write_text(f"{tags.factory_id}\n{tags.queue}\n{tags.intent_id}\n{now}\n")
            env = dict(os.environ)
            env.update(pilot_environment(self.queue, self.factory, tags, backend_id, gtag))
            env.update(extra_env)
            try:
                child = subprocess.Popen(
                    [
                        "sh",
                        "-c",
                        _WRAPPER,
                        "apf-pilot",
                        str(pdir),
                        str(self.slot_dir),
                        str(self.options.slots),
                        str(out),
                        str(err),
                        *argv,
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=pdir,
                )
            except OSError as exc:
                shutil.rmtree(pdir, ignore_errors=True)
                if pilots:
                    return pilots  # the ones that started are real; the caller records them
                raise BackendError(self.target(), f"cannot start pilot wrapper: {exc}") from exc
            self._children.append(child)
            pilots.append(
                Pilot(backend_id, self.queue.name, PilotState.PENDING, tags.intent_id, submitted_at=now)
            )
        return pilots

    def cancel(self, backend_ids: Sequence[str]) -> None:
        self._signal(backend_ids)

    def retire(self, backend_ids: Sequence[str], kill: bool = False) -> None:
        # A local pilot has no drain state: SIGTERM asks it to finish, SIGKILL when killing.
        self._signal(backend_ids, signal.SIGKILL if kill else signal.SIGTERM)

    def _signal(self, backend_ids: Sequence[str], sig: signal.Signals = signal.SIGTERM) -> None:
        for backend_id in backend_ids:
            pdir = self.dir / backend_id
            pid = _wrapper_pid(pdir)
            if pid is None:
                continue
            (pdir / "cancelled").touch()
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
        self._reap()

    def _reap(self) -> None:
        self._children = [c for c in self._children if c.poll() is None]

    def close(self) -> None:
        self._reap()


class LocalStatusOptions(PluginOptions):
    keep_finished: float = Field(
        3600.0, ge=0, le=366 * 86400, description="seconds a finished pilot's directory is kept"
    )


class LocalStatus(BatchStatusPlugin):
    name = "Local"
    Options = LocalStatusOptions
    default_interval = 10.0
    default_maxage = 120.0

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        options = queue.plugin_options("batchstatus")
        return ("Local", str(local_root(factory)), getattr(options, "keep_finished", 3600.0))

    def poll(self, now: float) -> BatchSnapshot:
        root = local_root(self.factory)
        keep = float(self.endpoint_key[2])  # type: ignore[index]
        pilots: list[Pilot] = []
        if root.is_dir():
            for qdir in root.iterdir():
                if qdir.name == "slots" or not qdir.is_dir():
                    continue
                for pdir in qdir.iterdir():
                    pilot = read_pilot(pdir)
                    if pilot is None:
                        continue
                    if pilot.state.final and pilot.ended_at is not None and now - pilot.ended_at > keep:
                        shutil.rmtree(pdir, ignore_errors=True)
                        continue
                    pilots.append(pilot)
        return BatchSnapshot(time=now, pilots=tuple(pilots))


def read_pilot(pdir: Path) -> Pilot | None:
    """One pilot's state from its directory (None if it is not a pilot directory)."""
    try:
        _factory_id, queue, intent_id, submitted = (pdir / "tags").read_text().splitlines()[:4]
    except (OSError, ValueError):
        return None
    started = _mtime_or_none(pdir / "started")
    rc_text = _read_or_none(pdir / "rc")
    cancelled = (pdir / "cancelled").exists()
    exit_code = None
    ended = None
    if rc_text is not None:
        exit_code = int(rc_text) if rc_text.strip().lstrip("-").isdigit() else None
        ended = _mtime_or_none(pdir / "rc")
        state = PilotState.DONE if exit_code == 0 else PilotState.FAILED
        if cancelled and exit_code != 0:
            state = PilotState.CANCELLED
    elif _wrapper_pid(pdir) is not None:
        state = PilotState.RUNNING if started is not None else PilotState.PENDING
    elif cancelled:
        state = PilotState.CANCELLED
        ended = _mtime_or_none(pdir / "cancelled")
    elif not (_read_or_none(pdir / "pid") or "").strip() and time.time() - float(submitted) < 30:
        # wrapper not yet up (a pid file being written counts as none: a poll that fell in that
        # instant reported a live pilot as failed, and the factory submitted it again)
        state = PilotState.PENDING
    else:
        state = PilotState.FAILED  # the wrapper died without writing rc (killed, host reboot)
        ended = _mtime_or_none(pdir / "pid")
    return Pilot(
        backend_id=pdir.name,
        queue=queue,
        state=state,
        intent_id=intent_id,
        submitted_at=float(submitted),
        started_at=started,
        ended_at=ended,
        exit_code=exit_code,
    )


def _wrapper_pid(pdir: Path) -> int | None:
    """The wrapper's pid if it is alive and really is this pilot's wrapper (pids get reused)."""
    text = _read_or_none(pdir / "pid")
    if not text or not text.strip().isdigit():
        return None
    pid = int(text)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if str(pdir).encode() not in cmdline.split(b"\0"):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state == "Z" else pid


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _mtime_or_none(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "_")
