"""``AsyncClient`` against a real daemon, as notebooks and async workflows
use it: many calls in flight on one connection, awaitable futures, ``map``
as an async generator."""

import asyncio

import pytest
from flotilla import AsyncClient, AsyncTaskFuture, TaskState, errors


def run(coro):
    return asyncio.run(coro)


def test_run_and_many_concurrent_calls(daemon):
    async def main():
        async with AsyncClient(daemon.home) as client:
            assert await client.run("echo", {"a": 1}) == {"a": 1}
            outputs = await asyncio.gather(*(client.run("echo", i) for i in range(200)))
            assert outputs == list(range(200))
            assert await client.ping() > 0

    run(main())


def test_submit_returns_awaitable_futures(daemon):
    async def main():
        async with AsyncClient(daemon.home) as client:
            futures = [await client.submit("echo", i) for i in range(10)]
            assert all(isinstance(f, AsyncTaskFuture) for f in futures)
            assert await asyncio.gather(*futures) == list(range(10))
            status = await client.status(futures[0].task_id)
            assert status.state is TaskState.COMPLETED
            assert await client.result(futures[1].task_id) == 1
            failing = await client.submit("sleep", "x")
            with pytest.raises(errors.TaskFailed, match="number of seconds"):
                await failing

    run(main())


def test_cancelling_an_async_future_cancels_the_task(daemon):
    async def main():
        async with AsyncClient(daemon.home) as client:
            future = await client.submit("sleep", 2.0)
            future.cancel()
            with pytest.raises(asyncio.CancelledError):
                await future

            async def cancelled():
                return (await client.status(future.task_id)).state is TaskState.CANCELLED

            deadline = asyncio.get_running_loop().time() + 30
            while not await cancelled():
                assert asyncio.get_running_loop().time() < deadline, "the task was not cancelled"
                await asyncio.sleep(0.01)

    run(main())


def test_async_map_streams_in_order_from_an_async_iterable(daemon):
    async def inputs():
        for i in range(10_000):
            yield {"i": i}

    async def main():
        async with AsyncClient(daemon.home) as client:
            outputs = [o async for o in client.map("echo", inputs(), chunk=1000)]
            assert outputs == [{"i": i} for i in range(10_000)]
            mixed = [o async for o in client.map("sleep", [0, "bad"], return_exceptions=True)]
            assert mixed[0] is None and isinstance(mixed[1], errors.TaskFailed)

    run(main())


def test_async_errors_are_the_same_types(daemon, tmp_path):
    async def main():
        async with AsyncClient(daemon.home) as client:
            with pytest.raises(errors.BadRequest, match="unknown servable"):
                await client.run("no-such-servable")
            with pytest.raises(errors.ServableNotFound):
                await client.servables.show("no-such-servable")
            with pytest.raises(errors.Timeout) as caught:
                await client.run("sleep", 0.5, timeout=0.05)
            assert await client.result(caught.value.task_id) is None
            hits = await client.servables.search()
            assert isinstance(hits, list)

    run(main())
    with pytest.raises(errors.DaemonNotRunning):
        AsyncClient(tmp_path)


def test_the_async_client_can_live_in_a_long_running_loop(daemon):
    """A notebook keeps one loop and one client across cells."""
    loop = asyncio.new_event_loop()
    try:
        client = AsyncClient(daemon.home)
        assert loop.run_until_complete(client.run("echo", 1)) == 1
        future = loop.run_until_complete(client.submit("echo", 2))
        assert loop.run_until_complete(future) == 2
        client.close()
    finally:
        loop.close()


def test_closing_async_map_cancels_the_tasks_still_running(wide_daemon):
    """Two quick tasks and long ones; closing the map after the first output
    cancels every long one it submitted. The worker has a slot for each task
    the window holds (3 chunks of 2), so the quick ones finish whatever order
    the chunks reach the daemon in, and the long ones are still running when
    the map is closed: none can end on its own first."""
    daemon = wide_daemon
    before = daemon.status()["totals"]

    def accepted():
        return daemon.status()["totals"]["accepted"] - before["accepted"]

    async def main():
        async with AsyncClient(daemon.home) as client:
            results = client.map("sleep", [0, 0] + [3600] * 10, chunk=2, window=3)
            assert await results.__anext__() is None
            # The window's later chunks go out on this loop: close once the
            # second one has, so there is something to cancel.
            deadline = asyncio.get_running_loop().time() + 30
            while accepted() < 4:
                assert asyncio.get_running_loop().time() < deadline, "chunk 2 was not accepted"
                await asyncio.sleep(0.01)
            await results.aclose()

    run(main())
    after = daemon.status()["totals"]
    submitted = after["accepted"] - before["accepted"]
    assert 4 <= submitted <= 6
    assert after["completed"] - before["completed"] == 2
    assert after["cancelled"] - before["cancelled"] == submitted - 2


def test_a_wait_whose_deadline_passed_before_it_began_still_returns_every_view(daemon):
    # A slow submit (a loaded machine) can use up a short timeout before the
    # first look at the tasks; the views must still come back, not-final
    # ones included, for the caller to raise its Timeout.
    async def main():
        async with AsyncClient(daemon.home) as client:
            done = await client.submit("echo", 1)
            await done
            slow = await client.submit("sleep", 30)
            ids = [done.task_id, slow.task_id]
            past = asyncio.get_running_loop().time() - 1
            views = await client._wait_views(ids, past)
            assert [v.id for v in views] == ids
            assert views[0].state is TaskState.COMPLETED
            assert not views[1].is_final
            await client.cancel(slow.task_id)

    run(main())
