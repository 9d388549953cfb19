"""The browser fixtures every browser test stands on: console errors fail a test unless declared,
the phone page is phone-sized, and screenshots land in the test's artifacts folder."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.browser import CHROMIUM

ROOT = Path(__file__).parent.parent

PHONE_HTML = """<!doctype html><meta name="viewport" content="width=device-width, initial-scale=1">
<h1 style="color: red">phone</h1>"""


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


async def test_page_log_records_console_errors_and_uncaught_exceptions(page, page_log):
    await page.set_content("<script>console.error('boom: no player'); console.log('fine')</script>")
    await page.evaluate("setTimeout(() => { throw new TypeError('kaput') })")
    await page.wait_for_timeout(100)  # the exception is thrown after evaluate returns
    assert any("error: boom: no player" in e for e in page_log.unexpected()), page_log.errors
    assert any("TypeError: kaput" in e for e in page_log.unexpected()), page_log.errors
    assert any(m.startswith("log: fine") for m in page_log.console), page_log.console
    # A page that the page opens is watched too.
    async with page.expect_popup() as opened:
        await page.evaluate("window.open('about:blank')")
    await (await opened.value).evaluate("console.error('from the popup')")
    assert any("error: from the popup" in e for e in page_log.unexpected()), page_log.errors
    # Declared, they no longer fail the test (which would otherwise fail when it returns).
    page_log.allow(r"boom: |from the popup")
    page_log.allow(r"kaput")
    assert page_log.unexpected() == []


async def test_phone_page_is_an_iphone_and_shot_saves_it(phone_page, shot, artifacts):
    await phone_page.set_content(PHONE_HTML)
    width, ratio, touch, coarse = await phone_page.evaluate(
        "[innerWidth, devicePixelRatio, navigator.maxTouchPoints, matchMedia('(pointer: coarse)').matches]"
    )
    assert (width, ratio) == (390, 3) and touch > 0 and coarse
    assert "iPhone" in await phone_page.evaluate("navigator.userAgent")
    path = await shot(phone_page, "phone")
    assert path == artifacts / "phone.png"
    assert png_size(path) == (390 * 3, 844 * 3)


INNER = """
async def test_logs_an_error(page):
    await page.set_content("<script>console.error('unexpected failure')</script>")

async def test_declares_its_error(page, page_log):
    page_log.allow("expected failure")
    await page.set_content("<script>console.error('expected failure')</script>")
"""


def test_a_console_error_fails_the_test_and_leaves_a_screenshot(tmp_path):
    """Run in a pytest of its own: the failure is the outcome under test."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed: run scripts/dev test, which installs it")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    artifacts = tmp_path / "artifacts"
    env = {**os.environ, "MINILIVE_ARTIFACTS": str(artifacts), "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", os.devnull, "--rootdir", str(tmp_path)]
    args += ["-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function", "-q", "-rA"]
    done = subprocess.run([*args, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    out = done.stdout + done.stderr
    assert "FAILED test_inner.py::test_logs_an_error" in out, out
    assert "the page logged errors" in out and "unexpected failure" in out, out
    assert "PASSED test_inner.py::test_declares_its_error" in out, out
    assert "1 failed, 1 passed" in out, out
    shots = list((artifacts / "test_inner.test_logs_an_error").glob("failed-*.png"))
    assert len(shots) == 1 and png_size(shots[0]) == (1280, 720), shots
    assert not (artifacts / "test_inner.test_declares_its_error").exists()
