//! A streaming check that accepts an input matching its declared type
//! without decoding it into memory.
//!
//! The daemon checks every input of a servable with `validate_input`
//! before accepting it. Decoding a 32×32×3 image sent as nested lists into
//! a value tree takes thousands of allocations (about 110 µs in a release
//! build); walking its msgpack bytes takes a few microseconds. This pass
//! only ever says "accepted": anything it does not accept (a mismatch,
//! malformed bytes, nesting deeper than it follows, the reserved marker)
//! goes to [`super::check_input_by_value`], which decides and words the
//! error. So it must never accept what that check refuses; its tests and
//! the `typed_input` fuzz target hold it to that.

use super::{TypeSpec, check_packed};

/// Deeper nesting than this is left to the tree-based check, whose
/// decoder has a depth limit of its own (well above this).
const MAX_NESTING: usize = 64;

/// Whether `input` (one msgpack value; bytes after it are ignored, as the
/// tree-based check ignores them) certainly matches `spec`. `false` means
/// "not sure", not "refused".
pub fn accepts(spec: &TypeSpec, input: &[u8]) -> bool {
    Cursor { rest: input }.check(spec, 0).is_some()
}

/// One msgpack value's head: a scalar whole, or how many items a list or
/// map has (which follow it).
enum Head<'a> {
    Nil,
    Bool,
    /// An integer that fits a `u64` (what `as_u64` of the tree gives).
    NonNegative,
    Negative,
    F32,
    F64(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    Ext,
}

/// What one element of an ndarray of a dtype may be, decided once per
/// check instead of once per element.
#[derive(Clone, Copy)]
enum Element {
    Bool,
    Float,
    Unsigned,
    Signed,
}

impl Element {
    fn of(dtype: &str) -> Element {
        if dtype == "bool" {
            Element::Bool
        } else if dtype.starts_with("float") {
            Element::Float
        } else if dtype.starts_with("uint") {
            Element::Unsigned
        } else {
            Element::Signed
        }
    }

    fn admits(self, head: &Head) -> bool {
        match self {
            Element::Bool => matches!(head, Head::Bool),
            Element::Float => matches!(
                head,
                Head::NonNegative | Head::Negative | Head::F32 | Head::F64(_)
            ),
            Element::Unsigned => matches!(head, Head::NonNegative),
            Element::Signed => matches!(head, Head::NonNegative | Head::Negative),
        }
    }
}

/// The bytes not read yet. Every method returns `None` where the bytes
/// end early or are not something this pass follows.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(taken)
    }

    /// The big-endian number in the next `width` bytes.
    fn uint(&mut self, width: usize) -> Option<u64> {
        Some(big_endian(self.take(width)?))
    }

    /// A length in the next `width` bytes.
    fn len(&mut self, width: usize) -> Option<usize> {
        usize::try_from(self.uint(width)?).ok()
    }

    /// Reads one value's head; a string's, binary's or extension's bytes
    /// are read with it.
    fn head(&mut self) -> Option<Head<'a>> {
        use rmp::Marker as M;
        let marker = M::from_u8(*self.take(1)?.first()?);
        let width = field_width(marker);
        Some(match marker {
            M::FixPos(_) => Head::NonNegative,
            M::FixNeg(_) => Head::Negative,
            M::U8 | M::U16 | M::U32 | M::U64 => {
                self.take(width)?;
                Head::NonNegative
            }
            M::I8 | M::I16 | M::I32 | M::I64 => signed(sign_extend(self.uint(width)?, width)),
            M::Null => Head::Nil,
            M::True | M::False => Head::Bool,
            M::F32 => {
                self.take(width)?;
                Head::F32
            }
            M::F64 => Head::F64(f64::from_bits(self.uint(width)?)),
            M::FixStr(n) => Head::Str(self.take(usize::from(n))?),
            M::Str8 | M::Str16 | M::Str32 => {
                let n = self.len(width)?;
                Head::Str(self.take(n)?)
            }
            M::Bin8 | M::Bin16 | M::Bin32 => {
                let n = self.len(width)?;
                Head::Bin(self.take(n)?)
            }
            M::FixArray(n) => Head::Array(usize::from(n)),
            M::Array16 | M::Array32 => Head::Array(self.len(width)?),
            M::FixMap(n) => Head::Map(usize::from(n)),
            M::Map16 | M::Map32 => Head::Map(self.len(width)?),
            M::FixExt1 | M::FixExt2 | M::FixExt4 | M::FixExt8 | M::FixExt16 => {
                // The type byte, then the data.
                self.take(1 + width)?;
                Head::Ext
            }
            M::Ext8 | M::Ext16 | M::Ext32 => {
                let n = self.len(width)?;
                self.take(n.checked_add(1)?)?;
                Head::Ext
            }
            // Reserved: the tree decoder reads it as nil; not followed here.
            M::Reserved => return None,
        })
    }

    /// Reads one whole value, of any type.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_NESTING {
            return None;
        }
        // A count larger than the bytes left ends at the first missing
        // item, so these loops are bounded by the input's length.
        match self.head()? {
            Head::Array(n) => (0..n).try_for_each(|_| self.skip(depth + 1)),
            Head::Map(n) => (0..n).try_for_each(|_| {
                self.skip(depth + 1)?;
                self.skip(depth + 1)
            }),
            _ => Some(()),
        }
    }

    /// Reads one value that matches `spec`.
    fn check(&mut self, spec: &TypeSpec, depth: usize) -> Option<()> {
        if depth > MAX_NESTING {
            return None;
        }
        match spec {
            TypeSpec::Any { .. } => return self.skip(depth),
            TypeSpec::Ndarray { dtype, shape, .. } => {
                let start = self.rest;
                if let Head::Bin(bytes) = self.head()? {
                    return check_packed(dtype, shape, bytes.len(), "").ok();
                }
                self.rest = start;
                return self.ndarray(Element::of(dtype), shape, depth);
            }
            _ => {}
        }
        let head = self.head()?;
        let fits = match (spec, &head) {
            (TypeSpec::Number { .. }, h) => Element::Float.admits(h),
            (TypeSpec::Integer { .. }, Head::F64(f)) => f.fract() == 0.0 && f.is_finite(),
            (TypeSpec::Integer { .. }, h) => Element::Signed.admits(h),
            (TypeSpec::String { .. }, h) => matches!(h, Head::Str(_)),
            (TypeSpec::Boolean { .. }, h) => matches!(h, Head::Bool),
            (TypeSpec::File { .. }, h) => matches!(h, Head::Bin(_) | Head::Str(_)),
            (TypeSpec::List { item, .. }, Head::Array(n)) => {
                return (0..*n).try_for_each(|_| self.check(item, depth + 1));
            }
            (TypeSpec::Dict { properties, .. }, Head::Map(n)) => {
                return self.dict(properties, *n, depth);
            }
            _ => false,
        };
        fits.then_some(())
    }

    /// Reads a map's `n` entries; each declared property must be there,
    /// and its first entry must match.
    fn dict(
        &mut self,
        properties: &std::collections::BTreeMap<String, TypeSpec>,
        n: usize,
        depth: usize,
    ) -> Option<()> {
        let mut found = vec![false; properties.len()];
        for _ in 0..n {
            let key = self.rest;
            self.skip(depth + 1)?;
            let declared = match (Cursor { rest: key }).head()? {
                Head::Str(name) => properties
                    .iter()
                    .enumerate()
                    .find(|(i, (p, _))| !found[*i] && p.as_bytes() == name),
                _ => None,
            };
            match declared {
                Some((i, (_, spec))) => {
                    found[i] = true;
                    self.check(spec, depth + 1)?;
                }
                None => self.skip(depth + 1)?,
            }
        }
        found.iter().all(|f| *f).then_some(())
    }

    /// Reads nested lists of `shape` whose innermost items are `element`s.
    fn ndarray(&mut self, element: Element, shape: &[i64], depth: usize) -> Option<()> {
        if depth > MAX_NESTING {
            return None;
        }
        let head = self.head()?;
        let Some((&len, rest)) = shape.split_first() else {
            return element.admits(&head).then_some(());
        };
        let Head::Array(n) = head else {
            return None;
        };
        if len >= 0 && i64::try_from(n).ok()? != len {
            return None;
        }
        if rest.is_empty() {
            // The innermost lists hold almost every byte: no call per element.
            return (0..n).try_for_each(|_| element.admits(&self.head()?).then_some(()));
        }
        (0..n).try_for_each(|_| self.ndarray(element, rest, depth + 1))
    }
}

/// How many bytes after `marker` hold its number or its length (for a
/// fixext, its data), per the msgpack spec; 0 for markers that hold
/// their value themselves.
pub fn field_width(marker: rmp::Marker) -> usize {
    use rmp::Marker as M;
    match marker {
        M::U8 | M::I8 | M::Str8 | M::Bin8 | M::Ext8 | M::FixExt1 => 1,
        M::U16 | M::I16 | M::Str16 | M::Bin16 | M::Array16 | M::Map16 | M::Ext16 | M::FixExt2 => 2,
        M::U32 | M::I32 | M::Str32 | M::Bin32 | M::Array32 | M::Map32 | M::Ext32 => 4,
        M::F32 | M::FixExt4 => 4,
        M::U64 | M::I64 | M::F64 | M::FixExt8 => 8,
        M::FixExt16 => 16,
        _ => 0,
    }
}

/// The unsigned number `bytes` hold, big-endian (at most 8 of them).
pub fn big_endian(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, &b| (n << 8) | u64::from(b))
}

/// The signed number of `width` bytes whose bits `raw` holds.
pub fn sign_extend(raw: u64, width: usize) -> i64 {
    let shift = 64 - 8 * width as u32;
    ((raw << shift) as i64) >> shift
}

/// An integer read from a signed marker, as the tree decoder files it.
fn signed<'a>(n: i64) -> Head<'a> {
    if n < 0 {
        Head::Negative
    } else {
        Head::NonNegative
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rmpv::Value;

    use super::*;
    use crate::servable::check_input_by_value;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encoding into a Vec");
        out
    }

    /// xorshift64*: the same cases on every run, no dependency.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }

        fn pick<'s, T>(&mut self, xs: &'s [T]) -> &'s T {
            &xs[self.below(xs.len() as u64) as usize]
        }
    }

    fn d() -> String {
        String::new()
    }

    fn spec(dice: &mut Dice, depth: u32) -> TypeSpec {
        let leaf = depth >= 3;
        match dice.below(if leaf { 7 } else { 9 }) {
            0 => TypeSpec::Number { description: d() },
            1 => TypeSpec::Integer { description: d() },
            2 => TypeSpec::String { description: d() },
            3 => TypeSpec::Boolean { description: d() },
            4 => TypeSpec::File { description: d() },
            5 => TypeSpec::Any { description: d() },
            6 => {
                let dtype = *dice.pick(crate::servable::DTYPES);
                let dims = dice.below(4) as usize;
                let shape = (0..dims).map(|_| *dice.pick(&[-1, 0, 1, 2, 3])).collect();
                TypeSpec::Ndarray {
                    dtype: dtype.into(),
                    shape,
                    description: d(),
                }
            }
            7 => TypeSpec::List {
                item: Box::new(spec(dice, depth + 1)),
                description: d(),
            },
            _ => TypeSpec::Dict {
                properties: (0..dice.below(3))
                    .map(|i| (format!("p{i}"), spec(dice, depth + 1)))
                    .collect(),
                description: d(),
            },
        }
    }

    /// A value that often matches `spec`, and often misses in one place.
    fn value(dice: &mut Dice, spec: &TypeSpec, depth: u32) -> Value {
        if dice.below(12) == 0 {
            return any_value(dice, depth);
        }
        match spec {
            TypeSpec::Number { .. } => {
                Value::from(*dice.pick(&[0.5, -3.0, 1e300, f64::NAN, f64::INFINITY]))
            }
            TypeSpec::Integer { .. } => match dice.below(4) {
                0 => Value::from(-7),
                1 => Value::from(u64::MAX),
                2 => Value::from(4.0),
                _ => Value::from(4.5),
            },
            TypeSpec::String { .. } => Value::from("text"),
            TypeSpec::Boolean { .. } => Value::from(dice.below(2) == 0),
            TypeSpec::File { .. } => Value::Binary(vec![1, 2, 3]),
            TypeSpec::Any { .. } => any_value(dice, depth),
            TypeSpec::List { item, .. } => Value::Array(
                (0..dice.below(4))
                    .map(|_| value(dice, item, depth + 1))
                    .collect(),
            ),
            TypeSpec::Dict { properties, .. } => {
                let mut entries: Vec<(Value, Value)> = Vec::new();
                for (k, s) in properties {
                    if dice.below(10) != 0 {
                        entries.push((Value::from(k.as_str()), value(dice, s, depth + 1)));
                    }
                }
                if dice.below(3) == 0 {
                    entries.push((Value::from("extra"), any_value(dice, depth + 1)));
                }
                if dice.below(4) == 0 && !entries.is_empty() {
                    // A repeated key: the first one counts.
                    let again = (entries[0].0.clone(), any_value(dice, depth + 1));
                    entries.push(again);
                }
                if dice.below(4) == 0 {
                    entries.reverse();
                }
                Value::Map(entries)
            }
            TypeSpec::Ndarray { dtype, shape, .. } => {
                if dice.below(4) == 0 {
                    let fixed: Option<Vec<usize>> =
                        shape.iter().map(|&n| usize::try_from(n).ok()).collect();
                    let elements = fixed.map_or(3, |f| f.iter().product::<usize>());
                    let size = crate::servable::dtype_size(dtype).unwrap_or(1);
                    let slack = *dice.pick(&[0usize, 0, 0, 1]);
                    return Value::Binary(vec![0; elements * size + slack]);
                }
                nested(dice, dtype, shape)
            }
        }
    }

    fn nested(dice: &mut Dice, dtype: &str, shape: &[i64]) -> Value {
        match shape.split_first() {
            None => match (dtype, dice.below(6)) {
                (_, 0) => Value::from(-2),
                (_, 1) => Value::from(1.5f32),
                (_, 2) => Value::from(true),
                ("bool", _) => Value::from(false),
                (t, _) if t.starts_with("float") => Value::from(0.25),
                _ => Value::from(9u8),
            },
            Some((&len, rest)) => {
                let n = if len < 0 || dice.below(15) == 0 {
                    dice.below(4)
                } else {
                    len as u64
                };
                Value::Array((0..n).map(|_| nested(dice, dtype, rest)).collect())
            }
        }
    }

    fn any_value(dice: &mut Dice, depth: u32) -> Value {
        let most = if depth >= 4 { 8 } else { 10 };
        match dice.below(most) {
            0 => Value::Nil,
            1 => Value::from(true),
            2 => Value::from(-100_000i64),
            3 => Value::from(70_000u32),
            4 => Value::from(2.5f32),
            5 => Value::String(rmpv::Utf8String::from("s")),
            6 => Value::Binary(vec![0; 300]),
            7 => Value::Ext(3, vec![1, 2, 3]),
            8 => Value::Array(
                (0..dice.below(3))
                    .map(|_| any_value(dice, depth + 1))
                    .collect(),
            ),
            _ => Value::Map(
                (0..dice.below(3))
                    .map(|_| (any_value(dice, depth + 1), any_value(dice, depth + 1)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn accepts_exactly_what_the_tree_check_accepts_for_well_formed_inputs() {
        let mut dice = Dice(0x5eed_1234_abcd_0001);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let spec = spec(&mut dice, 0);
            let bytes = encode(&value(&mut dice, &spec, 0));
            let quick = accepts(&spec, &bytes);
            let tree = check_input_by_value(&spec, &bytes);
            assert_eq!(quick, tree.is_ok(), "{spec:?} {bytes:x?}: {tree:?}");
            if quick {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        // Both kinds of case came up often enough to mean something.
        assert!(accepted > 5_000 && refused > 2_000, "{accepted} {refused}");
    }

    #[test]
    fn never_accepts_what_the_tree_check_refuses_in_damaged_inputs() {
        let mut dice = Dice(0x0dd_ba11_cafe_f00d);
        for _ in 0..20_000 {
            let spec = spec(&mut dice, 0);
            let mut bytes = encode(&value(&mut dice, &spec, 0));
            match dice.below(3) {
                0 => {
                    let cut = dice.below(bytes.len() as u64) as usize;
                    bytes.truncate(cut);
                }
                1 => {
                    let at = dice.below(bytes.len() as u64) as usize;
                    bytes[at] = dice.below(256) as u8;
                }
                _ => {
                    let at = dice.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << dice.below(8);
                }
            }
            if accepts(&spec, &bytes) {
                assert!(
                    check_input_by_value(&spec, &bytes).is_ok(),
                    "{spec:?} {bytes:x?}"
                );
            }
        }
    }

    #[test]
    fn leaves_deep_nesting_and_the_reserved_marker_to_the_tree_check() {
        let any = TypeSpec::Any { description: d() };
        let mut deep = vec![0x91; MAX_NESTING + 2];
        deep.push(0xc0);
        assert!(!accepts(&any, &deep));
        assert!(check_input_by_value(&any, &deep).is_ok());
        assert!(!accepts(&any, &[0xc1]));
        let shallow = [0x91, 0x91, 0xc0];
        assert!(accepts(&any, &shallow));
    }

    #[test]
    fn a_huge_declared_length_ends_at_the_bytes() {
        let list = TypeSpec::List {
            item: Box::new(TypeSpec::Any { description: d() }),
            description: d(),
        };
        // An array32 of 4 billion items in 6 bytes.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0];
        assert!(!accepts(&list, &bytes));
        let map = TypeSpec::Dict {
            properties: BTreeMap::new(),
            description: d(),
        };
        assert!(!accepts(&map, &[0xdf, 0xff, 0xff, 0xff, 0xff]));
    }

    #[test]
    fn an_image_as_nested_lists_is_accepted_without_the_tree() {
        let spec = TypeSpec::Ndarray {
            dtype: "float32".into(),
            shape: vec![32, 32, 3],
            description: d(),
        };
        let image = Value::Array(
            (0..32)
                .map(|_| {
                    Value::Array(
                        (0..32)
                            .map(|_| Value::Array(vec![Value::F32(0.5); 3]))
                            .collect(),
                    )
                })
                .collect(),
        );
        let bytes = encode(&image);
        assert!(accepts(&spec, &bytes));
        let mut short = image;
        if let Value::Array(rows) = &mut short {
            rows.pop();
        }
        assert!(!accepts(&spec, &encode(&short)));
        assert_eq!(
            check_input_by_value(&spec, &encode(&short))
                .unwrap_err()
                .to_string(),
            "input: expected 32 elements, got 31"
        );
    }
}
