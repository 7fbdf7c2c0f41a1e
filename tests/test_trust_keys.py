"""Issue 13, "keys accepted and silently ignored": config.reconfig(.interval) re-reads files and
URLs (conditional GET) off the decision path and swaps in only valid configurations; cycles and
abort_no_queues behave as in AutoPyFactory; factory.sleep paces the supervisor; the rest is
validated, and logserver.* says it is not served yet."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from autopyfactory.cli._daemon import DaemonFile, daemon_path
from autopyfactory.cli.run import Supervisor
from autopyfactory.config.loader import load_factory_config
from autopyfactory.config.reload import ConfigWatcher
from autopyfactory.engine.factory import Factory
from autopyfactory.store.api import Store
from tests.helpers import wait_for, write
from tests.trustkit import APF, QUEUES, RawHTTP, apf, config_tree, http_ok, no_traceback


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _supervised(conf: Path, clock: Clock) -> tuple[Factory, Supervisor, threading.Thread]:
    config = load_factory_config(str(conf))
    factory = Factory(config)
    watcher = ConfigWatcher(str(conf))
    watcher.remember(config)
    daemon = DaemonFile(daemon_path(config), conf=str(conf), dry_run=False, failed_queues={}, now=clock())
    supervisor = Supervisor(factory, watcher, daemon, dry_run=False, clock=clock)
    loop = threading.Thread(target=factory.run, kwargs={"first_poll_timeout": 5}, daemon=True)
    loop.start()
    return factory, supervisor, loop


def test_config_reconfig_rereads_and_swaps_in_only_valid_configurations(tmp: Path) -> None:
    conf = config_tree(tmp, factory_extra="config.reconfig = True\nconfig.reconfig.interval = 60\n")
    clock = Clock()
    factory, supervisor, loop = _supervised(conf, clock)
    try:
        assert list(factory.queues) == ["Q1"]
        # not due yet: nothing is read
        write(tmp / "queues.conf", QUEUES + "[Q2]\nwmsqueue = Q2\n")
        supervisor.tick()
        assert list(factory.queues) == ["Q1"]
        # due: the new queue comes in, between decision passes
        clock.now += 61
        supervisor.tick()
        wait_for(lambda: set(factory.queues) == {"Q1", "Q2"}, 30, "the reloaded queue")
        # a broken file is refused: the running configuration stays, the reason is an event
        write(tmp / "queues.conf", QUEUES + "[Q2]\nwmsqueue = Q2\nschedplugin = Redy\n")
        clock.now += 61
        supervisor.tick()
        store = Store(factory.config.settings.database_url())
        wait_for(
            lambda: any(e["kind"] == "reload-failed" for e in store.events("trust")), 30, "reload-failed"
        )
        assert set(factory.queues) == {"Q1", "Q2"}
        # unchanged: nothing is swapped
        write(tmp / "queues.conf", QUEUES + "[Q2]\nwmsqueue = Q2\n")
        clock.now += 61
        supervisor.tick()
        assert supervisor.watcher.poll().unchanged
    finally:
        factory.stop()
        loop.join(timeout=30)


def test_reconfig_uses_conditional_get_for_url_sources(tmp_path: Path) -> None:
    server = RawHTTP()
    etag = '"v1"'

    def answer(head: str) -> bytes:
        if f"If-None-Match: {etag}" in head:
            return b"HTTP/1.1 304 Not Modified\r\nETag: " + etag.encode() + b"\r\nConnection: close\r\n\r\n"
        return http_ok(QUEUES.encode(), extra=f"ETag: {etag}\r\n")

    server.responses = {"/queues.conf": answer}  # type: ignore[dict-item]
    try:
        conf = config_tree(tmp_path)
        write(
            conf,
            conf.read_text().replace("queueConf = queues.conf", f"queueConf = {server.url('/queues.conf')}"),
        )
        watcher = ConfigWatcher(str(conf))
        first = watcher.poll()
        assert first.config is not None and "Q1" in first.config.queues
        watcher.remember(first.config)
        second = watcher.poll()
        assert second.unchanged and second.sources_not_modified == 1
        assert 'If-None-Match: "v1"' in server.requests[-1]
    finally:
        server.close()


def test_cycles_stops_after_n_decisions_and_zero_runs_nothing(tmp: Path) -> None:
    conf = config_tree(tmp, factory_extra="cycles = 2\n")
    result = apf("run", "--conf", str(conf), "--no-table", timeout=120)
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    store = Store(load_factory_config(str(conf)).settings.database_url())
    assert len(store.decisions("trust", "Q1", 10)) == 2
    conf = config_tree(tmp / "zero", factory_extra="cycles = 0\nabort_no_queues = True\n")
    result = apf("run", "--conf", str(conf), "--no-table", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "cycles = 0: no queue runs" in result.stderr
    assert Store(load_factory_config(str(conf)).settings.database_url()).decisions("trust", "Q1", 10) == []


def test_abort_no_queues(tmp: Path) -> None:
    # nothing enabled
    conf = config_tree(
        tmp, QUEUES.replace("enabled = True", "enabled = False"), factory_extra="abort_no_queues = True\n"
    )
    result = apf("run", "--conf", str(conf), "--no-table", timeout=60)
    assert result.returncode == 0 and "no queue can run and abort_no_queues = True" in result.stderr
    # the only queue cannot be set up
    conf = config_tree(tmp / "b", QUEUES + "executable = None\n", factory_extra="abort_no_queues = True\n")
    result = apf("run", "--conf", str(conf), "--no-table", timeout=60)
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1


def test_abort_no_queues_after_a_reload_removes_every_queue(tmp: Path) -> None:
    conf = config_tree(tmp, factory_extra="abort_no_queues = True\n")
    clock = Clock()
    factory, supervisor, loop = _supervised(conf, clock)
    try:
        write(tmp / "queues.conf", QUEUES.replace("enabled = True", "enabled = False"))
        supervisor.request_reload()
        supervisor.tick()
        wait_for(lambda: not factory.queues, 30, "the queues to go")
        supervisor.tick()
        loop.join(timeout=30)
        assert not loop.is_alive()  # the factory stopped itself
    finally:
        factory.stop()


def test_factory_sleep_paces_the_heartbeat_and_is_bounded(tmp: Path) -> None:
    conf = config_tree(tmp, factory_extra="factory.sleep = 1\n")
    proc = subprocess.Popen(
        [APF, "run", "--conf", str(conf), "--no-table"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        path = tmp / "state" / "daemon-trust.json"
        wait_for(
            lambda: path.exists() and json.loads(path.read_text()).get("heartbeat_interval") == 1.0,
            30,
            "a heartbeat",
        )
        first = json.loads(path.read_text())["heartbeat"]
        wait_for(lambda: json.loads(path.read_text())["heartbeat"] > first, 10, "the next heartbeat")
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert json.loads(path.read_text())["stopped"] is not None


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ("factory.sleep = 0", "greater than or equal to 1"),
        ("authmanager.sleep = nan", "finite"),
        ("authmanager.sleep = 0.01", "greater than or equal to 1"),
        ("config.reconfig = sometimes", "valid boolean"),
        ("logserver.index = maybe", "valid boolean"),
        ("config.queues.plugin = Files", "unknown config plugin 'Files' (did you mean 'File'?)"),
        ("config.auth.plugin = ,", "an empty name is not allowed"),
    ],
)
def test_the_rest_is_validated(tmp_path: Path, line: str, expect: str) -> None:
    from autopyfactory.config.errors import ConfigError

    conf = config_tree(tmp_path, factory_extra=line + "\n")
    with pytest.raises(ConfigError, match=expect.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_factory_config(str(conf))


def test_logserver_is_accepted_and_says_it_is_not_served_yet(tmp_path: Path) -> None:
    conf = config_tree(
        tmp_path,
        factory_extra="logserver.enabled = True\nlogserver.index = True\nlogserver.allowrobots = False\n",
    )
    config = load_factory_config(str(conf))
    assert config.settings.logserver_index is True
    assert any(
        "logserver.enabled: accepted, but this version does not serve baseLogDir yet" in w
        for w in config.warnings
    )
