//! The servable stdio protocol: how a worker talks to a warm model process.
//!
//! Frames on the process's stdin and stdout: a 4-byte big-endian length, then
//! that many bytes of msgpack, a map with a `type` key. The full description,
//! for people writing servables in other languages, is
//! `docs/servable-protocol.md`. This module only builds and reads the frame
//! bodies; the worker does the I/O.
//!
//! Inputs and outputs are embedded as msgpack values, not as byte strings,
//! so a servable sees plain numbers, lists and maps.

use crate::servable::ServableSpec;
use crate::task::{NIL, Payload};

/// Largest frame a servable may send (1 GiB).
pub const MAX_FRAME: usize = 1 << 30;

/// The 4-byte header for a body of `len` bytes.
pub fn header(len: usize) -> [u8; 4] {
    (len as u32).to_be_bytes()
}

/// The body length a header announces.
pub fn body_len(header: [u8; 4]) -> usize {
    u32::from_be_bytes(header) as usize
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = rmp::encode::write_str(out, s);
}

fn write_raw_or_nil(out: &mut Vec<u8>, raw: &[u8]) {
    if raw.is_empty() {
        out.extend_from_slice(NIL);
    } else {
        out.extend_from_slice(raw);
    }
}

/// `{"type": "init", "spec": {...}, "parameters": {...}}`.
pub fn encode_init(spec: &ServableSpec, parameters: &[u8]) -> Result<Vec<u8>, String> {
    let spec = rmp_serde::to_vec_named(spec).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(spec.len() + 64);
    let _ = rmp::encode::write_map_len(&mut out, 3);
    write_str(&mut out, "type");
    write_str(&mut out, "init");
    write_str(&mut out, "spec");
    out.extend_from_slice(&spec);
    write_str(&mut out, "parameters");
    write_params(&mut out, parameters);
    Ok(out)
}

fn write_params(out: &mut Vec<u8>, parameters: &[u8]) {
    if parameters.is_empty() {
        let _ = rmp::encode::write_map_len(out, 0);
    } else {
        out.extend_from_slice(parameters);
    }
}

/// `{"type": "run", "inputs": [...], "parameters": {...}}` with the inputs'
/// msgpack embedded as they are.
pub fn encode_run<'a>(
    inputs: impl ExactSizeIterator<Item = &'a [u8]>,
    parameters: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let _ = rmp::encode::write_map_len(&mut out, 3);
    write_str(&mut out, "type");
    write_str(&mut out, "run");
    write_str(&mut out, "inputs");
    let _ = rmp::encode::write_array_len(&mut out, inputs.len() as u32);
    for raw in inputs {
        write_raw_or_nil(&mut out, raw);
    }
    write_str(&mut out, "parameters");
    write_params(&mut out, parameters);
    out
}

/// `{"type": "shutdown"}`.
pub fn encode_shutdown() -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    let _ = rmp::encode::write_map_len(&mut out, 1);
    write_str(&mut out, "type");
    write_str(&mut out, "shutdown");
    out
}

/// What a servable process said.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Initialised.
    Ready,
    /// One result per input: the output's msgpack, or the input's error.
    Outputs(Vec<Result<Payload, String>>),
    /// The call failed as a whole (no per-input results).
    Failed(String),
}

/// Reads a reply body. `Err` means the process broke the protocol.
pub fn decode_reply(body: &[u8]) -> Result<Reply, String> {
    let mut reader = body;
    let value = rmpv::decode::read_value(&mut reader).map_err(|e| format!("not msgpack: {e}"))?;
    let rmpv::Value::Map(entries) = value else {
        return Err("a reply must be a map with a \"type\" key".into());
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    };
    let kind = get("type").and_then(rmpv::Value::as_str).unwrap_or("");
    match kind {
        "ready" => Ok(Reply::Ready),
        "failed" | "error" => Ok(Reply::Failed(
            get("message")
                .and_then(rmpv::Value::as_str)
                .unwrap_or("the servable failed without a message")
                .to_owned(),
        )),
        "outputs" => {
            let Some(rmpv::Value::Array(items)) = get("outputs") else {
                return Err("an \"outputs\" reply needs an \"outputs\" list".into());
            };
            items
                .iter()
                .map(output_of)
                .collect::<Result<Vec<_>, _>>()
                .map(Reply::Outputs)
        }
        other => Err(format!("unknown reply type \"{other}\"")),
    }
}

fn output_of(item: &rmpv::Value) -> Result<Result<Payload, String>, String> {
    let rmpv::Value::Map(entries) = item else {
        return Err("each output must be {\"output\": value} or {\"error\": message}".into());
    };
    for (k, v) in entries {
        match k.as_str() {
            Some("output") => {
                let mut bytes = Vec::new();
                rmpv::encode::write_value(&mut bytes, v).map_err(|e| e.to_string())?;
                return Ok(Ok(Payload::from(bytes)));
            }
            Some("error") => {
                return Ok(Err(v.as_str().map_or_else(|| v.to_string(), str::to_owned)));
            }
            _ => {}
        }
    }
    Err("each output must be {\"output\": value} or {\"error\": message}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_embeds_inputs_as_values() {
        let a = rmp_serde::to_vec(&[1, 2]).unwrap();
        let b = rmp_serde::to_vec("x").unwrap();
        let body = encode_run([&a[..], &b[..], &[][..]].into_iter(), &[]);
        let mut r = &body[..];
        let v = rmpv::decode::read_value(&mut r).unwrap();
        let inputs = v
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("inputs"))
            .unwrap()
            .1
            .clone();
        assert_eq!(
            inputs,
            rmpv::Value::Array(vec![
                rmpv::Value::Array(vec![1.into(), 2.into()]),
                "x".into(),
                rmpv::Value::Nil
            ])
        );
    }

    #[test]
    fn replies_are_read_with_clear_errors() {
        let enc = |v: rmpv::Value| {
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, &v).unwrap();
            out
        };
        let outputs = rmpv::Value::Map(vec![
            ("type".into(), "outputs".into()),
            (
                "outputs".into(),
                rmpv::Value::Array(vec![
                    rmpv::Value::Map(vec![("output".into(), 7.into())]),
                    rmpv::Value::Map(vec![("error".into(), "bad pixel".into())]),
                ]),
            ),
        ]);
        match decode_reply(&enc(outputs)).unwrap() {
            Reply::Outputs(o) => {
                assert_eq!(o[0], Ok(Payload::from(vec![7u8])));
                assert_eq!(o[1], Err("bad pixel".into()));
            }
            other => panic!("{other:?}"),
        }
        let ready = rmpv::Value::Map(vec![("type".into(), "ready".into())]);
        assert_eq!(decode_reply(&enc(ready)).unwrap(), Reply::Ready);
        assert!(decode_reply(&enc(rmpv::Value::from(3))).is_err());
        let odd = rmpv::Value::Map(vec![("type".into(), "hello".into())]);
        assert!(decode_reply(&enc(odd)).unwrap_err().contains("hello"));
    }
}
