"""The servers under test: install, start with a generated config, sample CPU and memory, stop.

    python -m bench.peers install    # apt: nginx libnginx-mod-rtmp ffmpeg; npm: node-media-server@4

Every server listens on loopback only, on the ports it is given, with its config and data under
bench/.cache/<server>/, and is started in its own session so that stopping it ends its whole tree.
Started for HLS, nginx-rtmp also writes HLS files (to tmpfs) and serves them over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
NMS_PREFIX = CACHE / "nms"
NMS_PACKAGE = NMS_PREFIX / "node_modules" / "node-media-server"
# minilive runs from the tree this bench is in, with the running interpreter (its .venv): a git worktree
# has no .venv of its own, and the venv's `minilive` script would run the tree it was installed from.
MINILIVE = [sys.executable, "-m", "api.cli"]
APT_PACKAGES = ("nginx", "libnginx-mod-rtmp", "ffmpeg")
RTMP_MODULE_PATHS = (
    Path("/usr/lib/nginx/modules/ngx_rtmp_module.so"),
    Path("/usr/share/nginx/modules/ngx_rtmp_module.so"),
)
STARTUP_TIMEOUT = 20.0
# nginx-rtmp writes HLS to files: on tmpfs they cost what an in-memory server's segments cost.
HLS_TMPFS = Path("/dev/shm")
# node-media-server 4 has no HLS.
HLS_SERVERS = ("minilive", "nginx-rtmp")
_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ install


def _apt_missing(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for package in packages:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True).stdout
        if "install ok installed" not in status:
            missing.append(package)
    return missing


def install() -> None:
    """Install whatever of the peers and tools is missing; a no-op when all are there."""
    packages = APT_PACKAGES if shutil.which("npm") else (*APT_PACKAGES, "nodejs", "npm")
    missing = _apt_missing(packages)
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if not (NMS_PACKAGE / "package.json").exists():
        print("installing node-media-server@4", file=sys.stderr)
        NMS_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(NMS_PREFIX), "--no-audit", "--no-fund", "node-media-server@4"],
            check=True,
        )


def versions() -> dict[str, str]:
    """Versions of the peers as installed, for the results file."""
    found = {}
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    found["nginx"] = nginx.split("/", 1)[-1]
    rtmp = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-rtmp"], capture_output=True, text=True
    ).stdout
    found["libnginx-mod-rtmp"] = rtmp
    if (NMS_PACKAGE / "package.json").exists():
        found["node-media-server"] = json.loads((NMS_PACKAGE / "package.json").read_text())["version"]
        found["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return found


# ------------------------------------------------------------------ process sampling


@dataclass(slots=True)
class Sample:
    cpu_seconds: float  # user + system time of the whole process tree so far
    rss_bytes: int
    files_bytes: int = 0  # HLS files the server keeps on tmpfs (nginx-rtmp)
    main_cpu_seconds: float = 0.0  # the first process's own share (the root of the tree: minilive's
    # server, nginx's master), without its helpers (minilive's transcoding workers, nginx's worker)


@dataclass(slots=True)
class ProcessStat:
    name: str
    ppid: int
    cpu_seconds: float


def processes() -> dict[int, ProcessStat]:
    """Every process alive now, from /proc/PID/stat."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split at the last ')'.
        head, tail = stat.rsplit(")", 1)
        fields = tail.split()
        found[int(entry)] = ProcessStat(
            head.split("(", 1)[1], int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS
        )
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for pid, stat in processes().items():
        children.setdefault(stat.ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def sample(pids: list[int]) -> Sample:
    """CPU and memory of ``pids`` together; ``main_cpu_seconds`` is the first one's."""
    cpu = 0
    main = None
    rss = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        cpu += ticks
        if pid == pids[0]:
            main = ticks
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
                break
    return Sample(cpu / _TICKS, rss, main_cpu_seconds=(main or 0) / _TICKS)


# ------------------------------------------------------------------ servers


@dataclass(slots=True)
class Server:
    name: str
    process: subprocess.Popen
    rtmp_port: int
    http_port: int | None  # None: no HTTP server (nginx-rtmp unless started for HLS)
    log: Path
    flv_path: str | None = None  # URL path of a stream's HTTP-FLV, with {stream}; None: no HTTP-FLV
    hls_path: str | None = None  # the same for its HLS media playlist
    ll_hls: bool = False  # answers LL-HLS blocking playlist reloads
    hls_dir: Path | None = None  # where it writes HLS files; removed on stop
    pids: list[int] = field(default_factory=list)

    def rtmp_url(self) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live"

    def _http_url(self, path: str | None, stream: str) -> str | None:
        return None if path is None else f"http://127.0.0.1:{self.http_port}{path.format(stream=stream)}"

    def flv_url(self, stream: str) -> str | None:
        return self._http_url(self.flv_path, stream)

    def hls_url(self, stream: str) -> str | None:
        return self._http_url(self.hls_path, stream)

    def sample(self) -> Sample:
        # The tree is re-read each time: nginx's worker or a server's helpers may come and go.
        self.pids = process_tree(self.process.pid)
        found = sample(self.pids)
        if self.hls_dir is not None:
            for entry in os.scandir(self.hls_dir):
                with contextlib.suppress(FileNotFoundError):  # nginx-rtmp deletes old fragments as it goes
                    found.files_bytes += entry.stat().st_size
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.hls_dir is not None:
            shutil.rmtree(self.hls_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _fresh_dir(name: str) -> Path:
    path = CACHE / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _wait_listening(server: Server) -> None:
    ports = [server.rtmp_port] + ([server.http_port] if server.http_port else [])
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for port in ports:
        while True:
            if server.process.poll() is not None:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{tail}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"{server.name} did not listen on port {port}") from None
                time.sleep(0.1)


def _launch(argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """Start ``argv`` in ``workdir`` in its own session; the process and its log."""
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return process, log


def _nginx_hls(http_port: int) -> tuple[str, str, Path]:
    """The rtmp application's HLS directives, the http block that serves the files, and their directory."""
    base = HLS_TMPFS if HLS_TMPFS.is_dir() else CACHE
    hls_dir = base / f"minilive-bench-hls-{http_port}"
    shutil.rmtree(hls_dir, ignore_errors=True)
    hls_dir.mkdir(parents=True)
    hls_dir.chmod(0o777)  # nginx's worker writes it, and runs as nobody when nginx is started by root
    application = f"hls on; hls_path {hls_dir}; hls_fragment 2s; hls_playlist_length 12s;"
    http = f"""http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{http_port};
        location /hls/ {{
            types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
            alias {hls_dir}/;
            add_header Cache-Control no-cache;
        }}
    }}
}}
"""
    return application, http, hls_dir


def start_nginx(rtmp_port: int, http_port: int, hls: bool) -> Server:
    """nginx-rtmp, one worker (its live streams are per worker). No HTTP-FLV; with ``hls``, HLS files
    on tmpfs (2 s fragments, 12 s playlists) served by the same nginx at /hls/NAME.m3u8."""
    module = next((path for path in RTMP_MODULE_PATHS if path.exists()), None)
    if module is None:
        raise RuntimeError("ngx_rtmp_module.so not found; run `python -m bench.peers install`")
    workdir = _fresh_dir("nginx")
    application, http, hls_dir = _nginx_hls(http_port) if hls else ("", "", None)
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""load_module {module};
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 16384; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        chunk_size 4096;
        application live {{ live on; {application} }}
    }}
}}
{http}"""
    )
    argv = ["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
    process, log = _launch(argv, workdir)
    server = Server(
        "nginx-rtmp",
        process,
        rtmp_port,
        http_port if hls else None,
        log,
        hls_path="/hls/{stream}.m3u8" if hls else None,
        hls_dir=hls_dir,
    )
    _wait_listening(server)
    return server


def start_nms(rtmp_port: int, http_port: int, hls: bool) -> Server:
    """node-media-server 4.x: RTMP, and HTTP-FLV at /live/NAME.flv; no admin console, API or recording.

    It has no HLS: ``hls`` changes nothing."""
    workdir = _fresh_dir("nms-run")
    config = {
        "bind": "127.0.0.1",
        "rtmp": {"port": rtmp_port},
        "http": {"port": http_port},
        "webadmin": {"enable": False},
        "store": {"path": str(workdir / "data")},
        "record": {"auto": False, "path": str(workdir / "record")},
    }
    (workdir / "config.json").write_text(json.dumps(config, indent=2))
    argv = ["node", str(NMS_PACKAGE / "bin" / "app.js"), "-c", str(workdir / "config.json")]
    process, log = _launch(argv, workdir)
    server = Server("nms", process, rtmp_port, http_port, log, flv_path="/live/{stream}.flv")
    _wait_listening(server)
    return server


def checkout(revision: str) -> Path:
    """A work tree of minilive at ``revision`` under bench/.cache, its C muxer compiled in place: so that
    one run can compare the code as it is with the code as it was (``--servers minilive@REV,minilive``)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{revision}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    tree = CACHE / f"minilive-{commit[:12]}"
    if not tree.is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True)
    suffix, include = sysconfig.get_config_var("EXT_SUFFIX"), sysconfig.get_path("include")
    for source in tree.glob("relay/**/_tsmux.c"):
        built = source.with_name("_tsmux" + suffix)
        if not built.exists():
            subprocess.run(
                ["gcc", "-O2", "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(built)], check=True
            )
    return tree


def start_minilive(
    rtmp_port: int, http_port: int, hls: bool = False, config: str = "", name: str = "minilive"
) -> Server:
    """minilive with its defaults (plus the TOML ``config``, if any); it packages HLS / LL-HLS for a
    stream on the first request, so ``hls`` changes nothing. ``name`` ``minilive@REV`` runs the code of
    git revision REV (see :func:`checkout`) instead of the work tree's."""
    workdir = _fresh_dir(name)
    settings = []
    if config:
        (workdir / "minilive.toml").write_text(config)
        settings = ["--config", str(workdir / "minilive.toml")]
    tree = checkout(name.split("@", 1)[1]) if "@" in name else ROOT
    argv = [
        *MINILIVE, "serve", *settings,
        "--host", "127.0.0.1",
        "--rtmp-port", str(rtmp_port),
        "--http-port", str(http_port),
        "--allow-anonymous-publish",
        "--data-dir", str(workdir / "data"),
        "--log-level", "warning",
    ]  # fmt: skip
    process, log = _launch(argv, workdir, minilive_env(tree))
    server = Server(
        name,
        process,
        rtmp_port,
        http_port,
        log,
        flv_path="/live/{stream}.flv",
        hls_path="/live/{stream}/index.m3u8",
        ll_hls=True,
    )
    _wait_listening(server)
    return server


def minilive_env(tree: Path = ROOT) -> dict[str, str]:
    """The environment that runs minilive (and the processes it starts) from ``tree``."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{path}" if path else str(tree)}


STARTERS: dict[str, Callable[[int, int, bool], Server]] = {
    "minilive": start_minilive,
    "nginx-rtmp": start_nginx,
    "nms": start_nms,
}


def kind(name: str) -> str:
    """The server a name runs: ``minilive@REV`` is minilive."""
    return name.split("@", 1)[0]


def start(name: str, hls: bool = False) -> Server:
    """Start server ``name`` on free ports; with ``hls``, configured to serve HLS if it needs to be."""
    if kind(name) == "minilive":
        return start_minilive(free_port(), free_port(), hls, name=name)
    return STARTERS[name](free_port(), free_port(), hls)


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m bench.peers install")
    install()
    print(json.dumps(versions()))
