#!/usr/bin/env python3
"""Writes the checked-in seed corpus of every fuzz target (fuzz/corpus/).

Seeds are real inputs: client frames from the shared protocol vectors
(protocol/testdata/client-vectors.json), interchange frames and servable
replies in the encoding the Rust protocol crate produces (msgpack of
``[protocol_version, message]``, structs as arrays, enums externally tagged,
``servable.toml`` types internally tagged by ``kind``), the servable and
site files of the repository, and scheduler outputs recorded in the
providers' tests. Run it from anywhere with a Python that has ``msgpack``
(the repository's .venv): ``.venv/bin/python fuzz/make_corpus.py``.
Every file is named after what it holds, so a rerun rewrites the same
files.
"""

import json
import pathlib

import msgpack

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus"
VECTORS = json.loads((ROOT / "protocol" / "testdata" / "client-vectors.json").read_text())
VERSION = VECTORS["protocol_version"]


def frame(message):
    """A frame as the protocol crate encodes one."""
    return msgpack.packb([VERSION, message], use_bin_type=True)


def write(target, name, data):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (directory / name).write_bytes(data)


# ----- servable records (they travel in Publish and in Work) -------------


def type_spec(kind, *fields):
    """An internally tagged TypeSpec as an array: the tag, then the fields."""
    return [kind, *fields]


def servable_record(name, runtime, input_spec, output_spec, files):
    spec = [
        name,
        "1.0.0",
        "A servable for the fuzz corpus",
        "",
        [["Flotilla developers", None, None]],
        ["chemistry"],
        "Apache-2.0",
        None,
        [["10.24432/C50P49", "IsDerivedFrom"]],
        "python-function",
        input_spec,
        output_spec,
        runtime,
        None,
        files,
        None,
        [False, 16, "auto", 100, True, None],
    ]
    entries = [[path, "0" * 64, 42] for path in files]
    return [spec, entries, 1_796_000_000_000_000]


RECORD = servable_record(
    "digits",
    ["exec", "python3", ["serve.py"], None, {"OMP_NUM_THREADS": "1"}],
    type_spec("ndarray", "float64", [8, 8], "grey levels"),
    type_spec("integer", "the digit"),
    ["serve.py", "model.pkl"],
)
PIPELINE = servable_record(
    "enthalpy",
    ["pipeline", ["parse@1.0.0", "features@1.0.0", "model@1.0.0"]],
    type_spec("dict", {"formula": type_spec("string", "")}, ""),
    type_spec("list", type_spec("number", ""), ""),
    [],
)


def client_call():
    for vector in VECTORS["vectors"]:
        if vector["name"].startswith("call."):
            write("client_call", vector["name"], bytes.fromhex(vector["hex"]))
    write("client_call", "call.publish", frame({"Publish": [RECORD]}))
    write("client_call", "call.publish-pipeline", frame({"Publish": [PIPELINE]}))
    write("client_call", "call.events", frame({"Events": [0, 5000]}))
    write("client_call", "call.memo-clear", frame({"MemoClear": ["digits"]}))
    write("client_call", "call.remove", frame({"RemoveServable": ["digits@1.0.0"]}))
    write("client_call", "call.status", frame("DaemonStatus"))
    # TaskQuery: states, servable, max_age_ms, before, limit.
    list_tasks = [["Failed", "Cancelled"], "digits", 3_600_000, 100_000, 100]
    write("client_call", "call.list-tasks", frame({"ListTasks": list_tasks}))
    write("client_call", "call.list-tasks-all", frame({"ListTasks": [[], None, None, None, 0]}))
    write("client_call", "call.settled", frame({"Settled": [list(range(1, 65)), 2000]}))


# ----- the interchange -----------------------------------------------------


def worker_message():
    hello = [
        "node-1.4242.9f3a",
        0,
        "node-1",
        "nid001",
        0,
        4242,
        2,
        ["*", "digits@1.0.0", "noop"],
        b"\x03" * 32,
        b"\x01" * 32,
        64 << 20,
        1_796_003_600,
        [[7, [11, 12]]],
    ]
    write("worker_message", "hello", frame({"Hello": hello}))
    write("worker_message", "probe", frame({"Probe": [b"\x02" * 32, b"\x05" * 32, ["aes-256-gcm", "chacha20-poly1305"]]}))
    write("worker_message", "leave", frame({"Leave": ["wall time nearly over"]}))
    write("worker_message", "pull-wait", frame({"Pull": [[], True]}))
    result = [
        7,
        1500,
        1_796_000_000_000_000,
        1_796_000_000_001_500,
        [[11, {"Output": msgpack.packb(3)}], [12, {"Error": "ValueError: bad pixel"}]],
        None,
    ]
    failed = [8, 20, 0, 0, [], ["Crashed", "the servable exited with 1"]]
    write("worker_message", "pull-results", frame({"Pull": [[result, failed], False]}))


def daemon_message():
    write("daemon_message", "probe-ok", frame({"ProbeOk": [b"\x03" * 32, b"\x06" * 32, b"\x04" * 32, "aes-256-gcm"]}))
    write("daemon_message", "welcome", frame({"Welcome": [500, 3000]}))
    write("daemon_message", "refused", frame({"Refused": ["wrong secret"]}))
    write("daemon_message", "reregister", frame("Reregister"))
    write("daemon_message", "shutdown", frame("Shutdown"))
    write("daemon_message", "heartbeat", frame({"Work": [[]]}))
    items = [[11, msgpack.packb([[0.0] * 8] * 8)], [12, msgpack.packb(None)]]
    batch = [7, "digits@1.0.0", msgpack.packb({"top_k": 3}), items, RECORD]
    builtin = [8, "echo", b"", [[13, msgpack.packb("x")]], None]
    write("daemon_message", "work", frame({"Work": [[batch, builtin]]}))


# ----- servable processes --------------------------------------------------


def stdio_reply():
    def body(value):
        return msgpack.packb(value, use_bin_type=True)

    write("stdio_reply", "ready", body({"type": "ready"}))
    write(
        "stdio_reply",
        "outputs",
        body({"type": "outputs", "outputs": [{"output": [1, 2.5, "x"]}, {"error": "bad pixel"}]}),
    )
    write("stdio_reply", "outputs-nested", body({"type": "outputs", "outputs": [{"output": {"a": [None, True, b"\x00"]}}]}))
    write("stdio_reply", "failed", body({"type": "failed", "message": "model not loaded"}))
    write("stdio_reply", "error", body({"type": "error"}))


def typed_input():
    # The first byte picks the declared type (see fuzz_targets/typed_input.rs).
    samples = [
        (0, {"anything": [1, None]}),
        (1, 2.5),
        (2, 7),
        (3, "H2O"),
        (4, True),
        (5, b"\x89PNG"),
        (6, [1, 2, 3]),
        (7, [[1], ["a", None]]),
        (8, {"elements": ["Fe", "O"], "fractions": [0.4, 0.6], "count": 2, "strict": False}),
        (9, [[float(i)] * 8 for i in range(8)]),
        (10, [[1, 2, 3], [4, 5, 6]]),
        (11, -3),
        (12, [[[True, False]], [[False, True]]]),
        (9, [[1.0] * 8] * 7),
        (8, {"elements": ["Fe"]}),
    ]
    for n, (pick, value) in enumerate(samples):
        write("typed_input", "input-%02d" % n, bytes([pick]) + msgpack.packb(value, use_bin_type=True))


# ----- files ---------------------------------------------------------------


def files():
    for path in sorted(ROOT.glob("site-examples/servables/**/servable.toml")) + sorted(
        ROOT.glob("tests/servables/*/servable.toml")
    ):
        name = "-".join(path.relative_to(ROOT).parent.parts[-2:])
        write("servable_toml", name, path.read_bytes())
    for path in [ROOT / "configs" / "local.toml"] + sorted(ROOT.glob("site-examples/*.toml")):
        write("site_toml", path.stem, path.read_bytes())


# ----- scheduler outputs (recorded in the providers' tests) ---------------


def command(status, stdout, stderr=""):
    """Fuzz bytes for a command's result (see fuzz/src/lib.rs)."""
    first = {0: 0, 1: 2, -1: 3}[status]
    return bytes([first]) + stdout.encode() + b"\x00" + stderr.encode()


#: `qstat -f -F json -x` as PBS Pro 2022 prints it (trimmed).
QSTAT = """{
    "timestamp":1796000000,
    "pbs_version":"2022.1.3.20230614134139",
    "pbs_server":"polaris-pbs-01",
    "Jobs":{
        "101.polaris-pbs-01":{"Job_Name":"flotilla-ab12cd-block-0","job_state":"Q",
            "comment":"Not Running: Insufficient amount of resource: ngpus"},
        "102.polaris-pbs-01":{"job_state":"R","comment":"Job run at Thu Nov 26 at 10:00"},
        "103.polaris-pbs-01":{"job_state":"F","comment":"finished","Exit_status":0},
        "104.polaris-pbs-01":{"job_state":"F","comment":"finished","Exit_status":2},
        "105.polaris-pbs-01":{"job_state":"F","comment":"terminated","Exit_status":271},
        "106.polaris-pbs-01":{"job_state":"F","comment":"finished","Exit_status":-29},
        "107.polaris-pbs-01":{"job_state":"H","comment":"job held"}
    }
}
"""

#: `kubectl get deployments,pods -o json` in the shape kubectl prints it.
KUBECTL_GET = """{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"kind": "Deployment", "metadata": {"name": "b-run", "labels": {"flotilla/block": "b-run"}}},
    {"kind": "Pod", "metadata": {"name": "b-run-5d9c-x", "labels": {"flotilla/block": "b-run"}},
     "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "ready": true,
       "state": {"running": {"startedAt": "2026-11-26T10:00:00Z"}}}]}},
    {"kind": "Deployment", "metadata": {"name": "b-wait", "labels": {"flotilla/block": "b-wait"}}},
    {"kind": "Pod", "metadata": {"name": "b-wait-7f-y", "labels": {"flotilla/block": "b-wait"}},
     "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
       "reason": "Unschedulable", "message": "0/4 nodes are available"}]}},
    {"kind": "Deployment", "metadata": {"name": "b-bad", "labels": {"flotilla/block": "b-bad"}}},
    {"kind": "Pod", "metadata": {"name": "b-bad-1a-z", "labels": {"flotilla/block": "b-bad"}},
     "status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "ready": false,
       "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}
  ]
}
"""


def scheduler_outputs():
    write("slurm_output", "sbatch", command(0, "4242;perlmutter\n"))
    write(
        "slurm_output",
        "squeue",
        command(
            0,
            "18 PD None\n4 PD Resources\n2 R None\n3 CG None\n5 CA None\n1 CD None\n"
            "16 F NonZeroExitCode\n17 TO TimeLimit\n8 F JobLaunchFailure\n9 PD JobHeldUser\n"
            "12 PD ReqNodeNotAvail, UnavailableNodes:nid[001-004]\n",
        ),
    )
    write("slurm_output", "squeue-unknown", command(1, "", "slurm_load_jobs error: Invalid job id specified\n"))
    write("pbs_output", "qsub", command(0, "1234.polaris-pbs-01\n"))
    write("pbs_output", "qstat", command(1, QSTAT, "qstat: Unknown Job Id 108.polaris-pbs-01\n"))
    write("pbs_output", "qstat-down", command(1, "", "qstat: cannot connect to server pbs01 (errno=15010)\n"))
    write(
        "cobalt_output",
        "qsub",
        command(0, 'Job routed to queue "debug-cache-quad".\nMemory mode set to cache quad\n368154\n'),
    )
    write(
        "cobalt_output",
        "qstat",
        command(
            0,
            "JobID   User   WallTime  Nodes  State       Location\n"
            "======================================================\n"
            "368154  alice  00:30:00  8      queued      None\n"
            "368155  alice  00:30:00  8      running     3834-3841\n"
            "368156  alice  00:30:00  8      user_hold   None\n",
        ),
    )
    write(
        "cobalt_output",
        "cobaltlog",
        command(
            1,
            "Thu Nov 26 10:00:05 +0000 (UTC) Info: task completed normally with an exit code of "
            "127; initiating job cleanup and removal\n",
            "no matching jobs\n",
        ),
    )
    write("kubectl_output", "get", command(0, KUBECTL_GET))
    write("kubectl_output", "get-failed", command(1, "", "error: You must be logged in to the server\n"))


# ----- the secured connection of the shared vectors ------------------------


def sealed_frames():
    """The sealed frames and handshake messages of the connection that
    protocol/testdata/secure-vectors.json records, which the sealed_frame
    target rebuilds from the same fixed inputs: its seeds open there. A
    seed of counters for the replay window follows (little-endian steps)."""
    secure = json.loads((ROOT / "protocol" / "testdata" / "secure-vectors.json").read_text())
    for vector in secure["vectors"]:
        kind, _, name = vector["name"].partition(".")
        if kind in ("frame", "sealed", "parts"):
            write("sealed_frame", vector["name"], bytes.fromhex(vector["hex"]))
    steps = [1, 2, -1, 5, 1020, -1023, -1024, 0, -3, 3, -1025, 1]
    write("sealed_frame", "window-steps", b"".join(s.to_bytes(2, "little", signed=True) for s in steps))


if __name__ == "__main__":
    client_call()
    worker_message()
    daemon_message()
    stdio_reply()
    typed_input()
    files()
    scheduler_outputs()
    sealed_frames()
