//! What a site receives for a block, without submitting it: the submit
//! command and the file it submits, exactly as the provider would write
//! them, with the daemon's secret redacted (`flotilla block preview`, and
//! `flotilla config check`, which refuses a site whose first block cannot
//! be written).

use std::fmt::Write as _;

use flotilla_protocol::launch::{EXIT_WITH_PID_ENV, SECRET_ENV};
use flotilla_providers::{JobSpec, ProviderError, Submission};

use crate::config::{ChannelKind, Config};
use crate::launch::{BlockSite, BlockTemplate, LaunchFailed};
use crate::state_dir::StateDir;

/// What replaces the secret in a preview.
pub const REDACTED: &str = "<redacted>";

/// A block as its provider would submit it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockPreview {
    /// The block's number.
    pub block: u32,
    /// The provider's name (`slurm`, `pbspro`, …).
    pub provider: &'static str,
    /// Where the provider's commands run, in words.
    pub channel: String,
    /// The job the block runs, its secret redacted.
    pub job: JobSpec,
    /// The file and the command that submit it.
    pub submission: Submission,
}

/// A block that cannot be previewed, so could not be submitted either.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The launcher or container cannot describe the block's workers.
    #[error(transparent)]
    Launch(#[from] LaunchFailed),
    /// The provider refuses the job (a value a job script cannot carry).
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// Block `block` of the pool `config` describes, for a daemon whose state
/// lives in `state_dir` and that workers reach as `site` says.
pub fn preview(
    config: &Config,
    state_dir: &StateDir,
    site: &BlockSite,
    block: u32,
) -> Result<BlockPreview, PreviewError> {
    // The secret never enters the preview: a placeholder is rendered, then
    // replaced wherever the job carries it.
    let template = BlockTemplate::for_site(config, state_dir, site, &[0; 32]);
    let mut job = template.job(block)?;
    if let Some(secret) = job.env.get_mut(SECRET_ENV) {
        *secret = REDACTED.to_owned();
    }
    // The daemon's pid, which a preview does not have.
    if let Some(pid) = job.env.get_mut(EXIT_WITH_PID_ENV) {
        *pid = "<the daemon's pid>".to_owned();
    }
    let provider = crate::provision::provider(config);
    let submission = provider.prepare(&job)?;
    Ok(BlockPreview {
        block,
        provider: provider.name(),
        channel: match config.channel.kind {
            ChannelKind::Local => "this machine".to_owned(),
            ChannelKind::Ssh => format!("ssh to {}", config.channel.host),
        },
        job,
        submission,
    })
}

impl BlockPreview {
    /// The preview as `flotilla block preview` prints it: a header in
    /// shell comments, the submit command, then the submitted file.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let path = self.job.run_file(&self.submission.file);
        let _ = writeln!(
            out,
            "# Block {} ({}), provider {}, commands run on {}; the secret is redacted.",
            self.block, self.job.name, self.provider, self.channel
        );
        let _ = writeln!(out, "# Submitted with:");
        let _ = writeln!(out, "{}", self.submission.command_line(&self.job));
        if !self.submission.env.is_empty() {
            let _ = writeln!(out, "# With this environment (not written into the file):");
            for (name, value) in &self.submission.env {
                let _ = writeln!(out, "#   {name}={value}");
            }
        }
        let _ = writeln!(out, "# {path}:");
        out.push_str(&self.submission.contents);
        if !self.submission.contents.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> BlockSite {
        BlockSite {
            tag: "0a1b2c".into(),
            worker_exe: "/home/alice/flotilla/bin/flotilla-worker".into(),
            addresses: "10.0.0.1".into(),
            port: 7000,
        }
    }

    #[test]
    fn the_secret_is_redacted_and_the_submit_command_names_the_file() {
        let config = Config::parse(
            "[provider]\nkind = \"slurm\"\npartition = \"debug\"\n",
            "s.toml",
        )
        .unwrap();
        let dir = StateDir::at("/home/alice/.flotilla");
        let p = preview(&config, &dir, &site(), 0).unwrap();
        let text = p.render();
        assert!(
            text.contains("sbatch --parsable /home/alice/.flotilla/blocks/0/block.sh\n"),
            "{text}"
        );
        assert!(text.contains("#SBATCH --partition=debug"), "{text}");
        assert!(
            text.contains(&format!("export {SECRET_ENV}='{REDACTED}'")),
            "{text}"
        );
        assert!(!text.contains(&"00".repeat(32)), "{text}");
    }

    #[test]
    fn the_local_provider_shows_the_environment_it_keeps_out_of_its_file() {
        let dir = StateDir::at("/home/alice/.flotilla");
        let p = preview(&Config::default(), &dir, &site(), 2).unwrap();
        let text = p.render();
        assert!(
            text.contains("/bin/sh /home/alice/.flotilla/blocks/2/block.sh\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("#   {SECRET_ENV}={REDACTED}\n")),
            "{text}"
        );
    }

    /// Every site example's first block, compared with the preview checked
    /// in beside it (`site-examples/previews/NAME.txt`), so a change to what
    /// a site receives shows in review. `FLOTILLA_UPDATE_PREVIEWS=1` writes
    /// them anew. The machine-dependent parts are fixed: the daemon's tag,
    /// addresses and port, the state and shared directories (unless the
    /// file sets them) and the worker executable (unless the file names
    /// one).
    #[test]
    fn every_site_example_previews_as_checked_in() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-examples");
        let update = std::env::var_os("FLOTILLA_UPDATE_PREVIEWS").is_some();
        let mut files: Vec<_> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 8, "{files:?}");
        let mut differ = Vec::new();
        for file in files {
            let name = file.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&file).unwrap();
            let config = Config::parse(&text, &format!("site-examples/{name}.toml"))
                .unwrap_or_else(|e| panic!("{e}"));
            let state = config
                .daemon
                .state_dir
                .clone()
                .unwrap_or_else(|| "/home/alice/.flotilla".into());
            let shared = config.daemon.shared_dir.clone().unwrap_or(state.clone());
            let dir = StateDir::at(state).with_shared(shared);
            let mut rendered = String::new();
            for pool in config.pool_configs() {
                let pool_config = config.with_pool(&pool);
                let mut s = site();
                if let Some(command) = &pool_config.worker.command {
                    s.worker_exe = command.clone();
                }
                if !config.pools.is_empty() {
                    rendered.push_str(&format!("# ===== pool {} =====\n", pool.name));
                }
                rendered.push_str(
                    &preview(&pool_config, &dir, &s, 0)
                        .unwrap_or_else(|e| panic!("site-examples/{name}.toml: {e}"))
                        .render(),
                );
            }
            let golden = examples.join("previews").join(format!("{name}.txt"));
            if update {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                std::fs::write(&golden, &rendered).unwrap();
            } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(&rendered) {
                differ.push(format!("{}:\n{rendered}", golden.display()));
            }
        }
        assert!(
            differ.is_empty(),
            "previews differ from the checked-in ones (FLOTILLA_UPDATE_PREVIEWS=1 writes them):\n{}",
            differ.join("\n")
        );
    }

    #[test]
    fn a_block_the_container_cannot_describe_is_an_error() {
        let config = Config::parse(
            "[container]\nruntime = \"apptainer\"\nimage = \"/i.sif\"\n[worker]\ncommand = \"flotilla-worker\"\n",
            "s.toml",
        )
        .unwrap();
        let dir = StateDir::at("/home/alice/.flotilla");
        let mut s = site();
        s.worker_exe = "flotilla-worker".into();
        let err = preview(&config, &dir, &s, 0).unwrap_err().to_string();
        assert!(err.contains("needs an absolute path"), "{err}");
    }
}
