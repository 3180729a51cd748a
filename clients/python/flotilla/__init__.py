"""Call Flotilla servables from Python: synchronously, as futures, or in bulk.

The client talks to the daemon of a state directory (``$FLOTILLA_HOME``,
else ``~/.flotilla``, as the ``flotilla`` CLI does) over its API socket,
speaking the same protocol as the CLI. When that socket is out of reach (a
batch job on a compute node) and the state directory's contact file names
the daemon's TCP client API, it connects there instead, with a token from
``$FLOTILLA_TOKEN`` or the state directory's ``token`` file (mode 0600),
every frame encrypted::

    from flotilla import Client

    with Client() as client:
        client.run("echo", {"x": 1})                 # -> {'x': 1}
        future = client.submit("sleep", 0.5)         # a concurrent.futures.Future
        future.result()                              # -> None
        for output in client.map("echo", range(10000), chunk=1000):
            ...                                      # in input order
        client.status(future.task_id).state          # TaskState.COMPLETED
        client.servables.search("digit", model_type="sklearn")
        client.servables.show("digits")

In asyncio code (notebooks, async workflows) use :class:`AsyncClient`, whose
methods are coroutines of the same names and whose ``map`` is an async
generator.

Errors are exceptions of :mod:`flotilla.errors`, all :class:`FlotillaError`:
:class:`DaemonNotRunning`, refusals carrying the daemon's message
(:class:`BadRequest`, :class:`ServableNotFound`, ...), :class:`TaskFailed`
carrying the servable's message, and :class:`Timeout`.
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    BadRequest,
    Conflict,
    ConnectionLost,
    DaemonNotRunning,
    FlotillaError,
    Forbidden,
    HandshakeFailed,
    PayloadError,
    ProtocolError,
    RequestRefused,
    RequestTooLarge,
    ServableNotFound,
    ShuttingDown,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskUnknown,
    Timeout,
    TokenError,
    TokenRefused,
    Unavailable,
)
from .futures import AsyncTaskFuture, TaskFuture
from .messages import PROTOCOL_VERSION
from .views import (
    MemoUse,
    ServableRecord,
    ServableSpec,
    ServableSummary,
    TaskEvent,
    TaskState,
    TaskTimings,
    TaskView,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncTaskFuture",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionLost",
    "DaemonNotRunning",
    "FlotillaError",
    "Forbidden",
    "HandshakeFailed",
    "MemoUse",
    "PROTOCOL_VERSION",
    "PayloadError",
    "ProtocolError",
    "RequestRefused",
    "RequestTooLarge",
    "ServableNotFound",
    "ServableRecord",
    "ServableSpec",
    "ServableSummary",
    "ShuttingDown",
    "TaskCancelled",
    "TaskError",
    "TaskEvent",
    "TaskFailed",
    "TaskFuture",
    "TaskState",
    "TaskTimings",
    "TaskUnknown",
    "TaskView",
    "Timeout",
    "TokenError",
    "TokenRefused",
    "Unavailable",
]
