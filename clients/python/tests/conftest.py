"""Fixtures: a real Flotilla daemon with a real worker, for the whole session.

The daemon runs the workspace's debug build (``cargo build --workspace
--bins``; ``FLOTILLA_BIN_DIR`` points elsewhere) in a throw-away state
directory, with the local provider starting one block: one
``flotilla-worker`` with two slots. Servables run with this interpreter's
environment first on ``PATH``, and see the working tree's packages. At the
end the daemon is stopped gracefully, and every process it started is
killed if it is still there. Nothing sleeps to synchronise: conditions are
polled against a deadline.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKSPACE = Path(__file__).resolve().parents[3]
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

#: A site file for tests: fast heartbeats, one local block of one worker. The
#: silence after which a worker counts as lost is generous: a debug-built
#: daemon moving inputs of several MiB on a loaded machine can take seconds
#: to read a heartbeat, and no test here waits for a loss.
SITE = """\
[daemon]
shutdown_grace_s = {grace}
{daemon_extra}

[interchange]
heartbeat_period_s = 0.5
heartbeat_threshold_s = 20

[provider]
init_blocks = 1
min_blocks = 1
max_blocks = 1
poll_interval_s = 0.1

[worker]
slots = {slots}
lost_daemon_exit_s = 10
command = "{worker}"
"""


def bin_path(name):
    """A workspace executable; fails the session with instructions if absent."""
    directory = Path(os.environ.get("FLOTILLA_BIN_DIR") or WORKSPACE / "target" / "debug")
    path = directory / name
    if not path.is_file():
        pytest.fail(
            "%s is missing: build it with `cargo build --workspace --bins` (or set "
            "FLOTILLA_BIN_DIR to the directory holding flotilla and flotilla-worker)" % path,
            pytrace=False,
        )
    return path


def wait_until(what, check, limit=30.0):
    """Polls ``check`` until it returns something true; fails after ``limit`` s."""
    deadline = time.monotonic() + limit
    last_error = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the condition is not there yet
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                "timed out after %.0f s waiting for %s (last error: %r)" % (limit, what, last_error)
            )
        time.sleep(0.01)


class Daemon:
    """A running daemon under test: its state directory, environment and CLI."""

    def __init__(self, home, env, process, log_path):
        self.home = home
        self.env = env
        self.process = process
        self.log_path = log_path
        #: Pids of the workers it started, as far as known.
        self.workers = []

    def cli(self, *args, check=True):
        """Runs ``flotilla ARGS`` against this daemon; returns the process."""
        out = subprocess.run(
            [str(bin_path("flotilla"))] + [str(a) for a in args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                "flotilla %s exited %d\nstdout: %s\nstderr: %s"
                % (" ".join(map(str, args)), out.returncode, out.stdout, out.stderr)
            )
        return out

    def status(self):
        """``flotilla status --json`` as a dict."""
        return json.loads(self.cli("status", "--json").stdout)

    def log(self):
        """The daemon's log so far."""
        return self.log_path.read_text(errors="replace")


def _environment(home):
    env = dict(os.environ)
    env["FLOTILLA_HOME"] = str(home)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(PACKAGE_ROOT), env.get("PYTHONPATH")] if p)
    env.setdefault("FLOTILLA_LOG", "info")
    return env


def _worker_pids(daemon):
    try:
        return [w["pid"] for w in daemon.status().get("workers", [])]
    except Exception:
        return []


def _kill_worker(pid):
    """SIGKILLs ``pid`` if it is still a flotilla-worker (pids are reused)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if b"flotilla-worker" not in f.read():
                return
        os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def start_daemon(home, slots=2, grace=5, daemon_extra=""):
    """Starts a daemon on state directory ``home`` whose one worker has
    ``slots`` slots and whose running batches get ``grace`` seconds to end
    on a stop; ``daemon_extra`` is more of its ``[daemon]`` table. Returns it
    once a task has run (so its worker is connected)."""
    from flotilla import Client

    site = home / "site.toml"
    site.write_text(
        SITE.format(
            worker=bin_path("flotilla-worker"), slots=slots, grace=grace, daemon_extra=daemon_extra
        )
    )
    env = _environment(home)
    log_path = home / "daemon.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(bin_path("flotilla")), "daemon", "--config", str(site)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    d = Daemon(home, env, process, log_path)

    def ready():
        if process.poll() is not None:
            raise AssertionError("the daemon exited at start:\n%s" % d.log())
        with Client(home) as client:
            # A task completes only once a worker has registered.
            return client.run("noop", timeout=1) is None

    try:
        wait_until("the daemon and its worker to answer", ready)
        d.workers = _worker_pids(d)
    except BaseException:
        stop_daemon(d)
        raise
    return d


def stop_daemon(d):
    """Stops ``d`` gracefully if it still runs, then kills whatever is left
    of it and of the workers it started."""
    workers = d.workers + _worker_pids(d)
    if d.process.poll() is None:
        d.cli("stop", "--timeout", "20", check=False)
    if d.process.poll() is None:
        d.process.kill()
    d.process.wait(timeout=30)
    for pid in set(workers):
        _kill_worker(pid)


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """A daemon with one connected worker (two slots), shared by the session."""
    d = start_daemon(tmp_path_factory.mktemp("flotilla-home"))
    try:
        yield d
    finally:
        stop_daemon(d)


@pytest.fixture
def own_daemon(tmp_path_factory):
    """A daemon of the test's own, for tests that stop it; its running
    batches get 30 s to end on a stop."""
    d = start_daemon(tmp_path_factory.mktemp("flotilla-own"), grace=30)
    try:
        yield d
    finally:
        stop_daemon(d)


@pytest.fixture
def wide_daemon(tmp_path_factory):
    """A daemon of the test's own whose worker has six slots: enough to run
    every task a test keeps in flight at once, whatever order they arrive in."""
    d = start_daemon(tmp_path_factory.mktemp("flotilla-wide"), slots=6)
    try:
        yield d
    finally:
        stop_daemon(d)


#: Seconds a blocking task sleeps: longer than any test runs, so it is still
#: running whenever a test looks, however loaded the machine.
BLOCKER_S = 3600


@pytest.fixture
def busy_client(tmp_path_factory):
    """A client of a daemon of the test's own whose worker's two slots are
    both running a task that outlasts the test, so whatever the test submits
    stays queued until the test acts on it. Yields ``(client, daemon)``."""
    from flotilla import Client, TaskState

    d = start_daemon(tmp_path_factory.mktemp("flotilla-busy"))
    try:
        with Client(d.home) as c:
            blockers = [c.submit("sleep", BLOCKER_S) for _ in range(2)]
            wait_until(
                "both blockers to run",
                lambda: all(c.status(b.task_id).state is TaskState.RUNNING for b in blockers),
            )
            yield c, d
    finally:
        stop_daemon(d)


@pytest.fixture
def client(daemon):
    """A blocking client of the session's daemon, closed after the test."""
    from flotilla import Client

    with Client(daemon.home) as c:
        yield c
