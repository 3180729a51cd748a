//! The pool's wait after refused submissions.
//!
//! A scheduler that refuses a job at submission (a per-user job limit, a
//! node count over the partition's) or a login node that does not answer
//! is no failed block: a later try may succeed by itself. The block table
//! keeps one [`Backoff`] while submissions are refused: the next try goes
//! out after the strategy period, the wait doubling after each refusal in a
//! row up to a cap, one try at a time, and the first accepted submission
//! ends it. Nothing here does I/O.

use flotilla_providers::RefusedBy;

/// Refused submissions in a row, and when the next try goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Backoff {
    /// Who said no last.
    by: RefusedBy,
    /// Their words.
    message: String,
    /// Refusals in a row.
    refusals: u32,
    /// When the next try may go out; `None` while a try is out.
    next_try_us: Option<u64>,
}

impl Backoff {
    /// The backoff after one more refusal (`before` is the one in force,
    /// if any): the wait is `base_us` doubled for each refusal in a row
    /// after the first, at most `cap_us`.
    pub(super) fn refused(
        before: Option<&Backoff>,
        by: RefusedBy,
        message: String,
        now: u64,
        base_us: u64,
        cap_us: u64,
    ) -> Backoff {
        let refusals = before.map_or(0, |b| b.refusals).saturating_add(1);
        let doublings = refusals.saturating_sub(1).min(32);
        let wait = base_us.saturating_mul(1u64 << doublings).min(cap_us);
        Backoff {
            by,
            message,
            refusals,
            next_try_us: Some(now.saturating_add(wait)),
        }
    }

    /// Whether a try may go out now.
    pub(super) fn due(&self, now: u64) -> bool {
        self.next_try_us.is_some_and(|t| now >= t)
    }

    /// A try went out: none more until its answer.
    pub(super) fn try_sent(&mut self) {
        self.next_try_us = None;
    }

    /// The try out ended without the scheduler's answer (the block broke
    /// before it was asked): another may go out at once.
    pub(super) fn try_lost(&mut self, now: u64) {
        if self.next_try_us.is_none() {
            self.next_try_us = Some(now);
        }
    }

    /// Refusals in a row.
    pub(super) fn refusals(&self) -> u32 {
        self.refusals
    }

    /// In words for `flotilla status` and `flotilla events`: who refused,
    /// their message, and the next try.
    pub(super) fn describe(&self, now: u64) -> String {
        let when = match self.next_try_us {
            Some(t) => format!(
                "next try in {} s",
                t.saturating_sub(now).div_ceil(1_000_000)
            ),
            None => "trying again now".to_owned(),
        };
        format!("{}; {when}", refusal_text(self.by, &self.message))
    }
}

/// A refusal in words: who said no, and what they said.
pub(super) fn refusal_text(by: RefusedBy, message: &str) -> String {
    match by {
        RefusedBy::Scheduler => format!("submission refused by the scheduler: {message}"),
        RefusedBy::Channel => format!("cannot reach the scheduler: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn the_wait_doubles_from_the_base_up_to_the_cap() {
        let mut b: Option<Backoff> = None;
        let mut waits = Vec::new();
        for _ in 0..12 {
            let next = Backoff::refused(
                b.as_ref(),
                RefusedBy::Scheduler,
                "no".into(),
                0,
                2 * S,
                300 * S,
            );
            waits.push(next.next_try_us.unwrap() / S);
            b = Some(next);
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]);
        assert_eq!(b.unwrap().refusals(), 12);
        // Thousands of refusals neither overflow nor pass the cap.
        let mut b = Backoff::refused(None, RefusedBy::Channel, "down".into(), 0, S, 300 * S);
        b.refusals = u32::MAX;
        let b = Backoff::refused(Some(&b), RefusedBy::Channel, "down".into(), 0, S, 300 * S);
        assert_eq!(b.next_try_us, Some(300 * S));
    }

    #[test]
    fn one_try_at_a_time() {
        let mut b = Backoff::refused(None, RefusedBy::Scheduler, "no".into(), 0, S, 10 * S);
        assert!(!b.due(S - 1));
        assert!(b.due(S));
        assert_eq!(
            b.describe(S / 2),
            "submission refused by the scheduler: no; next try in 1 s"
        );
        b.try_sent();
        assert!(!b.due(100 * S), "waits for the answer");
        assert!(b.describe(2 * S).ends_with("; trying again now"));
        b.try_lost(3 * S);
        assert!(b.due(3 * S));
    }
}
