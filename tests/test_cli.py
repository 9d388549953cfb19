"""`minilive serve` as a user runs it: flags, a TOML file, clear errors, and a clean SIGTERM shutdown."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import aiohttp
import pytest

from tests.conftest import free_port, needs_ffmpeg, publish
from tests.test_playback import FlvClient, play_http


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "api.cli",
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def wait_http(port: int, timeout: float = 10, path: str = "/healthz") -> str:
    """The body of ``GET path`` on ``port`` once it answers 200."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    if response.status == 200:
                        return await response.text()
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"server did not come up (no answer to {path} on port {port})")
            await asyncio.sleep(0.1)


@needs_ffmpeg
async def test_sigterm_ends_publishers_and_viewers_cleanly(tmp_path):
    rtmp, http = free_port(), free_port()
    config = tmp_path / "minilive.toml"
    config.write_text(f'http_port = {http}\nhost = "127.0.0.1"\n[relay]\ngrace_seconds = 60\n')
    server = await start_cli(
        "--config",
        str(config),
        "--rtmp-port",
        str(rtmp),
        "--data-dir",
        str(tmp_path),
        "--allow-anonymous-publish",
    )
    try:
        await wait_http(http)
        pub = await publish(f"rtmp://127.0.0.1:{rtmp}/live/bye")
        async with aiohttp.ClientSession() as session:
            viewer = FlvClient()
            for _ in range(100):
                task = asyncio.create_task(play_http(session, f"http://127.0.0.1:{http}/live/bye.flv", viewer))
                await asyncio.sleep(0.2)
                if viewer.status == 200:
                    break
                await task
                viewer = FlvClient()
            await viewer.wait_for(lambda c: len(c.video()) > 10)
            server.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(server.wait(), 10)
            await asyncio.wait_for(viewer.ended.wait(), 5)
        assert code == 0
        assert viewer.end_reason == "eof", "viewers get a clean end of stream, not a reset"
        assert await asyncio.wait_for(pub.process.wait(), 10) is not None
        log = (await server.stdout.read()).decode()
        assert f"RTMP  listening on 127.0.0.1:{rtmp}" in log
        assert f"HTTP  listening on 127.0.0.1:{http}" in log
        assert "rtmp publish start live/bye" in log
        assert "shutting down" in log
        assert "stream live/bye ended (server shutting down)" in log
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def test_bad_settings_are_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[relay]\nflush_window = 5\n")
    server = await start_cli("--config", str(config))
    out, _ = await server.communicate()
    assert server.returncode == 2
    assert "unknown setting 'flush_window'" in out.decode()
    assert "flush_window_ms" in out.decode(), "the error lists the settings that exist"


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_port_in_use_says_what_to_do(tmp_path, workers):
    """With workers, the supervisor finds the port taken before it starts any."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = await start_cli(
            "--workers", workers, "--host", "127.0.0.1", "--rtmp-port", str(port),
            "--http-port", str(free_port()), "--data-dir", str(tmp_path),
        )  # fmt: skip
        out, _ = await asyncio.wait_for(server.communicate(), 10)
    assert server.returncode == 1
    assert "--rtmp-port" in out.decode()
    assert "worker 0 started" not in out.decode()
