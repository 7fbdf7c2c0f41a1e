"""Bearer token profiles: the token's life from its JWT ``exp``, refreshed by a command.

The token is never logged or put in an error: messages name the file and the times only. A token
that is not a JWT (opaque) has no known end; it is ``ok`` while the file holds one.
"""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path

from autopyfactory.credentials.base import ManagedCredential, install_private, staged_file
from autopyfactory.credentials.commands import scrub_tokens
from autopyfactory.credentials.health import CredentialHealth, HealthState
from autopyfactory.credentials.x509 import RETRY_AFTER, describe_failure
from autopyfactory.plugins.auth.token import TokenOptions


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), None when the token is no JWT or has
    no ``exp``. The signature is not checked: the server that accepts the token does that."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def looks_like_token(text: str) -> bool:
    """One line of printable, unspaced text: what token tools print."""
    text = text.strip()
    return bool(text) and "\n" not in text and " " not in text and text.isprintable()


class TokenCredential(ManagedCredential):
    kind = "Token"
    options: TokenOptions

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._last_value: str | None = None

    @property
    def path(self) -> Path | None:
        return Path(self.options.tokenfile).expanduser() if self.options.tokenfile else None

    def secrets(self) -> tuple[str, ...]:
        values = [self.options.token.get_secret_value()] if self.options.token is not None else []
        if self._last_value:
            values.append(self._last_value)
        return tuple(values)

    def read(self) -> str:
        """The token now (raises OSError/ValueError naming the file, never the value)."""
        if self.options.token is not None:
            return self.options.token.get_secret_value()
        path = self.path
        if path is None:
            raise ValueError("token profile has neither token nor tokenfile")
        value = path.read_text().strip()
        if not value:
            raise ValueError(f"{path} is empty")
        self._last_value = value
        return value

    def inspect(self, now: float) -> CredentialHealth:
        where = str(self.path) if self.path else "inline token"
        try:
            value = self.read()
        except FileNotFoundError:
            return self.health(HealthState.EXPIRED, now, error=f"{where} does not exist")
        except OSError as exc:
            return self.health(HealthState.FAILING, now, error=f"{where}: {exc.strerror}")
        except ValueError as exc:
            return self.health(HealthState.EXPIRED, now, error=str(exc))
        expires = jwt_expiry(value)
        if expires is None:
            return self.health(HealthState.OK, now, detail=f"{where} (not a JWT: end unknown)")
        left = expires - now
        if left <= 0:
            state = HealthState.EXPIRED
        elif left < self.options.minlife:
            state = HealthState.EXPIRING
        else:
            state = HealthState.OK
        return self.health(state, now, expires_at=expires, detail=where)

    def renewal_due(self, health: CredentialHealth, now: float) -> bool:
        if not self.options.refresh:
            return False
        left = health.seconds_left(now)
        if health.state in (HealthState.EXPIRED, HealthState.FAILING):
            return True
        return left is not None and left < self.options.minlife

    def check(self, now: float) -> CredentialHealth:
        current = self.inspect(now)
        if not self.renewal_due(current, now):
            return current
        error = self.refresh()
        after = self.inspect(now)
        if error is None and after.state is HealthState.EXPIRING:
            error = "refreshed, but the new token is already below minlife"
        if error is not None:
            state = HealthState.EXPIRED if after.state is HealthState.EXPIRED else HealthState.FAILING
            return after.with_state(state, error=error)
        return after.with_state(after.state, renewed_at=now)

    def refresh(self) -> str | None:
        """Run the refresh command; None on success, else the reason (no secret in it)."""
        path = self.path
        assert path is not None and self.options.refresh
        try:
            argv = shlex.split(self.options.refresh)
        except ValueError as exc:
            return f"token.refresh cannot be parsed: {exc}"
        result = self.runner.run(argv, timeout=self.options.timeout, secrets=self.secrets())
        printed = result.stdout.strip()
        if printed:
            self._last_value = printed
        if not result.ok:
            # whatever it printed may be a (partial) token: stdout stays out, stderr is scrubbed
            failure = describe_failure(
                f"refresh command {argv[0]}", result.without_stdout(), self.options.timeout
            )
            return scrub_tokens(failure)
        if printed:
            if not looks_like_token(printed):
                return f"refresh command {argv[0]} printed something that is not a token"
            try:
                with staged_file(path) as tmp:
                    tmp.write_text(printed + "\n")
                    install_private(tmp, path, None)
            except OSError as exc:
                return f"cannot write {path}: {exc.strerror}"
        return None

    def next_check(self, health: CredentialHealth, now: float) -> float:
        o = self.options
        if health.state is HealthState.FAILING or (health.state is HealthState.EXPIRED and o.refresh):
            return now + min(o.checktime, RETRY_AFTER)
        due = now + o.checktime
        if health.expires_at is not None:
            for moment in (health.expires_at - o.minlife, health.expires_at):
                if moment > now:
                    due = min(due, moment + 0.2)
                    break
        return max(due, now + 0.5)
