//! The client API as the daemon reads it: a frame off the API socket,
//! decoded with the daemon's default frame cap, then the parts the daemon
//! parses further (servable references, records sent for publication,
//! the servable filters of task lists and task events).

#![no_main]

use flotilla_engine::servable_spec;
use flotilla_fuzz::{assert_round_trip, check_servable_ref};
use flotilla_protocol::client::ClientCall;
use flotilla_protocol::watch::servable_matches;
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, TaskId, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(call) = decode::<ClientCall>(data, DEFAULT_MAX_FRAME_BYTES) else {
        return;
    };
    assert_round_trip(&call);
    match &call {
        ClientCall::Submit { tasks, .. } => {
            for task in tasks {
                check_servable_ref(&task.servable);
            }
        }
        ClientCall::Publish { record } => {
            let _ = servable_spec::check_record(record);
        }
        ClientCall::ShowServable { name } | ClientCall::ServableVersions { name } => {
            check_servable_ref(name);
        }
        ClientCall::RemoveServable { id } => check_servable_ref(id),
        ClientCall::ListTasks(query) => {
            if let Some(name) = &query.servable {
                assert!(
                    servable_matches(name, name),
                    "{name:?} does not match itself"
                );
            }
        }
        ClientCall::TaskEvents { filter, .. } => {
            if let Some(name) = &filter.servable {
                assert!(
                    servable_matches(name, name),
                    "{name:?} does not match itself"
                );
                let _ = filter.matches(TaskId(u64::MAX), name);
            }
        }
        _ => {}
    }
});
