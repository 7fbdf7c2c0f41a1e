"""CondorSSH: pilots to a remote batch system over SSH (HTCondor's remote GAHP, "Bosco").

``grid_resource = batch <type> <user>@<host> --rgahp-key <private key>`` with the key of an SSH
auth profile (``batchsubmit.condorssh.authprofile``). Unlike APF this never touches the account's
``~/.ssh`` (no key copies, no ssh config rewrite, no ssh-agent): the key file is named in the
grid resource itself. An inline key in the profile is written once to
``<statedir>/condor/ssh/<profile>/`` with mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from autopyfactory.plugins.base import PluginError, PluginOptions
from autopyfactory.plugins.batch.condor.base import CondorBase, CondorBaseOptions, profile_options
from autopyfactory.plugins.keys import auth_field

BatchType = Literal["slurm", "pbs", "lsf", "sge", "condor"]


class CondorSSHOptions(CondorBaseOptions):
    batch: BatchType = Field(..., description="the remote batch system")
    host: str = Field(..., description="the remote login host")
    user: str = Field(..., description="the remote account")
    port: int | None = Field(None, description="accepted for APF compatibility; unused (as in APF)")
    authprofile: str = auth_field(..., "SSH", description="SSH auth profile holding the private key")


def write_secret_file(path: Path, secret: SecretStr) -> Path:
    """Write an inline key (PEM text, or base64 of it as APF stores them) with mode 0600."""
    raw = secret.get_secret_value()
    data: bytes
    if "-----BEGIN" in raw:
        data = raw.encode()
    else:
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            data = raw.encode()
    if not data.endswith(b"\n"):
        data += b"\n"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def ssh_resource(batch: str, user: str, host: str, keyfile: str, passfile: str | None = None) -> str:
    for label, value in (
        ("user", user),
        ("host", host),
        ("key file", keyfile),
        ("pass file", passfile or ""),
    ):
        if any(c.isspace() for c in value):
            raise ValueError(f"the {label} {value!r} contains whitespace")
    resource = f"batch {batch} {user}@{host} --rgahp-key {keyfile}"
    if passfile:
        resource += f" --rgahp-pass {passfile}"
    return resource


class CondorSSH(CondorBase):
    name = "CondorSSH"
    Options: ClassVar[type[PluginOptions]] = CondorSSHOptions
    key_prefixes: ClassVar[tuple[str, ...]] = ("batchsubmit.condorssh.", "batchsubmit.condorbase.")

    options: CondorSSHOptions

    def setup(self) -> None:
        opts = self.options
        profile = profile_options(
            self.factory, opts.authprofile, "SSH", self.key("authprofile"), self.queue.name
        )
        store = self.factory.state_dir / "condor" / "ssh" / opts.authprofile
        if profile.privatekeyfile:
            keyfile = Path(profile.privatekeyfile).expanduser()
        elif profile.privatekey is not None:
            keyfile = write_secret_file(store / f"id_{profile.type}", profile.privatekey)
        else:
            raise PluginError(
                f"[{self.queue.name}] {self.key('authprofile')}: SSH profile {opts.authprofile!r} has "
                "neither ssh.privatekeyfile nor ssh.privatekey"
            )
        passfile: Path | None = None
        if profile.privkeypassfile:
            passfile = Path(profile.privkeypassfile).expanduser()
        elif profile.privkeypass is not None:
            passfile = store / "passphrase"
            passfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(profile.privkeypass.get_secret_value())
        try:
            self.resource = ssh_resource(
                opts.batch, opts.user, opts.host, str(keyfile), str(passfile) if passfile else None
            )
        except ValueError as exc:
            raise PluginError(f"[{self.queue.name}] {self.name}: {exc}") from None

    def flavour_lines(self) -> list[tuple[str, str]]:
        return [("universe", "grid"), ("grid_resource", self.resource)]
