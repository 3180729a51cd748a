#!/usr/bin/env python3
"""Throughput of the Python client's ``map`` against the CLI's bulk submit.

Starts one daemon (the given build; release by default) in a throw-away
state directory, with the local provider's one block: one
``flotilla-worker --slots 2``, as ``engine-core`` uses. Then, alternating in
the same run and against the same daemon, for N ``noop`` tasks:

* **python map**: ``list(client.map("noop", [None] * N))``, from the call
  until the last output is in the caller's hands;
* **cli bulk**: ``flotilla submit --batch tasks.jsonl`` (N lines, one request;
  timed to the printed ids, i.e. accepted and durable), then ``flotilla
  result IDS... --wait --json`` until every result is printed; the sum is
  the CLI's end-to-end time.

It also times synchronous ``run("noop")`` round trips through the blocking
``Client`` and through ``AsyncClient`` (p50 and p99), which shows what the
blocking client's hop to its event-loop thread costs.

Writes ``benchmarks/results/python-map.json`` and prints a table. Not part of
any test suite.

    cargo build --release -p flotilla-cli -p flotilla-worker
    .venv/bin/python benchmarks/python_map.py            # --count N --repeat R --bin-dir DIR
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKSPACE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(WORKSPACE / "clients" / "python"))

from flotilla import AsyncClient, Client  # noqa: E402  (the working tree's client)

SITE = """\
[provider]
init_blocks = 1
min_blocks = 1
max_blocks = 1

[worker]
slots = 2
command = "{worker}"
"""


def start_daemon(bin_dir, home):
    site = home / "site.toml"
    site.write_text(SITE.format(worker=bin_dir / "flotilla-worker"))
    env = dict(os.environ, FLOTILLA_HOME=str(home))
    log = open(home / "daemon.log", "ab")
    process = subprocess.Popen(
        [str(bin_dir / "flotilla"), "daemon", "--config", str(site)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit("the daemon exited at start; see %s" % (home / "daemon.log"))
        try:
            with Client(home) as client:
                if client.run("noop", timeout=1) is None:
                    return process, env
        except Exception:
            if time.monotonic() > deadline:
                process.kill()
                raise
        time.sleep(0.02)


def python_map(home, count, chunk, window):
    with Client(home) as client:
        started = time.perf_counter()
        outputs = list(client.map("noop", [None] * count, chunk=chunk, window=window))
        elapsed = time.perf_counter() - started
    assert len(outputs) == count and all(o is None for o in outputs)
    return {"seconds": elapsed, "tasks_per_s": count / elapsed}


def cli_bulk(bin_dir, env, batch_file, count):
    flotilla = str(bin_dir / "flotilla")
    started = time.perf_counter()
    submitted = subprocess.run(
        [flotilla, "submit", "--batch", str(batch_file)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    accepted = time.perf_counter() - started
    ids = submitted.stdout.split()
    assert len(ids) == count, submitted.stderr
    results = subprocess.run(
        [flotilla, "result", "--wait", "--json"] + ids,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - started
    assert len(json.loads(results.stdout)) == count
    return {
        "seconds": elapsed,
        "tasks_per_s": count / elapsed,
        "submit_seconds": accepted,
        "submit_tasks_per_s": count / accepted,
    }


def percentiles(seconds):
    seconds = sorted(seconds)
    return {
        "p50_ms": seconds[len(seconds) // 2] * 1e3,
        "p99_ms": seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))] * 1e3,
    }


def run_latency(home, count):
    """Round trips of ``run("noop")``, blocking and asyncio, after a warm-up."""
    with Client(home) as client:
        for _ in range(count // 10):
            client.run("noop")
        blocking = []
        for _ in range(count):
            started = time.perf_counter()
            client.run("noop")
            blocking.append(time.perf_counter() - started)

    async def measure():
        async with AsyncClient(home) as client:
            for _ in range(count // 10):
                await client.run("noop")
            times = []
            for _ in range(count):
                started = time.perf_counter()
                await client.run("noop")
                times.append(time.perf_counter() - started)
            return times

    return {
        "runs": count,
        "client": percentiles(blocking),
        "async_client": percentiles(asyncio.run(measure())),
    }


def summary(runs, key="tasks_per_s"):
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="noop tasks per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each")
    parser.add_argument("--chunk", type=int, default=1000, help="map's chunk")
    parser.add_argument("--window", type=int, default=4, help="map's window")
    parser.add_argument(
        "--latency", type=int, default=2000, help="synchronous runs to time (0: none)"
    )
    parser.add_argument("--bin-dir", type=Path, default=WORKSPACE / "target" / "release")
    parser.add_argument(
        "--out", type=Path, default=WORKSPACE / "benchmarks" / "results" / "python-map.json"
    )
    args = parser.parse_args()
    for name in ("flotilla", "flotilla-worker"):
        if not (args.bin_dir / name).is_file():
            raise SystemExit(
                "%s is missing: cargo build --release -p flotilla-cli -p flotilla-worker"
                % (args.bin_dir / name)
            )

    with tempfile.TemporaryDirectory(prefix="fl-pymap-") as tmp:
        home = Path(tmp)
        batch_file = home / "tasks.jsonl"
        batch_file.write_text('{"servable": "noop"}\n' * args.count)
        process, env = start_daemon(args.bin_dir, home)
        try:
            # Warm-up: the worker, the store, the interpreter's caches.
            python_map(home, min(args.count, 10_000), args.chunk, args.window)
            cli_bulk(args.bin_dir, env, batch_file, args.count)
            maps, clis = [], []
            for _ in range(args.repeat):
                maps.append(python_map(home, args.count, args.chunk, args.window))
                clis.append(cli_bulk(args.bin_dir, env, batch_file, args.count))
            latency = run_latency(home, args.latency) if args.latency > 0 else None
        finally:
            subprocess.run(
                [str(args.bin_dir / "flotilla"), "stop", "--timeout", "30"],
                env=env,
                capture_output=True,
            )
            if process.poll() is None:
                process.kill()
            process.wait()

    report = {
        "benchmark": "python-map",
        "what": "noop tasks through one daemon and one worker (2 slots): Python Client.map vs "
        "`flotilla submit --batch` + `flotilla result --wait --json`",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "binaries": str(args.bin_dir.relative_to(WORKSPACE))
        if WORKSPACE in args.bin_dir.parents
        else str(args.bin_dir),
        "count": args.count,
        "repeat": args.repeat,
        "map": {
            "chunk": args.chunk,
            "window": args.window,
            "runs": maps,
            "tasks_per_s": summary(maps),
        },
        "cli_bulk": {
            "runs": clis,
            "tasks_per_s": summary(clis),
            "submit_only_tasks_per_s": summary(clis, "submit_tasks_per_s"),
        },
        "run_latency": latency,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print("%d noop tasks, %d runs each, %s" % (args.count, args.repeat, report["binaries"]))
    print("%-44s %12s %12s %12s" % ("", "median/s", "min/s", "max/s"))
    rows = [
        (
            "python map (chunk %d, window %d)" % (args.chunk, args.window),
            report["map"]["tasks_per_s"],
        ),
        ("cli bulk: submit --batch + result --wait", report["cli_bulk"]["tasks_per_s"]),
        ("cli bulk: submit --batch alone (durable)", report["cli_bulk"]["submit_only_tasks_per_s"]),
    ]
    for label, s in rows:
        print("%-44s %12.0f %12.0f %12.0f" % (label, s["median"], s["min"], s["max"]))
    if latency:
        for label, key in (("Client.run", "client"), ("AsyncClient.run", "async_client")):
            print(
                "sync %-18s noop round trip: p50 %.3f ms, p99 %.3f ms (%d runs)"
                % (label, latency[key]["p50_ms"], latency[key]["p99_ms"], latency["runs"])
            )
    print("wrote %s" % args.out)


if __name__ == "__main__":
    main()
