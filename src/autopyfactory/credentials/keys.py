"""SSH key pairs and cloud keys: checked at start (and every hour) for presence, permissions and,
for SSH, that the private key opens with the profile's passphrase. They never expire by
themselves, so their health has no end time; a problem is ``failing`` with the file named."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from autopyfactory.credentials.base import ManagedCredential
from autopyfactory.credentials.health import CredentialHealth, HealthState
from autopyfactory.plugins.auth.cloudkey import CloudKeyOptions
from autopyfactory.plugins.auth.ssh import SSH, SSHOptions


def read_private_file(path: Path, private: bool = True) -> tuple[bytes | None, str | None]:
    """(contents, None), or (None, why the file is not usable: missing, unreadable, empty, or, when
    ``private``, open to others). One read, so a file replaced or removed meanwhile is never half
    checked."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except OSError as exc:
        return None, f"{path} cannot be read: {exc.strerror}"
    if not data.strip():
        return None, f"{path} is empty"
    if private and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            None,
            f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}; use 0600)",
        )
    return data, None


def private_file_problem(path: Path, private: bool = True) -> str | None:
    """Why a key file is not usable, or None."""
    return read_private_file(path, private)[1]


class SSHKeyCredential(ManagedCredential):
    kind = "SSH"
    options: SSHOptions

    def secrets(self) -> tuple[str, ...]:
        o = self.options
        return tuple(s.get_secret_value() for s in (o.privkeypass, o.privatekey) if s is not None)

    def _passphrase(self) -> tuple[str | None, str | None]:
        """(passphrase, problem)."""
        o = self.options
        if o.privkeypass is not None:
            return o.privkeypass.get_secret_value(), None
        if o.privkeypassfile:
            text, problem = read_private_file(Path(o.privkeypassfile).expanduser())
            if text is None:
                return None, f"passphrase file {problem}"
            return text.decode("utf-8", "replace").rstrip("\r\n"), None
        return None, None

    def inspect(self, now: float) -> CredentialHealth:
        import asyncssh

        o = self.options
        passphrase, problem = self._passphrase()
        if problem:
            return self.health(HealthState.FAILING, now, error=problem)
        if o.privatekey is not None:
            where = "the inline ssh.privatekey"
            text = o.privatekey.get_secret_value().strip()
            try:
                data = (
                    text.encode() if text.startswith("-----BEGIN") else base64.b64decode(text, validate=True)
                )
            except ValueError:
                return self.health(HealthState.FAILING, now, error=f"{where} is not base64 or PEM")
        elif o.privatekeyfile:
            path = Path(o.privatekeyfile).expanduser()
            where = str(path)
            key, problem = read_private_file(path)
            if key is None:
                return self.health(HealthState.FAILING, now, error=problem)
            data = key
        else:
            return self.health(
                HealthState.FAILING, now, error="neither ssh.privatekeyfile nor ssh.privatekey is set"
            )
        try:
            asyncssh.import_private_key(data, passphrase)
        except Exception as exc:  # asyncssh raises several types; none carries key material
            text = str(exc).lower()
            if "passphrase" in text and passphrase is None:
                reason = "is encrypted and the profile gives no passphrase (ssh.privkeypass or ssh.privkeypassfile)"
            elif "passphrase" in text or "decrypt" in text:
                reason = "cannot be decrypted: the passphrase is wrong"
            else:
                reason = "is not a valid private key"
            return self.health(HealthState.FAILING, now, error=f"{where} {reason}")
        known = SSH.known_hosts(o)
        detail = where
        if not known.exists():
            detail += f" (known_hosts {known} is missing: host keys cannot be checked)"
        return self.health(HealthState.OK, now, detail=detail)


class CloudKeyCredential(ManagedCredential):
    kind = "CloudKey"
    options: CloudKeyOptions

    def secrets(self) -> tuple[str, ...]:
        o = self.options
        return tuple(s.get_secret_value() for s in (o.access_key_id, o.secret_access_key) if s is not None)

    def inspect(self, now: float) -> CredentialHealth:
        o = self.options
        for what, inline, path, private in (
            ("access_key_id", o.access_key_id, o.access_key_id_file, False),
            ("secret_access_key", o.secret_access_key, o.secret_access_key_file, True),
        ):
            if inline is not None:
                if not inline.get_secret_value().strip():
                    return self.health(HealthState.FAILING, now, error=f"cloudkey.{what} is empty")
                continue
            if not path:
                return self.health(
                    HealthState.FAILING, now, error=f"neither cloudkey.{what} nor cloudkey.{what}_file is set"
                )
            problem = private_file_problem(Path(path).expanduser(), private)
            if problem:
                return self.health(HealthState.FAILING, now, error=problem)
        return self.health(HealthState.OK, now, detail=o.region or None)
