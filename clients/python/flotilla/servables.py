"""The catalog: finding and inspecting published servables.

Reached as ``client.servables``: ``search``, ``show``, ``list`` and
``versions``, for the blocking and the asyncio client alike. Publishing
stays with ``flotilla servable publish DIR``, which also builds and hashes
the servable's files.
"""

from . import messages

__all__ = ["AsyncServables", "Servables"]


class AsyncServables:
    """Catalog calls of an :class:`~flotilla.AsyncClient` (coroutines)."""

    def __init__(self, client):
        self._client = client

    async def search(self, text="", domain=None, model_type=None, author=None):
        """Servables matching ``text``, best match first, as
        :class:`~flotilla.views.ServableSummary` objects.

        Words are matched as word prefixes in names, titles, domains,
        creators and descriptions; ``domain``, ``model_type`` (``sklearn``,
        ``pipeline``, ...) and ``author`` (part of a creator's name) must all
        hold when given. No words and no filters list everything.
        """
        frame = messages.search_servables(text, domain, model_type, author)
        return (await self._client._call(frame)).as_servables()

    async def show(self, name):
        """The full :class:`~flotilla.views.ServableRecord` of ``NAME``
        (latest version) or ``NAME@VERSION``; raises
        :class:`~flotilla.errors.ServableNotFound` if it is not published."""
        return (await self._client._call(messages.show_servable(name))).as_servable()

    async def list(self):
        """The latest version of every published servable."""
        return (await self._client._call(messages.list_servables())).as_servables()

    async def versions(self, name):
        """Every published version of servable ``name``, oldest first."""
        return (await self._client._call(messages.servable_versions(name))).as_versions()


class Servables:
    """Catalog calls of a blocking :class:`~flotilla.Client`."""

    def __init__(self, run, calls):
        self._run = run
        self._calls = calls

    def search(self, text="", domain=None, model_type=None, author=None):
        """Servables matching ``text``, best match first (see
        :meth:`AsyncServables.search`)."""
        return self._run(self._calls.search(text, domain, model_type, author))

    def show(self, name):
        """The full record of ``NAME`` or ``NAME@VERSION``; raises
        :class:`~flotilla.errors.ServableNotFound` if it is not published."""
        return self._run(self._calls.show(name))

    def list(self):
        """The latest version of every published servable."""
        return self._run(self._calls.list())

    def versions(self, name):
        """Every published version of servable ``name``, oldest first."""
        return self._run(self._calls.versions(name))
