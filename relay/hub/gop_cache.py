"""The last group of pictures of a stream, so that a new viewer starts on a keyframe at once."""

from __future__ import annotations

from relay.formats.packet import VIDEO, Packet

# With no video there are no keyframes; every audio frame is a starting point, so keep a
# short tail (about a second of AAC) instead.
AUDIO_ONLY_TAIL = 48


class GopCache:
    """Packets from the last video keyframe on, bounded in bytes.

    A stream whose GOP outgrows the bound (no IDR for a long time) is not cached: a new
    viewer then waits for the next keyframe rather than the server holding the whole stream.
    """

    __slots__ = ("generation", "max_bytes", "packets", "size")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.packets: list[Packet] = []
        self.size = 0
        self.generation = 0

    def add(self, packet: Packet, has_video: bool) -> None:
        if packet.kind == VIDEO and packet.keyframe:
            self.packets = [packet]
            self.size = len(packet.payload)
            self.generation += 1
            return
        if not self.packets and has_video:
            return
        self.packets.append(packet)
        self.size += len(packet.payload)
        if self.size > self.max_bytes:
            self.clear()
        elif not has_video and len(self.packets) > 2 * AUDIO_ONLY_TAIL:
            del self.packets[:-AUDIO_ONLY_TAIL]
            self.size = sum(len(p.payload) for p in self.packets)
            self.generation += 1

    def clear(self) -> None:
        self.packets = []
        self.size = 0
        self.generation += 1
