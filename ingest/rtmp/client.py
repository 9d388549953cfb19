"""Asyncio RTMP client: connect, then play or publish one stream.

Used by the benchmark's load generator and by tests. It is a thin shell around the sans-I/O
pieces (handshake, chunk reader, chunk writer, AMF). It is an asyncio buffered protocol rather
than a stream reader so that a bulk viewer costs one ``recv_into`` and a counter per read once
it stops parsing (see :meth:`RtmpClient.stop_parsing`).

    client = await connect("rtmp://127.0.0.1:1935/live")
    client.on_message = handle          # audio (8), video (9) and data (18) messages
    await client.play("room1")

    client = await connect("rtmp://127.0.0.1:1935/live")
    await client.publish("room1?txSecret=..")
    client.send_media(9, 0, avc_sequence_header)
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from ingest.rtmp import amf
from ingest.rtmp.handshake import ClientHandshake
from ingest.rtmp.messages import (
    ACKNOWLEDGEMENT,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    CSID_COMMAND,
    CSID_CONTROL,
    DATA_AMF0,
    DATA_AMF3,
    PING_REQUEST,
    PING_RESPONSE,
    SET_CHUNK_SIZE,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
)
from relay.formats.rtmp_chunk import ChunkReader, Message, encode_message

DEFAULT_PORT = 1935
OUT_CHUNK_SIZE = 4096
FLASH_VER = "LNX 9,0,124,2"
READ_BUFFER_SIZE = 64 * 1024

MEDIA_TYPES = frozenset((AUDIO, VIDEO, DATA_AMF3, DATA_AMF0))

# Chunk stream ids as ffmpeg assigns them; servers do not depend on them, but some logs show them.
_MEDIA_CSID = {AUDIO: 4, DATA_AMF0: 5, VIDEO: 6}

_SET_DATA_FRAME = amf.encode("@setDataFrame")
# onStatus codes that end a play or publish attempt even when the server marks them "status".
_FAILURE_CODES = frozenset(
    ("NetConnection.Connect.Rejected", "NetStream.Publish.BadName", "NetStream.Play.StreamNotFound")
)


class RtmpClientError(Exception):
    """The server refused a command, or the connection ended while one was pending."""


def _describe(info: Any) -> str:
    if isinstance(info, dict):
        code = info.get("code", "?")
        description = info.get("description")
        return f"{code}: {description}" if description else str(code)
    return repr(info)


class RtmpClient(asyncio.BufferedProtocol):
    """One RTMP connection. Create it with :func:`connect`."""

    def __init__(self, app: str, tc_url: str, complex_handshake: bool = False) -> None:
        self.app = app
        self.tc_url = tc_url
        self.on_message: Callable[[Message], None] | None = None
        self.status: dict[str, Any] | None = None  # info object of the last onStatus
        self.stream_id = 0
        self.bytes_received = 0
        self.error: RtmpClientError | None = None  # why the client closed the connection, if it did
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshake = ClientHandshake(complex_handshake)
        self._handshaken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader: ChunkReader | None = ChunkReader()
        self._buffer = memoryview(bytearray(READ_BUFFER_SIZE))
        self._transport: asyncio.Transport | None = None
        self._out_chunk_size = 128
        self._ack_window = 0
        self._acked = 0
        self._next_transaction = 1
        self._transactions: dict[int, asyncio.Future[list[Any]]] = {}
        self._status_waiter: tuple[asyncio.Future[dict[str, Any]], str] | None = None

    # ------------------------------------------------------------ public API

    async def play(self, name: str, timeout: float = 10) -> None:
        """Create a stream and play ``name`` (may carry a ``?query``); returns on NetStream.Play.Start."""
        async with asyncio.timeout(timeout):
            self.stream_id = int((await self._call("createStream", None))[1])
            started = self._expect_status("NetStream.Play.Start")
            self._command(self.stream_id, "play", 0, None, name, -2)
            await started

    async def publish(self, name: str, timeout: float = 10) -> None:
        """Create a stream and publish ``name`` live; returns on NetStream.Publish.Start."""
        async with asyncio.timeout(timeout):
            self._write(SET_CHUNK_SIZE, 0, struct.pack(">I", OUT_CHUNK_SIZE))
            self._out_chunk_size = OUT_CHUNK_SIZE
            # What ffmpeg and OBS send before publishing; some servers key cleanup on them.
            for command in ("releaseStream", "FCPublish"):
                self._command(0, command, self._take_transaction(), None, name)
            self.stream_id = int((await self._call("createStream", None))[1])
            started = self._expect_status("NetStream.Publish.Start")
            self._command(self.stream_id, "publish", 0, None, name, "live")
            await started

    def send_media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        """Send one audio (8), video (9) or data (18) message; data is an FLV script-tag body."""
        if type_id == DATA_AMF0:
            payload = _SET_DATA_FRAME + payload
        self._write(type_id, timestamp, payload, self.stream_id, _MEDIA_CSID[type_id])

    def stop_parsing(self) -> None:
        """From now on only count received bytes (and acknowledge them): no messages, no callbacks.

        For bulk viewers in benchmarks. Ping requests are no longer answered either, so servers
        that drop clients for a missed ping will do so after their ping timeout.
        """
        self._reader = None

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport else 0

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        transport.write(self._handshake.start())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        if self._reader is not None:
            data = bytes(self._buffer[:nbytes])
            try:
                if not self._handshake.done:
                    data = self._continue_handshake(data)
                if data:
                    for message in self._reader.feed(data):
                        self._dispatch(message)
                        if self._reader is None:
                            break
            except Exception as exc:
                self._fail(exc)
                return
        if self._ack_window and self.bytes_received - self._acked >= self._ack_window:
            self._acked = self.bytes_received
            self._write(ACKNOWLEDGEMENT, 0, struct.pack(">I", self.bytes_received & 0xFFFFFFFF))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_waiters(RtmpClientError(f"connection closed{f': {exc}' if exc else ''}"))
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------ internals

    async def _start(self) -> None:
        await self._handshaken
        reply = await self._call(
            "connect",
            {
                "app": self.app,
                "flashVer": FLASH_VER,
                "tcUrl": self.tc_url,
                "fpad": False,
                "capabilities": 15.0,
                "audioCodecs": 4071.0,
                "videoCodecs": 252.0,
                "videoFunction": 1.0,
            },
        )
        info = reply[1] if len(reply) > 1 else None
        if isinstance(info, dict) and info.get("code") in _FAILURE_CODES:
            raise RtmpClientError(_describe(info))

    def _continue_handshake(self, data: bytes) -> bytes:
        reply = self._handshake.receive_data(data)
        if not self._handshake.done:
            return b""
        assert self._transport is not None
        self._transport.write(reply)
        self._handshaken.set_result(None)
        return self._handshake.unused

    def _dispatch(self, message: Message) -> None:
        type_id = message.type_id
        if type_id in MEDIA_TYPES:
            if self.on_message is not None:
                self.on_message(message)
        elif type_id == COMMAND_AMF0:
            self._on_command(amf.decode(message.payload))
        elif type_id == COMMAND_AMF3:
            self._on_command(amf.decode_amf3_command(message.payload))
        elif type_id == WINDOW_ACK_SIZE:
            self._ack_window = int.from_bytes(message.payload[:4], "big")
        elif type_id == USER_CONTROL and message.payload[:2] == PING_REQUEST.to_bytes(2, "big"):
            self._write(USER_CONTROL, 0, PING_RESPONSE.to_bytes(2, "big") + message.payload[2:6])

    def _on_command(self, values: list[Any]) -> None:
        if not values:
            return
        name = values[0]
        if name in ("_result", "_error") and len(values) > 1:
            waiter = self._transactions.pop(int(values[1]), None)
            if waiter is None or waiter.done():
                return
            if name == "_error":
                waiter.set_exception(RtmpClientError(_describe(values[3] if len(values) > 3 else None)))
            else:
                waiter.set_result(values[2:])
        elif name == "onStatus":
            info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
            self.status = info
            self._check_status(info)

    def _check_status(self, info: dict[str, Any]) -> None:
        if self._status_waiter is None:
            return
        waiter, wanted = self._status_waiter
        code = info.get("code")
        if code == wanted:
            self._status_waiter = None
            if not waiter.done():
                waiter.set_result(info)
        elif info.get("level") == "error" or code in _FAILURE_CODES:
            self._status_waiter = None
            if not waiter.done():
                waiter.set_exception(RtmpClientError(_describe(info)))

    def _expect_status(self, code: str) -> asyncio.Future[dict[str, Any]]:
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._status_waiter = (waiter, code)
        return waiter

    def _take_transaction(self) -> int:
        transaction = self._next_transaction
        self._next_transaction += 1
        return transaction

    def _call(self, name: str, *args: Any) -> asyncio.Future[list[Any]]:
        """Send a command answered by _result/_error; the future gets the values after the id."""
        transaction = self._take_transaction()
        waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._transactions[transaction] = waiter
        self._command(0, name, transaction, *args)
        return waiter

    def _command(self, stream_id: int, name: str, transaction: int, *args: Any) -> None:
        self._write(COMMAND_AMF0, 0, amf.encode(name, transaction, *args), stream_id, CSID_COMMAND)

    def _write(
        self, type_id: int, timestamp: int, payload: bytes, stream_id: int = 0, csid: int = CSID_CONTROL
    ) -> None:
        if self._transport is None or self._transport.is_closing():
            raise RtmpClientError("connection closed")
        self._transport.write(encode_message(csid, timestamp, type_id, stream_id, payload, self._out_chunk_size))

    def _fail(self, exc: Exception) -> None:
        """A protocol error from the server: close, and surface it to whoever is waiting."""
        self.error = RtmpClientError(f"protocol error: {exc}")
        self._fail_waiters(self.error)
        self.close()

    def _fail_waiters(self, error: RtmpClientError) -> None:
        waiters = [*self._transactions.values(), self._handshaken]
        if self._status_waiter is not None:
            waiters.append(self._status_waiter[0])
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._transactions.clear()
        self._status_waiter = None


async def connect(
    url: str, *, complex_handshake: bool = False, timeout: float = 10, sock: socket.socket | None = None
) -> RtmpClient:
    """Open ``rtmp://host[:port]/app`` and run the handshake and the ``connect`` command; ``sock``: a
    socket already connected to it (a benchmark opens many at one instant, then talks RTMP on each)."""
    parts = urlsplit(url)
    if parts.scheme != "rtmp" or not parts.hostname:
        raise ValueError(f"not an rtmp:// URL: {url!r}")
    app = parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        factory = lambda: RtmpClient(app, url, complex_handshake)  # noqa: E731
        if sock is not None:
            _, client = await loop.create_connection(factory, sock=sock)
        else:
            _, client = await loop.create_connection(factory, parts.hostname, parts.port or DEFAULT_PORT)
        try:
            await client._start()
        except BaseException:
            client.close()
            raise
    return client
