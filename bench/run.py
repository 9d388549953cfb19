"""The benchmark: minilive against nginx-rtmp and node-media-server, in one run, as ratios.

    python -m bench.run [--viewers 100,300,1000] [--publishers 50,200] [--hls-streams 50,200]
                        [--hls-latency 60] [--duration 20] [--servers minilive,nginx-rtmp,nms]

For each scenario every server is started fresh, loaded, measured and stopped in turn. Fan-out: one
publisher sends the fixture in real time, N viewers play it (half RTMP, half HTTP-FLV; all RTMP on
nginx-rtmp, which has no HTTP-FLV). Ingest: N publishers, no viewers. HLS: N publishers, each
stream followed by one light HLS client. HLS latency: one publisher, and clients that time when each
part or segment is first listed. The HLS scenarios skip node-media-server 4, which has no HLS. Load
comes from bench.load processes; this process samples the server's CPU and memory from /proc. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import fixture, peers

RESULTS = peers.ROOT / "bench" / "results"
LOAD_DIR = peers.CACHE / "load"
STREAM = "bench"
BEHIND_FRACTION = 0.9
BASELINE = "nginx-rtmp"
DISTURBED_PCT = 15.0  # CPU used by other processes during a run, in % of one core
SATURATED_PCT = 90.0  # machine busy, in % of all cores
HLS_POLL = 1.0  # seconds between playlist reloads of a polling client (half the 2 s target duration)
LATENCY_POLL = 0.1  # the same for the latency scenario's polling clients: the resolution of their times
HLS_BEHIND_SLACK = 4.0  # an HLS client is behind when it fetched less media than the window minus this
LL_HLS_TARGET_MS = 1000.0  # the target for LL-HLS part availability, p95
# Stampede: seconds between the sampled viewers' joining and the start signal (more than the fixture's
# 2 s GOP, so that what they measure in the window is live frames, not their own GOP cache).
STAMPEDE_SETTLE = 3.0
STAMPEDE_P99_TARGET_MS = 100.0  # the target for the stampede's latency p99


@dataclass(slots=True)
class Options:
    servers: list[str]
    viewers: list[int]
    publishers: list[int]
    duration: float
    warmup: float
    connect_rate: float
    client_procs: int  # 0: one per 300 viewers or 100 publishers, at most 2
    sampled: int
    hls_streams: list[int]
    hls_latency: float  # seconds measured in the latency scenario; 0: not run
    hls_client: str  # how clients follow minilive's playlists in the HLS scenario: "block" or "poll"
    repeat: int = 1  # rounds of each CPU scenario, servers in alternating order; tables show medians
    stampede: list[int] = field(default_factory=list)  # stampede scenarios: bulk viewers joining at once
    stampede_window: float = 10.0  # seconds measured from the stampede's start signal


@dataclass(slots=True)
class Schedule:
    """When (in time.monotonic()) publishers and viewers start, and the window opens and closes."""

    publish: float
    viewers: float
    measure: float
    end: float
    # A stampede's start signal: every bulk viewer connects at this instant (None: at connect_rate).
    burst: float | None = None


# ------------------------------------------------------------------ plans for bench.load


def _schedule(connections: int, options: Options, with_viewers: bool, duration: float | None = None) -> Schedule:
    # Two seconds for the load processes to start; viewers once the stream has its first GOP;
    # everyone connected and warmed up before the window opens.
    publish = time.monotonic() + 2.0
    viewers = publish + 1.5 if with_viewers else publish
    measure = viewers + connections / options.connect_rate + options.warmup
    return Schedule(publish, viewers, measure, measure + (duration or options.duration))


def _stampede_schedule(options: Options) -> Schedule:
    """The sampled viewers join first and settle (their GOP cache played, live for a few seconds); then
    every bulk viewer connects at one instant, the start signal, when the window opens."""
    publish = time.monotonic() + 2.0
    viewers = publish + 1.5
    burst = viewers + STAMPEDE_SETTLE
    return Schedule(publish, viewers, burst, burst + options.stampede_window, burst)


def _split(items: list[Any], per_process: int, options: Options) -> list[list[Any]]:
    parts = options.client_procs or min(2, max(1, -(-len(items) // per_process)))
    return [part for part in (items[i::parts] for i in range(parts)) if part]


def fanout_plans(server: peers.Server, viewers: int, options: Options, schedule: Schedule) -> list[dict]:
    """The publisher with the sampled viewers in one process; the bulk viewers in the others."""
    flv_url = server.flv_url(STREAM)
    specs = []
    for i in range(viewers):
        flv = flv_url is not None and i % 2 == 1
        burst = schedule.burst is not None and i >= options.sampled
        specs.append(
            {
                "protocol": "flv" if flv else "rtmp",
                "url": flv_url if flv else server.rtmp_url(),
                "stream": STREAM,
                "sampled": i < options.sampled,
                # In a stampede the bulk viewers all connect at the start signal, from processes
                # started 2 s before it with their sockets made (bench.load.Burst).
                "start": schedule.burst if burst else schedule.viewers + i / options.connect_rate,
                "burst": burst,
            }
        )
    common = {"rtmp_url": server.rtmp_url(), "fixture": str(fixture.PATH)}
    common.update(measure=schedule.measure, end=schedule.end)
    if schedule.burst is not None:  # a stampede's viewers are judged on the window's second half
        common["tail"] = (schedule.measure + schedule.end) / 2
    source = {
        **common,
        "publishers": [{"stream": STREAM, "start": schedule.publish}],
        "viewers": [spec for spec in specs if spec["sampled"]],
    }
    bulk = [spec for spec in specs if not spec["sampled"]]
    return [source] + [{**common, "viewers": part} for part in _split(bulk, 300, options)]


def ingest_plans(server: peers.Server, publishers: int, options: Options, schedule: Schedule) -> list[dict]:
    specs = [{"stream": f"pub{i}", "start": schedule.publish + i / options.connect_rate} for i in range(publishers)]
    common = {"rtmp_url": server.rtmp_url(), "fixture": str(fixture.PATH)}
    common.update(measure=schedule.measure, end=schedule.end)
    return [{**common, "publishers": part} for part in _split(specs, 100, options)]


def hls_plans(server: peers.Server, streams: int, options: Options, schedule: Schedule) -> list[dict]:
    """N publishers, each with one HLS client on its stream; a stream's two ends in the same process."""
    mode = "block" if server.ll_hls and options.hls_client == "block" else "poll"
    pairs = [
        (
            {"stream": f"pub{i}", "start": schedule.publish + i / options.connect_rate},
            {
                "stream": f"pub{i}",
                "url": server.hls_url(f"pub{i}"),
                "mode": mode,
                "poll": HLS_POLL,
                "start": schedule.viewers + i / options.connect_rate,
                "latency": False,
            },
        )
        for i in range(streams)
    ]
    common = {"rtmp_url": server.rtmp_url(), "fixture": str(fixture.PATH)}
    common.update(measure=schedule.measure, end=schedule.end)
    return [
        {**common, "publishers": [p for p, _ in part], "hls": [h for _, h in part]}
        for part in _split(pairs, 100, options)
    ]


def hls_latency_plans(server: peers.Server, schedule: Schedule) -> list[dict]:
    """One publisher and its latency clients, started with it so that they see the stream's first
    segment (which tells how the server's timestamps relate to the publisher's). One polls for
    segments; on an LL-HLS server, one more follows parts and one segments by blocking reload."""
    url = server.hls_url(STREAM)
    modes = ["parts", "block", "poll"] if server.ll_hls else ["poll"]
    clients = [
        {"stream": STREAM, "url": url, "mode": mode, "poll": LATENCY_POLL, "start": schedule.publish, "latency": True}
        for mode in modes
    ]
    plan = {"rtmp_url": server.rtmp_url(), "fixture": str(fixture.PATH), "measure": schedule.measure}
    plan.update(end=schedule.end, publishers=[{"stream": STREAM, "start": schedule.publish}], hls=clients)
    return [plan]


# ------------------------------------------------------------------ one measured run


@dataclass(slots=True)
class MachineCpu:
    """Jiffies of all CPUs since boot, from the first line of /proc/stat."""

    busy: int
    softirq: int
    total: int

    @classmethod
    def read(cls) -> MachineCpu:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return cls(sum(values) - idle, values[6], sum(values))

    def percent_since(self, earlier: MachineCpu) -> tuple[float, float]:
        """(busy, softirq) since ``earlier``, in % of one core."""
        scale = 100 * (os.cpu_count() or 1) / max(1, self.total - earlier.total)
        return scale * (self.busy - earlier.busy), scale * (self.softirq - earlier.softirq)


def measure(
    server: peers.Server | peers.Group, plans: list[dict], schedule: Schedule, client: str = "bench.load"
) -> dict[str, Any]:
    """Run one load process per plan (``python -m CLIENT PLAN RESULT``) against ``server``; sample the
    server over the window."""
    shutil.rmtree(LOAD_DIR, ignore_errors=True)
    LOAD_DIR.mkdir(parents=True)
    processes = []
    try:
        for index, plan in enumerate(plans):
            path = LOAD_DIR / f"plan{index}.json"
            path.write_text(json.dumps(plan))
            with (LOAD_DIR / f"plan{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            client,
                            str(path),
                            str(LOAD_DIR / f"result{index}.json"),
                        ],
                        cwd=peers.ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        time.sleep(max(0.0, schedule.measure - time.monotonic()))
        first = server.sample()
        first_at = time.monotonic()
        machine_first = MachineCpu.read()
        everyone_first = peers.processes()
        peak_rss, peak_files = first.rss_bytes, first.files_bytes
        owners: dict[int, int] = {}
        sockets: dict[int, int] = {}
        while (left := schedule.end - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            now = server.sample()
            peak_rss, peak_files = max(peak_rss, now.rss_bytes), max(peak_files, now.files_bytes)
            if not sockets and left < (schedule.end - schedule.measure) / 2:
                owners, sockets = peers.connections(server.pids)
        last = server.sample()
        server_window = time.monotonic() - first_at
        machine_busy, softirq = MachineCpu.read().percent_since(machine_first)
        ours = {os.getpid(), *server.pids, *(p.pid for p in processes)}
        others = _busiest_others(everyone_first, peers.processes(), ours, schedule.end - schedule.measure)
        outputs = []
        for index, process in enumerate(processes):
            if process.wait(60) != 0:
                log = (LOAD_DIR / f"plan{index}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"load process {index} failed with {process.returncode}:\n{log}")
            outputs.append(json.loads((LOAD_DIR / f"result{index}.json").read_text()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    window = schedule.end - schedule.measure
    # Scaled to the planned window, in case this process woke a little late for its samples.
    scale = window / server_window
    server_cpu = (last.cpu_seconds - first.cpu_seconds) * scale
    main_cpu = (last.main_cpu_seconds - first.main_cpu_seconds) * scale
    client_cpu = sum(o["cpu_seconds"] for o in outputs)
    for client in (c for o in outputs for c in (*o["viewers"], *o["publishers"])):
        client["server_pid"] = owners.get(client.get("port", 0))
    return {
        "window_s": window,
        "server_cpu_s": server_cpu,
        # The server's root process alone, without helpers (minilive's transcoding workers).
        "server_main_cpu_s": main_cpu,
        "server_rss_mb": peak_rss / 1e6,
        "server_files_mb": peak_files / 1e6 if server.hls_dir is not None else None,
        "server_alive": server.alive(),
        # Each of the server's processes (root first): its CPU in the window and the sockets it held in
        # the middle of it, which show how clients spread over workers.
        "server_processes": [
            {"pid": pid, "cpu_s": (cpu - first.by_pid.get(pid, 0.0)) * scale, "sockets": sockets.get(pid)}
            for pid, cpu in last.by_pid.items()
        ],
        "client_cpu_pct": 100 * client_cpu / window,
        "machine_busy_pct": machine_busy,
        # Loopback TCP work in softirq context: with tick accounting it is charged to whichever
        # process was running, so it is part of the server's and the client's CPU, not on top of it.
        "softirq_pct": softirq,
        # Anything else on the machine (other users' jobs): when large, the run was disturbed.
        "other_cpu_pct": machine_busy - 100 * (server_cpu + client_cpu) / window,
        "busiest_others": others,
        "viewers": [v for o in outputs for v in o["viewers"]],
        "latency_ms": [ms for o in outputs for ms in o["latency_ms"]],
        "publishers": [p for o in outputs for p in o["publishers"]],
        "hls": [h for o in outputs for h in o["hls"]],
    }


def _busiest_others(
    before: dict[int, peers.ProcessStat], after: dict[int, peers.ProcessStat], ours: set[int], window: float
) -> dict[str, float]:
    """The processes not ours that used the most CPU in the window, as 'name[pid]': % of a core."""
    used = {
        f"{stat.name}[{pid}]": 100 * (stat.cpu_seconds - before[pid].cpu_seconds) / window
        for pid, stat in after.items()
        if pid in before and pid not in ours
    }
    busiest = sorted(used.items(), key=lambda item: -item[1])[:5]
    return {name: round(pct, 1) for name, pct in busiest if pct >= 1}


def _percentile(values: list[float], q: int) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _errors(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        if record["error"]:
            counts[record["error"]] = counts.get(record["error"], 0) + 1
    return counts


def _behind_reason(viewer: dict[str, Any], reference: float, key: str = "window_bytes") -> str | None:
    if viewer["error"]:
        return "failed"
    if viewer["closed_early"]:
        return "disconnected"
    if viewer["first_keyframe_ms"] is None:
        return "no keyframe"
    if viewer[key] < BEHIND_FRACTION * reference:
        return "short of bytes"
    return None


def _clients(raw: dict[str, Any]) -> dict[str, list]:
    """Take the per-client records of the load processes out of ``raw``: the JSON keeps summaries."""
    return {key: raw.pop(key) for key in ("viewers", "latency_ms", "publishers", "hls")}


def summarize_fanout(raw: dict[str, Any], stampede: bool = False) -> dict[str, Any]:
    """``stampede``: the bulk viewers joined at the window's start, each with its GOP cache whenever
    its start came: a viewer is judged on the window's second half (``tail_bytes``), by then every
    one that was not lost receives what the publisher sends."""
    clients = _clients(raw)
    viewers, publishers, latency = clients["viewers"], clients["publishers"], clients["latency_ms"]
    delivered = sum(v["window_bytes"] for v in viewers)
    # A healthy viewer gets at least what the publisher sent in the window (framing only adds bytes);
    # the 90th percentile of all viewers guards against a publisher that itself fell short.
    received = "tail_bytes" if stampede else "window_bytes"
    sent = sum(p["tail_payload_bytes" if stampede else "window_payload_bytes"] for p in publishers)
    # (Not in a stampede: joiners still draining a late GOP cache would raise it above what keeping up takes.)
    reference = sent if stampede else max(sent, _percentile([v[received] for v in viewers], 90) or 0)
    behind: dict[str, int] = {}
    for v in viewers:
        reason = _behind_reason(v, reference, received)
        if reason is not None:
            key = f"{v['protocol']} {reason}"
            behind[key] = behind.get(key, 0) + 1
    keyframes = [v["first_keyframe_ms"] for v in viewers if v["first_keyframe_ms"] is not None]
    lags = [v["start_lag_ms"] for v in viewers if not v["sampled"]]
    gbit = delivered * 8 / 1e9
    # The sampled viewers' latency by the server process that served them (one per worker), the
    # publisher's first: with workers, those on another one get the stream through a relay.
    by_process: dict[int | None, list[float]] = {p["server_pid"]: [] for p in publishers if "server_pid" in p}
    for v in viewers:
        if v["sampled"]:
            by_process.setdefault(v.get("server_pid"), []).extend(ms for _, ms in v["latency"])
    return {
        **raw,
        "delivered_gbit": gbit,
        "delivered_gbit_per_s": gbit / raw["window_s"],
        "cpu_s_per_gbit": raw["server_cpu_s"] / gbit if gbit else None,
        "first_keyframe_p50_ms": _percentile(keyframes, 50),
        "first_keyframe_p95_ms": _percentile(keyframes, 95),
        "latency_p50_ms": _percentile(latency, 50),
        "latency_p99_ms": _percentile(latency, 99),
        "latency_max_ms": max(latency, default=None),
        "latency_samples": len(latency),
        # The bulk viewers' lateness in starting to connect (p50 / max): in a stampede, how far from
        # "all at once" the load processes came.
        "start_lag_p50_ms": _percentile(lags, 50),
        "start_lag_max_ms": max(lags, default=None),
        "latency_by_process": [
            {"pid": pid, "p50_ms": _percentile(ms, 50), "p99_ms": _percentile(ms, 99), "samples": len(ms)}
            for pid, ms in by_process.items()
        ],
        "viewers_behind": sum(behind.values()),
        "behind_reasons": behind,
        "publisher_errors": _errors(publishers),
        "viewer_errors": _errors(viewers),
    }


def summarize_ingest(raw: dict[str, Any], count: int) -> dict[str, Any]:
    publishers = _clients(raw)["publishers"]
    return {
        **raw,
        "cpu_pct_per_publisher": 100 * raw["server_cpu_s"] / raw["window_s"] / count,
        "ingest_gbit_per_s": sum(p["window_payload_bytes"] for p in publishers) * 8 / 1e9 / raw["window_s"],
        "publishers_behind": sum(1 for p in publishers if p["behind"]),
        "publisher_errors": _errors(publishers),
    }


def summarize_hls(raw: dict[str, Any], count: int) -> dict[str, Any]:
    clients = _clients(raw)
    hls, publishers = clients["hls"], clients["publishers"]
    window = raw["window_s"]
    behind: dict[str, int] = {}
    for client in hls:
        reason = "errors" if client["requests_failed"] else None
        if client["media_seconds"] < window - HLS_BEHIND_SLACK:
            reason = "short of media"
        if reason is not None:
            behind[reason] = behind.get(reason, 0) + 1
    return {
        **raw,
        "hls_mode": sorted({client["mode"] for client in hls}),
        "cpu_pct_per_stream": 100 * raw["server_cpu_s"] / window / count,
        "segments_per_client": statistics.fmean(client["items"] for client in hls) if hls else None,
        "playlists_per_s": sum(client["playlists"] for client in hls) / window,
        "delivered_mbit_per_s": sum(client["window_bytes"] for client in hls) * 8 / 1e6 / window,
        "ingest_gbit_per_s": sum(p["window_payload_bytes"] for p in publishers) * 8 / 1e9 / window,
        "clients_behind": sum(behind.values()),
        "behind_reasons": behind,
        "publishers_behind": sum(1 for p in publishers if p["behind"]),
        "publisher_errors": _errors(publishers),
        "hls_errors": _errors(hls),
    }


def summarize_hls_latency(raw: dict[str, Any]) -> dict[str, Any]:
    clients = _clients(raw)
    kinds = {
        "parts": ("LL-HLS parts", "blocking reload"),
        "block": ("HLS segments", "blocking reload"),
        "poll": ("HLS segments", f"poll ~{LATENCY_POLL:g} s"),
    }
    followed = []
    for client in clients["hls"]:
        playlist, how = kinds[client["mode"]]
        first = [item[2] for item in client["latency"]]
        last = [item[3] for item in client["latency"]]
        followed.append(
            {
                "playlist": playlist,
                "client": how,
                "samples": len(last),
                "last_frame_p50_ms": _percentile(last, 50),
                "last_frame_p95_ms": _percentile(last, 95),
                "first_frame_p50_ms": _percentile(first, 50),
                "first_frame_p95_ms": _percentile(first, 95),
                "dts_offset_ms": client["dts_offset_ms"],
                "unmatched": client["unmatched"],
                "requests_failed": client["requests_failed"],
                "error": client["error"],
                # [msn, part, ms since its first frame was sent, ms since its last frame was sent]
                "items": client["latency"],
            }
        )
    return {**raw, "clients": followed, "publisher_errors": _errors(clients["publishers"])}


def run_one(name: str, scenario: str, count: int, options: Options) -> dict[str, Any]:
    """Start server ``name``, run one scenario against it, stop it."""
    record: dict[str, Any] = {"server": name, "scenario": scenario, "count": count}
    try:
        server = peers.start(name, hls=scenario.startswith("hls"))
    except Exception as exc:
        return {**record, "error": f"could not start: {exc}"}
    try:
        if scenario == "fanout":
            return {**record, **fanout(server, count, options)}
        if scenario == "stampede":
            schedule = _stampede_schedule(options)
            raw = measure(server, fanout_plans(server, count + options.sampled, options, schedule), schedule)
            return {**record, **summarize_fanout(raw, stampede=True)}
        if scenario == "hls":
            schedule = _schedule(count, options, with_viewers=True)
            raw = measure(server, hls_plans(server, count, options, schedule), schedule)
            return {**record, **summarize_hls(raw, count)}
        if scenario == "hls-latency":
            schedule = _schedule(count, options, with_viewers=True, duration=options.hls_latency)
            raw = measure(server, hls_latency_plans(server, schedule), schedule)
            return {**record, **summarize_hls_latency(raw)}
        schedule = _schedule(count, options, with_viewers=False)
        raw = measure(server, ingest_plans(server, count, options, schedule), schedule)
        return {**record, **summarize_ingest(raw, count)}
    except Exception as exc:
        return {**record, "error": str(exc)}
    finally:
        server.stop()


def fanout(server: peers.Server, count: int, options: Options) -> dict[str, Any]:
    """The fan-out scenario with ``count`` viewers against a running ``server``, summarized."""
    schedule = _schedule(count, options, with_viewers=True)
    raw = measure(server, fanout_plans(server, count, options, schedule), schedule)
    return summarize_fanout(raw)


def run_rounds(scenario: str, count: int, servers: list[str], options: Options) -> list[dict[str, Any]]:
    """``options.repeat`` rounds of one scenario on every server, the order reversed every other round
    so that neither server always runs first (this machine's speed drifts over minutes)."""
    runs = []
    for round_ in range(1, options.repeat + 1):
        order = servers if round_ % 2 else servers[::-1]
        for name in order:
            label = f" (round {round_}/{options.repeat})" if options.repeat > 1 else ""
            print(f"{scenario}: {name}, {count}{label} ...", file=sys.stderr, flush=True)
            runs.append({**run_one(name, scenario, count, options), "round": round_})
    return runs


def collapse(runs: list[dict[str, Any]], main_key: str) -> list[dict[str, Any]]:
    """One record per (server, count): numeric values are the medians of its rounds without errors,
    and ``<main_key>_range`` is the lowest and highest of ``main_key``."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["server"], run["count"]), []).append(run)
    out = []
    for group in groups.values():
        ok = [r for r in group if "error" not in r]
        if not ok:
            out.append(group[0])
            continue
        record = dict(ok[0])
        for key in ok[0]:
            values = [r.get(key) for r in ok]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if numeric and key not in ("count", "round"):
                record[key] = statistics.median(values)
        main = [r[main_key] for r in ok if r.get(main_key) is not None]
        record["rounds"] = len(ok)
        record[f"{main_key}_range"] = (min(main), max(main)) if main else None
        out.append(record)
    return out


# ------------------------------------------------------------------ tables


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_range(record: dict[str, Any], key: str, digits: int) -> str:
    """The value, with the lowest and highest of its rounds when there were several."""
    spread = record.get(f"{key}_range")
    if record.get("rounds", 1) > 1 and spread:
        return f"{_fmt(record[key], digits)} ({_fmt(spread[0], digits)}-{_fmt(spread[1], digits)})"
    return _fmt(record[key], digits)


def _ratio(value: float | None, baseline: float | None) -> str:
    return f"{value / baseline:.2f}x" if value is not None and baseline else "-"


def _table(headers: list[str], rows: list[list[str]], runs: list[dict[str, Any]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    cpus = os.cpu_count() or 1
    for r in runs:
        if r.get("server_alive") is False:
            lines.append(f"note: {r['server']} exited during the run with {r['count']}")
        if r.get("other_cpu_pct", 0) > DISTURBED_PCT:
            lines.append(
                f"note: other processes used {r['other_cpu_pct']:.0f} % of a core during the {r['server']} "
                f"run with {r['count']}; its numbers may be disturbed"
            )
        if r.get("machine_busy_pct", 0) > SATURATED_PCT * cpus:
            lines.append(
                f"note: the machine was {r['machine_busy_pct'] / cpus:.0f} % busy during the {r['server']} "
                f"run with {r['count']}: the server may have been short of CPU"
            )
    return "\n".join(lines)


def markdown_table(headers: list[str], rows: list[list[str]], text: int = 1) -> str:
    """A markdown table, its first ``text`` columns left-aligned and the numbers right-aligned."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < text else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _error_row(lead: list[str], error: str, columns: int) -> list[str]:
    return [*lead, "error: " + error.splitlines()[0][:60]] + [""] * (columns - len(lead) - 1)


def _baseline(runs: list[dict[str, Any]], count: int, key: str) -> float | None:
    return next((r.get(key) for r in runs if r["server"] == BASELINE and r["count"] == count), None)


def _rows_table(runs: list[dict[str, Any]], headers: list[str], cells: Callable[[dict[str, Any]], list[str]]) -> str:
    """A table of one row per run: ``cells(run)``, or the run's error."""
    rows = [
        _error_row([r["server"], str(r["count"])], r["error"], len(headers)) if "error" in r else cells(r) for r in runs
    ]
    return _table(headers, rows, runs)


def fanout_table(runs: list[dict[str, Any]]) -> str:
    headers = [
        "server", "viewers", "delivered Gbit", "CPU-s/Gbit", f"vs {BASELINE}", "RSS MB",
        "1st key p50 ms", "p95 ms", "latency p50 ms", "p99 ms", "behind", "client CPU %",
    ]  # fmt: skip
    return _rows_table(
        runs,
        headers,
        lambda r: [
            r["server"],
            str(r["count"]),
            _fmt(r["delivered_gbit"], 2),
            _fmt_range(r, "cpu_s_per_gbit", 2),
            _ratio(r["cpu_s_per_gbit"], _baseline(runs, r["count"], "cpu_s_per_gbit")),
            _fmt(r["server_rss_mb"]),
            _fmt(r["first_keyframe_p50_ms"], 0),
            _fmt(r["first_keyframe_p95_ms"], 0),
            _fmt(r["latency_p50_ms"]),
            _fmt(r["latency_p99_ms"]),
            _fmt(r["viewers_behind"], 0),
            _fmt(r["client_cpu_pct"], 0),
        ],
    )


def stampede_table(runs: list[dict[str, Any]]) -> str:
    headers = [
        "server", "viewers", "start spread ms", "latency p50 ms", "p99 ms", "max ms", "1st key p50 ms", "p95 ms",
        "lost", "server CPU %", "RSS MB", "client CPU %",
    ]  # fmt: skip
    table = _rows_table(
        runs,
        headers,
        lambda r: [
            r["server"],
            str(r["count"]),
            _fmt(r["start_lag_max_ms"]),
            _fmt(r["latency_p50_ms"]),
            _fmt_range(r, "latency_p99_ms", 1),
            _fmt(r["latency_max_ms"]),
            _fmt(r["first_keyframe_p50_ms"], 0),
            _fmt(r["first_keyframe_p95_ms"], 0),
            _fmt(r["viewers_behind"], 0),
            _fmt(100 * r["server_cpu_s"] / r["window_s"], 0),
            _fmt(r["server_rss_mb"]),
            _fmt(r["client_cpu_pct"], 0),
        ],
    )
    lines = [table]
    for r in runs:
        if "error" not in r and r["latency_p99_ms"] is not None:
            p99, target = r["latency_p99_ms"], STAMPEDE_P99_TARGET_MS
            met = "met" if p99 < target else "MISSED"
            lines.append(f"target: {r['server']} latency p99 {p99:.1f} ms < {target:.0f} ms: {met}")
    return "\n".join(lines)


def ingest_table(runs: list[dict[str, Any]]) -> str:
    headers = [
        "server",
        "publishers",
        "CPU %/publisher",
        f"vs {BASELINE}",
        "RSS MB",
        "behind",
        "client CPU %",
    ]
    rows = []
    for r in runs:
        if "error" in r:
            rows.append(_error_row([r["server"], str(r["count"])], r["error"], len(headers)))
            continue
        rows.append(
            [
                r["server"],
                str(r["count"]),
                _fmt_range(r, "cpu_pct_per_publisher", 2),
                _ratio(r["cpu_pct_per_publisher"], _baseline(runs, r["count"], "cpu_pct_per_publisher")),
                _fmt(r["server_rss_mb"]),
                _fmt(r["publishers_behind"], 0),
                _fmt(r["client_cpu_pct"], 0),
            ]
        )
    return _table(headers, rows, runs)


def add_packaging_cost(hls_runs: list[dict[str, Any]], ingest_runs: list[dict[str, Any]]) -> None:
    """What HLS adds: a server's CPU per stream with HLS minus its CPU per publisher when it only ingests
    the same number of streams, in the same run (both include ingest; only the HLS work differs)."""
    ingest = {(r["server"], r["count"]): r for r in ingest_runs if "error" not in r}
    for run in hls_runs:
        base = ingest.get((run["server"], run["count"]))
        if "error" not in run and base is not None:
            run["packaging_pct_per_stream"] = run["cpu_pct_per_stream"] - base["cpu_pct_per_publisher"]


def hls_table(runs: list[dict[str, Any]]) -> str:
    headers = [
        "server", "streams", "client", "CPU %/stream", f"vs {BASELINE}", "packaging %/stream", f"vs {BASELINE}",
        "RSS MB", "files MB", "segments/client", "playlists/s", "behind", "client CPU %",
    ]  # fmt: skip
    rows = []
    for r in runs:
        if "error" in r:
            rows.append(_error_row([r["server"], str(r["count"])], r["error"], len(headers)))
            continue
        rows.append(
            [
                r["server"],
                str(r["count"]),
                ",".join(r["hls_mode"]),
                _fmt_range(r, "cpu_pct_per_stream", 2),
                _ratio(r["cpu_pct_per_stream"], _baseline(runs, r["count"], "cpu_pct_per_stream")),
                _fmt(r.get("packaging_pct_per_stream"), 2),
                _ratio(r.get("packaging_pct_per_stream"), _baseline(runs, r["count"], "packaging_pct_per_stream")),
                _fmt(r["server_rss_mb"]),
                _fmt(r["server_files_mb"]),
                _fmt(r["segments_per_client"]),
                _fmt(r["playlists_per_s"]),
                _fmt(r["clients_behind"] + r["publishers_behind"], 0),
                _fmt(r["client_cpu_pct"], 0),
            ]
        )
    return _table(headers, rows, runs)


def hls_latency_table(runs: list[dict[str, Any]]) -> str:
    headers = [
        "server", "playlist", "client", "samples", "last frame p50 ms", "p95 ms", "first frame p50 ms", "p95 ms",
        "TS-RTMP ms",
    ]  # fmt: skip
    rows = []
    notes = []
    for r in runs:
        if "error" in r:
            rows.append(_error_row([r["server"]], r["error"], len(headers)))
            continue
        for c in r["clients"]:
            rows.append(
                [
                    r["server"],
                    c["playlist"],
                    c["client"],
                    str(c["samples"]),
                    _fmt(c["last_frame_p50_ms"], 0),
                    _fmt(c["last_frame_p95_ms"], 0),
                    _fmt(c["first_frame_p50_ms"], 0),
                    _fmt(c["first_frame_p95_ms"], 0),
                    _fmt(c["dts_offset_ms"]),
                ]
            )
            if c["error"] or c["unmatched"] or not c["samples"]:
                notes.append(
                    f"note: {r['server']} {c['playlist']} ({c['client']}): {c['requests_failed']} failed requests, "
                    f"{c['unmatched']} items matching no sent frame; last error: {c['error']}"
                )
            if c["playlist"] == "LL-HLS parts" and c["last_frame_p95_ms"] is not None:
                met = "met" if c["last_frame_p95_ms"] < LL_HLS_TARGET_MS else "MISSED"
                notes.append(
                    f"target: {r['server']} LL-HLS part availability p95 {c['last_frame_p95_ms']:.0f} ms "
                    f"< {LL_HLS_TARGET_MS:.0f} ms: {met}"
                )
    return "\n".join([_table(headers, rows, runs), *notes])


# ------------------------------------------------------------------ command line


def _counts(text: str) -> list[int]:
    """A comma-separated list of positive counts (a scenario of 0 clients measures nothing)."""
    counts = [int(part) for part in text.split(",") if part]
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"counts must be at least 1: {text!r} ('' for no scenario)")
    return counts


def names(text: str, known: Collection[str], what: str, kind: Callable[[str], str] = str) -> list[str]:
    """Comma-separated names, each one of ``known`` (once made its ``kind``); for argparse's ``type``."""
    chosen = [name for name in text.split(",") if name]
    unknown = [name for name in chosen if kind(name) not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(known)})")
    return chosen


def server_names(text: str) -> list[str]:
    """A --servers list: ``NAME[@REV][:WORKERS]`` of servers bench.peers starts."""
    return names(text, peers.STARTERS, "servers", peers.kind)


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the viewers' load: timing, processes, sampled viewers."""
    parser.add_argument("--warmup", default=3.0, type=float, help="seconds after the last connect before measuring")
    parser.add_argument("--connect-rate", default=500.0, type=float, help="new connections per second")
    parser.add_argument("--client-procs", default=0, type=int, help="load processes for bulk clients (0: auto)")
    parser.add_argument("--sampled", default=20, type=int, help="viewers that measure latency per frame")


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers", default="minilive,nginx-rtmp,nms", type=server_names, help="comma-separated, in run order"
    )
    parser.add_argument("--viewers", default="100,300,1000", type=_counts, help="fan-out scenarios ('' for none)")
    parser.add_argument("--publishers", default="50,200", type=_counts, help="ingest scenarios ('' for none)")
    parser.add_argument(
        "--stampede",
        default="",
        type=_counts,
        help="stampede scenarios: N viewers connecting at one instant while --sampled viewers play ('' for none)",
    )
    parser.add_argument(
        "--stampede-window", default=10.0, type=float, help="stampede: seconds measured from the start signal"
    )
    parser.add_argument("--duration", default=20.0, type=float, help="measured seconds per run")
    add_load_arguments(parser)
    parser.add_argument("--hls-streams", default="50,200", type=_counts, help="HLS scenarios ('' for none)")
    parser.add_argument(
        "--hls-latency", default=60.0, type=float, help="seconds measured in the HLS latency scenario (0: none)"
    )
    parser.add_argument(
        "--hls-client",
        default="block",
        choices=["block", "poll"],
        help="how the HLS scenario's clients follow minilive's playlists (nginx-rtmp's are always polled)",
    )
    parser.add_argument(
        "--repeat", default=1, type=int, help="rounds of each CPU scenario, in alternating server order (medians)"
    )
    args = parser.parse_args(argv)
    return Options(
        args.servers, args.viewers, args.publishers, args.duration, args.warmup, args.connect_rate,
        args.client_procs, args.sampled, args.hls_streams, args.hls_latency, args.hls_client, max(1, args.repeat),
        args.stampede, args.stampede_window,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    raise_fd_limit()
    peers.install()
    fixture.ensure()
    started = datetime.now()
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": peers.versions(),
        "fixture": {"path": str(fixture.PATH), "bit_rate": fixture.bitrate(fixture.PATH)},
        "options": {
            "servers": options.servers, "viewers": options.viewers, "publishers": options.publishers,
            "duration": options.duration, "warmup": options.warmup, "connect_rate": options.connect_rate,
            "sampled": options.sampled, "hls_streams": options.hls_streams, "hls_latency": options.hls_latency,
            "hls_client": options.hls_client, "hls_poll": HLS_POLL, "latency_poll": LATENCY_POLL,
            "repeat": options.repeat, "stampede": options.stampede, "stampede_window": options.stampede_window,
            "stampede_settle": STAMPEDE_SETTLE,
        },
        "fanout": [],
        "stampede": [],
        "ingest": [],
        "hls": [],
        "hls_latency": [],
        "rounds": [],  # every run of the CPU scenarios; the lists above hold their medians
    }  # fmt: skip
    rounds = f", median of {options.repeat} rounds (lowest-highest)" if options.repeat > 1 else ""
    for count in options.viewers:
        raw = run_rounds("fanout", count, options.servers, options)
        report["rounds"].extend(raw)
        runs = collapse(raw, "cpu_s_per_gbit")
        report["fanout"].extend(runs)
        title = f"Fan-out, 1 publisher -> {count} viewers, {options.duration:g} s measured{rounds}"
        print(f"\n{title}\n{fanout_table(runs)}\n")
    for count in options.stampede:
        raw = run_rounds("stampede", count, options.servers, options)
        report["rounds"].extend(raw)
        runs = collapse(raw, "latency_p99_ms")
        report["stampede"].extend(runs)
        title = (
            f"Stampede, {options.sampled} viewers playing, then {count} joining at once, "
            f"{options.stampede_window:g} s measured from the start signal{rounds}"
        )
        print(f"\n{title}\n{stampede_table(runs)}\n")
    if options.publishers:
        raw = [run for count in options.publishers for run in run_rounds("ingest", count, options.servers, options)]
        report["rounds"].extend(raw)
        runs = report["ingest"] = collapse(raw, "cpu_pct_per_publisher")
        print(f"\nIngest, N publishers, {options.duration:g} s measured{rounds}\n{ingest_table(runs)}\n")
    hls_servers = [name for name in options.servers if peers.kind(name) in peers.HLS_SERVERS]
    skipped = ", ".join(name for name in options.servers if peers.kind(name) not in peers.HLS_SERVERS)
    if skipped and (options.hls_streams or options.hls_latency):
        print(f"HLS scenarios: skipping {skipped} (no HLS)", file=sys.stderr)
    if options.hls_streams and hls_servers:
        raw = [run for count in options.hls_streams for run in run_rounds("hls", count, hls_servers, options)]
        report["rounds"].extend(raw)
        runs = collapse(raw, "cpu_pct_per_stream")
        add_packaging_cost(runs, report["ingest"])
        report["hls"] = runs
        title = f"HLS packaging, N publishers, one HLS client each, {options.duration:g} s measured{rounds}"
        print(f"\n{title}\n{hls_table(runs)}\n")
    if options.hls_latency and hls_servers:
        runs = []
        for name in hls_servers:
            print(f"hls latency: {name} ...", file=sys.stderr, flush=True)
            runs.append(run_one(name, "hls-latency", 1, options))
        report["hls_latency"] = runs
        title = f"HLS live-edge latency, 1 stream, {options.hls_latency:g} s measured"
        print(f"\n{title}\n{hls_latency_table(runs)}\n")
    save_report(report, "", started)


def raise_fd_limit() -> None:
    """Servers and load processes inherit this: a thousand viewers need more than 1024 descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def machine() -> dict[str, Any]:
    """This machine, for a results file."""
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": sys.version.split()[0]}


def save_report(report: dict[str, Any], prefix: str, started: datetime) -> None:
    """Write ``report`` to ``bench/results/{prefix}{date}-{time}.json`` and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{prefix}{started:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"results: {path.relative_to(peers.ROOT)}")


if __name__ == "__main__":
    main()
