"""A private asyncio event loop on a background thread.

The blocking :class:`~flotilla.client.Client` is the asyncio client run on
this loop: calls hop to the loop thread and the caller waits on a
``concurrent.futures.Future``. That keeps one implementation of the protocol,
lets many replies be outstanding at once (futures, ``map``), and leaves the
caller's thread interruptible with Ctrl-C while the daemon holds a call.
"""

import asyncio
import threading

from .errors import FlotillaError

__all__ = ["LoopThread"]


class LoopThread:
    """An event loop running forever on a daemon thread until :meth:`close`."""

    def __init__(self, name="flotilla-client"):
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self):
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    @property
    def loop(self):
        """The event loop."""
        return self._loop

    def in_loop_thread(self):
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def submit(self, coro):
        """Schedules ``coro`` on the loop; returns a ``concurrent.futures.Future``."""
        if not self._thread.is_alive():
            coro.close()
            raise FlotillaError("this client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro):
        """Runs ``coro`` on the loop and waits for its result.

        Refuses to run from the loop thread itself (for example from a
        future's done-callback), where waiting would deadlock.
        """
        if self.in_loop_thread():
            coro.close()
            raise FlotillaError(
                "the blocking Client cannot be called from a future's callback (it runs on the "
                "client's own thread); call it from another thread, or use AsyncClient"
            )
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C or another interruption: abandon the call on the loop too.
            future.cancel()
            raise

    def close(self):
        """Stops the loop (cancelling what runs on it) and joins the thread."""
        if self._thread.is_alive() and not self.in_loop_thread():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
