"""Headless Chromium for playback tests, driven over the Chrome DevTools Protocol.

The browser speaks CDP on a WebSocket; aiohttp's client is all we need, so the tests carry no
browser-automation dependency. ``serve_web`` serves ``tests/web/`` (the test pages and the npm
players in ``node_modules``) from its own origin, as a real site embedding a player would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

CHROMIUM = shutil.which("chromium")
WEB_ROOT = Path(__file__).parent / "web"

# The machine has no outside network: without the background-networking flags Chromium keeps
# trying Google's hosts. Autoplay without a gesture lets pages start players on load.
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
    "--remote-debugging-port=0",
]

# For WebRTC pages: a generated camera and microphone, granted without a prompt; host candidates on
# loopback (Chromium leaves it out by default) under their real address rather than an mDNS name.
MEDIA_FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


class BrowserError(Exception):
    """A CDP command failed, a page threw, or the browser went away."""


@dataclass(slots=True)
class ConsoleMessage:
    level: str  # console API type ("log", "warning", "error", ...) or Log domain level
    text: str


@dataclass
class Page:
    """One tab, attached with a flat CDP session."""

    browser: Browser
    session_id: str
    target_id: str
    console: list[ConsoleMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and crashes

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id, timeout=timeout)

    async def goto(self, url: str, timeout: float = 15) -> None:
        loaded = self.browser.expect("Page.loadEventFired", self.session_id)
        result = await self.send("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            loaded.cancel()
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str, timeout: float = 10) -> Any:
        """The value of ``expression`` (awaited when it is a promise), as JSON-compatible Python."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True}
        result = await self.send("Runtime.evaluate", params, timeout)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {describe_exception(result['exceptionDetails'])}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10, interval: float = 0.1) -> Any:
        """Polls ``expression`` until it is truthy; returns that value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"{expression!r} still {value!r} after {timeout} s; page errors: {self.errors}")
            await asyncio.sleep(interval)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(describe_value(arg) for arg in params.get("args", []))
            self.console.append(ConsoleMessage(params.get("type", "log"), text))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.console.append(ConsoleMessage(entry["level"], f"{entry['text']} {entry.get('url', '')}".strip()))
        elif method == "Runtime.exceptionThrown":
            self.errors.append(describe_exception(params["exceptionDetails"]))
        elif method in ("Inspector.targetCrashed", "Target.targetCrashed"):
            self.errors.append("page crashed")


class Browser:
    """A headless Chromium process and its CDP connection. Use ``async with Browser.launch() as b``."""

    def __init__(self, process: asyncio.subprocess.Process, profile: Path) -> None:
        self.process = process
        self.profile = profile
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pages: dict[str, Page] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(
        cls, executable: str | None = CHROMIUM, timeout: float = 20, extra_args: list[str] | None = None
    ) -> AsyncIterator[Browser]:
        """``extra_args`` are Chromium switches added to ``FLAGS`` (e.g. ``MEDIA_FLAGS``)."""
        if executable is None:
            raise BrowserError("chromium not installed: run scripts/dev test, which installs it")
        profile = Path(tempfile.mkdtemp(prefix="minilive-chromium-"))
        with open(profile / "stderr.log", "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                executable,
                *FLAGS,
                *(extra_args or []),
                f"--user-data-dir={profile}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group, so teardown ends the renderers too
            )
        browser = cls(process, profile)
        try:
            await browser._connect(timeout)
            yield browser
        finally:
            await browser._close()

    async def _connect(self, timeout: float) -> None:
        # Chromium writes the port it chose and the browser target's path once it listens.
        active = self.profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (active.exists() and len(lines := active.read_text().split()) >= 2):
            if self.process.returncode is not None:
                raise BrowserError(f"chromium exited with {self.process.returncode}: {self.stderr_tail()}")
            if loop.time() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port in {timeout} s: {self.stderr_tail()}")
            await asyncio.sleep(0.05)
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is None or future.done():
                    continue
                if "error" in data:
                    error = data["error"]
                    future.set_exception(BrowserError(f"{error.get('message')} {error.get('data', '')}".strip()))
                else:
                    future.set_result(data.get("result", {}))
                continue
            method, params, session_id = data.get("method", ""), data.get("params", {}), data.get("sessionId")
            page = self.pages.get(session_id or "")
            if page is not None:
                page.on_event(method, params)
            for waiter in [w for w in self._waiters if w[0] == method and w[1] in (None, session_id)]:
                self._waiters.remove(waiter)
                if not waiter[2].done():
                    waiter[2].set_result(params)
        gone = BrowserError(f"the browser closed its DevTools connection: {self.stderr_tail()}")
        for future in [*self._pending.values(), *(w[2] for w in self._waiters)]:
            if not future.done():
                future.set_exception(gone)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None, timeout: float = 10
    ) -> dict[str, Any]:
        if self.ws is None or self.ws.closed:
            raise BrowserError(f"{method}: no DevTools connection")
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self.ws.send_str(json.dumps(message))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BrowserError(f"{method}: no answer in {timeout} s") from None
        finally:
            self._pending.pop(message["id"], None)

    def expect(self, method: str, session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``method`` event; ask for it before the command that causes it."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, future))
        return future

    async def new_page(self, url: str | None = None) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"], target["targetId"])
        self.pages[page.session_id] = page
        for domain in ("Runtime", "Page", "Log", "Inspector"):
            await page.send(f"{domain}.enable")
        if url is not None:
            await page.goto(url)
        return page

    def stderr_tail(self, size: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.profile / "stderr.log").read_bytes()[-size:].decode(errors="replace")
        return ""

    async def _close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(BrowserError, ConnectionError):
                await self.send("Browser.close", timeout=2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 3)
        # Whatever is left of the browser's process group (renderers, zygote) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader
        if self.session is not None:
            await self.session.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def describe_value(obj: dict[str, Any]) -> str:
    """A console argument (a CDP RemoteObject) as text."""
    if "value" in obj:
        return obj["value"] if isinstance(obj["value"], str) else json.dumps(obj["value"])
    return obj.get("description") or obj.get("unserializableValue") or obj.get("type", "")


def describe_exception(details: dict[str, Any]) -> str:
    exception = details.get("exception") or {}
    text = exception.get("description") or details.get("text", "exception")
    return f"{text} at {details['url']}:{details.get('lineNumber', 0) + 1}" if details.get("url") else text


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
