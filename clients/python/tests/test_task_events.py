"""Following task events with the Python client, against a real daemon:
each of the caller's tasks is seen accepted, dispatched and finished (or
failed, with the reason), in order, and filters keep the rest out."""

import itertools

import pytest
from flotilla import TaskEvent, errors


def _until_final(client, **filters):
    """Events from ``follow_task_events`` up to the first final one."""
    final = {"finished", "failed", "cancelled"}
    events = []
    for event in client.follow_task_events(poll=5.0, **filters):
        events.append(event)
        if event.kind in final:
            return events
    return events


def test_a_task_is_followed_from_acceptance_to_its_end(client):
    task_id = client.submit("echo", "hello").task_id
    assert client.result(task_id, timeout=60) == "hello"
    events = _until_final(client, ids=[task_id])
    assert [e.kind for e in events] == ["accepted", "dispatched", "finished"]
    assert all(isinstance(e, TaskEvent) and e.task_id == task_id for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[1].worker and events[1].attempt == 1


def test_a_failure_s_reason_is_in_its_event_and_filters_narrow(client):
    future = client.submit("sleep", "not a number")
    with pytest.raises(errors.TaskFailed):
        future.result(timeout=60)
    events = _until_final(client, servable="sleep", ids=[(future.task_id, future.task_id)])
    assert events[-1].kind == "failed"
    assert "number of seconds" in events[-1].message
    # Nothing of another servable passes a servable filter.
    events, last = client.task_events(servable="no-such-servable")
    assert events == [] and last > 0
    # A range runs first to last.
    with pytest.raises(ValueError, match="first id is above its last"):
        client.task_events(ids=[(9, 3)])


def test_the_async_client_follows_too(client):
    import asyncio

    from flotilla import AsyncClient

    task_id = client.submit("noop").task_id
    client.result(task_id, timeout=60)

    async def follow():
        async with AsyncClient(client.home) as aio:
            stream = aio.follow_task_events(ids=[task_id], poll=5.0)
            return [e.kind async for e in _take(stream, 3)]

    assert asyncio.run(follow()) == ["accepted", "dispatched", "finished"]


async def _take(stream, n):
    async for item in stream:
        yield item
        n -= 1
        if n == 0:
            return


def test_following_can_stop_and_resume_from_a_sequence_number(client):
    ids = [client.submit("noop").task_id for _ in range(3)]
    for task_id in ids:
        client.result(task_id, timeout=60)
    first = list(itertools.islice(client.follow_task_events(ids=ids, poll=5.0), 2))
    rest, _ = client.task_events(after=first[-1].seq, ids=ids)
    assert rest and all(e.seq > first[-1].seq for e in rest)
