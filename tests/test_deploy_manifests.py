"""deploy/Dockerfile, deploy/edge.Dockerfile, deploy/compose.yaml and deploy/k8s: no container runtime runs
here, so each file is read and checked against the code: the commands give the settings they mean,
the ports and the Redis address are the ones the server and the edge use, probes ask a route that
exists, and the image that runs has no build tools."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.deploy_kit import DEPLOY, EDGE, ROOT, edge_listens, has_route, serve, sysctl_settings

BUILD_TOOLS = ("gcc", "g++", "clang", "make", "build-essential", "libc6-dev", "python3-dev")


# ------------------------------------------------------------------ Dockerfiles


def instructions(path: Path) -> list[list[tuple[str, str]]]:
    """A Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continued lines joined."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        word, _, rest = logical.strip().partition(" ")
        logical = ""
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), " ".join(rest.split())))
    return stages


def exec_form(arguments: str) -> list[str]:
    words = json.loads(arguments)
    assert isinstance(words, list), f"{arguments}: exec form (a JSON list), so that signals reach the server"
    return words


def argument_defaults(path: Path) -> dict[str, str]:
    """The ARGs before the first FROM, which FROM lines may use."""
    return dict(arg.split("=", 1) for word, arg in instructions(path)[0] if word == "ARG")


def base_image(path: Path, stage: list[tuple[str, str]]) -> str:
    image = stage[0][1].split()[0]
    for name, value in argument_defaults(path).items():
        image = image.replace("${" + name + "}", value)
    return image


def last(stage: list[tuple[str, str]], word: str) -> str:
    found = [arguments for instruction, arguments in stage if instruction == word]
    assert found, f"no {word}"
    return found[-1]


def test_image_compiles_in_one_stage_and_runs_in_another_without_build_tools():
    dockerfile = DEPLOY / "Dockerfile"
    _, build, final = instructions(dockerfile)
    assert build[0][1].endswith(" AS build"), "the first stage is named build"
    assert base_image(dockerfile, build) == base_image(dockerfile, final), (
        "the virtualenv is copied as it is: its interpreter must be at the same path in both stages"
    )
    assert base_image(dockerfile, final).endswith("-slim-bookworm"), "a slim Debian"
    build_runs = " ".join(arguments for word, arguments in build if word == "RUN")
    assert "gcc" in build_runs and "pip install" in build_runs
    assert "mpegts._tsmux" in build_runs, "the build stops if the C muxer was not built (setup.py lets it go on)"
    for word, arguments in final:
        assert word != "RUN" or not any(re.search(rf"\b{re.escape(t)}\b", arguments) for t in BUILD_TOOLS), arguments
        assert word != "COPY" or arguments.startswith("--from=build "), (
            f"the final stage copies only the build: {arguments}"
        )
    assert "ffmpeg" not in " ".join(arguments for _, arguments in final), "FFmpeg comes in PyAV's wheel"


def test_image_gets_every_package_and_build_file():
    _, build, _ = instructions(DEPLOY / "Dockerfile")
    copied = {source for word, arguments in build if word == "COPY" for source in arguments.split()[:-1]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = packages | {"pyproject.toml", "setup.py", project["project"]["readme"]}
    assert needed <= copied, f"not copied into the build: {sorted(needed - copied)}"
    for source in copied:
        assert (ROOT / source).exists(), source
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignored[0] == "**" and {f"!{source}" for source in copied} <= set(ignored), "the context is only these"
    assert "**/*.so" in ignored, "a C muxer built on the host is not copied in: the build compiles its own"


def test_image_runs_the_server_as_a_user_of_its_own(monkeypatch):
    dockerfile = DEPLOY / "Dockerfile"
    final = instructions(dockerfile)[-1]
    uid, _, gid = last(final, "USER").partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid == uid
    made = last(final, "RUN")
    assert f"groupadd --system --gid {gid} " in made and f"useradd --system --uid {uid} --gid {gid} " in made
    started = serve(exec_form(last(final, "ENTRYPOINT"))[1:] + exec_form(last(final, "CMD")), {}, monkeypatch)
    settings = started.settings
    assert exec_form(last(final, "ENTRYPOINT"))[0] == "minilive"
    assert str(settings.data_dir) == last(final, "WORKDIR") == last(final, "VOLUME")
    assert {int(port) for port in last(final, "EXPOSE").split()} == {settings.rtmp_port, settings.http_port}
    check = last(final, "HEALTHCHECK")
    asked = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
    assert asked and int(asked[1]) == settings.http_port and has_route("GET", asked[2]), check
    assert started.supervised == (started.settings.workers > 1), "more than one worker runs under a supervisor"


def image_user() -> tuple[int, int]:
    uid, gid = last(instructions(DEPLOY / "Dockerfile")[-1], "USER").split(":")
    return int(uid), int(gid)


def test_edge_image_is_the_nginx_the_edge_config_is_tested_on():
    (stage,) = instructions(DEPLOY / "edge.Dockerfile")[1:]
    assert base_image(DEPLOY / "edge.Dockerfile", stage) == "debian:bookworm-slim", "Debian 12's nginx"
    install = last(stage, "RUN")
    assert "nginx" in install.split() and "libnginx-mod-stream" in install.split()
    assert last(stage, "COPY") == f"{EDGE.name} /etc/nginx/nginx.conf"
    assert {int(port) for port in last(stage, "EXPOSE").split()} == edge_listens()


# ------------------------------------------------------------------ compose


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def mounted(service: dict[str, Any], folder: Path) -> dict[str, Path]:
    """The files a service gets from the tree (``./x:/in/container[:ro]``), by their path inside."""
    files = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            files[target] = (folder / source).resolve()
    return files


def upstream_servers(name: str) -> list[tuple[str, int]]:
    block = re.search(r"upstream " + name + r" \{(.*?)\}", EDGE.read_text(), re.DOTALL)
    assert block, name
    return [(host, int(port)) for host, port in re.findall(r"server ([\w.-]+):(\d+);", block[1])]


def redis_address(url: str) -> tuple[str, int]:
    found = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", url)
    assert found, url
    return found[1], int(found[2])


def test_compose_nodes_share_redis_and_are_the_edge_upstreams(monkeypatch):
    services = compose()["services"]
    nodes = [name for name, service in services.items() if service.get("command", [None])[0] == "serve"]
    assert nodes == ["node1", "node2"]
    redis = services["redis"]
    assert redis["image"].startswith("redis:") and "--appendonly" in redis["command"], "rooms survive a restart"
    for name in nodes:
        node = services[name]
        assert node["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        started = serve(node["command"], mounted(node, DEPLOY), monkeypatch)
        settings = started.settings
        assert redis_address(settings.redis) == ("redis", 6379), "the redis service, on redis-server's port"
        assert node["depends_on"]["redis"]["condition"] == "service_healthy"
        assert (name, settings.http_port) in upstream_servers("minilive_any")
        assert (name, settings.http_port) in upstream_servers("minilive_hls")
        assert (name, settings.rtmp_port) in upstream_servers("minilive_rtmp")
        volumes = [v.split(":")[1] for v in node["volumes"] if not v.startswith(".")]
        assert volumes == [str(settings.data_dir)], "recordings in a volume of the node's own"
    for upstream in ("minilive_any", "minilive_hls", "minilive_rtmp"):
        assert {host for host, _ in upstream_servers(upstream)} == set(nodes), f"{upstream} names the nodes"
    assert started.supervised == (started.settings.workers > 1), "more than one worker runs under a supervisor"


def test_compose_edge_publishes_the_public_ports_with_its_config_and_certificates():
    services = compose()["services"]
    edge = services["edge"]
    assert edge["build"] == {"context": ".", "dockerfile": "edge.Dockerfile"}
    published = {int(port.split(":")[0]) for port in edge["ports"]}
    assert published == edge_listens() == {443, 1935, 1936}
    tls = next(v for v in edge["volumes"] if v.startswith("./tls:"))
    assert tls.split(":")[1] == "/etc/nginx/tls"
    assert re.findall(r"ssl_certificate(?:_key)? /etc/nginx/tls/", EDGE.read_text()), "the config reads them there"
    assert set(edge["depends_on"]) == {"node1", "node2"}
    assert "/deploy/tls/" in (ROOT / ".gitignore").read_text().split(), "private keys are never committed"


def test_compose_limits_and_sysctls_are_the_deploy_kits():
    services = compose()["services"]
    wanted = sysctl_settings()
    for name in ("node1", "node2", "edge"):
        service = services[name]
        assert service["ulimits"]["nofile"] == {"soft": 100_000, "hard": 100_000}
        for key, value in service["sysctls"].items():
            assert key in wanted and str(value) == wanted[key], f"{name}: {key} = {value}, the sysctl file says so?"


# ------------------------------------------------------------------ Kubernetes


def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    documents = yaml.safe_load_all((DEPLOY / "k8s" / "minilive.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"] == labels
    return labels


def container_ports(workload: dict[str, Any]) -> dict[str, int]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def config_files(workload: dict[str, Any], objects: dict[tuple[str, str], Any], folder: Path) -> dict[str, Path]:
    """The ConfigMap files a pod sees, written to ``folder``, by their path in the pod."""
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    files = {}
    for mount in container["volumeMounts"]:
        config_map = volumes[mount["name"]].get("configMap")
        if config_map is None:
            continue
        for key, text in objects["ConfigMap", config_map["name"]]["data"].items():
            files[f"{mount['mountPath']}/{key}"] = folder / key
            (folder / key).write_text(text)
    return files


def test_kubernetes_pods_run_the_server_on_the_ports_the_service_names(monkeypatch, tmp_path):
    objects = k8s()
    deployment = objects["Deployment", "minilive"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    started = serve(container["args"], config_files(deployment, objects, tmp_path), monkeypatch)
    settings = started.settings
    ports = container_ports(deployment)
    assert ports == {"rtmp": settings.rtmp_port, "http": settings.http_port}

    service = objects["Service", "minilive"]
    assert service["spec"]["selector"] == pod_labels(deployment)
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {(1935, "rtmp"), (8080, "http")}
    assert service["spec"]["sessionAffinity"] == "ClientIP", "a player's HLS requests reach one pod"

    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "http" and has_route("GET", get["path"]), probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"

    security = spec["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == image_user(), "the image's own user"
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert str(settings.data_dir) in mounts and "/tmp" in mounts, "writable places under a read-only root"
    cpus = int(container["resources"]["requests"]["cpu"])
    assert settings.transcode.workers == cpus, "transcoding processes: as many as the pod's CPUs, not the node's"
    workers = container["args"][container["args"].index("--workers") + 1]
    assert int(workers) == cpus, "a server process per CPU the pod asks for"
    assert started.supervised == (started.settings.workers > 1), "more than one worker runs under a supervisor"


def test_kubernetes_redis_is_where_the_pods_look_for_it(monkeypatch, tmp_path):
    objects = k8s()
    deployment = objects["Deployment", "minilive"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = serve(container["args"], config_files(deployment, objects, tmp_path), monkeypatch).settings
    host, port = redis_address(settings.redis)
    service = objects["Service", host]
    redis = objects["StatefulSet", host]
    assert redis["spec"]["serviceName"] == host
    assert service["spec"]["selector"] == pod_labels(redis)
    (redis_port,) = service["spec"]["ports"]
    assert redis_port["port"] == port and container_ports(redis)[redis_port["targetPort"]] == 6379
    (redis_container,) = redis["spec"]["template"]["spec"]["containers"]
    assert "--appendonly" in redis_container["args"] and redis["spec"]["volumeClaimTemplates"], "rooms survive"


def test_commands_in_deploy_files_are_quoted_as_one_word_per_argument():
    """YAML turns a bare ``--workers 2`` into one string; every argument must be its own list item."""
    commands = [service["command"] for service in compose()["services"].values() if "command" in service]
    commands += [
        container["args"]
        for workload in k8s().values()
        if workload["kind"] in ("Deployment", "StatefulSet")
        for container in workload["spec"]["template"]["spec"]["containers"]
    ]
    for command in commands:
        assert all(isinstance(word, str) and shlex.split(word) == [word] for word in command), command
