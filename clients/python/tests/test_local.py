"""What the client decides on its own, before or without a daemon: where the
daemon is, what can be sent, and what a missing or strange daemon looks like.

The "strange daemon" is a real nng REP socket in a temporary state directory
answering with frames chosen by the test (including the shared vectors), so
the blocking client's methods are checked end to end against known bytes.
"""

import threading

import pynng
import pytest
from flotilla import AsyncClient, Client, errors, home, messages
from flotilla.payload import decode_output, encode_input, encode_params
from test_vectors import VECTORS


def test_home_follows_the_cli_rules(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOTILLA_HOME", str(tmp_path / "state"))
    assert home.state_dir() == str(tmp_path / "state")
    assert home.state_dir(tmp_path / "other") == str(tmp_path / "other")
    monkeypatch.setenv("FLOTILLA_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home.state_dir() == str(tmp_path / ".flotilla")
    assert home.api_url(str(tmp_path)) == "ipc://%s/api.sock" % tmp_path
    monkeypatch.delenv("FLOTILLA_HOME")
    monkeypatch.delenv("HOME")
    with pytest.raises(errors.DaemonNotRunning, match="set FLOTILLA_HOME"):
        home.state_dir()


def test_no_daemon_is_reported_at_once_with_the_socket_path(tmp_path):
    with pytest.raises(errors.DaemonNotRunning) as caught:
        Client(tmp_path)
    assert str(tmp_path / "api.sock") in str(caught.value)
    assert "flotilla daemon" in str(caught.value)
    assert caught.value.path == str(tmp_path / "api.sock")
    with pytest.raises(errors.DaemonNotRunning):
        AsyncClient(tmp_path)


def test_payloads_round_trip_and_bad_ones_are_named():
    value = {"a": [1, -2, 3.5, "x", None, True], "b": b"\x00\x01", "c": {1: "int key"}}
    assert decode_output(encode_input(value)) == value
    assert decode_output(b"") is None
    assert encode_params(None) == encode_params({}) == b""
    with pytest.raises(errors.PayloadError, match="cannot send this input to Flotilla: .*set"):
        encode_input({1, 2})
    with pytest.raises(errors.PayloadError, match="params must be a dict"):
        encode_params([1])
    with pytest.raises(errors.PayloadError, match="parameter names must be strings"):
        encode_params({1: 2})
    with pytest.raises(TypeError):  # PayloadError is also a TypeError
        encode_input(object())


def test_numpy_values_are_sent_as_lists_and_numbers():
    numpy = pytest.importorskip("numpy")
    sent = encode_input({"image": numpy.arange(4.0).reshape(2, 2), "n": numpy.int64(3)})
    assert decode_output(sent) == {"image": [[0.0, 1.0], [2.0, 3.0]], "n": 3}


def test_an_array_input_is_written_by_numpy_and_received_as_the_same_lists():
    numpy = pytest.importorskip("numpy")
    import msgpack
    from flotilla.ndarray import pack_ndarray

    rng = numpy.random.default_rng(7)
    arrays = [
        rng.random((32, 32, 3), dtype=numpy.float32),
        rng.random((3, 17), dtype=numpy.float32).astype(numpy.float16),
        rng.standard_normal((4, 5)),
        rng.standard_normal((2, 3)).astype(">f8"),  # not the machine's byte order
        rng.standard_normal((6, 4))[::2, ::-1],  # not contiguous
        rng.integers(-(2**63), 2**63 - 1, (2, 9), dtype=numpy.int64),
        rng.integers(-128, 127, 20, dtype=numpy.int8),
        rng.integers(-(2**15), 2**15 - 1, (2, 2, 2), dtype=numpy.int16),
        rng.integers(-(2**31), 2**31 - 1, 5, dtype=numpy.int32),
        rng.integers(0, 255, (70000,), dtype=numpy.uint8),  # a 32-bit list length
        rng.integers(0, 2**16 - 1, (1, 300), dtype=numpy.uint16),  # a 16-bit one
        rng.integers(0, 2**32 - 1, 3, dtype=numpy.uint32),
        rng.integers(0, 2**64 - 1, 3, dtype=numpy.uint64),
        rng.random((3, 3)) > 0.5,
        numpy.array([numpy.nan, numpy.inf, -numpy.inf, -0.0], dtype=numpy.float32),
    ]
    for array in arrays:
        fast = encode_input(array)
        assert pack_ndarray(array) == fast
        as_lists = msgpack.packb(array.tolist(), use_bin_type=True)
        got, want = decode_output(fast), decode_output(as_lists)
        # Compared as text, so NaN equals NaN and -0.0 differs from 0.0.
        assert repr(got) == repr(want), array.dtype
    # What it does not write, the lists do, as before.
    for other in [
        numpy.float64(2.5),
        numpy.zeros((0, 3)),
        numpy.array(["a", "b"]),
        numpy.array([1 + 2j]),
        numpy.ma.masked_array([1.0, 2.0], mask=[False, True]),
    ]:
        assert pack_ndarray(other) is None
    assert decode_output(encode_input(numpy.zeros((0, 3)))) == []
    assert decode_output(encode_input(numpy.ma.masked_array([1.0, 2.0], mask=[0, 1]))) == [
        1.0,
        None,
    ]


class FakeDaemon:
    """A REP socket on ``<dir>/api.sock`` that answers from a script.

    ``script`` is a list of ``(expected_request_or_None, reply_bytes)``; the
    requests it received are kept in ``received``.
    """

    def __init__(self, directory, script):
        self.received = []
        self._script = list(script)
        self._socket = pynng.Rep0(listen=home.api_url(str(directory)))
        self._socket.recv_timeout = 10_000
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        for _expected, reply in self._script:
            try:
                request = self._socket.recv()
            except pynng.NNGException:
                return
            self.received.append(request)
            self._socket.send(reply)

    def close(self):
        self._socket.close()
        self._thread.join(timeout=10)

    def check(self):
        """Every request was the expected one."""
        for (expected, _reply), got in zip(self._script, self.received):
            if expected is not None:
                assert got.hex() == expected.hex()
        assert len(self.received) == len(self._script)


@pytest.fixture
def fake(tmp_path):
    daemons = []

    def start(script):
        d = FakeDaemon(tmp_path, script)
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        d.close()


def test_client_methods_send_and_read_the_vector_frames(fake, tmp_path):
    d = fake(
        [
            (VECTORS["call.ping"], VECTORS["reply.pong"]),
            (VECTORS["call.search"], VECTORS["reply.servables"]),
            (VECTORS["call.show-servable"], VECTORS["reply.servable-exec"]),
            (VECTORS["call.servable-versions"], VECTORS["reply.versions"]),
            (VECTORS["call.list-servables"], VECTORS["reply.servables"]),
            (VECTORS["call.task-status"], VECTORS["reply.task-status"]),
            (VECTORS["call.list-servables"], VECTORS["reply.error-unavailable"]),
        ]
    )
    with Client(tmp_path) as client:
        assert client.ping() == 4242
        hits = client.servables.search("digit classifier", domain="vision", model_type="sklearn")
        assert [h.id for h in hits] == ["digits@1.0.0", "noop@0.0.0"]
        record = client.servables.show("digits@1.0.0")
        assert record.id == "digits@1.0.0"
        assert record.spec.input["properties"]["image"]["shape"] == [8, -1]
        assert client.servables.versions("digits") == ["1.0.0", "1.1.0"]
        assert len(client.servables.list()) == 2
        view = client.status(7)
        assert (view.id, view.state, view.attempts) == (6, "running", 2)
        with pytest.raises(errors.Unavailable, match="disk full"):
            client.servables.list()
    d.check()


def test_a_daemon_of_another_release_is_named(fake, tmp_path):
    newer = bytearray(VECTORS["reply.pong"])
    newer[1] = messages.PROTOCOL_VERSION + 1
    fake([(None, bytes(newer))])
    with Client(tmp_path) as client:
        with pytest.raises(errors.ProtocolError, match="protocol version mismatch"):
            client.ping()


def test_a_silent_daemon_times_out(tmp_path):
    socket = pynng.Rep0(listen=home.api_url(str(tmp_path)))
    try:
        with Client(tmp_path, call_timeout=0.2) as client:
            with pytest.raises(errors.Timeout, match="did not answer within 0.2 s") as caught:
                client.ping()
            assert isinstance(caught.value, TimeoutError)
    finally:
        socket.close()


def test_bad_arguments_are_refused_before_sending(tmp_path):
    socket = pynng.Rep0(listen=home.api_url(str(tmp_path)))
    try:
        with Client(tmp_path) as client:
            with pytest.raises(TypeError, match="non-empty string"):
                client.run("", 1)
            with pytest.raises(TypeError, match="task ids are non-negative integers"):
                client.status("7")
            with pytest.raises(ValueError, match="chunk must be a positive integer"):
                client.map("echo", [1], chunk=0)
            with pytest.raises(errors.RequestTooLarge, match="over the daemon's"):
                client.run("echo", b"x" * (messages.DEFAULT_MAX_FRAME_BYTES + 1))
        for patience in (-1, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="reconnect_patience must be 0 or more"):
                Client(tmp_path, reconnect_patience=patience)
        with pytest.raises(TypeError, match="reconnect_patience must be a number"):
            AsyncClient(tmp_path, reconnect_patience="60")
    finally:
        socket.close()


def test_a_closed_client_says_so(tmp_path):
    socket = pynng.Rep0(listen=home.api_url(str(tmp_path)))
    try:
        client = Client(tmp_path)
        client.close()
        with pytest.raises(errors.FlotillaError, match="closed"):
            client.ping()
    finally:
        socket.close()
