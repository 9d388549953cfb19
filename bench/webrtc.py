"""The WebRTC benchmark: what WHIP publishers and WHEP viewers cost minilive, and the latency it adds.

    python -m bench.webrtc [--whip-publishers 4] [--whep-viewers 0,1,10,50] [--duration 15]

minilive alone: nginx-rtmp and node-media-server have no WebRTC, so there is nothing to compare
with. Each scenario starts minilive fresh, loads it from bench.webrtc_client processes (aiortc,
never in the server's process), samples its CPU and memory from /proc, and stops it:

- WHIP ingest: N aiortc publishers, each sending the fixture's 720p30 H.264 as it is plus Opus.
- WHIP latency: one WHIP publisher, one HTTP-FLV viewer and one WHEP viewer of its stream.
- WHEP fan-out: one RTMP publisher (the fixture), N WHEP viewers; 0 viewers is the baseline that the
  per-viewer cost is taken against.

See bench/README.md ("WebRTC").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench import fixture, peers
from bench.run import DISTURBED_PCT, SATURATED_PCT, Schedule, _fmt, _percentile, machine, measure, save_report

FPS = 30  # the fixture's
OPUS_FPS = 50  # 20 ms packets
BEHIND_FRACTION = 0.9
VIEWERS_PER_PROCESS = 25
WHEP_TARGET_MS = 100.0  # the issue's: WHIP to WHEP adds under 100 ms, p95
CONFIG = """\
[webrtc]
max_whep_viewers = {viewers}
max_sessions = {sessions}

[webrtc.ice]
addresses = ["127.0.0.1"]
"""


@dataclass(slots=True)
class Options:
    whip_publishers: int  # 0: no WHIP scenarios
    whep_viewers: list[int]
    duration: float
    warmup: float
    connect_rate: float
    client_procs: int  # for WHEP viewers; 0: one per 25 viewers, at most 2


def start_minilive(options: Options) -> peers.Server:
    """minilive with its defaults, but host candidates on loopback and room for every viewer."""
    viewers = max([*options.whep_viewers, 1])
    config = CONFIG.format(viewers=viewers, sessions=viewers + 100)
    return peers.start_minilive(peers.free_port(), peers.free_port(), config=config, name="minilive-webrtc")


def schedule(options: Options, viewers: int) -> Schedule:
    # Three seconds for the clients to import aiortc and parse the fixture; viewers once the stream
    # has its first GOP and a WHIP publisher is connected.
    publish = time.monotonic() + 3.0
    start = publish + 2.5
    measure = start + viewers / options.connect_rate + options.warmup
    return Schedule(publish, start, measure, measure + options.duration)


def _base(server: peers.Server, when: Schedule) -> dict[str, Any]:
    return {
        "http": f"http://127.0.0.1:{server.http_port}",
        "rtmp_url": server.rtmp_url(),
        "fixture": str(fixture.PATH),
        "measure": when.measure,
        "end": when.end,
    }


def _viewer(server: peers.Server, protocol: str, path: str, stream: str, start: float, sampled: bool) -> dict:
    url = f"http://127.0.0.1:{server.http_port}" + (f"/whep/{stream}" if protocol == "whep" else f"/live/{stream}.flv")
    return {"protocol": protocol, "path": path, "url": url, "start": start, "sampled": sampled}


def whip_plans(server: peers.Server, publishers: int, when: Schedule) -> list[dict]:
    spread = [{"stream": f"whip{i}", "start": when.publish + i * 0.2} for i in range(publishers)]
    return [{**_base(server, when), "whip_publishers": spread}]


def latency_plans(server: peers.Server, when: Schedule) -> list[dict]:
    viewers = [
        _viewer(server, "flv", "whip>flv", "cam", when.viewers, True),
        _viewer(server, "whep", "whip>whep", "cam", when.viewers, True),
    ]
    return [{**_base(server, when), "whip_publishers": [{"stream": "cam", "start": when.publish}], "viewers": viewers}]


def whep_plans(server: peers.Server, viewers: int, options: Options, when: Schedule) -> list[dict]:
    """The RTMP publisher and the sampled viewers in the first process, the other viewers in the rest."""
    specs = [
        _viewer(server, "whep", "rtmp>whep", "bench", when.viewers + i / options.connect_rate, False)
        for i in range(viewers)
    ]
    parts = options.client_procs or min(2, max(1, -(-viewers // VIEWERS_PER_PROCESS)))
    first, *others = [specs[i::parts] for i in range(parts)]
    for spec in first:
        spec["sampled"] = True
    publisher = [{"stream": "bench", "start": when.publish}]
    return [{**_base(server, when), "rtmp_publishers": publisher, "viewers": first}] + [
        {**_base(server, when), "viewers": group} for group in others if group
    ]


# ------------------------------------------------------------------ summaries


def _common(raw: dict[str, Any]) -> dict[str, Any]:
    window = raw["window_s"]
    cpus = os.cpu_count() or 1
    notes = []
    if raw["machine_busy_pct"] > SATURATED_PCT * cpus:
        notes.append(f"machine {raw['machine_busy_pct'] / cpus:.0f} % busy")
    if raw["other_cpu_pct"] > DISTURBED_PCT:
        notes.append(f"others used {raw['other_cpu_pct']:.0f} % of a core: {raw['busiest_others']}")
    if not raw["server_alive"]:
        notes.append("server died")
    return {
        "server_cpu_pct": 100 * raw["server_cpu_s"] / window,
        "server_rss_mb": raw["server_rss_mb"],
        "client_cpu_pct": raw["client_cpu_pct"],
        "machine_busy_pct": raw["machine_busy_pct"],
        "other_cpu_pct": raw["other_cpu_pct"],
        "busiest_others": raw["busiest_others"],
        "notes": notes,
    }


def _latency(viewers: list[dict], path: str) -> dict[str, Any]:
    samples = [ms for v in viewers if v["path"] == path for ms in v["latency_ms"]]
    return {
        "path": path,
        "samples": len(samples),
        "unmatched": sum(v["unmatched"] for v in viewers if v["path"] == path),
        "p50_ms": _percentile(samples, 50),
        "p95_ms": _percentile(samples, 95),
        "p99_ms": _percentile(samples, 99),
        "max_ms": max(samples, default=None),
    }


def _behind(viewer: dict[str, Any], window: float) -> str | None:
    if viewer["error"]:
        return viewer["error"]
    if viewer["video_frames"] < BEHIND_FRACTION * FPS * window:
        return "short of video frames"
    if viewer["protocol"] == "whep" and viewer["audio_frames"] < BEHIND_FRACTION * OPUS_FPS * window:
        return "short of audio frames"
    return None


def summarize(raw: dict[str, Any], scenario: str, count: int) -> dict[str, Any]:
    window = raw["window_s"]
    viewers, publishers = raw["viewers"], raw["publishers"]
    reasons: dict[str, int] = {}
    for viewer in viewers:
        if (reason := _behind(viewer, window)) is not None:
            reasons[reason] = reasons.get(reason, 0) + 1
    for publisher in publishers:
        if publisher["error"] or publisher.get("behind"):
            reason = publisher["error"] or "publisher behind"
            reasons[reason] = reasons.get(reason, 0) + 1
    firsts = [v["first_frame_ms"] for v in viewers if v["first_frame_ms"] is not None]
    paths = sorted({v["path"] for v in viewers if v["sampled"]})
    return {
        "scenario": scenario,
        "count": count,
        **_common(raw),
        "first_frame_p50_ms": _percentile(firsts, 50),
        "first_frame_p95_ms": _percentile(firsts, 95),
        "latency": [_latency(viewers, path) for path in paths],
        "behind": sum(reasons.values()),
        "behind_reasons": reasons,
        "video_frames_per_viewer": [v["video_frames"] for v in viewers],
    }


def run_one(scenario: str, count: int, options: Options) -> dict[str, Any]:
    server = start_minilive(options)
    try:
        if scenario == "whip":
            when = schedule(options, 0)
            plans = whip_plans(server, count, when)
        elif scenario == "whip-latency":
            when = schedule(options, 2)
            plans = latency_plans(server, when)
        else:
            when = schedule(options, count)
            plans = whep_plans(server, count, options, when)
        return summarize(measure(server, plans, when, client="bench.webrtc_client"), scenario, count)
    except Exception as exc:
        return {"scenario": scenario, "count": count, "error": str(exc)}
    finally:
        server.stop()


# ------------------------------------------------------------------ tables


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def _notes(runs: list[dict[str, Any]]) -> str:
    return "".join(
        f"\nnote ({r['scenario']} {r['count']}): {'; '.join(r.get('notes') or [r.get('error', '')])}"
        for r in runs
        if r.get("notes") or r.get("error")
    )


def whep_table(runs: list[dict[str, Any]]) -> str:
    baseline = next((r["server_cpu_pct"] for r in runs if r["count"] == 0 and "error" not in r), None)
    rows = []
    for r in runs:
        if "error" in r:
            rows.append([str(r["count"]), "error", *[""] * 8])
            continue
        count = r["count"]
        per_viewer = r["server_cpu_pct"] / count if count else None
        marginal = (r["server_cpu_pct"] - baseline) / count if count and baseline is not None else None
        latency = r["latency"][0] if r["latency"] else {}
        rows.append(
            [
                str(count),
                _fmt(r["server_cpu_pct"]),
                _fmt(per_viewer, 2),
                _fmt(marginal, 2),
                _fmt(r["server_rss_mb"], 0),
                _fmt(r["first_frame_p50_ms"], 0),
                f"{_fmt(latency.get('p50_ms'))} / {_fmt(latency.get('p95_ms'))}",
                str(r["behind"]),
                _fmt(r["client_cpu_pct"], 0),
                _fmt(r["machine_busy_pct"], 0),
            ]
        )
    headers = [
        "viewers", "server CPU %", "CPU %/viewer", "over 0 viewers", "RSS MB", "1st frame ms",
        "RTMP>WHEP p50 / p95 ms", "behind", "client CPU %", "machine %",
    ]  # fmt: skip
    return _table(headers, rows) + _notes(runs)


def whip_table(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"error: {run['error']}"
    count = run["count"]
    row = [
        str(count),
        _fmt(run["server_cpu_pct"]),
        _fmt(run["server_cpu_pct"] / count, 2),
        _fmt(run["server_rss_mb"], 0),
        str(run["behind"]),
        _fmt(run["client_cpu_pct"], 0),
        _fmt(run["machine_busy_pct"], 0),
    ]
    headers = ["publishers", "server CPU %", "CPU %/publisher", "RSS MB", "behind", "client CPU %", "machine %"]
    return _table(headers, [row]) + _notes([run])


def latency_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        for latency in r.get("latency", []):
            if r["scenario"] == "whep" and r["count"] != 1:
                continue  # the one-viewer run is the server's own figure; more viewers add client load
            rows.append(
                [latency["path"].replace(">", " > ").upper(), str(latency["samples"])]
                + [_fmt(latency[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
            )
    return _table(["path", "frames", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows) + _notes(
        [r for r in runs if r["scenario"] == "whip-latency"]
    )


# ------------------------------------------------------------------ main


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.webrtc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--whip-publishers", type=int, default=4, help="WHIP ingest publishers (0: no WHIP runs)")
    parser.add_argument("--whep-viewers", type=_counts, default=[0, 1, 10, 50], help="WHEP fan-out runs")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the last connect")
    parser.add_argument("--connect-rate", type=float, default=10.0, help="new WHEP viewers per second")
    parser.add_argument("--client-procs", type=int, default=0, help="processes for WHEP viewers; 0: auto")
    args = parser.parse_args(argv)
    return Options(
        args.whip_publishers, args.whep_viewers, args.duration, args.warmup, args.connect_rate, args.client_procs
    )


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    fixture.ensure()
    started = datetime.now()
    runs = []
    if options.whip_publishers:
        for scenario, count in (("whip", options.whip_publishers), ("whip-latency", 1)):
            print(f"{scenario}: {count} ...", file=sys.stderr, flush=True)
            runs.append(run_one(scenario, count, options))
    for count in options.whep_viewers:
        print(f"whep: {count} viewers ...", file=sys.stderr, flush=True)
        runs.append(run_one("whep", count, options))
    whep = [r for r in runs if r["scenario"] == "whep"]
    if options.whip_publishers:
        print(f"\nWHIP ingest, 720p30 H.264 + Opus, {options.duration:g} s measured\n{whip_table(runs[0])}\n")
    if whep:
        title = f"WHEP fan-out, 1 RTMP publisher -> N WHEP viewers, {options.duration:g} s measured"
        print(f"\n{title}\n{whep_table(whep)}\n")
    print(f"\nLatency added by the server, per video frame\n{latency_table(runs)}\n")
    whip_whep = next((x for r in runs for x in r.get("latency", []) if x["path"] == "whip>whep"), None)
    if whip_whep and whip_whep["p95_ms"] is not None:
        verdict = "met" if whip_whep["p95_ms"] < WHEP_TARGET_MS else "MISSED"
        print(f"target WHIP > WHEP p95 < {WHEP_TARGET_MS:g} ms: {verdict} ({whip_whep['p95_ms']:.1f} ms)")
    report = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "fixture": {"path": str(fixture.PATH), "bit_rate": fixture.bitrate(fixture.PATH)},
        "options": {
            "whip_publishers": options.whip_publishers, "whep_viewers": options.whep_viewers,
            "duration": options.duration, "warmup": options.warmup, "connect_rate": options.connect_rate,
        },
        "runs": runs,
    }  # fmt: skip
    save_report(report, "webrtc-", started)


if __name__ == "__main__":
    main()
