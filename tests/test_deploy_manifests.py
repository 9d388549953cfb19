"""deploy/Dockerfile and deploy/edge.Dockerfile: no container runtime runs here, so each file is read and
checked against the code: the command gives the settings it means, the ports are the ones the server
and the edge use, the health check asks a route that exists, and the image that runs has no build tools."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from tests.deploy_kit import DEPLOY, ROOT, has_route, serve

CONFIG = DEPLOY / "minilive.toml"
EDGE_CONF = DEPLOY / "nginx-edge.conf"
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
    assert f"--uid {uid}" in last(final, "RUN")
    assert image_uid() == int(uid)
    started = serve(exec_form(last(final, "ENTRYPOINT"))[1:] + exec_form(last(final, "CMD")), {}, monkeypatch)
    settings = started.settings
    assert exec_form(last(final, "ENTRYPOINT"))[0] == "minilive"
    assert str(settings.data_dir) == last(final, "WORKDIR") == last(final, "VOLUME")
    assert {int(port) for port in last(final, "EXPOSE").split()} == {settings.rtmp_port, settings.http_port}
    check = last(final, "HEALTHCHECK")
    asked = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
    assert asked and int(asked[1]) == settings.http_port and has_route("GET", asked[2]), check
    started.skip_if_pending()


def image_uid() -> int:
    final = instructions(DEPLOY / "Dockerfile")[-1]
    return int(last(final, "USER").split(":")[0])


def edge_listens() -> set[int]:
    return {int(port) for port in re.findall(r"^\s*listen (\d+)", EDGE_CONF.read_text(), re.MULTILINE)}


def test_edge_image_is_the_nginx_the_edge_config_is_tested_on():
    (stage,) = instructions(DEPLOY / "edge.Dockerfile")[1:]
    assert base_image(DEPLOY / "edge.Dockerfile", stage) == "debian:bookworm-slim", "Debian 12's nginx"
    install = last(stage, "RUN")
    assert "nginx" in install.split() and "libnginx-mod-stream" in install.split()
    assert last(stage, "COPY") == f"{EDGE_CONF.name} /etc/nginx/nginx.conf"
    assert {int(port) for port in last(stage, "EXPOSE").split()} == edge_listens()
