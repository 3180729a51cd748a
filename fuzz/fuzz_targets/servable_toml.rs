//! `servable.toml` as `flotilla servable publish` reads it. A spec that
//! passes there must pass the daemon's own check of the record it is sent,
//! and travel in a `Publish` frame unchanged; a refusal names the file and
//! a line that exists.

#![no_main]

use flotilla_engine::servable_spec::{self, SPEC_FILE};
use flotilla_fuzz::assert_round_trip;
use flotilla_protocol::client::ClientCall;
use flotilla_protocol::servable::{FileEntry, ServableRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The CLI reads the file as UTF-8 and refuses anything else first.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match servable_spec::parse(text, SPEC_FILE) {
        Ok(spec) => spec,
        Err(e) => {
            assert_eq!(e.file, SPEC_FILE);
            if let Some(line) = e.line {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1),
                    "line {line} of a {}-line file: {e}",
                    text.lines().count()
                );
            }
            return;
        }
    };
    let files = spec
        .files
        .iter()
        .map(|path| FileEntry {
            path: path.clone(),
            blake3: "0".repeat(64),
            size: 0,
        })
        .collect();
    let record = ServableRecord {
        spec,
        files,
        published_us: 1,
        lock: None,
        access: None,
    };
    if let Err(e) = servable_spec::check_record(&record) {
        panic!("publish accepted a spec the daemon refuses: {e}: {record:?}");
    }
    assert_round_trip(&ClientCall::Publish {
        record: Box::new(record),
    });
});
