"""Issue 13, "secrets": values of secret keys and lines of auth files never appear in any output,
log, status file or store, however a parse, interpolation or validation fails; a token echoed in
part by a server is masked too.

Secrets are planted in every auth profile kind (X509, SSH, Token, CloudKey), in a store URL, a
monitor URL and a queue source URL; then every error path the configuration can take is
triggered, and every output and every file the commands write is searched for any 10-character
piece of any secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopyfactory.cli import main
from autopyfactory.redact import redact
from tests.helpers import write
from tests.trustkit import QUEUES, RawHTTP, apf, config_tree, http_ok, no_traceback

SECRETS = {
    "myproxy": "mp-Q7%vK2pLx9Wz-Fj3Dk8Mq",
    "sshkey": "AAAAC3NzaC1lZDI1NTE5AAAAIOq8Vn2Lw7Rj4Xt9Ks",
    "sshpass": "sp-%%H8jN3mR5tY-Gh2Wq7",
    "token": "eyJhbGciOiJSUzI1NiJ9.tk%Hq7wLm3Rv9Xy2Bn4Cd6",
    "akid": "AKIAQ3ZT7WX9KD2JF8LM",
    "sak": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYq8Zx3Vn",
    "pg": "pgQ9w2Zx7Kv4Lm1",
    "mon": "mnR3t8Yu2Io5Pa7",
    "url": "urH6j1Kl4Zx9Cv2Bn",
}


def pieces(secret: str, width: int = 10) -> set[str]:
    return {secret[i : i + width] for i in range(max(1, len(secret) - width + 1))}


ALL_PIECES = set().union(*(pieces(s.replace("%%", "%")) for s in SECRETS.values())) | set().union(
    *(pieces(s) for s in SECRETS.values())
)


def assert_clean(text: str, where: str) -> None:
    leaked = sorted(p for p in ALL_PIECES if p in text)
    assert not leaked, f"{where} leaks {leaked[:3]}"


def auth_conf(extra: str = "") -> str:
    return f"""
[DEFAULT]
authbasedir = /tmp

[grid]
plugin = X509
x509.proxyfile = /tmp/x509up_apf_secret_test
x509.flavor = myproxy
x509.myproxy_hostname = myproxy.example.org
x509.myproxy_passphrase = {SECRETS["myproxy"]}

[hpc]
plugin = SSH
ssh.privatekey = {SECRETS["sshkey"]}
ssh.privkeypass = {SECRETS["sshpass"]}

[panda]
plugin = Token
token.token = {SECRETS["token"]}

[cloud]
plugin = CloudKey
cloudkey.access_key_id = {SECRETS["akid"]}
cloudkey.secret_access_key = {SECRETS["sak"]}
{extra}"""


BROKEN_AUTH = {
    # a '%' in a secret: the interpolation error must not print the value
    "percent": "",
    # a key pasted over several lines without indentation: parse errors must not print the lines
    "pasted": f"[pasted]\nplugin = SSH\nssh.privatekey = -----BEGIN OPENSSH PRIVATE KEY-----\n{SECRETS['sshkey']}\n{SECRETS['sak']}\n-----END OPENSSH PRIVATE KEY-----\n",
    # a typo in a secret key's name, and an unknown key holding a secret
    "typo": f"[typo]\nplugin = Token\ntoken.tokne = {SECRETS['token']}\ntokenvalue = {SECRETS['akid']}\n",
    # a secret in a non-secret key of the wrong type (auth files never echo values)
    "wrongtype": f"[wrong]\nplugin = X509\nx509.proxyfile = /tmp/x\nx509.lifetime = {SECRETS['pg']}\n",
    # an interpolation that drags a secret into another key, then fails
    "interp": f"[interp]\nplugin = X509\nx509.proxyfile = %(x509.myproxy_passphrase)s/%(missing)s\nx509.myproxy_passphrase = {SECRETS['mon']}\n",
    # a section without plugin (proxy.conf style) holding a secret
    "legacy": f"[legacy]\nproxyfile = /tmp/x\nmyproxy_passphrase = {SECRETS['url']}\n",
    # not UTF-8 around a secret
    "encoding": f"[enc]\nplugin = Token\ntoken.token = {SECRETS['token']}\xff\n",
}


def tree(tmp: Path, auth_text: str, factory_extra: str = "") -> Path:
    write(tmp / "auth.conf", auth_text)
    write(
        tmp / "monitor.conf",
        f"[mon]\nmonitorplugin = Dummy\nmonitorURL = http://apf:{SECRETS['mon']}@127.0.0.1:1/api\n",
    )
    return config_tree(
        tmp,
        QUEUES + "monitorsection = mon\n",
        factory_extra="authConf = auth.conf\nmonitorConf = monitor.conf\n" + factory_extra,
    )


def files_text(root: Path) -> str:
    out = []
    for path in root.rglob("*"):
        if path.is_file() and path.name not in ("auth.conf",):
            out.append(path.read_bytes().decode("latin-1"))
    return "\n".join(out)


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    no_traceback(out.out, out.err)
    return code, out.out + out.err


@pytest.mark.parametrize("case", sorted(BROKEN_AUTH))
def test_broken_auth_files_never_show_a_secret(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = auth_conf(BROKEN_AUTH[case])
    if case == "encoding":
        write(tmp_path / "auth.conf", "")
        conf = tree(tmp_path, "")
        (tmp_path / "auth.conf").write_bytes(text.encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    else:
        conf = tree(tmp_path, text)
    for argv in (
        ["check", "--conf", str(conf)],
        ["check", "--conf", str(conf), "--json"],
        ["check", "--conf", str(conf), "--migrate"],
        ["status", "--conf", str(conf)],
    ):
        code, out = in_process(capsys, *argv)
        assert_clean(out, f"apf {' '.join(argv[:1] + argv[3:])} ({case})")
        if argv[-1] == str(conf):
            assert code == 1, out  # each case is a real error


def test_a_valid_configuration_leaks_nothing_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check, run --once (logs, status, daemon file, store), status, explain, plan, --migrate."""
    conf = tree(tmp_path, auth_conf().replace("%", "%%"))  # valid: a literal % is written %%
    log = tmp_path / "apf.log"
    for argv in (
        ["run", "--conf", str(conf), "--once", "--no-table", "--log", str(log), "--debug"],
        ["plan", "--conf", str(conf)],
    ):
        result = apf(*argv)
        no_traceback(result.stdout, result.stderr)
        assert_clean(result.stdout + result.stderr, f"apf {argv[0]}")
    for argv in (
        ["check", "--conf", str(conf)],
        ["check", "--conf", str(conf), "--json"],
        ["status", "--conf", str(conf)],
        ["status", "--conf", str(conf), "--json"],
        ["explain", "Q1", "--conf", str(conf)],
        ["check", "--conf", str(conf), "--migrate"],
        ["plugins", "Token"],
    ):
        code, out = in_process(capsys, *argv)
        assert code == 0, out
        assert_clean(out, f"apf {' '.join(argv[:1] + argv[3:])}")
    assert_clean(log.read_text(), "the log file")
    assert (tmp_path / "state" / "apf.db").exists()
    assert_clean(files_text(tmp_path / "state"), "the state directory (store, status and daemon files)")


def test_migrate_to_keeps_secrets_only_in_a_private_file(tmp_path: Path) -> None:
    conf = tree(tmp_path, auth_conf().replace("%", "%%"))
    out = tmp_path / "migrated"
    result = apf("check", "--conf", str(conf), "--migrate-to", str(out))
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout + result.stderr, "apf check --migrate-to")
    migrated = out / "auth.conf"
    assert SECRETS["token"].replace("%", "%%") in migrated.read_text()  # the new file works
    assert migrated.stat().st_mode & 0o077 == 0  # and only its owner can read it


def test_secret_urls_are_redacted(tmp_path: Path) -> None:
    server = RawHTTP()
    try:
        server.responses = {f"/q.conf?token={SECRETS['url']}": http_ok(b"[Q1]\nwmsqueue = Q1\nbroken line\n")}
        conf = config_tree(
            tmp_path,
            factory_extra=f"store.url = postgresql+psycopg://apf:{SECRETS['pg']}@127.0.0.1:1/apf\n",
        )
        write(
            conf,
            conf.read_text().replace(
                "queueConf = queues.conf", f"queueConf = {server.url('/q.conf?token=' + SECRETS['url'])}"
            ),
        )
        for argv in (["check", "--conf", str(conf)], ["run", "--conf", str(conf), "--once", "--no-table"]):
            result = apf(*argv)
            no_traceback(result.stdout, result.stderr)
            assert result.returncode == 1
            assert_clean(result.stdout + result.stderr, f"apf {argv[0]}")
        write(tmp_path / "queues.conf", QUEUES)
        write(conf, conf.read_text().replace(server.url("/q.conf?token=" + SECRETS["url"]), "queues.conf"))
        result = apf("check", "--conf", str(conf))
        assert "store postgresql+psycopg://apf:***@127.0.0.1:1/apf" in result.stderr + result.stdout
        assert_clean(result.stdout + result.stderr, "apf check with a PostgreSQL password")
    finally:
        server.close()


def test_redaction_masks_any_long_piece_of_a_secret() -> None:
    token = "eyJhbGciOi.J9abcdefghijklmnopqrstuvwxyz0"  # 35 characters
    body = f'{{"error": "bad token {token[1:]}", "hint": "{token[:20]}..."}}'
    masked = redact(body, [token])
    assert_clean_token(masked, token)
    assert "bad token" in masked and "error" in masked  # the rest stays readable
    assert redact("short abc", ["abc"]) == "short ********"  # a short secret is masked whole
    assert redact("nothing here", [token]) == "nothing here"


def assert_clean_token(text: str, token: str) -> None:
    for piece in pieces(token, 8):
        assert piece not in text, (piece, text)
