"""A transcoding worker process: ``python -m relay.transcode.worker FD INDEX``.

It reads the server's messages (see :mod:`relay.transcode.wire`) from the socket ``FD``, runs a
:class:`~relay.transcode.ladder.Ladder` per job, and writes what the rungs make back, with a STATS
message once a second that doubles as its heartbeat. One thread, blocking reads: decoding and encoding
never share a process with the event loop that serves viewers.

Real time first: a packet that reaches the worker more than ``max_delay_ms`` after the server got it is
decoded but only keyframes are encoded; more than four times that, and the job skips to the source's
next keyframe. Either way the delay is reported, counted, and logged once while it lasts.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from relay.formats.packet import VIDEO, Packet
from relay.transcode import wire
from relay.transcode.ladder import Ladder, Rung

log = logging.getLogger("minilive.transcode")

STATS_INTERVAL = 1.0
NICENESS = 5


@dataclass(slots=True)
class _Job:
    ladder: Ladder
    index: dict[str, int]  # rung name -> its index in the job's ladder
    max_delay_ns: int
    behind_ns: int = 0  # the most a packet was late since the last stats
    late: bool = False  # dropping to catch up (logged when it starts and ends)
    skipped: int = 0  # packets not decoded to catch up
    extra: dict[str, Any] = field(default_factory=dict)


class Worker:
    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.jobs: dict[int, _Job] = {}
        self.reader = wire.Reader()

    def run(self) -> None:
        sock = self.sock
        sock.settimeout(STATS_INTERVAL / 2)
        next_stats = time.monotonic() + STATS_INTERVAL
        while True:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                data = None
            if data == b"":
                return  # the server is gone
            if data:
                for kind, body in self.reader.feed(data):
                    out: list[bytes] = []
                    self.handle(kind, body, out)
                    if out:  # at once: the next packet's encoding must not hold this one's back
                        sock.sendall(b"".join(out))
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_INTERVAL
                sock.sendall(wire.control_message(wire.STATS, 0, self.stats()))

    def handle(self, kind: int, body: memoryview, out: list[bytes]) -> None:
        if kind == wire.PACKET:
            job_id, packet, sent = wire.read_packet(body)
            job = self.jobs.get(job_id)
            if job is not None:
                self._packet(job_id, job, packet, sent, out)
            return
        job_id, data = wire.read_control(body)
        if kind == wire.OPEN:
            rungs = [Rung.from_dict(r) for r in data["rungs"]]
            ladder = Ladder(
                rungs, data["preset"], data["tune"], data["encoder"], data["enabled"], data.get("resume_after")
            )
            index = {rung.name: i for i, rung in enumerate(rungs)}
            self.jobs[job_id] = _Job(ladder, index, int(data["max_delay_ms"] * 1_000_000))
            log.info("transcode worker %d: job %d opened (%s)", self.index, job_id, data.get("label", ""))
        elif kind == wire.SELECT:
            job = self.jobs.get(job_id)
            if job is not None:
                rungs = [Rung.from_dict(r) for r in data["rungs"]]
                job.index = {rung.name: i for i, rung in enumerate(rungs)}
                job.ladder.rungs = rungs
                self._send(job_id, job, job.ladder.select(data["enabled"]), 0, out)
        elif kind == wire.NEW_PUBLISHER:
            job = self.jobs.get(job_id)
            if job is not None:
                job.ladder.new_publisher()
        elif kind == wire.CLOSE:
            job = self.jobs.pop(job_id, None)
            if job is not None:
                self._send(job_id, job, job.ladder.flush(), 0, out)

    def _packet(self, job_id: int, job: _Job, packet: Packet, sent: int, out: list[bytes]) -> None:
        behind = time.monotonic_ns() - sent if sent else 0  # 0: replayed from the hub's cache, untimed
        job.behind_ns = max(job.behind_ns, behind)
        limit = job.max_delay_ns
        late = behind > limit
        if late != job.late:
            job.late = late
            if late:
                log.warning("transcode worker %d: job %d runs %.0f ms behind real time: dropping frames to catch up",
                            self.index, job_id, behind / 1e6)  # fmt: skip
            else:
                log.info("transcode worker %d: job %d is back in real time", self.index, job_id)
        if behind > 4 * limit and packet.kind == VIDEO and not packet.config and not packet.keyframe:
            job.skipped += 1
            job.ladder.new_publisher()  # decode again from the next keyframe
            return
        try:
            made = job.ladder.feed(packet, encode=not late)
        except Exception:  # a ladder fault ends nothing but this packet
            log.exception("transcode worker %d: job %d failed on %r", self.index, job_id, packet)
            job.ladder.errors += 1
            job.ladder.new_publisher()
            return
        self._send(job_id, job, made, sent, out)

    @staticmethod
    def _send(job_id: int, job: _Job, made: list[tuple[str, Packet]], sent: int, out: list[bytes]) -> None:
        index = job.index
        for name, packet in made:
            out.append(wire.output_message(job_id, index[name], packet, sent))

    def stats(self) -> dict[str, Any]:
        report = {}
        for job_id, job in self.jobs.items():
            ladder = job.ladder
            report[str(job_id)] = {
                "frames_in": ladder.frames_in,
                "errors": ladder.errors,
                "unsupported": ladder.unsupported,
                "refusal": ladder.refusal,
                "skipped": job.skipped,
                "behind_ms": round(job.behind_ns / 1e6, 1),
                "source_codec": ladder.source_codec,
                "size": list(ladder.size) if ladder.size else None,
                "rungs": {
                    name: {"frames_out": state.frames_out, "frames_dropped": state.frames_dropped}
                    for name, state in ladder.states.items()
                },
            }
            job.behind_ns = 0
        return {"pid": os.getpid(), "jobs": report}


def main() -> None:
    fd, index = int(sys.argv[1]), int(sys.argv[2])
    logging.basicConfig(
        level=os.environ.get("MINILIVE_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s transcode-worker-{index} %(message)s",
    )
    # Below the server's priority: on a busy box its viewers come first, and a late ladder drops frames.
    os.nice(NICENESS)
    sock = socket.socket(fileno=fd)
    try:
        Worker(sock, index).run()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server went away
    except wire.WireError as exc:
        log.error("transcode worker %d: bad message from the server: %s", index, exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
