"""examples/backend against a real minilive (``make_server``) and, for code2session, a real HTTP server
standing in for api.weixin.qq.com: its settings, WeChat login with and without the mock, the access
token's cache, renditions, and clear errors for bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from examples.backend import Config, create_app
from examples.backend.app import MINILIVE
from examples.backend.config import ConfigError
from examples.backend.wechat import mock_openid
from tests.conftest import free_port, make_room

ENV = {"MINILIVE_URL": "https://live.example.com/", "MINILIVE_APPID": "wxapp", "MINILIVE_SECRET": "s"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start_backend() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Start an aiohttp app (the sample back end by default) on a free port; its base URL."""
    runners: list[web.AppRunner] = []

    async def start(config: Config | None = None, app: web.Application | None = None) -> str:
        runner = web.AppRunner(app if app is not None else create_app(config))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


async def call(http: aiohttp.ClientSession, method: str, url: str, session: str = "", **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {session}"} if session else {}
    async with http.request(method, url, headers=headers, **kwargs) as reply:
        body = await reply.json()
        assert reply.status == 200, (url, reply.status, body)
        return body


async def refused(http: aiohttp.ClientSession, method: str, url: str, session: str = "", **kwargs: Any):
    """(status, error code, message) of a call that must fail."""
    headers = {"Authorization": f"Bearer {session}"} if session else {}
    async with http.request(method, url, headers=headers, **kwargs) as reply:
        body = await reply.json()
        assert reply.status >= 400, body
        return reply.status, body["error"]["code"], body["error"]["message"]


def test_settings_come_from_the_environment_and_name_what_is_missing() -> None:
    config = Config.from_env({**ENV, "ANCHOR_OPENIDS": "o1, o2", "RENDITIONS": "480p,720p", "PORT": "9000"})
    assert config.minilive_url == "https://live.example.com" and config.channel_base == "wss://live.example.com"
    assert config.anchors == {"o1", "o2"} and config.renditions == ("480p", "720p") and config.port == 9000
    assert config.may_push("o1") and not config.may_push("o3") and config.mock_wechat == "auto"
    with pytest.raises(ConfigError, match="MINILIVE_APPID, MINILIVE_SECRET"):
        Config.from_env({"MINILIVE_URL": "http://x"})
    with pytest.raises(ConfigError, match="MOCK_WECHAT must be 1"):
        Config.from_env({**ENV, "MOCK_WECHAT": "yes"})
    with pytest.raises(ConfigError, match="PORT"):
        Config.from_env({**ENV, "PORT": "http"})


async def test_code2session_with_wechat_and_the_mock_when_it_cannot_be_reached(start_backend, http, caplog) -> None:
    asked: list[dict[str, str]] = []

    async def jscode2session(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        if request.query["js_code"] == "used-code":
            return web.Response(text='{"errcode":40163,"errmsg":"code been used"}', content_type="text/plain")
        return web.Response(text='{"openid":"o_real","session_key":"k"}', content_type="text/plain")

    wechat_app = web.Application()
    wechat_app.router.add_get("/sns/jscode2session", jscode2session)
    wechat = await start_backend(app=wechat_app)
    config = Config("http://127.0.0.1:1", "a", "s", wechat_appid="wxmp", wechat_secret="mpsecret", wechat_url=wechat)
    backend = await start_backend(config)
    login = await call(http, "POST", f"{backend}/api/login", json={"code": "fresh-code"})
    assert (login["openid"], login["mocked"]) == ("o_real", False)
    assert asked[0] == {
        "appid": "wxmp",
        "secret": "mpsecret",
        "js_code": "fresh-code",
        "grant_type": "authorization_code",
    }
    status, code, message = await refused(http, "POST", f"{backend}/api/login", json={"code": "used-code"})
    assert (status, code) == (401, "login_refused") and "40163" in message

    # WeChat unreachable with credentials set: an error, never a mock (whoever could cut WeChat off
    # would otherwise pick their openid), in "auto" mode as with MOCK_WECHAT=0.
    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = {"wechat_appid": "x", "wechat_secret": "y", "wechat_url": closed}
    for mode in ("auto", "0"):
        backend_down = await start_backend(Config("http://127.0.0.1:1", "a", "s", mock_wechat=mode, **unreachable))
        status, code, _ = await refused(http, "POST", f"{backend_down}/api/login", json={"code": "c1"})
        assert (status, code) == (503, "wechat_unreachable"), mode
    assert mock_openid("c1") == mock_openid("c1") != mock_openid("c2")


async def test_bad_input_gets_a_clear_error(make_server, start_backend, http) -> None:
    server = await make_server()
    app, room = await make_room(server)
    minilive = f"http://127.0.0.1:{server.http_port}"
    backend = await start_backend(Config(minilive, app.appid, app.secret, mock_wechat="1"))
    login = f"{backend}/api/login"
    assert (await refused(http, "POST", login, json={}))[:2] == (400, "bad_code")
    assert (await refused(http, "POST", login, json={"code": "a b"}))[:2] == (400, "bad_code")
    assert (await refused(http, "POST", login, data=b"{not json"))[:2] == (400, "bad_json")
    assert (await refused(http, "POST", login, data=b"[" + b"1," * 4000 + b"1]"))[0] == 413
    session = (await call(http, "POST", login, json={"code": "c"}))["session"]
    roomurl = f"{backend}/api/rooms/{room.roomid}"
    assert (await refused(http, "GET", roomurl))[:2] == (401, "login_required")
    forged = session.rsplit(".", 1)[0] + ".AAAA"
    assert (await refused(http, "GET", roomurl, forged))[:2] == (401, "login_required")
    assert (await refused(http, "GET", f"{backend}/api/rooms/999999", session))[:2] == (404, "minilive_error")
    nickname = {"nickname": 5}
    assert (await refused(http, "POST", f"{roomurl}/channel", session, json=nickname))[:2] == (400, "bad_nickname")
    # A back end given the wrong app secret says which setting is wrong.
    wrong = await start_backend(Config(minilive, app.appid, "not-the-secret", mock_wechat="1"))
    status, code, message = await refused(http, "GET", f"{wrong}/api/rooms")
    assert (status, code) == (502, "minilive_refused") and "MINILIVE_APPID/SECRET" in message


async def test_the_access_token_is_cached_and_renewed_when_minilive_forgets_it(make_server, start_backend, http):
    server = await make_server()
    app, room = await make_room(server)
    config = Config(f"http://127.0.0.1:{server.http_port}", app.appid, app.secret, mock_wechat="1")
    backend_app = create_app(config)
    backend = await start_backend(app=backend_app)
    await call(http, "GET", f"{backend}/api/rooms")
    client = backend_app[MINILIVE]
    token = await client.access_token()
    await call(http, "GET", f"{backend}/api/rooms")
    assert await client.access_token() == token  # one /cgi-bin/token for both calls
    client._token = ("forgotten-by-minilive", float("inf"))
    listed = await call(http, "GET", f"{backend}/api/rooms")
    assert [r["roomid"] for r in listed["rooms"]] == [room.roomid]
    assert await client.access_token() not in ("forgotten-by-minilive", token)


async def test_qualities_follow_the_rooms_renditions(make_server, start_backend, http) -> None:
    server = await make_server()
    app, room = await make_room(server)
    backend = await start_backend(
        Config(f"http://127.0.0.1:{server.http_port}", app.appid, app.secret, mock_wechat="1")
    )
    session = (await call(http, "POST", f"{backend}/api/login", json={"code": "c"}))["session"]
    page = await call(http, "GET", f"{backend}/api/rooms/{room.roomid}", session)
    assert [q["name"] for q in page["qualities"]] == ["auto"]
    await server.rooms.set_renditions(app, room.roomid, ["480p", {"name": "tiny", "height": 144, "video_bitrate": 100}])
    page = await call(http, "GET", f"{backend}/api/rooms/{room.roomid}", session)
    auto, p480, tiny = page["qualities"]
    assert [auto["name"], p480["name"], tiny["name"]] == ["auto", "480p", "tiny"]
    stream, _, query = auto["flv"].partition(".flv")
    assert p480["flv"] == f"{stream}_480p.flv{query}" and tiny["flv"] == f"{stream}_tiny.flv{query}"
