//! `flotilla memo …`, `events` and `pool resume`: the memo store, the event
//! stream and the pools (the blocks each scaling strategy keeps).

use std::io::Write as _;
use std::time::Duration;

use crate::args::{MemoCmd, PoolCmd};
use crate::follow::Follower;
use crate::{Failure, connect, output};

/// How long one `events --follow` poll waits for new events.
const FOLLOW_POLL: Duration = Duration::from_secs(30);

/// Runs one `flotilla memo` subcommand.
pub fn memo(command: MemoCmd) -> Result<(), Failure> {
    match command {
        MemoCmd::Stats { json } => {
            let stats = connect()?.memo_stats().map_err(Failure::from_client)?;
            if json {
                println!("{}", output::memo_json(&stats));
            } else {
                print!("{}", output::memo_text(&stats));
            }
        }
        MemoCmd::Clear { servable } => {
            let removed = connect()?
                .memo_clear(servable.as_deref())
                .map_err(Failure::from_client)?;
            println!("removed {removed} memo entries");
        }
    }
    Ok(())
}

/// `flotilla events`: the events so far, then new ones with `--follow`.
pub fn events(follow: bool, json: bool) -> Result<(), Failure> {
    let mut daemon = Follower::connect(follow)?;
    let mut after = 0;
    loop {
        let wait = follow.then_some(FOLLOW_POLL);
        let events = daemon.call(|client| client.events(after, wait))?;
        let mut text = String::new();
        for e in &events {
            after = after.max(e.seq);
            text.push_str(&if json {
                format!("{}\n", output::event_json(e))
            } else {
                output::event_text(e)
            });
        }
        print!("{text}");
        // A closed stdout ends the command at the next print; nothing to do.
        let _ = std::io::stdout().flush();
        if !follow {
            return Ok(());
        }
    }
}

/// Runs one `flotilla pool` subcommand.
pub fn pool(command: PoolCmd) -> Result<(), Failure> {
    match command {
        PoolCmd::Resume { name } => {
            connect()?
                .resume_pool(&name)
                .map_err(Failure::from_client)?;
            println!("pool {name} resumed");
            Ok(())
        }
        PoolCmd::Preview {
            config,
            block,
            pool,
        } => crate::preview_cmd::preview(config.as_deref(), block, pool.as_deref()),
    }
}
