"""The Script backend: real scripts in a temp dir speaking the JSON contract, run locally and over the
real sshd as another user; tags, idempotent create, partial fulfilment, capacity, retire, errors; a
SIGKILL between the create and the record, then a restart that adopts (`apf run`); leaks adopted or terminated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autopyfactory.config.loader import load_factory_config
from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import BackendError
from autopyfactory.plugins.cloud.script import ScriptStatus, ScriptSubmit
from autopyfactory.store.api import Store
from tests.helpers import factory_conf, write

FACTORY = "cloudtest"

# A fake cloud: one JSON state file, the four actions of the contract (docs/cloud.md).
FAKECLOUD = r"""#!/usr/bin/env python3
import fcntl, json, os, pwd, sys, time, uuid

state_path = sys.argv[1]
req = json.load(sys.stdin)
with open(state_path + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with open(state_path) as fh:
            state = json.load(fh)
    except FileNotFoundError:
        state = {"instances": {}, "tokens": {}, "limit": None}
    insts, action = state["instances"], req["action"]
    out = {}
    if req.get("version") != 1 or req.get("factory_id") is None:
        print(json.dumps({"error": "bad request"})); sys.exit(2)
    if action == "create":
        state.setdefault("creates", []).append(req["intent_id"])  # every create call, for the tests
        token = req["client_token"]
        if token not in state["tokens"]:
            live = sum(1 for i in insts.values() if i["state"] != "terminated")
            room = req["count"] if state["limit"] is None else min(req["count"], state["limit"] - live)
            if room < req["min_count"]:
                print(json.dumps({"error": f"no capacity: {live} of {state['limit']} in use", "capacity": True}))
                sys.exit(3)
            ids = []
            for _ in range(room):
                iid = "vm-" + uuid.uuid4().hex[:10]
                insts[iid] = {"id": iid, "state": "running", "tags": req["tags"], "launched_at": time.time(),
                              "user_data": req["user_data"], "created_by": pwd.getpwuid(os.getuid()).pw_name}
                ids.append(iid)
            state["tokens"][token] = ids
        out = {"instances": [insts[i] for i in state["tokens"][token]]}
    elif action == "status":
        want = req["tags"]
        out = {"instances": [i for i in insts.values() if all(i["tags"].get(k) == v for k, v in want.items())]}
    elif action in ("retire", "terminate"):
        for iid in req["ids"]:
            if iid in insts:
                insts[iid]["tags"].update(req["tags"])
                if action == "terminate":
                    insts[iid]["state"] = "terminated"
    else:
        print(json.dumps({"error": "unknown action " + action})); sys.exit(2)
    tmp = state_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, state_path)
print(json.dumps(out))
"""


@pytest.fixture
def cloud(tmp_path: Path) -> Path:
    """The fake cloud's directory: fakecloud.py and its state file."""
    d = tmp_path / "cloud"
    write(d / "fakecloud.py", FAKECLOUD).chmod(0o755)
    return d


def state(d: Path) -> dict[str, Any]:
    return json.loads((d / "state.json").read_text())


def set_limit(d: Path, limit: int) -> None:
    s = state(d) if (d / "state.json").exists() else {"instances": {}, "tokens": {}}
    s["limit"] = limit
    (d / "state.json").write_text(json.dumps(s))


def queue(make_queue: Any, d: Path, **keys: str) -> Any:
    cmd = f"python3 {d / 'fakecloud.py'} {d / 'state.json'}"
    base = {f"batchsubmit.script.{a}": cmd for a in ("create", "status", "retire", "terminate")}
    keys = {k if k.startswith("batch") else f"batchsubmit.script.{k}": v for k, v in keys.items()}
    return make_queue("SQ", {**base, **keys}, submit="Script")


def plugins(q: Any, ctx: Any) -> tuple[ScriptSubmit, ScriptStatus]:
    sub = ScriptSubmit(q, q.batchsubmit.options, ctx)
    status = ScriptStatus(ScriptStatus.endpoint(q, ctx), ctx)
    status.register(q)
    return sub, status


def test_create_status_retire_terminate_locally(cloud: Path, make_queue: Any, make_factory: Any) -> None:
    sub, status = plugins(queue(make_queue, cloud, **{"retire.grace": "0"}), make_factory(FACTORY))
    tags = PilotTags(FACTORY, "SQ", "0123456789ab")
    pilots = sub.submit(3, tags, 1000.0)
    assert len(pilots) == 3
    insts = state(cloud)["instances"]
    assert {i["tags"]["apf:intent"] for i in insts.values()} == {"0123456789ab"}
    assert all("autopyfactory VM of factory cloudtest, queue SQ" in i["user_data"] for i in insts.values())
    # the same intent again (a retry): the script honours the client token, nothing new
    assert [p.backend_id for p in sub.submit(3, tags, 1000.0)] == [p.backend_id for p in pilots]
    assert len(state(cloud)["instances"]) == 3
    a, b, c = (p.backend_id for p in pilots)
    sub.cancel([a])
    sub.retire([b])
    assert state(cloud)["instances"][b]["tags"]["apf:retire"].isdigit()
    snap = {p.backend_id: p.state for p in status.poll(1000.0).pilots}
    assert snap == {a: PilotState.CANCELLED, b: PilotState.RETIRING, c: PilotState.RUNNING}
    now = time.time() + 1  # no pool: a retiring VM ends at retire.grace (0)
    sub.cleanup(list(status.poll(now).pilots), now)
    assert {i["id"]: i["state"] for i in state(cloud)["instances"].values()} == {
        a: "terminated",
        b: "terminated",
        c: "running",
    }


def test_partial_fulfilment_and_capacity(cloud: Path, make_queue: Any, make_factory: Any) -> None:
    set_limit(cloud, 2)
    sub, _ = plugins(queue(make_queue, cloud), make_factory(FACTORY))
    assert len(sub.submit(5, PilotTags(FACTORY, "SQ", "aaaaaaaaaaaa"), 1000.0)) == 2
    with pytest.raises(BackendError) as info:
        sub.submit(1, PilotTags(FACTORY, "SQ", "bbbbbbbbbbbb"), 1000.0)
    assert info.value.capacity and "no capacity: 2 of 2 in use" in info.value.message


def test_bad_scripts_are_clear_errors(
    cloud: Path, tmp_path: Path, make_queue: Any, make_factory: Any
) -> None:
    noisy = write(tmp_path / "noisy.sh", "#!/bin/sh\necho 'hello, I am not JSON'\n")
    failing = write(
        tmp_path / "failing.sh", "#!/bin/sh\necho 'cannot reach the IPMI controller' >&2\nexit 4\n"
    )
    noinstances = write(tmp_path / "noinst.sh", '#!/bin/sh\necho \'{"instances": [{"state": "running"}]}\'\n')
    for script in (noisy, failing, noinstances):
        script.chmod(0o755)
    ctx = make_factory(FACTORY)
    cases = [
        (noisy, "create command .*noisy.sh printed no JSON: 'hello, I am not JSON'"),
        (failing, r"create command .*failing.sh failed \(exit 4\): cannot reach the IPMI controller"),
        (noinstances, "create command: an instance needs a non-empty string 'id'"),
        (tmp_path / "missing.sh", "missing.sh' not found"),
    ]
    for script, message in cases:
        sub, _ = plugins(queue(make_queue, cloud, create=str(script)), ctx)
        with pytest.raises(BackendError, match=message) as info:
            sub.submit(1, PilotTags(FACTORY, "SQ", "cccccccccccc"), 1000.0)
        assert not info.value.capacity


def test_over_ssh_as_another_user(cloud: Path, ssh_target: Any, make_queue: Any, make_factory: Any) -> None:
    remote = ssh_target.workdir / f"fakecloud-{cloud.parent.name}"
    shutil.copytree(cloud, remote)
    shutil.chown(remote, user=ssh_target.user)
    ctx = make_factory(
        FACTORY,
        auth={
            "key": (
                "SSH",
                {
                    "ssh.privatekeyfile": str(ssh_target.key),
                    "ssh.knownhostsfile": str(ssh_target.known_hosts),
                },
            )
        },
    )
    q = queue(
        make_queue,
        remote,
        host=ssh_target.host,
        port=str(ssh_target.port),
        user=ssh_target.user,
        authprofile="key",
    )
    sub, status = plugins(q, ctx)
    assert sub.target() == f"script:python3@{ssh_target.user}@{ssh_target.host}:{ssh_target.port}"
    pilots = sub.submit(2, PilotTags(FACTORY, "SQ", "dddddddddddd"), 1000.0)
    assert {i["created_by"] for i in state(remote)["instances"].values()} == {ssh_target.user}
    assert {p.backend_id for p in status.poll(1000.0).pilots} == {p.backend_id for p in pilots}
    sub.retire([pilots[0].backend_id], kill=True)
    assert {p.backend_id: p.state for p in status.poll(1001.0).pilots}[
        pilots[0].backend_id
    ] is PilotState.DONE
    shutil.rmtree(remote)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_between_create_and_the_record_then_restart_adopts(cloud: Path, tmp_path: Path) -> None:
    apf = str(Path(sys.executable).parent / "apf")
    cmd = f"python3 {cloud / 'fakecloud.py'} {cloud / 'state.json'}"
    path = factory_conf(
        tmp_path,
        f"""
        [SQ]
        enabled = True
        apfqueue.sleep = 0.5
        wmsqueue = SQ
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = 3
        wmsstatus.sim.consume = True
        schedplugin = Ready
        batchsubmitplugin = Script
        batchstatusplugin = Script
        batchsubmit.script.create = {cmd}
        batchsubmit.script.status = {cmd}
        batchsubmit.script.retire = {cmd}
        batchsubmit.script.terminate = {cmd}
        """,
        # no status poll between the create and the crash (it would adopt the VMs before the crash)
        extra="batchstatus.script.sleep = 300\n",
        factory_id=FACTORY,
    )
    crashed = subprocess.run(
        [apf, "run", "--conf", str(path), "--no-table", "--log", str(tmp_path / "apf.log")],
        env={**os.environ, "APF_FAULT": "crash-after-submit"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr  # died right after the create
    store = Store(load_factory_config(str(path)).settings.database_url())
    (intent,) = store.intents(FACTORY)
    assert intent["status"] == "open" and store.pilots(FACTORY) == []  # the crash came before the record
    created = state(cloud)
    assert created["creates"] == [intent["id"]] and len(created["instances"]) == 3
    out = subprocess.run(
        [apf, "run", "--conf", str(path), "--once", "--no-table"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # adopted by their tags; the create command was not run again (not even with the same token)
    after = state(cloud)
    assert after["creates"] == [intent["id"]] and after["instances"].keys() == created["instances"].keys()
    assert [(i["status"], i["submitted"]) for i in store.intents(FACTORY)] == [("adopted", 3)]
    assert sorted(p["backend_id"] for p in store.pilots(FACTORY)) == sorted(created["instances"])
    assert {i["state"] for i in after["instances"].values()} == {"running"}


def test_leaks_are_adopted_or_terminated_after_the_grace(
    cloud: Path, make_queue: Any, make_factory: Any
) -> None:
    q = queue(make_queue, cloud, **{"batchstatus.script.leak_grace": "60"})
    sub, status = plugins(q, make_factory(FACTORY))
    (known,) = (p.backend_id for p in sub.submit(1, PilotTags(FACTORY, "SQ", "eeeeeeeeeeee"), 1000.0))
    # two VMs carrying this factory's tags, made by the site's own command behind the factory's back
    cmd = [sys.executable, str(cloud / "fakecloud.py"), str(cloud / "state.json")]

    def behind_our_back(queue_name: str) -> str:
        tags = {"apf:factory": FACTORY, "apf:queue": queue_name, "apf:intent": "000000000000"}
        req = {"version": 1, "action": "create", "factory_id": FACTORY, "count": 1, "min_count": 1,
               "intent_id": "000000000000", "tags": tags, "user_data": "", "client_token": queue_name}  # fmt: skip
        out = subprocess.run(cmd, input=json.dumps(req), capture_output=True, text=True, check=True)
        return str(json.loads(out.stdout)["instances"][0]["id"])

    adoptable, orphan = behind_our_back("SQ"), behind_our_back("REMOVED_QUEUE")
    status.poll(1000.0)
    report = status.reconcile_leaks({known}, set(), {"SQ"}, now=1000.0)
    assert [p.backend_id for p in report.adopt] == [adoptable] and report.adopt[0].queue == "SQ"
    assert report.terminate == () and report.waiting == 1
    report = status.reconcile_leaks({known, adoptable}, set(), {"SQ"}, now=1061.0)
    assert report.terminate == (orphan,)
    status.terminate(report.terminate)
    insts = state(cloud)["instances"]
    assert (insts[orphan]["state"], insts[orphan]["tags"].get("apf:end")) == ("terminated", "leaked")
    assert insts[adoptable]["state"] == insts[known]["state"] == "running"
    assert status.counters() == {"leaked": 1, "adopted": 1, "terminated_leaks": 1, "interrupted": 0}
