//! The client's TCP link to a daemon on another host: the token handshake of
//! [`flotilla_protocol::client_auth`], then every call sealed with the
//! connection's [`Channel`], sent in parts when it is larger than a
//! connection that has not registered may send
//! ([`flotilla_protocol::parts`]).
//!
//! The link is used when the daemon's ipc socket cannot be reached and its
//! contact file (the shared directory's copy will do) names a TCP client
//! endpoint; the token comes from [`TOKEN_ENV`], else the state directory's
//! `token` file, which must be private (mode 0600).

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use flotilla_protocol::client_auth::{ClientHandshake, GateCall, GateReply};
use flotilla_protocol::launch::DaemonInfo;
use flotilla_protocol::parts::{self, PREAUTH_FRAME_BYTES};
use flotilla_protocol::secure::{self, Channel, Role};
use flotilla_protocol::token::{TOKEN_ENV, Token};
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, decode, encode, paths};
use nng::options::{Options, RecvMaxSize, RecvTimeout, SendTimeout};
use nng::{Message, Protocol, Socket};

use crate::{ClientError, DEFAULT_CALL_TIMEOUT};

/// Where a daemon's TCP client API is, and the token to show it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `tcp://HOST:PORT`, one per advertised address, in order.
    pub urls: Vec<String>,
    pub token: Token,
}

/// The daemon's TCP endpoint from its contact file in `state_dir`, with the
/// token to use; `Ok(None)` when the contact file names none.
pub(crate) fn endpoint(state_dir: &Path) -> Result<Option<Endpoint>, ClientError> {
    let Some(info) = std::fs::read_to_string(paths::info_file(state_dir))
        .ok()
        .and_then(|text| DaemonInfo::from_toml(&text).ok())
    else {
        return Ok(None);
    };
    let (Some(addresses), Some(port)) = (info.client_address, info.client_port) else {
        return Ok(None);
    };
    let urls: Vec<String> = addresses
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| match a.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("tcp://[{v6}]:{port}"),
            Err(_) => format!("tcp://{a}:{port}"),
        })
        .collect();
    if urls.is_empty() {
        return Ok(None);
    }
    let token = load_token(state_dir, &urls[0])?;
    Ok(Some(Endpoint { urls, token }))
}

/// The token from [`TOKEN_ENV`], else `state_dir`'s token file.
fn load_token(state_dir: &Path, url: &str) -> Result<Token, ClientError> {
    if let Some(text) = std::env::var_os(TOKEN_ENV).filter(|v| !v.is_empty()) {
        return Token::parse(&text.to_string_lossy()).map_err(|e| ClientError::BadToken {
            from: format!("${TOKEN_ENV}"),
            message: e.to_string(),
        });
    }
    let path = paths::token_file(state_dir);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClientError::NoToken {
                url: url.to_owned(),
                path,
            });
        }
        Err(e) => return Err(bad_token_file(&path, e.to_string())),
    };
    let meta = file
        .metadata()
        .map_err(|e| bad_token_file(&path, e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(bad_token_file(
            &path,
            format!(
                "mode {:04o} lets group or others read it; run `chmod 600` on it",
                meta.mode() & 0o7777
            ),
        ));
    }
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| bad_token_file(&path, e.to_string()))?;
    Token::parse(&text).map_err(|e| bad_token_file(&path, e.to_string()))
}

fn bad_token_file(path: &Path, message: String) -> ClientError {
    ClientError::BadToken {
        from: path.display().to_string(),
        message,
    }
}

/// Unpredictable bytes from the operating system.
fn random<const N: usize>() -> Result<[u8; N], ClientError> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ClientError::Handshake(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes)
}

/// A sealed connection to a daemon's TCP client API.
#[derive(Debug)]
pub(crate) struct TcpLink {
    socket: Socket,
    channel: Channel,
    url: String,
    token: Token,
}

impl TcpLink {
    /// Dials the endpoint's addresses in order and handshakes on the first
    /// that answers.
    pub(crate) fn connect(endpoint: Endpoint, max_frame: usize) -> Result<TcpLink, ClientError> {
        let mut last = None;
        for url in &endpoint.urls {
            match Self::dial(url, &endpoint.token, max_frame) {
                Ok(link) => return Ok(link),
                // A refusal is the daemon's word: no other address will
                // say otherwise.
                Err(e @ (ClientError::TokenRefused(_) | ClientError::Handshake(_))) => {
                    return Err(e);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::NoStateDir))
    }

    fn dial(url: &str, token: &Token, max_frame: usize) -> Result<TcpLink, ClientError> {
        let unreachable = |source| ClientError::UnreachableTcp {
            url: url.to_owned(),
            source,
        };
        let socket = Socket::new(Protocol::Req0).map_err(unreachable)?;
        socket
            .set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
            .map_err(unreachable)?;
        socket
            .set_opt::<RecvMaxSize>(max_frame.max(DEFAULT_MAX_FRAME_BYTES) + secure::OVERHEAD + 64)
            .map_err(unreachable)?;
        socket
            .set_opt::<SendTimeout>(Some(DEFAULT_CALL_TIMEOUT))
            .map_err(unreachable)?;
        socket
            .set_opt::<RecvTimeout>(Some(DEFAULT_CALL_TIMEOUT))
            .map_err(unreachable)?;
        socket.dial(url).map_err(unreachable)?;
        let channel = handshake(&socket, token)?;
        Ok(TcpLink {
            socket,
            channel,
            url: url.to_owned(),
            token: token.clone(),
        })
    }

    /// One round trip of an encoded call; the reply's frame, opened.
    pub(crate) fn round_trip(
        &mut self,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        match self.try_round_trip(frame, timeout)? {
            Some(reply) => Ok(reply),
            None => {
                // The connection lost its keys (the daemon restarted, nng
                // redialled): handshake again, and send once more.
                self.channel = handshake(&self.socket, &self.token)?;
                self.try_round_trip(frame, timeout)?.ok_or_else(|| {
                    ClientError::Handshake(format!(
                        "the daemon at {} keeps asking for a new handshake",
                        self.url
                    ))
                })
            }
        }
    }

    fn try_round_trip(
        &self,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Option<Reply>, ClientError> {
        let sealed = seal(&self.channel, frame)?;
        self.socket
            .set_opt::<RecvTimeout>(Some(timeout))
            .map_err(ClientError::Transport)?;
        let mut reply = if sealed.len() <= PREAUTH_FRAME_BYTES {
            exchange(&self.socket, sealed, timeout)?
        } else {
            let pieces = parts::split(&sealed, 0, PREAUTH_FRAME_BYTES);
            let last = pieces.len() - 1;
            let mut reply = Message::new();
            for (i, piece) in pieces.iter().enumerate() {
                reply = exchange(&self.socket, Message::from(&piece[..]), timeout)?;
                if i < last && reply.as_slice() != parts::ACK {
                    break;
                }
            }
            reply
        };
        if secure::is_sealed(&reply) {
            let frame = self
                .channel
                .open_in_place(&mut reply)
                .map_err(|e| ClientError::Handshake(format!("a reply does not open: {e}")))?
                .len();
            return Ok(Some(Reply::opened(reply, frame)));
        }
        match decode::<GateReply>(&reply, PREAUTH_FRAME_BYTES)? {
            GateReply::Handshake => Ok(None),
            GateReply::Refused { reason } => Err(ClientError::TokenRefused(reason)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// A reply's frame, opened where it arrived: the message it came in, less
/// the sealed header and tag (a large reply is neither copied nor
/// reallocated on its way to the decoder).
#[derive(Debug)]
pub(crate) struct Reply {
    message: Message,
    len: usize,
}

impl Reply {
    /// The frame of `message`, opened in place and `len` bytes long.
    fn opened(message: Message, len: usize) -> Reply {
        Reply { message, len }
    }
}

impl std::ops::Deref for Reply {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.message
            .get(secure::HEADER_BYTES..secure::HEADER_BYTES + self.len)
            .unwrap_or_default()
    }
}

/// `frame` sealed with the connection's next counter, in a message of its
/// own: the frame is copied once, into the message, and sealed there.
fn seal(channel: &Channel, frame: &[u8]) -> Result<Message, ClientError> {
    let mut message = Message::with_capacity(frame.len() + secure::OVERHEAD);
    message.push_back(&[0; secure::HEADER_BYTES]);
    message.push_back(frame);
    let tag = channel
        .seal_in_place(&mut message)
        .map_err(|e| ClientError::Handshake(e.to_string()))?;
    message.push_back(&tag);
    Ok(message)
}

/// Sends `message` and waits for the answer.
fn exchange(socket: &Socket, message: Message, timeout: Duration) -> Result<Message, ClientError> {
    let to_error = |e| match e {
        nng::Error::TimedOut => ClientError::Timeout(timeout),
        other => ClientError::Transport(other),
    };
    socket.send(message).map_err(|(_, e)| to_error(e))?;
    socket.recv().map_err(to_error)
}

/// Runs the token handshake on `socket`; the connection's channel.
fn handshake(socket: &Socket, token: &Token) -> Result<Channel, ClientError> {
    let client = ClientHandshake::new(token.clone(), random()?, random()?);
    let gate_reply = |bytes: Message| -> Result<GateReply, ClientError> {
        match decode::<GateReply>(&bytes, PREAUTH_FRAME_BYTES)? {
            GateReply::Refused { reason } => Err(ClientError::TokenRefused(reason)),
            other => Ok(other),
        }
    };
    let answer = exchange(
        socket,
        Message::from(&encode(&client.probe())?[..]),
        DEFAULT_CALL_TIMEOUT,
    )?;
    let GateReply::Challenge {
        nonce,
        public,
        proof,
    } = gate_reply(answer)?
    else {
        return Err(ClientError::Handshake(
            "the daemon did not answer the probe with a challenge".into(),
        ));
    };
    let (hello, keys) = client
        .answer(&nonce, &public, &proof)
        .map_err(|e| ClientError::Handshake(e.to_string()))?;
    debug_assert!(matches!(hello, GateCall::Hello { .. }));
    let channel = Channel::new(&keys, Role::Worker);
    let mut welcome = exchange(
        socket,
        Message::from(&encode(&hello)?[..]),
        DEFAULT_CALL_TIMEOUT,
    )?;
    if !secure::is_sealed(&welcome) {
        gate_reply(welcome)?;
        return Err(ClientError::Handshake(
            "the daemon did not seal its welcome".into(),
        ));
    }
    let opened = channel
        .open_in_place(&mut welcome)
        .map_err(|e| ClientError::Handshake(format!("the welcome does not open: {e}")))?;
    match decode::<GateReply>(opened, PREAUTH_FRAME_BYTES)? {
        GateReply::Welcome { .. } => Ok(channel),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}
