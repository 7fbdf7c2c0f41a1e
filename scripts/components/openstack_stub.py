"""A small OpenStack API stand-in speaking the Keystone v3 and Nova v2.1 wire format (stdlib only).

No OpenStack can run here, so openstacksdk is tested against this. A test component
(scripts/components/openstack-stub.sh starts it), not part of the factory.

usage: python openstack_stub.py PORT [--boot-seconds S] [--max-instances N]

  GET  /v3, /compute/v2.1, /image          version discovery
  POST /v3/auth/tokens                     token (password or application_credential) + catalog
  POST /compute/v2.1/servers               create: min_count/max_count as Nova (as many as the quota
                                           allows, at least min_count, else 403 quota), 202
  GET  /compute/v2.1/servers[/detail]      list: filters name (regex), status, reservation_id;
                                           paging limit/marker with servers_links
  GET/DELETE /compute/v2.1/servers/ID      show / delete (204)
  POST/PUT /compute/v2.1/servers/ID/metadata   merge / replace metadata
  GET  /compute/v2.1/flavors[/detail|/ID], /image/v2/images[/ID]

Control (not OpenStack):
  POST /_fault {"create": "quota"|"overlimit"|"500"|"novalidhost", "list": "500", "auth": "401", "times": N}
  DELETE /_fault;  POST /_reset [{"max_instances": N, "boot_seconds": S}];
  GET /_servers (every server, raw, with the "networks" its create asked for, and the requests
    served since the reset)
  POST /_servers/ID {"status": "ERROR"|"SHUTOFF"|..., "fault": "message"}  (the provider acts)
Servers go BUILD -> ACTIVE after --boot-seconds.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

FLAVORS = [
    {"id": "1", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20, "links": []},
    {"id": "2", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80, "links": []},
]
IMAGES = [
    {
        "id": "11111111-2222-3333-4444-555555555555",
        "name": "pilot-image",
        "status": "active",
        "visibility": "public",
    }
]
PROJECT = {"id": "p-0001", "name": "apf", "domain": {"id": "default", "name": "Default"}}
USER = {"id": "u-0001", "name": "apf", "domain": {"id": "default", "name": "Default"}}
PRIVATE = {"t", "networks"}  # kept by the stub, not in Nova's server records

VM_STATE = {
    "BUILD": "building",
    "ACTIVE": "active",
    "ERROR": "error",
    "SHUTOFF": "stopped",
    "DELETED": "deleted",
}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cloud:
    def __init__(self, base: str, boot: float, max_instances: int) -> None:
        self.base = base
        self.nova = f"{base}/compute/v2.1"
        self.boot = self.default_boot = boot
        self.max_instances = self.default_max = max_instances
        self.lock = threading.Lock()
        self.servers: dict[str, dict[str, Any]] = {}
        self.fault: dict[str, Any] = {}
        self.requests: list[str] = []

    def take_fault(self, op: str) -> str | None:
        kind = self.fault.get(op)
        if not kind or self.fault.get("times", -1) == 0:
            return None
        if self.fault.get("times", -1) > 0:
            self.fault["times"] -= 1
        return str(kind)

    def view(self, s: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        if s["status"] == "BUILD" and now - s["t"] >= self.boot:
            s["status"] = "ACTIVE"
            s["OS-SRV-USG:launched_at"] = iso(now).replace("Z", ".000000")
        d = {k: v for k, v in s.items() if k not in PRIVATE}
        d.update(
            created=iso(s["t"]),
            updated=iso(now),
            links=[{"rel": "self", "href": f"{self.nova}/servers/{s['id']}"}],
            **{"OS-EXT-STS:vm_state": VM_STATE.get(s["status"], s["status"].lower())},
        )
        return d


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cloud: Cloud

    def reply(self, code: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}") if n else {}

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def not_found(self, what: str) -> None:
        self.reply(404, {"itemNotFound": {"code": 404, "message": f"{what} could not be found."}})

    # -- GET -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        c = self.cloud
        u = urlsplit(self.path)
        p, q = u.path.rstrip("/"), parse_qs(u.query)
        with c.lock:
            c.requests.append(f"GET {p}")
            if "-v" in sys.argv:
                sys.stderr.write(f"GET {self.path}\n")
        if p in ("", "/v3"):
            v3 = {
                "id": "v3.14",
                "status": "stable",
                "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": f"{c.base}/v3/"}],
                "media-types": [
                    {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
                ],
            }
            return self.reply(200, {"version": v3} if p == "/v3" else {"versions": {"values": [v3]}})
        if p in ("/compute", "/compute/v2.1"):
            v = {
                "id": "v2.1",
                "status": "CURRENT",
                "version": "2.1",
                "min_version": "2.1",
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{c.nova}/"}],
            }
            return self.reply(200, {"version": v} if p.endswith("2.1") else {"versions": [v]})
        if p == "/image":
            v = {"id": "v2.9", "status": "CURRENT", "links": [{"rel": "self", "href": f"{c.base}/image/v2/"}]}
            return self.reply(200, {"versions": [v]})
        if p == "/_servers":
            with c.lock:
                return self.reply(
                    200,
                    {
                        "servers": [{**c.view(s), "networks": s.get("networks")} for s in c.servers.values()],
                        "requests": c.requests,
                    },
                )
        if p in ("/compute/v2.1/flavors", "/compute/v2.1/flavors/detail"):
            return self.reply(200, {"flavors": FLAVORS})
        m = re.fullmatch(r"/compute/v2.1/flavors/([^/]+)", p)
        if m:
            flavor = next((f for f in FLAVORS if m.group(1) in (f["id"], f["name"])), None)
            return self.reply(200, {"flavor": flavor}) if flavor else self.not_found(f"Flavor {m.group(1)}")
        if p == "/image/v2/images":
            images = [i for i in IMAGES if "name" not in q or i["name"] == q["name"][0]]
            return self.reply(200, {"images": images})
        m = re.fullmatch(r"/image/v2/images/([^/]+)", p)
        if m:
            image = next((i for i in IMAGES if i["id"] == m.group(1)), None)
            return self.reply(200, image) if image else self.not_found(f"Image {m.group(1)}")
        if p in ("/compute/v2.1/servers", "/compute/v2.1/servers/detail"):
            return self.list_servers(q)
        m = re.fullmatch(r"/compute/v2.1/servers/([^/]+)", p)
        if m:
            with c.lock:
                s = c.servers.get(m.group(1))
                if s:
                    return self.reply(200, {"server": c.view(s)})
            return self.not_found(f"Instance {m.group(1)}")
        self.reply(404, {"error": {"code": 404, "message": f"stub: no GET {p}"}})

    def list_servers(self, q: dict[str, list[str]]) -> None:
        c = self.cloud
        with c.lock:
            if c.take_fault("list") == "500":
                return self.reply(500, {"computeFault": {"code": 500, "message": "Unexpected API Error."}})
            servers = [c.view(s) for s in sorted(c.servers.values(), key=lambda s: (s["t"], s["id"]))]
        if "name" in q:
            servers = [s for s in servers if re.search(q["name"][0], s["name"])]
        if "status" in q:
            servers = [s for s in servers if s["status"] == q["status"][0].upper()]
        if "reservation_id" in q:
            servers = [s for s in servers if s["OS-EXT-SRV-ATTR:reservation_id"] == q["reservation_id"][0]]
        if "marker" in q:
            ids = [s["id"] for s in servers]
            marker = q["marker"][0]
            if marker not in ids:
                return self.reply(
                    400, {"badRequest": {"code": 400, "message": f"marker [{marker}] not found"}}
                )
            servers = servers[ids.index(marker) + 1 :]
        out: dict[str, Any] = {"servers": servers}
        if "limit" in q and len(servers) > int(q["limit"][0]):
            limit = int(q["limit"][0])
            out["servers"] = servers = servers[:limit]
            query = urlencode({**{k: v[0] for k, v in q.items()}, "marker": servers[-1]["id"]})
            out["servers_links"] = [{"rel": "next", "href": f"{c.nova}/servers/detail?{query}"}]
        self.reply(200, out)

    # -- POST/PUT ------------------------------------------------------------------------------
    def do_POST(self) -> None:
        c = self.cloud
        p = urlsplit(self.path).path.rstrip("/")
        b = self.body()
        with c.lock:
            c.requests.append(f"{self.command} {p}")
        if p.endswith("/auth/tokens"):
            with c.lock:
                refused = c.take_fault("auth") == "401"
            if refused:
                return self.reply(401, {"error": {"code": 401, "title": "Unauthorized",
                                                  "message": "The request you have made requires authentication."}})  # fmt: skip
            return self.token(b)
        if p == "/_fault":
            with c.lock:
                c.fault.clear()
                c.fault.update(b)
            return self.reply(200, c.fault)
        if p == "/_reset":
            with c.lock:
                c.servers.clear()
                c.fault.clear()
                c.requests.clear()
                c.max_instances = int(b.get("max_instances", c.default_max))
                c.boot = float(b.get("boot_seconds", c.default_boot))
            return self.reply(200, {})
        m = re.fullmatch(r"/_servers/([^/]+)", p)
        if m:
            with c.lock:
                s = c.servers.get(m.group(1))
                if s is None:
                    return self.not_found(f"Instance {m.group(1)}")
                s["status"] = b.get("status", s["status"])
                if b.get("fault"):
                    s["fault"] = {"code": 500, "created": iso(time.time()), "message": b["fault"]}
                return self.reply(200, {"server": c.view(s)})
        if p == "/compute/v2.1/servers":
            return self.create(b.get("server", {}))
        m = re.fullmatch(r"/compute/v2.1/servers/([^/]+)/metadata", p)
        if m:
            with c.lock:
                s = c.servers.get(m.group(1))
                if s is None:
                    return self.not_found(f"Instance {m.group(1)}")
                if self.command == "PUT":
                    s["metadata"] = {}
                s["metadata"].update({str(k): str(v) for k, v in b.get("metadata", {}).items()})
                return self.reply(200, {"metadata": s["metadata"]})
        self.reply(404, {"error": {"code": 404, "message": f"stub: no {self.command} {p}"}})

    do_PUT = do_POST

    def token(self, b: dict[str, Any]) -> None:
        c = self.cloud
        now = time.time()
        methods = b.get("auth", {}).get("identity", {}).get("methods", ["password"])
        catalog = [
            {"type": "compute", "name": "nova", "id": "svc-nova", "endpoints": [
                {"id": "ep-nova", "interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": c.nova}]},
            {"type": "image", "name": "glance", "id": "svc-glance", "endpoints": [
                {"id": "ep-glance", "interface": "public", "region": "RegionOne", "region_id": "RegionOne",
                 "url": f"{c.base}/image"}]},
        ]  # fmt: skip
        tok = {
            "methods": methods,
            "user": USER,
            "project": PROJECT,
            "issued_at": iso(now),
            "expires_at": iso(now + 3600),
            "roles": [{"id": "r-member", "name": "member"}],
            "catalog": catalog,
        }
        self.reply(201, {"token": tok}, {"X-Subject-Token": uuid.uuid4().hex})

    def create(self, req: dict[str, Any]) -> None:
        c = self.cloud
        min_count = int(req.get("min_count", 1))
        max_count = max(min_count, int(req.get("max_count", min_count)))
        with c.lock:
            kind = c.take_fault("create")
            live = sum(1 for s in c.servers.values() if s["status"] != "DELETED")
            room = c.max_instances - live
            if kind == "quota" or room < min_count:
                msg = (
                    f"Quota exceeded for instances: Requested {min_count}, but already used {live} of "
                    f"{c.max_instances if kind != 'quota' else live} instances"
                )
                return self.reply(403, {"forbidden": {"code": 403, "message": msg}})
            if kind == "overlimit":
                return self.reply(413, {"overLimit": {"code": 413, "message": "Quota exceeded for cores.",
                                                      "retryAfter": "0"}})  # fmt: skip
            if kind == "500":
                return self.reply(500, {"computeFault": {"code": 500, "message": "Unexpected API Error."}})
            count = min(max_count, room)
            reservation = f"r-{uuid.uuid4().hex[:8]}"
            first = None
            for k in range(count):
                sid = str(uuid.uuid4())
                name = req.get("name", "")
                if count > 1:
                    name = f"{name}-{k + 1}"  # Nova's multi_instance_display_name_template
                server = {
                    "id": sid,
                    "name": name,
                    "status": "BUILD",
                    "t": time.time(),
                    "tenant_id": PROJECT["id"],
                    "user_id": USER["id"],
                    "metadata": {str(a): str(b) for a, b in (req.get("metadata") or {}).items()},
                    "image": {"id": req.get("imageRef", "")},
                    "flavor": {"id": req.get("flavorRef", "")},
                    "addresses": {},
                    "key_name": req.get("key_name"),
                    "networks": req.get("networks"),  # as requested (Nova shows addresses instead)
                    "OS-EXT-SRV-ATTR:reservation_id": reservation,
                    "OS-EXT-SRV-ATTR:user_data": req.get("user_data"),
                    "OS-SRV-USG:launched_at": None,
                    "security_groups": req.get("security_groups") or [{"name": "default"}],
                }
                if kind == "novalidhost":  # Nova accepts the request; scheduling fails afterwards
                    server["status"] = "ERROR"
                    server["fault"] = {
                        "code": 500,
                        "created": iso(time.time()),
                        "message": "No valid host was found. There are not enough hosts available.",
                    }
                c.servers[sid] = server
                first = first or sid
        body = {
            "id": first,
            "links": [{"rel": "self", "href": f"{c.nova}/servers/{first}"}],
            "adminPass": "stub",
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}],
        }
        if req.get("return_reservation_id"):
            return self.reply(202, {"reservation_id": reservation})
        self.reply(202, {"server": body})

    # -- DELETE --------------------------------------------------------------------------------
    def do_DELETE(self) -> None:
        c = self.cloud
        p = urlsplit(self.path).path.rstrip("/")
        with c.lock:
            c.requests.append(f"DELETE {p}")
        if p == "/_fault":
            with c.lock:
                c.fault.clear()
            return self.reply(200, {})
        m = re.fullmatch(r"/compute/v2.1/servers/([^/]+)", p)
        if m:
            with c.lock:
                if c.servers.pop(m.group(1), None):
                    return self.reply(204)
            return self.not_found(f"Instance {m.group(1)}")
        self.reply(404, {"error": {"code": 404, "message": f"stub: no DELETE {p}"}})


def main(argv: list[str]) -> None:
    port = int(argv[0])
    boot = float(argv[argv.index("--boot-seconds") + 1]) if "--boot-seconds" in argv else 0.0
    max_instances = int(argv[argv.index("--max-instances") + 1]) if "--max-instances" in argv else 1000
    Handler.cloud = Cloud(f"http://127.0.0.1:{port}", boot, max_instances)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
