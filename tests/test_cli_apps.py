"""`minilive app create/list/rotate-secret` against the data dir of a server that is running."""

from __future__ import annotations

import json
import sys

import aiohttp

from tests.conftest import run


async def cli(*args: str) -> tuple[int, str, str]:
    code, out, err = await run(sys.executable, "-m", "api.cli", "app", *args)
    return code, out.decode(), err.decode()


async def token_for(session: aiohttp.ClientSession, appid: str, secret: str) -> dict:
    """/cgi-bin/token, as a mini-program back end gets its access_token."""
    query = {"grant_type": "client_credential", "appid": appid, "secret": secret}
    async with session.get("/cgi-bin/token", params=query) as response:
        return await response.json()


async def test_apps_made_by_the_cli_work_on_the_running_server(server):
    data_dir = str(server.settings.data_dir)
    code, out, err = await cli("create", "demo", "--json", "--data-dir", data_dir)
    assert code == 0, err
    created = json.loads(out)
    assert set(created) == {"appid", "secret"}

    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        token = await token_for(session, created["appid"], created["secret"])
        assert "access_token" in token, token
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        async with session.get("/api/v1/app", headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["name"] == "demo"

        code, out, err = await cli("create", "second shop", "--data-dir", data_dir)
        assert code == 0, err
        assert "appid" in out and "secret" in out

        code, out, _ = await cli("list", "--json", "--data-dir", data_dir)
        listed = json.loads(out)
        assert [a["name"] for a in listed] == ["demo", "second shop"]
        assert listed[0]["appid"] == created["appid"] and "secret" not in listed[0]
        code, out, _ = await cli("list", "--data-dir", data_dir)
        assert code == 0 and created["appid"] in out and "second shop" in out and created["secret"] not in out

        code, out, err = await cli("rotate-secret", created["appid"], "--json", "--data-dir", data_dir)
        assert code == 0, err
        rotated = json.loads(out)
        assert rotated["appid"] == created["appid"] and rotated["secret"] != created["secret"]
        assert (await token_for(session, created["appid"], created["secret"]))["errcode"] == 40125
        assert "access_token" in await token_for(session, created["appid"], rotated["secret"])

    code, _, err = await cli("rotate-secret", "wxnosuchapp", "--data-dir", data_dir)
    assert code == 1 and "wxnosuchapp" in err
