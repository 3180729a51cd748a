"""Waits that outlive their daemon: futures and ``map`` whose daemon stops
(or is killed) and starts again on the same state directory get their
results, since task ids are durable; a daemon that stays away ends the wait
after the client's ``reconnect_patience``, with the error that ended it."""

import threading
import time

import pytest
from conftest import start_daemon, stop_daemon, wait_until
from flotilla import Client, TaskState, errors

#: Seconds the task cut by the restart sleeps.
SLEEP_S = 3.0


def start(home):
    """A daemon whose one worker has one slot (so a second task stays
    queued) and which ends running tasks at once on a stop (so a stop cuts
    them, and they run again after the restart)."""
    return start_daemon(home, slots=1, grace=0)


def go_away(d, how):
    """Ends daemon ``d`` gracefully (``stop``) or with SIGKILL (``kill``),
    and the workers it started."""
    if how == "kill":
        d.process.kill()
        d.process.wait(timeout=30)
    stop_daemon(d)


def queued(d, servable):
    """How many ``servable`` tasks daemon ``d`` holds queued."""
    return sum(q["queued"] for q in d.status()["queues"] if q["servable"] == servable)


@pytest.fixture
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("flotilla-restart")


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_futures_outlive_a_daemon_restart(home, how):
    d = start(home)
    try:
        with Client(home) as client:
            running = client.submit("sleep", SLEEP_S)
            wait_until(
                "the sleep to run",
                lambda: client.status(running.task_id).state is TaskState.RUNNING,
            )
            waiting = client.submit("echo", {"after": "the restart"})
            assert client.status(waiting.task_id).state is TaskState.QUEUED
            go_away(d, how)
            # The daemon is gone and both tasks unfinished: the waits go on.
            assert not running.done() and not waiting.done()
            d = start(home)
            assert waiting.result(timeout=120) == {"after": "the restart"}
            assert running.result(timeout=120) is None
    finally:
        stop_daemon(d)


def test_map_outlives_a_daemon_restart(home):
    d = start(home)
    try:
        with Client(home) as client:
            blocker = client.submit("sleep", SLEEP_S)
            wait_until(
                "the blocker to run",
                lambda: client.status(blocker.task_id).state is TaskState.RUNNING,
            )
            outputs, failures = [], []

            def consume():
                try:
                    outputs.extend(client.map("echo", range(6), chunk=2, window=3))
                except BaseException as exc:  # reported by the test's thread
                    failures.append(exc)

            mapping = threading.Thread(target=consume)
            mapping.start()
            wait_until("every chunk of the map to be queued", lambda: queued(d, "echo") == 6)
            go_away(d, "stop")
            d = start(home)
            mapping.join(timeout=120)
            assert not mapping.is_alive(), "the map still waits two minutes after the restart"
            assert failures == []
            assert outputs == list(range(6))
            assert blocker.result(timeout=60) is None
    finally:
        stop_daemon(d)


def test_a_wait_gives_up_after_its_patience_when_the_daemon_stays_away(home):
    patience = 3.0
    d = start(home)
    try:
        with Client(home, reconnect_patience=patience) as client:
            forever = client.submit("sleep", 3600)
            wait_until(
                "the task to run",
                lambda: client.status(forever.task_id).state is TaskState.RUNNING,
            )
            go_away(d, "stop")
            gone = time.monotonic()
            with pytest.raises(errors.ConnectionLost) as caught:
                forever.result(timeout=patience + 60)
            # The patience counts from the moment the wait lost its daemon,
            # which is before the stop returned.
            assert time.monotonic() - gone < patience + 5
            message = str(caught.value)
            assert "did not answer again in" in message
            assert "reconnect_patience" in message
            tried = float(message.split("did not answer again in ")[1].split(" s")[0])
            assert patience <= tried < patience + 5
    finally:
        stop_daemon(d)


def test_following_task_events_goes_on_after_a_daemon_restart(home):
    d = start(home)
    try:
        with Client(home) as client:
            first = [client.submit("echo", i) for i in range(3)]
            assert [f.result(timeout=60) for f in first] == [0, 1, 2]
            seen, failures = [], []

            def follow():
                try:
                    for event in client.follow_task_events(poll=2.0):
                        seen.append(event)
                except BaseException as exc:  # reported by the test's thread
                    failures.append(exc)

            def ended():
                return {e.task_id for e in seen if e.kind == "finished"}

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            wait_until(
                "the follower to see the first tasks end",
                lambda: {f.task_id for f in first} <= ended(),
            )
            go_away(d, "kill")
            d = start(home)
            later = client.submit("echo", "after")
            assert later.result(timeout=120) == "after"
            # The new daemon's log is empty but numbered after the old one's:
            # the follower, asking after the last number it saw, gets it.
            wait_until("the follower to see the new task end", lambda: later.task_id in ended())
            assert failures == []
            kinds = [e.kind for e in seen if e.task_id == later.task_id]
            assert kinds == ["accepted", "dispatched", "finished"], kinds
            assert all(a.seq < b.seq for a, b in zip(seen, seen[1:]))
    finally:
        stop_daemon(d)
