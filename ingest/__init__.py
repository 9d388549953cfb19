"""Ingest: the RTMP(S) server that anchors push to (live-pusher, OBS, ffmpeg), and the RTMP protocol core.
May import: relay (the hub's public names, relay.formats for chunks and packets); never api or signaling.
ingest.rtmp is sans-I/O (handshake, AMF, messages, the connection state machine); ingest.server is the asyncio shell.
"""
