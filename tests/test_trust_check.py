"""Issue 13, "apf check = apf run's start-up": what check accepts, run can run; what run cannot set
up, check reports (auth profiles, optional libraries, the store, the state directory), and
``apf run --once`` exits non-zero when a queue could not be set up."""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.config.loader import load_factory_config
from autopyfactory.preflight import check_directory, check_factory
from tests.helpers import write
from tests.trustkit import QUEUES, apf, config_tree, no_traceback

CONDOR_QUEUES = """
[DEFAULT]
enabled = True
wmsstatusplugin = Sim
batchstatusplugin = Condor
batchsubmitplugin = CondorOSGCE
executable = /bin/true
schedplugin = Ready
[CE1]
wmsqueue = CE1
batchsubmit.condorosgce.gridresource = ce01.example.org
batchsubmit.condorosgce.proxy = atlas-prod
"""

AUTH = """
[atlas-production]
plugin = X509
x509.proxyfile = /tmp/x509up_test
[ssh-hpc]
plugin = SSH
ssh.privatekeyfile = /tmp/id_test
"""


def run_check(conf: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["check", "--conf", str(conf), *extra])
    out = capsys.readouterr()
    no_traceback(out.out, out.err)
    return code, out.err + out.out


def test_undefined_or_misspelled_x509_profile_fails_check_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "auth.conf", AUTH)
    conf = config_tree(tmp_path, CONDOR_QUEUES, factory_extra="authConf = auth.conf\n")
    code, text = run_check(conf, capsys)
    assert code == 1
    assert (
        "[CE1] batchsubmit.condorosgce.proxy: auth profile 'atlas-prod' is not defined in auth.conf" in text
    )
    assert "(did you mean 'atlas-production'?)" in text
    assert "configuration OK" not in text
    # the right name but the wrong kind
    write(tmp_path / "queues.conf", CONDOR_QUEUES.replace("proxy = atlas-prod", "proxy = ssh-hpc"))
    code, text = run_check(conf, capsys)
    assert code == 1 and "auth profile 'ssh-hpc' is a SSH profile; this key needs X509" in text
    write(tmp_path / "queues.conf", CONDOR_QUEUES.replace("proxy = atlas-prod", "proxy = atlas-production"))
    code, text = run_check(conf, capsys)
    assert code == 0, text
    assert "configuration OK" in text


def test_missing_htcondor_bindings_fail_check_with_the_install_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = config_tree(tmp_path, CONDOR_QUEUES.replace("batchsubmit.condorosgce.proxy = atlas-prod\n", ""))
    monkeypatch.setitem(sys.modules, "htcondor2", None)  # what an install without the extra looks like
    code, text = run_check(conf, capsys)
    assert code == 1
    assert "[CE1] batchstatusplugin = Condor: needs the Python module 'htcondor2'" in text
    assert "pip install 'autopyfactory[htcondor]'" in text


def test_store_that_cannot_be_opened_fails_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    for url, expect in [
        (f"postgresql+psycopg://apf:s3cretpw@127.0.0.1:{port}/apf", "cannot open and write"),
        ("postgresql+pg8000://apf@127.0.0.1/apf", "the database driver is not installed"),
        ("mysql://apf@127.0.0.1/apf", "unsupported database"),
    ]:
        conf = config_tree(tmp_path, factory_extra=f"store.url = {url}\n")
        code, text = run_check(conf, capsys)
        assert code == 1, text
        assert expect in text, text
        assert "s3cretpw" not in text
    garbage = write(tmp_path / "garbage.db", "this is not a database\n" * 100)
    conf = config_tree(tmp_path, factory_extra=f"store.url = sqlite:///{garbage}\n")
    code, text = run_check(conf, capsys)
    assert code == 1 and "is not a usable SQLite database" in text


def test_state_directory_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config_tree(tmp_path)
    write(tmp_path / "state", "a file, not a directory\n")
    code, text = run_check(conf, capsys)
    assert code == 1
    assert f"factory.statedir {tmp_path / 'state'}: exists but is not a directory" in text
    result = apf("run", "--conf", str(conf), "--once", "--no-table")
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1
    assert "exists but is not a directory" in result.stderr


def test_run_once_exits_nonzero_when_a_queue_cannot_be_set_up(tmp_path: Path) -> None:
    queues = QUEUES + "[NOEXE]\nwmsqueue = NOEXE\nexecutable = None\n"
    conf = config_tree(tmp_path, queues)
    result = apf("run", "--conf", str(conf), "--once", "--no-table")
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOEXE: NOT SET UP" in result.stdout
    assert "Q1: n=0" in result.stdout  # the good queue still ran
    # apf check says the same before anything runs
    check = apf("check", "--conf", str(conf))
    assert check.returncode == 1
    assert "[NOEXE] batchsubmitplugin = Local" in check.stderr and "no 'executable'" in check.stderr
    # every queue fine: 0
    conf = config_tree(tmp_path)
    assert apf("run", "--conf", str(conf), "--once", "--no-table").returncode == 0


def test_preflight_is_one_function_for_check_and_run(tmp_path: Path) -> None:
    """The daemon's start-up calls the same checks: a report with failed queues and factory problems."""
    write(tmp_path / "auth.conf", AUTH)
    conf = config_tree(tmp_path, CONDOR_QUEUES, factory_extra="authConf = auth.conf\n")
    report = check_factory(load_factory_config(str(conf)))
    assert not report.ok
    assert list(report.failed_queues) == ["CE1"]
    assert report.factory_errors == []


def test_store_problems_at_start_give_no_traceback(tmp_path: Path) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    for url in (f"postgresql+psycopg://apf@127.0.0.1:{port}/apf", "postgresql+pg8000://apf@127.0.0.1/apf"):
        conf = config_tree(tmp_path, factory_extra=f"store.url = {url}\n")
        result = apf("run", "--conf", str(conf), "--once", "--no-table")
        no_traceback(result.stdout, result.stderr)
        assert result.returncode == 1
        assert "store postgresql+" in result.stderr


def _fsize_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_full_disk_at_start_gives_a_clean_error(tmp_path: Path) -> None:
    """A full disk, reproduced with a file-size limit: SQLite cannot grow the store."""
    conf = config_tree(tmp_path)
    result = apf("run", "--conf", str(conf), "--once", "--no-table", preexec_fn=_fsize_limit)
    no_traceback(result.stdout, result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "full" in result.stderr or "disk" in result.stderr or "too large" in result.stderr


def _in_child_as_nobody(fn):  # type: ignore[no-untyped-def]
    """Run ``fn()`` in a forked child that has become ``nobody``; return its result (a string)."""
    import pwd

    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read)
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(write_end, str(fn()).encode())
        except BaseException as exc:
            os.write(write_end, f"child failed: {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can become another user (the CI runs as root)")
def test_read_only_state_directory_as_the_service_user(tmp_path: Path) -> None:
    """Root may write anywhere; the service user may not: the checks run as that user say so."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="apf-ro-", dir="/tmp"))
    try:
        base.chmod(0o755)
        conf = config_tree(base)
        (base / "state").mkdir(mode=0o755)  # owned by root
        config = load_factory_config(str(conf))

        def findings() -> str:
            return "\n".join(str(f) for f in check_factory(config, construct=False).findings)

        text = _in_child_as_nobody(findings)
        assert f"factory.statedir {base / 'state'}: is not writable by uid" in text, text
        assert "store sqlite:///" in text and "is not writable" in text, text
        assert check_factory(config, construct=False).ok  # root could
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    # a directory nobody cannot even enter: a finding, not an exception
    hidden = tmp_path / "state"  # under pytest's 0700 directory
    text = _in_child_as_nobody(lambda: "\n".join(str(f) for f in check_directory(hidden, "factory.statedir")))
    assert "cannot be checked: Permission denied" in text, text
