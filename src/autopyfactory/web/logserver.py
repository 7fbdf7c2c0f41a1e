"""AutoPyFactory's pilot log server: ``baseLogDir`` over HTTP, so ``baseLogDirUrl`` links work.

Semantics (``autopyfactory/logserver.py`` of APF): files under ``baseLogDir`` are served;
``.log .out .err .jdl .conf`` (and any other text) as ``text/plain``; directory listings only with
``logserver.index``; ``/robots.txt`` disallows every robot unless ``logserver.allowrobots`` (then
a ``robots.txt`` in ``baseLogDir`` is served, if there is one).

Path traversal is impossible: a request path with a ``..`` segment, a backslash or a NUL byte is
refused, and the resolved real path (symlinks followed) must lie inside the real ``baseLogDir``.
Responses carry ``nosniff`` and a sandboxing CSP, so a log holding HTML cannot run script in the
dashboard's origin.
"""

from __future__ import annotations

import html
import mimetypes
import os
import time
from pathlib import Path
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from autopyfactory.web.config import LogSettings

TEXT_SUFFIXES = {".log", ".out", ".err", ".jdl", ".conf", ".txt", ".sh", ".json", ".xml", ".html", ".htm"}
SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'",
    "Cache-Control": "no-cache",
}
ROBOTS_DENY = "User-agent: *\nDisallow: /\n"


class Forbidden(Exception):
    pass


def safe_path(root: Path, rel: str) -> Path:
    """The real path of ``rel`` inside ``root``; raises ``Forbidden`` for anything that could
    leave it (``..``, absolute tricks, backslashes, NUL, a symlink pointing outside)."""
    if "\x00" in rel or "\\" in rel:
        raise Forbidden(rel)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise Forbidden(rel)
    root_real = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root_real, *parts))
    if real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep):
        raise Forbidden(rel)
    return Path(real)


def media_type(path: Path) -> str:
    """Text as text/plain (never text/html: a log must not become a page), else the guess."""
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "text/plain; charset=utf-8"
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed is None or guessed.startswith("text/") or "javascript" in guessed or "xml" in guessed:
        return "text/plain; charset=utf-8" if guessed else "application/octet-stream"
    return guessed


def log_routes(settings: LogSettings, prefix: str = "") -> list[Route]:
    """Routes serving ``settings.root`` under ``prefix`` ('' or '/logs'); ``robots.txt`` at the
    prefix (and at '/' for a standalone server, where robots look)."""
    assert settings.root is not None
    root = settings.root

    async def robots(_request: Request) -> Response:
        if not settings.allowrobots:
            return PlainTextResponse(ROBOTS_DENY, headers=SAFE_HEADERS)
        own = root / "robots.txt"
        if own.is_file():
            return FileResponse(own, media_type="text/plain; charset=utf-8", headers=SAFE_HEADERS)
        return PlainTextResponse("no robots.txt\n", status_code=404, headers=SAFE_HEADERS)

    def serve(request: Request) -> Response:
        rel = request.path_params.get("path", "")
        try:
            path = safe_path(root, rel)
        except Forbidden:
            return PlainTextResponse(
                "403 forbidden: path outside the log directory\n", 403, headers=SAFE_HEADERS
            )
        if path.is_dir():
            if not settings.index:
                return PlainTextResponse(
                    "403 forbidden: directory listings are off (logserver.index = False)\n",
                    403,
                    headers=SAFE_HEADERS,
                )
            if rel and not rel.endswith("/"):
                return Response(status_code=301, headers={"Location": f"{prefix}/{quote(rel)}/"})
            return HTMLResponse(listing(path, f"{prefix}/{rel}"), headers=SAFE_HEADERS)
        if not path.is_file():
            return PlainTextResponse("404 not found\n", 404, headers=SAFE_HEADERS)
        return FileResponse(path, media_type=media_type(path), headers=SAFE_HEADERS)

    routes = [Route(f"{prefix}/robots.txt", robots, methods=["GET", "HEAD"])]
    if prefix:
        routes.append(Route("/robots.txt", robots, methods=["GET", "HEAD"]))
    routes += [
        Route(f"{prefix}/", serve, methods=["GET", "HEAD"]),
        Route(f"{prefix}/{{path:path}}", serve, methods=["GET", "HEAD"]),
    ]
    return routes


def listing(directory: Path, url_path: str) -> str:
    """An Apache-like index; every name is escaped and every link quoted."""
    rows = []
    entries = sorted(directory.iterdir(), key=lambda p: (not p.is_dir(), p.name))
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        name = entry.name + ("/" if entry.is_dir() else "")
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime))
        size = "-" if entry.is_dir() else str(st.st_size)
        rows.append(
            f'<tr><td><a href="{html.escape(quote(name))}">{html.escape(name)}</a></td>'
            f"<td>{when}</td><td>{size}</td></tr>"
        )
    title = html.escape(f"Index of {url_path}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h1>{title}</h1><table><tr><th>Name</th><th>Modified (UTC)</th><th>Size</th></tr>"
        f'<tr><td><a href="../">../</a></td><td></td><td></td></tr>{"".join(rows)}</table></body></html>'
    )


def log_app(settings: LogSettings, prefix: str = "") -> object:
    """The standalone log server (an ASGI app) for ``baseLogDirUrl``'s port."""
    from starlette.applications import Starlette

    return Starlette(routes=log_routes(settings, prefix))
