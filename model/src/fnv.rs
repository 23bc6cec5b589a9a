//! 64-bit FNV-1a, the one stable hash of the project: the metadata state hash, the Raft checker's
//! entry fingerprints, history fingerprints and the simulation's trace hash all use it.
//!
//! Small, stable across processes, platforms and Rust versions (unlike `std`'s randomly seeded
//! hashers), good enough to compare states and traces. Not for untrusted input that could be chosen
//! to collide.

use std::io;

/// An incremental 64-bit FNV-1a hasher. Also an [`io::Write`], so text can be hashed as it is
/// written without being built first.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64 {
    state: u64,
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64::new()
    }
}

impl Fnv1a64 {
    pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Fnv1a64 {
        Fnv1a64 { state: Self::OFFSET_BASIS }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.state ^= u64::from(*byte);
            self.state = self.state.wrapping_mul(Self::PRIME);
        }
    }

    /// Hashes `value` as its 8 little-endian bytes.
    pub fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }

    pub fn finish(&self) -> u64 {
        self.state
    }
}

impl io::Write for Fnv1a64 {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        Fnv1a64::write(self, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The FNV-1a hash of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hasher = Fnv1a64::new();
    hasher.write(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vectors() {
        // Published 64-bit FNV-1a test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
        let mut split = Fnv1a64::new();
        split.write(b"foo");
        io::Write::write_all(&mut split, b"bar").unwrap();
        assert_eq!(split.finish(), fnv1a_64(b"foobar"));
    }
}
