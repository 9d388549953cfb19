"""Shared fixtures: an in-process minilive server on free ports, and real ffmpeg/ffprobe peers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from prometheus_client.parser import text_string_to_metric_families

from api.config import Settings
from api.models import App, Media
from api.server import Server
from relay.formats.packet import Packet
from relay.hub.stream import LiveStream
from tests.browser import CHROMIUM, PHONE, WEB_ROOT, Chromium, PageLog, screenshot, serve_web
from tests.hevc import has_x265, hevc_packets

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
REDIS_SERVER = shutil.which("redis-server")

UVLOOP_TOO = {"test_fast_http"}

needs_ffmpeg = pytest.mark.skipif(
    not (FFMPEG and FFPROBE), reason="ffmpeg/ffprobe not installed: run scripts/dev test, which installs them"
)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """The suite runs on asyncio's loop; the modules named here run on uvloop too, the loop that
    ``minilive serve`` runs on, where transports and their callbacks differ in details."""
    if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in UVLOOP_TOO:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(scope="session")
def x265() -> str:
    """The ffmpeg to make HEVC with (:func:`tests.hevc.hevc_packets`); the test is skipped without libx265."""
    if not (FFMPEG and FFPROBE):
        pytest.skip("ffmpeg/ffprobe not installed")
    if not has_x265(FFMPEG):
        pytest.skip("this ffmpeg has no libx265")
    return FFMPEG


@pytest.fixture(scope="session")
def hevc_media(x265: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Packet], Path]:
    """Six seconds of 320x240 HEVC (libx265, a keyframe a second, no B-frames) and AAC, as FLV packets,
    and a folder for the test's files."""
    folder = tmp_path_factory.mktemp("hevc")
    return hevc_packets(x265, folder), folder


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start servers with settings overrides: ``await make_server(grace_seconds=1)``."""
    servers: list[Server] = []

    async def start(**overrides: Any) -> Server:
        settings = Settings(host="127.0.0.1", rtmp_port=0, http_port=0, data_dir=tmp_path / f"data{len(servers)}")
        settings.allow_anonymous_publish = overrides.pop("allow_anonymous_publish", True)
        # Test receivers listen on 127.0.0.1; test_http_hardening checks that the default refuses it.
        settings.rooms.webhook_private_addresses = overrides.pop("webhook_private_addresses", True)
        # Tests read /api/v1/streams to watch streams; test_http_hardening checks that the default needs a token.
        settings.public_stats = overrides.pop("public_stats", True)
        for key, value in overrides.items():
            if key.startswith("transcode_"):  # [transcode] shares some names with [hls]
                setattr(settings.transcode, key.removeprefix("transcode_"), value)
                continue
            if key.startswith("cluster_"):
                setattr(settings.cluster, key.removeprefix("cluster_"), value)
                continue
            if key.startswith("channel_"):
                setattr(settings.channel, key.removeprefix("channel_"), value)
                continue
            targets = (settings, settings.relay, settings.rtmp, settings.rooms, settings.recorder, settings.hls)
            targets += (settings.metrics,)
            for target in (*targets, settings.transcode):
                if hasattr(target, key):
                    setattr(target, key, value)
                    break
            else:
                raise AttributeError(f"no setting {key}")
        server = Server(settings)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(make_server: Callable[..., Awaitable[Server]]) -> Server:
    return await make_server()


def rtmp_url(server: Server, name: str, app: str = "live") -> str:
    return f"rtmp://127.0.0.1:{server.rtmp_port}/{app}/{name}"


def flv_url(server: Server, name: str, app: str = "live") -> str:
    return f"http://127.0.0.1:{server.http_port}/{app}/{name}.flv"


@dataclass
class Publisher:
    process: asyncio.subprocess.Process

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


async def publish(
    url: str,
    *,
    seconds: float = 30,
    video: bool = True,
    audio: bool = True,
    size: str = "320x240",
    rate: int = 25,
    gop: int = 25,
    realtime: bool = True,
    noise: bool = False,
    bitrate: str = "",
) -> Publisher:
    """Debian's ffmpeg pushing a generated H.264 + AAC stream (testsrc + sine) over RTMP. ``bitrate``
    (e.g. ``"3M"``): constant, padded with filler data (testsrc alone compresses to very little)."""
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin"]
    if realtime:
        args.append("-re")
    if video:
        source = f"testsrc=size={size}:rate={rate}"
        # Noise makes every frame expensive to compress: a high, realistic bitrate.
        args += ["-f", "lavfi", "-i", source + (",noise=alls=60:allf=t" if noise else "")]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    if video:
        args += [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            str(gop),
            "-pix_fmt",
            "yuv420p",
        ]
        if bitrate:
            args += ["-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
            args += ["-x264-params", "nal-hrd=cbr"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    args += ["-t", str(seconds), "-f", "flv", url]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    return Publisher(process)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` in a /metrics ``text`` (None when absent),
    read with prometheus-client's own parser (values are floats: ``1.0``, not ``1``)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def hub_stream(server: Server, app: str, name: str) -> LiveStream | None:
    """The hub's own object for stream ``app/name``, for tests that look inside the fan-out (outside
    relay.hub, code uses only the hub's public interface)."""
    return server.hub._streams.get(f"{app}/{name}")


async def wait_live(server: Server, name: str, app: str = "live", timeout: float = 10) -> None:
    """Wait until the hub has a keyframe of the stream cached (so players start at once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        stream = hub_stream(server, app, name)
        if stream is not None and stream.publisher is not None and stream.gop.packets:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stream {app}/{name} did not go live within {timeout} s")


async def run(*args: str, timeout: float = 30) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"{args[0]} timed out after {timeout} s: {err.decode()[-2000:]}") from None
    return process.returncode or 0, out, err


async def probe_streams(url: str, timeout: float = 20) -> list[dict[str, Any]]:
    code, out, err = await run(FFPROBE, "-v", "error", "-show_streams", "-of", "json", url, timeout=timeout)
    assert code == 0, f"ffprobe failed on {url}: {err.decode()[-2000:]}"
    return json.loads(out)["streams"]


async def decode_cleanly(source: str, seconds: float | None = None, timeout: float = 40) -> None:
    """FFmpeg decodes ``source`` (file or URL; the first ``seconds`` of it) without a single error."""
    limit = ["-t", str(seconds)] if seconds else []
    code, _, err = await run(FFMPEG, "-v", "error", "-i", source, *limit, "-f", "null", "-", timeout=timeout)
    assert code == 0 and not err.strip(), err.decode()


async def probe_frames(source: str, seconds: float | None = None) -> list[dict[str, Any]]:
    """ffprobe's streams of ``source`` with every frame decoded and counted (``nb_read_frames``); of a
    live URL, the first ``seconds`` of it."""
    limit = ["-read_intervals", f"%+{seconds}"] if seconds else []
    code, out, err = await run(FFPROBE, "-v", "error", *limit, "-count_frames", "-show_streams", "-of", "json", source)
    assert code == 0, f"ffprobe failed on {source}: {err.decode()[-2000:]}"
    return json.loads(out)["streams"]


async def probe_packets(url: str, seconds: float, timeout: float = 30) -> list[dict[str, Any]]:
    """Packets (stream, dts, pts, flags) that ffprobe reads from ``url`` in ``seconds`` of playback."""
    code, out, err = await run(
        FFPROBE,
        "-v",
        "error",
        "-read_intervals",
        f"%+{seconds}",
        "-show_entries",
        "packet=stream_index,codec_type,dts_time,pts_time,flags",
        "-of",
        "json",
        url,
        timeout=timeout,
    )
    assert code == 0, f"ffprobe failed on {url}: {err.decode()[-2000:]}"
    return json.loads(out)["packets"]


async def add_images(server: Server, appid: str) -> None:
    """The three images a room needs, as if uploaded with /cgi-bin/media/upload."""
    now = time.time()
    for kind in ("cover", "share", "feeds"):
        await server.store.put_media(
            Media(f"{kind}-{appid}", appid, "image", "image/png", 10, 1, 1, "x.png", now, now + 3600)
        )


def official_room_body(appid: str, **fields: Any) -> dict[str, Any]:
    """A valid createRoom body (the official camelCase fields) using the images of ``add_images``."""
    now = int(time.time())
    return {
        "name": "测试直播间",
        "coverImg": f"cover-{appid}",
        "shareImg": f"share-{appid}",
        "feedsImg": f"feeds-{appid}",
        "startTime": now + 900,
        "endTime": now + 900 + 3600,
        "anchorName": "主播",
        "anchorWechat": "anchor_wx",
        "type": 1,
        "closeLike": 0,
        "closeGoods": 0,
        "closeComment": 0,
        **fields,
    }


async def make_room(server: Server, name: str = "shop", **fields: Any):  # type: ignore[no-untyped-def]
    """A new app and a room, made by the services."""
    app = await server.apps.create_app(name)
    await add_images(server, app.appid)
    return app, await server.rooms.create_room(app, official_room_body(app.appid, **fields))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_redis(process: subprocess.Popen[bytes], port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"redis-server did not answer on port {port} within {timeout} s")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed: run scripts/dev test, which installs it")
    port = free_port()
    args = [REDIS_SERVER, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_redis(process, port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def require_chromium() -> None:
    if CHROMIUM is None:
        pytest.skip("chromium not installed: run scripts/dev test, which installs it")


PAGE_LOG = pytest.StashKey[PageLog]()
CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test whose pages logged a console error or threw, and did not declare it with
    ``page_log.allow(pattern)``, fails, even if its own asserts passed."""
    try:
        result = yield
    except BaseException:
        item.stash[CALL_FAILED] = True
        raise
    log = item.stash.get(PAGE_LOG, None)
    if log is not None and (errors := log.unexpected()):
        item.stash[CALL_FAILED] = True
        said = "\n".join(log.console)
        pytest.fail("the page logged errors:\n" + "\n".join(errors) + "\nall the console said:\n" + said, pytrace=False)
    return result


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """Debian's Chromium, one process for the session (see tests/browser.py)."""
    require_chromium()
    with Chromium.launch() as process:
        yield process


@pytest.fixture
async def browser(chromium: Chromium) -> AsyncIterator[Browser]:
    """Playwright's Browser (async API) on the session's Chromium, connected from this test's loop."""
    async with async_playwright() as playwright:
        connected = await playwright.chromium.connect_over_cdp(chromium.endpoint())
        try:
            yield connected
        finally:
            await connected.close()  # closes this test's contexts, leaves Chromium running


@pytest.fixture
def page_log(request: pytest.FixtureRequest) -> PageLog:
    """The console and errors of the test's pages; ``page_log.allow(regex)`` declares an expected error."""
    log = PageLog()
    request.node.stash[PAGE_LOG] = log
    return log


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's folder for screenshots and other artifacts: ``tests/artifacts/<module>.<test>/``
    (or under ``$MINILIVE_ARTIFACTS``), emptied at the start; made when something is written."""
    root = Path(os.environ.get("MINILIVE_ARTIFACTS") or Path(__file__).parent / "artifacts")
    name = f"{request.node.module.__name__.rsplit('.', 1)[-1]}.{request.node.name}"
    folder = root / re.sub(r"[^\w.\[\]-]+", "_", name)
    shutil.rmtree(folder, ignore_errors=True)
    return folder


@pytest.fixture
def shot(artifacts: Path) -> Callable[[Page, str], Awaitable[Path]]:
    """``await shot(page, "step-name")`` saves what ``page`` shows as ``<artifacts>/step-name.png``."""

    async def take(page: Page, step: str) -> Path:
        path = artifacts / f"{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=path)
        return path

    return take


@pytest.fixture
async def new_page(
    browser: Browser, page_log: PageLog, artifacts: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Awaitable[Page]]]:
    """``await new_page(url=None, phone=False, **context_options)``: a page in a new browser context
    (``browser.new_context``'s options), watched by ``page_log`` with any page it opens later. When
    the test fails, each page's last picture goes to its artifacts."""
    contexts: list[BrowserContext] = []

    async def open_page(url: str | None = None, *, phone: bool = False, **options: Any) -> Page:
        context = page_log.watch(await browser.new_context(**({**PHONE, **options} if phone else options)))
        contexts.append(context)
        tab = await context.new_page()
        if url is not None:
            await tab.goto(url)
        return tab

    yield open_page
    failed = request.node.stash.get(CALL_FAILED, False)
    for number, context in enumerate(contexts):
        if failed:
            for index, tab in enumerate(context.pages):
                await screenshot(tab, artifacts / f"failed-{number}-{index}.png")
        await context.close()


@pytest.fixture
async def page(new_page: Callable[..., Awaitable[Page]]) -> Page:
    """A desktop-sized page (1280x720) whose console errors fail the test."""
    return await new_page()


@pytest.fixture
async def phone_page(new_page: Callable[..., Awaitable[Page]]) -> Page:
    """The same at a phone's size: an iPhone 12 (390x844 at 3x, touch, mobile user agent)."""
    return await new_page(phone=True)


@pytest.fixture
async def web_pages() -> AsyncIterator[str]:
    """Base URL of tests/web/ (test pages, and the npm players under /node_modules) on its own port."""
    if not (WEB_ROOT / "node_modules").is_dir():
        pytest.skip("tests/web/node_modules missing: run scripts/dev test, which installs hls.js and mpegts.js")
    async with serve_web() as url:
        yield url


@pytest.fixture
def api_client():  # type: ignore[no-untyped-def]
    """``async with api_client(server, app) as api``: a REST client authenticated as ``app``, whose
    ``await api.call(method, path, status, json=...)`` checks the status and returns the JSON body."""
    from tests.test_rest_api import Client

    @contextlib.asynccontextmanager
    async def connect(server: Server, app: App):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
            body = {"appid": app.appid, "secret": app.secret}
            async with session.post("/api/v1/token", json=body) as response:
                assert response.status == 200
                session.headers["Authorization"] = f"Bearer {(await response.json())['access_token']}"
            yield Client(session, app)

    return connect
