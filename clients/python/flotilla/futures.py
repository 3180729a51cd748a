"""Futures for submitted tasks.

``Client.submit`` returns a :class:`TaskFuture`, a real
``concurrent.futures.Future``: it works with ``concurrent.futures.wait`` and
``as_completed``, and workflow systems that accept futures as dependencies
(Parsl apps, for one) can take it directly. ``AsyncClient.submit`` returns an
:class:`AsyncTaskFuture`, an ``asyncio.Future`` to ``await``. Both carry the
task's id, so its result can also be fetched later or from another process.

A task cancelled on the daemon (by ``future.cancel()``, ``client.cancel()``
or ``flotilla cancel``) leaves its future cancelled.
"""

import asyncio
import concurrent.futures

from .outcome import error_of
from .views import TaskState

__all__ = ["TaskFuture", "AsyncTaskFuture", "settle"]


def settle(future, view, cancel_local):
    """Completes ``future`` from a task's final ``view`` (once; later calls
    and futures already cancelled are ignored). ``cancel_local`` is the
    future class's own ``cancel``, used for tasks the daemon cancelled."""
    if future.done():
        return
    if view.state is TaskState.CANCELLED:
        cancel_local(future)
        return
    error = error_of(view)
    try:
        if error is None:
            future.set_result(view.output)
        else:
            future.set_exception(error)
    except (concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        pass  # cancelled meanwhile


class TaskFuture(concurrent.futures.Future):
    """The eventual output of one submitted task.

    ``result()`` returns the servable's output or raises
    :class:`~flotilla.errors.TaskFailed` (with the servable's message).
    ``cancel()`` asks the daemon to cancel the task and returns ``True`` if
    it did, as a ``concurrent.futures.Future`` would for a task not yet run.
    Done-callbacks run on the client's own thread: keep them short, and do
    not call the blocking client from them.
    """

    def __init__(self, client, task_id, servable):
        super().__init__()
        self._client = client
        #: The task's id on the daemon.
        self.task_id = task_id
        #: The servable as requested.
        self.servable = servable

    def cancel(self):
        """Cancels the task on the daemon; ``True`` if it was cancelled."""
        if self.done():
            return self.cancelled()
        state = self._client.cancel(self.task_id)
        if state is TaskState.CANCELLED:
            concurrent.futures.Future.cancel(self)
            return True
        return self.cancelled()

    def status(self):
        """The task's current :class:`~flotilla.views.TaskView` (no output)."""
        return self._client.status(self.task_id)

    def __repr__(self):
        return "<TaskFuture task %d (%s) %s>" % (self.task_id, self.servable, self._state.lower())


class AsyncTaskFuture(asyncio.Future):
    """The eventual output of one task submitted with ``AsyncClient``.

    ``await future`` returns the output or raises. ``cancel()`` stops the
    local wait at once and asks the daemon, in the background, to cancel the
    task; ``await client.cancel(future.task_id)`` does the same and says
    what became of it. As with any awaitable, ``asyncio.wait_for`` cancels
    the future (and so the task) when it times out; wrap it in
    ``asyncio.shield`` to stop waiting but let the task run on.
    """

    def __init__(self, client, task_id, servable, loop):
        super().__init__(loop=loop)
        self._client = client
        #: The task's id on the daemon.
        self.task_id = task_id
        #: The servable as requested.
        self.servable = servable

    def cancel(self, msg=None):
        """Stops waiting and asks the daemon to cancel the task."""
        if self.done():
            return False
        self._client._cancel_in_background(self.task_id, self.get_loop())
        return super().cancel()

    def __repr__(self):
        state = "done" if self.done() else "pending"
        return "<AsyncTaskFuture task %d (%s) %s>" % (self.task_id, self.servable, state)
