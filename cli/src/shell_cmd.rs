//! `flotilla completions SHELL` and `flotilla man`: shell completion
//! scripts and manual pages generated from the command-line definitions,
//! so they always match the flags the binary takes.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::Failure;
use crate::args::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    let mut command = Cli::command();
    // Into memory first: clap_complete panics on a failed write, and a
    // closed pipe (`| head`) is no reason to.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "flotilla", &mut script);
    print_all(&script, "completion script")
}

/// Writes `bytes` to stdout; a reader that stopped early is not an error.
fn print_all(bytes: &[u8], what: &str) -> Result<(), Failure> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Other(anyhow::anyhow!(
            "cannot write the {what}: {e}"
        ))),
    }
}

/// Prints `flotilla(1)` on stdout, or with `dir` writes it and a page per
/// command (`flotilla-run.1`, `flotilla-servable-publish.1`, …) there.
pub fn man(dir: Option<&Path>) -> Result<(), Failure> {
    let command = Cli::command();
    let Some(dir) = dir else {
        let out = page(command).context("cannot render the manual page")?;
        return print_all(&out, "manual page");
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the directory", dir.display()))?;
    let written = write_pages(command, dir)?;
    println!("{written} manual pages in {}", dir.display());
    Ok(())
}

/// `command`'s manual page; the top one ends with an EXIT STATUS section
/// (instead of `--help`'s plain text of it).
fn page(command: clap::Command) -> std::io::Result<Vec<u8>> {
    let top = command.get_name() == "flotilla" && command.get_display_name().is_none();
    let man = clap_mangen::Man::new(command.clone());
    let mut out = Vec::new();
    if !top {
        man.render(&mut out)?;
        return Ok(out);
    }
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    for (code, meaning) in crate::failure::EXIT_STATUSES {
        // Plain words: no line of it starts with a troff control character.
        out.extend_from_slice(
            format!(".TP\n{code}\n{}\n", meaning.replace('\\', "\\e")).as_bytes(),
        );
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Writes `command`'s page and its subcommands' pages into `dir`; returns
/// how many.
fn write_pages(command: clap::Command, dir: &Path) -> Result<usize, Failure> {
    // Subcommands' pages are named after their full path (`flotilla-memo-stats`).
    let command = command.disable_help_subcommand(true);
    let name = command
        .get_display_name()
        .unwrap_or(command.get_name())
        .to_owned();
    let path = dir.join(format!("{name}.1"));
    let out = page(command.clone()).with_context(|| format!("cannot render the page of {name}"))?;
    std::fs::write(&path, out).with_context(|| format!("{}: cannot write", path.display()))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub = sub
            .clone()
            .display_name(format!("{name}-{}", sub.get_name()))
            .bin_name(format!("{} {}", name.replace('-', " "), sub.get_name()));
        written += write_pages(sub, dir)?;
    }
    Ok(written)
}
