"""One connection to the daemon's API socket: request in, reply out.

:func:`connect` picks it, or the TCP client API's sealed connection
(:mod:`flotilla.tcp`) when the socket is out of reach.

The socket is an nng REQ socket dialled to ``ipc://<home>/api.sock``. Each
request gets its own nng context, so any number of calls (including replies
the daemon holds for minutes, such as a synchronous run) can be in flight on
one connection at once. REQ's automatic resend is switched off: a held
request must never be sent twice, since a second submission would run the
task again.

Everything here is asyncio; :mod:`flotilla.client` runs it on a private
event loop to offer the blocking API. ``max_frame_bytes`` is the daemon's
cap on one request (``[daemon] max_frame_bytes``, 64 MiB unless the site
changed it).
"""

import asyncio

import pynng

from . import home as home_dir
from .errors import ConnectionLost, DaemonNotRunning, FlotillaError, RequestTooLarge, Timeout
from .messages import DEFAULT_MAX_FRAME_BYTES
from .tcp import TcpConnection

__all__ = ["Connection", "connect"]


def connect(home):
    """The connection to the daemon owning state directory ``home``: its ipc
    socket when that answers, else its TCP client API if the contact file
    there names one (with a token from ``$FLOTILLA_TOKEN`` or ``home``'s
    ``token`` file; see :mod:`flotilla.tcp`), as the CLI does. Raises the ipc
    socket's :class:`DaemonNotRunning` when neither is there."""
    socket_path = home_dir.api_socket(home)
    try:
        return Connection(home_dir.api_url(home), socket_path)
    except DaemonNotRunning:
        info = home_dir.read_contact(home)
        urls = home_dir.tcp_urls(info)
        if not urls:
            raise
    token = home_dir.load_token(home, urls[0])
    limit = info.get("max_frame_bytes")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        limit = DEFAULT_MAX_FRAME_BYTES
    return TcpConnection(urls, token, socket_path, limit)


class Connection:
    """An nng REQ connection to one daemon.

    Dialling happens in the constructor, so a missing daemon is reported at
    once as :class:`DaemonNotRunning`. If the daemon restarts later, nng
    dials again by itself; calls in between wait (up to their timeout).
    """

    def __init__(self, url, socket_path, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES):
        self.url = url
        self.socket_path = socket_path
        self.max_frame_bytes = max_frame_bytes
        # Requests are checked against the daemon's cap before sending; replies
        # are not capped here: they come from the user's own daemon, and one
        # holding many large outputs may exceed the request cap (nng would
        # drop it, and the call would never complete).
        self._socket = pynng.Req0(resend_time=-1, recv_max_size=0)
        try:
            self._socket.dial(url, block=True)
        except pynng.NNGException as exc:
            self._socket.close()
            raise DaemonNotRunning(
                "no daemon is running at %s (%s); start one with `flotilla daemon`, or set "
                "FLOTILLA_HOME to the state directory of a running one" % (socket_path, exc),
                path=socket_path,
            ) from exc
        self._closed = False

    async def request(self, frame, timeout):
        """Sends ``frame`` and returns the reply's bytes.

        ``timeout`` (seconds, or ``None`` for no limit) bounds the whole
        round trip; past it the request is abandoned and :class:`Timeout`
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
            context = self._socket.new_context()
        except pynng.Closed:
            raise FlotillaError("this client is closed") from None
        try:
            if timeout is None:
                return await _round_trip(context, frame)
            return await asyncio.wait_for(_round_trip(context, frame), timeout)
        except asyncio.TimeoutError:
            raise Timeout(
                "the daemon at %s did not answer within %.3g s" % (self.socket_path, timeout),
                seconds=timeout,
            ) from None
        except pynng.Closed:
            raise FlotillaError("this client was closed while a call was in flight") from None
        except pynng.NNGException as exc:
            raise ConnectionLost(
                "the connection to the daemon at %s failed: %s" % (self.socket_path, exc)
            ) from exc
        finally:
            try:
                context.close()
            except pynng.NNGException:
                pass  # the socket was closed under it; nothing left to free

    def close(self):
        """Closes the socket; calls in flight end with an error."""
        if not self._closed:
            self._closed = True
            self._socket.close()


async def _round_trip(context, frame):
    await context.asend(frame)
    return await context.arecv()
