"""The RTMP protocol, sans-I/O: handshake, AMF0/AMF3, command messages and the connection state machine.
May import: relay.formats (the chunk stream codec); nothing else of ours, no sockets.
Fed bytes, it returns events and bytes to send; the server and the test client (client.py) both drive it.
"""
