//! The `flotilla` binary's exit codes and messages for usage and config
//! errors (no daemon needed).

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use flotilla_protocol::launch::HOME_ENV;

fn flotilla(args: &[&str], home: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env(HOME_ENV, home)
        .env_remove(flotilla_protocol::paths::SHARED_ENV)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_and_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    assert_eq!(flotilla(&["--version"], home.path()).status.code(), Some(0));
    assert_eq!(
        flotilla(&["frobnicate"], home.path()).status.code(),
        Some(2)
    );
    assert_eq!(flotilla(&["result"], home.path()).status.code(), Some(2));
    let out = flotilla(&["result", "abc"], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a task id"), "{}", stderr(&out));
}

#[test]
fn no_daemon_is_exit_3_with_a_hint() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["run", "noop"],
        &["result", "1"],
        &["stop"],
    ] {
        let out = flotilla(args, home.path());
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("flotilla daemon"), "{}", stderr(&out));
    }
}

#[test]
fn bad_input_json_is_a_usage_error_naming_the_input() {
    let home = tempfile::tempdir().unwrap();
    let out = flotilla(&["run", "echo", "not json"], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the input argument is not valid JSON"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_check_names_file_line_and_key() {
    let home = tempfile::tempdir().unwrap();
    let out = flotilla(&["config", "check"], home.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let file = home.path().join("site.toml");
    std::fs::write(
        &file,
        "[provider]\ninit_blocks = 1\nmin_blocks = 0\nmax_blocks = 0\n",
    )
    .unwrap();
    let out = flotilla(&["config", "check", file.to_str().unwrap()], home.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("site.toml:2: `provider.init_blocks`"), "{err}");
    let out = flotilla(&["daemon", "--config", file.to_str().unwrap()], home.path());
    assert_eq!(
        out.status.code(),
        Some(2),
        "the daemon refuses a bad site file"
    );
}

#[test]
fn config_check_shows_the_state_and_shared_directories() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("site.toml");
    std::fs::write(
        &file,
        "[daemon]\nstate_dir = \"/local/fl\"\nshared_dir = \"/scratch/me/fl\"\n",
    )
    .unwrap();
    let out = flotilla(&["config", "check", file.to_str().unwrap()], home.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# state directory (store, socket, lock, secret): /local/fl\n"),
        "{text}"
    );
    assert!(
        text.contains("compute nodes reach it): /scratch/me/fl\n"),
        "{text}"
    );
    // Unset, the shared directory is the state directory.
    std::fs::write(&file, "[daemon]\nstate_dir = \"/local/fl\"\n").unwrap();
    let out = flotilla(&["config", "check", file.to_str().unwrap()], home.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("compute nodes reach it): /local/fl\n"),
        "{text}"
    );
}

#[test]
fn config_check_shows_the_metrics_endpoint_and_refuses_a_bad_address() {
    let home = tempfile::tempdir().unwrap();
    let out = flotilla(&["config", "check"], home.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# metrics endpoint: off"), "{text}");
    let file = home.path().join("site.toml");
    std::fs::write(&file, "[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
    let out = flotilla(&["config", "check", file.to_str().unwrap()], home.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# metrics endpoint: http://127.0.0.1:9464/metrics\n"),
        "{text}"
    );
    assert!(
        text.contains("[metrics]\nlisten = \"127.0.0.1:9464\"\n"),
        "{text}"
    );
    std::fs::write(&file, "[daemon]\nlog_format = \"yaml\"\n").unwrap();
    let out = flotilla(&["config", "check", file.to_str().unwrap()], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("site.toml:2: `daemon.log_format`: must be \"text\" or \"json\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_site_example_checks_and_a_broken_one_is_named() {
    let home = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-examples");
    let mut files: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    // Sites whose containers bind-mount the host's worker need its absolute
    // path: the one beside `flotilla`, as a daemon started from it would.
    let worker =
        std::path::Path::new(env!("CARGO_BIN_EXE_flotilla")).with_file_name("flotilla-worker");
    assert!(
        worker.is_file(),
        "{} is missing: build the workspace's binaries first (scripts/test.sh does)",
        worker.display()
    );
    let args: Vec<&str> = ["config", "check"]
        .into_iter()
        .chain(files.iter().map(String::as_str))
        .collect();
    let out = flotilla(&args, home.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let broken = home.path().join("broken.toml");
    std::fs::write(&broken, "[provider]\nkind = \"slurm\"\nqueue = \"debug\"\n").unwrap();
    let out = flotilla(
        &["config", "check", &files[0], broken.to_str().unwrap()],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("broken.toml:3: `provider.queue`") && err.contains("`partition`"),
        "{err}"
    );
}

#[test]
fn a_block_the_site_cannot_describe_fails_the_check_not_the_daemon() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("site.toml");
    std::fs::write(
        &file,
        "[provider]\nkind = \"slurm\"\n[container]\nruntime = \"apptainer\"\nimage = \"/i.sif\"\n[worker]\ncommand = \"flotilla-worker\"\n",
    )
    .unwrap();
    let out = flotilla(&["config", "check", file.to_str().unwrap()], home.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("site.toml: cannot write the job for block 0")
            && err.contains("needs an absolute path, not `flotilla-worker`"),
        "{err}"
    );
}

#[test]
fn pool_preview_prints_the_submit_command_and_script_without_the_secret() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("site.toml");
    std::fs::write(
        &file,
        "[interchange]\naddress = \"127.0.0.1\"\nport = 7000\n[provider]\nkind = \"slurm\"\npartition = \"gpu\"\n[worker]\ncommand = \"/sw/flotilla-worker\"\n",
    )
    .unwrap();
    let out = flotilla(
        &[
            "pool",
            "preview",
            "--config",
            file.to_str().unwrap(),
            "--block",
            "3",
        ],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // The home given is the state directory itself.
    let run_dir = home.path().join("blocks/3");
    assert!(
        text.contains(&format!(
            "sbatch --parsable {}/block.sh\n",
            run_dir.display()
        )),
        "{text}"
    );
    assert!(text.contains("#SBATCH --partition=gpu\n"), "{text}");
    assert!(
        text.contains("exec /sw/flotilla-worker --address 127.0.0.1 --port 7000 --block-id 3"),
        "{text}"
    );
    assert!(
        text.contains("export FLOTILLA_SECRET='<redacted>'"),
        "{text}"
    );
    assert!(
        !home.path().join("blocks").exists(),
        "a preview creates nothing"
    );
}
