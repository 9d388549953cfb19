"""``python -m examples.backend``: the sample back end, configured by the environment (README)."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from examples.backend.app import create_app
from examples.backend.config import Config, ConfigError


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = Config.from_env()
    except ConfigError as exc:
        sys.exit(f"examples.backend: {exc}")
    web.run_app(create_app(config), host=config.host, port=config.port)


if __name__ == "__main__":
    main()
