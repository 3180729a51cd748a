"""Where the daemon is: its state directory and API socket.

The rules are the CLI's (``protocol/src/paths.rs``), so a Python program
finds the same daemon as ``flotilla`` run in the same environment: an explicit
directory, else ``$FLOTILLA_HOME``, else ``$HOME/.flotilla``. Nothing is
created or checked here; connecting is the transport's job.
"""

import os

from .errors import DaemonNotRunning

__all__ = ["HOME_ENV", "state_dir", "api_socket", "api_url"]

#: Environment variable naming the daemon's state directory.
HOME_ENV = "FLOTILLA_HOME"


def state_dir(home=None):
    """The state directory to use, as an absolute path.

    ``home`` (a string or path) wins when given; then ``$FLOTILLA_HOME``;
    then ``~/.flotilla``. Raises :class:`DaemonNotRunning` when none of them
    is set, since no daemon can then be found.
    """
    if home is None:
        home = os.environ.get(HOME_ENV) or None
    if home is None:
        user_home = os.environ.get("HOME")
        if not user_home:
            raise DaemonNotRunning(
                "cannot find the daemon: set FLOTILLA_HOME (or HOME), or pass "
                "Client(home=...) the daemon's state directory"
            )
        home = os.path.join(user_home, ".flotilla")
    return os.path.abspath(os.path.expanduser(os.fspath(home)))


def api_socket(home):
    """The client API socket of the daemon owning state directory ``home``."""
    return os.path.join(home, "api.sock")


def api_url(home):
    """The client API socket of ``home`` as an nng URL (``ipc://...``)."""
    return "ipc://" + api_socket(home)
