"""``minilive serve --workers N``: the parent process that runs N server processes on the same ports.

Each worker is ``python -m api.cli serve`` with the parent's arguments and ``--workers 1``; it binds the
RTMP and HTTP ports with SO_REUSEPORT, so the kernel spreads new connections over the workers. The
supervisor restarts a worker that dies (at once, then with a backoff while they keep dying young),
gives up if every worker keeps failing at start, and on SIGTERM or SIGINT stops them all: SIGTERM,
``[supervisor] drain_seconds`` to finish, then SIGKILL.

What a worker learns from its environment:

- ``MINILIVE_WORKER_INDEX``: its index, 0 to N-1 (a restarted worker keeps its index);
- ``MINILIVE_WORKERS``: N;
- ``MINILIVE_SUPERVISOR_PID``: the supervisor's pid (a worker whose supervisor is gone stops);
- ``MINILIVE_NODE_SECRET``: the credential workers use between themselves; the supervisor's own
  environment's if set, else made once per supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from api.config import Settings

log = logging.getLogger("minilive.supervisor")

ENV_INDEX = "MINILIVE_WORKER_INDEX"
ENV_WORKERS = "MINILIVE_WORKERS"
ENV_SUPERVISOR_PID = "MINILIVE_SUPERVISOR_PID"
ENV_NODE_SECRET = "MINILIVE_NODE_SECRET"

YOUNG_SECONDS = 10.0  # a worker that dies younger than this counts towards the backoff
MAX_BACKOFF_SECONDS = 30.0
START_TRIES = 3  # young deaths in a row of every worker before the supervisor gives up
LINE_LIMIT = 1024 * 1024  # a longer output line of a worker is dropped, not relayed


@dataclass(slots=True)
class SupervisorSettings:
    # On SIGTERM or SIGINT, how long the workers have to end their streams and close their viewers
    # before they are killed.
    drain_seconds: float = 20.0


WorkerExitHook = Callable[[int, int], Awaitable[None]]


async def no_cleanup(index: int, pid: int) -> None:
    """The default ``on_worker_exit``: a worker keeps no state outside itself that would outlive it."""


def worker_index() -> int | None:
    """This process's index among the supervisor's workers; None when it runs alone."""
    value = os.environ.get(ENV_INDEX)
    return int(value) if value is not None else None


async def stop_when_orphaned() -> None:
    """In a worker: stop cleanly (SIGTERM to itself) once the supervisor is gone, so that no worker
    outlives it holding the shared ports."""
    supervisor = int(os.environ[ENV_SUPERVISOR_PID])
    while os.getppid() == supervisor:
        await asyncio.sleep(1.0)
    log.warning("supervisor (pid %d) is gone: stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def port_in_use(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound as the workers will bind it, or None. A port held by another
    program, or by another supervisor's workers (SO_REUSEPORT would share it silently), is refused."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


def _exit_reason(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


@dataclass(slots=True)
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None  # None while it waits to be restarted
    started: float = 0.0
    young_deaths: int = 0  # in a row
    last_line: str = ""  # its last line of output, for the give-up message


class Supervisor:
    def __init__(
        self,
        argv: list[str],
        count: int,
        drain_seconds: float,
        on_worker_exit: WorkerExitHook = no_cleanup,
    ) -> None:
        """``argv``: the worker's command line after ``python -m api.cli``. ``on_worker_exit(index, pid)``
        is awaited once for every worker process that exited (died, or stopped at shutdown), before
        a replacement starts; an exception in it is logged and ignored."""
        self.argv = argv
        self.workers = [Worker(i) for i in range(count)]
        self.drain_seconds = drain_seconds
        self.on_worker_exit = on_worker_exit
        self.secret = os.environ.get(ENV_NODE_SECRET) or secrets.token_hex(16)
        self.stopping = asyncio.Event()
        self.failure = ""  # why the supervisor gave up

    async def run(self) -> int:
        """Run the workers until SIGTERM or SIGINT (0), or until they all keep failing at start (1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info("starting %d workers", len(self.workers))
        keepers = [asyncio.create_task(self._keep(worker)) for worker in self.workers]
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([stop, *keepers], return_when=asyncio.FIRST_COMPLETED)
        for keeper in keepers:
            if keeper.done() and not self.failure and keeper.exception() is not None:
                self.failure = f"cannot start a worker: {keeper.exception()}"  # fork or exec failed
        self.stopping.set()
        if not self.failure:
            log.info("stopping the workers (up to %g s)", self.drain_seconds)
        self._signal_all(signal.SIGTERM)
        _, running = await asyncio.wait(keepers, timeout=self.drain_seconds)
        if running:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    log.warning(
                        "worker %d (pid %d) still running after %g s: killing it",
                        worker.index,
                        worker.process.pid,
                        self.drain_seconds,
                    )
            self._signal_all(signal.SIGKILL)
            await asyncio.wait(running)
        if self.failure:
            log.error("%s", self.failure)
            return 1
        log.info("all workers stopped")
        return 0

    def _signal_all(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    async def _keep(self, worker: Worker) -> None:
        """Run one worker, and start it again each time it dies, until the supervisor stops."""
        while True:
            process = await self._start(worker)
            if self.stopping.is_set():  # started while the others were being told to stop
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            relay = asyncio.create_task(self._relay(worker, process))
            code = await process.wait()
            worker.process = None
            # Its last words; not waiting longer: a process it started may hold the pipe open.
            await asyncio.wait({relay}, timeout=1.0)
            relay.cancel()
            try:
                await self.on_worker_exit(worker.index, process.pid)
            except Exception:
                log.exception("on_worker_exit failed for worker %d (pid %d)", worker.index, process.pid)
            if self.stopping.is_set():
                return
            if time.monotonic() - worker.started >= YOUNG_SECONDS:
                worker.young_deaths = 0
            delay = 0.0 if worker.young_deaths == 0 else min(MAX_BACKOFF_SECONDS, 2.0 ** (worker.young_deaths - 1))
            worker.young_deaths += 1
            died = f"worker {worker.index} (pid {process.pid}) died ({_exit_reason(code)})"
            if all(w.young_deaths >= START_TRIES and w.process is None for w in self.workers):
                last_words = f": {worker.last_line}" if worker.last_line else ""
                self.failure = f"every worker keeps failing at start; giving up. Last: {died}{last_words}"
                self.stopping.set()
                return
            log.error("%s; restarting%s", died, f" in {delay:g} s" if delay else "")
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    return

    async def _start(self, worker: Worker) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            ENV_INDEX: str(worker.index),
            ENV_WORKERS: str(len(self.workers)),
            ENV_SUPERVISOR_PID: str(os.getpid()),
            ENV_NODE_SECRET: self.secret,
        }
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "api.cli",
            *self.argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=LINE_LIMIT,
            # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which stops
            # the workers itself (a worker stopped by the terminal would look like a death).
            process_group=0,
        )
        worker.started = time.monotonic()
        worker.last_line = ""
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)
        return worker.process

    async def _relay(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        """Pass the worker's output (its log, and that of the processes it starts) on to ours, each
        line prefixed with the worker's index, until it closes."""
        assert process.stdout is not None
        out = sys.stderr.buffer
        prefix = f"w{worker.index} ".encode()
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # longer than LINE_LIMIT: dropped
                continue
            if not line:
                return
            with contextlib.suppress(OSError):  # our stderr is gone: keep draining, or the worker would block
                out.write(prefix + line)
                out.flush()
            if line.strip():
                worker.last_line = line.decode(errors="replace").strip()


def _worker_argv(argv: list[str]) -> list[str]:
    """``argv`` (``serve ...``) without its ``--workers``, and ``--workers 1``: a worker runs one server
    even when the config file asks for more."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return [*out, "--workers", "1"]


def run(settings: Settings, argv: list[str], on_worker_exit: WorkerExitHook = no_cleanup) -> int:
    """``minilive serve`` with ``settings.workers`` > 1 (``argv``: its command line, ``serve ...``)."""
    for name, port in (("rtmp_port", settings.rtmp_port), ("http_port", settings.http_port)):
        busy = port_in_use(settings.host, port)
        if busy is not None:
            flag = "--" + name.replace("_", "-")
            print(
                f"minilive: cannot start: {settings.host}:{port} ({name}): {busy} (is another server using the"
                f" port? try {flag})",
                file=sys.stderr,
            )
            return 1
    supervisor = Supervisor(_worker_argv(argv), settings.workers, settings.supervisor.drain_seconds, on_worker_exit)
    return asyncio.run(supervisor.run())
