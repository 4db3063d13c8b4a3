//! Address helpers. Everything is normalised to 16 bytes, IPv4 as
//! `::ffff:a.b.c.d`, so that a v4 client and a dual-stack proxy (or the
//! reverse) build the same table key.

/// `addr` is an IPv4 address as the kernel stores it (network byte order in
/// memory).
#[inline(always)]
pub fn v4_mapped(addr: u32) -> [u8; 16] {
    let b = addr.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

/// `words` is an IPv6 address as four u32 words in network byte order.
#[inline(always)]
pub fn v6_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}
