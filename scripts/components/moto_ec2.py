"""moto's EC2 server behaving more like EC2: launches MaxCount, boots slowly, runs out of capacity,
interrupts instances. A test component (scripts/components/moto.sh starts it), not part of the factory.

usage: python moto_ec2.py -H 127.0.0.1 -p PORT

What it changes in moto 5 (in this process only):
* RunInstances launches MaxCount instances, as EC2 does (moto launches MinCount), but no more than
  the ``instance_limit`` allows (live instances per region): fewer than MaxCount is partial
  fulfilment, fewer than MinCount answers InsufficientInstanceCapacity (HTTP 500, EC2's XML).
* Instances stay ``pending`` for ``boot_seconds`` before ``running`` (moto starts them running).

Control (JSON over HTTP, not EC2):
  GET/POST /_apf/control  {"boot_seconds": 3, "instance_limit": 10}  (POST merges; null removes)
  POST /_apf/interrupt    {"ids": ["i-..."], "code": "Server.SpotInstanceTermination", "action": "terminate"|"stop"}
                          the provider stops/terminates the instances with that state reason
  GET /_apf/launches      the query parameters of every RunInstances since the last reset, as
                          sent (e.g. {"Action": "RunInstances", "MinCount": "1", "ClientToken": ...})
POST /moto-api/reset also resets the control settings.
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import time
import urllib.parse
import uuid
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models import instances as mi
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

DEFAULTS: dict[str, Any] = {"boot_seconds": 0.0, "instance_limit": None}
control: dict[str, Any] = dict(DEFAULTS)
lock = threading.Lock()
launch = threading.local()
launches: list[dict[str, str]] = []  # RunInstances parameters as sent (tests assert what the factory asked)

ICE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>InsufficientInstanceCapacity</Code>'
    "<Message>We currently do not have sufficient capacity in the Availability Zone you requested.</Message>"
    "</Error></Errors><RequestID>{rid}</RequestID></Response>"
)


class BootingState(mi.InstanceState):
    """``pending`` until the boot time, then ``running``; start/stop/terminate assign freely."""

    def __init__(self, boot_at: float) -> None:  # no super(): name and code are properties here
        self._boot_at, self._name, self._code = boot_at, "pending", 0

    @property
    def name(self) -> str:  # type: ignore[override]
        if self._name == "pending" and time.time() >= self._boot_at:
            self._name, self._code = "running", 16
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def code(self) -> int:  # type: ignore[override]
        _ = self.name
        return self._code

    @code.setter
    def code(self, value: int) -> None:
        self._code = value


_instance_init = mi.Instance.__init__


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    _instance_init(self, *args, **kwargs)
    boot = float(control.get("boot_seconds") or 0)
    if boot > 0:
        self._state = BootingState(time.time() + boot)


mi.Instance.__init__ = _init  # type: ignore[method-assign]

_backend_run = mi.InstanceBackend.run_instances


def _backend_run_instances(self: Any, image_id: str, count: int, *args: Any, **kwargs: Any) -> Any:
    wanted = getattr(launch, "count", None)
    return _backend_run(self, image_id, wanted if wanted is not None else count, *args, **kwargs)


mi.InstanceBackend.run_instances = _backend_run_instances  # type: ignore[method-assign]


def _live(backend: Any) -> int:
    return sum(
        1
        for reservation in backend.reservations.values()
        for inst in reservation.instances
        if inst._state.name in ("pending", "running", "stopping", "stopped")
    )


_REGION = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/ec2/")


def launch_count(environ: dict[str, Any], form: dict[str, list[str]]) -> int | None:
    """How many instances this RunInstances gets: MaxCount within the limit; None = no capacity."""
    min_count = int((form.get("MinCount") or ["1"])[0])
    count = max(min_count, int((form.get("MaxCount") or [str(min_count)])[0]))
    limit = control.get("instance_limit")
    if limit is None:
        return count
    m = _REGION.search(environ.get("HTTP_AUTHORIZATION", ""))
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][m.group(1) if m else "us-east-1"]
    room = int(limit) - _live(backend)
    return None if room < min_count else min(count, room)


def interrupt(ids: list[str], code: str, action: str) -> list[str]:
    done = []
    for account in ec2_backends.values():
        for backend in account.values():
            for reservation in backend.reservations.values():
                for inst in reservation.instances:
                    if inst.id in ids:
                        inst.stop() if action == "stop" else inst.terminate()
                        inst.state_reason = mi.StateReason(f"{code}: {code}", code)
                        inst._reason = f"Service initiated ({time.strftime('%Y-%m-%d %H:%M:%S')} GMT)"
                        done.append(inst.id)
    return done


def app_with_control(app: Any) -> Any:
    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")

        def reply(status: str, body: Any, ctype: str = "application/json") -> list[bytes]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
            return [data]

        if path.startswith("/_apf/"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
            with lock:
                if path == "/_apf/control":
                    if environ["REQUEST_METHOD"] == "POST":
                        for key, value in body.items():
                            control[key] = DEFAULTS.get(key) if value is None else value
                    return reply("200 OK", control)
                if path == "/_apf/interrupt":
                    done = interrupt(list(body.get("ids", [])), body.get("code", "Server.SpotInstanceTermination"),
                                     body.get("action", "terminate"))  # fmt: skip
                    return reply("200 OK", {"interrupted": done})
                if path == "/_apf/launches":
                    return reply("200 OK", {"launches": launches})
            return reply("404 Not Found", {"error": path})
        if path.startswith("/moto-api/reset"):
            with lock:
                control.clear()
                control.update(DEFAULTS)
                launches.clear()
        launch.count = None
        if environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            if form.get("Action") == ["RunInstances"]:
                with lock:
                    launches.append({k: v[-1] for k, v in form.items() if k != "UserData"})
                    count = launch_count(environ, form)
                if count is None:
                    return reply(
                        "500 Internal Server Error", ICE.format(rid=uuid.uuid4()).encode(), "text/xml"
                    )
                launch.count = count
        try:
            return app(environ, start_response)
        finally:
            launch.count = None

    return wsgi


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, app_with_control(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
