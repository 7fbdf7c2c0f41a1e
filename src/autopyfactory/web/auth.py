"""Access control for the dashboard (read-only either way): loopback clients are trusted; others
need the bearer token (``Authorization: Bearer ...``, or the login cookie) when ``web.tokenfile``
is set. Client certificates are checked by TLS itself (``web.tls.cafile``), before any request.

The token is never logged or rendered; the cookie holds an HMAC of it, not the token.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from autopyfactory.web.config import WebSettings, is_loopback

COOKIE = "apf_session"


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"autopyfactory web session", hashlib.sha256).hexdigest()


class Access:
    def __init__(self, settings: WebSettings) -> None:
        self._token = settings.token
        self._session = session_value(settings.token) if settings.token else None
        self._open = settings.allow_anonymous or bool(settings.cafile)
        self._secure = settings.tls

    @property
    def uses_token(self) -> bool:
        return self._token is not None

    def allowed(self, request: Request) -> bool:
        client = request.client.host if request.client else None
        if is_loopback(client) or self._open:
            return True
        if self._token is None:
            return False  # refused at start-up already; never serve anyone by accident
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), (self._session or "").encode())

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in ("/login", "/static/style.css") or self.allowed(request):
            return await call_next(request)
        if "text/html" in request.headers.get("accept", "") and self._token is not None:
            return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", status_code=303)
        return PlainTextResponse(
            "401 unauthorized: send Authorization: Bearer <token>\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="autopyfactory"'},
        )

    async def login(self, request: Request) -> Response:
        """GET: a form; POST (urlencoded ``token``, ``next``): set the session cookie."""
        if self._token is None:
            return RedirectResponse("/", status_code=303)
        if request.method == "POST":
            form = parse_qs((await request.body()).decode(errors="replace"))
            given = (form.get("token") or [""])[0].strip()
            target = (form.get("next") or ["/"])[0]
            if not target.startswith("/") or target.startswith("//"):
                target = "/"
            if hmac.compare_digest(given.encode(), self._token.encode()):
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(
                    COOKIE, self._session or "", httponly=True, samesite="strict", secure=self._secure
                )
                return response
            return HTMLResponse(_login_page("Wrong token.", target), status_code=401)
        return HTMLResponse(_login_page("", request.query_params.get("next", "/")))


_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>autopyfactory: log in</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/style.css"></head><body><main>
<h1>autopyfactory</h1><p>This dashboard needs the bearer token (web.tokenfile) from clients not on
loopback.</p><p class="error">{msg}</p><form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" autocomplete="current-password"></label>
<button type="submit">Log in</button></form></main></body></html>"""


def _login_page(message: str, target: str) -> str:
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    return _LOGIN.replace("{msg}", html.escape(message)).replace("{next}", html.escape(target, quote=True))
