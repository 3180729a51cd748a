"""The connection to a daemon's TCP client API, for a client off its host.

Used when the daemon's ipc socket is out of reach (a batch job on a
compute node, a Python app inside a Parsl worker) and its contact file (the
shared directory's copy will do) names a TCP client endpoint, as the Rust
client does (``client/src/tcp.rs``): the token comes from
``$FLOTILLA_TOKEN``, else the state directory's ``token`` file (mode 0600).
The connection is an nng REQ socket dialled to ``tcp://HOST:PORT``; it runs
the token handshake of :mod:`flotilla.secure`, then seals every call and
opens every reply. A sealed call larger than the daemon takes in one piece
goes in parts. When the daemon asks for a new handshake (it restarted, nng
redialled), the client does one and sends the call again.

The daemon drops a TCP connection that has more than a few requests
outstanding, so at most :data:`MAX_IN_FLIGHT` calls are on the wire at once;
more wait for a turn.
"""

import asyncio
import os
import weakref

import pynng

from . import messages
from .errors import (
    ConnectionLost,
    DaemonNotRunning,
    FlotillaError,
    HandshakeFailed,
    ProtocolError,
    RequestTooLarge,
    Timeout,
    TokenRefused,
)
from .secure import (
    ACK,
    PREAUTH_FRAME_BYTES,
    ClientHandshake,
    OpenError,
    WrongDaemon,
    is_sealed,
    split_parts,
)

__all__ = ["TcpConnection", "MAX_IN_FLIGHT"]

#: Most calls on the wire at once on one TCP connection (the daemon closes
#: a connection with more than 8 outstanding; the rest is room for calls
#: this client gave up on that the daemon still holds).
MAX_IN_FLIGHT = 6
#: Seconds allowed for each step of the handshake.
HANDSHAKE_TIMEOUT_S = 30.0

_AGAIN = object()


def _gate_reply(data):
    """A clear reply of the handshake: the :class:`messages.Reply`, or
    :class:`TokenRefused` for a refusal."""
    reply = messages.decode_reply(data)
    if reply.variant == "Refused":
        body = reply.body
        reason = body[0] if isinstance(body, (list, tuple)) and body else str(body)
        raise TokenRefused("the daemon refused the token: %s" % reason, "Forbidden")
    return reply


class _Handshake:
    """One handshake's steps; the caller does the round trips."""

    def __init__(self, token):
        self.client = ClientHandshake(token, os.urandom(32), os.urandom(32))

    def probe(self):
        return messages.encode_frame(self.client.probe())

    def hello(self, answer):
        """The hello frame and the channel, from the daemon's answer to the
        probe."""
        reply = _gate_reply(answer)
        if reply.variant != "Challenge":
            raise HandshakeFailed(
                "the daemon did not answer the probe with a challenge (%s)" % reply.variant
            )
        body = reply.body
        if not isinstance(body, (list, tuple)) or len(body) != 3:
            raise ProtocolError("malformed challenge from the daemon")
        try:
            hello, channel = self.client.answer(*body)
        except WrongDaemon as exc:
            raise HandshakeFailed("secure connection to the daemon failed: %s" % exc) from None
        return messages.encode_frame(hello), channel

    @staticmethod
    def welcome(channel, data):
        """Checks the daemon's sealed welcome."""
        if not is_sealed(data):
            _gate_reply(data)
            raise HandshakeFailed("the daemon did not seal its welcome")
        try:
            opened = channel.open(data)
        except OpenError as exc:
            raise HandshakeFailed("the welcome does not open: %s" % exc) from None
        reply = messages.decode_reply(opened)
        if reply.variant != "Welcome":
            raise ProtocolError("unexpected reply from the daemon: %s" % reply.variant)


class TcpConnection:
    """A sealed connection to a daemon's TCP client API.

    ``urls`` are tried in order; the handshake happens in the constructor, so
    an unreachable daemon is :class:`DaemonNotRunning` and a refused token
    :class:`TokenRefused` at once. The interface is
    :class:`flotilla.transport.Connection`'s.
    """

    def __init__(self, urls, token, socket_path, max_frame_bytes):
        #: Where the ipc socket was looked for (named in errors).
        self.socket_path = socket_path
        self.max_frame_bytes = max_frame_bytes
        self._token = token
        self._closed = False
        self._per_loop = weakref.WeakKeyDictionary()  # loop -> (slots, handshake, parts)
        self._generation = 0
        failures = []
        for url in urls:
            socket = pynng.Req0(resend_time=-1, recv_max_size=0)
            try:
                socket.dial(url, block=True)
                self._channel = self._handshake_sync(socket)
            except pynng.NNGException as exc:
                socket.close()
                failures.append("%s (%s)" % (url, exc))
                continue
            except BaseException:
                socket.close()
                raise
            #: The address in use.
            self.url = url
            self._socket = socket
            return
        raise DaemonNotRunning(
            "no daemon is running at %s, and its TCP client API does not answer at %s; start "
            "one with `flotilla daemon`, or set FLOTILLA_HOME to the state directory of a "
            "running one" % (socket_path, ", ".join(failures)),
            path=socket_path,
        )

    def _handshake_sync(self, socket):
        """The handshake on a freshly dialled ``socket``, blocking; the
        connection's channel."""
        steps = _Handshake(self._token)
        context = socket.new_context()
        try:
            context.recv_timeout = int(HANDSHAKE_TIMEOUT_S * 1000)
            context.send_timeout = int(HANDSHAKE_TIMEOUT_S * 1000)
            context.send(steps.probe())
            hello, channel = steps.hello(context.recv())
            context.send(hello)
            welcome = context.recv()
        finally:
            _close(context)
        steps.welcome(channel, welcome)
        return channel

    def _where(self):
        return getattr(self, "url", None) or self.socket_path

    def _loop_state(self):
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            state = self._per_loop[loop] = (
                asyncio.Semaphore(MAX_IN_FLIGHT),
                asyncio.Lock(),
                asyncio.Lock(),
            )
        return state

    async def request(self, frame, timeout):
        """Sends ``frame`` sealed and returns the reply's bytes, opened.

        ``timeout`` (seconds, or ``None`` for no limit) bounds the whole
        round trip, including a wait for a turn; past it :class:`Timeout` is
        raised. A frame over the size cap is refused before anything is sent.
        """
        if self._closed:
            raise FlotillaError("this client is closed")
        if len(frame) > self.max_frame_bytes:
            raise RequestTooLarge(
                "the request is %d bytes, over the daemon's %d-byte message limit; send fewer "
                "or smaller inputs at a time" % (len(frame), self.max_frame_bytes)
            )
        try:
            if timeout is None:
                return await self._call(frame)
            return await asyncio.wait_for(self._call(frame), timeout)
        except asyncio.TimeoutError:
            raise Timeout(
                "the daemon at %s did not answer within %.3g s" % (self._where(), timeout),
                seconds=timeout,
            ) from None
        except pynng.Closed:
            raise FlotillaError("this client was closed while a call was in flight") from None
        except pynng.NNGException as exc:
            raise ConnectionLost(
                "the connection to the daemon at %s failed: %s" % (self._where(), exc)
            ) from exc

    async def _call(self, frame):
        slots, handshake_lock, parts_lock = self._loop_state()
        async with slots:
            for _ in range(2):
                channel, generation = self._channel, self._generation
                reply = await self._sealed_round_trip(channel, frame, parts_lock)
                if reply is not _AGAIN:
                    return reply
                async with handshake_lock:
                    if self._generation == generation:
                        self._channel = await self._handshake_async()
                        self._generation += 1
            raise HandshakeFailed(
                "the daemon at %s keeps asking for a new handshake" % self._where()
            )

    async def _sealed_round_trip(self, channel, frame, parts_lock):
        sealed = channel.seal(frame)
        context = self._new_context()
        try:
            if len(sealed) <= PREAUTH_FRAME_BYTES:
                reply = await _round_trip(context, sealed)
            else:
                # One frame in parts at a time, on stream 0: the daemon
                # joins at most two at once per connection.
                async with parts_lock:
                    pieces = split_parts(sealed, 0)
                    for i, piece in enumerate(pieces):
                        reply = await _round_trip(context, piece)
                        if i < len(pieces) - 1 and reply != ACK:
                            break
        finally:
            _close(context)
        if is_sealed(reply):
            try:
                return channel.open(reply)
            except OpenError as exc:
                raise HandshakeFailed("a reply does not open: %s" % exc) from None
        gate = _gate_reply(reply)
        if gate.variant == "Handshake":
            return _AGAIN
        raise ProtocolError("unexpected reply from the daemon: %s" % gate.variant)

    def _new_context(self):
        try:
            return self._socket.new_context()
        except pynng.Closed:
            raise FlotillaError("this client is closed") from None

    async def _handshake_async(self):
        steps = _Handshake(self._token)
        context = self._new_context()
        try:
            answer = await asyncio.wait_for(
                _round_trip(context, steps.probe()), HANDSHAKE_TIMEOUT_S
            )
            hello, channel = steps.hello(answer)
            welcome = await asyncio.wait_for(_round_trip(context, hello), HANDSHAKE_TIMEOUT_S)
        finally:
            _close(context)
        steps.welcome(channel, welcome)
        return channel

    def close(self):
        """Closes the socket; calls in flight end with an error."""
        if not self._closed:
            self._closed = True
            self._socket.close()


async def _round_trip(context, frame):
    await context.asend(frame)
    return await context.arecv()


def _close(context):
    try:
        context.close()
    except pynng.NNGException:
        pass  # the socket was closed under it; nothing left to free
