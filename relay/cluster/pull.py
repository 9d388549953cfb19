"""Pulling a stream from the node that originates it, for this node's viewers (an edge).

The pull is an HTTP-FLV request to the origin's cluster listener, which answers with the stream's
headers and GOP cache at once and then the live stream, in chunked transfer coding: its last chunk
says that the origin ended the stream, where a connection that just closes says that the origin died
(a killed process's sockets close as cleanly as a finished response's). Its tags go into a hub
publish session marked ``relayed``, so the stream lives here as if an anchor published it: the
hub's timeline keeps timestamps monotonic when the pull moves to another origin, and its grace
period keeps viewers waiting while the anchor reconnects anywhere in the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from relay.cluster import credential
from relay.formats.flv import SCRIPT, FlvError, FlvReader
from relay.formats.packet import AUDIO, VIDEO
from relay.hub import Hub, PublisherInfo, PublishSession

log = logging.getLogger("minilive.cluster")

MAX_HEAD = 16 * 1024
MAX_CHUNK_LINE = 64
RETRY_SECONDS = 0.5
CONNECT_TIMEOUT = 3.0
# A cold pull answers its first viewer when the first keyframe (or, for audio, packet) is in, or
# after this long with the headers only.
FIRST_PACKET_SECONDS = 2.0


class PullRefused(Exception):
    """The upstream node answered something else than the stream (404: it has no such stream)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class _Connection(asyncio.Protocol):
    """One HTTP-FLV response, read straight off the socket: the head, then FLV tags into ``on_tag``.
    ``done`` tells how it ended: "end" (the last chunk: the origin ended the stream), else how the
    connection went."""

    def __init__(self, on_tag: Callable[[int, int, bytes], None]) -> None:
        self.on_tag = on_tag
        self.head = bytearray()
        self.status = 0
        self.reason = ""
        self.reader = FlvReader()
        self.transport: asyncio.Transport | None = None
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Read here even when nobody waits for it any more (the request timed out first).
        self.started.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.bytes_in = 0
        self.chunked = False
        self._chunks = bytearray()  # chunked body not decoded yet
        self._left = 0  # bytes of the current chunk still to come
        self._crlf = False  # the CRLF after a chunk's data is next

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if not self.started.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD:
                    self._fail("response head too large")
                return
            status_head = bytes(self.head[:end])
            status_line = status_head[: status_head.find(b"\r\n")].decode("latin-1")
            parts = status_line.split(" ", 2)
            body = bytes(self.head[end + 4 :])
            self.head.clear()
            if len(parts) < 2 or not parts[1].isdigit():
                self._fail(f"bad status line {status_line[:80]!r}")
                return
            self.status, self.reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
            if self.status != 200:
                self.reason = body.decode("utf-8", "replace").strip()[:200] or self.reason
                self.started.set_exception(PullRefused(self.status, self.reason))
                self._close("refused")
                return
            self.chunked = b"\r\ntransfer-encoding: chunked" in status_head.lower()
            self.started.set_result(None)
            data = body
        if self.chunked:
            data = self._dechunk(data)
            if data is None:
                return
        self._deliver(data)

    def _dechunk(self, data: bytes) -> bytes | None:
        """The body bytes in ``data`` (chunked transfer coding); None once the response failed or ended."""
        buf = self._chunks
        buf += data
        out = []
        pos, size = 0, len(buf)
        while pos < size:
            if self._left:
                take = min(self._left, size - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._left -= take
                self._crlf = not self._left
            elif self._crlf:
                if size - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    self._fail("bad chunked coding from upstream")
                    return None
                pos += 2
                self._crlf = False
            else:
                line_end = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
                if line_end < 0:
                    if size - pos >= MAX_CHUNK_LINE:
                        self._fail("bad chunk size line from upstream")
                        return None
                    break
                try:
                    self._left = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
                except ValueError:
                    self._fail("bad chunk size from upstream")
                    return None
                pos = line_end + 2
                if not self._left:  # the last chunk: the origin ended the stream
                    del buf[:]
                    self._deliver(b"".join(out))
                    self._close("end")
                    return None
        del buf[:pos]
        return b"".join(out)

    def _deliver(self, data: bytes) -> None:
        try:
            tags = self.reader.feed(data)
        except FlvError as exc:
            self._fail(f"bad FLV from upstream: {exc}")
            return
        for tag in tags:
            self.on_tag(tag.kind, tag.timestamp, tag.payload)

    def _fail(self, reason: str) -> None:
        if not self.started.done():
            self.started.set_exception(ConnectionError(reason))
        self._close(reason)

    def _close(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        self._close("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_exception(ConnectionError(f"closed before answering: {exc or 'eof'}"))
        if not self.done.done():
            self.done.set_result("eof" if exc is None else f"lost: {exc}")


# Where to pull a stream from now: the base URL of a node's cluster listener, None when no node
# has it; and whether the stream is over (no node originates it) after a clean end of a pull.
Resolve = Callable[[str, str], Awaitable[str | None]]


class Pull:
    """One stream pulled for this node: it follows the stream from origin to origin until the
    stream ends, the hub ends it, or ``stop``."""

    def __init__(
        self,
        hub: Hub,
        app: str,
        name: str,
        resolve: Resolve,
        node: str,
        secret: str,
        hops: int = 0,
        on_stop: Callable[[Pull], None] | None = None,
    ) -> None:
        self.hub = hub
        self.app = app
        self.name = name
        self.key = f"{app}/{name}"
        self.resolve = resolve
        self.node = node
        self.secret = secret
        self.hops = hops
        # A pull that takes a stream over from this node's anchor (its origin moved) publishes at once.
        self.session: PublishSession | None = None
        self.on_stop = on_stop
        self.upstream = ""
        self.connection: _Connection | None = None
        self.first: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.stopped = False
        self.idle_since: float | None = None
        self.pulls = 0
        self.bytes_in = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def wait_first(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(asyncio.shield(self.first), timeout)
        except TimeoutError:
            return self.hub.has(self.app, self.name)

    def stop(self, reason: str) -> None:
        """No more pulling: the stream here ends now if this pull publishes it."""
        if self.stopped:
            return
        self.stopped = True
        log.info("pull of %s stopped (%s)", self.key, reason)
        if self.on_stop is not None:
            self.on_stop(self)
        self._resolve_first(False)
        if self.connection is not None:
            self.connection._close("stopped")
        if self.session is not None:
            session, self.session = self.session, None
            session.close("end")
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def _resolve_first(self, value: bool) -> None:
        if not self.first.done():
            self.first.set_result(value)

    def _kicked(self, reason: str) -> None:
        # A publisher here took the stream over (an anchor pushed to this node): it is the origin now.
        self.session = None
        self.stop(f"taken over here: {reason}")

    async def _run(self) -> None:
        clean_end = False
        while not self.stopped:
            try:
                upstream = await self.resolve(self.app, self.name)
            except Exception as exc:  # the registry is down: try again while viewers wait
                log.warning("pull of %s: cannot look up its origin: %s", self.key, exc)
                upstream = None
            if upstream is None:
                if not self.first.done() or clean_end or not self.hub.has(self.app, self.name):
                    self.stop("no node originates the stream" if self.pulls or self.first.done() else "not found")
                    return
            else:
                try:
                    clean_end = await self._pull(upstream) == "end"
                except PullRefused as exc:
                    if exc.status == 403:
                        log.warning("pull of %s from %s refused: %s (do the nodes share one [cluster] secret?)",
                                    self.key, upstream, exc)  # fmt: skip
                    else:
                        log.info("pull of %s from %s refused: %s", self.key, upstream, exc)
                    if not self.first.done():
                        self.stop("not found upstream")
                        return
                    clean_end = exc.status == 404
                except (OSError, ConnectionError, TimeoutError) as exc:
                    log.info("pull of %s from %s failed: %s", self.key, upstream, exc)
                    clean_end = False
                if self.stopped:
                    return
                if self.session is not None:
                    session, self.session = self.session, None
                    session.close("unpublish")  # the hub's grace keeps this node's viewers
                if not self.first.done():
                    self.stop("upstream unreachable")
                    return
                if not self.hub.has(self.app, self.name):
                    self.stop("the stream ended here")
                    return
            await asyncio.sleep(RETRY_SECONDS)

    async def _pull(self, upstream: str) -> str:
        """One pull from ``upstream`` until it ends: why it ended ("end": the origin ended the stream)."""
        url = urlsplit(upstream)
        path = f"/{quote(self.app)}/{quote(self.name)}.flv"
        loop = asyncio.get_running_loop()
        connection = _Connection(self._on_tag)
        await asyncio.wait_for(
            loop.create_connection(lambda: connection, url.hostname, url.port or 80), CONNECT_TIMEOUT
        )
        self.connection = connection
        assert connection.transport is not None
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUser-Agent: minilive-pull/{self.node}\r\n"
            f"{credential.HEADER}: {credential.sign(self.secret, self.node, path)}\r\n"
            f"{credential.HOPS_HEADER}: {self.hops + 1}\r\nConnection: close\r\n\r\n"
        )
        connection.transport.write(head.encode())
        try:
            await asyncio.wait_for(asyncio.shield(connection.started), CONNECT_TIMEOUT)
        except TimeoutError:
            connection._close("timeout")
            raise
        self.upstream = upstream
        self.pulls += 1
        log.info("pull of %s from %s started (%s)", self.key, upstream, "cold" if self.pulls == 1 else "again")
        loop.call_later(FIRST_PACKET_SECONDS, self._resolve_first, True)
        reason = await connection.done
        self.bytes_in += connection.bytes_in
        self.connection = None
        log.info("pull of %s from %s ended (%s)", self.key, upstream, reason)
        return reason

    def _on_tag(self, kind: int, timestamp: int, payload: bytes) -> None:
        session = self.session
        if session is None:
            if self.stopped:
                return
            info = PublisherInfo("relay", self.upstream, relayed=True)
            session = self.session = self.hub.publish(self.app, self.name, info, self._kicked)
        if kind == SCRIPT:
            session.metadata(payload, {})  # onMetaData, as the hub keeps it
            return
        session.send(kind, timestamp, payload)
        if not self.first.done() and (kind == AUDIO or (kind == VIDEO and payload[:1] and (payload[0] >> 4) & 7 == 1)):
            self._resolve_first(True)

    def idle(self, now: float, linger: float) -> bool:
        """Whether nobody has watched the stream here for ``linger`` seconds."""
        if sum(self.hub.audience(self.app, self.name).values()):
            self.idle_since = None
            return False
        if self.idle_since is None:
            self.idle_since = now
        return now - self.idle_since >= linger

    def describe(self) -> dict[str, object]:
        return {
            "stream": self.key,
            "upstream": self.upstream,
            "pulls": self.pulls,
            "bytes_in": self.bytes_in + (self.connection.bytes_in if self.connection else 0),
            "since_idle": None if self.idle_since is None else round(time.monotonic() - self.idle_since, 1),
        }


async def close_quietly(pull: Pull) -> None:
    pull.stop("shutdown")
    if pull.task is not None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pull.task
