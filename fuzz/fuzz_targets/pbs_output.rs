//! What the PBS provider reads from the scheduler: `qsub` output (the job
//! id) and `qstat -f -F json -x` output (job states).

#![no_main]

use flotilla_fuzz::{command_output, job_ids};
use flotilla_providers::{pbs, site_values};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = command_output(data);
    // An accepted job id has the shape the provider checks before it
    // puts one into a scheduler command.
    if let Ok(id) = pbs::parse_qsub(&out.stdout) {
        assert!(site_values::valid_pbs_id(&id.0), "{id:?}");
    }
    let ids = job_ids(&out.stdout);
    if let Ok(statuses) = pbs::parse_qstat(&ids, &out) {
        assert_eq!(statuses.len(), ids.len(), "one status per job asked about");
    }
});
