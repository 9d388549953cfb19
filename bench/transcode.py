"""Transcoding (issue 12): minilive's renditions against the ffmpeg CLI doing the same ladder.

    python -m bench.transcode [--cases 720p,1080p] [--parts throughput,capacity,fanout] [--duration 20]

Two ladders: a 720p30 source made into 480p + 360p, and a 1080p30 source into 720p + 480p + 360p,
with the sizes, bitrates, VBV, x264 preset and tune, and keyframes of relay/transcode (ffmpeg: one
process, decode once, ``split`` and a bicubic ``scale`` per rung, libx264 with one thread per encoder).

- throughput: the fixture as fast as each takes it, offline; CPU-seconds per second of media (ffmpeg's
  process; minilive's worker process, fed through relay.transcode.pool as the server feeds it).
- capacity: N ladders at once in real time, N = 1, 2, ... until one falls behind: N ``ffmpeg -re``; a
  minilive server with ``[transcode] mode = "always"`` and N publishers. Also minilive's added latency
  (source packet in to rendition packet out, from /api/v1/streams) and its workers' memory.
- fanout: bench.run's fan-out scenario on minilive with 0, 1, 2 ladders running beside it; the
  server's own CPU per delivered Gbit apart from its workers' CPU.

Raw results go to bench/results/DATE-TIME-transcode.json; the tables are printed for RESULTS.md. See
bench/README.md ("Transcoding").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import av

from bench import fixture, load, peers, run
from relay.formats.flv import AUDIO, VIDEO, FlvReader
from relay.formats.packet import Packet
from relay.transcode import wire
from relay.transcode.encoders import SOFTWARE, encoder_options
from relay.transcode.ladder import PRESETS, Rung, scaled_width
from relay.transcode.pool import Pool

WORK = peers.CACHE / "transcode"
PARTS = ("throughput", "capacity", "fanout")
FFMPEG_REALTIME = 0.98  # an ffmpeg ladder is real time when its output advances this fast against the clock
FPS_REALTIME = 0.95  # a minilive rendition is when its frame rate is this much of its source's
LATENCY_TARGET_MS = 300.0  # the target for added latency, p99, with zerolatency
FANOUT_TOLERANCE = 0.10  # fan-out's net CPU per Gbit may rise this much beside ladders (run-to-run noise)
GOP_S = 2.0  # the fixtures' keyframe interval: N sources start this much apart / N
QUEUED_TO_WORKER = 256 * 1024  # bytes the offline feeder keeps waiting for the worker
# Fan-out: the ladders' sources start this long before the fan-out's publisher (their starts spread over
# a GOP), so that the workers have started (Python and PyAV: about a second of CPU each) and run
# steadily by the time viewers connect: what runs beside fan-out is transcoding, not its start-up.
LADDERS_LEAD = 5.0


@dataclass(frozen=True, slots=True)
class Case:
    """A source and the ladder made of it."""

    name: str
    source: fixture.Fixture
    rungs: tuple[str, ...]

    @property
    def ladder(self) -> list[Rung]:
        return [PRESETS[name] for name in self.rungs]

    @property
    def label(self) -> str:
        return f"{self.source.name} -> {' + '.join(self.rungs)}"


CASES = {
    "720p": Case("720p", fixture.FIXTURES["720p30"], ("480p", "360p")),
    "1080p": Case("1080p", fixture.FIXTURES["1080p30"], ("720p", "480p", "360p")),
}


@dataclass(slots=True)
class Options:
    cases: list[Case]
    parts: list[str]
    preset: str
    tune: str
    rounds: int  # throughput rounds, ffmpeg and minilive in alternating order
    media_seconds: float  # of the fixture, per throughput run
    max_ladders: int  # capacity: stop stepping here
    duration: float  # seconds measured per capacity and fan-out run
    warmup: float  # capacity: from the last source's start to the window
    max_behind_ms: float  # a minilive job whose packets reach its worker later than this is not real time
    fanout_viewers: int
    fanout_ladders: list[int]
    fanout_case: Case


# ------------------------------------------------------------------ small helpers


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _status_kb(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` value in kB (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    return peers.sample([pid]).cpu_seconds


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def transcode_config(case: Case, options: Options, mode: str, max_transcodes: int) -> str:
    """minilive's ``[transcode]`` section for ``case``: libx264 (as ffmpeg), a worker per core."""
    rungs = ", ".join(f'"{name}"' for name in case.rungs)
    return (
        "[transcode]\n"
        f"renditions = [{rungs}]\n"
        f'preset = "{options.preset}"\n'
        f'tune = "{options.tune}"\n'
        f'encoder = "{SOFTWARE}"\n'
        f'mode = "{mode}"\n'
        "workers = 0\n"
        f"max_transcodes = {max_transcodes}\n"
    )


# ------------------------------------------------------------------ the ffmpeg CLI's ladder


def ffmpeg_ladder(case: Case, preset: str, tune: str) -> list[str]:
    """ffmpeg's arguments after the input: decode once, split, a bicubic scale and a libx264 encoder
    per rung with relay/transcode/encoders.py's options (one thread each), audio copied, to null."""
    width, height = case.source.width, case.source.height
    rungs = case.ladder
    chains = [f"[0:v]split={len(rungs)}" + "".join(f"[s{i}]" for i in range(len(rungs)))]
    for i, rung in enumerate(rungs):
        chains.append(f"[s{i}]scale={scaled_width(width, height, rung.height)}:{rung.height}:flags=bicubic[v{i}]")
    args = ["-filter_complex_threads", "1", "-filter_complex", ";".join(chains)]
    for i, rung in enumerate(rungs):
        args += ["-map", f"[v{i}]", "-map", "0:a", "-c:v", "libx264", "-threads", "1", "-b:v", str(rung.video_bitrate)]
        for key, value in encoder_options(SOFTWARE, preset, tune, rung.max_rate).items():
            args += [f"-{key}", value]
        # Keyframes where the source has them (ours: the decoder's key frames, forced as IDR); every
        # source frame encoded, none duplicated or dropped.
        args += ["-force_key_frames", "source", "-fps_mode", "passthrough", "-c:a", "copy", "-f", "null", "-"]
    return args


def ffmpeg_input(case: Case, seconds: float | None = None, realtime: bool = False) -> list[str]:
    """ffmpeg's arguments up to the input, its decoder on one thread (as ours)."""
    head = ["ffmpeg", "-hide_banner", "-nostdin", "-threads", "1"]
    if realtime:
        head += ["-re", "-stream_loop", "-1"]
    if seconds is not None:
        head += ["-t", f"{seconds:g}"]
    return [*head, "-i", str(case.source.path)]


_X264_FRAMES = re.compile(r"\[libx264 @ (0x[0-9a-f]+)\] frame [IPB]:(\d+)")
_X264_RATE = re.compile(r"\[libx264 @ (0x[0-9a-f]+)\] kb/s:([\d.]+)")


def ffmpeg_throughput(case: Case, options: Options) -> dict[str, Any]:
    """One offline run of the ffmpeg CLI's ladder: its CPU (from wait4) per second of media."""
    argv = [*ffmpeg_input(case, options.media_seconds), "-nostats", "-loglevel", "info"]
    argv += ffmpeg_ladder(case, options.preset, options.tune)
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    log = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if process.returncode:
        raise RuntimeError(f"ffmpeg failed ({process.returncode}): {log[-1500:]}")
    frames: dict[str, int] = {}
    for encoder, count in _X264_FRAMES.findall(log):
        frames[encoder] = frames.get(encoder, 0) + int(count)
    rates = [float(kbit) for _, kbit in _X264_RATE.findall(log)]
    counts = list(frames.values())
    media = (max(counts) if counts else 0) / case.source.fps
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "cpu_s": cpu,
        "media_s": media,
        "cpu_s_per_media_s": cpu / media if media else None,
        "wall_s": wall,
        "frames_per_rung": counts,
        "kbit_per_rung": rates,
        "max_rss_mb": usage.ru_maxrss / 1000,
        "command": argv,
    }


# ------------------------------------------------------------------ minilive's ladder, offline


def read_packets(path: Path, seconds: float) -> list[Packet]:
    """The fixture's audio and video as the hub hands them to a sink, up to ``seconds`` of media."""
    packets = []
    limit = seconds * 1000
    for tag in FlvReader().feed(path.read_bytes()):
        if tag.kind not in (AUDIO, VIDEO):
            continue
        config = load.is_config(tag)
        if not config and tag.timestamp >= limit:
            continue
        keyframe = tag.kind == VIDEO and load.is_keyframe(tag.payload)
        packets.append(Packet(tag.kind, tag.timestamp, tag.payload, keyframe, config))
    return packets


class _Collector:
    """A job for the pool (relay.transcode.pool.JobClient) that counts what the worker makes."""

    def __init__(self, job_id: int, spec: dict[str, Any], rungs: int) -> None:
        self.id = job_id
        self._spec = spec
        self.frames = [0] * rungs
        self.bytes = [0] * rungs
        self.last_output = time.monotonic()
        self.report: dict[str, Any] | None = None
        self.error: str | None = None

    def spec(self) -> dict[str, Any]:
        return self._spec

    def output(self, rung: int, packet: Packet, sent_ns: int) -> None:
        self.last_output = time.monotonic()
        if packet.kind == VIDEO and not packet.config:
            self.frames[rung] += 1
            self.bytes[rung] += len(packet.payload)

    def stats(self, data: dict[str, Any]) -> None:
        self.report = data

    def restarted(self) -> None:
        self.error = "the worker was restarted"


async def _ladder_in_worker(case: Case, packets: list[Packet], options: Options) -> dict[str, Any]:
    pool = Pool(1)  # not started: no supervisor, which would kill a worker busy for seconds on one read
    rungs = case.ladder
    spec = {
        "rungs": [rung.to_dict() for rung in rungs],
        "enabled": list(case.rungs),
        "preset": options.preset,
        "tune": options.tune,
        "encoder": SOFTWARE,
        "resume_after": None,
        "max_delay_ms": 1e9,
        "label": f"bench {case.name}",
    }
    job = _Collector(pool.new_job_id(), spec, len(rungs))
    try:
        started = time.monotonic()
        worker = await pool.open(job)
        # Its first stats (a second into its loop) say it has imported PyAV and opened the job.
        while job.report is None:
            if time.monotonic() - started > 60 or not worker.alive:
                raise RuntimeError("the transcoding worker did not start")
            await asyncio.sleep(0.05)
        start_cpu = _cpu_s(worker.pid)
        ready_rss = _status_kb(worker.pid, "VmRSS")
        began = time.monotonic()
        for packet in packets:
            while (transport := worker.transport) is not None and transport.get_write_buffer_size() > QUEUED_TO_WORKER:
                await asyncio.sleep(0.002)
            # Sent time 0: untimed (as the hub's GOP replay), so the worker never drops to catch up.
            if not pool.send_packet(job.id, packet, 0):
                raise RuntimeError("the transcoding worker went away")
        pool.control(job.id, wire.CLOSE)  # the encoders' last pictures come back with it
        expected = sum(1 for p in packets if p.kind == VIDEO and not p.config)
        while min(job.frames) < expected and time.monotonic() - job.last_output < 5:
            await asyncio.sleep(0.01)
        wall = time.monotonic() - began
        cpu = _cpu_s(worker.pid) - start_cpu
        peak_rss = _status_kb(worker.pid, "VmHWM")
    finally:
        await pool.stop()
    if job.error:
        raise RuntimeError(job.error)
    media = max(job.frames) / case.source.fps
    return {
        "cpu_s": cpu,
        "startup_cpu_s": start_cpu,  # the worker's start (Python, PyAV), before the first packet
        "media_s": media,
        "cpu_s_per_media_s": cpu / media if media else None,
        "wall_s": wall,
        "frames_per_rung": job.frames,
        "frames_in": expected,
        "kbit_per_rung": [8 * size / media / 1000 if media else 0 for size in job.bytes],
        "ready_rss_mb": ready_rss / 1000,
        "max_rss_mb": peak_rss / 1000,
        "ladder_rss_mb": (peak_rss - ready_rss) / 1000,
    }


def minilive_throughput(case: Case, options: Options) -> dict[str, Any]:
    """One offline run of minilive's ladder in a worker process: its CPU per second of media."""
    packets = read_packets(case.source.path, options.media_seconds)
    return asyncio.run(_ladder_in_worker(case, packets, options))


def throughput(case: Case, options: Options) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for index in range(options.rounds):
        order = ("ffmpeg", "minilive") if index % 2 == 0 else ("minilive", "ffmpeg")
        for who in order:
            _progress(f"throughput {case.label}: {who}, round {index + 1}/{options.rounds} ...")
            machine, ours = run.MachineCpu.read(), time.process_time()
            measured = ffmpeg_throughput(case, options) if who == "ffmpeg" else minilive_throughput(case, options)
            busy, _ = run.MachineCpu.read().percent_since(machine)
            # Anything but the ladder and this process (which feeds minilive's worker) on the machine.
            mine = 100 * (measured["cpu_s"] + measured.get("startup_cpu_s", 0.0) + time.process_time() - ours)
            measured["other_cpu_pct"] = busy - mine / measured["wall_s"]
            rounds.append({"server": who, "round": index + 1, **measured})
            _progress(f"  {measured['cpu_s_per_media_s']:.3f} CPU-s per s of media ({measured['wall_s']:.1f} s)")
    summary: dict[str, Any] = {"case": case.name, "label": case.label, "rounds": rounds}
    for who in ("ffmpeg", "minilive"):
        mine = [r for r in rounds if r["server"] == who]
        values = [r["cpu_s_per_media_s"] for r in mine]
        summary[who] = {
            "cpu_s_per_media_s": _median(values),
            "range": [min(values), max(values)],
            "kbit_per_rung": [_median([r["kbit_per_rung"][i] for r in mine]) for i in range(len(case.rungs))],
            "frames_per_rung": mine[0]["frames_per_rung"],
            "max_rss_mb": _median([r["max_rss_mb"] for r in mine]),
        }
    summary["minilive"]["ladder_rss_mb"] = _median([r["ladder_rss_mb"] for r in rounds if r["server"] == "minilive"])
    # Per round, so that the machine's drift between rounds does not enter the ratio.
    ffmpeg_rounds = [r for r in rounds if r["server"] == "ffmpeg"]
    minilive_rounds = [r for r in rounds if r["server"] == "minilive"]
    ratios = [
        m["cpu_s_per_media_s"] / f["cpu_s_per_media_s"] for f, m in zip(ffmpeg_rounds, minilive_rounds, strict=True)
    ]
    summary["ratio"] = _median(ratios)
    summary["ratio_range"] = [min(ratios), max(ratios)]
    return summary


# ------------------------------------------------------------------ real-time capacity: ffmpeg


def _progress_of(path: Path) -> float | None:
    """The last ``out_time_us`` an ffmpeg ``-progress`` file reports, in seconds."""
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.findall(r"^out_time_us=(\d+)$", text, re.MULTILINE)
    return int(found[-1]) / 1e6 if found else None


def ffmpeg_capacity(case: Case, count: int, options: Options) -> dict[str, Any]:
    """``count`` ffmpeg ladders with ``-re`` (the fixture looped in real time), started GOP/count
    apart; each is real time if its output advanced at least FFMPEG_REALTIME s per s in the window."""
    WORK.mkdir(parents=True, exist_ok=True)
    processes = []
    progress = []
    start = time.monotonic() + 0.5
    try:
        for i in range(count):
            _sleep_until(start + GOP_S * i / count)
            path = WORK / f"ffmpeg{i}.progress"
            path.unlink(missing_ok=True)
            argv = [*ffmpeg_input(case, realtime=True), "-nostats", "-loglevel", "error"]
            argv += ["-progress", str(path), "-stats_period", "0.1", *ffmpeg_ladder(case, options.preset, options.tune)]
            with (WORK / f"ffmpeg{i}.log").open("wb") as log:
                processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
            progress.append(path)
        measure = start + GOP_S + options.warmup
        _sleep_until(measure)
        machine = run.MachineCpu.read()
        first = [
            (time.monotonic(), _progress_of(p), _cpu_s(proc.pid)) for p, proc in zip(progress, processes, strict=True)
        ]
        _sleep_until(measure + options.duration)
        last = [
            (time.monotonic(), _progress_of(p), _cpu_s(proc.pid)) for p, proc in zip(progress, processes, strict=True)
        ]
        busy, _ = run.MachineCpu.read().percent_since(machine)
        window = last[0][0] - first[0][0]
        ffmpeg_cpu = sum(cpu1 - cpu0 for (_, _, cpu0), (_, _, cpu1) in zip(first, last, strict=True))
        rss = [_status_kb(proc.pid, "VmRSS") / 1000 for proc in processes]
        alive = [proc.poll() is None for proc in processes]
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
    ladders = []
    for (t0, out0, cpu0), (t1, out1, cpu1), ok, size in zip(first, last, alive, rss, strict=True):
        speed = (out1 - out0) / (t1 - t0) if out0 is not None and out1 is not None else 0.0
        ladders.append({"speed": speed, "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "rss_mb": size, "alive": ok})
    slowest = min(ladder["speed"] for ladder in ladders)
    reasons = [] if slowest >= FFMPEG_REALTIME else [f"slowest ladder at {slowest:.3f}x real time"]
    for i, ok in enumerate(alive):
        if not ok:
            log = (WORK / f"ffmpeg{i}.log").read_text(errors="replace").strip().splitlines()
            reasons.append(f"ffmpeg {i} exited: {log[-1] if log else '(no output)'}")
    return {
        "server": "ffmpeg",
        "case": case.name,
        "count": count,
        "realtime": not reasons,
        "slowest": slowest,
        "reasons": reasons,
        "cpu_pct_per_ladder": statistics.fmean(ladder["cpu_pct"] for ladder in ladders),
        "rss_mb_per_ladder": statistics.fmean(rss),
        "machine_busy_pct": busy,
        "other_cpu_pct": busy - 100 * ffmpeg_cpu / window,
        "ladders": ladders,
    }


# ------------------------------------------------------------------ real-time capacity: minilive


class StreamsPoller(threading.Thread):
    """Reads /api/v1/streams once a second inside a window, with the memory of the workers it names."""

    def __init__(self, server: peers.Server, start: float, end: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{server.http_port}/api/v1/streams"
        self.server_pid = server.process.pid
        self.start_at, self.end_at = start, end
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        _sleep_until(self.start_at)
        tick = self.start_at
        while time.monotonic() < self.end_at:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    body = json.loads(response.read())
            except OSError as exc:
                self.errors.append(str(exc))
            else:
                # Every worker the server started (the pool starts one per core with its first job),
                # idle ones too: a ladder's memory is what the workers grow by.
                workers = peers.process_tree(self.server_pid)[1:]
                body["at"] = time.monotonic()
                body["worker_rss_mb"] = {str(pid): _status_kb(pid, "VmRSS") / 1000 for pid in sorted(workers)}
                body["server_rss_mb"] = _status_kb(self.server_pid, "VmRSS") / 1000
                self.samples.append(body)
            tick += 1.0
            _sleep_until(min(tick, self.end_at - 0.05))


def renditions_summary(samples: list[dict[str, Any]], sources: list[str], case: Case, options: Options) -> dict:
    """Whether every source's renditions kept up over the window, and their latency at its end."""
    reasons: list[str] = []
    if len(samples) < 2:
        return {"realtime": False, "reasons": ["fewer than 2 samples of /api/v1/streams"], "renditions": []}
    found: list[dict[str, Any]] = []
    for source in sources:
        history = [next((s for s in sample["streams"] if s["name"] == source), None) for sample in samples]
        if any(stream is None for stream in history):
            reasons.append(f"{source} was not live throughout")
            continue
        source_fps = statistics.fmean((stream.get("video") or {}).get("fps", 0.0) for stream in history)
        for name in case.rungs:
            entries = [next((r for r in s.get("renditions", []) if r["name"] == name), {}) for s in history]
            if not all(entry.get("running") for entry in entries):
                reasons.append(f"{source}_{name} was not running throughout")
                continue
            fps = statistics.fmean(entry["fps"] for entry in entries)
            behind = max(entry["behind_ms"] for entry in entries)
            dropped = entries[-1]["frames_dropped"] - entries[0]["frames_dropped"]
            latency = entries[-1]["latency_ms"]
            found.append(
                {"stream": f"{source}_{name}", "fps": fps, "source_fps": source_fps, "behind_ms": behind,
                 "frames_dropped": dropped, "latency_p50_ms": latency["p50"], "latency_p99_ms": latency["p99"],
                 "bitrate": statistics.fmean(entry["bitrate"] for entry in entries), "worker": entries[-1]["worker"]}
            )  # fmt: skip
            if fps < FPS_REALTIME * source_fps:
                reasons.append(f"{source}_{name} at {fps:.1f} fps of {source_fps:.1f}")
            if behind > options.max_behind_ms:
                reasons.append(f"{source}_{name}'s packets reached the worker up to {behind:.0f} ms late")
            if dropped:
                reasons.append(f"{source}_{name} dropped {dropped} frames")
    totals = [sample.get("transcode", {}) for sample in samples]
    for key in ("dropped", "worker_restarts"):
        grew = totals[-1].get(key, 0) - totals[0].get(key, 0)
        if grew:
            reasons.append(f"transcode {key} +{grew}")
    p50s = [r["latency_p50_ms"] for r in found if r["latency_p50_ms"] is not None]
    p99s = [r["latency_p99_ms"] for r in found if r["latency_p99_ms"] is not None]
    last = samples[-1]
    return {
        "realtime": not reasons,
        "reasons": reasons,
        # Each rendition's latency is over its last 512 frames, read at the window's end: the median of
        # the renditions' p50 and the highest of their p99.
        "latency_p50_ms": _median(p50s),
        "latency_p99_ms": max(p99s) if p99s else None,
        "behind_max_ms": max((r["behind_ms"] for r in found), default=None),
        "workers_rss_mb": sum(last["worker_rss_mb"].values()),
        "workers": len(last["worker_rss_mb"]),
        "server_main_rss_mb": last["server_rss_mb"],
        "renditions": found,
    }


def staggered(streams: list[str], start: float) -> list[dict[str, Any]]:
    """bench.load publishers for ``streams``, started GOP/N apart from ``start``: their keyframes (and
    the encoders' IDR pictures) spread over the GOP, as independent sources' are."""
    return [{"stream": name, "start": start + GOP_S * i / len(streams)} for i, name in enumerate(streams)]


def minilive_capacity(case: Case, count: int, options: Options) -> dict[str, Any]:
    """A minilive server transcoding ``count`` sources published in real time (bench.load), started
    GOP/count apart; real time if every rendition kept up (see renditions_summary)."""
    config = transcode_config(case, options, "always", max_transcodes=1000)
    record: dict[str, Any] = {"server": "minilive", "case": case.name, "count": count}
    server = peers.start_minilive(peers.free_port(), peers.free_port(), config=config)
    try:
        publish = time.monotonic() + 2.0  # the load process's start
        measure = publish + GOP_S + options.warmup
        schedule = run.Schedule(publish, publish, measure, measure + options.duration)
        sources = [f"src{i}" for i in range(count)]
        plan = {"rtmp_url": server.rtmp_url(), "fixture": str(case.source.path), "measure": measure}
        plan["end"] = schedule.end
        plan["publishers"] = staggered(sources, publish)
        poller = StreamsPoller(server, measure, schedule.end)
        poller.start()
        raw = run.measure(server, [plan], schedule)
        poller.join()
    finally:
        server.stop()
    window = raw["window_s"]
    summary = renditions_summary(poller.samples, sources, case, options)
    behind = [p["stream"] for p in raw["publishers"] if p["behind"]]
    if behind:
        summary["reasons"].append(f"publishers behind: {', '.join(behind)}")
        summary["realtime"] = False
    workers_cpu = raw["server_cpu_s"] - raw["server_main_cpu_s"]
    return {
        **record,
        **summary,
        "cpu_pct_per_ladder": 100 * workers_cpu / window / count,
        "server_main_cpu_pct": 100 * raw["server_main_cpu_s"] / window,
        "workers_cpu_pct": 100 * workers_cpu / window,
        "machine_busy_pct": raw["machine_busy_pct"],
        "other_cpu_pct": raw["other_cpu_pct"],
        "client_cpu_pct": raw["client_cpu_pct"],
        "poll_errors": poller.errors,
        "samples": [
            {"at": s["at"], "streams": [{k: st.get(k) for k in ("name", "video", "renditions")} for st in s["streams"]]}
            for s in poller.samples
        ],
    }


def capacity(case: Case, options: Options) -> list[dict[str, Any]]:
    """Step the number of ladders up from 1 for each: until one is not real time (and, for minilive,
    at least to 4, for the latency at 4), or ``max_ladders``."""
    steps = []
    for who, step in (("ffmpeg", ffmpeg_capacity), ("minilive", minilive_capacity)):
        for count in range(1, options.max_ladders + 1):
            _progress(f"capacity {case.label}: {who}, {count} ladder(s) ...")
            try:
                result = step(case, count, options)
            except Exception as exc:
                _progress(f"  failed: {exc}")
                steps.append({"server": who, "case": case.name, "count": count, "realtime": False, "error": str(exc)})
                break
            steps.append(result)
            verdict = "real time" if result["realtime"] else "NOT real time: " + "; ".join(result["reasons"][:3])
            _progress(f"  {verdict}; {result['cpu_pct_per_ladder']:.0f} % of a core per ladder")
            if not result["realtime"] and (who == "ffmpeg" or count >= 4):
                break
    return steps


def max_realtime(steps: list[dict[str, Any]], who: str) -> int:
    """The most ladders that ran in real time before the first count that did not."""
    best = 0
    for step in sorted((s for s in steps if s["server"] == who), key=lambda s: s["count"]):
        if not step["realtime"]:
            break
        best = step["count"]
    return best


# ------------------------------------------------------------------ fan-out with transcoding beside it


def fanout(ladders: int, options: Options) -> dict[str, Any]:
    """bench.run's fan-out scenario on minilive (one publisher, N viewers, half RTMP and half
    HTTP-FLV) with ``ladders`` other sources transcoded at once. They publish LADDERS_LEAD seconds
    before the fan-out's publisher and take every transcode slot (max_transcodes), so that stream
    itself is not transcoded; with 0 ladders the server transcodes nothing (on demand, and no one
    asks), on the same timeline."""
    case = options.fanout_case
    mode, slots = ("always", ladders * len(case.rungs)) if ladders else ("on-demand", 0)
    config = transcode_config(case, options, mode, max_transcodes=slots)
    count = options.fanout_viewers
    record: dict[str, Any] = {"server": "minilive", "ladders": ladders, "count": count, "case": case.name}
    run_options = run.Options(
        ["minilive"], [count], [], options.duration, 3.0, 500.0, 0, 20, [], 0.0, "block"
    )  # fmt: skip
    server = peers.start_minilive(peers.free_port(), peers.free_port(), config=config)
    try:
        ladders_at = time.monotonic() + 2.0
        publish = ladders_at + LADDERS_LEAD
        viewers = publish + 1.5
        measure = viewers + count / run_options.connect_rate + run_options.warmup
        schedule = run.Schedule(publish, viewers, measure, measure + options.duration)
        plans = run.fanout_plans(server, count, run_options, schedule)
        sources = [f"tc{i}" for i in range(ladders)]
        if sources:
            extra = {"rtmp_url": server.rtmp_url(), "fixture": str(case.source.path), "measure": measure}
            extra["end"] = schedule.end
            extra["publishers"] = staggered(sources, ladders_at)
            plans.append(extra)
        poller = StreamsPoller(server, measure, schedule.end)
        poller.start()
        raw = run.measure(server, plans, schedule)
        poller.join()
    finally:
        server.stop()
    # The fan-out's numbers are its own publisher's and viewers': the ladders' publishers are apart.
    raw["ladder_publishers"] = [p for p in raw["publishers"] if p["stream"] != run.STREAM]
    raw["publishers"] = [p for p in raw["publishers"] if p["stream"] == run.STREAM]
    summary = run.summarize_fanout(raw)
    window = summary["window_s"]
    gbit = summary["delivered_gbit"]
    workers_cpu = summary["server_cpu_s"] - summary["server_main_cpu_s"]
    transcoded = renditions_summary(poller.samples, sources, case, options) if sources else {"realtime": True}
    fanout_stream = [
        r["name"] for s in (poller.samples[-1]["streams"] if poller.samples else []) if s["name"] == run.STREAM
        for r in s.get("renditions", []) if r.get("running")
    ]  # fmt: skip
    return {
        **record,
        **{k: v for k, v in summary.items() if k not in ("viewers", "latency_ms", "hls")},
        "main_cpu_s_per_gbit": summary["server_main_cpu_s"] / gbit if gbit else None,
        "server_main_cpu_pct": 100 * summary["server_main_cpu_s"] / window,
        "workers_cpu_pct": 100 * workers_cpu / window,
        "ladders_realtime": transcoded["realtime"],
        "ladders_reasons": transcoded.get("reasons", []),
        "ladders_latency_p99_ms": transcoded.get("latency_p99_ms"),
        "fanout_stream_transcoded": fanout_stream,  # should be empty
    }


# ------------------------------------------------------------------ tables


def _fmt(value: Any, digits: int = 1) -> str:
    return run._fmt(value, digits)


def throughput_table(results: list[dict[str, Any]], rounds: int) -> str:
    headers = ["ladder", "ffmpeg CPU-s per s of media", "minilive", "minilive / ffmpeg", "kbit/s ffmpeg",
               "kbit/s minilive", "max RSS MB ffmpeg", "worker RSS MB for the ladder"]  # fmt: skip
    rows = []
    for r in results:
        f, m = r["ffmpeg"], r["minilive"]
        spread = rounds > 1
        rows.append(
            [
                r["label"],
                _fmt(f["cpu_s_per_media_s"], 3) + (f" ({f['range'][0]:.3f}-{f['range'][1]:.3f})" if spread else ""),
                _fmt(m["cpu_s_per_media_s"], 3) + (f" ({m['range'][0]:.3f}-{m['range'][1]:.3f})" if spread else ""),
                f"{r['ratio']:.2f}x" + (f" ({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})" if spread else ""),
                " / ".join(_fmt(k, 0) for k in f["kbit_per_rung"]),
                " / ".join(_fmt(k, 0) for k in m["kbit_per_rung"]),
                _fmt(f["max_rss_mb"], 0),
                _fmt(m["ladder_rss_mb"], 0),
            ]
        )
    notes = [
        f"target: {r['label']}: minilive's CPU per ladder {r['ratio']:.2f}x ffmpeg's, at most 1.10x: "
        + ("met" if r["ratio"] <= 1.1 else "MISSED")
        for r in results
    ]
    notes += disturbed([{**one, "case": r["case"]} for r in results for one in r["rounds"]], "round")
    return "\n".join([run.markdown_table(headers, rows), "", *notes])


def disturbed(runs: list[dict[str, Any]], key: str) -> list[str]:
    """Notes on the runs during which other processes used the machine (more than bench.run allows)."""
    return [
        f"note: other processes used {r['other_cpu_pct']:.0f} % of a core during the {r['server']} run "
        f"({CASES[r['case']].label}, {key} {r[key]}); its numbers may be disturbed"
        for r in runs
        if r.get("other_cpu_pct", 0) > run.DISTURBED_PCT
    ]


def capacity_table(steps: list[dict[str, Any]]) -> str:
    headers = ["ladder", "server", "ladders", "real time", "CPU % of a core per ladder", "RSS MB per ladder",
               "machine busy %", "why not"]  # fmt: skip
    rows = []
    for s in steps:
        case = CASES[s["case"]]
        if "error" in s:
            rows.append([case.label, s["server"], str(s["count"]), "error: " + s["error"].splitlines()[0][:60]])
            rows[-1] += [""] * (len(headers) - len(rows[-1]))
            continue
        rss = s["rss_mb_per_ladder"] if s["server"] == "ffmpeg" else s["workers_rss_mb"] / s["count"]
        rows.append(
            [
                case.label, s["server"], str(s["count"]), "yes" if s["realtime"] else "no",
                _fmt(s["cpu_pct_per_ladder"], 0), _fmt(rss, 0), _fmt(s["machine_busy_pct"], 0),
                "; ".join(s["reasons"][:2]),
            ]
        )  # fmt: skip
    notes = []
    for name in dict.fromkeys(s["case"] for s in steps):
        mine = [s for s in steps if s["case"] == name]
        best = {who: max_realtime(mine, who) for who in ("ffmpeg", "minilive")}
        verdict = "met" if best["minilive"] >= best["ffmpeg"] else "MISSED"
        notes.append(
            f"target: {CASES[name].label}: real-time ladders: minilive {best['minilive']}, ffmpeg {best['ffmpeg']}: "
            f"as many: {verdict}"
        )
    notes += disturbed(steps, "count")
    return "\n".join([run.markdown_table(headers, rows, text=2), "", *notes])


def latency_table(steps: list[dict[str, Any]]) -> str:
    """minilive's added latency and memory at 1, 4 and the most real-time ladders."""
    headers = ["ladder", "ladders", "real time", "latency p50 ms", "p99 ms", "behind max ms", "workers",
               "workers RSS MB", "per ladder MB", "server CPU %", "workers CPU %"]  # fmt: skip
    rows, notes = [], []
    for name in dict.fromkeys(s["case"] for s in steps):
        mine = {s["count"]: s for s in steps if s["case"] == name and s["server"] == "minilive" and "error" not in s}
        if not mine:
            continue
        best = max_realtime(list(mine.values()), "minilive")
        base = mine.get(1)
        for count in sorted({1, 4, best} & set(mine)):
            s = mine[count]
            per = (s["workers_rss_mb"] - base["workers_rss_mb"]) / (count - 1) if base and count > 1 else None
            label = f"{count} (max)" if count == best else str(count)
            rows.append(
                [
                    CASES[name].label, label, "yes" if s["realtime"] else "no", _fmt(s["latency_p50_ms"]),
                    _fmt(s["latency_p99_ms"]), _fmt(s["behind_max_ms"]), str(s["workers"]),
                    _fmt(s["workers_rss_mb"], 0), _fmt(per, 0), _fmt(s["server_main_cpu_pct"], 0),
                    _fmt(s["workers_cpu_pct"], 0),
                ]
            )  # fmt: skip
            if s["latency_p99_ms"] is not None:
                met = "met" if s["latency_p99_ms"] < LATENCY_TARGET_MS else "MISSED"
                notes.append(
                    f"target: {CASES[name].label}, {count} ladder(s): latency p99 {s['latency_p99_ms']:.0f} ms "
                    f"< {LATENCY_TARGET_MS:.0f} ms: {met}"
                )
    return "\n".join([run.markdown_table(headers, rows), "", *notes])


def ladders_server_cpu_pct(steps: list[dict[str, Any]], case: str, ladders: int) -> float | None:
    """What ``ladders`` ladders cost minilive's own process (their ingest, feeding the workers, publishing
    the renditions), in % of a core, from the capacity runs of ``case`` (no viewers): the slope of the
    server's CPU over their counts, times ``ladders``, so that the idle server's own cost (its timers,
    the API reads) is not taken away from fan-out; None without two capacity runs to fit."""
    points = [
        (s["count"], s["server_main_cpu_pct"])
        for s in steps
        if s["server"] == "minilive" and s["case"] == case and "server_main_cpu_pct" in s
    ]
    if len({count for count, _ in points}) < 2:
        return None
    mean_n = statistics.fmean(n for n, _ in points)
    mean_cpu = statistics.fmean(cpu for _, cpu in points)
    slope = sum((n - mean_n) * (cpu - mean_cpu) for n, cpu in points) / sum((n - mean_n) ** 2 for n, _ in points)
    return slope * ladders


def fanout_table(results: list[dict[str, Any]], steps: list[dict[str, Any]]) -> str:
    headers = ["ladders beside", "viewers", "delivered Gbit", "server CPU-s/Gbit (own process)",
               "net of the ladders' own", "server CPU %", "workers CPU %", "1st key p50 / p95 ms",
               "latency p50 / p99 ms", "behind", "ladders real time", "machine busy %"]  # fmt: skip
    rows = []
    for r in results:
        if "error" in r:
            rows.append([str(r["ladders"]), str(r["count"]), "error: " + r["error"].splitlines()[0][:60]] + [""] * 9)
            continue
        own = ladders_server_cpu_pct(steps, r["case"], r["ladders"]) if r["ladders"] else 0.0
        if own is not None and r["delivered_gbit"]:
            r["net_cpu_s_per_gbit"] = (r["server_main_cpu_pct"] - own) / 100 * r["window_s"] / r["delivered_gbit"]
        rows.append(
            [
                str(r["ladders"]), str(r["count"]), _fmt(r["delivered_gbit"], 2), _fmt(r["main_cpu_s_per_gbit"], 3),
                _fmt(r.get("net_cpu_s_per_gbit"), 3), _fmt(r["server_main_cpu_pct"], 0), _fmt(r["workers_cpu_pct"], 0),
                f"{_fmt(r['first_keyframe_p50_ms'], 0)} / {_fmt(r['first_keyframe_p95_ms'], 0)}",
                f"{_fmt(r['latency_p50_ms'])} / {_fmt(r['latency_p99_ms'])}", _fmt(r["viewers_behind"], 0),
                "-" if not r["ladders"] else ("yes" if r["ladders_realtime"] else "no"),
                _fmt(r["machine_busy_pct"], 0),
            ]
        )  # fmt: skip
    notes = []
    base = next((r for r in results if r["ladders"] == 0 and "error" not in r), None)
    cpus = os.cpu_count() or 1
    for r in results:
        if base is None or not r["ladders"] or "error" in r or not base["main_cpu_s_per_gbit"]:
            continue
        lost = r["main_cpu_s_per_gbit"] / base["main_cpu_s_per_gbit"] - 1
        net = r.get("net_cpu_s_per_gbit")
        net_lost = f", {100 * (net / base['main_cpu_s_per_gbit'] - 1):+.0f} % net of the ladders' own" if net else ""
        taken = r["workers_cpu_pct"] / (100 * cpus)
        notes.append(
            f"{r['ladders']} ladder(s): the server's CPU per delivered Gbit {100 * lost:+.0f} %{net_lost}; "
            f"the workers took {100 * taken:.0f} % of the machine"
        )
        if net:
            # Fan-out keeps its cost per Gbit (and its viewers) while the workers run: it loses the cores
            # they take and nothing more.
            rise = net / base["main_cpu_s_per_gbit"] - 1
            met = rise <= FANOUT_TOLERANCE and not r["viewers_behind"]
            notes.append(
                f"target: {r['ladders']} ladder(s): fan-out loses no more than the workers' CPU: its net cost per "
                f"Gbit {100 * rise:+.0f} % (tolerance {100 * FANOUT_TOLERANCE:.0f} %), {r['viewers_behind']} "
                f"viewers behind: {'met' if met else 'MISSED'}"
            )
        if r["fanout_stream_transcoded"]:
            notes.append(f"note: the fan-out stream itself was transcoded: {r['fanout_stream_transcoded']}")
    notes += disturbed(results, "ladders")
    return "\n".join([run.markdown_table(headers, rows), "", *notes])


# ------------------------------------------------------------------ command line


def versions() -> dict[str, Any]:
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    x264 = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}", "libx264-*"], capture_output=True, text=True)
    bundled = sorted(p.name for p in (Path(av.__file__).parent.parent / "av.libs").glob("libx264*"))
    return {
        "ffmpeg": ffmpeg,
        "ffmpeg_libx264": x264.stdout.strip(),
        "pyav": av.__version__,
        "pyav_libraries": {name: ".".join(map(str, v)) for name, v in av.library_versions.items()},
        "pyav_libx264": bundled,
    }


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.transcode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="720p,1080p", help=f"ladders to measure: {', '.join(CASES)}")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to run: {', '.join(PARTS)}")
    parser.add_argument("--preset", default="veryfast", help="x264 preset, both sides")
    parser.add_argument("--tune", default="zerolatency", help="x264 tune, both sides")
    parser.add_argument("--rounds", default=3, type=int, help="throughput rounds, in alternating order (medians)")
    parser.add_argument("--media-seconds", default=60.0, type=float, help="throughput: seconds of the fixture")
    parser.add_argument("--max-ladders", default=12, type=int, help="capacity: the most ladders tried")
    parser.add_argument("--duration", default=20.0, type=float, help="seconds measured per capacity/fan-out run")
    parser.add_argument("--warmup", default=8.0, type=float, help="capacity: seconds from the last start to the window")
    parser.add_argument(
        "--max-behind-ms", default=500.0, type=float,
        help="capacity: a minilive job whose packets reach its worker later than this is not real time",
    )  # fmt: skip
    parser.add_argument("--fanout-viewers", default=300, type=int, help="fan-out viewers (0: no fan-out runs)")
    parser.add_argument("--fanout-ladders", default="0,1,2", help="ladders beside the fan-out, one run each")
    parser.add_argument("--fanout-case", default="720p", choices=list(CASES), help="the ladder beside the fan-out")
    args = parser.parse_args(argv)
    try:
        cases = [CASES[name] for name in run.names(args.cases, CASES, "case")]
        parts = run.names(args.parts, PARTS, "part")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.rounds < 1 or args.max_ladders < 1 or args.duration <= 0 or args.media_seconds <= 0:
        parser.error("--rounds and --max-ladders must be 1 or more, --duration and --media-seconds above 0")
    return Options(
        cases, parts, args.preset, args.tune, args.rounds, args.media_seconds, args.max_ladders, args.duration,
        args.warmup, args.max_behind_ms, args.fanout_viewers, [int(n) for n in args.fanout_ladders.split(",") if n],
        CASES[args.fanout_case],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    run.raise_fd_limit()
    # The offline worker (relay.transcode.pool starts it) runs this tree's code, as the server does.
    os.environ["PYTHONPATH"] = peers.minilive_env()["PYTHONPATH"]
    if shutil.which("ffmpeg") is None:
        sys.exit("no ffmpeg here: run `python -m bench.peers install` (Debian's ffmpeg, as bench.run uses)")
    for case in {*options.cases, options.fanout_case}:
        fixture.ensure(case.source)
    started = datetime.now()
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.transcode", *(sys.argv[1:] if argv is None else argv)]),
        "machine": run.machine(),
        "versions": versions(),
        "options": {
            "cases": [case.name for case in options.cases], "parts": options.parts, "preset": options.preset,
            "tune": options.tune, "rounds": options.rounds, "media_seconds": options.media_seconds,
            "max_ladders": options.max_ladders, "duration": options.duration, "warmup": options.warmup,
            "max_behind_ms": options.max_behind_ms, "fanout_viewers": options.fanout_viewers,
            "fanout_ladders": options.fanout_ladders, "fanout_case": options.fanout_case.name,
        },
        "ffmpeg_commands": {
            case.name: shlex.join([*ffmpeg_input(case), *ffmpeg_ladder(case, options.preset, options.tune)])
            for case in options.cases
        },
        "throughput": [],
        "capacity": [],
        "fanout": [],
    }  # fmt: skip
    tables = []
    if "throughput" in options.parts:
        for case in options.cases:
            report["throughput"].append(throughput(case, options))
        title = f"Throughput, offline, {options.media_seconds:g} s of media, median of {options.rounds} round(s)"
        tables.append(f"### {title}\n\n{throughput_table(report['throughput'], options.rounds)}")
    if "capacity" in options.parts:
        for case in options.cases:
            report["capacity"] += capacity(case, options)
        tables.append(f"### Real-time ladders, {options.duration:g} s measured\n\n{capacity_table(report['capacity'])}")
        tables.append(f"### minilive: added latency and memory\n\n{latency_table(report['capacity'])}")
    if "fanout" in options.parts and options.fanout_viewers:
        for ladders in options.fanout_ladders:
            _progress(f"fan-out: {options.fanout_viewers} viewers, {ladders} ladder(s) beside ...")
            try:
                report["fanout"].append(fanout(ladders, options))
            except Exception as exc:
                report["fanout"].append({"ladders": ladders, "count": options.fanout_viewers, "error": str(exc)})
        title = (
            f"Fan-out with transcoding beside it, {options.fanout_viewers} viewers, "
            f"{options.fanout_case.label} ladders, {options.duration:g} s measured"
        )
        tables.append(f"### {title}\n\n{fanout_table(report['fanout'], report['capacity'])}")
    print("\n\n".join(tables))
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    path = run.RESULTS / f"{started:%Y%m%d-%H%M%S}-transcode.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {path.relative_to(peers.ROOT)}")


if __name__ == "__main__":
    main()
