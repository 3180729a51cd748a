//! Shared test vectors for the client API.
//!
//! Clients written in other languages (the Python client in
//! `clients/python`) cannot link this crate, so they could drift from it
//! silently. This test pins the encoding instead: it encodes a fixed set of
//! [`ClientCall`] and [`ClientReply`] messages and compares them byte for
//! byte with `testdata/client-vectors.json`, which the other clients' tests
//! read too. A change to any message's shape therefore fails here first, and
//! again in every client until it is updated.
//!
//! After an intended change (and a bump of `PROTOCOL_VERSION`), regenerate
//! the file with
//!
//! ```sh
//! FLOTILLA_WRITE_VECTORS=1 cargo test -p flotilla-protocol --test vectors
//! ```

#![allow(missing_docs, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use flotilla_protocol::client::{
    ApiError, ApiErrorKind, ClientCall, ClientReply, SearchQuery, ServableSummary, TaskRequest,
};
use flotilla_protocol::servable::{
    BatchDelay, Build, Container, Creator, Environment, EnvironmentLock, FileEntry,
    RelatedIdentifier, Runtime, ServableOptions, ServableRecord, ServableSpec, TypeSpec,
};
use flotilla_protocol::task::{MemoUse, NIL, Outcome, TaskState, TaskTimings, TaskView};
use flotilla_protocol::watch::{TaskEventFilter, TaskEventView};
use flotilla_protocol::{PROTOCOL_VERSION, Payload, TaskId, decode, encode};

/// Environment variable that makes the test write the file instead of
/// checking it.
const WRITE_ENV: &str = "FLOTILLA_WRITE_VECTORS";

/// One named message.
struct Vector {
    name: &'static str,
    description: &'static str,
    bytes: Vec<u8>,
}

fn manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/client-vectors.json")
}

/// msgpack of a value, as a client encodes a servable's input or parameters.
fn mp(value: rmpv::Value) -> Payload {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &value).expect("writing to a Vec cannot fail");
    Payload::from(out)
}

fn map(entries: Vec<(&str, rmpv::Value)>) -> rmpv::Value {
    rmpv::Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn call(name: &'static str, description: &'static str, message: ClientCall) -> Vector {
    let bytes = encode(&message).expect("every client call encodes");
    assert_eq!(
        decode::<ClientCall>(&bytes, usize::MAX).expect("decodes"),
        message,
        "{name} does not round-trip"
    );
    Vector {
        name,
        description,
        bytes,
    }
}

fn reply(name: &'static str, description: &'static str, message: ClientReply) -> Vector {
    let bytes = encode(&message).expect("every client reply encodes");
    assert_eq!(
        decode::<ClientReply>(&bytes, usize::MAX).expect("decodes"),
        message,
        "{name} does not round-trip"
    );
    Vector {
        name,
        description,
        bytes,
    }
}

fn timings(submitted_us: u64, dispatched_us: u64, finished_us: u64, run_us: u64) -> TaskTimings {
    TaskTimings {
        submitted_us,
        dispatched_us,
        finished_us,
        run_us,
        ..TaskTimings::default()
    }
}

fn completed_view() -> TaskView {
    TaskView {
        id: TaskId(1),
        servable: "echo".into(),
        state: TaskState::Completed,
        attempts: 1,
        worker: Some("host-1.4242".into()),
        timings: TaskTimings {
            worker_received_us: 1_764_000_000_000_300,
            worker_sent_us: 1_764_000_000_000_500,
            result_received_us: 1_764_000_000_000_700,
            replied_us: 1_764_000_000_000_950,
            ..timings(
                1_764_000_000_000_000,
                1_764_000_000_000_150,
                1_764_000_000_000_900,
                12,
            )
        },
        memo: None,
        outcome: Some(Outcome::Output(mp(map(vec![("x", 1.into())])))),
    }
}

fn failed_view() -> TaskView {
    TaskView {
        id: TaskId(2),
        servable: "digits@1.0.0".into(),
        state: TaskState::Failed,
        attempts: 1,
        worker: Some("host-1.4242".into()),
        timings: timings(
            1_764_000_000_001_000,
            1_764_000_000_001_100,
            1_764_000_000_002_000,
            700,
        ),
        memo: None,
        outcome: Some(Outcome::Error(
            "ValueError: expected 64 pixels, got 3".into(),
        )),
    }
}

fn queued_view() -> TaskView {
    TaskView {
        id: TaskId(3),
        servable: "sleep".into(),
        state: TaskState::Queued,
        attempts: 0,
        worker: None,
        timings: timings(1_764_000_000_003_000, 0, 0, 0),
        memo: None,
        outcome: None,
    }
}

fn memo_view() -> TaskView {
    TaskView {
        id: TaskId(4_294_967_296),
        servable: "digits@1.0.0".into(),
        state: TaskState::Completed,
        attempts: 0,
        worker: None,
        timings: timings(1_764_000_000_004_000, 0, 1_764_000_000_004_010, 0),
        memo: Some(MemoUse::Stored),
        outcome: Some(Outcome::Output(mp(rmpv::Value::from(7)))),
    }
}

fn cancelled_view() -> TaskView {
    TaskView {
        id: TaskId(5),
        servable: "sleep".into(),
        state: TaskState::Cancelled,
        attempts: 0,
        worker: None,
        timings: timings(1_764_000_000_005_000, 0, 1_764_000_000_005_500, 0),
        memo: Some(MemoUse::Coalesced),
        outcome: Some(Outcome::Error("cancelled by a client".into())),
    }
}

fn unknown_view() -> TaskView {
    TaskView::unknown(TaskId(999))
}

fn running_view() -> TaskView {
    TaskView {
        id: TaskId(6),
        servable: "sleep".into(),
        state: TaskState::Running,
        attempts: 2,
        worker: Some("node7.99".into()),
        timings: timings(1_764_000_000_006_000, 1_764_000_000_006_200, 0, 0),
        memo: None,
        outcome: None,
    }
}

/// A published servable using every field and every kind of type.
fn exec_record() -> ServableRecord {
    let image = TypeSpec::Ndarray {
        dtype: "float64".into(),
        shape: vec![8, -1],
        description: "grey levels 0-16".into(),
    };
    let input = TypeSpec::Dict {
        properties: BTreeMap::from([
            ("image".to_owned(), image),
            (
                "labels".to_owned(),
                TypeSpec::List {
                    item: Box::new(TypeSpec::String {
                        description: String::new(),
                    }),
                    description: "names to report".into(),
                },
            ),
            (
                "scale".to_owned(),
                TypeSpec::Number {
                    description: String::new(),
                },
            ),
            (
                "count".to_owned(),
                TypeSpec::Integer {
                    description: String::new(),
                },
            ),
            (
                "verbose".to_owned(),
                TypeSpec::Boolean {
                    description: String::new(),
                },
            ),
            (
                "raw".to_owned(),
                TypeSpec::File {
                    description: String::new(),
                },
            ),
            (
                "extra".to_owned(),
                TypeSpec::Any {
                    description: String::new(),
                },
            ),
        ]),
        description: "one image".into(),
    };
    let spec = ServableSpec {
        name: "digits".into(),
        version: "1.0.0".into(),
        title: "Handwritten digit classifier".into(),
        description: "An SVC trained on 8x8 digit images.".into(),
        creators: vec![
            Creator {
                name: "Ada Lovelace".into(),
                affiliation: Some("Analytical Engines Ltd".into()),
                orcid: Some("0000-0002-1825-0097".into()),
            },
            Creator {
                name: "Grace Hopper".into(),
                affiliation: None,
                orcid: None,
            },
        ],
        domains: vec!["machine learning".into(), "vision".into()],
        license: "Apache-2.0".into(),
        doi: Some("10.1000/182".into()),
        related_identifiers: vec![RelatedIdentifier {
            identifier: "arXiv:1811.11213".into(),
            relation: "IsDescribedBy".into(),
        }],
        model_type: "sklearn".into(),
        input,
        output: TypeSpec::Integer {
            description: "the digit".into(),
        },
        runtime: Runtime::Exec {
            command: "python3".into(),
            args: vec!["serve.py".into()],
            working_dir: Some("model".into()),
            env: BTreeMap::from([("OMP_NUM_THREADS".to_owned(), "1".to_owned())]),
        },
        container: Some(Container {
            image: "docker.io/library/python:3.11".into(),
        }),
        files: vec!["serve.py".into(), "model.pkl".into()],
        build: Some(Build {
            command: "python3".into(),
            args: vec!["train.py".into()],
        }),
        resources: Default::default(),
        environment: Some(Environment {
            python: Some(">=3.9".into()),
            packages: vec!["scikit-learn>=1.3".into(), "numpy".into()],
            image: None,
        }),
        options: ServableOptions {
            memoize: true,
            max_batch_size: 256,
            max_batch_delay_ms: BatchDelay::Auto,
            latency_target_ms: 50,
            validate_input: true,
            max_duration_s: Some(600),
            fork: false,
        },
    };
    ServableRecord {
        spec,
        files: vec![
            FileEntry {
                path: "serve.py".into(),
                blake3: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".into(),
                size: 312,
            },
            FileEntry {
                path: "model.pkl".into(),
                blake3: "0000000000000000000000000000000000000000000000000000000000000001".into(),
                size: 4_294_967_296,
            },
        ],
        published_us: 1_764_000_000_000_000,
        lock: Some(EnvironmentLock {
            requirements: vec![
                "scikit-learn>=1.3,==1.5.2".into(),
                "numpy==2.1.3".into(),
                "msgpack==1.1.0".into(),
            ],
            wheels: vec![FileEntry {
                path: "msgpack-1.1.0-cp311-cp311-manylinux_2_17_x86_64.whl".into(),
                blake3: "0000000000000000000000000000000000000000000000000000000000000002".into(),
                size: 378_000,
            }],
        }),
        access: None,
    }
}

/// A pipeline: no files, builtin-free defaults, a fixed batch delay.
fn pipeline_record() -> ServableRecord {
    ServableRecord {
        spec: ServableSpec {
            name: "formation-enthalpy".into(),
            version: "2.1.0".into(),
            title: "Pipeline: parse → features → model".into(),
            description: String::new(),
            creators: vec![],
            domains: vec![],
            license: "NOASSERTION".into(),
            doi: None,
            related_identifiers: vec![],
            model_type: "pipeline".into(),
            input: TypeSpec::String {
                description: String::new(),
            },
            output: TypeSpec::Number {
                description: String::new(),
            },
            runtime: Runtime::Pipeline {
                steps: vec!["fe-parse@1.0.0".into(), "fe-model@1.2.0".into()],
            },
            container: None,
            files: vec![],
            build: None,
            resources: Default::default(),
            environment: None,
            options: ServableOptions {
                max_batch_delay_ms: BatchDelay::Fixed(5),
                ..ServableOptions::default()
            },
        },
        files: vec![],
        published_us: 1_764_000_000_000_001,
        lock: None,
        access: None,
    }
}

fn builtin_record() -> ServableRecord {
    let mut record = pipeline_record();
    record.spec.name = "noop".into();
    record.spec.version = "0.0.0".into();
    record.spec.model_type = "builtin".into();
    record.spec.runtime = Runtime::Builtin;
    record.spec.input = TypeSpec::Any {
        description: String::new(),
    };
    record
}

fn error(kind: ApiErrorKind, message: &str) -> ClientReply {
    ClientReply::Error(ApiError {
        kind,
        message: message.into(),
    })
}

/// Every vector, in file order.
fn vectors() -> Vec<Vector> {
    let nil = Payload::from_static(NIL);
    vec![
        call(
            "call.ping",
            "Ping: liveness and version check.",
            ClientCall::Ping,
        ),
        call(
            "call.submit",
            "Submit without waiting: an input map with no parameters, and a list input with parameters.",
            ClientCall::Submit {
                tasks: vec![
                    TaskRequest {
                        servable: "echo".into(),
                        input: mp(map(vec![("x", 1.into())])),
                        params: Payload::new(),
                    },
                    TaskRequest {
                        servable: "digits@1.0.0".into(),
                        input: mp(rmpv::Value::Array(vec![
                            1.5.into(),
                            (-2).into(),
                            "é".into(),
                        ])),
                        params: mp(map(vec![("top_k", 3.into())])),
                    },
                ],
                wait_ms: None,
            },
        ),
        call(
            "call.submit-wait",
            "Submit and wait up to 30 s for the result (a synchronous run of noop with a null input).",
            ClientCall::Submit {
                tasks: vec![TaskRequest {
                    servable: "noop".into(),
                    input: nil,
                    params: Payload::new(),
                }],
                wait_ms: Some(30_000),
            },
        ),
        call(
            "call.results",
            "Fetch results without waiting.",
            ClientCall::Results {
                ids: vec![TaskId(1), TaskId(2)],
                wait_ms: None,
            },
        ),
        call(
            "call.results-wait",
            "Fetch results, held until final or one day passes.",
            ClientCall::Results {
                ids: vec![TaskId(4_294_967_296)],
                wait_ms: Some(86_400_000),
            },
        ),
        call(
            "call.task-status",
            "State of one task.",
            ClientCall::TaskStatus {
                ids: vec![TaskId(7)],
            },
        ),
        call(
            "call.cancel",
            "Cancel two tasks.",
            ClientCall::Cancel {
                ids: vec![TaskId(7), TaskId(8)],
            },
        ),
        call(
            "call.list-servables",
            "The latest version of every servable.",
            ClientCall::ListServables,
        ),
        call(
            "call.show-servable",
            "One servable version.",
            ClientCall::ShowServable {
                name: "digits@1.0.0".into(),
            },
        ),
        call(
            "call.servable-versions",
            "Every version of a servable.",
            ClientCall::ServableVersions {
                name: "digits".into(),
            },
        ),
        call(
            "call.search",
            "A catalog search with words and every filter but one.",
            ClientCall::SearchServables(SearchQuery {
                text: "digit classifier".into(),
                domain: Some("vision".into()),
                model_type: Some("sklearn".into()),
                author: None,
            }),
        ),
        call(
            "call.search-all",
            "A catalog search with nothing set (everything).",
            ClientCall::SearchServables(SearchQuery::default()),
        ),
        reply(
            "reply.pong",
            "Answer to Ping.",
            ClientReply::Pong {
                pid: 4242,
                release: "0.1.0".into(),
            },
        ),
        reply(
            "reply.submitted",
            "Ids of accepted tasks, one beyond 32 bits.",
            ClientReply::Submitted {
                ids: vec![TaskId(1), TaskId(2), TaskId(4_294_967_296)],
            },
        ),
        reply(
            "reply.results",
            "Task views in every final and unfinished state, with outputs, errors and memo uses.",
            ClientReply::Results {
                tasks: vec![
                    completed_view(),
                    failed_view(),
                    queued_view(),
                    memo_view(),
                    cancelled_view(),
                    unknown_view(),
                ],
            },
        ),
        reply(
            "reply.task-status",
            "A running task, as a status reply shows it (no outcome).",
            ClientReply::TaskStatus {
                tasks: vec![running_view()],
            },
        ),
        reply(
            "reply.cancelled",
            "What cancel did: one cancelled, one already completed.",
            ClientReply::Cancelled {
                tasks: vec![
                    (TaskId(7), TaskState::Cancelled),
                    (TaskId(8), TaskState::Completed),
                ],
            },
        ),
        reply(
            "reply.servables",
            "Search hits, best first.",
            ClientReply::Servables {
                servables: vec![
                    ServableSummary {
                        name: "digits".into(),
                        version: "1.0.0".into(),
                        title: "Handwritten digit classifier".into(),
                        model_type: "sklearn".into(),
                        domains: vec!["vision".into()],
                        creators: vec!["Ada Lovelace".into()],
                        score: 7.5,
                    },
                    ServableSummary {
                        name: "noop".into(),
                        version: "0.0.0".into(),
                        title: "returns null".into(),
                        model_type: "builtin".into(),
                        domains: vec![],
                        creators: vec![],
                        score: 0.0,
                    },
                ],
            },
        ),
        reply(
            "reply.servable-exec",
            "A published servable using every field and every kind of type.",
            ClientReply::Servable(Box::new(exec_record())),
        ),
        reply(
            "reply.servable-pipeline",
            "A pipeline servable with a fixed batch delay.",
            ClientReply::Servable(Box::new(pipeline_record())),
        ),
        reply(
            "reply.servable-builtin",
            "A servable whose runtime is builtin.",
            ClientReply::Servable(Box::new(builtin_record())),
        ),
        reply(
            "reply.versions",
            "Versions of a servable, oldest first.",
            ClientReply::Versions {
                versions: vec!["1.0.0".into(), "1.1.0".into()],
            },
        ),
        reply(
            "reply.error-bad-request",
            "Refusal: the request is wrong.",
            error(
                ApiErrorKind::BadRequest,
                "task 0: unknown servable `nope` (known: echo, noop, sleep)",
            ),
        ),
        reply(
            "reply.error-shutting-down",
            "Refusal: the daemon is draining.",
            error(
                ApiErrorKind::ShuttingDown,
                "the daemon is shutting down and accepts no new tasks",
            ),
        ),
        reply(
            "reply.error-unavailable",
            "Refusal: the store failed.",
            error(
                ApiErrorKind::Unavailable,
                "the daemon cannot store new tasks: disk full",
            ),
        ),
        reply(
            "reply.error-not-found",
            "Refusal: no such servable or version.",
            error(
                ApiErrorKind::NotFound,
                "servable `digits` has no version 9.9.9 (published: 1.0.0)",
            ),
        ),
        reply(
            "reply.error-conflict",
            "Refusal: conflicts with the catalog.",
            error(
                ApiErrorKind::Conflict,
                "digits@1.0.0 is already published with other content",
            ),
        ),
        reply(
            "reply.error-forbidden",
            "Refusal: the caller's token does not allow the call.",
            error(
                ApiErrorKind::Forbidden,
                "token `ci` may not use servable `noop` (it may use: echo)",
            ),
        ),
        call(
            "call.task-events",
            "Events of the caller's tasks of servable echo with ids 5 to 10 or 12, after event 3, held up to 30 s.",
            ClientCall::TaskEvents {
                after: 3,
                wait_ms: Some(30_000),
                filter: TaskEventFilter {
                    servable: Some("echo".into()),
                    ids: vec![(5, 10), (12, 12)],
                },
            },
        ),
        reply(
            "reply.task-events",
            "Task events: a retry after a lost worker, then the task's end; the next call asks after 9.",
            ClientReply::TaskEvents {
                events: vec![
                    TaskEventView {
                        seq: 7,
                        at_us: 1_764_000_000_000_000,
                        task: TaskId(5),
                        servable: "echo".into(),
                        kind: "retried".into(),
                        worker: Some("host-1.4242".into()),
                        attempt: 1,
                        message: "worker host-1.4242 lost".into(),
                    },
                    TaskEventView {
                        seq: 8,
                        at_us: 1_764_000_000_000_500,
                        task: TaskId(5),
                        servable: "echo".into(),
                        kind: "finished".into(),
                        worker: None,
                        attempt: 2,
                        message: String::new(),
                    },
                ],
                last: 9,
            },
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON string literal for the ASCII-and-UTF-8 text used here.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The manifest's text: one vector per line, so a diff names the vector.
fn manifest(vectors: &[Vector]) -> String {
    let mut out = String::from("{\n");
    out.push_str(
        "  \"about\": \"Client API frames as the Rust protocol crate encodes them: msgpack of [protocol_version, message]. Checked byte for byte by protocol/tests/vectors.rs and by the Python client's tests.\",\n",
    );
    out.push_str(
        "  \"regenerate\": \"FLOTILLA_WRITE_VECTORS=1 cargo test -p flotilla-protocol --test vectors\",\n",
    );
    out.push_str(&format!("  \"protocol_version\": {PROTOCOL_VERSION},\n"));
    out.push_str("  \"vectors\": [\n");
    for (i, v) in vectors.iter().enumerate() {
        let comma = if i + 1 < vectors.len() { "," } else { "" };
        out.push_str(&format!(
            "    {{\"name\": {}, \"description\": {}, \"hex\": \"{}\"}}{comma}\n",
            json_string(v.name),
            json_string(v.description),
            hex(&v.bytes)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// The name on a manifest line, if it is a vector's line.
fn line_name(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("{\"name\": \"")?;
    rest.split('"').next()
}

#[test]
fn names_are_unique() {
    let vectors = vectors();
    let mut names: Vec<&str> = vectors.iter().map(|v| v.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "two vectors share a name");
}

#[test]
fn encodings_match_the_shared_vectors() {
    let expected = manifest(&vectors());
    let path = manifest_path();
    if std::env::var_os(WRITE_ENV).is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
        return;
    }
    let found = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); make it with {WRITE_ENV}=1 cargo test -p flotilla-protocol --test vectors",
            path.display()
        )
    });
    if found == expected {
        return;
    }
    let old: BTreeMap<&str, &str> = found
        .lines()
        .filter_map(|l| Some((line_name(l)?, l)))
        .collect();
    let new: BTreeMap<&str, &str> = expected
        .lines()
        .filter_map(|l| Some((line_name(l)?, l)))
        .collect();
    let mut problems = Vec::new();
    for (name, line) in &new {
        match old.get(name) {
            None => problems.push(format!("{name}: missing from the file")),
            Some(o) if o != line => problems.push(format!("{name}: encoding differs")),
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        problems.push(format!("{name}: in the file but no longer produced"));
    }
    if problems.is_empty() {
        problems.push("the header (protocol version or text) differs".into());
    }
    panic!(
        "{} does not match what this crate encodes:\n  {}\n\
         If the change is intended, bump PROTOCOL_VERSION when a message changed shape, \
         regenerate with {WRITE_ENV}=1 cargo test -p flotilla-protocol --test vectors, \
         and update the other clients (clients/python) until their tests pass.",
        path.display(),
        problems.join("\n  ")
    );
}
