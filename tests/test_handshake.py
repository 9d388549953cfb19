import asyncio
import hashlib
import hmac
import os
import shutil

import pytest

from ingest.rtmp.handshake import (
    CLIENT_KEY,
    PACKET_SIZE,
    SERVER_KEY,
    ClientHandshake,
    HandshakeError,
    ServerHandshake,
)

FFMPEG = shutil.which("ffmpeg")
SERVER_REPLY_SIZE = 1 + 2 * PACKET_SIZE


# Written out again here rather than imported, so the scheme-0 test checks the module against an
# independent reading of the layout.
def _offset(packet: bytes, base: int) -> int:
    return sum(packet[base : base + 4]) % 728 + base + 4


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, hashlib.sha256)


def _run(client: ClientHandshake, server: ServerHandshake) -> tuple[bytes, bytes, bytes]:
    """Drive a full handshake; return (C0C1, S0S1S2, C2)."""
    c0c1 = client.start()
    s0s1s2 = server.receive_data(c0c1)
    c2 = client.receive_data(s0s1s2)
    assert server.receive_data(c2) == b""
    assert client.done and server.done
    assert client.unused == server.unused == b""
    return c0c1, s0s1s2, c2


def test_simple_handshake() -> None:
    client, server = ClientHandshake(), ServerHandshake()
    c0c1, s0s1s2, c2 = _run(client, server)
    assert c0c1[0] == s0s1s2[0] == 3
    assert len(c0c1) == SERVER_REPLY_SIZE - PACKET_SIZE and len(s0s1s2) == SERVER_REPLY_SIZE
    s1, s2 = s0s1s2[1 : 1 + PACKET_SIZE], s0s1s2[1 + PACKET_SIZE :]
    assert c0c1[5:9] == bytes(4)
    assert s1[:8] == bytes(8)
    assert s2 == c0c1[1:]
    assert c2 == s1
    assert not server.complex and not client.complex


def test_complex_handshake() -> None:
    client, server = ClientHandshake(complex=True), ServerHandshake()
    _, s0s1s2, c2 = _run(client, server)
    assert server.complex and client.complex
    assert s0s1s2[5:9] == bytes((13, 14, 10, 13))
    # C2 is signed against S1's digest, not an echo.
    assert c2 != s0s1s2[1 : 1 + PACKET_SIZE]


def test_server_answers_scheme_0_client() -> None:
    c1 = bytearray(os.urandom(PACKET_SIZE))
    c1[4:8] = bytes((10, 0, 45, 2))
    pos = _offset(c1, 772)
    c1[pos : pos + 32] = _hmac(CLIENT_KEY[:30], bytes(c1[:pos] + c1[pos + 32 :]))

    server = ServerHandshake()
    reply = server.receive_data(b"\x03" + bytes(c1))
    assert server.complex
    s1, s2 = reply[1 : 1 + PACKET_SIZE], reply[1 + PACKET_SIZE :]
    # The server answers in the client's scheme, so S1's digest sits at the scheme-0 offset.
    spos = _offset(s1, 772)
    assert s1[spos : spos + 32] == _hmac(SERVER_KEY[:36], s1[:spos] + s1[spos + 32 :])
    s2_key = _hmac(SERVER_KEY, bytes(c1[pos : pos + 32]))
    assert s2[-32:] == _hmac(s2_key, s2[:-32])


def test_server_falls_back_when_c1_digest_is_invalid() -> None:
    c1 = bytearray(os.urandom(PACKET_SIZE))
    c1[4:8] = bytes((9, 0, 124, 2))
    server = ServerHandshake()
    reply = server.receive_data(b"\x03" + bytes(c1))
    assert not server.complex
    assert reply[5:9] == bytes(4)
    assert reply[1 + PACKET_SIZE :] == c1


@pytest.mark.parametrize("complex_", [False, True])
def test_byte_at_a_time(complex_: bool) -> None:
    client, server = ClientHandshake(complex=complex_), ServerHandshake()
    s0s1s2 = b"".join(server.receive_data(bytes((b,))) for b in client.start())
    assert len(s0s1s2) == SERVER_REPLY_SIZE
    c2 = b"".join(client.receive_data(bytes((b,))) for b in s0s1s2)
    assert len(c2) == PACKET_SIZE and client.done
    for b in c2:
        assert not server.done
        server.receive_data(bytes((b,)))
    assert server.done and server.complex == complex_ == client.complex
    assert server.unused == client.unused == b""


def test_c2_coalesced_with_c0c1_and_chunk_bytes() -> None:
    server = ServerHandshake()
    chunk = b"\x03\x00\x00\x00\x00\x00\xa0\x14connect"
    # The server does not check C2, so any 1536 bytes stand in for it here.
    reply = server.receive_data(ClientHandshake().start() + os.urandom(PACKET_SIZE) + chunk)
    assert len(reply) == SERVER_REPLY_SIZE
    assert server.done and server.unused == chunk


def test_c2_coalesced_with_chunk_bytes() -> None:
    client, server = ClientHandshake(complex=True), ServerHandshake()
    c2 = client.receive_data(server.receive_data(client.start()))
    chunk = b"\x02\x00\x00\x00\x00\x00\x04\x01\x00\x00\x00\x00\x00\x00\x10\x00"
    assert server.receive_data(c2 + chunk) == b""
    assert server.done and server.unused == chunk


def test_client_keeps_bytes_after_s2() -> None:
    client, server = ClientHandshake(), ServerHandshake()
    trailing = b"\x02set chunk size"
    c2 = client.receive_data(server.receive_data(client.start()) + trailing)
    assert len(c2) == PACKET_SIZE
    assert client.done and client.unused == trailing


@pytest.mark.parametrize(("version", "message"), [(6, "RTMPE"), (ord("G"), "0x47"), (0, "0x00")])
def test_bad_version_is_rejected_on_first_byte(version: int, message: str) -> None:
    server = ServerHandshake()
    with pytest.raises(HandshakeError, match=message):
        server.receive_data(bytes((version,)))
    # The connection is dead: later bytes do not revive it.
    with pytest.raises(HandshakeError):
        server.receive_data(bytes(PACKET_SIZE))


def test_client_rejects_bad_s0() -> None:
    client = ClientHandshake()
    client.start()
    with pytest.raises(HandshakeError, match="S0"):
        client.receive_data(b"\x06")


def test_complex_client_rejects_forged_s2() -> None:
    client, server = ClientHandshake(complex=True), ServerHandshake()
    reply = bytearray(server.receive_data(client.start()))
    reply[-1] ^= 0xFF
    with pytest.raises(HandshakeError, match="S2"):
        client.receive_data(bytes(reply))


def test_complex_client_rejects_versioned_s1_without_digest() -> None:
    client = ClientHandshake(complex=True)
    client.start()
    s1 = bytearray(os.urandom(PACKET_SIZE))
    s1[4:8] = bytes((13, 14, 10, 13))
    with pytest.raises(HandshakeError, match="S1"):
        client.receive_data(b"\x03" + bytes(s1) + os.urandom(PACKET_SIZE))


def test_complex_client_accepts_simple_server() -> None:
    client = ClientHandshake(complex=True)
    client.start()
    s1 = bytes(8) + os.urandom(PACKET_SIZE - 8)
    assert client.receive_data(b"\x03" + s1 + os.urandom(PACKET_SIZE)) == s1
    assert client.done and not client.complex


def test_misuse_raises() -> None:
    with pytest.raises(RuntimeError):
        ClientHandshake().receive_data(b"\x03")
    client, server = ClientHandshake(), ServerHandshake()
    _run(client, server)
    with pytest.raises(RuntimeError):
        client.start()
    with pytest.raises(RuntimeError):
        server.receive_data(b"more")


async def _handshake_with_ffmpeg(*ffmpeg_args: str) -> tuple[ServerHandshake, str]:
    """Run ffmpeg against a server that only does the handshake; return it and ffmpeg's log."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[ServerHandshake] = loop.create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshake = ServerHandshake()
        try:
            while not handshake.done and (data := await reader.read(4096)):
                writer.write(handshake.receive_data(data))
                await writer.drain()
            if not finished.done():
                finished.set_result(handshake)
        except HandshakeError as exc:
            if not finished.done():
                finished.set_exception(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = [arg.replace("PORT", str(port)) for arg in ffmpeg_args]
    assert FFMPEG is not None
    proc = await asyncio.create_subprocess_exec(
        FFMPEG,
        "-nostdin",
        "-loglevel",
        "debug",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    # Drained concurrently so a chatty debug log cannot block ffmpeg on a full pipe.
    log = asyncio.create_task(proc.stderr.read())
    try:
        handshake = await asyncio.wait_for(finished, 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        server.close()
        await server.wait_closed()
    return handshake, (await log).decode(errors="replace")


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed")
async def test_ffmpeg_publisher_uses_digest_handshake() -> None:
    handshake, log = await _handshake_with_ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=5",
        "-t",
        "1",
        "-f",
        "flv",
        "rtmp://127.0.0.1:PORT/live/x",
    )
    assert handshake.done, log
    assert handshake.complex, log


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed")
async def test_ffmpeg_player_accepts_our_digests() -> None:
    # ffmpeg checks S1's digest and S2's signature only when reading, and sends C2 only if both
    # pass, so a completed handshake here is ffmpeg vouching for our answer.
    handshake, log = await _handshake_with_ffmpeg(
        "-i",
        "rtmp://127.0.0.1:PORT/live/x",
        "-t",
        "1",
        "-f",
        "null",
        "-",
    )
    assert "Server version 13.14.10.13" in log
    assert handshake.done, log
    assert handshake.complex, log
