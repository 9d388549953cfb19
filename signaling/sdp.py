"""Checking a WHIP/WHEP offer and narrowing it to one video codec and Opus: H.264 (packetization-mode 1),
which every player takes as it is, or where the endpoint takes it and the offer has no H.264, VP8 (WHIP:
the transcoder makes its H.264 rendition). Anything else is refused with a reason, never half-accepted."""

from __future__ import annotations

from aiortc import sdp

MAX_OFFER_BYTES = 64 * 1024
# How each video codec an endpoint may take is named in an offer and in a refusal.
_VIDEO_NAMES = {"h264": "H.264 (packetization-mode=1)", "vp8": "VP8"}


class OfferError(Exception):
    """An offer that cannot be answered; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _wanted(wanted: str, codec) -> bool:  # type: ignore[no-untyped-def]
    name = codec.name.lower()
    if wanted == "h264":
        return name == "h264" and str(codec.parameters.get("packetization-mode", "0")) == "1"
    return name == wanted


def narrow_offer(text: str, video_codecs: tuple[str, ...] = ("h264",)) -> str:
    """The offer with Opus and the first of ``video_codecs`` that it offers (their order is the
    preference), every other codec removed but their RTX; raises OfferError."""
    if len(text) > MAX_OFFER_BYTES:
        raise OfferError(413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
    if not text.startswith("v=0"):
        raise OfferError(400, "body is not an SDP offer (it must start with v=0)")
    try:
        description = sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser fails in many ways on hostile input
        raise OfferError(400, f"malformed SDP offer: {exc}") from None
    media_kinds = [m.kind for m in description.media if m.kind in ("audio", "video")]
    if not media_kinds:
        raise OfferError(400, "SDP offer has no audio or video m-line")
    # aiortc trusts these: a mid named twice, or a BUNDLE naming a mid no m-line it takes has (an unknown
    # kind's m-line is skipped), left a transceiver without a transport, and answering (then closing)
    # raised AttributeError (found by bench/netfuzz.py).
    mids = [m.rtp.muxId for m in description.media if m.rtp.muxId and m.kind in ("audio", "video", "application")]
    if len(set(mids)) != len(mids):
        raise OfferError(400, "SDP offer names one mid on two m-lines")
    for group in description.group:
        unknown = [str(item) for item in group.items if str(item) not in mids]
        if unknown:
            raise OfferError(400, f"SDP offer's {group.semantic} group names mids no m-line has: {' '.join(unknown)}")
    for media in description.media:
        if media.kind not in ("audio", "video"):
            continue
        if not (media.ice.usernameFragment and media.ice.password) or media.dtls is None:
            raise OfferError(400, f"SDP offer's {media.kind} m-line lacks ICE credentials or a DTLS fingerprint")
        choices = video_codecs if media.kind == "video" else ("opus",)
        kept = []
        for choice in choices:
            kept = [c for c in media.rtp.codecs if _wanted(choice, c)]
            if kept:
                break
        if not kept:
            offered = ", ".join(sorted({c.name for c in media.rtp.codecs})) or "none"
            wanted = " or ".join(_VIDEO_NAMES[c] for c in choices) if media.kind == "video" else "Opus"
            raise OfferError(406, f"{media.kind} codecs offered ({offered}) are not supported: use {wanted}")
        payload_types = {c.payloadType for c in kept}
        kept += [c for c in media.rtp.codecs if c.name.lower() == "rtx" and c.parameters.get("apt") in payload_types]
        media.rtp.codecs = kept
        media.fmt = [c.payloadType for c in kept]
    try:
        return str(description)
    # aiortc's parser keeps values its writer refuses (malformed addresses, a=rtcp with a host name).
    except ValueError as exc:
        raise OfferError(400, f"malformed SDP offer: {exc}") from None
