"""An HTTP proxy in front of an EC2 endpoint (moto) that answers chosen actions with EC2's real error
XML. A test component (scripts/components/moto.sh starts it), not part of the factory.

usage: python ec2_fault_proxy.py LISTEN_PORT UPSTREAM_URL

Control (JSON over HTTP, not EC2):
  POST   /_fault  {"action": "RunInstances", "code": "InsufficientInstanceCapacity", "status": 500,
                   "times": 1, "message": "..."}     times -1 = until cleared
  GET    /_fault  the armed faults, how many requests each answered ("hits"), requests by action
  DELETE /_fault  clear every fault and the counts
Everything else is forwarded unchanged. Real EC2 sends InsufficientInstanceCapacity as HTTP 500
(botocore retries it unless told not to) and limit errors as HTTP 400, in this envelope.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>"
)
MESSAGES = {
    "InsufficientInstanceCapacity": "We currently do not have sufficient capacity in the Availability Zone "
    "you requested. Our system will be working on provisioning additional capacity.",
    "InstanceLimitExceeded": "You have requested more instances than your current instance limit allows.",
    "VcpuLimitExceeded": "You have requested more vCPU capacity than your current vCPU limit allows.",
}


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.armed: dict[str, dict[str, Any]] = {}
        self.hits: dict[str, int] = {}
        self.requests: dict[str, int] = {}  # every request by action, faulted or forwarded

    def take(self, action: str) -> dict[str, Any] | None:
        with self.lock:
            self.requests[action] = self.requests.get(action, 0) + 1
            fault = self.armed.get(action)
            if fault is None or fault.get("times", -1) == 0:
                return None
            if fault.get("times", -1) > 0:
                fault["times"] -= 1
            self.hits[action] = self.hits.get(action, 0) + 1
            return dict(fault)


def make_handler(upstream: str, faults: Faults) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def control(self, body: bytes) -> None:
            with faults.lock:
                if self.command == "POST":
                    fault = json.loads(body or b"{}")
                    faults.armed[fault.pop("action")] = fault
                elif self.command == "DELETE":
                    faults.armed.clear()
                    faults.hits.clear()
                    faults.requests.clear()
                state = {"armed": faults.armed, "hits": faults.hits, "requests": faults.requests}
            self.send(200, json.dumps(state).encode(), "application/json")

        def handle_any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/_fault"):
                return self.control(body)
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if self.command == "POST" else {}
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            action = (form.get("Action") or query.get("Action") or [""])[0]
            fault = faults.take(action)
            if fault is not None:
                code = fault["code"]
                message = fault.get("message") or MESSAGES.get(code, f"Injected {code} for {action}")
                xml = ERROR_XML.format(code=code, message=message, rid=uuid.uuid4())
                return self.send(int(fault.get("status", 500)), xml.encode(), "text/xml;charset=UTF-8")
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("host", "content-length", "connection")
            }
            request = urllib.request.Request(
                upstream + self.path, data=body or None, headers=headers, method=self.command
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as reply:
                    status, data, ctype = reply.status, reply.read(), reply.headers.get("Content-Type", "")
            except urllib.error.HTTPError as exc:
                status, data, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
            self.send(status, data, ctype or "text/xml")

        do_GET = do_POST = do_PUT = do_DELETE = handle_any

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str]) -> None:
    port, upstream = int(argv[0]), argv[1].rstrip("/")
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(upstream, Faults()))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
