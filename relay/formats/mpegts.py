"""MPEG-TS muxer (sans-I/O): FLV H.264/AAC packets in, 188-byte transport stream packets out.

One muxer per output (a live HLS rendition, a recording) keeps its continuity counters across
segments, as RFC 8216 wants; :meth:`TsMuxer.part` muxes one part or segment, and an independent one
(every segment's first) starts with PAT + PMT and a keyframe. H.264 access units are rewritten from
AVCC to Annex-B with an AUD, and SPS/PPS before every IDR; AAC frames get ADTS headers built from the
AudioSpecificConfig. Timestamps are the stream's milliseconds on the 90 kHz clock.

:meth:`TsMuxer.part` runs in C (``relay/formats/_tsmux.c``) where that is built; the Python here is its
reference (tests check both give the same bytes) and the fallback where no C compiler is at hand.
"""

from __future__ import annotations

import logging

import numpy as np

from relay.formats.aac import MAX_ADTS_FRAME, AacConfig
from relay.formats.codecs import coded_frame
from relay.formats.h264 import AvcConfig
from relay.formats.packet import AUDIO, VIDEO, Packet

log = logging.getLogger("minilive.mpegts")

# The C way of TsMuxer.part() (relay/formats/_tsmux.c), built by `pip install -e .` where a C compiler is at
# hand; without it (or when its build is older than its source), this module's Python way does the
# same work, to the byte, with more CPU.
_TSMUX_VERSION = 3
try:
    from relay.formats import _tsmux
except ImportError:
    _tsmux = None
    log.info("relay.formats._tsmux is not built: TS muxing takes the Python way (a C compiler: scripts/dev setup)")
else:
    if getattr(_tsmux, "VERSION", None) != _TSMUX_VERSION:
        log.warning("relay.formats._tsmux is an old build: TS muxing takes the Python way (rebuild: scripts/dev setup)")
        _tsmux = None

TS_SIZE = 188
PAYLOAD = 184
PMT_PID = 0x1000
VIDEO_PID = 0x100
AUDIO_PID = 0x101
STREAM_TYPE_H264 = 0x1B
STREAM_TYPE_AAC = 0x0F

_AUD = b"\x00\x00\x00\x01\x09\xf0"
_OWN_AUD = frozenset((9,))  # the publisher's AUDs are dropped: ours leads every access unit


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


def _stamp(marker: int, value: int) -> int:
    """A PTS or DTS field (33 bits with marker bits, 5 bytes) as an integer."""
    value &= (1 << 33) - 1
    high, middle, low = value >> 30, value >> 15 & 0x7FFF, value & 0x7FFF
    return marker << 36 | high << 33 | 1 << 32 | middle << 17 | 1 << 16 | low << 1 | 1


def _pts_bytes(marker: int, value: int) -> bytes:
    return _stamp(marker, value).to_bytes(5, "big")


# AAC frames are gathered into one PES for up to this long (nginx-rtmp's hls_max_audio_delay is
# 300 ms): a third of the PES and TS headers, and of the muxing work, for audio.
AUDIO_DELAY_MS = 300
MAX_AUDIO_PES = 60000


# A TS packet as numpy sees it: the 4-byte header, then the body as one opaque item, so that
# interleaving headers and bodies is a copy of whole items rather than of bytes.
_HEAD = np.dtype("u4")
_BODY = np.dtype(f"V{PAYLOAD}")
_PACKET = np.dtype([("head", _HEAD), ("body", _BODY)])


class TsMuxer:
    """A call lays out its TS packets as two streams: the packets' 4-byte headers, and their 184-byte
    bodies (adaptation field, then payload), the media as views of the publisher's frames. When the
    call returns, each stream is joined once and the two are interleaved into ``count x 188`` rows by
    one strided copy, so the work per frame is a few list appends, whatever its size. Continuity
    counters run on across calls."""

    def __init__(self, has_video: bool = True, has_audio: bool = True, audio_delay_ms: int = AUDIO_DELAY_MS) -> None:
        self.has_video = has_video
        self.has_audio = has_audio
        self.audio_delay = audio_delay_ms * 90
        self._audio: list[bytes] = []  # gathered AAC frames: ADTS header, raw frame, ...
        self._audio_pts = 0
        self._audio_size = 0
        self.avc: AvcConfig | None = None
        self.aac: AacConfig | None = None
        self._cc: dict[int, int] = {0: 0, PMT_PID: 0, VIDEO_PID: 0, AUDIO_PID: 0}
        self.pcr_pid = VIDEO_PID if has_video else AUDIO_PID
        self._tables: tuple[bytes, bytes] | None = None  # PAT and PMT sections
        self._heads: list[bytes] = []  # this call's packet headers, 4 bytes each
        self._bodies: list[bytes | memoryview] = []  # and their bodies, 184 bytes each once joined
        self._n = 0  # packets in this call

    def continue_from(self, previous: TsMuxer) -> None:
        """Go on with ``previous``'s continuity counters (a new muxer for new codec parameters)."""
        self._cc.update(previous._cc)

    def configure(self, packet: Packet) -> None:
        """Take a sequence header (FLV AVC or AAC config packet)."""
        if packet.kind == VIDEO:
            self.avc = AvcConfig.parse(packet.payload)
        elif packet.kind == AUDIO:
            self.aac = AacConfig.parse(packet.payload)

    def part(self, packets: list[Packet], end_ts: int, independent: bool) -> bytes | memoryview:
        """One part or segment: PAT and PMT first when ``independent``, the frames, the audio gathered.
        The C way returns ``bytes``; the Python way a read-only view of memory of its own (not copied
        once more into a ``bytes``)."""
        if _tsmux is not None and not self._audio and not self._n:
            data = self._part_in_c(packets, independent)
            if data is not None:
                return data
        if independent:
            self._write_tables()
        self._mux(packets)
        self._flush_audio()
        packets_out = np.empty(self._n, _PACKET)
        self._interleave(packets_out)
        return memoryview(packets_out.view(np.uint8)).toreadonly()

    def _part_in_c(self, packets: list[Packet], independent: bool) -> bytes | None:
        """:meth:`part` by relay.formats._tsmux; None, having written nothing, for what it leaves to Python."""
        if self._tables is None:
            self._tables = self._build_tables()
        cc = self._cc
        counters = bytearray((cc[0], cc[PMT_PID], cc[VIDEO_PID], cc[AUDIO_PID]))
        avc, aac = self.avc, self.aac
        data = _tsmux.mux_part(  # type: ignore[union-attr]
            packets,
            self._tables[0] + self._tables[1] if independent else None,
            counters,
            avc.parameter_sets if avc is not None else None,
            avc.length_size if avc is not None else 4,
            bytes((aac.profile, aac.rate_index, aac.channels)) if aac is not None else None,
            self.pcr_pid,
            self.audio_delay,
            not self.has_video,
        )
        if data is not None:
            cc[0], cc[PMT_PID], cc[VIDEO_PID], cc[AUDIO_PID] = counters
        return data

    def _interleave(self, packets: np.ndarray) -> None:
        """Fill ``packets`` with this call's packets; the next call starts empty."""
        if self._n:
            packets["body"] = np.frombuffer(b"".join(self._bodies), _BODY)
            packets["head"] = np.frombuffer(b"".join(self._heads), _HEAD)
        self._heads = []
        self._bodies = []
        self._n = 0

    # ------------------------------------------------------------ program tables

    def _write_tables(self) -> None:
        if self._tables is None:
            self._tables = self._build_tables()
        for pid, section in zip((0, PMT_PID), self._tables, strict=True):
            cc = self._cc[pid]
            self._cc[pid] = (cc + 1) & 0x0F
            self._heads.append(bytes((0x47, 0x40 | (pid >> 8), pid & 0xFF, 0x10 | cc)))
            self._bodies.append(section)
        self._n += 2

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
        bodies = self._bodies
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
                    data = memoryview(payload)[5:]
                else:  # Enhanced RTMP avc1, or a legacy AVC packet that holds no frame
                    frame = coded_frame(payload) if _is_h264(payload) else None
                    if frame is None:
                        continue
                    cts, data = frame
                # The PES: its adaptation field (set when its size is known), header, access unit.
                mark = len(bodies)
                bodies.append(b"")
                head = _video_pes_head(dts, cts)
                bodies.append(head)
                size = avc.annexb_pieces(data, keyframe, _AUD, _OWN_AUD, bodies)
                self._write_pes(VIDEO_PID, mark, len(head) + size, dts, keyframe)
            elif kind == AUDIO:
                if aac is None or len(payload) < 3 or payload[0] >> 4 != 10 or payload[1] != 1:
                    continue
                size = len(payload) - 2
                if size > MAX_ADTS_FRAME:  # no AAC frame, and no ADTS header can say its length
                    continue
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
        pts = self._audio_pts
        size = self._audio_size
        head = b"\x00\x00\x01\xc0" + (8 + size).to_bytes(2, "big") + b"\x80\x80\x05" + _pts_bytes(2, pts)
        bodies = self._bodies
        mark = len(bodies)
        bodies.append(b"")
        bodies.append(head)
        bodies += self._audio
        self._audio = []
        self._audio_size = 0
        self._write_pes(AUDIO_PID, mark, len(head) + size, pts, not self.has_video)

    def _write_pes(self, pid: int, mark: int, total: int, dts: int, random_access: bool) -> None:
        """Packetize the PES of ``total`` bytes whose body pieces start at ``self._bodies[mark]``
        (a placeholder for the first packet's adaptation field, then the PES header, then the data)."""
        cc = self._cc[pid]
        heads, bodies = self._heads, self._bodies
        # First packet: PUSI, with an adaptation field carrying the PCR on the PCR stream.
        if pid == self.pcr_pid:
            adaptation = _pcr_adaptation(dts, random_access)[1:]
        elif random_access:
            adaptation = b"\x40"
        else:
            adaptation = b""
        room = PAYLOAD - 1 - len(adaptation) if adaptation else PAYLOAD
        if total < room:  # the whole PES fits in one packet: stuff its adaptation field
            stuffing = _stuffed(adaptation, PAYLOAD - 1 - total)
            heads.append(_FIRST_WITH_ADAPTATION[pid][cc])
            bodies[mark] = bytes((len(stuffing),)) + stuffing
            count = 1
        else:
            if adaptation:
                heads.append(_FIRST_WITH_ADAPTATION[pid][cc])
                bodies[mark] = bytes((len(adaptation),)) + adaptation
            else:
                heads.append(bytes((0x47, 0x40 | pid >> 8, pid & 0xFF, 0x10 | cc)))
            full, last = divmod(total - room, PAYLOAD)
            if full:
                heads.append(_full_heads(pid, cc + 1, full))
            count = 1 + full
            if last:
                # The last packet is stuffed: its adaptation field goes before the PES's last bytes.
                heads.append(_LAST_WITH_ADAPTATION[pid][(cc + count) & 0x0F])
                _insert_before_end(bodies, last, _LAST_ADAPTATION[last])
                count += 1
        self._cc[pid] = (cc + count) & 0x0F
        self._n += count


def _video_pes_head(dts: int, cts: int) -> bytes:
    """A video PES header (unbounded length) with PTS, and DTS when they differ."""
    if cts:
        return (_PES_PTS_DTS | _stamp(3, dts + cts * 90) << 40 | _stamp(1, dts)).to_bytes(19, "big")
    return (_PES_PTS | _stamp(2, dts)).to_bytes(14, "big")


_PES_PTS = int.from_bytes(b"\x00\x00\x01\xe0\x00\x00\x80\x80\x05", "big") << 40
_PES_PTS_DTS = int.from_bytes(b"\x00\x00\x01\xe0\x00\x00\x80\xc0\x0a", "big") << 80


def _pcr_adaptation(dts: int, random_access: bool) -> bytes:
    """The adaptation field (length byte included) of a PES's first packet on the PCR stream."""
    pcr = dts - 300 * 90 if dts >= 300 * 90 else 0  # PCR a little before DTS gives decoders slack
    flags = 0x50 if random_access else 0x10
    field = 7 << 56 | flags << 48 | (pcr >> 1 & 0xFFFFFFFF) << 16 | ((pcr & 1) << 7 | 0x7E) << 8
    return field.to_bytes(8, "big")


def _insert_before_end(pieces: list[bytes | memoryview], tail: int, insert: bytes) -> None:
    """Put ``insert`` before the last ``tail`` bytes of ``pieces`` (splitting a piece as a view)."""
    index = len(pieces) - 1
    while len(pieces[index]) < tail:
        tail -= len(pieces[index])
        index -= 1
    piece = pieces[index]
    size = len(piece)
    if size == tail:
        pieces.insert(index, insert)
        return
    view = memoryview(piece)
    pieces[index : index + 1] = [view[: size - tail], insert, view[size - tail :]]


_HEAD_ROWS = 4096  # full packets per PES whose headers are sliced from a table; longer PES build theirs


def _cycle(pid: int, rows: int) -> bytes:
    """The 4-byte headers of ``rows`` full packets of ``pid`` (no PUSI, payload only) from counter 0."""
    return b"".join(bytes((0x47, pid >> 8, pid & 0xFF, 0x10 | (cc & 0x0F))) for cc in range(rows))


def _full_heads(pid: int, cc: int, count: int) -> bytes:
    """The headers of ``count`` full packets of ``pid`` from counter ``cc`` (taken modulo 16)."""
    cc &= 0x0F
    table = _HEAD_TABLES[pid] if cc + count <= _HEAD_ROWS + 16 else _cycle(pid, cc + count)
    return table[4 * cc : 4 * (cc + count)]


def _stuffed(adaptation: bytes, length: int) -> bytes:
    """An adaptation field body of exactly ``length`` bytes (flags byte, fields, 0xFF stuffing)."""
    if length <= 0:
        return b""
    if not adaptation:
        adaptation = b"\x00"
    return adaptation + b"\xff" * (length - len(adaptation))


_HEAD_TABLES = {pid: _cycle(pid, _HEAD_ROWS + 16) for pid in (VIDEO_PID, AUDIO_PID)}
_FIRST_WITH_ADAPTATION = {
    pid: [bytes((0x47, 0x40 | pid >> 8, pid & 0xFF, 0x30 | cc)) for cc in range(16)] for pid in (VIDEO_PID, AUDIO_PID)
}
_LAST_WITH_ADAPTATION = {
    pid: [bytes((0x47, pid >> 8, pid & 0xFF, 0x30 | cc)) for cc in range(16)] for pid in (VIDEO_PID, AUDIO_PID)
}
# The adaptation field of a PES's last packet, by the payload bytes left for that packet.
_LAST_ADAPTATION = [bytes((PAYLOAD - 1 - last,)) + _stuffed(b"", PAYLOAD - 1 - last) for last in range(PAYLOAD)]


def _is_h264(payload: bytes) -> bool:
    if len(payload) < 5:
        return False
    return payload[1:5] == b"avc1" if payload[0] & 0x80 else payload[0] & 0x0F == 7
