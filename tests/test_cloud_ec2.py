"""EC2 through boto3 against moto's server on 127.0.0.1 (scripts/components/moto_ec2.py) and the fault
proxy in front of it: launch, tags, user data, pagination, partial fulfilment, terminate, spot,
interruptions, leaks, capacity and auth errors, boot delay."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import BackendError, PluginError
from autopyfactory.plugins.cloud import lifecycle as lc
from autopyfactory.plugins.cloud.ec2 import EC2Status, EC2Submit
from tests.components_cloud import EC2Server
from tests.helpers import wait_for, write

FACTORY = "cloudtest"
SECRET = "s3cr3t-Never-Print-Me"


def factory(make_factory: Any, secret: str = "testing") -> Any:
    return make_factory(
        FACTORY,
        auth={
            "moto": ("CloudKey", {"cloudkey.access_key_id": "testing", "cloudkey.secret_access_key": secret})
        },
    )


def queue(make_queue: Any, ec2: EC2Server, name: str = "CLOUD", url: str | None = None, **keys: str) -> Any:
    base = {
        "batchsubmit.ec2.endpoint_url": url or ec2.url,
        "batchsubmit.ec2.region": ec2.region,
        "batchsubmit.ec2.authprofile": "moto",
        "batchsubmit.ec2.ami": ec2.image(),
        "batchsubmit.ec2.instance_type": "t3.micro",
        "batchsubmit.ec2.retries": "1",
    }
    return make_queue(
        name,
        {**base, **{f"batchsubmit.ec2.{k}" if "." not in k else k: v for k, v in keys.items()}},
        submit="EC2",
    )


def plugins(q: Any, ctx: Any) -> tuple[EC2Submit, EC2Status]:
    sub = EC2Submit(q, q.batchsubmit.options, ctx)
    status = EC2Status(EC2Status.endpoint(q, ctx), ctx)
    status.register(q)
    return sub, status


def tags_of(inst: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


def test_launch_tags_user_data_and_lease(
    ec2: EC2Server, make_queue: Any, make_factory: Any, tmp_path: Any
) -> None:
    template = write(
        tmp_path / "vm.tpl",
        """
        #!/bin/sh
        # {{ factory_id }} {{ queue }} {{ intent_id }} {{ var.site }}
        POOL={{ pool_address }}
        {{ pilot_environment }}
        shutdown -h +{{ max_lifetime_minutes }}
        """,
    )
    q = queue(
        make_queue, ec2, user_data_file=str(template), max_lifetime="2h", **{
            "batchsubmit.ec2.pool.address": "ctl.example.org:6817", "batchsubmit.ec2.var.site": "CERN",
            "batchsubmit.ec2.tag.Project": "atlas", "batchsubmit.ec2.root_volume_size": "30",
        },
    )  # fmt: skip
    sub, status = plugins(q, factory(make_factory))
    pilots = sub.submit(3, PilotTags(FACTORY, "CLOUD", "0123456789ab"), 1000.0)
    assert len(pilots) == 3 and all(
        p.state is PilotState.PENDING and p.instance_id == p.backend_id for p in pilots
    )
    found = ec2.instances(**{"tag_apf:factory": FACTORY})
    assert sorted(i["InstanceId"] for i in found) == sorted(p.backend_id for p in pilots)
    client = ec2.client()
    for inst in found:
        assert tags_of(inst) == {
            "apf:factory": FACTORY,
            "apf:queue": "CLOUD",
            "apf:intent": "0123456789ab",
            "Project": "atlas",
        }
        attr = client.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
        text = base64.b64decode(attr["UserData"]["Value"]).decode()
        assert "# cloudtest CLOUD 0123456789ab CERN" in text and "POOL=ctl.example.org:6817" in text
        assert "export APF_INTENT=0123456789ab" in text and "shutdown -h +120" in text
        behaviour = client.describe_instance_attribute(
            InstanceId=inst["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
        )
        assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        assert (
            inst["BlockDeviceMappings"][0]["DeviceName"] == inst["RootDeviceName"]
        )  # looked up from the image
    snap = status.poll(2000.0)
    assert {p.backend_id: (p.queue, p.intent_id, p.state) for p in snap.pilots} == {
        p.backend_id: ("CLOUD", "0123456789ab", PilotState.RUNNING) for p in pilots
    }  # no pool: running is running


def iam(ec2: EC2Server) -> Any:
    import boto3

    return boto3.client(
        "iam", endpoint_url=ec2.url, region_name=ec2.region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


def test_subnet_security_groups_key_pair_and_instance_profile_are_applied(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    client = ec2.client()
    vpc = client.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    group = client.create_security_group(GroupName="apf-pilots", Description="pilots", VpcId=vpc)["GroupId"]
    client.create_key_pair(KeyName="apf-key")
    arn = iam(ec2).create_instance_profile(InstanceProfileName="apf-vm")["InstanceProfile"]["Arn"]
    q = queue(
        make_queue, ec2, subnet=subnet, security_groups=group, key_name="apf-key",
        iam_instance_profile="apf-vm", root_volume_size="30",
    )  # fmt: skip
    sub, _ = plugins(q, factory(make_factory))
    tags = PilotTags(FACTORY, "CLOUD", "abcdefabcdef")
    pilots = sub.submit(3, tags, 1000.0)
    assert len(pilots) == 3
    # what RunInstances carried, as moto received it: one call, MinCount 1, MaxCount n, the token
    (launch,) = ec2.launches()
    assert {k: launch.get(k) for k in ("MinCount", "MaxCount", "ClientToken", "IamInstanceProfile.Name")} == {
        "MinCount": "1",
        "MaxCount": "3",
        "ClientToken": lc.client_token(tags),
        "IamInstanceProfile.Name": "apf-vm",
    }
    found = ec2.instances(**{"tag_apf:factory": FACTORY})
    assert sorted(i["InstanceId"] for i in found) == sorted(p.backend_id for p in pilots)
    for inst in found:
        assert (inst["SubnetId"], inst["VpcId"], inst["KeyName"]) == (subnet, vpc, "apf-key")
        assert inst["SecurityGroups"] == [{"GroupId": group, "GroupName": "apf-pilots"}]
        assert inst["ClientToken"] == lc.client_token(tags)  # moto echoes the token it was sent
        (disk,) = inst["BlockDeviceMappings"]
        (volume,) = client.describe_volumes(VolumeIds=[disk["Ebs"]["VolumeId"]])["Volumes"]
        assert (disk["DeviceName"], volume["Size"]) == (inst["RootDeviceName"], 30)
    # moto associates the profile with the first instance of a launch only; none has another
    assert {i["IamInstanceProfile"]["Arn"] for i in found if i.get("IamInstanceProfile")} == {arn}


def test_group_names_in_the_default_vpc_and_a_profile_by_arn(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    client = ec2.client()
    (default_vpc,) = client.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    client.create_security_group(GroupName="apf-web", Description="web", VpcId=default_vpc["VpcId"])
    arn = iam(ec2).create_instance_profile(InstanceProfileName="apf-arn")["InstanceProfile"]["Arn"]
    q = queue(make_queue, ec2, security_groups="apf-web", iam_instance_profile=arn)
    sub, _ = plugins(q, factory(make_factory))
    (pilot,) = sub.submit(1, PilotTags(FACTORY, "CLOUD", "fedcbafedcba"), 1000.0)
    (launch,) = ec2.launches()
    (inst,) = ec2.instances()
    assert inst["InstanceId"] == pilot.backend_id
    assert (launch.get("SecurityGroup.1"), launch.get("IamInstanceProfile.Arn")) == ("apf-web", arn)
    assert "SecurityGroupId.1" not in launch and "SubnetId" not in launch
    assert [g["GroupName"] for g in inst["SecurityGroups"]] == ["apf-web"]
    assert inst["IamInstanceProfile"]["Arn"] == arn
    # with a subnet EC2 takes ids only (InvalidParameterCombination): refused at setup, naming the key
    bad = queue(make_queue, ec2, subnet="subnet-0123", security_groups="sg-0123, apf-web")
    with pytest.raises(
        PluginError, match=r"\[CLOUD\] batchsubmit.ec2.security_groups: apf-web are group names"
    ):
        plugins(bad, factory(make_factory))


def test_status_pages_through_every_instance_of_this_factory_only(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    q = queue(make_queue, ec2, url=ec2.proxy_url, **{"batchstatus.ec2.page_size": "5"})
    sub, status = plugins(q, factory(make_factory))
    ids = []
    for k in range(12):  # 12 reservations: moto pages by reservation, so 3 pages of 5
        ids += [p.backend_id for p in sub.submit(1, PilotTags(FACTORY, "CLOUD", f"intent{k:06d}"), 1000.0)]
    other = ec2.client().run_instances(
        ImageId=ec2.image(), MinCount=2, MaxCount=2,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "apf:factory", "Value": "someone-else"}]}],
    )  # fmt: skip
    assert len(other["Instances"]) == 2
    before = ec2.requests().get("DescribeInstances", 0)
    snap = status.poll(2000.0)
    assert sorted(p.backend_id for p in snap.pilots) == sorted(ids)
    assert ec2.requests()["DescribeInstances"] - before == 3  # one listing, three pages


def test_partial_fulfilment_counts_what_was_launched(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    ec2.control(instance_limit=2)
    sub, _ = plugins(queue(make_queue, ec2), factory(make_factory))
    pilots = sub.submit(5, PilotTags(FACTORY, "CLOUD", "aaaaaaaaaaaa"), 1000.0)
    assert len(pilots) == 2 and len(ec2.instances()) == 2
    # nothing left: the cloud answers InsufficientInstanceCapacity, a capacity refusal
    with pytest.raises(BackendError) as info:
        sub.submit(1, PilotTags(FACTORY, "CLOUD", "bbbbbbbbbbbb"), 1000.0)
    assert info.value.capacity and "InsufficientInstanceCapacity" in info.value.message


def test_cancel_and_kill_terminate_with_the_reason_tagged(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    sub, status = plugins(queue(make_queue, ec2), factory(make_factory))
    a, b, c = (p.backend_id for p in sub.submit(3, PilotTags(FACTORY, "CLOUD", "cccccccccccc"), 1000.0))
    sub.cancel([a])
    sub.retire([b], kill=True)
    sub.cancel(["i-00000000000000000"])  # unknown ids are not an error
    states = {i["InstanceId"]: (i["State"]["Name"], tags_of(i).get("apf:end")) for i in ec2.instances()}
    assert states == {a: ("terminated", "cancelled"), b: ("terminated", "killed"), c: ("running", None)}
    pilots = {p.backend_id: p.state for p in status.poll(2000.0).pilots}
    assert pilots == {a: PilotState.CANCELLED, b: PilotState.DONE, c: PilotState.RUNNING}


def test_spot_launch_and_a_provider_interruption(ec2: EC2Server, make_queue: Any, make_factory: Any) -> None:
    q = queue(make_queue, ec2, market="spot", spot_max_price="0.05")
    sub, status = plugins(q, factory(make_factory))
    params = sub.launch_params(2, PilotTags(FACTORY, "CLOUD", "dddddddddddd"), "x")
    assert params["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
            "MaxPrice": "0.05",
        },
    }
    a, b = (p.backend_id for p in sub.submit(2, PilotTags(FACTORY, "CLOUD", "dddddddddddd"), 1000.0))
    assert {i["InstanceLifecycle"] for i in ec2.instances()} == {"spot"}
    assert ec2.interrupt([a], "Server.SpotInstanceTermination") == [a]
    pilots = {p.backend_id: p for p in status.poll(2000.0).pilots}
    assert pilots[a].state is PilotState.FAILED and pilots[b].state is PilotState.RUNNING
    assert status.counters()["interrupted"] == 1
    (event,) = status.take_interruptions()
    assert (event.instance_id, event.queue, event.reason, event.spot) == (
        a,
        "CLOUD",
        "Server.SpotInstanceTermination",
        True,
    )
    status.poll(2001.0)
    assert status.take_interruptions() == []  # reported once


def test_boot_delay_keeps_vms_pending(ec2: EC2Server, make_queue: Any, make_factory: Any) -> None:
    ec2.control(boot_seconds=2)
    sub, status = plugins(queue(make_queue, ec2), factory(make_factory))
    sub.submit(1, PilotTags(FACTORY, "CLOUD", "eeeeeeeeeeee"), 1000.0)
    assert [p.state for p in status.poll(1000.0).pilots] == [PilotState.PENDING]
    wait_for(
        lambda: [p.state for p in status.poll(1001.0).pilots] == [PilotState.RUNNING], 20, "the VM to boot"
    )


def test_leaks_are_adopted_or_terminated_after_the_grace(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    q = queue(make_queue, ec2, **{"batchstatus.ec2.leak_grace": "60"})
    sub, status = plugins(q, factory(make_factory))
    (known,) = (p.backend_id for p in sub.submit(1, PilotTags(FACTORY, "CLOUD", "ffffffffffff"), 1000.0))

    def behind_our_back(queue_name: str) -> str:
        tags = [{"Key": "apf:factory", "Value": FACTORY}, {"Key": "apf:queue", "Value": queue_name},
                {"Key": "apf:intent", "Value": "000000000000"}]  # fmt: skip
        run = ec2.client().run_instances(
            ImageId=ec2.image(),
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        return run["Instances"][0]["InstanceId"]

    adoptable, orphan = behind_our_back("CLOUD"), behind_our_back("REMOVED_QUEUE")
    status.poll(1000.0)
    report = status.reconcile_leaks({known}, set(), {"CLOUD"}, now=1000.0)
    assert [p.backend_id for p in report.adopt] == [adoptable] and report.adopt[0].queue == "CLOUD"
    assert report.terminate == () and report.waiting == 1
    report = status.reconcile_leaks({known, adoptable}, set(), {"CLOUD"}, now=1061.0)
    assert report.terminate == (orphan,)
    status.terminate(report.terminate)
    states = {i["InstanceId"]: (i["State"]["Name"], tags_of(i).get("apf:end")) for i in ec2.instances()}
    assert states[orphan] == ("terminated", "leaked") and states[adoptable][0] == "running"
    assert status.counters() == {"leaked": 1, "adopted": 1, "terminated_leaks": 1, "interrupted": 0}
    assert status.reconciles_leaks  # the declared capability the engine reads
    status.poll(1062.0)
    report = status.reconcile_leaks({known, adoptable}, set(), {"CLOUD"}, now=1062.0)
    assert report == type(report)((), (), 0) and status.counters()["leaked"] == 0


def test_apf_status_shows_the_cloud_counters(
    ec2: EC2Server, make_queue: Any, make_factory: Any, tmp_path: Any
) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    from autopyfactory.config.loader import load_factory_config
    from autopyfactory.engine.factory import status_path
    from tests.helpers import factory_conf

    _, status = plugins(queue(make_queue, ec2), factory(make_factory))
    run = ec2.client().run_instances(
        ImageId=ec2.image(), MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "apf:factory", "Value": FACTORY},
                                                                  {"Key": "apf:queue", "Value": "OLD"}]}],
    )  # fmt: skip
    assert run["Instances"]
    status.poll(1000.0)
    status.reconcile_leaks(set(), set(), {"CLOUD"}, now=1000.0)
    conf = factory_conf(
        tmp_path,
        "[CLOUD]\nenabled = True\nschedplugin = Null\nbatchsubmitplugin = Local\nbatchstatusplugin = Local\n",
    )
    path = status_path(load_factory_config(str(conf)))
    path.parent.mkdir(parents=True, exist_ok=True)
    # what the engine writes once it runs the leak reconciler (see the report's engine hook)
    path.write_text(json.dumps({"time": 1000.0, "cloud": {status.label: status.counters()}}))
    apf = str(Path(sys.executable).parent / "apf")
    out = subprocess.run([apf, "status", "--conf", str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"cloud {status.label}: 1 leaked VMs (tagged, unknown, their queue gone)" in out.stdout


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("InsufficientInstanceCapacity", 500),
        ("InstanceLimitExceeded", 400),
        ("VcpuLimitExceeded", 400),
        ("MaxSpotInstanceCountExceeded", 400),
        ("SpotMaxPriceTooLow", 400),
        ("InsufficientFreeAddressesInSubnet", 400),
    ],
)
def test_capacity_errors_are_capacity_and_seen_at_once(
    ec2: EC2Server, make_queue: Any, make_factory: Any, code: str, status: int
) -> None:
    # retries = 3 for the other calls: RunInstances is still sent once, so ONE injected 500 is seen
    sub, _ = plugins(queue(make_queue, ec2, url=ec2.proxy_url, retries="3"), factory(make_factory))
    ec2.fault("RunInstances", code, status=status, times=1)
    with pytest.raises(BackendError) as info:
        sub.submit(2, PilotTags(FACTORY, "CLOUD", "111111111111"), 1000.0)
    assert info.value.capacity and code in info.value.message
    assert ec2.fault_hits() == {"RunInstances": 1} and ec2.instances() == []
    assert len(sub.submit(2, PilotTags(FACTORY, "CLOUD", "222222222222"), 1000.0)) == 2  # the fault is spent


def test_idempotent_calls_are_retried_through_a_throttle(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    q = queue(make_queue, ec2, url=ec2.proxy_url, retries="3")
    sub, status = plugins(q, factory(make_factory))
    sub.submit(1, PilotTags(FACTORY, "CLOUD", "333333333333"), 1000.0)
    ec2.fault("DescribeInstances", "RequestLimitExceeded", status=503, times=1)
    assert len(status.poll(1000.0).pilots) == 1
    assert ec2.fault_hits() == {"DescribeInstances": 1}


def test_auth_errors_name_the_profile_never_the_secret(
    ec2: EC2Server, make_queue: Any, make_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sub, status = plugins(queue(make_queue, ec2, url=ec2.proxy_url), factory(make_factory, secret=SECRET))
    ec2.fault("RunInstances", "AuthFailure", status=401, times=1)
    with pytest.raises(BackendError) as info:
        sub.submit(1, PilotTags(FACTORY, "CLOUD", "444444444444"), 1000.0)
    ec2.fault("DescribeInstances", "UnauthorizedOperation", status=403, times=1)
    with pytest.raises(BackendError) as info2:
        status.poll(1000.0)
    for err in (info.value, info2.value):
        assert "auth profile 'moto'" in str(err) and not err.capacity
        assert SECRET not in str(err)
    assert SECRET not in caplog.text


def test_no_credentials_and_bad_keys_are_clear_errors(
    ec2: EC2Server, make_queue: Any, make_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    q = queue(make_queue, ec2, authprofile="None")
    sub, _ = plugins(q, make_factory(FACTORY))
    with pytest.raises(
        BackendError, match="no usable AWS credentials from the standard AWS credential chain"
    ):
        sub.submit(1, PilotTags(FACTORY, "CLOUD", "555555555555"), 1000.0)
    q = queue(make_queue, ec2, authprofile="missing")
    sub, _ = plugins(q, make_factory(FACTORY))
    with pytest.raises(BackendError, match="auth profile 'missing' is not defined"):
        sub.submit(1, PilotTags(FACTORY, "CLOUD", "555555555555"), 1000.0)


def test_bad_templates_and_options_fail_at_setup(
    ec2: EC2Server, make_queue: Any, make_factory: Any, tmp_path: Any
) -> None:
    bad = write(tmp_path / "bad.tpl", "#!/bin/sh\necho {{ queue }}\necho {{ pool_adress }}\n")
    with pytest.raises(PluginError, match=r"bad.tpl, line 3: unknown variable \{\{ pool_adress \}\}"):
        plugins(queue(make_queue, ec2, user_data_file=str(bad)), factory(make_factory))
    with pytest.raises(PluginError, match="cannot read the user-data template"):
        plugins(queue(make_queue, ec2, user_data_file=str(tmp_path / "nope.tpl")), factory(make_factory))
    huge = write(tmp_path / "huge.tpl", "#!/bin/sh\n# {{ max_lifetime }}\n" + "x" * 17000 + "\n")
    with pytest.raises(PluginError, match=r"rendered user data has \d+ bytes; EC2 accepts at most 16384"):
        plugins(queue(make_queue, ec2, user_data_file=str(huge)), factory(make_factory))
    with pytest.raises(PluginError, match="spot_max_price is set but market is on-demand"):
        plugins(queue(make_queue, ec2, spot_max_price="0.1"), factory(make_factory))


def test_the_lease_fuse_is_in_the_default_user_data(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    sub, _ = plugins(queue(make_queue, ec2, max_lifetime="1d"), factory(make_factory))
    (pilot,) = sub.submit(1, PilotTags(FACTORY, "CLOUD", "666666666666"), 1000.0)
    attr = ec2.client().describe_instance_attribute(InstanceId=pilot.backend_id, Attribute="userData")
    assert "shutdown -h +1440" in base64.b64decode(attr["UserData"]["Value"]).decode()
    assert lc.TAG_FACTORY == "apf:factory"


def test_cleanup_reads_the_status_poll_and_calls_nothing_when_nothing_is_due(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    sub, status = plugins(queue(make_queue, ec2, url=ec2.proxy_url), factory(make_factory))
    snap = status.poll(1000.0)  # no VMs yet: an empty view
    before = ec2.requests()
    sub.cleanup(list(snap.pilots), 1000.0)
    sub.submit(2, PilotTags(FACTORY, "CLOUD", "777777777777"), 1000.0)
    snap = status.poll(1001.0)
    sub.cleanup(list(snap.pilots), 1001.0)
    sub.cleanup(list(snap.pilots), 1002.0)  # the same view again: nothing to redo
    after = ec2.requests()
    assert after.get("DescribeInstances", 0) - before.get("DescribeInstances", 0) == 1  # the poll's own
    assert after.get("RunInstances") == 1 and "TerminateInstances" not in after


def test_a_vm_cancelled_after_the_poll_keeps_its_reason(
    ec2: EC2Server, make_queue: Any, make_factory: Any
) -> None:
    import time

    ec2.control(boot_seconds=60)  # stays pending
    sub, status = plugins(queue(make_queue, ec2, provisioning_deadline="1"), factory(make_factory))
    (pilot,) = sub.submit(1, PilotTags(FACTORY, "CLOUD", "888888888888"), time.time())
    assert pilot.submitted_at is not None
    launched = pilot.submitted_at
    wait_for(lambda: time.time() > launched + 2, 10, "the deadline to pass")
    snap = status.poll(time.time())  # the view: pending past its deadline
    sub.cancel([pilot.backend_id])  # this cycle's scale-down, before the cleanup
    sub.cleanup(list(snap.pilots), time.time())
    (inst,) = ec2.instances()
    assert (inst["State"]["Name"], tags_of(inst)["apf:end"]) == ("terminated", "cancelled")
    # without the cancel the same view means: terminate as a failed provisioning
    (other,) = sub.submit(1, PilotTags(FACTORY, "CLOUD", "999999999999"), time.time())
    assert other.submitted_at is not None
    wait_for(lambda: time.time() > other.submitted_at + 2, 10, "the deadline to pass")  # type: ignore[operator]
    now = time.time()
    sub.cleanup(list(status.poll(now).pilots), now)
    ends = {i["InstanceId"]: tags_of(i).get("apf:end") for i in ec2.instances()}
    assert ends == {pilot.backend_id: "cancelled", other.backend_id: "provisioning-deadline"}
