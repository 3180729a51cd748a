//! `flotilla servable …` and `flotilla pipeline create`: what each prints.
//! The work itself (publishing, chaining, rendering) is in `servable_cmd`.

use crate::args::{PipelineCmd, ServableCmd};
use crate::{Failure, connect, servable_cmd};

/// Runs one `flotilla servable` subcommand.
pub fn servable(command: ServableCmd) -> Result<(), Failure> {
    let client = connect()?;
    match command {
        ServableCmd::Publish {
            dir,
            json,
            no_wheels,
            access,
        } => {
            let dir = servable_cmd::servable_dir(dir)?;
            let (id, created, bytes) = servable_cmd::publish(&client, &dir, !no_wheels, &access)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": id, "created": created, "bytes": bytes})
                );
            } else if created {
                println!("published {id} ({bytes} bytes of files)");
            } else {
                println!("{id} is already published with the same content");
            }
        }
        ServableCmd::List { json } => {
            let list = client.list_servables().map_err(Failure::from_client)?;
            if json {
                println!("{}", servable_cmd::summaries_json(&list));
            } else {
                print!("{}", servable_cmd::summaries_text(&list, false));
            }
        }
        ServableCmd::Show { name, json } => {
            let record = client.show_servable(&name).map_err(Failure::from_client)?;
            if json {
                println!("{}", servable_cmd::record_json(&record)?);
            } else {
                print!("{}", servable_cmd::record_text(&record));
            }
        }
        ServableCmd::Versions { name, json } => {
            let versions = client
                .servable_versions(&name)
                .map_err(Failure::from_client)?;
            if json {
                println!("{}", serde_json::json!(versions));
            } else {
                for v in versions {
                    println!("{name}@{v}");
                }
            }
        }
        ServableCmd::Search {
            query,
            domain,
            model_type,
            author,
            json,
        } => {
            let q = servable_cmd::query(query, domain, model_type, author);
            let hits = client.search_servables(q).map_err(Failure::from_client)?;
            if json {
                println!("{}", servable_cmd::summaries_json(&hits));
            } else {
                print!("{}", servable_cmd::summaries_text(&hits, true));
            }
        }
        ServableCmd::Access { name, access } => {
            let wanted = servable_cmd::access(None, &access)?;
            let now = client
                .set_servable_access(&name, wanted)
                .map_err(Failure::from_client)?;
            println!("{name}: {}", servable_cmd::access_text(&now));
        }
        ServableCmd::Remove { id } => {
            servable_cmd::exact_version(&id)?;
            let id = client.remove_servable(&id).map_err(Failure::from_client)?;
            println!("removed {id}");
        }
        ServableCmd::Warm { name, slots } => {
            let (id, hosting) = client
                .warm_servable(&name, slots)
                .map_err(Failure::from_client)?;
            println!("{id}: {hosting} slot(s) warm or warming");
        }
    }
    Ok(())
}

/// Runs one `flotilla pipeline` subcommand.
pub fn pipeline(command: PipelineCmd) -> Result<(), Failure> {
    let PipelineCmd::Create {
        name,
        steps,
        version,
        title,
        memoize,
    } = command;
    let (id, created) =
        servable_cmd::create_pipeline(&connect()?, &name, &steps, &version, title, memoize)?;
    if created {
        println!("created pipeline {id}");
    } else {
        println!("{id} already exists with the same steps");
    }
    Ok(())
}
