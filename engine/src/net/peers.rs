//! Who is connected to a server and what each connection may still do.
//!
//! Every connection (nng pipe) gets a number when nng offers it and a record:
//! registered or not, when it came, how many of its requests are
//! outstanding (received and not yet fully answered, a reply stuck on its
//! way to a peer that does not read included) and its frames under way in
//! parts. [`PeerLimits`] says what a connection may do before and after it
//! registered; [`PipeTable`] keeps the records and makes the decisions, so
//! they can be tested without sockets. A peer that registers is one the
//! scheduling core welcomed (it proved it knows the daemon's secret); the
//! server is told through [`PipeTable::register`]; the keys its handshake
//! yielded seal its connection from then on ([`PipeTable::secure`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_protocol::parts::{PREAUTH_FRAME_BYTES, Part};
use flotilla_protocol::secure::Channel;

use super::reassembly::{Reassembly, ReassemblyError};
use crate::core::PipeId;

/// Requests a connection that has not registered may have outstanding: a
/// worker says `Probe`, then `Hello`, one at a time; a worker whose
/// connection was replaced has a pull on each of its two lanes.
pub const MAX_OUTSTANDING_UNREGISTERED: usize = 2;
/// Requests a registered worker may have outstanding: its long-poll and a
/// results pull, with room for requests it gave up on that the daemon still
/// holds.
pub const MAX_OUTSTANDING_REGISTERED: usize = 8;
/// Connections that have not registered, at most, at once; newer ones are
/// refused as nng offers them (a refused worker's nng redials).
pub const MAX_UNREGISTERED: usize = 64;
/// How long a connection may stay unregistered before it is closed.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// Longest a reply may wait to be handed to its connection (behind earlier
/// replies to a peer that does not read) before the connection is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a server takes from its peers.
#[derive(Debug, Clone)]
pub struct PeerLimits {
    /// Largest frame the socket takes: nng refuses a larger one from its
    /// length header, before buffering it.
    pub frame_cap: usize,
    /// Largest frame joined from parts, for registered peers only; 0: parts
    /// are not taken at all.
    pub reassembled_cap: usize,
    /// Every connection counts as registered from the start (the client
    /// API, whose socket file only its owner can open).
    pub trusted: bool,
    /// See [`MAX_OUTSTANDING_UNREGISTERED`].
    pub outstanding_unregistered: usize,
    /// See [`MAX_OUTSTANDING_REGISTERED`].
    pub outstanding_registered: usize,
    /// See [`MAX_UNREGISTERED`].
    pub max_unregistered: usize,
    /// Connections at most (descriptors are finite); newer ones are refused.
    pub max_pipes: usize,
    /// See [`HELLO_DEADLINE`].
    pub hello_deadline: Duration,
    /// See [`SEND_TIMEOUT`].
    pub send_timeout: Duration,
}

impl PeerLimits {
    /// A server whose peers are all trusted, taking frames up to
    /// `max_frame` bytes.
    pub fn trusted(max_frame: usize) -> PeerLimits {
        PeerLimits {
            frame_cap: max_frame,
            reassembled_cap: 0,
            trusted: true,
            outstanding_unregistered: usize::MAX,
            outstanding_registered: usize::MAX,
            max_unregistered: usize::MAX,
            max_pipes: usize::MAX,
            hello_deadline: Duration::MAX,
            send_timeout: SEND_TIMEOUT,
        }
    }

    /// The worker interchange: anybody can connect, so until a peer has
    /// registered it may send frames of at most [`PREAUTH_FRAME_BYTES`]
    /// (registered workers send larger ones in parts, up to `max_frame`),
    /// and at most `max_pipes` connections are held.
    pub fn interchange(max_frame: usize, max_pipes: usize) -> PeerLimits {
        PeerLimits {
            frame_cap: max_frame.min(PREAUTH_FRAME_BYTES),
            reassembled_cap: max_frame,
            trusted: false,
            outstanding_unregistered: MAX_OUTSTANDING_UNREGISTERED,
            outstanding_registered: MAX_OUTSTANDING_REGISTERED,
            max_unregistered: MAX_UNREGISTERED,
            max_pipes,
            hello_deadline: HELLO_DEADLINE,
            send_timeout: SEND_TIMEOUT,
        }
    }
}

/// Why a connection is refused as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds as many connections as it may.
    TooManyPipes,
    /// As many connections as may are still unregistered.
    TooManyUnregistered,
}

impl Refusal {
    /// In words, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooManyPipes => "the connection limit is reached",
            Refusal::TooManyUnregistered => "too many connections have not registered yet",
        }
    }
}

/// Whether a request may be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes; it is counted as outstanding until [`PipeTable::end_request`].
    Admitted {
        /// Its connection.
        id: PipeId,
        /// Whether that connection has registered.
        registered: bool,
    },
    /// Its connection is no longer known (it closed meanwhile): ignore it.
    Unknown,
    /// Its connection has more requests outstanding than it may: drop it.
    OverCap {
        /// Its connection.
        id: PipeId,
        /// Requests outstanding, this one included.
        outstanding: usize,
        /// Whether that connection has registered.
        registered: bool,
    },
}

/// What became of a part.
#[derive(Debug, PartialEq, Eq)]
pub enum PartOutcome {
    /// Kept; acknowledge it and wait for the next.
    More,
    /// The last part: here is the whole frame.
    Whole(Vec<u8>),
    /// The connection has not registered: nothing was kept; tell it to
    /// register.
    Unregistered,
    /// A protocol violation: drop the connection.
    Refused(ReassemblyError),
}

#[derive(Debug)]
struct PipeState<P> {
    pipe: P,
    registered: bool,
    outstanding: usize,
    parts: Reassembly,
    /// Seals and opens the connection's frames once its handshake is done.
    channel: Option<Arc<Channel>>,
    /// Who is at the other end, as the kernel says (ipc connections).
    peer: Option<PeerCred>,
}

/// The credentials of the process at the other end of a local (ipc)
/// connection, as the kernel recorded them when it connected
/// (`SO_PEERCRED`): they cannot be forged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Effective uid.
    pub uid: u32,
    /// Effective (primary) gid.
    pub gid: u32,
}

/// The connections of one server. `P` is nng's pipe handle (any key in
/// tests).
#[derive(Debug)]
pub struct PipeTable<P> {
    ids: HashMap<P, PipeId>,
    states: HashMap<PipeId, PipeState<P>>,
    /// Connections not registered yet, with when they came; ids grow with
    /// time, so the oldest come first.
    unregistered: BTreeMap<PipeId, Instant>,
    next: u64,
}

impl<P> Default for PipeTable<P> {
    fn default() -> Self {
        PipeTable {
            ids: HashMap::new(),
            states: HashMap::new(),
            unregistered: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<P: Copy + Eq + Hash> PipeTable<P> {
    /// A connection nng offers at `now`: its number, or why it is refused
    /// (then it is not recorded).
    pub fn admit(&mut self, pipe: P, now: Instant, limits: &PeerLimits) -> Result<PipeId, Refusal> {
        if let Some(id) = self.ids.get(&pipe) {
            return Ok(*id);
        }
        if self.states.len() >= limits.max_pipes {
            return Err(Refusal::TooManyPipes);
        }
        if !limits.trusted && self.unregistered.len() >= limits.max_unregistered {
            return Err(Refusal::TooManyUnregistered);
        }
        self.next += 1;
        let id = PipeId(self.next);
        self.ids.insert(pipe, id);
        self.states.insert(
            id,
            PipeState {
                pipe,
                registered: limits.trusted,
                outstanding: 0,
                parts: Reassembly::default(),
                channel: None,
                peer: None,
            },
        );
        if !limits.trusted {
            self.unregistered.insert(id, now);
        }
        Ok(id)
    }

    /// Forgets a connection that closed; its number, if it was admitted.
    pub fn remove(&mut self, pipe: P) -> Option<PipeId> {
        let id = self.ids.remove(&pipe)?;
        self.states.remove(&id);
        self.unregistered.remove(&id);
        Some(id)
    }

    /// The handle of connection `id`.
    pub fn pipe(&self, id: PipeId) -> Option<P> {
        self.states.get(&id).map(|s| s.pipe)
    }

    /// A request arrived on `pipe`.
    pub fn begin_request(&mut self, pipe: P, limits: &PeerLimits) -> Admission {
        let Some(id) = self.ids.get(&pipe).copied() else {
            return Admission::Unknown;
        };
        let Some(state) = self.states.get_mut(&id) else {
            return Admission::Unknown;
        };
        let cap = if state.registered {
            limits.outstanding_registered
        } else {
            limits.outstanding_unregistered
        };
        if state.outstanding >= cap {
            return Admission::OverCap {
                id,
                outstanding: state.outstanding + 1,
                registered: state.registered,
            };
        }
        state.outstanding += 1;
        Admission::Admitted {
            id,
            registered: state.registered,
        }
    }

    /// A request of connection `id` was answered (or given up).
    pub fn end_request(&mut self, id: PipeId) {
        if let Some(state) = self.states.get_mut(&id) {
            state.outstanding = state.outstanding.saturating_sub(1);
        }
    }

    /// Connection `id` registered: the registered caps apply from now on.
    pub fn register(&mut self, id: PipeId) {
        if let Some(state) = self.states.get_mut(&id) {
            state.registered = true;
            self.unregistered.remove(&id);
        }
    }

    /// Connection `id` is sealed with `channel` from now on.
    pub fn secure(&mut self, id: PipeId, channel: Arc<Channel>) {
        if let Some(state) = self.states.get_mut(&id) {
            state.channel = Some(channel);
        }
    }

    /// Records who is at the other end of connection `id`.
    pub fn set_peer(&mut self, id: PipeId, peer: PeerCred) {
        if let Some(state) = self.states.get_mut(&id) {
            state.peer = Some(peer);
        }
    }

    /// Who is at the other end of connection `id`, when known.
    pub fn peer(&self, id: PipeId) -> Option<PeerCred> {
        self.states.get(&id).and_then(|s| s.peer)
    }

    /// The channel of connection `id`, once it is sealed.
    pub fn channel(&self, id: PipeId) -> Option<Arc<Channel>> {
        self.states.get(&id).and_then(|s| s.channel.clone())
    }

    /// Takes a part that came on connection `id`; frames are capped at
    /// `limits.reassembled_cap`.
    pub fn add_part(&mut self, id: PipeId, part: Part<'_>, limits: &PeerLimits) -> PartOutcome {
        let Some(state) = self.states.get_mut(&id) else {
            return PartOutcome::Unregistered;
        };
        if !state.registered {
            return PartOutcome::Unregistered;
        }
        match state.parts.add(part, limits.reassembled_cap) {
            Ok(None) => PartOutcome::More,
            Ok(Some(frame)) => PartOutcome::Whole(frame),
            Err(e) => PartOutcome::Refused(e),
        }
    }

    /// Connections that stayed unregistered past the deadline at `now`, to
    /// close (they stay recorded until they are closed).
    pub fn overdue(&self, now: Instant, deadline: Duration) -> Vec<(PipeId, P)> {
        self.unregistered
            .iter()
            .take_while(|(_, came)| now.saturating_duration_since(**came) >= deadline)
            .filter_map(|(id, _)| self.states.get(id).map(|s| (*id, s.pipe)))
            .collect()
    }

    /// Connections held, and how many of them have not registered.
    pub fn counts(&self) -> (usize, usize) {
        (self.states.len(), self.unregistered.len())
    }

    /// Bytes held for frames under way in parts, all connections together.
    pub fn buffered(&self) -> usize {
        self.states.values().map(|s| s.parts.buffered()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::parts::{parse, split};

    fn limits() -> PeerLimits {
        PeerLimits {
            max_unregistered: 3,
            max_pipes: 5,
            ..PeerLimits::interchange(1 << 20, 5)
        }
    }

    #[test]
    fn unregistered_connections_beyond_the_cap_are_refused_until_one_registers() {
        let (l, now) = (limits(), Instant::now());
        let mut t = PipeTable::default();
        let ids: Vec<PipeId> = (0..3).map(|p| t.admit(p, now, &l).unwrap()).collect();
        assert_eq!(t.admit(3, now, &l), Err(Refusal::TooManyUnregistered));
        assert_eq!(t.counts(), (3, 3));
        t.register(ids[0]);
        t.admit(3, now, &l).unwrap();
        t.register(ids[1]);
        t.admit(4, now, &l).unwrap();
        // Five connections: the total cap refuses even a sixth.
        assert_eq!(t.admit(5, now, &l), Err(Refusal::TooManyPipes));
        assert_eq!(t.remove(4), Some(PipeId(5)));
        assert_eq!(t.remove(99), None);
        t.admit(5, now, &l).unwrap();
    }

    #[test]
    fn outstanding_requests_are_capped_per_connection() {
        let (l, now) = (limits(), Instant::now());
        let mut t = PipeTable::default();
        let id = t.admit(7, now, &l).unwrap();
        for _ in 0..MAX_OUTSTANDING_UNREGISTERED {
            assert_eq!(
                t.begin_request(7, &l),
                Admission::Admitted {
                    id,
                    registered: false
                }
            );
        }
        assert!(matches!(t.begin_request(7, &l), Admission::OverCap { .. }));
        t.end_request(id);
        t.register(id);
        let mut admitted = 1;
        while let Admission::Admitted { .. } = t.begin_request(7, &l) {
            admitted += 1;
        }
        assert_eq!(admitted, MAX_OUTSTANDING_REGISTERED);
        assert_eq!(t.begin_request(8, &l), Admission::Unknown);
    }

    #[test]
    fn the_oldest_unregistered_connections_are_overdue() {
        let (l, t0) = (limits(), Instant::now());
        let mut t = PipeTable::default();
        let a = t.admit(1, t0, &l).unwrap();
        let b = t.admit(2, t0 + Duration::from_secs(4), &l).unwrap();
        t.admit(3, t0 + Duration::from_secs(8), &l).unwrap();
        t.register(b);
        let due = t.overdue(t0 + Duration::from_secs(12), HELLO_DEADLINE);
        assert_eq!(due, vec![(a, 1)]);
        assert!(
            t.overdue(t0 + Duration::from_secs(9), HELLO_DEADLINE)
                .is_empty()
        );
    }

    #[test]
    fn parts_are_joined_only_for_registered_connections_each_on_its_own() {
        let (l, now) = (limits(), Instant::now());
        let mut t = PipeTable::default();
        let (a, b) = (t.admit(1, now, &l).unwrap(), t.admit(2, now, &l).unwrap());
        let fa: Vec<u8> = vec![1; 3000];
        let fb: Vec<u8> = vec![2; 2000];
        let (pa, pb) = (split(&fa, 0, 700), split(&fb, 0, 700));
        assert_eq!(
            t.add_part(a, parse(&pa[0]).unwrap(), &l),
            PartOutcome::Unregistered
        );
        t.register(a);
        t.register(b);
        let mut whole = Vec::new();
        for i in 0..pa.len().max(pb.len()) {
            for (id, parts) in [(a, &pa), (b, &pb)] {
                if let Some(p) = parts.get(i) {
                    match t.add_part(id, parse(p).unwrap(), &l) {
                        PartOutcome::More => assert!(t.buffered() > 0),
                        PartOutcome::Whole(f) => whole.push((id, f)),
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
        assert_eq!(whole, vec![(b, fb), (a, fa)]);
        assert_eq!(t.buffered(), 0);
    }

    #[test]
    fn trusted_servers_admit_everything_as_registered() {
        let l = PeerLimits::trusted(1 << 20);
        let mut t = PipeTable::default();
        for p in 0..1000 {
            t.admit(p, Instant::now(), &l).unwrap();
        }
        assert_eq!(t.counts(), (1000, 0));
        assert!(matches!(
            t.begin_request(1, &l),
            Admission::Admitted {
                registered: true,
                ..
            }
        ));
    }
}
