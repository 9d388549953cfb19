"""Real Chromium for browser tests, driven by Playwright for Python.

Debian's Chromium (``/usr/bin/chromium``) runs once per test session (:class:`Chromium`); each test
connects Playwright to it over CDP from its own event loop (pytest-asyncio gives every test a new loop,
and a Playwright connection belongs to the loop that made it) and works in a fresh browser context,
so tests share the process but no cookies, storage or pages. Playwright's own browser downloads are
never used: ``playwright install`` is not needed and must not run.

:class:`PageLog` records what pages say on their console and the errors they throw; the fixtures in
tests/conftest.py fail a test whose pages logged an error it did not declare. ``serve_web`` serves
``tests/web/`` (the test pages and the npm players in ``node_modules``) from its own origin, as a real
site embedding a player would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from playwright.async_api import BrowserContext, ConsoleMessage, Error, Page

CHROMIUM = shutil.which("chromium")
WEB_ROOT = Path(__file__).parent / "web"

# The machine has no outside network: without the background-networking flags Chromium keeps trying
# Google's hosts. Autoplay without a gesture lets pages start players on load. For WebRTC pages: a
# generated camera and microphone, granted without a prompt, and host candidates on loopback (Chromium
# leaves it out by default) under their real address rather than an mDNS name. One set of flags for
# every test: the media ones change nothing for pages that do not ask for a camera.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # Every test's page is a window of its own in the shared process: none may count as hidden, which
    # would throttle its timers (a player's loading loop) as a background tab's. Playwright's own
    # launch passes the same.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--remote-debugging-port=0",
]

# An iPhone 12 (Playwright's device list has the same): 390x844 CSS pixels at 3x, touch, mobile layout.
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "screen": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
    "user_agent": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
        " Version/17.0 Mobile/15E148 Safari/604.1"
    ),
}


class BrowserError(Exception):
    """Chromium would not start or went away."""


class Chromium:
    """Debian's Chromium as a process with a DevTools port, shared by the tests of a session.

    ``endpoint()`` starts it again if it died, so one crashed browser fails one test, not the rest."""

    def __init__(self, executable: str, timeout: float = 20) -> None:
        self.executable = executable
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="minilive-chromium-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def endpoint(self) -> str:
        """The ``http://127.0.0.1:PORT`` URL that ``chromium.connect_over_cdp`` takes."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        return self.url

    def _start(self) -> None:
        self.stop()
        shutil.rmtree(self.profile, ignore_errors=True)
        self.profile.mkdir(parents=True)
        active = self.profile / "DevToolsActivePort"
        with open(self.profile.with_suffix(".log"), "wb") as stderr:
            self.process = subprocess.Popen(
                [self.executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group: stop() ends the renderers too
            )
        # Chromium writes the port it chose once it listens.
        deadline = time.monotonic() + self.timeout
        while not (active.exists() and len(lines := active.read_text().split()) >= 2):
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with {self.process.returncode}: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port in {self.timeout} s: {self.stderr_tail()}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{lines[0]}"

    def stderr_tail(self, size: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.profile.with_suffix(".log").read_bytes()[-size:].decode(errors="replace")
        return ""

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # The whole group: renderers and the zygote outlive a killed browser process otherwise.
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    @classmethod
    @contextlib.contextmanager
    def launch(cls, executable: str | None = CHROMIUM) -> Iterator[Chromium]:
        if executable is None:
            raise BrowserError("chromium not installed: run scripts/dev test, which installs it")
        chromium = cls(executable)
        try:
            chromium.endpoint()
            yield chromium
        finally:
            chromium.stop()
            shutil.rmtree(chromium.profile, ignore_errors=True)
            chromium.profile.with_suffix(".log").unlink(missing_ok=True)


@dataclass(slots=True)
class PageLog:
    """What the pages of one test logged, and the errors they threw or were expected to throw."""

    console: list[str] = field(default_factory=list)  # "type: text (url:line)"
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, crashes
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def watch(self, context: BrowserContext) -> BrowserContext:
        """Records every page of ``context``: those it has, those the test opens, and popups."""
        for page in context.pages:
            self._watch_page(page)
        # Closures, not bound methods: Playwright marks a handler's owner, which a slots class refuses.
        context.on("page", lambda page: self._watch_page(page))
        return context

    def allow(self, pattern: str) -> None:
        """Declares that an error matching ``pattern`` (a regular expression, searched) is part of the test."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def _watch_page(self, page: Page) -> None:
        page.on("console", lambda message: self._on_console(message))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught {error.name}: {error.message}"))
        page.on("crash", lambda _: self.errors.append(f"page crashed: {page.url}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        where = message.location
        text = f"{message.type}: {message.text} ({where.get('url', '')}:{where.get('lineNumber', 0) + 1})"
        self.console.append(text)
        if message.type == "error":
            self.errors.append(text)


async def wait_for(page: Page, expression: str, timeout: float = 10, interval: float = 0.1) -> Any:
    """Polls ``expression`` (awaited when it is a promise) until it is truthy; returns that value.

    Unlike ``page.wait_for_function`` the failure says what the expression last gave."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await page.evaluate(expression)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{expression!r} still {value!r} after {timeout} s")
        await asyncio.sleep(interval)


async def screenshot(page: Page, path: Path) -> Path | None:
    """A PNG of what ``page`` shows, or None when the page is gone (a failure screenshot is best effort)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        await page.screenshot(path=path, timeout=5000)
    except Error:
        return None
    return path


@contextlib.asynccontextmanager
async def serve_web(root: Path = WEB_ROOT) -> AsyncIterator[str]:
    """Serves ``root`` on a free loopback port; yields its base URL."""

    @web.middleware
    async def no_store(request: web.Request, handler):  # type: ignore[no-untyped-def]
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        return response

    app = web.Application(middlewares=[no_store])
    app.router.add_static("/", root)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
