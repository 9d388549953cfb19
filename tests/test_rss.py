"""The soak's RSS growth (issue 16, rss): the debug endpoint's memory listings that found it, and the
fix's regression test."""

from __future__ import annotations

import tracemalloc

import aiohttp

from api.console.sessions import admin_token


async def _runtime(server, query: str) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{server.http_port}/api/v1/debug/runtime?{query}"
    headers = {"Authorization": f"Bearer {admin_token(server.settings.data_dir)}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json()


def _five_megabytes() -> list[bytes]:
    return [bytes(100_000) for _ in range(50)]


ALLOCATING_LINE = f"{__file__}:{_five_megabytes.__code__.co_firstlineno + 1}"


async def test_runtime_malloc_without_tracing_gives_glibc_and_a_hint(make_server) -> None:
    server = await make_server()
    assert not tracemalloc.is_tracing()
    status, body = await _runtime(server, "malloc=5")
    assert status == 200
    malloc = body["malloc"]
    assert malloc["tracing"] is False and "PYTHONTRACEMALLOC=1" in malloc["hint"] and "top" not in malloc
    glibc = malloc["glibc"]
    assert glibc["heap"] > 0 and 0 < glibc["in_use"] <= glibc["heap"] and glibc["free"] >= 0
    status, body = await _runtime(server, "malloc=lots")
    assert status == 400 and "malloc=N" in body["error"]["message"]


async def test_runtime_malloc_lists_lines_and_what_grew_since_the_last_call(make_server) -> None:
    server = await make_server()
    tracemalloc.start()
    try:
        _, first = await _runtime(server, "malloc=3")
        kept = _five_megabytes()  # alive until the second call
        _, second = await _runtime(server, "malloc=3")
    finally:
        tracemalloc.stop()
    assert "grown" not in first["malloc"] and len(first["malloc"]["top"]) == 3
    malloc = second["malloc"]
    assert malloc["tracing"] is True and malloc["traced"]["current"] >= 5_000_000
    assert malloc["top"][0]["at"] == ALLOCATING_LINE and len(kept) == 50
    assert malloc["grown"][0]["at"] == ALLOCATING_LINE and malloc["grown"][0]["size"] >= 5_000_000


async def test_runtime_buffers_counts_bytes_the_collector_does_not_track(make_server) -> None:
    server = await make_server()
    held = {"payloads": [bytes(1_000_000) for _ in range(8)]}
    _, body = await _runtime(server, "buffers=3")
    assert body["buffers"]["bytes"]["size"] >= 8_000_000 and body["buffers"]["bytes"]["count"] >= 8
    assert body["buffers"]["holders"]["list"] >= 8_000_000 and len(held["payloads"]) == 8
