"""The console used as an operator uses it, in Debian's Chromium through Playwright, against a real
server: sign in, create a room with images, copy the push URL and push with ffmpeg, watch the badge
turn live without a reload, watch the preview decode frames, post and delete a comment, end the room
and play its replay. The same flow runs at a phone's size. A screenshot is taken at each step into
the test's artifacts; with ``MINILIVE_DOC_SHOTS=1`` the rooms list and the going-live panel are also
written to ``docs/img/`` (the README shows them)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from api.console.sessions import admin_token
from api.models import App
from api.server import Server
from tests.browser import PageLog, wait_for
from tests.conftest import free_port, official_room_body, publish

DOC_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"
Shot = Callable[[Page, str], Awaitable[Path]]

# The browser logs every 4xx answer as a console error; these are the ones the flows ask for:
# /console/api/me before signing in (401), and the refused room that shows the validation message.
EXPECTED_ME = r"status of 401 .*\(.*/console/api/me"
EXPECTED_REFUSAL = r"status of 400 .*\(.*/api/v1/rooms"


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A plain-colour RGB PNG: the images an operator uploads."""
    row = b"\x00" + bytes(rgb) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


async def room_images(server: Server, app: App) -> dict[str, str]:
    """Real uploaded images for a room made by the services (the pages show them: no 404s)."""
    images = {}
    for field in ("coverImg", "shareImg", "feedsImg"):
        images[field] = (await server.media.upload(app, "image", png(80, 80, (90, 140, 60)))).media_id
    return images


async def drop_file(page: Page, selector: str, name: str, data: bytes) -> None:
    """Drags a file onto ``selector`` as a person does from the desktop (a drop with a DataTransfer)."""
    await page.evaluate(
        """([selector, name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
            const zone = document.querySelector(selector);
            zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        [selector, name, list(data)],
    )


async def decodes(page: Page, selector: str, frames: int = 10, timeout: float = 20) -> None:
    """Waits until the ``<video>`` at ``selector`` has decoded ``frames`` more frames than now."""
    count = f"(document.querySelector('{selector}')?.getVideoPlaybackQuality().totalVideoFrames ?? 0)"
    before = await page.evaluate(count)
    await wait_for(page, f"{count} > {before + frames}", timeout=timeout)


async def sign_in(page: Page, server: Server, app: App) -> None:
    await page.goto(f"http://127.0.0.1:{server.http_port}/console/")
    await page.get_by_label("AppID").fill(app.appid)
    await page.get_by_label("AppSecret").fill(app.secret)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Rooms")).to_be_visible()


async def create_room(page: Page, shot: Shot) -> int:
    """Fills the form (one image dropped, two chosen), is refused once for a short name with the
    message beside the field, then creates the room; returns its id."""
    await page.get_by_role("link", name="New room").click()
    await page.get_by_label("Room name").fill("ab")
    await drop_file(page, '.drop[data-field="cover_img"]', "cover.png", png(108, 192, (200, 40, 40)))
    await page.locator('.drop[data-field="cover_img"][data-media-id]').wait_for()
    for name, size in (("share_img", (80, 64)), ("feeds_img", (80, 80))):
        image = {"name": f"{name}.png", "mimeType": "image/png", "buffer": png(*size, (40, 90, 200))}
        await page.get_by_test_id(f"{name}-file").set_input_files(image)
        await page.locator(f'.drop[data-field="{name}"][data-media-id]').wait_for()
    await page.get_by_label("Anchor's name").fill("Anchor Lee")
    await page.get_by_label("Anchor's WeChat ID", exact=True).fill("anchor_lee")
    await page.get_by_role("button", name="Create room").click()
    # The server's official message (300002 name length) next to the name field, focus moved there.
    name_error = page.locator("#" + await page.get_by_label("Room name").get_attribute("id") + "-error")
    await expect(name_error).to_contain_text("300002")
    await expect(page.get_by_label("Room name")).to_be_focused()
    await shot(page, "02-validation")
    await page.get_by_label("Room name").fill("Console e2e room")
    await page.get_by_role("button", name="Create room").click()
    await page.get_by_test_id("push-url").wait_for()
    return int(page.url.rsplit("/", 1)[1])


async def console_flow(page: Page, shot: Shot, server: Server, app: App, docs: bool) -> None:
    await sign_in(page, server, app)
    await shot(page, "01-signed-in")
    roomid = await create_room(page, shot)

    # Going live: copy the push URL with the page's button, and check the OBS split adds up to it.
    await expect(page.get_by_test_id("push-qr")).to_be_visible()
    await page.evaluate("window.scrollTo(0, 0)")
    going_live = await shot(page, "03-going-live")
    await page.get_by_test_id("push-url").locator("xpath=..").get_by_role("button", name="Copy").click()
    push_url = await page.evaluate("navigator.clipboard.readText()")
    assert push_url.startswith(f"rtmp://127.0.0.1:{server.rtmp_port}/live/{app.appid}-{roomid}?txSecret=")
    server_part = await page.get_by_test_id("obs-server").input_value()
    key = await page.get_by_test_id("obs-key").input_value()
    assert f"{server_part}/{key}" == push_url
    assert push_url in await page.get_by_test_id("ffmpeg-command").input_value()

    # The rooms list, then the push: the badge turns live with no reload (the marker survives).
    await page.get_by_role("link", name="Rooms", exact=True).first.click()
    row = page.locator(f'tr[data-roomid="{roomid}"]')
    await expect(row.get_by_test_id("status")).to_have_attribute("data-status", "102")
    await page.evaluate("window.notReloaded = true")
    publisher = await publish(push_url, seconds=60)
    try:
        await expect(row.get_by_test_id("status")).to_have_attribute("data-status", "101", timeout=15000)
        assert await page.evaluate("window.notReloaded === true")
        rooms_live = await shot(page, "04-rooms-live")

        # The live view: the preview decodes frames, and the stream's details name the codec.
        await row.get_by_role("link").click()
        await page.get_by_role("link", name="Live view & channel").click()
        await decodes(page, "video[data-testid=preview]")
        await decodes(page, "video[data-testid=preview]")  # and keeps decoding: it plays, not just starts
        await expect(page.get_by_test_id("stream-details")).to_contain_text(re.compile("h264", re.I), timeout=10000)
        await page.get_by_label("Protocol", exact=True).select_option("hls")  # the same stream through hls.js
        await decodes(page, "video[data-testid=preview]", timeout=30)
        await shot(page, "05-live-view")

        # The room channel: a comment appears, then is deleted (confirmed in the dialog).
        await expect(page.get_by_text("Connected as moderator")).to_be_visible()
        await page.get_by_label("Comment", exact=True).fill("hello from the console")
        await page.get_by_role("button", name="Send").click()
        comment = page.get_by_test_id("comments").locator("li", has_text="hello from the console")
        await expect(comment).to_be_visible()
        await shot(page, "06-comment")
        await comment.get_by_role("button", name="Delete").click()
        await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
        await expect(comment).to_have_count(0)

        # End the room: Escape first backs out of the dialog, then the confirmed end ends it.
        await page.get_by_role("button", name="End live").click()
        await page.keyboard.press("Escape")
        await expect(page.get_by_role("dialog")).to_be_hidden()
        await expect(page.get_by_role("button", name="End live")).to_be_focused()
        await page.get_by_role("button", name="End live").click()
        await shot(page, "07-end-confirm")
        await page.get_by_role("dialog").get_by_role("button", name="End live").click()
        await expect(page.locator("h1 + [data-testid=status]")).to_have_attribute("data-status", "103", timeout=10000)
    finally:
        await publisher.stop()

    # The replay: listed once recorded, played in the page, downloadable as MP4.
    await page.get_by_role("link", name="Replays").click()
    play = page.get_by_role("button", name="Play")
    for _ in range(40):
        if await play.count():
            break
        await page.wait_for_timeout(500)
        await page.reload()
    await play.first.click()
    await decodes(page, "video[data-testid=replay-video]")
    assert (await page.get_by_role("link", name="MP4").first.get_attribute("href") or "").endswith("/replay.mp4")
    await shot(page, "08-replay")
    # Delete it (confirmed): the row goes, and the server no longer lists it.
    await page.locator("tr[data-replay]").first.get_by_role("button", name="Delete").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(page.locator("tr[data-replay]")).to_have_count(0)
    assert not await server.rooms.replays(app, roomid)
    if docs:
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(rooms_live, DOC_IMAGES / "console-rooms.png")
        shutil.copy(going_live, DOC_IMAGES / "console-going-live.png")


@pytest.fixture
async def console(make_server: Callable[..., Awaitable[Server]]) -> tuple[Server, App]:
    server = await make_server(allow_anonymous_publish=False)
    return server, await server.apps.create_app("shop")


CLIPBOARD: dict[str, Any] = {"permissions": ["clipboard-read", "clipboard-write"]}


async def test_console_flow_desktop(
    console: tuple[Server, App], new_page: Callable[..., Awaitable[Page]], shot: Shot, page_log: PageLog
) -> None:
    page_log.allow(EXPECTED_ME)
    page_log.allow(EXPECTED_REFUSAL)
    page = await new_page(**CLIPBOARD)
    await console_flow(page, shot, *console, docs=os.environ.get("MINILIVE_DOC_SHOTS") == "1")


async def test_console_flow_phone(
    console: tuple[Server, App], new_page: Callable[..., Awaitable[Page]], shot: Shot, page_log: PageLog
) -> None:
    page_log.allow(EXPECTED_ME)
    page_log.allow(EXPECTED_REFUSAL)
    page = await new_page(phone=True, **CLIPBOARD)
    await console_flow(page, shot, *console, docs=False)
    # The phone layout is one column: nothing is wider than the screen.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def test_admin_picks_an_app_and_switches_language(
    console: tuple[Server, App],
    new_page: Callable[..., Awaitable[Page]],
    shot: Shot,
    page_log: PageLog,
    tmp_path: Path,
) -> None:
    """The admin token signs in, the app picker lists the apps, and the app's rooms follow; the
    language switch turns the page Chinese (and a zh browser starts in Chinese)."""
    page_log.allow(EXPECTED_ME)
    server, app = console
    page = await new_page(locale="zh-CN")
    await page.goto(f"http://127.0.0.1:{server.http_port}/console/")
    await expect(page.get_by_role("heading", name="登录 minilive")).to_be_visible()
    await page.get_by_role("tab", name="服务器管理员").click()
    await expect(page.get_by_label("管理员令牌")).to_be_focused()
    await page.get_by_label("管理员令牌").fill("wrong")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert").filter(has_text="凭据错误")).to_be_visible()
    page_log.allow(r"status of 401 .*\(.*/console/api/login")
    await page.get_by_label("管理员令牌").fill(admin_token(server.settings.data_dir))
    await page.keyboard.press("Enter")
    await page.get_by_role("button", name=app.appid).click()
    await expect(page.get_by_role("heading", name="直播间")).to_be_visible()
    await page.get_by_label("Language / 语言").select_option("en")
    await expect(page.get_by_role("heading", name="Rooms")).to_be_visible()
    await expect(page.get_by_text("No rooms yet")).to_be_visible()
    await shot(page, "admin-rooms")


async def signed_in_page(new_page: Callable[..., Awaitable[Page]], page_log: PageLog, server: Server, app: App) -> Page:
    page_log.allow(EXPECTED_ME)
    page = await new_page()
    await sign_in(page, server, app)
    return page


async def test_rooms_search_and_filter(
    console: tuple[Server, App], new_page: Callable[..., Awaitable[Page]], page_log: PageLog
) -> None:
    server, app = console
    images = await room_images(server, app)
    for name in ("Morning market", "Evening tea show"):
        await server.rooms.create_room(app, official_room_body(app.appid, name=name, **images))
    page = await signed_in_page(new_page, page_log, server, app)
    rows = page.locator("table.rooms tbody tr")
    await expect(rows).to_have_count(2)
    await page.get_by_label("Search").fill("tea")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("Evening tea show")
    await page.get_by_label("Search").fill("")
    await page.get_by_label("Status").select_option("103")
    await expect(rows).to_have_count(0)
    await page.get_by_label("Status").select_option("102")
    await expect(rows).to_have_count(2)
    # Edit a room: the form opens with its values, the new name shows in the list.
    await rows.filter(has_text="Morning market").get_by_role("link").click()
    await page.get_by_role("link", name="Edit").click()
    await expect(page.get_by_label("Room name")).to_have_value("Morning market")
    await page.get_by_label("Room name").fill("Morning market two")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("heading", name="Morning market two")).to_be_visible()


async def test_settings_webhook_test_delivery_usage_and_ladder(
    console: tuple[Server, App], new_page: Callable[..., Awaitable[Page]], page_log: PageLog, shot: Shot
) -> None:
    """The webhook URL is saved, a test delivery reaches a real receiver and its answer is shown; the
    quota table lists today's use; a ladder that is not JSON is refused beside its field."""
    server, app = console
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok from the receiver")

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        page = await signed_in_page(new_page, page_log, server, app)
        await page.get_by_role("link", name="Settings").click()
        await page.get_by_label("Webhook URL").fill(f"http://127.0.0.1:{port}/hook")
        await page.get_by_label("Webhook URL").press("Enter")
        await expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
        await page.get_by_role("button", name="Send a test delivery").click()
        result = page.get_by_test_id("webhook-result")
        await expect(result).to_contain_text("HTTP 200")
        await expect(result).to_contain_text("ok from the receiver")
        assert received and received[0]["event"] == "test"
        await expect(page.locator("meter").first).to_be_attached()
        await page.get_by_label("Renditions (JSON list)").fill("[480p")
        await (
            page.get_by_label("Renditions (JSON list)")
            .locator("xpath=ancestor::form")
            .get_by_role("button", name="Save")
            .click()
        )
        await expect(page.get_by_text("The ladder is not valid JSON")).to_be_visible()
        await shot(page, "settings")
    finally:
        await runner.cleanup()
    assert (await server.apps.app(app.appid)).webhook_url == f"http://127.0.0.1:{port}/hook"


async def viewer_socket(server: Server, app: App, roomid: int, session: aiohttp.ClientSession) -> Any:
    """A viewer in the room channel, with a token the app's own server would give it."""
    base = f"http://127.0.0.1:{server.http_port}"
    async with session.post(f"{base}/api/v1/token", json={"appid": app.appid, "secret": app.secret}) as reply:
        access = (await reply.json())["access_token"]
    body = {"openid": "viewer-1", "nickname": "Viewer One"}
    headers = {"Authorization": f"Bearer {access}"}
    async with session.post(f"{base}/api/v1/rooms/{roomid}/viewer_tokens", json=body, headers=headers) as reply:
        token = (await reply.json())["token"]
    return await session.ws_connect(f"{base}/api/v1/rooms/{roomid}/ws?token={token}")


async def moderate_and_push_goods(page: Page, server: Server, app: App, roomid: int) -> None:
    """A viewer's comment is muted from the console (the viewer is told), and a goods item on the
    shelf is pushed (the console hears the channel's goods message)."""
    async with aiohttp.ClientSession() as session:
        viewer = await viewer_socket(server, app, roomid, session)
        await expect(page.get_by_text("Connected as moderator")).to_be_visible()
        await viewer.send_json({"type": "comment", "text": "a viewer says hi"})
        comment = page.get_by_test_id("comments").locator("li", has_text="a viewer says hi")
        await comment.get_by_role("button", name="Mute").click()
        await expect(comment.get_by_role("button", name="Unmute")).to_be_visible()
        while (message := await viewer.receive_json(timeout=10))["type"] != "mute":
            pass
        assert message == {"type": "mute", "roomid": roomid, "openid": "viewer-1", "muted": True}
        await viewer.close()
    await page.get_by_role("button", name="Push", exact=True).click()
    await expect(page.get_by_role("status").filter(has_text="Pushed: Tea cup")).to_be_visible()


async def test_live_controls_gop_warning_pause_resume_kick(
    console: tuple[Server, App], new_page: Callable[..., Awaitable[Page]], page_log: PageLog, shot: Shot
) -> None:
    """A 5 s keyframe interval is warned about; pause and resume change the badge through their
    dialogs; a viewer is muted and goods pushed; kick disconnects the encoder."""
    server, app = console
    images = await room_images(server, app)
    room = await server.rooms.create_room(app, official_room_body(app.appid, closeReplay=1, **images))
    goods_info = {"coverImgUrl": images["coverImg"], "name": "Tea cup", "priceType": 1, "price": 19.9, "url": "pages/a"}
    goods = await server.goods.add(app, {"goodsInfo": goods_info})
    await server.goods.add_to_room(app, room.roomid, [goods.goods_id])
    push_url = server.urls.push_url(app, room)
    publisher = await publish(push_url, seconds=60, gop=125)
    try:
        page = await signed_in_page(new_page, page_log, server, app)
        await page.goto(f"http://127.0.0.1:{server.http_port}/console/#/rooms/{room.roomid}/live")
        badge = page.locator("h1 + [data-testid=status]")
        await expect(badge).to_have_attribute("data-status", "101", timeout=15000)
        await expect(page.get_by_text("above 4 s viewers wait")).to_be_visible(timeout=20000)
        await shot(page, "gop-warning")
        for action, status in (("Pause", "105"), ("Resume", "101")):
            await page.get_by_role("button", name=action, exact=True).click()
            await page.get_by_role("dialog").get_by_role("button", name=action, exact=True).click()
            await expect(badge).to_have_attribute("data-status", status)
        await moderate_and_push_goods(page, server, app, room.roomid)
        await page.get_by_role("button", name="Kick publisher").click()
        await page.get_by_role("dialog").get_by_role("button", name="Kick publisher").click()
        await asyncio.wait_for(publisher.process.wait(), 10)
    finally:
        await publisher.stop()
