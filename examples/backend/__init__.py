"""The sample back end of examples/miniprogram: WeChat login (code2session, mocked where WeChat cannot be
reached), viewer tokens for the room channel, the anchor's push URL, play URLs and replays, all through
minilive's public HTTP API with the app's access token. Run it with ``python -m examples.backend``."""

from examples.backend.app import create_app
from examples.backend.config import Config

__all__ = ["Config", "create_app"]
