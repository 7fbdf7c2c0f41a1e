"""One transport per target, shared by every plugin instance that uses it.

``transport_for`` picks the implementation (local subprocess or SSH with an auth.conf profile)
and hands out one shared instance per target, so all queues and the poller of one head node use
one SSH connection. It lives apart from ``base`` so that the implementations import the contract
and this module imports the implementations: no import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopyfactory.plugins.base import PluginError
from autopyfactory.plugins.shared import SharedPool
from autopyfactory.plugins.transport.base import Transport
from autopyfactory.plugins.transport.local import LocalTransport
from autopyfactory.plugins.transport.ssh import SSHTransport

if TYPE_CHECKING:
    from autopyfactory.plugins.base import FactoryContext


class TransportPool(SharedPool[Transport]):
    """Reference-counted transports by key; the last ``release`` closes one."""


POOL = TransportPool()


def transport_for(
    factory: FactoryContext,
    host: str | None,
    *,
    user: str | None = None,
    port: int = 22,
    authprofile: str | None = None,
    where: str = "",
) -> Transport:
    """The shared transport for a target: local when ``host`` is empty, else SSH with a profile.

    ``where`` names the config keys in errors (e.g. ``batchsubmit.slurm``). Release the result
    with ``POOL.release`` when the plugin closes.
    """
    if not host:
        return POOL.acquire(("local",), LocalTransport)
    prefix = f"{where}." if where else ""
    if not authprofile:
        raise PluginError(f"{prefix}host is {host!r} but {prefix}authprofile (an SSH profile) is not set")
    profile = factory.auth(authprofile)
    if profile.plugin != "SSH":
        raise PluginError(
            f"{prefix}authprofile {authprofile!r} is a {profile.plugin} profile; an SSH profile is needed"
        )
    key = ("ssh", user or "", host, port, authprofile, id(profile.options))
    return POOL.acquire(
        key, lambda: SSHTransport(host, port=port, user=user, profile=authprofile, options=profile.options)
    )
