"""All settings in one typed place: defaults that work on a laptop, a TOML file, then flags."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from api.comments import ChannelSettings
from api.console.sessions import ConsoleSettings
from api.metrics import MetricsSettings
from api.rooms import RoomSettings
from api.supervisor import SupervisorSettings
from ingest.server import RtmpSettings
from recorder.recorder import RecorderSettings
from relay.cluster.settings import ClusterSettings
from relay.formats.hls import HlsSettings
from relay.hub import RelaySettings
from relay.transcode.settings import SettingsError, TranscodeSettings
from signaling.sessions import WebRtcSettings


class ConfigError(ValueError):
    """A setting is unknown or of the wrong type."""


@dataclass(slots=True)
class Settings:
    host: str = "0.0.0.0"
    rtmp_port: int = 1935
    http_port: int = 8080
    data_dir: Path = Path("./data")
    # Base URL written into push, play and replay URLs; derived from host and ports when empty.
    public_url: str = ""
    redis: str = ""
    log_level: str = "info"
    # Development mode: any stream under app "live" may publish without a room (nginx-rtmp style).
    allow_anonymous_publish: bool = False
    # How long a play request for a stream that is not live waits for its publisher (0: answer at once).
    play_wait_seconds: float = 0.0
    # HTTP/1.1 HTTP-FLV in chunked transfer coding; off: close-delimited bodies for every client.
    http_flv_chunked: bool = True
    # Hostile HTTP clients (issue 16): a request head must arrive whole within this time of its first
    # byte (of the connection, for the first request; slowloris), and one client address may hold at
    # most this many connections.
    http_head_timeout_seconds: float = 10.0
    http_max_connections_per_address: int = 100
    # A kept-alive HTTP connection with no request in flight is closed after this long (nginx's and
    # aiohttp's 75 s); a head once started must still arrive within http_head_timeout_seconds.
    http_keepalive_seconds: float = 75.0
    # Addresses or networks the per-address cap does not apply to (a reverse proxy on this host).
    http_cap_exempt: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    # /api/v1/streams (every publisher's address) without a token: for a server only operators can reach.
    public_stats: bool = False
    # Server processes sharing the ports (SO_REUSEPORT) under a supervisor; 1: one process, no supervisor.
    # The TOML file and --workers also take "auto": one per CPU.
    workers: int = 1
    # Allocations of at least this many bytes are mmapped and given back when freed (glibc's mallopt
    # M_MMAP_THRESHOLD); 0: glibc's own threshold, which rises to the biggest block freed (up to
    # 32 MiB) and then leaves the heap full of freed holes between live objects (issue 16, rss).
    malloc_mmap_threshold: int = 128 * 1024
    relay: RelaySettings = field(default_factory=RelaySettings)
    rtmp: RtmpSettings = field(default_factory=RtmpSettings)
    rooms: RoomSettings = field(default_factory=RoomSettings)
    hls: HlsSettings = field(default_factory=HlsSettings)
    recorder: RecorderSettings = field(default_factory=RecorderSettings)
    webrtc: WebRtcSettings = field(default_factory=WebRtcSettings)
    transcode: TranscodeSettings = field(default_factory=TranscodeSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    channel: ChannelSettings = field(default_factory=ChannelSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @property
    def public_host(self) -> str:
        if self.public_url:
            return self.public_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


_OPTIONAL_KINDS: dict[str, type] = {"float": float, "int": int, "str": str, "bool": bool}


def _coerce(target: Any, name: str, value: Any, where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(target)}
    if name not in fields:
        raise ConfigError(f"{where}: unknown setting '{name}' (known: {', '.join(sorted(fields))})")
    current = getattr(target, name)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        for key, item in value.items():
            setattr(current, key, _coerce(current, key, item, f"{where} [{name}]"))
        return current
    if current is None:  # an optional setting, off by default: its annotation ("float | None") says its type
        optional = _OPTIONAL_KINDS.get(str(fields[name].type).split("|")[0].strip())
        if optional is None:
            return value
        current = optional()
    kind = type(current)
    if isinstance(current, Path):
        if not isinstance(value, str | os.PathLike):
            raise ConfigError(f"{where}: '{name}' must be a path (a string), not {type(value).__name__}")
        return Path(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: '{name}' must be {kind.__name__}, not {type(value).__name__}")
    return value


def _workers(value: Any, where: str) -> int:
    """A ``workers`` setting: a whole number from 1, or "auto" (one per CPU)."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str):  # from the command line
        with contextlib.suppress(ValueError):
            value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f'{where}: workers must be a whole number from 1, or "auto", not {value!r}')
    return value


def _setting(settings: Settings, name: str, value: Any, where: str) -> Any:
    return _workers(value, where) if name == "workers" else _coerce(settings, name, value, where)


def _networks(name: str, addresses: list[str]) -> None:
    for address in addresses:
        try:
            if not isinstance(address, str):
                raise ValueError(address)  # a number would pass ip_network as an IPv4 address
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise ConfigError(
                f"{name}: {address!r} is not an IP address or network (e.g. 203.0.113.7 or 203.0.113.0/24)"
            ) from None


def _text(path: Path) -> str:
    """The file as text; TOML is UTF-8, and a file that is not says where."""
    raw = path.read_bytes()
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"cannot read config file {path}: line {line} is not UTF-8 (byte {raw[exc.start]:#04x});"
            " TOML files are UTF-8"
        ) from None


def load(path: Path | None, overrides: dict[str, Any]) -> Settings:
    """Defaults, then the TOML file (if any), then ``overrides`` (flags that were given)."""
    settings = Settings()
    if path is not None:
        try:
            data = tomllib.loads(_text(path))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        for key, value in data.items():
            setattr(settings, key.replace("-", "_"), _setting(settings, key.replace("-", "_"), value, str(path)))
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, _setting(settings, key, value, "command line"))
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, not {settings.log_level!r}")
    if settings.workers > 1 and 0 in (settings.rtmp_port, settings.http_port):
        raise ConfigError(
            f"workers = {settings.workers} needs fixed ports, which the workers share: rtmp_port and http_port"
            f" cannot be 0 (they are {settings.rtmp_port} and {settings.http_port})"
        )
    if settings.http_head_timeout_seconds <= 0 or settings.http_max_connections_per_address < 1:
        raise ConfigError(
            "http_head_timeout_seconds must be above 0 and http_max_connections_per_address at least 1"
            f" (they are {settings.http_head_timeout_seconds} and {settings.http_max_connections_per_address})"
        )
    if settings.http_keepalive_seconds <= 0:
        raise ConfigError(
            f"http_keepalive_seconds must be above 0 (it is {settings.http_keepalive_seconds}): the idle time"
            " after which a kept-alive HTTP connection is closed; nginx's is 75"
        )
    if not 0 <= settings.malloc_mmap_threshold <= 32 * 1024 * 1024:
        raise ConfigError(
            f"malloc_mmap_threshold must be 0 (glibc's own) to 33554432 bytes, not {settings.malloc_mmap_threshold}"
        )
    if settings.hls.format not in ("ts", "fmp4"):
        raise ConfigError(f"[hls] format must be ts or fmp4, not {settings.hls.format!r}")
    try:
        ZoneInfo(settings.rooms.time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "Asia" is a directory of the zone database
        raise ConfigError(
            f"[rooms] time_zone {settings.rooms.time_zone!r} is not a time zone: use an IANA name such as"
            ' "Asia/Shanghai" (the official service\'s) or "UTC"'
        ) from None
    _networks("http_cap_exempt", settings.http_cap_exempt)
    _networks("[rooms] callback_ips", settings.rooms.callback_ips)
    _networks("[webrtc] address_cap_exempt", settings.webrtc.address_cap_exempt)
    try:
        settings.transcode.validate()
        settings.rtmp.validate()
        settings.webrtc.validate()
        settings.cluster.validate()
        settings.console.validate()
        settings.metrics.validate(settings.workers, (settings.rtmp_port, settings.http_port))
    except (SettingsError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return settings
