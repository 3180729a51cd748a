//! A servable written in Rust, for tests that run servables where Python is
//! not: it answers every input with where it runs (`{"input": X,
//! "host_usr": true|false}`: whether `/usr` exists, which it does on any
//! host and not in the minimal test image).
//!
//! It speaks the servable stdio protocol (docs/servable-protocol.md) with
//! nothing but the standard library and rmpv, so it runs in an image that
//! holds only the C library.

use std::io::{Read, Write};

use rmpv::Value;

fn read_frame(input: &mut impl Read) -> Option<Value> {
    let mut header = [0u8; 4];
    input.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    input.read_exact(&mut body).ok()?;
    rmpv::decode::read_value(&mut &body[..]).ok()
}

fn write_frame(output: &mut impl Write, value: &Value) -> std::io::Result<()> {
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, value).map_err(std::io::Error::other)?;
    output.write_all(&(body.len() as u32).to_be_bytes())?;
    output.write_all(&body)?;
    output.flush()
}

fn field<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

fn main() -> std::io::Result<()> {
    let host_usr = std::path::Path::new("/usr").exists();
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    while let Some(request) = read_frame(&mut stdin) {
        let reply = match field(&request, "type").and_then(Value::as_str) {
            Some("init") => map(vec![("type", Value::from("ready"))]),
            Some("run") => {
                let inputs = field(&request, "inputs")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let outputs = inputs
                    .into_iter()
                    .map(|input| {
                        map(vec![(
                            "output",
                            map(vec![("input", input), ("host_usr", Value::from(host_usr))]),
                        )])
                    })
                    .collect();
                map(vec![
                    ("type", Value::from("outputs")),
                    ("outputs", Value::Array(outputs)),
                ])
            }
            _ => break,
        };
        write_frame(&mut stdout, &reply)?;
    }
    Ok(())
}
