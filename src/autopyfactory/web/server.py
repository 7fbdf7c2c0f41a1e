"""An ASGI app served by uvicorn from a daemon thread inside the factory process.

uvicorn installs signal handlers only in the main thread, so SIGTERM stays the daemon's; its
logging config is left alone (``log_config=None``); ``stop()`` is bounded by the graceful-shutdown
timeout even with a request in flight. The socket is bound by the caller's thread, so a busy port
is an ``OSError`` right there, not a silent thread exit.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

log = logging.getLogger("autopyfactory.web")


class WebServer:
    """``WebServer(app, host, port).start()``; port 0 picks a free port (read ``.port``/``.url``)."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "web",
        certfile: str | None = None,
        keyfile: str | None = None,
        cafile: str | None = None,
        graceful_timeout: float = 3.0,
    ) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP: asyncio sets TCP_NODELAY only when sock.proto is IPPROTO_TCP; without it
        # every keep-alive response waits ~40 ms (Nagle + delayed ACK)
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self.host, self.port = host, int(self._sock.getsockname()[1])
        self.scheme = "https" if certfile else "http"
        config = uvicorn.Config(
            app,
            log_config=None,  # the daemon's logging stays as configured (uvicorn logs to "uvicorn.*")
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=graceful_timeout,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
            ssl_ca_certs=cafile,
            ssl_cert_reqs=ssl.CERT_REQUIRED if cafile else ssl.CERT_NONE,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=name, daemon=True
        )

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host == "0.0.0.0" else "::1" if self.host == "::" else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> WebServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"the web server on {self.host}:{self.port} stopped during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the web server on {self.host}:{self.port} did not start in {timeout:.0f}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        self._server.should_exit = True  # uvicorn checks it every 0.1 s
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()
        return not self._thread.is_alive()
