//! The per-daemon secret as it travels to workers.
//!
//! The daemon makes 32 random bytes at first start. Workers started by a
//! provider receive them hex-encoded in [`SECRET_ENV`] (the environment, not
//! the command line, which other users can read with `ps`); workers attached
//! by hand read the daemon's secret file.

/// Environment variable carrying the hex-encoded secret.
pub const SECRET_ENV: &str = "FLOTILLA_SECRET";

/// Length of a secret in bytes.
pub const SECRET_LEN: usize = 32;

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string (either case, surrounding space ignored); `None` if
/// it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex(" 0001ABff\n").unwrap(), bytes);
        assert!(from_hex("abc").is_none() && from_hex("zz").is_none());
    }
}
