//! What the PBS provider reads from the scheduler: `qsub` output (the job
//! id) and `qstat -f -F json -x` output (job states).

#![no_main]

use flotilla_fuzz::{command_output, job_ids};
use flotilla_providers::pbs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = command_output(data);
    if let Some(id) = pbs::parse_qsub(&out.stdout) {
        assert!(
            !id.0.is_empty() && !id.0.contains(char::is_whitespace),
            "{id:?}"
        );
    }
    let ids = job_ids(&out.stdout);
    if let Ok(statuses) = pbs::parse_qstat(&ids, &out) {
        assert_eq!(statuses.len(), ids.len(), "one status per job asked about");
    }
});
