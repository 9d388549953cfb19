"""The hub: live streams by name, their publishers, viewers and sinks, timelines, GOP caches, fan-out.
May import: relay.formats (packets, output formats); never aiohttp, a protocol or another package of ours.
Outside relay.hub, use only the names below; nothing else in it is an interface.
"""

from relay.hub.access import AccessRequest, Authorizer, Decision, allow_all, decide
from relay.hub.hub import Hub, Provider, RemoteProvider, StreamBusy, StreamEvent, StreamRefused
from relay.hub.publisher import PublisherInfo, PublishSession
from relay.hub.settings import RelaySettings
from relay.hub.sink import Sink
from relay.hub.stream import Subscription
from relay.hub.viewer import Viewer

__all__ = [
    "AccessRequest",
    "Authorizer",
    "Decision",
    "Hub",
    "Provider",
    "PublishSession",
    "PublisherInfo",
    "RelaySettings",
    "RemoteProvider",
    "Sink",
    "StreamBusy",
    "StreamEvent",
    "StreamRefused",
    "Subscription",
    "Viewer",
    "allow_all",
    "decide",
]
