"""OpenStack through openstacksdk against the Keystone v3 + Nova wire stub on 127.0.0.1
(scripts/components/openstack_stub.py: no OpenStack can run here): create with min/max count,
metadata and user data, paged listing, quota 403/413, ERROR servers, 5xx, auth errors."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import pytest

from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.cloud.openstack import OpenStackStatus, OpenStackSubmit
from tests.components_cloud import OpenStackStub

FACTORY = "cloudtest"


def queue(make_queue: Any, stub: OpenStackStub, name: str = "OSQ", **keys: str) -> Any:
    base = {
        "batchsubmit.openstack.cloud": stub.cloud,
        "batchsubmit.openstack.clouds_file": str(stub.clouds_yaml),
        "batchsubmit.openstack.flavor": "m1.small",
        "batchsubmit.openstack.image": "pilot-image",
    }
    keys = {
        k if k.startswith(("batchsubmit.", "batchstatus.")) else f"batchsubmit.openstack.{k}": v
        for k, v in keys.items()
    }
    return make_queue(name, {**base, **keys}, submit="OpenStack")


def plugins(q: Any, ctx: Any) -> tuple[OpenStackSubmit, OpenStackStatus]:
    sub = OpenStackSubmit(q, q.batchsubmit.options, ctx)
    status = OpenStackStatus(OpenStackStatus.endpoint(q, ctx), ctx)
    status.register(q)
    return sub, status


def test_one_create_with_min_max_count_metadata_and_user_data(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any
) -> None:
    q = queue(
        make_queue, openstack, network="net-1, net-2", security_groups="default, pilots", key_name="apf-key",
        **{"meta.project": "atlas"},
    )  # fmt: skip
    sub, status = plugins(q, make_factory(FACTORY))
    pilots = sub.submit(3, PilotTags(FACTORY, "OSQ", "0123456789ab"), 1000.0)
    assert len(pilots) == 3
    assert sum(1 for r in openstack.requests() if r == "POST /compute/v2.1/servers") == 1
    servers = {s["id"]: s for s in openstack.servers()}
    assert set(servers) == {p.backend_id for p in pilots}
    for s in servers.values():
        assert s["metadata"] == {
            "apf:factory": FACTORY,
            "apf:queue": "OSQ",
            "apf:intent": "0123456789ab",
            "project": "atlas",
        }
        assert s["flavor"]["id"] == "1" and s["image"]["id"] == "11111111-2222-3333-4444-555555555555"
        text = base64.b64decode(s["OS-EXT-SRV-ATTR:user_data"]).decode()
        assert "autopyfactory VM of factory cloudtest, queue OSQ, intent 0123456789ab" in text
        assert s["security_groups"] == [{"name": "default"}, {"name": "pilots"}]
        assert s["networks"] == [{"uuid": "net-1"}, {"uuid": "net-2"}] and s["key_name"] == "apf-key"
    assert {p.state for p in status.poll(1000.0).pilots} == {PilotState.RUNNING}


def test_quota_gives_partial_fulfilment_then_a_capacity_error(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any
) -> None:
    openstack.reset(max_instances=2)
    sub, _ = plugins(queue(make_queue, openstack), make_factory(FACTORY))
    assert len(sub.submit(5, PilotTags(FACTORY, "OSQ", "aaaaaaaaaaaa"), 1000.0)) == 2
    with pytest.raises(BackendError) as info:
        sub.submit(1, PilotTags(FACTORY, "OSQ", "bbbbbbbbbbbb"), 1000.0)
    assert info.value.capacity and "HTTP 403" in info.value.message and "Quota exceeded" in info.value.message


@pytest.mark.parametrize(
    ("fault", "capacity", "words"),
    [
        ("quota", True, "quota exceeded (HTTP 403)"),
        ("overlimit", True, "quota exceeded (HTTP 413)"),
        ("novalidhost", True, "No valid host was found"),
        ("500", False, "server error (HTTP 500)"),
    ],
)
def test_create_errors(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any, fault: str, capacity: bool, words: str
) -> None:
    sub, _ = plugins(queue(make_queue, openstack), make_factory(FACTORY))
    openstack.fault(create=fault, times=1)
    with pytest.raises(BackendError) as info:
        sub.submit(2, PilotTags(FACTORY, "OSQ", "cccccccccccc"), 1000.0)
    assert info.value.capacity is capacity and words in info.value.message
    assert openstack.servers() == []  # servers that went to ERROR were deleted at once
    assert len(sub.submit(1, PilotTags(FACTORY, "OSQ", "dddddddddddd"), 1000.0)) == 1


def test_listing_pages_and_keeps_to_this_factory(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any
) -> None:
    q = queue(make_queue, openstack, **{"batchstatus.openstack.page_size": "2"})
    sub, status = plugins(q, make_factory(FACTORY))
    ids = {p.backend_id for p in sub.submit(5, PilotTags(FACTORY, "OSQ", "eeeeeeeeeeee"), 1000.0)}
    other, _ = plugins(q, make_factory("another-factory"))
    other.submit(2, PilotTags("another-factory", "OSQ", "ffffffffffff"), 1000.0)
    before = len(openstack.requests())
    assert {p.backend_id for p in status.poll(1000.0).pilots} == ids
    pages = [r for r in openstack.requests()[before:] if r == "GET /compute/v2.1/servers/detail"]
    assert len(pages) >= 3  # 5 servers, 2 per page (openstacksdk asks once more past the last)


def test_error_servers_are_failed_deleted_and_vanished_ones_final(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any
) -> None:
    sub, status = plugins(queue(make_queue, openstack), make_factory(FACTORY))
    a, b, c = (p.backend_id for p in sub.submit(3, PilotTags(FACTORY, "OSQ", "111111111111"), 1000.0))
    openstack.set_server(a, status="ERROR", fault="Host failed: hypervisor gone")
    snap = {p.backend_id: p.state for p in status.poll(1000.0).pilots}
    assert snap == {a: PilotState.FAILED, b: PilotState.RUNNING, c: PilotState.RUNNING}
    sub.cleanup(list(status.poll(1001.0).pilots), 1001.0)  # ERROR -> deleted
    sub.cancel([b])
    assert {s["id"] for s in openstack.servers()} == {c}
    # deleted servers vanish from Nova: reported final with their last tags
    snap = {p.backend_id: p.state for p in status.poll(1002.0).pilots}
    assert snap == {a: PilotState.FAILED, b: PilotState.CANCELLED, c: PilotState.RUNNING}


def test_retire_without_a_pool_waits_for_the_grace(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any
) -> None:
    sub, status = plugins(queue(make_queue, openstack, **{"retire.grace": "0"}), make_factory(FACTORY))
    (a,) = (p.backend_id for p in sub.submit(1, PilotTags(FACTORY, "OSQ", "222222222222"), 1000.0))
    sub.retire([a])
    (server,) = openstack.servers()
    assert "apf:retire" in server["metadata"]
    assert [p.state for p in status.poll(1000.0).pilots] == [PilotState.RETIRING]
    now = time.time() + 1  # past the grace (0) of the retire just made
    sub.cleanup(list(status.poll(now).pilots), now)
    assert openstack.servers() == []


def test_listing_5xx_and_auth_errors(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, status = plugins(queue(make_queue, openstack), make_factory(FACTORY))
    openstack.fault(list="500", times=1)
    with pytest.raises(BackendError, match=r"server error \(HTTP 500\)"):
        status.poll(1000.0)
    # a new connection whose token request is refused
    sub2, _ = plugins(queue(make_queue, openstack), make_factory(FACTORY))
    openstack.fault(auth="401", times=1)
    with pytest.raises(BackendError) as info:
        sub2.submit(1, PilotTags(FACTORY, "OSQ", "333333333333"), 1000.0)
    assert "cloud 'stub'" in str(info.value) and not info.value.capacity
    password = "stub-password-not-secret"
    assert password not in str(info.value) and password not in caplog.text


def test_application_credential_from_a_cloudkey_profile(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any
) -> None:
    ctx = make_factory(
        FACTORY,
        auth={
            "appcred": (
                "CloudKey",
                {
                    "cloudkey.access_key_id": "cred-id-1",
                    "cloudkey.secret_access_key": "cred-secret-1",
                    "cloudkey.endpoint_url": f"{openstack.url}/v3",
                    "cloudkey.region": "RegionOne",
                },
            )
        },
    )
    q = make_queue(
        "OSQ",
        {"batchsubmit.openstack.authprofile": "appcred", "batchsubmit.openstack.flavor": "1",
         "batchsubmit.openstack.image": "11111111-2222-3333-4444-555555555555"},
        submit="OpenStack",
    )  # fmt: skip
    sub, status = plugins(q, ctx)
    (p,) = sub.submit(1, PilotTags(FACTORY, "OSQ", "444444444444"), 1000.0)
    assert [x.backend_id for x in status.poll(1000.0).pilots] == [p.backend_id]


def test_unknown_flavor_or_cloud_are_clear_errors(
    openstack: OpenStackStub, make_queue: Any, make_factory: Any
) -> None:
    sub, _ = plugins(queue(make_queue, openstack, flavor="m9.giant"), make_factory(FACTORY))
    with pytest.raises(BackendError, match=r"flavor 'm9\.giant' not found"):
        sub.submit(1, PilotTags(FACTORY, "OSQ", "555555555555"), 1000.0)
    sub, _ = plugins(queue(make_queue, openstack, cloud="nope"), make_factory(FACTORY))
    with pytest.raises(BackendError, match=r"clouds\.yaml: .*nope"):
        sub.submit(1, PilotTags(FACTORY, "OSQ", "555555555555"), 1000.0)
