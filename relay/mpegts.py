"""MPEG-TS muxer (sans-I/O): FLV H.264/AAC packets in, 188-byte transport stream packets out.

One muxer per output (a live HLS rendition, a recording) keeps its continuity counters across
segments, as RFC 8216 wants; each segment starts with :meth:`TsMuxer.header` (PAT + PMT) and a
keyframe. H.264 access units are rewritten from AVCC to Annex-B with an AUD, and SPS/PPS before
every IDR; AAC frames get ADTS headers built from the AudioSpecificConfig. Timestamps are the
stream's milliseconds on the 90 kHz clock.
"""

from __future__ import annotations

import struct
import threading

import numpy as np

from relay.codecs import coded_frame
from relay.packet import AUDIO, VIDEO, Packet

TS_SIZE = 188
PAYLOAD = 184
PMT_PID = 0x1000
VIDEO_PID = 0x100
AUDIO_PID = 0x101
STREAM_TYPE_H264 = 0x1B
STREAM_TYPE_AAC = 0x0F

_AUD = b"\x00\x00\x00\x01\x09\xf0"
_OWN_AUD = frozenset((9,))  # the publisher's AUDs are dropped: ours leads every access unit
_START = b"\x00\x00\x00\x01"
_AUD_START = _AUD + _START
_LENGTH_FIELD = {4: struct.Struct(">I"), 2: struct.Struct(">H"), 1: struct.Struct(">B")}  # NAL unit lengths


def _crc32_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc32_table()


def crc32_mpeg2(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _pts_bytes(marker: int, value: int) -> bytes:
    value &= (1 << 33) - 1
    return bytes(
        (
            (marker << 4) | ((value >> 29) & 0x0E) | 1,
            (value >> 22) & 0xFF,
            ((value >> 14) & 0xFE) | 1,
            (value >> 7) & 0xFF,
            ((value << 1) & 0xFE) | 1,
        )
    )


class AvcConfig:
    """SPS/PPS and the NAL length size from an FLV AVC sequence header."""

    __slots__ = ("length_size", "parameter_sets")

    def __init__(self, payload: bytes) -> None:
        record = payload[5:]
        if len(record) < 7:
            raise ValueError("AVC sequence header too short")
        self.length_size = (record[4] & 0x03) + 1
        sets: list[bytes] = []
        pos = 5
        for count_mask in (0x1F, 0xFF):
            count = record[pos] & count_mask
            pos += 1
            for _ in range(count):
                size = int.from_bytes(record[pos : pos + 2], "big")
                sets.append(record[pos + 2 : pos + 2 + size])
                pos += 2 + size
        self.parameter_sets = b"".join(_START + ps for ps in sets)

    def annexb(
        self, data: bytes | memoryview, keyframe: bool, lead: bytes = b"", drop: frozenset[int] = frozenset()
    ) -> bytes:
        """Length-prefixed NAL units as one Annex-B access unit: ``lead`` first, then SPS/PPS before a
        keyframe, leaving out the NAL unit types in ``drop``."""
        size = self.length_size
        parts = [lead, self.parameter_sets] if keyframe else [lead]
        pos = 0
        end = len(data)
        unpack = _LENGTH_FIELD[size].unpack_from if size in _LENGTH_FIELD else None
        while pos + size <= end:
            length = unpack(data, pos)[0] if unpack else int.from_bytes(data[pos : pos + size], "big")
            pos += size
            nal = data[pos : pos + length]
            pos += length
            if nal and nal[0] & 0x1F not in drop:
                parts.append(_START)
                parts.append(nal)
        return b"".join(parts)


class AacConfig:
    """The fixed part of an ADTS header from an FLV AAC sequence header."""

    __slots__ = ("_headers", "channels", "profile", "rate_index")

    def __init__(self, payload: bytes) -> None:
        asc = payload[2:]
        if len(asc) < 2:
            raise ValueError("AAC sequence header too short")
        object_type = asc[0] >> 3
        self.profile = max(0, min(object_type - 1, 3))
        self.rate_index = ((asc[0] & 0x07) << 1) | (asc[1] >> 7)
        self.channels = (asc[1] >> 3) & 0x0F
        # ADTS headers by frame size: an ADTS length has 13 bits, so this holds at most 8192.
        self._headers: dict[int, bytes] = {}

    def adts(self, size: int) -> bytes:
        header = self._headers.get(size)
        if header is None:
            header = self._headers[size] = self._adts(size)
        return header

    def _adts(self, size: int) -> bytes:
        length = size + 7
        return bytes(
            (
                0xFF,
                0xF1,
                (self.profile << 6) | (self.rate_index << 2) | (self.channels >> 2),
                ((self.channels & 3) << 6) | (length >> 11),
                (length >> 3) & 0xFF,
                ((length & 7) << 5) | 0x1F,
                0xFC,
            )
        )


# AAC frames are gathered into one PES for up to this long (nginx-rtmp's hls_max_audio_delay is
# 300 ms): a third of the PES and TS headers, and of the muxing work, for audio.
AUDIO_DELAY_MS = 300
MAX_AUDIO_PES = 60000


class _Scratch(threading.local):
    """Where TS packets are written before a call returns them: one per thread, shared by every
    muxer (each public call is synchronous and starts afresh), so it stays in the CPU's cache."""

    def __init__(self) -> None:
        self.rows = np.empty((4096, TS_SIZE), np.uint8)
        self.flat = memoryview(self.rows.reshape(-1))


_SCRATCH = _Scratch()


class TsMuxer:
    """Writes TS packets as rows of a scratch buffer (``count x 188`` bytes): a video frame's full
    packets are one copy into it, and each public call returns its rows as one ``bytes``.
    Continuity counters run on across calls."""

    def __init__(self, has_video: bool = True, has_audio: bool = True, audio_delay_ms: int = AUDIO_DELAY_MS) -> None:
        self.has_video = has_video
        self.has_audio = has_audio
        self.audio_delay = audio_delay_ms * 90
        self._audio: list[bytes] = []
        self._audio_pts = 0
        self._audio_size = 0
        self.avc: AvcConfig | None = None
        self.aac: AacConfig | None = None
        self._cc: dict[int, int] = {0: 0, PMT_PID: 0, VIDEO_PID: 0, AUDIO_PID: 0}
        self.pcr_pid = VIDEO_PID if has_video else AUDIO_PID
        self._tables: tuple[bytes, bytes] | None = None  # PAT and PMT sections
        self._rows, self._flat = _SCRATCH.rows, _SCRATCH.flat  # taken again by every public call
        self._n = 0  # rows written in this call

    def continue_from(self, previous: TsMuxer) -> None:
        """Go on with ``previous``'s continuity counters (a new muxer for new codec parameters)."""
        self._cc.update(previous._cc)

    def configure(self, packet: Packet) -> None:
        """Take a sequence header (FLV AVC or AAC config packet)."""
        if packet.kind == VIDEO:
            self.avc = AvcConfig(packet.payload)
        elif packet.kind == AUDIO:
            self.aac = AacConfig(packet.payload)

    # ------------------------------------------------------------ public calls

    def header(self) -> bytes:
        """PAT and PMT: the start of every segment."""
        self._start()
        self._write_tables()
        return self._take()

    def mux(self, packet: Packet) -> bytes:
        """The TS packets of one FLV audio or video frame (b"" for what TS cannot carry, or for AAC
        gathered into a later PES)."""
        self._start()
        self._mux([packet])
        return self._take()

    def flush(self, end_ts: int) -> bytes:
        """The audio gathered so far (a part or segment ends here; video is written as it comes)."""
        self._start()
        self._flush_audio()
        return self._take()

    def part(self, packets: list[Packet], end_ts: int, independent: bool) -> bytes:
        """One part or segment: PAT and PMT first when ``independent``, the frames, the audio gathered."""
        self._start()
        if independent:
            self._write_tables()
        self._mux(packets)
        self._flush_audio()
        return self._take()

    # ------------------------------------------------------------ rows

    def _start(self) -> None:
        scratch = _SCRATCH
        self._rows, self._flat = scratch.rows, scratch.flat
        self._n = 0

    def _take(self) -> bytes:
        return self._rows[: self._n].tobytes() if self._n else b""

    def _reserve(self, count: int) -> int:
        """Room for ``count`` more rows; returns the first one's index."""
        n = self._n
        self._n = n + count
        if n + count > len(self._rows):
            self._grow(n + count)
        return n

    def _grow(self, rows_needed: int) -> None:
        rows = np.empty((max(2 * len(self._rows), rows_needed + 64), TS_SIZE), np.uint8)
        rows[: len(self._rows)] = self._rows
        self._rows = _SCRATCH.rows = rows
        self._flat = _SCRATCH.flat = memoryview(rows.reshape(-1))

    def _write_tables(self) -> None:
        if self._tables is None:
            self._tables = self._build_tables()
        pat, pmt = self._tables
        for pid, section in ((0, pat), (PMT_PID, pmt)):
            cc = self._cc[pid]
            self._cc[pid] = (cc + 1) & 0x0F
            row = self._reserve(1) * TS_SIZE
            self._flat[row : row + TS_SIZE] = bytes((0x47, 0x40 | (pid >> 8), pid & 0xFF, 0x10 | cc)) + section

    def _build_tables(self) -> tuple[bytes, bytes]:
        """The PAT and PMT sections, each padded to a packet's payload."""
        pat = b"\x00\x00\xb0\x0d\x00\x01\xc1\x00\x00\x00\x01" + bytes((0xE0 | (PMT_PID >> 8), PMT_PID & 0xFF))
        pat += crc32_mpeg2(pat[1:]).to_bytes(4, "big")
        streams = b""
        if self.has_video:
            streams += bytes((STREAM_TYPE_H264, 0xE0 | (VIDEO_PID >> 8), VIDEO_PID & 0xFF, 0xF0, 0x00))
        if self.has_audio:
            streams += bytes((STREAM_TYPE_AAC, 0xE0 | (AUDIO_PID >> 8), AUDIO_PID & 0xFF, 0xF0, 0x00))
        length = 13 + len(streams)
        pmt = bytes((0x00, 0x02, 0xB0 | (length >> 8), length & 0xFF, 0x00, 0x01, 0xC1, 0x00, 0x00))
        pmt += bytes((0xE0 | (self.pcr_pid >> 8), self.pcr_pid & 0xFF, 0xF0, 0x00)) + streams
        pmt += crc32_mpeg2(pmt[1:]).to_bytes(4, "big")
        return tuple(section + b"\xff" * (PAYLOAD - len(section)) for section in (pat, pmt))  # type: ignore[return-value]

    # ------------------------------------------------------------ media

    def _mux(self, packets: list[Packet]) -> None:
        avc, aac = self.avc, self.aac
        audio = self._audio
        write_pes = self._write_pes
        for packet in packets:
            kind = packet.kind
            payload = packet.payload
            if kind == VIDEO:
                if avc is None or len(payload) < 5:
                    continue
                keyframe = packet.keyframe
                dts = packet.timestamp * 90
                if payload[0] & 0x0F == 7 and payload[1] == 1:  # legacy FLV AVC NAL units
                    cts = int.from_bytes(payload[2:5], "big", signed=True)
                    # One NAL unit that is not an AUD (a frame without SEI or in-band parameter
                    # sets, the usual case): the payload goes to the packets as it is.
                    if (
                        avc.length_size == 4
                        and not keyframe
                        and len(payload) > 9
                        and int.from_bytes(payload[5:9], "big") == len(payload) - 9
                        and payload[9] & 0x1F != 9
                    ):
                        write_pes(VIDEO_PID, _video_pes_head(dts, cts) + _AUD_START, payload, 9, dts, False)
                        continue
                    data = memoryview(payload)[5:]  # NAL units are sliced from it, copied once into ``es``
                else:  # Enhanced RTMP avc1, or a legacy AVC packet that holds no frame
                    frame = coded_frame(payload) if _is_h264(payload) else None
                    if frame is None:
                        continue
                    cts, data = frame
                es = avc.annexb(data, keyframe, _AUD, _OWN_AUD)
                write_pes(VIDEO_PID, _video_pes_head(dts, cts), es, 0, dts, keyframe)
            elif kind == AUDIO:
                if aac is None or len(payload) < 3 or payload[0] >> 4 != 10 or payload[1] != 1:
                    continue
                size = len(payload) - 2
                pts = packet.timestamp * 90
                if not audio:
                    self._audio_pts = pts
                audio.append(aac.adts(size))
                audio.append(payload[2:])
                self._audio_size += size + 7
                if pts - self._audio_pts >= self.audio_delay or self._audio_size >= MAX_AUDIO_PES:
                    self._flush_audio()
                    audio = self._audio

    def _flush_audio(self) -> None:
        if not self._audio:
            return
        es = b"".join(self._audio)
        self._audio = []
        self._audio_size = 0
        pts = self._audio_pts
        size = 8 + len(es)
        head = b"\x00\x00\x01\xc0" + size.to_bytes(2, "big") + b"\x80\x80\x05" + _pts_bytes(2, pts)
        self._write_pes(AUDIO_PID, head, es, 0, pts, not self.has_video)

    def _write_pes(
        self, pid: int, head: bytes, es: bytes | memoryview, pos: int, dts: int, random_access: bool
    ) -> None:
        """Write one PES, ``head`` then ``es`` from ``pos`` on, as TS packets."""
        cc = self._cc[pid]
        pid_hi, pid_lo = pid >> 8, pid & 0xFF
        end = len(es)
        total = len(head) + end - pos
        # First packet: PUSI, with an adaptation field carrying the PCR on the PCR stream.
        if pid == self.pcr_pid:
            pcr = dts - 300 * 90 if dts >= 300 * 90 else 0  # PCR a little before DTS gives decoders slack
            first = bytes(
                (
                    0x47, 0x40 | pid_hi, pid_lo, 0x30 | cc, 7,
                    0x50 if random_access else 0x10,
                    (pcr >> 25) & 0xFF, (pcr >> 17) & 0xFF, (pcr >> 9) & 0xFF, (pcr >> 1) & 0xFF,
                    ((pcr & 1) << 7) | 0x7E, 0x00,
                )
            )  # fmt: skip
        elif random_access:
            first = bytes((0x47, 0x40 | pid_hi, pid_lo, 0x30 | cc, 1, 0x40))
        else:
            first = bytes((0x47, 0x40 | pid_hi, pid_lo, 0x10 | cc))
        room = TS_SIZE - len(first)
        if total < room:  # the whole PES fits in one packet: stuff its adaptation field
            stuffing = _stuffed(first[5:], PAYLOAD - 1 - total)
            first = bytes((0x47, 0x40 | pid_hi, pid_lo, 0x30 | cc, len(stuffing))) + stuffing + head + es[pos:]
            count = last = 0
            pos = end
        else:
            cut = pos + room - len(head)
            first = first + head + es[pos:cut]
            pos = cut
            count = (end - pos) // PAYLOAD
            last = end - pos - count * PAYLOAD
        row = self._reserve(1 + count + (1 if last else 0))
        flat = self._flat
        flat[row * TS_SIZE : (row + 1) * TS_SIZE] = first
        row += 1
        cc = (cc + 1) & 0x0F
        if count:
            # The full packets in one go: payload rows copied in, headers from a table cycling the counter.
            rows = self._rows[row : row + count]
            rows[:, 4:] = np.frombuffer(es, np.uint8, count * PAYLOAD, pos).reshape(count, PAYLOAD)
            rows[:, :4] = _HEAD_TABLES[pid][cc : cc + count] if count <= _HEAD_ROWS else _heads(pid, cc, count)
            row += count
            pos += count * PAYLOAD
            cc = (cc + count) & 0x0F
        if last:
            stuffing = _STUFFING[PAYLOAD - 1 - last]
            flat[row * TS_SIZE : (row + 1) * TS_SIZE] = (
                bytes((0x47, pid_hi, pid_lo, 0x30 | cc, len(stuffing))) + stuffing + es[pos:]
            )
            cc = (cc + 1) & 0x0F
        self._cc[pid] = cc


def _video_pes_head(dts: int, cts: int) -> bytes:
    """A video PES header (unbounded length) with PTS, and DTS when they differ."""
    if cts:
        return b"\x00\x00\x01\xe0\x00\x00\x80\xc0\x0a" + _pts_bytes(3, dts + cts * 90) + _pts_bytes(1, dts)
    return b"\x00\x00\x01\xe0\x00\x00\x80\x80\x05" + _pts_bytes(2, dts)


_HEAD_ROWS = 1024  # full packets per PES taken from the cached header table; longer PES build theirs


def _heads(pid: int, cc: int, count: int) -> np.ndarray:
    """The 4-byte headers of ``count`` full packets of ``pid`` (no PUSI, payload only) from counter ``cc``."""
    heads = np.empty((count, 4), np.uint8)
    heads[:, 0] = 0x47
    heads[:, 1] = pid >> 8
    heads[:, 2] = pid & 0xFF
    heads[:, 3] = 0x10 | ((cc + np.arange(count)) & 0x0F)
    return heads


def _stuffed(adaptation: bytes, length: int) -> bytes:
    """An adaptation field body of exactly ``length`` bytes (flags byte, fields, 0xFF stuffing)."""
    if length <= 0:
        return b""
    if not adaptation:
        adaptation = b"\x00"
    return adaptation + b"\xff" * (length - len(adaptation))


_HEAD_TABLES = {pid: _heads(pid, 0, _HEAD_ROWS + 16) for pid in (VIDEO_PID, AUDIO_PID)}
_STUFFING = [_stuffed(b"", length) for length in range(PAYLOAD)]  # a PES's last packet's adaptation field


def _is_h264(payload: bytes) -> bool:
    if len(payload) < 5:
        return False
    return payload[1:5] == b"avc1" if payload[0] & 0x80 else payload[0] & 0x0F == 7
