"""A stampede of viewers joining a live stream at once (issue 16): the hub starts them in slices between
its merged writes, and each one still gets the headers, then the GOP cache from a keyframe, then live,
in order, every frame once."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp

from ingest.rtmp.client import RtmpClient, connect
from relay.formats.packet import AUDIO, VIDEO, Packet
from relay.formats.rtmp_chunk import Message
from tests.conftest import flv_url, hub_stream, needs_ffmpeg, rtmp_url, wait_live
from tests.test_hub import send
from tests.test_mpegts import make_flv
from tests.test_playback import FlvClient, play_http

pytestmark = needs_ffmpeg

JOINERS = 40  # half RTMP, half HTTP-FLV


def check_start_then_live(name: str, received: list[tuple[int, bytes]], sent: list[Packet]) -> None:
    """``received``: a viewer's (kind, payload) audio and video messages, in arrival order. They must be
    the sequence headers, then one unbroken run of the sent media from a keyframe to the last packet."""
    configs = [p for p in sent if p.config]
    media = [p for p in sent if not p.config]
    head = [(kind, payload) for kind, payload in received[: len(configs)]]
    assert sorted(head) == sorted((p.kind, p.payload) for p in configs), f"{name}: headers first"
    rest = received[len(configs) :]
    assert rest, f"{name}: no media after the headers"
    starts = [i for i, p in enumerate(media) if p.kind == rest[0][0] and p.payload == rest[0][1]]
    assert len(starts) == 1, f"{name}: its first media packet was sent {len(starts)} times"
    start = starts[0]
    assert media[start].kind == VIDEO and media[start].keyframe, f"{name}: starts at packet {start}, not a keyframe"
    expected = [(p.kind, p.payload) for p in media[start:]]
    assert len(rest) == len(expected), f"{name}: {len(rest)} packets from the keyframe on, {len(expected)} sent"
    for index, (got, want) in enumerate(zip(rest, expected, strict=True)):
        assert got == want, f"{name}: packet {index} after the keyframe is not the one sent (gap or duplicate)"


async def go_live(server, tmp_path, name: str) -> tuple[RtmpClient, list[Packet]]:  # type: ignore[no-untyped-def]
    """A publisher of one second of real media on stream ``name``, live (a keyframe cached)."""
    packets = await make_flv(tmp_path / "a.flv", seconds=1)
    publisher = await connect(rtmp_url(server, "", app="live").rstrip("/"))
    await publisher.publish(name)
    try:
        await send(publisher, packets, realtime=False)
        await wait_live(server, name)
    except BaseException:
        publisher.close()
        raise
    return publisher, packets


async def test_a_stampede_of_joiners_each_gets_headers_gop_cache_and_live_in_order(make_server, tmp_path) -> None:
    # A slice of a microsecond: every joiner waits for a turn of its own, the most interleaving there is;
    # and starts go out 4 KB a turn, so merged batches queue behind the rest of a start.
    server = await make_server(join_slice_ms=0.001, join_write_bytes=4096, merge_min_viewers=0, flush_window_ms=20.0)
    packets = await make_flv(tmp_path / "a.flv", seconds=3)
    video = [p.payload for p in packets if p.kind == VIDEO]
    assert len(set(video)) == len(video), "the check below names video frames by their bytes"
    first_key = next(i for i, p in enumerate(packets) if p.kind == VIDEO and p.keyframe and not p.config)
    later_key = next(i for i, p in enumerate(packets) if i > first_key + 5 and p.kind == VIDEO and p.keyframe)
    middle = later_key + (len(packets) - later_key) // 3  # a GOP cache of a third of a GOP or so

    publisher = await connect(rtmp_url(server, "", app="live").rstrip("/"))
    await publisher.publish("rush")
    rtmp_viewers: list[tuple[RtmpClient, list[tuple[int, bytes]]]] = []
    try:
        await send(publisher, packets[:middle], realtime=False)
        await wait_live(server, "rush")
        stream = hub_stream(server, "live", "rush")
        assert stream is not None
        queued: list[int] = []
        turn = stream._next_join_turn
        loop = asyncio.get_running_loop()

        sliced: list[int] = [0]

        def spy() -> None:
            # While viewers wait to start, each turn comes 10 ms after the last (a loop busy with a
            # stampede): the 40 starts then spread over several merged writes, and over a keyframe,
            # each changing what a joiner must get.
            queued.append(len(stream._joining))
            sliced.append(len(stream._catching_up))
            if stream._joining:
                loop.call_later(0.01, turn)
            else:
                turn()

        stream._next_join_turn = spy  # type: ignore[method-assign]

        async def rtmp_viewer() -> None:
            client = await connect(rtmp_url(server, "", app="live").rstrip("/"))
            got: list[tuple[int, bytes]] = []

            def on_message(message: Message) -> None:
                if message.type_id in (AUDIO, VIDEO):
                    got.append((message.type_id, bytes(message.payload)))

            client.on_message = on_message
            rtmp_viewers.append((client, got))
            await client.play("rush")

        async with aiohttp.ClientSession() as session:
            flv_viewers = [FlvClient() for _ in range(JOINERS // 2)]
            # The live packets go out in real time while the stampede is being started.
            sending = asyncio.create_task(send(publisher, packets[middle:]))
            playing = [asyncio.create_task(play_http(session, flv_url(server, "rush"), c)) for c in flv_viewers]
            await asyncio.gather(*(rtmp_viewer() for _ in range(JOINERS // 2)))
            await sending
            last = packets[-1].payload

            def done(got: list[Any]) -> bool:
                return any(payload == last for _, payload in got[-4:])

            async def everyone_has_it() -> None:
                while not all(done([(t.kind, t.payload) for _, t in c.tags]) for c in flv_viewers) or not all(
                    done(got) for _, got in rtmp_viewers
                ):
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(everyone_has_it(), 10)
            for task in playing:
                task.cancel()

        assert any(n > 1 for n in queued), f"the joiners never queued (queue lengths {queued}): nothing was tested"
        assert max(sliced) > 1, "no start went out in slices: nothing was tested"
        assert stream._joining == {} and stream._catching_up == {}
        for index, client in enumerate(flv_viewers):
            tags = [(t.kind, t.payload) for _, t in client.tags if t.kind in (AUDIO, VIDEO)]
            check_start_then_live(f"HTTP-FLV viewer {index}", tags, packets)
        for index, (_, got) in enumerate(rtmp_viewers):
            check_start_then_live(f"RTMP viewer {index}", got, packets)
    finally:
        for client, _ in rtmp_viewers:
            client.close()
        publisher.close()


async def test_viewers_that_leave_while_waiting_for_their_turn_are_never_started(make_server, tmp_path) -> None:
    server = await make_server(join_slice_ms=0.001)
    publisher, _ = await go_live(server, tmp_path, "leave")
    try:
        stream = hub_stream(server, "live", "leave")
        assert stream is not None
        async with aiohttp.ClientSession() as session:
            viewers = [FlvClient() for _ in range(10)]
            playing = [asyncio.create_task(play_http(session, flv_url(server, "leave"), c)) for c in viewers]
            while len(stream._joining) + stream.viewer_count < 10:
                await asyncio.sleep(0.005)
            # Counted while they wait, as everywhere else (stats, audience)
            assert sum(stream.audience().values()) == 10
            for task in playing:
                task.cancel()
            await asyncio.gather(*playing, return_exceptions=True)
        for _ in range(200):
            if not stream.viewers():
                break
            await asyncio.sleep(0.01)
        assert stream.viewers() == [] and stream.viewer_count == 0, "every viewer that left is gone"
        assert server.hub.stats("live", "leave")["viewers"] == 0
    finally:
        publisher.close()


async def test_rtmp_players_set_up_in_slices_all_play(make_server, tmp_path) -> None:
    # A slice of a microsecond: each turn serves one setting-up connection, the others wait unread.
    server = await make_server(setup_slice_ms=0.001)
    packets = await make_flv(tmp_path / "a.flv", seconds=1)
    waiting: list[int] = []
    turn = server.rtmp._next_setup_turn

    def spy() -> None:
        waiting.append(len(server.rtmp._setup_queue))
        turn()

    server.rtmp._next_setup_turn = spy  # type: ignore[method-assign]
    url = rtmp_url(server, "", app="live").rstrip("/")
    publisher = await connect(url)
    await publisher.publish("line")
    players: list[tuple[RtmpClient, list[bytes]]] = []
    try:
        await send(publisher, packets, realtime=False)
        await wait_live(server, "line")

        async def player() -> None:
            client = await connect(url)
            got: list[bytes] = []
            client.on_message = lambda m: got.append(bytes(m.payload)) if m.type_id == VIDEO else None
            players.append((client, got))
            await client.play("line")

        await asyncio.wait_for(asyncio.gather(*(player() for _ in range(30))), 10)
        keyframes = [p.payload for p in packets if p.kind == VIDEO and p.keyframe and not p.config]

        async def all_have_a_keyframe() -> None:
            while not all(any(payload in keyframes for payload in got) for _, got in players):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_have_a_keyframe(), 10)
        assert max(waiting, default=0) > 1, f"no connection waited for its turn ({waiting}): nothing was tested"
        assert not server.rtmp._setup_queue
        assert server.hub.stats("live", "line")["viewers"] == 30
    finally:
        for client, _ in players:
            client.close()
        publisher.close()


async def test_a_joiner_that_does_not_take_its_start_is_dropped_as_too_slow(make_server, tmp_path) -> None:
    # Starts go out 64 KB a turn; a player that never reads cannot take an 8 MB one (on loopback the
    # kernel holds about 4 MB for it: the send buffer grows to tcp_wmem's maximum at once), and is
    # dropped after max_behind_seconds while a reading player plays on.
    server = await make_server(join_write_bytes=64 * 1024, max_behind_seconds=1.0)
    publisher, packets = await go_live(server, tmp_path, "stall")
    try:
        clock = packets[-1].timestamp

        def inter_frames(count: int) -> None:  # 10 KB each, no keyframe: the GOP cache grows
            nonlocal clock
            for _ in range(count):
                clock += 40
                publisher.send_media(VIDEO, clock, b"\x27\x01\x00\x00\x00" + bytes(10_000))

        inter_frames(800)
        stream = hub_stream(server, "live", "stall")
        assert stream is not None
        for _ in range(200):
            if sum(len(p.payload) for p in stream.gop.packets) > 8_000_000:
                break
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.http_port))
        await loop.sock_sendall(sock, b"GET /live/stall.flv HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        async with aiohttp.ClientSession() as session:
            reading = FlvClient()
            playing = asyncio.create_task(play_http(session, flv_url(server, "stall"), reading))
            await reading.wait_for(lambda c: c.video())
            stats: dict[str, Any] = {}
            for _ in range(100):  # check_viewers runs once a second
                stats = server.hub.stats("live", "stall") or {}
                if stats.get("viewers_dropped_slow"):
                    break
                inter_frames(1)
                await asyncio.sleep(0.05)
            assert stats["viewers_dropped_slow"] == 1, "the stalled joiner was never dropped"
            assert stats["viewers"] == 1 and not reading.ended.is_set(), "the reading player plays on"
            assert stream._catching_up == {}
            playing.cancel()
        sock.close()
    finally:
        publisher.close()
