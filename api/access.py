"""Who may publish and play: the policy that ``api`` injects into every ingest and output."""

from __future__ import annotations

from relay.access import AccessRequest, Decision

ANONYMOUS_APP = "live"


class AccessPolicy:
    def __init__(self, allow_anonymous_publish: bool) -> None:
        self.allow_anonymous_publish = allow_anonymous_publish

    async def publish(self, request: AccessRequest) -> Decision:
        if self.allow_anonymous_publish:
            if request.app == ANONYMOUS_APP:
                return Decision.allow()
            return Decision.deny(
                f"anonymous publishing is only allowed under app '{ANONYMOUS_APP}', "
                f"not '{request.app}': push to rtmp://HOST/{ANONYMOUS_APP}/STREAM"
            )
        return Decision.deny(
            "publishing needs a room's signed push URL and no room matches this stream; "
            "for development, start the server with --allow-anonymous-publish"
        )

    async def play(self, request: AccessRequest) -> Decision:
        return Decision.allow()
