//! The builtin servables: `noop`, `echo` and `sleep`.
//!
//! Each runs a whole batch as one call, as a model servable would, and gives
//! one outcome per input. A bad input fails only itself.

use std::time::Duration;

use flotilla_protocol::Payload;
use flotilla_protocol::interchange::WorkItem;
use flotilla_protocol::task::{NIL, Outcome};

/// Longest `sleep` accepts, so a typo cannot hold a slot for years.
const MAX_SLEEP_S: f64 = 86_400.0;

/// Runs builtin `servable` on `items`; `None` if there is no such builtin.
pub fn run_batch(servable: &str, items: &[WorkItem]) -> Option<Vec<Outcome>> {
    let outcomes = match servable {
        "noop" => items
            .iter()
            .map(|_| Outcome::Output(Payload::from_static(NIL)))
            .collect(),
        "echo" => items
            .iter()
            .map(|i| Outcome::Output(i.input.clone()))
            .collect(),
        "sleep" => items.iter().map(|i| sleep(&i.input)).collect(),
        _ => return None,
    };
    Some(outcomes)
}

fn sleep(input: &[u8]) -> Outcome {
    match rmp_serde::from_slice::<f64>(input) {
        Ok(s) if (0.0..=MAX_SLEEP_S).contains(&s) => {
            std::thread::sleep(Duration::from_secs_f64(s));
            Outcome::Output(Payload::from_static(NIL))
        }
        Ok(s) => Outcome::Error(format!(
            "sleep: input must be a number of seconds between 0 and {MAX_SLEEP_S}, got {s}"
        )),
        Err(_) => Outcome::Error("sleep: input must be a number of seconds, e.g. 0.5".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::TaskId;

    fn item(input: &[u8]) -> WorkItem {
        WorkItem {
            task: TaskId(1),
            input: Payload::copy_from_slice(input),
        }
    }

    #[test]
    fn echo_returns_its_input_and_noop_nil() {
        let items = [item(&[0x01]), item(&[0xa1, b'x'])];
        assert_eq!(
            run_batch("echo", &items).unwrap(),
            [
                Outcome::Output(Payload::from_static(&[0x01])),
                Outcome::Output(Payload::from_static(&[0xa1, b'x']))
            ]
        );
        assert_eq!(
            run_batch("noop", &items).unwrap(),
            vec![Outcome::Output(Payload::from_static(NIL)); 2]
        );
        assert!(run_batch("digits", &items).is_none());
    }

    #[test]
    fn sleep_fails_bad_inputs_alone() {
        let zero = rmp_serde::to_vec(&0.0f64).unwrap();
        let int = rmp_serde::to_vec(&0u8).unwrap();
        let word = rmp_serde::to_vec("soon").unwrap();
        let negative = rmp_serde::to_vec(&-1.0f64).unwrap();
        let out = run_batch(
            "sleep",
            &[item(&zero), item(&word), item(&int), item(&negative)],
        )
        .unwrap();
        assert!(out[0].is_ok() && out[2].is_ok());
        assert!(matches!(&out[1], Outcome::Error(m) if m.contains("number of seconds")));
        assert!(matches!(&out[3], Outcome::Error(m) if m.contains("got -1")));
    }
}
