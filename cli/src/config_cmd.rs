//! `flotilla config check`: site files checked without starting anything.

use std::path::PathBuf;

use anyhow::anyhow;

use crate::Failure;
use crate::args::ConfigCmd;
use crate::daemon_cmd::load_config;

/// Runs one `flotilla config` subcommand.
pub fn config(command: ConfigCmd) -> Result<(), Failure> {
    let ConfigCmd::Check { files } = command;
    if files.len() <= 1 {
        check_one(files.first())
    } else {
        check_many(&files)
    }
}

/// One file (or the embedded default): its settings in force on stdout.
fn check_one(file: Option<&PathBuf>) -> Result<(), Failure> {
    let (config, name) = load_config(file.map(PathBuf::as_path))?;
    println!("# {name}: ok; the settings in force:");
    print!("{}", config.to_toml());
    Ok(())
}

/// Several files: one line each, every error on stderr, a usage failure
/// when any has one.
fn check_many(files: &[PathBuf]) -> Result<(), Failure> {
    let mut bad = 0;
    for file in files {
        match load_config(Some(file)) {
            Ok((_, name)) => println!("{name}: ok"),
            Err(Failure::Usage(e)) => {
                bad += 1;
                eprintln!("{e:#}");
            }
            Err(other) => return Err(other),
        }
    }
    if bad > 0 {
        return Err(Failure::Usage(anyhow!(
            "{bad} of {} site files have errors",
            files.len()
        )));
    }
    Ok(())
}
