"""deploy/systemd and deploy/sysctl.d: the unit runs the server the project builds, systemd reads every
line of it, the sandbox rates "OK", and every kernel setting exists and says why."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from api import config
from tests.deploy_kit import DEPLOY, EDGE, ROOT, edge_listens, serve, sysctl_entries, sysctl_settings

UNIT = DEPLOY / "systemd" / "minilive.service"
DROP_IN = DEPLOY / "systemd" / "minilive.service.d" / "hardening.conf"
CONFIG = DEPLOY / "minilive.toml"
SYSTEMD = next((p for p in (Path("/usr/lib/systemd/systemd"), Path("/lib/systemd/systemd")) if p.exists()), None)
ANALYZE = shutil.which("systemd-analyze")


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every setting of a unit file, in order (keys may repeat)."""
    entries = []
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        assert section, f"{path.name}: {line!r} before any section"
        entries.append((section, key.strip(), value.strip()))
    return entries


def setting(path: Path, key: str) -> str:
    values = [value for _, name, value in unit_entries(path) if name == key]
    assert len(values) == 1, f"{path.name}: {key} set {len(values)} times"
    return values[0]


def installed_units(tmp_path: Path) -> Path:
    """The unit and its drop-in in a unit folder, run by this tree's interpreter (the unit's ExecStart
    names the venv of an installation in /opt/minilive, which systemd-analyze checks exists)."""
    folder = tmp_path / "units"
    shutil.copytree(DEPLOY / "systemd", folder)
    unit = folder / UNIT.name
    text = unit.read_text()
    program = shlex.split(setting(UNIT, "ExecStart"))[0]
    assert program == "/opt/minilive/.venv/bin/minilive"
    unit.write_text(text.replace(program, shutil.which("python3") or "/usr/bin/python3"))
    return folder


def analyze(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # The trailing colon keeps the system's own folders after ours (network-online.target).
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{folder}:", "SYSTEMD_LOG_COLOR": "0"}
    result = subprocess.run(
        [ANALYZE, *args, "--no-pager", str(folder / UNIT.name)], env=env, capture_output=True, text=True, timeout=60
    )
    if "Failed to initialize manager" in result.stderr or "Failed to connect to bus" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    return result


def test_unit_keys_are_ones_systemd_knows():
    if SYSTEMD is None:
        pytest.skip("no systemd binary to list the unit keys it knows (Debian package systemd)")
    dump = subprocess.run([str(SYSTEMD), "--dump-configuration-items"], capture_output=True, text=True).stdout
    known: dict[str, set[str]] = {}
    section = ""
    for line in dump.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            known.setdefault(section, set()).add(line.split("=", 1)[0])
    assert "LimitNOFILE" in known["Service"], "the dump is not the list it used to be"
    for path in (UNIT, DROP_IN):
        for section, key, _ in unit_entries(path):
            assert key in known.get(section, ()), f"{path.name}: systemd knows no {key}= in [{section}]"


def test_systemd_analyze_verifies_the_unit(tmp_path):
    result = analyze(installed_units(tmp_path), "verify", "--man=no")
    # Unknown keys and bad values are warnings: systemd-analyze prints them and still exits 0.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def exposure(folder: Path) -> tuple[float, str]:
    result = analyze(folder, "security", "--offline=true")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found[1]), found[2]


def test_hardening_drop_in_makes_the_unit_rate_ok(tmp_path):
    folder = installed_units(tmp_path)
    level, rating = exposure(folder)
    assert rating == "OK" and level <= 2.0, f"exposure {level} {rating} with {DROP_IN.name}"
    shutil.rmtree(folder / "minilive.service.d")
    level, rating = exposure(folder)
    assert rating == "UNSAFE", f"without the drop-in the unit rates {level} {rating}: is hardening.conf needed?"


def test_execstart_runs_the_server_with_its_state_directory(monkeypatch):
    words = shlex.split(setting(UNIT, "ExecStart"))
    started = serve(words[1:], {"/etc/minilive/minilive.toml": CONFIG}, monkeypatch)
    state = Path("/var/lib") / setting(UNIT, "StateDirectory")
    assert started.settings.data_dir == state, "the data directory is the one systemd makes for the user"
    assert setting(UNIT, "WorkingDirectory") == str(state)
    assert Path("/etc") / setting(UNIT, "ConfigurationDirectory") == Path("/etc/minilive")
    assert started.settings.workers == os.cpu_count(), "--workers auto: a server process per core"
    assert started.supervised == (started.settings.workers > 1), "more than one worker runs under a supervisor"


def test_descriptor_limit_covers_the_connections_configured():
    limit = int(setting(UNIT, "LimitNOFILE"))
    settings = config.load(CONFIG, {})
    assert limit >= 100_000, "issue 13: room for 100k file descriptors"
    assert limit > settings.rtmp.max_connections + settings.webrtc.max_sessions
    nr_open = Path("/proc/sys/fs/nr_open")
    if nr_open.exists():
        assert limit <= int(nr_open.read_text()), "a process cannot have more than fs.nr_open"


def test_every_sysctl_exists_and_says_why():
    entries = sysctl_entries()
    assert len({key for key, _, _ in entries}) == len(entries), "a key set twice"
    for key, value, comment in entries:
        assert comment, f"{key}: no comment saying why"
        proc = Path("/proc/sys") / key.replace(".", "/")
        if Path("/proc/sys/net").is_dir():
            assert proc.exists(), f"{key}: this kernel has no such setting"
        assert re.fullmatch(r"[0-9]+( [0-9]+)*|[0-9]+-[0-9]+|[a-z_]+", value), f"{key} = {value!r}"


def listen_backlogs() -> list[int]:
    """What minilive's listeners and the edge's ask of the kernel."""
    sources = [ROOT / "ingest" / "server.py", ROOT / "api" / "server.py"]
    asked = [int(n) for path in sources for n in re.findall(r"backlog=(\d+)", path.read_text())]
    assert len(asked) == 2, "minilive's RTMP and HTTP listeners each ask for a backlog"
    return asked + [int(n) for n in re.findall(r"backlog=(\d+)", EDGE.read_text())]


def test_somaxconn_lets_every_listener_have_its_backlog():
    values = sysctl_settings()
    assert int(values["net.core.somaxconn"]) >= max(listen_backlogs())
    assert int(values["net.ipv4.tcp_max_syn_backlog"]) >= int(values["net.core.somaxconn"])


def test_outgoing_ports_stay_clear_of_every_listener():
    values = sysctl_settings()
    low, high = map(int, values["net.ipv4.ip_local_port_range"].split())
    defaults = config.Settings()
    listened = edge_listens() | {defaults.rtmp_port, defaults.http_port}
    assert all(port < low for port in listened), f"{sorted(listened)} inside {low}-{high}"
    reserved_low, reserved_high = map(int, values["net.ipv4.ip_local_reserved_ports"].split("-"))
    assert low <= reserved_low <= reserved_high <= high
