"""WebRTC signaling and sessions: WHIP ingest and WHEP playback over aiortc (SDP, ICE, session lifetimes).
May import: relay (the hub's public names, relay.formats, relay.transcode), aiortc, aiohttp.
Media conversion lives in relay.formats (H.264 framing) and relay.transcode (Opus/AAC); this package connects peers.
"""
