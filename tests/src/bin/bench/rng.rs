//! The benchmark's own random numbers: a fixed-seed generator, so every
//! run measures the same policies.

/// Deterministic xorshift, so every run measures the same policies.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
