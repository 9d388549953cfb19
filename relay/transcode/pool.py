"""The transcoding workers seen from the server: processes, the socket to each, and their supervisor.

Jobs (one per source being transcoded, see :mod:`relay.transcode.renditions`) are spread over the
workers, fewest jobs first. Writing to a worker never blocks the event loop and never queues without
bound: past ``MAX_QUEUED`` bytes waiting for a worker, a job's packets are dropped until the source's
next keyframe (and counted). A worker that exits, or sends nothing for ``hang_seconds`` (it sends stats
every second), is killed and started again, and its jobs are opened on the new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Protocol

from relay.formats.packet import Packet
from relay.transcode import wire

log = logging.getLogger("minilive.transcode")

MAX_QUEUED = 8 * 1024 * 1024  # bytes waiting for one worker


class JobClient(Protocol):
    """What the pool calls back on a job's owner."""

    id: int

    def spec(self) -> dict[str, Any]:
        """The OPEN message's data: the ladder, its settings, and where to resume."""
        ...

    def output(self, rung: int, packet: Packet, sent_ns: int) -> None: ...

    def stats(self, data: dict[str, Any]) -> None: ...

    def restarted(self) -> None:
        """Its worker was replaced: the job is open on the new one, which needs a keyframe to start."""
        ...


class _Connection(asyncio.Protocol):
    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.reader = wire.Reader()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except wire.WireError as exc:
            log.error("transcode worker %d sent a bad message (%s): restarting it", self.worker.index, exc)
            self.worker.kill()
            return
        self.worker.received(messages)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.transport = None


class WorkerProcess:
    def __init__(self, pool: Pool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.transport: asyncio.Transport | None = None
        self.jobs: set[int] = set()
        self.last_heard = time.monotonic()
        self.pid = 0
        self.restarts = 0

    async def start(self) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, "MINILIVE_LOG_LEVEL": logging.getLevelName(log.getEffectiveLevel())}
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay.transcode.worker", str(child.fileno()), str(self.index),
                pass_fds=(child.fileno(),), env=env, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            child.close()
        self.pid = self.process.pid
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _Connection(self), sock=parent)
        self.transport = transport  # type: ignore[assignment]
        self.last_heard = time.monotonic()
        log.info("transcode worker %d started (pid %d)", self.index, self.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None and self.transport is not None

    def send(self, data: bytes) -> bool:
        """Queue ``data`` for the worker; False (nothing queued) when it is gone or too far behind."""
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() > MAX_QUEUED:
            return False
        transport.write(data)
        return True

    def received(self, messages: list[tuple[int, memoryview]]) -> None:
        self.last_heard = time.monotonic()
        jobs = self.pool.jobs
        for kind, body in messages:
            if kind == wire.OUTPUT:
                job_id, rung, packet, sent = wire.read_output(body)
                job = jobs.get(job_id)
                if job is not None:
                    job.output(rung, packet, sent)
            elif kind == wire.STATS:
                _, data = wire.read_control(body)
                for job_id, report in data["jobs"].items():
                    job = jobs.get(int(job_id))
                    if job is not None:
                        job.stats(report)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()  # the worker reads the end and exits
            self.transport = None
        if self.process is not None and self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 2.0)
            except TimeoutError:
                self.kill()
                await self.process.wait()


class Pool:
    def __init__(self, size: int, hang_seconds: float = 5.0) -> None:
        self.size = max(1, size)
        self.hang_seconds = hang_seconds
        self.workers: list[WorkerProcess] = []
        self.jobs: dict[int, JobClient] = {}
        self._where: dict[int, WorkerProcess] = {}
        self._next_id = 1
        self._supervisor: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self.restarts = 0

    def new_job_id(self) -> int:
        job_id = self._next_id
        self._next_id += 1
        return job_id

    async def start(self) -> None:
        """Start the supervisor; the processes start as jobs need them."""
        self._supervisor = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for worker in self.workers:
            await worker.stop()
        self.workers.clear()

    async def open(self, job: JobClient) -> WorkerProcess:
        """Open ``job`` on an idle worker, a new one while there are fewer than ``size``, else the one
        with the fewest jobs. (Processes start as jobs need them: each holds about 35 MB idle.)"""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:  # two jobs opening at once must not both start a process
            idle = [w for w in self.workers if w.alive and not w.jobs]
            if idle:
                worker = idle[0]
            elif len(self.workers) < self.size:
                worker = WorkerProcess(self, len(self.workers))
                await worker.start()
                self.workers.append(worker)
            else:
                worker = min(self.workers, key=lambda w: (not w.alive, len(w.jobs)))
            self.jobs[job.id] = job
            self._where[job.id] = worker
            worker.jobs.add(job.id)
        worker.send(wire.control_message(wire.OPEN, job.id, job.spec()))
        return worker

    def worker_of(self, job_id: int) -> WorkerProcess | None:
        return self._where.get(job_id)

    def send_packet(self, job_id: int, packet: Packet, sent_ns: int) -> bool:
        worker = self._where.get(job_id)
        return worker is not None and worker.send(wire.packet_message(job_id, packet, sent_ns))

    def control(self, job_id: int, kind: int, data: Any = None) -> None:
        worker = self._where.get(job_id)
        if worker is not None:
            worker.send(wire.control_message(kind, job_id, data))

    def close(self, job_id: int) -> None:
        self.control(job_id, wire.CLOSE)
        worker = self._where.pop(job_id, None)
        if worker is not None:
            worker.jobs.discard(job_id)
        self.jobs.pop(job_id, None)

    # ------------------------------------------------------------ supervision

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for worker in list(self.workers):
                try:
                    await self._check(worker)
                except Exception:
                    log.exception("transcode worker %d: restart failed; trying again", worker.index)

    async def _check(self, worker: WorkerProcess) -> None:
        now = time.monotonic()
        if worker.alive and not (worker.jobs and now - worker.last_heard > self.hang_seconds):
            return
        if worker.alive:
            log.error("transcode worker %d (pid %d) sent nothing for %.0f s: killing it",
                      worker.index, worker.pid, now - worker.last_heard)  # fmt: skip
        else:
            code = worker.process.returncode if worker.process is not None else None
            log.error("transcode worker %d (pid %d) died (exit status %s): starting it again",
                      worker.index, worker.pid, code)  # fmt: skip
        worker.kill()
        if worker.process is not None:
            await worker.process.wait()
        await worker.start()
        worker.restarts += 1
        self.restarts += 1
        for job_id in list(worker.jobs):
            job = self.jobs.get(job_id)
            if job is None:
                worker.jobs.discard(job_id)
                continue
            worker.send(wire.control_message(wire.OPEN, job_id, job.spec()))
            job.restarted()
