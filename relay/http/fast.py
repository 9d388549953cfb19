"""A lean HTTP/1.1 path beside aiohttp for the requests that come most often: HLS playlists, segments, parts.

Every connection on the HTTP port starts here. A request in the plain form this module reads (``GET`` or
``HEAD``, HTTP/1.0 or 1.1, no body, no upgrade, a path of plain characters that a route claims) is
answered here, with the connection kept alive as HTTP says. At the first request it does not read, the
connection goes to aiohttp with every byte not answered yet, and aiohttp serves it from then on: its
parser judges anything unusual, answers the errors, and serves every other route. Requests on one
connection are answered in order, one at a time. A route's handler answers with a :class:`Reply`,
which this path writes itself and :func:`aiohttp_handler` turns into aiohttp's response, so a route
registered on both paths answers the same on either.

Why: every HLS viewer asks for a playlist every second or so, and through aiohttp's request and
response machinery an answer costs several times the CPU of the same bytes written straight to the
transport (bench/ measures it).

Bounds: a request head is read only up to ``MAX_HEAD`` bytes (past that, aiohttp answers it); reading
stops while more than ``MAX_BUFFERED`` bytes wait (pipelined requests), and while the transport's send
buffer is above its high-water mark no further request is answered, so a client that does not read
holds at most one response. A connection that has nothing in flight for ``keepalive_seconds`` is closed.

Against hostile clients (issue 16): a request head must arrive whole within ``head_timeout_seconds`` of
its first byte (of the connection, for the first request), else the connection is closed: slowloris
clients trickling a header byte at a time no longer hold sockets for the keep-alive time. The deadline
holds for every request on a connection, also once aiohttp serves it: a handed-over connection is
watched (:class:`_Watched`, between the transport and aiohttp's protocol), and :func:`head_watch`, a
middleware, tells it when aiohttp has a request's head and when the answer is done. A head that
ends in bare LFs (``\n\n``, which this path does not read) goes to aiohttp at once, which answers it,
instead of waiting for a CRLF CRLF that never comes. At most ``max_per_address`` connections per client
address are open (those aiohttp serves after a hand-over included); more are closed as they arrive.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from relay.http.cors import CORS

log = logging.getLogger("minilive.http")

MAX_HEAD = 8190  # aiohttp's own limit for a request line or a header field
MAX_FIELDS = 100
MAX_BUFFERED = 64 * 1024

Body = bytes | memoryview | list[bytes | memoryview]


@dataclass(slots=True)
class Limits:
    """The HTTP port's bounds on hostile clients (settings), and how often each refused one (/metrics)."""

    head_timeout_seconds: float = 10.0
    max_per_address: int = 100
    # Addresses the cap does not apply to: a reverse proxy on this host brings every client from loopback.
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    head_timeouts: int = 0  # connections closed because a request head did not arrive in time
    refused_per_address: int = 0  # connections closed because their address had max_per_address open


@dataclass(slots=True)
class Reply:
    """An answer, whichever HTTP path sends it. ``body`` may be a list of pieces, sent without a join."""

    status: int
    body: Body
    content_type: str = "text/plain; charset=utf-8"
    cache_control: str | None = None

    @property
    def length(self) -> int:
        return sum(map(len, self.body)) if isinstance(self.body, list) else len(self.body)


@dataclass(slots=True, frozen=True)
class Client:
    """Who asks: the peer's address and its User-Agent (together, how HLS players are told apart).
    ``trusted``: the request came from another node of the cluster, which authorized its player."""

    remote: str
    agent: str = ""
    trusted: bool = field(default=False, compare=False)


# A route: a pattern for the path, and the handler, called with the pattern's named groups, the raw
# query string and the client. Only plain paths reach a pattern (no percent escapes, no dot segments:
# those go to aiohttp, which normalizes them), so a pattern may be as loose as aiohttp's.
Handler = Callable[[Mapping[str, str], str, Client], Awaitable[Reply]]
Route = tuple[re.Pattern[str], Handler]

_REQUEST_LINE = re.compile(rb"(GET|HEAD) (/[!-~]*) HTTP/1\.([01])")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t -~\x80-\xff]*?)[ \t]*")
# Fields that make a request more than this path reads: a body, an upgrade, an expectation.
_HAND_OVER_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect"})
_PLAIN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_.~-]+)+")


@dataclass(slots=True)
class Request:
    head_only: bool  # HEAD
    path: str
    query: str
    keep_alive: bool
    http10: bool  # an HTTP/1.0 client, which keeps a connection only if told so
    agent: str = ""  # User-Agent


def parse_head(head: bytes) -> Request | None:
    """The request whose head (up to, not including, the blank line) is ``head``; None for anything
    this path leaves to aiohttp."""
    lines = head.split(b"\r\n")
    start = _REQUEST_LINE.fullmatch(lines[0])
    if start is None or len(lines) > MAX_FIELDS + 1:
        return None
    method, target, minor = start.groups()
    keep_alive = minor == b"1"
    agent = b""
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return None
        name = field[1].lower()
        if name in _HAND_OVER_FIELDS:
            return None
        if name == b"connection":
            tokens = {token.strip().lower() for token in field[2].split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif name == b"user-agent":
            agent = field[2]
    path, _, query = target.decode("ascii").partition("?")
    if "#" in query or _PLAIN_PATH.fullmatch(path) is None:
        return None
    return Request(method == b"HEAD", path, query, keep_alive, minor == b"0", agent.decode("latin-1"))


_CORS = "".join(f"{name}: {value}\r\n" for name, value in CORS.items()).encode()
_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


@functools.lru_cache(maxsize=64)
def _fixed_fields(status: int, content_type: str, cache_control: str | None) -> bytes:
    cache = f"Cache-Control: {cache_control}\r\n" if cache_control else ""
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n{cache}".encode() + _CORS


_CONNECTION = {  # (keep alive, HTTP/1.0 client): the Connection field
    (True, False): b"",
    (True, True): b"Connection: keep-alive\r\n",
    (False, False): b"Connection: close\r\n",
    (False, True): b"Connection: close\r\n",
}


def response_head(reply: Reply, keep_alive: bool, http10: bool = False) -> bytes:
    return b"".join(
        (
            _fixed_fields(reply.status, reply.content_type, reply.cache_control),
            b"Content-Length: %d\r\n" % reply.length,
            b"Date: ",
            _date(),
            b"\r\nServer: minilive\r\n",
            _CONNECTION[keep_alive, http10],
            b"\r\n",
        )
    )


def request_client(request: web.Request) -> Client:
    return Client(request.remote or "", request.headers.get("User-Agent", ""))


def aiohttp_handler(
    handler: Handler, client_of: Callable[[web.Request], Client] = request_client
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``handler`` as an aiohttp handler, for the connections that aiohttp serves: the same answers.
    ``client_of`` tells who asks."""

    async def handle(request: web.Request) -> web.Response:
        reply = await handler(request.match_info, request.rel_url.raw_query_string, client_of(request))
        headers = {**CORS, "Content-Type": reply.content_type}
        if reply.cache_control:
            headers["Cache-Control"] = reply.cache_control
        body = _Pieces(reply.body) if isinstance(reply.body, list) else reply.body
        return web.Response(status=reply.status, body=body, headers=headers)

    return handle


class _Pieces(payload.Payload):
    """A body sent as the pieces it is made of (a segment's parts), without joining them first."""

    _value: list[bytes | memoryview]

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        super().__init__(pieces)
        self._size = sum(len(piece) for piece in pieces)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        # Queued without waiting in between (the transport sends them as one stream); one drain at the end.
        for piece in self._value:
            await writer.write(piece, drain=False)  # type: ignore[call-arg]
        await writer.drain()


class FastHttpProtocol(asyncio.Protocol):
    """One connection: answers what a route claims; hands the connection to ``fallback`` otherwise."""

    def __init__(self, site: FastPathListener) -> None:
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.last_active = time.monotonic()
        self.head_since: float | None = self.last_active  # when the head being waited for began (None: idle)
        self._buffer = bytearray()
        self._serving: asyncio.Task[None] | None = None
        self._write_paused = False
        self._read_paused = False

    @property
    def busy(self) -> bool:
        return self._serving is not None

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's transports do not subclass asyncio's)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        if not self.site.admit(self.remote, transport):  # type: ignore[arg-type]
            self.transport = None
            return
        self.site.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.connections.discard(self)
        if self.transport is not None:
            self.site.release(self.remote, self.transport)
        self.transport = None
        if self._serving is not None:
            self._serving.cancel()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return  # refused in connection_made
        if self.head_since is None:
            self.head_since = time.monotonic()
        self._buffer += data
        if len(self._buffer) > MAX_BUFFERED and not self._read_paused and self.transport is not None:
            self.transport.pause_reading()
            self._read_paused = True
        self._next()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.last_active = time.monotonic()
        self._next()

    # -------------------------------------------------------------- requests

    def _next(self) -> None:
        """Start answering the next buffered request, if the connection is free to."""
        transport = self.transport
        if self._serving is not None or self._write_paused or transport is None or transport.is_closing():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD or b"\n\n" in self._buffer:  # too long, or bare LFs: aiohttp answers
                self._hand_over()
            elif self._read_paused:
                transport.resume_reading()
                self._read_paused = False
            return
        request = parse_head(bytes(self._buffer[:end])) if end <= MAX_HEAD else None
        found = self._route(request) if request is not None else None
        if found is None:
            self._hand_over()
            return
        assert request is not None
        del self._buffer[: end + 4]
        self.last_active = time.monotonic()
        self.head_since = None
        self._serving = asyncio.get_running_loop().create_task(self._serve(request, *found))

    def _route(self, request: Request) -> tuple[Mapping[str, str], Handler] | None:
        for pattern, handler in self.site.routes:
            match = pattern.fullmatch(request.path)
            if match is not None:
                return match.groupdict(), handler
        return None

    async def _serve(self, request: Request, path: Mapping[str, str], handler: Handler) -> None:
        keep_alive = request.keep_alive
        try:
            reply = await handler(path, request.query, Client(self.remote, request.agent))
        except Exception:
            log.exception("error answering %s", request.path)
            reply, keep_alive = Reply(500, b"internal server error; see the server log\n"), False
        self._serving = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head = response_head(reply, keep_alive, request.http10)
        if request.head_only:
            transport.write(head)
        elif isinstance(reply.body, list):
            transport.writelines([head, *reply.body])
        else:
            transport.writelines((head, reply.body))
        self.last_active = time.monotonic()
        if self._buffer:  # the next request began arriving meanwhile
            self.head_since = self.last_active
        if keep_alive:
            self._next()
        else:
            transport.close()

    def _hand_over(self) -> None:
        """aiohttp serves this connection from here, starting with the bytes not answered yet."""
        transport = self.transport
        assert transport is not None
        self.site.connections.discard(self)
        self.transport = None
        handler = _Watched(self.site, self.site.fallback(), self.remote, self.head_since)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._read_paused:
            transport.resume_reading()
        if self._buffer:
            handler.data_received(bytes(self._buffer))
        self._buffer.clear()


class _Watched(asyncio.Protocol):
    """A connection aiohttp serves, between its transport and aiohttp's protocol: it notes when the next
    request's head began arriving, so the listener's sweep holds every later request to the head
    deadline too (aiohttp has none: a client that trickles its second request's head would be held until
    aiohttp's keep-alive timeout). Bytes that arrive while no request is being answered begin a head;
    :func:`head_watch` marks when aiohttp has one (``busy``) and when its answer is done."""

    __slots__ = ("busy", "head_since", "inner", "remote", "site", "transport")

    def __init__(self, site: FastPathListener, inner: asyncio.Protocol, remote: str, head_since: float | None) -> None:
        self.site = site
        self.inner = inner
        self.remote = remote
        self.head_since = head_since
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.site.watched.add(self)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.watched.discard(self)
        if self.transport is not None:
            self.site.release(self.remote, self.transport)
        self.transport = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self.head_since is None:
            self.head_since = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


@web.middleware
async def head_watch(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell a watched connection that aiohttp has this request's head (so the head deadline stops), and
    when the handler is done (the next head may begin). Put it first in the application's middlewares."""
    transport = request.transport
    watched = transport.get_protocol() if transport is not None else None
    if not isinstance(watched, _Watched):
        return await handler(request)
    watched.busy, watched.head_since = True, None
    try:
        return await handler(request)
    finally:
        watched.busy = False


def exempt(address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether a client ``address`` is in ``networks`` (a per-address cap's exemptions); no address
    (a Unix socket) is exempt."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a Unix socket: no address
        return True
    return any(ip in network for network in networks)


class FastPathListener:
    """The HTTP port: each connection starts on the fast path of ``routes`` and goes to ``runner``'s
    aiohttp server (its public ``server`` protocol factory) at the first request the path leaves. Only
    aiohttp's public interface is used: the runner's server is an ``asyncio.Protocol`` factory."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        routes: Sequence[Route],
        *,
        backlog: int = 128,
        reuse_address: bool | None = None,
        reuse_port: bool = False,  # share the port with other processes (SO_REUSEPORT)
        keepalive_seconds: float = 75.0,  # aiohttp's default
        limits: Limits | None = None,
    ) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self.backlog = backlog
        self.reuse_address = reuse_address
        self.reuse_port = reuse_port
        self.routes = list(routes)
        self.keepalive_seconds = keepalive_seconds
        self.limits = limits or Limits()
        self.connections: set[FastHttpProtocol] = set()
        self.watched: set[_Watched] = set()  # the connections aiohttp serves
        # Every open connection's transport by client address, aiohttp's after a hand-over included
        # (those are pruned when found closing, since aiohttp does not tell this listener).
        self._by_address: dict[str, set[asyncio.Transport]] = {}
        self.server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def fallback(self) -> asyncio.Protocol:
        """A new aiohttp connection handler."""
        server = self.runner.server
        if server is None:
            raise RuntimeError("the aiohttp runner is not set up")
        return server()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self.server.sockets] if self.server else []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: FastHttpProtocol(self),
            self.host,
            self.port,
            backlog=self.backlog,
            reuse_address=self.reuse_address,
            reuse_port=self.reuse_port,
        )
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        """Stop accepting and close the connections still on the fast path (aiohttp's runner closes its own)."""
        if self.server is not None:
            self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()

    def admit(self, address: str, transport: asyncio.Transport) -> bool:
        """Count a new connection from ``address``; close it (False) if that address has the most allowed."""
        if exempt(address, self.limits.exempt):
            return True
        open_ = self._by_address.setdefault(address, set())
        if len(open_) >= self.limits.max_per_address:
            open_.difference_update([t for t in open_ if t.is_closing()])
        if len(open_) >= self.limits.max_per_address:
            self.limits.refused_per_address += 1
            log.info("refused an HTTP connection from %s: it has %d open already", address, len(open_))
            transport.abort()
            return False
        open_.add(transport)
        return True

    def release(self, address: str, transport: asyncio.Transport) -> None:
        open_ = self._by_address.get(address)
        if open_ is not None:
            open_.discard(transport)
            if not open_:
                del self._by_address[address]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self.keepalive_seconds / 2, self.limits.head_timeout_seconds / 2))
            now = time.monotonic()
            self.close_idle(now)
            self.close_slow_heads(now)
            for address in [a for a, open_ in self._by_address.items() if all(t.is_closing() for t in open_)]:
                del self._by_address[address]

    def close_slow_heads(self, now: float) -> int:
        """Close the connections whose request head has been arriving for longer than the head timeout."""
        since = now - self.limits.head_timeout_seconds
        slow = [
            c
            for c in (*self.connections, *self.watched)
            if not c.busy and c.head_since is not None and c.head_since < since and c.transport is not None
        ]
        for connection in slow:
            assert connection.transport is not None
            connection.transport.close()
        if slow:
            self.limits.head_timeouts += len(slow)
            log.info(
                "closed %d HTTP connections whose request head did not arrive within %g s",
                len(slow),
                self.limits.head_timeout_seconds,
            )
        return len(slow)

    def close_idle(self, now: float) -> int:
        """Close the connections that had nothing in flight for the keep-alive time before ``now``."""
        idle_since = now - self.keepalive_seconds
        idle = [c for c in self.connections if not c.busy and c.last_active < idle_since and c.transport is not None]
        for connection in idle:
            assert connection.transport is not None
            connection.transport.close()
        return len(idle)
