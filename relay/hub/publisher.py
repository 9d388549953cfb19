"""A publisher's connection to a stream: its frames, placed on the stream's timeline, go in here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.formats.packet import AUDIO, VIDEO, Packet

if TYPE_CHECKING:
    from relay.hub.hub import Hub
    from relay.hub.stream import LiveStream


@dataclass(slots=True)
class PublisherInfo:
    protocol: str
    remote: str
    query: str = ""
    started_at: float = field(default_factory=time.time)
    # A stream the server makes from another (a rendition): its timestamps are on the source's
    # timeline already and are kept as they are, so that it lines up with the source.
    derived: bool = False
    # A pull of a stream that another node originates (relay.cluster): the stream goes on here for
    # this node's viewers, but its anchor, room status and recording belong to the origin. Stream
    # events say so (``relayed``), and a relayed publisher always takes over.
    relayed: bool = False


class PublishSession:
    """What :meth:`Hub.publish` returns: ``send`` frames, ``metadata``, ``close`` when done."""

    def __init__(self, hub: Hub, stream: LiveStream, info: PublisherInfo, on_kick: Callable[[str], None]):
        self._hub = hub
        self._stream = stream
        self.info = info
        self.on_kick = on_kick
        self.active = True
        self.started = time.monotonic()
        self.packets = 0
        self._offset: int | None = 0 if info.derived else None

    @property
    def app(self) -> str:
        return self._stream.app

    @property
    def name(self) -> str:
        return self._stream.name

    @property
    def wants_keyframe(self) -> bool:
        """Someone (a viewer, a sink) waits for a keyframe that the stream has not cached: a publisher
        that can be asked for one (WebRTC's PLI) should be."""
        stream = self._stream
        return bool(stream.viewer_count or stream.sinks) and not stream.gop.packets

    def send(self, kind: int, timestamp: int, payload: bytes) -> None:
        """One audio or video message from the publisher (FLV tag body, publisher's timestamp)."""
        if not self.active:
            return
        stream = self._stream
        if kind == VIDEO:
            keyframe, config = stream.tracks.video(payload)
        elif kind == AUDIO:
            keyframe, config = False, stream.tracks.audio(payload)
        else:
            return
        now = time.monotonic()
        timeline = stream.timeline
        if self._offset is None:
            self._offset = timeline.anchor(timestamp, now)
        out, shift = timeline.place(kind, timestamp + self._offset, now)
        self._offset += shift
        self.packets += 1
        stream.push(Packet(kind, out, payload, keyframe, config))

    def metadata(self, payload: bytes, values: dict[str, Any]) -> None:
        """``onMetaData`` (payload already stripped of ``@setDataFrame``)."""
        if self.active:
            self._stream.set_metadata(payload, values)

    def close(self, reason: str = "unpublish") -> None:
        if not self.active:
            return
        self.active = False
        self._hub._unpublished(self, self._stream, reason)

    def kick(self, reason: str) -> None:
        """Taken over or ended by the hub: no more frames are taken, and the connection is told."""
        self.active = False
        self.on_kick(reason)
