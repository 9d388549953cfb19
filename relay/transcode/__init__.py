"""Media work that decodes and encodes, with PyAV, off the event loop: audio between Opus and AAC.
May import: relay.formats, relay.hub, av.
Callers run these blocking objects on executors; nothing here touches a socket.
"""
