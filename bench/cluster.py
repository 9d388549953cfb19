"""Workers and edges (issue 13): how far ``minilive serve --workers 2`` takes fan-out on this machine
against one worker and against nginx-rtmp with two workers, and what an edge adds to a stream.

    python -m bench.cluster [--parts capacity,edge] [--servers minilive,minilive:2,nginx-rtmp:2]
                            [--steps 400,800,1200,1600,2000,2400,3200,4000] [--duration 12]

- capacity: bench.run's fan-out scenario (one publisher, N viewers, half RTMP and half HTTP-FLV; all
  RTMP on nginx-rtmp) on each server, fresh for every N, N stepped up until the sampled viewers'
  latency p99 reaches --p99-limit-ms. A server's capacity is the highest step still under it: its
  delivered Gbit/s there, and its CPU per Gbit (every process of the server).
- edge: a redis-server and three minilive nodes sharing it (``--redis``): A, where the publisher
  pushes; B, an edge that pulls from A through the registry; C, a chained edge (``[cluster] origin``
  = B's cluster listener). Sampled viewers on all three, in the publisher's process (one clock), give
  the latency each hop adds; HTTP-FLV requests from this process time the first keyframe at an edge
  that does not pull the stream yet (cold) and at one that does (warm).

Raw results go to bench/results/cluster-DATE-TIME.json; the tables are printed in markdown, for
RESULTS.md. See bench/README.md ("Workers and edges").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvloop

from bench import fixture, load, peers, run
from bench.run import _fmt, _percentile
from relay.formats.flv import VIDEO, Tag

PARTS = ("capacity", "edge")
STEPS = (400, 800, 1200, 1600, 2000, 2400, 3200, 4000)  # viewers, by default
ONE, TWO, PEER = "minilive", "minilive:2", "nginx-rtmp:2"  # the servers the targets compare
SCALE_TARGET = 1.8  # two workers deliver at least this many times what one does
CPU_TARGET = 0.5  # two workers' CPU per Gbit, at most this much of nginx-rtmp's with two workers
HOP_TARGET_MS = 30.0  # latency p99 an edge adds per hop
COLD_TARGET_MS = 300.0  # first keyframe at an edge that does not pull the stream yet
WARM_TARGET_MS = 50.0  # ... and at one that does
PROBE_STREAM = "probe"  # the first-keyframe probes' stream (the latency run's is run.STREAM)
PROBE_TIMEOUT = 10.0
QUIET_PROBE_S = 5.0  # how long wait_idle watches the machine at a time
# What is kept of a capacity step that other processes disturbed (and that ran again).
DISTURBED_KEYS = ("other_cpu_pct", "busiest_others", "delivered_gbit_per_s", "cpu_s_per_gbit", "latency_p99_ms")
NODES = ("A", "B", "C")
ROLES = {"A": "origin (publisher here)", "B": "edge of A (registry)", "C": "edge of B ([cluster] origin)"}
NODE_CONFIG = """\
[cluster]
heartbeat_seconds = {heartbeat:g}
linger_seconds = {linger:g}
"""


@dataclass(slots=True)
class Options:
    parts: list[str]
    servers: list[str]
    steps: list[int]
    duration: float  # seconds measured per capacity step
    warmup: float
    connect_rate: float
    client_procs: int
    sampled: int  # viewers that measure latency, per capacity step
    p99_limit_ms: float
    edge_viewers: int  # viewers per node in the edge latency run, sampled ones included
    edge_sampled: int  # of which sampled, per node
    edge_duration: float
    probes: int  # first-keyframe requests per case
    linger: float  # [cluster] linger_seconds (and heartbeat_seconds) of the edge nodes
    wait_load: float  # wait for the 1-minute load average to fall under this before measuring
    wait_max: float  # ... at most this many seconds
    retries: int  # capacity: runs of a step again while other processes disturbed it
    confirm: int  # capacity: more runs of a step that reaches the limit (it counts by their median)

    def run_options(self, viewers: int) -> run.Options:
        """bench.run's options for a fan-out with ``viewers``, with this run's timing and clients."""
        return run.Options(
            self.servers, [viewers], [], self.duration, self.warmup, self.connect_rate, self.client_procs,
            self.sampled, [], 0.0, "block",
        )  # fmt: skip


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def wait_for_quiet(options: Options) -> dict[str, Any]:
    """Wait (up to ``wait_max``) for the 1-minute load average to fall under ``wait_load``: other
    people's jobs on this machine disturb the measurement. Returns what was seen."""
    started = time.monotonic()
    first = os.getloadavg()
    while os.getloadavg()[0] >= options.wait_load and time.monotonic() - started < options.wait_max:
        _progress(f"load average {os.getloadavg()[0]:.2f} >= {options.wait_load:g}: waiting ...")
        time.sleep(15)
    seen = {"load_before": first, "load_at_start": os.getloadavg(), "waited_s": round(time.monotonic() - started)}
    _progress(f"load average {seen['load_at_start'][0]:.2f} (waited {seen['waited_s']} s)")
    return seen


def wait_idle(options: Options) -> None:
    """Between runs, when nothing of ours runs: wait (up to ``wait_max``) for a QUIET_PROBE_S window in
    which the machine is less than DISTURBED_PCT of a core busy."""
    deadline = time.monotonic() + options.wait_max
    while True:
        before = run.MachineCpu.read()
        time.sleep(QUIET_PROBE_S)
        busy = run.MachineCpu.read().percent_since(before)[0]
        if busy < run.DISTURBED_PCT or time.monotonic() > deadline:
            return
        _progress(f"  other processes keep {busy:.0f} % of a core busy: waiting ...")


# ------------------------------------------------------------------ capacity


def _processes(step: dict[str, Any]) -> list[str]:
    """How the work spread over the server's processes, as 'a / b / c' columns: each one's CPU in % of a
    core and sockets (root first: minilive's supervisor, nginx's master), and the latency p99 of the
    sampled viewers on each (the publisher's process first)."""
    window = step["window_s"]
    procs = step["server_processes"]
    return [
        " / ".join(f"{100 * p['cpu_s'] / window:.0f}" for p in procs),
        " / ".join(str(p["sockets"]) for p in procs),
        " / ".join(_fmt(p["p99_ms"]) for p in step["latency_by_process"] if p["pid"] is not None),
    ]


def under_limit(step: dict[str, Any], options: Options) -> bool:
    p99 = step.get("latency_p99_ms")
    return "error" not in step and p99 is not None and p99 < options.p99_limit_ms


def capacity_step(name: str, count: int, options: Options) -> dict[str, Any]:
    """One step; run again (up to ``retries`` times, once the machine is quiet) while other processes
    used the machine during it. The disturbed runs are kept in ``disturbed_runs``."""
    disturbed: list[dict[str, Any]] = []
    while True:
        step = run.run_one(name, "fanout", count, options.run_options(count))
        step["load_average"] = os.getloadavg()
        others = step.get("other_cpu_pct", 0)
        if others <= run.DISTURBED_PCT or len(disturbed) >= options.retries:
            step["disturbed_runs"] = disturbed
            return step
        _progress(f"  other processes used {others:.0f} % of a core: once more when the machine is quiet")
        disturbed.append({k: step.get(k) for k in DISTURBED_KEYS})
        wait_idle(options)


def _report(step: dict[str, Any]) -> None:
    if "error" in step:
        _progress(f"  error: {step['error'].splitlines()[0]}")
        return
    _progress(
        f"  {step['delivered_gbit_per_s']:.2f} Gbit/s, p99 {_fmt(step['latency_p99_ms'])} ms, "
        f"{_fmt(step['cpu_s_per_gbit'], 3)} CPU-s/Gbit, {step['viewers_behind']} behind"
    )


def capacity(options: Options) -> list[dict[str, Any]]:
    """Each server at each step, until its sampled viewers' p99 reaches the limit: a step that reaches
    it runs ``confirm`` more times, and counts by the run with the median p99 (one slow run is noise
    on this machine often enough); the others' main figures are kept in ``confirm_runs``."""
    steps = []
    for name in options.servers:
        for count in options.steps:
            _progress(f"capacity: {name}, {count} viewers ...")
            runs = [capacity_step(name, count, options)]
            _report(runs[0])
            if "error" not in runs[0] and not under_limit(runs[0], options):
                for _ in range(options.confirm):
                    _progress(f"  at or over {options.p99_limit_ms:g} ms: {name}, {count} viewers again ...")
                    runs.append(capacity_step(name, count, options))
                    _report(runs[-1])
            ranked = sorted(runs, key=lambda r: math.inf if r.get("latency_p99_ms") is None else r["latency_p99_ms"])
            step = ranked[len(ranked) // 2]
            step["confirm_runs"] = [{k: r.get(k) for k in DISTURBED_KEYS} for r in runs] if len(runs) > 1 else []
            steps.append(step)
            if not under_limit(step, options):
                break
    return steps


def capacity_points(steps: list[dict[str, Any]], options: Options) -> dict[str, dict[str, Any]]:
    """Per server: its highest step before the first at or over the limit (``reached``: whether a step
    reached it; if none did, the capacity is at least the last step's)."""
    points: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(s["server"] for s in steps):
        mine = [s for s in steps if s["server"] == name]
        good = []
        for s in mine:
            if not under_limit(s, options):
                break
            good.append(s)
        over = mine[len(good)] if len(good) < len(mine) else None
        points[name] = {"best": good[-1] if good else None, "over": over, "reached": over is not None}
    return points


def _same_count(steps: list[dict[str, Any]], name: str, count: int) -> dict[str, Any] | None:
    return next((s for s in steps if s["server"] == name and s["count"] == count and "error" not in s), None)


def steps_table(steps: list[dict[str, Any]]) -> str:
    headers = [
        "server", "viewers", "delivered Gbit/s", "CPU-s per Gbit", f"vs {PEER}", "server CPU %",
        "CPU % per process", "sockets per process", "latency p50 / p99 ms", "p99 per process ms",
        "1st key p50 / p95 ms", "behind", "client CPU %", "machine busy %", "others %",
    ]  # fmt: skip
    rows = []
    for s in steps:
        if "error" in s:
            rows.append(run._error_row([s["server"], str(s["count"])], s["error"], len(headers)))
            continue
        peer = _same_count(steps, PEER, s["count"])
        cpu, sockets, p99s = _processes(s)
        rows.append(
            [
                s["server"], str(s["count"]), _fmt(s["delivered_gbit_per_s"], 2), _fmt(s["cpu_s_per_gbit"], 3),
                run._ratio(s["cpu_s_per_gbit"], peer["cpu_s_per_gbit"] if peer else None),
                _fmt(100 * s["server_cpu_s"] / s["window_s"], 0), cpu, sockets,
                f"{_fmt(s['latency_p50_ms'])} / {_fmt(s['latency_p99_ms'])}", p99s,
                f"{_fmt(s['first_keyframe_p50_ms'], 0)} / {_fmt(s['first_keyframe_p95_ms'], 0)}",
                str(s["viewers_behind"]), _fmt(s["client_cpu_pct"], 0), _fmt(s["machine_busy_pct"], 0),
                _fmt(s["other_cpu_pct"], 0),
            ]
        )  # fmt: skip
    notes = [
        f"note: other processes used {s['other_cpu_pct']:.0f} % of a core during {s['server']} with {s['count']} "
        f"viewers (busiest: {s['busiest_others'] or 'short-lived'}); its numbers may be disturbed"
        for s in steps
        if s.get("other_cpu_pct", 0) > run.DISTURBED_PCT
    ]
    notes += [
        f"note: {s['server']} with {s['count']} viewers reached the limit and ran {len(s['confirm_runs'])} times: "
        f"p99 {', '.join(_fmt(r['latency_p99_ms']) for r in s['confirm_runs'])} ms; the row is the median run"
        for s in steps
        if s.get("confirm_runs")
    ]
    notes += [
        f"note: {s['server']} with {s['count']} viewers ran {len(s['disturbed_runs']) + 1} times: other processes "
        f"used {', '.join(format(d['other_cpu_pct'], '.0f') for d in s['disturbed_runs'])} % of a core before"
        for s in steps
        if s.get("disturbed_runs")
    ]
    return "\n".join([run.markdown_table(headers, rows, text=1), "", *notes])


def points_table(points: dict[str, dict[str, Any]], steps: list[dict[str, Any]], options: Options) -> str:
    headers = [
        "server", "capacity: viewers", "delivered Gbit/s", f"vs {ONE}", "CPU-s per Gbit", f"vs {PEER}",
        "latency p99 ms", "next step: viewers, p99 ms", "server CPU %", "client CPU %", "machine busy %",
    ]  # fmt: skip
    rows, notes = [], []
    one = (points.get(ONE) or {}).get("best")
    peer = (points.get(PEER) or {}).get("best")
    for name, point in points.items():
        best, over = point["best"], point["over"]
        if best is None:
            rows.append([name, "none under the limit"] + [""] * (len(headers) - 2))
            continue
        if over is None:
            step = "not reached"
        elif "error" in over:
            step = f"{over['count']}, error"
        else:
            step = f"{over['count']}, {_fmt(over['latency_p99_ms'])}"
        rows.append(
            [
                name, str(best["count"]) if point["reached"] else f">= {best['count']}",
                _fmt(best["delivered_gbit_per_s"], 2),
                run._ratio(best["delivered_gbit_per_s"], one["delivered_gbit_per_s"] if one else None),
                _fmt(best["cpu_s_per_gbit"], 3),
                run._ratio(best["cpu_s_per_gbit"], peer["cpu_s_per_gbit"] if peer else None),
                _fmt(best["latency_p99_ms"]), step, _fmt(100 * best["server_cpu_s"] / best["window_s"], 0),
                _fmt(best["client_cpu_pct"], 0), _fmt(best["machine_busy_pct"], 0),
            ]
        )  # fmt: skip
        notes.append(
            f"{name}: at {best['count']} viewers the load clients used {best['client_cpu_pct']:.0f} % of a core and "
            f"the machine was {best['machine_busy_pct']:.0f} % busy of {100 * (os.cpu_count() or 1)} %: the server "
            f"had at most {100 * (os.cpu_count() or 1) - best['client_cpu_pct']:.0f} % of a core left"
        )
    two = (points.get(TWO) or {}).get("best")
    if one and two:
        ratio = two["delivered_gbit_per_s"] / one["delivered_gbit_per_s"]
        bound = "" if points[TWO]["reached"] else " (at least: two workers did not reach the limit)"
        verdict = "met" if ratio >= SCALE_TARGET else "MISSED"
        notes.append(f"target: {TWO} delivers >= {SCALE_TARGET}x {ONE}: {ratio:.2f}x{bound}: {verdict}")
    if two and peer:
        ratio = two["cpu_s_per_gbit"] / peer["cpu_s_per_gbit"]
        verdict = "met" if ratio <= CPU_TARGET else "MISSED"
        notes.append(
            f"target: {TWO}'s CPU per Gbit <= {CPU_TARGET}x {PEER}'s, each at its capacity: {ratio:.2f}x: {verdict}"
        )
        both = [s["count"] for s in steps if s["server"] == TWO and under_limit(s, options)]
        both = [c for c in both if (p := _same_count(steps, PEER, c)) and under_limit(p, options)]
        if both:
            a, b = _same_count(steps, TWO, max(both)), _same_count(steps, PEER, max(both))
            assert a is not None and b is not None
            ratio = a["cpu_s_per_gbit"] / b["cpu_s_per_gbit"]
            verdict = "met" if ratio <= CPU_TARGET else "MISSED"
            notes.append(
                f"target: the same at {max(both)} viewers (the most both served under the limit): {ratio:.2f}x: "
                f"{verdict}"
            )
    return "\n".join([run.markdown_table(headers, rows), "", *notes])


# ------------------------------------------------------------------ edge: the nodes


@dataclass(slots=True)
class Chain:
    """The edge scenario's servers: redis-server and nodes A, B, C."""

    redis: subprocess.Popen
    redis_url: str
    nodes: dict[str, peers.Server]

    def url(self, node: str, stream: str) -> str:
        url = self.nodes[node].flv_url(stream)
        assert url is not None
        return url

    def stop(self) -> None:
        for node in reversed(self.nodes.values()):
            node.stop()
        self.redis.kill()
        self.redis.wait()


def start_redis() -> tuple[subprocess.Popen, str]:
    """A redis-server on a free loopback port, nothing saved (as tests/conftest.py starts one)."""
    port = peers.free_port()
    argv = ["redis-server", "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + peers.STARTUP_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not answer on port {port}")


def streams_json(server: peers.Server) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/api/v1/streams", timeout=5) as response:
        return json.loads(response.read())


def start_chain(options: Options) -> Chain:
    """A, B and C sharing a redis-server; C's origin is B's cluster listener, as B reports it."""
    redis, redis_url = start_redis()
    nodes: dict[str, peers.Server] = {}
    chain = Chain(redis, redis_url, nodes)
    config = NODE_CONFIG.format(heartbeat=options.linger, linger=options.linger)
    try:
        for node in NODES:
            extra = f'origin = "{streams_json(nodes["B"])["cluster"]["url"]}"\n' if node == "C" else ""
            nodes[node] = peers.start_minilive(
                peers.free_port(), peers.free_port(), config=config + extra, name=f"minilive-{node.lower()}",
                args=("--redis", redis_url),
            )  # fmt: skip
    except Exception:
        chain.stop()
        raise
    return chain


# ------------------------------------------------------------------ edge: first keyframe


async def play(url: str, on_tag: Callable[[Tag], None]) -> load.FlvViewer:
    """An HTTP-FLV viewer of ``url``, once the server has answered its request."""
    loop = asyncio.get_running_loop()
    viewer = load.FlvViewer(url, on_tag)
    parts = urlsplit(url)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await loop.create_connection(lambda: viewer, parts.hostname, parts.port)
            await viewer.started
    except BaseException:
        viewer.close()
        raise
    return viewer


async def first_keyframe(url: str) -> float:
    """ms from starting to connect to HTTP-FLV ``url`` to receiving its first video keyframe."""
    got: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def on_tag(tag: Tag) -> None:
        if tag.kind == VIDEO and load.is_keyframe(tag.payload) and not got.done():
            got.set_result(time.monotonic())

    started = time.monotonic()
    viewer = await play(url, on_tag)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await asyncio.wait([got, viewer.closed], return_when=asyncio.FIRST_COMPLETED)
    finally:
        viewer.close()
    if not got.done():
        raise ConnectionError(f"{url} closed before a keyframe")
    return (got.result() - started) * 1000


async def hold(url: str) -> load.FlvViewer:
    """A viewer of ``url`` that stays (so that its node keeps pulling), counting bytes only."""
    viewer = await play(url, lambda tag: None)
    viewer.stop_parsing()
    return viewer


async def not_pulling(session: aiohttp.ClientSession, node: peers.Server, stream: str) -> None:
    """Until ``node`` neither pulls ``stream`` nor has it (its pull stopped after the linger)."""
    url = f"http://127.0.0.1:{node.http_port}/api/v1/streams"
    deadline = time.monotonic() + PROBE_TIMEOUT
    while True:
        async with session.get(url) as response:
            body = await response.json()
        pulling = any(p["stream"] == f"live/{stream}" for p in body["cluster"]["pulls"])
        if not pulling and not any(s["name"] == stream for s in body["streams"]):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.name} still pulls {stream} {PROBE_TIMEOUT:g} s after its last viewer left")
        await asyncio.sleep(0.05)


async def probes(chain: Chain, options: Options) -> list[dict[str, Any]]:
    """First-keyframe times: at the origin (reference), at B cold and warm, at C cold (B warm) and warm,
    and at C with both cold. A publisher in this process sends PROBE_STREAM to A throughout."""
    source = load.Source(fixture.PATH)
    timeline = load.Timeline(math.inf, math.inf)
    publisher = load.PublisherResult(PROBE_STREAM)
    a = chain.nodes["A"]
    sending = asyncio.create_task(
        load.publish(a.rtmp_url(), publisher, source, time.monotonic(), timeline, None, None, PROBE_TIMEOUT)
    )
    await asyncio.sleep(3.0)  # a GOP (2 s) at A, so that its GOP cache answers at once
    url = {node: chain.url(node, PROBE_STREAM) for node in NODES}
    cases: list[dict[str, Any]] = []
    holders: list[load.FlvViewer] = []

    async def case(name: str, node: str, target: float | None, cold: tuple[str, ...] = ()) -> None:
        times, errors = [], []
        for _ in range(options.probes):
            for other in cold:
                await not_pulling(session, chain.nodes[other], PROBE_STREAM)
            try:
                times.append(await first_keyframe(url[node]))
            except Exception as exc:
                errors.append(load._describe(exc))
        cases.append({"case": name, "node": node, "target_ms": target, "ms": times, "errors": errors})
        _progress(f"  {name}: {', '.join(f'{t:.0f}' for t in times)} ms" + (f"; errors {errors}" if errors else ""))

    async with aiohttp.ClientSession() as session:
        try:
            await case("origin A (reference)", "A", None)
            await case("edge B, cold", "B", COLD_TARGET_MS, cold=("B",))
            holders.append(await hold(url["B"]))
            await case("edge B, warm", "B", WARM_TARGET_MS)
            await case("edge C, cold (B warm)", "C", COLD_TARGET_MS, cold=("C",))
            holders.append(await hold(url["C"]))
            await case("edge C, warm", "C", WARM_TARGET_MS)
            for holder in holders:
                holder.close()
            await case("edge C, cold (B cold too)", "C", COLD_TARGET_MS, cold=("C", "B"))
        finally:
            for holder in holders:
                holder.close()
            timeline.end = -math.inf  # the publisher stops at its next frame
            await sending
    return cases


def probes_table(cases: list[dict[str, Any]]) -> str:
    headers = ["request", "samples", "p50 ms", "max ms", "target", "errors"]
    rows, notes = [], []
    for c in cases:
        times, target = c["ms"], c["target_ms"]
        rows.append(
            [
                c["case"], str(len(times)), _fmt(_percentile(times, 50)), _fmt(max(times, default=None)),
                f"< {target:.0f} ms" if target else "-", str(len(c["errors"])),
            ]
        )  # fmt: skip
        if target:
            met = times and not c["errors"] and max(times) < target
            notes.append(
                f"target: {c['case']}: every first keyframe < {target:.0f} ms (max {_fmt(max(times, default=None))}): "
                f"{'met' if met else 'MISSED'}"
            )
    return "\n".join([run.markdown_table(headers, rows), "", *notes])


# ------------------------------------------------------------------ edge: latency per hop


def edge_plans(chain: Chain, options: Options, schedule: run.Schedule) -> list[dict]:
    """bench.run's fan-out plans for each node, labelled with it, put together: the publisher (to A)
    and every node's sampled viewers in one process, the bulk viewers in the others."""
    run_options = options.run_options(options.edge_viewers)
    run_options.sampled = options.edge_sampled
    source: dict[str, Any] = {}
    bulk: list[dict] = []
    for node, server in chain.nodes.items():
        first, *others = run.fanout_plans(server, options.edge_viewers, run_options, schedule)
        for plan in (first, *others):
            for spec in plan["viewers"]:
                spec["group"] = node
        if node == "A":
            source = first
        else:
            source["viewers"] += first["viewers"]
        bulk += [spec for plan in others for spec in plan["viewers"]]
    common = {k: v for k, v in source.items() if k not in ("publishers", "viewers")}
    return [source] + [{**common, "viewers": part} for part in run._split(bulk, 300, run_options)]


def hop_latency(viewers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per node: its sampled viewers' latency; and per frame (named by its send time), the median
    latency at the node minus that at the node before it, the latency the hop added to that frame."""
    frames: dict[str, dict[float, list[float]]] = {node: {} for node in NODES}
    for viewer in viewers:
        for sent, ms in viewer["latency"]:
            frames[viewer["group"]].setdefault(sent, []).append(ms)
    out: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(NODES):
        every = [ms for per_frame in frames[node].values() for ms in per_frame]
        record = {"samples": len(every), "p50_ms": _percentile(every, 50), "p99_ms": _percentile(every, 99)}
        if i:
            before = NODES[i - 1]
            added = [
                statistics.median(per_frame) - statistics.median(frames[before][sent])
                for sent, per_frame in frames[node].items()
                if sent in frames[before]
            ]
            previous = out[before]["p99_ms"]
            record["added_p99_ms"] = record["p99_ms"] - previous if None not in (record["p99_ms"], previous) else None
            record["per_frame_added_p50_ms"] = _percentile(added, 50)
            record["per_frame_added_p99_ms"] = _percentile(added, 99)
            record["frames_paired"] = len(added)
        out[node] = record
    return out


def edge_latency(chain: Chain, options: Options) -> dict[str, Any]:
    """The publisher at A, ``edge_viewers`` viewers on each node (``edge_sampled`` of them sampled)."""
    per_node = options.edge_viewers
    publish = time.monotonic() + 2.0
    viewers = publish + 1.5
    measure = viewers + per_node / options.connect_rate + options.warmup + 2.0  # + C's cold pull through B
    schedule = run.Schedule(publish, viewers, measure, measure + options.edge_duration)
    group = peers.Group(list(chain.nodes.values()))
    raw = run.measure(group, edge_plans(chain, options, schedule), schedule)
    hops = hop_latency(raw["viewers"])
    summary = run.summarize_fanout(raw)
    for node, server in chain.nodes.items():
        cpu = sum(p["cpu_s"] for p in summary["server_processes"] if p["pid"] == server.process.pid)
        hops[node]["cpu_pct"] = 100 * cpu / summary["window_s"]
    summary.pop("server_processes")
    return {**summary, "hops": hops, "viewers_per_node": per_node, "sampled_per_node": options.edge_sampled}


def hops_table(edge: dict[str, Any]) -> str:
    headers = [
        "node", "role", "latency p50 ms", "p99 ms", "p99 added by the hop ms", "per frame added p50 / p99 ms",
        "node CPU %",
    ]  # fmt: skip
    rows, notes = [], []
    for node in NODES:
        h = edge["hops"][node]
        rows.append(
            [
                node, ROLES[node], _fmt(h["p50_ms"]), _fmt(h["p99_ms"]), _fmt(h.get("added_p99_ms")),
                f"{_fmt(h.get('per_frame_added_p50_ms'))} / {_fmt(h.get('per_frame_added_p99_ms'))}" if node != "A"
                else "-",
                _fmt(h["cpu_pct"], 0),
            ]
        )  # fmt: skip
        if h.get("added_p99_ms") is not None:
            met = "met" if h["added_p99_ms"] < HOP_TARGET_MS else "MISSED"
            added = f"{h['added_p99_ms']:.1f} ms"
            notes.append(f"target: the hop to {node} adds < {HOP_TARGET_MS:.0f} ms to the p99: {added}: {met}")
    notes.append(
        f"{edge['viewers_per_node']} viewers per node ({edge['sampled_per_node']} sampled), half RTMP, half HTTP-FLV; "
        f"{edge['delivered_gbit_per_s']:.2f} Gbit/s delivered, {edge['viewers_behind']} behind; load clients "
        f"{edge['client_cpu_pct']:.0f} % of a core, machine {edge['machine_busy_pct']:.0f} % busy, others "
        f"{edge['other_cpu_pct']:.0f} %"
    )
    return "\n".join([run.markdown_table(headers, rows, text=2), "", *notes])


def edge(options: Options) -> dict[str, Any]:
    chain = start_chain(options)
    try:
        _progress("edge: first keyframe at A, B and C ...")
        cases = uvloop.run(probes(chain, options))
        _progress("edge: latency per hop ...")
        latency = edge_latency(chain, options)
    finally:
        chain.stop()
    return {"probes": cases, "latency": latency}


# ------------------------------------------------------------------ command line


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to run: {', '.join(PARTS)}")
    parser.add_argument(
        "--servers", default=f"{ONE},{TWO},{PEER}", type=run.server_names,
        help="capacity: NAME[:WORKERS], comma-separated, in run order",
    )  # fmt: skip
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="capacity: viewer counts, rising")
    parser.add_argument("--duration", default=12.0, type=float, help="capacity: seconds measured per step")
    parser.add_argument("--p99-limit-ms", default=100.0, type=float, help="capacity: the latency p99 that ends it")
    run.add_load_arguments(parser)
    parser.add_argument("--edge-viewers", default=100, type=int, help="edge: viewers per node, sampled included")
    parser.add_argument("--edge-sampled", default=10, type=int, help="edge: sampled viewers per node")
    parser.add_argument("--edge-duration", default=20.0, type=float, help="edge: seconds of the latency window")
    parser.add_argument("--probes", default=10, type=int, help="edge: first-keyframe requests per case")
    parser.add_argument("--linger", default=0.5, type=float, help="edge: the nodes' [cluster] linger and heartbeat s")
    parser.add_argument("--wait-load", default=0.7, type=float, help="wait for the load average to fall under this")
    parser.add_argument("--wait-max", default=600.0, type=float, help="... at most this many seconds (0: no wait)")
    parser.add_argument(
        "--retries", default=2, type=int, help="capacity: runs of a step again while other processes disturbed it"
    )
    parser.add_argument(
        "--confirm", default=2, type=int, help="capacity: more runs of a step that reaches the limit (median counts)"
    )
    args = parser.parse_args(argv)
    try:
        parts = run.names(args.parts, PARTS, "part")
        steps = [int(n) for n in args.steps.split(",") if n]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    if steps != sorted(steps) or args.edge_sampled > args.edge_viewers or args.probes < 1:
        parser.error("--steps must rise; --edge-sampled at most --edge-viewers; --probes at least 1")
    return Options(
        parts, args.servers, steps, args.duration, args.warmup, args.connect_rate, args.client_procs, args.sampled,
        args.p99_limit_ms, args.edge_viewers, args.edge_sampled, args.edge_duration, args.probes, args.linger,
        args.wait_load, args.wait_max, args.retries, args.confirm,
    )  # fmt: skip


def versions() -> dict[str, str]:
    found = peers.versions()
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    found["redis-server"] = next((w.split("=", 1)[1] for w in redis if w.startswith("v=")), "")
    return found


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    run.raise_fd_limit()
    peers.install(("redis-server",), nms=any(peers.kind(name) == "nms" for name in options.servers))
    if any(peers.split_name(name)[1] > 1 and peers.kind(name) == "nginx-rtmp" for name in options.servers):
        peers.build_nginx()
    fixture.ensure()
    started = datetime.now()
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.cluster", *(sys.argv[1:] if argv is None else argv)]),
        "machine": run.machine(),
        "versions": versions(),
        "fixture": {"path": str(fixture.PATH), "bit_rate": fixture.bitrate(fixture.PATH)},
        "options": {k: getattr(options, k) for k in Options.__slots__},
    }
    if options.wait_max > 0:
        report["load"] = wait_for_quiet(options)
    tables = []
    if "capacity" in options.parts:
        steps = report["capacity"] = capacity(options)
        points = capacity_points(steps, options)
        report["capacity_points"] = {name: p["best"] and p["best"]["count"] for name, p in points.items()}
        title = f"Fan-out capacity: every step, {options.duration:g} s measured"
        tables.append(f"### {title}\n\n{steps_table(steps)}")
        title = f"Fan-out capacity: the most viewers with latency p99 under {options.p99_limit_ms:g} ms"
        tables.append(f"### {title}\n\n{points_table(points, steps, options)}")
    if "edge" in options.parts:
        result = report["edge"] = edge(options)
        title = f"Edge chain: latency per hop, {options.edge_duration:g} s measured"
        tables.append(f"### {title}\n\n{hops_table(result['latency'])}")
        title = f"Edge chain: first keyframe, {options.probes} requests each"
        tables.append(f"### {title}\n\n{probes_table(result['probes'])}")
    report["load_at_end"] = os.getloadavg()
    print("\n\n".join(tables))
    run.save_report(report, "cluster-", started)


if __name__ == "__main__":
    main()
