"""The ``[transcode]`` section as the issue fixes its keys, and how the encoder is chosen."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from api.config import ConfigError, load
from relay.transcode import encoders
from relay.transcode.ladder import PRESETS, Rung

CONTRACT = """
[transcode]
renditions = ["480p", "360p", {name = "240p", height = 240, video_bitrate = 300, fps_cap = 15}]
preset = "veryfast"
tune = "zerolatency"
encoder = "auto"
mode = "on-demand"
idle_seconds = 30
workers = 0
max_transcodes = 8
compat_rendition = true
record_renditions = false
"""


def load_text(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "minilive.toml"
    path.write_text(text)
    return load(path, {})


def test_the_contract_keys_load(tmp_path) -> None:
    settings = load_text(tmp_path, CONTRACT).transcode
    assert settings.ladder() == [PRESETS["480p"], PRESETS["360p"], Rung("240p", 240, 300_000, 360_000, 15.0)]
    assert (settings.mode, settings.idle_seconds, settings.max_transcodes) == ("on-demand", 30.0, 8)
    assert settings.worker_count >= 1, "0 means one per core"


def test_the_presets_are_the_issues() -> None:
    assert {name: (r.height, r.video_bitrate) for name, r in PRESETS.items()} == {
        "1080p": (1080, 3_500_000),
        "720p": (720, 1_800_000),
        "480p": (480, 800_000),
        "360p": (360, 500_000),
        "audio": (0, 0),
    }
    assert all(r.fps_cap == 30 for r in PRESETS.values())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('renditions = ["4k"]', "no preset named '4k'"),
        ('renditions = "480p"', "'renditions' must be list"),
        ('renditions = [{name = "x", height = 241, video_bitrate = 300}]', "height must be even"),
        ('renditions = [{name = "x/../y", height = 240, video_bitrate = 300}]', "1-16 letters and digits"),
        ('renditions = [{name = "x", height = 240, video_bitrate = 300, codec = "vp9"}]', "unknown key(s) codec"),
        ('renditions = [{name = "x", height = 240, video_bitrate = 300000000}]', "kbit/s"),
        ('renditions = ["480p", "480p"]', "taken"),
        ('renditions = [{name = "h264", height = 240, video_bitrate = 300}]', "taken"),
        ('encoder = "h265_magic"', "encoder must be one of"),
        ('mode = "sometimes"', "on-demand"),
        ('preset = "ludicrous"', "x264 preset"),
        ("max_transcodes = -1", "0 or more"),
        ('workers = "many"', "must be int"),
        ("colour = 1", "unknown setting 'colour'"),
    ],
)
def test_a_bad_value_names_itself_and_the_fix(tmp_path, line, message) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, f"[transcode]\n{line}\n")
    assert message in str(caught.value)


def test_auto_takes_the_first_hardware_encoder_that_opens(caplog) -> None:
    tried: list[str] = []

    def probe(codec: str) -> bool:
        tried.append(codec)
        return codec == "h264_vaapi"

    with caplog.at_level(logging.INFO, "minilive.transcode"):
        assert encoders.choose("auto", probe) == "h264_vaapi"
    assert tried == ["h264_nvenc", "h264_vaapi"], "NVENC first, and no probing past the one that opens"
    assert "encoding renditions with h264_vaapi" in caplog.text


def test_auto_falls_back_to_libx264_and_a_named_encoder_that_does_not_open_too(caplog) -> None:
    assert encoders.choose("auto", lambda codec: False) == "libx264"
    with caplog.at_level(logging.WARNING, "minilive.transcode"):
        assert encoders.choose("h264_nvenc", lambda codec: False) == "libx264"
    assert "does not open on this machine" in caplog.text
    assert encoders.choose("libx264", lambda codec: pytest.fail("libx264 is never probed")) == "libx264"
    with pytest.raises(ValueError, match="must be one of"):
        encoders.choose("x265")


def test_on_this_machine_the_probe_really_opens_libx264_and_not_a_missing_encoder() -> None:
    assert encoders.can_open("libx264")
    assert not encoders.can_open("h264_vaapi"), "not in PyAV's wheel: cannot open"


def test_each_encoder_is_told_to_make_keyframes_only_where_forced() -> None:
    x264 = encoders.encoder_options("libx264", "veryfast", "zerolatency", 960_000)
    assert "keyint=infinite" in x264["x264-params"] and "scenecut=0" in x264["x264-params"]
    assert "vbv-maxrate=960" in x264["x264-params"] and x264["forced-idr"] == "1"
    nvenc = encoders.encoder_options("h264_nvenc", "veryfast", "zerolatency", 960_000)
    assert nvenc["forced-idr"] == "1" and nvenc["no-scenecut"] == "1" and nvenc["zerolatency"] == "1"
    assert encoders.encoder_options("h264_qsv", "veryfast", "zerolatency", 960_000)["forced_idr"] == "1"
