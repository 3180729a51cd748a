//! The single-node launcher: N background copies of the worker on this node.

use crate::{LaunchError, LaunchSpec, Launcher, node_name_or_host};

/// Starts `workers_per_node` copies of the worker as background processes of
/// the block's shell and waits for all of them. The block fails when every
/// copy failed, or, with `fail_on_any`, when any copy failed. With one
/// worker the shell `exec`s it, so signals sent to the block reach the
/// worker directly.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleNode {
    /// Fail the block when any copy fails (default: only when all fail,
    /// so one bad copy does not take its healthy siblings' work with it).
    pub fail_on_any: bool,
}

impl Launcher for SingleNode {
    fn name(&self) -> &'static str {
        "single-node"
    }

    fn script(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        spec.check()?;
        if spec.nodes > 1 {
            return Err(LaunchError::SingleNodeOnly {
                launcher: self.name(),
                nodes: spec.nodes,
            });
        }
        let mut s = spec.preamble();
        let n = spec.workers_per_node;
        if n == 1 {
            s.push_str(&spec.copy_body("0", &node_name_or_host()));
            s.push('\n');
            return Ok(s);
        }
        let fail_when = if self.fail_on_any {
            "-gt 0"
        } else {
            &format!("-eq {n}")
        };
        s.push_str(&format!(
            "pids=''\n\
             rank=0\n\
             while [ \"$rank\" -lt {n} ]; do\n\
             \x20 ( {body} ) &\n\
             \x20 pids=\"$pids $!\"\n\
             \x20 rank=$((rank + 1))\n\
             done\n\
             trap 'kill $pids 2>/dev/null' TERM INT\n\
             failed=0\n\
             status=0\n\
             for pid in $pids; do wait \"$pid\" || {{ status=$?; failed=$((failed + 1)); }}; done\n\
             if [ \"$failed\" {fail_when} ]; then\n\
             \x20 echo \"$failed of {n} workers failed\" >&2\n\
             \x20 exit \"$status\"\n\
             fi\n\
             exit 0\n",
            body = spec.copy_body("$rank", &node_name_or_host()),
        ));
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run, sorted_lines};

    fn spec(command: &str, workers: u32) -> LaunchSpec {
        LaunchSpec {
            worker_command: command.into(),
            copy_setup: String::new(),
            workers_per_node: workers,
            nodes: 1,
            block_id: 4,
        }
    }

    #[test]
    fn starts_every_copy_with_its_rank_node_and_block() {
        let s = spec(
            "sh -c 'echo $FLOTILLA_WORKER_RANK/$FLOTILLA_NODE_NAME/$FLOTILLA_BLOCK_ID'",
            3,
        );
        let out = run(&SingleNode::default().script(&s).unwrap(), &[]);
        assert!(out.status.success(), "{out:?}");
        let node = nix_node();
        assert_eq!(
            sorted_lines(&out),
            [0, 1, 2].map(|r| format!("{r}/{node}/4"))
        );
    }

    fn nix_node() -> String {
        let out = std::process::Command::new("uname")
            .arg("-n")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn one_copy_is_execed_with_rank_zero() {
        let script = SingleNode::default()
            .script(&spec("sh -c 'echo $FLOTILLA_WORKER_RANK'", 1))
            .unwrap();
        assert!(script.contains("exec sh -c"), "{script}");
        assert_eq!(sorted_lines(&run(&script, &[])), ["0"]);
    }

    #[test]
    fn setup_runs_in_each_copy_before_the_worker() {
        let mut s = spec("sh -c 'echo $SEEN'", 2);
        s.copy_setup = "SEEN=\"rank-$FLOTILLA_WORKER_RANK\"\nexport SEEN".into();
        let out = run(&SingleNode::default().script(&s).unwrap(), &[]);
        assert_eq!(sorted_lines(&out), ["rank-0", "rank-1"]);
    }

    #[test]
    fn by_default_the_block_fails_only_when_every_copy_fails() {
        let some = spec("sh -c 'exit $((3 * FLOTILLA_WORKER_RANK))'", 2);
        let out = run(&SingleNode::default().script(&some).unwrap(), &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "one healthy copy keeps the block"
        );
        let all = spec("sh -c 'exit 5'", 2);
        let out = run(&SingleNode::default().script(&all).unwrap(), &[]);
        assert_eq!(out.status.code(), Some(5));
        assert!(String::from_utf8_lossy(&out.stderr).contains("2 of 2 workers failed"));
    }

    #[test]
    fn fail_on_any_fails_the_block_for_one_bad_copy() {
        let s = spec("sh -c 'exit $((3 * FLOTILLA_WORKER_RANK))'", 2);
        let launcher = SingleNode { fail_on_any: true };
        let out = run(&launcher.script(&s).unwrap(), &[]);
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn refuses_several_nodes_and_zero_workers() {
        let mut s = spec("true", 1);
        s.nodes = 2;
        assert!(matches!(
            SingleNode::default().script(&s),
            Err(LaunchError::SingleNodeOnly { nodes: 2, .. })
        ));
        assert_eq!(
            SingleNode::default().script(&spec("true", 0)),
            Err(LaunchError::NoWorkers)
        );
    }
}
