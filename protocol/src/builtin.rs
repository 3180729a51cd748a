//! The builtin servables every worker can run, with their batching defaults.
//!
//! They exist for tests, benchmarks and health checks: `noop` measures pure
//! overhead, `echo` moves payloads, `sleep` occupies a slot for a known time.
//! The daemon accepts them without any catalog entry.

/// A builtin servable's name and how the daemon may batch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Builtin {
    /// Name used in requests.
    pub name: &'static str,
    /// Most inputs the daemon puts in one call.
    pub max_batch_size: u32,
    /// What it does, for `flotilla servable list`.
    pub summary: &'static str,
}

/// All builtin servables.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "noop",
        max_batch_size: 1024,
        summary: "returns null; measures pure overhead",
    },
    Builtin {
        name: "echo",
        max_batch_size: 1024,
        summary: "returns its input unchanged",
    },
    Builtin {
        name: "sleep",
        max_batch_size: 1,
        summary: "sleeps for the number of seconds given as input, returns null",
    },
];

/// Looks up a builtin servable by name.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}
