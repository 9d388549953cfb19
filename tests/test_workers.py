"""`minilive serve --workers N` with real processes: the ports shared by the workers, a killed worker
replaced, a clean stop on SIGTERM, and the settings and failures it refuses."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from api.supervisor import ENV_NODE_SECRET, Supervisor, port_in_use
from tests.conftest import free_port, metric
from tests.test_cli import start_cli, wait_http

# Each test starts a supervisor and its worker processes, each importing the whole stack: they run alone,
# after the parallel part of the suite (scripts/dev test).
pytestmark = pytest.mark.serial


class Workers:
    """A supervisor process and everything it wrote."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._reader


async def answering(port: int, known: set[int], new: int, timeout: float = 15) -> dict[int, dict]:
    """The pids that answer /healthz, each on a new connection so that the kernel picks a worker for it
    (with their answers), once they include every pid of ``known`` and ``new`` others."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: dict[int, dict] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while loop.time() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    body = await response.json()
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
                continue
            seen[body["pid"]] = body
            if known <= seen.keys() and len(seen.keys() - known) >= new:
                return seen
    raise AssertionError(f"wanted {known} and {new} more pids within {timeout} s, saw {sorted(seen)}")


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def wait_gone(pids: set[int], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(gone(pid) for pid in pids):
        assert loop.time() < deadline, f"still running after {timeout} s: {[p for p in pids if not gone(p)]}"
        await asyncio.sleep(0.1)


async def start_workers(tmp_path: Path, *extra: str) -> tuple[Workers, int, int]:
    """Two workers on new ports; returns when both answer."""
    rtmp, http = free_port(), free_port()
    args = ["--workers", "2", "--allow-anonymous-publish", "--public-stats", "--data-dir", str(tmp_path)]
    args += ["--host", "127.0.0.1"]
    workers = Workers(await start_cli(*args, "--rtmp-port", str(rtmp), "--http-port", str(http), *extra))
    await wait_http(http, timeout=20)
    return workers, rtmp, http


def two_free_ports() -> int:
    """A port that is free, with the next one free too."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


async def test_workers_share_the_ports_replace_a_killed_worker_and_stop_on_sigterm(tmp_path):
    metrics_port = two_free_ports()
    config = tmp_path / "minilive.toml"
    config.write_text(f"[metrics]\nport = {metrics_port}\n")
    workers, rtmp, http = await start_workers(tmp_path, "--config", str(config))
    try:
        first = await answering(http, set(), 2)
        assert sorted(body["worker"] for body in first.values()) == [0, 1]
        # The shared port's /metrics answers from either worker; [metrics] port + i from worker i (issue 16).
        for pid, body in first.items():
            text = await wait_http(metrics_port + body["worker"], 20, "/metrics")
            assert metric(text, "minilive_worker_info", worker=str(body["worker"]), pid=str(pid)) == 1
        with socket.create_connection(("127.0.0.1", rtmp), timeout=5):
            pass

        envs = {pid: environ(pid) for pid in first}
        for pid, env in envs.items():
            assert env["MINILIVE_WORKER_INDEX"] == str(first[pid]["worker"])
            assert env["MINILIVE_WORKERS"] == "2"
            assert env["MINILIVE_SUPERVISOR_PID"] == str(workers.process.pid)
        secrets = {env["MINILIVE_NODE_SECRET"] for env in envs.values()}
        assert len(secrets) == 1 and re.fullmatch(r"[0-9a-f]{32}", next(iter(secrets))), "one secret, made once"

        victim, survivor = sorted(first, key=lambda pid: first[pid]["worker"])
        os.kill(victim, signal.SIGKILL)
        after = await answering(http, {survivor}, 1)
        (replacement,) = after.keys() - {survivor, victim}
        assert after[replacement]["worker"] == 0, "the new process takes the dead worker's index"
        assert environ(replacement)["MINILIVE_NODE_SECRET"] in secrets
        assert f"worker 0 (pid {victim}) died (signal 9); restarting" in workers.log

        workers.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(workers.process.wait(), 20) == 0
        assert gone(survivor) and gone(replacement)
        await workers.stop()
        assert re.search(r"^w0 .*shutting down$", workers.log, re.MULTILINE), "worker lines carry their index"
        assert re.search(r"^w1 .*shutting down$", workers.log, re.MULTILINE)
        assert "all workers stopped" in workers.log
    finally:
        await workers.stop()


async def test_workers_still_running_after_drain_seconds_are_killed(tmp_path):
    config = tmp_path / "minilive.toml"
    config.write_text("[supervisor]\ndrain_seconds = 1\n")
    workers, _, http = await start_workers(tmp_path, "--config", str(config))
    try:
        pids = await answering(http, set(), 2)
        stuck = next(pid for pid, body in pids.items() if body["worker"] == 1)
        os.kill(stuck, signal.SIGSTOP)  # it cannot act on SIGTERM
        workers.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(workers.process.wait(), 10) == 0
        assert all(gone(pid) for pid in pids)
        await workers.stop()
        assert f"worker 1 (pid {stuck}) still running after 1 s: killing it" in workers.log
    finally:
        await workers.stop()


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path):
    workers, rtmp, http = await start_workers(tmp_path)
    pids: dict[int, dict] = {}
    try:
        pids = await answering(http, set(), 2)
        os.kill(workers.process.pid, signal.SIGKILL)
        await wait_gone(set(pids), 10)
        assert port_in_use("127.0.0.1", rtmp) is None and port_in_use("127.0.0.1", http) is None
    finally:
        await workers.stop()
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


async def test_workers_must_be_a_count_or_auto(tmp_path):
    for value in ("0", "abc"):
        process = await start_cli("--workers", value, "--data-dir", str(tmp_path))
        out, _ = await process.communicate()
        assert process.returncode == 2
        assert 'workers must be a whole number from 1, or "auto", not' in out.decode()
    config = tmp_path / "minilive.toml"
    config.write_text('workers = "many"\n')
    process = await start_cli("--config", str(config), "--data-dir", str(tmp_path))
    out, _ = await process.communicate()
    assert process.returncode == 2
    assert "'many'" in out.decode()


async def test_workers_need_fixed_ports(tmp_path):
    process = await start_cli("--workers", "2", "--http-port", "0", "--data-dir", str(tmp_path))
    out, _ = await process.communicate()
    assert process.returncode == 2
    assert "needs fixed ports" in out.decode() and "http_port" in out.decode()


async def test_workers_failing_at_start_make_the_supervisor_give_up(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    process = await start_cli(
        "--workers", "2", "--host", "127.0.0.1", "--rtmp-port", str(free_port()),
        "--http-port", str(free_port()), "--data-dir", str(not_a_dir),
    )  # fmt: skip
    # Each try imports the whole stack in two processes: on a busy machine that is seconds a try.
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 1
    last = out.decode().strip().splitlines()[-1]
    assert "every worker keeps failing at start; giving up" in last
    assert "died (exit code 1): minilive: cannot start: [Errno 17] File exists" in last


def test_the_node_secret_comes_from_the_environment_when_set(monkeypatch):
    monkeypatch.setenv(ENV_NODE_SECRET, "shared-by-every-node")
    assert Supervisor(["serve"], 2, 1.0).secret == "shared-by-every-node"
    monkeypatch.delenv(ENV_NODE_SECRET)
    assert Supervisor(["serve"], 2, 1.0).secret != Supervisor(["serve"], 2, 1.0).secret
