//! `flotilla servable …` and `flotilla pipeline create`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow, bail};
use flotilla_client::Client;
use flotilla_engine::servable_spec::{self, AccessSpec, SPEC_FILE};
use flotilla_protocol::access::Access;
use flotilla_protocol::client::{SearchQuery, ServableSummary};
use flotilla_protocol::paths;
use flotilla_protocol::servable::{
    FileEntry, Runtime, ServableOptions, ServableRecord, ServableRef, ServableSpec, TypeSpec,
};
use serde_json::json;

use crate::Failure;
use crate::args::AccessArgs;

/// Publishes the servable in `dir`: checks its spec, runs its build step,
/// stores its files by hash, captures its environment (the wheels too
/// unless `wheels` is false; see [`crate::wheels`]), registers the
/// version. Returns (id, created, bytes of files and wheels stored).
pub fn publish(
    client: &Client,
    dir: &Path,
    wheels: bool,
    access_args: &AccessArgs,
) -> Result<(String, bool, u64), Failure> {
    let spec_path = dir.join(SPEC_FILE);
    let text = fs::read_to_string(&spec_path)
        .with_context(|| {
            format!(
                "{}: cannot read (is {} a servable directory?)",
                spec_path.display(),
                dir.display()
            )
        })
        .map_err(Failure::Usage)?;
    let (spec, file_access) =
        servable_spec::parse_with_access(&text, &spec_path.display().to_string())
            .map_err(|e| Failure::Usage(e.into()))?;
    let requested = if file_access.is_none() && access_args.is_empty() {
        None
    } else {
        Some(access(file_access.as_ref(), access_args)?)
    };
    if let Some(build) = &spec.build {
        run_build(dir, &build.command, &build.args)?;
    }
    let objects = paths::daemon_objects_dir(client.state_dir());
    fs::create_dir_all(&objects)
        .with_context(|| format!("{}: cannot create", objects.display()))?;
    let mut files = Vec::with_capacity(spec.files.len());
    let mut bytes = 0;
    for name in &spec.files {
        let (blake3, size) = store_object(dir, name, &objects).map_err(|e| {
            Failure::Usage(anyhow!(
                "{}: `files` lists `{name}`: {e:#}",
                spec_path.display()
            ))
        })?;
        bytes += size;
        files.push(FileEntry {
            path: name.clone(),
            blake3,
            size,
        });
    }
    let lock = match &spec.environment {
        Some(env) => {
            crate::wheels::capture(env, wheels, |dir, name| store_object(dir, name, &objects))?
        }
        None => None,
    };
    if let Some(captured) = &lock {
        bytes += captured.bytes;
    }
    let record = ServableRecord {
        spec,
        files,
        published_us: 0,
        lock: lock.map(|c| c.lock),
        access: requested,
    };
    let (id, created) = client.publish(record).map_err(Failure::from_client)?;
    Ok((id, created, bytes))
}

/// The access asked for: the file's `[access]` table, each of its keys
/// replaced by the command line's when given there; names resolved to ids
/// on this host. The owner is left for the daemon to set.
pub fn access(file: Option<&AccessSpec>, args: &AccessArgs) -> Result<Access, Failure> {
    let from_file = file.cloned().unwrap_or_default();
    let visibility = args.visibility.or(from_file.visibility).unwrap_or_default();
    let users = if args.users.is_empty() {
        from_file.users
    } else {
        args.users.clone()
    };
    let groups = if args.groups.is_empty() {
        from_file.groups
    } else {
        args.groups.clone()
    };
    let users = users
        .iter()
        .map(|u| crate::ids::user_id(u))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| Failure::Usage(e.context("--users / [access] users")))?;
    let groups = groups
        .iter()
        .map(|g| crate::ids::group_id(g))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| Failure::Usage(e.context("--groups / [access] groups")))?;
    Ok(Access {
        owner: None,
        visibility,
        users,
        groups,
        shared_memo: args
            .shared_memo
            .or(from_file.shared_memo)
            .unwrap_or_default(),
    })
}

/// An access in words: owner, visibility, users, groups.
pub fn access_text(a: &Access) -> String {
    let mut out = format!(
        "owner {}, visibility {}",
        a.owner
            .map_or_else(|| "the daemon's user".into(), crate::ids::user_name),
        a.visibility.as_str()
    );
    if !a.users.is_empty() {
        let users: Vec<String> = a.users.iter().map(|u| crate::ids::user_name(*u)).collect();
        out.push_str(&format!(", users {}", users.join(", ")));
    }
    if !a.groups.is_empty() {
        let groups: Vec<String> = a
            .groups
            .iter()
            .map(|g| crate::ids::group_name(*g))
            .collect();
        out.push_str(&format!(", groups {}", groups.join(", ")));
    }
    if a.shared_memo {
        out.push_str(", memo shared by its callers");
    }
    out
}

fn run_build(dir: &Path, command: &str, args: &[String]) -> Result<(), Failure> {
    eprintln!(
        "building: {command} {} (in {})",
        args.join(" "),
        dir.display()
    );
    let status = Command::new(command)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot run the build step `{command}`"))?;
    if !status.success() {
        return Err(Failure::Other(anyhow!(
            "the build step `{command} {}` failed ({status}); nothing was published",
            args.join(" ")
        )));
    }
    Ok(())
}

/// Opens the file `name` of the servable directory `dir` for reading.
/// Refused: a path that a link takes outside the directory (publishing
/// would copy a file from elsewhere), and anything that is not a regular
/// file (a named pipe would block publishing forever, a device would copy
/// without end, a directory is not a file).
fn open_listed(dir: &Path, name: &str) -> anyhow::Result<fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let root = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let path = dir.join(name);
    let real = path
        .canonicalize()
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !real.starts_with(&root) {
        bail!(
            "{} leads to {}, outside the servable's directory; copy the file in instead of linking to it",
            path.display(),
            real.display()
        );
    }
    // Not blocking on a named pipe, not following a link swapped in since.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW | nix::libc::O_NOCTTY)
        .open(&real)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let kind = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_dir() {
        "a directory (list the files in it)"
    } else if kind.is_fifo() {
        "a named pipe"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    bail!(
        "{} is {what}; only regular files can be published",
        path.display()
    )
}

/// Copies the file `name` of `dir` into the object store under its blake3
/// hash (read-only, and executable when the source is, so a servable can
/// ship a program); returns the hash and size. An object already stored
/// under that hash is kept only if its content still has it: one modified
/// since is replaced, so publishing again repairs the store.
fn store_object(dir: &Path, name: &str, objects: &Path) -> anyhow::Result<(String, u64)> {
    let path = dir.join(name);
    let mut source = open_listed(dir, name)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempfile_in(objects)
        .with_context(|| format!("cannot write in {}", objects.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", tmp.path().display()))?;
        size += n as u64;
    }
    tmp.as_file().sync_all().ok();
    let hash = hasher.finalize().to_hex().to_string();
    let target = objects.join(&hash);
    let executable = source
        .metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    let mode = if executable { 0o555 } else { 0o444 };
    if stored_intact(&target, &hash) {
        // The same bytes published before as data: now also a program.
        if executable {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).ok();
        }
        return Ok((hash, size));
    }
    if target.exists() {
        tracing::warn!(object = %target.display(), "a stored object no longer matches its hash; replacing it");
    }
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).ok();
    tmp.persist(&target)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot store {}", target.display()))?;
    Ok((hash, size))
}

/// Whether the object at `target` is a regular file whose content has the
/// blake3 hash `hash`.
fn stored_intact(target: &Path, hash: &str) -> bool {
    let Ok(meta) = fs::symlink_metadata(target) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let Ok(mut file) = fs::File::open(target) else {
        return false;
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(_) => return false,
        }
    }
    hasher.finalize().to_hex().as_str() == hash
}

/// Makes and publishes a pipeline of `steps` (each `NAME` or
/// `NAME@VERSION`, pinned to a version now).
pub fn create_pipeline(
    client: &Client,
    name: &str,
    steps: &[String],
    version: &str,
    title: Option<String>,
    memoize: bool,
) -> Result<(String, bool), Failure> {
    if steps.is_empty() {
        return Err(Failure::Usage(anyhow!(
            "--steps needs at least one servable"
        )));
    }
    let records = steps
        .iter()
        .map(|s| {
            client.show_servable(s.trim()).map_err(|e| match e {
                flotilla_client::ClientError::Refused(api) => {
                    Failure::Usage(anyhow!("step `{s}`: {}", api.message))
                }
                other => Failure::from_client(other),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<String> = records.iter().map(ServableRecord::id).collect();
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(Failure::Usage(anyhow!(
            "--steps needs at least one servable"
        )));
    };
    let mut domains: Vec<String> = Vec::new();
    for r in &records {
        for d in &r.spec.domains {
            if !domains.contains(d) {
                domains.push(d.clone());
            }
        }
    }
    let spec = ServableSpec {
        name: name.to_owned(),
        version: version.to_owned(),
        title: title.unwrap_or_else(|| format!("Pipeline: {}", ids.join(" → "))),
        description: format!(
            "Runs {} inside the daemon, each step's output feeding the next.",
            ids.join(", then ")
        ),
        creators: first.spec.creators.clone(),
        domains,
        license: "NOASSERTION".into(),
        doi: None,
        related_identifiers: vec![],
        model_type: "pipeline".into(),
        input: first.spec.input.clone(),
        output: last.spec.output.clone(),
        runtime: Runtime::Pipeline { steps: ids },
        container: None,
        files: vec![],
        build: None,
        resources: Default::default(),
        environment: None,
        options: ServableOptions {
            memoize,
            ..ServableOptions::default()
        },
    };
    let record = ServableRecord {
        spec,
        files: vec![],
        published_us: 0,
        lock: None,
        access: None,
    };
    servable_spec::check_record(&record).map_err(|e| Failure::Usage(e.into()))?;
    client.publish(record).map_err(Failure::from_client)
}

/// The search query from the command line.
pub fn query(
    text: Vec<String>,
    domain: Option<String>,
    model_type: Option<String>,
    author: Option<String>,
) -> SearchQuery {
    SearchQuery {
        text: text.join(" "),
        domain,
        model_type,
        author,
    }
}

/// A table of catalog entries.
pub fn summaries_text(list: &[ServableSummary], with_score: bool) -> String {
    if list.is_empty() {
        return "(no servables)\n".into();
    }
    let mut out = String::new();
    for s in list {
        let score = if with_score {
            format!("{:>5.1}  ", s.score)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{score}{:<28} {:<10} {:<16} {}\n",
            s.name, s.version, s.model_type, s.title
        ));
    }
    out
}

/// Catalog entries as JSON.
pub fn summaries_json(list: &[ServableSummary]) -> serde_json::Value {
    serde_json::Value::Array(
        list.iter()
            .map(|s| {
                json!({
                    "name": s.name, "version": s.version, "title": s.title,
                    "model_type": s.model_type, "domains": s.domains,
                    "creators": s.creators, "score": s.score,
                })
            })
            .collect(),
    )
}

fn type_text(t: &TypeSpec) -> String {
    match t {
        TypeSpec::List { item, .. } => format!("list of {}", type_text(item)),
        TypeSpec::Dict { properties, .. } => format!(
            "dict {{{}}}",
            properties
                .iter()
                .map(|(k, v)| format!("{k}: {}", type_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TypeSpec::Ndarray { dtype, shape, .. } => format!(
            "ndarray {dtype} [{}]",
            shape
                .iter()
                .map(|d| if *d < 0 { "*".into() } else { d.to_string() })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.kind().to_owned(),
    }
}

/// One version, for people.
pub fn record_text(r: &ServableRecord) -> String {
    let s = &r.spec;
    let mut out = format!("{}  {}\n", r.id(), s.title);
    if !s.description.is_empty() {
        out.push_str(&format!("  {}\n", s.description));
    }
    out.push_str(&format!(
        "  model type  {}\n  license     {}\n",
        s.model_type, s.license
    ));
    if let Some(a) = &r.access {
        out.push_str(&format!("  access      {}\n", access_text(a)));
    }
    if !s.creators.is_empty() {
        let names: Vec<String> = s
            .creators
            .iter()
            .map(|c| match (&c.affiliation, &c.orcid) {
                (Some(a), Some(o)) => format!("{} ({a}, ORCID {o})", c.name),
                (Some(a), None) => format!("{} ({a})", c.name),
                (None, Some(o)) => format!("{} (ORCID {o})", c.name),
                (None, None) => c.name.clone(),
            })
            .collect();
        out.push_str(&format!("  creators    {}\n", names.join("; ")));
    }
    if !s.domains.is_empty() {
        out.push_str(&format!("  domains     {}\n", s.domains.join(", ")));
    }
    if let Some(doi) = &s.doi {
        out.push_str(&format!("  doi         {doi}\n"));
    }
    out.push_str(&format!(
        "  input       {}\n  output      {}\n",
        type_text(&s.input),
        type_text(&s.output)
    ));
    match &s.runtime {
        Runtime::Exec { command, args, .. } => {
            out.push_str(&format!("  runs        {command} {}\n", args.join(" ")));
        }
        Runtime::Pipeline { steps } => {
            out.push_str(&format!("  steps       {}\n", steps.join(" → ")))
        }
        Runtime::Onnx { model, .. } => {
            out.push_str(&format!(
                "  runs        onnx model {model}, in the worker\n"
            ));
        }
        Runtime::Builtin => {}
    }
    if let Some(env) = &s.environment {
        if let Some(image) = &env.image {
            out.push_str(&format!("  image       {image}\n"));
        }
        if let Some(python) = &env.python {
            out.push_str(&format!("  python      {python}\n"));
        }
    }
    if let Some(lock) = &r.lock {
        let bytes: u64 = lock.wheels.iter().map(|w| w.size).sum();
        let wheels = if lock.wheels.is_empty() {
            "no wheels: nodes install from their index".to_owned()
        } else {
            format!("{} wheels, {bytes} bytes", lock.wheels.len())
        };
        out.push_str(&format!(
            "  packages    {} ({wheels})\n",
            lock.requirements.join(" ")
        ));
    }
    let o = &s.options;
    out.push_str(&format!(
        "  options     max_batch_size {}, max_batch_delay_ms {}, memoize {}, validate_input {}\n",
        o.max_batch_size,
        match o.max_batch_delay_ms {
            flotilla_protocol::servable::BatchDelay::Fixed(ms) => ms.to_string(),
            flotilla_protocol::servable::BatchDelay::Auto => "auto".into(),
        },
        o.memoize,
        o.validate_input
    ));
    for f in &r.files {
        out.push_str(&format!(
            "  file        {}  {} bytes  blake3 {}\n",
            f.path, f.size, f.blake3
        ));
    }
    out
}

/// One version as JSON.
pub fn record_json(r: &ServableRecord) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(r).map_err(|e| anyhow!("cannot render {}: {e}", r.id()))
}

/// Checks that `dir` looks like a servable directory before anything runs.
pub fn servable_dir(dir: PathBuf) -> Result<PathBuf, Failure> {
    if !dir.join(SPEC_FILE).is_file() {
        return Err(Failure::Usage(anyhow!(
            "{} has no {SPEC_FILE}; a servable directory holds its spec and files",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Fails with a usage error unless `id` is `NAME@VERSION`.
pub fn exact_version(id: &str) -> Result<(), Failure> {
    match ServableRef::parse(id) {
        Ok(ServableRef::Exact { .. }) => Ok(()),
        _ => Err(Failure::Usage(anyhow!("say which version: `{id}@VERSION`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A servable directory with `serve.py`, and an object store beside it.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("servable");
        let objects = root.path().join("objects");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&objects).unwrap();
        fs::write(dir.join("serve.py"), "print('hi')\n").unwrap();
        (root, dir, objects)
    }

    #[test]
    fn a_link_out_of_the_directory_is_refused() {
        let (root, dir, objects) = setup();
        let secret = root.path().join("secret.txt");
        fs::write(&secret, "not for publishing").unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("data.txt")).unwrap();
        let e = format!(
            "{:#}",
            store_object(&dir, "data.txt", &objects).unwrap_err()
        );
        assert!(e.contains("outside the servable's directory"), "{e}");
        assert_eq!(fs::read_dir(&objects).unwrap().count(), 0, "nothing stored");
        // A link that stays inside is the file it points to.
        std::os::unix::fs::symlink("serve.py", dir.join("alias.py")).unwrap();
        store_object(&dir, "alias.py", &objects).unwrap();
    }

    #[test]
    fn a_named_pipe_is_refused_at_once() {
        let (_root, dir, objects) = setup();
        nix::unistd::mkfifo(&dir.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = format!("{:#}", store_object(&dir, "pipe", &objects).unwrap_err());
        assert!(e.contains("is a named pipe"), "{e}");
        fs::create_dir(dir.join("sub")).unwrap();
        let e = format!("{:#}", store_object(&dir, "sub", &objects).unwrap_err());
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn publishing_again_repairs_a_modified_object() {
        let (_root, dir, objects) = setup();
        let (hash, _) = store_object(&dir, "serve.py", &objects).unwrap();
        let object = objects.join(&hash);
        fs::set_permissions(&object, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&object, "import os\nos.system('echo pwned')\n").unwrap();
        let (again, _) = store_object(&dir, "serve.py", &objects).unwrap();
        assert_eq!(again, hash);
        assert_eq!(fs::read_to_string(&object).unwrap(), "print('hi')\n");
        let mode = fs::metadata(&object).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        let leftovers: Vec<_> = fs::read_dir(&objects)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
