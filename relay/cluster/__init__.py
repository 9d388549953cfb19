"""Many processes and many nodes as one server: the stream registry, origin/edge pull, HLS through the origin.
May import: relay.hub, relay.formats, relay.http, aiohttp, redis; never api, ingest, signaling or recorder.
"""
