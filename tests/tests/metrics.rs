//! The Prometheus endpoint (`[metrics] listen`): a real daemon and worker,
//! scraped over HTTP during and after a run whose totals are known.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use flotilla_client::json_to_payload;
use flotilla_protocol::Payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::TaskState;
use flotilla_tests::{Flotilla, config_with, sleep_tasks, wait_until};
use serde_json::json;

const LONG: Duration = Duration::from_secs(120);

/// The address the daemon's metrics endpoint got (the site file asks
/// for port 0), from its log.
fn metrics_address(f: &Flotilla) -> SocketAddr {
    wait_until(LONG, "the metrics endpoint's address in the log", || {
        f.log()
            .lines()
            .find(|l| l.contains("metrics endpoint listening"))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))?
            .parse()
            .ok()
    })
}

/// One scrape: the response head and the page.
fn scrape(address: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}

/// The page's samples: `name{labels}` → value.
fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// The sample `series`, or 0 when the page has none (a counter never
/// touched).
fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn echo(text: &str) -> TaskRequest {
    TaskRequest {
        servable: "echo".into(),
        input: json_to_payload(&json!(text)).unwrap(),
        params: Payload::new(),
    }
}

#[test]
fn scrapes_count_the_tasks_of_a_run_while_it_runs_and_after() {
    let mut f = Flotilla::start(&config_with(&[
        ("metrics", "listen", "\"127.0.0.1:0\""),
        ("servables.echo", "memoize", "true"),
    ]));
    let address = metrics_address(&f);
    let client = f.client();

    let (head, page) = scrape(address, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        page.contains("# TYPE flotilla_uptime_seconds gauge"),
        "{page}"
    );
    let (head, _) = scrape(address, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // During: no worker yet, so every task waits in its queue.
    const OK: usize = 12;
    const BAD: usize = 3;
    let mut ids = client.submit(sleep_tasks(OK, 0.01)).unwrap();
    let bad = TaskRequest {
        servable: "sleep".into(),
        input: json_to_payload(&json!("not a number")).unwrap(),
        params: Payload::new(),
    };
    ids.extend(client.submit(vec![bad; BAD]).unwrap());
    let during = samples(&scrape(address, "/metrics").1);
    let sleep = "{servable=\"sleep\"}";
    assert_eq!(
        get(&during, &format!("flotilla_tasks_accepted_total{sleep}")),
        (OK + BAD) as f64,
        "{during:#?}"
    );
    assert_eq!(
        get(&during, &format!("flotilla_queue_depth{sleep}")),
        (OK + BAD) as f64
    );
    assert_eq!(
        get(&during, &format!("flotilla_tasks_completed_total{sleep}")),
        0.0
    );

    // After: a worker ran them all.
    f.spawn_worker(&["--slots", "2"]);
    let views = client.results(&ids, Some(LONG)).unwrap();
    let failed = views
        .iter()
        .filter(|v| v.state == TaskState::Failed)
        .count();
    assert_eq!(failed, BAD, "{views:?}");

    // The memo store: the second identical request is a hit.
    for _ in 0..2 {
        let ran = client
            .run("echo", json_to_payload(&json!("same")).unwrap(), Some(LONG))
            .unwrap();
        assert_eq!(ran.state, TaskState::Completed);
    }
    let echo_id = client.submit(vec![echo("other")]).unwrap();
    client.results(&echo_id, Some(LONG)).unwrap();

    let after = samples(&scrape(address, "/metrics").1);
    let expect = |series: &str, value: usize| {
        assert_eq!(get(&after, series), value as f64, "{series} in {after:#?}");
    };
    expect(&format!("flotilla_tasks_accepted_total{sleep}"), OK + BAD);
    expect(&format!("flotilla_tasks_completed_total{sleep}"), OK);
    expect(&format!("flotilla_tasks_failed_total{sleep}"), BAD);
    // An empty queue reads 0, not "no data".
    assert_eq!(
        after.get(&format!("flotilla_queue_depth{sleep}")),
        Some(&0.0),
        "{after:#?}"
    );
    expect(
        &format!("flotilla_task_latency_seconds_count{sleep}"),
        OK + BAD,
    );
    // `sleep` runs one input a call: a batch per task.
    expect(&format!("flotilla_batch_size_count{sleep}"), OK + BAD);
    expect(
        "flotilla_batch_size_bucket{servable=\"sleep\",le=\"1\"}",
        OK + BAD,
    );
    let echo = "{servable=\"echo\"}";
    expect(&format!("flotilla_tasks_accepted_total{echo}"), 3);
    expect(&format!("flotilla_tasks_completed_total{echo}"), 3);
    expect(&format!("flotilla_memo_hits_total{echo}"), 1);
    expect(&format!("flotilla_memo_misses_total{echo}"), 2);
    expect("flotilla_memo_entries", 2);
    // The worker was started by hand: no pool.
    let workers: f64 = ["busy", "idle"]
        .iter()
        .map(|s| {
            get(
                &after,
                &format!("flotilla_workers{{pool=\"none\",state=\"{s}\"}}"),
            )
        })
        .sum();
    assert_eq!(workers, 1.0, "{after:#?}");
    expect("flotilla_worker_slots{pool=\"none\"}", 2);
    assert!(get(&after, "flotilla_store_flush_seconds_count") >= 1.0);

    // Scrapes keep working while tasks run (counters only grow).
    let more = client.submit(sleep_tasks(4, 0.01)).unwrap();
    wait_until(LONG, "the last tasks to be counted", || {
        let now = samples(&scrape(address, "/metrics").1);
        let done = get(&now, &format!("flotilla_tasks_completed_total{sleep}"));
        assert!(done >= OK as f64);
        (done == (OK + 4) as f64).then_some(())
    });
    client.results(&more, Some(LONG)).unwrap();
}

#[test]
fn a_taken_metrics_address_stops_the_daemon_at_start_naming_the_key() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("site.toml");
    std::fs::write(
        &config,
        config_with(&[("metrics", "listen", &format!("\"{address}\""))]),
    )
    .unwrap();
    let out = std::process::Command::new(flotilla_tests::bin("flotilla"))
        .args(["daemon", "--config", config.to_str().unwrap()])
        .env(flotilla_protocol::launch::HOME_ENV, home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "[metrics] listen = \"{address}\": cannot listen there"
        )),
        "{err}"
    );
}
