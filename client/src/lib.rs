//! A blocking Rust client for a Flotilla daemon.
//!
//! The client speaks the daemon's API ([`flotilla_protocol::client`]) over
//! the daemon's ipc socket when it can reach it, else over the daemon's TCP
//! client API (named in the contact file, e.g. the shared directory's copy
//! on a compute node) with a token from `FLOTILLA_TOKEN` or the state
//! directory's `token` file: handshake and sealed frames, see [`tcp`]. One
//! [`Client`] is one connection; every call is a single request/reply round
//! trip, including synchronous runs, which the daemon answers when the task
//! has finished.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use flotilla_client::{Client, json_to_payload};
//! let client = Client::connect_default()?;
//! let view = client.run("echo", json_to_payload(&serde_json::json!({"x": 1}))?, None)?;
//! println!("{:?}", view.outcome);
//! # Ok(()) }
//! ```

mod convert;
pub mod split;
mod tcp;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_protocol::client::{
    ApiError, ClientCall, ClientReply, DaemonStatus, EventView, MemoStats, SearchQuery,
    ServableSummary, TaskRequest,
};
use flotilla_protocol::servable::ServableRecord;
use flotilla_protocol::task::{TaskState, TaskView};
use flotilla_protocol::{
    DEFAULT_MAX_FRAME_BYTES, FrameError, Payload, TaskId, decode, encode, encode_to, encoded_len,
    paths,
};
use nng::options::{Options, RecvMaxSize, RecvTimeout, SendTimeout};
use nng::{Protocol, Socket};

pub use convert::{ConvertError, json_to_payload, payload_to_json};

/// Time allowed for a daemon to answer a call that does not wait for tasks.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time allowed beyond a call's own wait for the reply to arrive.
const WAIT_MARGIN: Duration = Duration::from_secs(10);

/// A wait cut to the longest the daemon accepts, so no arithmetic on it
/// overflows (a caller's `Duration::MAX` means "as long as you can").
fn capped(wait: Duration) -> Duration {
    wait.min(Duration::from_millis(
        flotilla_protocol::client::MAX_WAIT_MS,
    ))
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the socket.
    #[error(
        "no daemon is running at {path} ({source}); start one with `flotilla daemon`, or set {home} to the state directory of a running one",
        home = flotilla_protocol::launch::HOME_ENV
    )]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// nng's error.
        source: nng::Error,
    },
    /// The daemon's TCP client API could not be reached.
    #[error("no daemon answers at {url} ({source})")]
    UnreachableTcp {
        /// The address dialled.
        url: String,
        /// nng's error.
        source: nng::Error,
    },
    /// The ipc socket is out of reach and the daemon takes TCP clients, but
    /// this client has no token.
    #[error(
        "the daemon's socket is not reachable from here, and its TCP client API ({url}) needs a token: set {env} or put one (mode 0600) in {path}; `flotilla token create` on the daemon's host makes one",
        env = flotilla_protocol::token::TOKEN_ENV,
        path = path.display()
    )]
    NoToken {
        /// The TCP endpoint.
        url: String,
        /// The token file looked for.
        path: PathBuf,
    },
    /// The token given cannot be used.
    #[error("the token in {from}: {message}")]
    BadToken {
        /// Where it came from.
        from: String,
        /// What is wrong.
        message: String,
    },
    /// The daemon refused the token (unknown, expired, revoked).
    #[error("the daemon refused the token: {0}")]
    TokenRefused(String),
    /// The TCP handshake or sealing failed.
    #[error("secure connection to the daemon failed: {0}")]
    Handshake(String),
    /// Neither [`flotilla_protocol::launch::HOME_ENV`] nor HOME is set.
    #[error("cannot find the daemon: set {home} (or HOME)", home = flotilla_protocol::launch::HOME_ENV)]
    NoStateDir,
    /// The daemon did not answer in time.
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed mid-call.
    #[error("connection to the daemon failed: {0}")]
    Transport(nng::Error),
    /// The reply could not be understood (or the request not encoded).
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// The daemon refused the call.
    #[error("the daemon refused the request: {0}")]
    Refused(ApiError),
    /// The daemon answered with a reply of the wrong kind.
    #[error("unexpected reply from the daemon: {0}")]
    Unexpected(String),
    /// The request is larger than the daemon accepts: it was not sent (the
    /// daemon would drop it unanswered).
    #[error("{what} exceeds the daemon's frame limit of {limit} bytes ([daemon] max_frame_bytes)")]
    TooLarge {
        /// What is too large, with its size (`input of N bytes`).
        what: String,
        /// The daemon's limit.
        limit: usize,
    },
    /// A submission cut into several requests (it was over the frame
    /// limit) failed part way: the tasks of the requests before are
    /// submitted, and run.
    #[error("{} of the tasks were submitted before the rest failed: {source}", submitted.len())]
    PartlySubmitted {
        /// The ids of the tasks submitted, in the order given.
        submitted: Vec<TaskId>,
        /// Why the rest were not.
        source: Box<ClientError>,
    },
}

impl ClientError {
    /// True when the daemon could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::UnreachableTcp { .. }
                | ClientError::NoToken { .. }
                | ClientError::NoStateDir
                | ClientError::Timeout(_)
                | ClientError::Transport(_)
        )
    }
}

/// How a client reaches its daemon.
#[derive(Debug)]
enum Link {
    /// The ipc socket (same host, same user).
    Ipc(Socket),
    /// The TCP client API, sealed (another host, a token).
    Tcp(Box<std::sync::Mutex<tcp::TcpLink>>),
}

/// A connection to one daemon.
#[derive(Debug)]
pub struct Client {
    link: Link,
    state_dir: PathBuf,
    /// The daemon's frame limit: no larger request is sent.
    max_frame_bytes: usize,
}

/// The daemon's frame limit, from its contact file (the default when the
/// file does not say, or cannot be read: the call itself then reports why).
fn daemon_frame_limit(state_dir: &Path) -> usize {
    std::fs::read_to_string(paths::info_file(state_dir))
        .ok()
        .and_then(|text| flotilla_protocol::launch::DaemonInfo::from_toml(&text).ok())
        .and_then(|info| info.max_frame_bytes)
        .and_then(|limit| usize::try_from(limit).ok())
        .unwrap_or(DEFAULT_MAX_FRAME_BYTES)
}

/// `call`'s frame (`len` bytes, from [`encoded_len`]) encoded straight
/// into the message that carries it: a submission of large inputs is
/// written once, not encoded and then copied.
fn message_of(call: &ClientCall, len: usize) -> Result<nng::Message, FrameError> {
    let mut message = nng::Message::with_capacity(len);
    let mut out = std::io::BufWriter::with_capacity(8 << 10, &mut message);
    encode_to(&mut out, call)?;
    std::io::Write::flush(&mut out).map_err(|e| FrameError::Encode(e.to_string()))?;
    drop(out);
    Ok(message)
}

/// What a request of `size` encoded bytes that is too large holds, in
/// words: the input, when it is one task's.
fn too_large(call: &ClientCall, size: usize) -> String {
    match call {
        ClientCall::Submit { tasks, .. } if tasks.len() == 1 => {
            format!("input of {} bytes", tasks[0].input.len())
        }
        ClientCall::Submit { tasks, .. } => {
            format!("request of {size} bytes ({} tasks)", tasks.len())
        }
        _ => format!("request of {size} bytes"),
    }
}

impl Client {
    /// Connects to the daemon of the default state directory
    /// (`$FLOTILLA_HOME`, else `~/.flotilla`).
    pub fn connect_default() -> Result<Client, ClientError> {
        let dir = paths::default_state_dir().ok_or(ClientError::NoStateDir)?;
        Client::connect(&dir)
    }

    /// Connects to the daemon owning `state_dir`: its ipc socket when that
    /// answers, else its TCP client API if the contact file there names one
    /// (with a token from `FLOTILLA_TOKEN` or `state_dir/token`).
    pub fn connect(state_dir: &Path) -> Result<Client, ClientError> {
        let ipc_error = match Client::connect_ipc(state_dir) {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        let Some(endpoint) = tcp::endpoint(state_dir)? else {
            return Err(ipc_error);
        };
        let max_frame_bytes = daemon_frame_limit(state_dir);
        let link = tcp::TcpLink::connect(endpoint, max_frame_bytes)?;
        Ok(Client {
            link: Link::Tcp(Box::new(std::sync::Mutex::new(link))),
            state_dir: state_dir.to_path_buf(),
            max_frame_bytes,
        })
    }

    /// True when this client talks to its daemon over TCP (with a token).
    pub fn is_tcp(&self) -> bool {
        matches!(self.link, Link::Tcp(_))
    }

    /// Connects through the ipc socket of `state_dir` only.
    fn connect_ipc(state_dir: &Path) -> Result<Client, ClientError> {
        let path = paths::api_socket(state_dir);
        let unreachable = |source| ClientError::Unreachable {
            path: path.clone(),
            source,
        };
        let socket = Socket::new(Protocol::Req0).map_err(unreachable)?;
        // A held request (a synchronous run) must never be re-sent by REQ's
        // retry timer: that would submit the task twice.
        socket
            .set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
            .map_err(unreachable)?;
        let max_frame_bytes = daemon_frame_limit(state_dir);
        socket
            .set_opt::<RecvMaxSize>(max_frame_bytes.max(DEFAULT_MAX_FRAME_BYTES))
            .map_err(unreachable)?;
        socket
            .set_opt::<SendTimeout>(Some(DEFAULT_CALL_TIMEOUT))
            .map_err(unreachable)?;
        socket
            .dial(&paths::api_url(state_dir))
            .map_err(unreachable)?;
        Ok(Client {
            link: Link::Ipc(socket),
            state_dir: state_dir.to_path_buf(),
            max_frame_bytes,
        })
    }

    /// The state directory this client talks to.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// One round trip: sends `call`, waits up to `timeout` for the reply.
    /// A refusal ([`ClientReply::Error`]) comes back as [`ClientError::Refused`].
    pub fn call(&self, call: &ClientCall, timeout: Duration) -> Result<ClientReply, ClientError> {
        let len = encoded_len(call)?;
        if len > self.max_frame_bytes {
            return Err(ClientError::TooLarge {
                what: too_large(call, len),
                limit: self.max_frame_bytes,
            });
        }
        let limit = self.max_frame_bytes.max(DEFAULT_MAX_FRAME_BYTES);
        // Each reply is decoded from the message it arrived in.
        let reply = match &self.link {
            Link::Ipc(socket) => {
                socket
                    .set_opt::<RecvTimeout>(Some(timeout))
                    .map_err(ClientError::Transport)?;
                socket
                    .send(message_of(call, len)?)
                    .map_err(|(_, e)| self.transport_error(e, timeout))?;
                let message = socket
                    .recv()
                    .map_err(|e| self.transport_error(e, timeout))?;
                decode::<ClientReply>(&message, limit)?
            }
            Link::Tcp(link) => {
                let message = link
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .round_trip(&encode(call)?, timeout)?;
                decode::<ClientReply>(&message, limit)?
            }
        };
        match reply {
            ClientReply::Error(e) => Err(ClientError::Refused(e)),
            other => Ok(other),
        }
    }

    fn transport_error(&self, e: nng::Error, timeout: Duration) -> ClientError {
        match e {
            nng::Error::TimedOut => ClientError::Timeout(timeout),
            other => ClientError::Transport(other),
        }
    }

    /// Checks the daemon answers; returns its pid.
    pub fn ping(&self) -> Result<u32, ClientError> {
        match self.call(&ClientCall::Ping, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Pong { pid, .. } => Ok(pid),
            other => Err(unexpected(&other)),
        }
    }

    /// Submits tasks; returns their ids, in order, once they are durable.
    /// Tasks that together exceed the daemon's frame limit go in several
    /// requests ([`split`]); if one fails after others succeeded, the
    /// error is [`ClientError::PartlySubmitted`] with the ids submitted.
    pub fn submit(&self, tasks: Vec<TaskRequest>) -> Result<Vec<TaskId>, ClientError> {
        let n = tasks.len();
        let frames = split::frames(tasks, self.max_frame_bytes, split::envelope(None));
        let mut ids = Vec::with_capacity(n);
        for tasks in frames {
            match self.submit_frame(tasks) {
                Ok(more) => ids.extend(more),
                Err(e) if ids.is_empty() => return Err(e),
                Err(e) => {
                    return Err(ClientError::PartlySubmitted {
                        submitted: ids,
                        source: Box::new(e),
                    });
                }
            }
        }
        Ok(ids)
    }

    /// Submits tasks in one request.
    fn submit_frame(&self, tasks: Vec<TaskRequest>) -> Result<Vec<TaskId>, ClientError> {
        match self.call(
            &ClientCall::Submit {
                tasks,
                wait_ms: None,
            },
            DEFAULT_CALL_TIMEOUT,
        )? {
            ClientReply::Submitted { ids } => Ok(ids),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs one task synchronously: returns when it is final, or with its
    /// current state once `wait` (default: one day) passes.
    pub fn run(
        &self,
        servable: &str,
        input: Payload,
        wait: Option<Duration>,
    ) -> Result<TaskView, ClientError> {
        self.run_with_params(servable, input, Payload::new(), wait)
    }

    /// [`Client::run`] with msgpack parameters.
    pub fn run_with_params(
        &self,
        servable: &str,
        input: Payload,
        params: Payload,
        wait: Option<Duration>,
    ) -> Result<TaskView, ClientError> {
        let wait = capped(wait.unwrap_or(Duration::from_secs(86_400)));
        let call = ClientCall::Submit {
            tasks: vec![TaskRequest {
                servable: servable.to_owned(),
                input,
                params,
            }],
            wait_ms: Some(wait.as_millis() as u64),
        };
        match self.call(&call, wait + WAIT_MARGIN)? {
            ClientReply::Results { mut tasks } if tasks.len() == 1 => Ok(tasks.remove(0)),
            other => Err(unexpected(&other)),
        }
    }

    /// Submits `tasks` and waits for all of them in one round trip: returns
    /// when every task is final, or with current states once `wait` passes.
    /// Tasks over the daemon's frame limit together are submitted in
    /// several requests ([`Client::submit`]) and then waited for.
    pub fn run_all(
        &self,
        tasks: Vec<TaskRequest>,
        wait: Duration,
    ) -> Result<Vec<TaskView>, ClientError> {
        let wait = capped(wait);
        let bytes = split::envelope(Some(wait.as_millis() as u64))
            + tasks.iter().map(split::task_bytes).sum::<usize>();
        if bytes > self.max_frame_bytes && tasks.len() > 1 {
            let ids = self.submit(tasks)?;
            return self.results(&ids, Some(wait));
        }
        let call = ClientCall::Submit {
            tasks,
            wait_ms: Some(wait.as_millis() as u64),
        };
        match self.call(&call, wait + WAIT_MARGIN)? {
            ClientReply::Results { tasks } => Ok(tasks),
            other => Err(unexpected(&other)),
        }
    }

    /// Results of `ids`; with `wait`, blocks until all are final or the wait
    /// passes.
    pub fn results(
        &self,
        ids: &[TaskId],
        wait: Option<Duration>,
    ) -> Result<Vec<TaskView>, ClientError> {
        let wait = wait.map(capped);
        let call = ClientCall::Results {
            ids: ids.to_vec(),
            wait_ms: wait.map(|w| w.as_millis() as u64),
        };
        let timeout = wait.map_or(DEFAULT_CALL_TIMEOUT, |w| w + WAIT_MARGIN);
        match self.call(&call, timeout)? {
            ClientReply::Results { tasks } => Ok(tasks),
            other => Err(unexpected(&other)),
        }
    }

    /// State of `ids`, without outputs.
    pub fn task_status(&self, ids: &[TaskId]) -> Result<Vec<TaskView>, ClientError> {
        match self.call(
            &ClientCall::TaskStatus { ids: ids.to_vec() },
            DEFAULT_CALL_TIMEOUT,
        )? {
            ClientReply::TaskStatus { tasks } => Ok(tasks),
            other => Err(unexpected(&other)),
        }
    }

    /// The daemon's state.
    pub fn status(&self) -> Result<DaemonStatus, ClientError> {
        match self.call(&ClientCall::DaemonStatus, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::DaemonStatus(s) => Ok(*s),
            other => Err(unexpected(&other)),
        }
    }

    /// Cancels `ids`; returns each task's state afterwards.
    pub fn cancel(&self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskState)>, ClientError> {
        match self.call(
            &ClientCall::Cancel { ids: ids.to_vec() },
            DEFAULT_CALL_TIMEOUT,
        )? {
            ClientReply::Cancelled { tasks } => Ok(tasks),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the daemon to shut down gracefully. A daemon with nothing left
    /// to do closes its socket at once, which can reset the connection
    /// before its answer is read: that counts as stopping too (callers wait
    /// for the process to end in any case).
    pub fn stop(&self) -> Result<(), ClientError> {
        match self.call(&ClientCall::Stop, DEFAULT_CALL_TIMEOUT) {
            Ok(ClientReply::Stopping) => Ok(()),
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::Transport(
                nng::Error::ConnectionReset
                | nng::Error::ConnectionAborted
                | nng::Error::ConnectionShutdown,
            )) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Client {
    /// Publishes a servable version whose files are already in the object
    /// store; returns its id and whether it is new.
    pub fn publish(&self, record: ServableRecord) -> Result<(String, bool), ClientError> {
        let call = ClientCall::Publish {
            record: Box::new(record),
        };
        match self.call(&call, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Published { id, created } => Ok((id, created)),
            other => Err(unexpected(&other)),
        }
    }

    /// Changes who may see and invoke servable `name` (every version; its
    /// owner only). Returns the access now in force.
    pub fn set_servable_access(
        &self,
        name: &str,
        access: flotilla_protocol::access::Access,
    ) -> Result<flotilla_protocol::access::Access, ClientError> {
        let call = ClientCall::SetServableAccess {
            name: name.to_owned(),
            access,
        };
        match self.call(&call, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Access { access, .. } => Ok(access),
            other => Err(unexpected(&other)),
        }
    }

    /// The latest version of every published servable.
    pub fn list_servables(&self) -> Result<Vec<ServableSummary>, ClientError> {
        match self.call(&ClientCall::ListServables, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Servables { servables } => Ok(servables),
            other => Err(unexpected(&other)),
        }
    }

    /// One servable version: `NAME` (latest) or `NAME@VERSION`.
    pub fn show_servable(&self, name: &str) -> Result<ServableRecord, ClientError> {
        let call = ClientCall::ShowServable {
            name: name.to_owned(),
        };
        match self.call(&call, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Servable(record) => Ok(*record),
            other => Err(unexpected(&other)),
        }
    }

    /// Versions of a servable, oldest first.
    pub fn servable_versions(&self, name: &str) -> Result<Vec<String>, ClientError> {
        let call = ClientCall::ServableVersions {
            name: name.to_owned(),
        };
        match self.call(&call, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Versions { versions } => Ok(versions),
            other => Err(unexpected(&other)),
        }
    }

    /// Searches the catalog, best match first.
    pub fn search_servables(
        &self,
        query: SearchQuery,
    ) -> Result<Vec<ServableSummary>, ClientError> {
        match self.call(&ClientCall::SearchServables(query), DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Servables { servables } => Ok(servables),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes `NAME@VERSION` from the catalog.
    pub fn remove_servable(&self, id: &str) -> Result<String, ClientError> {
        let call = ClientCall::RemoveServable { id: id.to_owned() };
        match self.call(&call, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Removed { id } => Ok(id),
            other => Err(unexpected(&other)),
        }
    }
}

impl Client {
    /// Block and worker events after sequence number `after`, oldest
    /// first; with `wait`, blocks until there is one or the wait passes.
    pub fn events(
        &self,
        after: u64,
        wait: Option<Duration>,
    ) -> Result<Vec<EventView>, ClientError> {
        let wait = wait.map(capped);
        let call = ClientCall::Events {
            after,
            wait_ms: wait.map(|w| w.as_millis() as u64),
        };
        let limit = wait.unwrap_or_default() + DEFAULT_CALL_TIMEOUT;
        match self.call(&call, limit)? {
            ClientReply::Events { events } => Ok(events),
            other => Err(unexpected(&other)),
        }
    }

    /// Warms `servable` in `slots` slots ahead of a known burst; returns
    /// its canonical name and the slots that hold it warm or warm it now.
    pub fn warm_servable(&self, servable: &str, slots: u32) -> Result<(String, u32), ClientError> {
        let call = ClientCall::WarmServable {
            servable: servable.to_owned(),
            slots,
        };
        match self.call(&call, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::Warming { servable, slots } => Ok((servable, slots)),
            other => Err(unexpected(&other)),
        }
    }

    /// Lets a pool paused after failed blocks start blocks again.
    pub fn resume_pool(&self, name: &str) -> Result<(), ClientError> {
        let call = ClientCall::ResumePool {
            name: name.to_owned(),
        };
        match self.call(&call, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::PoolResumed { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The memo store's size, bounds and counters.
    pub fn memo_stats(&self) -> Result<MemoStats, ClientError> {
        match self.call(&ClientCall::MemoStats, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::MemoStats(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Drops memo entries (of one servable, every version, or all);
    /// returns how many.
    pub fn memo_clear(&self, servable: Option<&str>) -> Result<u64, ClientError> {
        let call = ClientCall::MemoClear {
            servable: servable.map(str::to_owned),
        };
        match self.call(&call, DEFAULT_CALL_TIMEOUT)? {
            ClientReply::MemoCleared { removed } => Ok(removed),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &ClientReply) -> ClientError {
    let text = format!("{reply:?}");
    ClientError::Unexpected(text.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_wait_is_the_daemons_and_adding_a_margin_cannot_overflow() {
        let longest = Duration::from_millis(flotilla_protocol::client::MAX_WAIT_MS);
        assert_eq!(capped(Duration::MAX), longest);
        assert_eq!(capped(Duration::from_secs(5)), Duration::from_secs(5));
        assert!(capped(Duration::MAX).checked_add(WAIT_MARGIN).is_some());
        assert!(u64::try_from(capped(Duration::MAX).as_millis()).is_ok());
    }

    /// A state directory whose contact file says `limit`; no daemon.
    fn state_dir_with_limit(limit: Option<u64>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let info = flotilla_protocol::launch::DaemonInfo {
            pid: 1,
            api: paths::api_url(dir.path()),
            interchange_address: "127.0.0.1".into(),
            interchange_port: 1,
            max_frame_bytes: limit,
            shared_dir: None,
            client_address: None,
            client_port: None,
        };
        std::fs::write(paths::info_file(dir.path()), info.to_toml().unwrap()).unwrap();
        dir
    }

    #[test]
    fn an_input_over_the_daemons_limit_is_refused_before_it_is_sent() {
        let dir = state_dir_with_limit(Some(10_000));
        // Something to connect to, that never answers: nothing must reach it.
        let daemon = Socket::new(Protocol::Rep0).unwrap();
        daemon.listen(&paths::api_url(dir.path())).unwrap();
        let client = Client::connect(dir.path()).unwrap();
        let err = client
            .run("echo", Payload::from(vec![0u8; 20_000]), None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "input of 20000 bytes exceeds the daemon's frame limit of 10000 bytes ([daemon] max_frame_bytes)"
        );
        assert!(!err.is_unreachable());
        // In a submission of several, a task too large for any request is
        // refused, and (first here) nothing is sent.
        let many = [20_000, 4_000, 4_000]
            .into_iter()
            .map(|n| TaskRequest {
                servable: "echo".into(),
                input: Payload::from(vec![0u8; n]),
                params: Payload::new(),
            })
            .collect();
        let err = client.submit(many).unwrap_err();
        assert!(
            matches!(&err, ClientError::TooLarge { what, limit: 10_000 } if what == "input of 20000 bytes"),
            "{err}"
        );
    }

    #[test]
    fn without_a_contact_file_the_default_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(daemon_frame_limit(dir.path()), DEFAULT_MAX_FRAME_BYTES);
        let dir = state_dir_with_limit(None);
        assert_eq!(daemon_frame_limit(dir.path()), DEFAULT_MAX_FRAME_BYTES);
        let dir = state_dir_with_limit(Some(1 << 27));
        assert_eq!(daemon_frame_limit(dir.path()), 1 << 27);
    }
}
