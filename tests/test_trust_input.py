"""Issue 13, "broken input": every bad file, value or source gives a clear error naming where it
is (file or URL, line, section, key), never a traceback or a hang, and nothing invalid is accepted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.config.errors import ConfigError
from autopyfactory.config.loader import load_factory_config
from tests.helpers import write
from tests.trustkit import QUEUES, RawHTTP, apf, config_tree, http_ok, no_traceback


def problems_of(conf: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_factory_config(str(conf))
    text = str(info.value)
    no_traceback(text)
    return text


def check(conf: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--conf", str(conf)])
    out = capsys.readouterr()
    no_traceback(out.out, out.err)
    return code, out.err + out.out


# -- encodings and binary content ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (b"[Q1]\nwmsqueue = Q1\n# caf\xe9\n", ":3: is not valid UTF-8"),
        (b"[Q1]\x00\x01\x02\x00", ":1: contains NUL bytes"),
        ("[Q1]\nwmsqueue = Q1\n".encode("utf-16"), ": is UTF-16 text"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", ":1: contains NUL bytes"),
    ],
    ids=["latin1", "binary", "utf16", "elf"],
)
def test_non_utf8_binary_and_utf16_queue_files_give_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, expect: str
) -> None:
    conf = config_tree(tmp_path)
    (tmp_path / "queues.conf").write_bytes(data)
    code, text = check(conf, capsys)
    assert code == 1
    assert f"{tmp_path / 'queues.conf'}{expect}" in text, text


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    conf = config_tree(tmp_path)
    (tmp_path / "queues.conf").write_bytes(b"\xef\xbb\xbf" + QUEUES.lstrip().encode())
    assert "Q1" in load_factory_config(str(conf)).queues


def test_bad_files_in_queuedirconf_and_a_directory_named_conf(tmp_path: Path) -> None:
    conf = config_tree(tmp_path, factory_extra="queueDirConf = conf.d\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-latin1.conf").write_bytes(b"[X]\nwmsqueue = X\nvo = caf\xe9\n")
    (tmp_path / "conf.d" / "20-utf16.conf").write_bytes("[Y]\nwmsqueue = Y\n".encode("utf-16"))
    (tmp_path / "conf.d" / "30-dir.conf").mkdir()
    os.mkfifo(tmp_path / "conf.d" / "40-fifo.conf")
    started = time.monotonic()
    text = problems_of(conf)
    assert time.monotonic() - started < 10  # the FIFO is not opened for reading
    assert f"{tmp_path / 'conf.d' / '10-latin1.conf'}:3: is not valid UTF-8" in text
    assert f"{tmp_path / 'conf.d' / '20-utf16.conf'}: is UTF-16 text" in text
    assert f"{tmp_path / 'conf.d' / '30-dir.conf'}: is a directory" in text
    assert f"{tmp_path / 'conf.d' / '40-fifo.conf'}: is a FIFO" in text


@pytest.mark.timeout(30)
def test_a_fifo_or_device_as_queueconf_is_refused_without_hanging(tmp_path: Path) -> None:
    conf = config_tree(tmp_path)
    (tmp_path / "queues.conf").unlink()
    os.mkfifo(tmp_path / "queues.conf")
    assert "is a FIFO (named pipe), not a regular file" in problems_of(conf)
    write(
        tmp_path / "autopyfactory.conf",
        (tmp_path / "autopyfactory.conf").read_text().replace("queues.conf", "/dev/null"),
    )
    assert "/dev/null: is a device, not a regular file" in problems_of(conf)
    write(
        tmp_path / "autopyfactory.conf",
        (tmp_path / "autopyfactory.conf").read_text().replace("/dev/null", "/dev/zero"),
    )
    assert "/dev/zero: is a device" in problems_of(conf)


def test_empty_queueconf_is_an_error_not_ok_with_zero_queues(tmp_path: Path) -> None:
    conf = config_tree(tmp_path, queues="# nothing here\n")
    text = problems_of(conf)
    assert "[Factory] queueConf: no queue sections found in queues.conf" in text
    write(tmp_path / "autopyfactory.conf", "[Factory]\nfactoryId = trust\nfactory.statedir = state\n")
    assert "no queue configuration: set queueConf or queueDirConf" in problems_of(conf)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    conf = config_tree(tmp_path)
    with open(tmp_path / "queues.conf", "ab") as fh:
        fh.truncate(17 * 1024 * 1024)
    assert "the limit is 16777216" in problems_of(conf)


# -- remote sources ------------------------------------------------------------------------------


@pytest.fixture
def raw_http():  # type: ignore[no-untyped-def]
    server = RawHTTP()
    yield server
    server.close()


def test_http_sources_garbage_status_utf16_body_and_errors(tmp_path: Path, raw_http: RawHTTP) -> None:
    raw_http.responses = {
        "/garbage": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        "/utf16": http_ok("[Q1]\nwmsqueue = Q1\n".encode("utf-16")),
        "/latin1": http_ok(b"[Q1]\nvo = caf\xe9\n"),
        "/gone": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        "/ok?token=SECRET123": http_ok(QUEUES.encode()),
    }
    for path, expect in [
        ("/garbage", "is not HTTP (bad status line)"),
        ("/utf16", "is UTF-16 text"),
        ("/latin1", ":2: is not valid UTF-8"),
        ("/gone", "HTTP 404"),
    ]:
        conf = config_tree(tmp_path, factory_extra="")
        write(conf, conf.read_text().replace("queueConf = queues.conf", f"queueConf = {raw_http.url(path)}"))
        text = problems_of(conf)
        assert raw_http.url(path) in text and expect in text, text
    write(conf, conf.read_text().replace(raw_http.url("/gone"), raw_http.url("/ok?token=SECRET123")))
    config = load_factory_config(str(conf))
    assert "Q1" in config.queues
    assert all("SECRET123" not in f for f in config.files)  # the query may hold credentials


@pytest.mark.timeout(60)
def test_a_hanging_http_source_times_out(tmp_path: Path, raw_http: RawHTTP) -> None:
    raw_http.responses = {"/hang": None}
    conf = config_tree(tmp_path)
    write(conf, conf.read_text().replace("queueConf = queues.conf", f"queueConf = {raw_http.url('/hang')}"))
    from autopyfactory.config import loader
    from autopyfactory.config.sources import read_source

    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"no complete answer within 2s|timed out after 2s"):
        load_factory_config(str(conf), fetcher=lambda s, b: read_source(s, b, timeout=2.0))
    assert time.monotonic() - started < 10
    assert loader  # the fetcher parameter is what the daemon's re-read uses too


# -- keys and values -----------------------------------------------------------------------------


def test_empty_plugin_keys_and_empty_chain(tmp_path: Path) -> None:
    conf = config_tree(tmp_path, QUEUES + "batchstatusplugin =\nschedplugin = Ready, , MaxPerCycle\n")
    text = problems_of(conf)
    assert "[Q1] batchstatusplugin: is empty: name one plugin" in text
    assert "[Q1] schedplugin: the chain is empty or has an empty name" in text
    conf = config_tree(tmp_path, QUEUES + "schedplugin =\n")
    assert "[Q1] schedplugin: the chain is empty" in problems_of(conf)


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("apfqueue.sleep", "nan", "finite number"),
        ("apfqueue.sleep", "inf", "finite number"),
        ("apfqueue.sleep", "1e300", "less than or equal to"),
        ("apfqueue.sleep", "0", "greater than or equal to 0.1"),
        ("sched.maxpercycle.maximum", "-1", "greater than or equal to 0"),
        ("sched.maxpercycle.maximum", "99999999999999999999", "less than or equal to 1000000"),
        ("sched.scale.factor", "nan", "finite"),
        ("share", "inf", "finite"),
        ("share", "-2", "greater than 0"),
        ("wmsstatus.sim.period", "nan", "finite"),
        ("cancel.pending_after", "-5", "greater than 0"),
        ("cancel.maxpercycle", "0", "greater than or equal to 1"),
        ("executable.arguments", "-q 'unbalanced", "cannot be split into arguments"),
        ("wmsqueue", "Q 1", "no blanks"),
        ("wmsqueue", "Q?x=1", "no blanks"),
    ],
)
def test_numbers_and_values_out_of_bounds_are_refused(
    tmp_path: Path, key: str, value: str, expect: str
) -> None:
    chain = "schedplugin = Ready, Scale, MaxPerCycle\n" if key.startswith("sched.scale") else ""
    conf = config_tree(tmp_path, QUEUES + chain + f"{key} = {value}\n")
    text = problems_of(conf)
    line = (tmp_path / "queues.conf").read_text().splitlines().index(f"{key} = {value}") + 1
    assert f"{tmp_path / 'queues.conf'}:{line}: [Q1] {key}: " in text, text
    assert expect in text, text


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ("factoryId =", "[Factory] factoryId: must be 1-100 letters"),
        ("factoryId = my:factory", "no ':' or '/'"),
        ("factoryId = a/b", "no ':' or '/'"),
        ("metrics.address = localhost", "expected host:port"),
        ("metrics.address = 127.0.0.1:99999", "the port must be 0-65535"),
        ("metrics.address = ::1:9000", "IPv6 host is written in brackets"),
        ("wmsstatus.sim.sleep = nan", "must be between 0.1 and"),
        ("wmsstatus.sim.maxage = 1e400", "must be between 0.1 and"),
        ("wmsstatus.sim.slep = 3", "unknown key (did you mean 'wmsstatus.sim.sleep'?)"),
        ("wmsstatus.simm.sleep = 3", "no installed wmsstatus plugin 'simm' (did you mean 'sim'?)"),
        ("factory.sleep = inf", "finite"),
        ("config.reconfig.interval = -1", "greater than or equal to 10"),
        ("store.url = not a url", "not a database URL"),
        ("store.keepdays = nan", "finite"),
        ("cycles = -1", "greater than or equal to 0"),
        ("executor.workers = 100000", "less than or equal to 256"),
    ],
)
def test_factory_values_are_validated(tmp_path: Path, line: str, expect: str) -> None:
    factory = "\n".join(
        ln
        for ln in config_tree(tmp_path).read_text().splitlines()
        if not ln.startswith(line.split(" ")[0] + " ")
    )
    conf = write(tmp_path / "autopyfactory.conf", factory + "\n" + line + "\n")
    text = problems_of(conf)
    lineno = conf.read_text().splitlines().index(line) + 1
    assert f"{conf}:{lineno}: [Factory] {line.split(' ')[0]}: " in text, text
    assert expect in text, text


def test_a_nan_poll_interval_cannot_reach_the_engine(tmp_path: Path) -> None:
    """AutoPyFactory-style [Factory] poll keys were parsed with float(): nan passed and stopped polling."""
    conf = config_tree(tmp_path, factory_extra="batchstatus.local.sleep = NaN\n")
    assert "[Factory] batchstatus.local.sleep: must be between" in problems_of(conf)


@pytest.mark.timeout(30)
def test_interpolation_bomb_and_cycle_are_bounded_and_reported_once(tmp_path: Path) -> None:
    bomb = "".join(f"k{i} = " + f"%(k{i + 1})s" * 8 + "\n" for i in range(12)) + "k12 = xxxxxxxx\n"
    conf = config_tree(tmp_path, QUEUES + bomb + "c1 = %(c2)s\nc2 = %(c1)s\n")
    started = time.monotonic()
    text = problems_of(conf)
    assert time.monotonic() - started < 10
    lines = text.splitlines()
    bombs = [ln for ln in lines if "exceeds 65536 characters" in ln]
    assert len(bombs) == 1, text  # at the key whose own value overflows, not at every key using it
    cycles = [ln for ln in lines if "interpolation cycle" in ln]
    assert len(cycles) == 1 and "c1 -> c2 -> c1" in cycles[0]


def test_problems_name_file_line_section_key_and_default_lines_once(tmp_path: Path) -> None:
    queues = QUEUES.replace("sched.maxpercycle.maximum = 5", "sched.maxpercycle.maximum = fifty") + "\n".join(
        f"[Q{i}]\nwmsqueue = Q{i}" for i in range(2, 7)
    )
    conf = config_tree(tmp_path, queues)
    text = problems_of(conf)
    line = (tmp_path / "queues.conf").read_text().splitlines().index("sched.maxpercycle.maximum = fifty") + 1
    assert text.count("sched.maxpercycle.maximum") == 1, text  # one error, not one per queue
    assert f"{tmp_path / 'queues.conf'}:{line}: [DEFAULT] sched.maxpercycle.maximum: " in text
    assert "(inherited by 6 sections)" in text
    assert "<config>" not in text


def test_missing_required_key_names_the_section_header(tmp_path: Path) -> None:
    conf = config_tree(tmp_path, "[Q1]\nenabled = True\nwmsqueue = Q1\nbatchstatusplugin = Local\n")
    text = problems_of(conf)
    assert f"{tmp_path / 'queues.conf'}:1: [Q1] batchsubmitplugin: required key is missing" in text
    assert "<config>" not in text


def test_queue_names_follow_the_tag_format(tmp_path: Path) -> None:
    conf = config_tree(tmp_path, QUEUES + '[bad name "quoted"]\nwmsqueue = X\n')
    assert '[bad name "quoted"]: a queue name must be 1-200 letters' in problems_of(conf)


def test_typo_in_any_plugins_key_is_an_error_everywhere(tmp_path: Path) -> None:
    # a key of a plugin this queue does not use (from DEFAULT) is still checked for typos
    conf = config_tree(tmp_path, QUEUES.replace("[Q1]", "batchsubmit.slurm.partiton = short\n[Q1]"))
    assert (
        "batchsubmit.slurm.partiton: unknown key for plugin Slurm (did you mean 'batchsubmit.slurm.partition'?)"
        in problems_of(conf)
    )
    conf = config_tree(tmp_path, QUEUES + "cancel.pending_afterr = 5\n")
    assert "cancel.pending_afterr: unknown key (did you mean 'cancel.pending_after'?)" in problems_of(conf)


def test_parse_errors_name_lines(tmp_path: Path) -> None:
    conf = config_tree(tmp_path, QUEUES + "this line has no equals sign\n")
    line = (tmp_path / "queues.conf").read_text().splitlines().index("this line has no equals sign") + 1
    assert f"{tmp_path / 'queues.conf'}:{line}: not 'key = value'" in problems_of(conf)
    conf = config_tree(tmp_path, "wmsqueue = before any section\n" + QUEUES)
    assert f"{tmp_path / 'queues.conf'}:1: text before the first [section] header" in problems_of(conf)


def test_policy_conf_fifo_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "policy.yaml")
    conf = config_tree(tmp_path, factory_extra="policyConf = policy.yaml\n")
    assert "[Factory] policyConf: is a FIFO" in problems_of(conf)


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["sched", "--chain", "Ready, Scale", "--set", "sched.scale.factor=inf", "--activated", "5"],
        ["sched", "--chain", "Ready, Scale", "--set", "sched.scale.factor=nan", "--activated", "5"],
        ["sched", "--chain", "Ready", "--activated", "inf"],
        ["sched", "--chain", "Ready", "--activated", "1e400"],
        ["sched", "--chain", "MaxPerCycle", "--set", "sched.maxpercycle.maximum=-1"],
        ["sched", "--chain", "Ready", "--factory-max", "nan"],
        ["run", "--cycles", "nan"],
        ["run", "--cycles", "-3"],
        ["explain", "Q1", "--last", "1e9"],
        ["explain", "Q1", "--last", "0"],
    ],
)
def test_cli_values_are_bounded(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(argv)
    out = capsys.readouterr()
    no_traceback(out.out, out.err)
    assert code == 2, out.out + out.err


def test_apf_check_on_a_broken_tree_never_prints_a_traceback(tmp_path: Path) -> None:
    conf = config_tree(tmp_path)
    (tmp_path / "queues.conf").write_bytes(b"\xff\xfe\x00\x01")
    result = apf("check", "--conf", str(conf))
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1
