//! JSON ↔ msgpack for payloads typed by people (CLI arguments, JSONL files).
//!
//! Servables receive and return msgpack. Values people type are JSON; this
//! module converts both ways. msgpack has things JSON lacks: binary strings
//! come back as arrays of byte values, non-string map keys as their JSON text,
//! and NaN or infinite floats as `null`.

use flotilla_protocol::Payload;
use serde_json::Value as Json;

/// A value that cannot be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The value cannot be encoded as msgpack.
    #[error("cannot encode as msgpack: {0}")]
    Encode(String),
    /// The bytes are not a msgpack value.
    #[error("not a msgpack value: {0}")]
    Decode(String),
}

/// Encodes a JSON value as a msgpack payload.
pub fn json_to_payload(value: &Json) -> Result<Payload, ConvertError> {
    rmp_serde::to_vec(value)
        .map(Payload::from)
        .map_err(|e| ConvertError::Encode(e.to_string()))
}

/// Decodes a msgpack payload into JSON (empty payload: `null`).
pub fn payload_to_json(bytes: &[u8]) -> Result<Json, ConvertError> {
    if bytes.is_empty() {
        return Ok(Json::Null);
    }
    let mut reader = bytes;
    let value =
        rmpv::decode::read_value(&mut reader).map_err(|e| ConvertError::Decode(e.to_string()))?;
    if !reader.is_empty() {
        return Err(ConvertError::Decode(format!(
            "{} bytes left over after the value",
            reader.len()
        )));
    }
    Ok(to_json(value))
}

fn to_json(value: rmpv::Value) -> Json {
    use rmpv::Value as M;
    match value {
        M::Nil => Json::Null,
        M::Boolean(b) => Json::Bool(b),
        M::Integer(i) => i
            .as_i64()
            .map(Json::from)
            .or_else(|| i.as_u64().map(Json::from))
            .unwrap_or(Json::Null),
        M::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number),
        M::F64(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        M::String(s) => Json::String(s.into_str().unwrap_or_default()),
        M::Binary(b) | M::Ext(_, b) => Json::Array(b.into_iter().map(Json::from).collect()),
        M::Array(a) => Json::Array(a.into_iter().map(to_json).collect()),
        M::Map(m) => Json::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) => s.into_str().unwrap_or_default(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips() {
        let v = json!({"a": [1, -2, 3.5, "x", null, true], "b": {"c": 18446744073709551615u64}});
        assert_eq!(payload_to_json(&json_to_payload(&v).unwrap()).unwrap(), v);
    }

    #[test]
    fn msgpack_only_values_become_json() {
        let bytes = rmp_serde::to_vec(&serde_bytes_like()).unwrap();
        assert_eq!(payload_to_json(&bytes).unwrap(), json!([1, 2, 3]));
        assert_eq!(payload_to_json(&[]).unwrap(), Json::Null);
        assert!(payload_to_json(&[0x92, 0x01]).is_err(), "truncated array");
        assert!(payload_to_json(&[0xc0, 0xc0]).is_err());
    }

    fn serde_bytes_like() -> Payload {
        Payload::from_static(&[1, 2, 3])
    }
}
