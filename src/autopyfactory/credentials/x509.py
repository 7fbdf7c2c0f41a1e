"""X509 proxy profiles with AutoPyFactory's semantics (apf-reference 6.1).

* voms flavour, ``renew = True``: when the VOMS attributes (or, without ``vorole``, the proxy)
  have less than ``minlife`` left, make a new proxy with ``voms-proxy-init`` (or ``arcproxy``)
  from ``usercert``/``userkey`` or ``baseproxy``.
* myproxy flavour: retrieve a proxy from MyProxy with ``myproxy-logon`` (the passphrase on stdin,
  or none for a trusted retriever), then add the VOMS attributes when ``vorole`` is set.
* ``renew = False``: only watch the file (the operator renews it; APF's QA 3.7).

Every new proxy is written to a private temporary file beside ``proxyfile``, checked (a proxy
with its key, time left, the VOMS attributes' time left, the FQAN asked for), given to ``owner``
with mode 0600, then renamed over ``proxyfile``: a failed or wrong renewal never replaces a good
proxy. Commands are built as data (``renew_commands``) and tested as such.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from autopyfactory.credentials.base import ManagedCredential, expand, install_private, staged_file
from autopyfactory.credentials.commands import CommandResult
from autopyfactory.credentials.health import CredentialHealth, HealthState, format_seconds
from autopyfactory.credentials.proxy import ProxyError, ProxyInfo, has_fqan, inspect_proxy, split_vorole
from autopyfactory.plugins.auth.x509 import X509Options

# after a failed renewal, try again this soon (or at checktime when that is shorter)
RETRY_AFTER = 30.0


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a renewal: argv, its stdin and the file it produces."""

    argv: tuple[str, ...]
    output: Path
    stdin: bytes | None = None
    what: str = ""


def valid_hm(seconds: int) -> str:
    """voms-proxy-init's ``-valid H:MM`` (whole minutes, at least one)."""
    minutes = max(seconds // 60, 1)
    return f"{minutes // 60}:{minutes % 60:02d}"


def proxy_hours(seconds: int) -> int:
    """APF: the requested validity in whole hours, at least one (MyProxy's ``-t``)."""
    return max(seconds // 3600, 1)


class X509Credential(ManagedCredential):
    kind = "X509"
    options: X509Options

    @property
    def path(self) -> Path:
        return Path(self.options.proxyfile).expanduser()

    @property
    def renews(self) -> bool:
        return self.options.renew or self.options.flavor == "myproxy"

    def secrets(self) -> tuple[str, ...]:
        passphrase = self._passphrase(read_file=False)
        return (passphrase,) if passphrase else ()

    # -- reading ------------------------------------------------------------------------------

    def _left(self, info: ProxyInfo, now: float) -> float:
        """The life that matters: the attributes' when a VO role is asked for, else the proxy's."""
        left = info.time_left(now)
        ac_left = info.ac_time_left(now)
        if self.options.vorole and ac_left is not None:
            left = min(left, ac_left)
        return left

    def _problem(self, info: ProxyInfo, now: float) -> str | None:
        """Why this proxy is not the one asked for (None when it is)."""
        vorole = self.options.vorole
        if vorole:
            if not info.voms:
                return f"{self.path} has no VOMS attributes (asked for {vorole})"
            if not has_fqan(info, vorole):
                fqans = ", ".join(info.fqans) or "none"
                return f"{self.path} lacks the FQAN {split_vorole(vorole)[1]} (has {fqans})"
        return None

    def _detail(self, info: ProxyInfo, now: float) -> str:
        text = f"{self.path}: {info.identity}"
        if info.voms:
            text += f", FQAN {info.fqans[0]}"
            ac_left = info.ac_time_left(now)
            if ac_left is not None and info.time_left(now) < ac_left:
                text += " (the proxy ends before its attributes)"
        return text

    def _from_info(self, info: ProxyInfo, now: float, **fields: object) -> CredentialHealth:
        left = self._left(info, now)
        problem = self._problem(info, now)
        if left <= 0:
            state = HealthState.EXPIRED
        elif problem:
            state = HealthState.FAILING
        elif left < self.options.minlife:
            state = HealthState.EXPIRING
        else:
            state = HealthState.OK
        fields.setdefault("error", problem)
        return self.health(
            state,
            now,
            expires_at=now + left,
            detail=self._detail(info, now),
            **fields,  # type: ignore[arg-type]
        )

    def inspect(self, now: float) -> CredentialHealth:
        try:
            info = inspect_proxy(self.path)
        except ProxyError as exc:
            missing = not self.path.exists()
            return self.health(HealthState.EXPIRED if missing else HealthState.FAILING, now, error=str(exc))
        return self._from_info(info, now)

    # -- renewing -----------------------------------------------------------------------------

    def renewal_due(self, health: CredentialHealth, now: float) -> bool:
        if not self.renews:
            return False
        left = health.seconds_left(now)
        return left is None or left < self.options.minlife or health.state is HealthState.FAILING

    def check(self, now: float) -> CredentialHealth:
        current = self.inspect(now)
        if not self.renewal_due(current, now):
            return current
        try:
            info = self.renew(now)
        except RenewalError as exc:
            # keep the old proxy's time left: a failing renewal with hours left is still failing
            state = HealthState.EXPIRED if current.state is HealthState.EXPIRED else HealthState.FAILING
            return current.with_state(state, error=str(exc), checked_at=now)
        health = self._from_info(info, now, renewed_at=now)
        if health.state is HealthState.EXPIRING:
            granted = format_seconds(self._left(info, now))
            health = health.with_state(
                HealthState.EXPIRING,
                error=f"renewed, but only {granted} was granted (minlife {format_seconds(self.options.minlife)})",
            )
        return health

    def _passphrase(self, read_file: bool = True) -> str | None:
        o = self.options
        if o.myproxy_passphrase is not None:
            return o.myproxy_passphrase.get_secret_value()
        if read_file and o.myproxy_passphrasefile:
            path = Path(o.myproxy_passphrasefile).expanduser()
            try:
                return path.read_text().rstrip("\r\n")
            except OSError as exc:
                raise RenewalError(f"passphrase file {path} cannot be read: {exc.strerror}") from None
        return None

    def environment(self) -> dict[str, str]:
        o = self.options
        env = {"X509_CERT_DIR": str(Path(o.cadir).expanduser())}
        if o.vomsdir:
            env["X509_VOMS_DIR"] = str(Path(o.vomsdir).expanduser())
        if o.vomses:
            env["VOMS_USERCONF"] = env["X509_VOMSES"] = str(Path(o.vomses).expanduser())
        if o.flavor == "myproxy" and o.usercert and o.userkey:
            # a trusted retriever authenticates with its own certificate
            env["X509_USER_CERT"] = str(expand(o.usercert))
            env["X509_USER_KEY"] = str(expand(o.userkey))
        return env

    def voms_step(self, cert: Path, key: Path, out: Path, *, from_proxy: bool) -> Step:
        """Add VOMS attributes (or make a plain proxy without ``vorole``), signed by cert/key."""
        o = self.options
        extra = shlex.split(o.voms_args or "")
        if o.vomstool == "arcproxy":
            argv = ["arcproxy", "-C", str(cert), "-K", str(key), "-P", str(out)]
            argv += ["-T", str(Path(o.cadir).expanduser()), "-t", str(int(o.timeout))]
            argv += ["-c", f"validityPeriod={o.lifetime}", "-c", f"vomsACvalidityPeriod={o.lifetime}"]
            if o.vorole:
                argv += ["-B", "-S", o.vorole]  # -B: voms-server 2.1 speaks only the old protocol
                if o.vomses:
                    argv += ["-V", str(Path(o.vomses).expanduser())]
                if o.vomsdir:
                    argv += ["-s", str(Path(o.vomsdir).expanduser())]
            return Step(tuple(argv + extra), out, what="arcproxy")
        argv = ["voms-proxy-init", "-ignorewarn", "-valid", valid_hm(o.lifetime), "-out", str(out)]
        if from_proxy:
            argv.append("-noregen")
        argv += ["-cert", str(cert), "-key", str(key), "-timeout", str(int(o.timeout))]
        if o.vorole:
            argv += ["-voms", o.vorole]
            if o.vomses:
                argv += ["-vomses", str(Path(o.vomses).expanduser())]
        return Step(tuple(argv + extra), out, what="voms-proxy-init")

    def myproxy_step(self, out: Path) -> Step:
        o = self.options
        host, _, port = (o.myproxy_hostname or "").partition(":")
        argv = ["myproxy-logon", "-s", host]
        if o.myproxy_port or port:
            argv += ["-p", str(o.myproxy_port or port)]
        argv += ["-l", o.myproxy_username or "", "-t", str(proxy_hours(o.lifetime)), "-o", str(out), "-q"]
        passphrase = None if o.retriever_list else self._passphrase()
        if passphrase is None:
            argv.append("-n")  # trusted retriever: authenticated by certificate, no passphrase
            return Step(tuple(argv), out, what="myproxy-logon")
        argv.append("-S")
        return Step(tuple(argv), out, stdin=(passphrase + "\n").encode(), what="myproxy-logon")

    def renew_commands(self, tmp: Path) -> list[Step]:
        """The commands that make the new proxy in ``tmp`` (the last step writes it)."""
        o = self.options
        if o.flavor == "myproxy":
            if not o.vorole:
                return [self.myproxy_step(tmp)]
            base = tmp.with_name(tmp.name + ".myproxy")
            return [self.myproxy_step(base), self.voms_step(base, base, tmp, from_proxy=True)]
        if o.baseproxy:
            base = Path(o.baseproxy).expanduser()
            return [self.voms_step(base, base, tmp, from_proxy=True)]
        cert = expand(o.usercert) or Path("~/.globus/usercert.pem").expanduser()
        key = expand(o.userkey) or Path("~/.globus/userkey.pem").expanduser()
        return [self.voms_step(cert, key, tmp, from_proxy=False)]

    def renew(self, now: float) -> ProxyInfo:
        """Make, check and install a new proxy. Raises RenewalError (message free of secrets)."""
        secrets = self.secrets()
        with staged_file(self.path) as tmp:
            steps = self.renew_commands(tmp)
            try:
                for step in steps:
                    if step.output != tmp:
                        step.output.touch(mode=0o600)
                    result = self.runner.run(
                        step.argv,
                        timeout=self.options.timeout,
                        input=step.stdin,
                        env=self.environment(),
                        secrets=secrets,
                    )
                    if not result.ok:
                        raise RenewalError(describe_failure(step.what, result, self.options.timeout))
                info = self._validate(tmp, now)
            finally:
                for step in steps:
                    if step.output != tmp:
                        step.output.unlink(missing_ok=True)
            try:
                install_private(tmp, self.path, self.options.owner)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise RenewalError(f"cannot install the new proxy as {self.path}: {reason}") from None
        return info

    def _validate(self, tmp: Path, now: float) -> ProxyInfo:
        try:
            info = inspect_proxy(tmp)
        except ProxyError as exc:
            raise RenewalError(f"the new proxy is not usable: {str(exc).replace(str(tmp), 'it')}") from None
        if info.time_left(now) <= 0:
            raise RenewalError("the new proxy is already expired")
        problem = self._problem(info, now)
        if problem:
            raise RenewalError("the new proxy is wrong: " + problem.replace(str(self.path), "it"))
        ac_left = info.ac_time_left(now)
        if self.options.vorole and ac_left is not None and ac_left <= 0:
            raise RenewalError("the new proxy's VOMS attributes are already expired")
        return info

    def next_check(self, health: CredentialHealth, now: float) -> float:
        o = self.options
        due = now + o.checktime
        if health.state is HealthState.FAILING:
            return now + min(o.checktime, RETRY_AFTER)
        if health.expires_at is not None:
            # wake when the credential crosses minlife (renew or report expiring) or ends
            for moment in (health.expires_at - o.minlife, health.expires_at):
                if moment > now:
                    due = min(due, moment + 0.5)
                    break
        return max(due, now + 1.0)


class RenewalError(Exception):
    pass


def describe_failure(what: str, result: CommandResult, timeout: float) -> str:
    if result.timed_out:
        return f"{what} timed out after {timeout:g} s"
    output = result.brief()
    return f"{what} failed (exit {result.rc})" + (f": {output}" if output else "")
