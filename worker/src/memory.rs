//! How much memory a process holds, from `/proc` (Linux).

use std::fs;

/// Resident memory of process `pid` in KiB (`VmRSS` in
/// `/proc/PID/status`); `None` where there is no such file or line.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:` line of a `/proc/PID/status` text, in KiB.
fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let text = "Name:\tpython3\nVmPeak:\t  9000 kB\nVmRSS:\t   81234 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(text), Some(81234));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(rss_kb(std::process::id()).is_some_and(|kb| kb > 0));
    }
}
