//! What the Kubernetes provider reads: `kubectl get deployments,pods -o
//! json` output (block states).

#![no_main]

use flotilla_fuzz::{command_output, job_ids};
use flotilla_providers::kubernetes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = command_output(data);
    let ids = job_ids(&out.stdout);
    if let Ok(statuses) = kubernetes::parse_get(&ids, &out) {
        assert_eq!(
            statuses.len(),
            ids.len(),
            "one status per block asked about"
        );
    }
});
