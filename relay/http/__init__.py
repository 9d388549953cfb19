"""Playback over HTTP: HTTP-FLV and WebSocket-FLV, live HLS / LL-HLS, the lean HTTP/1.1 path, CORS.
May import: relay.hub, relay.formats, aiohttp.
Each front end subscribes to the hub as a viewer (FLV) or a sink (HLS), asking the injected authorizer first.
"""
