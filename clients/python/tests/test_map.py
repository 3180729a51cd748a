"""``Client.map`` against a real daemon: 10,000 inputs in order, streaming
from a generator, failures in place, and early exits that cancel the rest."""

import pytest
from conftest import wait_until
from flotilla import Client, errors


def test_map_over_ten_thousand_inputs_keeps_their_order(client):
    inputs = [{"i": i, "tag": "x" * (i % 7)} for i in range(10_000)]
    outputs = list(client.map("echo", inputs, chunk=500, window=4))
    assert outputs == inputs


def test_map_streams_from_a_generator_with_the_default_shape(client):
    consumed = []

    def inputs():
        for i in range(10_000):
            consumed.append(i)
            yield i

    results = client.map("echo", inputs())
    assert consumed == []  # nothing is read before the first result is asked for
    first = next(results)
    assert first == 0
    # Only a bounded window of chunks was read ahead, not the whole input.
    assert len(consumed) < 10_000
    assert [first] + list(results) == list(range(10_000))


def test_map_splits_big_inputs_into_several_requests(client):
    big = "y" * (3 << 20)  # 3 MiB each: chunks close at 8 MiB, far below the frame cap
    assert list(client.map("echo", [big] * 5, chunk=1000)) == [big] * 5


def test_map_with_params_and_an_empty_input(client):
    assert list(client.map("echo", [], params={"k": 1})) == []
    assert list(client.map("echo", iter([1, 2]), params={"k": 1})) == [1, 2]


def test_a_failure_stops_map_at_its_turn(client):
    results = client.map("sleep", [0, 0, "bad", 0, 0], chunk=2)
    assert next(results) is None
    assert next(results) is None
    with pytest.raises(errors.TaskFailed, match="sleep: input must be a number of seconds"):
        next(results)


def test_return_exceptions_puts_failures_in_place(client):
    results = list(client.map("sleep", [0, "bad", 0, -1], chunk=3, return_exceptions=True))
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], errors.TaskFailed) and "number of seconds" in results[1].reason
    assert isinstance(results[3], errors.TaskFailed) and "between 0 and" in results[3].reason


def test_closing_map_early_cancels_the_tasks_still_running(wide_daemon):
    """Two quick tasks and long ones; closing the map after the first output
    cancels every long one it submitted. The worker has a slot for each task
    the window holds (3 chunks of 2), so the quick ones finish whatever else
    runs, and the long ones cannot end on their own before the close."""
    daemon = wide_daemon
    before = daemon.status()["totals"]

    def accepted():
        return daemon.status()["totals"]["accepted"] - before["accepted"]

    with Client(daemon.home) as client:
        results = client.map("sleep", [0, 0] + [3600] * 10, chunk=2, window=3)
        assert next(results) is None
        # The window's later chunks go out in the background: close once the
        # second one has, so there is something to cancel.
        wait_until("the second chunk to be accepted", lambda: accepted() >= 4)
        results.close()
    after = daemon.status()["totals"]
    submitted = after["accepted"] - before["accepted"]
    # Chunks not yet sent never are, and every task sent beyond the first
    # chunk was cancelled, not left to run.
    assert 4 <= submitted <= 6
    assert after["completed"] - before["completed"] == 2
    assert after["cancelled"] - before["cancelled"] == submitted - 2


def test_map_timeout_bounds_the_whole_map(client):
    with pytest.raises(errors.Timeout) as caught:
        list(client.map("sleep", [0.5] * 4, chunk=1, timeout=0.2))
    assert caught.value.task_id is not None
