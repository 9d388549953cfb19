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
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
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
# nginx with nginx-rtmp compiled in, from the sources of the Debian packages above, for more than one
# worker (see build_nginx): Debian's module is loaded dynamically, which breaks rtmp_auto_push.
NGINX_STATIC = CACHE / "nginx-rtmp-static"
NGINX_BUILD_PACKAGES = ("gcc", "make", "libssl-dev")
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


def install(extra: tuple[str, ...] = (), nms: bool = True) -> None:
    """Install whatever of the peers and tools (and the Debian packages ``extra``) is missing; a no-op
    when all are there. ``nms``: node-media-server too."""
    packages = (*APT_PACKAGES, *extra)
    if nms and not shutil.which("npm"):
        packages += ("nodejs", "npm")
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
    if nms and not (NMS_PACKAGE / "package.json").exists():
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
    static = NGINX_STATIC / "nginx"
    if static.exists():  # more than one worker runs this one: Debian's nginx with the module compiled in
        built = subprocess.run([str(static), "-v"], capture_output=True, text=True).stderr.strip()
        found["nginx-static"] = f"{built.split('/', 1)[-1]} + nginx-rtmp {rtmp} compiled in"
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
    by_pid: dict[int, float] = field(default_factory=dict)  # each process's cpu_seconds


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
    by_pid = {}
    rss = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        by_pid[pid] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
                break
    main = by_pid.get(pids[0], 0.0) if pids else 0.0
    return Sample(sum(by_pid.values()), rss, main_cpu_seconds=main, by_pid=by_pid)


def connections(pids: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    """How many sockets each of ``pids`` holds, and which of them holds each TCP connection, by the port
    of the connection's other end (on loopback, a client's local port): which worker a client landed on.

    /proc/net/tcp is read while the connections carry traffic, and then it misses a few percent of them
    (with a few thousand): a port not found is a client not placed, the socket counts are exact."""
    holders: dict[int, int] = {}  # socket inode -> pid
    sockets = dict.fromkeys(pids, 0)
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        holders[int(link[8:-1])] = pid
                        sockets[pid] += 1
    owners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl, local, remote, state, ..., inode (10th)
                pid = holders.get(int(fields[9]))
                if pid is not None:
                    owners[int(fields[2].rsplit(":", 1)[1], 16)] = pid
    return owners, sockets


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

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        # Read first: a supervisor's workers run in process groups of their own, so the signal to
        # the server's group does not reach them, and they are no longer its children once it exits.
        tree = process_tree(self.process.pid) if self.alive() else []
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        left = [pid for pid in tree[1:] if pid in processes()]
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [pid for pid in left if pid in processes()]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.hls_dir is not None:
            shutil.rmtree(self.hls_dir, ignore_errors=True)


@dataclass(slots=True)
class Group:
    """Several servers (a cluster's nodes) measured as one: their CPU and memory summed."""

    servers: list[Server]
    hls_dir: Path | None = None
    pids: list[int] = field(default_factory=list)

    def alive(self) -> bool:
        return all(server.alive() for server in self.servers)

    def sample(self) -> Sample:
        samples = [server.sample() for server in self.servers]
        self.pids = [pid for server in self.servers for pid in server.pids]
        return Sample(
            sum(s.cpu_seconds for s in samples),
            sum(s.rss_bytes for s in samples),
            main_cpu_seconds=sum(s.main_cpu_seconds for s in samples),
            by_pid={pid: cpu for s in samples for pid, cpu in s.by_pid.items()},
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


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


def _apt_source(package: str, into: Path) -> Path:
    """The upstream source tarball of the installed version of Debian package ``package``, downloaded
    into ``into`` with apt (its own source index there: the system's apt configuration is not touched)."""
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True).stdout
    if not version:
        raise RuntimeError(f"{package} is not installed; run `python -m bench.peers install`")
    sources, lists = into / "sources", into / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    sources.mkdir(exist_ok=True)
    (sources / "debian.sources").write_text(
        "".join(
            f"Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            for uri, suite in (
                ("http://deb.debian.org/debian", "bookworm"),
                ("http://deb.debian.org/debian-security", "bookworm-security"),
            )
        )
    )
    apt = ["apt-get", "-qq", "-o", f"Dir::Etc::SourceList={sources / 'none'}"]
    apt += ["-o", f"Dir::Etc::SourceParts={sources}", "-o", f"Dir::State::Lists={lists}"]
    if not any(lists.glob("*Sources*")):
        subprocess.run([*apt, "update"], check=True, cwd=into)
    # --tar-only: the upstream tarball, checked against the signed index; Debian's patches are left out.
    subprocess.run([*apt, "source", "--download-only", "--tar-only", f"{package}={version}"], check=True, cwd=into)
    upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
    return next(into.glob(f"*_{upstream}.orig.tar.*"))


def build_nginx() -> Path:
    """nginx with nginx-rtmp compiled in (once, cached), from the upstream sources of the installed
    Debian packages (nginx 1.22.1, nginx-rtmp 1.2.2) and with Debian's compiler and linker flags.

    Why: ``rtmp_auto_push`` does not work with nginx-rtmp loaded as a dynamic module, as Debian ships
    it. The module makes each worker's unix socket in its init_process hook, which runs after the
    event module has put the listening sockets in epoll: that socket is never accepted on, so a
    publisher's pushes to the other workers wait forever and their viewers get nothing (upstream
    issues arut/nginx-rtmp-module#773 and #782)."""
    binary = NGINX_STATIC / "nginx"
    if binary.exists():
        return binary
    missing = _apt_missing(NGINX_BUILD_PACKAGES)
    if missing:
        install(missing, nms=False)
    print("building nginx with nginx-rtmp compiled in (for rtmp_auto_push), about a minute", file=sys.stderr)
    work = NGINX_STATIC / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for package in ("nginx", "libnginx-mod-rtmp"):
        subprocess.run(["tar", "xf", str(_apt_source(package, NGINX_STATIC))], check=True, cwd=work)
    nginx_src = next(work.glob("nginx-[0-9]*"))
    rtmp_src = next(work.glob("nginx-rtmp-module-*"))
    installed = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    flags = [
        arg
        for arg in shlex.split(installed.split("configure arguments:", 1)[-1])
        if arg.startswith(("--with-cc-opt=", "--with-ld-opt="))
    ]
    # Debian's flags warn about __DATE__, which the module's stat page uses (Debian patches it out).
    flags = [f"{arg} -Wno-error=date-time" if arg.startswith("--with-cc-opt=") else arg for arg in flags]
    configure = ["./configure", f"--prefix={NGINX_STATIC}", *flags, f"--add-module={rtmp_src}"]
    configure += ["--without-http_rewrite_module", "--without-http_gzip_module"]  # no PCRE, zlib needed
    subprocess.run(configure, check=True, cwd=nginx_src, stdout=subprocess.DEVNULL)
    subprocess.run(["make", f"-j{os.cpu_count() or 1}"], check=True, cwd=nginx_src, stdout=subprocess.DEVNULL)
    shutil.copy2(nginx_src / "objs" / "nginx", binary)
    shutil.rmtree(work)
    return binary


def start_nginx(rtmp_port: int, http_port: int, hls: bool, workers: int = 1) -> Server:
    """nginx-rtmp, one worker by default (its live streams are per worker). No HTTP-FLV; with ``hls``,
    HLS files on tmpfs (2 s fragments, 12 s playlists) served by the same nginx at /hls/NAME.m3u8.

    With more ``workers``, ``rtmp_auto_push on``: the worker a publisher lands on pushes its stream
    to every other worker over a unix socket (in the work dir), so viewers on any worker see it.
    The workers share one listening socket (nginx-rtmp's ``listen`` has no ``reuseport``). That runs
    the build of :func:`build_nginx`, Debian's nginx with the same sources compiled in."""
    workdir = _fresh_dir("nginx" if workers == 1 else f"nginx-w{workers}")
    if workers == 1:
        binary = "nginx"
        module = next((path for path in RTMP_MODULE_PATHS if path.exists()), None)
        if module is None:
            raise RuntimeError("ngx_rtmp_module.so not found; run `python -m bench.peers install`")
        main = f"load_module {module};\n"
    else:
        binary = str(build_nginx())
        (workdir / "logs").mkdir()  # its default access log's place (Debian's is /var/log/nginx)
        sockets = workdir / "sockets"
        sockets.mkdir()
        sockets.chmod(0o777)  # nginx's workers make their sockets there, as nobody when started by root
        main = f"rtmp_auto_push on;\nrtmp_socket_dir {sockets};\n"
    application, http, hls_dir = _nginx_hls(http_port) if hls else ("", "", None)
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""{main}worker_processes {workers};
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
    argv = [binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
    process, log = _launch(argv, workdir)
    server = Server(
        "nginx-rtmp" if workers == 1 else f"nginx-rtmp:{workers}",
        process,
        rtmp_port,
        http_port if hls else None,
        log,
        hls_path="/hls/{stream}.m3u8" if hls else None,
        hls_dir=hls_dir,
    )
    _wait_listening(server)
    return server


def start_nms(rtmp_port: int, http_port: int, hls: bool, workers: int = 1) -> Server:
    """node-media-server 4.x: RTMP, and HTTP-FLV at /live/NAME.flv; no admin console, API or recording.

    It has no HLS: ``hls`` changes nothing. It runs one process: ``workers`` must be 1."""
    if workers != 1:
        raise ValueError("node-media-server runs one process; it has no workers setting")
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
    rtmp_port: int,
    http_port: int,
    hls: bool = False,
    workers: int = 1,
    config: str = "",
    name: str = "minilive",
    args: tuple[str, ...] = (),
) -> Server:
    """minilive with its defaults (plus the TOML ``config`` and the ``serve`` flags ``args``, if any);
    it packages HLS / LL-HLS for a stream on the first request, so ``hls`` changes nothing. With more
    ``workers``, ``--workers N``: a supervisor and N server processes. ``name`` ``minilive@REV`` runs
    the code of git revision REV (see :func:`checkout`) instead of the work tree's."""
    if workers > 1:
        args = ("--workers", str(workers), *args)
    workdir = _fresh_dir(name if workers == 1 else f"{name}-w{workers}")
    if "@" not in name:  # (older revisions have no such setting) the bench reads /api/v1/streams
        config = "public_stats = true\n" + config
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
        *args,
    ]  # fmt: skip
    process, log = _launch(argv, workdir, minilive_env(tree))
    server = Server(
        name if workers == 1 else f"{name}:{workers}",
        process,
        rtmp_port,
        http_port,
        log,
        flv_path="/live/{stream}.flv",
        hls_path="/live/{stream}/index.m3u8",
        ll_hls=True,
    )
    _wait_listening(server)
    if workers > 1:
        _wait_workers(server, workers)
    return server


def _wait_workers(server: Server, count: int) -> None:
    """Until each of ``count`` workers has answered /healthz (fresh connections, which SO_REUSEPORT
    spreads over the workers): a worker listens on RTMP before HTTP, so then every one takes viewers."""
    url = f"http://127.0.0.1:{server.http_port}/healthz"
    seen: set[int] = set()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while len(seen) < count:
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{server.name}: only workers {sorted(seen)} of {count} answered")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            seen.add(json.loads(response.read())["worker"])
        time.sleep(0.02)


def minilive_env(tree: Path = ROOT) -> dict[str, str]:
    """The environment that runs minilive (and the processes it starts) from ``tree``."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{path}" if path else str(tree)}


STARTERS: dict[str, Callable[[int, int, bool, int], Server]] = {
    "minilive": start_minilive,
    "nginx-rtmp": start_nginx,
    "nms": start_nms,
}


def split_name(name: str) -> tuple[str, int]:
    """A server name without its processes, and how many: ``minilive:2`` is minilive with two workers
    (``--workers 2``), ``nginx-rtmp:2`` nginx with ``worker_processes 2``; without ``:N``, one."""
    base, _, count = name.rpartition(":")
    return (base, int(count)) if base and count.isdigit() and int(count) > 0 else (name, 1)


def kind(name: str) -> str:
    """The server a name runs: ``minilive@REV`` and ``minilive:2`` are minilive."""
    return split_name(name)[0].split("@", 1)[0]


def start(name: str, hls: bool = False) -> Server:
    """Start server ``name`` (``NAME[@REV][:WORKERS]``) on free ports; with ``hls``, configured to serve
    HLS if it needs to be."""
    base, count = split_name(name)
    if kind(base) == "minilive":
        return start_minilive(free_port(), free_port(), hls, count, name=base)
    return STARTERS[base](free_port(), free_port(), hls, count)


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m bench.peers install")
    install()
    print(json.dumps(versions()))
