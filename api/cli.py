"""The ``minilive`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from api import config, supervisor
from api.apps import Apps
from api.console.sessions import admin_token
from api.errors import ApiError
from api.models import GOODS_AUDIT_MODES, App
from api.store import open_store

if TYPE_CHECKING:
    from api.server import Server


def _store_options() -> argparse.ArgumentParser:
    """The options that find the data: shared by ``serve`` and ``app``, so both see the same store."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-dir", type=Path, help="where the database and recordings live (default ./data)")
    p.add_argument("--redis", metavar="URL", help="share state through Redis (cluster mode)")
    p.add_argument("--config", type=Path, help="TOML settings file; flags override it")
    return p


def _serve_parser(sub: argparse._SubParsersAction, store: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[store], help="run the media server and API")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--rtmp-port", type=int, help="RTMP port (default 1935)")
    p.add_argument("--http-port", type=int, help="HTTP port for HTTP-FLV, WS-FLV, HLS and the API (default 8080)")
    p.add_argument("--public-url", help="base URL written into push/play/replay URLs")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--workers",
        metavar="N|auto",
        help="server processes sharing the ports under a supervisor (default 1; auto: one per CPU)",
    )
    p.add_argument(
        "--allow-anonymous-publish",
        action="store_true",
        default=None,
        help="development mode: any stream under app 'live' may publish without a room",
    )
    p.add_argument(
        "--public-stats",
        action="store_true",
        default=None,
        help="/api/v1/streams without a token (it shows every publisher's address)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minilive", description="self-hosted live streaming for mini-programs")
    sub = parser.add_subparsers(dest="command", required=True)
    store = _store_options()
    _serve_parser(sub, store)
    _app_parser(sub, store)
    _admin_parser(sub, store)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args, argv)
    if args.command == "app":
        return manage_apps(args)
    if args.command == "admin":
        return admin(args)
    return 2


def _admin_parser(sub: argparse._SubParsersAction, store: argparse.ArgumentParser) -> None:
    p = sub.add_parser("admin", help="the server admin's console sign-in")
    actions = p.add_subparsers(dest="action", required=True)
    token = actions.add_parser(
        "token",
        parents=[store],
        help="print the admin token that signs in to /console/ (made on first use, kept in the data dir, 0600)",
    )
    token.add_argument("--rotate", action="store_true", help="replace it: admin sessions opened with the old one end")


def admin(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args.config, {"data_dir": args.data_dir})
    except config.ConfigError as exc:
        print(f"minilive: {exc}", file=sys.stderr)
        return 2
    try:
        print(admin_token(settings.data_dir, rotate=args.rotate))
    except OSError as exc:
        print(f"minilive: cannot keep the admin token in {settings.data_dir}: {exc}", file=sys.stderr)
        return 1
    return 0


def _app_parser(sub: argparse._SubParsersAction, store: argparse.ArgumentParser) -> None:
    p = sub.add_parser("app", help="create and list apps (works while the server runs)")
    actions = p.add_subparsers(dest="action", required=True)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON")
    create = actions.add_parser("create", parents=[store, output], help="create an app: prints its appid and secret")
    create.add_argument("name")
    actions.add_parser("list", parents=[store, output], help="list the apps (secrets are not shown)")
    rotate = actions.add_parser(
        "rotate-secret", parents=[store, output], help="give an app a new secret: prints it; the old one stops working"
    )
    rotate.add_argument("appid")
    audit = actions.add_parser(
        "goods-audit", parents=[store, output], help="choose who reviews an app's goods: auto, manual or webhook"
    )
    audit.add_argument("appid")
    audit.add_argument("mode", choices=GOODS_AUDIT_MODES)


def manage_apps(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args.config, {"data_dir": args.data_dir, "redis": args.redis})
    except config.ConfigError as exc:
        print(f"minilive: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_manage_apps(settings, args))
    except ApiError as exc:
        print(f"minilive: {exc.errmsg}", file=sys.stderr)
        return 1
    return 0


async def _manage_apps(settings: config.Settings, args: argparse.Namespace) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.data_dir, settings.redis)
    await store.open()
    try:
        apps = Apps(store, settings.rooms)
        if args.action == "list":
            _print_apps(await store.list_apps(), args.json)
            return
        if args.action == "goods-audit":
            app = await apps.app(args.appid)
            app = await apps.update_app(app, {"goods_audit": args.mode})
            print(json.dumps({"appid": app.appid, "goods_audit": app.goods_audit}) if args.json else app.goods_audit)
            return
        if args.action == "create":
            app = await apps.create_app(args.name)
        else:
            app = await apps.rotate_secret(args.appid)
        if args.json:
            print(json.dumps({"appid": app.appid, "secret": app.secret}))
        else:
            verb = "created app" if args.action == "create" else "new secret for app"
            print(f"{verb} {app.name!r}\n  appid   {app.appid}\n  secret  {app.secret}")
            print("Keep the secret safe: it is shown only now (minilive app rotate-secret replaces it).")
    finally:
        await store.close()


def _print_apps(apps: list[App], as_json: bool) -> None:
    """The apps without their secrets (``rotate-secret`` gives a new one)."""
    if as_json:
        listed = [
            {"appid": a.appid, "name": a.name, "created_at": a.created_at, "webhook_url": a.webhook_url} for a in apps
        ]
        print(json.dumps(listed, ensure_ascii=False))
        return
    if not apps:
        print("no apps yet: minilive app create NAME")
        return
    rows = [("APPID", "NAME", "CREATED", "WEBHOOK")]
    rows += [
        (a.appid, a.name, time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created_at)), a.webhook_url or "-")
        for a in apps
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def serve(args: argparse.Namespace, argv: list[str]) -> int:
    """``argv``: the command line (``serve ...``), which a supervisor gives its workers."""
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
            "public_stats",
            "workers",
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
    if settings.workers > 1:
        from api.cluster import forget_worker

        return supervisor.run(settings, argv, forget_worker(settings))
    from api.server import Server

    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        runner(_run_server(Server(settings)))
    except OSError as exc:
        print(
            f"minilive: cannot start: {exc} (is another server using the port? try --rtmp-port/--http-port)",
            file=sys.stderr,
        )
        return 1
    return 0


async def _run_server(server: Server) -> None:
    """The server until SIGTERM or SIGINT; a supervisor's worker also stops when its supervisor is gone."""
    if supervisor.worker_index() is None:
        await server.run_forever()
        return
    watch = asyncio.create_task(supervisor.stop_when_orphaned())
    try:
        await server.run_forever()
    finally:
        watch.cancel()


if __name__ == "__main__":
    sys.exit(main())
