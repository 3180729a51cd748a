//! How fast one core seals and opens interchange frames
//! (`flotilla_protocol::secure`: ChaCha20-Poly1305 with this crate's
//! framing and replay window), for frame sizes from a heartbeat to a
//! large batch. Each byte is sealed once and opened once. Writes
//! `results/sealing.json`; `benchmarks/run interchange` runs it after the
//! side-by-side figures.

use std::process::ExitCode;
use std::time::Instant;

use flotilla_benchmarks::{machine, round, today, write_result};
use flotilla_protocol::handshake::{HandshakeKey, Transcript};
use flotilla_protocol::secure::{Channel, Ephemeral, Role, session_keys};
use serde_json::json;

/// Both ends of one connection's keys.
fn channels() -> Result<(Channel, Channel), String> {
    let worker = Ephemeral::from_random([1; 32]);
    let daemon = Ephemeral::from_random([2; 32]);
    let transcript = Transcript {
        worker_nonce: [3; 32],
        daemon_nonce: [4; 32],
        worker_public: worker.public(),
        daemon_public: daemon.public(),
    };
    let key = HandshakeKey::from_secret(b"benchmark");
    let keys =
        session_keys(&key, &transcript, &worker, &daemon.public()).map_err(|e| e.to_string())?;
    Ok((
        Channel::new(&keys, Role::Worker),
        Channel::new(&keys, Role::Daemon),
    ))
}

/// Microseconds per seal-and-open of a `size`-byte frame, and bytes per
/// second, over at least `bytes` bytes in all.
fn rate(size: usize, bytes: usize) -> Result<(f64, f64), String> {
    let (sender, receiver) = channels()?;
    let frame = vec![7u8; size];
    let rounds = (bytes / size.max(1)).max(1000);
    let started = Instant::now();
    for _ in 0..rounds {
        let sealed = sender.seal(&frame).map_err(|e| e.to_string())?;
        let opened = receiver.open(&sealed).map_err(|e| e.to_string())?;
        if opened.len() != size {
            return Err("a frame came back another size".into());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((secs * 1e6 / rounds as f64, (rounds * size) as f64 / secs))
}

fn run() -> Result<(), String> {
    let quick = std::env::args().any(|a| a == "--quick");
    let total = if quick { 64 << 20 } else { 512 << 20 };
    let mut rows = Vec::new();
    println!("{:>10} {:>14} {:>12}", "frame", "seal + open", "rate");
    for size in [64usize, 1024, 64 << 10, 1 << 20, 16 << 20] {
        let (us, bps) = rate(size, total)?;
        println!("{size:>8} B {us:>11.2} µs {:>8.2} GB/s", bps / 1e9);
        rows.push(json!({ "frame_bytes": size, "seal_and_open_us": round(us), "bytes_per_s": round(bps) }));
    }
    let report = json!({
        "figure": "sealing",
        "date": today(),
        "machine": machine(),
        "setup": "one core seals a frame with one end of a connection's keys and opens it with the other (ChaCha20-Poly1305, counters, replay window), release build",
        "frames": rows,
    });
    let path = write_result("sealing.json", &report).map_err(|e| e.to_string())?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-sealing: {e}");
            ExitCode::FAILURE
        }
    }
}
