//! Connect-back: workers try every address the daemon advertises at once,
//! and a worker that reaches none of them says why, per address, in the
//! block's failure reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use flotilla_protocol::Payload;
use flotilla_protocol::task::{NIL, TaskState};
use flotilla_tests::{Flotilla, bin, config_with, test_config, wait_until};

/// A port nothing listens on (bound, read, released).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_dead_address_does_not_slow_the_good_one() {
    let mut f = Flotilla::start(&test_config());
    let port = f.info().interchange_port;
    // Accepts TCP connections but never speaks: the worst kind of wrong
    // address, one that only a timeout can rule out.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let addresses = format!(
        "127.0.0.1:{silent_port},127.0.0.1:{},127.0.0.1",
        dead_port()
    );
    let started = Instant::now();
    f.spawn_worker(&[
        "--address",
        &addresses,
        "--port",
        &port.to_string(),
        "--connect-timeout-s",
        "30",
    ]);
    f.wait_workers(1);
    let took = started.elapsed();
    assert!(
        // Well under the probe time-out: the silent address was not waited for.
        took < Duration::from_secs(20),
        "registered after {took:?}, the probe timeout is 30 s"
    );
    let view = f
        .client()
        .run(
            "noop",
            Payload::from_static(NIL),
            Some(Duration::from_secs(30)),
        )
        .unwrap();
    assert_eq!(view.state, TaskState::Completed);
}

#[test]
fn auto_advertises_every_interface_and_workers_find_one() {
    let mut f = Flotilla::start(&config_with(&[("interchange", "address", "\"auto\"")]));
    let info = f.info();
    assert!(
        info.interchange_address
            .split(',')
            .any(|a| a == "127.0.0.1"),
        "{}",
        info.interchange_address
    );
    // Through the contact file, as a worker started by hand does.
    f.spawn_worker(&[]);
    f.wait_workers(1);
}

#[test]
fn a_worker_that_reaches_no_address_fails_its_block_with_one_line_per_address() {
    // Another daemon: reachable, but with another secret.
    let other = Flotilla::start(&test_config());
    let other_port = other.info().interchange_port;
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let dead = dead_port();
    let worker = format!("\"{}\"", bin("flotilla-worker").display());
    let advertised =
        format!("[\"127.0.0.1:{dead}\", \"127.0.0.1:{silent_port}\", \"127.0.0.1:{other_port}\"]");
    let f = Flotilla::start(&config_with(&[
        ("interchange", "address", &advertised),
        ("interchange", "bind", "[\"127.0.0.1\"]"),
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("provider", "max_block_failures", "1"),
        ("worker", "command", &worker),
        ("worker", "connect_timeout_s", "2"),
    ]));
    let client = f.client();
    let block = wait_until(Duration::from_secs(30), "the block to fail", || {
        let s = client.status().ok()?;
        s.blocks.first().filter(|b| b.state == "FAILED").cloned()
    });
    let message = block.message.unwrap();
    let expect = [
        "cannot reach the daemon at any of its 3 addresses".to_owned(),
        format!("127.0.0.1:{dead}: connection refused"),
        format!("127.0.0.1:{silent_port}: connected, but no daemon answered"),
        format!(
            "127.0.0.1:{other_port}: something answers there but cannot prove it knows this worker's secret"
        ),
    ];
    for line in &expect {
        assert!(
            message.contains(line.as_str()),
            "missing `{line}` in:\n{message}"
        );
    }
    // And people see it in `flotilla status`.
    let out = f.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in &expect {
        assert!(text.contains(line.as_str()), "missing `{line}` in:\n{text}");
    }
    assert!(text.contains("NOT STARTING BLOCKS"), "{text}");
}
