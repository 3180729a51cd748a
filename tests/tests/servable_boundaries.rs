//! End-to-end tests of what a servable can reach and what publishing
//! copies: a servable's environment holds no credential, links and pipes
//! are not published, a modified object is repaired by publishing again
//! and used by a worker that had refused it, and site values that would
//! break out of a job script's line are refused by `config check`. Real
//! daemon, real workers, real Python (the environment `scripts/test.sh`
//! makes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use flotilla_tests::{Flotilla, config_with, python_bin, test_config};
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes a Python servable `name` that answers every input with `body`
/// (a Python expression of `x`, the input) into `parent/name`.
fn servable(parent: &Path, name: &str, body: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("servable.toml"),
        format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\ntitle = \"Test\"\nlicense = \"MIT\"\nmodel_type = \"python-function\"\nfiles = [\"serve.py\"]\n\n[input]\nkind = \"any\"\n\n[output]\nkind = \"any\"\n\n[runtime]\nkind = \"exec\"\ncommand = \"python3\"\nargs = [\"serve.py\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("serve.py"),
        format!(
            "import os\nfrom flotilla_servable import serve\n\nserve(lambda xs: [{body} for x in xs], batched=True)\n"
        ),
    )
    .unwrap();
    dir
}

fn publish(f: &Flotilla, dir: &Path) -> Output {
    f.cli(&["servable", "publish", dir.to_str().unwrap()])
}

/// A worker started by the daemon's own (local) provider gets the secret
/// in its environment; the servable it runs must not.
#[test]
fn a_servable_never_sees_the_daemons_secret() {
    python_bin();
    let f = Flotilla::start(&config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
    ]));
    f.wait_workers(1);
    let dir = servable(
        f.home(),
        "envy",
        "{'secret': os.environ.get('FLOTILLA_SECRET'), 'servable': os.environ.get('FLOTILLA_SERVABLE'), 'path': 'PATH' in os.environ}",
    );
    let out = publish(&f, &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.cli(&["run", "envy", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(seen["secret"], Value::Null, "{seen}");
    assert_eq!(seen["servable"], "envy@1.0.0", "{seen}");
    assert_eq!(seen["path"], true, "the rest of the environment is kept");
}

/// Publishing refuses a file that is a link out of the servable's
/// directory, and a named pipe (which once hung publishing).
#[test]
fn publish_copies_only_regular_files_of_the_directory() {
    let f = Flotilla::start(&test_config());
    let dir = servable(f.home(), "linked", "x");
    let outside = f.home().join("outside.txt");
    std::fs::write(&outside, "private").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("data.txt")).unwrap();
    let toml = dir.join("servable.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(
            "files = [\"serve.py\"]",
            "files = [\"serve.py\", \"data.txt\"]",
        ),
    )
    .unwrap();
    let out = publish(&f, &dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outside the servable's directory"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(dir.join("data.txt")).unwrap();
    nix::unistd::mkfifo(&dir.join("data.txt"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let out = publish(&f, &dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a named pipe"), "{}", stderr(&out));
}

/// A modified object fails the servable's check; publishing again puts
/// the right bytes back, and the same worker, which had refused the file,
/// checks it again and runs the servable.
#[test]
fn publishing_again_repairs_a_modified_object_for_a_running_worker() {
    python_bin();
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "1", "--worker-id", "w"]);
    f.wait_workers(1);
    let dir = servable(f.home(), "mended", "x");
    let out = publish(&f, &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = f.cli(&["servable", "show", "mended", "--json"]);
    let shown: Value = serde_json::from_str(stdout(&shown).trim()).unwrap();
    let hash = shown["files"][0]["blake3"].as_str().unwrap().to_owned();
    let object = f.home().join("objects").join(&hash);
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&object, "import os\nos.system('echo pwned')\n").unwrap();
    let out = f.cli(&["run", "mended", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match its published hash"),
        "{}",
        stderr(&out)
    );
    let out = publish(&f, &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.cli(&["run", "mended", "41"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "41");
}

/// `config check` refuses a partition that would end its `#SBATCH` line
/// and start a line of shell in the job script.
#[test]
fn config_check_refuses_values_that_break_out_of_their_line() {
    let f = Flotilla::start(&test_config());
    let site = f.home().join("bad-site.toml");
    std::fs::write(
        &site,
        "[provider]\nkind = \"slurm\"\npartition = \"debug\\ntouch X\"\n",
    )
    .unwrap();
    let out = f.cli(&["config", "check", site.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bad-site.toml:3: `provider.partition`: holds the control character '\\n'"),
        "{err}"
    );
}
