"""What the deploy kit's tests share: the settings a `minilive serve` command line in a deploy file gives
(and the flags the kit uses before `minilive serve` has them), the sysctl file's settings, the edge's ports."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from api import cli
from api.config import Settings
from api.metrics import Metrics, MetricsSettings
from api.streams import routes
from relay.hub import Hub

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EDGE = DEPLOY / "nginx-edge.conf"
SYSCTLS = DEPLOY / "sysctl.d" / "90-minilive.conf"


def serve_flags() -> set[str]:
    """The flags `minilive serve --help` lists."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main(["serve", "--help"])
    return set(re.findall(r"--[a-z][a-z0-9-]*", out.getvalue()))


@dataclass
class Serve:
    """A `minilive serve` command line from a deploy file, as the server would run it."""

    settings: Settings
    supervised: bool  # it starts a supervisor of workers, not one server


def serve(argv: str | Sequence[str], files: Mapping[str, Path], monkeypatch: pytest.MonkeyPatch) -> Serve:
    """Runs ``minilive serve`` with ``argv`` (the words after the program) up to the point where the server
    would start, and returns its settings. ``files`` maps the paths the command names (its --config) to
    the files in this tree that are installed there."""
    words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    assert words[:1] == ["serve"], f"not a `minilive serve` command: {words}"
    known = serve_flags()
    kept: list[str] = []
    for word in words[1:]:
        flag = word.split("=", 1)[0]
        assert not flag.startswith("--") or flag in known, f"`minilive serve` has no flag {flag}"
        kept.append(str(files.get(word, word)))
    for name, path in files.items():
        assert name in words, f"the command does not use {name}"
        assert path.is_file(), f"{path} (installed as {name}) is missing"
    started: list[Settings] = []
    supervised: list[Settings] = []

    class Server:
        """Stands in for api.server.Server: keeps the settings, serves nothing."""

        def __init__(self, settings: Settings) -> None:
            started.append(settings)

        async def run_forever(self) -> None:
            return None

    def supervise(settings: Settings, argv: list[str], on_worker_exit: object = None) -> int:
        """Stands in for api.supervisor.run: keeps the settings, starts no worker."""
        supervised.append(settings)
        return 0

    monkeypatch.setattr("api.server.Server", Server)
    monkeypatch.setattr("api.supervisor.run", supervise)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(["serve", *kept])
        except SystemExit as exc:
            code = exc.code
    assert code == 0 and (started or supervised), f"minilive serve {shlex.join(kept)}: exit {code}: {err.getvalue()}"
    return Serve((started or supervised)[0], bool(supervised))


def has_route(method: str, path: str) -> bool:
    """Whether the server answers ``method path`` (the health and metrics routes, which a hub alone makes)."""
    hub = Hub()
    return any(route.method == method and route.path == path for route in routes(hub, Metrics(MetricsSettings(), hub)))


def sysctl_entries() -> list[tuple[str, str, list[str]]]:
    """(key, value, the comment above it) for each setting of the sysctl file. A blank line ends a
    comment; settings on consecutive lines share the one above them."""
    entries = []
    comment: list[str] = []
    for line in SYSCTLS.read_text().splitlines():
        line = line.strip()
        if not line:
            comment = []
        elif line.startswith("#"):
            comment.append(line)
        else:
            key, _, value = line.partition("=")
            entries.append((key.strip(), value.strip(), comment))
    return entries


def sysctl_settings() -> dict[str, str]:
    return {key: value for key, value, _ in sysctl_entries()}


def edge_listens() -> set[int]:
    """The ports the edge listens on."""
    return {int(port) for port in re.findall(r"^\s*listen (\d+)", EDGE.read_text(), re.MULTILINE)}
