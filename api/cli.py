"""The ``minilive`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from api import config


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the media server and API")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--rtmp-port", type=int, help="RTMP port (default 1935)")
    p.add_argument(
        "--http-port", type=int, help="HTTP port for HTTP-FLV, WS-FLV, HLS and the API (default 8080)"
    )
    p.add_argument("--data-dir", type=Path, help="where the database and recordings live (default ./data)")
    p.add_argument("--public-url", help="base URL written into push/play/replay URLs")
    p.add_argument("--redis", metavar="URL", help="share state through Redis (cluster mode)")
    p.add_argument("--config", type=Path, help="TOML settings file; flags override it")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--allow-anonymous-publish",
        action="store_true",
        default=None,
        help="development mode: any stream under app 'live' may publish without a room",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="minilive", description="self-hosted live streaming for mini-programs"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    overrides = {
        key: getattr(args, key)
        for key in (
            "host",
            "rtmp_port",
            "http_port",
            "data_dir",
            "public_url",
            "redis",
            "log_level",
            "allow_anonymous_publish",
        )
    }
    try:
        settings = config.load(args.config, overrides)
    except config.ConfigError as exc:
        print(f"minilive: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    from api.server import Server

    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        runner(Server(settings).run_forever())
    except OSError as exc:
        print(
            f"minilive: cannot start: {exc} (is another server using the port? try --rtmp-port/--http-port)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
