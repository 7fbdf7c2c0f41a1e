"""ARC CE benchmark against the real A-REX 6.17 (REST 1.0) with the Slurm LRMS.

In one run (components started under ``APF_BENCH_BASE``, default /tmp/apf-bench-arc, and stopped
again when this run started them: a test CA, a Slurm cluster of 3 nodes x 40 fake CPUs, A-REX):
  * factory: 100 pilots in one cycle through ``ArcSubmit.submit`` (one delegation, one multi-job
    xRSL request, the pilot wrapper uploaded into each job) and the time until A-REX reports
    every one of them RUNNING (polled with ``ArcStatus.poll``);
  * loop: 100 separate ``arcsub`` calls with the same description and wrapper, and the time
    until all of those run;
  * status: 1,000 jobs at the CE (waiting for an input that is never uploaded, so they cost the
    CE nothing); one ``action=status`` request for all of them (median of 5) against 1,000
    single-job status requests, and the plugin's steady-state poll.
Everything submitted is killed and cleaned at the end.

Prints as its LAST line:
  submit_vs_arcsub=<loop/factory submission> running_vs_arcsub=<loop/factory time to all running>
  status_1000_s=<one request> status_vs_single=<1,000 single requests / one request> poll_1000_s=<plugin>
Goals (issue 10): submit_vs_arcsub >= 10, status_1000_s < 2, status_vs_single >= 20.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autopyfactory.config.ini import RawSection
from autopyfactory.config.loader import build_queue
from autopyfactory.config.models import AuthProfile, FactorySettings
from autopyfactory.config.validate import options_from_keys
from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins import base as plugins
from autopyfactory.plugins.base import FactoryContext
from autopyfactory.plugins.grid import xrsl
from autopyfactory.plugins.grid.arc import ArcStatus, ArcSubmit

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = REPO / "scripts" / "components"


def log(msg: str) -> None:
    print(msg, flush=True)


def script(name: str, action: str, env: dict[str, str]) -> dict[str, str]:
    proc = subprocess.run(
        ["bash", str(COMPONENTS / name), action], env={**os.environ, **env}, capture_output=True, text=True
    )
    if proc.returncode != 0 and action != "status":
        sys.exit(f"{name} {action} failed:\n{proc.stdout}\n{proc.stderr}")
    out = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = value
    out["_rc"] = str(proc.returncode)
    return out


def ensure(name: str, env: dict[str, str]) -> tuple[dict[str, str], bool]:
    started = False
    if script(name, "status", env)["_rc"] != "0":
        t0 = time.perf_counter()
        script(name, "start", env)
        log(f"started {name} in {time.perf_counter() - t0:.1f} s")
        started = True
    return script(name, "env", env), started


def wait_running(status: ArcStatus, ids: set[str], timeout: float) -> float:
    """Seconds until every job in ``ids`` is running (or already ended)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        snap = status.poll(time.time())
        states = {p.backend_id: p.state for p in snap.pilots if p.backend_id in ids}
        if len(states) == len(ids) and all(s is PilotState.RUNNING or s.final for s in states.values()):
            return time.perf_counter() - t0
        time.sleep(1.0)
    sys.exit(f"not all {len(ids)} jobs were running after {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=100, help="pilots per submission test")
    parser.add_argument("--status-jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = Path(os.environ.get("APF_BENCH_BASE", "/tmp/apf-bench-arc"))
    slurm_env = {"APF_SLURM_BASE": str(base / "slurm"), "APF_SLURM_ACCOUNTING": "0", "APF_SLURM_CPUS": "40",
                 "APF_SLURM_CLUSTER": "apfbench", "APF_SLURM_MEMORY": "200000"}  # fmt: skip
    slurm, slurm_started = ensure("slurm.sh", slurm_env)
    grid_env = {
        "APF_GRID_BASE": str(base / "grid"),
        "SLURM_CONF": slurm["SLURM_CONF"],
        "APF_ARC_LRMS": "slurm",
    }
    ca, _ = ensure("grid-ca.sh", grid_env)
    ce, ce_started = ensure("arc.sh", grid_env)
    tmp = Path(tempfile.mkdtemp(prefix="apf-bench-arc-"))
    os.environ["X509_CERT_DIR"] = ca["APF_GRID_CADIR"]
    proxy = tmp / "proxy.pem"
    subprocess.run(
        ["grid-proxy-init", "-cert", ca["APF_GRID_USERCERT"], "-key", ca["APF_GRID_USERKEY"], "-out", str(proxy),
         "-valid", "12:00"], capture_output=True, check=True,
    )  # fmt: skip
    os.environ["X509_USER_PROXY"] = str(proxy)
    pilot = tmp / "pilot.sh"
    pilot.write_text("#!/bin/sh\nsleep 300\n")
    fid = f"bench{os.getpid()}"
    auth_cls = plugins.load("auth", "X509")
    auth_opts, _ = options_from_keys(
        auth_cls, {"x509.proxyfile": str(proxy), "x509.cadir": ca["APF_GRID_CADIR"]}
    )
    factory = FactoryContext(
        factory_id=fid,
        settings=FactorySettings(factoryId=fid, baseLogDir=str(tmp / "logs")),
        auth_profiles={"pilot": AuthProfile(name="pilot", plugin="X509", options=auth_opts)},
        state_dir=tmp / "state",
    )
    section = {
        "enabled": "True", "batchsubmitplugin": "ARC", "batchstatusplugin": "ARC", "schedplugin": "Ready",
        "executable": str(pilot), "batchsubmit.arc.ce": ce["APF_ARC_URL"], "batchsubmit.arc.proxy": "pilot",
        "batchsubmit.arc.queue": ce["APF_ARC_QUEUE"], "batchsubmit.arc.walltime": "30",
    }  # fmt: skip
    queue, problems = build_queue("BENCH", RawSection(values=section, origin={}))
    assert queue is not None, problems
    sub = ArcSubmit(queue, queue.batchsubmit.options, factory)
    status = ArcStatus(ArcStatus.endpoint(queue, factory), factory)
    client = sub.client
    try:
        # warm: the delegation exists (a running factory made it long ago)
        client.delegation()
        t0 = time.perf_counter()
        pilots = sub.submit(args.n, PilotTags(fid, "BENCH", "bench"), time.time())
        t_submit = time.perf_counter() - t0
        assert len(pilots) == args.n
        log(f"factory: {args.n} pilots in one cycle (1 request + {args.n} uploads) in {t_submit:.2f} s")
        t_running = wait_running(status, {p.backend_id for p in pilots}, 600) + t_submit
        log(f"factory: all {args.n} running {t_running:.1f} s after the cycle began")
        client.action("kill", [p.backend_id for p in pilots])

        # the same job through arcsub, once per pilot
        desc = sub.descriptions(1, PilotTags(fid, "BENCH", "arcsub"), time.time(), "x")[0]
        desc.relations = [r for r in desc.relations if r[0] != "delegationid"]
        (tmp / "job.xrsl").write_text(desc.render())
        (tmp / "pilot.sh").chmod(0o755)
        jobs_file = tmp / "jobs.dat"
        t0 = time.perf_counter()
        for _ in range(args.n):
            proc = subprocess.run(
                ["arcsub", "-j", str(jobs_file), "-C", ce["APF_ARC_URL"], "-T", "arcrest", str(tmp / "job.xrsl")],
                capture_output=True, text=True, cwd=tmp,
            )  # fmt: skip
            if proc.returncode != 0:
                sys.exit(f"arcsub failed: {proc.stdout}{proc.stderr}")
        t_loop = time.perf_counter() - t0
        log(f"loop: {args.n} arcsub calls in {t_loop:.1f} s ({t_loop / args.n:.2f} s each)")
        loop_ids = set(client.job_ids()) - {p.backend_id for p in pilots}
        t_loop_running = wait_running(status, loop_ids, 900) + t_loop
        log(f"loop: all {args.n} running {t_loop_running:.1f} s after the first arcsub")
        client.action("kill", sorted(loop_ids))

        # status of 1,000 jobs: jobs that wait for an input nobody uploads cost the CE nothing
        waiting = xrsl.Description().add("jobname", f"apf:{fid}:BENCH:status").add("executable", "w.sh")
        waiting.add("inputfiles", ["w.sh", ""]).add("queue", ce["APF_ARC_QUEUE"])
        status_ids: list[str] = []
        for start in range(0, args.status_jobs, 200):
            chunk = [waiting] * min(200, args.status_jobs - start)
            status_ids += [r.job_id for r in client.submit(xrsl.multi_job(chunk)) if r.ok and r.job_id]
        assert len(status_ids) == args.status_jobs, len(status_ids)
        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            results = client.action("status", status_ids)
            samples.append(time.perf_counter() - t0)
            assert len(results) == args.status_jobs
        t_status = statistics.median(samples)
        log(f"status: {args.status_jobs} jobs in one request in {t_status:.3f} s (median of {args.repeat})")
        t0 = time.perf_counter()
        for job_id in status_ids:
            client.action("status", [job_id])
        t_single = time.perf_counter() - t0
        log(f"status: {args.status_jobs} single-job requests in {t_single:.2f} s")
        status.poll(time.time())  # learns the new jobs' names (once per job)
        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            snap = status.poll(time.time())
            samples.append(time.perf_counter() - t0)
        t_poll = statistics.median(samples)
        log(
            f"status: ArcStatus.poll of {len(snap.pilots)} pilots (list + one status request) in {t_poll:.3f} s"
        )
    finally:
        ids = client.job_ids()
        for i in range(0, len(ids), 500):
            client.action("kill", ids[i : i + 500])
            client.action("clean", ids[i : i + 500])
        if ce_started:
            script("arc.sh", "stop", grid_env)
        if slurm_started:
            script("slurm.sh", "stop", slurm_env)
    print(
        f"submit_vs_arcsub={t_loop / t_submit:.1f} running_vs_arcsub={t_loop_running / t_running:.1f} "
        f"status_1000_s={t_status:.3f} status_vs_single={t_single / t_status:.1f} poll_1000_s={t_poll:.3f}"
    )


if __name__ == "__main__":
    main()
