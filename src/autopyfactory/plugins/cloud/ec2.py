"""VMs on Amazon EC2 or any EC2-compatible API, through boto3 (``batchsubmitplugin = EC2``).

``batchstatusplugin = EC2`` lists them; ``endpoint_url`` names another EC2-compatible API.

* Submit: ONE ``RunInstances`` per cycle with ``MinCount=1, MaxCount=n`` (what the cloud launched
  is what counts: partial fulfilment), a ``ClientToken`` derived from the intent id, the tags
  ``apf:factory``/``apf:queue``/``apf:intent`` on instances and volumes,
  ``InstanceInitiatedShutdownBehavior=terminate`` (the lease fuse in the user data then ends the
  instance, not just stops it), on-demand or spot (``market``, ``spot_max_price``).
  ``RunInstances`` is sent once, never retried by botocore: a retry after a lost answer could
  launch twice where the endpoint ignores ClientToken (moto does); adoption by tag covers a crash.
* Status: one paginated ``DescribeInstances`` per (endpoint, region, credentials) per poll,
  filtered by ``tag:apf:factory``; ``StateReason`` ``Server.*`` (spot interruption, capacity)
  marks a VM interrupted.
* Errors: InsufficientInstanceCapacity, InstanceLimitExceeded, VcpuLimitExceeded,
  MaxSpotInstanceCountExceeded, SpotMaxPriceTooLow, InsufficientFreeAddressesInSubnet (and the
  other capacity codes below) raise ``BackendError(capacity=True)`` so a cascade spills at once;
  authentication errors name the auth profile (or the AWS credential chain), never a key.

Credentials: a ``CloudKey`` auth profile (``authprofile``), else boto3's standard chain
(environment, shared config files, instance role).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

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
from autopyfactory.plugins.keys import BOTO3, NeedsModules, auth_field

if TYPE_CHECKING:
    from autopyfactory.config.models import QueueConfig

CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "InsufficientFreeAddressesInSubnet",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientAddressCapacity",
        "InsufficientCapacityOnHost",
        "ReservationCapacityExceeded",
        "MaxSpotFleetRequestCountExceeded",
        "VolumeLimitExceeded",
        "AddressLimitExceeded",
    }
)
AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "RequestExpired",
        "OptInRequired",
        "Blocked",
    }
)
STATES: Mapping[str, VmState] = {
    "pending": VmState.PENDING,
    "running": VmState.RUNNING,
    "stopping": VmState.STOPPING,
    "stopped": VmState.STOPPED,
    "shutting-down": VmState.TERMINATING,
    "terminated": VmState.TERMINATED,
}
_CHUNK = 1000  # ids per CreateTags/TerminateInstances call
EC2_USER_DATA_LIMIT = 16384


# ---------------------------------------------------------------------------------------------
# config


class EC2Options(CloudSubmitOptions):
    dynamic: ClassVar[Mapping[str, str]] = {"var.": "variables", "tag.": "extra_tags"}

    region: str | None = Field(None, description="default: the auth profile's region, else the AWS chain's")
    endpoint_url: str | None = Field(None, description="an EC2-compatible API; default: AWS's for the region")
    authprofile: str | None = auth_field(
        None, "CloudKey", description="CloudKey profile in auth.conf; default: the AWS chain"
    )
    ami: str = Field(..., description="the image (ami-...)")
    instance_type: str = Field(..., description="e.g. c5.xlarge")
    subnet: str | None = Field(None, description="subnet to launch in (subnet-...)")
    security_groups: str | None = Field(
        None, description="comma list of sg-... ids; names only without subnet (the default VPC)"
    )
    key_name: str | None = Field(None, description="EC2 key pair for SSH into the VMs")
    iam_instance_profile: str | None = Field(None, description="instance profile name or ARN")
    root_volume_size: int | None = Field(None, ge=1, description="GiB")
    root_device: str | None = Field(None, description="default: the image's root device name")
    extra_tags: dict[str, str] = Field(default_factory=dict, description="tag.<Key> = value on every VM")
    market: Literal["on-demand", "spot"] = Field("on-demand", description="on-demand or spot (one-time)")
    spot_max_price: float | None = Field(None, gt=0, description="USD per hour; default: the on-demand price")
    retries: int = Field(
        3, ge=1, le=10, description="attempts for idempotent calls; RunInstances is sent once"
    )
    timeout: float = Field(60.0, gt=0, description="connect and read timeout of one call, seconds")


class EC2StatusOptions(CloudStatusOptions):
    """Status keys; the endpoint comes from the queue's batchsubmit.ec2.* keys unless set here."""

    region: str | None = Field(None, description="default: batchsubmit.ec2.region")
    endpoint_url: str | None = Field(None, description="default: batchsubmit.ec2.endpoint_url")
    authprofile: str | None = auth_field(None, "CloudKey", description="default: batchsubmit.ec2.authprofile")
    page_size: int = Field(1000, ge=5, le=1000, description="DescribeInstances MaxResults per page")


@dataclass(frozen=True, slots=True)
class EC2Endpoint:
    """One EC2 endpoint as the factory reaches it (a poller key: queues here share one poll)."""

    region: str | None
    endpoint_url: str | None
    authprofile: str | None
    retries: int = 3
    timeout: float = 60.0
    page_size: int = 1000

    @property
    def label(self) -> str:
        where = f"@{self.endpoint_url}" if self.endpoint_url else ""
        return f"ec2:{self.region or '?'}{where}"

    def __str__(self) -> str:  # how the engine names the poller
        return self.label


def endpoint_of(queue: QueueConfig, factory: FactoryContext) -> EC2Endpoint:
    """The queue's endpoint: a ``batchstatus.ec2.*`` key the queue sets, else its
    ``batchsubmit.ec2.*`` key, else the CloudKey profile's region/endpoint, else the AWS chain's."""
    from autopyfactory.plugins.auth.cloudkey import CloudKeyOptions

    sub = queue.plugin_options("batchsubmit")
    sub = sub if isinstance(sub, EC2Options) else None
    st = queue.plugin_options("batchstatus")
    st = st if isinstance(st, EC2StatusOptions) else EC2StatusOptions()
    authprofile = st.authprofile or (sub.authprofile if sub else None)
    region = st.region or (sub.region if sub else None)
    url = st.endpoint_url or (sub.endpoint_url if sub else None)
    profile = factory.auth_profiles.get(authprofile) if authprofile else None
    if profile is not None and isinstance(profile.options, CloudKeyOptions):
        region = region or profile.options.region
        url = url or profile.options.endpoint_url
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return EC2Endpoint(
        region=region,
        endpoint_url=url,
        authprofile=authprofile,
        retries=sub.retries if sub else 3,
        timeout=sub.timeout if sub else 60.0,
        page_size=st.page_size,
    )


# ---------------------------------------------------------------------------------------------
# the API adapter


def to_instance(d: Mapping[str, Any]) -> Instance:
    """One DescribeInstances/RunInstances instance dict as an Instance (pure)."""
    launched = d.get("LaunchTime")
    return Instance(
        id=str(d["InstanceId"]),
        state=STATES.get(str((d.get("State") or {}).get("Name", "")), VmState.UNKNOWN),
        tags={str(t["Key"]): str(t["Value"]) for t in d.get("Tags") or []},
        launched_at=launched.timestamp() if isinstance(launched, datetime) else None,
        reason=str((d.get("StateReason") or {}).get("Code") or ""),
        spot=d.get("InstanceLifecycle") == "spot",
    )


_NOT_FOUND_IDS = re.compile(r"i-[0-9a-f]+")


class EC2Api:
    """boto3 clients for one endpoint; every failure becomes a ``BackendError`` without secrets."""

    def __init__(self, ep: EC2Endpoint, factory: FactoryContext) -> None:
        self.ep = ep
        self.label = ep.label
        self._secrets: list[str] = []
        self.who = (
            f"auth profile {ep.authprofile!r}" if ep.authprofile else "the standard AWS credential chain"
        )
        self._lock = threading.Lock()
        self._clients: tuple[Any, Any] | None = None
        self._factory = factory

    def _make_clients(self) -> tuple[Any, Any]:
        import boto3
        from botocore.config import Config

        ep = self.ep
        kwargs: dict[str, Any] = {}
        if ep.authprofile:
            from autopyfactory.plugins.auth.cloudkey import CloudKey

            try:
                profile = self._factory.auth(ep.authprofile)
            except PluginError as exc:
                raise BackendError(self.label, str(exc)) from None
            if profile.plugin != "CloudKey":
                raise BackendError(
                    self.label,
                    f"auth profile {ep.authprofile!r} is a {profile.plugin} profile; EC2 needs CloudKey",
                )
            try:
                key, secret = CloudKey.credentials(profile.options)
            except (OSError, ValueError) as exc:
                raise BackendError(self.label, f"auth profile {ep.authprofile!r}: {exc}") from None
            self._secrets = [key, secret]
            kwargs = {"aws_access_key_id": key, "aws_secret_access_key": secret}
        session = boto3.session.Session(region_name=ep.region, **kwargs)
        if not session.region_name:
            raise BackendError(
                self.label, "no region: set batchsubmit.ec2.region (or the auth profile's cloudkey.region)"
            )
        base = Config(
            connect_timeout=ep.timeout,
            read_timeout=ep.timeout,
            retries={"mode": "standard", "total_max_attempts": ep.retries},
        )
        once = base.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}))
        client = session.client("ec2", endpoint_url=ep.endpoint_url, config=base)
        launch = session.client("ec2", endpoint_url=ep.endpoint_url, config=once)
        return client, launch

    def _get(self) -> tuple[Any, Any]:
        with self._lock:
            if self._clients is None:
                self._clients = self._make_clients()
            return self._clients

    def call(self, what: str, fn: Callable[[Any], Any], *, launch: bool = False) -> Any:
        """Run ``fn(client)``; translate every failure into a clear ``BackendError``."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        client, launch_client = self._get()
        try:
            return fn(launch_client if launch else client)
        except ClientError as exc:
            raise self.error(what, exc) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise BackendError(self.label, f"{what}: no usable AWS credentials from {self.who}") from None
        except EndpointConnectionError as exc:
            raise BackendError(self.label, f"{what}: cannot reach the endpoint: {exc}") from None
        except BotoCoreError as exc:
            raise BackendError(self.label, redact(f"{what} failed: {exc}", self._secrets)) from None

    def error(self, what: str, exc: Any) -> BackendError:
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        message = redact(str(err.get("Message") or exc), self._secrets)
        if code in CAPACITY_CODES:
            return BackendError(self.label, f"{what}: {code}: {message}", capacity=True)
        if code in AUTH_CODES:
            with self._lock:
                self._clients = None  # read the credentials again next time (a rotated key file)
            return BackendError(self.label, f"{what}: {code}: the cloud refused {self.who}: {message}")
        return BackendError(self.label, f"{what}: {code or 'error'}: {message}")

    # -- CloudApi ------------------------------------------------------------------------------
    def instances(self, factory_id: str, queue: str | None = None) -> list[Instance]:
        filters = [{"Name": f"tag:{lc.TAG_FACTORY}", "Values": [factory_id]}]
        if queue is not None:
            filters.append({"Name": f"tag:{lc.TAG_QUEUE}", "Values": [queue]})

        def run(client: Any) -> list[Instance]:
            pages = client.get_paginator("describe_instances").paginate(
                Filters=filters, PaginationConfig={"PageSize": self.ep.page_size}
            )
            return [
                to_instance(i) for page in pages for r in page.get("Reservations", []) for i in r["Instances"]
            ]

        return self.call("DescribeInstances", run)

    def _per_chunk(self, what: str, ids: Sequence[str], fn: Callable[[Any, list[str]], Any]) -> None:
        """Call fn for chunks of ids; ids the cloud no longer knows are dropped and the rest retried."""
        for start in range(0, len(ids), _CHUNK):
            chunk = list(ids[start : start + _CHUNK])
            while chunk:
                try:
                    self.call(what, lambda c, ch=chunk: fn(c, ch))  # type: ignore[misc]
                    break
                except BackendError as exc:
                    if "InvalidInstanceID" not in exc.message:
                        raise
                    gone = set(_NOT_FOUND_IDS.findall(exc.message))
                    rest = [i for i in chunk if i not in gone]
                    if not gone or len(rest) == len(chunk):
                        raise
                    chunk = rest

    def mark_retiring(self, ids: Sequence[str], since: float) -> None:
        tags = [{"Key": lc.TAG_RETIRE, "Value": str(int(since))}]
        self._per_chunk("CreateTags", ids, lambda c, ch: c.create_tags(Resources=ch, Tags=tags))

    def terminate(self, ids: Sequence[str], reason: str) -> None:
        tags = [{"Key": lc.TAG_END, "Value": str(reason)}]
        self._per_chunk("CreateTags", ids, lambda c, ch: c.create_tags(Resources=ch, Tags=tags))
        self._per_chunk("TerminateInstances", ids, lambda c, ch: c.terminate_instances(InstanceIds=ch))

    def launch(self, params: Mapping[str, Any]) -> list[Instance]:
        reply = self.call("RunInstances", lambda c: c.run_instances(**params), launch=True)
        return [to_instance(i) for i in reply.get("Instances", [])]

    def root_device(self, ami: str) -> str:
        reply = self.call("DescribeImages", lambda c: c.describe_images(ImageIds=[ami]))
        images = reply.get("Images") or []
        if not images or not images[0].get("RootDeviceName"):
            raise BackendError(self.label, f"image {ami} not found (or it names no root device)")
        return str(images[0]["RootDeviceName"])

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, None
        for client in clients or ():
            client.close()


# ---------------------------------------------------------------------------------------------
# plugins


def _groups(value: str | None) -> list[str]:
    return [g.strip() for g in (value or "").split(",") if g.strip()]


class EC2Status(NeedsModules, CloudStatus):
    name = "EC2"
    requires = (BOTO3,)
    Options = EC2StatusOptions

    @classmethod
    def endpoint(cls, queue: QueueConfig, factory: FactoryContext) -> Hashable:
        return endpoint_of(queue, factory)

    def connect(self) -> EC2Api:
        assert isinstance(self.endpoint_key, EC2Endpoint)
        return EC2Api(self.endpoint_key, self.factory)


class EC2Submit(NeedsModules, CloudSubmit):
    name = "EC2"
    requires = (BOTO3,)
    Options: ClassVar[type[PluginOptions]] = EC2Options
    cloud = "ec2"
    status_plugin = EC2Status
    max_user_data = EC2_USER_DATA_LIMIT

    options: EC2Options

    def __init__(self, queue: QueueConfig, options: PluginOptions, factory: FactoryContext) -> None:
        super().__init__(queue, options, factory)
        opts = self.options
        if opts.spot_max_price is not None and opts.market != "spot":
            raise PluginError(
                f"[{queue.name}] {self.key('spot_max_price')} is set but market is {opts.market}"
            )
        names = [g for g in _groups(opts.security_groups) if not g.startswith("sg-")]
        if opts.subnet and names:
            # EC2 refuses group names with a subnet (InvalidParameterCombination): say so at setup
            raise PluginError(
                f"[{queue.name}] {self.key('security_groups')}: {', '.join(names)} are group names; "
                f"with {self.key('subnet')} set EC2 takes only sg-... ids"
            )
        self._root_device: str | None = opts.root_device

    def key(self, suffix: str) -> str:
        return f"{self.prefixes()[0]}{suffix}"

    def connect(self) -> EC2Api:
        return EC2Api(endpoint_of(self.queue, self.factory), self.factory)

    def launch_params(self, n: int, tags: PilotTags, user_data: str) -> dict[str, Any]:
        """The RunInstances parameters (pure apart from the cached root device name)."""
        o = self.options
        tag_list = [{"Key": k, "Value": v} for k, v in {**o.extra_tags, **lc.instance_tags(tags)}.items()]
        params: dict[str, Any] = {
            "ImageId": o.ami,
            "InstanceType": o.instance_type,
            "MinCount": 1,
            "MaxCount": n,
            "ClientToken": lc.client_token(tags),
            "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
        }
        if o.subnet:
            params["SubnetId"] = o.subnet
        groups = _groups(o.security_groups)
        if groups:
            ids = [g for g in groups if g.startswith("sg-")]
            names = [g for g in groups if not g.startswith("sg-")]
            if ids:
                params["SecurityGroupIds"] = ids
            if names:
                params["SecurityGroups"] = names
        if o.key_name:
            params["KeyName"] = o.key_name
        if o.iam_instance_profile:
            which = "Arn" if o.iam_instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {which: o.iam_instance_profile}
        if o.root_volume_size and self._root_device:
            params["BlockDeviceMappings"] = [
                {
                    "DeviceName": self._root_device,
                    "Ebs": {
                        "VolumeSize": o.root_volume_size,
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                    },
                }
            ]
        if o.market == "spot":
            spot: dict[str, Any] = {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            }
            if o.spot_max_price is not None:
                spot["MaxPrice"] = f"{o.spot_max_price:g}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        return params

    def launch(self, n: int, tags: PilotTags, user_data: str) -> list[Instance]:
        api = self.api
        assert isinstance(api, EC2Api)
        if self.options.root_volume_size and self._root_device is None:
            self._root_device = api.root_device(self.options.ami)
        return api.launch(self.launch_params(n, tags, user_data))
