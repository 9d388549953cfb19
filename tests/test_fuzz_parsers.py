"""Issue 16: every parser that reads bytes from the network (or a config file) answers any input with a
result or its own protocol error, never another exception. A short, deterministic run per target
(tests/fuzz/targets.py: the targets, their properties and the mutations of real captures); the long,
coverage-guided runs are ``python -m bench.fuzz``. Each input that once crashed a target
(tests/fuzz/crashes/<target>/) is replayed here, and the crashes behind them are pinned by name below."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import pytest

from api import config
from ingest.rtmp import amf
from ingest.rtmp.connection import ServerConnection
from ingest.rtmp.handshake import ClientHandshake, ServerHandshake
from relay.formats.rtmp_chunk import ChunkReader, encode_message
from signaling.sdp import OfferError, narrow_offer
from tests.fuzz.targets import SEEDS, TARGETS, Target, inputs

# Inputs per target: a second or so each on this 2-core machine (rtmp, sdp and config are the slow ones).
RUNS = {"rtmp": 3000, "sdp": 1500, "config": 1000}
DEFAULT_RUNS = 8000


def _first_failure(target: Target, count: int) -> tuple[bytes, BaseException] | None:
    for data in inputs(target, count):
        try:
            target.check(data)
        except Exception as exc:
            return data, exc
    return None


@pytest.mark.parametrize("name", list(TARGETS))
def test_parser_answers_any_input_with_a_result_or_its_protocol_error(name: str) -> None:
    target = TARGETS[name]
    failure = _first_failure(target, RUNS.get(name, DEFAULT_RUNS))
    if failure is not None:
        data, exc = failure
        pytest.fail(
            f"{name}: {exc!r} escaped on a {len(data)}-byte input (first bytes {data[:64]!r}); save it under"
            f" tests/fuzz/crashes/{name}/ and fix the cause",
        )


@pytest.mark.parametrize("name", list(TARGETS))
def test_seeds_are_real_inputs_the_parser_reads(name: str) -> None:
    """Mutations start from captures the parser accepts, so they reach past its first checks."""
    target = TARGETS[name]
    seeds = target.seeds()
    assert seeds, f"no seeds in tests/fuzz/seeds/{name}/ (python -m bench.fuzz_seeds)"
    for data in seeds:
        target.run(data)  # no protocol error either


def test_the_rtmp_seed_is_a_whole_ffmpeg_publish() -> None:
    """The seed gets through the digest handshake, connect and publish, and into media."""
    (capture,) = TARGETS["rtmp"].seeds()
    connection = ServerConnection()
    events = connection.receive_data(capture)
    assert connection.handshake.complex, "ffmpeg's C1 carries the digest of the complex handshake"
    kinds = {type(event).__name__ for event in events}
    assert {"Connect", "Media"} <= kinds, kinds


# ---------------------------------------------------------------- crashes the fuzzers found


CRASHES = SEEDS.parent / "crashes"


def test_amf_encodes_the_byte_arrays_it_decodes() -> None:
    """The AMF0 decoder reads AMF3 ByteArrays (behind AVM+) as ``bytes``, which the encoder could not write."""
    for size in (0, 5, 200, 70_000):
        blob = bytes(range(256)) * (size // 256) + bytes(size % 256)
        assert amf.decode(amf.encode("onMetaData", {"blob": blob})) == ["onMetaData", {"blob": blob}]


async def test_onmetadata_holding_an_amf3_bytearray_keeps_the_connection(
    make_server, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """The fuzzer's input: handshake, connect, then an onMetaData whose object holds a ByteArray. Storing
    the metadata encodes it again, which raised TypeError out of data_received: asyncio logged a traceback
    at ERROR and closed the connection. Now the connection goes on: a createStream after it is answered."""
    caplog.set_level(logging.WARNING)
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.rtmp_port)
    writer.write((CRASHES / "rtmp" / "onmetadata-amf3-bytearray.bin").read_bytes())
    writer.write(encode_message(3, 0, 20, 0, amf.encode("createStream", 2.0, None), 128))
    client = ClientHandshake()
    client.start()
    await reader.readexactly(1 + 2 * 1536)
    chunks = ChunkReader()
    answers: list[list] = []
    while not any(values[:2] == ["_result", 2.0] for values in answers):
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, f"the server closed the connection; it answered {answers}"
        answers += [amf.decode(m.payload) for m in chunks.feed(data) if m.type_id == 20]
    writer.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


def test_a_config_file_that_is_not_utf8_names_its_line() -> None:
    """read_text() raised UnicodeDecodeError, a traceback at start instead of a config error."""
    path = CRASHES / "config" / "not-utf8.toml"
    with pytest.raises(config.ConfigError, match=r"line 2 is not UTF-8 \(byte 0xff\)"):
        config.load(path, {})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("data-dir-number.toml", "'data_dir' must be a path (a string), not int"),  # was TypeError from Path(5)
        ("time-zone-directory.toml", "time_zone 'Asia' is not a time zone"),  # was IsADirectoryError from ZoneInfo
    ],
)
def test_config_values_of_the_wrong_kind_name_their_key(name: str, message: str) -> None:
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(CRASHES / "config" / name, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[rooms]\npublish_early_minutes = "soon"\n', "'publish_early_minutes' must be float, not str"),
        ("[rooms]\ncallback_ips = [5]\n", "callback_ips: 5 is not an IP address"),
        ("[rtmp]\naddress_cap_exempt = [5]\n", "address_cap_exempt: 5 is not an IP address"),
    ],
)
def test_optional_and_address_settings_are_checked_too(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    """An optional setting (None by default) took any value, and a number passed as an IPv4 address."""
    path = tmp_path / "minilive.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(path, {})


def test_an_offer_whose_rtcp_address_is_a_name_is_refused_with_400() -> None:
    """aiortc's parser keeps ``a=rtcp:9 IN IP4 <name>`` and its writer then raises ValueError, which escaped
    the WHIP/WHEP handler as a 500."""
    offer = (CRASHES / "sdp" / "rtcp-host-name.sdp").read_text()
    with pytest.raises(OfferError) as refused:
        narrow_offer(offer, ("h264", "vp8"))
    assert refused.value.status == 400 and "malformed SDP offer" in refused.value.reason


async def test_whip_and_whep_answer_400_to_that_offer(make_server, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    server = await make_server()
    offer = (CRASHES / "sdp" / "rtcp-host-name.sdp").read_bytes()
    async with aiohttp.ClientSession() as http:
        for path in ("/whip/fuzz", "/whep/fuzz"):
            url = f"http://127.0.0.1:{server.http_port}{path}"
            async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as response:
                assert response.status == 400, (path, response.status, await response.text())
                assert "malformed SDP offer" in await response.text()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


def test_handshake_and_chunk_reader_resume_at_any_byte() -> None:
    """The targets feed inputs in three reads; this checks that a split does not change the result."""
    (capture,) = TARGETS["rtmp_chunk"].seeds()
    whole = ChunkReader(max_other_size=64 * 1024).feed(capture)
    reader = ChunkReader(max_other_size=64 * 1024)
    split = [message for offset in range(0, len(capture), 7) for message in reader.feed(capture[offset : offset + 7])]
    assert [(m.type_id, m.payload) for m in split] == [(m.type_id, m.payload) for m in whole] and len(whole) > 5
    handshake = ServerHandshake()
    (c0c1c2,) = [data for data in TARGETS["handshake"].seeds() if data[5:9] != bytes(4)]
    replies = b"".join(handshake.receive_data(c0c1c2[offset : offset + 100]) for offset in range(0, len(c0c1c2), 100))
    assert handshake.done and handshake.complex and len(replies) == 1 + 2 * 1536
