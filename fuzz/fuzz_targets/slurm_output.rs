//! What the Slurm provider reads from the scheduler: `sbatch --parsable`
//! output (the job id) and `squeue` output (job states).

#![no_main]

use flotilla_fuzz::{command_output, job_ids};
use flotilla_providers::{site_values, slurm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = command_output(data);
    // An accepted job id has the shape the provider checks before it
    // puts one into a scheduler command.
    if let Ok(id) = slurm::parse_sbatch(&out.stdout) {
        assert!(site_values::valid_slurm_id(&id.0), "{id:?}");
    }
    let ids = job_ids(&out.stdout);
    if let Ok(statuses) = slurm::parse_squeue(&ids, &out) {
        assert_eq!(statuses.len(), ids.len(), "one status per job asked about");
    }
});
