//! What the Cobalt provider reads: `qsub` output (the job id), the `qstat`
//! table (job states) and a finished job's `.cobaltlog`.

#![no_main]

use flotilla_fuzz::{command_output, job_ids};
use flotilla_providers::{cobalt, site_values};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = command_output(data);
    // An accepted job id has the shape the provider checks before it
    // puts one into a scheduler command.
    if let Ok(id) = cobalt::parse_qsub(&out.stdout) {
        assert!(site_values::valid_cobalt_id(&id.0), "{id:?}");
    }
    let ids = job_ids(&out.stdout);
    if let Ok(statuses) = cobalt::status_from(&ids, &out) {
        assert_eq!(statuses.len(), ids.len(), "one answer per job asked about");
    }
    let _ = cobalt::settle_from_log(&out.stdout);
});
