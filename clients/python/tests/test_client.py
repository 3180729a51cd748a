"""The blocking client against a real daemon and worker: run, submit and
futures, status, result, cancel, and the errors a user meets."""

import concurrent.futures
import subprocess

import pytest
from conftest import bin_path, wait_until
from flotilla import Client, TaskFuture, TaskState, errors


def test_run_returns_the_output(client):
    assert client.run("echo", {"x": 1, "y": [1.5, "two", None]}) == {
        "x": 1,
        "y": [1.5, "two", None],
    }
    assert client.run("noop") is None
    assert client.run("echo", b"\x00bytes\xff") == b"\x00bytes\xff"
    assert client.ping() > 0


def test_run_finds_the_daemon_through_flotilla_home(daemon, monkeypatch):
    monkeypatch.setenv("FLOTILLA_HOME", str(daemon.home))
    with Client() as client:
        assert client.home == str(daemon.home)
        assert client.run("echo", "via the environment") == "via the environment"


def test_a_failed_task_raises_with_the_servables_message(client):
    with pytest.raises(errors.TaskFailed) as caught:
        client.run("sleep", "not a number")
    failure = caught.value
    assert failure.reason == "sleep: input must be a number of seconds, e.g. 0.5"
    assert failure.servable == "sleep"
    assert str(failure) == "task %d (sleep) failed: %s" % (failure.task_id, failure.reason)
    assert client.status(failure.task_id).state is TaskState.FAILED


def test_refusals_carry_the_daemons_message(client):
    with pytest.raises(errors.BadRequest) as caught:
        client.run("no-such-servable", 1)
    assert "unknown servable `no-such-servable`" in str(caught.value)
    assert caught.value.kind == "BadRequest"
    with pytest.raises(errors.BadRequest, match="builtin and has no versions"):
        client.submit("sleep@1.0.0", 0)
    with pytest.raises(errors.ServableNotFound, match="unknown servable `no-such-servable`"):
        client.servables.show("no-such-servable")
    with pytest.raises(errors.PayloadError, match="set"):
        client.run("echo", {1, 2, 3})


def test_run_with_a_timeout_leaves_the_task_to_fetch_later(client):
    with pytest.raises(errors.Timeout) as caught:
        client.run("sleep", 1.0, timeout=0.2)
    task_id = caught.value.task_id
    assert task_id is not None and "result(%d)" % task_id in str(caught.value)
    # The time-out abandoned the wait, not the task: it is not cancelled,
    # and its result is there to fetch once it ends.
    assert client.status(task_id).state in (
        TaskState.QUEUED,
        TaskState.RUNNING,
        TaskState.COMPLETED,
    )
    assert client.result(task_id) is None
    assert client.status(task_id).state is TaskState.COMPLETED


def test_submit_returns_concurrent_futures(client):
    futures = [client.submit("echo", i) for i in range(20)]
    assert all(
        isinstance(f, concurrent.futures.Future) and isinstance(f, TaskFuture) for f in futures
    )
    assert len({f.task_id for f in futures}) == 20
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == list(range(20))
    assert futures[3].status().state is TaskState.COMPLETED


def test_futures_report_failures_and_call_back(client):
    called = []
    good = client.submit("sleep", 0.05)
    bad = client.submit("sleep", -1)
    good.add_done_callback(lambda f: called.append(f.result()))
    assert good.result(timeout=60) is None
    with pytest.raises(errors.TaskFailed, match="between 0 and"):
        bad.result(timeout=60)
    assert isinstance(bad.exception(), errors.TaskFailed)
    wait_until("the done-callback to run", lambda: called == [None])


def test_a_future_waits_without_a_time_limit_and_times_out_on_request(client):
    future = client.submit("sleep", 0.5)
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.05)
    assert future.result(timeout=60) is None


def test_cancelling_a_queued_task_cancels_its_future(busy_client, client):
    # Both worker slots are held for longer than the test runs, so the task
    # stays queued until it is cancelled.
    busy, _daemon = busy_client
    queued = busy.submit("sleep", 0)
    assert busy.status(queued.task_id).state is TaskState.QUEUED
    assert queued.cancel() is True
    assert queued.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result()
    assert busy.status(queued.task_id).state is TaskState.CANCELLED
    done = client.submit("echo", 1)
    assert done.result(timeout=60) == 1
    assert done.cancel() is False  # already done


def test_a_task_cancelled_elsewhere_cancels_its_future(busy_client):
    busy, daemon = busy_client
    queued = busy.submit("sleep", 0)
    daemon.cli("cancel", queued.task_id)
    assert wait_until("the future to be cancelled", queued.cancelled)


def test_one_client_serves_many_threads(client):
    def work(n):
        return [client.run("echo", [n, i]) for i in range(25)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [[[n, i] for i in range(25)] for n in range(8)]


def test_the_blocking_client_refuses_calls_from_its_own_callbacks(busy_client):
    # The task stays queued behind the blockers, so its future is not done
    # when the callback is added (a callback added to a done future runs at
    # once in the caller's thread, where calls are allowed); a cancel from
    # elsewhere then completes it on the client's own thread.
    busy, daemon = busy_client
    seen = []

    def callback(future):
        try:
            busy.run("noop", timeout=5)
        except errors.FlotillaError as exc:
            seen.append(str(exc))

    queued = busy.submit("sleep", 0)
    queued.add_done_callback(callback)
    daemon.cli("cancel", queued.task_id)
    wait_until("the callback", lambda: seen)
    assert "cannot be called from a future's callback" in seen[0]


def test_result_of_an_unknown_task_says_so(client):
    with pytest.raises(errors.TaskUnknown, match="task 987654321 is unknown"):
        client.result(987654321)
    assert client.status(987654321).state is TaskState.UNKNOWN


def test_a_stopping_daemon_ends_waits_with_shutting_down(own_daemon):
    # A client that is not to wait for the daemon to come back (waits that
    # outlive a restart are in test_restart.py).
    with Client(own_daemon.home, reconnect_patience=0) as client:
        # The blockers run long enough for the stop to arrive while they
        # still hold both slots (so the third task is still queued then),
        # and end well within the daemon's grace period.
        blockers = [client.submit("sleep", 8.0) for _ in range(2)]
        wait_until(
            "both blockers to run",
            lambda: all(client.status(b.task_id).state is TaskState.RUNNING for b in blockers),
        )
        queued = client.submit("sleep", 1.0)
        assert client.status(queued.task_id).state is TaskState.QUEUED
        stopping = subprocess.Popen(
            [str(bin_path("flotilla")), "stop", "--timeout", "30"],
            env=own_daemon.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # The queued task stays queued for the next start; the wait for
            # it ends at once with a typed error instead of hanging.
            with pytest.raises(errors.ShuttingDown, match="still queued") as caught:
                queued.result(timeout=30)
            assert "result(%d)" % queued.task_id in str(caught.value)
            # Running tasks finish within the grace period.
            assert [b.result(timeout=30) for b in blockers] == [None, None]
        finally:
            assert stopping.wait(timeout=60) == 0
