//! How the CLI shows tasks and the daemon, as text or as JSON.

use flotilla_client::payload_to_json;
use flotilla_protocol::client::{BlockView, DaemonStatus, WarmView, WorkerView};
use flotilla_protocol::interchange::SlotResources;
use flotilla_protocol::task::{Outcome, TaskView};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A task as JSON: state, timings, and the output (decoded) or error.
pub fn task_json(t: &TaskView) -> Value {
    let mut v = json!({
        "id": t.id.0,
        "servable": t.servable,
        "state": t.state.as_str(),
        "attempts": t.attempts,
        "worker": t.worker,
        "memo": t.memo.map(|m| m.as_str()),
        "timings_us": {
            "submitted": t.timings.submitted_us,
            "dispatched": t.timings.dispatched_us,
            "finished": t.timings.finished_us,
            "run": t.timings.run_us,
            "worker_received": t.timings.worker_received_us,
            "worker_sent": t.timings.worker_sent_us,
            "result_received": t.timings.result_received_us,
            "replied": t.timings.replied_us,
        },
    });
    match &t.outcome {
        Some(Outcome::Output(bytes)) => {
            v["output"] =
                payload_to_json(bytes).unwrap_or_else(|e| json!({"undecodable": e.to_string()}));
        }
        Some(Outcome::Error(e)) => v["error"] = json!(e),
        None => {}
    }
    v
}

/// The output of a completed task as one line of JSON.
pub fn output_text(t: &TaskView) -> Option<String> {
    match &t.outcome {
        Some(Outcome::Output(bytes)) => Some(
            payload_to_json(bytes)
                .map(|v| v.to_string())
                .unwrap_or_else(|e| format!("<undecodable output: {e}>")),
        ),
        _ => None,
    }
}

fn ms_between(from: u64, to: u64) -> String {
    if from == 0 || to == 0 || to < from {
        "-".into()
    } else {
        format!("{:.3}", (to - from) as f64 / 1000.0)
    }
}

/// A task status line set for people.
pub fn task_text(t: &TaskView) -> String {
    let mut s = format!(
        "task {}\n  servable  {}\n  state     {}\n  attempts  {}\n  worker    {}\n",
        t.id,
        if t.servable.is_empty() {
            "-"
        } else {
            &t.servable
        },
        t.state,
        t.attempts,
        t.worker.as_deref().unwrap_or("-"),
    );
    let tm = &t.timings;
    s.push_str(&format!(
        "  waited    {} ms (submitted to dispatched)\n  total     {} ms (submitted to finished)\n  run       {}\n",
        ms_between(tm.submitted_us, tm.dispatched_us),
        ms_between(tm.submitted_us, tm.finished_us),
        if tm.run_us > 0 {
            format!("{:.3} ms (servable time for its batch)", tm.run_us as f64 / 1000.0)
        } else {
            "-".into()
        },
    ));
    if tm.worker_received_us > 0 && tm.worker_sent_us >= tm.worker_received_us {
        s.push_str(&format!(
            "  path      {} ms to the worker, {} ms in the worker, {} ms back\n",
            ms_between(tm.dispatched_us, tm.worker_received_us),
            ms_between(tm.worker_received_us, tm.worker_sent_us),
            ms_between(tm.worker_sent_us, tm.result_received_us),
        ));
    }
    if let Some(m) = t.memo {
        s.push_str(&format!(
            "  memo      {} ({})\n",
            m.as_str(),
            match m {
                flotilla_protocol::task::MemoUse::Stored =>
                    "answered from the memo store; no worker ran it",
                flotilla_protocol::task::MemoUse::Coalesced =>
                    "shared the run of an identical request in flight",
            }
        ));
    }
    if let Some(Outcome::Error(e)) = &t.outcome {
        s.push_str(&format!("  error     {e}\n"));
    }
    s
}

/// Memo store counters for people.
pub fn memo_text(m: &flotilla_protocol::client::MemoStats) -> String {
    let mut out = format!(
        "memo store: {} entries ({} bytes) of at most {} entries and {} bytes\n\
         requests: {} answered from the store, {} ran, {} shared an identical run in flight; {} entries evicted\n",
        m.entries, m.bytes, m.max_entries, m.max_bytes, m.hits, m.misses, m.coalesced, m.evictions
    );
    for (name, n, b) in &m.per_servable {
        out.push_str(&format!("  {name:<32} {n:>8} entries {b:>12} bytes\n"));
    }
    out
}

/// Memo store counters as JSON.
pub fn memo_json(m: &flotilla_protocol::client::MemoStats) -> Value {
    json!({
        "entries": m.entries, "bytes": m.bytes,
        "max_entries": m.max_entries, "max_bytes": m.max_bytes,
        "hits": m.hits, "misses": m.misses, "coalesced": m.coalesced, "evictions": m.evictions,
        "per_servable": m.per_servable.iter().map(|(n, e, b)| json!({"servable": n, "entries": e, "bytes": b})).collect::<Vec<_>>(),
    })
}

/// `1h02m`, `3m05s`, `42s`.
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// One event for people.
pub fn event_text(e: &flotilla_protocol::client::EventView) -> String {
    let when = chrono_like(e.at_us);
    let mut who = String::new();
    if let Some(p) = &e.pool {
        who.push_str(&format!(" pool {p}"));
    }
    if let Some(b) = e.block {
        who.push_str(&format!(" block {b}"));
    }
    if let Some(w) = &e.worker {
        who.push_str(&format!(" worker {w}"));
    }
    format!("{when} {:<18}{who}: {}\n", e.kind, e.message)
}

/// One event as JSON.
pub fn event_json(e: &flotilla_protocol::client::EventView) -> Value {
    json!({
        "seq": e.seq, "at_us": e.at_us, "kind": e.kind, "pool": e.pool, "block": e.block,
        "worker": e.worker, "message": e.message,
    })
}

/// UTC `HH:MM:SS.mmm` of µs since the epoch.
pub(crate) fn chrono_like(us: u64) -> String {
    let ms = us / 1000;
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// The daemon status for people.
pub fn daemon_text(s: &DaemonStatus) -> String {
    let mut out = format!(
        "daemon pid {} (release {}), up {} s{}\n",
        s.pid,
        s.release,
        s.uptime_s,
        if s.draining { ", SHUTTING DOWN" } else { "" },
    );
    if s.fleet_hidden {
        out.push_str("pools, blocks and workers are shown to the daemon's user only\n");
    } else {
        out.push_str(&format!("interchange {}\n", s.interchange));
        out.push_str(&fleet_text(s));
    }
    out.push_str("\nqueues\n");
    if s.queues.is_empty() {
        out.push_str("  (empty)\n");
    }
    for q in &s.queues {
        out.push_str(&format!(
            "  {:<24} queued {:>8}  running {:>8}\n",
            q.servable, q.queued, q.running
        ));
        if let Some(why) = &q.waiting_for {
            out.push_str(&format!("  {:<24} waiting: {why}\n", ""));
        }
    }
    if !s.warm.is_empty() {
        out.push_str(&warm_text(&s.warm));
    }
    let t = &s.totals;
    out.push_str(&format!(
        "\ntasks: {} accepted, {} completed, {} failed, {} cancelled, {} requeued after worker loss\n",
        t.accepted, t.completed, t.failed, t.cancelled, t.requeued
    ));
    out
}

/// The pools with their blocks and workers, and the workers no pool
/// started.
fn fleet_text(s: &DaemonStatus) -> String {
    let mut out = String::new();
    for p in &s.pools {
        out.push_str(&format!(
            "\npool {} ({}): {} blocks live, {} wanted, {}..{} allowed, {} submitted so far{}{}\n",
            p.name,
            p.provider,
            p.active,
            p.wanted,
            p.min_blocks,
            p.max_blocks,
            p.submitted,
            p.paused
                .as_deref()
                .map(|why| format!("\n  PAUSED: {why}"))
                .unwrap_or_default(),
            p.held
                .as_deref()
                .map(|why| format!("\n  WAITING: {why}"))
                .unwrap_or_default()
        ));
        let mine = |pool: &Option<String>| pool.as_deref() == Some(p.name.as_str());
        // Blocks and workers of a status from before pools name none: they
        // are the one pool's.
        let one = s.pools.len() == 1;
        let blocks: Vec<&BlockView> = s
            .blocks
            .iter()
            .filter(|b| mine(&b.pool) || (one && b.pool.is_none()))
            .collect();
        out.push_str(&blocks_text(&blocks));
        let workers: Vec<&WorkerView> = s
            .workers
            .iter()
            .filter(|w| mine(&w.pool) || (one && w.pool.is_none() && w.block.is_some()))
            .collect();
        out.push_str(&workers_text("workers", &workers));
    }
    if let Some(why) = &s.blocks_paused {
        out.push_str(&format!("  NOT STARTING BLOCKS: {why}\n"));
    }
    let pooled = |w: &WorkerView| {
        w.pool
            .as_deref()
            .is_some_and(|name| s.pools.iter().any(|p| p.name == name))
            || (s.pools.len() == 1 && w.pool.is_none() && w.block.is_some())
    };
    let others: Vec<&WorkerView> = s.workers.iter().filter(|w| !pooled(w)).collect();
    if !others.is_empty() || s.pools.is_empty() {
        out.push_str(&format!(
            "\n{}",
            workers_text("workers not started by a pool", &others)
        ));
    }
    out
}

/// A pool's blocks, under a heading.
fn blocks_text(blocks: &[&BlockView]) -> String {
    let mut out = format!("  blocks ({})\n", blocks.len());
    for b in blocks {
        let mut extra = format!("  age {}", duration(b.age_s));
        if let Some(left) = b.walltime_left_s {
            extra.push_str(&format!("  walltime left {}", duration(left)));
        }
        if let Some(idle) = b.idle_s {
            extra.push_str(&format!("  idle {}", duration(idle)));
        }
        out.push_str(&format!(
            "  {:>4}  {:<10} job {:<10} workers {}{extra}\n",
            b.id,
            b.state,
            b.job_id.as_deref().unwrap_or("-"),
            b.workers
        ));
        if let Some(m) = &b.message {
            for line in m.lines() {
                out.push_str(&format!("        {line}\n"));
            }
        }
    }
    out
}

/// Workers under `heading`, one line each and one per slot.
/// Warm processes per servable, with their memory.
fn warm_text(warm: &[WarmView]) -> String {
    let mut out = String::from("\nwarm processes\n");
    let mut by_servable: BTreeMap<&str, Vec<&WarmView>> = BTreeMap::new();
    for w in warm {
        by_servable.entry(&w.servable).or_default().push(w);
    }
    for (servable, list) in by_servable {
        let total_kb: u64 = list.iter().map(|w| w.rss_kb).sum();
        out.push_str(&format!(
            "  {:<24} {} warm, {} MiB resident\n",
            servable,
            list.len(),
            total_kb / 1024
        ));
        for w in list {
            // A status for another user than the daemon's names no worker.
            let worker = if w.worker.is_empty() {
                String::new()
            } else {
                format!("worker {} ", w.worker)
            };
            out.push_str(&format!(
                "    {worker}slot {}: {} MiB\n",
                w.slot,
                w.rss_kb / 1024
            ));
        }
    }
    out
}

fn workers_text(heading: &str, workers: &[&WorkerView]) -> String {
    let mut out = format!("  {heading} ({})\n", workers.len());
    for w in workers {
        let placed = match (&w.node, w.rank) {
            (Some(node), Some(rank)) => format!("  node {node}  rank {rank}"),
            (Some(node), None) => format!("  node {node}"),
            (None, Some(rank)) => format!("  rank {rank}"),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "  {}  host {}  block {}{placed}  slots {}  running {}  seen {} ms ago\n",
            w.id,
            w.host,
            w.block.map_or("-".into(), |b| b.to_string()),
            w.slots,
            w.running,
            w.last_seen_ms
        ));
        out.push_str(&slot_lines(&w.slot_resources));
    }
    out
}

/// One line per slot of a worker: the accelerators and cores it holds
/// (nothing when the site shares out neither).
fn slot_lines(slots: &[SlotResources]) -> String {
    let mut out = String::new();
    for (i, r) in slots.iter().enumerate() {
        let devices = if r.devices.is_empty() {
            "-".to_owned()
        } else {
            r.devices.join(",")
        };
        let cpus = if r.cpus.is_empty() { "any" } else { &r.cpus };
        out.push_str(&format!(
            "    slot {i}  accelerators {devices}  cpus {cpus}\n"
        ));
    }
    out
}

/// The daemon status as JSON.
pub fn daemon_json(s: &DaemonStatus) -> Value {
    json!({
        "pid": s.pid,
        "release": s.release,
        "uptime_s": s.uptime_s,
        "draining": s.draining,
        "interchange": s.interchange,
        "blocks": s.blocks.iter().map(|b| json!({
            "id": b.id, "pool": b.pool, "state": b.state, "job_id": b.job_id, "workers": b.workers, "message": b.message,
            "age_s": b.age_s, "walltime_left_s": b.walltime_left_s, "idle_s": b.idle_s,
        })).collect::<Vec<_>>(),
        "blocks_paused": s.blocks_paused,
        "pools": s.pools.iter().map(|p| json!({
            "name": p.name, "provider": p.provider, "wanted": p.wanted, "active": p.active,
            "min_blocks": p.min_blocks, "max_blocks": p.max_blocks, "submitted": p.submitted,
            "paused": p.paused, "held": p.held,
            "blocks": s.blocks.iter().filter(|b| b.pool.as_deref() == Some(p.name.as_str())).map(|b| b.id).collect::<Vec<_>>(),
            "workers": s.workers.iter().filter(|w| w.pool.as_deref() == Some(p.name.as_str())).map(|w| w.id.as_str()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "workers": s.workers.iter().map(|w| json!({
            "id": w.id, "pool": w.pool, "block": w.block, "host": w.host, "pid": w.pid, "node": w.node, "rank": w.rank, "slots": w.slots,
            "running": w.running, "last_seen_ms": w.last_seen_ms,
            "slot_resources": w.slot_resources.iter().map(|r| json!({
                "devices": r.devices, "cpus": r.cpus,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "queues": s.queues.iter().map(|q| json!({
            "servable": q.servable, "queued": q.queued, "running": q.running,
            "waiting_for": q.waiting_for,
        })).collect::<Vec<_>>(),
        "totals": {
            "accepted": s.totals.accepted, "completed": s.totals.completed,
            "failed": s.totals.failed, "cancelled": s.totals.cancelled,
            "requeued": s.totals.requeued,
        },
        "warm": s.warm.iter().map(|w| json!({
            "servable": w.servable, "worker": w.worker, "slot": w.slot, "rss_kb": w.rss_kb,
        })).collect::<Vec<_>>(),
        "fleet_hidden": s.fleet_hidden,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_shows_its_accelerators_and_cores() {
        let slots = [
            SlotResources {
                devices: vec!["0.0".into()],
                cpus: "1-9".into(),
            },
            SlotResources {
                devices: vec![],
                cpus: String::new(),
            },
        ];
        assert_eq!(
            slot_lines(&slots),
            "    slot 0  accelerators 0.0  cpus 1-9\n    slot 1  accelerators -  cpus any\n"
        );
        assert_eq!(slot_lines(&[]), "");
    }

    fn pool_view(name: &str) -> flotilla_protocol::client::PoolView {
        flotilla_protocol::client::PoolView {
            name: name.into(),
            provider: "local".into(),
            wanted: 1,
            active: 1,
            min_blocks: 0,
            max_blocks: 2,
            submitted: 1,
            paused: None,
            held: None,
        }
    }

    fn block(id: u32, pool: &str) -> BlockView {
        BlockView {
            id,
            state: "RUNNING".into(),
            job_id: Some(format!("j{id}")),
            workers: 1,
            message: None,
            age_s: 1,
            walltime_left_s: None,
            idle_s: None,
            pool: Some(pool.into()),
        }
    }

    fn worker(id: &str, block: Option<u32>, pool: Option<&str>) -> WorkerView {
        WorkerView {
            id: id.into(),
            block,
            host: "h".into(),
            pid: 1,
            node: None,
            rank: None,
            slots: 1,
            running: 0,
            last_seen_ms: 0,
            pool: pool.map(str::to_owned),
            slot_resources: vec![],
        }
    }

    #[test]
    fn status_groups_blocks_and_workers_by_pool() {
        let s = DaemonStatus {
            pid: 1,
            release: "t".into(),
            uptime_s: 1,
            draining: false,
            interchange: "tcp://x:1".into(),
            blocks: vec![block(0, "gpu"), block(1, "cpu")],
            blocks_paused: None,
            pools: vec![pool_view("cpu"), pool_view("gpu")],
            workers: vec![
                worker("g", Some(0), Some("gpu")),
                worker("c", Some(1), Some("cpu")),
                worker("hand", None, None),
            ],
            queues: vec![],
            totals: Default::default(),
            warm: Vec::new(),
            fleet_hidden: false,
        };
        let text = daemon_text(&s);
        let cpu = text.find("pool cpu").unwrap();
        let gpu = text.find("pool gpu").unwrap();
        let at = |needle: &str| text.find(needle).unwrap();
        assert!(
            cpu < at("     1  RUNNING") && at("     1  RUNNING") < gpu,
            "{text}"
        );
        assert!(gpu < at("     0  RUNNING"), "{text}");
        assert!(cpu < at("  c  host") && at("  c  host") < gpu, "{text}");
        assert!(
            at("workers not started by a pool (1)") < at("  hand  host"),
            "{text}"
        );
        let json = daemon_json(&s);
        assert_eq!(json["pools"][1]["blocks"], json!([0]));
        assert_eq!(json["pools"][0]["workers"], json!(["c"]));
        assert_eq!(json["workers"][0]["pool"], json!("gpu"));
    }

    #[test]
    fn a_status_without_the_fleet_says_so_and_names_no_worker() {
        let s = DaemonStatus {
            pid: 1,
            release: "t".into(),
            uptime_s: 1,
            draining: false,
            interchange: String::new(),
            blocks: vec![],
            blocks_paused: None,
            pools: vec![],
            workers: vec![],
            queues: vec![],
            totals: Default::default(),
            warm: vec![WarmView {
                servable: "m@1.0.0".into(),
                worker: String::new(),
                slot: 0,
                rss_kb: 2048,
            }],
            fleet_hidden: true,
        };
        let text = daemon_text(&s);
        assert!(
            text.contains("pools, blocks and workers are shown to the daemon's user only"),
            "{text}"
        );
        assert!(!text.contains("interchange"), "{text}");
        assert!(!text.contains("workers not started by a pool"), "{text}");
        assert!(text.contains("\n    slot 0: 2 MiB\n"), "{text}");
        assert_eq!(daemon_json(&s)["fleet_hidden"], json!(true));
    }
}
