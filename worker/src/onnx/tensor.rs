//! Requests to tensor elements and tensor slices back to replies.
//!
//! A request's input is one item of the model's batch: an ndarray of the
//! servable's declared dtype and shape, sent either as nested msgpack lists
//! of numbers (what any client writes) or packed, as msgpack binary holding
//! the elements' little-endian bytes in row-major order (numpy's
//! `tobytes()`, much cheaper for images). Decoding appends the elements to
//! the batch's buffer, so stacking the batch is the decoding itself; a
//! request that does not fit fails alone with a message naming the shape it
//! should have had. Outputs are written back as nested lists (or a single
//! number for a scalar output).

use std::fmt;

use ort::value::{PrimitiveTensorElementType, TensorElementType};

/// The element types the ONNX runtime feeds and returns (the servable's
/// `dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// `float32`
    F32,
    /// `float64`
    F64,
    /// `int8`
    I8,
    /// `int16`
    I16,
    /// `int32`
    I32,
    /// `int64`
    I64,
    /// `uint8`
    U8,
    /// `uint16`
    U16,
}

impl DType {
    /// The dtype named `name` in a `servable.toml`.
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name {
            "float32" => DType::F32,
            "float64" => DType::F64,
            "int8" => DType::I8,
            "int16" => DType::I16,
            "int32" => DType::I32,
            "int64" => DType::I64,
            "uint8" => DType::U8,
            "uint16" => DType::U16,
            _ => return None,
        })
    }

    /// The dtype of a model's tensor, if one this runtime handles.
    pub fn of_tensor(ty: TensorElementType) -> Option<DType> {
        Some(match ty {
            TensorElementType::Float32 => DType::F32,
            TensorElementType::Float64 => DType::F64,
            TensorElementType::Int8 => DType::I8,
            TensorElementType::Int16 => DType::I16,
            TensorElementType::Int32 => DType::I32,
            TensorElementType::Int64 => DType::I64,
            TensorElementType::Uint8 => DType::U8,
            TensorElementType::Uint16 => DType::U16,
            _ => return None,
        })
    }

    /// True for the integer types.
    pub fn is_integer(self) -> bool {
        !matches!(self, DType::F32 | DType::F64)
    }

    /// Its name in a `servable.toml`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A number as msgpack carries it.
#[derive(Clone, Copy, Debug)]
pub enum Number {
    /// A negative or small integer.
    Int(i64),
    /// A non-negative integer.
    Uint(u64),
    /// A float.
    Float(f64),
}

/// A Rust element type of a tensor.
pub trait Element: PrimitiveTensorElementType + Copy + fmt::Debug + 'static {
    /// Bytes per element, packed.
    const SIZE: usize;
    /// The element from its little-endian bytes (`bytes.len() == SIZE`).
    fn from_le(bytes: &[u8]) -> Self;
    /// The element a number stands for, if it fits.
    fn from_number(n: Number) -> Option<Self>;
    /// Appends it to `out` as a msgpack number.
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! integer_element {
    ($t:ty) => {
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn from_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            fn from_number(n: Number) -> Option<Self> {
                match n {
                    Number::Int(i) => <$t>::try_from(i).ok(),
                    Number::Uint(u) => <$t>::try_from(u).ok(),
                    Number::Float(_) => None,
                }
            }
            fn write(self, out: &mut Vec<u8>) {
                // Writing to a Vec cannot fail.
                let _ = rmp::encode::write_sint(out, self as i64);
            }
        }
    };
}

integer_element!(i8);
integer_element!(i16);
integer_element!(i32);
integer_element!(i64);
integer_element!(u8);
integer_element!(u16);

impl Element for f32 {
    const SIZE: usize = 4;
    fn from_le(bytes: &[u8]) -> Self {
        let mut a = [0u8; 4];
        a.copy_from_slice(bytes);
        f32::from_le_bytes(a)
    }
    fn from_number(n: Number) -> Option<Self> {
        Some(match n {
            Number::Int(i) => i as f32,
            Number::Uint(u) => u as f32,
            Number::Float(f) => f as f32,
        })
    }
    fn write(self, out: &mut Vec<u8>) {
        let _ = rmp::encode::write_f32(out, self);
    }
}

impl Element for f64 {
    const SIZE: usize = 8;
    fn from_le(bytes: &[u8]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        f64::from_le_bytes(a)
    }
    fn from_number(n: Number) -> Option<Self> {
        Some(match n {
            Number::Int(i) => i as f64,
            Number::Uint(u) => u as f64,
            Number::Float(f) => f,
        })
    }
    fn write(self, out: &mut Vec<u8>) {
        let _ = rmp::encode::write_f64(out, self);
    }
}

/// Runs `$body` with `$t` the Rust type of `$dtype`.
macro_rules! with_dtype {
    ($dtype:expr, $t:ident, $body:expr) => {
        match $dtype {
            $crate::onnx::tensor::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::onnx::tensor::DType::F64 => {
                type $t = f64;
                $body
            }
            $crate::onnx::tensor::DType::I8 => {
                type $t = i8;
                $body
            }
            $crate::onnx::tensor::DType::I16 => {
                type $t = i16;
                $body
            }
            $crate::onnx::tensor::DType::I32 => {
                type $t = i32;
                $body
            }
            $crate::onnx::tensor::DType::I64 => {
                type $t = i64;
                $body
            }
            $crate::onnx::tensor::DType::U8 => {
                type $t = u8;
                $body
            }
            $crate::onnx::tensor::DType::U16 => {
                type $t = u16;
                $body
            }
        }
    };
}
pub(crate) use with_dtype;

/// What one request's input must be, for messages.
pub fn expected(dtype: DType, shape: &[usize], size: usize) -> String {
    let elements: usize = shape.iter().product();
    format!(
        "an ndarray of {dtype} with shape {shape:?} (nested lists, or {} packed little-endian bytes)",
        elements * size
    )
}

/// Appends the elements of one request's `input` (shape `shape`) to `out`;
/// on error `out` is as it was and the message names the shape expected.
pub fn decode_into<T: Element>(
    input: &[u8],
    dtype: DType,
    shape: &[usize],
    out: &mut Vec<T>,
) -> Result<(), String> {
    let before = out.len();
    let mut reader = input;
    let result = decode_value(&mut reader, dtype, shape, out);
    let result = result.and_then(|()| {
        if reader.is_empty() {
            Ok(())
        } else {
            Err("input: trailing bytes after the value".to_owned())
        }
    });
    result.map_err(|e| {
        out.truncate(before);
        format!("{e}; expected {}", expected(dtype, shape, T::SIZE))
    })
}

fn decode_value<T: Element>(
    reader: &mut &[u8],
    dtype: DType,
    shape: &[usize],
    out: &mut Vec<T>,
) -> Result<(), String> {
    use rmp::Marker;
    let marker = peek_marker(reader)?;
    if matches!(marker, Marker::Bin8 | Marker::Bin16 | Marker::Bin32) {
        let len = rmp::decode::read_bin_len(reader)
            .map_err(|e| format!("input: unreadable binary: {e}"))? as usize;
        let elements: usize = shape.iter().product();
        if len != elements * T::SIZE || reader.len() < len {
            return Err(format!("input: got {len} packed bytes"));
        }
        let (bytes, rest) = reader.split_at(len);
        out.extend(bytes.chunks_exact(T::SIZE).map(T::from_le));
        *reader = rest;
        return Ok(());
    }
    decode_nested(reader, dtype, shape, out).map_err(|(mut at, message)| {
        // Indices were collected innermost first, on the way out.
        at.reverse();
        let path: String = at.iter().map(|i| format!("[{i}]")).collect();
        format!("input{path}: {message}")
    })
}

fn peek_marker(reader: &[u8]) -> Result<rmp::Marker, String> {
    reader
        .first()
        .map(|&b| rmp::Marker::from_u8(b))
        .ok_or_else(|| "input: empty".to_owned())
}

/// Where in the nested lists a problem is (indices innermost first) and
/// what it is.
type NestedError = (Vec<usize>, String);

fn decode_nested<T: Element>(
    reader: &mut &[u8],
    dtype: DType,
    shape: &[usize],
    out: &mut Vec<T>,
) -> Result<(), NestedError> {
    let here = |message: String| (Vec::new(), message);
    match shape.split_first() {
        None => {
            out.push(read_element(reader, dtype).map_err(here)?);
            Ok(())
        }
        Some((&len, rest)) => {
            let marker = peek_marker(reader).map_err(|_| here("ends early".into()))?;
            let got = rmp::decode::read_array_len(reader).map_err(|_| {
                here(format!(
                    "expected a list of {len} (for {} more dimension(s)), got {}",
                    shape.len(),
                    describe(marker)
                ))
            })? as usize;
            if got != len {
                return Err(here(format!("expected {len} elements, got {got}")));
            }
            if rest.is_empty() {
                // The innermost lists hold almost every element: no call
                // per element through the shape.
                for i in 0..len {
                    out.push(read_element(reader, dtype).map_err(|m| (vec![i], m))?);
                }
                return Ok(());
            }
            for i in 0..len {
                decode_nested(reader, dtype, rest, out).map_err(|(mut at, message)| {
                    at.push(i);
                    (at, message)
                })?;
            }
            Ok(())
        }
    }
}

/// Reads one element of a `dtype` tensor.
fn read_element<T: Element>(reader: &mut &[u8], dtype: DType) -> Result<T, String> {
    let n =
        read_number(reader).map_err(|found| format!("expected a {dtype} element, got {found}"))?;
    T::from_number(n).ok_or_else(|| format!("{n:?} is not a {dtype} element"))
}

/// Reads one msgpack number; the kind of value found otherwise.
fn read_number(reader: &mut &[u8]) -> Result<Number, String> {
    use rmp::Marker as M;
    let marker = peek_marker(reader)?;
    Ok(match marker {
        M::FixPos(v) => {
            *reader = &reader[1..];
            Number::Uint(u64::from(v))
        }
        M::FixNeg(v) => {
            *reader = &reader[1..];
            Number::Int(i64::from(v))
        }
        M::U8 => Number::Uint(u64::from(u8::from_be_bytes(number_bytes(reader)?))),
        M::U16 => Number::Uint(u64::from(u16::from_be_bytes(number_bytes(reader)?))),
        M::U32 => Number::Uint(u64::from(u32::from_be_bytes(number_bytes(reader)?))),
        M::U64 => Number::Uint(u64::from_be_bytes(number_bytes(reader)?)),
        M::I8 => Number::Int(i64::from(i8::from_be_bytes(number_bytes(reader)?))),
        M::I16 => Number::Int(i64::from(i16::from_be_bytes(number_bytes(reader)?))),
        M::I32 => Number::Int(i64::from(i32::from_be_bytes(number_bytes(reader)?))),
        M::I64 => Number::Int(i64::from_be_bytes(number_bytes(reader)?)),
        M::F32 => Number::Float(f64::from(f32::from_be_bytes(number_bytes(reader)?))),
        M::F64 => Number::Float(f64::from_be_bytes(number_bytes(reader)?)),
        other => return Err(describe(other)),
    })
}

/// The `N` bytes after a number's marker, and the reader moved past both.
fn number_bytes<const N: usize>(reader: &mut &[u8]) -> Result<[u8; N], String> {
    let bytes = reader
        .get(1..=N)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| "a truncated number".to_owned())?;
    *reader = &reader[1 + N..];
    Ok(bytes)
}

fn describe(marker: rmp::Marker) -> String {
    use rmp::Marker as M;
    match marker {
        M::Null => "null",
        M::True | M::False => "a boolean",
        M::FixStr(_) | M::Str8 | M::Str16 | M::Str32 => "a string",
        M::Bin8 | M::Bin16 | M::Bin32 => "bytes",
        M::FixArray(_) | M::Array16 | M::Array32 => "a list",
        M::FixMap(_) | M::Map16 | M::Map32 => "a dict",
        M::FixPos(_) | M::FixNeg(_) | M::U8 | M::U16 | M::U32 | M::U64 | M::I8 | M::I16 => {
            "a number"
        }
        M::I32 | M::I64 | M::F32 | M::F64 => "a number",
        _ => "an extension value",
    }
    .to_owned()
}

/// One request's output, `values` shaped `shape` (empty: a single number),
/// as msgpack.
pub fn encode<T: Element>(values: &[T], shape: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * (T::SIZE + 1) + 8);
    let mut rest = values;
    encode_nested(&mut rest, shape, &mut out);
    out
}

fn encode_nested<T: Element>(values: &mut &[T], shape: &[usize], out: &mut Vec<u8>) {
    match shape.split_first() {
        None => {
            if let Some((first, rest)) = values.split_first() {
                first.write(out);
                *values = rest;
            }
        }
        Some((&len, rest)) => {
            let _ = rmp::encode::write_array_len(out, len as u32);
            for _ in 0..len {
                encode_nested(values, rest, out);
            }
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

    fn nested(rows: &[&[f64]]) -> rmpv::Value {
        rmpv::Value::Array(
            rows.iter()
                .map(|r| rmpv::Value::Array(r.iter().map(|&x| x.into()).collect()))
                .collect(),
        )
    }

    #[test]
    fn nested_lists_and_packed_bytes_decode_alike() {
        let mut out: Vec<f32> = vec![9.0];
        decode_into(
            &mp(nested(&[&[1.0, 2.5], &[3.0, -4.0]])),
            DType::F32,
            &[2, 2],
            &mut out,
        )
        .unwrap();
        let packed: Vec<u8> = [5.0f32, 6.0, 7.0, 8.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        decode_into(
            &mp(rmpv::Value::Binary(packed)),
            DType::F32,
            &[2, 2],
            &mut out,
        )
        .unwrap();
        // Integers are numbers too.
        decode_into(
            &mp(rmpv::Value::Array(vec![
                rmpv::Value::Array(vec![1.into(), (-2).into()]),
                rmpv::Value::Array(vec![300.into(), 0.into()]),
            ])),
            DType::F32,
            &[2, 2],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            [
                9.0, 1.0, 2.5, 3.0, -4.0, 5.0, 6.0, 7.0, 8.0, 1.0, -2.0, 300.0, 0.0
            ]
        );
    }

    #[test]
    fn a_misfit_input_names_where_and_the_shape_expected_and_appends_nothing() {
        let mut out: Vec<f32> = vec![1.0];
        let err = decode_into(
            &mp(nested(&[&[1.0, 2.0], &[3.0]])),
            DType::F32,
            &[2, 2],
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "input[1]: expected 2 elements, got 1; expected an ndarray of float32 with shape [2, 2] (nested lists, or 16 packed little-endian bytes)"
        );
        assert_eq!(out, [1.0]);
        let err = decode_into(&mp("cat".into()), DType::F32, &[2], &mut out).unwrap_err();
        assert!(err.starts_with("input: expected a list of 2"), "{err}");
        assert!(err.contains("got a string"), "{err}");
        let err = decode_into(
            &mp(rmpv::Value::Binary(vec![0; 7])),
            DType::F32,
            &[2],
            &mut out,
        )
        .unwrap_err();
        assert!(err.starts_with("input: got 7 packed bytes"), "{err}");
        let err = decode_into(
            &mp(rmpv::Value::Array(vec![1.5.into()])),
            DType::I64,
            &[1],
            &mut Vec::<i64>::new(),
        )
        .unwrap_err();
        assert!(err.contains("is not a int64 element"), "{err}");
        let err = decode_into(
            &mp(rmpv::Value::Array(vec![300.into()])),
            DType::U8,
            &[1],
            &mut Vec::<u8>::new(),
        )
        .unwrap_err();
        assert!(err.contains("is not a uint8 element"), "{err}");
        let odd = rmpv::Value::Array(vec![
            rmpv::Value::Array(vec![1.0.into(), 2.0.into()]),
            rmpv::Value::Array(vec![3.0.into(), "x".into()]),
        ]);
        let err = decode_into(&mp(odd), DType::F32, &[2, 2], &mut out).unwrap_err();
        assert!(
            err.starts_with("input[1][1]: expected a float32 element, got a string;"),
            "{err}"
        );
        // A float64 whose last byte is missing.
        let mut cut = mp(rmpv::Value::Array(vec![0.5.into(), 0.25.into()]));
        cut.pop();
        let err = decode_into(&cut, DType::F32, &[2], &mut out).unwrap_err();
        assert!(
            err.starts_with("input[1]: expected a float32 element, got a truncated number;"),
            "{err}"
        );
        assert_eq!(out, [1.0]);
    }

    #[test]
    fn outputs_are_nested_lists_or_one_number() {
        let v: rmpv::Value =
            rmpv::decode::read_value(&mut &encode(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])[..])
                .unwrap();
        assert_eq!(v.to_string(), "[[1, 2, 3], [4, 5, 6]]");
        assert_eq!(v[1][2], rmpv::Value::F32(6.0), "float32 stays float32");
        let v = rmpv::decode::read_value(&mut &encode(&[7i64], &[])[..]).unwrap();
        assert_eq!(v.as_i64(), Some(7));
        let v = rmpv::decode::read_value(&mut &encode(&[-3i8, 4], &[2])[..]).unwrap();
        assert_eq!(v.to_string(), "[-3, 4]");
    }

    #[test]
    fn dtypes_round_trip_their_names() {
        for name in [
            "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
        ] {
            assert_eq!(DType::parse(name).map(DType::name), Some(name));
        }
        assert_eq!(DType::parse("bool"), None);
        assert_eq!(DType::of_tensor(TensorElementType::Int64), Some(DType::I64));
        assert!(DType::I64.is_integer() && !DType::F64.is_integer());
    }
}
