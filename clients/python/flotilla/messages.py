"""The client API's messages on the wire: encoding calls, decoding replies.

The Rust ``protocol`` crate (``protocol/src/client.rs``, ``task.rs``,
``servable.rs``, ``frame.rs``) is the source of truth; this module speaks
the same bytes. A frame is msgpack of ``[PROTOCOL_VERSION, message]``, with
serde's compact shapes:

* a struct is an array of its fields, in declaration order;
* an enum variant is externally tagged: a unit variant is its name
  (``"Ping"``), any other is a one-entry map ``{"Submit": [tasks, wait_ms]}``
  (a newtype variant maps to its one value);
* an internally tagged enum (``TypeSpec``, ``Runtime``) is an array whose
  first element is the tag (``["list", item, description]``);
* payloads (inputs, outputs, parameters) are msgpack ``bin`` holding the
  msgpack of the value; ``Option`` is the value or nil.

The shared test vectors in ``protocol/testdata/client-vectors.json`` pin
these shapes for both languages. There is no I/O here.
"""

import msgpack

from . import payload
from .errors import REFUSALS, ProtocolError, RequestRefused
from .views import (
    Access,
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

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME_BYTES",
    "Reply",
    "encode_frame",
    "ping",
    "submit",
    "results",
    "task_status",
    "cancel",
    "list_servables",
    "show_servable",
    "servable_versions",
    "search_servables",
    "task_events",
    "decode_reply",
]

#: Version of the message family; the daemon refuses other versions by name.
#: Must equal ``PROTOCOL_VERSION`` in ``protocol/src/frame.rs`` (the shared
#: test vectors check it).
PROTOCOL_VERSION = 7

#: The daemon's default cap on one message (``[daemon] max_frame_bytes``).
DEFAULT_MAX_FRAME_BYTES = 64 << 20


def encode_frame(message):
    """One frame: msgpack of ``[PROTOCOL_VERSION, message]``."""
    return msgpack.packb([PROTOCOL_VERSION, message], use_bin_type=True)


# --- calls -----------------------------------------------------------------


def ping():
    """``Ping``: liveness and version check."""
    return encode_frame("Ping")


def submit(tasks, wait_ms=None):
    """``Submit``: ``tasks`` is a list of ``[servable, input_bytes,
    params_bytes]`` (see :mod:`flotilla.payload`). With ``wait_ms`` the daemon
    answers with the results once all are final or the wait passes."""
    return encode_frame({"Submit": [tasks, _opt_u64(wait_ms)]})


def results(ids, wait_ms=None):
    """``Results``: outcomes of ``ids``, held up to ``wait_ms`` until final."""
    return encode_frame({"Results": [_ids(ids), _opt_u64(wait_ms)]})


def task_status(ids):
    """``TaskStatus``: states of ``ids``, without outputs."""
    return encode_frame({"TaskStatus": [_ids(ids)]})


def cancel(ids):
    """``Cancel``: cancel ``ids`` where they have not finished."""
    return encode_frame({"Cancel": [_ids(ids)]})


def list_servables():
    """``ListServables``: the latest version of every servable."""
    return encode_frame("ListServables")


def show_servable(name):
    """``ShowServable``: one version, ``NAME`` (latest) or ``NAME@VERSION``."""
    return encode_frame({"ShowServable": [_text(name, "servable name")]})


def servable_versions(name):
    """``ServableVersions``: every version of a servable, oldest first."""
    return encode_frame({"ServableVersions": [_text(name, "servable name")]})


def search_servables(text="", domain=None, model_type=None, author=None):
    """``SearchServables``: words matched as prefixes in names, titles,
    domains, creators and descriptions; filters must all hold."""
    query = [
        _text(text, "search text"),
        _opt_text(domain, "domain"),
        _opt_text(model_type, "model_type"),
        _opt_text(author, "author"),
    ]
    return encode_frame({"SearchServables": query})


def task_events(after=0, wait_ms=None, servable=None, ids=()):
    """``TaskEvents``: events of the caller's tasks after sequence number
    ``after``, held up to ``wait_ms`` while there is none. ``servable``
    (``NAME`` or ``NAME@VERSION``) and ``ids`` (task ids, and ``(first,
    last)`` inclusive ranges) narrow them."""
    filter_ = [_opt_text(servable, "servable"), _ranges(ids)]
    return encode_frame({"TaskEvents": [_opt_u64(after) or 0, _opt_u64(wait_ms), filter_]})


def _ranges(ids):
    out = []
    for item in ids or ():
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise TypeError("a task id range is (first, last); got %r" % (item,))
            first, last = _ids(item)
            if first > last:
                raise ValueError(
                    "task id range (%d, %d): its first id is above its last" % (first, last)
                )
            out.append([first, last])
        else:
            (only,) = _ids([item])
            out.append([only, only])
    return out


def _ids(ids):
    out = []
    for task_id in ids:
        if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 0:
            raise TypeError(
                "task ids are non-negative integers, as returned by submit(); got %r" % (task_id,)
            )
        out.append(task_id)
    return out


def _opt_u64(value):
    if value is None:
        return None
    return max(0, int(value))


def _text(value, what):
    if not isinstance(value, str):
        raise TypeError("%s must be a string, got a %s" % (what, type(value).__name__))
    return value


def _opt_text(value, what):
    return None if value is None else _text(value, what)


# --- replies ---------------------------------------------------------------


class Reply:
    """A decoded reply: the variant's name and its undecoded body.

    The ``as_*`` methods check that the variant is the expected one and turn
    the body into Python objects, raising :class:`ProtocolError` otherwise.
    """

    __slots__ = ("variant", "body")

    def __init__(self, variant, body):
        self.variant = variant
        self.body = body

    def _expect(self, variant):
        if self.variant != variant:
            raise ProtocolError(
                "unexpected reply from the daemon: %s (expected %s)" % (self.variant, variant)
            )
        return self.body

    def as_pong(self):
        """``Pong``: ``(pid, release)``."""
        pid, release = _fields(self._expect("Pong"), 2, "Pong")
        return pid, release

    def as_submitted(self):
        """``Submitted``: the new task ids, in request order."""
        (ids,) = _fields(self._expect("Submitted"), 1, "Submitted")
        return list(ids)

    def as_results(self):
        """``Results``: one :class:`TaskView` per requested task."""
        (tasks,) = _fields(self._expect("Results"), 1, "Results")
        return [task_view(t) for t in tasks]

    def as_task_status(self):
        """``TaskStatus``: one :class:`TaskView` (no outcome) per task."""
        (tasks,) = _fields(self._expect("TaskStatus"), 1, "TaskStatus")
        return [task_view(t) for t in tasks]

    def as_cancelled(self):
        """``Cancelled``: ``[(task_id, TaskState)]`` after the cancel."""
        (tasks,) = _fields(self._expect("Cancelled"), 1, "Cancelled")
        out = []
        for entry in tasks:
            task_id, state = _fields(entry, 2, "a cancelled task")
            out.append((task_id, _state(state)))
        return out

    def as_servables(self):
        """``Servables``: catalog entries."""
        (entries,) = _fields(self._expect("Servables"), 1, "Servables")
        return [servable_summary(e) for e in entries]

    def as_servable(self):
        """``Servable``: one :class:`ServableRecord`."""
        return servable_record(self._expect("Servable"))

    def as_versions(self):
        """``Versions``: version strings, oldest first."""
        (versions,) = _fields(self._expect("Versions"), 1, "Versions")
        return list(versions)

    def as_task_events(self):
        """``TaskEvents``: ``([TaskEvent], last)``, the events oldest first
        and the sequence number to ask after next."""
        events, last = _fields(self._expect("TaskEvents"), 2, "TaskEvents")
        return [task_event(e) for e in events], last


def decode_reply(data):
    """Decodes one reply frame.

    A refusal (``Error``) is raised as the matching
    :class:`~flotilla.errors.RequestRefused` subclass, carrying the daemon's
    message; anything else comes back as a :class:`Reply`.
    """
    try:
        frame = msgpack.unpackb(data, raw=False, use_list=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError("the daemon's reply is not msgpack: %s" % exc) from exc
    if not isinstance(frame, tuple) or len(frame) != 2 or not isinstance(frame[0], int):
        raise ProtocolError("the daemon's reply is not a [version, message] frame")
    version, message = frame
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "protocol version mismatch: the daemon speaks version %d, this client speaks "
            "version %d; install the Python client from the daemon's release"
            % (version, PROTOCOL_VERSION)
        )
    if isinstance(message, str):
        return Reply(message, None)
    if not isinstance(message, dict) or len(message) != 1:
        raise ProtocolError("the daemon's reply is not a client API message")
    ((variant, body),) = message.items()
    if variant == "Error":
        kind, text = _fields(body, 2, "Error")
        raise REFUSALS.get(kind, RequestRefused)(text, kind)
    return Reply(variant, body)


def _fields(value, count, what):
    """``value`` as a list of ``count`` fields (or any of the counts in a
    tuple: a message that grew fields left out when unset)."""
    counts = count if isinstance(count, tuple) else (count,)
    if not isinstance(value, (tuple, list)) or len(value) not in counts:
        raise ProtocolError(
            "malformed %s in the daemon's reply: expected %s fields, got %r"
            % (what, " or ".join(str(c) for c in counts), _short(value))
        )
    return value


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_STATES = {
    "Queued": TaskState.QUEUED,
    "Running": TaskState.RUNNING,
    "Completed": TaskState.COMPLETED,
    "Failed": TaskState.FAILED,
    "Cancelled": TaskState.CANCELLED,
    "Unknown": TaskState.UNKNOWN,
}

_MEMO = {None: None, "Stored": MemoUse.STORED, "Coalesced": MemoUse.COALESCED}


#: msgpack nil: the output of servables that return nothing (decoded
#: without a call to the msgpack decoder).
_NIL = b"\xc0"


def _state(name):
    try:
        return _STATES[name]
    except (KeyError, TypeError):
        raise ProtocolError("unknown task state %r in the daemon's reply" % (name,)) from None


def task_view(value):
    """A ``TaskView`` array as a :class:`TaskView`, its output decoded.

    This runs once per task in every result, so it is kept lean: ``map``
    over 100,000 inputs decodes 100,000 of these.
    """
    if not isinstance(value, (tuple, list)) or len(value) != 8:
        _fields(value, 8, "TaskView")
    task_id, servable, state, attempts, worker, timings, memo, outcome = value
    output = error = None
    if outcome is not None:
        if not isinstance(outcome, dict) or len(outcome) != 1:
            raise ProtocolError("malformed outcome in the daemon's reply: %r" % (_short(outcome),))
        body = outcome.get("Output", _MISSING)
        if body is _MISSING:
            if "Error" not in outcome:
                raise ProtocolError(
                    "unknown outcome %r in the daemon's reply" % (list(outcome)[0],)
                )
            error = outcome["Error"]
        elif body != _NIL:
            output = payload.decode_output(body)
    try:
        state = _STATES[state]
        memo = _MEMO[memo]
    except (KeyError, TypeError):
        raise ProtocolError(
            "unknown task state or memo use (%r, %r) in the daemon's reply" % (state, memo)
        ) from None
    if not isinstance(timings, (tuple, list)) or len(timings) != 8:
        _fields(timings, 8, "TaskTimings")
    return TaskView(
        task_id, servable, state, attempts, worker, TaskTimings(*timings), memo, output, error
    )


_MISSING = object()


def task_event(value):
    """A ``TaskEventView`` array as a :class:`TaskEvent`."""
    seq, at_us, task_id, servable, kind, worker, attempt, message = _fields(
        value, 8, "TaskEventView"
    )
    return TaskEvent(seq, at_us, task_id, servable, kind, worker, attempt, message)


def servable_summary(value):
    """A ``ServableSummary`` array as a :class:`ServableSummary`."""
    name, version, title, model_type, domains, creators, score = _fields(
        value, 7, "ServableSummary"
    )
    return ServableSummary(
        name=name,
        version=version,
        title=title,
        model_type=model_type,
        domains=list(domains),
        creators=list(creators),
        score=float(score),
    )


def servable_record(value):
    """A ``ServableRecord`` array as a :class:`ServableRecord`."""
    access = None
    if isinstance(value, (tuple, list)) and len(value) == 5:
        spec, files, published_us, lock, access = value
    elif isinstance(value, (tuple, list)) and len(value) == 4:
        spec, files, published_us, lock = value
    else:
        spec, files, published_us = _fields(value, 3, "ServableRecord")
        lock = None
    if access is not None:
        fields = _fields(access, (4, 5), "Access")
        owner, visibility, users, groups = fields[:4]
        access = Access(
            owner=owner,
            visibility=visibility,
            users=list(users),
            groups=list(groups),
            shared_memo=bool(fields[4]) if len(fields) == 5 else False,
        )
    if lock is not None:
        requirements, wheels = _fields(lock, 2, "EnvironmentLock")
        lock = EnvironmentLock(
            requirements=list(requirements),
            wheels=[FileEntry(*_fields(w, 3, "FileEntry")) for w in wheels],
        )
    return ServableRecord(
        spec=servable_spec(spec),
        files=[FileEntry(*_fields(f, 3, "FileEntry")) for f in files],
        published_us=published_us,
        lock=lock,
        access=access,
    )


def servable_spec(value):
    """A ``ServableSpec`` array as a :class:`ServableSpec`."""
    (
        name,
        version,
        title,
        description,
        creators,
        domains,
        license_,
        doi,
        related,
        model_type,
        input_type,
        output_type,
        runtime,
        container,
        files,
        build,
        options,
        resources,
        environment,
    ) = _spec_fields(value)
    if environment is not None:
        python, packages, image = _fields(environment, 3, "Environment")
        environment = Environment(python=python, packages=list(packages), image=image)
    return ServableSpec(
        name=name,
        version=version,
        title=title,
        description=description,
        creators=[Creator(*_fields(c, 3, "Creator")) for c in creators],
        domains=list(domains),
        license=license_,
        doi=doi,
        related_identifiers=[
            RelatedIdentifier(*_fields(r, 2, "RelatedIdentifier")) for r in related
        ],
        model_type=model_type,
        input=type_spec(input_type),
        output=type_spec(output_type),
        runtime=runtime_spec(runtime),
        container=None if container is None else Container(*_fields(container, 1, "Container")),
        files=list(files),
        build=None if build is None else _build(build),
        options=ServableOptions(*_fields(options, (6, 7), "ServableOptions")),
        gpus=_resources(resources)[0],
        pools=list(_resources(resources)[1]),
        labels=dict(_resources(resources)[2]),
        environment=environment,
    )


def _spec_fields(value):
    """A spec's 17 fields, its resources (an 18th field, missing from
    records written before it existed) and its environment (a 19th, left
    out when it declares none)."""
    if isinstance(value, (tuple, list)) and len(value) == 19:
        return value
    if isinstance(value, (tuple, list)) and len(value) == 18:
        return list(value) + [None]
    return list(_fields(value, 17, "ServableSpec")) + [[0], None]


def _resources(value):
    """``Resources``: ``gpus`` alone, or with the pools and labels a
    servable's placement names."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        return [value[0], [], {}]
    return _fields(value, 3, "Resources")


def _build(value):
    command, args = _fields(value, 2, "Build")
    return Build(command=command, args=list(args))


# Field names after the tag, per kind (serde's declaration order).
_TYPE_FIELDS = {
    "number": ("description",),
    "integer": ("description",),
    "string": ("description",),
    "boolean": ("description",),
    "file": ("description",),
    "any": ("description",),
    "list": ("item", "description"),
    "dict": ("properties", "description"),
    "ndarray": ("dtype", "shape", "description"),
}

_RUNTIME_FIELDS = {
    "builtin": (),
    "exec": ("command", "args", "working_dir", "env"),
    "pipeline": ("steps",),
}


def _tagged(value, fields_by_kind, what):
    if not isinstance(value, (tuple, list)) or not value or value[0] not in fields_by_kind:
        raise ProtocolError("malformed %s in the daemon's reply: %r" % (what, _short(value)))
    names = fields_by_kind[value[0]]
    _fields(value, len(names) + 1, "%s %s" % (value[0], what))
    out = {"kind": value[0]}
    out.update(zip(names, value[1:]))
    return out


def type_spec(value):
    """A ``TypeSpec`` array as a dict in ``servable.toml`` shape."""
    out = _tagged(value, _TYPE_FIELDS, "type")
    if out["kind"] == "list":
        out["item"] = type_spec(out["item"])
    elif out["kind"] == "dict":
        out["properties"] = {k: type_spec(v) for k, v in out["properties"].items()}
    elif out["kind"] == "ndarray":
        out["shape"] = list(out["shape"])
    return out


def runtime_spec(value):
    """A ``Runtime`` array as a dict in ``servable.toml`` shape."""
    out = _tagged(value, _RUNTIME_FIELDS, "runtime")
    for key in ("args", "steps"):
        if key in out:
            out[key] = list(out[key])
    if "env" in out:
        out["env"] = dict(out["env"])
    return out
