"""HTCondor submit flavours: real config loading, real htcondor2.Submit, job ads in the stand-in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import classad2
import htcondor2
import pytest

from autopyfactory.config.errors import ConfigError
from autopyfactory.model import PilotState, PilotTags
from autopyfactory.plugins.base import PluginError
from autopyfactory.plugins.base import load as load_plugin
from autopyfactory.plugins.batch.condor import schedd as sd
from autopyfactory.plugins.batch.condor.base import (
    format_environment,
    split_condor_attributes,
)
from condor_standin import FACTORY_ID, StandinPool, context, load_config, submitter

DEFAULTS = """\
[DEFAULT]
enabled = True
batchstatusplugin = Condor
schedplugin = Ready
wmsqueue = TESTQ
executable = /usr/libexec/apf-wrapper.sh
executable.arguments = -q %(wmsqueue)s --vo ATLAS
"""

AUTH = """\
[atlas-prod]
plugin = X509
x509.proxyfile = {proxy}

[atlas-backup]
plugin = X509
x509.proxyfile = {backup}

[bosco]
plugin = SSH
ssh.privatekeyfile = {key}

[bosco-inline]
plugin = SSH
ssh.type = ed25519
ssh.privatekey = {inline_key}

[aws]
plugin = CloudKey
cloudkey.access_key_id_file = {access}
cloudkey.secret_access_key_file = {secret}

[aws-inline]
plugin = CloudKey
cloudkey.access_key_id = AKIAEXAMPLEINLINE
cloudkey.secret_access_key = inline-secret-do-not-show
"""

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
INLINE_SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjEAAAAA -----END OPENSSH PRIVATE KEY-----"
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    creds = tmp_path / "creds"
    creds.mkdir()
    out = {}
    for name, text in {
        "proxy": "proxy",
        "backup": "backup proxy",
        "key": "ssh key",
        "access": "AKIAEXAMPLE",
        "secret": SECRET,
    }.items():
        path = creds / name
        path.write_text(text)
        out[name] = path
    return out


@pytest.fixture
def pool() -> StandinPool:
    pool = StandinPool(now=1_709_280_000.0)  # 2024-03-01 08:00 UTC
    pool.add_schedd()
    previous = sd.set_connector(pool.connect)
    yield pool
    sd.set_connector(previous)


def load(tmp_path: Path, files: dict[str, Path], queues: str):  # type: ignore[no-untyped-def]
    auth = AUTH.format(inline_key=INLINE_SSH_KEY.replace("\n", " "), **files)
    cfg = load_config(tmp_path, DEFAULTS + queues, auth=auth)
    return cfg, context(cfg, monitor_url="http://apfmon.example.org/api")


TAGS = PilotTags(FACTORY_ID, "Q", "intent-1")


def tags(queue: str) -> PilotTags:
    return PilotTags(FACTORY_ID, queue, "intent-1")


def build(tmp_path, files, queues, name):  # type: ignore[no-untyped-def]
    cfg, ctx = load(tmp_path, files, queues)
    plugin = submitter(cfg, ctx, name)
    desc = plugin.description(tags(name), 1_709_280_000.0)
    sub = plugin.make_submit(desc)
    assert isinstance(sub, htcondor2.Submit)
    return plugin, desc, sub


# ---- pure helpers ------------------------------------------------------------------------------


def test_condor_attributes_commas_and_backslashes() -> None:
    text = r"a = 1, b = x\,y, c = p\\, d = q\\\,r, e = s\t, +Z = ifThenElse(x\, 1\, 2)"
    assert split_condor_attributes(text) == [
        ("a", "1"),
        ("b", "x,y"),  # odd run: literal comma
        ("c", "p\\"),  # even run: the pair collapses and the comma splits
        ("d", "q\\,r"),  # three: one backslash kept, comma literal
        ("e", r"s\t"),  # a lone backslash before anything else stays
        ("+Z", "ifThenElse(x, 1, 2)"),
    ]
    # an unescaped comma inside a value leaves a piece that is not 'key = value': an error
    with pytest.raises(ValueError, match="'1' is not 'key = value'"):
        split_condor_attributes("+Z = ifThenElse(x, 1, 2)")
    assert split_condor_attributes("  ,  ") == []
    with pytest.raises(ValueError, match="not 'key = value'"):
        split_condor_attributes("just text")


def test_environment_quoting_round_trips_through_the_bindings() -> None:
    env = format_environment([("A", "1"), ("B", "two words"), ("C", "it's"), ("D", 'say "hi"')], "E=5")
    assert env == '''"A=1 B='two words' C='it''s' D='say ""hi""' E=5"'''
    sub = htcondor2.Submit({"executable": "/bin/true", "environment": env})
    assert sub["environment"] == env


# ---- flavours ------------------------------------------------------------------------------------


def test_osgce_description_and_job_ads(tmp_path, files, pool) -> None:  # type: ignore[no-untyped-def]
    queues = """
[ANALY_TEST-ce01]
wmsqueue = ANALY_TEST
batchsubmitplugin = CondorOSGCE
batchsubmit.condorosgce.gridresource = ce01.example.org
batchsubmit.condorosgce.proxy = atlas-prod
batchsubmit.condorosgce.condor_attributes = periodic_remove = (JobStatus == 5 && (time() - EnteredCurrentStatus) > 7200)
batchsubmit.condorosgce.condor_attributes.+xcount = 8
batchsubmit.condorosgce.condor_attributes.+maxMemory = 16000
batchsubmit.condorosgce.environ = RUCIO_ACCOUNT=pilot
"""
    plugin, _, sub = build(tmp_path, files, queues, "ANALY_TEST-ce01")
    d = dict(sub)
    assert d["universe"] == "grid"
    assert d["grid_resource"] == "condor ce01.example.org ce01.example.org:9619"
    assert d["MY.Nonessential"] == "True"
    assert d["MY.TransferOutput"] == '""'
    assert d["x509userproxy"] == str(files["proxy"])
    assert d["MY.MATCH_APF_QUEUE"] == '"ANALY_TEST-ce01"'
    assert d["MY.APF_QUEUE"] == '"ANALY_TEST-ce01"'
    assert d["MY.APF_FACTORY_ID"] == f'"{FACTORY_ID}"'
    assert d["MY.APF_INTENT_ID"] == '"intent-1"'
    assert d["MY.xcount"] == "8" and d["MY.maxMemory"] == "16000"
    assert d["periodic_remove"].startswith("(JobStatus == 5")
    assert d["executable"] == "/usr/libexec/apf-wrapper.sh"
    assert d["arguments"] == "-q ANALY_TEST --vo ATLAS"
    assert d["notify_user"] == "apf-admin@example.org"
    assert d["Dir"] == f"{tmp_path}/logs/2024-03-01/ANALY_TEST-ce01"
    assert d["output"] == "$(Dir)/$(Cluster).$(Process).out"

    pilots = plugin.submit(3, tags("ANALY_TEST-ce01"), pool.now)
    assert [p.backend_id for p in pilots] == ["1.0", "1.1", "1.2"]
    assert {p.state for p in pilots} == {PilotState.PENDING}
    schedd = pool.schedds[sd.Address()]
    # one transaction: one submit call, one cluster, three procs
    assert [c.args for c in pool.calls if c.op == "submit"] == [(1, 3)]
    ad = schedd.jobs["1.2"]
    url = "http://factory.example.org:25880/2024-03-01/ANALY_TEST-ce01"
    assert ad.eval("MATCH_APF_QUEUE") == "ANALY_TEST-ce01"
    assert ad.eval("APF_OUTURL") == f"{url}/1.2.out"
    assert ad.eval("APF_LOGURL") == f"{url}/1.2.log"
    assert ad.eval("APF_ERRURL") == f"{url}/1.2.err"
    assert ad.eval("FACTORY_JOBID").endswith("#1.2")
    assert ad.eval("xcount") == 8
    assert ad.eval("Out") == f"{tmp_path}/logs/2024-03-01/ANALY_TEST-ce01/1.2.out"
    env = ad.eval("Environment")
    for part in (
        f"PANDA_JSID={FACTORY_ID}",
        f"GTAG={url}/1.2.out",
        "APFCID=1.2",
        f"APFFID={FACTORY_ID}",
        "APFMON=http://apfmon.example.org/api",
        "FACTORYQUEUE=ANALY_TEST-ce01",
        "FACTORYUSER=apfuser",
        "RUCIO_ACCOUNT=pilot",
    ):
        assert part in env.split(), part
    # the operator's copy of the description in the day's log directory
    jdl = tmp_path / "logs/2024-03-01/ANALY_TEST-ce01/submit.jdl"
    assert jdl.read_text().endswith("queue 3\n")
    assert stat.S_IMODE(jdl.stat().st_mode) == 0o600


def test_osgce_port_and_bad_gridresource(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    q = "[Q]\nbatchsubmitplugin = CondorOSGCE\nbatchsubmit.condorosgce.gridresource = ce02.example.org:9620\n"
    _, _, sub = build(tmp_path, files, q, "Q")
    assert sub["grid_resource"] == "condor ce02.example.org ce02.example.org:9620"
    cfg, ctx = load(tmp_path, files, "[Q]\nbatchsubmitplugin = CondorOSGCE\n")
    with pytest.raises(PluginError, match=r"\[Q\] batchsubmit.condorosgce.gridresource is required"):
        submitter(cfg, ctx, "Q")


def test_ce_and_grid_flavours(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    q = """
[CE]
batchsubmitplugin = CondorCE
batchsubmit.condorce.gridresource = arc https://arc01.example.org:443/arex
[GRID]
batchsubmitplugin = CondorGrid
batchsubmit.condorgrid.proxy = atlas-prod
batchsubmit.condorgrid.condor_attributes.grid_resource = condor ce9.example.org ce9.example.org:9619
"""
    _, _, ce = build(tmp_path, files, q, "CE")
    assert ce["universe"] == "grid" and ce["MY.Nonessential"] == "True"
    assert ce["grid_resource"] == "arc https://arc01.example.org:443/arex"
    assert "x509userproxy" not in ce
    _, _, grid = build(tmp_path, files, q, "GRID")
    assert grid["universe"] == "grid" and "MY.Nonessential" not in grid
    # APF: condor_attributes.<NAME> may even set grid_resource
    assert grid["grid_resource"] == "condor ce9.example.org ce9.example.org:9619"
    assert grid["x509userproxy"] == str(files["proxy"])


def test_nordugrid_rsl(tmp_path, files, pool) -> None:  # type: ignore[no-untyped-def]
    q = """
[ARC]
batchsubmitplugin = CondorNordugrid
batchsubmit.condornordugrid.gridresource = arc01.example.org
nordugridrsl.queue = grid
nordugridrsl.runtimeenvironment = APPS/HEP/ATLAS-SITE
nordugridrsl.nordugridrsladd = (memory = 2000)
nordugridrsl.addenv.RUCIO_ACCOUNT = pilot
"""
    plugin, _, sub = build(tmp_path, files, q, "ARC")
    assert sub["grid_resource"] == "nordugrid arc01.example.org"
    rsl = sub["nordugrid_rsl"]
    assert rsl.startswith("(queue = grid)(runtimeenvironment = APPS/HEP/ATLAS-SITE)(memory = 2000)")
    assert '("APFCID" "$(Cluster).$(Process)")' in rsl
    assert f'("APFFID" "{FACTORY_ID}")' in rsl
    assert '("RUCIO_ACCOUNT" "pilot")' in rsl
    plugin.submit(2, tags("ARC"), pool.now)
    ad = pool.schedds[sd.Address()].jobs["1.1"]
    assert '("APFCID" "1.1")' in ad.eval("NordugridRSL")


def test_nordugrid_whole_rsl_wins(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    q = """
[ARC]
batchsubmitplugin = CondorNordugrid
batchsubmit.condornordugrid.gridresource = arc01.example.org
nordugridrsl.nordugridrsl = (jobname = pilot)
nordugridrsl.queue = ignored
"""
    _, _, sub = build(tmp_path, files, q, "ARC")
    assert sub["nordugrid_rsl"].startswith("(jobname = pilot)(environment = ")
    assert "ignored" not in sub["nordugrid_rsl"]


def test_local_and_blahp(tmp_path, files, pool) -> None:  # type: ignore[no-untyped-def]
    q = """
[LOCAL]
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.proxy = None
[LSF]
batchsubmitplugin = CondorLSF
[PBS]
batchsubmitplugin = CondorPBS
batchsubmit.condorpbs.proxy = atlas-prod
"""
    plugin, _, local = build(tmp_path, files, q, "LOCAL")
    assert local["universe"] == "vanilla"
    assert local["should_transfer_files"] == "IF_NEEDED"
    assert local["MY.TransferOutput"] == '""'
    assert "x509userproxy" not in local
    plugin.submit(1, tags("LOCAL"), pool.now)
    assert pool.schedds[sd.Address()].jobs["1.0"].eval("JobUniverse") == 5
    _, _, lsf = build(tmp_path, files, q, "LSF")
    assert (lsf["universe"], lsf["grid_resource"]) == ("grid", "batch lsf")
    _, _, pbs = build(tmp_path, files, q, "PBS")
    assert pbs["grid_resource"] == "batch pbs"
    assert pbs["x509userproxy"] == str(files["proxy"])


def test_ssh_uses_profile_key_without_touching_home(tmp_path, files, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    q = """
[HPC]
batchsubmitplugin = CondorSSH
batchsubmit.condorssh.batch = slurm
batchsubmit.condorssh.host = login.hpc.example.org
batchsubmit.condorssh.user = atlaspilot
batchsubmit.condorssh.authprofile = bosco
[HPC2]
batchsubmitplugin = CondorSSH
batchsubmit.condorssh.batch = pbs
batchsubmit.condorssh.host = login2.hpc.example.org
batchsubmit.condorssh.user = atlas
batchsubmit.condorssh.authprofile = bosco-inline
"""
    _, _, sub = build(tmp_path, files, q, "HPC")
    assert sub["universe"] == "grid"
    assert sub["grid_resource"] == f"batch slurm atlaspilot@login.hpc.example.org --rgahp-key {files['key']}"
    _, _, sub2 = build(tmp_path, files, q, "HPC2")
    written = tmp_path / "state" / "condor" / "ssh" / "bosco-inline" / "id_ed25519"
    assert sub2["grid_resource"] == f"batch pbs atlas@login2.hpc.example.org --rgahp-key {written}"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in written.read_text()
    assert "PRIVATE KEY" not in str(sub2)
    assert not (home / ".ssh").exists()


def test_ssh_bad_batch_type_is_a_config_error(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    q = """
[HPC]
batchsubmitplugin = CondorSSH
batchsubmit.condorssh.batch = torque
batchsubmit.condorssh.host = h
batchsubmit.condorssh.user = u
batchsubmit.condorssh.authprofile = bosco
"""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, files, q)
    msg = str(err.value)
    assert "[HPC] batchsubmit.condorssh.batch" in msg and "queues.conf" in msg


def test_ec2_description_keeps_secrets_out(tmp_path, files, pool) -> None:  # type: ignore[no-untyped-def]
    q = """
[CLOUD]
wmsqueue = LOCAL_POOL
batchsubmitplugin = CondorEC2
batchsubmit.condorec2.gridresource = https://ec2.us-east-1.amazonaws.com
batchsubmit.condorec2.ami_id = ami-0123456789abcdef0
batchsubmit.condorec2.instance_type = m5.xlarge
batchsubmit.condorec2.security_groups = apf-workers
batchsubmit.condorec2.spot_price = 0.12
batchsubmit.condorec2.user_data = POOL_PASSWORD=hunter2
batchsubmit.condorec2.authprofile = aws
[CLOUD2]
batchsubmitplugin = CondorEC2
batchsubmit.condorec2.gridresource = https://ec2.example.org
batchsubmit.condorec2.ami_id = ami-1
batchsubmit.condorec2.instance_type = t3.small
batchsubmit.condorec2.authprofile = aws-inline
"""
    plugin, _, sub = build(tmp_path, files, q, "CLOUD")
    d = dict(sub)
    assert d["universe"] == "grid"
    assert d["grid_resource"] == "ec2 https://ec2.us-east-1.amazonaws.com"
    assert d["executable"] == "CLOUD"  # the queue name, as APF
    assert d["ec2_ami_id"] == "ami-0123456789abcdef0"
    assert d["ec2_instance_type"] == "m5.xlarge"
    assert d["ec2_access_key_id"] == str(files["access"])
    assert d["ec2_secret_access_key"] == str(files["secret"])
    assert d["ec2_security_groups"] == "apf-workers"
    assert d["ec2_spot_price"] == "0.12"
    assert d["ec2_user_data"] == "POOL_PASSWORD=hunter2"
    assert SECRET not in str(sub)
    plugin.submit(2, tags("CLOUD"), pool.now)
    ad = pool.schedds[sd.Address()].jobs["1.0"]
    assert ad.eval("EC2SecretAccessKey") == str(files["secret"])
    assert ad.eval("MATCH_APF_QUEUE") == "CLOUD"
    jdl = (tmp_path / "logs/2024-03-01/CLOUD/submit.jdl").read_text()
    assert "hunter2" not in jdl and "ec2_user_data = <redacted>" in jdl
    assert SECRET not in jdl

    # an inline CloudKey profile becomes 0600 files; the secret shows nowhere else
    _, _, sub2 = build(tmp_path, files, q, "CLOUD2")
    secret_file = Path(sub2["ec2_secret_access_key"])
    assert secret_file.read_text() == "inline-secret-do-not-show"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert "inline-secret-do-not-show" not in str(sub2)
    cfg, _ = load(tmp_path, files, q)
    assert "inline-secret-do-not-show" not in repr(cfg.auth["aws-inline"].options)


def test_ec2_errors_name_paths_not_contents(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    q = f"""
[CLOUD]
batchsubmitplugin = CondorEC2
batchsubmit.condorec2.gridresource = https://ec2.example.org
batchsubmit.condorec2.ami_id = ami-1
batchsubmit.condorec2.instance_type = t3.small
batchsubmit.condorec2.access_key_id = {files["access"]}
batchsubmit.condorec2.secret_access_key = {tmp_path}/nope
[NOKEYS]
batchsubmitplugin = CondorEC2
batchsubmit.condorec2.gridresource = https://ec2.example.org
batchsubmit.condorec2.ami_id = ami-1
batchsubmit.condorec2.instance_type = t3.small
"""
    cfg, ctx = load(tmp_path, files, q)
    with pytest.raises(PluginError, match=rf"secret key file {tmp_path}/nope does not exist"):
        submitter(cfg, ctx, "CLOUD")
    with pytest.raises(PluginError, match=r"batchsubmit.condorec2.authprofile \(a CloudKey profile\)"):
        submitter(cfg, ctx, "NOKEYS")


# ---- keys: precedence, proxies, validation -------------------------------------------------------


def test_key_precedence_osgce_over_ce_over_grid_over_base(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    q = """
[DEFAULT]
batchsubmit.condorbase.proxy = atlas-backup
batchsubmit.condorgrid.proxy = atlas-prod
batchsubmit.condorbase.environ = LEVEL=base
batchsubmit.condorce.environ = LEVEL=ce
batchsubmit.condorbase.condor_attributes.+Level = "base"
batchsubmit.condorgrid.condor_attributes.+Level = "grid"
batchsubmit.condorce.gridresource = ce-from-ce.example.org

[A]
batchsubmitplugin = CondorOSGCE
batchsubmit.condorosgce.environ = LEVEL=osgce

[B]
batchsubmitplugin = CondorOSGCE

[C]
batchsubmitplugin = CondorLocal
"""
    _, _, a = build(tmp_path, files, q, "A")
    assert "LEVEL=osgce" in a["environment"] and "LEVEL=ce" not in a["environment"]
    assert a["x509userproxy"] == str(files["proxy"])  # condorgrid beats condorbase
    assert a["MY.Level"] == '"grid"'
    assert a["grid_resource"] == "condor ce-from-ce.example.org ce-from-ce.example.org:9619"
    _, _, b = build(tmp_path, files, q, "B")
    assert "LEVEL=ce" in b["environment"]
    # CondorLocal reads condorlocal and condorbase only
    _, _, c = build(tmp_path, files, q, "C")
    assert c["x509userproxy"] == str(files["backup"])
    assert "LEVEL=base" in c["environment"] and c["MY.Level"] == '"base"'


def test_proxy_list_first_defined_wins_and_none_disables(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    q = """
[A]
batchsubmitplugin = CondorGrid
batchsubmit.condorgrid.proxy = not-defined, bosco, atlas-backup, atlas-prod
[B]
batchsubmitplugin = CondorGrid
batchsubmit.condorgrid.proxy = None
[C]
batchsubmitplugin = CondorGrid
batchsubmit.condorgrid.proxy = nope1, nope2
"""
    _, _, a = build(tmp_path, files, q, "A")
    assert a["x509userproxy"] == str(files["backup"])  # undefined and non-X509 profiles are skipped
    _, _, b = build(tmp_path, files, q, "B")
    assert "x509userproxy" not in b
    cfg, ctx = load(tmp_path, files, q)
    with pytest.raises(PluginError) as err:
        submitter(cfg, ctx, "C")
    assert "[C] batchsubmit.condorgrid.proxy" in str(err.value)
    assert "'nope1', 'nope2'" in str(err.value) and "atlas-prod" in str(err.value)


def test_unknown_key_names_file_section_key_with_hint(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    q = "[Q]\nbatchsubmitplugin = CondorOSGCE\nbatchsubmit.condorosgce.gridresouce = ce\n"
    with pytest.raises(ConfigError) as err:
        load(tmp_path, files, q)
    msg = str(err.value)
    assert "queues.conf" in msg and "[Q] batchsubmit.condorosgce.gridresouce" in msg
    assert "did you mean 'batchsubmit.condorosgce.gridresource'" in msg


def test_missing_executable_is_an_error(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(
        tmp_path,
        "[Q]\nenabled = True\nbatchstatusplugin = Condor\nschedplugin = Ready\nbatchsubmitplugin = CondorLocal\n",
    )
    with pytest.raises(PluginError, match=r"\[Q\] batchsubmitplugin = CondorLocal needs 'executable'"):
        submitter(cfg, context(cfg), "Q")


@pytest.mark.parametrize(
    ("plugin", "what"), [("CondorCREAM", "CREAM"), ("CondorGT2", "gt2"), ("CondorGT5", "GRAM5")]
)
def test_retired_middleware_gives_a_clear_error(tmp_path, files, plugin, what) -> None:  # type: ignore[no-untyped-def]
    low = plugin.lower()
    q = f"""
[OLD]
batchsubmitplugin = {plugin}
batchsubmit.{low}.gridresource = cream01.example.org
batchsubmit.{low}.webservice = cream01.example.org
"""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, files, q)
    msg = str(err.value)
    assert len(err.value.problems) == 1, msg  # one useful error, not 'unknown key' noise
    problem = err.value.problems[0]
    assert (problem.section, problem.key) == ("OLD", "batchsubmitplugin")
    lines = (tmp_path / "queues.conf").read_text().splitlines()
    line = lines.index(f"batchsubmitplugin = {plugin}") + 1
    assert (problem.file, problem.line) == (str(tmp_path / "queues.conf"), line)
    assert what in msg and "retired" in msg
    assert "CondorOSGCE" in msg and "CondorNordugrid" in msg
    with pytest.raises(PluginError, match="retired"):
        load_plugin("batchsubmit", plugin)


def test_remote_submission_by_keys_and_legacy_submitargs(tmp_path, files, pool) -> None:  # type: ignore[no-untyped-def]
    remote = sd.Address(schedd="schedd02.example.org", collector="cm.example.org:9618")
    pool.add_schedd(remote)
    q = """
[R1]
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.scheddhost = schedd02.example.org
batchsubmit.condorlocal.collectorhost = cm.example.org
[R2]
batchsubmitplugin = CondorLocal
batchsubmit.condorbase.submitargs = -remote schedd02.example.org -pool cm.example.org
[R3]
batchsubmitplugin = CondorLocal
batchsubmit.condorbase.submitargs = -spool
"""
    cfg, ctx = load(tmp_path, files, q)
    for name in ("R1", "R2"):
        plugin = submitter(cfg, ctx, name)
        assert plugin.address == remote
        assert plugin.target() == "condor:schedd schedd02.example.org via collector cm.example.org:9618"
        plugin.submit(1, tags(name), pool.now)
    assert len(pool.schedds[remote].jobs) == 2
    assert not pool.schedds[sd.Address()].jobs
    with pytest.raises(PluginError, match=r"\[R3\] batchsubmit.condorlocal.submitargs: cannot use '-spool'"):
        submitter(cfg, ctx, "R3")


def test_cancel_spares_pilots_that_started(tmp_path, files, pool) -> None:  # type: ignore[no-untyped-def]
    cfg, ctx = load(tmp_path, files, "[L]\nbatchsubmitplugin = CondorLocal\n")
    plugin = submitter(cfg, ctx, "L")
    plugin.submit(3, tags("L"), pool.now)
    schedd = pool.schedds[sd.Address()]
    schedd.start("1.1")
    schedd.set_status("1.2", 5)
    plugin.cancel(["1.0", "1.1", "1.2"])
    assert set(schedd.jobs) == {"1.1"}  # idle and held removed, the running one kept
    plugin.retire(["1.1"])  # no kill: a pilot job cannot be drained, it is left alone
    assert set(schedd.jobs) == {"1.1"}
    plugin.retire(["1.1"], kill=True)
    assert not schedd.jobs
    assert [ad.eval("JobStatus") for ad in schedd.history_ads] == [3, 3, 3]


def test_submit_failure_names_the_schedd(tmp_path, files, pool) -> None:  # type: ignore[no-untyped-def]
    q = "[L]\nbatchsubmitplugin = CondorLocal\nbatchsubmit.condorlocal.scheddhost = nowhere.example.org\n"
    cfg, ctx = load(tmp_path, files, q)
    plugin = submitter(cfg, ctx, "L")
    with pytest.raises(Exception, match=r"schedd nowhere\.example\.org"):
        plugin.submit(1, tags("L"), pool.now)


def test_plugin_modules_do_not_import_the_bindings() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from autopyfactory.plugins.base import load, names\n"
        "loaded = 0\n"
        "for kind in ('batchsubmit', 'batchstatus', 'wmsstatus'):\n"
        "    for n in names(kind):\n"
        "        if n.startswith('Condor') and n not in ('CondorCREAM', 'CondorGT2', 'CondorGT5'):\n"
        "            load(kind, n)\n"
        "            loaded += 1\n"
        "print(loaded, sorted(m for m in ('htcondor2', 'classad2') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "11 []"


def test_classad_quote_matches_the_library() -> None:
    for text in ["plain", 'with "quotes"', "back\\slash", 'both \\"x\\"']:
        assert sd.quote(text) == classad2.quote(text)
        assert classad2.ExprTree(sd.quote(text)).eval() == text


def test_submit_description_is_deterministic_per_day(tmp_path, files) -> None:  # type: ignore[no-untyped-def]
    cfg, ctx = load(tmp_path, files, "[L]\nbatchsubmitplugin = CondorLocal\n")
    plugin = submitter(cfg, ctx, "L")
    d1 = plugin.description(tags("L"), 1_709_251_199.0).get("Dir")  # 2024-02-29 23:59:59 UTC
    d2 = plugin.description(tags("L"), 1_709_251_200.0).get("Dir")  # 2024-03-01 00:00:00 UTC
    assert d1.endswith("/2024-02-29/L") and d2.endswith("/2024-03-01/L")
    assert os.path.commonpath([d1, d2]) == f"{tmp_path}/logs"
