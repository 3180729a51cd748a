//! End-to-end test of servable visibility on a daemon shared through its
//! ipc socket (`[daemon] api_group`): a second Unix user, made by the test,
//! calls the daemon as itself (the daemon learns its uid from the kernel),
//! and finds neither in lists nor in searches, nor can run, show or remove,
//! what the daemon's user keeps to itself, while a public servable works
//! for it. A third user can neither read, see nor cancel the second's
//! tasks (the daemon answers as for an id it never handed out), while its
//! own work.
//!
//! Making a user needs root (CI runs the tests as root); elsewhere the test
//! says so and passes without checking anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use flotilla_tests::{Flotilla, bin, config_with, python_bin, workspace};

/// A Unix user (with a group of its own name) that lives as long as the
/// value: made with `useradd`, removed with `userdel` on drop.
struct TestUser {
    name: String,
}

impl TestUser {
    /// Makes a user with a name unique to this run and `tag`, also in
    /// `groups` (none: only its own), or says why not.
    fn create(tag: &str, groups: &[&str]) -> Result<TestUser, String> {
        let name = format!("flt-vis{tag}-{}", std::process::id());
        let mut useradd = Command::new("useradd");
        useradd.args([
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if !groups.is_empty() {
            useradd.arg("--groups").arg(groups.join(","));
        }
        let out = useradd
            .arg(&name)
            .output()
            .map_err(|e| format!("cannot run useradd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(TestUser { name })
    }

    /// Runs the `flotilla` CLI as this user, against the daemon of `home`.
    fn flotilla(&self, home: &Path, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args([
                "--reuid",
                &self.name,
                "--regid",
                &self.name,
                "--init-groups",
                "--",
            ])
            .arg(bin("flotilla"))
            .args(args)
            .env("FLOTILLA_HOME", home)
            .env_remove("FLOTILLA_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        // A group of the same name goes with the user; remove it if not.
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert_ne!(out.status.code(), Some(0), "not refused: {}", text(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn another_user_on_the_socket_sees_and_runs_only_what_is_visible_to_it() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED: making a second Unix user needs root; run the tests as root (as CI does) to check visibility"
        );
        return;
    }
    let user = TestUser::create("", &[]).unwrap_or_else(|e| panic!("{e}"));
    // A third user, let onto the socket by the same group.
    let other = TestUser::create("b", &[&user.name]).unwrap_or_else(|e| panic!("{e}"));
    let config = config_with(&[("daemon", "api_group", &format!("\"{}\"", user.name))]);
    let mut f = Flotilla::start(&config);
    // The other user reaches the socket through the state directory
    // (searchable, not readable); the socket itself is the group's.
    std::fs::set_permissions(f.home(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = f.home().join("api.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "{}", socket.display());

    // The daemon's user publishes a servable and two pipelines of it, all
    // kept to itself (the default), then makes one pipeline public (its
    // step stays private: a pipeline's steps are its owner's choice).
    python_bin();
    f.publish(&workspace().join("site-examples/servables/noop-py"))
        .unwrap_or_else(|e| panic!("{e}"));
    ok(&f.cli(&["pipeline", "create", "private-chain", "--steps", "noop-py"]));
    ok(&f.cli(&["pipeline", "create", "open-chain", "--steps", "noop-py"]));
    let changed = ok(&f.cli(&["servable", "access", "open-chain", "--visibility", "public"]));
    assert!(changed.contains("visibility public"), "{changed}");
    f.spawn_worker(&["--slots", "1", "--worker-id", "w"]);
    f.wait_workers(1);

    // The other user lists and finds only the public one.
    let home = f.home().to_path_buf();
    let names = |listing: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(listing.trim()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let listed = ok(&user.flotilla(&home, &["servable", "list", "--json"]));
    assert_eq!(names(&listed), ["open-chain"], "{listed}");
    let found = ok(&user.flotilla(&home, &["servable", "search", "chain", "--json"]));
    assert_eq!(names(&found), ["open-chain"], "{found}");

    // Named, the private one is as unknown as one nobody published, and the
    // list of known servables in the answer does not give it away.
    let hidden = refused(&user.flotilla(&home, &["run", "private-chain", "1"]));
    let missing = refused(&user.flotilla(&home, &["run", "no-such-chain", "1"]));
    assert!(
        hidden.contains("unknown servable `private-chain`"),
        "{hidden}"
    );
    assert_eq!(
        hidden.replace("private-chain", "X"),
        missing.replace("no-such-chain", "X")
    );
    assert!(!missing.contains("private-chain"), "{missing}");
    for args in [
        &["servable", "show", "private-chain"][..],
        &["servable", "versions", "private-chain"],
        &["servable", "remove", "private-chain@1.0.0"],
        &[
            "servable",
            "access",
            "private-chain",
            "--visibility",
            "public",
        ],
    ] {
        let e = refused(&user.flotilla(&home, args));
        assert!(
            e.contains("unknown servable `private-chain`"),
            "{args:?}: {e}"
        );
    }
    let e = refused(&user.flotilla(&home, &["run", "noop-py", "1"]));
    assert!(e.contains("unknown servable `noop-py`"), "{e}");

    // The public one runs for it, but it may not remove it nor stop the
    // daemon.
    let out = ok(&user.flotilla(&home, &["run", "open-chain", "7"]));
    assert_eq!(out.trim(), "null", "{out}");
    let e = refused(&user.flotilla(&home, &["servable", "remove", "open-chain@1.0.0"]));
    assert!(e.contains("only the owner of `open-chain`"), "{e}");
    let e = refused(&user.flotilla(&home, &["stop"]));
    assert!(e.contains("only the daemon's user"), "{e}");

    // The daemon's user still sees both and runs the private one.
    let listed = ok(&f.cli(&["servable", "list", "--json"]));
    assert_eq!(
        names(&listed),
        ["noop-py", "open-chain", "private-chain"],
        "{listed}"
    );
    let out = ok(&f.cli(&["run", "private-chain", "3"]));
    assert_eq!(out.trim(), "null", "{out}");

    // Tasks are their submitter's. The second user's finished task and
    // its long one are, to the third user, what an id never handed out is.
    let submit = |u: &TestUser, args: &[&str]| -> String {
        let mut all = vec!["submit"];
        all.extend_from_slice(args);
        ok(&u.flotilla(&home, &all)).trim().to_owned()
    };
    let done = submit(&user, &["open-chain", "5"]);
    let out = ok(&user.flotilla(&home, &["result", &done, "--wait", "--timeout", "60"]));
    assert_eq!(out.trim(), "null", "{out}");
    let out = ok(&other.flotilla(&home, &["run", "noop", "1"]));
    assert_eq!(out.trim(), "null", "its own tasks work: {out}");
    // It holds the only slot until cancelled.
    let long = submit(&user, &["sleep", "120"]);
    for (id, args) in [
        (&done, &["result", "ID"][..]),
        (&done, &["status", "ID"]),
        (&done, &["status", "ID", "--json"]),
        (&done, &["cancel", "ID"]),
        (&long, &["result", "ID", "--wait", "--timeout", "60"]),
        (&long, &["status", "ID"]),
        (&long, &["cancel", "ID"]),
    ] {
        let run = |id: &str| {
            let args: Vec<&str> = args
                .iter()
                .map(|a| if *a == "ID" { id } else { a })
                .collect();
            let out = other.flotilla(&home, &args);
            (
                out.status.code(),
                with_id_as_x(&String::from_utf8_lossy(&out.stdout), id),
                with_id_as_x(&String::from_utf8_lossy(&out.stderr), id),
            )
        };
        let hidden = run(id);
        assert_eq!(hidden, run(NEVER), "{args:?} on another user's task {id}");
        assert!(
            format!("{hidden:?}").contains("unknown"),
            "{args:?}: {hidden:?}"
        );
    }
    // The third user's cancel did nothing; the second user's own does.
    let status = ok(&user.flotilla(&home, &["status", &long, "--json"]));
    assert!(!status.contains("cancelled"), "{status}");
    // The daemon's user sees every task; the status others get has no
    // workers (the fleet is the daemon user's).
    let status = ok(&f.cli(&["status", &long, "--json"]));
    assert!(status.contains("\"sleep\""), "{status}");
    let theirs = ok(&other.flotilla(&home, &["status"]));
    assert!(
        theirs.contains("shown to the daemon's user only") && !theirs.contains("interchange"),
        "{theirs}"
    );
    let out = ok(&user.flotilla(&home, &["cancel", &long]));
    assert_eq!(out.trim(), format!("{long} cancelled"));
    drop(f);
}

/// An id no test here hands out.
const NEVER: &str = "999999";

/// `text` with every number that is `id` written as `ID`.
fn with_id_as_x(text: &str, id: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        out.push_str(if digits == id { "ID" } else { &digits });
        digits.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}
