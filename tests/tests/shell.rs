//! `flotilla` as a citizen of the shell: exit statuses in `--help`,
//! `--home`, completion scripts that load in bash, manual pages that `man`
//! renders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use flotilla_tests::bin;

fn flotilla(args: &[&str]) -> Output {
    Command::new(bin("flotilla")).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What bash offers for the words `line` with the cursor after the last
/// one: the completion script loaded, then `_flotilla` called the way
/// bash's programmable completion calls it (command, current word,
/// previous word).
fn bash_completes(line: &[&str]) -> Vec<String> {
    let script = stdout(&flotilla(&["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flotilla.bash");
    std::fs::write(&file, script).unwrap();
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n_flotilla flotilla \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        file.display(),
        words.join(" "),
        line.len() - 1
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    assert_eq!(bash_completes(&["flotilla", "lo"]), ["logs"]);
    let servable = bash_completes(&["flotilla", "se"]);
    assert_eq!(servable, ["servable"]);
    let memo = bash_completes(&["flotilla", "memo", ""]);
    for sub in ["stats", "clear"] {
        assert!(memo.iter().any(|w| w == sub), "{memo:?}");
    }
    let flags = bash_completes(&["flotilla", "daemon", "--"]);
    for flag in ["--config", "--detach", "--log-format", "--home"] {
        assert!(flags.iter().any(|w| w == flag), "{flag} in {flags:?}");
    }
}

#[test]
fn zsh_and_fish_scripts_are_generated() {
    assert!(stdout(&flotilla(&["completions", "zsh"])).starts_with("#compdef flotilla"));
    assert!(stdout(&flotilla(&["completions", "fish"])).contains("complete -c flotilla"));
    let out = flotilla(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `man -l PAGE` as plain text.
fn man(page: &std::path::Path) -> String {
    let out = Command::new("man")
        .args(["-l", page.to_str().unwrap()])
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("`man` (man-db) is installed: scripts/test.sh installs it");
    stdout(&out)
}

#[test]
fn man_renders_the_generated_pages() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("flotilla.1");
    std::fs::write(&top, flotilla(&["man"]).stdout).unwrap();
    let text = man(&top);
    for part in [
        "NAME",
        "SYNOPSIS",
        "flotilla-daemon(1)",
        "EXIT STATUS",
        "--home",
    ] {
        assert!(text.contains(part), "{part} in\n{text}");
    }
    assert!(
        text.contains("the daemon is unreachable"),
        "exit status 3 is described:\n{text}"
    );

    let pages = dir.path().join("pages");
    stdout(&flotilla(&["man", "--dir", pages.to_str().unwrap()]));
    let text = man(&pages.join("flotilla-logs-block.1"));
    assert!(text.contains("flotilla logs block"), "{text}");
    assert!(text.contains("--tail"), "{text}");
    assert!(pages.join("flotilla-servable-publish.1").is_file());
}

#[test]
fn help_lists_the_exit_statuses_and_home_points_client_commands_elsewhere() {
    let help = stdout(&flotilla(&["--help"]));
    for line in [
        "Exit status:",
        "  3  the daemon is unreachable",
        "  4  a result is not ready yet",
    ] {
        assert!(help.contains(line), "{line} in\n{help}");
    }
    let home = tempfile::tempdir().unwrap();
    for args in [
        ["--home", home.path().to_str().unwrap(), "status"],
        ["status", "--home", home.path().to_str().unwrap()],
    ] {
        let out = Command::new(bin("flotilla"))
            .args(args)
            .env("FLOTILLA_HOME", "/nonexistent-elsewhere")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&home.path().join("api.sock").display().to_string()),
            "{err}"
        );
    }
}
