"""The TCP client API's cryptography: tokens, the handshake, sealed frames
and parts, byte for byte as the Rust protocol crate does them
(``protocol/src/token.rs``, ``client_auth.rs``, ``handshake.rs``,
``secure.rs``, ``parts.rs``; checked against the shared vectors in
``protocol/testdata/secure-vectors.json``).

In short: a token ``flt_<id>_<secret>`` is the seed of an X25519 key; the
daemon stores only its public half. The client sends its token's id, a
nonce and an ephemeral X25519 key; the daemon answers with its own nonce,
ephemeral key and a proof (a keyed BLAKE3 MAC) under a key both derive from
the agreement of the token's key with the daemon's ephemeral key. The client
checks it and answers its own proof. Both then derive one ChaCha20-Poly1305
key per direction from that key, the transcript and the agreement of the two
ephemeral keys, and every later frame is sealed.

Nothing here does I/O: the randomness comes from the caller
(:mod:`flotilla.tcp`).
"""

import hmac
import threading

import blake3
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "TOKEN_ENV",
    "BadToken",
    "Token",
    "WrongDaemon",
    "ClientHandshake",
    "Channel",
    "OpenError",
    "is_sealed",
    "split_parts",
    "is_part",
    "ACK",
    "PREAUTH_FRAME_BYTES",
    "OVERHEAD",
]

#: Environment variable holding a token for clients off the daemon's host.
TOKEN_ENV = "FLOTILLA_TOKEN"

_PREFIX = "flt_"
_ID_BYTES = 8
_SECRET_BYTES = 32
_LEN = 32  # nonces, keys and proofs

_STATIC_KEY_CONTEXT = "flotilla 2026-12 api token static key v1"
_CLIENT_KEY_CONTEXT = "flotilla 2026-12 client api handshake v1"
_WORKER_TO_DAEMON = "flotilla 2026-12 interchange worker-to-daemon key v1"
_DAEMON_TO_WORKER = "flotilla 2026-12 interchange daemon-to-worker key v1"
_CONNECTION_ID = "flotilla 2026-12 interchange connection id v1"
_DAEMON_LABEL = b"flotilla handshake: daemon\0"
_CLIENT_LABEL = b"flotilla handshake: client\0"

#: First bytes of every sealed frame (the last is the format's version).
SEALED_MAGIC = bytes([0xC1, ord("F"), ord("S"), 1])
_ID_LEN = 8
_HEADER_BYTES = len(SEALED_MAGIC) + _ID_LEN + 8
_TAG_BYTES = 16
#: What sealing adds to a frame.
OVERHEAD = _HEADER_BYTES + _TAG_BYTES
#: How many of the latest counters the receiving side remembers.
REPLAY_WINDOW = 1024

#: Largest frame the daemon takes from a connection in one piece; larger
#: ones travel in parts.
PREAUTH_FRAME_BYTES = 1 << 20
_PART_MAGIC = bytes([0xC1, ord("F"), ord("P"), 1])
_PART_HEADER_BYTES = 17
_FIRST = 1
_LAST = 2
#: The daemon's answer to every part but the last.
ACK = _PART_MAGIC + b"A"


class BadToken(ValueError):
    """Text that is not a Flotilla token."""

    def __init__(self):
        super().__init__(
            "not a Flotilla token (expected %s<%d hex digits>_<%d hex digits>, as `flotilla "
            "token create` prints it)" % (_PREFIX, _ID_BYTES * 2, _SECRET_BYTES * 2)
        )


class WrongDaemon(Exception):
    """The daemon could not prove it knows the token, or its challenge is
    malformed or degenerate: another daemon, or somebody in the middle."""


class OpenError(Exception):
    """A sealed frame that does not open (forged, altered, replayed, of
    another connection or another format version)."""


def _derive_key(context, material):
    return blake3.blake3(material, derive_key_context=context).digest()


def _public(private):
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _agree(private, their_public):
    """X25519 of ``private`` with ``their_public``, refusing a low-order
    point (whose shared secret is all zeros) as the Rust side does."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(bytes(their_public)))
    except ValueError as exc:
        raise WrongDaemon("the daemon's ephemeral public key is degenerate") from exc
    if shared == bytes(_LEN):
        raise WrongDaemon("the daemon's ephemeral public key is degenerate")
    return shared


class Token:
    """A token as its holder has it. Its secret is never printed."""

    def __init__(self, token_id, secret):
        self.id = token_id
        self._secret = bytes(secret)

    @classmethod
    def parse(cls, text):
        """Reads a token (surrounding space ignored); :class:`BadToken` if
        ``text`` is not one."""
        rest = text.strip()
        if not rest.startswith(_PREFIX):
            raise BadToken()
        token_id, sep, secret = rest[len(_PREFIX) :].partition("_")
        try:
            id_bytes = bytes.fromhex(token_id)
            secret_bytes = bytes.fromhex(secret)
        except ValueError:
            raise BadToken() from None
        if not sep or len(id_bytes) != _ID_BYTES or len(secret_bytes) != _SECRET_BYTES:
            raise BadToken()
        return cls(token_id.lower(), secret_bytes)

    def __repr__(self):
        return "<flotilla token %s>" % self.id

    def static_key(self):
        """The token's static X25519 key."""
        return X25519PrivateKey.from_private_bytes(
            _derive_key(_STATIC_KEY_CONTEXT, self._secret)
        )

    def verifier(self):
        """The static key's public half: what the daemon stores."""
        return _public(self.static_key())


def _client_key(token_id, verifier, agreement):
    """The handshake's MAC key: each part length-prefixed (u64 LE)."""
    derive = blake3.blake3(derive_key_context=_CLIENT_KEY_CONTEXT)
    for part in (token_id.encode(), verifier, agreement):
        derive.update(len(part).to_bytes(8, "little"))
        derive.update(part)
    return derive.digest()


def _proof(key, label, transcript):
    mac = blake3.blake3(key=key)
    mac.update(label)
    for piece in transcript:
        mac.update(piece)
    return mac.digest()


class ClientHandshake:
    """The client's side of one handshake with fresh ``nonce`` and
    ``ephemeral`` seed (32 unpredictable bytes each)."""

    def __init__(self, token, nonce, ephemeral):
        self.token = token
        self.nonce = bytes(nonce)
        self._ephemeral = X25519PrivateKey.from_private_bytes(bytes(ephemeral))
        self.public = _public(self._ephemeral)

    def probe(self):
        """Step 1: the ``GateCall::Probe`` message (for msgpack)."""
        return {"Probe": [self.token.id, self.nonce, self.public]}

    def answer(self, daemon_nonce, daemon_public, daemon_proof):
        """Step 3: checks the daemon's challenge; returns the
        ``GateCall::Hello`` message and the connection's :class:`Channel`.
        Raises :class:`WrongDaemon` if the daemon's proof is wrong."""
        daemon_nonce, daemon_public = bytes(daemon_nonce), bytes(daemon_public)
        if len(daemon_nonce) != _LEN or len(daemon_public) != _LEN:
            raise WrongDaemon("the daemon's challenge is malformed")
        transcript = (self.nonce, daemon_nonce, self.public, daemon_public)
        agreement = _agree(self.token.static_key(), daemon_public)
        key = _client_key(self.token.id, self.token.verifier(), agreement)
        expected = _proof(key, _DAEMON_LABEL, transcript)
        if not _same(expected, bytes(daemon_proof)):
            raise WrongDaemon(
                "the daemon at this address cannot prove it knows this token: another daemon, "
                "or somebody in the middle"
            )
        shared = _agree(self._ephemeral, daemon_public)
        material = blake3.blake3(key)
        for piece in transcript:
            material.update(piece)
        material.update(shared)
        derived = material.digest()
        channel = Channel(
            _derive_key(_CONNECTION_ID, derived)[:_ID_LEN],
            send_key=_derive_key(_WORKER_TO_DAEMON, derived),
            receive_key=_derive_key(_DAEMON_TO_WORKER, derived),
        )
        hello = {"Hello": [daemon_nonce, _proof(key, _CLIENT_LABEL, transcript)]}
        return hello, channel


def _same(a, b):
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(a, b)


def is_sealed(data):
    """True when ``data`` is meant as a sealed frame (of any version)."""
    return bytes(data[:3]) == SEALED_MAGIC[:3]


def _nonce(counter):
    return bytes(4) + counter.to_bytes(8, "little")


class Channel:
    """The client's end of a sealed connection: seals what it sends, opens
    what it receives (each counter once, within :data:`REPLAY_WINDOW`).
    Safe to share between threads."""

    def __init__(self, connection_id, send_key, receive_key):
        #: The connection's id (public: in every sealed frame's header).
        self.id = bytes(connection_id)
        self._sealer = ChaCha20Poly1305(send_key)
        self._opener = ChaCha20Poly1305(receive_key)
        self._sent = 0
        self._latest = 0
        self._seen = set()
        self._lock = threading.Lock()

    def seal(self, frame):
        """``frame``, sealed with the next counter."""
        with self._lock:
            self._sent += 1
            counter = self._sent
        header = SEALED_MAGIC + self.id + counter.to_bytes(8, "little")
        return header + self._sealer.encrypt(_nonce(counter), bytes(frame), header)

    def open(self, sealed):
        """Opens a frame the daemon sealed; :class:`OpenError` if it does
        not open or was opened before."""
        sealed = bytes(sealed)
        if len(sealed) < OVERHEAD or not is_sealed(sealed):
            raise OpenError("not a sealed frame (%d bytes)" % len(sealed))
        if sealed[3] != SEALED_MAGIC[3]:
            raise OpenError("sealed format version %d is not this client's" % sealed[3])
        header = sealed[:_HEADER_BYTES]
        if header[4 : 4 + _ID_LEN] != self.id:
            raise OpenError("sealed for another connection")
        counter = int.from_bytes(header[4 + _ID_LEN :], "little")
        with self._lock:
            self._check(counter)
        try:
            frame = self._opener.decrypt(_nonce(counter), sealed[_HEADER_BYTES:], header)
        except Exception as exc:  # cryptography's InvalidTag
            raise OpenError("the frame fails authentication") from exc
        with self._lock:
            self._check(counter)
            self._take(counter)
        return frame

    def _check(self, counter):
        if counter > self._latest:
            return
        if counter == 0 or counter + REPLAY_WINDOW <= self._latest:
            raise OpenError("frame %d is older than the replay window" % counter)
        if counter in self._seen:
            raise OpenError("frame %d was already received (a replay)" % counter)

    def _take(self, counter):
        if counter > self._latest:
            self._latest = counter
            floor = counter - REPLAY_WINDOW
            self._seen = {c for c in self._seen if c > floor}
        self._seen.add(counter)


def is_part(data):
    """True when ``data`` is meant as a part (of any version)."""
    return bytes(data[:3]) == _PART_MAGIC[:3]


def split_parts(frame, stream, part_bytes=PREAUTH_FRAME_BYTES):
    """The parts of ``frame`` for ``stream``, none longer than
    ``part_bytes``: send them in order, each after the previous one got
    :data:`ACK`."""
    room = max(part_bytes - _PART_HEADER_BYTES, 1)
    total = len(frame).to_bytes(8, "little")
    chunks = [frame[i : i + room] for i in range(0, len(frame), room)] or [b""]
    parts = []
    for i, chunk in enumerate(chunks):
        flags = (_FIRST if i == 0 else 0) | (_LAST if i == len(chunks) - 1 else 0)
        parts.append(
            _PART_MAGIC + bytes([flags]) + stream.to_bytes(4, "little") + total + bytes(chunk)
        )
    return parts
