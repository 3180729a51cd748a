//! `flotilla`: run the daemon, invoke servables, inspect and cancel tasks.
//!
//! Exit status: 0 success; 1 a task failed (or another runtime error);
//! 2 usage or configuration error; 3 the daemon is unreachable; 4 a result
//! is not ready yet (still queued or running when the wait ended).

mod admin_cmd;
mod args;
mod catalog_cmd;
mod config_cmd;
mod daemon_cmd;
mod demo;
mod failure;
mod ids;
mod input;
mod output;
mod preview_cmd;
mod servable_cmd;
mod task_cmd;
mod task_ids;
mod token_cmd;
mod watch_cmd;
mod wheels;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use flotilla_client::Client;
use flotilla_protocol::launch::LOG_ENV;

use args::{Cli, Cmd};
pub use failure::Failure;
use task_cmd::Request;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.command {
        Cmd::Daemon { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into daemon.log.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
        Cmd::Daemon { config, detach } => daemon_cmd::daemon(config.as_deref(), detach),
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
    }
}
