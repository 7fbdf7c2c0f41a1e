"""Issue 13, "AutoPyFactory 2.4 migration": every key APF 2.4 documents works, is an alias with a
warning naming it, or is obsolete with what to use instead; ``apf check --migrate`` prints the
equivalent new configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_factory_config
from tests.helpers import write
from tests.trustkit import QUEUES, config_tree, no_traceback

# An AutoPyFactory 2.4 installation, as an operator has it (apf-reference.md section 4)
APF24_FACTORY = """
[Factory]
factoryId = BNL-apf-24
factoryAdminEmail = admins@example.org
factorySMTPServer = smtp.example.org
factoryMinEmailRepeatSeconds = 43200
factoryUser = autopyfactory
enablequeues = True
abort_no_queues = False
cycles = None
factory.sleep = 30
queueConf = file://{dir}/queues.conf
queueDirConf = None
config.queues.plugin = File
config.auth.plugin = File
config.reconfig = False
config.reconfig.interval = 3600
authmanager.enabled = True
authmanager.sleep = 30
authConf = {dir}/auth.conf
monitorConf = {dir}/monitor.conf
mappingsConf = {dir}/mappings.conf
baseLogDir = {dir}/logs
baseLogDirUrl = http://apf.example.org:25880
logserver.enabled = False
logserver.index = True
logserver.allowrobots = False
cleanlogs.keepdays = 14
wmsstatus.panda.sleep = 150
wmsstatus.panda.maxage = 360
wmsstatus.condor.sleep = 150
wmsstatus.condor.maxage = 360
batchstatus.condor.sleep = 150
batchstatus.condor.maxage = 360
maxperfactory.maximum = 1000
factory.statedir = {dir}/state
metrics.address = None
# obsolete ones
monitorURL = http://apfmon.lancs.ac.uk/api
proxymanager.enabled = False
proxymanager.sleep = 30
proxyConf = {dir}/proxy.conf
monitor.section = apfmon
monitor.interval = 600
cyclesToDo = 0
sleepTime = 0
config.queues.agis.baseurl = http://atlas-agis-api.cern.ch/request/pandaqueue/query/list/?json
config.queues.agis.defaultsfile = /etc/autopyfactory/agisdefaults.conf
wmsstatus.queue.sleep = 60
"""

APF24_QUEUES = """
[DEFAULT]
enabled = True
apfqueue.sleep = 360
cleanlogs.keepdays = 10
vo = ATLAS
wmsstatusplugin = Sim
batchstatusplugin = Local
batchsubmitplugin = Local
executable = /bin/true
executable.defaultarguments = -q %(wmsqueue)s --vo %(vo)s
schedplugin = Ready, Scale, MaxPerCycle, MinPerCycle, StatusTest, StatusOffline, MaxPending
sched.scale.factor = 0.5
sched.maxpercycle.maximum = 40
sched.minpercycle.minimum = 0
sched.statustest.pilots = 2
sched.statustest.allowed = True
sched.statusoffline.pilots = 0
sched.statusoffline.allowed = True
sched.maxpending.maximum = 60
sched.maxpending.allow_negative = False
sched.activated.max_pilots_per_cycle = 50
batchsubmit.local.peaceful = False
batchsubmit.local.killorder = oldest
override = True
globusrsl.gram5.queue = short

[EXAMPLE_SITE-ce01]
wmsqueue = EXAMPLE_SITE
batchqueue = EXAMPLE_SITE
executable.arguments = %(executable.defaultarguments)s --job-type managed
monitorsection = apfmon
"""

APF24_AUTH = """
[atlas-prod]
plugin = X509
x509.proxyfile = /tmp/prodProxy
x509.vorole = atlas:/atlas/Role=production
x509.lifetime = 604800
x509.checktime = 3600
x509.minlife = 259200
x509.renew = False
x509.initdelay = 0
x509.interruptcheck = 1
authbasedir = ~/etc/autopyfactory/auth
"""


@pytest.fixture
def apf24(tmp_path: Path) -> Path:
    write(tmp_path / "queues.conf", APF24_QUEUES)
    write(tmp_path / "auth.conf", APF24_AUTH)
    write(
        tmp_path / "monitor.conf",
        "[apfmon]\nmonitorplugin = Dummy\nmonitorURL = http://apfmon.lancs.ac.uk/api\n",
    )
    return write(tmp_path / "autopyfactory.conf", APF24_FACTORY.format(dir=tmp_path))


def test_an_apf24_installation_loads_with_warnings_naming_each_old_key(apf24: Path) -> None:
    config = load_factory_config(str(apf24))
    queue = config.queues["EXAMPLE_SITE-ce01"]
    warnings = "\n".join(config.warnings)
    no_traceback(warnings)
    # aliases work, and the warning names old and new
    options = queue.batchsubmit.options
    assert options.overlay_peaceful is False and options.overlay_killorder == "oldest"  # type: ignore[attr-defined]
    assert (
        "batchsubmit.local.peaceful: AutoPyFactory 2.4 name of 'batchsubmit.local.overlay.peaceful'"
        in warnings
    )
    assert (
        "batchsubmit.local.killorder: AutoPyFactory 2.4 name of 'batchsubmit.local.overlay.killorder'"
        in warnings
    )
    # obsolete keys: one warning each (in [DEFAULT], not one per queue), with what to use instead
    for key, instead in [
        ("sched.statustest.allowed", "listing the plugin in schedplugin is the permission"),
        ("sched.statusoffline.allowed", "listing the plugin in schedplugin is the permission"),
        ("sched.activated.max_pilots_per_cycle", "use Ready with MaxPerCycle"),
        ("override", "remove it"),
        ("monitorURL", "belongs in monitor.conf"),
        ("proxymanager.enabled", "put X509 profiles in auth.conf"),
        ("proxyConf", "put X509 profiles in auth.conf"),
        ("monitor.section", "monitorsection"),
        ("cyclesToDo", "use cycles"),
        ("config.queues.agis.baseurl", "AGIS was retired"),
        ("config.queues.agis.defaultsfile", "AGIS was retired"),
        ("wmsstatus.queue.sleep", "the Queue WMS plugin was a stub"),
    ]:
        lines = [w for w in config.warnings if f" {key}: " in w]
        assert len(lines) == 1, (key, warnings)
        assert instead in lines[0], lines[0]
    assert "did you mean" not in warnings  # monitorURL is not "did you mean 'monitor'?"
    assert queue.settings.executable_arguments == "-q EXAMPLE_SITE --vo ATLAS --job-type managed"


def test_statustest_allowed_is_a_warning_even_with_the_plugin_in_the_chain(tmp_path: Path) -> None:
    conf = config_tree(
        tmp_path,
        QUEUES.replace("schedplugin = Ready, MaxPerCycle", "schedplugin = Ready, StatusTest")
        + "sched.statustest.allowed = True\n",
    )
    config = load_factory_config(str(conf))
    assert any("sched.statustest.allowed: obsolete" in w for w in config.warnings)


def test_ec2_keeps_its_own_peaceful_key(tmp_path: Path) -> None:
    """CondorEC2 declares ``peaceful`` itself (APF 2.4's VM retirement): not renamed."""
    from autopyfactory.config.loader import _queue_migration

    assert _queue_migration("batchsubmit.condorec2.peaceful") is None
    assert (
        _queue_migration("batchsubmit.condorosgce.peaceful").new == "batchsubmit.condorosgce.overlay.peaceful"
    )  # type: ignore[union-attr]


def test_retired_plugins_say_what_replaces_them(tmp_path: Path) -> None:
    conf = config_tree(
        tmp_path,
        QUEUES.replace("schedplugin = Ready, MaxPerCycle", "schedplugin = Fillactivated")
        + "wmsstatusplugin = Queue\n",
    )
    with pytest.raises(ConfigError) as info:
        load_factory_config(str(conf))
    text = str(info.value)
    assert "sched plugin 'Fillactivated' no longer exists: it was broken in AutoPyFactory; use Ready" in text
    assert "wmsstatus plugin 'Queue' no longer exists: it was a stub" in text
    conf = config_tree(tmp_path, factory_extra="config.queues.plugin = File, Agis\n")
    with pytest.raises(ConfigError, match="Agis is not supported: AGIS was retired"):
        load_factory_config(str(conf))


def test_apf_check_migrate_prints_the_new_configuration(
    apf24: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--conf", str(apf24), "--migrate"]) == 0
    out = capsys.readouterr()
    no_traceback(out.out, out.err)
    assert "batchsubmit.local.overlay.peaceful = False" in out.out
    assert "batchsubmit.local.overlay.killorder = oldest" in out.out
    assert "# sched.statustest.allowed = True" in out.out  # commented out, with the reason above it
    assert "# apf: obsolete AutoPyFactory key, ignored: listing the plugin" in out.out
    assert "# monitorURL = http://apfmon.lancs.ac.uk/api" in out.out
    assert (
        f"{apf24.parent / 'queues.conf'}: batchsubmit.local.peaceful -> batchsubmit.local.overlay.peaceful"
        in out.err
    )


def test_migrated_files_load_without_warnings_about_old_keys(apf24: Path, tmp_path: Path) -> None:
    out = tmp_path / "new"
    assert main(["check", "--conf", str(apf24), "--migrate-to", str(out)]) == 0
    factory = (
        (out / "autopyfactory.conf")
        .read_text()
        .replace(str(apf24.parent) + "/queues.conf", str(out / "queues.conf"))
    )
    write(out / "autopyfactory.conf", factory)
    config = load_factory_config(str(out / "autopyfactory.conf"))
    assert not [w for w in config.warnings if "AutoPyFactory" in w and "queues.conf" in w], config.warnings
    assert config.queues["EXAMPLE_SITE-ce01"].batchsubmit.options.overlay_killorder == "oldest"  # type: ignore[attr-defined]


def test_proxy_conf_profiles_are_migrated_to_auth_conf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path / "auth.conf", "[atlas]\nproxyfile = /tmp/x509up\nvorole = atlas:/atlas\nlifetime = 345600\n"
    )
    conf = config_tree(tmp_path, factory_extra="authConf = auth.conf\n")
    with pytest.raises(ConfigError, match=r"looks like a proxy\.conf profile"):
        load_factory_config(str(conf))
    out = tmp_path / "new"
    assert main(["check", "--conf", str(conf), "--migrate-to", str(out)]) == 0
    capsys.readouterr()
    text = (out / "auth.conf").read_text()
    assert (
        "plugin = X509" in text
        and "x509.proxyfile = /tmp/x509up" in text
        and "x509.lifetime = 345600" in text
    )
