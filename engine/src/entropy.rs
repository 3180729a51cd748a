//! Randomness from the operating system, for the daemon's shell (the core
//! has none of its own: it is handed a seed).

use std::io::Read as _;

/// 32 random bytes from `/dev/urandom`.
pub fn random_seed() -> std::io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_differ() {
        assert_ne!(super::random_seed().unwrap(), super::random_seed().unwrap());
    }
}
