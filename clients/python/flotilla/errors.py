"""The exceptions the client raises.

Every exception is a :class:`FlotillaError`, so ``except FlotillaError``
catches anything this package raises on purpose. Below it, each class is one
thing a caller may want to handle on its own: the daemon is not there, it
refused the request (and why, in the daemon's own words), a task failed (with
the servable's message), or a wait ran out.
"""

__all__ = [
    "FlotillaError",
    "DaemonNotRunning",
    "ConnectionLost",
    "Timeout",
    "ProtocolError",
    "RequestTooLarge",
    "PayloadError",
    "RequestRefused",
    "BadRequest",
    "ServableNotFound",
    "Conflict",
    "ShuttingDown",
    "Unavailable",
    "Forbidden",
    "TokenRefused",
    "TokenError",
    "HandshakeFailed",
    "TaskError",
    "TaskFailed",
    "TaskCancelled",
    "TaskUnknown",
]


class FlotillaError(Exception):
    """Base of every error this package raises."""


class DaemonNotRunning(FlotillaError):
    """No daemon answers on the state directory's socket.

    ``path`` is the socket the client tried. Start a daemon with
    ``flotilla daemon``, or point ``FLOTILLA_HOME`` (or ``Client(home=...)``)
    at the state directory of a running one.
    """

    def __init__(self, message, path=None):
        super().__init__(message)
        #: The socket path that was tried, if one was known.
        self.path = path


class TokenError(FlotillaError):
    """The daemon is only reachable over TCP and no usable token is at hand:
    none in ``$FLOTILLA_TOKEN`` nor in the state directory's ``token`` file,
    or the one found is not a token, or its file is readable by others.

    ``source`` names where the token was looked for.
    """

    def __init__(self, message, source=None):
        super().__init__(message)
        #: ``$FLOTILLA_TOKEN`` or the token file's path.
        self.source = source


class HandshakeFailed(FlotillaError):
    """The TCP handshake with the daemon failed on the client's side: the
    daemon could not prove it knows the token (another daemon, or somebody in
    the middle), or a sealed reply did not open."""


class ConnectionLost(FlotillaError):
    """The connection to the daemon failed in the middle of a call."""


class Timeout(FlotillaError, TimeoutError):
    """A wait ran out: the daemon did not answer, or a task was not finished.

    ``task_id`` is set when a task was accepted but had not finished when
    the wait ended: its result can still be fetched later with
    ``Client.result(task_id)``.
    """

    def __init__(self, message, seconds=None, task_id=None):
        super().__init__(message)
        #: How long was waited, in seconds.
        self.seconds = seconds
        #: The unfinished task, when the wait was for a task.
        self.task_id = task_id


class ProtocolError(FlotillaError):
    """The daemon's reply could not be understood.

    Usually the daemon and this client come from different releases (the
    message then names both protocol versions).
    """


class RequestTooLarge(FlotillaError):
    """A request is larger than the daemon accepts in one message."""


class PayloadError(FlotillaError, TypeError):
    """An input or parameter cannot be sent, or an output cannot be read.

    Inputs, parameters and outputs travel as msgpack: ``None``, booleans,
    integers, floats, strings, bytes, lists, tuples, dicts, and numpy arrays
    and scalars (sent as lists and numbers).
    """


class RequestRefused(FlotillaError):
    """The daemon refused the request and changed nothing.

    ``kind`` is the daemon's category (``BadRequest``, ``NotFound``,
    ``Conflict``, ``ShuttingDown``, ``Unavailable``, ``Forbidden``); ``message`` is its
    explanation, which names the offending input.
    """

    #: The daemon's category for this class of refusal.
    KIND = None

    def __init__(self, message, kind=None):
        super().__init__(message)
        #: The daemon's explanation.
        self.message = message
        #: The daemon's category.
        self.kind = kind or self.KIND


class BadRequest(RequestRefused):
    """The request itself is wrong: an unknown servable in a submission, an
    input that does not match the servable's declared type, no tasks."""

    KIND = "BadRequest"


class ServableNotFound(RequestRefused):
    """The named servable, or the named version of it, is not published."""

    KIND = "NotFound"


class Conflict(RequestRefused):
    """The request conflicts with the catalog (for example, removing a
    servable that still has unfinished tasks)."""

    KIND = "Conflict"


class ShuttingDown(RequestRefused):
    """The daemon is shutting down and accepts no new work."""

    KIND = "ShuttingDown"


class Unavailable(RequestRefused):
    """The daemon cannot store new work (its store failed)."""

    KIND = "Unavailable"


class Forbidden(RequestRefused):
    """The caller's token does not allow the call: it expired or was revoked,
    it is read-only and the call changes something, the servable is outside
    its list, or the call is only taken on the daemon's own host. The message
    names the token and the cause."""

    KIND = "Forbidden"


class TokenRefused(Forbidden):
    """The daemon refused the TCP handshake: an unknown, revoked or expired
    token (by name), or too many clients connecting at once. Raised when
    connecting; a :class:`Forbidden` too, so one ``except Forbidden`` covers
    a token refused at connection and per call."""


#: Refusal classes by the daemon's category name.
REFUSALS = {
    cls.KIND: cls
    for cls in (BadRequest, ServableNotFound, Conflict, ShuttingDown, Unavailable, Forbidden)
}


class TaskError(FlotillaError):
    """A task ended without an output.

    Carries the task's id, the servable it invoked and the message the
    daemon recorded for it.
    """

    def __init__(self, message, task_id=None, servable=None, reason=None):
        super().__init__(message)
        #: The task.
        self.task_id = task_id
        #: The servable it invoked (``NAME@VERSION`` for published ones).
        self.servable = servable
        #: The daemon's (or the servable's) words, without the task prefix.
        self.reason = reason


class TaskFailed(TaskError):
    """The servable raised an error for this input, or the daemon gave up on
    the task (its workers were lost too often). ``reason`` is the message,
    e.g. ``"ValueError: expected 64 pixels, got 3"``."""


class TaskCancelled(TaskError):
    """The task was cancelled before it finished."""


class TaskUnknown(TaskError):
    """The daemon has no such task for the caller: it was never submitted, it
    is another user's, or its result was fetched and the retention period has
    passed."""
