//! Termination signals, noted so the worker can end like any other ending.
//!
//! Schedulers cancel a job with SIGTERM (then SIGKILL after a grace time),
//! and a user stops a worker started by hand with Ctrl-C. Dying at once
//! would leave the worker's private directory behind in the node's temporary
//! directory; instead the handler only records the signal, and the shell's
//! loop, which looks every tick, ends the session and cleans up.

use std::sync::atomic::{AtomicI32, Ordering};

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
}
