"""``Client``: the blocking client for scripts and workflow code.

Call a servable like a function (:meth:`Client.run`), as a future
(:meth:`Client.submit`), or over many inputs (:meth:`Client.map`). Each
method is the :class:`~flotilla.AsyncClient` coroutine of the same name run
on a private event loop thread, so futures and ``map`` can keep many
requests outstanding while the caller's thread simply waits.
"""

import collections
import concurrent.futures
import os

from . import mapping
from .aio import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_RECONNECT_PATIENCE,
    AsyncClient,
    _only,
    _servable_name,
)
from .errors import FlotillaError
from .futures import TaskFuture, settle
from .loop import LoopThread
from .payload import encode_input, encode_params
from .servables import Servables

__all__ = ["Client"]



class Client:
    """A connection to a Flotilla daemon.

    ``home`` is the daemon's state directory; by default ``$FLOTILLA_HOME``,
    else ``~/.flotilla``, as for the ``flotilla`` CLI. Connecting fails at
    once with :class:`~flotilla.errors.DaemonNotRunning` if no daemon is
    there. ``call_timeout`` bounds calls that do not wait for tasks.

    Waits for tasks (futures, :meth:`result`, :meth:`map`) outlive a daemon
    restart: when the daemon goes away they try to reach it again for up to
    ``reconnect_patience`` seconds (default
    :data:`~flotilla.aio.DEFAULT_RECONNECT_PATIENCE`; 0: not at all) and
    carry on waiting once it answers (task ids are durable); past that they
    raise the error that ended the wait
    (:class:`~flotilla.errors.ConnectionLost`, or
    :class:`~flotilla.errors.ShuttingDown` if the daemon kept answering
    that it is stopping), saying how long they tried.

    A client may be shared by threads. It belongs to the process that made
    it: after a fork, make a new one in the child. Use it as ``with
    Client() as client: ...`` or call :meth:`close` when done.
    """

    def __init__(
        self,
        home=None,
        call_timeout=DEFAULT_CALL_TIMEOUT,
        reconnect_patience=DEFAULT_RECONNECT_PATIENCE,
    ):
        self._core = AsyncClient(home, call_timeout, reconnect_patience)
        self._pid = os.getpid()
        self._loop = LoopThread()
        #: The daemon's state directory.
        self.home = self._core.home
        #: Catalog calls: ``search``, ``show``, ``list``, ``versions``.
        self.servables = Servables(self._run, self._core.servables)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return "<flotilla.Client home=%r>" % self.home

    def close(self):
        """Closes the connection and stops the client's thread. Futures not
        yet done stay unresolved; their tasks go on running on the daemon."""
        # The connection first: calls still in flight end at once with an
        # error, so the loop's thread never waits on a receive nng holds.
        self._core.close()
        self._loop.close()

    def _check_process(self):
        if os.getpid() != self._pid:
            raise FlotillaError(
                "this Client was made in process %d, before a fork; make a new Client in "
                "process %d" % (self._pid, os.getpid())
            )

    def _run(self, coro):
        try:
            self._check_process()
        except FlotillaError:
            coro.close()
            raise
        return self._loop.run(coro)

    def ping(self):
        """Checks that the daemon answers; returns its process id."""
        return self._run(self._core.ping())

    def run(self, name, input=None, params=None, timeout=None):
        """Runs servable ``name`` on ``input`` and returns its output.

        ``name`` is ``NAME`` (latest version) or ``NAME@VERSION``; ``params``
        a dict of the servable's parameters. Waits for the task to finish,
        at most ``timeout`` seconds when given (then raises
        :class:`~flotilla.errors.Timeout`, whose ``task_id`` lets you fetch
        the result later with :meth:`result`). A failed task raises
        :class:`~flotilla.errors.TaskFailed` carrying the servable's message.
        """
        return self._run(self._core.run(name, input, params, timeout))

    def submit(self, name, input=None, params=None):
        """Submits one task; returns a :class:`~flotilla.futures.TaskFuture`
        (a ``concurrent.futures.Future``) once the daemon has stored it.

        ``future.result()`` gives the output or raises as :meth:`run` does;
        ``future.task_id`` is the task's id on the daemon.
        """
        name = _servable_name(name)
        request = [name, encode_input(input), encode_params(params)]
        task_id = _only(self._run(self._core._submit_ids([request])), "submission's ids")
        future = TaskFuture(self, task_id, name)
        waiter = self._loop.submit(self._core._final_view(task_id))

        def done(waited):
            if waited.cancelled():
                return
            error = waited.exception()
            if error is not None:
                if not future.done():
                    future.set_exception(error)
                return
            settle(future, waited.result(), concurrent.futures.Future.cancel)

        waiter.add_done_callback(done)
        future.add_done_callback(lambda f: waiter.cancel() if f.cancelled() else None)
        return future

    def result(self, task_id, timeout=None):
        """The output of a submitted task (by id), waiting until it is
        finished, at most ``timeout`` seconds when given."""
        return self._run(self._core.result(task_id, timeout))

    def task_events(self, after=0, wait=None, servable=None, ids=()):
        """Events of your tasks after sequence number ``after`` (0: from
        the oldest the daemon keeps), as ``([TaskEvent], last)``: ask after
        ``last`` next. With ``wait`` (seconds), blocks until there is one.
        ``servable`` (``NAME`` or ``NAME@VERSION``) and ``ids`` (task ids,
        and ``(first, last)`` ranges) narrow them."""
        return self._run(self._core.task_events(after, wait, servable, ids))

    def follow_task_events(self, servable=None, ids=(), after=0, poll=30.0):
        """Yields each :class:`~flotilla.views.TaskEvent` of your tasks
        as it happens (accepted, dispatched, retried, finished, failed,
        cancelled), those already kept first, for as long as it is
        iterated: ``for event in client.follow_task_events(ids=[(5, 10)])``.
        Following outlives a daemon restart within the client's
        ``reconnect_patience``, as waits do."""
        events = self._core.follow_task_events(servable, ids, after, poll)

        async def next_event():
            return await events.__anext__()

        try:
            while True:
                yield self._run(next_event())
        finally:
            try:
                self._run(events.aclose())
            except FlotillaError:  # the client is closed, and the stream with it
                pass

    def status(self, task_id):
        """The task's :class:`~flotilla.views.TaskView`: state, attempts,
        worker and timings (no output; see :meth:`result`)."""
        return self._run(self._core.status(task_id))

    def cancel(self, task_id):
        """Cancels a task that has not finished; returns its
        :class:`~flotilla.views.TaskState` afterwards."""
        return self._run(self._core.cancel(task_id))

    def map(
        self,
        name,
        inputs,
        params=None,
        chunk=mapping.DEFAULT_CHUNK,
        window=mapping.DEFAULT_WINDOW,
        timeout=None,
        return_exceptions=False,
    ):
        """Runs servable ``name`` on every input; yields the outputs in
        input order while later inputs are still being submitted.

        ``inputs`` is any iterable (a list, a generator reading a file); it
        is read ``chunk`` inputs at a time, each chunk one request, with at
        most ``window`` chunks submitted and unfinished at once, so memory
        stays bounded. ``params`` apply to every input. ``timeout`` bounds
        the whole map, in seconds. A failed task raises
        :class:`~flotilla.errors.TaskFailed` when its turn comes and the
        remaining tasks are cancelled, unless ``return_exceptions`` puts the
        exception in the output's place. Closing the generator early cancels
        the tasks still running.
        """
        mapping.check_shape(chunk, window)
        name = _servable_name(name)
        params_bytes = encode_params(params)
        self._check_process()
        # The loop's clock is monotonic and may be read from any thread.
        deadline = None if timeout is None else self._loop.loop.time() + float(timeout)
        shape = (chunk, window, timeout, deadline)
        return self._map(name, inputs, params_bytes, shape, return_exceptions)

    def _map(self, name, inputs, params_bytes, shape, return_exceptions):
        chunk, window, timeout, deadline = shape
        runs = mapping.ChunkRuns(self._core)
        running = collections.deque()
        budget = mapping.chunk_budget(self._core._max_frame_bytes())
        source = mapping.chunks(inputs, name, params_bytes, chunk, budget)
        exhausted = False
        try:
            while True:
                while not exhausted and len(running) < window:
                    requests = next(source, None)
                    if requests is None:
                        exhausted = True
                        break
                    frame = mapping.submit_frame(requests)
                    running.append(self._loop.submit(runs.run(frame, deadline)))
                if not running:
                    return
                views = self._loop_result(running.popleft())
                for value in mapping.outputs(views, return_exceptions, timeout):
                    yield value
        finally:
            self._abandon(running, runs)

    def _loop_result(self, future):
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _abandon(self, running, runs):
        """Stops waiting for the ``running`` chunks and cancels the tasks the
        map left unfinished."""
        try:
            self._loop.submit(runs.abandon()).result(mapping.ABANDON_WAIT_S)
        except Exception:  # best effort: the map is being abandoned anyway
            pass
        # Cancelled on the daemon, the chunks' waits are being answered; a
        # chunk cancelled here only stops being waited for.
        for future in running:
            future.cancel()
