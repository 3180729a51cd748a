//! Workers and servables inside real container runtimes: Podman (with
//! runc) and Charliecloud's `ch-run`, on a minimal image that holds busybox
//! and the C library only.
//!
//! They need `podman`, `runc`, `ch-run` and a static `/bin/busybox`
//! (`./scripts/test.sh` installs them); without them they fail and say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_protocol::task::TaskState;
use flotilla_tests::{Flotilla, bin, config_with, noop_tasks, wait_until, workspace};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(60);

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is missing: install {package} (./scripts/test.sh does)"
    );
}

/// A minimal root file system for the worker and the Rust test servable.
fn minimal_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let out = Command::new(workspace().join("tests/infra/minimal-image.sh"))
        .arg(&root)
        .arg(bin("flotilla-worker"))
        .arg(bin("flotilla-test-where"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    root
}

/// Whether process `pid` sees the minimal image as its root: busybox there,
/// and no /usr (which every host has).
fn runs_in_minimal_image(pid: u32) -> bool {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    root.join("bin/busybox").exists() && !root.join("usr").exists()
}

fn toml_str(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// Waits for `n` workers; on timeout, fails with what block 0 said.
fn wait_workers(f: &Flotilla, n: usize) {
    let client = f.client();
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline {
        if client.status().is_ok_and(|s| s.workers.len() == n) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{n} workers did not register; block 0's stderr:\n{}\nstatus: {:?}",
        std::fs::read_to_string(f.home().join("blocks/0/stderr")).unwrap_or_default(),
        client.status().map(|s| s.blocks)
    );
}

#[test]
fn the_worker_needs_nothing_beyond_the_c_library() {
    let out = Command::new("ldd")
        .arg(bin("flotilla-worker"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let allowed = [
        "linux-vdso",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    ];
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            allowed.iter().any(|a| line.contains(a)),
            "flotilla-worker links `{}`; it must run in images with only the C library (keep ssh2/OpenSSL out of it)",
            line.trim()
        );
    }
}

/// Podman with its configuration and storage in a scratch directory; the
/// storage is reset (containers, images, mounts) when dropped.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        require("podman", "podman");
        require("runc", "runc");
        let dir = tempfile::Builder::new()
            .prefix("fl-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("containers.conf"),
            "[containers]\n\
             default_ulimits = [\"nofile=16384:16384\", \"nproc=16384:16384\"]\n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n",
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("storage").display(),
                d.join("run").display()
            ),
        )
        .unwrap();
        Podman { dir }
    }

    fn env(&self) -> [(String, PathBuf); 2] {
        [
            (
                "CONTAINERS_CONF".into(),
                self.dir.path().join("containers.conf"),
            ),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                self.dir.path().join("storage.conf"),
            ),
        ]
    }

    /// Shell lines that point podman at this configuration (a block's init).
    fn init_lines(&self) -> String {
        self.env()
            .iter()
            .map(|(k, v)| format!("export {k}={}", v.display()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn sh(&self, script: &str) -> std::process::Output {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.sh("podman rm -af -t 0; podman system reset --force");
    }
}

#[test]
fn a_blocks_workers_run_inside_podman_and_serve() {
    let podman = Podman::new();
    let root = minimal_rootfs(podman.dir.path());
    let image = "localhost/flotilla-test-worker:latest";
    let out = podman.sh(&format!(
        "tar -C {} -c . | podman import - {image}",
        root.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worker = toml_str(&bin("flotilla-worker").display().to_string());
    let init = toml_str(&podman.init_lines());
    let image_toml = toml_str(image);
    let mut f = Flotilla::start(&config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("worker", "command", &worker),
        ("worker", "init", &init),
        ("worker", "slots", "2"),
        ("container", "runtime", "\"podman\""),
        ("container", "image", &image_toml),
    ]));
    wait_workers(&f, 1);
    let worker = f.client().status().unwrap().workers.remove(0);
    assert!(
        runs_in_minimal_image(worker.pid),
        "worker pid {} does not run in the image",
        worker.pid
    );
    let views = f.client().run_all(noop_tasks(100), LONG).unwrap();
    assert!(views.iter().all(|v| v.state == TaskState::Completed));
    let script = std::fs::read_to_string(f.home().join("blocks/0/block.sh")).unwrap();
    assert!(
        script.contains("podman run --rm --network=host --pid=host"),
        "{script}"
    );
    // Stopping the daemon stops the block, and with it the container.
    assert!(f.signal_daemon(Signal::SIGTERM, LONG).success());
    wait_until(LONG, "the container to be gone", || {
        let out = podman.sh("podman ps -q");
        (out.status.success() && out.stdout.is_empty()).then_some(())
    });
}

#[test]
fn a_blocks_workers_run_inside_charliecloud_and_serve() {
    require("ch-run", "charliecloud-runtime");
    let scratch = tempfile::Builder::new().prefix("fl-ch-").tempdir().unwrap();
    let root = minimal_rootfs(scratch.path());
    let worker = toml_str(&bin("flotilla-worker").display().to_string());
    let image = toml_str(&root.display().to_string());
    let f = Flotilla::start(&config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("launcher", "workers_per_node", "2"),
        ("worker", "command", &worker),
        // ch-run wants $USER, which a root shell may not have.
        ("worker", "init", "\"export USER=${USER:-root}\""),
        ("worker", "slots", "1"),
        ("container", "runtime", "\"charliecloud\""),
        ("container", "image", &image),
    ]));
    wait_workers(&f, 2);
    let status = f.client().status().unwrap();
    let mut ranks: Vec<Option<u32>> = status.workers.iter().map(|w| w.rank).collect();
    ranks.sort();
    assert_eq!(ranks, [Some(0), Some(1)]);
    for w in &status.workers {
        assert!(
            runs_in_minimal_image(w.pid),
            "worker {} is not in the image",
            w.id
        );
    }
    let views = f.client().run_all(noop_tasks(100), LONG).unwrap();
    assert!(views.iter().all(|v| v.state == TaskState::Completed));
}

#[test]
fn a_servable_that_names_an_image_runs_its_process_there() {
    require("ch-run", "charliecloud-runtime");
    let scratch = tempfile::Builder::new().prefix("fl-ch-").tempdir().unwrap();
    let root = minimal_rootfs(scratch.path());
    // The servable: the Rust test program, published with an image.
    let src = scratch.path().join("where");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(bin("flotilla-test-where"), src.join("where")).unwrap();
    std::fs::write(
        src.join("servable.toml"),
        format!(
            "name = \"where\"\nversion = \"1.0.0\"\ntitle = \"Where it runs\"\n\
             description = \"Answers whether /usr exists where it runs.\"\n\
             license = \"Apache-2.0\"\nmodel_type = \"python-function\"\nfiles = [\"where\"]\n\
             [input]\nkind = \"any\"\n[output]\nkind = \"dict\"\n\
             [runtime]\nkind = \"exec\"\ncommand = \"./where\"\n\
             [container]\nimage = {}\n",
            toml_str(&root.display().to_string())
        ),
    )
    .unwrap();
    let mut f = Flotilla::start(&config_with(&[(
        "container",
        "runtime",
        "\"charliecloud\"",
    )]));
    f.publish(&src).unwrap();
    // A worker on the host, told how this site runs containers, as the
    // daemon tells the workers it starts.
    f.spawn_worker(&["--slots", "1", "--container-runtime", "charliecloud"]);
    f.wait_workers(1);
    let out = f.cli(&["run", "where", "7"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.worker_log(0)
    );
    assert!(
        text.contains("\"host_usr\":false"),
        "ran on the host: {text}"
    );
    assert!(
        f.worker_log(0)
            .contains("starting the servable in its container")
    );
}
