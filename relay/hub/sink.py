"""What the hub feeds besides viewers: HLS packaging, recording, WebRTC feeds, transcoders."""

from __future__ import annotations

from typing import Protocol

from relay.formats.packet import Packet


class Sink(Protocol):
    """Consumes a stream's packets in order, as the publisher sends them (not on the viewers' merge
    window). A sink that raises is detached and told through :meth:`failed`; viewers never notice."""

    def feed(self, packet: Packet) -> None: ...

    def new_publisher(self) -> None:
        """The packets that follow come from another publisher (another encoder, same timeline)."""
        ...

    def end(self) -> None:
        """The stream ended."""
        ...

    def failed(self, error: Exception) -> None:
        """The hub detached this sink because one of its calls raised ``error``."""
        ...
