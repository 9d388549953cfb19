"""The console over HTTP: sign-in, the session, the apps (``/console/api/...``), and the console's pages
(``/console/``, files of ``static/`` shipped inside the package).

Handlers are thin over ``api.console.sessions.Sessions`` (``request.app[CONSOLE]``). Every answer is
``no-store`` (it may carry the CSRF token) or, for pages, ``no-cache`` (revalidated, so an upgrade
shows at once), with a Content-Security-Policy that lets the pages load only what this server serves.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from api import errors
from api.console.sessions import COOKIE, Session, app_name
from api.errors import ApiError
from api.keys import APPS, CONSOLE, URLS
from api.rest import json_body, shaped

STATIC = Path(__file__).resolve().parent / "static"
API = "/console/api"
# Browsers must not guess types (a JS module served as something else is refused) nor frame the console.
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _secure(request: web.Request) -> bool:
    """Whether the browser reached us over https (directly, or through a proxy that says so)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _session_body(session: Session) -> web.Response:
    return web.json_response(session.to_json(), headers={"Cache-Control": "no-store"})


@shaped
async def login(request: web.Request) -> web.Response:
    # JSON only: a cross-site form cannot send it without a preflight, so no one can sign a visitor in.
    if request.content_type != "application/json":
        raise ApiError(errors.DATA_FORMAT_ERROR, "sign in with a JSON body (Content-Type: application/json)")
    session_id, session = await request.app[CONSOLE].sign_in(await json_body(request), request.remote or "")
    response = _session_body(session)
    response.set_cookie(COOKIE, session_id, path="/", httponly=True, samesite="Strict", secure=_secure(request))
    return response


@shaped
async def me(request: web.Request) -> web.Response:
    return _session_body(await request.app[CONSOLE].require(request.cookies.get(COOKIE, "")))


@shaped
async def logout(request: web.Request) -> web.Response:
    await request.app[CONSOLE].sign_out(request.cookies.get(COOKIE, ""))
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.del_cookie(COOKIE, path="/")
    return response


def _app_view(appid: str, name: str, created_at: float) -> dict[str, object]:
    return {"appid": appid, "name": name, "created_at": created_at}


@shaped
async def apps(request: web.Request) -> web.Response:
    sessions = request.app[CONSOLE]
    session = await sessions.require(request.cookies.get(COOKIE, ""))
    listed = [_app_view(a.appid, a.name, a.created_at) for a in await sessions.apps(session)]
    return web.json_response({"apps": listed}, headers={"Cache-Control": "no-store"})


@shaped
async def create_app(request: web.Request) -> web.Response:
    """As ``minilive app create``: the new app with its secret, shown this once."""
    sessions = request.app[CONSOLE]
    session = await sessions.require(request.cookies.get(COOKIE, ""))
    sessions.check_admin(session, request.headers.get("X-CSRF-Token", ""))
    app = await request.app[APPS].create_app(app_name(await json_body(request)))
    body = {**_app_view(app.appid, app.name, app.created_at), "secret": app.secret}
    return web.json_response(body, status=201, headers={"Cache-Control": "no-store"})


def _policy(request: web.Request) -> str:
    """Only this server's files; media and images also from blob:/data: (players build them), the
    channel's WebSocket and the players' requests to this host, and to the public URL's if it differs."""
    sockets, public = [f"ws://{request.host}", f"wss://{request.host}"], []
    with contextlib.suppress(ValueError):
        parts = urlsplit(request.app[URLS].http_base)
        if parts.scheme and parts.netloc and parts.netloc != request.host:
            public = [f"{parts.scheme}://{parts.netloc}"]
            sockets += [f"ws://{parts.netloc}", f"wss://{parts.netloc}"]
    media = " ".join(["'self'", "blob:", "data:", *public])
    connect = " ".join(["'self'", *public, *sockets])
    return (
        f"default-src 'self'; script-src 'self'; style-src 'self'; img-src {media}; "
        f"media-src {media}; connect-src {connect}; worker-src 'self' blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


async def page(request: web.Request) -> web.StreamResponse:
    """A file of the console (``/console/`` is index.html); nothing outside ``static/``."""
    relative = request.match_info["path"] or "index.html"
    parts = relative.split("/")
    path = None
    if not any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        with contextlib.suppress(OSError):
            found = STATIC.joinpath(*parts).resolve(strict=True)
            if found.is_relative_to(STATIC) and found.is_file():
                path = found
    if path is None:
        raise web.HTTPNotFound(text=f"no console file {relative}", headers=PAGE_HEADERS)
    headers = {**PAGE_HEADERS, "Cache-Control": "no-cache", "Content-Security-Policy": _policy(request)}
    return web.FileResponse(path, headers=headers)


async def to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/console/")


def routes() -> list[web.RouteDef]:
    return [
        web.post(f"{API}/login", login),
        web.get(f"{API}/me", me),
        web.post(f"{API}/logout", logout),
        web.get(f"{API}/apps", apps),
        web.post(f"{API}/apps", create_app),
        web.get("/console", to_console),
        web.get("/console/{path:(?!api/).*}", page),
    ]
