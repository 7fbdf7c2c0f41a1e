"""The ARC backend against the real A-REX 6.17 (REST 1.0) with the Slurm LRMS on the session's
Slurm cluster: the API's real shapes, pilots that run and finish with the factory's counts
following, scale-down kills, SIGKILL between submission and record, a CE outage, a closed CE as a
capacity refusal, and a proxy renewed by the credential manager under running submissions.

CE state is read with plain ``requests`` and ``squeue`` (independent of the plugin under test)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from autopyfactory.config.loader import load_factory_config
from autopyfactory.credentials import CredentialManager, HealthState
from autopyfactory.credentials.proxy import has_fqan, inspect_proxy
from autopyfactory.engine.factory import Factory, status_path
from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import BackendError, PluginError
from autopyfactory.plugins.grid import xrsl
from autopyfactory.plugins.grid.arc import map_state
from autopyfactory.plugins.grid.arcrest import (
    ArcClient,
    ArcEndpoint,
    as_list,
    ce_url,
    delegation_id,
    is_capacity,
)
from autopyfactory.store.api import Store
from conftest import build_factory
from tests.helpers import factory_conf, wait_for, write

APF = str(Path(sys.executable).parent / "apf")
pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------------------------------------
# pure parts


def test_ce_urls_and_the_apis_shapes() -> None:
    assert ce_url("ce.example.org") == "https://ce.example.org:443/arex"
    assert ce_url("localhost:18443") == "https://localhost:18443/arex"
    assert ce_url("https://ce:8443/arex/") == "https://ce:8443/arex"
    for bad in ("http://ce/arex", "a b", "", "https://ce:x/arex"):
        with pytest.raises(ValueError):
            ce_url(bad)
    assert as_list({"job": {"id": "a"}}) == [{"id": "a"}]
    assert as_list({"job": [{"id": "a"}, {"id": "b"}]}) == [{"id": "a"}, {"id": "b"}]
    assert as_list({}) == [] and as_list(None) == [] and as_list({"job": None}) == []
    assert delegation_id("/arex/rest/1.0/delegations?action=new/6cce6304a3d1") == "6cce6304a3d1"
    with pytest.raises(ValueError):
        delegation_id("/arex/rest/1.0/delegations?action=new")
    assert is_capacity("500", "New job submission is not allowed")
    assert is_capacity("503", "") and not is_capacity("500", "nordugrid:xrsl parsing error")


def test_arc_states_map_to_pilot_states() -> None:
    assert map_state("ACCEPTING") is map_state("QUEUING") is PilotState.PENDING
    assert map_state("RUNNING") is map_state("FINISHING") is PilotState.RUNNING
    assert map_state("FINISHED", 0) is PilotState.DONE
    assert map_state("FINISHED", 3) is PilotState.FAILED
    assert map_state("FAILED") is PilotState.FAILED and map_state("KILLED") is PilotState.CANCELLED
    assert map_state("OTHER") is None  # transient: the poller keeps what it knew
    assert map_state("SOMETHING-NEW") is PilotState.UNKNOWN


def test_xrsl_quoting_and_multi_job() -> None:
    d = xrsl.Description().add("jobname", 'a "quoted" name').add("count", 8).add("inputfiles", ["w.sh", ""])
    assert d.render() == '&(jobname="a ""quoted"" name")(count=8)(inputfiles=("w.sh" ""))'
    two = xrsl.multi_job([d, xrsl.Description().add("jobname", "b")])
    assert two.startswith("+(&(jobname=") and two.endswith('(&(jobname="b"))')
    assert xrsl.attributes_in('(runtimeenvironment = "X")(queue="q")(count>1)') == {
        "runtimeenvironment",
        "queue",
        "count",
    }


def _arc_queue(tmp_path: Path, keys: dict[str, str]):  # type: ignore[no-untyped-def]
    from autopyfactory.config.ini import RawSection
    from autopyfactory.config.loader import build_queue

    pilot = write(tmp_path / "pilot.sh", "#!/bin/sh\necho pilot\n")
    section = {
        "enabled": "True", "batchsubmitplugin": "ARC", "batchstatusplugin": "ARC", "schedplugin": "Ready",
        "executable": str(pilot), "batchsubmit.arc.ce": "localhost:1", "batchsubmit.arc.proxy": "pilot",
        **keys,
    }  # fmt: skip
    queue, problems = build_queue("Q", RawSection(values=section, origin={}))
    assert queue is not None, problems
    factory = build_factory("pure", auth={"pilot": ("X509", {"x509.proxyfile": str(tmp_path / "p")})})
    return queue, factory


def test_descriptions_from_the_queue_keys(tmp_path: Path) -> None:
    from autopyfactory.plugins.grid.arc import ArcSubmit

    queue, factory = _arc_queue(
        tmp_path,
        {
            "executable.arguments": "-s SITE --label 'two words'",
            "batchsubmit.arc.queue": "grid", "batchsubmit.arc.walltime": "720", "batchsubmit.arc.memory": "2000",
            "batchsubmit.arc.cpus": "8", "batchsubmit.arc.runtimeenvironment": "APPS/HEP/ATLAS-SITE, ENV/PROXY",
            "batchsubmit.arc.environ": "RUCIO_ACCOUNT=pilot",
            "nordugridrsl.addenv.PILOT_TYPE": "PR", "nordugridrsl.gmlog": '"gmlog"',
            "nordugridrsl.nordugridrsladd": '(rerun = "2")',
        },
    )  # fmt: skip
    sub = ArcSubmit(queue, queue.batchsubmit.options, factory)  # type: ignore[arg-type]
    d0, d1 = sub.descriptions(2, PilotTags("pure", "Q", "i1"), 0.0, "DELEG")
    text = d0.render()
    assert '(jobname="apf:pure:Q:i1")' in text and '(executable="pilot.sh")' in text
    assert '(arguments="-s" "SITE" "--label" "two words")' in text
    assert '(inputfiles=("pilot.sh" ""))' in text and '(stdout="i1.0.out")' in text
    assert '(queue="grid")(walltime=720)(memory=2000)(count=8)(countpernode=8)' in text
    assert '(runtimeenvironment="APPS/HEP/ATLAS-SITE")(runtimeenvironment="ENV/PROXY")' in text
    assert (
        '("RUCIO_ACCOUNT" "pilot")' in text and '("PILOT_TYPE" "PR")' in text and '("APFCID" "i1.0")' in text
    )
    assert text.endswith('(delegationid="DELEG")(gmlog = "gmlog")(rerun = "2")')
    assert '("APFCID" "i1.1")' in d1.render()

    queue, factory = _arc_queue(tmp_path, {"nordugridrsl.jobname": '"mine"'})
    with pytest.raises(PluginError, match=r"nordugridrsl\.\* sets jobname"):
        ArcSubmit(queue, queue.batchsubmit.options, factory)  # type: ignore[arg-type]
    queue, factory = _arc_queue(tmp_path, {"batchsubmit.arc.queue": "a", "nordugridrsl.queue": '"b"'})
    with pytest.raises(PluginError, match="sets queue"):
        ArcSubmit(queue, queue.batchsubmit.options, factory)  # type: ignore[arg-type]
    queue, factory = _arc_queue(tmp_path, {"batchsubmit.arc.proxy": "nope"})
    with pytest.raises(PluginError, match="none of 'nope' is an X509 profile"):
        ArcSubmit(queue, queue.batchsubmit.options, factory)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# helpers for the real CE


@pytest.fixture
def fid(arc_ce) -> Iterator[str]:  # type: ignore[no-untyped-def]
    factory_id = f"a{uuid.uuid4().hex[:8]}"
    yield factory_id
    ce_wipe(arc_ce, factory_id)


@pytest.fixture(scope="module")
def user_proxy(grid_ca, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return grid_ca.make_proxy(tmp_path_factory.mktemp("proxy") / "user.pem", minutes=600)


def ce_session(grid_ca, proxy: Path) -> requests.Session:  # type: ignore[no-untyped-def]
    s = requests.Session()
    s.trust_env = False
    s.cert = str(proxy)
    s.verify = str(grid_ca.cadir)
    s.headers["Accept"] = "application/json"
    return s


_CHECK: dict[str, object] = {}


def ce_jobs(arc_ce, fid: str) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    """Our factory's jobs at the CE: id -> {name, state}, read with plain REST calls."""
    s: requests.Session = _CHECK["session"]  # type: ignore[assignment]
    listing = s.get(f"{arc_ce.rest}/jobs")
    ids = [j["id"] for j in as_list(listing.json() if listing.content.strip() else {})]
    if not ids:
        return {}
    body = {"job": [{"id": i} for i in ids]}
    infos = as_list(s.post(f"{arc_ce.rest}/jobs", params={"action": "info"}, json=body).json())
    out = {}
    for entry in infos:
        activity = (entry.get("info_document") or {}).get("ComputingActivity") or {}
        name = str(activity.get("Name", ""))
        if not name:  # not processed by A-REX yet: its stored description has the name
            text = s.get(f"{arc_ce.rest}/jobs/{entry['id']}/diagnose/description").text
            match = re.search(r'jobname\s*=\s*"([^"]+)"', text)
            name = match.group(1) if match else ""  # no name at all: a job being cleaned
        if name.startswith(f"apf:{fid}:"):
            states = [x for x in activity.get("State", []) if str(x).startswith("arcrest:")]
            out[entry["id"]] = {"name": name, "state": states[0].split(":")[1] if states else "?"}
    return out


def ce_wipe(arc_ce, fid: str) -> None:  # type: ignore[no-untyped-def]
    if "session" not in _CHECK:
        return
    s: requests.Session = _CHECK["session"]  # type: ignore[assignment]
    ids = list(ce_jobs(arc_ce, fid))
    if ids:
        body = {"job": [{"id": i} for i in ids]}
        s.post(f"{arc_ce.rest}/jobs", params={"action": "kill"}, json=body)
        s.post(f"{arc_ce.rest}/jobs", params={"action": "clean"}, json=body)


@pytest.fixture(autouse=True)
def _check_session(request) -> None:  # type: ignore[no-untyped-def]
    if "arc_ce" in request.fixturenames and "session" not in _CHECK:
        grid_ca = request.getfixturevalue("grid_ca")
        proxy = request.getfixturevalue("user_proxy")
        _CHECK["session"] = ce_session(grid_ca, proxy)


def slurm_jobs(arc_ce) -> list[str]:  # type: ignore[no-untyped-def]
    """Slurm jobs of this CE (the mapped user's jobs working in its session directory)."""
    out = arc_ce.slurm.run("squeue", "-h", "-u", arc_ce.mapped_user, "-o", "%A|%T|%Z").stdout.splitlines()
    return [line for line in out if f"|{arc_ce.base}/session" in line]


def arc_conf(
    tmp: Path, fid: str, arc_ce, grid_ca, proxy: Path, *, activated: str, seconds: int = 5,
    extra_queue: str = "", extra_auth: str = "",
) -> Path:  # type: ignore[no-untyped-def]  # fmt: skip
    write(
        tmp / "pilot.sh",
        '#!/bin/sh\necho "pilot $APFCID on $(hostname) proxy=${X509_USER_PROXY:-none}"\nsleep "$1"\n',
    )
    write(
        tmp / "auth.conf",
        f"""
        [pilot]
        plugin = X509
        x509.proxyfile = {proxy}
        x509.cadir = {grid_ca.cadir}
        {extra_auth}
        """,
    )
    return factory_conf(
        tmp,
        f"""
        [DEFAULT]
        enabled = True
        apfqueue.sleep = 0.5
        wmsstatusplugin = Sim
        wmsstatus.sim.consume = True
        batchstatusplugin = ARC
        batchsubmitplugin = ARC
        executable = {tmp / "pilot.sh"}
        executable.arguments = {seconds}
        schedplugin = Ready, MaxPerCycle
        sched.maxpercycle.maximum = 200
        batchsubmit.arc.ce = {arc_ce.url}
        batchsubmit.arc.proxy = pilot
        batchsubmit.arc.queue = {arc_ce.queue}
        batchsubmit.arc.walltime = 10
        [GRID]
        wmsqueue = GRID
        {activated}
        {extra_queue}
        """,
        extra=f"authConf = auth.conf\nbaseLogDir = {tmp / 'logs'}\nbatchstatus.arc.sleep = 1\n",
        factory_id=fid,
    )


def states(store: Store, fid: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in store.pilots(fid, "GRID"):
        out[p["state"]] = out.get(p["state"], 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# the client against the real API


def test_the_real_apis_shapes_and_delegation(arc_ce, grid_ca, user_proxy, fid: str) -> None:  # type: ignore[no-untyped-def]
    client = ArcClient(ArcEndpoint(arc_ce.url, str(user_proxy), str(grid_ca.cadir), 30.0))
    ident = client.delegation()
    assert ident in [
        d["id"] for d in as_list(_CHECK["session"].get(f"{arc_ce.rest}/delegations").json(), "delegation")
    ]  # type: ignore[attr-defined]
    assert client.delegation() == ident  # reused while the proxy is unchanged
    job = (
        xrsl.Description()
        .add("jobname", f"apf:{fid}:shape:i")
        .add("executable", "/bin/true")
        .add("queue", arc_ce.queue)
    )
    (one,) = client.submit(job.render())  # one job: an object in the answer
    assert one.ok and one.code == "201" and one.job_id
    several = client.submit(xrsl.multi_job([job, job]))  # several: a list
    assert [r.code for r in several] == ["201", "201"]
    (broken,) = client.submit("&(executable=")  # HTTP 201 with a per-job 500
    assert not broken.ok and broken.code == "500" and "xrsl" in broken.reason.lower()
    ids = [one.job_id, *(r.job_id for r in several)]
    statuses = client.action("status", [*ids, "doesnotexist"])  # type: ignore[list-item]
    assert {r.job_id: r.code for r in statuses}["doesnotexist"] == "404"
    assert all(r.state for r in statuses if r.job_id in ids)
    # without Content-Type: application/json A-REX answers 201 with an empty body
    raw = _CHECK["session"].post(f"{arc_ce.rest}/jobs", params={"action": "status"},  # type: ignore[attr-defined]
                                 data=json.dumps({"job": [{"id": ids[0]}]}))  # fmt: skip
    assert raw.status_code == 201 and not raw.content.strip()
    assert len(ce_jobs(arc_ce, fid)) == 3


# ---------------------------------------------------------------------------------------------
# the engine with the real CE


def test_pilots_run_through_arex_in_slurm_and_the_counts_follow(
    tmp_path: Path, fid: str, arc_ce, grid_ca, user_proxy
) -> None:  # type: ignore[no-untyped-def]
    conf = arc_conf(tmp_path, fid, arc_ce, grid_ca, user_proxy, activated="wmsstatus.sim.activated = 3")
    config = load_factory_config(str(conf))
    factory = Factory(config)
    store = Store(config.settings.database_url())
    try:
        plans = factory.step(poll_all=True)
        assert plans[0].decision.n == 3
        factory.flush()
        assert len(store.pilots(fid)) == 3
        jobs = ce_jobs(arc_ce, fid)
        assert len(jobs) == 3 and {j["name"] for j in jobs.values()} == {
            f"apf:{fid}:GRID:{store.intents(fid)[0]['id']}"
        }
        seen_in_slurm = wait_for(lambda: slurm_jobs(arc_ce), 120, "the pilots in Slurm")
        assert seen_in_slurm

        def finished() -> bool:
            factory.step(poll_all=True)
            factory.flush()
            return states(store, fid).get("done", 0) >= 3

        wait_for(finished, 120, "three pilots to run and finish", interval=1.0)
        done = [p for p in store.pilots(fid, "GRID") if p["state"] == "done"]
        assert all(p["exit_code"] == 0 for p in done)
        # the first three were cleaned on the CE after their output was fetched into the log tree
        first = {p["backend_id"] for p in done}
        wait_for(
            lambda: factory.step(poll_all=True) is not None and not first & set(ce_jobs(arc_ce, fid)),
            60,
            "clean",
        )
        outputs = list((tmp_path / "logs").glob("*/GRID/*.out"))
        assert outputs and "pilot " in outputs[0].read_text() and "user.proxy" in outputs[0].read_text()
    finally:
        factory.shutdown()


def test_scale_down_kills_the_pilots_and_nothing_is_left_in_slurm(
    tmp_path: Path, fid: str, arc_ce, grid_ca, user_proxy
) -> None:  # type: ignore[no-untyped-def]
    """The operator lowers the queue's target (a reload): the pilots are killed through the CE,
    which cancels them in Slurm."""

    def conf(keep: int) -> Path:
        extra = (
            "schedplugin = KeepNRunning\n"
            f"sched.keepnrunning.keep_running = {keep}\n"
            "batchsubmit.arc.overlay.peaceful = False\nbatchsubmit.arc.overlay.kill_running = True\n"
        )
        return arc_conf(
            tmp_path, fid, arc_ce, grid_ca, user_proxy, activated="wmsstatus.sim.activated = 0",
            seconds=600, extra_queue=extra,
        )  # fmt: skip

    config = load_factory_config(str(conf(4)))
    factory = Factory(config)
    store = Store(config.settings.database_url())
    try:
        factory.step(poll_all=True)
        wait_for(lambda: len(slurm_jobs(arc_ce)) == 4, 120, "four pilots in Slurm")
        factory.reload(load_factory_config(str(conf(0))))

        def all_gone() -> bool:
            factory.step(poll_all=True)
            factory.flush()
            return not slurm_jobs(arc_ce) and states(store, fid).get("cancelled", 0) == 4

        wait_for(all_gone, 120, "the scale-down to kill every pilot", interval=1.0)
        kinds = {e["kind"] for e in store.events(fid)}
        assert kinds & {"cancel", "retire"}
        wait_for(lambda: not ce_jobs(arc_ce, fid), 60, "the killed pilots to be cleaned on the CE")
    finally:
        factory.shutdown()


def test_sigkill_between_submission_and_record_then_restart_adopts(
    tmp_path: Path, fid: str, arc_ce, grid_ca, user_proxy
) -> None:  # type: ignore[no-untyped-def]
    conf = arc_conf(
        tmp_path, fid, arc_ce, grid_ca, user_proxy, activated="wmsstatus.sim.activated = 3", seconds=600
    )
    proc = subprocess.run(
        [APF, "run", "--conf", str(conf), "--no-table"],
        env={**os.environ, "APF_FAULT": "crash-after-submit"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 137, proc.stderr
    store = Store(load_factory_config(str(conf)).settings.database_url())
    # the intent is open; the status poller may have seen (and the store recorded) some of the new
    # jobs while the submission was still uploading the wrapper
    assert [i["status"] for i in store.intents(fid)] == ["open"] and len(store.pilots(fid)) <= 3
    assert len(ce_jobs(arc_ce, fid)) == 3  # at the CE, unknown to the store
    out = subprocess.run(
        [APF, "run", "--conf", str(conf), "--once", "--no-table"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert [(i["status"], i["submitted"]) for i in store.intents(fid)] == [("adopted", 3)]
    assert len(ce_jobs(arc_ce, fid)) == 3  # nothing submitted twice
    assert len(store.pilots(fid)) == 3


def test_ce_down_backs_off_and_recovers(
    tmp_path: Path, fid: str, arc_ce, arc_control, grid_ca, user_proxy
) -> None:  # type: ignore[no-untyped-def]
    conf = arc_conf(
        tmp_path, fid, arc_ce, grid_ca, user_proxy, activated="wmsstatus.sim.activated = 2", seconds=600
    )
    config = load_factory_config(str(conf))
    store = Store(config.settings.database_url())
    daemon = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table", "--log", str(tmp_path / "apf.log")]
    )
    try:
        wait_for(lambda: len(ce_jobs(arc_ce, fid)) == 2, 120, "two pilots at the CE")
        arc_control.stop()
        log = tmp_path / "apf.log"

        def failed_polls() -> int:
            return sum(
                "poll failed" in line and "cannot connect" in line for line in log.read_text().splitlines()
            )

        wait_for(lambda: failed_polls() >= 3, 60, "the ARC poller to fail and back off")
        assert daemon.poll() is None
        arc_control.start()
        restarted = time.time()

        def recovered() -> bool:
            path = status_path(config)
            doc = json.loads(path.read_text()) if path.exists() else {}
            pollers = doc.get("pollers", {})
            return doc.get("time", 0) > restarted and all(v == "ok" for k, v in pollers.items() if "ARC" in k)

        wait_for(recovered, 120, "the ARC poller to recover by itself")
        wait_for(
            lambda: states(store, fid).get("running", 0) + states(store, fid).get("pending", 0) == 2,
            60,
            "counts",
        )
        assert len(ce_jobs(arc_ce, fid)) == 2  # the outage made no duplicates
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)


def test_a_closed_ce_is_a_capacity_refusal(
    tmp_path: Path, fid: str, arc_ce, arc_control, grid_ca, user_proxy
) -> None:  # type: ignore[no-untyped-def]
    from autopyfactory.plugins.grid.arc import ArcSubmit

    conf = arc_conf(tmp_path, fid, arc_ce, grid_ca, user_proxy, activated="wmsstatus.sim.activated = 2")
    config = load_factory_config(str(conf))
    queue = config.queues["GRID"]
    factory = build_factory(
        fid, auth={"pilot": ("X509", {"x509.proxyfile": str(user_proxy), "x509.cadir": str(grid_ca.cadir)})}
    )
    sub = ArcSubmit(queue, queue.batchsubmit.options, factory)  # type: ignore[arg-type]
    arc_control.close()
    try:
        with pytest.raises(BackendError) as refused:
            sub.submit(2, PilotTags(fid, "GRID", "closed"), time.time())
        assert refused.value.capacity and "not allowed" in refused.value.message
    finally:
        arc_control.open()
    assert len(sub.submit(1, PilotTags(fid, "GRID", "open"), time.time())) == 1


@pytest.mark.timeout(300)
def test_renewed_voms_proxy_keeps_pilots_flowing_and_the_delegation_is_renewed(
    tmp_path: Path, fid: str, arc_ce, grid_ca, voms_server
) -> None:  # type: ignore[no-untyped-def]
    """The credential manager renews a short VOMS proxy; submissions go on across renewals with
    the same delegation, renewed in place; the CE's copy of the delegated proxy follows."""
    from autopyfactory.plugins.grid.arc import ArcSubmit
    from autopyfactory.plugins.grid.arcrest import client_for

    proxy = tmp_path / "pilot.pem"
    voms = (
        f"x509.renew = True\nx509.lifetime = 60\nx509.minlife = 45\nx509.checktime = 5\n"
        f"x509.vorole = {voms_server.vorole}\nx509.usercert = {grid_ca.usercert}\nx509.userkey = {grid_ca.userkey}\n"
        f"x509.vomses = {voms_server.vomses}\nx509.vomsdir = {voms_server.vomsdir}\n"
    )
    conf = arc_conf(
        tmp_path, fid, arc_ce, grid_ca, proxy, activated="wmsstatus.sim.activated = 1", extra_auth=voms
    )
    config = load_factory_config(str(conf))
    manager = CredentialManager(config.auth, factory_id=fid, state_dir=tmp_path / "state")
    manager.start()
    try:
        wait_for(lambda: manager.health("pilot").state is HealthState.OK, 60, "the first VOMS proxy")
        queue = config.queues["GRID"]
        factory = build_factory(
            fid, auth={"pilot": ("X509", {"x509.proxyfile": str(proxy), "x509.cadir": str(grid_ca.cadir)})}
        )
        factory.state_dir = tmp_path / "state"  # type: ignore[attr-defined]
        sub = ArcSubmit(queue, queue.batchsubmit.options, factory)  # type: ignore[arg-type]
        client = client_for(sub.endpoint, factory.state_dir)  # type: ignore[attr-defined]
        serials, delegations, submitted = set(), set(), 0
        first_end = inspect_proxy(proxy).not_after
        deadline = time.monotonic() + 90
        while len(serials) < 3 and time.monotonic() < deadline:
            info = inspect_proxy(proxy)
            serials.add(info.serial)
            assert has_fqan(info, voms_server.vorole)
            pilots = sub.submit(1, PilotTags(fid, "GRID", f"r{len(serials)}"), time.time())
            assert len(pilots) == 1
            submitted += 1
            delegations.add(client.delegation())
            time.sleep(2)
        assert len(serials) >= 3, "expected two renewals"
        assert len(delegations) == 1  # renewed in place, never a new one per renewal
        # A-REX's copy of the delegated credential now outlives the first proxy
        (ident,) = delegations
        stored = arc_ce.base / "control" / "delegations" / ident[0:3] / ident[3:6] / ident[6:9] / ident[9:]
        delegated = inspect_proxy(stored)
        assert delegated.not_after > first_end and delegated.identity == grid_ca.user_dn
        assert has_fqan(delegated, voms_server.vorole)
        assert submitted >= 3 and len(ce_jobs(arc_ce, fid)) == submitted
        assert manager.gate(["pilot"]) is None
    finally:
        manager.stop()


def test_a_queue_with_a_bad_proxy_key_does_not_stop_the_factory(tmp_path: Path) -> None:
    """The queue cannot act and its poller says why; the factory (and other queues) start."""
    pilot = write(tmp_path / "pilot.sh", "#!/bin/sh\n")
    conf = factory_conf(
        tmp_path,
        f"""
        [GRID]
        enabled = True
        wmsqueue = GRID
        wmsstatusplugin = Sim
        wmsstatus.sim.activated = 1
        batchstatusplugin = ARC
        batchsubmitplugin = ARC
        executable = {pilot}
        schedplugin = Ready
        batchsubmit.arc.ce = localhost:1
        batchsubmit.arc.proxy = undefined-profile
        """,
    )
    factory = Factory(load_factory_config(str(conf)))
    try:
        factory.step(poll_all=True)
        runtime = factory.queues["GRID"]
        assert runtime.submitter is None and "undefined-profile" in (runtime.error or "")
        assert "undefined-profile" in (runtime.batch_poller.status.error or "")
    finally:
        factory.shutdown()
