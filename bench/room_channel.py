"""The room channel (issue 14): one room, thousands of WebSocket members, comments and likes coming in.

    python -m bench.room_channel [--parts one,two] [--viewers 5000] [--comments 50] [--likes 500]
                                 [--duration 30] [--client-procs 2] [--merge-ms MS]

- one: a minilive process (SQLite store); ``--viewers`` members join the room's channel without a
  token (receive only), spread over ``--client-procs`` load processes; commenters (one comment a
  second each, the per-user limit) and likers (ten like messages a second each) send ``--comments``
  comments and ``--likes`` likes a second for ``--duration`` seconds.
- two: the same across two minilive nodes sharing a redis-server, members and senders split evenly.

The members are raw asyncio protocols that parse WebSocket frames minimally (no JSON): each comment's
text carries its number and its send time (``@SEQ@UNIX_TIME``), and each member records, per comment,
the delay from the send to the read of the frame (one clock: one machine). Reported: delivery latency
p50/p99 over every (comment, member) pair, comments lost (sent before the end and not received by a
member connected throughout), likes messages per second, the server's CPU and RSS, and the load
processes' CPU (they compete with the server for this machine's two cores).

Raw results go to bench/results/room-channel-DATE-TIME.json; the table is printed in markdown, for
RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench import cluster, peers
from bench.run import _fmt

PARTS = ("one", "two")
MAX_LATENCY_MS = 10_000  # the histogram's last bucket holds everything slower
P99_TARGET_MS = 200.0
COMMENT_MARK = re.compile(rb'"text":"@([0-9]+@[0-9.]+)"')  # a bench comment: "@SEQ@SEND_TIME"
LIKES_PREFIX = b'{"type":"likes"'
LIKES_PER_MESSAGE = 1  # each like message carries one like: the worst case for the server
LIKE_MESSAGES_PER_LIKER = 10  # a second: the per-user limit
LIKE = json.dumps({"type": "like", "count": LIKES_PER_MESSAGE})
DRAIN_SECONDS = 3.0  # after the last send, before the members stop counting


@dataclass(slots=True)
class Options:
    parts: list[str]
    viewers: int
    comments: int  # a second
    likes: int  # a second
    duration: float
    client_procs: int
    connect_rate: float
    channel: list[str]  # [channel] settings for the server, KEY=VALUE


# ------------------------------------------------------------------ the members (load processes)


class Tally:
    """What one load process's members received."""

    def __init__(self) -> None:
        self.histogram = [0] * (MAX_LATENCY_MS + 1)  # ms -> (comment, member) deliveries
        self.sent: dict[bytes, float] = {}  # a comment's "SEQ@TIME" -> its send time (parsed once)
        self.likes = 0  # likes messages
        self.connected = 0
        self.errors: dict[str, int] = {}

    def comments(self, frames: bytes, now: float) -> int:
        """Count the comments in whole text frames (their marks found in one scan); how many."""
        histogram, sent = self.histogram, self.sent
        found = 0
        for mark in COMMENT_MARK.findall(frames):
            at = sent.get(mark)
            if at is None:
                at = sent[mark] = float(mark.split(b"@", 1)[1])
            histogram[min(MAX_LATENCY_MS, max(0, int((now - at) * 1000)))] += 1
            found += 1
        self.likes += frames.count(LIKES_PREFIX)
        return found

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Member(asyncio.Protocol):
    """A WebSocket client that reads frames and answers pings, and nothing more: the text frames of a
    read are scanned for comment marks at once (a comment's text cannot hold another's mark)."""

    def __init__(self, tally: Tally, host: str, port: int, path: str) -> None:
        self.tally = tally
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.rest = b""  # an incomplete frame, until the rest of it comes
        self.upgraded = False
        self.comments = 0
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.rest:
            data, self.rest = self.rest + data, b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.rest = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.tally.error(data[:40].decode(errors="replace"))
                self.transport.close()  # type: ignore[union-attr]
                return
            data = data[end + 4 :]
            self.upgraded = True
            self.tally.connected += 1
        pos, size = 0, len(data)
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            opcode = data[pos] & 0x0F
            if opcode == 9 and length < 126:  # ping: a masked pong (mask 0: the payload as is)
                payload = data[pos + head : pos + head + length]
                self.transport.write(bytes((0x8A, 0x80 | length, 0, 0, 0, 0)) + payload)  # type: ignore[union-attr]
            elif opcode == 8:
                self.tally.error("closed by the server")
            pos += head + length
        if pos < size:
            self.rest = data[pos:]
        if pos:
            self.comments += self.tally.comments(data[:pos] if pos < size else data, now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def members(plan: dict[str, Any]) -> None:
    """A load process: connect the plan's members, say "ready", count until stdin closes, then write."""
    loop = asyncio.get_running_loop()
    tally = Tally()
    joined: list[Member] = []
    interval = 1.0 / plan["connect_rate"]
    for host, port, path, count in plan["targets"]:
        for _ in range(count):
            member = Member(tally, host, port, path)
            try:
                await loop.create_connection(lambda m=member: m, host, port)
            except OSError as exc:
                tally.error(f"connect: {exc}")
                continue
            joined.append(member)
            await asyncio.sleep(interval)
    deadline = time.monotonic() + 30
    while tally.connected + sum(tally.errors.values()) < len(joined) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print("ready", tally.connected, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # the controller closes it at the end
    steady = [m for m in joined if not m.done.done()]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "histogram": {ms: n for ms, n in enumerate(tally.histogram) if n},
        "comments_received": sum(m.comments for m in steady),  # by members connected throughout
        "steady": len(steady),
        "likes": tally.likes,
        "connected": tally.connected,
        "lost_members": len(joined) - len(steady),
        "errors": tally.errors,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    Path(plan["output"]).write_text(json.dumps(result))
    for member in joined:
        if member.transport is not None:
            member.transport.abort()


# ------------------------------------------------------------------ the controller


def make_room(server: peers.Server, redis_url: str) -> tuple[Any, Any]:
    """An app and a room in the server's store (its SQLite file, or the shared Redis)."""
    return asyncio.run(_make_room(server.log.parent / "data", redis_url))


async def _make_room(data_dir: Path, redis_url: str) -> tuple[Any, Any]:
    from api.apps import Apps
    from api.models import Media
    from api.rooms import Rooms, RoomSettings
    from api.store import open_store

    store = open_store(data_dir, redis_url)
    await store.open()
    try:
        settings = RoomSettings()
        app = await Apps(store, settings).create_app("bench")
        now = time.time()
        for kind in ("cover", "share", "feeds"):
            media = Media(f"{kind}-{app.appid}", app.appid, "image", "image/png", 10, 1, 1, "x.png", now, now + 3600)
            await store.put_media(media)
        body = {
            "name": "bench room 压测",
            "coverImg": f"cover-{app.appid}",
            "shareImg": f"share-{app.appid}",
            "feedsImg": f"feeds-{app.appid}",
            "startTime": int(now) + 900,
            "endTime": int(now) + 900 + 3600,
            "anchorName": "bench anchor",
            "anchorWechat": "anchor_wx",
            "type": 1,
            "closeLike": 0,
            "closeGoods": 0,
            "closeComment": 0,
        }
        return app, await Rooms(store, settings).create_room(app, body)
    finally:
        await store.close()


def start_members(options: Options, nodes: list[peers.Server], roomid: int, workdir: Path) -> list[subprocess.Popen]:
    """The load processes, each with its share of every node's members."""
    processes = []
    for index in range(options.client_procs):
        targets = []
        for n, node in enumerate(nodes):
            share = options.viewers // len(nodes) // options.client_procs
            if index == 0:  # what does not divide evenly
                share += options.viewers // len(nodes) - share * options.client_procs
                share += options.viewers % len(nodes) if n == 0 else 0
            targets.append(("127.0.0.1", node.http_port, f"/api/v1/rooms/{roomid}/ws", share))
        plan = {
            "targets": targets,
            "connect_rate": options.connect_rate / options.client_procs,
            "output": str(workdir / f"members-{index}.json"),
        }
        (workdir / f"plan-{index}.json").write_text(json.dumps(plan))
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.room_channel", "members", str(workdir / f"plan-{index}.json")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=peers.minilive_env(),
                start_new_session=True,
            )
        )
    for process in processes:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"a load process did not get ready: {line!r}")
    return processes


async def send(options: Options, nodes: list[peers.Server], app: Any, roomid: int) -> dict[str, Any]:
    """Commenters and likers on the nodes, in turn; comments numbered from 1. What was sent."""
    from api import viewer_tokens

    commenters = max(1, options.comments)  # one comment a second each: the per-user limit
    likers = max(1, options.likes // LIKE_MESSAGES_PER_LIKER)
    expires = int(time.time()) + 3600

    def url(n: int, openid: str) -> str:
        identity = viewer_tokens.ViewerIdentity(roomid, openid, openid, viewer_tokens.VIEWER, expires)
        token = viewer_tokens.issue(app.secret, identity)
        return f"http://127.0.0.1:{nodes[n % len(nodes)].http_port}/api/v1/rooms/{roomid}/ws?token={token}"

    async with aiohttp.ClientSession() as session:
        comment_ws = [await session.ws_connect(url(n, f"c{n}")) for n in range(commenters)]
        like_ws = [await session.ws_connect(url(n, f"l{n}")) for n in range(likers)]
        refused: dict[str, int] = {}
        seen_by_senders: list[float] = []  # ms: the same latency, as aiohttp clients in this process see it

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for message in ws:  # members too: read what they are sent, note refusals
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                if message.data.startswith('{"type":"error"'):
                    code = json.loads(message.data)["code"]
                    refused[code] = refused.get(code, 0) + 1
                elif mark := COMMENT_MARK.search(message.data.encode()):
                    seen_by_senders.append((time.time() - float(mark[1].split(b"@", 1)[1])) * 1000)

        readers = [asyncio.create_task(drain(ws)) for ws in comment_ws + like_ws]
        await asyncio.sleep(1.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        seq = likes = 0
        comment_every = 1.0 / options.comments if options.comments else float("inf")
        like_every = LIKES_PER_MESSAGE / options.likes if options.likes else float("inf")
        next_comment = next_like = started
        while (now := loop.time()) < started + options.duration:
            while next_comment <= now:
                seq += 1
                text = f"@{seq}@{time.time():.6f}"
                await comment_ws[seq % commenters].send_str(json.dumps({"type": "comment", "text": text}))
                next_comment += comment_every
            while next_like <= now:
                likes += LIKES_PER_MESSAGE
                await like_ws[likes % likers].send_str(LIKE)
                next_like += like_every
            await asyncio.sleep(min(next_comment, next_like) - loop.time())
        await asyncio.sleep(DRAIN_SECONDS)
        for ws in comment_ws + like_ws:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    seen_by_senders.sort()
    at = seen_by_senders.__getitem__
    percentiles = [at(int(q * (len(seen_by_senders) - 1))) for q in (0.5, 0.99)] if seen_by_senders else [None, None]
    return {
        "comments": seq,
        "likes": likes,
        "refused": refused,
        "elapsed": loop.time() - started,
        "senders_p50_ms": percentiles[0],
        "senders_p99_ms": percentiles[1],
    }


def percentile(histogram: dict[int, int], q: float) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= rank:
            return float(ms)
    return float(max(histogram))


def config(options: Options) -> str:
    return "[channel]\n" + "".join(f"{setting}\n" for setting in options.channel) if options.channel else ""


def run_part(options: Options, part: str) -> dict[str, Any]:
    nodes: list[peers.Server] = []
    redis: subprocess.Popen | None = None
    redis_url = ""
    members_procs: list[subprocess.Popen] = []
    workdir = peers.CACHE / "room-channel"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if part == "two":
            redis, redis_url = cluster.start_redis()
        for n in range(2 if part == "two" else 1):
            args = ("--redis", redis_url) if redis_url else ()
            nodes.append(
                peers.start_minilive(
                    peers.free_port(),
                    peers.free_port(),
                    config=config(options),
                    name=f"minilive-channel-{n}",
                    args=args,
                )
            )
        app, room = make_room(nodes[0], redis_url)
        print(f"[{part}] {len(nodes)} node(s) up, room {room.roomid}; connecting {options.viewers} members", flush=True)
        connect_started = time.monotonic()
        members_procs = start_members(options, nodes, room.roomid, workdir)
        print(f"[{part}] members connected in {time.monotonic() - connect_started:.1f} s; sending", flush=True)
        group = peers.Group(nodes)
        before = group.sample()
        member_pids = [p.pid for p in members_procs]
        members_before = peers.sample(member_pids)
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        sent = asyncio.run(send(options, nodes, app, room.roomid))
        after = group.sample()
        members_after = peers.sample(member_pids)
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        results = []
        for index, process in enumerate(members_procs):
            assert process.stdin is not None
            process.stdin.close()
            process.wait(60)
            results.append(json.loads((workdir / f"members-{index}.json").read_text()))
    finally:
        for process in members_procs:
            if process.poll() is None:
                process.kill()
        for node in nodes:
            node.stop()
        if redis is not None:
            redis.kill()
            redis.wait()
    histogram: dict[int, int] = {}
    for result in results:
        for ms, count in result["histogram"].items():
            histogram[int(ms)] = histogram.get(int(ms), 0) + count
    connected = sum(r["connected"] for r in results)
    # Every member connected throughout should have every comment (refused ones are reported apart).
    lost = sum(r["steady"] for r in results) * sent["comments"] - sum(r["comments_received"] for r in results)
    elapsed = sent["elapsed"]
    server_cpu = after.cpu_seconds - before.cpu_seconds
    own_cpu = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    return {
        "part": part,
        "nodes": len(nodes),
        "members": connected,
        "members_dropped": sum(r["lost_members"] for r in results),
        "member_errors": {k: v for r in results for k, v in r["errors"].items()},
        "comments_sent": sent["comments"],
        "likes_sent": sent["likes"],
        "refused": sent["refused"],
        "deliveries": sum(histogram.values()),
        "comments_lost": lost,
        "latency_p50_ms": percentile(histogram, 0.50),
        "latency_p99_ms": percentile(histogram, 0.99),
        "latency_max_ms": float(max(histogram)) if histogram else None,
        "senders_latency_p50_ms": sent["senders_p50_ms"],
        "senders_latency_p99_ms": sent["senders_p99_ms"],
        "likes_messages_per_member_per_s": sum(r["likes"] for r in results) / max(1, connected) / elapsed,
        "server_cpu_pct": 100 * server_cpu / elapsed,
        "server_rss_mb": after.rss_bytes / 2**20,
        "members_cpu_pct": 100 * (members_after.cpu_seconds - members_before.cpu_seconds) / elapsed,
        "senders_cpu_pct": 100 * own_cpu / elapsed,
        "seconds": elapsed,
        "load_average_after": os.getloadavg()[0],  # other people's work on the machine shows here
    }


def table(records: list[dict[str, Any]]) -> str:
    headers = [
        "part", "nodes", "members", "comments sent", "likes sent", "lost", "p50 ms", "p99 ms", "max ms",
        "likes msgs/member/s", "server CPU %", "server RSS MB", "members CPU %", "senders CPU %",
    ]  # fmt: skip
    rows = [
        [
            r["part"], str(r["nodes"]), str(r["members"]), str(r["comments_sent"]), str(r["likes_sent"]),
            str(r["comments_lost"]), _fmt(r["latency_p50_ms"], 0), _fmt(r["latency_p99_ms"], 0),
            _fmt(r["latency_max_ms"], 0), _fmt(r["likes_messages_per_member_per_s"], 2),
            _fmt(r["server_cpu_pct"]), _fmt(r["server_rss_mb"]), _fmt(r["members_cpu_pct"]),
            _fmt(r["senders_cpu_pct"]),
        ]
        for r in records
    ]  # fmt: skip
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    if sys.argv[1:2] == ["members"]:
        uvloop.run(members(json.loads(Path(sys.argv[2]).read_text())))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="one,two")
    parser.add_argument("--viewers", type=int, default=5000)
    parser.add_argument("--comments", type=int, default=50, help="comments a second")
    parser.add_argument("--likes", type=int, default=500, help="likes a second")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--connect-rate", type=float, default=1000.0, help="new members a second")
    parser.add_argument(
        "--channel", action="append", default=[], help="a [channel] setting for the server, e.g. merge_ms=20 (repeat)"
    )
    args = parser.parse_args()
    options = Options(
        [p for p in args.parts.split(",") if p],
        args.viewers,
        args.comments,
        args.likes,
        args.duration,
        args.client_procs,
        args.connect_rate,
        [setting.replace("=", " = ", 1) for setting in args.channel],
    )
    unknown = set(options.parts) - set(PARTS)
    if unknown:
        sys.exit(f"unknown parts {', '.join(sorted(unknown))}: choose from {', '.join(PARTS)}")
    records = []
    print(f"1-minute load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for part in options.parts:
        record = run_part(options, part)
        print(json.dumps(record), flush=True)
        records.append(record)
    out = peers.ROOT / "bench" / "results" / f"room-channel-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"options": vars(args), "versions": peers.versions(), "runs": records}, indent=2))
    print(table(records))
    for r in records:
        met = r["latency_p99_ms"] is not None and r["latency_p99_ms"] < P99_TARGET_MS and r["comments_lost"] == 0
        print(f"[{r['part']}] p99 {_fmt(r['latency_p99_ms'], 0)} ms, {r['comments_lost']} lost: "
              f"target {'met' if met else 'MISSED'} (p99 < {P99_TARGET_MS:g} ms, none lost)")  # fmt: skip
    print(f"raw results: {out.relative_to(peers.ROOT)}")


if __name__ == "__main__":
    main()
