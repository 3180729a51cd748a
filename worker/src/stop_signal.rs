//! Termination signals, noted so the worker can end like any other ending.
//!
//! Schedulers cancel a job with SIGTERM (then SIGKILL after a grace time),
//! and a user stops a worker started by hand with Ctrl-C. Dying at once
//! would leave the worker's private directory behind in the node's temporary
//! directory; instead the handler only records the signal, and the shell's
//! loop, which looks every tick, ends the session and cleans up.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The signals that end the worker cleanly.
const STOPPING: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

extern "C" fn note(signal: i32) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Installs the handler for SIGTERM, SIGINT and SIGHUP. Processes the worker
/// starts get the default actions back when they exec.
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(note),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in STOPPING {
        // SAFETY: the handler only stores into an atomic, which is
        // async-signal-safe, and no other handler for these signals exists.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// The termination signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// True if `signal` is one that stops the worker cleanly (a scheduler's
/// cancel, Ctrl-C, a closed terminal), as opposed to a crash or the OOM
/// killer's SIGKILL.
pub fn is_stopping(signal: i32) -> bool {
    STOPPING.iter().any(|s| *s as i32 == signal)
}

/// Waits up to `limit` for a termination signal to reach this worker;
/// returns it if one did. A scheduler cancelling a job signals every
/// process of it at once, so a servable process that died of SIGTERM
/// usually means the worker's own signal is on its way: waiting for it
/// (bounded) tells a cancelled job from a servable killed on its own.
pub fn wait_for(limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(signal) = received() {
            return Some(signal);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_signal_is_noted_not_obeyed() {
        install().unwrap();
        assert_eq!(received(), None);
        nix::sys::signal::raise(Signal::SIGHUP).unwrap();
        assert_eq!(received(), Some(Signal::SIGHUP as i32));
        RECEIVED.store(0, Ordering::SeqCst);
    }

    #[test]
    fn only_the_stopping_signals_stop_cleanly() {
        assert!(is_stopping(Signal::SIGTERM as i32));
        assert!(is_stopping(Signal::SIGINT as i32));
        assert!(!is_stopping(Signal::SIGKILL as i32));
        assert!(!is_stopping(Signal::SIGSEGV as i32));
    }
}
