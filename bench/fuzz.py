"""Long fuzz runs of every network parser (issue 16): coverage guided with atheris (libFuzzer), or a fast
seeded mutation loop.

    .venv/bin/python -m bench.fuzz                          # every target, 1,000,000 inputs each, atheris
    .venv/bin/python -m bench.fuzz --target rtmp --inputs 200000
    .venv/bin/python -m bench.fuzz --target sdp --seconds 300   # stop after 5 min, whatever the count
    .venv/bin/python -m bench.fuzz --engine mutate          # the mutation loop: no coverage, 5-20x the rate

Two engines. ``atheris`` instruments our packages and lets libFuzzer steer its mutations by the branches
they reach; it finds what blind mutation does not, at a few thousand inputs a second. ``mutate`` runs the
suite's mutations (tests/fuzz/targets.py ``mutate``: bit flips, interesting bytes, huge length fields,
truncations, duplications, splices of real captures) uninstrumented, for volume; it goes on past a crash
and counts each distinct one (exception type and line).

The targets and their properties are tests/fuzz/targets.py (the suite runs each for a few thousand
inputs); each target runs in a process of its own (libFuzzer ends the process when it is done), one at
a time, started from tests/fuzz/seeds/<target>/ plus the corpus that earlier runs grew in
bench/.cache/fuzz/<target>/. A crash stops its target: the input is written to
bench/.cache/fuzz/<target>/crash-*, the traceback printed; copy the input to tests/fuzz/crashes/<target>/
once fixed. Results (inputs, exec/s, coverage: libFuzzer's edge count "cov" and feature count "ft",
peak RSS, crashes) go to bench/results/fuzz-<date>.json, one entry per target, merged with the day's
earlier runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "fuzz"
RESULTS = ROOT / "bench" / "results"
# Our packages: the code under test is instrumented for coverage, not aiortc, aiohttp or the stdlib.
INSTRUMENTED = ["ingest", "relay", "signaling", "api", "recorder", "tests.fuzz"]
PROGRESS_SECONDS = 15.0

_COVERAGE = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?exec/s: (\d+) rss: (\d+)Mb")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")


def worker(name: str, inputs: int, seconds: int) -> None:
    """Fuzz one target in this process (libFuzzer exits the process at the end)."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        from tests.fuzz import targets
    target = targets.TARGETS[name]
    folder = CACHE / name
    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-runs={inputs}",
        f"-max_len={target.max_len}",
        f"-artifact_prefix={folder}/",
        "-print_final_stats=1",
        "-timeout=10",  # one input taking 10 s is a hang: reported as a crash
        "-rss_limit_mb=1536",  # bounded memory: a length-driven allocation shows here
        str(corpus),
        str(targets.SEEDS / name),
    ]
    if seconds:
        argv.insert(2, f"-max_total_time={seconds}")
    atheris.Setup(argv, target.check)
    atheris.Fuzz()


def mutate_worker(name: str, inputs: int, seconds: int) -> None:
    """Run the seeded mutation loop on one target; its figures as JSON on stdout."""
    import hashlib
    import resource
    import traceback

    from tests.fuzz import targets

    target = targets.TARGETS[name]
    folder = CACHE / name
    folder.mkdir(parents=True, exist_ok=True)
    crashes: dict[str, str] = {}
    started = last_print = time.monotonic()
    seed = int(time.time())  # a new stream of inputs each run (tests/fuzz/targets.inputs), recorded
    count = 0
    for count, data in enumerate(targets.inputs(target, inputs, seed=seed), 1):
        try:
            target.check(data)
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            if where not in crashes:
                path = folder / f"crash-{hashlib.sha1(data).hexdigest()}"
                path.write_bytes(data)
                crashes[where] = str(path)
                print(f"CRASH {where}: {exc!r}; input written to {path}", file=sys.stderr, flush=True)
        if count % 1000 == 0:
            now = time.monotonic()
            if now - last_print >= PROGRESS_SECONDS:
                last_print = now
                print(f"  {name}: {count:,} inputs, {count / (now - started):,.0f}/s", file=sys.stderr, flush=True)
            if seconds and now - started >= seconds:
                break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    result = {"inputs": count, "seed": seed, "peak_rss_mb": peak, "crashes": len(crashes)}
    result["crash_files"] = list(crashes.values())
    result["distinct_crashes"] = list(crashes)
    print(json.dumps(result))


def run_mutate(name: str, inputs: int, seconds: int) -> dict:
    started = time.monotonic()
    command = [sys.executable, "-m", "bench.fuzz", "--worker", name, "--engine", "mutate"]
    command += ["--inputs", str(inputs), "--seconds", str(seconds)]
    child = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - started
    result = json.loads(child.stdout.splitlines()[-1]) if child.returncode == 0 else {"inputs": 0, "crashes": 1}
    result.update(seconds=round(elapsed, 1), exec_per_s=round(result["inputs"] / elapsed), engine="mutate")
    result["exit_code"] = child.returncode
    return result


def run_target(name: str, inputs: int, seconds: int) -> dict:
    """Fuzz ``name`` with atheris in a child process; its figures."""
    started = time.monotonic()
    command = [sys.executable, "-m", "bench.fuzz", "--worker", name, "--inputs", str(inputs), "--seconds", str(seconds)]
    child = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert child.stderr is not None
    result: dict = {"inputs": 0, "coverage": 0, "features": 0, "corpus": 0, "peak_rss_mb": 0, "crashes": 0}
    crash_lines: list[str] = []
    in_crash = False
    last_print = 0.0
    for line in child.stderr:
        line = line.rstrip("\n")
        if found := _COVERAGE.match(line):
            count, cov, ft, corp, _, rss = map(int, found.groups())
            result.update(inputs=count, coverage=cov, features=ft, corpus=corp, peak_rss_mb=rss)
            if time.monotonic() - last_print >= PROGRESS_SECONDS:
                last_print = time.monotonic()
                rate = count / max(last_print - started, 1e-9)
                print(f"  {name}: {count:,} inputs, {rate:,.0f}/s, cov {cov}, ft {ft}, corpus {corp}", flush=True)
        elif found := _STAT.match(line):
            key, value = found.groups()
            if key == "number_of_executed_units":
                result["inputs"] = int(value)
            elif key == "peak_rss_mb":
                result["peak_rss_mb"] = int(value)
        elif "Uncaught Python exception" in line or "ERROR: libFuzzer" in line:
            in_crash = True
        if in_crash:
            crash_lines.append(line)
            if "Test unit written to" in line:
                result["crashes"] += 1
                result.setdefault("crash_files", []).append(line.rsplit(" ", 1)[-1])
                in_crash = False
    child.wait()
    elapsed = time.monotonic() - started
    result["seconds"] = round(elapsed, 1)
    result["exec_per_s"] = round(result["inputs"] / elapsed) if elapsed else 0
    result["exit_code"] = child.returncode
    result["engine"] = "atheris"
    if child.returncode and not result["crashes"]:
        result["crashes"] = 1  # ended abnormally without naming its input (e.g. out of memory)
    if crash_lines:
        result["crash_log"] = "\n".join(crash_lines[-60:])
        print("\n".join(crash_lines[-60:]), file=sys.stderr)
    return result


def save(name: str, engine: str, figures: dict) -> Path:
    """Record one target's run in the day's file (one entry per target and engine; a later run replaces it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"fuzz-{datetime.date.today().isoformat()}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.setdefault(engine, {})[name] = figures
    path.write_text(json.dumps(previous, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", help="a target (repeatable); default: all")
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target (default 1,000,000)")
    parser.add_argument("--seconds", type=int, default=0, help="stop a target after this long (default: no limit)")
    parser.add_argument("--engine", choices=("atheris", "mutate"), default="atheris", help="default: atheris")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT))
        (worker if args.engine == "atheris" else mutate_worker)(args.worker, args.inputs, args.seconds)
        return
    sys.path.insert(0, str(ROOT))
    from tests.fuzz.targets import TARGETS

    names = args.target or list(TARGETS)
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}; the targets are {', '.join(TARGETS)}")
    results = {}
    for name in names:
        print(f"{name}: fuzzing {args.inputs:,} inputs with {args.engine}", flush=True)
        run = run_target if args.engine == "atheris" else run_mutate
        figures = results[name] = run(name, args.inputs, args.seconds)
        figures["command"] = " ".join(["python -m bench.fuzz", *sys.argv[1:]])
        path = save(name, args.engine, figures)
        print(
            f"{name}: {figures['inputs']:,} inputs in {figures['seconds']} s ({figures['exec_per_s']:,}/s),"
            f" cov {figures.get('coverage', '-')}, peak RSS {figures['peak_rss_mb']} MB, crashes {figures['crashes']}",
            flush=True,
        )
    print(f"written to {path.relative_to(ROOT)}")
    print("| target | engine | inputs | exec/s | cov (edges) | ft | peak RSS MB | crashes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, figures in results.items():
        cells = [name, args.engine, f"{figures['inputs']:,}", f"{figures['exec_per_s']:,}"]
        cells += [figures.get("coverage", "-"), figures.get("features", "-")]
        cells += [figures["peak_rss_mb"], figures["crashes"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    sys.exit(1 if any(figures["crashes"] for figures in results.values()) else 0)


if __name__ == "__main__":
    main()
