//! How fast one core seals and opens interchange frames
//! (`flotilla_protocol::secure`: this crate's framing and replay window),
//! with each cipher a connection may agree on (ChaCha20-Poly1305 and
//! AES-256-GCM), for frame sizes from a heartbeat to a large batch. Each
//! byte is sealed once and opened once. Then the
//! transports alone: a 64-byte request and reply echoed through nng
//! req/rep over ipc and over loopback TCP, in clear, so the client API's
//! TCP round trip can be split into what TCP costs and what sealing does.
//! Writes `results/sealing.json`; `benchmarks/run interchange` runs it
//! after the side-by-side figures.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use flotilla_benchmarks::{machine, round, today, write_result};
use flotilla_protocol::handshake::{HandshakeKey, Transcript};
use flotilla_protocol::secure::{
    Channel, Cipher, Ephemeral, HEADER_BYTES, Role, TAG_BYTES, session_keys,
};
use nng::options::Options;
use serde_json::json;

/// Both ends of one connection's keys for `cipher`.
fn channels(cipher: Cipher) -> Result<(Channel, Channel), String> {
    let worker = Ephemeral::from_random([1; 32]);
    let daemon = Ephemeral::from_random([2; 32]);
    let transcript = Transcript {
        worker_nonce: [3; 32],
        daemon_nonce: [4; 32],
        worker_public: worker.public(),
        daemon_public: daemon.public(),
    };
    let key = HandshakeKey::from_secret(b"benchmark");
    let keys = session_keys(&key, &transcript, &worker, &daemon.public(), cipher)
        .map_err(|e| e.to_string())?;
    Ok((
        Channel::new(&keys, Role::Worker),
        Channel::new(&keys, Role::Daemon),
    ))
}

/// Microseconds per seal-and-open of a `size`-byte frame with `cipher`,
/// and bytes per second, over at least `bytes` bytes in all. Sealed and
/// opened where it lies, as the daemon and the worker do with a batch's
/// frame, so the figure is the cipher's and the framing's, not an
/// allocator's.
fn rate(cipher: Cipher, size: usize, bytes: usize) -> Result<(f64, f64), String> {
    let (sender, receiver) = channels(cipher)?;
    let mut buffer = Vec::with_capacity(HEADER_BYTES + size + TAG_BYTES);
    buffer.resize(HEADER_BYTES, 0);
    buffer.resize(HEADER_BYTES + size, 7);
    let rounds = (bytes / size.max(1)).max(1000);
    let started = Instant::now();
    for _ in 0..rounds {
        let tag = sender
            .seal_in_place(&mut buffer)
            .map_err(|e| e.to_string())?;
        buffer.extend_from_slice(&tag);
        let opened = receiver
            .open_in_place(&mut buffer)
            .map_err(|e| e.to_string())?;
        if opened.len() != size || opened.first().is_some_and(|&b| b != 7) {
            return Err("a frame came back altered".into());
        }
        buffer.truncate(HEADER_BYTES + size);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((secs * 1e6 / rounds as f64, (rounds * size) as f64 / secs))
}

/// Round trips per transport (after as many to warm up).
const ECHOES: usize = 5_000;

/// p50 and p99 in µs of a 64-byte echo through nng req/rep at `url`.
fn echo(url: &str) -> Result<(f64, f64), String> {
    let err = |e: nng::Error| format!("{url}: {e}");
    let server = nng::Socket::new(nng::Protocol::Rep0).map_err(err)?;
    server.listen(url).map_err(err)?;
    let client = nng::Socket::new(nng::Protocol::Req0).map_err(err)?;
    client.dial(url).map_err(err)?;
    client
        .set_opt::<nng::options::RecvTimeout>(Some(Duration::from_secs(10)))
        .map_err(err)?;
    let echoer = std::thread::spawn(move || {
        for _ in 0..2 * ECHOES {
            let Ok(msg) = server.recv() else { return };
            if server.send(msg).is_err() {
                return;
            }
        }
    });
    let payload = [7u8; 64];
    let mut samples = Vec::with_capacity(ECHOES);
    for i in 0..2 * ECHOES {
        let started = Instant::now();
        client
            .send(nng::Message::from(&payload[..]))
            .map_err(|(_, e)| err(e))?;
        let reply = client.recv().map_err(err)?;
        if reply.len() != payload.len() {
            return Err(format!("{url}: the echo came back another size"));
        }
        if i >= ECHOES {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    echoer
        .join()
        .map_err(|_| format!("{url}: the echo thread panicked"))?;
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99)))
}

fn run() -> Result<(), String> {
    let quick = std::env::args().any(|a| a == "--quick");
    let total = if quick { 64 << 20 } else { 512 << 20 };
    let mut rows = Vec::new();
    println!(
        "{:>10} {:>18} {:>14} {:>12} {:>10}",
        "frame", "cipher", "seal + open", "rate", "vs chacha"
    );
    for size in [64usize, 1024, 64 << 10, 1 << 20, 16 << 20] {
        let mut chacha_us = None;
        // Alternating, so both see the same machine.
        for cipher in [Cipher::Chacha20Poly1305, Cipher::Aes256Gcm] {
            let (us, bps) = rate(cipher, size, total)?;
            let speedup = chacha_us.map(|c: f64| c / us);
            chacha_us.get_or_insert(us);
            let shown = speedup.map(|x| format!("{x:.2}×")).unwrap_or_default();
            println!(
                "{size:>8} B {cipher:>18} {us:>11.2} µs {:>8.2} GB/s {shown:>10}",
                bps / 1e9
            );
            rows.push(json!({
                "frame_bytes": size,
                "cipher": cipher.name(),
                "seal_and_open_us": round(us),
                "bytes_per_s": round(bps),
                "speedup_over_chacha20_poly1305": speedup.map(round),
            }));
        }
    }
    let socket = std::env::temp_dir().join(format!("flotilla-echo-{}.sock", std::process::id()));
    let ipc = format!("ipc://{}", socket.display());
    let mut transports = Vec::new();
    println!("{:>10} {:>14} {:>12}", "transport", "echo p50", "p99");
    for (name, url) in [("ipc", ipc), ("tcp", free_tcp_url()?)] {
        let measured = echo(&url);
        let _ = std::fs::remove_file(&socket);
        let (p50, p99) = measured?;
        println!("{name:>10} {p50:>11.1} µs {p99:>9.1} µs");
        transports.push(
            json!({ "transport": name, "echo_p50_us": round(p50), "echo_p99_us": round(p99) }),
        );
    }
    let report = json!({
        "figure": "sealing",
        "date": today(),
        "machine": machine(),
        "setup": "one core seals a frame where it lies with one end of a connection's keys and opens it in place with the other (counters, replay window), each cipher in turn per frame size, release build",
        "ciphers_agreed_here": Cipher::fast_here().iter().map(|c| c.name()).collect::<Vec<_>>(),
        "frames": rows,
        "transports_setup": format!("nng req/rep, a 64-byte message echoed by a thread of the same process, in clear, {ECHOES} round trips after {ECHOES} to warm up"),
        "transports": transports,
    });
    let path = write_result("sealing.json", &report).map_err(|e| e.to_string())?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A loopback TCP url on a port free now.
fn free_tcp_url() -> Result<String, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    Ok(format!("tcp://127.0.0.1:{port}"))
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
