//! What the Cobalt provider reads: `qsub` output (the job id), the `qstat`
//! table (job states) and a finished job's `.cobaltlog`.

#![no_main]

use flotilla_fuzz::{command_output, job_ids};
use flotilla_providers::cobalt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = command_output(data);
    if let Some(id) = cobalt::parse_qsub(&out.stdout) {
        assert!(
            !id.0.is_empty() && id.0.bytes().all(|b| b.is_ascii_digit()),
            "{id:?}"
        );
    }
    let ids = job_ids(&out.stdout);
    if let Ok(statuses) = cobalt::status_from(&ids, &out) {
        assert_eq!(statuses.len(), ids.len(), "one answer per job asked about");
    }
    let _ = cobalt::settle_from_log(&out.stdout);
});
