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
    // black_box: the stamp is 0 when compiled; the optimiser must not fold
    // that in, because a copy of the binary may carry another value.
    let stamp = std::hint::black_box(&PROGRAM_STAMP).value;
    stamped(hash(bytes()), stamp)
}

/// A value mixed into [`build_hash`], zero in every build. `cargo xtask
/// image` writes another value into a copy of the binary (found by
/// `marker`) to make a second image whose programs an agent treats as
/// another build: a rollout from it replaces the pinned programs in place,
/// as an upgrade with changed programs does.
#[repr(C)]
pub struct ProgramStamp {
    pub marker: [u8; 24],
    pub value: [u8; 8],
}

#[used]
static PROGRAM_STAMP: ProgramStamp = ProgramStamp {
    marker: *b"\0classifier-prog-stamp:\0",
    value: [0; 8],
};

/// `hash` with a non-zero `stamp` mixed in; a zero stamp leaves it as is.
fn stamped(hash: u64, stamp: [u8; 8]) -> u64 {
    if stamp == [0; 8] {
        return hash;
    }
    let mut h = hash;
    for b in stamp {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
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

    #[test]
    fn a_zero_stamp_keeps_the_hash_and_another_changes_it() {
        let h = super::hash(b"object");
        assert_eq!(super::stamped(h, [0; 8]), h);
        assert_ne!(super::stamped(h, *b"rollout1"), h);
        assert_eq!(super::build_hash(), super::hash(super::bytes()));
    }
}
