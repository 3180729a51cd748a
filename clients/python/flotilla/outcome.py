"""From a task's view to what the caller gets: its output, or an exception.

One place decides how a finished (or unfinished) task is reported, so
``run``, futures, ``result`` and ``map`` all raise the same exceptions with
the same words.
"""

from .errors import TaskCancelled, TaskFailed, TaskUnknown, Timeout
from .views import TaskState

__all__ = ["value_of", "error_of"]


def _label(view):
    return "task %d (%s)" % (view.id, view.servable) if view.servable else "task %d" % view.id


def error_of(view, waited=None):
    """The exception describing why ``view`` has no output, or ``None`` if it
    completed. ``waited`` (seconds) is mentioned when the task is unfinished."""
    state = view.state
    if state is TaskState.COMPLETED:
        return None
    if state is TaskState.FAILED:
        return TaskFailed(
            "%s failed: %s" % (_label(view), view.error),
            task_id=view.id,
            servable=view.servable,
            reason=view.error,
        )
    if state is TaskState.CANCELLED:
        return TaskCancelled(
            "%s was cancelled%s" % (_label(view), ": %s" % view.error if view.error else ""),
            task_id=view.id,
            servable=view.servable,
            reason=view.error,
        )
    if state is TaskState.UNKNOWN:
        return TaskUnknown(
            "task %d is unknown to the daemon (never submitted, another user's, or its "
            "result was fetched and has expired)" % view.id,
            task_id=view.id,
        )
    after = " after %.3g s" % waited if waited is not None else ""
    return Timeout(
        "%s is still %s%s; fetch its result later with result(%d)"
        % (_label(view), state.value, after, view.id),
        seconds=waited,
        task_id=view.id,
    )


def value_of(view, waited=None):
    """The output of a completed task; raises :func:`error_of` otherwise."""
    if view.state is TaskState.COMPLETED:
        return view.output
    raise error_of(view, waited)
