//! The servable stdio protocol as a worker reads it: a frame header, then
//! a reply body from the servable process. Every output the worker accepts
//! is forwarded as a task's result, so it must be exactly one msgpack
//! value.

#![no_main]

use flotilla_protocol::stdio::{self, Reply};
use libfuzzer_sys::fuzz_target;

// Linked for its allocator, which aborts at the frame cap.
use flotilla_fuzz as _;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<4>() {
        let len = stdio::body_len(*header);
        assert_eq!(stdio::header(len), *header, "a frame header reads back");
    }
    let Ok(Reply::Outputs(outputs)) = stdio::decode_reply(data) else {
        return;
    };
    for output in outputs.iter().filter_map(|o| o.as_ref().ok()) {
        let mut rest: &[u8] = output;
        let value = rmpv::decode::read_value(&mut rest);
        assert!(
            value.is_ok() && rest.is_empty(),
            "an accepted output is not one msgpack value: {output:?}"
        );
    }
});
