"""Engine benchmark: the real engine (``Factory``) with the Sim WMS and Sim batch backends and a
SQLite store in a temporary directory, every queue submitting every pass.

1. Pass time for 1,000 and 10,000 queues: a 7-plugin chain per queue, pilots spread over 10
   simulated sites; ``Factory.step`` at a virtual clock, one pass per queue interval. The pass is
   what the decision thread does (observe, plan, record in one transaction, act, report); the
   polls are timed apart, since in the daemon they run on the pollers' own threads.
2. Daemon mode (``Factory.run`` with poller threads and the executor, real clock): the time from
   a new WMS snapshot arriving (the WMS poller publishing it) to each queue's backend submit call.

Last line: pass_1k_s=<s> pass_10k_s=<s> growth=<10k/1k> snapshot_to_submit_ms_p99=<ms>
Goals on a 2-core machine: pass_10k_s <= 2, growth <= 11, snapshot_to_submit_ms_p99 <= 100.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from autopyfactory.config.loader import load_factory_config
from autopyfactory.engine.factory import Factory, tune_gc
from autopyfactory.model import Pilot, PilotTags
from autopyfactory.plugins.registry import register
from autopyfactory.sim.batch import SimSubmit, reset_world
from autopyfactory.sim.clock import VirtualClock

CHAIN = "Ready, Scale, MaxPerCycle, MaxPending, MaxToRun, StatusTest, MinPerCycle"


def write_config(
    base: Path, queues: int, *, sleep: float, wms_sleep: float, submit: str = "Sim", demand: str = ""
) -> Path:
    lines = [
        "[DEFAULT]",
        "enabled = True",
        f"apfqueue.sleep = {sleep}",
        "wmsstatusplugin = Sim",
        "batchstatusplugin = Sim",
        f"batchsubmitplugin = {submit}",
        f"schedplugin = {CHAIN}",
        "sched.scale.factor = 1.0",
        "sched.maxpercycle.maximum = 1",
        "sched.maxpending.maximum = 100000",
        "sched.maxtorun.maximum = 100000",
        "sched.minpercycle.minimum = 1",  # every queue submits every pass
        f"batchsubmit.{submit.lower()}.capacity = 1000000",
        f"batchsubmit.{submit.lower()}.runtime = 120",
        "",
    ]
    for i in range(queues):
        lines += [
            f"[Q{i:05d}]",
            f"wmsqueue = Q{i:05d}",
            demand or "wmsstatus.sim.activated = 20",
            f"batchsubmit.{submit.lower()}.site = site{i % 10}",
            "",
        ]
    (base / "queues.conf").write_text("\n".join(lines))
    conf = base / "autopyfactory.conf"
    conf.write_text(
        "[Factory]\nfactoryId = bench\nqueueConf = queues.conf\nfactory.statedir = state\n"
        f"wmsstatus.sim.sleep = {wms_sleep}\nbatchstatus.sim.sleep = {min(wms_sleep, 0.5)}\n"
        "wmsstatus.sim.maxage = 100000\nbatchstatus.sim.maxage = 100000\nmetrics.address = None\n"
    )
    return conf


def measure_passes(queues: int, passes: int) -> tuple[float, float, float]:
    """Median seconds of the decision pass (wall clock, and CPU time of this process, which a
    busy machine inflates less), and of the polls, over ``passes`` passes."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        conf = write_config(base, queues, sleep=60, wms_sleep=60)
        config = load_factory_config(str(conf))
        clock = VirtualClock(1_700_000_000.0)
        # steady state: finished pilots leave the simulated sites' listings after one pass, as they
        # leave a batch system's queue listing (the store keeps them), so listings do not grow
        reset_world(clock).keep_finished = 60.0
        factory = Factory(config, clock=clock.now)
        tune_gc()  # as `apf run` does after start-up
        pass_times, cpu_times, poll_times = [], [], []
        t = clock.now()
        for i in range(passes + 1):
            clock.set(t)
            t0 = time.perf_counter()
            for poller in factory.pollers.values():
                poller.poll_once(t)
            t1, c1 = time.perf_counter(), time.process_time()
            plans = factory.decide_pass(t)
            t2, c2 = time.perf_counter(), time.process_time()
            submitting = sum(1 for p in plans if p.actions)
            assert submitting == queues, f"pass {i}: {submitting} of {queues} queues submitted"
            if i:  # the first pass also writes the store's schema caches
                poll_times.append(t1 - t0)
                pass_times.append(t2 - t1)
                cpu_times.append(c2 - c1)
            t += 60
        factory.shutdown()
        factory.store.close()
    return statistics.median(pass_times), statistics.median(cpu_times), statistics.median(poll_times)


class TimedSim(SimSubmit):
    """The Sim backend, recording when each submit call arrives (the act stage's backend call)."""

    name = "TimedSim"
    calls: list[tuple[str, float]] = []
    lock = threading.Lock()

    def submit(self, n: int, tags: PilotTags, now: float) -> Sequence[Pilot]:
        with TimedSim.lock:
            TimedSim.calls.append((self.queue.name, time.perf_counter()))
        return super().submit(n, tags, now)


def snapshot_to_submit(queues: int, seconds: float) -> list[float]:
    """Daemon mode: per queue and WMS snapshot, ms from the snapshot's arrival to its submit call."""
    register(TimedSim)
    arrivals: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        # demand changes at every WMS poll (20, 40, 20, ...); queues decide only when it changes
        steps = "wmsstatus.sim.steps = 0:20, 1:40\nwmsstatus.sim.period = 2"
        conf = write_config(base, queues, sleep=3600, wms_sleep=1.0, submit="TimedSim", demand=steps)
        config = load_factory_config(str(conf))
        reset_world()
        factory = Factory(config)
        tune_gc()
        wms = next(p for p in factory.pollers.values() if p.kind == "wmsstatus")
        callback = wms.on_result

        def arrived(poller, result):  # type: ignore[no-untyped-def]
            arrivals.append(time.perf_counter())
            if callback is not None:
                callback(poller, result)

        wms.on_result = arrived
        runner = threading.Thread(target=factory.run, name="bench-daemon", daemon=True)
        runner.start()
        time.sleep(seconds)
        factory.stop()
        runner.join(30)
    latencies = []
    calls = sorted(TimedSim.calls, key=lambda c: c[1])
    for i, t in enumerate(arrivals[1:], start=1):  # each snapshot after the first
        end = arrivals[i + 1] if i + 1 < len(arrivals) else float("inf")
        firsts: dict[str, float] = {}
        for queue, when in calls:
            if t <= when < end and queue not in firsts:
                firsts[queue] = when
        latencies += [(when - t) * 1000 for when in firsts.values()]
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--daemon-queues", type=int, default=200)
    parser.add_argument("--daemon-seconds", type=float, default=15.0)
    args = parser.parse_args()
    pass_1k, cpu_1k, poll_1k = measure_passes(1_000, args.passes)
    print(f"1,000 queues: pass {pass_1k:.3f} s (cpu {cpu_1k:.3f} s; polls {poll_1k:.3f} s)", flush=True)
    pass_10k, cpu_10k, poll_10k = measure_passes(10_000, args.passes)
    print(f"10,000 queues: pass {pass_10k:.3f} s (cpu {cpu_10k:.3f} s; polls {poll_10k:.3f} s)", flush=True)
    latencies = sorted(snapshot_to_submit(args.daemon_queues, args.daemon_seconds))
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    p50 = latencies[len(latencies) // 2] if latencies else float("nan")
    print(
        f"daemon, {args.daemon_queues} queues on one WMS endpoint: {len(latencies)} submit calls, "
        f"snapshot->submit p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print("goals: pass_10k_s <= 2, growth <= 11, snapshot_to_submit_ms_p99 <= 100")
    print(
        f"pass_1k_s={pass_1k:.3f} pass_10k_s={pass_10k:.3f} growth={pass_10k / pass_1k:.1f} "
        f"snapshot_to_submit_ms_p99={p99:.1f}"
    )


if __name__ == "__main__":
    main()
