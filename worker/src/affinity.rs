//! Pinning a slot's servable processes to its cores, through
//! `sched_getaffinity`/`sched_setaffinity`.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The cores this process may run on, ascending: what a slot's share is
/// taken from.
pub fn available_cpus() -> Result<Vec<u32>, String> {
    let set = sched_getaffinity(Pid::from_raw(0))
        .map_err(|e| format!("cannot read this worker's CPU affinity: {e}"))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .filter_map(|cpu| u32::try_from(cpu).ok())
        .collect())
}

/// The set of `cpus`, or which core it cannot hold.
fn cpu_set(cpus: &[u32]) -> Result<CpuSet, String> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu as usize).map_err(|_| {
            format!(
                "core {cpu} is beyond the {} cores an affinity mask holds",
                CpuSet::count()
            )
        })?;
    }
    Ok(set)
}

/// Makes the process `command` starts run on `cpus` only (set in the
/// child before it runs anything, so its threads and children inherit
/// it). A core the node lacks makes the start fail with the system's
/// reason.
pub fn pin(command: &mut Command, cpus: &[u32]) -> Result<(), String> {
    if cpus.is_empty() {
        return Err("a slot's core set is empty".into());
    }
    let set = cpu_set(cpus)?;
    // SAFETY: the hook runs in the forked child before exec; it only makes
    // the sched_setaffinity system call on a set built beforehand, which
    // is async-signal-safe (no allocation, no lock).
    unsafe {
        command.pre_exec(move || {
            sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// Makes the calling thread (and the threads it starts from now on) run
/// on `cpus` only: how a slot's in-process servables (ONNX sessions) keep
/// to its cores.
pub fn pin_current_thread(cpus: &[u32]) -> Result<(), String> {
    if cpus.is_empty() {
        return Err("a slot's core set is empty".into());
    }
    let set = cpu_set(cpus)?;
    // Pid 0 is the calling thread for sched_setaffinity on Linux.
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| format!("cannot run on cores {cpus:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_process_runs_on_its_cores_only() {
        let available = available_cpus().unwrap();
        assert!(!available.is_empty());
        let last = *available.last().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
        pin(&mut command, &[last]).unwrap();
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split_whitespace().last(),
            Some(last.to_string().as_str()),
            "{text}"
        );
    }

    #[test]
    fn a_pinned_thread_and_its_children_run_on_its_cores_only() {
        let last = *available_cpus().unwrap().last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(&[last]).unwrap();
            std::thread::spawn(available_cpus).join().unwrap().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, [last]);
        assert!(pin_current_thread(&[]).is_err());
    }

    #[test]
    fn cores_that_cannot_be_pinned_say_why() {
        assert!(pin(&mut Command::new("true"), &[]).is_err());
        let err = pin(&mut Command::new("true"), &[60_000]).unwrap_err();
        assert!(err.contains("core 60000 is beyond"), "{err}");
    }
}
