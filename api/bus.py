"""The room bus: realtime room traffic (goods pushed, comments, likes, subscriptions) between the
services that make it and the room channel's members, on every node.

Services publish a room's message once; the channel (``api.channel``) subscribes and hands it to the
room's members connected here. Across processes and nodes it travels as a store message
(``RoomStore.publish_message``, topic ``room:{roomid}``), so it reaches every node in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from api.store.base import RoomStore, deliver

log = logging.getLogger("minilive.bus")

Message = dict[str, Any]
TOPIC_PREFIX = "room:"


class RoomBus:
    def __init__(self, store: RoomStore) -> None:
        self.store = store
        self._subscribers: list[Callable[[int, Message], None]] = []
        self._listening = False

    async def publish(self, roomid: int, message: Message) -> None:
        """Send ``message`` (a JSON object with a ``type``) to the room's members on every node."""
        await self.store.publish_message(f"{TOPIC_PREFIX}{roomid}", message)

    def subscribe(self, callback: Callable[[int, Message], None]) -> None:
        """Call ``callback(roomid, message)`` for every room message from now on, from any node."""
        if not self._listening:
            self.store.subscribe_messages(self._on_message)
            self._listening = True
        self._subscribers.append(callback)

    def _on_message(self, topic: str, message: Message) -> None:
        if not topic.startswith(TOPIC_PREFIX) or not topic[len(TOPIC_PREFIX) :].isdigit():
            return
        deliver(self._subscribers, int(topic[len(TOPIC_PREFIX) :]), message)
