//! `flotilla pool preview`: the submit command and job script a block of
//! a site would get, worked out as the daemon would on this machine.

use std::path::Path;

use anyhow::anyhow;
use flotilla_engine::advertise;
use flotilla_engine::config::Config;
use flotilla_engine::launch::{BlockSite, daemon_tag, default_worker_exe};
use flotilla_engine::preview::preview as preview_block;
use flotilla_engine::state_dir::StateDir;

use crate::Failure;
use crate::daemon_cmd::load_config;

/// Prints block `block` of the site in `file` (or the embedded default).
pub fn preview(file: Option<&Path>, block: u32) -> Result<(), Failure> {
    let (config, name) = load_config(file)?;
    let dir = crate::daemon_cmd::resolve_dirs(&config)?;
    let site = block_site(&config, &dir);
    let block = preview_block(&config, &dir, &site, block)
        .map_err(|e| Failure::Usage(anyhow!("{name}: {e}")))?;
    print!("{}", block.render());
    Ok(())
}

/// Where a daemon started now with `config` would be reached, as it would
/// work it out; what cannot be known before it starts is said on stderr.
pub fn block_site(config: &Config, dir: &StateDir) -> BlockSite {
    let entries = config.interchange.address.entries();
    let addresses = match advertise::plan(
        &entries,
        &config.interchange.bind,
        &advertise::local_interfaces(),
        advertise::resolve,
    ) {
        Ok(plan) => plan.advertised(),
        Err(e) => {
            eprintln!("note: {e}; the preview shows the addresses as written");
            entries.join(",")
        }
    };
    let remembered = std::fs::read_to_string(dir.port_file())
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok());
    let port = match (config.interchange.port, remembered) {
        (0, Some(port)) => port,
        (0, None) => {
            eprintln!("note: interchange.port = 0: the daemon picks a free port when it starts");
            0
        }
        (port, _) => port,
    };
    BlockSite {
        tag: daemon_tag(dir),
        worker_exe: config
            .worker
            .command
            .clone()
            .unwrap_or_else(default_worker_exe),
        addresses,
        port,
    }
}
