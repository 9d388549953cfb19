"""/metrics from prometheus-client (issue 16) against a real server: every name it had before is still
there, the whole output parses with the client's own parsers, and the values move with real
publishers, viewers, refused connections, HLS requests and store calls."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from api.config import ConfigError, load
from api.metrics import TableCollector
from api.server import Server
from relay.http.latency import Histogram
from relay.hub import PublisherInfo
from tests.conftest import flv_url, make_room, metric, needs_ffmpeg, publish, rtmp_url, wait_live
from tests.test_hostile import handshaken, open_raw, until

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "minilive.json"
METRIC_NAME = re.compile(r"\b((?:minilive|process|python)_[a-z0-9_]+)")

# Every name main's hand-written /metrics had (other tools scrape them): they must stay.
BEFORE = (
    "minilive_streams",
    "minilive_publishers",
    "minilive_viewers",
    "minilive_received_bytes_total",
    "minilive_sent_bytes_total",
    "minilive_viewer_skips_total",
    "minilive_viewers_dropped_slow_total",
    "minilive_sink_failures_total",
    "minilive_renditions_running",
    "minilive_transcode_sources",
    "minilive_renditions_refused_total",
    "minilive_transcode_worker_restarts_total",
    "minilive_transcode_decode_errors",
    "minilive_rtmp_connections",
    "minilive_rtmp_pending_bytes",
    "minilive_rtmp_refused_total",
    "minilive_rtmp_refused_address_total",
    "minilive_rtmp_refused_budget_total",
    "minilive_rtmp_protocol_errors_total",
    "minilive_rtmp_timeouts_total",
    "minilive_http_head_timeouts_total",
    "minilive_http_refused_per_address_total",
)
# And those of a node of a cluster.
BEFORE_CLUSTER = (
    "minilive_cluster_nodes",
    "minilive_cluster_registry_up",
    "minilive_cluster_pulls",
    "minilive_cluster_pulls_started_total",
    "minilive_cluster_streams_moved_total",
    "minilive_cluster_registry_errors_total",
    "minilive_cluster_publishes_refused_total",
    "minilive_cluster_credentials_refused_total",
    "minilive_cluster_hls_proxied_total",
    "minilive_cluster_hls_cache_hits_total",
)


async def scrape(server: Server, accept: str = "") -> tuple[str, str]:
    """The body and content type of a GET /metrics."""
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.http_port}/metrics", headers=headers) as response,
    ):
        assert response.status == 200
        return await response.text(), response.headers["Content-Type"]


def sample_names(text: str) -> set[str]:
    """Every sample name in an exposition, parsed whole (a malformed line raises)."""
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def publisher() -> PublisherInfo:
    return PublisherInfo(protocol="rtmp", remote="127.0.0.1:1")


async def test_every_name_of_before_is_there_and_the_output_parses(make_server) -> None:
    server = await make_server()
    text, content_type = await scrape(server)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    names = sample_names(text)
    assert not [name for name in BEFORE if name not in names]
    # The client's process and GC collectors, on this server's own registry.
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"):
        assert name in names
    assert "python_gc_collections_total" in names
    # Every protocol has its audience series, at 0 when nobody watches that way.
    for protocol in ("rtmp", "http-flv", "ws-flv", "hls", "whep"):
        assert metric(text, "minilive_viewers", protocol=protocol) == 0
    assert metric(text, "minilive_worker_info", worker="", pid=str(os.getpid())) == 1


# What Prometheus 3 sends by default.
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


async def test_openmetrics_when_asked(make_server) -> None:
    server = await make_server()
    text, content_type = await scrape(server, PROMETHEUS_3_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    families = {family.name for family in openmetrics_families(text)}
    # OpenMetrics names a counter's family without its _total.
    assert {"minilive_rtmp_refused", "minilive_streams", "minilive_hls_request_duration_seconds"} <= families


async def test_cluster_names_are_kept_and_the_redis_store_is_timed(make_server, redis_url) -> None:
    server = await make_server(redis=redis_url)
    await make_room(server)
    text, _ = await scrape(server)
    names = sample_names(text)
    assert not [name for name in (*BEFORE, *BEFORE_CLUSTER) if name not in names]
    assert metric(text, "minilive_cluster_registry_up") == 1
    created = metric(text, "minilive_store_duration_seconds_count", backend="redis", operation="create_room")
    assert created is not None and created >= 1


@needs_ffmpeg
async def test_a_real_publish_and_viewers_move_the_values(make_server) -> None:
    server = await make_server(audience_seconds=30)
    pub = await publish(rtmp_url(server, "moving"), seconds=60)
    try:
        await wait_live(server, "moving")
        base = f"http://127.0.0.1:{server.http_port}/live/moving"
        async with aiohttp.ClientSession() as session, session.get(flv_url(server, "moving")) as flv:
            await flv.content.readexactly(1000)  # watching: the FLV header and the GOP cache
            async with session.get(f"{base}/index.m3u8") as response:
                assert response.status == 200
                playlist = await response.text()
            segment = next(line for line in playlist.splitlines() if line and not line.startswith("#"))
            part = re.search(r'#EXT-X-PART:.*URI="([^"]+)"', playlist)
            assert part is not None, playlist
            msn = int(re.fullmatch(r"[0-9a-f]{8}-(\d+)\.ts", segment)[1])
            for path in (segment, part[1], f"index.m3u8?_HLS_msn={msn}"):  # the last: listed, answered at once
                async with session.get(f"{base}/{path}") as response:
                    assert response.status == 200, path
                    await response.read()
            await asyncio.sleep(1.2)  # the hub measures bitrates once a second
            text, _ = await scrape(server)
    finally:
        await pub.stop()
    assert metric(text, "minilive_viewers", protocol="http-flv") == 1
    assert metric(text, "minilive_viewers", protocol="hls") == 1
    assert metric(text, "minilive_publishers") == 1
    assert metric(text, "minilive_rtmp_handshakes_total") == 1
    assert metric(text, "minilive_handshakes_total", protocol="rtmp") == 1
    assert metric(text, "minilive_stream_viewers", app="live", stream="moving") == 2
    assert metric(text, "minilive_stream_bitrate_in_bits_per_second", app="live", stream="moving") > 10_000
    assert metric(text, "minilive_stream_bitrate_out_bits_per_second", app="live", stream="moving") > 10_000
    assert metric(text, "minilive_hls_request_duration_seconds_count", kind="playlist") == 1
    assert metric(text, "minilive_hls_request_duration_seconds_count", kind="segment") == 1
    assert metric(text, "minilive_hls_request_duration_seconds_bucket", kind="segment", le="+Inf") == 1
    assert metric(text, "minilive_hls_request_duration_seconds_count", kind="part") == 1
    assert metric(text, "minilive_hls_request_duration_seconds_count", kind="blocking") == 1
    assert metric(text, "minilive_hls_request_duration_seconds_sum", kind="playlist") > 0


async def test_a_refused_connection_is_counted_under_both_names(make_server) -> None:
    server = await make_server(max_connections_per_address=1, address_cap_exempt=[])
    held = await handshaken(server)
    refused = await open_raw(server)
    await refused.wait_closed(5)
    text, _ = await scrape(server)
    held.close()
    assert metric(text, "minilive_rtmp_refused_address_total") == 1
    assert metric(text, "minilive_refusals_total", protocol="rtmp", limit="max_connections_per_address") == 1
    assert metric(text, "minilive_refusals_total", protocol="rtmp", limit="max_connections") == 0
    assert metric(text, "minilive_refusals_total", protocol="http", limit="http_max_connections_per_address") == 0
    # Each server has its own registry: another in the same process counts nothing of it.
    other, _ = await scrape(await make_server())
    assert metric(other, "minilive_rtmp_refused_address_total") == 0


async def test_a_protocol_error_is_counted_under_both_names(make_server) -> None:
    server = await make_server()
    raw = await open_raw(server)
    raw.write(b"\x07" + bytes(1536))  # RTMP version 7 does not exist
    await raw.wait_closed(5)
    await until(lambda: not server.rtmp.connections, 5, "the connection forgotten")
    text, _ = await scrape(server)
    assert metric(text, "minilive_rtmp_protocol_errors_total") == 1
    assert metric(text, "minilive_protocol_errors_total", protocol="rtmp", kind="malformed") == 1


async def test_streams_past_the_cardinality_guard_are_summed_and_label_values_escaped(make_server) -> None:
    """With max_labelled_streams = 2, the two streams with the most viewers have their own series and
    the third is summed under _other; a stream name with quotes, a backslash and a newline is escaped
    by the client and reads back the same."""
    server = await make_server(max_labelled_streams=2)
    odd = 'we"ird\\name\nline'
    sessions = [server.hub.publish("live", name, publisher(), lambda reason: None) for name in ("a", "b", odd)]
    async with aiohttp.ClientSession() as session:
        viewers = [await session.get(flv_url(server, name)) for name in ("b", "b")]
        try:
            await until(lambda: server.hub.audience("live", "b").get("http-flv") == 2, 5, "two FLV viewers of b")
            text, _ = await scrape(server)
        finally:
            for viewer in viewers:
                viewer.close()
    for one in sessions:
        one.close("test over")
    assert metric(text, "minilive_stream_viewers", app="live", stream="b") == 2
    labelled = {
        s.labels["stream"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "minilive_stream_viewers"
    }
    assert len(labelled) == 3 and "_other" in labelled and "b" in labelled
    assert labelled - {"b", "_other"} <= {"a", odd}  # one of the two idle streams is labelled, the other summed
    assert metric(text, "minilive_stream_bitrate_in_bits_per_second", app="_other", stream="_other") == 0


async def test_no_stream_is_labelled_with_max_labelled_streams_0(make_server) -> None:
    server = await make_server(max_labelled_streams=0)
    session = server.hub.publish("live", "quiet", publisher(), lambda reason: None)
    text, _ = await scrape(server)
    session.close("test over")
    assert metric(text, "minilive_stream_viewers", app="_other", stream="_other") == 0
    assert metric(text, "minilive_stream_viewers", app="live", stream="quiet") is None


async def test_store_calls_are_timed_by_operation(make_server) -> None:
    server = await make_server()
    before, _ = await scrape(server)
    await make_room(server)
    after, _ = await scrape(server)
    count = "minilive_store_duration_seconds_count"
    assert (metric(before, count, backend="sqlite", operation="create_room") or 0) == 0
    assert metric(after, count, backend="sqlite", operation="create_room") == 1
    assert metric(after, "minilive_store_duration_seconds_sum", backend="sqlite", operation="create_room") > 0


def test_a_histogram_counts_each_duration_in_the_first_bucket_it_fits() -> None:
    """Prometheus's ``le`` is inclusive: a duration equal to a bound counts in that bound's bucket."""
    histogram = Histogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 5.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert histogram.total == pytest.approx(5.0035)


def test_a_new_counter_is_a_table_line() -> None:
    """How another part adds its counters: a table (key -> name, type, help) and a read of its dict."""
    counters = {"caps_hit": 3, "open": 2}
    table = {
        "caps_hit": ("minilive_x_caps_hit_total", "counter", "Sessions refused by a cap."),
        "open": ("minilive_x_open", "gauge", "Sessions open."),
    }
    families = {f.name: f for f in TableCollector(table, lambda: counters).collect()}
    assert families["minilive_x_caps_hit"].type == "counter"
    assert families["minilive_x_caps_hit"].samples[0].value == 3
    assert families["minilive_x_open"].samples[0].value == 2


def test_max_labelled_streams_is_checked(tmp_path: Path) -> None:
    config = tmp_path / "minilive.toml"
    config.write_text("[metrics]\nmax_labelled_streams = -1\n")
    with pytest.raises(ConfigError, match="max_labelled_streams must be 0 or more"):
        load(config, {})
    config.write_text("[metrics]\nmax_labelled_streams = 20\n")
    assert load(config, {}).metrics.max_labelled_streams == 20


def dashboard_metrics() -> set[str]:
    """Every metric name a panel's query of the Grafana dashboard names."""
    board = json.loads(DASHBOARD.read_text())
    found = set()
    for panel in board["panels"]:
        named = {name for target in panel["targets"] for name in METRIC_NAME.findall(target["expr"])}
        assert named, f"panel {panel['title']!r} queries no metric"
        found |= named
    return found


async def test_every_metric_the_dashboard_names_exists(make_server) -> None:
    """Parsed from the dashboard's ``expr`` fields: each is in a live server's /metrics (as a sample, or
    a family with no sample yet, such as the lag of renditions when none runs)."""
    server = await make_server()
    text, _ = await scrape(server)
    names = sample_names(text) | {f.name for f in text_string_to_metric_families(text)}
    wanted = dashboard_metrics()
    # The panels the issue asks for.
    for name in (
        "minilive_viewers",
        "minilive_stream_bitrate_in_bits_per_second",
        "minilive_hls_request_duration_seconds_bucket",
        "minilive_refusals_total",
        "minilive_protocol_errors_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_gc_collections_total",
        "minilive_store_duration_seconds_bucket",
        "minilive_transcode_lag_seconds",
    ):
        assert name in wanted
    missing = sorted(wanted - names)
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"


def test_the_metrics_ports_must_not_take_the_servers(tmp_path: Path) -> None:
    config = tmp_path / "minilive.toml"
    config.write_text("http_port = 8081\n[metrics]\nport = 8080\n")
    with pytest.raises(ConfigError, match="needs ports 8080-8081"):
        load(config, {"workers": 2})
    assert load(config, {"workers": 1}).metrics.port == 8080
