"""The machinery behind ``map``: chunking inputs and running chunks.

``map`` streams: it reads the inputs a chunk at a time, submits each chunk
as one request (one durable write on the daemon), keeps a bounded window of
chunks in flight, and hands results back in input order as the oldest chunk
finishes. Memory stays bounded by the window whatever the number of inputs,
and the inputs may be a generator that is never materialised.
"""

import asyncio

from . import messages
from .errors import TaskError
from .outcome import error_of
from .payload import encode_input

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_WINDOW",
    "MAX_CHUNK_BYTES",
    "TASK_OVERHEAD",
    "chunk_budget",
    "ABANDON_WAIT_S",
    "check_shape",
    "chunks",
    "achunks",
    "submit_frame",
    "outputs",
    "ChunkRuns",
]

#: Inputs per request, unless the caller says otherwise.
DEFAULT_CHUNK = 1000
#: Chunks in flight at once, unless the caller says otherwise.
DEFAULT_WINDOW = 4
#: A chunk is closed early before its encoded inputs would pass this many
#: bytes (or the daemon's message limit, if smaller: :func:`chunk_budget`),
#: so big inputs never make a request exceed what the daemon accepts.
MAX_CHUNK_BYTES = 8 << 20

#: Bytes of msgpack one task adds to a ``Submit`` besides its input, its
#: params and its servable's name, with room to spare.
TASK_OVERHEAD = 64

#: Bytes a ``Submit`` adds besides its tasks, with room to spare.
SUBMIT_OVERHEAD = 1024

#: Seconds an abandoned ``map`` waits for its unfinished tasks to be
#: cancelled, and then for the waits on them to be answered.
ABANDON_WAIT_S = 10.0


def chunk_budget(max_frame_bytes):
    """Most bytes of tasks in one chunk for a daemon whose message limit is
    ``max_frame_bytes``."""
    return max(1, min(MAX_CHUNK_BYTES, max_frame_bytes - SUBMIT_OVERHEAD))


def check_shape(chunk, window):
    """Validates ``map``'s ``chunk`` and ``window`` arguments."""
    for name, value in (("chunk", chunk), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("%s must be a positive integer, got %r" % (name, value))


class _Chunker:
    """Accumulates encoded requests until a chunk is full: ``size``
    inputs, or ``max_bytes`` of them (a task that alone is larger goes in a
    chunk of its own, which the connection then refuses as too large)."""

    def __init__(self, servable, params, size, max_bytes):
        self.servable = servable
        self.params = params
        self.size = size
        self.max_bytes = max_bytes
        self.requests = []
        self.nbytes = 0

    def add(self, value):
        """Adds one input; returns the chunks it filled (none, one, or the
        one before it and its own)."""
        data = encode_input(value)
        cost = len(data) + len(self.params) + len(self.servable) + TASK_OVERHEAD
        full = []
        if self.requests and self.nbytes + cost > self.max_bytes:
            full.append(self.take())
        self.requests.append([self.servable, data, self.params])
        self.nbytes += cost
        if len(self.requests) >= self.size or self.nbytes >= self.max_bytes:
            full.append(self.take())
        return full

    def take(self):
        """The chunk so far (possibly empty), starting a new one."""
        out, self.requests, self.nbytes = self.requests, [], 0
        return out


def chunks(inputs, servable, params, size, max_bytes=MAX_CHUNK_BYTES):
    """Lists of ``[servable, input_bytes, params_bytes]`` from an iterable,
    in order: at most ``size`` inputs each, and at most ``max_bytes`` of
    them unless one input alone is larger."""
    chunker = _Chunker(servable, params, size, max_bytes)
    for value in inputs:
        yield from chunker.add(value)
    rest = chunker.take()
    if rest:
        yield rest


async def achunks(inputs, servable, params, size, max_bytes=MAX_CHUNK_BYTES):
    """:func:`chunks` for an iterable or an async iterable of inputs."""
    if not hasattr(inputs, "__aiter__"):
        for chunk in chunks(inputs, servable, params, size, max_bytes):
            yield chunk
        return
    chunker = _Chunker(servable, params, size, max_bytes)
    async for value in inputs:
        for full in chunker.add(value):
            yield full
    rest = chunker.take()
    if rest:
        yield rest


def submit_frame(requests):
    """The ``Submit`` frame of one chunk."""
    return messages.submit(requests, None)


def outputs(views, return_exceptions, waited=None):
    """The outputs of ``views`` in order. A task without an output raises
    its :class:`~flotilla.errors.TaskError` (or, with ``return_exceptions``,
    yields it in the output's place)."""
    for view in views:
        error = error_of(view, waited)
        if error is None:
            yield view.output
        elif return_exceptions and isinstance(error, TaskError):
            yield error
        else:
            raise error


class ChunkRuns:
    """The chunks of one ``map`` on a client's event loop.

    Each chunk is submitted, then waited for. Submissions go out one after
    the other, in input order, so the daemon queues (and runs) the chunks in
    that order and the chunk ``map`` yields next is never stuck behind later
    ones; the waits overlap. A chunk's ids are remembered from the moment
    the daemon accepts it until its results are in, so that an abandoned
    ``map`` (closed early, failed, timed out) can cancel exactly the tasks
    it left behind; a submission is never interrupted half way, so if the
    daemon accepted it, its ids are known. Waits and refused submissions
    outlive a daemon restart (see ``AsyncClient.reconnect_patience``).
    Created anywhere; its coroutines run on the client's loop.
    """

    def __init__(self, client):
        self._client = client
        self._in_flight = set()
        self._submitting = set()
        self._order = None  # an asyncio.Lock, made on the loop
        self._abandoned = False

    async def run(self, frame, deadline):
        """Submits the chunk ``frame`` and returns its tasks' views once all
        are final (or at ``deadline``, loop time)."""
        submitting = asyncio.ensure_future(self._submit(frame))
        self._submitting.add(submitting)
        submitting.add_done_callback(self._submitting.discard)
        ids = await asyncio.shield(submitting)
        views = await self._client._wait_views(ids, deadline)
        self._in_flight.difference_update(ids)
        return views

    async def _submit(self, frame):
        if self._order is None:
            self._order = asyncio.Lock()
        async with self._order:  # asyncio's locks are granted first come, first served
            if self._abandoned:
                return []  # not sent: the map no longer wants it
            ids = await self._client._submit_patiently(frame)
        self._in_flight.update(ids)
        return ids

    async def abandon(self):
        """Cancels every task submitted and not yet reported, after letting
        submissions in progress finish and dropping those not yet sent (best
        effort: errors are dropped)."""
        self._abandoned = True
        if self._submitting:
            await asyncio.gather(*self._submitting, return_exceptions=True)
        await self._client._cancel_ids(self._in_flight)
        self._in_flight.clear()
