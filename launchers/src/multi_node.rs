//! Launchers that span the nodes of an allocation (`srun`, `mpiexec`,
//! `aprun`), and the two that leave the spanning to the user (`simple`,
//! `wrapped`).
//!
//! Each starts one `sh -c` per copy, which reads its rank and node from the
//! variables the parallel launcher sets, exports them under Flotilla's names
//! and `exec`s the worker.

use crate::shell::quote;
use crate::{LaunchError, LaunchSpec, Launcher, node_name_or_host};

/// A copy's rank as any common parallel launcher reports it (Slurm, PMI,
/// Cray PALS, Open MPI, PMIx, ALPS), else 0.
const ANY_RANK: &str = "\"${SLURM_PROCID:-${PMI_RANK:-${PALS_RANKID:-${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${ALPS_APP_PE:-0}}}}}}\"";
/// The node a copy runs on.
const UNAME: &str = "\"$(uname -n)\"";

/// `sh -c 'BODY'` for one copy.
fn per_copy(spec: &LaunchSpec, rank: &str, node: &str) -> String {
    format!("sh -c {}", quote(&spec.copy_body(rank, node)))
}

/// Appends the user's extra launcher options (shell text, verbatim).
fn with_options(mut command: String, options: &str) -> String {
    let options = options.trim();
    if !options.is_empty() {
        command.push(' ');
        command.push_str(options);
    }
    command
}

/// Slurm's `srun`: `--ntasks-per-node` copies on each of the job's nodes.
#[derive(Clone, Debug, Default)]
pub struct Srun {
    /// Extra `srun` options (shell text), after Flotilla's own, so they win.
    pub options: String,
}

impl Launcher for Srun {
    fn name(&self) -> &'static str {
        "srun"
    }

    fn script(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        spec.check()?;
        let srun = with_options(
            format!(
                "srun --nodes={} --ntasks={} --ntasks-per-node={}",
                spec.nodes,
                spec.total_workers(),
                spec.workers_per_node
            ),
            &self.options,
        );
        Ok(format!(
            "{}exec {srun} {}\n",
            spec.preamble(),
            per_copy(
                spec,
                "\"$SLURM_PROCID\"",
                "\"${SLURMD_NODENAME:-$(uname -n)}\""
            )
        ))
    }
}

/// Which `mpiexec` a site has; they spell "copies per node" and "host file"
/// differently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MpiFlavor {
    /// MPICH's Hydra and Intel MPI: `-n T -ppn P -f HOSTFILE`.
    #[default]
    Mpich,
    /// Cray PALS (Polaris, Aurora): `-n T --ppn P --hostfile HOSTFILE`.
    Pals,
    /// Open MPI: `-n T --map-by ppr:P:node --hostfile HOSTFILE`.
    OpenMpi,
}

/// `mpiexec` over the allocation's nodes, read from the scheduler's node
/// file (one line per core or per node; duplicates are dropped, order kept).
#[derive(Clone, Debug)]
pub struct Mpiexec {
    /// Which mpiexec.
    pub flavor: MpiFlavor,
    /// Shell expression naming the node file (`$PBS_NODEFILE`,
    /// `$COBALT_NODEFILE`, or a path).
    pub nodefile: String,
    /// Extra `mpiexec` options (shell text), after Flotilla's own.
    pub options: String,
}

impl Default for Mpiexec {
    fn default() -> Self {
        Mpiexec {
            flavor: MpiFlavor::default(),
            nodefile: "$PBS_NODEFILE".into(),
            options: String::new(),
        }
    }
}

impl Launcher for Mpiexec {
    fn name(&self) -> &'static str {
        "mpiexec"
    }

    fn script(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        spec.check()?;
        let (t, p) = (spec.total_workers(), spec.workers_per_node);
        let hosts = "\"$hostfile\"";
        let placement = match self.flavor {
            MpiFlavor::Mpich => format!("-n {t} -ppn {p} -f {hosts}"),
            MpiFlavor::Pals => format!("-n {t} --ppn {p} --hostfile {hosts}"),
            MpiFlavor::OpenMpi => format!("-n {t} --map-by ppr:{p}:node --hostfile {hosts}"),
        };
        let mpiexec = with_options(format!("mpiexec {placement}"), &self.options);
        Ok(format!(
            "{preamble}\
             nodefile={nodefile}\n\
             if [ -z \"$nodefile\" ] || [ ! -r \"$nodefile\" ]; then\n\
             \x20 echo \"mpiexec launcher: cannot read the node file '$nodefile' (from \"{nodefile_src}\"; set [launcher] nodefile)\" >&2\n\
             \x20 exit 1\n\
             fi\n\
             hostfile=\"${{TMPDIR:-/tmp}}/flotilla-hosts-{block}-$$\"\n\
             awk '!seen[$0]++' \"$nodefile\" | head -n {nodes} > \"$hostfile\"\n\
             {mpiexec} {copy}\n\
             status=$?\n\
             rm -f \"$hostfile\"\n\
             exit \"$status\"\n",
            preamble = spec.preamble(),
            nodefile = self.nodefile,
            nodefile_src = quote(&self.nodefile),
            block = spec.block_id,
            nodes = spec.nodes,
            copy = per_copy(spec, ANY_RANK, UNAME),
        ))
    }
}

/// Cray ALPS `aprun`: `-n` copies in all, `-N` per node.
#[derive(Clone, Debug, Default)]
pub struct Aprun {
    /// Extra `aprun` options (shell text), after Flotilla's own.
    pub options: String,
}

impl Launcher for Aprun {
    fn name(&self) -> &'static str {
        "aprun"
    }

    fn script(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        spec.check()?;
        let aprun = with_options(
            format!(
                "aprun -n {} -N {}",
                spec.total_workers(),
                spec.workers_per_node
            ),
            &self.options,
        );
        Ok(format!(
            "{}exec {aprun} {}\n",
            spec.preamble(),
            per_copy(spec, "\"${ALPS_APP_PE:-0}\"", UNAME)
        ))
    }
}

/// The worker command as it is, once: for allocations where something else
/// (a pod, a wrapper script) already places one copy per node.
#[derive(Clone, Copy, Debug, Default)]
pub struct Simple;

impl Launcher for Simple {
    fn name(&self) -> &'static str {
        "simple"
    }

    fn script(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        spec.check()?;
        Ok(format!(
            "{}{}\n",
            spec.preamble(),
            spec.copy_body(ANY_RANK, &node_name_or_host())
        ))
    }
}

/// The worker command behind a prefix of the user's (`ibrun`, `jsrun -n 2`,
/// `numactl -N 0`); the rank comes from whatever the prefix sets.
#[derive(Clone, Debug, Default)]
pub struct Wrapped {
    /// Shell text put before each copy.
    pub prefix: String,
}

impl Launcher for Wrapped {
    fn name(&self) -> &'static str {
        "wrapped"
    }

    fn script(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        spec.check()?;
        Ok(format!(
            "{}exec {} {}\n",
            spec.preamble(),
            self.prefix.trim(),
            per_copy(spec, ANY_RANK, UNAME)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run, sorted_lines};
    use std::os::unix::fs::PermissionsExt;

    fn spec(nodes: u32, per_node: u32) -> LaunchSpec {
        LaunchSpec {
            worker_command:
                "sh -c 'echo $FLOTILLA_WORKER_RANK@$FLOTILLA_NODE_NAME#$FLOTILLA_BLOCK_ID'".into(),
            copy_setup: String::new(),
            workers_per_node: per_node,
            nodes,
            block_id: 9,
        }
    }

    /// The first line that starts with `word `.
    fn line_of<'a>(script: &'a str, word: &str) -> &'a str {
        script
            .lines()
            .find(|l| l.starts_with(&format!("{word} ")) || l.starts_with(&format!("exec {word} ")))
            .unwrap_or_else(|| panic!("no {word} line in:\n{script}"))
    }

    /// A stand-in for a parallel launcher on PATH: prints its arguments,
    /// then runs the trailing `sh -c BODY` once per rank with `rank_var`
    /// set, as the real one would on each node.
    fn fake_launcher(dir: &std::path::Path, name: &str, rank_var: &str, ranks: u32) {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n\
                 echo \"args: $*\" >&2\n\
                 while [ \"$1\" != sh ]; do shift; done\n\
                 shift 2\n\
                 r=0\n\
                 while [ $r -lt {ranks} ]; do {rank_var}=$r sh -c \"$1\"; r=$((r + 1)); done\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn run_with_fake(
        script: &str,
        name: &str,
        rank_var: &str,
        ranks: u32,
        env: &[(&str, &str)],
    ) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        fake_launcher(dir.path(), name, rank_var, ranks);
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap()
        );
        let mut all = vec![("PATH", path.as_str())];
        all.extend_from_slice(env);
        run(script, &all)
    }

    #[test]
    fn srun_asks_for_every_copy_and_each_learns_its_rank_and_node() {
        let script = Srun {
            options: "--cpu-bind=none".into(),
        }
        .script(&spec(2, 3))
        .unwrap();
        assert!(
            line_of(&script, "srun").starts_with(
                "exec srun --nodes=2 --ntasks=6 --ntasks-per-node=3 --cpu-bind=none sh -c "
            ),
            "{script}"
        );
        let out = run_with_fake(
            &script,
            "srun",
            "SLURM_PROCID",
            2,
            &[("SLURMD_NODENAME", "n7")],
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(sorted_lines(&out), ["0@n7#9", "1@n7#9"]);
    }

    #[test]
    fn mpiexec_spells_placement_per_flavor() {
        let cases = [
            (MpiFlavor::Mpich, "mpiexec -n 4 -ppn 2 -f \"$hostfile\""),
            (
                MpiFlavor::Pals,
                "mpiexec -n 4 --ppn 2 --hostfile \"$hostfile\"",
            ),
            (
                MpiFlavor::OpenMpi,
                "mpiexec -n 4 --map-by ppr:2:node --hostfile \"$hostfile\"",
            ),
        ];
        for (flavor, expected) in cases {
            let launcher = Mpiexec {
                flavor,
                ..Mpiexec::default()
            };
            let script = launcher.script(&spec(2, 2)).unwrap();
            assert!(
                line_of(&script, "mpiexec").starts_with(expected),
                "{flavor:?}:\n{script}"
            );
        }
    }

    #[test]
    fn mpiexec_hostfile_has_each_node_once() {
        let dir = tempfile::tempdir().unwrap();
        let nodefile = dir.path().join("nodes");
        std::fs::write(&nodefile, "x1\nx1\nx2\nx2\nx3\n").unwrap();
        // The fake mpiexec prints the host file it was given.
        let bin = tempfile::tempdir().unwrap();
        let fake = bin.path().join("mpiexec");
        std::fs::write(
            &fake,
            "#!/bin/sh\nwhile [ \"$1\" != -f ]; do shift; done\ncat \"$2\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap()
        );
        let script = Mpiexec::default().script(&spec(2, 1)).unwrap();
        let out = run(
            &script,
            &[
                ("PATH", path.as_str()),
                ("PBS_NODEFILE", nodefile.to_str().unwrap()),
            ],
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x1\nx2\n");
    }

    #[test]
    fn mpiexec_ranks_come_from_pmi() {
        let dir = tempfile::tempdir().unwrap();
        let nodefile = dir.path().join("nodes");
        std::fs::write(&nodefile, "x1\n").unwrap();
        let script = Mpiexec::default().script(&spec(1, 2)).unwrap();
        let out = run_with_fake(
            &script,
            "mpiexec",
            "PMI_RANK",
            2,
            &[("PBS_NODEFILE", nodefile.to_str().unwrap())],
        );
        assert!(out.status.success(), "{out:?}");
        let lines = sorted_lines(&out);
        assert!(
            lines[0].starts_with("0@") && lines[1].starts_with("1@"),
            "{lines:?}"
        );
    }

    #[test]
    fn mpiexec_without_a_node_file_says_so() {
        let script = Mpiexec::default().script(&spec(2, 1)).unwrap();
        let out = run(&script, &[("PBS_NODEFILE", "/nonexistent/nodes")]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot read the node file '/nonexistent/nodes' (from $PBS_NODEFILE;"),
            "{err}"
        );
    }

    #[test]
    fn aprun_uses_width_and_per_node() {
        let script = Aprun {
            options: "-d 8 -j 1".into(),
        }
        .script(&spec(3, 4))
        .unwrap();
        assert!(
            line_of(&script, "aprun").starts_with("exec aprun -n 12 -N 4 -d 8 -j 1 sh -c "),
            "{script}"
        );
        let out = run_with_fake(&script, "aprun", "ALPS_APP_PE", 2, &[]);
        let lines = sorted_lines(&out);
        assert!(
            lines[0].starts_with("0@") && lines[1].starts_with("1@"),
            "{lines:?}"
        );
    }

    #[test]
    fn simple_runs_the_command_once_and_wrapped_puts_the_prefix_first() {
        let out = run(&Simple.script(&spec(4, 2)).unwrap(), &[]);
        assert_eq!(sorted_lines(&out).len(), 1);
        assert!(sorted_lines(&out)[0].starts_with("0@"));

        let script = Wrapped {
            prefix: "env WRAPPED=yes".into(),
        }
        .script(&spec(1, 1))
        .unwrap();
        assert!(script.contains("exec env WRAPPED=yes sh -c "), "{script}");
        let out = run(&script, &[("PMI_RANK", "5")]);
        assert!(sorted_lines(&out)[0].starts_with("5@"), "{out:?}");
    }

    #[test]
    fn simple_exports_the_contract_names_and_keeps_a_node_name_already_set() {
        let script = Simple.script(&spec(1, 1)).unwrap();
        assert!(
            script.starts_with("FLOTILLA_BLOCK_ID=9; export FLOTILLA_BLOCK_ID\n"),
            "{script}"
        );
        assert!(
            script.contains(
                "FLOTILLA_NODE_NAME=\"${FLOTILLA_NODE_NAME:-$(uname -n)}\"; \
                 export FLOTILLA_WORKER_RANK FLOTILLA_NODE_NAME; "
            ),
            "{script}"
        );
        let out = run(&script, &[("FLOTILLA_NODE_NAME", "pod-a")]);
        let lines = sorted_lines(&out);
        assert!(
            lines.len() == 1 && lines[0].ends_with("@pod-a#9"),
            "{out:?}"
        );
    }

    #[test]
    fn zero_workers_or_nodes_are_refused() {
        assert_eq!(
            Srun::default().script(&spec(2, 0)),
            Err(LaunchError::NoWorkers)
        );
        assert_eq!(
            Aprun::default().script(&spec(0, 1)),
            Err(LaunchError::NoNodes)
        );
    }
}
