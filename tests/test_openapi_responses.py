"""Real responses against the OpenAPI document the server serves: every REST answer of a room's life
is validated against the schema its operation documents ($refs resolved, objects held to the
properties they list), and getliveinfo's rooms against the same definition of a room."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import aiohttp
import jsonschema
import pytest

from api.models import ROOM_FIELDS, ROOM_LISTED, LiveStatus, Replay
from relay.hub import StreamEvent
from tests.conftest import add_images, free_port, make_room
from tests.test_rest_api import room_body
from tests.test_status_push import next_event


def strict(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others: a field a response
    carries must be documented."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: strict(value) for key, value in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


class Api:
    """A REST client whose every answer is checked against the document."""

    def __init__(self, session: aiohttp.ClientSession, document: dict[str, Any]) -> None:
        self.session = session
        self.document = strict(copy.deepcopy(document))
        self.checked: set[tuple[str, str, int]] = set()

    def validate(self, body: Any, schema: dict[str, Any], where: str) -> None:
        root = {**schema, "components": self.document["components"]}
        jsonschema.Draft202012Validator.check_schema(root)
        problems = [
            f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in jsonschema.Draft202012Validator(root).iter_errors(body)
        ]
        assert not problems, f"{where} does not match its documented schema:\n" + "\n".join(problems)

    async def call(self, method: str, path: str, status: int, operation: str = "", **kwargs: Any) -> Any:
        """Make a request, check its status, validate its body against the response documented for
        ``operation`` (the documented path; ``path`` by default) and return it."""
        operation = operation or path.split("?", 1)[0]
        async with self.session.request(method, path, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            assert response.status == status, body
        documented = self.document["paths"][operation][method.lower()]["responses"][str(status)]
        if "content" in documented:
            self.validate(body, documented["content"]["application/json"]["schema"], f"{method} {path} {status}")
        else:
            assert body is None, f"{method} {path} {status} documents no body"
        self.checked.add((operation, method.lower(), status))
        return body


async def wait_for_deliveries(server, appid: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await server.store.deliveries(appid):
        assert time.monotonic() < deadline, "no webhook delivery was logged"
        await asyncio.sleep(0.05)


@pytest.fixture
async def checked(make_server):
    # One attempt per webhook, to a port nobody listens on: deliveries are logged as failed at once.
    server = await make_server(webhook_retry_seconds=[], webhook_timeout_seconds=2)
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession(base) as session:
        async with session.get("/api/v1/openapi.json") as response:
            document = await response.json()
        yield server, Api(session, document)


async def test_every_rest_answer_of_a_room_matches_the_document(checked):
    server, api = checked
    app = await server.apps.create_app("shop")
    await add_images(server, app.appid)

    await api.call("POST", "/api/v1/token", 401, json={"appid": app.appid, "secret": "wrong"})
    await api.call("POST", "/api/v1/token", 400, data=b"not json")
    token = await api.call("POST", "/api/v1/token", 200, json={"appid": app.appid, "secret": app.secret})
    api.session.headers["Authorization"] = f"Bearer {token['access_token']}"

    await api.call("GET", "/api/v1/app", 200)
    hook = f"http://127.0.0.1:{free_port()}/hook"
    await api.call("PATCH", "/api/v1/app", 200, json={"webhook_url": hook, "play_key": "k3y"})
    await api.call("PATCH", "/api/v1/app", 400, json={"replay_retention_days": 0})

    room = await api.call("POST", "/api/v1/rooms", 201, json=room_body(app.appid, close_replay=0))
    await api.call("POST", "/api/v1/rooms", 400, json=room_body(app.appid, name="短"))
    one = f"/api/v1/rooms/{room['roomid']}"
    room_path = "/api/v1/rooms/{id}"
    listing = await api.call("GET", "/api/v1/rooms?limit=5", 200)
    assert [r["roomid"] for r in listing["rooms"]] == [room["roomid"]]
    assert await api.call("GET", one, 200, room_path) == room
    await api.call("PATCH", one, 200, room_path, json={"name": "改过的直播间名字", "close_share": 1})
    await api.call("PATCH", one, 400, room_path, json={"type": 0})
    await api.call("GET", "/api/v1/rooms/999999", 404, room_path)

    await api.call("GET", f"{one}/push_url", 200, room_path + "/push_url")
    play = await api.call("GET", f"{one}/play_urls", 200, room_path + "/play_urls")
    assert "txSecret=" in play["hls"]

    await api.call("POST", f"{one}/start", 409, room_path + "/start")
    await server.room_status._handle_stream_event(StreamEvent("publish", "live", f"{app.appid}-{room['roomid']}"))
    live = await api.call("GET", one, 200, room_path)
    assert live["live_status"] == LiveStatus.LIVE and live["viewers_by_protocol"] == {}
    await api.call("POST", f"{one}/start", 200, room_path + "/start")
    await api.call("POST", f"{one}/pause", 200, room_path + "/pause")
    await api.call("POST", f"{one}/resume", 200, room_path + "/resume")
    await api.call("POST", f"{one}/ban", 200, room_path + "/ban")
    await api.call("POST", f"{one}/end", 409, room_path + "/end")
    await api.call("DELETE", "/api/v1/rooms/999999", 404, room_path)

    now = time.time()
    for session, status in ((1, "ready"), (2, "recording")):
        replay = Replay(f"r{session}", room["roomid"], app.appid, session, status, now, now + 86400, f"p/{session}")
        await server.store.put_replay(replay)
    replays = await api.call("GET", f"{one}/replays", 200, room_path + "/replays")
    assert [r["status"] for r in replays["replays"]] == ["ready", "recording"]

    await wait_for_deliveries(server, app.appid)
    deliveries = await api.call("GET", "/api/v1/app/webhook_deliveries", 200)
    assert deliveries["deliveries"][0]["status"] == "failed"
    await api.call("GET", "/api/v1/app/webhook_deliveries?limit=0", 400, "/api/v1/app/webhook_deliveries")

    await api.call("GET", f"{one}/status", 200, room_path + "/status")
    await api.call("GET", "/api/v1/rooms/999999/status", 404, room_path + "/status")
    await api.call("GET", "/api/v1/streams", 200)
    await api.call("DELETE", one, 204, room_path)
    await api.call("GET", "/api/v1/app", 401, headers={"Authorization": "Bearer forged"})

    assert len(api.checked) >= 30, sorted(api.checked)


async def test_status_events_match_the_document(checked):
    server, api = checked
    _, room = await make_room(server)
    schema = {"$ref": "#/components/schemas/StatusMessage"}
    async with api.session.get(f"/api/v1/rooms/{room.roomid}/events") as response:
        kind, first = await next_event(response)
        api.validate(first, schema, "the first SSE event")
        await server.room_status._handle_stream_event(StreamEvent("publish", "live", room.stream_name))
        kind, change = await next_event(response)
        assert (kind, change["previous_status"]) == ("status", LiveStatus.NOT_STARTED)
        api.validate(change, schema, "a status change")


async def test_getliveinfo_rooms_are_the_rest_rooms_in_the_official_shape(checked):
    server, api = checked
    app = await server.apps.create_app("shop")
    await add_images(server, app.appid)
    token = (await server.apps.issue_token(app.appid, app.secret)).token
    api.session.headers["Authorization"] = f"Bearer {token}"
    rest_room = await api.call("POST", "/api/v1/rooms", 201, json=room_body(app.appid))
    async with api.session.post(
        "/wxa/business/getliveinfo", params={"access_token": token}, json={"start": 0, "limit": 10}
    ) as response:
        reply = await response.json()
    assert reply["errcode"] == 0, reply
    (listed,) = reply["room_info"]
    assert list(listed) == [field.name for field in ROOM_LISTED]
    properties = api.document["components"]["schemas"]["Room"]["properties"]
    for field in ROOM_LISTED:
        value = listed[field.name]
        if field.wire.media:
            assert value == rest_room[f"{field.name}_url"] and value.endswith(f"/media/{rest_room[field.name]}")
            api.validate(value, properties[f"{field.name}_url"], f"getliveinfo {field.name}")
        else:
            assert value == rest_room[field.rest_name], field.name
            api.validate(value, properties[field.rest_name], f"getliveinfo {field.name}")
    assert {field.rest_name for field in ROOM_FIELDS} <= rest_room.keys()
