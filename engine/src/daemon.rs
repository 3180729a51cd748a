//! The daemon process: wires sockets, store, provider and signals to the
//! scheduling core and carries out its actions.
//!
//! The [`Core`] lives in a [`Hub`]: nng callbacks decode frames and post
//! [`Event`]s, the store writer and the provider thread post their reports,
//! and a small tokio loop posts timer ticks and [`Event::Shutdown`] on
//! SIGTERM/SIGINT. Each event is handled on the thread that posted it (see
//! `hub.rs`), and the resulting [`Action`]s are carried out there: encode and
//! send replies, queue store writes, start and cancel blocks.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use flotilla_protocol::client::{ApiError, ApiErrorKind, ClientCall, ClientReply};

use crate::identity::Identities;
use flotilla_protocol::interchange::{DaemonMessage, WorkerMessage};
use flotilla_protocol::{FrameError, decode, decode_shared, encode};

use crate::clock::now_us;
use crate::config::{Config, PoolConfig, ProviderKind};
use crate::core::{Action, BlockPolicy, Core, CoreConfig, Event, ReplyTo};
use crate::hub::{ActionRunner, Driver, Hub};
use crate::launch::BlockTemplate;
use crate::net::{Inbound, PeerLimits, RepServer, Verdict};
use crate::object_server::{ChunkRequest, ObjectServer};
use crate::provider_runner::ProviderRunner;
use crate::state_dir::{DaemonInfo, StateDir, StateDirError, StateLock};
use crate::store::{ChunkIndex, Store, StoreError, StoreWriter, WriterReport};

/// Most requests held at once on each socket (long-polls and waiting runs).
const MAX_HELD_REQUESTS: usize = 100_000;
/// File descriptors kept free of worker connections, for the client API,
/// the store, block scripts and nng itself.
pub const FD_RESERVE: u64 = 256;
/// Resolution of heartbeats, wait deadlines and shutdown grace.
const TICK: Duration = Duration::from_millis(50);
/// Longest shutdown waits for the store's last writes.
const FINAL_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// State directory, pid file or secret.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// `[interchange] address` cannot be used on this machine.
    #[error(transparent)]
    Address(#[from] crate::advertise::AdvertiseError),
    /// The store's last writes did not finish at shutdown.
    #[error(
        "the store did not finish its last writes within {limit_s} s of shutdown; requests that waited on them were answered with an error"
    )]
    UnfinishedWrites {
        /// The limit, in seconds.
        limit_s: u64,
    },
    /// `[daemon] api_group` cannot be used.
    #[error("{0}")]
    ApiGroup(String),
    /// `[metrics] listen` cannot be listened on.
    #[error("[metrics] listen = \"{address}\": cannot listen there: {source}")]
    Metrics {
        /// The address.
        address: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Threads, runtime or signals.
    #[error("{what}: {source}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { what, source }
}

/// Most threads the daemon checks a large submission's inputs with
/// (rayon's pool, `servable::first_mismatch`): a login node's cores are
/// shared by many users, and 8 check 64 images as nested lists in about
/// 0.1 ms.
const MAX_CHECK_THREADS: usize = 8;

/// Runs a daemon until it is stopped (SIGTERM, SIGINT or `flotilla stop`).
/// Blocks the calling thread.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Fails only when the pool is already set up (a second daemon in one
    // process, as some tests run), which then serves as it is.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(cores.min(MAX_CHECK_THREADS))
        .thread_name(|i| format!("flotilla-check-{i}"))
        .build_global();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start the runtime"))?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), DaemonError> {
    let dir = StateDir::resolve(
        config.daemon.state_dir.as_deref(),
        config.daemon.shared_dir.as_deref(),
    )?;
    dir.create()?;
    // Nothing in the directory is judged or touched before this: a second
    // daemon must fail here without disturbing the one that owns it.
    let _owner = StateLock::acquire(&dir)?;
    // We own the directory now: leftovers of a crashed daemon are stale.
    let _ = std::fs::remove_file(dir.api_socket());
    let _ = std::fs::remove_file(dir.info_file());
    dir.check_shared_owner();
    let pools = config.pool_configs();
    let elsewhere = pools
        .iter()
        .any(|p| blocks_run_elsewhere(&config.with_pool(p)));
    crate::fs_check::warn_about_layout(&dir, elsewhere);
    dir.create_objects()?;
    let secret = dir.load_or_create_secret()?;

    let store = Store::open(&dir.store())?;
    let (recovered, index) = store.recover_indexed()?;
    let recovered_tasks = recovered.tasks.len();

    let hub: Arc<Hub<Io>> = Arc::new(Hub::default());
    let writer = spawn_writer(&hub, store, index)?;
    let flush_times = writer.flush_times();
    let metrics_listener = match config.metrics.listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| DaemonError::Metrics { address, source })?,
        ),
        None => None,
    };
    let max_pipes = interchange_pipe_limit(raise_open_file_limit());
    let object_link = ObjectLink::default();
    let sockets = open_sockets(&config, &dir, &hub, max_pipes, &object_link)?;
    // Held here for the daemon's life; the interchange's handler holds only
    // a weak link, so the server and this thread do not keep each other.
    let object_server = spawn_object_server(&dir, &sockets.interchange)?;
    let _ = object_link.set(Arc::downgrade(&object_server));
    let mut pool_io = BTreeMap::new();
    for pool in &pools {
        let pool_config = config.with_pool(pool);
        let provider = spawn_provider(&pool_config, &hub)?;
        let template = BlockTemplate::new(
            &pool_config,
            &dir,
            &sockets.addresses,
            sockets.port,
            &secret,
        );
        let place = crate::block_runs::Place::of(&pool_config);
        pool_io.insert(
            pool.name.clone(),
            PoolIo {
                provider,
                template,
                place,
            },
        );
    }
    let seed = crate::entropy::random_seed().map_err(io("/dev/urandom"))?;
    let core_config = core_config(&config, secret, seed, sockets.interchange_url.clone());
    let core = Core::new(core_config, recovered, now_us());

    dir.write_info(&DaemonInfo {
        pid: std::process::id(),
        api: dir.api_url(),
        interchange_address: sockets.addresses.clone(),
        interchange_port: sockets.port,
        max_frame_bytes: Some(config.daemon.max_frame_bytes as u64),
        shared_dir: Some(dir.shared_root().to_path_buf()),
        client_address: sockets.client_tcp.as_ref().map(|c| c.addresses.clone()),
        client_port: sockets.client_tcp.as_ref().map(|c| c.port),
    })?;
    tracing::info!(
        state_dir = %dir.root().display(),
        shared_dir = %dir.shared_root().display(),
        api = %dir.api_url(),
        interchange = %sockets.interchange_url,
        recovered_tasks,
        "daemon ready"
    );

    let signals = Signals::install()?;
    let io = Io {
        api: sockets.api.clone(),
        interchange: sockets.interchange.clone(),
        client_tcp: sockets
            .client_tcp
            .as_ref()
            .map(|c| (c.server.clone(), c.gate.clone())),
        writer,
        pools: pool_io,
        state_dir: dir.root().to_path_buf(),
    };
    let (driver, exit_now) = Driver::new(core, io);
    hub.install(driver);
    if let Some(listener) = metrics_listener {
        serve_metrics(listener, &hub, flush_times);
    }
    if !exit_now {
        run_until_exit(&hub, signals).await;
    }
    let outcome = shut_down(&hub, &sockets, &dir);
    drop(object_server);
    outcome
}

/// Starts answering scrapes on `listener` (`[metrics] listen`): each reads
/// the core's counts and status at one instant.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    hub: &Arc<Hub<Io>>,
    flush_times: crate::store_writer::FlushTimes,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(address = %address, "metrics endpoint listening (GET /metrics)");
    }
    let hub = hub.clone();
    let scrape: crate::metrics_http::Scrape = Arc::new(move || {
        let flushes = flush_times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match hub.inspect(|core| core.metrics(now_us())) {
            Some(snapshot) => crate::metrics::render(snapshot, flushes),
            None => String::new(),
        }
    });
    tokio::spawn(crate::metrics_http::serve(listener, scrape));
}

/// Whether blocks run on other nodes that read the shared directory: a
/// batch scheduler driven from this machine.
fn blocks_run_elsewhere(config: &Config) -> bool {
    use crate::config::{ChannelKind, ProviderKind};
    config.channel.kind == ChannelKind::Local
        && matches!(
            config.provider.kind,
            ProviderKind::Slurm | ProviderKind::Pbspro | ProviderKind::Cobalt
        )
}

/// Where the interchange's handler finds the object server once it runs.
type ObjectLink = Arc<OnceLock<Weak<ObjectServer>>>;

/// Starts the thread that answers workers' fetches of servable files from
/// the object store, replying through `interchange`.
fn spawn_object_server(
    dir: &StateDir,
    interchange: &RepServer,
) -> Result<Arc<ObjectServer>, DaemonError> {
    let interchange = interchange.clone();
    let server = ObjectServer::spawn(dir.objects(), move |receiver, message| {
        match encode(message) {
            Ok(bytes) => interchange.reply(receiver, &bytes, false),
            Err(e) => tracing::error!(error = %e, "cannot encode a servable file's chunk"),
        }
    })
    .map_err(io("cannot start the object reading thread"))?;
    Ok(Arc::new(server))
}

/// Starts the store writer; its reports become events.
fn spawn_writer(
    hub: &Arc<Hub<Io>>,
    store: Store,
    index: ChunkIndex,
) -> Result<StoreWriter, DaemonError> {
    let hub = hub.clone();
    StoreWriter::spawn(store, index, move |report| {
        hub.post(match report {
            WriterReport::Durable(seq) => Event::Durable { seq },
            WriterReport::Failed { through, reason } => Event::StoreFailed { through, reason },
            WriterReport::Recovered => Event::StoreRecovered,
        });
    })
    .map_err(io("cannot start the store writer"))
}

/// Starts a pool's provider thread (`config` is the pool's, as a site of
/// one pool); its block reports become events.
fn spawn_provider(config: &Config, hub: &Arc<Hub<Io>>) -> Result<ProviderRunner, DaemonError> {
    let provider = crate::provision::provider(config);
    let hub = hub.clone();
    ProviderRunner::spawn(
        &config.provider.pool,
        provider,
        Duration::from_secs_f64(config.provider.poll_interval_s),
        move |event| hub.post(Event::Block(event)),
    )
    .map_err(io("cannot start the provider thread"))
}

/// The TCP client API, when `[daemon] client_listen` asks for it.
struct ClientTcp {
    server: RepServer,
    gate: Arc<crate::client_gate::ClientGate>,
    /// Addresses clients dial (comma-separated).
    addresses: String,
    port: u16,
}

/// The daemon's listening sockets and where workers reach the interchange.
struct Sockets {
    api: RepServer,
    client_tcp: Option<ClientTcp>,
    interchange: RepServer,
    /// The interchange port (every advertised address has it).
    port: u16,
    /// Addresses advertised to workers (comma-separated).
    addresses: String,
    /// The interchange URLs, for status and logs.
    interchange_url: String,
}

/// Raises the soft limit on open files to the hard one (a worker
/// connection is a descriptor); returns the soft limit now in force.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return FD_RESERVE * 4;
        }
    };
    // "Unlimited" is refused above the kernel's own cap (fs.nr_open, a
    // million by default): ask for that much.
    let target = if hard == nix::sys::resource::RLIM_INFINITY {
        1 << 20
    } else {
        hard
    };
    if soft >= target {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            tracing::debug!(from = soft, to = target, "raised the open-file limit");
            target
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            soft
        }
    }
}

/// Worker connections the interchange may hold with `open_files`
/// descriptors, keeping [`FD_RESERVE`] for everything else.
fn interchange_pipe_limit(open_files: u64) -> usize {
    let limit = open_files.saturating_sub(FD_RESERVE).max(FD_RESERVE);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    tracing::info!(open_files, worker_connections = limit, "descriptor budget");
    limit
}

/// Opens the client API socket and the interchange on every planned
/// address; the interchange holds at most `max_pipes` connections.
fn open_sockets(
    config: &Config,
    dir: &StateDir,
    hub: &Arc<Hub<Io>>,
    max_pipes: usize,
    objects: &ObjectLink,
) -> Result<Sockets, DaemonError> {
    let max_frame = config.daemon.max_frame_bytes;
    let identities = Arc::new(Identities::new(nix::unistd::geteuid().as_raw()));
    let api = RepServer::new(
        "api",
        MAX_HELD_REQUESTS,
        PeerLimits::trusted(max_frame),
        Vec::new(),
        api_handler(hub.clone(), max_frame, identities.clone()),
    )?;
    open_api_socket(&api, dir, config.daemon.api_group.as_deref())?;
    // A part of a large request on a connection that is not registered
    // (the daemon restarted, or the connection was replaced): the worker
    // registers again and resends.
    let register_first = encode(&DaemonMessage::Reregister).unwrap_or_default();
    let interchange = RepServer::new(
        "interchange",
        MAX_HELD_REQUESTS,
        PeerLimits::interchange(max_frame, max_pipes),
        register_first.clone(),
        interchange_handler(hub.clone(), max_frame, objects.clone(), register_first),
    )?;
    let plan = crate::advertise::plan(
        &config.interchange.address.entries(),
        &config.interchange.bind,
        &crate::advertise::local_interfaces(),
        crate::advertise::resolve,
    )?;
    let remembered = dir.port_file();
    let port = listen_interchange(&interchange, &plan, config.interchange.port, &remembered)?;
    let addresses = plan.advertised();
    let client_tcp = match config.daemon.client_listen {
        Some(listen) => Some(open_client_tcp(
            dir,
            hub,
            max_frame,
            listen,
            &addresses,
            &identities,
        )?),
        None => None,
    };
    let interchange_url = plan
        .advertise
        .iter()
        .map(|e| format!("tcp://{}", e.with_port(port)))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Sockets {
        api,
        client_tcp,
        interchange,
        port,
        addresses,
        interchange_url,
    })
}

/// Listens on the ipc socket of the client API: mode 0600, or with
/// `[daemon] api_group`, mode 0660 and that group, so its members may call
/// as themselves.
fn open_api_socket(
    api: &RepServer,
    dir: &StateDir,
    api_group: Option<&str>,
) -> Result<(), DaemonError> {
    let Some(group) = api_group else {
        api.listen(&dir.api_url(), 0o600)?;
        return Ok(());
    };
    let gid = resolve_group(group)?;
    api.listen(&dir.api_url(), 0o660)?;
    let socket = dir.api_socket();
    nix::unistd::chown(&socket, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
        DaemonError::ApiGroup(format!(
            "[daemon] api_group = {group:?}: cannot give {} to group {gid}: {e}",
            socket.display()
        ))
    })?;
    tracing::info!(group, gid, socket = %socket.display(), "client API socket open to a group");
    Ok(())
}

/// The gid of `group`: a name in the group database, or a number.
fn resolve_group(group: &str) -> Result<u32, DaemonError> {
    let group = group.trim();
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(DaemonError::ApiGroup(format!(
            "[daemon] api_group = {group:?}: no such group on this host"
        ))),
        Err(e) => Err(DaemonError::ApiGroup(format!(
            "[daemon] api_group = {group:?}: cannot look it up: {e}"
        ))),
    }
}

/// Most connections the TCP client API holds.
const MAX_CLIENT_CONNECTIONS: usize = 4096;

/// Opens the TCP client API on `listen`: token handshake, sealed frames,
/// every call checked against its token (see [`crate::client_gate`]). With
/// an unspecified host, clients are told `interchange_addresses`.
fn open_client_tcp(
    dir: &StateDir,
    hub: &Arc<Hub<Io>>,
    max_frame: usize,
    listen: std::net::SocketAddr,
    interchange_addresses: &str,
    identities: &Arc<Identities>,
) -> Result<ClientTcp, DaemonError> {
    let seed = crate::entropy::random_seed().map_err(io("/dev/urandom"))?;
    let poster = hub.clone();
    let gate = Arc::new(crate::client_gate::ClientGate::new(
        crate::tokens::TokenCache::new(crate::tokens::TokenFile::new(dir.root())),
        &seed,
        max_frame,
        identities.clone(),
        Box::new(move |from, caller, call| {
            poster.post(Event::Client { from, caller, call });
        }),
    ));
    let handler_gate = gate.clone();
    let server = RepServer::new(
        "client-tcp",
        MAX_HELD_REQUESTS,
        PeerLimits::interchange(max_frame, MAX_CLIENT_CONNECTIONS),
        crate::client_gate::ClientGate::handshake_again(),
        Box::new(move |inbound| handler_gate.handle(inbound)),
    )?;
    let url = format!("tcp://{listen}");
    let port = server.listen(&url, 0)?.port;
    let addresses = if listen.ip().is_unspecified() {
        interchange_addresses.to_owned()
    } else {
        listen.ip().to_string()
    };
    tracing::info!(url = %url, advertised = %addresses, port, "TCP client API listening (token holders only)");
    Ok(ClientTcp {
        server,
        gate,
        addresses,
        port,
    })
}

/// How many ports the daemon tries when one the system picked on the first
/// address is taken on another.
const PORT_ATTEMPTS: usize = 16;

/// Listens on every address of `plan` with one port; returns it. With port
/// 0, the port of the last run if it is free (workers of blocks that
/// outlived a crash redial it), else one the system picks on the first
/// address; a picked port can be taken on another address (by an outgoing
/// connection's local end, say), and then the daemon tries another.
fn listen_interchange(
    interchange: &RepServer,
    plan: &crate::advertise::Plan,
    configured: u16,
    remembered: &std::path::Path,
) -> Result<u16, DaemonError> {
    let last = std::fs::read_to_string(remembered)
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok());
    let mut wanted = match (configured, last) {
        (0, Some(last)) => last,
        _ => configured,
    };
    let mut picked = 0;
    let port = loop {
        let error = match listen_everywhere(interchange, plan, wanted) {
            Ok(port) => break port,
            Err(e) => e,
        };
        if configured != 0 {
            return Err(error.into());
        }
        if wanted != 0 {
            tracing::warn!(port = wanted, error = %error, "the last run's interchange port is taken; workers from before cannot reconnect");
            wanted = 0;
            continue;
        }
        picked += 1;
        if picked >= PORT_ATTEMPTS {
            return Err(error.into());
        }
        tracing::debug!(error = %error, attempt = picked, "a picked interchange port is taken on another address; trying another");
    };
    if let Err(e) = std::fs::write(remembered, port.to_string()) {
        tracing::warn!(path = %remembered.display(), error = %e, "cannot remember the interchange port");
    }
    Ok(port)
}

/// Listens on every address of `plan` with `port` (0: the first address
/// picks one, the others share it, so every advertised address has the
/// same port). On failure nothing stays open.
fn listen_everywhere(
    interchange: &RepServer,
    plan: &crate::advertise::Plan,
    mut port: u16,
) -> Result<u16, crate::net::NetError> {
    let mut open = Vec::with_capacity(plan.listen.len());
    for ip in &plan.listen {
        match interchange.listen(&crate::advertise::listen_url(*ip, port), 0) {
            Ok(listening) => {
                port = listening.port;
                open.push(listening);
            }
            Err(e) => {
                open.into_iter().for_each(crate::net::Listening::close);
                return Err(e);
            }
        }
    }
    Ok(port)
}

/// The core's settings from the site file, in microseconds.
fn core_config(
    config: &Config,
    secret: Vec<u8>,
    handshake_seed: [u8; 32],
    interchange: String,
) -> CoreConfig {
    let micros = |s: f64| (s * 1e6) as u64;
    CoreConfig {
        heartbeat_period_us: micros(config.interchange.heartbeat_period_s),
        heartbeat_threshold_us: micros(config.interchange.heartbeat_threshold_s),
        shutdown_grace_us: micros(config.daemon.shutdown_grace_s),
        result_retention_us: micros(config.daemon.result_retention_s),
        unfetched_result_retention_us: micros(config.daemon.unfetched_result_retention_s),
        max_attempts: config.daemon.max_attempts,
        // A worker no pool started gets the widest margin any pool asks
        // for; the others get their own pool's.
        walltime_margin_us: config
            .pool_configs()
            .iter()
            .map(|p| micros(p.provider.walltime_margin_s))
            .max()
            .unwrap_or(0),
        recovery_grace_us: micros(config.daemon.recovery_grace_s),
        secret,
        handshake_seed,
        ciphers: flotilla_protocol::secure::Cipher::fast_here(),
        max_frame_bytes: config.daemon.max_frame_bytes,
        pools: config
            .pool_configs()
            .iter()
            .map(|p| block_policy(&config.with_pool(p), p))
            .collect(),
        pid: std::process::id(),
        release: env!("CARGO_PKG_VERSION").to_owned(),
        interchange,
        memo_max_entries: config.memo.max_entries,
        memo_max_bytes: config.memo.max_bytes,
        overrides: config.servables.clone(),
        owner_uid: nix::unistd::geteuid().as_raw(),
    }
}

/// The signals that stop the daemon.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        Ok(Signals {
            term: signal(tokio::signal::unix::SignalKind::terminate())?,
            int: signal(tokio::signal::unix::SignalKind::interrupt())?,
        })
    }
}

/// Posts timer ticks (regularly, and early when a batch's delay runs out)
/// and a shutdown on SIGTERM or SIGINT, until the core asks to exit.
async fn run_until_exit(hub: &Hub<Io>, mut signals: Signals) {
    let mut next_tick = tokio::time::Instant::now() + TICK;
    loop {
        let wake = hub
            .wake_at()
            .map(|at| {
                let wait = Duration::from_micros(at.saturating_sub(now_us()));
                tokio::time::Instant::now() + wait
            })
            .map_or(next_tick, |at| at.min(next_tick));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= next_tick {
                    next_tick = tokio::time::Instant::now() + TICK;
                }
                hub.post(Event::Tick);
            }
            () = hub.rearmed() => {}
            _ = signals.term.recv() => {
                tracing::info!(signal = "SIGTERM", "shutdown requested");
                hub.post(Event::Shutdown);
            }
            _ = signals.int.recv() => {
                tracing::info!(signal = "SIGINT", "shutdown requested");
                hub.post(Event::Shutdown);
            }
            () = hub.exited() => break,
        }
    }
}

/// Waits (bounded) for the store's last writes, releases the replies that
/// were waiting for them (or answers them with the store's error: nothing
/// is acknowledged that was not stored), lets nng deliver them, and closes
/// up.
fn shut_down(hub: &Hub<Io>, sockets: &Sockets, dir: &StateDir) -> Result<(), DaemonError> {
    let mut outcome = Ok(());
    if let Some(mut driver) = hub.take() {
        match driver.io.writer.sync(FINAL_WRITE_LIMIT) {
            Some(settled) => {
                // Reports posted while the hub was being taken are lost:
                // the barrier's answer carries them. A failure the core
                // heard of (it heard of writes after it) is settled.
                if let Some((through, reason)) = settled.failed
                    && through > driver.core.durable_seq()
                {
                    driver.handle(Event::StoreFailed { through, reason });
                }
                driver.handle(Event::Durable {
                    seq: settled.durable,
                });
            }
            None => {
                let limit_s = FINAL_WRITE_LIMIT.as_secs();
                tracing::error!(
                    limit_s,
                    "the store did not finish its last writes; exiting without them"
                );
                let through = driver.core.issued_seq();
                driver.handle(Event::StoreFailed {
                    through,
                    reason: format!(
                        "the store did not finish writing within {limit_s} s of shutdown"
                    ),
                });
                outcome = Err(DaemonError::UnfinishedWrites { limit_s });
            }
        }
        sockets.api.drain_sends(Duration::from_secs(1));
        sockets.interchange.drain_sends(Duration::from_secs(1));
        if let Some(c) = &sockets.client_tcp {
            c.server.drain_sends(Duration::from_secs(1));
        }
        drop(driver);
    }
    sockets.api.close();
    if let Some(c) = &sockets.client_tcp {
        c.server.close();
    }
    sockets.interchange.close();
    dir.remove_info(std::process::id());
    let _ = std::fs::remove_file(dir.api_socket());
    tracing::info!("daemon stopped");
    outcome
}

/// A pool's scaling and placement settings; `config` is the pool's, as a
/// site of one pool.
fn block_policy(config: &Config, pool: &PoolConfig) -> BlockPolicy {
    let micros = |s: f64| (s * 1e6) as u64;
    let p = &config.provider;
    BlockPolicy {
        pool: p.pool.clone(),
        provider: p.kind.as_str().to_owned(),
        init_blocks: p.init_blocks,
        min_blocks: p.min_blocks,
        max_blocks: p.max_blocks,
        max_failures: p.max_block_failures,
        workers_per_block: config.launcher.workers_per_node
            * match p.kind {
                // One launcher per pod, each on its own node.
                ProviderKind::Kubernetes => p.nodes_per_block,
                _ if config.launcher.kind.spans_nodes() => p.nodes_per_block,
                _ => 1,
            },
        slots_per_worker: (config.worker.slots > 0).then_some(config.worker.slots),
        parallelism: p.parallelism,
        strategy_period_us: micros(p.strategy_period_s),
        max_idle_us: micros(p.max_idle_s),
        min_lifetime_us: micros(p.min_block_lifetime_s),
        cooldown_us: micros(p.cooldown_s),
        connect_timeout_us: micros(p.block_connect_timeout_s),
        walltime_us: config
            .block_walltime_s()
            .map(|s| s.saturating_mul(1_000_000)),
        replace_ahead_us: micros(p.replace_ahead_s),
        max_queued: p.max_queued_blocks,
        queue_job_limit: p.queue_job_limit,
        retry_max_us: micros(p.submit_retry_max_s),
        labels: pool.labels.clone(),
        cost: pool.cost,
        accelerators_per_slot: accelerators_per_slot(config),
        walltime_margin_us: micros(p.walltime_margin_s),
    }
}

/// Accelerators each slot of a pool's workers holds, when its site file
/// says: `[worker] accelerators` shared among `slots` (one slot per
/// accelerator when slots are not set), else those a GPU block asks for.
fn accelerators_per_slot(config: &Config) -> Option<u32> {
    let listed = config.worker.accelerators.len() as u32;
    let devices = if listed > 0 {
        listed
    } else {
        config
            .provider
            .gpus_per_node
            .max(config.provider.kubernetes.gpus)
    };
    if devices == 0 {
        // None listed: workers may still find some; they say when they
        // register.
        return None;
    }
    let slots = if config.worker.slots > 0 {
        config.worker.slots
    } else {
        devices
    };
    Some(devices / slots.max(1))
}

fn signal(
    kind: tokio::signal::unix::SignalKind,
) -> Result<tokio::signal::unix::Signal, DaemonError> {
    tokio::signal::unix::signal(kind).map_err(io("cannot install a signal handler"))
}

/// The I/O side of the actions: sockets, store writer, provider thread.
#[derive(Debug)]
struct Io {
    api: RepServer,
    interchange: RepServer,
    /// The TCP client API's server and gate, if it listens.
    client_tcp: Option<(RepServer, Arc<crate::client_gate::ClientGate>)>,
    writer: StoreWriter,
    /// Each pool's provider thread and block template, by pool name.
    pools: BTreeMap<String, PoolIo>,
    /// The state directory, where blocks' run directories are noted.
    state_dir: std::path::PathBuf,
}

/// What starts, cancels and watches one pool's blocks.
#[derive(Debug)]
struct PoolIo {
    provider: ProviderRunner,
    template: BlockTemplate,
    /// Where its blocks' run directories are.
    place: crate::block_runs::Place,
}

impl Io {
    /// The pool `name`'s provider side; the core names only pools it was
    /// given, so a miss is logged, never acted on.
    fn pool(&self, name: &str, block: u32) -> Option<&PoolIo> {
        let found = self.pools.get(name);
        if found.is_none() {
            tracing::error!(
                pool = name,
                block,
                "an action for a pool this daemon does not have"
            );
        }
        found
    }
}

impl Io {
    /// Answers a client through the server its call came on (the TCP
    /// client API's receivers carry [`crate::client_gate::TCP_REPLY`]).
    fn reply_client(&self, to: ReplyTo, mut reply: ClientReply) {
        use crate::client_gate::TCP_REPLY;
        let (server, receiver) = if to.0 & TCP_REPLY != 0 {
            let Some((server, gate)) = &self.client_tcp else {
                tracing::error!(
                    receiver = to.0,
                    "a reply for the TCP client API, which is off"
                );
                return;
            };
            gate.filter_reply(to.0 & !TCP_REPLY, &mut reply);
            (server, to.0 & !TCP_REPLY)
        } else {
            (&self.api, to.0)
        };
        match server.reply_encoded(receiver, &reply, false) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a client reply");
                let fallback = ClientReply::Error(ApiError {
                    kind: ApiErrorKind::Unavailable,
                    message: format!("the daemon could not encode its reply: {e}"),
                });
                if let Ok(bytes) = encode(&fallback) {
                    server.reply(receiver, &bytes, false);
                }
            }
        }
    }
}

impl ActionRunner for Io {
    fn execute(&mut self, actions: &mut Vec<Action>) -> bool {
        let mut exit = false;
        for action in actions.drain(..) {
            match action {
                Action::ReplyClient { to, reply } => self.reply_client(to, reply),
                Action::ReplyWorker { to, message, close } => {
                    // The core welcomes only a worker that proved it
                    // knows the secret: its connection gets the
                    // registered limits.
                    if matches!(message, DaemonMessage::Welcome { .. }) {
                        self.interchange.register(to.0);
                    }
                    if let Err(e) = self.interchange.reply_encoded(to.0, &message, close) {
                        tracing::error!(error = %e, "cannot encode a worker reply");
                    }
                }
                Action::Secure { to, keys } => self.interchange.secure(
                    to.0,
                    flotilla_protocol::secure::Channel::new(
                        &keys,
                        flotilla_protocol::secure::Role::Daemon,
                    ),
                ),
                Action::ClosePipe { pipe } => self.interchange.close_pipe(pipe),
                Action::Persist { seq, op } => self.writer.submit(seq, op),
                Action::SubmitBlock { pool, block } => {
                    if let Some(p) = self.pool(&pool, block) {
                        match p.template.job(block) {
                            Ok(job) => {
                                let run = crate::block_runs::BlockRun {
                                    block,
                                    pool: pool.clone(),
                                    place: p.place.clone(),
                                    run_dir: job.run_dir.clone(),
                                };
                                if let Err(e) = crate::block_runs::record(&self.state_dir, &run) {
                                    tracing::warn!(block, error = %e, "cannot note where the block runs; `flotilla logs block` will not find it");
                                }
                                p.provider.submit(block, job);
                            }
                            Err(e) => {
                                tracing::error!(pool = %pool, block, error = %e, "cannot start block");
                                p.provider.refuse(block, e.to_string());
                            }
                        }
                    }
                }
                Action::CancelBlock { pool, block } => {
                    if let Some(p) = self.pool(&pool, block) {
                        p.provider.cancel(block);
                    }
                }
                Action::AdoptBlock { pool, block, job } => {
                    if let Some(p) = self.pool(&pool, block) {
                        p.provider.adopt(block, job);
                    }
                }
                Action::Exit => exit = true,
            }
        }
        exit
    }
}

/// The ipc socket's handler: each call goes to the core as made by the
/// connection's peer (its uid from the kernel; a peer whose credentials
/// cannot be read is [`crate::identity::NOBODY`]).
fn api_handler(
    hub: Arc<Hub<Io>>,
    max_frame: usize,
    identities: Arc<Identities>,
) -> crate::net::Handler {
    Box::new(move |inbound| match inbound {
        Inbound::Request {
            receiver,
            pipe,
            bytes,
            peer,
            ..
        } => match decode_shared::<ClientCall>(bytes, max_frame) {
            Ok(call) => {
                let caller = match peer {
                    Some(p) => identities.caller(p.uid, Some(p.gid)),
                    None => identities.caller(crate::identity::NOBODY, None),
                };
                hub.post(Event::Client {
                    from: ReplyTo(receiver),
                    caller,
                    call,
                });
                Verdict::Accept
            }
            Err(e) => {
                tracing::warn!(pipe = pipe.0, len = bytes.len(), error = %e, "dropping client: bad request frame");
                Verdict::Drop {
                    reply: rejection_reply(&e, |message| {
                        ClientReply::Error(ApiError {
                            kind: ApiErrorKind::BadRequest,
                            message,
                        })
                    }),
                }
            }
        },
        Inbound::PipeClosed(_) => Verdict::Accept,
    })
}

/// The interchange's handler: worker messages go to the core, except
/// fetches of servable files, which go to the object server (see
/// [`crate::object_server`] for why). `register_first` is the encoded
/// `Reregister`, the answer to a fetch on a connection that has not
/// registered.
fn interchange_handler(
    hub: Arc<Hub<Io>>,
    max_frame: usize,
    objects: ObjectLink,
    register_first: Vec<u8>,
) -> crate::net::Handler {
    Box::new(move |inbound| match inbound {
        Inbound::Request {
            receiver,
            pipe,
            registered,
            bytes,
            ..
        } => match decode::<WorkerMessage>(bytes, max_frame) {
            Ok(WorkerMessage::Fetch {
                object,
                offset,
                len,
            }) => {
                if !registered {
                    return Verdict::Reply(register_first.clone());
                }
                fetch_verdict(
                    &objects,
                    pipe,
                    ChunkRequest {
                        receiver,
                        object,
                        offset,
                        len,
                    },
                )
            }
            Ok(message) => {
                hub.post(Event::Worker {
                    from: ReplyTo(receiver),
                    pipe,
                    message,
                });
                Verdict::Accept
            }
            Err(e) => {
                tracing::warn!(pipe = pipe.0, len = bytes.len(), error = %e, "dropping worker: bad frame");
                Verdict::Drop {
                    reply: rejection_reply(&e, |reason| DaemonMessage::Refused { reason }),
                }
            }
        },
        Inbound::PipeClosed(pipe) => {
            hub.post(Event::PipeClosed { pipe });
            Verdict::Accept
        }
    })
}

/// What becomes of a registered worker's fetch: queued for the object
/// server, or, for a name that cannot be an object's, the peer dropped
/// (a worker built with this daemon only asks for hashes it was sent).
fn fetch_verdict(
    objects: &ObjectLink,
    pipe: crate::core::PipeId,
    request: ChunkRequest,
) -> Verdict {
    if !flotilla_protocol::objects::is_object_name(&request.object) {
        tracing::warn!(
            pipe = pipe.0,
            object = %flotilla_protocol::peer_text::shown(&request.object),
            "dropping worker: it asked for a file that is not an object name"
        );
        return Verdict::Drop { reply: None };
    }
    match objects.get().and_then(Weak::upgrade) {
        Some(server) => {
            server.serve(request);
            Verdict::Accept
        }
        None => {
            let unavailable = DaemonMessage::ObjectUnavailable {
                object: request.object,
                reason: "the daemon is not serving files now (starting or stopping)".into(),
            };
            match encode(&unavailable) {
                Ok(bytes) => Verdict::Reply(bytes),
                Err(_) => Verdict::Drop { reply: None },
            }
        }
    }
}

/// A last word for a peer speaking another protocol version, so it can say
/// which side to upgrade; garbage gets no reply.
fn rejection_reply<T: serde::Serialize>(
    error: &FrameError,
    make: impl FnOnce(String) -> T,
) -> Option<Vec<u8>> {
    match error {
        FrameError::VersionMismatch { .. } => encode(&make(error.to_string())).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};

    use super::*;
    use crate::advertise::Plan;
    use crate::net::Verdict;

    fn server() -> RepServer {
        RepServer::new(
            "test",
            64,
            crate::net::PeerLimits::trusted(1 << 20),
            Vec::new(),
            Box::new(|_| Verdict::Drop { reply: None }),
        )
        .expect("an nng socket")
    }

    /// Two loopback addresses: Linux answers on all of 127/8.
    fn two_addresses() -> Plan {
        Plan {
            advertise: Vec::new(),
            listen: vec![
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            ],
        }
    }

    #[test]
    fn a_port_taken_on_a_later_address_closes_the_earlier_ones_and_another_port_is_used() {
        let taken = TcpListener::bind("127.0.0.2:0").expect("a port on 127.0.0.2");
        let port = taken.local_addr().expect("its address").port();
        let server = server();

        assert!(listen_everywhere(&server, &two_addresses(), port).is_err());
        TcpListener::bind(("127.0.0.1", port))
            .expect("the listener on the first address was closed again");

        let dir = tempfile::tempdir().expect("a temp dir");
        let remembered = dir.path().join("interchange.port");
        std::fs::write(&remembered, port.to_string()).expect("the last run's port");
        let chosen = listen_interchange(&server, &two_addresses(), 0, &remembered)
            .expect("another port, free on both addresses");
        assert_ne!(chosen, port);
        for ip in ["127.0.0.1", "127.0.0.2"] {
            TcpStream::connect((ip, chosen)).expect("listening on every address");
        }
        assert_eq!(
            std::fs::read_to_string(&remembered).expect("remembered"),
            chosen.to_string()
        );
    }

    #[test]
    fn a_configured_port_that_is_taken_is_an_error() {
        let taken = TcpListener::bind("127.0.0.2:0").expect("a port on 127.0.0.2");
        let port = taken.local_addr().expect("its address").port();
        let dir = tempfile::tempdir().expect("a temp dir");
        let remembered = dir.path().join("interchange.port");
        assert!(listen_interchange(&server(), &two_addresses(), port, &remembered).is_err());
    }

    #[test]
    fn fetches_are_queued_answered_or_their_peer_dropped() {
        let request = |object: &str| ChunkRequest {
            receiver: 0,
            object: object.into(),
            offset: 0,
            len: 10,
        };
        let good = "ab".repeat(32);
        let link = ObjectLink::default();
        // A name that is not a hash: the peer is dropped.
        for bad in ["../secret", "AB", ""] {
            assert!(matches!(
                fetch_verdict(&link, crate::core::PipeId(1), request(bad)),
                Verdict::Drop { reply: None }
            ));
        }
        // No server yet (or any more): answered at once, with the reason.
        match fetch_verdict(&link, crate::core::PipeId(1), request(&good)) {
            Verdict::Reply(bytes) => {
                let answer: DaemonMessage = decode(&bytes, 1 << 20).unwrap();
                assert!(matches!(answer, DaemonMessage::ObjectUnavailable { .. }));
            }
            other => panic!("{other:?}"),
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(
            ObjectServer::spawn(dir.path().to_owned(), move |receiver, message| {
                let _ = tx.lock().unwrap().send((receiver, message.clone()));
            })
            .unwrap(),
        );
        let _ = link.set(Arc::downgrade(&server));
        assert!(matches!(
            fetch_verdict(&link, crate::core::PipeId(1), request(&good)),
            Verdict::Accept
        ));
        let (receiver, answer) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(receiver, 0);
        assert!(matches!(answer, DaemonMessage::ObjectUnavailable { .. }));
    }

    #[test]
    fn the_open_file_limit_is_raised_and_a_reserve_kept_from_workers() {
        use nix::sys::resource::{Resource, getrlimit};
        let (before, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let soft = raise_open_file_limit();
        let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, now);
        assert!(soft >= before);
        // Raised to the hard limit, or a million if that is unlimited.
        assert!(soft == hard || hard == nix::sys::resource::RLIM_INFINITY);
        assert_eq!(interchange_pipe_limit(20_000), 20_000 - FD_RESERVE as usize);
        // However small the limit, some workers can connect.
        assert_eq!(interchange_pipe_limit(300), FD_RESERVE as usize);
    }
}
