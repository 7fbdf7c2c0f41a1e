"""VMs on an OpenStack cloud (Nova), through openstacksdk (``batchsubmitplugin = OpenStack``).

``batchstatusplugin = OpenStack`` lists them.

* Credentials: a ``clouds.yaml`` cloud (``cloud``, optionally ``clouds_file``; openstacksdk's own
  search path otherwise), or a ``CloudKey`` auth profile holding an application credential
  (``access_key_id`` = credential id, ``secret_access_key`` = its secret, ``endpoint_url`` = the
  Keystone URL, ``region``).
* Submit: ONE ``POST /servers`` per cycle with ``min_count=1, max_count=n`` (Nova creates as many
  as the quota allows: partial fulfilment), named ``apf-<factory>-<queue>-<intent>`` and carrying
  the ``apf:*`` tags as metadata; then one listing by that name finds the servers created.
* Status: one paginated ``GET /servers/detail`` per (cloud, region, credentials) per poll, narrowed
  to names starting ``apf-<factory>-`` and checked against the ``apf:factory`` metadata.
* Errors: quota (HTTP 403 "Quota exceeded", 413 over limit) and "No valid host was found" (every
  server created went to ERROR) raise ``BackendError(capacity=True)``; other 5xx a plain
  ``BackendError``; authentication errors name the cloud or profile, never a password. Servers
  in ERROR are deleted by ``cleanup`` and counted failed.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from autopyfactory.model import PilotTags
from autopyfactory.plugins.base import BackendError, FactoryContext, PluginError, PluginOptions
from autopyfactory.plugins.cloud import lifecycle as lc
from autopyfactory.plugins.cloud.base import (
    CloudStatus,
    CloudStatusOptions,
    CloudSubmit,
    CloudSubmitOptions,
    redact,
)
from autopyfactory.plugins.cloud.lifecycle import Instance, VmState
from autopyfactory.plugins.keys import OPENSTACK, NeedsModules, auth_field

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

STATES: Mapping[str, VmState] = {
    "BUILD": VmState.PENDING,
    "REBUILD": VmState.PENDING,
    "ACTIVE": VmState.RUNNING,
    "REBOOT": VmState.RUNNING,
    "HARD_REBOOT": VmState.RUNNING,
    "RESIZE": VmState.RUNNING,
    "VERIFY_RESIZE": VmState.RUNNING,
    "REVERT_RESIZE": VmState.RUNNING,
    "MIGRATING": VmState.RUNNING,
    "PASSWORD": VmState.RUNNING,
    "SHUTOFF": VmState.STOPPED,
    "SUSPENDED": VmState.STOPPED,
    "PAUSED": VmState.STOPPED,
    "SHELVED": VmState.STOPPED,
    "SHELVED_OFFLOADED": VmState.STOPPED,
    "RESCUE": VmState.STOPPED,
    "ERROR": VmState.ERROR,
    "DELETED": VmState.TERMINATED,
    "SOFT_DELETED": VmState.TERMINATED,
}
NO_VALID_HOST = "No valid host was found"
NOVA_USER_DATA_LIMIT = 49149  # 65535 bytes once base64-encoded


class OpenStackOptions(CloudSubmitOptions):
    dynamic: ClassVar[Mapping[str, str]] = {"var.": "variables", "meta.": "extra_metadata"}

    cloud: str | None = Field(None, description="the cloud's name in clouds.yaml")
    clouds_file: str | None = Field(None, description="clouds.yaml path; default: openstacksdk's search path")
    authprofile: str | None = auth_field(
        None, "CloudKey", description="CloudKey profile holding an application credential"
    )
    region: str | None = Field(
        None, description="region of the cloud; default: clouds.yaml's or the profile's"
    )
    flavor: str = Field(..., description="flavor name or id")
    image: str = Field(..., description="image name or id")
    network: str | None = Field(None, description="comma list of network ids")
    key_name: str | None = Field(None, description="key pair for SSH into the VMs")
    security_groups: str | None = Field(None, description="comma list of security group names")
    extra_metadata: dict[str, str] = Field(default_factory=dict, description="meta.<key> = value on every VM")
    timeout: float = Field(60.0, gt=0, description="seconds one API call may take")


class OpenStackStatusOptions(CloudStatusOptions):
    page_size: int = Field(1000, ge=1, le=1000, description="servers per page of GET /servers/detail")


@dataclass(frozen=True, slots=True)
class OpenStackEndpoint:
    cloud: str | None
    clouds_file: str | None
    authprofile: str | None
    region: str | None
    timeout: float = 60.0
    page_size: int = 1000

    @property
    def label(self) -> str:
        who = self.cloud or self.authprofile or "?"
        return f"openstack:{who}" + (f"/{self.region}" if self.region else "")

    def __str__(self) -> str:  # how the engine names the poller
        return self.label


def endpoint_of(queue: QueueConfig, factory: FactoryContext) -> OpenStackEndpoint:
    sub = queue.plugin_options("batchsubmit")
    sub = sub if isinstance(sub, OpenStackOptions) else None
    st = queue.plugin_options("batchstatus")
    st = st if isinstance(st, OpenStackStatusOptions) else OpenStackStatusOptions()
    return OpenStackEndpoint(
        cloud=sub.cloud if sub else None,
        clouds_file=sub.clouds_file if sub else None,
        authprofile=sub.authprofile if sub else None,
        region=sub.region if sub else None,
        timeout=sub.timeout if sub else 60.0,
        page_size=st.page_size,
    )


def slug(text: str) -> str:
    """A server-name-safe form (letters, digits, dashes)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "x"


def server_name(tags: PilotTags) -> str:
    return f"apf-{slug(tags.factory_id)}-{slug(tags.queue)}-{tags.intent_id}"


def _epoch(text: Any) -> float | None:
    if not text:
        return None
    try:
        value = str(text).replace("Z", "+00:00")
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:  # Nova's launched_at has no zone: it is UTC
            from datetime import UTC

            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except ValueError:
        return None


def to_instance(server: Mapping[str, Any]) -> Instance:
    """A server (openstacksdk's ``Server.to_dict()`` or Nova's JSON) as an Instance (pure)."""
    status = str(server.get("status") or "").upper()
    fault = server.get("fault") or {}
    launched = server.get("launched_at") or server.get("OS-SRV-USG:launched_at")
    return Instance(
        id=str(server.get("id")),
        state=STATES.get(status, VmState.UNKNOWN),
        tags={str(k): str(v) for k, v in (server.get("metadata") or {}).items()},
        launched_at=_epoch(launched) or _epoch(server.get("created_at") or server.get("created")),
        reason=str(fault.get("message") or "") if isinstance(fault, Mapping) else "",
    )


class OpenStackApi:
    """An openstacksdk connection for one cloud; every failure becomes a ``BackendError``."""

    def __init__(self, ep: OpenStackEndpoint, factory: FactoryContext) -> None:
        self.ep = ep
        self.label = ep.label
        self.who = (
            f"auth profile {ep.authprofile!r}" if ep.authprofile else f"cloud {ep.cloud!r} of clouds.yaml"
        )
        self._factory = factory
        self._secrets: list[str] = []
        self._lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._conn: Any = None

    def _connect(self) -> Any:
        import openstack
        from openstack.config import OpenStackConfig

        ep = self.ep
        if ep.authprofile:
            from autopyfactory.plugins.auth.cloudkey import CloudKey

            try:
                profile = self._factory.auth(ep.authprofile)
            except PluginError as exc:
                raise BackendError(self.label, str(exc)) from None
            if profile.plugin != "CloudKey":
                raise BackendError(
                    self.label,
                    f"auth profile {ep.authprofile!r} is a {profile.plugin} profile; CloudKey needed",
                )
            try:
                cred_id, secret = CloudKey.credentials(profile.options)
            except (OSError, ValueError) as exc:
                raise BackendError(self.label, f"auth profile {ep.authprofile!r}: {exc}") from None
            if not profile.options.endpoint_url:
                raise BackendError(
                    self.label, f"auth profile {ep.authprofile!r} has no endpoint_url (the Keystone URL)"
                )
            self._secrets = [secret]
            return openstack.connection.Connection(
                auth_type="v3applicationcredential",
                auth={
                    "auth_url": profile.options.endpoint_url,
                    "application_credential_id": cred_id,
                    "application_credential_secret": secret,
                },
                region_name=ep.region or profile.options.region,
                api_timeout=ep.timeout,
            )
        if not ep.cloud:
            raise BackendError(
                self.label, "set batchsubmit.openstack.cloud (a clouds.yaml cloud) or .authprofile"
            )
        try:
            config = OpenStackConfig(config_files=[ep.clouds_file] if ep.clouds_file else None)
            region = config.get_one(cloud=ep.cloud, region_name=ep.region, api_timeout=ep.timeout)
        except Exception as exc:  # openstack.exceptions.ConfigException and friends
            raise BackendError(self.label, f"clouds.yaml: {exc}") from None
        auth = region.config.get("auth") or {}
        self._secrets = [
            str(v)
            for k, v in auth.items()
            if k in ("password", "application_credential_secret", "token") and v
        ]
        return openstack.connection.Connection(config=region)

    def conn(self) -> Any:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            return self._conn

    def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        from keystoneauth1 import exceptions as ksa
        from openstack import exceptions as osx

        conn = self.conn()
        try:
            with self._call_lock:  # one connection per endpoint, shared by threads: one call at a time
                return fn(conn)
        except BackendError:
            raise
        except osx.HttpException as exc:
            raise self.http_error(what, exc.status_code, str(exc.details or exc.message or exc)) from None
        except ksa.http.HttpError as exc:
            raise self.http_error(what, exc.http_status, str(exc.message or exc)) from None
        except ksa.ClientException as exc:  # connection refused, discovery, catalog
            raise BackendError(
                self.label, redact(f"{what}: {type(exc).__name__}: {exc}", self._secrets)
            ) from None
        except osx.SDKException as exc:
            raise BackendError(self.label, redact(f"{what}: {exc}", self._secrets)) from None

    def http_error(self, what: str, status: int | None, text: str) -> BackendError:
        text = redact(text, self._secrets)
        if status in (403, 413) and ("quota" in text.lower() or status == 413):
            return BackendError(self.label, f"{what}: quota exceeded (HTTP {status}): {text}", capacity=True)
        if status in (401, 403):
            return BackendError(self.label, f"{what}: the cloud refused {self.who} (HTTP {status}): {text}")
        if status is not None and status >= 500:
            return BackendError(self.label, f"{what}: server error (HTTP {status}): {text}")
        return BackendError(self.label, f"{what}: HTTP {status}: {text}")

    # -- CloudApi ------------------------------------------------------------------------------
    def servers(self, name_pattern: str) -> list[Instance]:
        return self.call(
            "list servers",
            lambda c: [
                to_instance(s.to_dict())
                for s in c.compute.servers(details=True, name=name_pattern, limit=self.ep.page_size)
            ],
        )

    def instances(self, factory_id: str, queue: str | None = None) -> list[Instance]:
        found = self.servers(f"^apf-{re.escape(slug(factory_id))}-")
        return [
            i
            for i in found
            if i.tags.get(lc.TAG_FACTORY) == factory_id
            and (queue is None or i.tags.get(lc.TAG_QUEUE) == queue)
        ]

    def _each(self, what: str, ids: Sequence[str], fn: Callable[[Any, str], Any]) -> None:
        from openstack import exceptions as osx

        def run(c: Any) -> None:
            for sid in ids:
                try:
                    fn(c, sid)
                except osx.NotFoundException:
                    pass  # gone already

        self.call(what, run)

    def mark_retiring(self, ids: Sequence[str], since: float) -> None:
        meta = {lc.TAG_RETIRE: str(int(since))}
        self._each("set server metadata", ids, lambda c, sid: c.compute.set_server_metadata(sid, **meta))

    def terminate(self, ids: Sequence[str], reason: str) -> None:
        meta = {lc.TAG_END: str(reason)}
        self._each("set server metadata", ids, lambda c, sid: c.compute.set_server_metadata(sid, **meta))
        self._each("delete server", ids, lambda c, sid: c.compute.delete_server(sid, ignore_missing=True))

    def resolve(self, flavor: str, image: str) -> tuple[str, str]:
        from openstack import exceptions as osx

        def run(c: Any) -> tuple[str, str]:
            try:
                f = c.compute.find_flavor(flavor, ignore_missing=False)
            except osx.NotFoundException:
                raise BackendError(self.label, f"flavor {flavor!r} not found") from None
            try:
                i = c.image.find_image(image, ignore_missing=False)
            except osx.NotFoundException:
                raise BackendError(self.label, f"image {image!r} not found") from None
            return str(f.id), str(i.id)

        return self.call("find flavor and image", run)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class OpenStackStatus(NeedsModules, CloudStatus):
    name = "OpenStack"
    requires = (OPENSTACK,)
    Options = OpenStackStatusOptions

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        return endpoint_of(queue, factory)

    def connect(self) -> OpenStackApi:
        assert isinstance(self.endpoint_key, OpenStackEndpoint)
        return OpenStackApi(self.endpoint_key, self.factory)


class OpenStackSubmit(NeedsModules, CloudSubmit):
    name = "OpenStack"
    requires = (OPENSTACK,)
    Options: ClassVar[type[PluginOptions]] = OpenStackOptions
    cloud = "openstack"
    status_plugin = OpenStackStatus
    max_user_data = NOVA_USER_DATA_LIMIT

    options: OpenStackOptions

    def __init__(self, queue: QueueConfig, options: PluginOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        self._ids: tuple[str, str] | None = None  # (flavor id, image id), resolved once

    def connect(self) -> OpenStackApi:
        return OpenStackApi(endpoint_of(self.queue, self.factory), self.factory)

    def launch(self, n: int, tags: PilotTags, user_data: str) -> list[Instance]:
        api = self.api
        assert isinstance(api, OpenStackApi)
        o = self.options
        if self._ids is None:
            self._ids = api.resolve(o.flavor, o.image)
        flavor_id, image_id = self._ids
        name = server_name(tags)
        attrs: dict[str, Any] = {
            "name": name,
            "flavor_id": flavor_id,
            "image_id": image_id,
            "metadata": {**o.extra_metadata, **lc.instance_tags(tags)},
            "user_data": base64.b64encode(user_data.encode()).decode(),
            "min_count": 1,
            "max_count": n,
        }
        networks = [x.strip() for x in (o.network or "").split(",") if x.strip()]
        if networks:
            attrs["networks"] = [{"uuid": net} for net in networks]
        groups = [x.strip() for x in (o.security_groups or "").split(",") if x.strip()]
        if groups:
            attrs["security_groups"] = [{"name": g} for g in groups]
        if o.key_name:
            attrs["key_name"] = o.key_name
        api.call("create servers", lambda c: c.compute.create_server(**attrs))
        created = [
            i
            for i in api.servers(f"^{re.escape(name)}(-[0-9]+)?$")
            if i.tags.get(lc.TAG_INTENT) == tags.intent_id and i.tags.get(lc.TAG_FACTORY) == tags.factory_id
        ]
        failed = [i for i in created if i.state is VmState.ERROR]
        if created and len(failed) == len(created):
            # Nova accepted the request but could not place any server: a capacity refusal
            api.terminate([i.id for i in failed], lc.EndReason.ERROR)
            reason = failed[0].reason or "servers went to ERROR"
            raise BackendError(api.label, f"create servers: {reason}", capacity=NO_VALID_HOST in reason)
        return created
