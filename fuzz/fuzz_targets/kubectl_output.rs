//! What the Kubernetes provider reads: `kubectl get deployments,pods -o
//! json` output (block states, with what earlier polls saw).

#![no_main]

use flotilla_fuzz::{command_output, job_ids};
use flotilla_providers::kubernetes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = command_output(data);
    let ids = job_ids(&out.stdout);
    // Twice on one memory, as two polls: the second also compares with
    // the pods the first saw running.
    let mut pods = kubernetes::state::PodMemory::default();
    for _ in 0..2 {
        if let Ok(statuses) = pods.statuses(&ids, &out) {
            assert_eq!(
                statuses.len(),
                ids.len(),
                "one status per block asked about"
            );
        }
    }
});
