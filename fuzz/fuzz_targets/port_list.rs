//! Fuzzes the Linkerd port-list parser (`"25,587,4000-4100"`), i.e.
//! `PortSet::from_str`.
//!
//! Properties checked on every input that is UTF-8:
//!
//! - it never panics, and an error always renders as a message;
//! - it agrees with a naive reference parser written from the documented
//!   grammar (ok/error, and on success the exact set of ports), which checks
//!   the range-merging in `insert_range` against a plain bitmap;
//! - every member is in 1..=65535 (port 0 never is), and the stored ranges
//!   are canonical: sorted, non-empty, neither overlapping nor adjacent;
//! - the canonical `to_string()` re-parses to an equal set, and printing
//!   that again gives the same string (a fixed point);
//! - `len`, `iter`, `contains` and `to_bitmap` agree with one another;
//! - the parser's sort-and-merge gives the same set as inserting the items
//!   one at a time;
//! - building the same set in another order gives an equal value (so the
//!   derived `Eq`/`Hash` really mean set equality).
#![no_main]

use std::str::FromStr;

use classifier_policy::PortSet;
use libfuzzer_sys::fuzz_target;

/// 65536 bits, one per port number.
type Bits = Vec<u64>;

fn bit(bits: &Bits, p: u32) -> bool {
    bits[p as usize / 64] & (1 << (p % 64)) != 0
}

/// A port number as the grammar allows it: ASCII digits only (no sign, no
/// inner spaces), value 1..=65535; leading zeros are fine.
fn reference_port(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = text.trim_start_matches('0');
    if digits.len() > 5 {
        return None;
    }
    let value: u32 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    (1..=65535).contains(&value).then_some(value)
}

/// The documented grammar, written the slow and obvious way: a blank list
/// is empty; otherwise comma-separated items, each (after trimming) `P` or
/// `P-Q` with optional spaces around either number and `P <= Q`.
fn reference_parse(list: &str) -> Option<Bits> {
    let mut bits = vec![0u64; 1024];
    if list.trim().is_empty() {
        return Some(bits);
    }
    for raw in list.split(',') {
        let item = raw.trim();
        if item.is_empty() {
            return None;
        }
        let (start, end) = match item.split_once('-') {
            None => {
                let p = reference_port(item)?;
                (p, p)
            }
            Some((a, b)) => {
                let (a, b) = (reference_port(a.trim())?, reference_port(b.trim())?);
                if a > b {
                    return None;
                }
                (a, b)
            }
        };
        for p in start..=end {
            bits[p as usize / 64] |= 1 << (p % 64);
        }
    }
    Some(bits)
}

fn check_canonical(set: &PortSet) {
    let ranges = set.ranges();
    for &(s, e) in ranges {
        assert!(s >= 1, "range ({s}, {e}) contains port 0 in {set:?}");
        assert!(s <= e, "empty range ({s}, {e}) in {set:?}");
    }
    for w in ranges.windows(2) {
        assert!(
            (w[0].1 as u32) + 1 < w[1].0 as u32,
            "ranges {:?} and {:?} overlap, touch or are unsorted in {set:?}",
            w[0],
            w[1]
        );
    }
    assert!(!set.contains(0), "{set:?} contains port 0");
    assert_eq!(set.is_empty(), ranges.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = PortSet::from_str(text);
    // `*` is not in this grammar today, but "every port" is being given a
    // `"*"` spelling for rules, which may end up in this parser: an input
    // with a `*` is held to the set properties only, not to the reference
    // parser's ok/error verdict.
    if text.contains('*') {
        match parsed {
            Ok(set) => check_set(text, &set),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        return;
    }
    let reference = reference_parse(text);

    let set = match (parsed, reference) {
        (Err(e), None) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            let _ = format!("{e:?}");
            return;
        }
        (Err(e), Some(_)) => panic!("{text:?} is a valid port list but was rejected: {e}"),
        (Ok(set), None) => panic!("{text:?} is not a valid port list but parsed as {set:?}"),
        (Ok(set), Some(bits)) => {
            // Same members as the naive bitmap (`to_bitmap` walks `iter`).
            let bitmap = set.to_bitmap();
            if let Some(w) = (0..bits.len()).find(|&w| bitmap[w] != bits[w]) {
                panic!(
                    "{text:?} parsed as {set:?}, but ports {}..{} should be {:#018x}, are {:#018x}",
                    w * 64,
                    w * 64 + 63,
                    bits[w],
                    bitmap[w]
                );
            }
            // The same set as inserting the items one at a time (the
            // parser sorts and merges them all at once instead).
            // A blank list has no items (splitting it would give one empty
            // item, which is not a port).
            if !text.trim().is_empty() {
                let mut one_by_one = PortSet::new();
                for item in text.split(',').map(str::trim) {
                    let (a, b) = item.split_once('-').unwrap_or((item, item));
                    let (a, b) = (reference_port(a.trim()).unwrap(), reference_port(b.trim()).unwrap());
                    one_by_one.insert_range(a as u16, b as u16);
                }
                assert_eq!(one_by_one, set, "{text:?}: sorted merge and inserts differ");
            }
            // `contains` (a binary search) agrees at and around every edge.
            for &(s, e) in set.ranges() {
                for p in [
                    s as u32 - 1,
                    s as u32,
                    (s as u32 + e as u32) / 2,
                    e as u32,
                    e as u32 + 1,
                ] {
                    if p <= 65535 {
                        assert_eq!(
                            set.contains(p as u16),
                            bit(&bits, p),
                            "contains({p}) of {set:?}"
                        );
                    }
                }
            }
            set
        }
    };
    check_set(text, &set);
});

/// Properties of any parsed set, whatever the reference parser says.
fn check_set(text: &str, set: &PortSet) {
    let set = set.clone();
    check_canonical(&set);

    // Every member is a real port, and the counts agree.
    let mut n = 0usize;
    let mut prev = 0u16;
    for p in set.iter() {
        assert!(p >= 1, "{set:?} yields port 0");
        assert!(
            n == 0 || p > prev,
            "{set:?} iterates out of order: {prev} then {p}"
        );
        prev = p;
        n += 1;
    }
    assert_eq!(n, set.len(), "len of {set:?}");
    let ones: u32 = set.to_bitmap().iter().map(|w| w.count_ones()).sum();
    assert_eq!(ones as usize, n, "bitmap popcount of {set:?}");

    // Round trip through the canonical form, which is a fixed point.
    let canonical = set.to_string();
    let again = PortSet::from_str(&canonical)
        .unwrap_or_else(|e| panic!("canonical form {canonical:?} of {text:?} does not parse: {e}"));
    assert_eq!(again, set, "{text:?} -> {canonical:?} -> {again:?}");
    assert_eq!(again.to_string(), canonical);
    assert_eq!(set.is_empty(), canonical.is_empty());

    // Insertion order does not matter: rebuild from the ranges backwards,
    // and from the ranges split into single ports at the ends.
    let mut backwards = PortSet::new();
    for &(s, e) in set.ranges().iter().rev() {
        backwards.insert_range(s, e);
    }
    assert_eq!(backwards, set);
    let mut pieces = PortSet::new();
    for &(s, e) in set.ranges() {
        pieces.insert(e);
        pieces.insert(s);
        if e - s >= 2 {
            pieces.insert_range(s + 1, e - 1);
        }
    }
    assert_eq!(pieces, set);
    assert_eq!(set.union(&PortSet::new()), set);
    assert_eq!(PortSet::new().union(&set), set);
    assert_eq!(set.union(&set), set);
}
