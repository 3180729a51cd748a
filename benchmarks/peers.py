#!/usr/bin/env python3
"""Flotilla side by side with Parsl's HighThroughputExecutor and Dask's
distributed LocalCluster, on this machine, in one run.

Every engine gets two workers: Flotilla one ``flotilla-worker`` block with 2
slots (started by the daemon's local provider, as a site file normally
does), Parsl one LocalProvider block with ``max_workers_per_node=2``, Dask
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``. The
engines take turns (round r: Flotilla, Parsl, Dask; R rounds; medians over
rounds). Each turn runs in a fresh interpreter (``peers.py --turn ENGINE``,
which prints its figures as one JSON line), so nothing is warm at its start
and no engine's leftover threads share a process with the next; it starts
its engine, measures, and shuts the engine down cleanly, so that no two
engines compete for the cores:

* **cold start**: from just after the imports to the first no-op result
  (starting the daemon and its block, or loading Parsl's config, or
  starting the cluster and client, included);
* **no-op round trip** p50 and p99: one call at a time, submit and wait for
  its result, after a warm-up;
* **bulk no-op throughput**: N tasks submitted at once, until every result
  is back;
* **10 ms sleeps**: T tasks of ``sleep(0.01)`` on the 2 workers; completion
  time and efficiency against the ideal T x 0.01 / 2.

Flotilla is measured twice in its turn, against the same daemon: through
its builtins (``noop``, ``sleep``: Rust inside the worker) and through
Python servables (``site-examples/servables/noop-py``, and a ``sleep-py``
written at run time), since Parsl and Dask run a Python function. Every
input is distinct and memoization is off for every servable used, so no
result comes from Flotilla's memo store.

Writes ``benchmarks/results/peers.json`` (every raw figure, the medians over
rounds, and the ratios Flotilla / Parsl and Flotilla / Dask with the better
direction of each measure) and prints a table. Not part of any test suite.

    cargo build --release -p flotilla-cli -p flotilla-worker
    FLOTILLA_BENCH_PEERS=1 . scripts/python-env.sh
    .venv/bin/python benchmarks/peers.py            # --quick, --rounds R, ...
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKSPACE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(WORKSPACE / "clients" / "python"))

from flotilla import Client  # noqa: E402  (the working tree's client)
from flotilla.errors import DaemonNotRunning  # noqa: E402

#: The engines, in the order each round runs them.
ENGINES = ("flotilla", "parsl", "dask")
#: The rows of the report: Flotilla twice (builtins, Python servables).
ROWS = ("flotilla", "flotilla-py", "parsl", "dask")
#: Seconds each sleep task sleeps.
SLEEP_S = 0.01
#: Workers (slots) every engine gets.
WORKERS = 2
#: Longest any single engine start, measurement or shutdown may take.
STEP_TIMEOUT_S = 300.0
#: Longest one engine's whole turn may take.
TURN_TIMEOUT_S = 1800.0

SITE = """\
[provider]
init_blocks = 1
min_blocks = 1
max_blocks = 1

[worker]
slots = {slots}
command = "{worker}"

[servables.noop]
memoize = false

[servables.sleep]
memoize = false

[servables.noop-py]
memoize = false

[servables.sleep-py]
memoize = false
max_batch_size = 1
"""

SLEEP_PY_TOML = """\
name = "sleep-py"
version = "1.0.0"
title = "Sleep in Python"
description = "Sleeps for its input in seconds and returns null; one input per call."
license = "Apache-2.0"
model_type = "python-function"
domains = ["benchmarking"]
files = ["serve.py"]

[[creators]]
name = "Flotilla developers"

[input]
kind = "any"

[output]
kind = "any"

[runtime]
kind = "exec"
command = "python3"
args = ["serve.py"]

[options]
max_batch_size = 1
"""

SLEEP_PY_SERVE = """\
import time

from flotilla_servable import serve

serve(lambda seconds: time.sleep(seconds))
"""


# ---------------------------------------------------------------------------
# The functions Parsl and Dask run. Module level, so that both can ship them
# to their workers; Parsl's decorator is applied when Parsl is loaded, which
# keeps this module cheap to import for Dask's spawned worker processes.


def identity(x):
    """The no-op task of Parsl and Dask: returns its argument."""
    return x


def sleep_for(seconds):
    """The sleep task of Parsl and Dask: sleeps, returns nothing."""
    import time as _time

    _time.sleep(seconds)


# ---------------------------------------------------------------------------
# Figures


def percentiles(seconds):
    """p50 and p99 of a list of durations in seconds, in milliseconds."""
    seconds = sorted(seconds)
    return {
        "p50_ms": seconds[len(seconds) // 2] * 1e3,
        "p99_ms": seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))] * 1e3,
    }


def round_trips(call, count, warmup, first):
    """Times ``count`` sequential ``call(i)`` after ``warmup`` untimed ones,
    every ``i`` distinct, starting at ``first``."""
    for i in range(first, first + warmup):
        call(i)
    times = []
    for i in range(first + warmup, first + warmup + count):
        started = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - started)
    figures = percentiles(times)
    figures["calls"] = count
    figures["mean_ms"] = statistics.fmean(times) * 1e3
    return figures


def bulk(run_all, count, first):
    """Times ``run_all(inputs)``, which submits every input at once and
    returns every output, on ``count`` distinct inputs."""
    inputs = range(first, first + count)
    started = time.perf_counter()
    outputs = run_all(inputs)
    elapsed = time.perf_counter() - started
    if len(outputs) != count:
        raise RuntimeError("bulk: %d outputs for %d inputs" % (len(outputs), count))
    return {"tasks": count, "seconds": elapsed, "tasks_per_s": count / elapsed}


def sleeps(run_all, count):
    """Times ``run_all([SLEEP_S] * count)`` on the workers."""
    started = time.perf_counter()
    outputs = run_all([SLEEP_S] * count)
    elapsed = time.perf_counter() - started
    if len(outputs) != count:
        raise RuntimeError("sleep: %d outputs for %d inputs" % (len(outputs), count))
    ideal = count * SLEEP_S / WORKERS
    return {
        "tasks": count,
        "sleep_s": SLEEP_S,
        "seconds": elapsed,
        "ideal_seconds": ideal,
        "efficiency": ideal / elapsed,
    }


# ---------------------------------------------------------------------------
# Flotilla


class Flotilla:
    """A daemon in a fresh state directory whose local provider starts one
    block: one ``flotilla-worker`` with ``WORKERS`` slots."""

    def __init__(self, bin_dir):
        self.bin_dir = Path(bin_dir).resolve()
        self.home = Path(tempfile.mkdtemp(prefix="fl-peers-"))
        self.env = dict(os.environ, FLOTILLA_HOME=str(self.home))
        self.process = None
        self.client = None

    def start(self):
        """Starts the daemon; returns once a first ``noop`` has run."""
        site = self.home / "site.toml"
        site.write_text(SITE.format(slots=WORKERS, worker=self.bin_dir / "flotilla-worker"))
        log = open(self.home / "daemon.log", "ab")
        self.process = subprocess.Popen(
            [str(self.bin_dir / "flotilla"), "daemon", "--config", str(site)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while self.client is None:
            if self.process.poll() is not None:
                raise RuntimeError(
                    "the daemon exited at start:\n%s" % (self.home / "daemon.log").read_text()
                )
            try:
                self.client = Client(self.home)
            except DaemonNotRunning:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        # Waits for the block's worker to connect and run it.
        self.client.run("noop", -1, timeout=STEP_TIMEOUT_S)

    def publish(self, directory):
        """``flotilla servable publish DIRECTORY``."""
        subprocess.run(
            [str(self.bin_dir / "flotilla"), "servable", "publish", str(directory)],
            env=self.env,
            capture_output=True,
            check=True,
            timeout=STEP_TIMEOUT_S,
        )

    def stop(self):
        """``flotilla stop``, then waits for the daemon to exit."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.process is not None:
            subprocess.run(
                [str(self.bin_dir / "flotilla"), "stop", "--timeout", "60"],
                env=self.env,
                capture_output=True,
                timeout=90,
            )
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.home, ignore_errors=True)


def measure(args, call, run_noops, run_sleeps, bulk_count):
    """The warm measures of one row: round trips of ``call(i)``, a bulk of
    ``run_noops(inputs)`` and ``run_sleeps([SLEEP_S] * T)``, after warming
    every worker and the submission path up. No-op inputs are distinct
    throughout; sleep inputs repeat (memoization is off for them)."""
    run_sleeps([0.0] * 4 * WORKERS)
    first = 0
    warm = min(bulk_count, 1000)
    bulk(run_noops, warm, first)
    first += warm
    figures = {"round_trip": round_trips(call, args.round_trips, args.warmup, first)}
    first += args.warmup + args.round_trips
    figures["bulk"] = bulk(run_noops, bulk_count, first)
    figures["sleep"] = sleeps(run_sleeps, args.sleep_tasks)
    return figures


def flotilla_turn(args):
    """Flotilla's turn: cold start, then builtins, then Python servables."""
    engine = Flotilla(args.bin_dir)
    started = time.perf_counter()
    try:
        engine.start()
        cold = time.perf_counter() - started
        engine.publish(WORKSPACE / "site-examples" / "servables" / "noop-py")
        sleep_py = engine.home / "sleep-py"
        sleep_py.mkdir()
        (sleep_py / "servable.toml").write_text(SLEEP_PY_TOML)
        (sleep_py / "serve.py").write_text(SLEEP_PY_SERVE)
        engine.publish(sleep_py)
        client = engine.client

        def rows(noop, sleep):
            def run_map(name):
                return lambda inputs: list(client.map(name, inputs))

            # One input per request, several in flight: every slot starts
            # its own process of a Python servable before the timing.
            list(client.map(noop, range(-1000, -936), chunk=1, window=4 * WORKERS))
            return measure(
                args, lambda i: client.run(noop, i), run_map(noop), run_map(sleep), args.bulk
            )

        figures = {"flotilla": rows("noop", "sleep"), "flotilla-py": rows("noop-py", "sleep-py")}
    finally:
        stopped = time.perf_counter()
        engine.stop()
        stop_s = time.perf_counter() - stopped
    figures["flotilla"]["cold"] = {"first_result_s": cold}
    for row in figures.values():
        row["stop_s"] = stop_s
    return figures


# ---------------------------------------------------------------------------
# Parsl


def parsl_config(run_dir, strategy_period=None):
    """HighThroughputExecutor, one LocalProvider block of ``WORKERS``;
    Parsl's own default ``strategy_period`` unless one is given."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    return Config(
        executors=[
            HighThroughputExecutor(
                max_workers_per_node=WORKERS,
                address="127.0.0.1",
                provider=LocalProvider(init_blocks=1, max_blocks=1),
            )
        ],
        run_dir=str(run_dir),
        **({} if strategy_period is None else {"strategy_period": strategy_period}),
    )


class Parsl:
    """Parsl loaded with :func:`parsl_config` in a throw-away run dir."""

    def __init__(self, strategy_period=None):
        import parsl

        self.parsl = parsl
        self.strategy_period = strategy_period
        self.run_dir = Path(tempfile.mkdtemp(prefix="parsl-peers-"))
        self.loaded = False
        self.identity = parsl.python_app(identity, executors="all")
        self.sleep_for = parsl.python_app(sleep_for, executors="all")

    def start(self):
        """Loads the config; returns after a first result."""
        self.parsl.load(parsl_config(self.run_dir, self.strategy_period))
        self.loaded = True
        self.identity(-1).result(timeout=STEP_TIMEOUT_S)

    @staticmethod
    def run_all(app):
        """Submits ``app`` on every input, then waits for every future."""

        def run(inputs):
            futures = [app(x) for x in inputs]
            return [f.result(timeout=STEP_TIMEOUT_S) for f in futures]

        return run

    def stop(self):
        """``dfk().cleanup()`` and ``parsl.clear()``."""
        try:
            if self.loaded:
                self.parsl.dfk().cleanup()
        finally:
            self.parsl.clear()
            shutil.rmtree(self.run_dir, ignore_errors=True)


def parsl_turn(args):
    """Parsl's turn: cold start, then the warm measures."""
    engine = Parsl(args.parsl_strategy_period)
    started = time.perf_counter()
    try:
        engine.start()
        cold = time.perf_counter() - started
        figures = measure(
            args,
            lambda i: engine.identity(i).result(timeout=STEP_TIMEOUT_S),
            engine.run_all(engine.identity),
            engine.run_all(engine.sleep_for),
            args.bulk_parsl,
        )
    finally:
        stopped = time.perf_counter()
        engine.stop()
        stop_s = time.perf_counter() - stopped
    figures.update(cold={"first_result_s": cold}, stop_s=stop_s)
    return {"parsl": figures}


# ---------------------------------------------------------------------------
# Dask


class Dask:
    """A LocalCluster of ``WORKERS`` single-threaded worker processes, on
    loopback, without a dashboard, and a Client of it."""

    def __init__(self):
        self.cluster = None
        self.client = None

    def start(self):
        """Starts the cluster and client; returns after a first result."""
        from distributed import Client as DaskClient
        from distributed import LocalCluster

        self.cluster = LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        self.client = DaskClient(self.cluster)
        self.client.submit(identity, -1, pure=False).result(timeout=STEP_TIMEOUT_S)

    def run_all(self, fn):
        """``client.map(fn, inputs, pure=False)`` and ``client.gather``."""

        def run(inputs):
            return self.client.gather(self.client.map(fn, list(inputs), pure=False))

        return run

    def stop(self):
        """``client.close()`` and ``cluster.close()``."""
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def dask_turn(args):
    """Dask's turn: cold start, then the warm measures."""
    engine = Dask()
    started = time.perf_counter()
    try:
        engine.start()
        cold = time.perf_counter() - started
        client = engine.client
        figures = measure(
            args,
            lambda i: client.submit(identity, i, pure=False).result(timeout=STEP_TIMEOUT_S),
            engine.run_all(identity),
            engine.run_all(sleep_for),
            args.bulk,
        )
    finally:
        stopped = time.perf_counter()
        engine.stop()
        stop_s = time.perf_counter() - stopped
    figures.update(cold={"first_result_s": cold}, stop_s=stop_s)
    return {"dask": figures}


TURNS = {"flotilla": flotilla_turn, "parsl": parsl_turn, "dask": dask_turn}


def turn_child(args):
    """``--turn ENGINE``: imports the engine, runs its turn (the cold start
    timed from just after the imports) and prints the figures as one JSON
    line."""
    if args.turn == "parsl":
        import parsl  # noqa: F401
        import parsl.config  # noqa: F401
        import parsl.executors  # noqa: F401
        import parsl.providers  # noqa: F401
    elif args.turn == "dask":
        import distributed  # noqa: F401
    print(json.dumps(TURNS[args.turn](args)), flush=True)


def run_turn(args, engine):
    """Runs ``peers.py --turn ENGINE`` in a fresh interpreter; its figures."""
    command = [sys.executable, str(Path(__file__).resolve()), "--turn", engine]
    for name in ("round_trips", "warmup", "bulk", "bulk_parsl", "sleep_tasks", "bin_dir"):
        command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.parsl_strategy_period is not None:
        command += ["--parsl-strategy-period", str(args.parsl_strategy_period)]
    # Its own process group, so that a turn that hangs is ended with
    # everything it started in that group.
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=WORKSPACE,
        start_new_session=True,
    )
    try:
        stdout, stderr = child.communicate(timeout=TURN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise RuntimeError("the turn of %s took over %d s" % (engine, TURN_TIMEOUT_S)) from None
    lines = stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        raise RuntimeError("the turn of %s failed:\n%s" % (engine, stderr[-4000:]))
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------
# The report


#: (key, label, unit, better, how to read it from one row's figures)
MEASURES = (
    ("round_trip_p50_ms", "no-op round trip p50", "ms", "lower", ("round_trip", "p50_ms")),
    ("round_trip_p99_ms", "no-op round trip p99", "ms", "lower", ("round_trip", "p99_ms")),
    ("bulk_tasks_per_s", "bulk no-op throughput", "tasks/s", "higher", ("bulk", "tasks_per_s")),
    ("sleep_seconds", "10 ms sleeps, completion time", "s", "lower", ("sleep", "seconds")),
    ("sleep_efficiency", "10 ms sleeps, efficiency", "fraction", "higher", ("sleep", "efficiency")),
    ("cold_start_s", "cold start to first result", "s", "lower", ("cold", "first_result_s")),
)


def versions():
    """Versions of the peers, Python and Flotilla; the machine."""

    def version(module):
        try:
            return __import__(module).__version__
        except ImportError:
            return None

    cpu = ""
    try:
        with open("/proc/cpuinfo") as info:
            names = (line.split(":", 1)[1] for line in info if line.startswith("model name"))
            cpu = next(names, "").strip()
    except OSError:
        pass
    return {
        "versions": {
            "parsl": version("parsl"),
            "dask": version("dask"),
            "distributed": version("distributed"),
            "python": platform.python_version(),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu,
            "system": "%s %s %s" % (platform.system(), platform.release(), platform.machine()),
        },
    }


def flotilla_version(bin_dir):
    """``flotilla --version``."""
    done = subprocess.run(
        [str(Path(bin_dir) / "flotilla"), "--version"], capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


def summarise(rounds):
    """Raw figures, medians over rounds and ratios for every measure."""
    measures = {}
    for key, label, unit, better, (part, field) in MEASURES:
        raw = {}
        for row in ROWS:
            values = [r[row][part][field] for r in rounds if part in r.get(row, {})]
            raw[row] = values
        median = {row: statistics.median(v) if v else None for row, v in raw.items()}
        ratios = {}
        for mine in ("flotilla", "flotilla-py"):
            for peer in ("parsl", "dask"):
                if median[mine] is not None and median[peer]:
                    ratios["%s/%s" % (mine, peer)] = median[mine] / median[peer]
        measures[key] = {
            "label": label,
            "unit": unit,
            "better": better,
            "ratio_reading": "Flotilla / peer; %s 1 means Flotilla is better"
            % ("below" if better == "lower" else "above"),
            "raw": raw,
            "median": median,
            "ratios": ratios,
        }
    return measures


def print_table(report):
    """The medians and ratios, one line per measure."""
    head = "%-40s %10s %11s %9s %9s %9s %9s %9s %9s"
    print(
        head
        % (
            "measure (median)",
            "flotilla",
            "flotilla-py",
            "parsl",
            "dask",
            "fl/parsl",
            "fl/dask",
            "py/parsl",
            "py/dask",
        )
    )
    for m in report["measures"].values():
        cells = []
        for row in ROWS:
            value = m["median"][row]
            cells.append("-" if value is None else "%.4g" % value)
        for name in ("flotilla/parsl", "flotilla/dask", "flotilla-py/parsl", "flotilla-py/dask"):
            value = m["ratios"].get(name)
            cells.append("-" if value is None else "%.3g" % value)
        print(head % tuple(["%s (%s)" % (m["label"], m["unit"])] + cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, small counts (< 1 min)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    parser.add_argument("--round-trips", type=int, help="timed round trips (500; quick: 100)")
    parser.add_argument("--warmup", type=int, help="untimed round trips first (50; quick: 20)")
    parser.add_argument("--bulk", type=int, help="bulk tasks (10000; quick: 1000)")
    parser.add_argument("--bulk-parsl", type=int, help="bulk tasks for Parsl (default: --bulk)")
    parser.add_argument("--sleep-tasks", type=int, help="10 ms sleep tasks (200; quick: 50)")
    parser.add_argument(
        "--parsl-strategy-period",
        type=float,
        help="Parsl Config.strategy_period in seconds (default: Parsl's own, 5 s); its first "
        "tick launches the init block",
    )
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated subset of %s" % (ENGINES,)
    )
    parser.add_argument("--bin-dir", type=Path, default=WORKSPACE / "target" / "release")
    parser.add_argument(
        "--out", type=Path, default=WORKSPACE / "benchmarks" / "results" / "peers.json"
    )
    parser.add_argument("--turn", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Parsl's block runs process_worker_pool.py, Flotilla's Python servables
    # python3: both from this interpreter's environment.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    defaults = (1, 100, 20, 1000, 50) if args.quick else (3, 500, 50, 10_000, 200)
    names = ("rounds", "round_trips", "warmup", "bulk", "sleep_tasks")
    for name, value in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.bulk_parsl is None:
        args.bulk_parsl = args.bulk
    if args.turn:
        turn_child(args)
        return
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise SystemExit("unknown engines: %s" % ", ".join(sorted(unknown)))
    for name in ("flotilla", "flotilla-worker"):
        if not (args.bin_dir / name).is_file():
            raise SystemExit(
                "%s is missing: cargo build --release -p flotilla-cli -p flotilla-worker"
                % (args.bin_dir / name)
            )

    began = time.perf_counter()
    load_before = os.getloadavg()
    rounds = []
    for r in range(args.rounds):
        figures = {}
        for engine in engines:
            turn_began = time.perf_counter()
            figures.update(run_turn(args, engine))
            print(
                "round %d/%d: %s done in %.1f s"
                % (r + 1, args.rounds, engine, time.perf_counter() - turn_began),
                file=sys.stderr,
                flush=True,
            )
        rounds.append(figures)
    report = {
        "benchmark": "peers",
        "what": "Flotilla beside Parsl (HighThroughputExecutor, LocalProvider) and Dask "
        "(distributed LocalCluster), 2 workers each, interleaved in one run; medians over rounds",
        "mode": "quick" if args.quick else "full",
        "flotilla": flotilla_version(args.bin_dir),
        **versions(),
        "settings": {
            "rounds": args.rounds,
            "workers": WORKERS,
            "round_trips": args.round_trips,
            "round_trip_warmup": args.warmup,
            "bulk_tasks": {
                "flotilla": args.bulk,
                "flotilla-py": args.bulk,
                "parsl": args.bulk_parsl,
                "dask": args.bulk,
            },
            "sleep_tasks": args.sleep_tasks,
            "sleep_s": SLEEP_S,
            "parsl_strategy_period_s": args.parsl_strategy_period,
            "order": engines,
        },
        "engines": {
            "flotilla": "daemon (sled store, memo off) + 1 local block: flotilla-worker with 2 "
            "slots; Python client Client.run / Client.map (chunk 1000, window 4); builtins "
            "noop and sleep (run inside the Rust worker)",
            "flotilla-py": "same daemon; Python servables noop-py (site-examples, batched, up to "
            "1024 inputs per call) and sleep-py (one input per call), one warm python3 process "
            "per slot",
            "parsl": "HighThroughputExecutor(max_workers_per_node=2, address=127.0.0.1, "
            "encrypted=True by default) with LocalProvider(init_blocks=1, max_blocks=1); "
            "python_app; futures' .result()",
            "dask": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True, "
            "host=127.0.0.1, no dashboard); client.submit/map(pure=False), .result()/gather",
        },
        "measures": summarise(rounds),
        "rounds": rounds,
        "total_seconds": time.perf_counter() - began,
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print("wrote %s in %.0f s" % (args.out, report["total_seconds"]))


if __name__ == "__main__":
    main()
