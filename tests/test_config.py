"""Config loading with AutoPyFactory's semantics, and typed errors naming file, section and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_factory_config, load_queue_sections
from tests.helpers import factory_conf, write

QUEUE = """
[DEFAULT]
enabled = True
batchstatusplugin = Local
batchsubmitplugin = Local
wmsstatusplugin = Sim
executable = /bin/true
schedplugin = Ready, MaxPerCycle
"""


def test_interpolation_and_percent_escape(tmp_path: Path) -> None:
    write(
        tmp_path / "q.conf",
        QUEUE
        + """
[SITE_A-ce01]
wmsqueue = SITE_A
batchqueue = %(wmsqueue)s_MCORE
executable.arguments = -q %(batchqueue)s --share 50%%
""",
    )
    q = load_queue_sections([str(tmp_path / "q.conf")])["SITE_A-ce01"]
    assert q.settings.batchqueue == "SITE_A_MCORE"
    assert q.settings.executable_arguments == "-q SITE_A_MCORE --share 50%"


def test_default_flattens_per_file_and_later_file_wins_key_by_key(tmp_path: Path) -> None:
    write(
        tmp_path / "a.conf",
        QUEUE
        + """
sched.maxpercycle.maximum = 10
[Q]
wmsqueue = A
sched.ready.offset = 3
""",
    )
    # b.conf redefines Q: its own DEFAULT value (20) wins over a.conf's DEFAULT and key values,
    # while keys b.conf does not mention (offset) keep a.conf's value: AutoPyFactory's gotcha.
    write(
        tmp_path / "b.conf",
        """
[DEFAULT]
sched.maxpercycle.maximum = 20
[Q]
wmsqueue = B
""",
    )
    q = load_queue_sections([str(tmp_path / "a.conf"), str(tmp_path / "b.conf")])["Q"]
    assert q.wmsqueue == "B"
    assert q.sched[1].options.maximum == 20
    assert q.sched[0].options.offset == 3


def test_directory_default_applies_to_every_file(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "00-defaults.conf", QUEUE + "apfqueue.sleep = 42\n")
    write(tmp_path / "conf.d" / "10-sites.conf", "[X]\nwmsqueue = X\n[Y]\nwmsqueue = Y\n")
    write(tmp_path / "conf.d" / "ignored.txt", "[Z]\nwmsqueue = Z\n")
    write(tmp_path / "queues.conf", QUEUE + "[X]\nwmsqueue = FROMFILE\napfqueue.sleep = 7\n")
    conf = write(
        tmp_path / "apf.conf",
        "[Factory]\nfactoryId = f\nqueueConf = queues.conf\nqueueDirConf = conf.d\nfactory.statedir = st\n",
    )
    config = load_factory_config(str(conf))
    assert set(config.queues) == {"X", "Y"}
    # the directory result merges over the file result, key by key
    assert config.queues["X"].wmsqueue == "X"
    assert config.queues["X"].settings.sleep == 42
    assert config.queues["Y"].settings.sleep == 42


def test_keys_are_case_sensitive_literals_and_tilde(tmp_path: Path) -> None:
    write(
        tmp_path / "q.conf",
        QUEUE
        + """
[Q]
wmsqueue = Q
sched.maxpercycle.maximum = None
executable = ~/pilot.sh
SiteTag = upper
sitetag = lower
""",
    )
    q = load_queue_sections([str(tmp_path / "q.conf")])["Q"]
    assert q.sched[1].options.maximum is None
    assert q.settings.executable == os.path.expanduser("~/pilot.sh")
    assert (q.raw["SiteTag"], q.raw["sitetag"]) == ("upper", "lower")
    # a known key in the wrong case is a typo, caught with a hint
    write(tmp_path / "q.conf", QUEUE + "[Q]\nwmsqueue = Q\nEnabled = False\n")
    with pytest.raises(
        ConfigError, match="Enabled: unknown key \\(did you mean 'enabled'\\? names are case-sensitive\\)"
    ):
        load_queue_sections([str(tmp_path / "q.conf")])


def test_enabled_absent_means_disabled_and_enablequeues(tmp_path: Path) -> None:
    conf = factory_conf(
        tmp_path,
        QUEUE.replace("enabled = True\n", "")
        + "[ON]\nenabled = True\nwmsqueue = ON\n[OFF]\nwmsqueue = OFF\n",
    )
    config = load_factory_config(str(conf))
    assert [q.name for q in config.active_queues()] == ["ON"]
    conf = factory_conf(tmp_path, QUEUE + "[ON]\nwmsqueue = ON\n", extra="enablequeues = False\n")
    assert load_factory_config(str(conf)).active_queues() == []


def test_every_problem_names_file_line_section_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.conf",
        QUEUE
        + """
[BAD]
wmsqueue = BAD
sched.maxpercycle.maximum = fifty
sched.maxpercycle.maximun = 3
schedplugins = Ready
apfqueue.sleep = -5
[BAD2]
schedplugin = Ready, MaxPerCycel
batchsubmitplugin = local
sched.maxpercyle.maximum = 4
""",
    )
    with pytest.raises(ConfigError) as info:
        load_queue_sections([str(path)])
    text = str(info.value)
    lines = text.splitlines()
    assert len(lines) == len(info.value.problems) >= 7
    line = path.read_text().splitlines().index("sched.maxpercycle.maximum = fifty") + 1
    assert f"{path}:{line}: [BAD] sched.maxpercycle.maximum: " in text
    assert "fifty" in text
    assert (
        "[BAD] sched.maxpercycle.maximun: unknown key for plugin MaxPerCycle (did you mean 'sched.maxpercycle.maximum'?)"
        in text
    )
    assert "[BAD] schedplugins: unknown key (did you mean 'schedplugin'?)" in text
    assert "[BAD] apfqueue.sleep:" in text
    assert "unknown sched plugin 'MaxPerCycel' (did you mean 'MaxPerCycle'?)" in text
    assert "unknown batchsubmit plugin 'local' (did you mean 'Local'? names are case-sensitive)" in text
    assert (
        "[BAD2] sched.maxpercyle.maximum: no installed sched plugin reads keys under 'sched.maxpercyle.'"
        in text
    )
    assert "Traceback" not in text


def test_interpolation_errors_and_missing_required(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.conf",
        """
[Q]
enabled = True
batchstatusplugin = Local
wmsqueue = %(nothere)s
executable.arguments = 100%
""",
    )
    with pytest.raises(ConfigError) as info:
        load_queue_sections([str(path)])
    text = str(info.value)
    assert "[Q] wmsqueue: %(nothere)s refers to a key that is not set" in text
    assert "[Q] executable.arguments: '%' at character 4 of the value must be followed by" in text
    assert "[Q] batchsubmitplugin: required key is missing" in text
    assert "[Q] schedplugin: required key is missing" in text


def test_operator_variables_are_allowed_and_obsolete_keys_warn(tmp_path: Path) -> None:
    conf = factory_conf(
        tmp_path,
        QUEUE
        + """
sched.activated.max_jobs_torun = 5
sched.statustest.allowed = True
periodic_hold_expr = JobStatus == 1
[Q]
wmsqueue = Q
""",
    )
    config = load_factory_config(str(conf))
    assert "Q" in config.queues
    assert any("sched.activated.max_jobs_torun" in w and "obsolete" in w for w in config.warnings)


def test_factory_section_errors(tmp_path: Path) -> None:
    write(tmp_path / "queues.conf", QUEUE + "[Q]\nwmsqueue = Q\n")
    conf = write(
        tmp_path / "apf.conf",
        "[Factory]\nqueueConf = queues.conf\nfactory.sleeep = 3\nwmsstatus.sim.maxage = soon\n",
    )
    with pytest.raises(ConfigError) as info:
        load_factory_config(str(conf))
    text = str(info.value)
    assert "[Factory] factoryId: required key is missing" in text
    assert "[Factory] factory.sleeep: unknown key (did you mean 'factory.sleep'?)" in text
    assert "[Factory] wmsstatus.sim.maxage: must be a number of seconds" in text
    with pytest.raises(ConfigError, match="the \\[Factory\\] section is missing"):
        load_factory_config(str(write(tmp_path / "empty.conf", "[Other]\na = 1\n")))
    with pytest.raises(ConfigError, match="cannot read"):
        load_factory_config(str(tmp_path / "nonexistent.conf"))


def test_apf_check_exit_status_and_effective_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = factory_conf(tmp_path, QUEUE + "[Q]\nwmsqueue = Q\nsched.maxpercycle.maximum = 50\n")
    assert main(["check", "--conf", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out
    assert "sched.maxpercycle.maximum = 50" in out
    assert "chain: Ready, MaxPerCycle" in out
    write(tmp_path / "queues.conf", QUEUE + "[Q]\nwmsqueue = Q\nsched.maxpercycle.maximum = lots\n")
    assert main(["check", "--conf", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "[Q] sched.maxpercycle.maximum" in err
    assert "Traceback" not in err


def test_secrets_do_not_appear_in_errors_or_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        tmp_path / "auth.conf",
        """
[cloud]
plugin = CloudKey
cloudkey.access_key_id = AKIDSECRETVALUE
cloudkey.secret_access_key = s3cr3t-very-secret
cloudkey.region = 42
cloudkey.bogus = s3cr3t-very-secret
""",
    )
    conf = factory_conf(tmp_path, QUEUE + "[Q]\nwmsqueue = Q\n", extra="authConf = auth.conf\n")
    assert main(["check", "--conf", str(conf)]) == 1
    captured = capsys.readouterr()
    assert "cloudkey.bogus" in captured.err
    assert "s3cr3t" not in captured.err + captured.out
    assert "AKIDSECRETVALUE" not in captured.err + captured.out
