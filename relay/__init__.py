"""The stream hub and everything it serves: relay.hub (streams, fan-out), relay.formats (wire formats),
relay.http (HTTP playback), relay.transcode (PyAV media work).
May import: nothing of ours outside relay (ingest, signaling, recorder and api import relay, never the reverse).
"""
