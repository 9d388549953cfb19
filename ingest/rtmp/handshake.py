"""Sans-I/O RTMP handshake: C0 C1 C2 / S0 S1 S2, no sockets.

Feed received bytes to ``receive_data`` and write back whatever it returns. Both the plain handshake
of the RTMP spec and the "complex" digest handshake of Flash Player, librtmp and ffmpeg are spoken.
The digest handshake is not security (its keys are public); we answer it because Flash-era clients,
and ffmpeg when playing, refuse a server whose S1/S2 do not carry valid digests.

Digest layout, for C1 and S1 (1536 bytes): time(4) + version(4) + two 764-byte blocks. One block
holds the 32-byte HMAC-SHA256 digest at an offset chosen by the sum of its first four bytes; the
digest covers the whole packet except itself. Scheme 1 puts the digest block first (offset base 8,
what ffmpeg and librtmp send), scheme 0 puts it second (offset base 772). C2 and S2 are
random(1504) + HMAC-SHA256 of that random part, keyed with HMAC-SHA256(long key, peer's digest).
"""

from __future__ import annotations

import hashlib
import hmac
import os

VERSION = 3
PACKET_SIZE = 1536
DIGEST_SIZE = 32

_KEY_TAIL = bytes.fromhex("f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae")
CLIENT_KEY = b"Genuine Adobe Flash Player 001" + _KEY_TAIL  # 62 bytes
SERVER_KEY = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL  # 68 bytes
# C1 and S1 digests are keyed with only the readable prefix; the full keys sign C2 and S2.
_CLIENT_KEY_SHORT = CLIENT_KEY[:30]
_SERVER_KEY_SHORT = SERVER_KEY[:36]

CLIENT_VERSION = bytes((12, 0, 13, 14))
SERVER_VERSION = bytes((13, 14, 10, 13))
_NO_VERSION = bytes(4)

_DIGEST_FIRST = 8  # scheme 1
_KEY_FIRST = 772  # scheme 0
# Scheme 1 first: it is what ffmpeg and librtmp send, so most clients match on the first try.
_SCHEMES = (_DIGEST_FIRST, _KEY_FIRST)

_ENCRYPTED_VERSIONS = {6: "RTMPE", 8: "RTMPE (XTEA)", 9: "RTMPE (Blowfish)"}


class HandshakeError(ValueError):
    """The peer sent a handshake we cannot accept; close the connection."""


def _digest_offset(packet: bytes | bytearray, scheme: int) -> int:
    """Where the 32-byte digest sits in C1/S1 under ``scheme`` (_DIGEST_FIRST or _KEY_FIRST)."""
    return sum(packet[scheme : scheme + 4]) % 728 + scheme + 4


def _packet_digest(packet: bytes | bytearray, offset: int, key: bytes) -> bytes:
    return hmac.digest(key, packet[:offset] + packet[offset + DIGEST_SIZE :], hashlib.sha256)


def _imprint(packet: bytearray, scheme: int, key: bytes) -> bytes:
    """Write the packet's digest into it at the scheme's offset and return the digest."""
    offset = _digest_offset(packet, scheme)
    digest = _packet_digest(packet, offset, key)
    packet[offset : offset + DIGEST_SIZE] = digest
    return digest


def _find_digest(packet: bytes, key: bytes) -> tuple[int, bytes] | None:
    """Return (scheme, digest) if the packet carries a valid digest under either scheme."""
    for scheme in _SCHEMES:
        offset = _digest_offset(packet, scheme)
        digest = packet[offset : offset + DIGEST_SIZE]
        if hmac.compare_digest(_packet_digest(packet, offset, key), digest):
            return scheme, digest
    return None


def _signing_key(peer_digest: bytes, key: bytes) -> bytes:
    return hmac.digest(key, peer_digest, hashlib.sha256)


def _signed_reply(peer_digest: bytes, key: bytes) -> bytes:
    """C2/S2 of the digest handshake: random data signed with a key derived from the peer's digest."""
    body = os.urandom(PACKET_SIZE - DIGEST_SIZE)
    return body + hmac.digest(_signing_key(peer_digest, key), body, hashlib.sha256)


def _reply_is_signed(packet: bytes, own_digest: bytes, key: bytes) -> bool:
    body, signature = packet[:-DIGEST_SIZE], packet[-DIGEST_SIZE:]
    expected = hmac.digest(_signing_key(own_digest, key), body, hashlib.sha256)
    return hmac.compare_digest(expected, signature)


def _random_packet() -> bytearray:
    # time(4) = 0: the epoch our chunk timestamps count from, and we count from 0.
    # version(4) = 0: marks the plain handshake; the digest handshake overwrites it.
    packet = bytearray(PACKET_SIZE)
    packet[8:] = os.urandom(PACKET_SIZE - 8)
    return packet


def _check_version(version: int, packet: str) -> None:
    if version == VERSION:
        return
    if version in _ENCRYPTED_VERSIONS:
        raise HandshakeError(
            f"{packet} asks for {_ENCRYPTED_VERSIONS[version]} (version {version}); "
            "only plain RTMP (version 3) is supported"
        )
    raise HandshakeError(f"{packet} carries version byte {version:#04x}; expected 3 (plain RTMP) — not an RTMP peer?")


def _fill(buffer: bytearray, data: bytes, size: int) -> bytes:
    """Move bytes from ``data`` into ``buffer`` until it holds ``size``; return what is left over."""
    take = size - len(buffer)
    buffer += data[:take]
    return data[take:]


class ServerHandshake:
    """Server side: answers C0+C1 with S0+S1+S2, then waits for C2."""

    __slots__ = ("_buffer", "_replied", "complex", "done", "unused")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._replied = False
        self.complex = False
        self.done = False
        self.unused = b""

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the client; returns bytes to send (S0+S1+S2 once C0+C1 are complete, else b'')."""
        if self.done:
            raise RuntimeError("handshake already done; feed further bytes to the chunk stream")
        reply = b""
        if not self._replied:
            data = _fill(self._buffer, data, 1 + PACKET_SIZE)
            if self._buffer:
                # Checked on the first byte so a wrong protocol fails before we wait for 1536 more.
                _check_version(self._buffer[0], "C0")
            if len(self._buffer) < 1 + PACKET_SIZE:
                return b""
            reply = self._answer(bytes(self._buffer[1:]))
            self._buffer.clear()
            self._replied = True
        data = _fill(self._buffer, data, PACKET_SIZE)
        if len(self._buffer) == PACKET_SIZE:
            # C2 is not checked: clients disagree on it (ffmpeg echoes S1 when publishing and signs
            # it when playing), and the connect command that follows says all we need.
            self._buffer.clear()
            self.done = True
            self.unused = bytes(data)
        return reply

    def _answer(self, c1: bytes) -> bytes:
        found = None if c1[4:8] == _NO_VERSION else _find_digest(c1, _CLIENT_KEY_SHORT)
        s1 = _random_packet()
        if found is None:
            # A versioned C1 without a valid digest is not Adobe's scheme, so its sender cannot check
            # a digest from us either: answer plainly rather than refuse.
            return bytes((VERSION,)) + s1 + c1
        scheme, c1_digest = found
        s1[4:8] = SERVER_VERSION
        _imprint(s1, scheme, _SERVER_KEY_SHORT)
        self.complex = True
        return bytes((VERSION,)) + s1 + _signed_reply(c1_digest, SERVER_KEY)


class ClientHandshake:
    """Client side: ``start()`` gives C0+C1; S0+S1+S2 are answered with C2.

    With ``complex=True`` C1 carries a scheme-1 digest, and a server that answers with a non-zero S1
    version must prove it with valid S1 and S2 digests, as ffmpeg demands; ``complex`` stays True
    only if it did. With ``complex=False`` any S1/S2 is accepted and C2 echoes S1.
    """

    __slots__ = ("_buffer", "_c1_digest", "_started", "complex", "done", "unused")

    def __init__(self, complex: bool = False) -> None:
        self._buffer = bytearray()
        self._c1_digest: bytes | None = None
        self._started = False
        self.complex = complex
        self.done = False
        self.unused = b""

    def start(self) -> bytes:
        """Return C0 + C1."""
        if self._started:
            raise RuntimeError("start() already called")
        self._started = True
        c1 = _random_packet()
        if self.complex:
            c1[4:8] = CLIENT_VERSION
            self._c1_digest = _imprint(c1, _DIGEST_FIRST, _CLIENT_KEY_SHORT)
        return bytes((VERSION,)) + c1

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the server; returns C2 once S0+S1+S2 are complete, else b''."""
        if not self._started:
            raise RuntimeError("call start() and send C0+C1 first")
        if self.done:
            raise RuntimeError("handshake already done; feed further bytes to the chunk stream")
        data = _fill(self._buffer, data, 1 + 2 * PACKET_SIZE)
        if self._buffer:
            _check_version(self._buffer[0], "S0")
        if len(self._buffer) < 1 + 2 * PACKET_SIZE:
            return b""
        s1 = bytes(self._buffer[1 : 1 + PACKET_SIZE])
        s2 = bytes(self._buffer[1 + PACKET_SIZE :])
        c2 = self._answer(s1, s2)
        self._buffer.clear()
        self.done = True
        self.unused = bytes(data)
        return c2

    def _answer(self, s1: bytes, s2: bytes) -> bytes:
        if self._c1_digest is None or s1[4:8] == _NO_VERSION:
            self.complex = False
            return s1
        found = _find_digest(s1, _SERVER_KEY_SHORT)
        if found is None:
            raise HandshakeError(f"S1 claims server version {'.'.join(map(str, s1[4:8]))} but has no valid digest")
        if not _reply_is_signed(s2, self._c1_digest, SERVER_KEY):
            raise HandshakeError("S2 is not signed with a key derived from our C1 digest")
        return _signed_reply(found[1], CLIENT_KEY)
