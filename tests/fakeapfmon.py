"""A local apfmon receiver: records every call (method, path, body) in arrival order.

It answers like apfmon's API: ``PUT /api/factories/<fid>`` 201, ``GET /api/labels?factory=<fid>``
a JSON list of the labels it knows (``[{"name", "factory", ...}]``), ``PUT /api/labels`` and
``PUT /api/jobs`` 201, ``POST /api/labels/<fid>:<label>`` 200.

Knobs for tests: ``hang()`` blocks every request until ``release()``; ``fail_next(n, code)``
answers the next n requests with an error; ``stop()`` closes the port and ``start()`` reopens
it (same port), so a test can have the monitor down at start and come up later.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import serve, shut_down


@dataclass
class Call:
    method: str
    path: str
    body: bytes
    content_type: str | None

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in urllib.parse.parse_qs(self.body.decode()).items()}


class FakeApfmon:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: list[Call] = []
        self.labels: dict[str, dict[str, Any]] = {}  # name -> label object
        self.factories: dict[str, Any] = {}
        self._open = threading.Event()
        self._open.set()
        self.blocked = 0  # requests waiting in hang()
        self._failures: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def reserve_port(self) -> FakeApfmon:
        """Pick a free port without serving (the monitor is 'down' until start())."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.port = server.server_address[1]
        server.server_close()
        return self

    def start(self) -> FakeApfmon:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        self._server = server
        self._thread = serve(server, "fakeapfmon")
        return self

    def stop(self) -> None:
        self.release()
        shut_down(self._server, self._thread)
        self._server = self._thread = None

    def hang(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def fail_next(self, n: int, code: int = 500) -> None:
        with self.lock:
            self._failures.extend([code] * n)

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
        """Poll ``predicate(self)`` until true or the deadline passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.01)
        return False

    def summary(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(c.method, c.path) for c in self.calls]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def _reply(self, code: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        fake: FakeApfmon = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with fake.lock:
            fake.blocked += 1
        fake._open.wait()
        with fake.lock:
            fake.blocked -= 1
            failure = fake._failures.pop(0) if fake._failures else None
            if failure is None:
                fake.calls.append(Call(method, self.path, body, self.headers.get("Content-Type")))
        if failure is not None:
            return self._reply(failure, b"error", "text/plain")
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        if method == "PUT" and path.startswith("/api/factories/"):
            with fake.lock:
                fake.factories[urllib.parse.unquote(path.rsplit("/", 1)[1])] = json.loads(body)
            return self._reply(201)
        if method == "GET" and path == "/api/labels":
            factory = urllib.parse.parse_qs(parts.query).get("factory", [None])[0]
            with fake.lock:
                labels = [v for v in fake.labels.values() if factory in (None, v.get("factory"))]
            return self._reply(200, json.dumps(labels).encode())
        if method == "PUT" and path == "/api/labels":
            with fake.lock:
                for item in json.loads(body):
                    fake.labels[item["name"]] = item
            return self._reply(201)
        if method == "PUT" and path == "/api/jobs":
            return self._reply(201)
        if method == "POST" and path.startswith("/api/labels/"):
            return self._reply(200)
        return self._reply(404, b"not found", "text/plain")
