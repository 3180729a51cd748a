//! What the fuzz targets share: the properties every decoded message must
//! keep, and the shapes fuzz bytes are cut into for decoders that take more
//! than one buffer (a command's exit status, stdout and stderr).
//!
//! A failed assertion here is a finding: libFuzzer saves the input under
//! `fuzz/artifacts/<target>/`. So is one allocation at or over the default
//! frame cap: every target links this crate, whose allocator aborts on it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::io::Write;

use flotilla_protocol::servable::ServableRef;
use flotilla_protocol::{decode, encode};
use flotilla_providers::{CommandOutput, JobId};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest single allocation a target may make: below the default
/// frame cap (64 MiB, `DEFAULT_MAX_FRAME_BYTES`). Every fuzz input is far
/// smaller, so a larger allocation could only come from a length a peer or
/// a file wrote, which is what a decoder must never trust.
pub const ALLOCATION_CAP_BYTES: usize = 64 << 20;

/// The system allocator, except that an allocation of
/// [`ALLOCATION_CAP_BYTES`] or more aborts, so libFuzzer keeps the input
/// as a crash. libFuzzer's own `-malloc_limit_mb` needs a sanitizer's
/// malloc hooks; this holds in builds without one too (`FUZZ_SANITIZER=none`
/// in `scripts/fuzz.sh`), which run several times faster.
pub struct CappedAllocator;

impl CappedAllocator {
    fn check(size: usize) {
        if size >= ALLOCATION_CAP_BYTES {
            // No allocation here: stderr is unbuffered and its lock static.
            let _ = std::io::stderr()
                .write_all(b"flotilla-fuzz: an allocation reached the frame cap (64 MiB)\n");
            std::process::abort();
        }
    }
}

// SAFETY: every call is passed to `System` unchanged once its size is checked.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: as for `alloc`; `ptr` and `layout` come from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

/// Asserts that a message a decoder accepted encodes again, and that the
/// encoding decodes to the same message: nothing a peer sends is accepted
/// in a form this side could not itself produce.
pub fn assert_round_trip<T>(message: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = match encode(message) {
        Ok(bytes) => bytes,
        Err(e) => panic!("a decoded message does not encode again: {e}: {message:?}"),
    };
    match decode::<T>(&bytes, usize::MAX) {
        Ok(back) => assert_eq!(&back, message, "re-encoding changed the message"),
        Err(e) => panic!("a re-encoded message does not decode: {e}: {message:?}"),
    }
}

/// Parses `name` as the daemon parses a servable reference, and checks
/// that an accepted one, written out, parses back to itself.
pub fn check_servable_ref(name: &str) {
    if let Ok(parsed) = ServableRef::parse(name) {
        let written = parsed.to_string();
        assert_eq!(
            ServableRef::parse(&written).ok().as_ref(),
            Some(&parsed),
            "{name:?} parsed as {parsed:?}, written {written:?}"
        );
    }
}

/// A scheduler command's result cut from fuzz bytes: the first byte picks
/// the exit status, the rest up to the first NUL is stdout, what follows
/// is stderr (both read lossily, as the channels read them).
pub fn command_output(data: &[u8]) -> CommandOutput {
    let (status, rest) = match data.split_first() {
        Some((&first, rest)) => (
            match first % 4 {
                0 | 1 => 0,
                2 => 1,
                _ => -1,
            },
            rest,
        ),
        None => (0, data),
    };
    let mut parts = rest.splitn(2, |&b| b == 0);
    let stdout = parts.next().unwrap_or_default();
    let stderr = parts.next().unwrap_or_default();
    CommandOutput {
        status,
        stdout: String::from_utf8_lossy(stdout).into_owned(),
        stderr: String::from_utf8_lossy(stderr).into_owned(),
    }
}

/// Job ids to ask a status parser about: a few fixed spellings and the
/// first word of each of the output's first lines (so that listed jobs are
/// found as well as missing ones).
pub fn job_ids(stdout: &str) -> Vec<JobId> {
    let mut ids: Vec<JobId> = [
        "1",
        "4",
        "12",
        "18",
        "101",
        "102",
        "123.pbs01",
        "368155",
        "b-run",
        "b-wait",
        "b-bad",
    ]
    .into_iter()
    .map(|id| JobId(id.to_owned()))
    .collect();
    ids.extend(
        stdout
            .lines()
            .take(8)
            .filter_map(|line| line.split_whitespace().next())
            .map(|word| JobId(word.trim_matches(|c| c == '"' || c == ':').to_owned())),
    );
    ids
}
