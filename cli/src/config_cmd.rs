//! `flotilla config check`: site files checked without starting anything.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use flotilla_engine::config::{Config, LauncherKind, ProviderKind};
use flotilla_engine::launch::{BlockSite, daemon_tag, default_worker_exe};
use flotilla_engine::preview::preview;
use flotilla_engine::state_dir::StateDir;

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
    let (config, name) = load(file.map(PathBuf::as_path))?;
    println!("# {name}: ok; the settings in force:");
    if let Ok(dir) = crate::daemon_cmd::resolve_dirs(&config) {
        println!(
            "# state directory (store, socket, lock, secret): {}",
            dir.root().display()
        );
        println!(
            "# shared directory (object store, blocks' files; compute nodes reach it): {}",
            dir.shared_root().display()
        );
    }
    match config.metrics.listen {
        Some(address) => println!("# metrics endpoint: http://{address}/metrics"),
        None => println!("# metrics endpoint: off (set [metrics] listen to serve one)"),
    }
    print!("{}", config.to_toml());
    Ok(())
}

/// A site file read and checked, and its first block written as the
/// daemon would write it: a site whose blocks cannot be described (a
/// container that bind-mounts a worker without an absolute path, a value a
/// job script cannot carry) is refused here, not at the first block.
fn load(file: Option<&Path>) -> Result<(Config, String), Failure> {
    let (config, name) = load_config(file)?;
    let dir = crate::daemon_cmd::resolve_dirs(&config).unwrap_or_else(|_| StateDir::at("/"));
    let several = !config.pools.is_empty();
    for pool in config.pool_configs() {
        let pool_config = config.with_pool(&pool);
        let site = BlockSite {
            tag: daemon_tag(&dir),
            worker_exe: pool_config
                .worker
                .command
                .clone()
                .unwrap_or_else(default_worker_exe),
            addresses: "127.0.0.1".into(),
            port: 1,
        };
        let named = |e: String| {
            if several {
                Failure::Usage(anyhow!("{name}: pool `{}`: {e}", pool.name))
            } else {
                Failure::Usage(anyhow!("{name}: {e}"))
            }
        };
        preview(&pool_config, &dir, &site, 0).map_err(|e| named(e.to_string()))?;
        check_launcher_here(&pool_config).map_err(named)?;
    }
    Ok((config, name))
}

/// Blocks of the local provider run their launcher on this machine, so
/// its command must be here.
fn check_launcher_here(config: &Config) -> Result<(), String> {
    let command = match config.launcher.kind {
        LauncherKind::Srun => "srun",
        LauncherKind::Mpiexec => "mpiexec",
        LauncherKind::Aprun => "aprun",
        _ => return Ok(()),
    };
    if config.provider.kind != ProviderKind::Local || on_path(command) {
        return Ok(());
    }
    Err(format!(
        "`launcher.kind`: is \"{}\" under provider.kind = \"local\", whose blocks run here, but `{command}` is not on this machine's PATH",
        config.launcher.kind.as_str()
    ))
}

/// Whether an executable file `name` is in a directory of PATH.
fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Several files: one line each, every error on stderr, a usage failure
/// when any has one.
fn check_many(files: &[PathBuf]) -> Result<(), Failure> {
    let mut bad = 0;
    for file in files {
        match load(Some(file)) {
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
