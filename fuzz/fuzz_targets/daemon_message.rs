//! The interchange as a worker reads it: a frame from whatever answered at
//! the daemon's address, decoded with the worker's frame cap; servable
//! records that come with work are held to the daemon's publication checks.

#![no_main]

use flotilla_engine::servable_spec;
use flotilla_fuzz::assert_round_trip;
use flotilla_protocol::interchange::DaemonMessage;
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode::<DaemonMessage>(data, DEFAULT_MAX_FRAME_BYTES) else {
        return;
    };
    assert_round_trip(&message);
    if let DaemonMessage::Work { batches } = &message {
        for record in batches.iter().filter_map(|b| b.spec.as_deref()) {
            let _ = servable_spec::check_record(record);
        }
    }
});
