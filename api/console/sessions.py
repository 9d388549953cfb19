"""Console sign-in and sessions, and the cookie authorization of the REST API.

An app owner signs in with the app's appid and secret, the server admin with the admin token
(``minilive admin token``, a file in the data dir). A session is a random id in an HttpOnly cookie;
the store keeps only its SHA-256, so a copy of the store holds no usable cookie. Sessions are store
documents (``console_sessions``), so every worker and node sees them. A session ends when unused for
``session_idle_minutes``, after ``session_max_hours`` in any case, at sign-out, and when the
credential it was opened with changes (the app's secret rotated, the admin token rotated).

A session's last use is kept apart (``console_session_seen``) and written at most once a minute: a
request that refreshes it while another signs out cannot bring the session back.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api import errors
from api.errors import ApiError
from api.models import App
from api.store.base import Doc, RoomStore

COOKIE = "minilive_console"
SESSIONS = "console_sessions"
SEEN = "console_session_seen"
ADMIN_TOKEN_FILE = "console_admin_token"
ADMIN, APP = "admin", "app"
WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))
TOUCH_SECONDS = 60.0
# The sign-in counter's window: attempts per address per minute.
LOGIN_WINDOW_SECONDS = 60
MAX_APP_NAME = 64


@dataclass(slots=True)
class ConsoleSettings:
    # A session unused this long is over (the console refreshes it on every call).
    session_idle_minutes: float = 60.0
    # ...and any session after this long, used or not.
    session_max_hours: float = 12.0
    # Sign-in attempts per client address per minute, successful ones included; beyond: 429.
    login_attempts_per_minute: int = 10

    def validate(self) -> None:
        if not self.session_idle_minutes > 0:
            raise ValueError("[console] session_idle_minutes must be more than 0 (e.g. 60)")
        if not self.session_max_hours > 0:
            raise ValueError("[console] session_max_hours must be more than 0 (e.g. 12)")
        if self.login_attempts_per_minute < 1:
            raise ValueError("[console] login_attempts_per_minute must be at least 1 (e.g. 10)")


@dataclass(slots=True, frozen=True)
class Session:
    role: str  # ADMIN or APP
    appid: str | None  # the app of an APP session
    csrf: str  # every cookie-authorized write carries it as X-CSRF-Token

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "appid": self.appid, "csrf": self.csrf}


def read_admin_token(data_dir: Path) -> str:
    """The admin token kept in the data dir ("" when none was made yet)."""
    try:
        return (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def admin_token(data_dir: Path, rotate: bool = False) -> str:
    """The server admin's console token: the one kept in ``DATA_DIR/console_admin_token`` (mode 0600),
    made on first use; ``rotate`` replaces it, which ends the admin sessions opened with the old one."""
    path = data_dir / ADMIN_TOKEN_FILE
    if not rotate and (current := read_admin_token(data_dir)):
        return current
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    temp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(token + "\n")
        if rotate:
            os.replace(temp, path)
            return token
        try:
            os.link(temp, path)  # fails if another process made one first: both then print that one
        except FileExistsError:
            return read_admin_token(data_dir)
        return token
    finally:
        temp.unlink(missing_ok=True)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _fingerprint(credential: str) -> str:
    """What a session remembers of the credential it was opened with, to end when it changes."""
    return hashlib.sha256(f"minilive-console:{credential}".encode()).hexdigest()


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


class Sessions:
    def __init__(
        self, store: RoomStore, settings: ConsoleSettings, data_dir: Path, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.data_dir = data_dir
        self.clock = clock

    # ------------------------------------------------------------ sign-in and out

    async def sign_in(self, body: dict[str, Any], address: str) -> tuple[str, Session]:
        """Open a session for ``{"appid", "secret"}`` or ``{"admin_token"}``; returns the cookie's value
        and the session. Attempts are counted per address before the credentials are read, atomically,
        so parallel guesses cannot slip past the limit."""
        limit = self.settings.login_attempts_per_minute
        if not await self.store.incr_counter(f"console_login:{address}", limit, LOGIN_WINDOW_SECONDS):
            raise ApiError(
                errors.CONSOLE_RATE_LIMITED,
                f"more than {limit} sign-in attempts a minute from {address}: wait a minute",
            )
        if "admin_token" in body:
            role, appid, credential = ADMIN, None, self._admin_credential(body["admin_token"])
        else:
            app = await self._app_credential(body.get("appid"), body.get("secret"))
            role, appid, credential = APP, app.appid, app.secret
        await self._purge()
        session_id, now = secrets.token_urlsafe(32), self.clock()
        session = Session(role, appid, secrets.token_urlsafe(24))
        record = {**session.to_json(), "credential": _fingerprint(credential), "created": now}
        await self.store.put_doc(SESSIONS, _key(session_id), record)
        return session_id, session

    def _admin_credential(self, given: Any) -> str:
        current = read_admin_token(self.data_dir)
        if not current:
            raise ApiError(errors.CONSOLE_SIGN_IN, "this server has no admin token yet: run `minilive admin token`")
        if not isinstance(given, str) or not _same(given, current):
            raise ApiError(errors.CONSOLE_SIGN_IN, "wrong admin token (`minilive admin token` prints it)")
        return current

    async def _app_credential(self, appid: Any, secret: Any) -> App:
        if not isinstance(appid, str) or not isinstance(secret, str) or not appid or not secret:
            raise ApiError(errors.CONSOLE_SIGN_IN, 'sign in with {"appid", "secret"} or {"admin_token"}')
        app = await self.store.get_app(appid)
        if app is None or not _same(secret, app.secret):
            raise ApiError(errors.CONSOLE_SIGN_IN, "wrong appid or secret")
        return app

    async def sign_out(self, session_id: str) -> None:
        await self._end(_key(session_id))

    async def _end(self, key: str) -> None:
        await self.store.delete_doc(SESSIONS, key)
        await self.store.delete_doc(SEEN, key)

    async def _purge(self) -> None:
        """Forget the sessions that are over (at each sign-in: what is kept stays bounded by use)."""
        now = self.clock()
        seen = await self.store.list_docs(SEEN)
        sessions = await self.store.list_docs(SESSIONS)
        for key, doc in sessions.items():
            if self._expired(doc, seen.get(key), now):
                await self._end(key)
        for key in seen.keys() - sessions.keys():
            await self.store.delete_doc(SEEN, key)

    # ------------------------------------------------------------ a request's session

    def _expired(self, doc: Doc, seen: Doc | None, now: float) -> bool:
        last = max(doc["created"], seen["seen"] if seen else 0.0)
        s = self.settings
        return now - last > s.session_idle_minutes * 60 or now - doc["created"] > s.session_max_hours * 3600

    async def session(self, session_id: str) -> Session | None:
        """The session a cookie opens, refreshed; None when it is unknown, over or revoked."""
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        doc = await self.store.get_doc(SESSIONS, key)
        if doc is None:
            return None
        seen, now = await self.store.get_doc(SEEN, key), self.clock()
        if self._expired(doc, seen, now) or not await self._credential_holds(doc):
            await self._end(key)
            return None
        last = seen["seen"] if seen else doc["created"]
        if now - last >= min(TOUCH_SECONDS, self.settings.session_idle_minutes * 15):
            await self.store.put_doc(SEEN, key, {"seen": now})
        return Session(doc["role"], doc["appid"], doc["csrf"])

    async def _credential_holds(self, doc: Doc) -> bool:
        if doc["role"] == ADMIN:
            current = read_admin_token(self.data_dir)
        else:
            app = await self.store.get_app(doc["appid"])
            current = app.secret if app else ""
        return bool(current) and _same(doc["credential"], _fingerprint(current))

    async def require(self, session_id: str) -> Session:
        session = await self.session(session_id)
        if session is None:
            raise ApiError(errors.CONSOLE_SESSION, "not signed in, or the session is over: sign in at /console/")
        return session

    async def app_for(self, session_id: str, method: str, csrf: str, named: str) -> App:
        """The app a cookie-authorized REST request acts for: the session's own, or for an admin the app
        ``named`` (``X-Minilive-App``). Writes must carry the session's CSRF token."""
        session = await self.require(session_id)
        if method in WRITES and not _same(csrf, session.csrf):
            raise ApiError(
                errors.CONSOLE_CSRF,
                "a write with the console's cookie needs the X-CSRF-Token header (the csrf that sign-in answered)",
            )
        if session.role == APP:
            assert session.appid is not None
            if named and named != session.appid:
                raise ApiError(errors.CONSOLE_FORBIDDEN, f"this session is app {session.appid}'s, not {named}'s")
            named = session.appid
        elif not named:
            raise ApiError(errors.CONSOLE_APP_REQUIRED, "an admin session names the app with the X-Minilive-App header")
        app = await self.store.get_app(named)
        if app is None:
            raise ApiError(errors.CONSOLE_APP_UNKNOWN, f"no app {named}")
        return app

    # ------------------------------------------------------------ apps

    async def apps(self, session: Session) -> list[App]:
        """The apps a session sees: every one for the admin, its own for an app."""
        if session.role == ADMIN:
            return await self.store.list_apps()
        app = await self.store.get_app(session.appid or "")
        return [app] if app else []

    def check_admin(self, session: Session, csrf: str) -> None:
        if not _same(csrf, session.csrf):
            raise ApiError(errors.CONSOLE_CSRF, "send the X-CSRF-Token header (the csrf that sign-in answered)")
        if session.role != ADMIN:
            raise ApiError(errors.CONSOLE_FORBIDDEN, "only the server admin may create apps")


def app_name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_APP_NAME:
        raise ApiError(errors.INVALID_ARGS, f"name must be a string of 1-{MAX_APP_NAME} characters")
    return name.strip()
