"""The shared test vectors: the Python client speaks the Rust crate's bytes.

``protocol/testdata/client-vectors.json`` holds frames encoded by the Rust
``protocol`` crate (and checked there by ``protocol/tests/vectors.rs``).
Here every call vector is built with the Python client's encoders and
compared byte for byte, and every reply vector is decoded into the Python
objects it must become. Every vector in the file must have a counterpart
here, and the other way round, so neither side can add a message alone.
"""

import json

import pytest
from conftest import WORKSPACE
from flotilla import errors, messages
from flotilla.payload import NO_PARAMS, encode_input, encode_params
from flotilla.views import (
    Build,
    Container,
    Creator,
    Environment,
    EnvironmentLock,
    FileEntry,
    MemoUse,
    RelatedIdentifier,
    ServableOptions,
    ServableRecord,
    ServableSpec,
    ServableSummary,
    TaskEvent,
    TaskState,
    TaskTimings,
    TaskView,
)

MANIFEST = WORKSPACE / "protocol" / "testdata" / "client-vectors.json"


def _load():
    with open(MANIFEST) as f:
        manifest = json.load(f)
    return manifest, {v["name"]: bytes.fromhex(v["hex"]) for v in manifest["vectors"]}


MANIFEST_DATA, VECTORS = _load()

CALLS = {
    "call.ping": lambda: messages.ping(),
    "call.submit": lambda: messages.submit(
        [
            ["echo", encode_input({"x": 1}), encode_params(None)],
            ["digits@1.0.0", encode_input([1.5, -2, "é"]), encode_params({"top_k": 3})],
        ]
    ),
    "call.submit-wait": lambda: messages.submit([["noop", encode_input(None), NO_PARAMS]], 30_000),
    "call.results": lambda: messages.results([1, 2]),
    "call.results-wait": lambda: messages.results([4_294_967_296], 86_400_000),
    "call.task-status": lambda: messages.task_status([7]),
    "call.cancel": lambda: messages.cancel([7, 8]),
    "call.task-events": lambda: messages.task_events(3, 30_000, "echo", [(5, 10), 12]),
    "call.list-servables": lambda: messages.list_servables(),
    "call.show-servable": lambda: messages.show_servable("digits@1.0.0"),
    "call.servable-versions": lambda: messages.servable_versions("digits"),
    "call.search": lambda: messages.search_servables(
        "digit classifier", domain="vision", model_type="sklearn"
    ),
    "call.search-all": lambda: messages.search_servables(),
}


def _view(task_id, servable, state, attempts, worker, timings, memo=None, output=None, error=None):
    return TaskView(
        task_id, servable, state, attempts, worker, TaskTimings(*timings), memo, output, error
    )


_EXEC_INPUT = {
    "kind": "dict",
    "properties": {
        "count": {"kind": "integer", "description": ""},
        "extra": {"kind": "any", "description": ""},
        "image": {
            "kind": "ndarray",
            "dtype": "float64",
            "shape": [8, -1],
            "description": "grey levels 0-16",
        },
        "labels": {
            "kind": "list",
            "item": {"kind": "string", "description": ""},
            "description": "names to report",
        },
        "raw": {"kind": "file", "description": ""},
        "scale": {"kind": "number", "description": ""},
        "verbose": {"kind": "boolean", "description": ""},
    },
    "description": "one image",
}

_EXEC_RECORD = ServableRecord(
    spec=ServableSpec(
        name="digits",
        version="1.0.0",
        title="Handwritten digit classifier",
        description="An SVC trained on 8x8 digit images.",
        creators=[
            Creator("Ada Lovelace", "Analytical Engines Ltd", "0000-0002-1825-0097"),
            Creator("Grace Hopper"),
        ],
        domains=["machine learning", "vision"],
        license="Apache-2.0",
        doi="10.1000/182",
        related_identifiers=[RelatedIdentifier("arXiv:1811.11213", "IsDescribedBy")],
        model_type="sklearn",
        input=_EXEC_INPUT,
        output={"kind": "integer", "description": "the digit"},
        runtime={
            "kind": "exec",
            "command": "python3",
            "args": ["serve.py"],
            "working_dir": "model",
            "env": {"OMP_NUM_THREADS": "1"},
        },
        container=Container("docker.io/library/python:3.11"),
        files=["serve.py", "model.pkl"],
        build=Build("python3", ["train.py"]),
        options=ServableOptions(
            memoize=True,
            max_batch_size=256,
            max_batch_delay_ms="auto",
            latency_target_ms=50,
            validate_input=True,
            max_duration_s=600,
        ),
        environment=Environment(">=3.9", ["scikit-learn>=1.3", "numpy"], None),
    ),
    files=[
        FileEntry(
            "serve.py", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", 312
        ),
        FileEntry("model.pkl", "0" * 63 + "1", 4_294_967_296),
    ],
    published_us=1_764_000_000_000_000,
    lock=EnvironmentLock(
        ["scikit-learn>=1.3,==1.5.2", "numpy==2.1.3", "msgpack==1.1.0"],
        [
            FileEntry(
                "msgpack-1.1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                "0" * 63 + "2",
                378_000,
            )
        ],
    ),
)


def _pipeline_spec(**changes):
    fields = dict(
        name="formation-enthalpy",
        version="2.1.0",
        title="Pipeline: parse → features → model",
        description="",
        creators=[],
        domains=[],
        license="NOASSERTION",
        doi=None,
        related_identifiers=[],
        model_type="pipeline",
        input={"kind": "string", "description": ""},
        output={"kind": "number", "description": ""},
        runtime={"kind": "pipeline", "steps": ["fe-parse@1.0.0", "fe-model@1.2.0"]},
        container=None,
        files=[],
        build=None,
        options=ServableOptions(False, 1, 5, 100, False, None),
    )
    fields.update(changes)
    return ServableSpec(**fields)


REPLIES = {
    "reply.pong": ("as_pong", (4242, "0.1.0")),
    "reply.submitted": ("as_submitted", [1, 2, 4_294_967_296]),
    "reply.results": (
        "as_results",
        [
            _view(
                1,
                "echo",
                TaskState.COMPLETED,
                1,
                "host-1.4242",
                (
                    1_764_000_000_000_000,
                    1_764_000_000_000_150,
                    1_764_000_000_000_900,
                    12,
                    1_764_000_000_000_300,
                    1_764_000_000_000_500,
                    1_764_000_000_000_700,
                    1_764_000_000_000_950,
                ),
                output={"x": 1},
            ),
            _view(
                2,
                "digits@1.0.0",
                TaskState.FAILED,
                1,
                "host-1.4242",
                (1_764_000_000_001_000, 1_764_000_000_001_100, 1_764_000_000_002_000, 700),
                error="ValueError: expected 64 pixels, got 3",
            ),
            _view(3, "sleep", TaskState.QUEUED, 0, None, (1_764_000_000_003_000, 0, 0, 0)),
            _view(
                4_294_967_296,
                "digits@1.0.0",
                TaskState.COMPLETED,
                0,
                None,
                (1_764_000_000_004_000, 0, 1_764_000_000_004_010, 0),
                memo=MemoUse.STORED,
                output=7,
            ),
            _view(
                5,
                "sleep",
                TaskState.CANCELLED,
                0,
                None,
                (1_764_000_000_005_000, 0, 1_764_000_000_005_500, 0),
                memo=MemoUse.COALESCED,
                error="cancelled by a client",
            ),
            _view(999, "", TaskState.UNKNOWN, 0, None, (0, 0, 0, 0)),
        ],
    ),
    "reply.task-status": (
        "as_task_status",
        [
            _view(
                6,
                "sleep",
                TaskState.RUNNING,
                2,
                "node7.99",
                (1_764_000_000_006_000, 1_764_000_000_006_200, 0, 0),
            )
        ],
    ),
    "reply.cancelled": ("as_cancelled", [(7, TaskState.CANCELLED), (8, TaskState.COMPLETED)]),
    "reply.servables": (
        "as_servables",
        [
            ServableSummary(
                "digits",
                "1.0.0",
                "Handwritten digit classifier",
                "sklearn",
                ["vision"],
                ["Ada Lovelace"],
                7.5,
            ),
            ServableSummary("noop", "0.0.0", "returns null", "builtin", [], [], 0.0),
        ],
    ),
    "reply.servable-exec": ("as_servable", _EXEC_RECORD),
    "reply.servable-pipeline": (
        "as_servable",
        ServableRecord(_pipeline_spec(), [], 1_764_000_000_000_001),
    ),
    "reply.servable-builtin": (
        "as_servable",
        ServableRecord(
            _pipeline_spec(
                name="noop",
                version="0.0.0",
                model_type="builtin",
                runtime={"kind": "builtin"},
                input={"kind": "any", "description": ""},
            ),
            [],
            1_764_000_000_000_001,
        ),
    ),
    "reply.versions": ("as_versions", ["1.0.0", "1.1.0"]),
    "reply.task-events": (
        "as_task_events",
        (
            [
                TaskEvent(
                    7,
                    1_764_000_000_000_000,
                    5,
                    "echo",
                    "retried",
                    "host-1.4242",
                    1,
                    "worker host-1.4242 lost",
                ),
                TaskEvent(8, 1_764_000_000_000_500, 5, "echo", "finished", None, 2, ""),
            ],
            9,
        ),
    ),
}

ERRORS = {
    "reply.error-bad-request": (
        errors.BadRequest,
        "task 0: unknown servable `nope` (known: echo, noop, sleep)",
    ),
    "reply.error-shutting-down": (
        errors.ShuttingDown,
        "the daemon is shutting down and accepts no new tasks",
    ),
    "reply.error-unavailable": (errors.Unavailable, "the daemon cannot store new tasks: disk full"),
    "reply.error-not-found": (
        errors.ServableNotFound,
        "servable `digits` has no version 9.9.9 (published: 1.0.0)",
    ),
    "reply.error-conflict": (
        errors.Conflict,
        "digits@1.0.0 is already published with other content",
    ),
    "reply.error-forbidden": (
        errors.Forbidden,
        "token `ci` may not use servable `noop` (it may use: echo)",
    ),
}


def test_the_protocol_version_is_the_rust_crates():
    assert MANIFEST_DATA["protocol_version"] == messages.PROTOCOL_VERSION, (
        "protocol/testdata/client-vectors.json is for protocol version %d; update "
        "PROTOCOL_VERSION and the messages in clients/python/flotilla/messages.py"
        % MANIFEST_DATA["protocol_version"]
    )


def test_every_vector_has_a_python_counterpart_and_back():
    python_side = set(CALLS) | set(REPLIES) | set(ERRORS)
    assert sorted(set(VECTORS) - python_side) == [], "vectors the Python tests do not check"
    assert sorted(python_side - set(VECTORS)) == [], "Python cases with no vector in the file"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_calls_encode_to_the_rust_bytes(name):
    assert CALLS[name]().hex() == VECTORS[name].hex()


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_replies_decode_to_python_objects(name):
    method, expected = REPLIES[name]
    reply = messages.decode_reply(VECTORS[name])
    assert getattr(reply, method)() == expected


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_refusals_raise_typed_errors_with_the_daemons_message(name):
    cls, message = ERRORS[name]
    with pytest.raises(cls) as caught:
        messages.decode_reply(VECTORS[name])
    assert caught.value.message == message
    assert str(caught.value) == message
    assert caught.value.kind == cls.KIND
    assert isinstance(caught.value, errors.RequestRefused)


def test_a_reply_of_another_version_names_both_versions():
    frame = bytearray(VECTORS["reply.pong"])
    assert frame[1] == messages.PROTOCOL_VERSION  # [version, message]: 0x92, version
    frame[1] = messages.PROTOCOL_VERSION + 1
    with pytest.raises(
        errors.ProtocolError, match="daemon speaks version %d" % (messages.PROTOCOL_VERSION + 1)
    ):
        messages.decode_reply(bytes(frame))


def test_a_reply_of_the_wrong_kind_is_a_protocol_error():
    with pytest.raises(errors.ProtocolError, match="unexpected reply from the daemon: Pong"):
        messages.decode_reply(VECTORS["reply.pong"]).as_results()
    with pytest.raises(errors.ProtocolError, match="not msgpack"):
        messages.decode_reply(b"\xc1")



def test_a_spec_that_needs_accelerators_reads_its_resources():
    import msgpack

    version, reply = msgpack.unpackb(
        VECTORS["reply.servable-exec"], raw=False, strict_map_key=False
    )
    decode = messages.decode_reply
    assert decode(VECTORS["reply.servable-exec"]).as_servable().spec.gpus == 0
    # `[resources]` is the 18th field.
    reply["Servable"][0][17] = [2]
    record = decode(msgpack.packb([version, reply], use_bin_type=True)).as_servable()
    assert record.spec.gpus == 2
    assert record.spec.name == "digits"


def test_a_records_access_reads_with_and_without_a_shared_memo():
    import msgpack

    version, reply = msgpack.unpackb(
        VECTORS["reply.servable-exec"], raw=False, strict_map_key=False
    )
    decode = messages.decode_reply
    record = reply["Servable"]
    while len(record) < 4:
        record.append(None)
    # As a daemon writes it: the fifth field only when the memo is shared.
    cases = (
        ([1000, "public", [], [2000]], False),
        ([1000, "owner", [7], [], True], True),
    )
    for access, shared in cases:
        reply["Servable"] = record[:4] + [access]
        frame = msgpack.packb([version, reply], use_bin_type=True)
        got = decode(frame).as_servable().access
        assert (got.owner, got.groups, got.shared_memo) == (1000, access[3], shared)


# --- the TCP client API: handshake, sealed frames, parts --------------------

SECURE_MANIFEST = WORKSPACE / "protocol" / "testdata" / "secure-vectors.json"


def _load_secure():
    with open(SECURE_MANIFEST) as f:
        manifest = json.load(f)
    return manifest, {v["name"]: bytes.fromhex(v["hex"]) for v in manifest["vectors"]}


SECURE_DATA, SECURE = _load_secure()


def _secure_run():
    """The vectors' handshake replayed by the Python client: every frame it
    makes, and its channel."""
    from flotilla.secure import ClientHandshake, Token

    token = Token.parse(SECURE["token.text"].decode())
    client = ClientHandshake(token, SECURE["input.client-nonce"], SECURE["input.client-ephemeral"])
    reply = messages.decode_reply(SECURE["frame.challenge"])
    assert reply.variant == "Challenge"
    hello, channel = client.answer(*reply.body)
    return token, client, hello, channel


def test_the_secure_vectors_are_for_this_protocol_version():
    assert SECURE_DATA["protocol_version"] == messages.PROTOCOL_VERSION


def test_a_token_parses_and_gives_the_daemons_verifier():
    from flotilla.secure import BadToken, Token

    token = Token.parse("  %s\n" % SECURE["token.text"].decode())
    assert token.id == SECURE["input.token-id"].hex()
    assert token.verifier() == SECURE["token.verifier"]
    assert SECURE["input.token-secret"].hex() not in repr(token)
    well_formed = "flt_" + "0" * 16 + "_" + "0" * 64
    assert Token.parse(well_formed).id == "0" * 16
    for bad in [
        "",
        "flt_",
        "flt_00_11",
        well_formed.replace("flt_", "xyz_"),
        well_formed[:-1] + "g",
        well_formed[:-2],
    ]:
        with pytest.raises(BadToken, match="not a Flotilla token"):
            Token.parse(bad)


def test_the_handshake_frames_are_the_rust_bytes():
    _token, client, hello, _channel = _secure_run()
    assert messages.encode_frame(client.probe()).hex() == SECURE["frame.probe"].hex()
    assert messages.encode_frame(hello).hex() == SECURE["frame.hello"].hex()


def test_the_channel_seals_and_opens_the_rust_bytes():
    _token, _client, _hello, channel = _secure_run()
    assert channel.id == SECURE["session.connection-id"]
    welcome = messages.decode_reply(channel.open(SECURE["sealed.welcome"]))
    assert (welcome.variant, list(welcome.body)) == ("Welcome", [4242])
    assert channel.seal(messages.ping()).hex() == SECURE["sealed.call-ping"].hex()
    status = messages.encode_frame("DaemonStatus")
    assert channel.seal(status).hex() == SECURE["sealed.call-status"].hex()
    with pytest.raises(errors.Forbidden, match="token `ci` was revoked"):
        messages.decode_reply(channel.open(SECURE["sealed.reply-forbidden"]))


def test_a_sealed_reply_opens_once_and_not_altered():
    from flotilla.secure import OpenError

    _token, _client, _hello, channel = _secure_run()
    channel.open(SECURE["sealed.welcome"])
    with pytest.raises(OpenError, match="replay"):
        channel.open(SECURE["sealed.welcome"])
    fresh = _secure_run()[3]
    sealed = bytearray(SECURE["sealed.reply-forbidden"])
    for i in range(len(sealed)):
        altered = bytearray(sealed)
        altered[i] ^= 1
        with pytest.raises(OpenError):
            fresh.open(bytes(altered))
    # A frame the client sealed does not open as the daemon's (other key).
    with pytest.raises(OpenError, match="authentication"):
        fresh.open(SECURE["sealed.call-status"])
    # Nothing failed took a counter: the real frame still opens.
    fresh.open(bytes(sealed))


def test_a_daemon_that_cannot_prove_the_token_is_found_out():
    from flotilla.secure import ClientHandshake, Token, WrongDaemon

    token = Token.parse(SECURE["token.text"].decode())
    other = Token(token.id, bytes(32))
    client = ClientHandshake(other, SECURE["input.client-nonce"], SECURE["input.client-ephemeral"])
    body = messages.decode_reply(SECURE["frame.challenge"]).body
    with pytest.raises(WrongDaemon, match="cannot prove it knows this token"):
        client.answer(*body)
    with pytest.raises(WrongDaemon, match="degenerate"):
        ClientHandshake(token, bytes(32), bytes(32)).answer(body[0], bytes(32), body[2])


def test_gate_replies_decode():
    refused = messages.decode_reply(SECURE["frame.refused"])
    assert (refused.variant, list(refused.body)) == ("Refused", ["token `gone` was revoked"])
    assert messages.decode_reply(SECURE["frame.handshake-again"]).variant == "Handshake"


def test_parts_are_the_rust_bytes():
    from flotilla.secure import ACK, split_parts

    pieces = split_parts(SECURE["sealed.call-status"], 0, SECURE_DATA["part_bytes"])
    expected = sorted(n for n in SECURE if n.startswith("parts.call-status."))
    assert [p.hex() for p in pieces] == [SECURE[n].hex() for n in expected]
    assert ACK == SECURE["parts.ack"]
