//! The daemon's clock: the one place that reads wall time for the core.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the core's clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_past_2020_and_does_not_run_backwards_here() {
        let a = now_us();
        let b = now_us();
        assert!(a > 1_577_836_800_000_000, "{a}");
        assert!(b >= a);
    }
}
