//! `flotilla`: run the daemon, invoke servables, inspect and cancel tasks.
//!
//! Exit status: see [`failure::EXIT_STATUSES`] (also in `--help` and the
//! manual page).

mod admin_cmd;
mod args;
mod catalog_cmd;
mod config_cmd;
mod daemon_cmd;
mod demo;
mod failure;
mod follow;
mod ids;
mod input;
mod log_file;
mod logging;
mod logs_cmd;
mod output;
mod preview_cmd;
mod servable_cmd;
mod shell_cmd;
mod task_cmd;
mod task_ids;
mod token_cmd;
mod watch_cmd;
mod wheels;

use std::process::ExitCode;

use clap::Parser;
use flotilla_client::Client;

use args::{Cli, Cmd};
pub use failure::Failure;
use task_cmd::Request;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(home) = &cli.home {
        // SAFETY: nothing else runs yet (no thread has been started), so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var(flotilla_protocol::paths::HOME_ENV, home) };
    }
    // The daemon logs as its site file says, once it has read it.
    if !matches!(cli.command, Cmd::Daemon { .. }) {
        logging::init_client();
    }
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, message) = failure.exit_status();
            if let Some(e) = message {
                eprintln!("flotilla: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// A client of the daemon of this user's state directory.
fn connect() -> Result<Client, Failure> {
    Client::connect(&daemon_cmd::client_state_dir()?).map_err(Failure::from_client)
}

/// Runs one command.
fn execute(command: Cmd) -> Result<(), Failure> {
    match command {
        Cmd::Daemon {
            config,
            detach,
            log_format,
            log_file,
        } => {
            let log = daemon_cmd::LogArgs {
                format: log_format,
                file: log_file,
            };
            daemon_cmd::daemon(config.as_deref(), detach, log)
        }
        Cmd::Stop { timeout } => daemon_cmd::stop_command(timeout),
        Cmd::Run {
            servable,
            input,
            input_file,
            params,
            timeout,
            json,
        } => {
            let request = Request {
                servable,
                input: input.as_deref(),
                input_file: input_file.as_deref(),
                params: params.as_deref(),
            };
            task_cmd::run(request, timeout, json)
        }
        Cmd::Submit {
            servable,
            input,
            input_file,
            params,
            batch,
            json,
        } => {
            let request = servable.map(|servable| Request {
                servable,
                input: input.as_deref(),
                input_file: input_file.as_deref(),
                params: params.as_deref(),
            });
            task_cmd::submit(request, batch, json)
        }
        Cmd::Result {
            ids,
            all,
            wait,
            timeout,
            stream,
            json,
        } => {
            let wanted = watch_cmd::Wanted::new(&ids, all)?;
            match wait {
                true => watch_cmd::wait(wanted, timeout, stream, json),
                false => task_cmd::result(&wanted.ids()?, json),
            }
        }
        Cmd::Status { ids, json } => task_cmd::status(&watch_cmd::ids_or_none(&ids)?, json),
        Cmd::Cancel { ids, json } => {
            task_cmd::cancel(&watch_cmd::Wanted::new(&ids, false)?.ids()?, json)
        }
        Cmd::Wait {
            ids,
            all,
            timeout,
            stream,
            json,
        } => watch_cmd::wait(watch_cmd::Wanted::new(&ids, all)?, timeout, stream, json),
        Cmd::Tasks {
            state,
            servable,
            since,
            limit,
            before,
            json,
        } => watch_cmd::tasks(state, servable, since, limit, before, json),
        Cmd::Servable { command } => catalog_cmd::servable(command),
        Cmd::Pipeline { command } => catalog_cmd::pipeline(command),
        Cmd::Memo { command } => admin_cmd::memo(command),
        Cmd::Events {
            tasks: true,
            servable,
            task_ids,
            follow,
            json,
        } => watch_cmd::task_events(servable, &task_ids, follow, json),
        Cmd::Events { follow, json, .. } => admin_cmd::events(follow, json),
        Cmd::Pool { command } => admin_cmd::pool(command),
        Cmd::Config { command } => config_cmd::config(command),
        Cmd::Token { command } => token_cmd::token(command),
        Cmd::Demo => demo::run(),
        Cmd::Logs { command } => logs_cmd::logs(command),
        Cmd::Completions { shell } => shell_cmd::completions(shell),
        Cmd::Man { dir } => shell_cmd::man(dir.as_deref()),
    }
}
