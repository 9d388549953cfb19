"""The arrows of DESIGN.md's layout: which package may import which, read from every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("relay", "ingest", "signaling", "recorder", "api", "examples")

# What each package (or subpackage) may import, of ours and of the web framework. The longest
# matching prefix of a module's name decides.
ALLOWED: dict[str, set[str]] = {
    "relay.formats": {"relay.formats"},
    "relay.hub": {"relay.hub", "relay.formats"},
    "relay.http": {"relay.http", "relay.hub", "relay.formats", "aiohttp"},
    "relay.transcode": {"relay.transcode", "relay.hub", "relay.formats"},
    "relay.cluster": {"relay.cluster", "relay.hub", "relay.formats", "relay.http", "aiohttp"},
    "relay": {"relay"},
    "ingest": {"ingest", "relay"},
    "signaling": {"signaling", "relay", "aiohttp"},
    "recorder": {"recorder", "relay"},
    "api.store": {"api.store", "api.models", "api.errors"},
    "api": {"api", "ingest", "signaling", "recorder", "relay", "aiohttp"},
    # Samples a team copies: they reach minilive over HTTP only, never by importing it.
    "examples": {"examples", "aiohttp"},
}
WATCHED = (*OURS, "aiohttp")
# Outside relay.hub, the hub is reached through its package's names only (relay/hub/__init__.py).
HUB_INSIDE = "relay.hub."


def _owner(module: str, table: dict[str, set[str]]) -> str:
    return max((prefix for prefix in table if module == prefix or module.startswith(prefix + ".")), key=len)


def _imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``source``, relative ones resolved."""
    found = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if base in WATCHED]
    return found


def violations(source: str, module: str, table: dict[str, set[str]] = ALLOWED) -> list[str]:
    """What in ``source`` (the text of ``module``) goes against the layout."""
    allowed = table[_owner(module, table)]
    out = []
    for line, name in _imports(source, module):
        top = name.split(".")[0]
        if top not in WATCHED:
            continue
        if not any(name == a or name.startswith(a + ".") for a in allowed):
            out.append(f"{module}:{line} imports {name}")
        elif name.startswith(HUB_INSIDE) and not module.startswith("relay.hub"):
            hub_name = name[len(HUB_INSIDE) :]
            if "." in hub_name or hub_name not in _hub_exports():
                out.append(f"{module}:{line} imports {name}: outside relay.hub, import from relay.hub itself")
    return out


def _hub_exports() -> set[str]:
    import relay.hub

    return set(relay.hub.__all__)


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            found.append((".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path))
    return found


def test_every_import_follows_the_layout() -> None:
    problems = [v for module, path in _modules() for v in violations(path.read_text(), module)]
    assert not problems, "imports against the layout in DESIGN.md:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("relay.hub.stream", "from aiohttp import web"),
        ("relay.hub.stream", "import aiohttp.web"),
        ("relay.formats.mpegts", "from relay.hub import Hub"),
        ("relay.formats.mpegts", "from ..hub import stream"),
        ("relay.hub.hub", "from relay.http.hls import HlsPlayback"),
        ("ingest.server", "from api.config import Settings"),
        ("recorder.recording", "from ingest.rtmp import amf"),
        ("signaling.whip", "from relay.hub.stream import LiveStream"),
        ("relay.formats.hls", "from relay import hub"),
        ("api.store.sqlite", "from api.rooms import Rooms"),
        ("relay.cluster.registry", "from api.store.redis import RedisStore"),
        ("relay.cluster.registry", "from relay.transcode import pool"),
    ],
)
def test_the_check_sees_each_kind_of_wrong_arrow(module: str, source: str) -> None:
    assert violations(source, module), f"{source!r} in {module} must be refused"


def test_the_check_lets_the_right_arrows_through() -> None:
    assert not violations("from relay.hub import Hub, Viewer\nfrom aiohttp import web", "relay.http.flv")
    assert not violations("from relay.formats.packet import Packet\nfrom . import gop_cache", "relay.hub.stream")
    assert not violations("from relay.hub import PublisherInfo", "signaling.whip")
