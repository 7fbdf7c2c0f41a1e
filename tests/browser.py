"""Playwright driving Debian's Chromium (``/usr/bin/chromium``; never ``playwright install``).

The browser is launched the way the machine's notes prescribe (as root: ``--no-sandbox``; off the
closed network: no background networking, component updates, sync or QUIC). Every page a test
opens records its console errors, uncaught exceptions and every request that does not go to
127.0.0.1 (or stays inside the page: ``data:``, ``blob:``, ``about:``, a ``file:`` report).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("APF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
# the browser tests write the README's screenshots here
SCREENSHOTS = Path(os.environ.get("APF_SCREENSHOTS") or REPO / "docs" / "screenshots")


@dataclass
class Watch:
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], f"requests that left 127.0.0.1: {self.foreign}"
        assert self.dialogs == [], f"the page opened dialogs: {self.dialogs}"


def local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "file"):
        return True
    return parts.hostname == "127.0.0.1"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module (a module imports this fixture; one sync Playwright may run
    at a time in a thread, so each module's ends before the next one's starts)."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: the test command installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def open_page(
    browser: Any, *, javascript: bool = True, width: int = 1280, height: int = 900
) -> tuple[Any, Watch]:
    context = browser.new_context(
        viewport={"width": width, "height": height}, timezone_id="UTC", java_script_enabled=javascript
    )
    page = context.new_page()
    watch = Watch()
    page.on("console", lambda m: m.type == "error" and watch.errors.append(m.text))
    page.on("pageerror", lambda e: watch.errors.append(str(e)))

    def request(r: Any) -> None:
        watch.requests.append(r.url)
        if not local(r.url):
            watch.foreign.append(r.url)

    page.on("request", request)

    def dialog(d: Any) -> None:
        watch.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    return page, watch


def painted(page: Any, selector: str, rgb: tuple[int, int, int] | None = None) -> int:
    """Pixels of the canvas drawn on (or, with ``rgb``, drawn in that colour, +-40 per channel)."""
    return int(
        page.evaluate(
            """([selector, rgb]) => {
                const c = document.querySelector(selector);
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) {
                    if (d[i + 3] === 0) continue;
                    if (!rgb || (Math.abs(d[i] - rgb[0]) < 40 && Math.abs(d[i + 1] - rgb[1]) < 40
                                 && Math.abs(d[i + 2] - rgb[2]) < 40)) n++;
                }
                return n;
            }""",
            [selector, list(rgb) if rgb else None],
        )
    )


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
