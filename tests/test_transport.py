"""Transports against real processes: local subprocesses and the real sshd on 127.0.0.1."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import asyncssh
import pytest

from autopyfactory.plugins.auth.ssh import SSHOptions
from autopyfactory.plugins.base import BackendError, PluginError
from autopyfactory.plugins.transport.base import Backoff
from autopyfactory.plugins.transport.local import LocalTransport
from autopyfactory.plugins.transport.pool import POOL, transport_for
from autopyfactory.plugins.transport.ssh import SSHTransport

ODD_ARGS = ["a b", "$HOME", "'q'", 'd"q', "semi;colon", "star*", "", "new\nline"]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# local


def test_local_runs_argv_without_a_shell() -> None:
    t = LocalTransport()
    res = t.run(["printf", "%s|", *ODD_ARGS])
    assert res.rc == 0 and res.stdout == "|".join(ODD_ARGS) + "|"
    assert t.run(["cat"], input=b"to stdin\n").stdout == "to stdin\n"
    res = t.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (res.rc, res.stdout, res.stderr) == (7, "out\n", "err\n")
    assert not res.ok and res.brief() == "err"
    assert t.state() == "ok"


def test_local_env_overrides() -> None:
    t = LocalTransport(env={"APF_TEST_VALUE": "42"})
    assert t.run(["sh", "-c", "echo $APF_TEST_VALUE"]).stdout == "42\n"


def test_local_errors() -> None:
    t = LocalTransport()
    with pytest.raises(BackendError, match=r"local: command 'no-such-command-apf' not found"):
        t.run(["no-such-command-apf"])
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"local: sleep timed out after 0.5 s"):
        t.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - t0 < 10


def test_backoff_doubles_and_caps() -> None:
    now = [100.0]
    b = Backoff(base=1.0, cap=5.0, clock=lambda: now[0], wallclock=lambda: now[0])
    assert b.state() == "ok" and b.blocked() is None
    assert [b.failure("boom") for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert "backing off until" in (b.blocked() or "") and b.state().endswith("after: boom")
    now[0] += 5.0
    assert b.blocked() is None and b.state() == "retrying after: boom"
    b.success()
    assert b.state() == "ok" and b.failures == 0


# ---------------------------------------------------------------------------------------------
# SSH


def profile(ssh_target, **overrides: str) -> SSHOptions:  # type: ignore[no-untyped-def]
    values = {
        "privatekeyfile": str(ssh_target.key),
        "knownhostsfile": str(ssh_target.known_hosts),
        **overrides,
    }
    return SSHOptions.model_validate(values)


def ssh(ssh_target, options: SSHOptions, **kw) -> SSHTransport:  # type: ignore[no-untyped-def]
    return SSHTransport(
        ssh_target.host, port=ssh_target.port, user=ssh_target.user, profile="hpc", options=options, **kw
    )


def test_ssh_runs_argv_quoted_on_one_connection(ssh_target) -> None:  # type: ignore[no-untyped-def]
    t = ssh(ssh_target, profile(ssh_target))
    try:
        assert t.name == f"apfuser@127.0.0.1:{ssh_target.port}"
        assert t.run(["id", "-un"]).stdout == "apfuser\n"
        res = t.run(["printf", "%s|", *ODD_ARGS])
        assert res.rc == 0 and res.stdout == "|".join(ODD_ARGS) + "|"
        assert t.run(["cat"], input=b"x" * 100_000).stdout == "x" * 100_000
        res = t.run(["sh", "-c", "echo err >&2; exit 3"])
        assert (res.rc, res.stderr) == (3, "err\n")
        for _ in range(30):
            assert t.run(["true"]).rc == 0
        results: list[str] = []

        def worker() -> None:
            results.append(t.run(["echo", "hi"]).stdout)

        threads = [threading.Thread(target=worker) for _ in range(20)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert results == ["hi\n"] * 20
        assert t.connects == 1  # one connection for every call, sequential and concurrent
        assert t.state() == "ok"
        with pytest.raises(BackendError, match=r"sleep timed out after 0.5 s"):
            t.run(["sleep", "30"], timeout=0.5)
    finally:
        t.close()


def test_ssh_reconnects_after_the_connection_drops(ssh_target) -> None:  # type: ignore[no-untyped-def]
    t = ssh(ssh_target, profile(ssh_target))
    try:
        assert t.run(["true"]).rc == 0
        # drop the connection under the transport, as a network failure would
        t._conn.close()
        wait_until(lambda: t._lost)
        assert t.run(["echo", "back"]).stdout == "back\n"
        assert t.connects == 2
    finally:
        t.close()


def _assert_clean(err: BackendError, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(err)


def test_wrong_host_key(ssh_target, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = asyncssh.generate_private_key("ssh-ed25519")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{ssh_target.port} {other.export_public_key().decode().strip()}\n")
    t = ssh(ssh_target, profile(ssh_target, knownhostsfile=str(kh)))
    with pytest.raises(BackendError) as info:
        t.run(["true"])
    assert str(info.value) == (
        f"apfuser@127.0.0.1:{ssh_target.port}: host key for 127.0.0.1:{ssh_target.port} "
        f"does not match known_hosts {kh} (profile hpc)"
    )
    kh.write_text("")
    t2 = ssh(ssh_target, profile(ssh_target, knownhostsfile=str(kh)))
    with pytest.raises(
        BackendError, match=rf"host key for 127.0.0.1:{ssh_target.port} is not in known_hosts"
    ):
        t2.run(["true"])
    t3 = ssh(ssh_target, profile(ssh_target, knownhostsfile=str(tmp_path / "missing")))
    with pytest.raises(BackendError, match=r"known_hosts file .*missing \(profile hpc\) cannot be read"):
        t3.run(["true"])


def test_refused_connection_backs_off(ssh_target) -> None:  # type: ignore[no-untyped-def]
    port = closed_port()
    t = SSHTransport(
        "127.0.0.1", port=port, user="apfuser", profile="hpc", options=profile(ssh_target),
        backoff=Backoff(base=0.3, cap=1.0),
    )  # fmt: skip
    with pytest.raises(BackendError) as info:
        t.run(["true"])
    assert (
        str(info.value) == f"apfuser@127.0.0.1:{port}: connection to 127.0.0.1:{port} refused (profile hpc)"
    )
    # the next call fails fast without trying, and says why
    with pytest.raises(
        BackendError, match=r"backing off until \d\d:\d\d:\d\d after: connection to .* refused"
    ):
        t.run(["true"])
    assert t.state().startswith("backing off until")
    wait_until(lambda: t.state().startswith("retrying"), timeout=5)
    with pytest.raises(BackendError, match="refused"):
        t.run(["true"])
    assert t.backoff.failures == 2


def test_unreachable_target_recovers_by_itself(ssh_target, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kh = tmp_path / "kh"
    t = ssh(ssh_target, profile(ssh_target, knownhostsfile=str(kh)), backoff=Backoff(base=0.2, cap=0.5))
    try:
        with pytest.raises(BackendError, match="cannot be read"):
            t.run(["true"])
        shutil.copy(ssh_target.known_hosts, kh)
        assert wait_until(lambda: _try(t), timeout=10) == "apfuser\n"
        assert t.state() == "ok"
    finally:
        t.close()


def _try(t: SSHTransport) -> str | None:
    try:
        return t.run(["id", "-un"]).stdout
    except BackendError:
        return None


def test_bad_key_files(ssh_target, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk_key"
    junk.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(BackendError) as info:
        ssh(ssh_target, profile(ssh_target, privatekeyfile=str(junk))).run(["true"])
    assert str(info.value).endswith(f"private key file {junk} (profile hpc) is not a valid private key")
    assert "bm90IGEga2V5" not in str(info.value)
    missing = tmp_path / "nope"
    with pytest.raises(
        BackendError, match=rf"private key file {missing} \(profile hpc\) cannot be read: No such file"
    ):
        ssh(ssh_target, profile(ssh_target, privatekeyfile=str(missing))).run(["true"])


def test_passphrase_key_and_no_secret_in_messages_or_logs(  # type: ignore[no-untyped-def]
    ssh_target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Corr3ct-Horse-Battery-Staple-4711"
    key = asyncssh.generate_private_key("ssh-ed25519", comment="apf-test-passphrase")
    path = tmp_path / "enc_key"
    key.write_private_key(str(path), passphrase=secret)
    path.chmod(0o600)
    ssh_target.authorize(key.export_public_key().decode())
    passfile = tmp_path / "pass"
    passfile.write_text(secret + "\n")
    caplog.set_level(logging.DEBUG)

    good = ssh(ssh_target, profile(ssh_target, privatekeyfile=str(path), privkeypassfile=str(passfile)))
    try:
        assert good.run(["id", "-un"]).stdout == "apfuser\n"
    finally:
        good.close()
    inline = ssh(ssh_target, profile(ssh_target, privatekeyfile=str(path), privkeypass=secret))
    try:
        assert inline.run(["true"]).rc == 0
    finally:
        inline.close()

    wrong = ssh(ssh_target, profile(ssh_target, privatekeyfile=str(path), privkeypass=secret[::-1]))
    with pytest.raises(BackendError) as info:
        wrong.run(["true"])
    assert str(info.value).endswith(
        f"private key file {path} (profile hpc) could not be decrypted: the passphrase is wrong"
    )
    _assert_clean(info.value, secret, secret[::-1])
    none = ssh(ssh_target, profile(ssh_target, privatekeyfile=str(path)))
    with pytest.raises(BackendError, match="is encrypted and the profile gives no passphrase"):
        none.run(["true"])

    # a valid key the server does not accept
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    spath = tmp_path / "stranger"
    stranger.write_private_key(str(spath), passphrase=secret)
    refused = ssh(ssh_target, profile(ssh_target, privatekeyfile=str(spath), privkeypass=secret))
    with pytest.raises(BackendError) as info:
        refused.run(["true"])
    assert str(info.value) == (
        f"apfuser@127.0.0.1:{ssh_target.port}: authentication as apfuser failed with the key of "
        "profile hpc (permission denied)"
    )
    for err in (info.value,):
        _assert_clean(err, secret)
    assert secret not in caplog.text and secret[::-1] not in caplog.text
    assert str(SSHOptions(privkeypass=secret)).count(secret) == 0  # SecretStr never prints


def test_transport_for_shares_one_ssh_transport_per_target(ssh_target, make_factory) -> None:  # type: ignore[no-untyped-def]
    factory = make_factory(
        "f1",
        auth={
            "hpc": (
                "SSH",
                {
                    "ssh.privatekeyfile": str(ssh_target.key),
                    "ssh.knownhostsfile": str(ssh_target.known_hosts),
                },
            )
        },
    )
    a = transport_for(factory, "127.0.0.1", user="apfuser", port=ssh_target.port, authprofile="hpc")
    b = transport_for(factory, "127.0.0.1", user="apfuser", port=ssh_target.port, authprofile="hpc")
    assert a is b and isinstance(a, SSHTransport)
    assert a.run(["id", "-un"]).stdout == "apfuser\n"
    POOL.release(a)
    assert a.run(["true"]).rc == 0  # still held by b
    POOL.release(b)
    assert isinstance(transport_for(factory, None), LocalTransport)
    with pytest.raises(PluginError, match=r"batchsubmit.slurm.authprofile \(an SSH profile\) is not set"):
        transport_for(factory, "hpc.example.org", where="batchsubmit.slurm")
    with pytest.raises(PluginError, match="auth profile 'nope' is not defined"):
        transport_for(factory, "hpc.example.org", authprofile="nope")
