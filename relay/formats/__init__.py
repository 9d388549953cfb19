"""Wire formats, sans-I/O: FLV tags, RTMP chunks, codec headers (H.264, HEVC, VP8, AAC), MPEG-TS, fMP4, HLS.
May import: nothing of ours outside relay.formats (no hub, no aiohttp); plain objects fed bytes and packets.
The media packet that travels through the hub (relay.formats.packet) is defined here, with its encodings.
"""
