//! The memo store: results of memoizable servables, by request.
//!
//! The key is blake3 over the request's [`MemoScope`], the servable's
//! canonical `NAME@VERSION`, the request's input and its parameters, both in
//! *canonical* msgpack (map entries sorted, numbers in their shortest
//! encoding), so two requests that mean the same thing share an entry
//! whatever order their client wrote the keys in. The version is part of
//! the key: a new version never sees an old version's results.
//!
//! The scope is whose results a request may be answered from. By default
//! it is the caller's own (its uid: the ipc peer, or a TCP token's owner),
//! so a request answered from the store, sooner than a run, tells its
//! caller only that it sent the same input before, never that somebody
//! else did. A servable's owner may share its entries among everybody who
//! may invoke it ([`Access::shared_memo`]), for models whose inputs say
//! nothing about who sent them. Requests of one scope also coalesce only
//! with each other while they run.
//!
//! [`Access::shared_memo`]: flotilla_protocol::access::Access::shared_memo
//!
//! Entries live in memory (a hit is a hash lookup inside the daemon) and are
//! written through to the store so they survive restarts. The store is
//! bounded by entries and by bytes; the least recently used entries go
//! first. Only completed results enter it: failures are never memoised.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_protocol::Payload;
use flotilla_protocol::client::MemoStats;
use flotilla_protocol::servable::{ServableRecord, ServableRef};

/// Fixed per-entry overhead counted against the byte bound (key, name,
/// bookkeeping).
const ENTRY_OVERHEAD: u64 = 96;

/// A memo key: blake3 of the canonical request.
pub type MemoKey = [u8; 32];

/// Whose earlier results a request may be answered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoScope {
    /// Only the results of the caller with this uid (the default).
    Caller(u32),
    /// The results of everybody who may invoke the servable (its owner
    /// shares them).
    Shared,
}

impl MemoScope {
    /// The scope of a request by `caller` (a uid) for the servable of
    /// `record` (none for builtins, whose results are never shared).
    pub fn of(record: Option<&ServableRecord>, caller: u32) -> MemoScope {
        let shared = record
            .and_then(|r| r.access.as_ref())
            .is_some_and(|a| a.shared_memo);
        if shared {
            MemoScope::Shared
        } else {
            MemoScope::Caller(caller)
        }
    }

    fn bytes(self) -> Vec<u8> {
        match self {
            MemoScope::Shared => b"shared".to_vec(),
            MemoScope::Caller(uid) => {
                let mut out = b"uid ".to_vec();
                out.extend_from_slice(&uid.to_le_bytes());
                out
            }
        }
    }
}

/// Computes the key of a request in `scope` for `servable` (canonical
/// `NAME@VERSION`).
pub fn key(scope: MemoScope, servable: &str, input: &[u8], params: &[u8]) -> MemoKey {
    let mut h = blake3::Hasher::new();
    h.update(b"flotilla-memo-v2\0");
    let (input, params) = (canonical(input), canonical(params));
    for part in [
        &scope.bytes()[..],
        servable.as_bytes(),
        &input[..],
        &params[..],
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

/// The canonical msgpack of `bytes`: map entries sorted by their encoded
/// keys, every value re-encoded in its shortest form. Bytes that are not a
/// single msgpack value are returned as they are, and so are bytes already
/// in that form (what clients send but for maps), found without decoding
/// them into a value tree.
pub fn canonical(bytes: &[u8]) -> Cow<'_, [u8]> {
    if already_canonical(bytes) {
        return Cow::Borrowed(bytes);
    }
    canonical_by_value(bytes)
}

/// [`canonical`] through a value tree: what bytes that are not already
/// canonical take.
fn canonical_by_value(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut reader = bytes;
    match rmpv::decode::read_value(&mut reader) {
        Ok(value) if reader.is_empty() => {
            let mut out = Vec::with_capacity(bytes.len());
            write_canonical(&mut out, &value);
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(bytes),
    }
}

/// Whether `bytes` is exactly one msgpack value with no map, extension or
/// reserved marker in it, and every integer, string, binary and list header
/// in the shortest form (strings valid UTF-8): bytes [`canonical`] would
/// write out again unchanged. `false` means "not sure".
fn already_canonical(bytes: &[u8]) -> bool {
    use flotilla_protocol::servable::quick_check::{big_endian, field_width, sign_extend};
    use rmp::Marker as M;
    let mut rest = bytes;
    // Values still to read; each takes at least one byte, so a list that
    // claims more items than there are bytes ends the loop when they do.
    let mut pending: usize = 1;
    while pending > 0 {
        pending -= 1;
        let Some((&byte, tail)) = rest.split_first() else {
            return false;
        };
        let marker = M::from_u8(byte);
        let width = field_width(marker);
        let Some(field) = tail.get(..width) else {
            return false;
        };
        rest = &tail[width..];
        // The field holds the number, or the length or count.
        let n = big_endian(field);
        // The least `n` this marker is the shortest form for (as rmp
        // writes), and what follows the field: bytes (a string's, which
        // must be UTF-8, or a binary's) or items.
        let (least, body, text, items) = match marker {
            M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False | M::F32 | M::F64 => {
                (0, 0, false, 0)
            }
            M::FixArray(k) => (0, 0, false, u64::from(k)),
            M::FixStr(k) => (0, u64::from(k), true, 0),
            M::U8 => (0x80, 0, false, 0),
            M::U16 => (0x100, 0, false, 0),
            M::U32 => (0x1_0000, 0, false, 0),
            M::U64 => (0x1_0000_0000, 0, false, 0),
            M::I8 | M::I16 | M::I32 | M::I64 => {
                // Shortest only below what the next narrower form holds.
                let above = [-32, -128, -32_768, -2_147_483_648][width.trailing_zeros() as usize];
                if sign_extend(n, width) >= above {
                    return false;
                }
                (0, 0, false, 0)
            }
            M::Str8 => (32, n, true, 0),
            M::Str16 => (0x100, n, true, 0),
            M::Str32 => (0x1_0000, n, true, 0),
            M::Bin8 => (0, n, false, 0),
            M::Bin16 => (0x100, n, false, 0),
            M::Bin32 => (0x1_0000, n, false, 0),
            M::Array16 => (16, 0, false, n),
            M::Array32 => (0x1_0000, 0, false, n),
            // Maps (their keys are sorted), extensions, the reserved marker.
            _ => return false,
        };
        if n < least {
            return false;
        }
        let Some(body) = usize::try_from(body).ok().and_then(|b| rest.get(..b)) else {
            return false;
        };
        if text && std::str::from_utf8(body).is_err() {
            return false;
        }
        rest = &rest[body.len()..];
        let Some(more) = usize::try_from(items)
            .ok()
            .and_then(|i| pending.checked_add(i))
        else {
            return false;
        };
        pending = more;
    }
    rest.is_empty()
}

fn encoded(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(&mut out, v);
    out
}

fn write_canonical(out: &mut Vec<u8>, v: &rmpv::Value) {
    match v {
        rmpv::Value::Map(entries) => {
            let mut pairs: Vec<(Vec<u8>, &rmpv::Value)> =
                entries.iter().map(|(k, v)| (encoded(k), v)).collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            let _ = rmp::encode::write_map_len(out, pairs.len() as u32);
            for (k, v) in pairs {
                out.extend_from_slice(&k);
                write_canonical(out, v);
            }
        }
        rmpv::Value::Array(items) => {
            let _ = rmp::encode::write_array_len(out, items.len() as u32);
            for item in items {
                write_canonical(out, item);
            }
        }
        // rmpv writes integers, strings and the rest in their shortest form.
        other => {
            let _ = rmpv::encode::write_value(out, other);
        }
    }
}

#[derive(Debug)]
struct Entry {
    servable: Arc<str>,
    output: Payload,
    tick: u64,
}

impl Entry {
    fn bytes(&self) -> u64 {
        self.output.len() as u64 + self.servable.len() as u64 + ENTRY_OVERHEAD
    }
}

/// The in-memory memo store with LRU eviction.
#[derive(Debug)]
pub struct Memo {
    entries: HashMap<MemoKey, Entry>,
    lru: BTreeMap<u64, MemoKey>,
    next_tick: u64,
    bytes: u64,
    max_entries: u64,
    max_bytes: u64,
    /// Counters reported by `flotilla memo stats`.
    pub stats: MemoStats,
}

impl Memo {
    /// An empty store with these bounds.
    pub fn new(max_entries: u64, max_bytes: u64) -> Self {
        Memo {
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            bytes: 0,
            max_entries,
            max_bytes,
            stats: MemoStats {
                max_entries,
                max_bytes,
                ..MemoStats::default()
            },
        }
    }

    /// The stored output for `key`, marking it recently used.
    pub fn get(&mut self, key: &MemoKey) -> Option<Payload> {
        let tick = self.next_tick;
        let entry = self.entries.get_mut(key)?;
        self.lru.remove(&entry.tick);
        entry.tick = tick;
        self.lru.insert(tick, *key);
        self.next_tick += 1;
        Some(entry.output.clone())
    }

    /// Stores an output; returns the keys evicted to make room. An output
    /// larger than the whole byte bound is not stored.
    pub fn insert(&mut self, key: MemoKey, servable: Arc<str>, output: Payload) -> Vec<MemoKey> {
        let entry = Entry {
            servable,
            output,
            tick: self.next_tick,
        };
        if entry.bytes() > self.max_bytes {
            return Vec::new();
        }
        self.next_tick += 1;
        self.bytes += entry.bytes();
        self.lru.insert(entry.tick, key);
        if let Some(old) = self.entries.insert(key, entry) {
            self.lru.remove(&old.tick);
            self.bytes -= old.bytes();
        }
        let mut evicted = Vec::new();
        while self.entries.len() as u64 > self.max_entries || self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes();
            }
            evicted.push(oldest);
        }
        self.stats.evictions += evicted.len() as u64;
        evicted
    }

    /// Drops every entry, or those of servable `name` (any version);
    /// returns their keys.
    pub fn clear(&mut self, name: Option<&str>) -> Vec<MemoKey> {
        let doomed: Vec<MemoKey> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                name.is_none_or(|n| {
                    ServableRef::parse(&e.servable).is_ok_and(|r| r.name() == Some(n))
                })
            })
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            if let Some(e) = self.entries.remove(k) {
                self.lru.remove(&e.tick);
                self.bytes -= e.bytes();
            }
        }
        doomed
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Counters and the current size, without the per-servable split
    /// (which walks every entry): cheap enough for every metrics scrape.
    pub fn summary(&self) -> MemoStats {
        MemoStats {
            entries: self.entries.len() as u64,
            bytes: self.bytes,
            per_servable: Vec::new(),
            ..self.stats.clone()
        }
    }

    /// Counters plus the current size, per servable.
    pub fn report(&self) -> MemoStats {
        let mut per: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for e in self.entries.values() {
            let counts = per.entry(&e.servable).or_default();
            counts.0 += 1;
            counts.1 += e.bytes();
        }
        MemoStats {
            entries: self.entries.len() as u64,
            bytes: self.bytes,
            per_servable: per
                .into_iter()
                .map(|(name, (n, b))| (name.to_owned(), n, b))
                .collect(),
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(v: rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        out
    }

    const ME: MemoScope = MemoScope::Caller(1000);

    #[test]
    fn keys_ignore_map_order_but_not_version_or_params() {
        let a = mp(rmpv::Value::Map(vec![
            ("x".into(), 1.into()),
            ("y".into(), 2.into()),
        ]));
        let b = mp(rmpv::Value::Map(vec![
            ("y".into(), 2.into()),
            ("x".into(), 1.into()),
        ]));
        assert_ne!(a, b);
        assert_eq!(key(ME, "m@1.0.0", &a, &[]), key(ME, "m@1.0.0", &b, &[]));
        assert_ne!(key(ME, "m@1.0.0", &a, &[]), key(ME, "m@1.0.1", &a, &[]));
        let p = mp(rmpv::Value::Map(vec![("k".into(), 3.into())]));
        assert_ne!(key(ME, "m@1.0.0", &a, &[]), key(ME, "m@1.0.0", &a, &p));
        // A wide encoding of 1 means the same as the short one.
        assert_eq!(
            key(ME, "m@1.0.0", &[0xcd, 0x00, 0x01], &[]),
            key(ME, "m@1.0.0", &[0x01], &[])
        );
    }

    /// Every wide or odd form of each kind of value, and values as any
    /// client writes them: bytes taken as canonical are exactly what the
    /// value tree writes, and every form of one value has one key.
    #[test]
    fn bytes_already_canonical_are_hashed_as_they_are_and_only_those() {
        use rmpv::Value as V;
        let image = V::Array(vec![
            V::Array(vec![V::F32(0.5), V::F64(-1.25), V::from(3)]);
            20
        ]);
        let shortest = [
            mp(V::Nil),
            mp(V::from(true)),
            mp(V::from(127)),
            mp(V::from(128)),
            mp(V::from(70_000)),
            mp(V::from(u64::MAX)),
            mp(V::from(-32)),
            mp(V::from(-33)),
            mp(V::from(-40_000)),
            mp(V::from(i64::MIN)),
            mp(V::from("x".repeat(31))),
            mp(V::from("é".repeat(40))),
            mp(V::from("y".repeat(300))),
            mp(V::Binary(vec![7; 300])),
            mp(V::Array(vec![V::Nil; 15])),
            mp(V::Array(vec![V::Nil; 16])),
            mp(V::Array(vec![V::Nil; 70_000])),
            mp(image),
        ];
        for bytes in &shortest {
            assert!(
                already_canonical(bytes),
                "{:x?}",
                &bytes[..bytes.len().min(8)]
            );
            assert_eq!(canonical_by_value(bytes), &bytes[..]);
        }
        // (a wide or odd form, the value's shortest form)
        let wide: [(&[u8], Vec<u8>); 12] = [
            (&[0xcc, 0x05], mp(V::from(5))),
            (&[0xcd, 0x00, 0x80], mp(V::from(128))),
            (&[0xd0, 0x05], mp(V::from(5))),
            (&[0xd0, 0xff], mp(V::from(-1))),
            (&[0xd1, 0xff, 0x80], mp(V::from(-128))),
            (
                &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80, 0x00],
                mp(V::from(-32_768)),
            ),
            (&[0xd9, 0x01, b'a'], mp(V::from("a"))),
            (&[0xc5, 0x00, 0x01, 0x07], mp(V::Binary(vec![7]))),
            (&[0xdc, 0x00, 0x01, 0xc0], mp(V::Array(vec![V::Nil]))),
            (
                &[0xdd, 0x00, 0x00, 0x00, 0x01, 0xc0],
                mp(V::Array(vec![V::Nil])),
            ),
            // Invalid UTF-8 in a string: the tree writes it as binary.
            (&[0xa1, 0xff], mp(V::Binary(vec![0xff]))),
            // The reserved marker reads as nil.
            (&[0xc1], mp(V::Nil)),
        ];
        for (odd, short) in &wide {
            assert!(!already_canonical(odd), "{odd:x?}");
            assert_eq!(canonical(odd), &short[..], "{odd:x?}");
            assert_eq!(key(ME, "m@1.0.0", odd, &[]), key(ME, "m@1.0.0", short, &[]));
        }
        // Maps and extensions go through the tree; bytes that are not one
        // value come back as they are.
        let map = mp(V::Map(vec![(V::from("k"), V::from(1))]));
        assert!(!already_canonical(&map));
        assert!(!already_canonical(&mp(V::Ext(1, vec![1, 2]))));
        for odd in [
            &[0x92, 0x01][..],
            &[0x01, 0x02],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            &[],
        ] {
            assert!(!already_canonical(odd), "{odd:x?}");
            assert_eq!(canonical(odd), odd);
        }
    }

    #[test]
    fn keys_are_the_callers_own_unless_the_owner_shares_them() {
        let input = mp(7.into());
        let mine = key(ME, "m@1.0.0", &input, &[]);
        let theirs = key(MemoScope::Caller(1001), "m@1.0.0", &input, &[]);
        let shared = key(MemoScope::Shared, "m@1.0.0", &input, &[]);
        assert_ne!(mine, theirs);
        assert_ne!(mine, shared);
        assert_ne!(theirs, shared);
    }

    #[test]
    fn eviction_keeps_both_bounds_and_drops_the_least_recently_used() {
        let name: Arc<str> = Arc::from("m@1.0.0");
        let k = |i: u8| [i; 32];
        let out = |n: usize| Payload::from(vec![0u8; n]);
        let per_entry = 100 + 7 + ENTRY_OVERHEAD;
        let mut memo = Memo::new(3, 10 * per_entry);
        for i in 0..3 {
            assert!(memo.insert(k(i), name.clone(), out(100)).is_empty());
        }
        assert!(memo.get(&k(0)).is_some(), "0 is now the most recently used");
        assert_eq!(memo.insert(k(3), name.clone(), out(100)), [k(1)]);
        assert_eq!(memo.len(), 3);
        // A big entry pushes out as many as the byte bound needs.
        let evicted = memo.insert(k(4), name.clone(), out((8 * per_entry) as usize));
        assert_eq!(evicted, [k(2), k(0)]);
        assert!(memo.report().bytes <= 10 * per_entry);
        assert_eq!(memo.report().evictions, 3);
        // Larger than the whole bound: not stored at all.
        assert!(
            memo.insert(k(5), name.clone(), out((11 * per_entry) as usize))
                .is_empty()
        );
        assert!(memo.get(&k(5)).is_none());
    }

    #[test]
    fn clearing_one_servable_keeps_the_others() {
        let mut memo = Memo::new(10, 1 << 20);
        memo.insert([1; 32], Arc::from("a@1.0.0"), Payload::new());
        memo.insert([2; 32], Arc::from("a@2.0.0"), Payload::new());
        memo.insert([3; 32], Arc::from("b@1.0.0"), Payload::new());
        assert_eq!(memo.clear(Some("a")).len(), 2);
        assert_eq!(
            memo.report().per_servable,
            [("b@1.0.0".to_owned(), 1, 7 + ENTRY_OVERHEAD)]
        );
    }
}
