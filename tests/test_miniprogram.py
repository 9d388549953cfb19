"""examples/miniprogram in Node: its page logic under miniprogram-simulate and the project under
miniprogram-ci's offline compile (tests/miniprogram, a jest project pinned by its lock file)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).parent / "miniprogram"
NODE, NPM = shutil.which("node"), shutil.which("npm")
# The jest files and what each must hold: a run where a file went missing is not a pass.
SUITES = {"room.test.js": 8, "viewer.test.js": 7, "anchor.test.js": 2, "replay.test.js": 2, "project.test.js": 2}

pytestmark = pytest.mark.skipif(
    not (NODE and NPM), reason="node and npm are not installed: scripts/dev test installs them (Debian nodejs, npm)"
)


def npm_ci() -> None:
    """node_modules as the lock pins it, once (scripts/dev setup installs it the same way)."""
    modules = PROJECT / "node_modules"
    if modules.is_dir() and modules.stat().st_mtime >= (PROJECT / "package-lock.json").stat().st_mtime:
        return
    done = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PROJECT, capture_output=True, timeout=900
    )
    assert done.returncode == 0, f"npm ci failed in {PROJECT}: {done.stderr.decode()[-3000:]}"
    modules.touch()


@pytest.mark.timeout(900)
def test_the_page_logic_and_the_project_pass_in_node(tmp_path: Path) -> None:
    npm_ci()
    report = tmp_path / "jest.json"
    done = subprocess.run(
        ["npx", "--no-install", "jest", "--ci", "--forceExit", "--json", f"--outputFile={report}"],
        cwd=PROJECT,
        capture_output=True,
        timeout=300,
    )
    results = json.loads(report.read_text())
    failures = [
        f"{Path(suite['name']).name}: {test['fullName']}: {' '.join(test['failureMessages'])[:1500]}"
        for suite in results["testResults"]
        for test in suite["assertionResults"]
        if test["status"] != "passed"
    ]
    assert done.returncode == 0 and not failures, "\n".join(failures) or done.stderr.decode()[-3000:]
    ran = {Path(suite["name"]).name: len(suite["assertionResults"]) for suite in results["testResults"]}
    assert ran == SUITES
