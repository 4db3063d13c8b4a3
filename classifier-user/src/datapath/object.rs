//! The eBPF object built by `build.rs`, embedded in the binary so the agent
//! is a single file.

/// The object bytes, 8-byte aligned as the ELF parser requires.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier"))
}

/// Whether this binary carries a real object (it does not when built with
/// `AYA_BUILD_SKIP=1`).
pub fn is_present() -> bool {
    !bytes().is_empty()
}

/// The build stamp of the embedded programs: FNV-1a (64 bit) of the whole
/// object. Stable for the same bytes; any change to a program (or to the
/// object's debug information, e.g. a build from another path) changes it.
/// Never 0 (0 in the pins means "not stamped").
pub fn build_hash() -> u64 {
    hash(bytes())
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_hash_is_fnv1a_and_never_zero() {
        assert_eq!(super::hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(super::hash(b"a"), super::hash(b"b"));
    }
}
