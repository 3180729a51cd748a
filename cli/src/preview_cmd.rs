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

/// Prints block `block` of the site in `file` (or the embedded default):
/// of the pool named `pool`, or of every pool (each under a header when
/// there are several).
pub fn preview(file: Option<&Path>, block: u32, pool: Option<&str>) -> Result<(), Failure> {
    let (config, name) = load_config(file)?;
    let dir = crate::daemon_cmd::resolve_dirs(&config)?;
    let pools = config.pool_configs();
    let chosen: Vec<_> = match pool {
        None => pools.iter().collect(),
        Some(wanted) => {
            let found: Vec<_> = pools.iter().filter(|p| p.name == wanted).collect();
            if found.is_empty() {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                return Err(Failure::Usage(anyhow!(
                    "{name}: no pool `{wanted}`; its pools are: {}",
                    names.join(", ")
                )));
            }
            found
        }
    };
    let headed = pools.len() > 1;
    for p in chosen {
        let pool_config = config.with_pool(p);
        let site = block_site(&pool_config, &dir);
        let shown = preview_block(&pool_config, &dir, &site, block)
            .map_err(|e| Failure::Usage(anyhow!("{name}: pool `{}`: {e}", p.name)))?;
        if headed {
            println!("# ===== pool {} =====", p.name);
        }
        print!("{}", shown.render());
    }
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
