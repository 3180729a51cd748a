//! A site file as `flotilla daemon` and `flotilla config check` read it:
//! parsed, checked, then what the daemon derives from it at start. A
//! refusal names the file; settings in force, written out, read back the
//! same.

#![no_main]

use flotilla_engine::config::Config;
use libfuzzer_sys::fuzz_target;

// Linked for its allocator, which aborts at the frame cap.
use flotilla_fuzz as _;

const FILE: &str = "site.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(text, FILE) {
        Ok(config) => config,
        Err(e) => {
            assert!(
                e.to_string().starts_with(FILE),
                "an error names its file: {e}"
            );
            return;
        }
    };
    let _ = config.scheduler_walltime();
    let _ = config.block_walltime_s();
    let _ = config.heartbeat_period();
    let _ = config.heartbeat_threshold();
    let written = config.to_toml();
    match Config::parse(&written, FILE) {
        Ok(again) => assert_eq!(again, config, "settings in force read back differently"),
        Err(e) => panic!("settings in force do not read back: {e}\n{written}"),
    }
});
