"""Receiving H.264 and VP8 from aiortc without decoding them.

aiortc's RTCRtpReceiver reassembles each frame in its jitter buffer (depacketized: for H.264 into
Annex-B NAL units, for VP8 into the frame without its payload descriptors) and hands it, in a thread,
to the decoder that ``get_decoder(codec)`` returns;
the track then yields whatever that decoder returned. There is no option to skip decoding, so
``get_decoder`` is wrapped: for codecs marked by :func:`pass_through` it returns a decoder that
hands the encoded frame on as it is. Every other codec, and every other peer connection in the
process, decodes as before.
"""

from __future__ import annotations

from aiortc import RTCRtpTransceiver, rtcrtpreceiver
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame

_MARK = "_minilive_passthrough"
_stock_get_decoder = rtcrtpreceiver.get_decoder


class _PassThrough(Decoder):
    def decode(self, encoded_frame: JitterFrame) -> list[JitterFrame]:  # type: ignore[override]
        return [encoded_frame]


def _get_decoder(codec):  # type: ignore[no-untyped-def]
    if getattr(codec, _MARK, False):
        return _PassThrough()
    return _stock_get_decoder(codec)


def pass_through(transceiver: RTCRtpTransceiver) -> str:
    """The transceiver's track yields encoded frames (``JitterFrame``: data, 90 kHz timestamp); returns
    the negotiated codec's name in lower case (``h264``, ``vp8``), or "" when none was.

    Call after ``setRemoteDescription``: the negotiated codecs are per-transceiver copies, the ones
    its receiver looks decoders up for when the first frame arrives.
    """
    negotiated = transceiver._codecs  # no public accessor for the negotiated receive codecs
    for codec in negotiated:
        setattr(codec, _MARK, True)
    return next((c.name.lower() for c in negotiated if c.name.lower() != "rtx"), "")


rtcrtpreceiver.get_decoder = _get_decoder
