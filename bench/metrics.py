"""What /metrics costs (issue 16): an HLS request's timing (two clock reads and a histogram bucket),
and a scrape of a server with 0, 100 and 1,000 streams (on the event loop, once per scrape interval).

    .venv/bin/python -m bench.metrics [--streams 0,100,1000] [--scrapes 20]

Prints a table and writes bench/results/DATE-metrics.json. No peer has these figures: nginx-rtmp and
node-media-server have no Prometheus endpoint of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from api.config import Settings
from api.server import Server
from relay.http.latency import Histogram
from relay.hub import PublisherInfo

RESULTS = Path(__file__).resolve().parent / "results"


def per_request(number: int = 1_000_000) -> dict[str, float]:
    """ns per histogram observation and per clock read (an HLS request makes one and two)."""
    histogram = Histogram()
    observe = timeit.timeit("observe(0.0042)", globals={"observe": histogram.observe}, number=number)
    clock = timeit.timeit("monotonic()", globals={"monotonic": time.monotonic}, number=number)
    return {"observe_ns": observe / number * 1e9, "monotonic_ns": clock / number * 1e9}


async def scrapes(counts: list[int], repeat: int) -> list[dict[str, Any]]:
    """Render time and size of /metrics with ``counts`` streams published (in the hub, no media)."""
    rows = []
    with tempfile.TemporaryDirectory() as data:
        server = Server(Settings(host="127.0.0.1", rtmp_port=0, http_port=0, data_dir=Path(data)))
        await server.start()
        try:
            for count in counts:
                for i in range(server.hub.stream_count, count):
                    server.hub.publish("live", f"s{i}", PublisherInfo("rtmp", "127.0.0.1:1"), lambda reason: None)
                body, _ = server.metrics.render("")
                start = time.perf_counter()
                for _ in range(repeat):
                    body, _ = server.metrics.render("")
                took = (time.perf_counter() - start) / repeat
                rows.append({"streams": count, "render_ms": took * 1000, "bytes": len(body)})
        finally:
            await server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="0,100,1000", help="stream counts, comma-separated")
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes timed per count")
    args = parser.parse_args()
    costs = per_request()
    rows = asyncio.run(scrapes([int(n) for n in args.streams.split(",")], args.scrapes))
    load = os.getloadavg()[0]
    print(f"HLS request timing: observe {costs['observe_ns']:.0f} ns + 2 x monotonic {costs['monotonic_ns']:.0f} ns")
    print(f"(load average {load:.1f} on {os.cpu_count()} CPUs)")
    print("| streams | scrape ms | bytes |\n|---|---|---|")
    for row in rows:
        print(f"| {row['streams']} | {row['render_ms']:.1f} | {row['bytes']} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-metrics.json"
    out.write_text(json.dumps({"per_request": costs, "scrapes": rows, "load": load}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
