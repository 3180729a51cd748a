//! The single-node launcher: N background copies of the worker on this node.

use crate::{LaunchError, LaunchSpec, Launcher};

/// Starts `workers_per_node` copies of the worker as background processes of
/// the block's shell, waits for all of them, and exits with the last non-zero
/// status. With one worker the shell `exec`s it, so signals sent to the block
/// reach the worker directly.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleNode;

impl Launcher for SingleNode {
    fn name(&self) -> &'static str {
        "single-node"
    }

    fn script(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        if spec.nodes > 1 {
            return Err(LaunchError::SingleNodeOnly {
                launcher: self.name(),
                nodes: spec.nodes,
            });
        }
        match spec.workers_per_node {
            0 => Err(LaunchError::NoWorkers),
            1 => Ok(format!(
                "FLOTILLA_WORKER_RANK=0 exec {}\n",
                spec.worker_command
            )),
            n => Ok(format!(
                "pids=''\n\
                 rank=0\n\
                 while [ \"$rank\" -lt {n} ]; do\n\
                 \x20 FLOTILLA_WORKER_RANK=$rank {cmd} &\n\
                 \x20 pids=\"$pids $!\"\n\
                 \x20 rank=$((rank + 1))\n\
                 done\n\
                 trap 'kill $pids 2>/dev/null' TERM INT\n\
                 status=0\n\
                 for pid in $pids; do wait \"$pid\" || status=$?; done\n\
                 exit \"$status\"\n",
                cmd = spec.worker_command
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(script: &str) -> std::process::Output {
        Command::new("sh").arg("-c").arg(script).output().unwrap()
    }

    #[test]
    fn starts_every_copy_with_its_rank() {
        let spec = LaunchSpec {
            worker_command: "sh -c 'echo rank=$FLOTILLA_WORKER_RANK'".into(),
            workers_per_node: 3,
            nodes: 1,
        };
        let out = run(&SingleNode.script(&spec).unwrap());
        assert!(out.status.success());
        let mut lines: Vec<_> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        assert_eq!(lines, ["rank=0", "rank=1", "rank=2"]);
    }

    #[test]
    fn a_failing_copy_fails_the_block() {
        let spec = LaunchSpec {
            worker_command: "sh -c 'exit $((3 * FLOTILLA_WORKER_RANK))'".into(),
            workers_per_node: 2,
            nodes: 1,
        };
        let out = run(&SingleNode.script(&spec).unwrap());
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn refuses_several_nodes() {
        let spec = LaunchSpec {
            worker_command: "true".into(),
            workers_per_node: 1,
            nodes: 2,
        };
        assert!(matches!(
            SingleNode.script(&spec),
            Err(LaunchError::SingleNodeOnly { nodes: 2, .. })
        ));
    }
}
