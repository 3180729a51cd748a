//! One warm servable process and the frames on its stdin and stdout.
//!
//! The process is started once, initialised, and then called with batch
//! after batch. Its stderr is read by a thread of its own: every line goes to
//! the worker's log with the ids of the tasks being run, and the last lines
//! are kept for the error message should the process die.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Component, Path};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flotilla_launchers::{Bind, Container, Inner};
use flotilla_protocol::launch::CREDENTIAL_ENV_VARS;
use flotilla_protocol::placement::SlotPlacement;
use flotilla_protocol::servable::{Runtime, ServableRecord};
use flotilla_protocol::stdio::{self, Reply};

/// The variable telling a servable process which slot it runs in.
pub const SLOT_ENV: &str = "FLOTILLA_SLOT";

/// How long a slot whose servable process died of a termination signal
/// waits for the worker's own signal (see [`crate::stop_signal::wait_for`]).
const OWN_SIGNAL_WAIT: Duration = Duration::from_secs(2);

/// Lines of stderr kept for error messages.
const STDERR_TAIL: usize = 20;

/// Why talking to the process failed; it is unusable afterwards.
#[derive(Debug)]
pub struct Broken(pub String);

/// The process behind a [`WarmProcess`].
enum Handle {
    /// Started by this worker.
    Child(Child),
    /// Forked by the node's template of its servable (see
    /// [`crate::template`]): the template is its parent, so it is watched
    /// through its pipes and its exit status is unknown here.
    Forked(u32),
}

impl Handle {
    fn id(&self) -> u32 {
        match self {
            Handle::Child(c) => c.id(),
            Handle::Forked(pid) => *pid,
        }
    }

    /// Its exit status within `limit`, in words, if it ended, with the
    /// signal that ended it, if one did and it is known.
    fn wait_briefly(&mut self, limit: Duration) -> Option<(String, Option<i32>)> {
        match self {
            Handle::Child(c) => wait_briefly(c, limit).map(|s| {
                use std::os::unix::process::ExitStatusExt;
                (s.to_string(), s.signal())
            }),
            Handle::Forked(pid) => {
                let deadline = Instant::now() + limit;
                let pid = nix::unistd::Pid::from_raw(*pid as i32);
                loop {
                    if nix::sys::signal::kill(pid, None).is_err() {
                        let status = "exited (status unknown: forked from its template)";
                        return Some((status.into(), None));
                    }
                    if Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn kill(&mut self) {
        match self {
            Handle::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Handle::Forked(pid) => {
                let pid = nix::unistd::Pid::from_raw(*pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// How a servable's process is started: its argv, working directory and
/// environment, as [`WarmProcess::start`] and the template both need.
pub(crate) struct Launch {
    pub(crate) id: String,
    pub(crate) argv: Vec<String>,
    pub(crate) cwd: std::path::PathBuf,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) cpus: Option<Vec<u32>>,
    pub(crate) slot: usize,
    pub(crate) devices: String,
}

/// A running servable process.
pub struct WarmProcess {
    servable: String,
    child: Handle,
    stdin: Option<Box<dyn Write + Send>>,
    stdout: Box<dyn Read + Send>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    current_tasks: Arc<Mutex<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WarmProcess {
    /// Starts `record`'s command in `dir` (its materialised files), inside
    /// `container` when given, with the virtual environment `venv`
    /// activated when given, for slot `slot` (seeing only its devices,
    /// running on its cores), and initialises it.
    pub fn start(
        record: &ServableRecord,
        dir: &Path,
        container: Option<Container>,
        venv: Option<&Path>,
        (slot, placement): (usize, &SlotPlacement),
    ) -> Result<WarmProcess, Broken> {
        let launch = Launch::new(record, dir, container, venv, (slot, placement))?;
        let mut command = launch.command();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cores = launch.cpus.as_deref();
        if let Some(cpus) = cores {
            crate::affinity::pin(&mut command, cpus).map_err(|e| {
                Broken(format!(
                    "cannot pin {} to slot {slot}'s cores: {e}",
                    launch.id
                ))
            })?;
        }
        let mut child = command.spawn().map_err(|e| {
            let pinned = cores.map_or(String::new(), |c| {
                format!(
                    " on cores {}",
                    flotilla_protocol::placement::format_cpu_list(c)
                )
            });
            Broken(format!(
                "cannot start `{}` in {}{pinned}: {e}",
                launch.argv[0],
                launch.cwd.display()
            ))
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(Broken("the servable process has no pipes".into()));
        };
        let streams = (
            Box::new(stdin) as Box<dyn Write + Send>,
            Box::new(stdout) as Box<dyn Read + Send>,
            Box::new(stderr) as Box<dyn Read + Send>,
        );
        Self::initialise(record, &launch, Handle::Child(child), streams)
    }

    /// A process of `record` forked for slot `launch.slot` by the template
    /// that answered `forked` (see [`crate::template`]), initialised.
    pub(crate) fn from_template(
        record: &ServableRecord,
        launch: &Launch,
        (pid, stdin, stdout, stderr): crate::template::Forked,
    ) -> Result<WarmProcess, Broken> {
        let streams = (
            Box::new(stdin) as Box<dyn Write + Send>,
            Box::new(stdout) as Box<dyn Read + Send>,
            Box::new(stderr) as Box<dyn Read + Send>,
        );
        Self::initialise(record, launch, Handle::Forked(pid), streams)
    }

    /// Watches the new process's stderr and initialises it.
    fn initialise(
        record: &ServableRecord,
        launch: &Launch,
        child: Handle,
        (stdin, stdout, stderr): (
            Box<dyn Write + Send>,
            Box<dyn Read + Send>,
            Box<dyn Read + Send>,
        ),
    ) -> Result<WarmProcess, Broken> {
        let id = launch.id.clone();
        let slot = launch.slot;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let current_tasks = Arc::new(Mutex::new(String::from("-")));
        let stderr_reader = {
            let tail = stderr_tail.clone();
            let tasks = current_tasks.clone();
            let servable = id.clone();
            let pid = child.id();
            std::thread::Builder::new()
                .name(format!("stderr-{pid}"))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        let tasks = lock(&tasks).clone();
                        tracing::info!(servable = %servable, pid, tasks = %tasks, line = %line, "servable stderr");
                        let mut tail = lock(&tail);
                        if tail.len() == STDERR_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                })
                .map_err(|e| Broken(format!("cannot start the stderr reader: {e}")))?
        };
        let mut process = WarmProcess {
            servable: id.clone(),
            child,
            stdin: Some(stdin),
            stdout,
            stderr_tail,
            stderr_reader: Some(stderr_reader),
            current_tasks,
        };
        let init = stdio::encode_init(&record.spec, &[]).map_err(Broken)?;
        match process.call(&init)? {
            Reply::Ready => {
                tracing::info!(
                    servable = %id,
                    pid = process.child.id(),
                    slot,
                    devices = %launch.devices,
                    "servable process ready"
                );
                Ok(process)
            }
            Reply::Failed(message) => {
                Err(process.died(&format!("failed to initialise: {message}")))
            }
            Reply::Outputs(_) => Err(process.died("answered init with outputs instead of ready")),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs one batch; `Err` means the process is gone or broke the protocol.
    pub fn run(&mut self, tasks: &str, inputs: &[&[u8]], params: &[u8]) -> Result<Reply, Broken> {
        *lock(&self.current_tasks) = tasks.to_owned();
        let body = stdio::encode_run(inputs.iter().copied(), params);
        let reply = self.call(&body);
        *lock(&self.current_tasks) = String::from("-");
        match reply? {
            Reply::Outputs(outputs) if outputs.len() != inputs.len() => Err(self.died(&format!(
                "returned {} outputs for {} inputs",
                outputs.len(),
                inputs.len()
            ))),
            Reply::Ready => Err(self.died("answered a run with ready")),
            other => Ok(other),
        }
    }

    fn call(&mut self, body: &[u8]) -> Result<Reply, Broken> {
        if let Err(e) = self.write_frame(body) {
            return Err(self.died(&format!("cannot write to it: {e}")));
        }
        match self.read_frame() {
            Ok(reply) => match stdio::decode_reply(&reply) {
                Ok(r) => Ok(r),
                Err(e) => Err(self.died(&format!("broke the protocol: {e}"))),
            },
            Err(e) => Err(self.died(&e)),
        }
    }

    fn write_frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(&stdio::header(body.len()))?;
        stdin.write_all(body)?;
        stdin.flush()
    }

    fn read_frame(&mut self) -> Result<Vec<u8>, String> {
        let mut header = [0u8; 4];
        self.stdout
            .read_exact(&mut header)
            .map_err(|_| "closed its stdout".to_owned())?;
        let len = stdio::body_len(header);
        if len > stdio::MAX_FRAME {
            return Err(format!(
                "sent a {len}-byte frame (the limit is {} bytes)",
                stdio::MAX_FRAME
            ));
        }
        let mut body = vec![0u8; len];
        self.stdout
            .read_exact(&mut body)
            .map_err(|_| "closed its stdout in the middle of a frame".to_owned())?;
        Ok(body)
    }

    /// Ends the process and describes its death: exit status and the last
    /// stderr lines.
    fn died(&mut self, what: &str) -> Broken {
        self.stdin = None;
        let status = match self.child.wait_briefly(Duration::from_secs(2)) {
            Some((status, Some(signal))) if crate::stop_signal::is_stopping(signal) => {
                // Stopped from outside: if its job is being cancelled, the
                // worker's own signal follows at once, and the batch is
                // then not reported as failed (it goes back to the queue
                // with the worker, not as a counted attempt).
                if let Some(own) = crate::stop_signal::wait_for(OWN_SIGNAL_WAIT) {
                    tracing::info!(servable = %self.servable, signal, worker_signal = own, "servable process stopped with its worker");
                }
                status
            }
            Some((status, _)) => status,
            None => {
                self.child.kill();
                "was killed after it stopped answering".to_owned()
            }
        };
        // The reader ends when the dead process's stderr closes; give it a
        // moment to record the last lines (a grandchild may hold it open).
        if let Some(reader) = self.stderr_reader.take() {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let tail: Vec<String> = lock(&self.stderr_tail).iter().cloned().collect();
        let mut message = format!("servable process of {} {what}; {status}", self.servable);
        if tail.is_empty() {
            message.push_str("; its stderr was empty");
        } else {
            message.push_str("; stderr ends with:\n");
            message.push_str(&tail.join("\n"));
        }
        tracing::warn!(servable = %self.servable, pid = self.child.id(), error = %message, "servable process lost");
        Broken(message)
    }
}

impl Launch {
    /// How `record`'s command runs in `dir` (its materialised files),
    /// inside `container` when given, with the virtual environment `venv`
    /// activated when given, for slot `slot` (seeing only its devices,
    /// running on its cores).
    pub(crate) fn new(
        record: &ServableRecord,
        dir: &Path,
        container: Option<Container>,
        venv: Option<&Path>,
        (slot, placement): (usize, &SlotPlacement),
    ) -> Result<Launch, Broken> {
        let id = record.id();
        let Runtime::Exec {
            command,
            args,
            working_dir,
            env,
        } = &record.spec.runtime
        else {
            return Err(Broken(format!("{id} is not an exec servable")));
        };
        let cwd = match working_dir {
            Some(w) if inside(w) => dir.join(w),
            Some(w) => {
                return Err(Broken(format!(
                    "{id}: working_dir `{w}` is not a directory inside the servable's files"
                )));
            }
            None => dir.to_path_buf(),
        };
        let mut vars = env.clone();
        vars.insert("FLOTILLA_SERVABLE".into(), id.clone());
        vars.insert("PYTHONUNBUFFERED".into(), "1".into());
        // The site's devices win over anything the servable or the job set.
        vars.insert(SLOT_ENV.into(), slot.to_string());
        vars.extend(placement.env.iter().cloned());
        let mut command = command.clone();
        if let Some(venv) = venv {
            activate(&mut vars, venv, std::env::var_os("PATH"));
            // Found in the venv first, as the PATH it is given says.
            let bin = venv.join("bin").join(&command);
            if !command.contains('/') && bin.is_file() {
                command = bin.display().to_string();
            }
        }
        let mut argv = vec![command];
        argv.extend(args.iter().cloned());
        let mut runtime_env = Vec::new();
        if let Some(mut container) = container {
            // The servable's files at the same path inside, and its working
            // directory there.
            let dir_text = dir.display().to_string();
            container.binds.push(Bind::same(&dir_text, false));
            let cwd_text = cwd.display().to_string();
            let names: Vec<&str> = vars.keys().map(String::as_str).collect();
            let invocation = container
                .invocation(Inner {
                    command: &argv,
                    pass_env: &names,
                    workdir: Some(&cwd_text),
                    interactive: true,
                })
                .map_err(|e| Broken(format!("cannot run {id} in {}: {e}", container.image)))?;
            for (name, source) in &invocation.env {
                if let Some(value) = vars.get(source) {
                    runtime_env.push((OsString::from(name), OsString::from(value)));
                }
            }
            tracing::info!(servable = %id, image = %container.image, runtime = container.runtime.name(), "starting the servable in its container");
            argv = invocation.argv;
        }
        let mut env = servable_environment(std::env::vars_os(), &vars);
        env.extend(runtime_env);
        Ok(Launch {
            id,
            argv,
            cwd,
            env,
            cpus: placement.cpus.clone(),
            slot,
            devices: placement.devices.join(","),
        })
    }

    /// The command, with its environment and working directory.
    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// Activates the virtual environment `venv` in `vars`: `VIRTUAL_ENV`, and
/// its `bin` first on the `PATH` (the worker's `path`), as its `activate`
/// script does; `PYTHONHOME` would take the interpreter elsewhere, so it is
/// cleared.
fn activate(vars: &mut BTreeMap<String, String>, venv: &Path, path: Option<OsString>) {
    let bin = venv.join("bin");
    let mut parts = vec![bin];
    if let Some(path) = path {
        parts.extend(std::env::split_paths(&path));
    }
    let joined = std::env::join_paths(parts)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| venv.join("bin").display().to_string());
    vars.insert("VIRTUAL_ENV".into(), venv.display().to_string());
    vars.insert("PATH".into(), joined);
    vars.insert("PYTHONHOME".into(), String::new());
}

/// Whether `path` names a place inside a directory: relative, with no
/// `..` (a servable's working directory, checked again here whatever
/// checked it before).
fn inside(path: &str) -> bool {
    Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The environment a servable process starts with, built for it: the
/// worker's own (`inherited`) without any variable that carries a
/// credential ([`CREDENTIAL_ENV_VARS`]), then the servable's variables
/// (`vars`). A servable never sees the daemon's secret.
fn servable_environment(
    inherited: impl Iterator<Item = (OsString, OsString)>,
    vars: &BTreeMap<String, String>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = inherited
        .filter(|(name, _)| !CREDENTIAL_ENV_VARS.iter().any(|c| name == c))
        .collect();
    env.extend(
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    env
}

fn wait_briefly(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

impl Drop for WarmProcess {
    fn drop(&mut self) {
        if self.write_frame(&stdio::encode_shutdown()).is_ok() {
            self.stdin = None;
            if self.child.wait_briefly(Duration::from_secs(1)).is_some() {
                return;
            }
        }
        self.child.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::launch::SECRET_ENV;

    #[test]
    fn a_servable_never_inherits_a_credential() {
        let inherited = [
            ("PATH", "/usr/bin"),
            (SECRET_ENV, "00ff"),
            ("HOME", "/home/a"),
        ]
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let vars: BTreeMap<String, String> =
            [("FLOTILLA_SERVABLE".to_owned(), "x@1.0.0".to_owned())].into();
        let env = servable_environment(inherited, &vars);
        let names: Vec<&str> = env.iter().filter_map(|(k, _)| k.to_str()).collect();
        assert_eq!(names, ["PATH", "HOME", "FLOTILLA_SERVABLE"]);
    }

    #[test]
    fn a_venv_is_activated_ahead_of_the_path() {
        let mut vars = BTreeMap::new();
        activate(
            &mut vars,
            Path::new("/cache/envs/k"),
            Some(OsString::from("/usr/bin:/bin")),
        );
        assert_eq!(vars["VIRTUAL_ENV"], "/cache/envs/k");
        assert_eq!(vars["PATH"], "/cache/envs/k/bin:/usr/bin:/bin");
    }

    #[test]
    fn working_dirs_stay_inside_the_files() {
        assert!(inside("model") && inside("a/b") && inside("."));
        assert!(!inside("/") && !inside("../x") && !inside("a/../../b"));
    }
}
