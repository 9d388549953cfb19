"""The pull's HTTP-FLV reader (relay.cluster.pull._Connection), fed by hand: chunked coding split
anywhere, the last chunk as the origin's end of stream, and hostile answers that must end the pull
with a reason, never an exception."""

from __future__ import annotations

import asyncio

import pytest

from relay.cluster.pull import MAX_HEAD, PullRefused, _Connection
from relay.formats.flv import AUDIO, VIDEO, encode_tag, header

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\n"
FLV = header() + encode_tag(VIDEO, 0, b"\x17\x00\x00\x00\x00config") + encode_tag(AUDIO, 23, b"\xaf\x01aac")
FLV += encode_tag(VIDEO, 40, b"\x27\x01\x00\x00\x00" + bytes(range(256)) * 20)


def chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces)


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def connection() -> tuple[_Connection, list[tuple[int, int, bytes]]]:
    tags: list[tuple[int, int, bytes]] = []
    conn = _Connection(lambda kind, ts, payload: tags.append((kind, ts, payload)))
    conn.connection_made(Transport())
    return conn, tags


@pytest.mark.parametrize("step", [1, 7, 1000, 100_000])
async def test_chunked_flv_split_anywhere_gives_the_same_tags_and_the_last_chunk_ends_it(step):
    whole = HEAD + chunked(FLV, 333) + b"0\r\n\r\n"
    conn, tags = connection()
    for i in range(0, len(whole), step):
        conn.data_received(whole[i : i + step])
    assert conn.started.done() and conn.started.exception() is None
    assert [(kind, ts) for kind, ts, _ in tags] == [(VIDEO, 0), (AUDIO, 23), (VIDEO, 40)]
    assert tags[2][2].endswith(bytes(range(256)))
    assert conn.done.result() == "end", "the last chunk: the origin ended the stream"


async def test_a_connection_that_closes_without_the_last_chunk_is_an_origin_that_died():
    conn, tags = connection()
    conn.data_received(HEAD + chunked(FLV, 4096))
    conn.connection_lost(None)
    assert len(tags) == 3 and conn.done.result() == "eof"


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nxx\r\n",  # not a hex size
        b"5\r\nabcdeXX",  # no CRLF after the data
        b"1" * 100,  # a size line that never ends
    ],
)
async def test_bad_chunked_coding_ends_the_pull_with_a_reason(body):
    conn, _ = connection()
    conn.data_received(HEAD + chunked(header(), 13))
    conn.data_received(body)
    assert conn.done.done() and "upstream" in conn.done.result()
    assert conn.transport.closed


async def test_a_refusal_carries_the_origins_reason():
    conn, _ = connection()
    conn.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: 32\r\n\r\nno live stream named live/gone\n")
    with pytest.raises(PullRefused) as refused:
        conn.started.result()
    assert refused.value.status == 404 and "no live stream named live/gone" in str(refused.value)


async def test_an_endless_head_and_bad_flv_are_refused_without_an_exception():
    conn, _ = connection()
    conn.data_received(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD + 10))
    assert isinstance(conn.started.exception(), ConnectionError)
    conn, _ = connection()
    conn.data_received(HEAD + chunked(b"NOT AN FLV STREAM", 100))
    assert "bad FLV" in conn.done.result()
