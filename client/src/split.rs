//! Splitting a submission into frames the daemon accepts.
//!
//! The daemon drops any request larger than its frame limit (`[daemon]
//! max_frame_bytes`, 64 MiB unless the site sets it): 64 Inception-sized
//! images (1 MiB each as float32) already make 69 MB. A submission is
//! therefore cut, in order, into as few `Submit` requests as keep each one
//! under the limit; the tasks' ids come back in the order given. A single
//! task over the limit cannot be cut and is refused as before.
//!
//! A frame's size is bounded without encoding it: the encoded `Submit`
//! without tasks, plus per task its payloads, its servable's name and
//! [`TASK_OVERHEAD`] for the msgpack around them (a unit test checks the
//! bound against real encodings).

use flotilla_protocol::client::{ClientCall, TaskRequest};

/// Bytes of msgpack a task adds besides its payloads and servable name
/// (field names, string and binary headers), with room to spare.
pub const TASK_OVERHEAD: usize = 64;

/// Bytes the encoded `Submit` adds besides its tasks, with room for the
/// list's header at any length.
pub fn envelope(wait_ms: Option<u64>) -> usize {
    let empty = ClientCall::Submit {
        tasks: Vec::new(),
        wait_ms,
    };
    flotilla_protocol::encode(&empty).map_or(64, |b| b.len()) + 8
}

/// An upper bound on the bytes `task` adds to an encoded `Submit`.
pub fn task_bytes(task: &TaskRequest) -> usize {
    task.servable.len() + task.input.len() + task.params.len() + TASK_OVERHEAD
}

/// `tasks` in order, cut into runs whose `Submit` (of `envelope` bytes
/// without tasks) stays within `limit` bytes. A task too large for any
/// frame is alone in its own.
pub fn frames(tasks: Vec<TaskRequest>, limit: usize, envelope: usize) -> Vec<Vec<TaskRequest>> {
    let budget = limit.saturating_sub(envelope);
    let mut frames = Vec::new();
    let mut current = Vec::new();
    let mut used = 0usize;
    for task in tasks {
        let bytes = task_bytes(&task);
        if !current.is_empty() && used + bytes > budget {
            frames.push(std::mem::take(&mut current));
            used = 0;
        }
        used += bytes;
        current.push(task);
    }
    if !current.is_empty() || frames.is_empty() {
        frames.push(current);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::Payload;

    fn task(name: &str, input: usize, params: usize) -> TaskRequest {
        TaskRequest {
            servable: name.into(),
            input: Payload::from(vec![7u8; input]),
            params: Payload::from(vec![1u8; params]),
        }
    }

    fn encoded(tasks: &[TaskRequest], wait_ms: Option<u64>) -> usize {
        flotilla_protocol::encode(&ClientCall::Submit {
            tasks: tasks.to_vec(),
            wait_ms,
        })
        .unwrap()
        .len()
    }

    #[test]
    fn the_bound_holds_for_real_encodings() {
        for wait_ms in [None, Some(u64::MAX >> 1)] {
            for (n, input, params) in [(0, 0, 0), (1, 0, 0), (3, 300, 20), (17, 70_000, 0)] {
                let tasks: Vec<_> = (0..n)
                    .map(|i| task(&"s".repeat(1 + i * 7), input + i, params))
                    .collect();
                let bound = envelope(wait_ms) + tasks.iter().map(task_bytes).sum::<usize>();
                assert!(encoded(&tasks, wait_ms) <= bound, "{n} tasks");
            }
        }
    }

    #[test]
    fn a_submission_is_cut_in_order_into_frames_under_the_limit() {
        let limit = 10_000;
        let tasks: Vec<_> = (0..10).map(|i| task("echo", 2_000 + i, 0)).collect();
        let frames = frames(tasks.clone(), limit, envelope(None));
        assert!(frames.len() > 1);
        assert!(frames.iter().all(|f| encoded(f, None) <= limit));
        assert_eq!(frames.concat(), tasks);
        // Greedy: the next frame's first task did not fit in this one.
        for pair in frames.windows(2) {
            let used: usize = pair[0].iter().map(task_bytes).sum();
            assert!(used + task_bytes(&pair[1][0]) > limit - envelope(None));
        }
    }

    #[test]
    fn what_fits_stays_one_frame_and_a_task_too_large_is_alone() {
        let small: Vec<_> = (0..3).map(|_| task("echo", 100, 0)).collect();
        assert_eq!(frames(small.clone(), 10_000, envelope(None)), vec![small]);
        let mixed = vec![task("a", 100, 0), task("b", 50_000, 0), task("c", 100, 0)];
        let cut = frames(mixed.clone(), 10_000, envelope(None));
        assert_eq!(cut.len(), 3);
        assert_eq!(cut[1], vec![mixed[1].clone()]);
        assert_eq!(frames(Vec::new(), 10_000, 100), vec![Vec::new()]);
    }
}
