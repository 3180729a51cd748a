//! The interchange as the daemon reads it: a frame from a worker (or from
//! anyone who can reach the worker port), decoded with the daemon's default
//! frame cap, then the servable list a `Hello` carries.

#![no_main]

use flotilla_fuzz::{assert_round_trip, check_servable_ref};
use flotilla_protocol::interchange::WorkerMessage;
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode::<WorkerMessage>(data, DEFAULT_MAX_FRAME_BYTES) else {
        return;
    };
    assert_round_trip(&message);
    if let WorkerMessage::Hello(hello) = &message {
        for servable in &hello.servables {
            check_servable_ref(servable);
        }
    }
});
