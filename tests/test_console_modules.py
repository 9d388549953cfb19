"""The console's pure functions, run by Node on the shipped modules themselves (no bundling): times
on the app's clock across a daylight-saving change, the OBS split of a push URL, the field a REST
refusal is about, and the rendition URL swap."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

STATIC = Path(__file__).resolve().parent.parent / "api" / "console" / "static"
NODE = shutil.which("node")


def run(script: str) -> Any:
    """Runs ``script`` as an ES module next to the console's modules; returns what it prints as JSON."""
    if NODE is None:
        pytest.skip("node not installed: run scripts/dev test, which installs it")
    result = subprocess.run(
        [NODE, "--input-type=module", "-"],
        input=script,
        capture_output=True,
        text=True,
        cwd=STATIC / "js",
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_times_on_the_app_clock() -> None:
    out = run(
        """
        import { fromWall, toWall } from "./time.js";
        const shanghai = fromWall("2026-12-03T20:30", "Asia/Shanghai");
        const summer = fromWall("2026-07-01T12:00", "Europe/Berlin");
        const winter = fromWall("2026-12-01T12:00", "Europe/Berlin");
        console.log(JSON.stringify({
          shanghai, back: toWall(shanghai, "Asia/Shanghai"), summer, winter,
          berlinOfShanghai: toWall(shanghai, "Europe/Berlin"),
        }));
        """
    )
    assert out["shanghai"] == 1796301000  # 2026-12-03 12:30 UTC
    assert out["back"] == "2026-12-03T20:30"
    assert out["summer"] == 1782900000  # 10:00 UTC (CEST, +2)
    assert out["winter"] == 1796122800  # 11:00 UTC (CET, +1)
    assert out["berlinOfShanghai"] == "2026-12-03T13:30"


def test_obs_split_and_ffmpeg_command() -> None:
    out = run(
        """
        import { obsSplit, ffmpegCommand } from "./golive.js";
        const url = "rtmp://live.example.com:1935/live/wx1-7?txSecret=abc&txTime=6b120e38";
        console.log(JSON.stringify({ ...obsSplit(url), command: ffmpegCommand(url) }));
        """
    )
    assert out["server"] == "rtmp://live.example.com:1935/live"
    assert out["key"] == "wx1-7?txSecret=abc&txTime=6b120e38"
    assert out["command"].startswith("ffmpeg -re ")
    assert out["command"].endswith("-f flv 'rtmp://live.example.com:1935/live/wx1-7?txSecret=abc&txTime=6b120e38'")


def test_refusals_land_on_their_field() -> None:
    out = run(
        """
        import { fieldOf } from "./room_form.js";
        const cases = [
          [300002, "name length invalid: name is 2 wide; it must be 6-34"],
          [300031, "coverImg invalid: 'x' is not a media_id of this app"],
          [300034, "anchorName length is invalid"],
          [200002, "invalid args: parameter startTime or endTime is invalid: startTime must be 10 minutes ahead"],
          [200002, "invalid args: anchorWechat is required"],
          [200002, "invalid args: name is required"],
          [-1, "system error"],
        ];
        console.log(JSON.stringify(cases.map(([code, message]) => fieldOf({ code, message }))));
        """
    )
    assert out == ["name", "cover_img", "anchor_name", "start_time", "anchor_wechat", "name", None]


def test_rendition_urls() -> None:
    out = run(
        """
        import { renditionUrl } from "./player.js";
        const flv = "http://h:8080/live/wx1-7.flv?sign=1";
        console.log(JSON.stringify([
          renditionUrl(flv, "wx1-7", "wx1-7_480p"),
          renditionUrl("http://h:8080/live/wx1-7/index.m3u8", "wx1-7", "wx1-7_480p"),
          renditionUrl(flv, "wx1-7", null),
        ]));
        """
    )
    assert out == [
        "http://h:8080/live/wx1-7_480p.flv?sign=1",
        "http://h:8080/live/wx1-7_480p/index.m3u8",
        "http://h:8080/live/wx1-7.flv?sign=1",
    ]
