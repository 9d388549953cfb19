"""The HTTP side that WHIP (RFC 9725) and WHEP share: an offer POSTed to /PROTOCOL/STREAM is
answered with 201, the SDP answer, the session's resource URL and an ETag; DELETE on that URL
ends the session; PATCH (trickle ICE, ICE restart) is not supported and says so (405), which the
RFC allows: answers carry every candidate, so clients need not trickle."""

from __future__ import annotations

import logging

from aiohttp import web

from relay.http.cors import CORS
from signaling.sdp import MAX_OFFER_BYTES, OfferError, narrow_offer
from signaling.sessions import Registry, Session

log = logging.getLogger("minilive.webrtc")


def error(status: int, reason: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n", headers={**CORS, **headers})


def bearer_query(request: web.Request) -> str:
    """The signed key's query: from the URL, and from ``Authorization: Bearer`` holding either the
    push URL's query (``txSecret=..&txTime=..``) or the whole stream key (``STREAM?txSecret=..``)."""
    parts = [request.query_string] if request.query_string else []
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
        token = token.split("?", 1)[1] if "?" in token else token
        if "=" in token:
            parts.append(token)
    return "&".join(parts)


class Endpoint:
    protocol = ""
    # What video the endpoint takes, in order of preference (see signaling.sdp.narrow_offer).
    video_codecs: tuple[str, ...] = ("h264",)

    def __init__(self, registry: Registry, app: str) -> None:
        self.registry = registry
        self.app = app

    def routes(self) -> list[web.RouteDef]:
        base = f"/{self.protocol}/{{name}}"
        return [
            web.post(base, self.post),
            web.delete(base + "/{session}", self.delete),
            web.patch(base + "/{session}", self.patch),
        ]

    async def open(self, request: web.Request, name: str) -> Session:
        """Authorize and create the session, or raise the HTTP error that says why not."""
        raise NotImplementedError

    async def post(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.content_type != "application/sdp":
            return error(415, f"{self.protocol.upper()} offers are POSTed as Content-Type: application/sdp")
        if (request.content_length or 0) > MAX_OFFER_BYTES:
            return error(413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
        remote = request.remote or ""
        refusal = self.registry.admit(remote)
        if refusal is not None:
            status, reason = refusal
            log.info("%s offer for %s/%s from %s refused: %s", self.protocol, self.app, name, remote, reason)
            return error(status, reason, **{"Retry-After": "5"})
        opened: tuple[Session, str] | web.Response | None = None
        try:
            opened = await self._open(request, name)
        finally:
            if not isinstance(opened, tuple):  # refused (or the client left): the offer no longer counts
                self.registry.withdraw(remote)
        if not isinstance(opened, tuple):
            assert opened is not None
            return opened
        session, offer = opened
        self.registry.add(session)
        try:
            answer = await session.answer(offer)  # type: ignore[attr-defined]
        except Exception as exc:  # aiortc refuses what it cannot negotiate with plain exceptions
            await session.close(f"offer refused: {exc}")
            return error(406 if "parameters" in str(exc) else 400, f"cannot answer this offer: {exc}")
        if session.closed:
            return error(409, f"session ended before it was answered: {session.close_reason}")
        log.info("%s start %s/%s from %s (session %s)", self.protocol, self.app, name, session.remote, session.id)
        headers = {
            **CORS,
            "Location": f"/{self.protocol}/{name}/{session.id}",
            "ETag": session.etag,
            "Cache-Control": "no-store",
        }
        links = [f'<{url}>; rel="ice-server"' for url in self.registry.settings.ice.servers]
        if links:
            headers["Link"] = ", ".join(links)
        return web.Response(status=201, body=answer.encode(), content_type="application/sdp", headers=headers)

    async def _open(self, request: web.Request, name: str) -> tuple[Session, str] | web.Response:
        """The session of an admitted offer (not answered yet) and the offer; or the error to answer."""
        try:
            offer = narrow_offer(await request.text(), self.video_codecs)
        except OfferError as exc:
            log.info("%s offer for %s/%s from %s refused: %s", self.protocol, self.app, name, request.remote, exc)
            return error(exc.status, exc.reason)
        except UnicodeDecodeError:
            return error(400, "SDP offer is not UTF-8 text")
        try:
            return await self.open(request, name), offer
        except web.HTTPException as exc:
            return error(exc.status, exc.text.strip() if exc.text else exc.reason, **dict(exc.headers))

    def _session(self, request: web.Request) -> Session | None:
        return self.registry.find(self.protocol, request.match_info["name"], request.match_info["session"])

    async def _elsewhere(self, request: web.Request) -> web.StreamResponse:
        """A session this process does not hold: the answer of the one that does (a cluster), or 404."""
        if self.registry.locator is not None:
            response = await self.registry.locator.forward(request)
            if response is not None:
                return response
        raise web.HTTPNotFound(text="no such session\n", headers=CORS)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            return await self._elsewhere(request)
        await session.close("ended by the client (DELETE)")
        return web.Response(status=200, headers=CORS)

    async def patch(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is None:
            return await self._elsewhere(request)
        return error(
            405,
            "trickle ICE and ICE restarts are not supported: the answer holds every candidate; "
            "gather yours before POSTing the offer, and start a new session to restart",
            Allow="DELETE, OPTIONS",
        )
