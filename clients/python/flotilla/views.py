"""What the daemon reports, as plain Python objects.

These mirror the Rust ``protocol`` crate's types (``TaskView``,
``ServableSummary``, ``ServableRecord``, ...) field for field, so the CLI's
documentation and ``flotilla ... --json`` output describe them too. Servable
types and runtimes (``TypeSpec``, ``Runtime``) are dicts shaped like the
``servable.toml`` tables they come from, e.g. ``{"kind": "ndarray",
"dtype": "float64", "shape": [8, 8], "description": ""}``.
"""

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

__all__ = [
    "TaskState",
    "MemoUse",
    "TaskTimings",
    "TaskView",
    "ServableSummary",
    "Creator",
    "RelatedIdentifier",
    "Container",
    "Build",
    "ServableOptions",
    "ServableSpec",
    "FileEntry",
    "ServableRecord",
]


class TaskState(str, enum.Enum):
    """Where a task is in its life; compares equal to its lower-case name."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def is_final(self):
        """True once the task can no longer change."""
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)

    def __str__(self):
        return self.value


class MemoUse(str, enum.Enum):
    """How the memo store answered a task."""

    #: From a stored result of an identical earlier request; no worker ran it.
    STORED = "stored"
    #: Shared the one execution of an identical request in flight.
    COALESCED = "coalesced"

    def __str__(self):
        return self.value


@dataclass
class TaskTimings:
    """When things happened to a task, in microseconds since the Unix epoch
    (0: not yet, or never)."""

    submitted_us: int
    dispatched_us: int
    finished_us: int
    #: Time the servable spent on the batch that held the task.
    run_us: int
    #: The worker received the batch that held the task (worker's clock).
    worker_received_us: int = 0
    #: The worker sent that batch's result (worker's clock).
    worker_sent_us: int = 0
    #: The daemon received the result from the worker.
    result_received_us: int = 0
    #: The daemon released the reply carrying this view (once durable).
    replied_us: int = 0


@dataclass  # not frozen: map builds one per task, and frozen ones cost 5x more
class TaskView:
    """Everything a client may learn about one task.

    ``output`` is the servable's output (decoded) once the task completed;
    ``error`` is the daemon's or the servable's message once it failed or
    was cancelled. Status replies carry the error but never the output.
    """

    id: int
    #: Servable it invokes, as resolved (``NAME@VERSION``); empty when unknown.
    servable: str
    state: TaskState
    #: How many times it was handed to a worker.
    attempts: int
    #: The worker that ran (or runs) it.
    worker: Optional[str]
    timings: TaskTimings
    #: Set when the memo store answered it.
    memo: Optional[MemoUse]
    output: Any = None
    error: Optional[str] = None

    @property
    def is_final(self):
        """True once the task can no longer change."""
        return self.state.is_final


@dataclass(frozen=True)
class TaskEvent:
    """Something that happened to one of the caller's tasks (``flotilla
    events --tasks``)."""

    #: Sequence number, increasing; ask for events after it.
    seq: int
    #: When (µs since the epoch).
    at_us: int
    task_id: int
    #: Its servable, ``NAME@VERSION``.
    servable: str
    #: ``accepted``, ``dispatched``, ``retried``, ``finished``, ``failed``
    #: or ``cancelled``.
    kind: str
    #: The worker concerned, if any.
    worker: Optional[str]
    #: Attempts so far.
    attempt: int
    #: Details in words (a failure's reason, why it was retried).
    message: str


@dataclass(frozen=True)
class ServableSummary:
    """A catalog entry, as listed or found by a search."""

    name: str
    version: str
    title: str
    model_type: str
    domains: List[str]
    #: Creator names.
    creators: List[str]
    #: Search score (0 outside searches); higher is a better match.
    score: float

    @property
    def id(self):
        """``NAME@VERSION``."""
        return "%s@%s" % (self.name, self.version)


@dataclass(frozen=True)
class Creator:
    """A servable's creator (DataCite style)."""

    name: str
    affiliation: Optional[str] = None
    #: ORCID iD, e.g. ``0000-0002-1825-0097``.
    orcid: Optional[str] = None


@dataclass(frozen=True)
class RelatedIdentifier:
    """A related work: a paper, a dataset."""

    #: DOI, URL, arXiv id, ...
    identifier: str
    #: DataCite relation (``IsDescribedBy``, ``IsDerivedFrom``, ...).
    relation: str


@dataclass(frozen=True)
class Container:
    """The container image a servable runs in."""

    image: str


@dataclass(frozen=True)
class Build:
    """The build step run when the servable was published."""

    command: str
    args: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class Environment:
    """What a servable needs of a node's software (``[environment]``)."""

    #: A requirement on the node's Python, e.g. ``">=3.9"``.
    python: Optional[str] = None
    #: pip requirements installed into a virtual environment on each node.
    packages: List[str] = field(default_factory=list)
    #: A container image to run it in instead.
    image: Optional[str] = None


@dataclass(frozen=True)
class ServableOptions:
    """How the daemon serves a servable."""

    #: Answer repeated identical requests from the memo store.
    memoize: bool
    #: Most inputs in one model call.
    max_batch_size: int
    #: Milliseconds a request may wait for its batch to fill, or ``"auto"``.
    max_batch_delay_ms: Union[int, str]
    #: The bound ``"auto"`` batching keeps within.
    latency_target_ms: int
    #: Inputs are checked against the declared type at submission.
    validate_input: bool
    #: Longest one call may take, in seconds, if the author said.
    max_duration_s: Optional[int] = None
    #: Slot processes are forked from a per-node template that has loaded
    #: the model.
    fork: bool = False


@dataclass(frozen=True)
class ServableSpec:
    """A servable's description, as written in its ``servable.toml``."""

    name: str
    version: str
    title: str
    description: str
    creators: List[Creator]
    domains: List[str]
    #: SPDX license identifier.
    license: str
    doi: Optional[str]
    related_identifiers: List[RelatedIdentifier]
    model_type: str
    #: The input's type, e.g. ``{"kind": "list", "item": {...}, "description": ""}``.
    input: Dict[str, Any]
    #: The output's type.
    output: Dict[str, Any]
    #: How it runs: ``{"kind": "builtin"}``, ``{"kind": "exec", "command": ...,
    #: "args": [...], "working_dir": ..., "env": {...}}`` or ``{"kind":
    #: "pipeline", "steps": [...]}``.
    runtime: Dict[str, Any]
    container: Optional[Container]
    #: Files it needs, relative to its directory.
    files: List[str]
    build: Optional[Build]
    options: ServableOptions
    #: Accelerators (GPUs, GCDs, tiles) one call needs of the worker slot
    #: that runs it (``[resources] gpus``); 0: none.
    gpus: int = 0
    #: What it needs of the node's software, if it says.
    environment: Optional[Environment] = None
    #: The pools whose workers may run it (``[resources] pools``); empty: any.
    pools: List[str] = field(default_factory=list)
    #: Labels a pool must carry to run it (``[resources] labels``).
    labels: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    """A published file: its path, blake3 hash (hex) and size in bytes."""

    path: str
    blake3: str
    size: int


@dataclass(frozen=True)
class EnvironmentLock:
    """A servable's environment as captured at publication."""

    #: The declared packages pinned to the publisher's versions, and msgpack.
    requirements: List[str]
    #: The wheels that satisfy them, stored by hash (empty: none captured).
    wheels: List[FileEntry]


@dataclass(frozen=True)
class Access:
    """Who owns a servable and who else may see and invoke it."""

    #: The owner's uid (None: the daemon's user, for old records).
    owner: Optional[int]
    #: ``"owner"`` (the owner and the listed users and groups) or ``"public"``.
    visibility: str
    #: Further users (uids) who may see and invoke it.
    users: List[int]
    #: Unix groups (gids) whose members may.
    groups: List[int]
    #: Whether everybody who may invoke it shares its memo entries (False:
    #: each caller's identical requests are answered only from its own).
    shared_memo: bool = False


@dataclass(frozen=True)
class ServableRecord:
    """A published, immutable servable version."""

    spec: ServableSpec
    #: Its files with hashes, in the order of ``spec.files``.
    files: List[FileEntry]
    #: Publication time, microseconds since the epoch.
    published_us: int
    #: What publishing captured of the environment, if any.
    lock: Optional["EnvironmentLock"] = None
    #: Owner and visibility (None in records published before visibility).
    access: Optional[Access] = None

    @property
    def id(self):
        """``NAME@VERSION``."""
        return "%s@%s" % (self.spec.name, self.spec.version)
