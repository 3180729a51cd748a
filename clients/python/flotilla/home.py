"""Where the daemon is: its state directory, API socket, contact file and
token file.

The rules are the CLI's (``protocol/src/paths.rs``, ``client/src/tcp.rs``),
so a Python program finds the same daemon as ``flotilla`` run in the same
environment: an explicit directory, else ``$FLOTILLA_HOME``, else
``$HOME/.flotilla``. Nothing is created here; connecting is the transport's
job.
"""

import os
import re
import stat

from .errors import DaemonNotRunning, TokenError
from .secure import TOKEN_ENV, BadToken, Token

__all__ = [
    "HOME_ENV",
    "state_dir",
    "api_socket",
    "api_url",
    "contact_file",
    "token_file",
    "read_contact",
    "tcp_urls",
    "load_token",
]

#: The contact file the daemon writes to its state directory (and copies to
#: its shared directory) once it listens.
CONTACT_FILE = "daemon.toml"

#: Most bytes read of a token file.
_TOKEN_FILE_MAX = 4096

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


def contact_file(home):
    """The contact file of the daemon owning state directory ``home``."""
    return os.path.join(home, CONTACT_FILE)


def token_file(home):
    """The token file a client off the daemon's host reads in ``home``."""
    return os.path.join(home, "token")


_LINE = re.compile(r'^\s*([A-Za-z0-9_-]+)\s*=\s*(.*?)\s*$')


def _toml_value(text):
    """A flat TOML value as the daemon writes one: a basic string or an
    integer; ``None`` for anything else."""
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        body = text[1:-1]
        return re.sub(
            r'\\(["\\btnfr])',
            lambda m: {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r"}.get(
                m.group(1), m.group(1)
            ),
            body,
        )
    try:
        return int(text)
    except ValueError:
        return None


def read_contact(home):
    """The contact file of ``home`` as a dict (its top-level keys); ``None``
    if it is missing or unreadable. The file is flat TOML (``key = value``),
    which the daemon writes; ``tomllib`` reads it where Python has one."""
    try:
        with open(contact_file(home), "rb") as f:
            raw = f.read(1 << 16)
    except OSError:
        return None
    try:
        import tomllib
    except ImportError:  # Python before 3.11
        tomllib = None
    if tomllib is not None:
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
    info = {}
    for line in raw.decode("utf-8", errors="replace").splitlines():
        match = _LINE.match(line)
        if match:
            info[match.group(1)] = _toml_value(match.group(2))
    return info


def tcp_urls(info):
    """The TCP client API's addresses (``tcp://HOST:PORT``, in order) that
    contact file ``info`` names; empty when it names none."""
    if not info:
        return []
    addresses, port = info.get("client_address"), info.get("client_port")
    if not isinstance(addresses, str) or not isinstance(port, int):
        return []
    urls = []
    for address in (a.strip() for a in addresses.split(",")):
        if not address:
            continue
        # An IPv6 address goes in brackets (a host name has no colon).
        host = "[%s]" % address if ":" in address else address
        urls.append("tcp://%s:%d" % (host, port))
    return urls


def load_token(home, url):
    """The token to show the daemon at ``url``: ``$FLOTILLA_TOKEN``, else
    ``home``'s token file, which must be private (no access for group or
    others). Raises :class:`TokenError` naming where it looked and what is
    wrong."""
    text = os.environ.get(TOKEN_ENV)
    if text:
        try:
            return Token.parse(text)
        except BadToken as exc:
            raise TokenError("the token in $%s: %s" % (TOKEN_ENV, exc), "$" + TOKEN_ENV) from None
    path = token_file(home)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise TokenError(
            "the daemon's socket is not reachable from here, and its TCP client API (%s) needs a "
            "token: set %s or put one (mode 0600) in %s; `flotilla token create` on the "
            "daemon's host makes one" % (url, TOKEN_ENV, path),
            path,
        ) from None
    except OSError as exc:
        raise TokenError("the token in %s: %s" % (path, exc), path) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise TokenError(
                "the token in %s: mode %04o lets group or others read it; run `chmod 600` on it"
                % (path, stat.S_IMODE(mode)),
                path,
            )
        raw = f.read(_TOKEN_FILE_MAX)
    try:
        return Token.parse(raw.decode("utf-8"))
    except (UnicodeDecodeError, BadToken) as exc:
        raise TokenError("the token in %s: %s" % (path, exc), path) from None
