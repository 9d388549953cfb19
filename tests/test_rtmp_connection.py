"""ServerConnection driven with a ClientHandshake and hand-made command messages."""

import itertools
import struct
from typing import Any

import pytest

from ingest.rtmp import amf, messages
from ingest.rtmp.connection import (
    WINDOW_ACK_SIZE,
    Connect,
    DeleteStream,
    Limits,
    Media,
    Metadata,
    Play,
    ProtocolError,
    Publish,
    ServerConnection,
)
from ingest.rtmp.handshake import ClientHandshake
from relay.formats.flv import encode_tag
from relay.formats.packet import OUT_CHUNK_SIZE
from relay.formats.rtmp_chunk import ChunkReader, Message, encode_message

TC_URL = "rtmp://127.0.0.1:1935/live"


class Peer:
    """The client side: builds messages, reads and decodes what the server sends."""

    def __init__(self, complex_handshake: bool = False, limits: Limits | None = None) -> None:
        self.conn = ServerConnection(limits)
        self.reader = ChunkReader()
        handshake = ClientHandshake(complex_handshake)
        assert self.conn.receive_data(handshake.start()) == []
        c2 = handshake.receive_data(self.conn.data_to_send())
        assert handshake.done
        assert self.conn.receive_data(c2) == []
        assert self.conn.handshake.done

    def send(self, data: bytes) -> list[Any]:
        return self.conn.receive_data(data)

    def command(self, name: str, tid: float, *values: Any, stream_id: int = 0) -> list[Any]:
        body = amf.encode(name, tid, *values)
        return self.send(encode_message(3, 0, messages.COMMAND_AMF0, stream_id, body, 128))

    def received(self) -> list[Message]:
        return self.reader.feed(self.conn.data_to_send())

    def commands(self) -> list[list[Any]]:
        return [amf.decode(m.payload) for m in self.received() if m.type_id == messages.COMMAND_AMF0]

    def connect(self, **properties: Any) -> Connect:
        (event,) = self.command("connect", 1, {"app": "live", "tcUrl": TC_URL, **properties})
        assert isinstance(event, Connect)
        self.conn.accept_connect(event)
        self.received()
        return event

    def create_stream(self, tid: float = 2) -> int:
        assert self.command("createStream", tid, None) == []
        ((name, got_tid, _, stream_id),) = self.commands()
        assert (name, got_tid) == ("_result", tid)
        return int(stream_id)


def test_connect_event() -> None:
    peer = Peer()
    (event,) = peer.command(
        "connect",
        1,
        {"app": "live", "tcUrl": TC_URL + "?token=abc", "flashVer": "FMLE/3.0", "objectEncoding": 0.0},
    )
    assert event == Connect(
        1.0,
        "live",
        TC_URL + "?token=abc",
        "token=abc",
        {"app": "live", "tcUrl": TC_URL + "?token=abc", "flashVer": "FMLE/3.0", "objectEncoding": 0.0},
    )
    # Nothing is answered until the caller decides.
    assert peer.received() == []


def test_connect_query_in_app_wins_and_slashes_are_trimmed() -> None:
    (event,) = Peer().command("connect", 1, {"app": "/live/?vhost=a", "tcUrl": TC_URL + "?x=1"})
    assert (event.app, event.query) == ("live", "vhost=a")


def test_accept_connect_output() -> None:
    peer = Peer()
    (event,) = peer.command("connect", 1, {"app": "live", "tcUrl": TC_URL, "objectEncoding": 3.0})
    peer.conn.accept_connect(event)
    got = peer.received()
    assert [m.type_id for m in got] == [
        messages.WINDOW_ACK_SIZE,
        messages.SET_PEER_BANDWIDTH,
        messages.SET_CHUNK_SIZE,
        messages.COMMAND_AMF0,
    ]
    assert got[0].payload == struct.pack(">I", WINDOW_ACK_SIZE)
    assert got[1].payload == struct.pack(">IB", WINDOW_ACK_SIZE, 2)
    assert got[2].payload == struct.pack(">I", OUT_CHUNK_SIZE)
    assert all(m.csid == 2 and m.stream_id == 0 for m in got[:3])
    name, tid, properties, info = amf.decode(got[3].payload)
    assert (name, tid) == ("_result", 1.0)
    assert properties["fmsVer"].startswith("FMS/")
    assert info["code"] == "NetConnection.Connect.Success"
    assert info["level"] == "status"
    assert info["objectEncoding"] == 3.0
    assert peer.conn.connected and peer.conn.out_chunk_size == OUT_CHUNK_SIZE
    # The reader followed the server's Set Chunk Size.
    assert peer.reader.chunk_size == OUT_CHUNK_SIZE


def test_accept_connect_echoes_enhanced_rtmp_fourcc_list() -> None:
    peer = Peer()
    (event,) = peer.command("connect", 1, {"app": "live", "fourCcList": ["hvc1", "av01", "Opus"]})
    peer.conn.accept_connect(event)
    (result,) = peer.commands()
    assert result[2]["fourCcList"] == ["hvc1", "av01", "Opus"]


def test_accept_connect_with_odd_fourcc_list_values() -> None:
    # An AMF3 ByteArray decodes to bytes, which AMF0 cannot encode back: it must not break the reply.
    peer = Peer()
    body = amf.encode("connect", 1) + b"\x03" + struct.pack(">H", 3) + b"app" + amf.encode("live")
    body += struct.pack(">H", 10) + b"fourCcList" + b"\x11\x0c\x05ab" + b"\x00\x00\x09"
    (event,) = peer.send(encode_message(3, 0, messages.COMMAND_AMF0, 0, body, 128))
    assert event.properties["fourCcList"] == b"ab"
    peer.conn.accept_connect(event)
    (result,) = peer.commands()
    assert result[3]["code"] == "NetConnection.Connect.Success"


def test_reject_connect() -> None:
    peer = Peer()
    (event,) = peer.command("connect", 4, {"app": "nope"})
    peer.conn.reject_connect(event, "no such app")
    ((name, tid, _, info),) = peer.commands()
    assert (name, tid) == ("_error", 4.0)
    assert info == {"level": "error", "code": "NetConnection.Connect.Rejected", "description": "no such app"}
    assert not peer.conn.connected


def test_amf3_connect_command() -> None:
    peer = Peer()
    body = b"\x00" + amf.encode("connect", 1, {"app": "live", "objectEncoding": 3.0})
    (event,) = peer.send(encode_message(3, 0, messages.COMMAND_AMF3, 0, body, 128))
    assert isinstance(event, Connect) and event.app == "live"


def test_complex_handshake_then_connect() -> None:
    peer = Peer(complex_handshake=True)
    assert peer.conn.handshake.complex
    assert isinstance(peer.command("connect", 1, {"app": "live"})[0], Connect)


def test_handshake_and_connect_in_one_segment() -> None:
    conn = ServerConnection()
    client = ClientHandshake()
    conn.receive_data(client.start())
    c2 = client.receive_data(conn.data_to_send())
    connect = encode_message(3, 0, 20, 0, amf.encode("connect", 1, {"app": "live"}), 128)
    (event,) = conn.receive_data(c2 + connect)
    assert isinstance(event, Connect)


@pytest.mark.parametrize("name", ["createStream", "publish", "play", "deleteStream", "FCPublish", "_result"])
def test_commands_before_connect(name: str) -> None:
    peer = Peer()
    with pytest.raises(ProtocolError, match="before connect"):
        peer.command(name, 2, None, "stream")


def test_connect_twice() -> None:
    peer = Peer()
    peer.connect()
    with pytest.raises(ProtocolError, match="twice"):
        peer.command("connect", 5, {"app": "live"})


@pytest.mark.parametrize(
    "body",
    [
        amf.encode(1.0, 2.0),
        amf.encode(None),
        b"",
        amf.encode("connect", 1, "not an object"),
        amf.encode("connect", 1),
    ],
)
def test_malformed_commands(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        Peer().send(encode_message(3, 0, messages.COMMAND_AMF0, 0, body, 128))


def test_create_stream() -> None:
    peer = Peer()
    peer.connect()
    assert peer.create_stream(2) == 1
    assert peer.create_stream(3) == 2


def test_publish() -> None:
    peer = Peer()
    peer.connect()
    sid = peer.create_stream()
    (event,) = peer.command("publish", 0, None, "stream?txSecret=a&txTime=b", "live", stream_id=sid)
    assert event == Publish(sid, "stream", "txSecret=a&txTime=b", "live")
    peer.conn.accept_publish(event)
    got = peer.received()
    assert got[0].type_id == messages.USER_CONTROL
    assert got[0].payload == struct.pack(">HI", messages.STREAM_BEGIN, sid)
    status = amf.decode(got[1].payload)
    assert status[0] == "onStatus" and got[1].stream_id == sid
    assert status[3]["code"] == "NetStream.Publish.Start"


def test_publish_defaults_and_reject() -> None:
    peer = Peer()
    peer.connect()
    (event,) = peer.command("publish", 0, None, "plain", stream_id=1)
    assert event == Publish(1, "plain", "", "live")
    peer.conn.reject_publish(event, "NetStream.Publish.BadName", "busy")
    ((name, _, _, info),) = peer.commands()
    assert name == "onStatus"
    assert (info["level"], info["code"], info["description"]) == (
        "error",
        "NetStream.Publish.BadName",
        "busy",
    )


def test_fcpublish_and_release_stream() -> None:
    peer = Peer()
    peer.connect()
    assert peer.command("releaseStream", 2, None, "s") == []
    assert peer.command("FCPublish", 3, None, "s") == []
    got = peer.commands()
    assert [(c[0], c[1]) for c in got] == [("_result", 2.0), ("_result", 3.0), ("onFCPublish", 0.0)]
    assert got[2][3]["code"] == "NetStream.Publish.Start"


def test_unknown_command_gets_error_when_answer_expected() -> None:
    peer = Peer()
    peer.connect()
    peer.command("frobnicate", 7, None)
    peer.command("frobnicate", 0, None)
    ((name, tid, _, info),) = peer.commands()
    assert (name, tid, info["code"]) == ("_error", 7.0, "NetConnection.Call.Failed")


def test_play_with_start_duration_reset() -> None:
    peer = Peer()
    peer.connect()
    sid = peer.create_stream()
    (event,) = peer.command("play", 0, None, "room?sign=x", 1500, 30, False, stream_id=sid)
    assert event == Play(sid, "room", "sign=x", 1500.0, 30.0, False)
    (event,) = peer.command("play", 0, None, "room", stream_id=sid)
    assert event == Play(sid, "room", "", -2.0, -1.0, True)
    (event,) = peer.command("play", 0, None, "room", -1, -1, 0, stream_id=sid)
    assert (event.start, event.duration, event.reset) == (-1.0, -1.0, False)


def test_accept_play_output() -> None:
    peer = Peer()
    peer.connect()
    (event,) = peer.command("play", 0, None, "room", -2, -1, True, stream_id=1)
    peer.conn.accept_play(event)
    got = peer.received()
    assert got[0].payload == struct.pack(">HI", messages.STREAM_BEGIN, 1)
    codes = [amf.decode(m.payload)[3]["code"] for m in got[1:3]]
    assert codes == ["NetStream.Play.Reset", "NetStream.Play.Start"]
    assert amf.decode(got[3].payload) == ["|RtmpSampleAccess", True, True]
    assert all(m.stream_id == 1 for m in got[1:])


def test_play2() -> None:
    peer = Peer()
    peer.connect()
    (event,) = peer.command("play2", 0, None, {"streamName": "room?a=b", "start": 0}, stream_id=1)
    assert event == Play(1, "room", "a=b", 0.0, -1.0, True)


def test_delete_and_close_stream() -> None:
    peer = Peer()
    peer.connect()
    assert peer.command("deleteStream", 0, None, 3) == [DeleteStream(3)]
    assert peer.command("closeStream", 0, None, stream_id=2) == [DeleteStream(2)]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e300])
def test_delete_stream_with_absurd_id(value: float) -> None:
    # Any failure must be a ProtocolError (a ValueError), which the server turns into a clean drop.
    peer = Peer()
    peer.connect()
    try:
        events = peer.command("deleteStream", 0, None, value)
    except ValueError:
        return
    assert len(events) == 1 and isinstance(events[0], DeleteStream)


def test_set_data_frame_metadata() -> None:
    peer = Peer()
    peer.connect()
    meta = amf.ECMAArray(width=320.0, height=240.0, videocodecid=7.0, encoder="Lavf")
    body = amf.encode("@setDataFrame", "onMetaData", meta)
    (event,) = peer.send(encode_message(5, 0, messages.DATA_AMF0, 1, body, 128))
    assert isinstance(event, Metadata)
    assert event.stream_id == 1
    assert event.payload.startswith(amf.encode("onMetaData"))
    assert amf.decode(event.payload) == ["onMetaData", meta]
    assert event.values == meta


def test_metadata_without_set_data_frame_and_amf3_data() -> None:
    peer = Peer()
    peer.connect()
    meta = {"width": 640.0}
    (event,) = peer.send(encode_message(5, 0, messages.DATA_AMF0, 1, amf.encode("onMetaData", meta), 128))
    assert event.values == meta
    body = b"\x00" + amf.encode("@setDataFrame", "onMetaData", meta)
    (event,) = peer.send(encode_message(5, 0, messages.DATA_AMF3, 1, body, 128))
    assert event.values == meta and event.payload.startswith(amf.encode("onMetaData"))


def test_other_data_messages_are_ignored() -> None:
    peer = Peer()
    peer.connect()
    for body in (amf.encode("onTextData", {"text": "hi"}), amf.encode("onMetaData", "not a dict"), b""):
        assert peer.send(encode_message(5, 0, messages.DATA_AMF0, 1, body, 128)) == []


def test_media_events() -> None:
    peer = Peer()
    peer.connect()
    data = encode_message(4, 100, messages.AUDIO, 1, b"\xaf\x01aac", 128)
    data += encode_message(6, 0x01000000, messages.VIDEO, 1, b"\x17\x01" + b"v" * 300, 128)
    assert peer.send(data) == [
        Media(1, messages.AUDIO, 100, b"\xaf\x01aac"),
        Media(1, messages.VIDEO, 0x01000000, b"\x17\x01" + b"v" * 300),
    ]


def test_aggregate_message() -> None:
    peer = Peer()
    peer.connect()
    tags = [
        (messages.VIDEO, 1000, b"\x17\x01video-1"),
        (messages.AUDIO, 1023, b"\xaf\x01audio"),
        (18, 1030, amf.encode("onCuePoint")),  # not media: skipped
        (messages.VIDEO, 1040, b"\x27\x01video-2"),
    ]
    body = b"".join(encode_tag(kind, ts, payload) for kind, ts, payload in tags)
    events = peer.send(encode_message(6, 5000, messages.AGGREGATE, 1, body, 4096))
    assert events == [
        Media(1, messages.VIDEO, 5000, b"\x17\x01video-1"),
        Media(1, messages.AUDIO, 5023, b"\xaf\x01audio"),
        Media(1, messages.VIDEO, 5040, b"\x27\x01video-2"),
    ]


def test_aggregate_with_extended_sub_timestamps() -> None:
    # The FLV timestamp's fourth (upper) byte comes after the 24 lower bits.
    peer = Peer()
    peer.connect()
    base = 0x01000010
    body = encode_tag(messages.VIDEO, base, b"a") + encode_tag(messages.VIDEO, base + 40, b"b")
    assert body[4:8] == bytes((0x00, 0x00, 0x10, 0x01))
    events = peer.send(encode_message(6, 77, messages.AGGREGATE, 1, body, 4096))
    assert [(e.timestamp, e.payload) for e in events] == [(77, b"a"), (117, b"b")]


def test_truncated_aggregate() -> None:
    peer = Peer()
    peer.connect()
    body = encode_tag(messages.VIDEO, 0, b"abcdef")[:-6]
    with pytest.raises(ProtocolError, match="aggregate"):
        peer.send(encode_message(6, 0, messages.AGGREGATE, 1, body, 4096))


def test_ping_request_answered() -> None:
    peer = Peer()
    peer.connect()
    ping = messages.user_control(messages.PING_REQUEST, 0xDEADBEEF)
    assert peer.send(ping) == []
    (reply,) = peer.received()
    assert reply.type_id == messages.USER_CONTROL
    assert reply.payload == struct.pack(">HI", messages.PING_RESPONSE, 0xDEADBEEF)


def test_other_user_control_events_are_quiet() -> None:
    peer = Peer()
    peer.connect()
    peer.send(messages.user_control(messages.SET_BUFFER_LENGTH, 1, 3000))
    peer.send(messages.control(messages.USER_CONTROL, b"\x00"))
    peer.send(messages.acknowledgement(1234) + messages.set_peer_bandwidth(5000))
    assert peer.received() == []


def test_acknowledgements_after_peer_window() -> None:
    peer = Peer()
    peer.connect()
    window = 10_000
    peer.send(messages.window_ack_size(window))
    assert peer.received() == []
    audio = encode_message(4, 0, messages.AUDIO, 1, b"\xaf\x01" + b"a" * 998, 128)
    acks: list[int] = []
    for _ in range(35):
        peer.send(audio)
        acks += [struct.unpack(">I", m.payload)[0] for m in peer.received() if m.type_id == messages.ACKNOWLEDGEMENT]
    total = peer.conn.bytes_received
    # One acknowledgement per window; each carries the byte count received so far (handshake included).
    assert len(acks) >= 3
    assert acks[0] >= window
    assert all(b - a >= window for a, b in itertools.pairwise(acks))
    assert acks[-1] <= total < acks[-1] + window


def test_no_acknowledgement_without_window() -> None:
    peer = Peer()
    peer.connect()
    peer.send(encode_message(4, 0, messages.AUDIO, 1, b"a" * 100_000, 128))
    assert [m for m in peer.received() if m.type_id == messages.ACKNOWLEDGEMENT] == []


def test_chunk_size_from_client_applies() -> None:
    peer = Peer()
    peer.connect()
    payload = b"\x17\x01" + bytes(range(256)) * 40
    data = messages.set_chunk_size(60_000) + encode_message(6, 0, messages.VIDEO, 1, payload, 60_000)
    assert peer.send(data) == [Media(1, messages.VIDEO, 0, payload)]


def test_message_limit() -> None:
    conn = ServerConnection(Limits(max_message_size=1000))
    client = ClientHandshake()
    conn.receive_data(client.start())
    conn.receive_data(client.receive_data(conn.data_to_send()))
    with pytest.raises(ValueError, match="limit"):
        conn.receive_data(encode_message(6, 0, messages.VIDEO, 1, b"v" * 1001, 128))


def test_unpublished_and_play_ended() -> None:
    peer = Peer()
    peer.connect()
    peer.conn.unpublished(1, "s")
    peer.conn.play_ended(1, "s", "the stream ended")
    got = peer.received()
    assert amf.decode(got[0].payload)[3]["code"] == "NetStream.Unpublish.Success"
    assert amf.decode(got[1].payload)[3]["code"] == "NetStream.Play.UnpublishNotify"
    assert got[2].payload == struct.pack(">HI", messages.STREAM_EOF, 1)


def test_commands_pipelined_behind_connect_wait_for_its_answer() -> None:
    """connect + createStream + publish in one write (several SDKs do): the later commands are held
    until connect is accepted, then answered after it, in order (issue 16, finding #7)."""
    peer = Peer()
    pipelined = b"".join(
        encode_message(3, 0, messages.COMMAND_AMF0, stream_id, amf.encode(*values), 128)
        for stream_id, values in (
            (0, ("connect", 1, {"app": "live", "tcUrl": TC_URL})),
            (0, ("createStream", 2, None)),
            (1, ("publish", 3, None, "pipe?k=v", "live")),
        )
    )
    (event,) = peer.send(pipelined)
    assert isinstance(event, Connect)
    assert peer.commands() == []  # nothing answered before the caller decides on connect
    assert peer.conn.accept_connect(event) == [Publish(1, "pipe", "k=v", "live")]
    answers = [(c[0], c[1]) for c in peer.commands()]
    assert answers == [("_result", 1), ("_result", 2)]


def test_too_many_commands_behind_connect() -> None:
    peer = Peer()
    peer.command("connect", 1, {"app": "live", "tcUrl": TC_URL})
    with pytest.raises(ProtocolError, match="before connect was answered"):
        for tid in range(40):
            peer.command("createStream", tid + 2, None)


def test_command_size_is_capped_by_stage() -> None:
    """Before connect any non-media message is tiny, after it commands are small, media may be big:
    an unauthenticated peer cannot make the server decode a big AMF value (finding #1)."""
    peer = Peer(limits=Limits(connect_message_size=1000, command_message_size=3000))
    assert [type(e) for e in peer.send(encode_message(6, 0, messages.VIDEO, 1, b"v" * 2000, 128))] == [Media]
    with pytest.raises(ValueError, match="type 20 and 1200 bytes exceeds the 1000 byte limit"):
        peer.send(encode_message(3, 0, messages.COMMAND_AMF0, 0, b"\x05" * 1200, 128))
    peer = Peer(limits=Limits(connect_message_size=1000, command_message_size=3000))
    peer.connect()
    assert peer.command("createStream", 2, None, "x" * 1500) == []  # 1.5 KB: fine after connect
    with pytest.raises(ValueError, match="type 18 and 3100 bytes exceeds the 3000 byte limit"):
        peer.send(encode_message(3, 0, messages.DATA_AMF0, 0, b"\x05" * 3100, 128))


def test_unfinished_media_before_publish_is_bounded() -> None:
    """A peer declaring a 16 MiB video message cannot park more than prepublish_bytes (finding #2);
    once publishing, the larger publishing_bytes applies."""
    limits = Limits(prepublish_bytes=100_000, publishing_bytes=400_000)
    peer = Peer(limits=limits)
    peer.connect()
    big = encode_message(6, 0, messages.VIDEO, 1, b"v" * 300_000, 4096)
    peer.send(messages.set_chunk_size(4096))
    with pytest.raises(ValueError, match="bytes held in unfinished messages; the limit is 100000"):
        peer.send(big[:150_000])
    peer = Peer(limits=limits)
    peer.connect()
    stream_id = peer.create_stream()
    (publish,) = peer.command("publish", 3, None, "s", "live", stream_id=stream_id)
    peer.conn.accept_publish(publish)
    peer.send(messages.set_chunk_size(4096))
    assert [e.payload for e in peer.send(big)] == [b"v" * 300_000]
