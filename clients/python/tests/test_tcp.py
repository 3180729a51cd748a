"""The Python client over the daemon's TCP client API, end to end.

A real daemon listens for TCP clients (``[daemon] client_listen``); the
client's state directory is what a batch job on another node has: a copy of
the daemon's contact file and a token, no ``api.sock``. ``run``, ``map``
and a call big enough to travel in parts go over the sealed connection; a
revoked token is refused with :class:`flotilla.Forbidden` (on an open
connection) and :class:`flotilla.TokenRefused` (when connecting), and a
missing or exposed token file with :class:`flotilla.TokenError`.
"""

import os
import shutil

import pytest
from conftest import start_daemon, stop_daemon
from flotilla import Client, Forbidden, TokenError, TokenRefused
from flotilla.tcp import TcpConnection


@pytest.fixture(scope="module")
def tcp_daemon(tmp_path_factory):
    """A daemon that also takes TCP clients with a token, on loopback."""
    d = start_daemon(
        tmp_path_factory.mktemp("flotilla-tcp"), daemon_extra='client_listen = "127.0.0.1:0"'
    )
    try:
        yield d
    finally:
        stop_daemon(d)


def make_token(daemon, name):
    """``flotilla token create --name NAME`` on the daemon's host."""
    return daemon.cli("token", "create", "--name", name).stdout.strip()


def node_home(daemon, directory, token=None):
    """A state directory as a compute node sees it: the contact file and,
    if given, a private token file."""
    directory.mkdir()
    shutil.copy(daemon.home / "daemon.toml", directory / "daemon.toml")
    if token is not None:
        path = directory / "token"
        path.write_text(token + "\n")
        path.chmod(0o600)
    assert not (directory / "api.sock").exists()
    return directory


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch):
    monkeypatch.delenv("FLOTILLA_TOKEN", raising=False)


def test_run_map_and_a_call_in_parts_go_over_sealed_tcp(tcp_daemon, tmp_path):
    home = node_home(tcp_daemon, tmp_path / "node", make_token(tcp_daemon, "py-run"))
    with Client(home) as client:
        assert isinstance(client._core._connection, TcpConnection)
        assert client._core._connection.url.startswith("tcp://127.0.0.1:")
        assert client.run("echo", {"m": "over tcp"}, timeout=60) == {"m": "over tcp"}
        outputs = list(client.map("echo", range(200), chunk=16, window=4, timeout=120))
        assert outputs == list(range(200))
        # Sealed, this input is over what the daemon takes in one piece.
        big = b"\x5a" * (1 << 20)
        assert client.run("echo", big, timeout=60) == big
        assert client.ping() > 0


def test_the_token_may_come_from_the_environment(tcp_daemon, tmp_path, monkeypatch):
    home = node_home(tcp_daemon, tmp_path / "node")
    monkeypatch.setenv("FLOTILLA_TOKEN", make_token(tcp_daemon, "py-env"))
    with Client(home) as client:
        assert client.run("echo", 7, timeout=60) == 7


def test_a_revoked_token_is_refused_with_a_typed_error(tcp_daemon, tmp_path):
    home = node_home(tcp_daemon, tmp_path / "node", make_token(tcp_daemon, "py-gone"))
    with Client(home) as client:
        assert client.run("echo", 1, timeout=60) == 1
        tcp_daemon.cli("token", "revoke", "py-gone")
        # On the open connection: the next call.
        with pytest.raises(Forbidden, match="token `py-gone` was revoked") as caught:
            client.run("echo", 2, timeout=60)
        assert caught.value.kind == "Forbidden"
    # A new connection: refused in the handshake.
    with pytest.raises(TokenRefused, match="token `py-gone` was revoked"):
        Client(home)
    # The daemon serves on, over TCP and its socket.
    other = node_home(tcp_daemon, tmp_path / "other", make_token(tcp_daemon, "py-after"))
    with Client(other) as client:
        assert client.run("echo", 3, timeout=60) == 3
    with Client(tcp_daemon.home) as local:
        assert local.run("echo", 4, timeout=60) == 4


def test_a_missing_or_exposed_token_is_named(tcp_daemon, tmp_path):
    home = node_home(tcp_daemon, tmp_path / "node")
    with pytest.raises(TokenError, match="needs a token: set FLOTILLA_TOKEN"):
        Client(home)
    path = home / "token"
    path.write_text(make_token(tcp_daemon, "py-exposed"))
    os.chmod(path, 0o644)
    with pytest.raises(TokenError, match="mode 0644 lets group or others read it"):
        Client(home)
    path.write_text("not a token")
    path.chmod(0o600)
    with pytest.raises(TokenError, match="not a Flotilla token"):
        Client(home)
