"""The ``[cluster]`` section: how this node finds the others and lets them pull from it."""

from __future__ import annotations

from dataclasses import dataclass

REGISTRY_DOWN = ("refuse", "local")


@dataclass(slots=True)
class ClusterSettings:
    # The credential nodes present to each other's cluster listener. Empty: one is shared through
    # the registry (Redis) or given by the supervisor (--workers), so that nodes need no setup.
    secret: str = ""
    # The cluster listener: what other nodes pull streams and HLS from. Empty host: 127.0.0.1 for
    # the workers of one box, the server's --host across boxes. Port 0: any free port; with
    # --workers N, worker i listens on port + i.
    listen_host: str = ""
    port: int = 0
    # How other nodes reach the cluster listener (a name or address); empty: 127.0.0.1 for the
    # workers of one box, and across boxes this machine's address on its way to Redis.
    advertise_host: str = ""
    # A chained edge: pull every stream from this node's cluster listener (http://HOST:PORT)
    # instead of from the stream's origin, as an SRS edge or a CDN's second tier does.
    origin: str = ""
    heartbeat_seconds: float = 1.0
    # A node silent this long is dead: its streams are free to publish elsewhere.
    ttl_seconds: float = 6.0
    # An edge keeps pulling a stream this long after its last viewer left.
    linger_seconds: float = 10.0
    # When the registry (Redis) cannot be reached: "refuse" new publishes (a stream must never be
    # live on two nodes at once) or accept them here, "local", and register them when it is back.
    on_registry_down: str = "refuse"

    def validate(self) -> None:
        if self.on_registry_down not in REGISTRY_DOWN:
            raise ValueError(f"[cluster] on_registry_down must be refuse or local, not {self.on_registry_down!r}")
        if not 0 < self.heartbeat_seconds < self.ttl_seconds <= 10:
            raise ValueError("[cluster] needs 0 < heartbeat_seconds < ttl_seconds <= 10")
        if self.origin and not self.origin.startswith(("http://", "https://")):
            raise ValueError(
                f"[cluster] origin must be a node's cluster listener URL (http://HOST:PORT), not {self.origin!r}"
            )
