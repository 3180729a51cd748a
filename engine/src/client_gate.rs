//! The TCP client API's door: the token handshake of
//! [`flotilla_protocol::client_auth`], and every call on a sealed connection
//! checked against its token before it reaches the scheduling core.
//!
//! It is the handler of a second [`RepServer`](crate::net::RepServer)
//! (opt-in: `[daemon] client_listen`). A connection without keys may only
//! handshake ([`GateCall`]); once its client proved its token the server
//! seals it ([`Verdict::Secure`]) and its frames are [`ClientCall`]s. Each
//! call is checked with [`check_call`] against the token's record as the
//! token file says *now* (so an expiry or a revocation counts from the next
//! call, on connections already open too) and refused with a sealed
//! [`ApiErrorKind::Forbidden`] reply, the connection staying open; the others
//! go to the core as the ipc socket's do, their reply address marked with
//! [`TCP_REPLY`] so the daemon answers them through this server.
//!
//! Lists and searches of a token limited to some servables are answered
//! with those servables only ([`ClientGate::filter_reply`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_protocol::client::{ApiError, ApiErrorKind, ClientCall, ClientReply};
use flotilla_protocol::client_auth::{DaemonHandshake, GateCall, GateReply};
use flotilla_protocol::handshake::{self, Nonce, NonceSource};
use flotilla_protocol::peer_text::shown;
use flotilla_protocol::secure::{Channel, Ephemeral, Role};
use flotilla_protocol::token::{TokenRecord, check_call, check_live};
use flotilla_protocol::{FrameError, decode, decode_shared, encode};

use crate::core::{Caller, PipeId, ReplyTo};
use crate::identity::Identities;
use crate::net::{Inbound, Verdict};
use crate::tokens::TokenCache;

/// The bit marking a reply address as the TCP client API's (the ipc
/// socket's receivers are numbered far below it).
pub const TCP_REPLY: u32 = 1 << 31;

/// How long a challenge stays good for its hello.
const CHALLENGE_TTL: Duration = Duration::from_secs(30);

/// Most challenges outstanding at once.
const MAX_PENDING: usize = 4096;

/// Posts a checked call, and who makes it, to the core.
pub type Post = Box<dyn Fn(ReplyTo, Caller, ClientCall) + Send + Sync>;

/// One challenge waiting for its hello.
struct Pending {
    token: String,
    pipe: PipeId,
    handshake: DaemonHandshake,
}

/// Challenges, and what makes new ones.
struct Challenges {
    nonces: NonceSource,
    keys: NonceSource,
    pending: HashMap<Nonce, Pending>,
    order: VecDeque<(Instant, Nonce)>,
}

impl Challenges {
    fn expire(&mut self, now: Instant) {
        while let Some(&(issued, nonce)) = self.order.front() {
            if now.saturating_duration_since(issued) <= CHALLENGE_TTL {
                break;
            }
            self.order.pop_front();
            self.pending.remove(&nonce);
        }
    }
}

/// The door of the TCP client API.
pub struct ClientGate {
    tokens: TokenCache,
    challenges: Mutex<Challenges>,
    /// The token of each sealed connection.
    sessions: Mutex<HashMap<PipeId, String>>,
    /// Lists and searches in flight for tokens limited to some servables:
    /// their receivers and the token's record.
    scoped: Mutex<HashMap<u32, TokenRecord>>,
    max_frame: usize,
    pid: u32,
    identities: std::sync::Arc<Identities>,
    post: Post,
}

impl std::fmt::Debug for ClientGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientGate").finish_non_exhaustive()
    }
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refused(reason: String) -> Verdict {
    Verdict::Drop {
        reply: encode(&GateReply::Refused { reason }).ok(),
    }
}

fn forbidden(message: String) -> Verdict {
    match encode(&ClientReply::Error(ApiError {
        kind: ApiErrorKind::Forbidden,
        message,
    })) {
        Ok(bytes) => Verdict::Reply(bytes),
        Err(_) => Verdict::Drop { reply: None },
    }
}

impl ClientGate {
    /// A gate checking tokens in `tokens`, drawing nonces and keys from
    /// `seed`, taking frames up to `max_frame` bytes, and handing checked
    /// calls to `post` as made by their token's owner (see
    /// [`TokenRecord::owner_uid`]) as `identities` knows them.
    pub fn new(
        tokens: TokenCache,
        seed: &[u8; 32],
        max_frame: usize,
        identities: std::sync::Arc<Identities>,
        post: Post,
    ) -> ClientGate {
        ClientGate {
            tokens,
            challenges: Mutex::new(Challenges {
                nonces: NonceSource::new(seed, "client api challenges"),
                keys: NonceSource::new(seed, "client api ephemeral keys"),
                pending: HashMap::new(),
                order: VecDeque::new(),
            }),
            sessions: Mutex::new(HashMap::new()),
            scoped: Mutex::new(HashMap::new()),
            max_frame,
            pid: std::process::id(),
            identities,
            post,
        }
    }

    /// The encoded answer to a sealed frame on a connection without keys.
    pub fn handshake_again() -> Vec<u8> {
        encode(&GateReply::Handshake).unwrap_or_default()
    }

    /// The server's handler: see the module's description.
    pub fn handle(&self, inbound: Inbound<'_>) -> Verdict {
        match inbound {
            Inbound::Request {
                pipe,
                registered: false,
                bytes,
                ..
            } => match decode::<GateCall>(bytes, self.max_frame) {
                Ok(GateCall::Probe {
                    token,
                    nonce,
                    public,
                }) => self.probe(pipe, &token, &nonce, &public),
                Ok(GateCall::Hello { challenge, proof }) => self.hello(pipe, &challenge, &proof),
                Err(e) => self.bad_frame(pipe, bytes.len(), &e),
            },
            Inbound::Request {
                receiver,
                pipe,
                registered: true,
                bytes,
                ..
            } => match decode_shared::<ClientCall>(bytes, self.max_frame) {
                Ok(call) => self.call(receiver, pipe, call),
                Err(e) => self.bad_frame(pipe, bytes.len(), &e),
            },
            Inbound::PipeClosed(pipe) => {
                lock(&self.sessions).remove(&pipe);
                Verdict::Accept
            }
        }
    }

    fn bad_frame(&self, pipe: PipeId, len: usize, e: &FrameError) -> Verdict {
        tracing::warn!(pipe = pipe.0, len, error = %e, "dropping a TCP client: bad frame");
        match e {
            FrameError::VersionMismatch { .. } => refused(e.to_string()),
            _ => Verdict::Drop { reply: None },
        }
    }

    /// The token `id`'s record if it may be used now; else the refusal.
    fn live_token(&self, id: &str) -> Result<TokenRecord, String> {
        match self.tokens.lookup(id) {
            Ok(Some(record)) => check_live(&record, now_unix_s())
                .map(|()| record)
                .map_err(|e| e.to_string()),
            Ok(None) => Err(format!(
                "no token with id {} is known to this daemon (a token of another daemon, or deleted)",
                shown(id)
            )),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the token file; refusing every TCP client");
                Err("the daemon cannot read its token file; see its log".into())
            }
        }
    }

    fn probe(&self, pipe: PipeId, token: &str, nonce: &[u8], public: &[u8]) -> Verdict {
        let (Some(client_nonce), Some(client_public)) =
            (handshake::nonce(nonce), handshake::public_key(public))
        else {
            return refused("the probe's nonce or key has the wrong length".into());
        };
        let record = match self.live_token(token) {
            Ok(r) => r,
            Err(reason) => {
                tracing::warn!(pipe = pipe.0, token = %shown(token), reason = %reason, "TCP client refused");
                return refused(reason);
            }
        };
        let Some(verifier) = record.verifier_key() else {
            return refused(format!("token `{}` has a damaged record", record.name));
        };
        let now = Instant::now();
        let mut challenges = lock(&self.challenges);
        challenges.expire(now);
        if challenges.pending.len() >= MAX_PENDING {
            return refused("too many clients are connecting at once; try again shortly".into());
        }
        let daemon_nonce = challenges.nonces.next_nonce();
        let ephemeral = Ephemeral::from_random(challenges.keys.next_nonce());
        let (handshake, proof) = match DaemonHandshake::challenge(
            &record.id,
            &verifier,
            client_nonce,
            client_public,
            daemon_nonce,
            ephemeral,
        ) {
            Ok(h) => h,
            Err(e) => return refused(e.to_string()),
        };
        let reply = GateReply::Challenge {
            nonce: flotilla_protocol::Payload::copy_from_slice(&daemon_nonce),
            public: flotilla_protocol::Payload::copy_from_slice(&handshake.public()),
            proof: flotilla_protocol::Payload::copy_from_slice(&proof),
        };
        challenges.pending.insert(
            daemon_nonce,
            Pending {
                token: record.id,
                pipe,
                handshake,
            },
        );
        challenges.order.push_back((now, daemon_nonce));
        match encode(&reply) {
            Ok(bytes) => Verdict::Reply(bytes),
            Err(_) => Verdict::Drop { reply: None },
        }
    }

    fn hello(&self, pipe: PipeId, challenge: &[u8], proof: &[u8]) -> Verdict {
        let pending = handshake::nonce(challenge).and_then(|n| {
            let mut challenges = lock(&self.challenges);
            challenges.expire(Instant::now());
            challenges.pending.remove(&n)
        });
        let Some(pending) = pending.filter(|p| p.pipe == pipe) else {
            return refused(
                "the hello answers no outstanding challenge (never issued, expired, on another connection, or already used: a replayed hello?)".into(),
            );
        };
        let keys = match pending.handshake.finish(proof) {
            None => {
                tracing::warn!(pipe = pipe.0, token = %pending.token, "TCP client refused: wrong proof");
                return refused("wrong proof: the client does not hold this token".into());
            }
            Some(Err(e)) => return refused(e.to_string()),
            Some(Ok(keys)) => keys,
        };
        // Checked again: revoked or expired during the handshake.
        if let Err(reason) = self.live_token(&pending.token) {
            return refused(reason);
        }
        let Ok(reply) = encode(&GateReply::Welcome { pid: self.pid }) else {
            return Verdict::Drop { reply: None };
        };
        lock(&self.sessions).insert(pipe, pending.token.clone());
        tracing::info!(pipe = pipe.0, token = %pending.token, "TCP client connected");
        Verdict::Secure {
            channel: Box::new(Channel::new(&keys, Role::Daemon)),
            reply,
        }
    }

    fn call(&self, receiver: u32, pipe: PipeId, call: ClientCall) -> Verdict {
        let token = lock(&self.sessions).get(&pipe).cloned();
        let Some(token) = token else {
            return Verdict::Drop { reply: None };
        };
        let record = match self.tokens.lookup(&token) {
            Ok(Some(r)) => r,
            Ok(None) => return forbidden("the connection's token no longer exists".into()),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the token file; refusing TCP calls");
                return forbidden("the daemon cannot read its token file; see its log".into());
            }
        };
        if let Err(denial) = check_call(&record, &call, now_unix_s()) {
            tracing::info!(token = %record.name, reason = %denial, "TCP client call refused");
            return forbidden(denial.to_string());
        }
        let caller = self.identities.caller(
            record.owner_uid.unwrap_or(self.identities.daemon_uid()),
            None,
        );
        if !record.servables.is_empty()
            && matches!(
                call,
                ClientCall::ListServables | ClientCall::SearchServables(_)
            )
        {
            lock(&self.scoped).insert(receiver, record);
        }
        (self.post)(ReplyTo(receiver | TCP_REPLY), caller, call);
        Verdict::Accept
    }

    /// Narrows the reply to a list or search to the servables its
    /// caller's token may use (receiver numbered without [`TCP_REPLY`]).
    pub fn filter_reply(&self, receiver: u32, reply: &mut ClientReply) {
        let Some(record) = lock(&self.scoped).remove(&receiver) else {
            return;
        };
        if let ClientReply::Servables { servables } = reply {
            servables.retain(|s| record.allows_servable(&s.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{NewToken, TokenFile};
    use flotilla_protocol::client_auth::ClientHandshake;
    use flotilla_protocol::token::Token;
    use std::sync::Arc;

    struct Setup {
        _dir: tempfile::TempDir,
        file: TokenFile,
        gate: ClientGate,
        posted: Arc<Mutex<Vec<(ReplyTo, Caller, ClientCall)>>>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path());
        let posted = Arc::new(Mutex::new(Vec::new()));
        let sink = posted.clone();
        let gate = ClientGate::new(
            TokenCache::new(file.clone()),
            &[9; 32],
            1 << 20,
            Arc::new(Identities::new(4_000_000)),
            Box::new(move |to, caller, call| lock(&sink).push((to, caller, call))),
        );
        Setup {
            _dir: dir,
            file,
            gate,
            posted,
        }
    }

    fn request(gate: &ClientGate, pipe: u64, registered: bool, bytes: &[u8]) -> Verdict {
        gate.handle(Inbound::Request {
            receiver: 3,
            pipe: PipeId(pipe),
            registered,
            bytes: &bytes::Bytes::copy_from_slice(bytes),
            peer: None,
        })
    }

    fn refusal(v: Verdict) -> String {
        match v {
            Verdict::Drop { reply: Some(b) } => match decode::<GateReply>(&b, 1 << 20).unwrap() {
                GateReply::Refused { reason } => reason,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    /// Runs a handshake with `token` on `pipe`; the verdict on the hello.
    fn connect(gate: &ClientGate, token: &Token, pipe: u64) -> Verdict {
        let client = ClientHandshake::new(token.clone(), [1; 32], [2; 32]);
        let probe = encode(&client.probe()).unwrap();
        let Verdict::Reply(answer) = request(gate, pipe, false, &probe) else {
            panic!("no challenge");
        };
        let GateReply::Challenge {
            nonce,
            public,
            proof,
        } = decode(&answer, 1 << 20).unwrap()
        else {
            panic!("not a challenge");
        };
        let (hello, _) = client.answer(&nonce, &public, &proof).unwrap();
        request(gate, pipe, false, &encode(&hello).unwrap())
    }

    #[test]
    fn a_token_connects_and_its_calls_are_checked_against_its_scope() {
        let s = setup();
        let (token, _) = s
            .file
            .create(
                NewToken {
                    name: Some("ci".into()),
                    servables: vec!["echo".into()],
                    ..NewToken::default()
                },
                1,
                ([1; 8], [2; 32]),
            )
            .unwrap();
        assert!(matches!(
            connect(&s.gate, &token, 7),
            Verdict::Secure { .. }
        ));
        let run = |servable: &str| {
            encode(&ClientCall::Submit {
                tasks: vec![flotilla_protocol::client::TaskRequest {
                    servable: servable.into(),
                    input: flotilla_protocol::Payload::new(),
                    params: flotilla_protocol::Payload::new(),
                }],
                wait_ms: Some(1),
            })
            .unwrap()
        };
        assert!(matches!(
            request(&s.gate, 7, true, &run("echo")),
            Verdict::Accept
        ));
        assert_eq!(lock(&s.posted)[0].0, ReplyTo(3 | TCP_REPLY));
        // A token made before owners existed calls as the daemon's user.
        assert_eq!(lock(&s.posted)[0].1, Caller::daemon_user(4_000_000));
        let Verdict::Reply(bytes) = request(&s.gate, 7, true, &run("other")) else {
            panic!("not refused");
        };
        let ClientReply::Error(e) = decode(&bytes, 1 << 20).unwrap() else {
            panic!()
        };
        assert_eq!(e.kind, ApiErrorKind::Forbidden);
        assert!(e.message.contains("may not use servable `other`"), "{e}");
        // A revocation counts from the next call on the open connection.
        s.file.revoke("ci", 2).unwrap();
        let Verdict::Reply(bytes) = request(&s.gate, 7, true, &run("echo")) else {
            panic!("not refused");
        };
        let ClientReply::Error(e) = decode(&bytes, 1 << 20).unwrap() else {
            panic!()
        };
        assert!(e.message.contains("was revoked"), "{e}");
        assert_eq!(lock(&s.posted).len(), 1);
        // And no new connection with it.
        let e = refusal(connect_probe(&s.gate, &token));
        assert!(e.contains("token `ci` was revoked"), "{e}");
    }

    #[test]
    fn a_call_is_made_as_the_tokens_owner() {
        let s = setup();
        let (token, _) = s
            .file
            .create(
                NewToken {
                    owner_uid: Some(0),
                    ..NewToken::default()
                },
                1,
                ([3; 8], [3; 32]),
            )
            .unwrap();
        assert!(matches!(
            connect(&s.gate, &token, 11),
            Verdict::Secure { .. }
        ));
        let list = encode(&ClientCall::ListServables).unwrap();
        assert!(matches!(request(&s.gate, 11, true, &list), Verdict::Accept));
        let caller = lock(&s.posted)[0].1.clone();
        assert_eq!(caller.uid, 0);
        assert!(caller.groups.contains(&0), "{caller:?}");
    }

    fn connect_probe(gate: &ClientGate, token: &Token) -> Verdict {
        let client = ClientHandshake::new(token.clone(), [1; 32], [2; 32]);
        request(gate, 8, false, &encode(&client.probe()).unwrap())
    }

    #[test]
    fn unknown_expired_and_forged_tokens_are_refused_by_cause() {
        let s = setup();
        let stranger = Token::from_random([5; 8], [5; 32]);
        let e = refusal(connect_probe(&s.gate, &stranger));
        assert!(e.contains("no token with id 0505050505050505"), "{e}");
        let (_, _) = s
            .file
            .create(
                NewToken {
                    name: Some("old".into()),
                    expires_unix_s: Some(10),
                    ..NewToken::default()
                },
                1,
                ([6; 8], [6; 32]),
            )
            .unwrap();
        let old = Token::from_random([6; 8], [6; 32]);
        let e = refusal(connect_probe(&s.gate, &old));
        assert!(e.contains("token `old` expired"), "{e}");
        // A client with the right id and another secret: the client itself
        // finds out (the daemon's proof does not check), and a hello it
        // makes up is refused.
        s.file
            .create(NewToken::default(), 1, ([7; 8], [7; 32]))
            .unwrap();
        let forged = Token::from_random([7; 8], [8; 32]);
        let client = ClientHandshake::new(forged, [1; 32], [2; 32]);
        let Verdict::Reply(answer) = request(&s.gate, 9, false, &encode(&client.probe()).unwrap())
        else {
            panic!()
        };
        let GateReply::Challenge {
            nonce,
            public,
            proof,
        } = decode(&answer, 1 << 20).unwrap()
        else {
            panic!()
        };
        assert!(client.answer(&nonce, &public, &proof).is_err());
        let hello = GateCall::Hello {
            challenge: nonce.clone(),
            proof: flotilla_protocol::Payload::from(vec![0u8; 32]),
        };
        let e = refusal(request(&s.gate, 9, false, &encode(&hello).unwrap()));
        assert!(e.contains("wrong proof"), "{e}");
        // Its challenge is used up: the same hello again is a replay.
        let e = refusal(request(&s.gate, 9, false, &encode(&hello).unwrap()));
        assert!(e.contains("no outstanding challenge"), "{e}");
        // A call on a connection without a handshake is not a call.
        let ping = encode(&ClientCall::Ping).unwrap();
        assert!(matches!(
            request(&s.gate, 10, false, &ping),
            Verdict::Drop { .. }
        ));
    }
}
