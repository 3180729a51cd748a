//! End-to-end: a worker that cannot read the daemon's object store (as
//! over the SSH channel, on Kubernetes, or with node-local scratch) fetches
//! a servable's files over the interchange into the node's cache, and a
//! later worker on the same node reuses them without fetching.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flotilla_protocol::launch::flag;
use flotilla_tests::{Flotilla, config_with, lines_with, python_bin, test_config, workspace};
use serde_json::Value;

/// What `tests/servables/big-file` makes at publication: byte `i` of its
/// 2.5 MiB + 7 file is `(7 * i) % 256`.
fn expected_blob() -> Value {
    let size: u64 = 5 * (1 << 19) + 7;
    let sum: u64 = (0..size).map(|i| (7 * i) % 256).sum();
    serde_json::json!({ "size": size, "sum": sum })
}

fn run_big_file(f: &Flotilla) -> Value {
    let out = f.cli(&["run", "big-file", "1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts a worker whose object store is `objects` and node cache `cache`,
/// and waits until it is the only one registered.
fn far_worker(f: &mut Flotilla, name: &str, objects: &Path, cache: &Path) -> u32 {
    let pid = f.spawn_worker(&[
        flag::SLOTS,
        "2",
        flag::WORKER_ID,
        name,
        flag::OBJECTS_DIR,
        objects.to_str().unwrap(),
        flag::CACHE_DIR,
        cache.to_str().unwrap(),
    ]);
    f.wait_workers(1);
    pid
}

/// What the node's cache holds besides the hashes it remembers
/// (`verified/`): nothing when no file was fetched into it.
fn cached_files(cache: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "verified")
        .collect()
}

#[test]
fn a_worker_without_the_object_store_fetches_files_once_per_node() {
    python_bin();
    let mut f = Flotilla::start(&test_config());
    f.publish(&workspace().join("tests/servables/big-file"))
        .unwrap_or_else(|e| panic!("{e}"));
    let node = tempfile::tempdir().unwrap();
    let objects = node.path().join("no-object-store-here");
    let cache = node.path().join("cache");

    let first = far_worker(&mut f, "far-1", &objects, &cache);
    assert_eq!(run_big_file(&f), expected_blob());
    let log = f.worker_log(0);
    // 2.5 MiB in chunks of 1 MiB: three requests, none over the frame cap.
    assert_eq!(
        lines_with(
            &log,
            "servable file fetched from the daemon",
            &["file=blob.bin", "bytes=2621447", "chunks=3"]
        ),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(
            &log,
            "servable file fetched from the daemon",
            &["file=serve.py"]
        ),
        1,
        "{log}"
    );
    assert!(!objects.exists(), "the worker made no object store");
    let cached: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(cached.len(), 2, "{cached:?}");

    // The next block's worker on this node: the cache has both files.
    f.kill_worker(first);
    f.wait_workers(0);
    far_worker(&mut f, "far-2", &objects, &cache);
    assert_eq!(run_big_file(&f), expected_blob());
    let log = f.worker_log(1);
    assert_eq!(
        lines_with(&log, "servable file found in the node cache", &[]),
        2,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, "servable file fetched from the daemon", &[]),
        0,
        "{log}"
    );
    // The daemon sent each file once, to the first worker.
    // Logged before each first chunk left, so already written.
    let daemon_log = f.log();
    assert_eq!(
        lines_with(&daemon_log, "sending a servable file to a worker", &[]),
        2,
        "{daemon_log}"
    );
}

#[test]
fn a_worker_that_reads_the_object_store_fetches_nothing() {
    python_bin();
    let mut f = Flotilla::start(&test_config());
    f.publish(&workspace().join("tests/servables/big-file"))
        .unwrap_or_else(|e| panic!("{e}"));
    let node = tempfile::tempdir().unwrap();
    let cache = node.path().join("cache");
    let objects = f.home().join("objects");
    far_worker(&mut f, "near", &objects, &cache);
    assert_eq!(run_big_file(&f), expected_blob());
    let log = f.worker_log(0);
    assert_eq!(
        lines_with(&log, "servable file fetched from the daemon", &[]),
        0,
        "{log}"
    );
    assert_eq!(cached_files(&cache), Vec::<String>::new());
    assert_eq!(
        lines_with(&f.log(), "sending a servable file to a worker", &[]),
        0
    );
}

/// With the shared directory apart from the state directory, `flotilla
/// servable publish` writes into the shared object store, and a worker
/// attached through the state directory reads the files there (the
/// contact file names the shared directory): nothing is fetched.
#[test]
fn publish_and_a_worker_attached_by_hand_find_the_shared_object_store() {
    python_bin();
    let shared = tempfile::tempdir().unwrap();
    let setting = format!("\"{}\"", shared.path().display());
    let mut f = Flotilla::start(&config_with(&[("daemon", "shared_dir", setting.as_str())]));
    f.publish(&workspace().join("tests/servables/big-file"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!f.home().join("objects").exists());
    let stored = std::fs::read_dir(shared.path().join("objects"))
        .unwrap()
        .filter(|e| {
            flotilla_protocol::objects::is_object_name(
                &e.as_ref().unwrap().file_name().to_string_lossy(),
            )
        })
        .count();
    assert_eq!(stored, 2, "serve.py and blob.bin");
    let node = tempfile::tempdir().unwrap();
    let cache = node.path().join("cache");
    f.spawn_worker(&[flag::SLOTS, "2", flag::CACHE_DIR, cache.to_str().unwrap()]);
    f.wait_workers(1);
    assert_eq!(run_big_file(&f), expected_blob());
    let log = f.worker_log(0);
    assert_eq!(
        lines_with(&log, "servable files verified", &["files=2"]),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, "servable file fetched from the daemon", &[]),
        0,
        "{log}"
    );
    assert_eq!(cached_files(&cache), Vec::<String>::new());
}

/// A peer that has not registered learns nothing of the files: its fetch
/// is answered with "register first", and the daemon carries on.
#[test]
fn a_stranger_cannot_fetch_files() {
    use flotilla_protocol::interchange::{DaemonMessage, WorkerMessage};
    use flotilla_protocol::{decode, encode};
    use nng::options::{Options, RecvTimeout, SendTimeout};
    python_bin();
    let f = Flotilla::start(&test_config());
    f.publish(&workspace().join("tests/servables/big-file"))
        .unwrap_or_else(|e| panic!("{e}"));
    let object = std::fs::read_dir(f.home().join("objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| flotilla_protocol::objects::is_object_name(n))
        .unwrap();
    let socket = nng::Socket::new(nng::Protocol::Req0).unwrap();
    socket
        .set_opt::<RecvTimeout>(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    socket
        .set_opt::<SendTimeout>(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    socket
        .dial(&format!("tcp://127.0.0.1:{}", f.info().interchange_port))
        .unwrap();
    let fetch = WorkerMessage::Fetch {
        object,
        offset: 0,
        len: 1 << 20,
    };
    socket.send(&encode(&fetch).unwrap()[..]).unwrap();
    let reply = socket.recv().unwrap();
    let answer: DaemonMessage = decode(reply.as_slice(), 1 << 20).unwrap();
    assert_eq!(answer, DaemonMessage::Reregister);
    assert!(f.client().ping().is_ok());
}
