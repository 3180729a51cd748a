//! What the Slurm provider reads from the scheduler: `sbatch --parsable`
//! output (the job id) and `squeue` output (job states).

#![no_main]

use flotilla_fuzz::{command_output, job_ids};
use flotilla_providers::slurm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = command_output(data);
    if let Some(id) = slurm::parse_sbatch(&out.stdout) {
        assert!(
            !id.0.is_empty() && !id.0.contains(char::is_whitespace),
            "{id:?}"
        );
    }
    let ids = job_ids(&out.stdout);
    if let Ok(statuses) = slurm::parse_squeue(&ids, &out) {
        assert_eq!(statuses.len(), ids.len(), "one status per job asked about");
    }
});
