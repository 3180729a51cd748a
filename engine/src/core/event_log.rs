//! The block and worker event stream behind `flotilla events`: a bounded
//! log with sequence numbers, and long-polls waiting for what comes next.

use std::collections::VecDeque;

use flotilla_protocol::client::{ClientReply, EventView};

use super::{Action, ReplyTo};

/// Events kept for late readers.
const KEPT: usize = 10_000;

#[derive(Debug)]
struct EventWait {
    to: ReplyTo,
    after: u64,
    deadline_us: u64,
}

/// What an event is about: a block, a worker, the pool.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Subject<'a> {
    /// The block concerned.
    pub(super) block: Option<u32>,
    /// The worker concerned.
    pub(super) worker: Option<&'a str>,
    /// The pool concerned.
    pub(super) pool: Option<&'a str>,
}

/// The log.
#[derive(Debug, Default)]
pub(super) struct EventLog {
    events: VecDeque<EventView>,
    last_seq: u64,
    waits: Vec<EventWait>,
}

impl EventLog {
    /// An empty log whose events are numbered after `base`, the daemon's
    /// start time in microseconds: numbers keep growing across restarts, so
    /// a reader that follows the log from before one is not left waiting
    /// for numbers the new log would take long to reach.
    pub(super) fn starting_after(base: u64) -> Self {
        EventLog {
            last_seq: base,
            ..EventLog::default()
        }
    }

    /// Appends an event and answers every reader waiting for one.
    pub(super) fn push(
        &mut self,
        now: u64,
        kind: &str,
        about: Subject<'_>,
        message: String,
        out: &mut Vec<Action>,
    ) {
        self.last_seq += 1;
        if self.events.len() == KEPT {
            self.events.pop_front();
        }
        self.events.push_back(EventView {
            seq: self.last_seq,
            at_us: now,
            kind: kind.to_owned(),
            block: about.block,
            worker: about.worker.map(str::to_owned),
            message,
            pool: about.pool.map(str::to_owned),
        });
        for wait in std::mem::take(&mut self.waits) {
            let events = self.after(wait.after);
            out.push(Action::ReplyClient {
                to: wait.to,
                reply: ClientReply::Events { events },
            });
        }
    }

    fn after(&self, seq: u64) -> Vec<EventView> {
        self.events
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }

    /// Answers a reader: at once if there is something after `after` (or no
    /// wait was asked for), else when the next event comes or the wait ends.
    pub(super) fn query(
        &mut self,
        to: ReplyTo,
        after: u64,
        wait_us: Option<u64>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        // A number this log has not given out was seen in an earlier
        // daemon's log (its clock ran ahead): that reader gets all kept.
        let after = if after > self.last_seq { 0 } else { after };
        let events = self.after(after);
        match wait_us {
            Some(wait) if events.is_empty() => self.waits.push(EventWait {
                to,
                after,
                deadline_us: now.saturating_add(wait),
            }),
            _ => out.push(Action::ReplyClient {
                to,
                reply: ClientReply::Events { events },
            }),
        }
    }

    /// Answers readers whose wait is over (with nothing).
    pub(super) fn expire(&mut self, now: u64, out: &mut Vec<Action>) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waits)
            .into_iter()
            .partition(|w| w.deadline_us <= now);
        self.waits = keep;
        for wait in due {
            out.push(Action::ReplyClient {
                to: wait.to,
                reply: ClientReply::Events { events: Vec::new() },
            });
        }
    }

    /// The earliest wait deadline, for the timer.
    /// Every event kept (tests).
    #[cfg(test)]
    pub(super) fn all(&self) -> Vec<EventView> {
        self.after(0)
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.waits.iter().map(|w| w.deadline_us).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_in(out: &[Action]) -> Vec<Vec<u64>> {
        out.iter()
            .filter_map(|a| match a {
                Action::ReplyClient {
                    reply: ClientReply::Events { events },
                    ..
                } => Some(events.iter().map(|e| e.seq).collect()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn readers_get_what_is_new_at_once_or_when_it_comes() {
        let mut log = EventLog::default();
        let mut out = Vec::new();
        log.push(
            1,
            "block-submitted",
            Subject {
                block: Some(0),
                worker: None,
                pool: Some("default"),
            },
            "job 1".into(),
            &mut out,
        );
        log.query(ReplyTo(1), 0, Some(5), 2, &mut out);
        assert_eq!(events_in(&out), [vec![1]]);
        out.clear();
        log.query(ReplyTo(2), 1, Some(5), 2, &mut out);
        assert!(out.is_empty(), "held");
        let about = Subject {
            worker: Some("w1"),
            ..Subject::default()
        };
        log.push(3, "worker-lost", about, "gone".into(), &mut out);
        assert_eq!(events_in(&out), [vec![2]]);
        out.clear();
        log.query(ReplyTo(3), 2, Some(5), 4, &mut out);
        log.expire(8, &mut out);
        assert!(out.is_empty());
        log.expire(9, &mut out);
        assert_eq!(events_in(&out), [Vec::<u64>::new()]);
    }

    #[test]
    fn a_reader_from_before_a_restart_misses_nothing_after_it() {
        let started = 1_700_000_000_000_000;
        let mut before = EventLog::starting_after(started);
        let mut out = Vec::new();
        for at in 0..3 {
            before.push(
                started + at,
                "block-submitted",
                Subject::default(),
                String::new(),
                &mut out,
            );
        }
        let seen = before.all().last().map(|e| e.seq).unwrap();
        assert_eq!(seen, started + 3);
        // The daemon restarts a second later; the reader asks on, after
        // the last number it saw, and is held until the next event.
        let mut after = EventLog::starting_after(started + 1_000_000);
        after.query(
            ReplyTo(1),
            seen,
            Some(5_000_000),
            started + 1_000_001,
            &mut out,
        );
        assert!(out.is_empty(), "held");
        after.push(
            started + 1_000_002,
            "worker-joined",
            Subject::default(),
            String::new(),
            &mut out,
        );
        assert_eq!(events_in(&out), [vec![started + 1_000_001]]);
        // A number this log never gave (the earlier daemon's clock was
        // ahead) is from an earlier log: everything kept comes back.
        out.clear();
        after.query(
            ReplyTo(2),
            started + 5_000_000,
            Some(5),
            started + 1_000_003,
            &mut out,
        );
        assert_eq!(events_in(&out), [vec![started + 1_000_001]]);
    }
}
