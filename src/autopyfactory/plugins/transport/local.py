"""Run commands on this machine: a subprocess per call, never through a shell."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.transport.base import DEFAULT_TIMEOUT, Result, Transport


class LocalTransport(Transport):
    name = "local"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        # extra environment on top of the factory's own (e.g. SLURM_CONF for a non-default cluster)
        self.env = dict(env or {})

    def makedirs(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        # in-process: no subprocess for what a system call does
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            return Result(1, "", f"mkdir: cannot create directory {path!r}: {exc.strerror}")
        return Result(0, "", "")

    def run(
        self, argv: Sequence[str], input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Result:
        argv = list(argv)
        if not argv:
            raise ValueError("empty argv")
        env = {**os.environ, **self.env} if self.env else None
        try:
            proc = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                timeout=timeout,
                env=env,
                stdin=None if input is not None else subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError:
            raise BackendError(
                self.name, f"command {argv[0]!r} not found (PATH={os.environ.get('PATH', '')})"
            ) from None
        except PermissionError:
            raise BackendError(self.name, f"command {argv[0]!r} is not executable") from None
        except subprocess.TimeoutExpired:
            raise BackendError(self.name, f"{argv[0]} timed out after {timeout:g} s") from None
        return Result(
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )
