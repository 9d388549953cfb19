"""Recording: every live session cut into segments on disk as it happens, finalized into a replay (VOD
HLS, MP4, cover); crash recovery and retention. May import: relay (the hub's public names, relay.formats).
A recording is a hub sink; the api decides what to record and when a replay is done.
"""
