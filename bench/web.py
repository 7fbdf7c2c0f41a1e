"""Web dashboard benchmark: a real ``apf run`` daemon with 10,000 queues (Sim backends).

1. Page times: each page and API call requested repeatedly over HTTP (server + transfer), and
   the overview loaded in Chromium (navigation to the load event). Goal: the overview's first
   page in under 1 s.
2. Decision loop cadence while a browser polls: the interval between consecutive decisions of
   the same queues (every queue is due every ``--interval`` s), and the mean decision-pass
   duration (``apf_cycle_duration_seconds`` from /metrics), measured in phases side by side:
   nothing polling; Chromium with the overview, a queue page and health open (live refresh every
   2 s); the same requests from a plain HTTP client (the server's share without the browser's own
   CPU); nothing polling again. Goal: the cadence with a browser within 5 % of without.

Prints as its last line: overview_ms=<median> chromium_ms=<median> cadence_ratio=<with/without>
pass_ratio=<Chromium polling/none> http_pass_ratio=<the same requests without a browser/none>
loop_cpu_ratio=<the loop thread's CPU per pass, Chromium polling/none>
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from textwrap import dedent

APF = str(Path(sys.executable).parent / "apf")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
]  # fmt: skip
SAMPLE_QUEUES = [f"Q{i:05d}" for i in range(0, 10_000, 97)]


def write_config(base: Path, queues: int, interval: float) -> Path:
    sections = "".join(
        f"[Q{i:05d}]\nwmsqueue = W{i % 500:03d}\nwmsstatus.sim.activated = {i % 7}\n"
        f"batchsubmit.sim.site = S{i % 20:02d}\n"
        for i in range(queues)
    )
    (base / "queues.conf").write_text(
        dedent(
            f"""
            [DEFAULT]
            enabled = True
            apfqueue.sleep = {interval}
            wmsstatusplugin = Sim
            # pilots take jobs: a steady state (no submissions once every queue runs its demand)
            wmsstatus.sim.consume = True
            batchstatusplugin = Sim
            batchsubmitplugin = Sim
            batchsubmit.sim.capacity = 100000
            batchsubmit.sim.runtime = 2h
            schedplugin = Ready, MaxPerCycle
            sched.maxpercycle.maximum = 3
            """
        )
        + sections
    )
    conf = base / "autopyfactory.conf"
    conf.write_text(
        dedent(
            f"""
            [Factory]
            factoryId = bench-web
            queueConf = queues.conf
            factory.statedir = {base / "state"}
            wmsstatus.sim.sleep = {interval / 2}
            batchstatus.sim.sleep = {interval / 2}
            web.address = 127.0.0.1:0
            web.refresh = 2
            """
        )
    )
    return conf


def fetch(url: str, timeout: float = 60) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def timed(url: str, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        fetch(url)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), max(times)


def cycle_totals(url: str) -> tuple[float, float]:
    text = fetch(f"{url}/metrics", timeout=120).decode()
    count = float(re.search(r"^apf_cycle_duration_seconds_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"^apf_cycle_duration_seconds_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return count, total


def intervals(db: Path, since: float, until: float) -> list[float]:
    """Seconds between consecutive decisions of the sample queues in [since, until]."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        out: list[float] = []
        for queue in SAMPLE_QUEUES:
            rows = [
                r[0]
                for r in conn.execute(
                    "SELECT time FROM decisions WHERE queue = ? AND time >= ? AND time <= ? ORDER BY time",
                    (queue, since, until),
                )
            ]
            out += [b - a for a, b in itertools.pairwise(rows)]
        return out
    finally:
        conn.close()


# what the three open pages fetch every refresh (2 s): their live parts and the queue chart's data
POLLED = (
    "/partials/queues?page=1",
    "/partials/queue/Q00000",
    "/partials/health",
    "/api/v1/series/Q00000?hours=6",
)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time (user + system) of a process, or of one of its threads (Linux /proc)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(url: str, db: Path, seconds: float, mode: str, pid: int) -> dict[str, float]:
    """``mode``: idle, browser (Chromium with three pages open) or http (their requests, no browser).
    The decision loop runs in the daemon's main thread (its thread id is the process id), so its
    CPU time per pass does not depend on what else the shared machine runs."""
    count0, sum0 = cycle_totals(url)
    loop0, all0 = cpu_seconds(pid, pid), cpu_seconds(pid)
    began = time.time()
    if mode == "http":
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tick = time.monotonic()
            for path in POLLED:
                fetch(url + path)
            time.sleep(max(0.0, 2.0 - (time.monotonic() - tick)))
    elif mode == "browser":
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
            )
            pages = []
            for path in ("/", "/queues/Q00000", "/health"):
                page = browser.new_page()
                page.goto(url + path)
                pages.append(page)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                pages[0].wait_for_timeout(500)  # htmx keeps polling in all three pages
            browser.close()
    else:
        time.sleep(seconds)
    ended = time.time()
    try:
        count1, sum1 = cycle_totals(url)
    except OSError as exc:
        raise SystemExit(f"the daemon stopped answering: {exc}") from None
    loop1, all1 = cpu_seconds(pid, pid), cpu_seconds(pid)
    gaps = intervals(db, began, ended)
    passes = count1 - count0
    return {
        "cadence_s": statistics.median(gaps) if gaps else float("nan"),
        "cadence_p95_s": sorted(gaps)[int(0.95 * (len(gaps) - 1))] if gaps else float("nan"),
        "pass_s": (sum1 - sum0) / passes if passes else float("nan"),
        "passes": passes,
        "loop_cpu_per_pass_s": (loop1 - loop0) / passes if passes else float("nan"),
        "other_cpu_s": (all1 - all0) - (loop1 - loop0),  # pollers, web server, metrics scrapes
    }


def browser_overview(url: str, n: int) -> float:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        for _ in range(n):
            began = time.perf_counter()
            page.goto(url + "/", wait_until="load")
            times.append((time.perf_counter() - began) * 1000)
        browser.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=10.0, help="apfqueue.sleep of every queue")
    parser.add_argument("--phase", type=float, default=60.0, help="seconds per cadence phase")
    parser.add_argument("--requests", type=int, default=20, help="requests per page timing")
    parser.add_argument("--dir", help="keep the daemon's files (config, log, store) here")
    args = parser.parse_args()
    parser_dir = args.dir
    with tempfile.TemporaryDirectory(prefix="apf-bench-web-") as tmp:
        base = Path(parser_dir or tmp)
        base.mkdir(parents=True, exist_ok=True)
        conf = write_config(base, args.queues, args.interval)
        log = base / "apf.log"
        began = time.perf_counter()
        output = (base / "apf.out").open("w")
        proc = subprocess.Popen(
            [APF, "run", "--conf", str(conf), "--no-table", "--log", str(log), "-v"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            url = None
            while url is None:
                if proc.poll() is not None:
                    raise SystemExit(f"apf run exited: {log.read_text()[-2000:]}")
                found = re.search(r"web dashboard at (\S+)", log.read_text() if log.exists() else "")
                url = found.group(1) if found else None
                time.sleep(0.2)
            while json.loads(fetch(f"{url}/api/v1/queues?state=waiting&per_page=1"))["matched"]:
                time.sleep(1)
            print(f"daemon with {args.queues} queues up and decided in {time.perf_counter() - began:.1f}s")
            print(f"page and API times over HTTP ({args.requests} requests each, median / max):")
            pages = {
                "overview first page (HTML, 50 rows + sparklines)": "/",
                "overview live refresh (partial)": "/partials/queues?page=1",
                "overview sorted by demand, page 100": "/?sort=demand&order=desc&page=100",
                "overview filtered (name contains Q0999)": "/?q=Q0999",
                "queue page": "/queues/Q04242",
                "health page": "/health",
                "cascades page": "/cascades",
                "API /api/v1/queues (JSON page)": "/api/v1/queues",
                "API /api/v1/status (all 10,000 queues)": "/api/v1/status",
                "API /api/v1/series/Q04242": "/api/v1/series/Q04242",
            }
            overview_ms = 0.0
            for label, path in pages.items():
                median, worst = timed(url + path, args.requests)
                if path == "/":
                    overview_ms = median
                print(f"  {label:<52} {median:8.1f} ms  {worst:8.1f} ms")
            chromium_ms = browser_overview(url, 5)
            print(f"  {'overview in Chromium (navigation to load event)':<52} {chromium_ms:8.1f} ms")
            db = base / "state" / "apf.db"
            print(f"decision loop cadence, {args.phase:.0f}s per phase (interval {args.interval:g}s):")
            results = []
            phases = (
                ("nothing polling", "idle"),
                ("Chromium polling", "browser"),
                ("HTTP polling", "http"),
                ("nothing polling", "idle"),
            )
            for name, mode in phases:
                r = phase(url, db, args.phase, mode, proc.pid)
                if proc.poll() is not None:
                    raise SystemExit(
                        f"apf run exited ({proc.returncode}): {(base / 'apf.out').read_text()[-3000:]}"
                    )
                results.append(r)
                print(
                    f"  {name:<16} cadence median {r['cadence_s']:.3f}s p95 {r['cadence_p95_s']:.3f}s, "
                    f"pass {r['pass_s'] * 1000:.0f} ms wall / {r['loop_cpu_per_pass_s'] * 1000:.0f} ms loop CPU "
                    f"(mean of {r['passes']:.0f}), other threads {r['other_cpu_s']:.1f} s CPU, "
                    f"load average {os.getloadavg()[0]:.1f}"
                )
            base_cadence = (results[0]["cadence_s"] + results[3]["cadence_s"]) / 2
            base_pass = (results[0]["pass_s"] + results[3]["pass_s"]) / 2
            cadence_ratio = results[1]["cadence_s"] / base_cadence
            pass_ratio = results[1]["pass_s"] / base_pass
            http_pass_ratio = results[2]["pass_s"] / base_pass
            base_cpu = (results[0]["loop_cpu_per_pass_s"] + results[3]["loop_cpu_per_pass_s"]) / 2
            cpu_ratio = results[1]["loop_cpu_per_pass_s"] / base_cpu
            print(
                "goals: overview < 1000 ms; cadence with Chromium polling within 5 % of without "
                "(Chromium itself runs on the same 2 cores)"
            )
            print(
                f"overview_ms={overview_ms:.1f} chromium_ms={chromium_ms:.1f} cadence_ratio={cadence_ratio:.3f} "
                f"pass_ratio={pass_ratio:.2f} http_pass_ratio={http_pass_ratio:.2f} loop_cpu_ratio={cpu_ratio:.2f}"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
