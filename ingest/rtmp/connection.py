"""Server side of an RTMP connection as a sans-I/O state machine.

Feed it bytes with :meth:`ServerConnection.receive_data`; it returns high-level events
(:class:`Connect`, :class:`Publish`, :class:`Play`, :class:`Media`, ...) and queues the bytes
to send, which :meth:`ServerConnection.data_to_send` hands over. Protocol housekeeping
(handshake, chunk sizes, acknowledgements, pings, createStream) is answered here; decisions
(may this client connect, publish, play?) are the caller's, through the ``accept_*`` /
``reject_*`` methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ingest.rtmp import amf, messages
from ingest.rtmp.handshake import ServerHandshake
from relay.formats.packet import OUT_CHUNK_SIZE
from relay.formats.rtmp_chunk import ChunkReader, Message, PendingBudget, encode_message

WINDOW_ACK_SIZE = 2_500_000
# Commands pipelined behind an unanswered connect (createStream, publish, ...): a handful in practice.
MAX_QUEUED_COMMANDS = 16


@dataclass(slots=True)
class Limits:
    """What one connection may send, by stage. Media may be big; commands and data are small,
    and before connect smaller still, so an unauthenticated peer cannot make the server decode much."""

    max_message_size: int = 16 * 1024 * 1024  # audio, video, aggregate
    connect_message_size: int = 4096  # any other message, before connect
    command_message_size: int = 64 * 1024  # any other message, after connect
    prepublish_bytes: int = 4 * 1024 * 1024  # unfinished messages held before a publish is accepted
    publishing_bytes: int = 32 * 1024 * 1024  # unfinished messages held while publishing


class ProtocolError(ValueError):
    """The peer sent something that ends the connection."""


# ---------------------------------------------------------------- events


@dataclass(slots=True)
class Connect:
    transaction_id: float
    app: str
    tc_url: str
    query: str
    properties: dict[str, Any]


@dataclass(slots=True)
class Publish:
    stream_id: int
    name: str
    query: str
    mode: str


@dataclass(slots=True)
class Play:
    stream_id: int
    name: str
    query: str
    start: float
    duration: float
    reset: bool


@dataclass(slots=True)
class Media:
    stream_id: int
    type_id: int
    timestamp: int
    payload: bytes


@dataclass(slots=True)
class Metadata:
    stream_id: int
    payload: bytes  # AMF0 "onMetaData" + values, without "@setDataFrame"
    values: dict[str, Any]


@dataclass(slots=True)
class DeleteStream:
    stream_id: int


Event = Connect | Publish | Play | Media | Metadata | DeleteStream


def split_query(value: str) -> tuple[str, str]:
    name, _, query = value.partition("?")
    return name, query


def _number(value: Any, default: float) -> float:
    """A finite AMF number, else ``default`` (an infinite stream id would not even convert to int)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


class ServerConnection:
    def __init__(self, limits: Limits | None = None, budget: PendingBudget | None = None) -> None:
        self.limits = limits = limits or Limits()
        self.handshake = ServerHandshake()
        self.reader = ChunkReader(
            max_message_size=limits.max_message_size,
            max_pending_bytes=limits.prepublish_bytes,
            max_other_size=limits.connect_message_size,
            budget=budget,
        )
        self.out_chunk_size = 128
        self.connected = False
        # connect received, its answer not yet given: later commands wait in _queued (SDKs pipeline).
        self.connecting = False
        self._queued: list[tuple[int, list[Any]]] = []
        self.app = ""
        self.tc_url = ""
        self.object_encoding = 0.0
        self.bytes_received = 0
        self.peer_window = 0
        self._last_ack = 0
        self._next_stream_id = 1
        self._out = bytearray()

    # ------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[Event]:
        self.bytes_received += len(data)
        if not self.handshake.done:
            self._out += self.handshake.receive_data(data)
            if not self.handshake.done:
                return []
            data = self.handshake.unused
            if not data:
                return []
        events: list[Event] = []
        for message in self.reader.feed(data):
            type_id = message.type_id
            if type_id == messages.VIDEO or type_id == messages.AUDIO:
                events.append(Media(message.stream_id, type_id, message.timestamp, message.payload))
            else:
                self._handle(message, events)
        if self.peer_window and self.bytes_received - self._last_ack >= self.peer_window:
            self._last_ack = self.bytes_received
            self._out += messages.acknowledgement(self.bytes_received)
        return events

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _handle(self, message: Message, events: list[Event]) -> None:
        type_id = message.type_id
        payload = message.payload
        if type_id == messages.COMMAND_AMF0 or type_id == messages.COMMAND_AMF3:
            values = amf.decode_amf3_command(payload) if type_id == messages.COMMAND_AMF3 else amf.decode(payload)
            self._command(message.stream_id, values, events)
        elif type_id == messages.DATA_AMF0 or type_id == messages.DATA_AMF3:
            body = payload[1:] if type_id == messages.DATA_AMF3 else payload
            self._data(message.stream_id, body, events)
        elif type_id == messages.AGGREGATE:
            self._aggregate(message, events)
        elif type_id == messages.USER_CONTROL:
            if len(payload) >= 6 and int.from_bytes(payload[:2], "big") == messages.PING_REQUEST:
                self._out += messages.user_control(messages.PING_RESPONSE, int.from_bytes(payload[2:6], "big"))
        elif type_id == messages.WINDOW_ACK_SIZE and len(payload) >= 4:
            self.peer_window = int.from_bytes(payload[:4], "big")
        # Set Chunk Size and Abort are applied by the reader; acknowledgements, peer bandwidth
        # and shared objects need no answer.

    def _data(self, stream_id: int, body: bytes, events: list[Event]) -> None:
        values = amf.decode(body)
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            events.append(Metadata(stream_id, amf.encode("onMetaData", values[1]), values[1]))

    def _aggregate(self, message: Message, events: list[Event]) -> None:
        """Split an aggregate message into its FLV tags, on the aggregate's timeline."""
        data = message.payload
        pos = 0
        base: int | None = None
        while pos + 11 <= len(data):
            kind = data[pos]
            size = int.from_bytes(data[pos + 1 : pos + 4], "big")
            ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
            if pos + 11 + size + 4 > len(data):
                raise ProtocolError("aggregate message: truncated sub-message")
            if base is None:
                base = ts
            body = data[pos + 11 : pos + 11 + size]
            if kind in (messages.AUDIO, messages.VIDEO):
                events.append(Media(message.stream_id, kind, message.timestamp + ts - base, body))
            pos += 11 + size + 4

    def _command(self, stream_id: int, values: list[Any], events: list[Event]) -> None:
        if not values or not isinstance(values[0], str):
            raise ProtocolError("command message without a command name")
        name = values[0]
        tid = _number(values[1], 0.0) if len(values) > 1 else 0.0
        args = values[3:]
        if name == "connect":
            self._connect(tid, values[2] if len(values) > 2 else None, events)
            return
        if not self.connected:
            if not self.connecting:
                raise ProtocolError(f"'{name}' before connect")
            if len(self._queued) >= MAX_QUEUED_COMMANDS:
                raise ProtocolError(f"more than {MAX_QUEUED_COMMANDS} commands sent before connect was answered")
            self._queued.append((stream_id, values))
            return
        if name == "createStream":
            stream = self._next_stream_id
            self._next_stream_id += 1
            self._send_command("_result", tid, None, stream)
        elif name == "publish":
            raw = args[0] if args and isinstance(args[0], str) else ""
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "live"
            stream_name, query = split_query(raw)
            events.append(Publish(stream_id, stream_name, query, mode))
        elif name == "play":
            raw = args[0] if args and isinstance(args[0], str) else ""
            stream_name, query = split_query(raw)
            start = _number(args[1], -2.0) if len(args) > 1 else -2.0
            duration = _number(args[2], -1.0) if len(args) > 2 else -1.0
            reset = bool(args[3]) if len(args) > 3 and isinstance(args[3], bool | int | float) else True
            events.append(Play(stream_id, stream_name, query, start, duration, reset))
        elif name == "play2":
            params = args[0] if args and isinstance(args[0], dict) else {}
            stream_name, query = split_query(str(params.get("streamName", "")))
            events.append(Play(stream_id, stream_name, query, _number(params.get("start"), -2.0), -1.0, True))
        elif name == "deleteStream":
            target = int(_number(args[0], 0)) if args else stream_id
            events.append(DeleteStream(target))
        elif name == "closeStream":
            events.append(DeleteStream(stream_id))
        elif name == "getStreamLength":
            self._send_command("_result", tid, None, 0)
        elif name in (
            "releaseStream",
            "FCPublish",
            "FCUnpublish",
            "FCSubscribe",
            "_checkbw",
            "checkBandwidth",
        ):
            if tid:
                self._send_command("_result", tid, None, amf.UNDEFINED)
            if name == "FCPublish" and args and isinstance(args[0], str):
                self._send_command("onFCPublish", 0, None, {"code": "NetStream.Publish.Start", "description": args[0]})
        elif name in (
            "receiveAudio",
            "receiveVideo",
            "pause",
            "seek",
            "pauseRaw",
            "_result",
            "_error",
            "onStatus",
        ):
            pass
        elif tid:
            self._send_command(
                "_error",
                tid,
                None,
                {
                    "level": "error",
                    "code": "NetConnection.Call.Failed",
                    "description": f"unknown method {name}",
                },
            )

    def _connect(self, tid: float, obj: Any, events: list[Event]) -> None:
        if self.connected or self.connecting:
            raise ProtocolError("connect sent twice")
        if not isinstance(obj, dict):
            raise ProtocolError("connect without a command object")
        app, app_query = split_query(str(obj.get("app") or ""))
        tc_url = str(obj.get("tcUrl") or "")
        query = app_query or split_query(tc_url)[1]
        self.app = app.strip("/")
        self.tc_url = tc_url
        self.object_encoding = _number(obj.get("objectEncoding"), 0.0)
        self.connecting = True
        self.reader.max_other_size = self.limits.command_message_size
        events.append(Connect(tid, self.app, tc_url, query, obj))

    # ------------------------------------------------------------ output

    def _send_command(self, name: str, tid: float, *values: Any, stream_id: int = 0) -> None:
        body = amf.encode(name, tid, *values)
        self._out += encode_message(
            messages.CSID_COMMAND, 0, messages.COMMAND_AMF0, stream_id, body, self.out_chunk_size
        )

    def _status(self, stream_id: int, level: str, code: str, description: str, **extra: Any) -> None:
        info = {"level": level, "code": code, "description": description, **extra}
        self._send_command("onStatus", 0, None, info, stream_id=stream_id)

    def accept_connect(self, event: Connect) -> list[Event]:
        """Answer ``connect``; return the events of the commands that were pipelined behind it."""
        self.connected = True
        self.connecting = False
        self._out += messages.window_ack_size(WINDOW_ACK_SIZE)
        self._out += messages.set_peer_bandwidth(WINDOW_ACK_SIZE)
        self._out += messages.set_chunk_size(OUT_CHUNK_SIZE)
        self.out_chunk_size = OUT_CHUNK_SIZE
        properties: dict[str, Any] = {"fmsVer": "FMS/3,5,7,7009", "capabilities": 31.0, "mode": 1.0}
        fourccs = event.properties.get("fourCcList")
        if isinstance(fourccs, list):
            # Enhanced RTMP: we relay every codec as it is, so accept what the client offers. Only
            # strings are echoed: other values (an AMF3 ByteArray decodes to bytes) have no AMF0 form.
            properties["fourCcList"] = [fourcc for fourcc in fourccs if isinstance(fourcc, str)]
        info = {
            "level": "status",
            "code": "NetConnection.Connect.Success",
            "description": "Connection succeeded.",
            "objectEncoding": self.object_encoding,
        }
        self._send_command("_result", event.transaction_id, properties, info)
        events: list[Event] = []
        queued, self._queued = self._queued, []
        for stream_id, values in queued:
            self._command(stream_id, values, events)
        return events

    def reject_connect(self, event: Connect, description: str) -> None:
        self.connecting = False
        self._queued = []
        info = {"level": "error", "code": "NetConnection.Connect.Rejected", "description": description}
        self._send_command("_error", event.transaction_id, None, info)

    def accept_publish(self, event: Publish) -> None:
        self.reader.max_pending_bytes = self.limits.publishing_bytes
        self.reader.budget_exempt = True
        self._out += messages.user_control(messages.STREAM_BEGIN, event.stream_id)
        self._status(event.stream_id, "status", "NetStream.Publish.Start", f"{event.name} is now published.")

    def reject_publish(self, event: Publish, code: str, description: str) -> None:
        self._status(event.stream_id, "error", code, description)

    def unpublished(self, stream_id: int, name: str) -> None:
        self._status(stream_id, "status", "NetStream.Unpublish.Success", f"{name} is now unpublished.")

    def accept_play(self, event: Play) -> None:
        sid = event.stream_id
        self._out += messages.user_control(messages.STREAM_BEGIN, sid)
        if event.reset:
            self._status(sid, "status", "NetStream.Play.Reset", f"Playing and resetting {event.name}.")
        self._status(sid, "status", "NetStream.Play.Start", f"Started playing {event.name}.")
        self._out += encode_message(
            messages.CSID_COMMAND,
            0,
            messages.DATA_AMF0,
            sid,
            amf.encode("|RtmpSampleAccess", True, True),
            self.out_chunk_size,
        )

    def reject_play(self, event: Play, code: str, description: str) -> None:
        self._status(event.stream_id, "error", code, description)

    def play_ended(self, stream_id: int, name: str, description: str) -> None:
        self._status(stream_id, "status", "NetStream.Play.UnpublishNotify", description)
        self._out += messages.user_control(messages.STREAM_EOF, stream_id)
