//! Adaptive batching (`max_batch_delay_ms = "auto"`).
//!
//! A model call has a fixed cost (framing, the Python interpreter, the
//! model's own setup) and a cost per input; batching spreads the fixed cost.
//! How big a batch pays off depends on the model, so in `auto` mode the
//! daemon finds out, in the spirit of Clipper's AIMD controller:
//!
//! * It keeps a *target* batch size, starting at 1, and remembers the time
//!   per request measured at the last size it grew from.
//! * **Additive increase.** After a full batch (as many inputs as the
//!   target) whose call took no longer than the servable's
//!   `latency_target_ms`, the target grows by 1/32 of `max_batch_size` (at
//!   least 1) if the time per request is still falling: if, compared with
//!   the size it last grew from, it dropped by at least half of what it
//!   would have dropped were the whole call a fixed cost (growing from n₀ to
//!   n would then cut it by (n − n₀)/n). If it has stopped falling, the
//!   target stays.
//! * **Multiplicative decrease.** A call longer than `latency_target_ms`
//!   shrinks the target to 90% of that call's size (at least 1) and makes
//!   that size a ceiling: the target stays below it. A call at the size just
//!   under the ceiling that takes less than 75% of the bound lifts the
//!   ceiling by one step again, so a model that got faster is probed upward.
//! * **No waiting.** Like Clipper's, the controller is work-conserving: a
//!   request is never held back while a worker slot is free. Batches form
//!   from what queued up while the slots were busy, up to the target size;
//!   so a lone client pays no batching delay, and a loaded servable gets
//!   batches as large as still pay off within its latency bound.

/// The controller of one servable version.
#[derive(Clone, Debug, PartialEq)]
pub struct Adaptive {
    target: u32,
    max: u32,
    latency_target_us: u64,
    step: u32,
    /// Smallest size known to break the latency bound.
    ceiling: u32,
    /// (size, µs per request) measured when the target last grew.
    last: Option<(u32, f64)>,
}

/// Fraction of the ideal (all fixed cost) gain that counts as "falling".
const FALLING: f64 = 0.5;

impl Adaptive {
    /// A controller for a servable with this batch cap and latency bound.
    pub fn new(max_batch_size: u32, latency_target_us: u64) -> Self {
        Adaptive {
            target: 1,
            max: max_batch_size.max(1),
            latency_target_us: latency_target_us.max(1),
            step: (max_batch_size / 32).max(1),
            ceiling: u32::MAX,
            last: None,
        }
    }

    /// The batch size to wait for now.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// Learns from a call of `size` inputs that took `run_us`.
    pub fn observe(&mut self, size: u32, run_us: u64) {
        if size == 0 {
            return;
        }
        let per = run_us as f64 / f64::from(size);
        if run_us > self.latency_target_us {
            self.ceiling = self.ceiling.min(size.max(1));
            self.target = (size * 9 / 10).clamp(1, self.ceiling.saturating_sub(1).max(1));
            self.last = None;
            return;
        }
        if size < self.target {
            return;
        }
        if self.ceiling != u32::MAX
            && size + 1 >= self.ceiling
            && (run_us as f64) < 0.75 * self.latency_target_us as f64
        {
            self.ceiling = self.ceiling.saturating_add(self.step);
        }
        let falling = self.last.is_none_or(|(s, p)| {
            let ideal = f64::from(size.saturating_sub(s)) / f64::from(size);
            size > s && per <= p * (1.0 - FALLING * ideal)
        });
        let limit = self.max.min(self.ceiling.saturating_sub(1)).max(1);
        if falling && self.target < limit {
            self.last = Some((size, per));
            self.target = (self.target + self.step).min(limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model with a fixed cost per call and a cost per input.
    fn drive(a: &mut Adaptive, fixed_us: u64, per_input_us: u64, calls: usize) {
        for _ in 0..calls {
            let n = a.target();
            a.observe(n, fixed_us + per_input_us * u64::from(n));
        }
    }

    #[test]
    fn grows_while_the_fixed_cost_dominates_and_stays_within_the_bound() {
        let mut a = Adaptive::new(1024, 50_000);
        // 2 ms per call + 10 µs per input: per-request time keeps falling.
        drive(&mut a, 2_000, 10, 200);
        let t = a.target();
        assert!(t > 256, "grew to {t}");
        assert!(
            2_000 + 10 * u64::from(t) <= 50_000,
            "a call stays within 50 ms"
        );
    }

    #[test]
    fn stops_growing_when_batching_no_longer_pays() {
        let mut a = Adaptive::new(1024, 1_000_000);
        // No fixed cost: per-request time is flat, growing gains nothing.
        drive(&mut a, 0, 100, 100);
        assert!(a.target() <= 1 + 32, "{}", a.target());
    }

    #[test]
    fn backs_off_when_a_call_exceeds_the_latency_target() {
        let mut a = Adaptive::new(1024, 10_000);
        drive(&mut a, 1_000, 100, 100);
        // Settles where a call fits in 10 ms: at most 90 inputs.
        let t = a.target();
        assert!((32..=90).contains(&t), "{t}");
        // The model gets slower: the target shrinks.
        drive(&mut a, 1_000, 400, 20);
        assert!(a.target() <= 23, "{}", a.target());
        assert!(a.target() >= 1);
    }
}
