"""Slurm submission and status benchmark against the real local cluster (scripts/components/slurm.sh).

In one run:
  * the factory path: the real engine's decide-and-act pass (``Factory.decide_pass`` after its
    polls: run the scheduler chain, record the decision, write the intent, one ``sbatch --array``,
    record 1,000 pilots and settle the intent in the store) for a queue whose demand is 1,000;
  * the naive loop: 1,000 separate ``sbatch`` calls with the same pilot script;
  * the floor: one bare ``sbatch --array=1-1000`` with the same script (factory and floor are
    each the median of 5 samples: one call's time varies a lot on a busy 2-core machine);
  * the status path: with 10,000 tagged pilots of 10 queues in the queue, one ``SlurmStatus.poll``
    plus the per-queue aggregation into ``Supply`` (median of 5, after a few seconds' settling).
Everything the benchmark submitted is cancelled. The cluster is started when it is not running
(``APF_SLURM_BASE``, default /tmp/apf-slurm) and stopped again if this run started it.

Prints as its LAST line:
  factory_vs_loop=<loop time / factory time> factory_vs_array=<factory time / array time> poll_10k_s=<seconds>
Goals (issue 3): factory_vs_loop >= 10, factory_vs_array <= 3, poll_10k_s < 0.5.
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

from autopyfactory.config.loader import load_factory_config
from autopyfactory.config.models import FactorySettings, PluginSpec, QueueConfig, QueueSettings
from autopyfactory.config.validate import options_from_keys
from autopyfactory.decide.supply import aggregate
from autopyfactory.engine.factory import Factory
from autopyfactory.model import PilotTags
from autopyfactory.plugins.base import FactoryContext
from autopyfactory.plugins.batch.slurm import SlurmStatus, SlurmSubmit, parse_sbatch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "components" / "slurm.sh"


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_cluster(base: str) -> bool:
    """Start the cluster unless it runs; returns True when this run started it."""
    env = {**os.environ, "APF_SLURM_BASE": base}
    if subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0:
        started = False
    else:
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"slurm.sh start failed:\n{proc.stdout}\n{proc.stderr}")
        log(f"started the Slurm cluster in {time.perf_counter() - t0:.2f} s")
        started = True
    info = subprocess.run(["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True)
    for line in info.stdout.splitlines():
        if line.startswith("SLURM_CONF="):
            os.environ["SLURM_CONF"] = line.split("=", 1)[1]
    return started


def queue(name: str, executable: str, arguments: str) -> QueueConfig:
    keys = {"batchsubmit.slurm.partition": "debug"}
    sub_opts, problems = options_from_keys(SlurmSubmit, keys, section_name=name)
    st_opts, problems2 = options_from_keys(SlurmStatus, {}, section_name=name)
    assert not problems and not problems2, problems + problems2
    settings = QueueSettings.model_validate(
        {
            "enabled": "True",
            "batchsubmitplugin": "Slurm",
            "batchstatusplugin": "Slurm",
            "schedplugin": "Null",
            "executable": executable,
            "executable.arguments": arguments,
        }
    )
    return QueueConfig(
        name=name,
        settings=settings,
        wmsstatus=None,
        batchstatus=PluginSpec("batchstatus", "Slurm", SlurmStatus, st_opts),
        batchsubmit=PluginSpec("batchsubmit", "Slurm", SlurmSubmit, sub_opts),
        sched=(),
    )


def engine_cycle(tmp: Path, fid: str, n: int) -> tuple[float, str]:
    """One real factory cycle for a queue that wants ``n`` pilots; returns (seconds, job id)."""
    (tmp / "queues.conf").write_text(
        "[BENCH]\nenabled = True\nwmsqueue = BENCH\nwmsstatusplugin = Sim\n"
        f"wmsstatus.sim.steps = 0:0, 1:{n}\nbatchstatusplugin = Slurm\nbatchsubmitplugin = Slurm\n"
        "batchsubmit.slurm.partition = debug\nexecutable = /bin/sleep\nexecutable.arguments = 1000\n"
        f"schedplugin = Ready\nbatchsubmit.slurm.logdir = {tmp / 'logs'}\n"
    )
    (tmp / "autopyfactory.conf").write_text(
        f"[Factory]\nfactoryId = {fid}\nqueueConf = queues.conf\nfactory.statedir = {tmp / 'state'}\n"
    )
    factory = Factory(load_factory_config(str(tmp / "autopyfactory.conf")))
    try:
        # a running factory is warm: one cycle with no demand first, then the demand arrives
        assert factory.step(poll_all=True)[0].decision.n == 0
        time.sleep(1.1)
        now = time.time()
        for poller in factory.pollers.values():  # observing is not submitting: poll first
            poller.poll_once(now)
        t0 = time.perf_counter()
        plans = factory.decide_pass(now, force=True)  # decide, intent, sbatch --array, settle
        seconds = time.perf_counter() - t0
        factory.decide_pass(time.time())  # writes the new pilots' rows (batched per pass)
    finally:
        factory.shutdown()
    assert plans and plans[0].decision.n == n, plans
    pilots = factory.store.pilots(fid, "BENCH")
    assert len(pilots) == n, len(pilots)
    return seconds, pilots[0]["backend_id"].split("_")[0]


def sbatch(argv: list[str], script: str) -> str:
    proc = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return parse_sbatch(proc.stdout)


def scancel(job_ids: list[str]) -> None:
    for i in range(0, len(job_ids), 500):
        subprocess.run(["scancel", *job_ids[i : i + 500]], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=1000, help="pilots per submission test")
    parser.add_argument("--poll-jobs", type=int, default=10000, help="jobs in the queue for the poll test")
    parser.add_argument("--queues", type=int, default=10, help="queues the poll-test jobs belong to")
    parser.add_argument("--repeat", type=int, default=5, help="samples of the factory and array timings")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before timing polls")
    args = parser.parse_args()
    base = os.environ.get("APF_SLURM_BASE", "/tmp/apf-slurm")
    started = ensure_cluster(base)
    fid = f"bench{os.getpid()}"
    factory = FactoryContext(factory_id=fid, settings=FactorySettings(factoryId=fid))
    made: list[str] = []  # parent job ids to cancel at the end
    try:
        q = queue("benchq", "/bin/sleep", "1000")
        sub = SlurmSubmit(q, q.batchsubmit.options, factory)
        tags = PilotTags(fid, "benchq", "i-factory")
        script = sub.script(tags, time.time())

        # one untimed sbatch first, so that no variant pays for cold caches
        made.append(sbatch(["sbatch", "--parsable", "--hold", "-o", "/dev/null"], script))

        t0 = time.perf_counter()
        pilots = sub.submit(args.n, tags, time.time())
        t_plugin = time.perf_counter() - t0
        made.append(pilots[0].backend_id.split("_")[0])
        assert len(pilots) == args.n
        log(f"plugin: {args.n} pilots through SlurmSubmit.submit in {t_plugin:.4f} s")
        scancel(made)
        made.clear()

        # one bare call takes 5-15 ms here and varies from call to call: compare medians
        samples = []
        for r in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="apf-bench-") as tmp:
                seconds, job = engine_cycle(Path(tmp), f"{fid}e{r}", args.n)
            samples.append(seconds)
            scancel([job])
        t_factory = statistics.median(samples)
        log(
            f"factory: the engine decided and submitted {args.n} pilots in {t_factory:.4f} s "
            f"(median of {args.repeat}: " + ", ".join(f"{t:.4f}" for t in samples) + ")"
        )

        t0 = time.perf_counter()
        for _ in range(args.n):
            made.append(sbatch(["sbatch", "--parsable", "--job-name=bench-loop", "-o", "/dev/null"], script))
        t_loop = time.perf_counter() - t0
        log(f"loop: {args.n} separate sbatch calls in {t_loop:.3f} s ({t_loop / args.n * 1000:.1f} ms each)")

        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            job = sbatch(["sbatch", "--parsable", f"--array=1-{args.n}", "-o", "/dev/null"], script)
            samples.append(time.perf_counter() - t0)
            scancel([job])
        t_array = statistics.median(samples)
        log(
            f"array: one sbatch --array=1-{args.n} in {t_array:.4f} s (median of {args.repeat}: "
            + ", ".join(f"{t:.4f}" for t in samples)
            + ")"
        )

        scancel(made)
        made.clear()

        per_queue = args.poll_jobs // args.queues
        t0 = time.perf_counter()
        for i in range(args.queues):
            qi = queue(f"benchq{i}", "/bin/sleep", "1000")
            s = SlurmSubmit(qi, qi.batchsubmit.options, factory)
            ps = s.submit(per_queue, PilotTags(fid, qi.name, f"i-poll-{i}"), time.time())
            made.append(ps[0].backend_id.split("_")[0])
            s.close()
        log(
            f"queued {per_queue * args.queues} pilots of {args.queues} queues in {time.perf_counter() - t0:.2f} s"
        )

        # measure the steady state a factory polls in, not slurmctld's burst of array splitting
        time.sleep(args.settle)
        timings = []
        for _ in range(5):
            status = SlurmStatus(SlurmStatus.endpoint(q, factory), factory)
            t0 = time.perf_counter()
            snap = status.poll(time.time())
            supplies = aggregate(snap.pilots, snap.time)
            timings.append(time.perf_counter() - t0)
            status.close()
            total = sum(s.pending + s.running + s.held for s in supplies.values())
            assert total == per_queue * args.queues, (total, len(snap.pilots))
            assert len(supplies) == args.queues
        poll_s = statistics.median(timings)
        log(
            f"poll: {len(snap.pilots)} pilots, {len(supplies)} queues: "
            + ", ".join(f"{t:.3f}" for t in timings)
            + " s"
        )
        sub.close()
    finally:
        scancel(made)
        if started:
            subprocess.run(
                ["bash", str(SCRIPT), "stop"], env={**os.environ, "APF_SLURM_BASE": base}, check=False
            )
    print(
        f"factory_vs_loop={t_loop / t_factory:.1f} factory_vs_array={t_factory / t_array:.2f} poll_10k_s={poll_s:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
