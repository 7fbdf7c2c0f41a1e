"""Reading configuration sources safely: local files and http(s) URLs.

Every source is read with an explicit encoding (UTF-8; a UTF-8 byte-order mark is skipped), a size
limit and, for URLs, a deadline that bounds the whole request (connect, headers and body). Special
files (FIFOs, sockets, devices) and directories are refused before anything is read from them, so
a FIFO named like a config file cannot hang the loader. Errors are ``SourceError`` with a message
that never contains the file's content (auth files hold secrets) and a URL without credentials.

``fetch`` also speaks conditional GET (``ETag`` / ``Last-Modified``) for periodic reloads.
"""

from __future__ import annotations

import codecs
import http.client
import os
import stat
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MAX_SOURCE_BYTES = 16 * 1024 * 1024  # far above any real queues.conf; more means a mistake
HTTP_TIMEOUT = 30.0  # seconds for one whole remote request


class SourceError(Exception):
    """A source could not be read. ``label`` names it (path or redacted URL); ``line`` when known."""

    def __init__(self, label: str, message: str, line: int | None = None) -> None:
        super().__init__(f"{label}: {message}")
        self.label = label
        self.message = message
        self.line = line


@dataclass(frozen=True)
class SourceText:
    label: str
    text: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class NotModified:
    """A conditional GET answered 304: the source is unchanged since the validators given."""

    label: str


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment (they may carry credentials)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def local_path(source: str, base: Path | None = None) -> Path:
    """A bare path or ``file://`` URI, relative paths taken from ``base``."""
    if source.startswith("file://"):
        source = urllib.request.url2pathname(urllib.parse.urlsplit(source).path)
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def check_regular_file(path: Path) -> None:
    """Raise SourceError unless ``path`` is a regular file (following symlinks); reads nothing."""
    label = str(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(label, f"cannot read: {exc.strerror or exc}") from None
    _check_mode(label, st.st_mode)


def _check_mode(label: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise SourceError(label, "is a directory, not a file")
    if stat.S_ISFIFO(mode):
        raise SourceError(label, "is a FIFO (named pipe), not a regular file; refused")
    if stat.S_ISSOCK(mode):
        raise SourceError(label, "is a socket, not a regular file; refused")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise SourceError(label, "is a device, not a regular file; refused")
    if not stat.S_ISREG(mode):
        raise SourceError(label, "is not a regular file; refused")


def read_file(path: Path, *, max_bytes: int = MAX_SOURCE_BYTES) -> SourceText:
    """A local file's text. Opened non-blocking and checked with fstat before any read."""
    label = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SourceError(label, f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _check_mode(label, st.st_mode)
        if st.st_size > max_bytes:
            raise SourceError(label, f"is {st.st_size} bytes; the limit is {max_bytes}")
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError as exc:
                raise SourceError(label, f"cannot read: {exc.strerror or exc}") from None
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise SourceError(label, f"is larger than the limit of {max_bytes} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return SourceText(label, decode(b"".join(chunks), label))


_UTF16_32_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def decode(data: bytes, label: str, charset: str | None = None) -> str:
    """Bytes -> text: UTF-8 (BOM skipped), or the charset an http answer declares.

    Messages name the line but never show the bytes (the file may be an auth file)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    else:
        for bom, name in _UTF16_32_BOMS:
            if data.startswith(bom):
                raise SourceError(label, f"is {name} text; save it as UTF-8 (e.g. iconv -f {name} -t UTF-8)")
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise SourceError(
            label, "contains NUL bytes: a binary file, or UTF-16 without a byte-order mark?", line
        )
    encoding = "utf-8"
    if charset:
        try:
            encoding = codecs.lookup(charset).name
        except LookupError:
            raise SourceError(label, f"declares an unknown charset {charset[:40]!r}") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SourceError(
            label, f"is not valid {encoding.upper()} text (save it as UTF-8, e.g. with iconv)", line
        ) from None


def fetch(
    url: str,
    *,
    timeout: float = HTTP_TIMEOUT,
    max_bytes: int = MAX_SOURCE_BYTES,
    etag: str | None = None,
    last_modified: str | None = None,
) -> SourceText | NotModified:
    """GET an http(s) URL within ``timeout`` seconds overall; a 304 gives ``NotModified``.

    The request runs on a helper thread so that no server behaviour (a slow drip of bytes, a
    status line that never ends) can hold the caller past the deadline."""
    label = redact_url(url)
    result: list[SourceText | NotModified | BaseException] = []

    def work() -> None:
        try:
            result.append(_fetch(url, label, timeout, max_bytes, etag, last_modified))
        except BaseException as exc:  # handed to the caller below
            result.append(exc)

    thread = threading.Thread(target=work, name=f"apf-fetch {label}", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not result:
        raise SourceError(label, f"no complete answer within {timeout:g}s")
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _fetch(
    url: str, label: str, timeout: float, max_bytes: int, etag: str | None, last_modified: str | None
) -> SourceText | NotModified:
    headers = {"User-Agent": "autopyfactory-config", "Accept": "text/plain, */*"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read(max_bytes + 1)
            if len(body) > max_bytes:
                raise SourceError(label, f"answer is larger than the limit of {max_bytes} bytes")
            charset = resp.headers.get_content_charset()
            return SourceText(
                label,
                decode(body, label, charset),
                etag=resp.headers.get("ETag"),
                last_modified=resp.headers.get("Last-Modified"),
            )
    except SourceError:
        raise
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return NotModified(label)
        raise SourceError(label, f"HTTP {exc.code} {exc.reason or ''}".strip()) from None
    except http.client.BadStatusLine:
        raise SourceError(label, "the server's answer is not HTTP (bad status line)") from None
    except http.client.IncompleteRead as exc:
        raise SourceError(label, f"answer truncated after {len(exc.partial)} bytes") from None
    except http.client.HTTPException as exc:
        raise SourceError(label, f"bad HTTP answer ({type(exc).__name__})") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        if isinstance(reason, TimeoutError) or "timed out" in str(text):
            text = f"timed out after {timeout:g}s"
        raise SourceError(label, f"cannot fetch: {text}") from None
    except TimeoutError:
        raise SourceError(label, f"timed out after {timeout:g}s") from None
    except OSError as exc:
        raise SourceError(label, f"cannot fetch: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:  # a malformed URL (bad port, bad host)
        raise SourceError(label, f"malformed URL ({str(exc)[:80]})") from None


def read_source(source: str, base: Path | None = None, *, timeout: float = HTTP_TIMEOUT) -> SourceText:
    """One source by name: an http(s) URL, a ``file://`` URI or a path (relative to ``base``)."""
    if is_url(source):
        got = fetch(source, timeout=timeout)
        assert isinstance(got, SourceText)  # no validators were sent
        return got
    if "://" in source and not source.startswith("file://"):
        scheme = source.split("://", 1)[0]
        raise SourceError(
            redact_url(source) if scheme else source,
            f"unsupported scheme {scheme!r}: use a path, file://, http:// or https://",
        )
    return read_file(local_path(source, base))
