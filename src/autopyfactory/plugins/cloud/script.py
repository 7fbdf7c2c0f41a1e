"""VMs, bare-metal nodes or anything else, made and ended by the site's commands (``batchsubmitplugin = Script``).

``batchstatusplugin = Script`` lists them with the site's status command.

The four commands come from config (``create``, ``status``, ``retire``, ``terminate``; argv with
shell quoting, no shell) and run through the local or SSH transport (``host``/``user``/
``authprofile``), so the same scripts work on the factory's machine or a remote head node. They
get the same tags, adoption, life cycle and error classes as the built-in clouds.

The JSON contract (version 1; docs/cloud.md has examples). Each command reads ONE JSON object on
stdin and, on success, exits 0 and prints one JSON object on stdout:

* every request: ``{"version": 1, "action": ..., "factory_id": ...}``
* ``create``: ``count``, ``min_count`` (1), ``queue``, ``intent_id``, ``tags`` (store them with each
  instance and report them in ``status``), ``user_data`` (text), ``client_token`` (same token = same
  request; honour it if you can) -> ``{"instances": [INSTANCE, ...]}`` (what was created: fewer than
  ``count`` is fine, at least ``min_count``)
* ``status``: ``tags`` (``{"apf:factory": ...}``) -> ``{"instances": [INSTANCE, ...]}``: every instance
  carrying those tags, in any state
* ``retire``: ``ids``, ``tags`` (``{"apf:retire": "<epoch>"}``: merge into those instances' tags) -> ``{}``
* ``terminate``: ``ids``, ``reason``, ``tags`` (``{"apf:end": reason}``) -> ``{}``; ids already gone are
  not an error
* INSTANCE: ``{"id": str, "state": "pending|running|stopping|stopped|terminating|terminated|error|
  unknown", "tags": {str: str}, "launched_at": epoch seconds (optional), "reason": str (optional)}``
* failure: a non-zero exit; stdout may hold ``{"error": "message", "capacity": true}`` (capacity or
  quota: a cascade spills over) or ``{"error": "message"}``; otherwise stderr is shown.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from autopyfactory.model import PilotTags
from autopyfactory.plugins.base import BackendError, FactoryContext, PluginError, PluginOptions
from autopyfactory.plugins.cloud import lifecycle as lc
from autopyfactory.plugins.cloud.base import CloudStatus, CloudStatusOptions, CloudSubmit, CloudSubmitOptions
from autopyfactory.plugins.cloud.lifecycle import Instance, VmState
from autopyfactory.plugins.transport.base import RemoteOptions, Transport
from autopyfactory.plugins.transport.pool import POOL, transport_for

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

CONTRACT_VERSION = 1
STATE_WORDS: Mapping[str, VmState] = {
    **{s.value: s for s in VmState},
    "shutting-down": VmState.TERMINATING,  # EC2's word
    "build": VmState.PENDING,  # OpenStack's
    "active": VmState.RUNNING,
    "shutoff": VmState.STOPPED,
    "deleted": VmState.TERMINATED,
}


def _argv(value: str | None) -> str | None:
    if value is not None and not shlex.split(value):
        raise ValueError("empty command")
    return value


class ScriptOptions(RemoteOptions, CloudSubmitOptions):
    create: str = Field(..., description="command that creates instances (JSON on stdin and stdout)")
    status: str = Field(..., description="command that lists this factory's instances")
    retire: str = Field(..., description="command that records apf:retire on instances (and may drain them)")
    terminate: str = Field(..., description="command that destroys instances")

    _check = field_validator("create", "status", "retire", "terminate")(_argv)


class ScriptStatusOptions(CloudStatusOptions):
    pass


@dataclass(frozen=True, slots=True)
class ScriptEndpoint:
    """Where and with which commands (hashable: queues sharing them share one status call)."""

    host: str | None
    user: str | None
    port: int
    authprofile: str | None
    status: str
    retire: str
    terminate: str
    timeout: float = 60.0

    @property
    def label(self) -> str:
        where = "local" if not self.host else f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"
        return f"script:{shlex.split(self.status)[0]}@{where}"

    def __str__(self) -> str:  # how the engine names the poller
        return self.label


def endpoint_of(queue: QueueConfig, factory: FactoryContext) -> ScriptEndpoint:
    sub = queue.plugin_options("batchsubmit")
    if not isinstance(sub, ScriptOptions):
        raise PluginError(
            f"[{queue.name}] batchstatusplugin = Script needs batchsubmitplugin = Script (its commands)"
        )
    return ScriptEndpoint(
        sub.host or None,
        sub.user,
        sub.port,
        sub.authprofile,
        sub.status,
        sub.retire,
        sub.terminate,
        sub.timeout,
    )


def parse_instance(item: Any, where: str) -> Instance:
    """One INSTANCE object of the contract (pure); a bad one is an error naming the command."""
    if not isinstance(item, Mapping) or not isinstance(item.get("id"), str) or not item["id"]:
        raise ValueError(f"{where}: an instance needs a non-empty string 'id': {str(item)[:200]}")
    state = STATE_WORDS.get(str(item.get("state", "unknown")).lower(), VmState.UNKNOWN)
    tags = item.get("tags") or {}
    if not isinstance(tags, Mapping):
        raise ValueError(f"{where}: 'tags' of {item['id']} must be an object")
    launched = item.get("launched_at")
    return Instance(
        id=item["id"],
        state=state,
        tags={str(k): str(v) for k, v in tags.items()},
        launched_at=float(launched) if isinstance(launched, int | float) else None,
        reason=str(item.get("reason") or ""),
        spot=bool(item.get("spot", False)),
    )


class ScriptApi:
    """Runs the commands with JSON in and out through a transport."""

    def __init__(self, ep: ScriptEndpoint, factory: FactoryContext) -> None:
        self.ep = ep
        self.label = ep.label
        self.factory_id = factory.factory_id
        self._transport: Transport = transport_for(
            factory,
            ep.host,
            user=ep.user,
            port=ep.port,
            authprofile=ep.authprofile,
            where="batchsubmit.script",
        )

    def run(self, name: str, command: str, request: dict[str, Any]) -> dict[str, Any]:
        argv = shlex.split(command)
        body = {"version": CONTRACT_VERSION, "action": name, "factory_id": self.factory_id, **request}
        res = self._transport.run(argv, input=json.dumps(body).encode(), timeout=self.ep.timeout)
        reply: Any = None
        try:
            reply = json.loads(res.stdout) if res.stdout.strip() else {}
        except ValueError:
            if res.ok:
                raise BackendError(
                    self.label, f"{name} command {argv[0]} printed no JSON: {res.stdout.strip()[:200]!r}"
                ) from None
        if not res.ok:
            error = reply.get("error") if isinstance(reply, Mapping) else None
            capacity = bool(reply.get("capacity")) if isinstance(reply, Mapping) else False
            text = str(error) if error else res.brief()
            raise BackendError(
                self.label, f"{name} command {argv[0]} failed (exit {res.rc}): {text}", capacity=capacity
            )
        if not isinstance(reply, Mapping):
            raise BackendError(
                self.label, f"{name} command {argv[0]} printed {type(reply).__name__}, not an object"
            )
        return dict(reply)

    def _instances(self, name: str, reply: Mapping[str, Any]) -> list[Instance]:
        items = reply.get("instances")
        if not isinstance(items, list):
            raise BackendError(self.label, f"{name} command printed no 'instances' list")
        try:
            return [parse_instance(item, f"{name} command") for item in items]
        except ValueError as exc:
            raise BackendError(self.label, str(exc)) from None

    def instances(self, factory_id: str, queue: str | None = None) -> list[Instance]:
        tags = {lc.TAG_FACTORY: factory_id, **({lc.TAG_QUEUE: queue} if queue else {})}
        found = self._instances("status", self.run("status", self.ep.status, {"tags": tags}))
        return [i for i in found if all(i.tags.get(k) == v for k, v in tags.items())]

    def mark_retiring(self, ids: Sequence[str], since: float) -> None:
        self.run("retire", self.ep.retire, {"ids": list(ids), "tags": {lc.TAG_RETIRE: str(int(since))}})

    def terminate(self, ids: Sequence[str], reason: str) -> None:
        self.run(
            "terminate",
            self.ep.terminate,
            {"ids": list(ids), "reason": str(reason), "tags": {lc.TAG_END: str(reason)}},
        )

    def create(self, command: str, n: int, tags: PilotTags, user_data: str) -> list[Instance]:
        request = {
            "count": n,
            "min_count": 1,
            "queue": tags.queue,
            "intent_id": tags.intent_id,
            "tags": lc.instance_tags(tags),
            "user_data": user_data,
            "client_token": lc.client_token(tags),
        }
        return self._instances("create", self.run("create", command, request))

    def close(self) -> None:
        POOL.release(self._transport)


class ScriptStatus(CloudStatus):
    name = "Script"
    Options = ScriptStatusOptions

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        return endpoint_of(queue, factory)

    def connect(self) -> ScriptApi:
        assert isinstance(self.endpoint_key, ScriptEndpoint)
        return ScriptApi(self.endpoint_key, self.factory)


class ScriptSubmit(CloudSubmit):
    name = "Script"
    Options: ClassVar[type[PluginOptions]] = ScriptOptions
    cloud = "script"
    status_plugin = ScriptStatus

    options: ScriptOptions

    def connect(self) -> ScriptApi:
        return ScriptApi(endpoint_of(self.queue, self.factory), self.factory)

    def launch(self, n: int, tags: PilotTags, user_data: str) -> list[Instance]:
        api = self.api
        assert isinstance(api, ScriptApi)
        return api.create(self.options.create, n, tags, user_data)
