"""Running the credential tools (voms-proxy-init, arcproxy, myproxy-logon, token refreshers).

Commands are argv lists (never a shell), secrets go to stdin (never argv or the environment), each
run has a timeout after which its whole process group is killed, and ``Runner.cancel_all`` kills
what runs when the factory stops (SIGTERM must always work). Output is scrubbed of the secrets
before anything quotes it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

_OUTPUT_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def without_stdout(self) -> CommandResult:
        """For tools whose standard output is a secret (a token refresher)."""
        return replace(self, stdout="")

    def brief(self, limit: int = 300) -> str:
        """The meaningful end of the output: tool progress dots and blank lines dropped."""
        lines = []
        for line in (self.stderr + "\n" + self.stdout).splitlines():
            text = line.strip()
            if not text or set(text) <= set(".+*o"):
                continue
            text = text.rstrip(".+* ")
            if text.startswith(("Cannot open fileFilename=", "Function:")):
                continue  # voms-proxy-init's harmless ~/.rnd complaint
            lines.append(text)
        text = " | ".join(lines[-4:])
        return text if len(text) <= limit else "..." + text[-limit:]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value (and its lines) in a text meant for logs or errors."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "**********")
    return text


_TOKEN_LIKE = re.compile(
    r"[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]*|[A-Za-z0-9+/_\-]{32,}={0,2}"
)


def scrub_tokens(text: str) -> str:
    """Hide anything shaped like a bearer token (a JWT, a long base64 run) in a tool's output."""
    return _TOKEN_LIKE.sub("**********", text)


class Runner:
    """Runs commands with timeouts; remembers the live ones so ``cancel_all`` can stop them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[bytes]] = set()
        self._cancelled = threading.Event()

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
    ) -> CommandResult:
        if self._cancelled.is_set():
            return CommandResult(tuple(argv), -1, "", "stopped", timed_out=False)
        environ = {**os.environ, **(env or {})}
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environ,
                start_new_session=True,  # its own process group: a timeout kills the whole tree
            )
        except OSError as exc:
            return CommandResult(tuple(argv), 127, "", f"cannot run {argv[0]}: {exc.strerror}")
        with self._lock:
            self._live.add(proc)
        timed_out = False
        try:
            try:
                out, err = proc.communicate(input=input or b"", timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                out, err = proc.communicate()
        finally:
            with self._lock:
                self._live.discard(proc)
        secrets = list(secrets)
        return CommandResult(
            tuple(argv),
            proc.returncode if not timed_out else -9,
            scrub(out[-_OUTPUT_LIMIT:].decode(errors="replace"), secrets),
            scrub(err[-_OUTPUT_LIMIT:].decode(errors="replace"), secrets),
            timed_out,
        )

    def cancel_all(self) -> None:
        """Kill every running command; later ``run`` calls return at once."""
        self._cancelled.set()
        with self._lock:
            live = list(self._live)
        for proc in live:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
