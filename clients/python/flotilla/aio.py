"""``AsyncClient``: the client for asyncio code (notebooks, async workflows).

Every call is a coroutine; any number can be in flight on one client. This
is also the implementation behind the blocking :class:`~flotilla.Client`,
which runs it on a private event loop.
"""

import asyncio
import collections
import weakref

from . import home as home_dir
from . import mapping, messages
from .errors import ConnectionLost, ProtocolError, ShuttingDown, Timeout
from .futures import AsyncTaskFuture, settle
from .outcome import value_of
from .payload import encode_input, encode_params
from .servables import AsyncServables
from .transport import connect
from .views import TaskState

__all__ = ["AsyncClient", "DEFAULT_CALL_TIMEOUT", "DEFAULT_RECONNECT_PATIENCE"]

#: Seconds allowed for the daemon to answer a call that does not wait for
#: tasks (the Rust client's default too).
DEFAULT_CALL_TIMEOUT = 30.0
#: Extra seconds allowed beyond a held call's own wait for its reply.
WAIT_MARGIN = 10.0
#: The longest wait asked of the daemon in one call; longer waits repeat it.
LONGEST_WAIT_S = 86400.0
#: Most results one client waits for at once for futures (each wait is one
#: request the daemon holds); more futures queue for a turn.
MAX_HELD_WAITS = 1024
#: A held wait answered this much sooner than asked means the daemon is
#: draining (it answers waits at once then).
_EARLY_S = 1.0
#: Seconds a wait for tasks (futures, ``result``, ``map``) keeps trying when
#: its daemon goes away (stops, restarts, the connection breaks) before it
#: gives up; task ids are durable, so a daemon that comes back answers.
DEFAULT_RECONNECT_PATIENCE = 60.0
#: First pause between attempts to reach a daemon that went away; each
#: attempt doubles it, up to :data:`_RETRY_PAUSE_MAX_S`.
_RETRY_PAUSE_S = 0.1
_RETRY_PAUSE_MAX_S = 1.0


def _wait_ms(seconds):
    return int(max(0.0, seconds) * 1000)


def _patience(seconds):
    """``reconnect_patience`` checked: a finite number of seconds, 0 or more."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError("reconnect_patience must be a number of seconds, got %r" % (seconds,))
    if not 0 <= seconds < float("inf"):
        raise ValueError("reconnect_patience must be 0 or more seconds, got %r" % (seconds,))
    return float(seconds)


class _Outage:
    """A wait for tasks whose daemon went away: since when (loop time), the
    error that ended its last attempt, and whether the daemon could not be
    reached at all (rather than answering that it is shutting down)."""

    def __init__(self, error, since):
        self.error = error
        self.since = since
        self.unreachable = isinstance(error, ConnectionLost)
        self._pause = _RETRY_PAUSE_S

    def next_pause(self):
        """Seconds to pause before the next attempt (growing)."""
        pause = self._pause
        self._pause = min(self._pause * 2, _RETRY_PAUSE_MAX_S)
        return pause

    def given_up(self, tried_s, socket_path):
        """The error to raise after trying for ``tried_s`` seconds to reach
        the daemon at ``socket_path`` again."""
        if self.unreachable:
            error = ConnectionLost(
                "the daemon at %s went away while tasks were awaited (%s) and did not answer "
                "again in %.1f s of trying (the client's reconnect_patience); the daemon keeps "
                "the tasks: fetch their results once it runs again"
                % (socket_path, self.error, tried_s)
            )
        else:
            error = ShuttingDown(
                "%s (waited %.1f s for it to run again: the client's reconnect_patience)"
                % (self.error.message, tried_s)
            )
        error.__cause__ = self.error
        return error


def _only(items, what):
    """The one item of a reply about one task."""
    if len(items) != 1:
        raise ProtocolError("the daemon answered one %s with %d" % (what, len(items)))
    return items[0]


def _servable_name(name):
    if not isinstance(name, str) or not name.strip():
        raise TypeError(
            "the servable is named by a non-empty string (NAME or NAME@VERSION), got %r" % (name,)
        )
    return name


class AsyncClient:
    """A connection to a Flotilla daemon, for asyncio code.

    ``home`` is the daemon's state directory; by default ``$FLOTILLA_HOME``,
    else ``~/.flotilla``, as for the ``flotilla`` CLI. Connecting fails at
    once with :class:`~flotilla.errors.DaemonNotRunning` if no daemon is
    there. ``call_timeout`` bounds calls that do not wait for tasks.

    Waits for tasks (futures, :meth:`result`, :meth:`map`) outlive a
    daemon restart: when the daemon goes away they try to reach it again
    for up to ``reconnect_patience`` seconds (0: not at all) and carry on
    waiting once it answers; past that they raise the error that ended the
    wait, saying how long they tried.

    Use it as ``async with AsyncClient() as client: ...`` or call
    :meth:`close` when done.
    """

    def __init__(
        self,
        home=None,
        call_timeout=DEFAULT_CALL_TIMEOUT,
        reconnect_patience=DEFAULT_RECONNECT_PATIENCE,
    ):
        #: The daemon's state directory.
        self.home = home_dir.state_dir(home)
        self.call_timeout = call_timeout
        #: Seconds a wait for tasks tries to reach a daemon that went away.
        self.reconnect_patience = _patience(reconnect_patience)
        self._connection = connect(self.home)
        self._held = weakref.WeakKeyDictionary()  # event loop -> semaphore
        self._background = set()
        #: Catalog calls: ``search``, ``show``, ``list``, ``versions``.
        self.servables = AsyncServables(self)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        self.close()

    def close(self):
        """Closes the connection; calls in flight end with an error."""
        self._connection.close()

    async def _call(self, frame, wait_s=None, timeout=None):
        """One round trip; ``wait_s`` is how long the daemon may hold it,
        ``timeout`` (seconds) replaces the limit that follows from it."""
        if timeout is None:
            timeout = self.call_timeout if wait_s is None else wait_s + WAIT_MARGIN
        return messages.decode_reply(await self._connection.request(frame, timeout))

    def _max_frame_bytes(self):
        """The daemon's message limit, as the connection knows it."""
        return getattr(self._connection, "max_frame_bytes", messages.DEFAULT_MAX_FRAME_BYTES)

    def _spawn(self, coro, loop=None):
        """Runs ``coro`` in the background on ``loop`` (default: the running
        one), keeping it referenced until done."""
        task = (loop or asyncio.get_running_loop()).create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def ping(self):
        """Checks that the daemon answers; returns its process id."""
        pid, _release = (await self._call(messages.ping())).as_pong()
        return pid

    async def run(self, name, input=None, params=None, timeout=None):
        """Runs servable ``name`` on ``input`` and returns its output.

        ``name`` is ``NAME`` (latest version) or ``NAME@VERSION``; ``params``
        a dict of the servable's parameters. Waits for the task to finish,
        at most ``timeout`` seconds when given (then raises
        :class:`~flotilla.errors.Timeout`, whose ``task_id`` lets you fetch
        the result later). A failed task raises
        :class:`~flotilla.errors.TaskFailed` with the servable's message.
        """
        request = [_servable_name(name), encode_input(input), encode_params(params)]
        wait_s = LONGEST_WAIT_S if timeout is None else min(float(timeout), LONGEST_WAIT_S)
        reply = await self._call(messages.submit([request], _wait_ms(wait_s)), wait_s)
        view = _only(reply.as_results(), "task's result")
        if not view.is_final and timeout is None:
            view = _only(await self._wait_views([view.id], None), "task's result")
        return value_of(view, timeout)

    async def _submit_ids(self, requests):
        return (await self._call(messages.submit(requests, None))).as_submitted()

    async def _submit_patiently(self, frame):
        """Submits the ``Submit`` ``frame`` and returns the ids. A daemon
        shutting down refuses it having stored nothing, so it is asked
        again once it runs again (for :attr:`reconnect_patience` seconds);
        a connection lost in the middle is raised, since the daemon may
        have stored the tasks."""
        loop = asyncio.get_running_loop()
        outage = None
        while True:
            if outage is not None:
                await self._reach_again(outage, None)
            started = loop.time()
            try:
                return (await self._call(frame)).as_submitted()
            except ShuttingDown as exc:
                outage = outage or _Outage(exc, started)
                outage.error, outage.unreachable = exc, False

    async def submit(self, name, input=None, params=None):
        """Submits one task and returns an :class:`AsyncTaskFuture` for its
        output, once the daemon has stored the task durably.

        ``await future`` gives the output (or raises as :meth:`run` does);
        ``future.task_id`` is its id on the daemon.
        """
        name = _servable_name(name)
        request = [name, encode_input(input), encode_params(params)]
        task_id = _only(await self._submit_ids([request]), "submission's ids")
        future = AsyncTaskFuture(self, task_id, name, asyncio.get_running_loop())
        waiter = self._spawn(self._final_view(task_id))

        def done(task):
            if task.cancelled():
                return
            if task.exception() is not None:
                if not future.done():
                    future.set_exception(task.exception())
                return
            settle(future, task.result(), asyncio.Future.cancel)

        waiter.add_done_callback(done)
        future.add_done_callback(lambda f: waiter.cancel() if f.cancelled() else None)
        return future

    async def _final_view(self, task_id):
        """Waits (with no limit) until ``task_id`` is final; returns its view.
        At most :data:`MAX_HELD_WAITS` such waits are held at once."""
        loop = asyncio.get_running_loop()
        held = self._held.get(loop)
        if held is None:
            held = self._held[loop] = asyncio.Semaphore(MAX_HELD_WAITS)
        async with held:
            return _only(await self._wait_views([task_id], None), "task's result")

    async def _wait_views(self, ids, deadline):
        """Views of ``ids`` once all are final, or at ``deadline`` (loop time;
        ``None``: no limit). Each round is one call the daemon holds. A
        daemon that goes away (a broken connection, or waits answered at
        once because it is shutting down) is tried again for
        :attr:`reconnect_patience` seconds."""
        loop = asyncio.get_running_loop()
        latest = {}
        pending = list(dict.fromkeys(ids))
        outage = None
        while pending:
            if deadline is None:
                wait_s = LONGEST_WAIT_S
            else:
                wait_s = min(deadline - loop.time(), LONGEST_WAIT_S)
                if wait_s <= 0:
                    if outage is not None:
                        raise self._give_up(outage)
                    if all(i in latest for i in pending):
                        break
                    # The deadline passed before a first look (a slow
                    # submit): one look without waiting, so every id has a view.
                    wait_s = 0.0
            if outage is not None:
                await self._reach_again(outage, deadline)
            started = loop.time()
            try:
                reply = await self._call(messages.results(pending, _wait_ms(wait_s)), wait_s)
            except ConnectionLost as exc:
                outage = outage or _Outage(exc, started)
                outage.unreachable = True
                continue
            for view in reply.as_results():
                latest[view.id] = view
            pending = [
                i
                for i in pending
                if not latest[i].is_final and latest[i].state is not TaskState.UNKNOWN
            ]
            if pending and loop.time() - started < wait_s - _EARLY_S:
                view = latest[pending[0]]
                stopping = ShuttingDown(
                    "the daemon is shutting down; task %d (%s) is still %s: fetch its result with "
                    "result(%d) once the daemon runs again"
                    % (view.id, view.servable, view.state.value, view.id)
                )
                outage = outage or _Outage(stopping, started)
                outage.error, outage.unreachable = stopping, False
                continue
            outage = None
        return [latest[i] for i in ids]

    async def _reach_again(self, outage, deadline):
        """Returns once the daemon of a wait that lost it answers again;
        raises the error that ended the wait (saying how long it tried) when
        :attr:`reconnect_patience`, or the wait's own ``deadline``, runs
        out first."""
        loop = asyncio.get_running_loop()
        give_up = outage.since + self.reconnect_patience
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            left = give_up - loop.time()
            if left <= 0:
                raise self._give_up(outage)
            await asyncio.sleep(min(outage.next_pause(), left))
            left = give_up - loop.time()
            if left <= 0:
                continue
            try:
                await self._call(messages.ping(), timeout=left)
                return
            except (ConnectionLost, Timeout):
                outage.unreachable = True

    def _give_up(self, outage):
        """The error a wait that lost its daemon ends with: the one that
        ended it (unchanged when the client was not to try again), saying
        how long the client tried."""
        if self.reconnect_patience == 0:
            return outage.error
        tried_s = asyncio.get_running_loop().time() - outage.since
        return outage.given_up(tried_s, self._connection.socket_path)

    async def result(self, task_id, timeout=None):
        """The output of a submitted task, waiting until it is finished (at
        most ``timeout`` seconds when given); raises as :meth:`run` does."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + float(timeout)
        view = _only(await self._wait_views([task_id], deadline), "task's result")
        return value_of(view, timeout)

    async def task_events(self, after=0, wait=None, servable=None, ids=()):
        """Events of your tasks after sequence number ``after`` (0: from
        the oldest the daemon keeps), as ``([TaskEvent], last)``: ask after
        ``last`` next. With ``wait`` (seconds), held until there is one.
        ``servable`` (``NAME`` or ``NAME@VERSION``) and ``ids`` (task ids,
        and ``(first, last)`` ranges) narrow them."""
        wait_s = None if wait is None else min(float(wait), LONGEST_WAIT_S)
        wait_ms = None if wait_s is None else _wait_ms(wait_s)
        frame = messages.task_events(after, wait_ms, servable, ids)
        return (await self._call(frame, wait_s)).as_task_events()

    async def follow_task_events(self, servable=None, ids=(), after=0, poll=30.0):
        """Yields each :class:`~flotilla.views.TaskEvent` of your tasks
        as it happens (those already kept first, after ``after``), for as
        long as it is iterated. Following outlives a daemon restart as waits
        do: a daemon that goes away is tried again for
        :attr:`reconnect_patience` seconds, and the new daemon's events
        follow (they are numbered after the old one's)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                events, after = await self.task_events(after, poll, servable, ids)
            except (ConnectionLost, ShuttingDown) as exc:
                await self._reach_again(_Outage(exc, started), None)
                continue
            for event in events:
                yield event

    async def status(self, task_id):
        """The task's :class:`~flotilla.views.TaskView`: state, attempts,
        worker and timings (no output; see :meth:`result`)."""
        views = (await self._call(messages.task_status([task_id]))).as_task_status()
        return _only(views, "task's status")

    async def cancel(self, task_id):
        """Cancels a task that has not finished; returns its
        :class:`~flotilla.views.TaskState` afterwards (``CANCELLED``, or the
        state it had already reached)."""
        states = (await self._call(messages.cancel([task_id]))).as_cancelled()
        return _only(states, "cancel")[1]

    def _cancel_in_background(self, task_id, loop):
        """Asks the daemon to cancel ``task_id`` without waiting for it; the
        request runs on ``loop``."""

        async def cancel():
            try:
                await self.cancel(task_id)
            except Exception:  # best effort: the caller is no longer waiting
                pass

        self._spawn(cancel(), loop)

    async def _cancel_ids(self, ids):
        """Cancels ``ids`` (a collection read now, on the loop), best effort."""
        ids = sorted(ids)
        if ids:
            try:
                await self._call(messages.cancel(ids))
            except Exception:  # best effort: map is being abandoned
                pass

    async def map(
        self,
        name,
        inputs,
        params=None,
        chunk=mapping.DEFAULT_CHUNK,
        window=mapping.DEFAULT_WINDOW,
        timeout=None,
        return_exceptions=False,
    ):
        """Runs servable ``name`` on every input; an async generator of the
        outputs, in input order.

        ``inputs`` is any iterable or async iterable; it is read ``chunk``
        inputs at a time, each chunk one request, with at most ``window``
        chunks submitted and unfinished at once. ``params`` apply to every
        input. ``timeout`` bounds the whole map, in seconds. A failed task
        raises :class:`~flotilla.errors.TaskFailed` when its turn comes (the
        rest are then cancelled), unless ``return_exceptions`` puts the
        exception in the output's place. Leaving the loop early cancels the
        tasks still running when the generator is closed: wrap it in
        ``contextlib.aclosing`` (or call ``aclose()``) for that to happen at
        once rather than when it is garbage-collected.
        """
        mapping.check_shape(chunk, window)
        name = _servable_name(name)
        params_bytes = encode_params(params)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + float(timeout)
        runs = mapping.ChunkRuns(self)
        running = collections.deque()
        budget = mapping.chunk_budget(self._max_frame_bytes())
        source = mapping.achunks(inputs, name, params_bytes, chunk, budget).__aiter__()
        exhausted = False
        try:
            while True:
                while not exhausted and len(running) < window:
                    try:
                        requests = await source.__anext__()
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    frame = mapping.submit_frame(requests)
                    running.append(asyncio.ensure_future(runs.run(frame, deadline)))
                if not running:
                    return
                views = await running.popleft()
                for value in mapping.outputs(views, return_exceptions, timeout):
                    yield value
        finally:
            # The daemon cancels the tasks first; the waits it holds for them
            # are then answered, so the chunks still running end by
            # themselves. Cancelling a receive nng holds is not relied on:
            # pynng does not always see it complete (pynng issue 128), and
            # the map would hang on it.
            await runs.abandon()
            if running:
                _done, stuck = await asyncio.wait(running, timeout=mapping.ABANDON_WAIT_S)
                for task in stuck:
                    task.cancel()
