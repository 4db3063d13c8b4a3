//! Sets of TCP ports, written the way Linkerd writes them: `"25,587,4000-4100"`.
//!
//! Stored as sorted, disjoint, non-adjacent inclusive ranges: a policy has a
//! port set per rule, and 100k rules of bitmaps (8 KiB each) would not fit
//! comfortably in the agent's memory. Keeping the ranges canonical makes the
//! derived equality and hashing mean set equality.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::text::clip;

/// Number of `u64` words of a bitmap covering every port number 0..=65535
/// (the kernel's layout of the default opaque ports).
pub const PORT_WORDS: usize = 65536 / 64;

/// A set of TCP ports in 1..=65535. Port 0 is never a member: it cannot be
/// the destination of a `connect()`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    /// Invariant: sorted, `start <= end`, `start >= 1`, and each range ends
    /// at least two below the next one's start (no overlap, no adjacency).
    ranges: Vec<(u16, u16)>,
}

/// Why a port list did not parse. Every message quotes the offending item so
/// that a user can find it in a long list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortListError {
    #[error("{item:?} is not a port number or a range like \"4000-4100\"")]
    NotANumber { item: String },
    #[error("port 0 is not a valid port{}", in_item(item, "0"))]
    Zero { item: String },
    #[error("port {value} is out of range (1-65535){}", in_item(item, value))]
    OutOfRange { item: String, value: String },
    #[error("range {item:?} is reversed: {start} is greater than {end}")]
    Reversed { item: String, start: u16, end: u16 },
    #[error("empty item #{position} in port list {list:?}")]
    EmptyItem { list: String, position: usize },
}

/// ` (in "0-5")` when the bad number is part of a larger item; nothing when
/// the item is the number itself, to keep the common message short.
fn in_item(item: &str, value: &str) -> String {
    if item == value {
        String::new()
    } else {
        format!(" (in {item:?})")
    }
}

impl PortSet {
    /// The empty set.
    pub fn new() -> Self {
        PortSet { ranges: Vec::new() }
    }

    /// Adds `port`; returns whether it was new. Port 0 is ignored (returns
    /// false) so that the "never contains 0" invariant cannot be broken.
    pub fn insert(&mut self, port: u16) -> bool {
        if port == 0 || self.contains(port) {
            return false;
        }
        self.insert_range(port, port);
        true
    }

    /// Adds every port of `start..=end` (port 0 excluded).
    pub fn insert_range(&mut self, start: u16, end: u16) {
        let start = start.max(1);
        if start > end {
            return;
        }
        let (a, b) = (start as u32, end as u32);
        // Ranges touching [a, b] (overlapping or adjacent) are merged into it.
        let first = self.ranges.partition_point(|&(_, e)| (e as u32) + 1 < a);
        let last = first + self.ranges[first..].partition_point(|&(s, _)| (s as u32) <= b + 1);
        let merged = match self.ranges[first..last] {
            [] => (start, end),
            ref touching => (
                start.min(touching[0].0),
                end.max(touching[touching.len() - 1].1),
            ),
        };
        self.ranges.splice(first..last, [merged]);
    }

    /// Every port, 1-65535: a wildcard-port rule's set (`ports: "*"`).
    pub fn all() -> Self {
        PortSet {
            ranges: vec![(1, u16::MAX)],
        }
    }

    /// Whether this is every port 1-65535 (however it was written).
    pub fn is_all(&self) -> bool {
        self.ranges == [(1, u16::MAX)]
    }

    pub fn contains(&self, port: u16) -> bool {
        let i = self.ranges.partition_point(|&(_, e)| e < port);
        matches!(self.ranges.get(i), Some(&(s, _)) if s <= port)
    }

    pub fn len(&self) -> usize {
        self.ranges.iter().map(|&(s, e)| (e - s) as usize + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The set of the ports of every range `(start, end)` (inclusive; port 0
    /// and reversed ranges contribute nothing). Sorts once and merges in one
    /// walk: O(n log n) for n ranges, whatever their order (inserting one at
    /// a time shifts the vector, O(n) each, for ranges given in descending
    /// order).
    pub fn from_ranges(mut ranges: Vec<(u16, u16)>) -> Self {
        ranges.retain_mut(|(s, e)| {
            *s = (*s).max(1);
            *s <= *e
        });
        ranges.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match out.last_mut() {
                // Overlapping or adjacent: merge.
                Some(last) if u32::from(s) <= u32::from(last.1) + 1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        PortSet { ranges: out }
    }

    /// Adds every port of `other`.
    pub fn union_with(&mut self, other: &PortSet) {
        if other.ranges.len() <= 1 {
            for &(s, e) in &other.ranges {
                self.insert_range(s, e);
            }
            return;
        }
        let mut all = std::mem::take(&mut self.ranges);
        all.extend_from_slice(&other.ranges);
        *self = PortSet::from_ranges(all);
    }

    /// The union of both sets.
    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        out.union_with(other);
        out
    }

    /// Ports in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(|&(s, e)| s..=e)
    }

    /// Maximal runs of consecutive ports, ascending, as inclusive ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// The set as the kernel's bitmap: bit `p % 64` of word `p / 64`.
    pub fn to_bitmap(&self) -> Box<[u64; PORT_WORDS]> {
        let mut words = Box::new([0u64; PORT_WORDS]);
        for p in self.iter() {
            words[p as usize / 64] |= 1 << (p % 64);
        }
        words
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut set = PortSet::new();
        for p in iter {
            set.insert(p);
        }
        set
    }
}

/// Canonical compact form: ascending, runs of two or more ports as `a-b`.
/// Parsing the output gives the same set back.
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortSet({:?})", self.to_string())
    }
}

fn parse_port(text: &str, item: &str) -> Result<u16, PortListError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortListError::NotANumber { item: clip(item) });
    }
    // All digits, so the only way u16 parsing fails is overflow; keep the
    // user's own spelling of the number in the message.
    let value = text.trim_start_matches('0');
    match text.parse::<u16>() {
        Ok(0) => Err(PortListError::Zero { item: clip(item) }),
        Ok(p) => Ok(p),
        Err(_) => Err(PortListError::OutOfRange {
            item: clip(item),
            value: clip(value),
        }),
    }
}

impl FromStr for PortSet {
    type Err = PortListError;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut ranges = Vec::new();
        if list.trim().is_empty() {
            return Ok(PortSet::new());
        }
        for (i, raw) in list.split(',').enumerate() {
            let item = raw.trim();
            if item.is_empty() {
                return Err(PortListError::EmptyItem {
                    list: clip(list),
                    position: i + 1,
                });
            }
            match item.split_once('-') {
                None => {
                    let port = parse_port(item, item)?;
                    ranges.push((port, port));
                }
                Some((a, b)) => {
                    let start = parse_port(a.trim(), item)?;
                    let end = parse_port(b.trim(), item)?;
                    if start > end {
                        return Err(PortListError::Reversed {
                            item: clip(item),
                            start,
                            end,
                        });
                    }
                    ranges.push((start, end));
                }
            }
        }
        Ok(PortSet::from_ranges(ranges))
    }
}

impl Serialize for PortSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Accepts the string form and, because YAML users will write `ports: 3306`,
/// a single port number.
impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_port_list(d, None)
    }
}

/// Deserializes a port list, failing with `empty_error` when it is empty
/// and that is given. The checks run inside the visitor so that the YAML
/// deserializer attaches the value's own field path and position; a check
/// after `deserialize` returns would be blamed on the enclosing map.
pub(crate) fn deserialize_port_list<'de, D: Deserializer<'de>>(
    d: D,
    empty_error: Option<&'static str>,
) -> Result<PortSet, D::Error> {
    deserialize_ports(d, empty_error, false)
}

/// [`deserialize_port_list`] that also takes `"*"` for every port.
pub(crate) fn deserialize_port_list_or_all<'de, D: Deserializer<'de>>(
    d: D,
    empty_error: Option<&'static str>,
) -> Result<PortSet, D::Error> {
    deserialize_ports(d, empty_error, true)
}

fn deserialize_ports<'de, D: Deserializer<'de>>(
    d: D,
    empty_error: Option<&'static str>,
    star: bool,
) -> Result<PortSet, D::Error> {
    struct V(Option<&'static str>, bool);
    impl Visitor<'_> for V {
        type Value = PortSet;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port list string like \"25,587,4000-4100\" or a port number")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSet, E> {
            if self.1 && v.trim() == "*" {
                return Ok(PortSet::all());
            }
            let set: PortSet = v.parse().map_err(E::custom)?;
            match self.0 {
                Some(msg) if set.is_empty() => Err(E::custom(msg)),
                _ => Ok(set),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSet, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSet, E> {
            if v < 0 {
                return Err(E::custom(PortListError::NotANumber {
                    item: v.to_string(),
                }));
            }
            self.visit_str(&v.to_string())
        }
    }
    d.deserialize_any(V(empty_error, star))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(s: &str) -> PortSet {
        s.parse().unwrap()
    }

    /// The set built one range at a time with `insert_range` (how lists
    /// were parsed before: correct, but quadratic for descending lists).
    fn one_at_a_time(ranges: &[(u16, u16)]) -> PortSet {
        let mut set = PortSet::new();
        for &(s, e) in ranges {
            set.insert_range(s, e);
        }
        set
    }

    #[test]
    fn from_ranges_is_the_same_set_as_inserting_one_at_a_time() {
        // A small deterministic generator: ranges of every shape (single
        // ports, port 0, reversed, overlapping, adjacent, the edges).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..2000 {
            let n = (next() % 40) as usize;
            let span = if case % 2 == 0 { 200 } else { 65_536 };
            let ranges: Vec<(u16, u16)> = (0..n)
                .map(|_| {
                    let s = (next() % span) as u16;
                    let len = if next() % 3 == 0 { 0 } else { next() % 50 };
                    (s, s.saturating_add(len as u16))
                })
                .chain((case % 7 == 0).then_some((9, 3)))
                .collect();
            assert_eq!(
                PortSet::from_ranges(ranges.clone()),
                one_at_a_time(&ranges),
                "{ranges:?}"
            );
        }
    }

    #[test]
    fn a_list_of_every_port_descending_parses_to_the_same_set() {
        // 65,535 items in the worst order for inserting one at a time
        // (every insert at the front shifted all the others).
        let list: Vec<String> = (1..=65535u32)
            .rev()
            .step_by(2)
            .map(|p| p.to_string())
            .collect();
        let set = ps(&list.join(","));
        assert_eq!(set.len(), 32_768);
        let ranges: Vec<(u16, u16)> = (1..=65535u16).rev().step_by(2).map(|p| (p, p)).collect();
        assert_eq!(set, one_at_a_time(&ranges));
        // And with the gaps filled, one range.
        let all: Vec<String> = (1..=65535u32).rev().map(|p| p.to_string()).collect();
        assert!(ps(&all.join(",")).is_all());
    }

    #[test]
    fn errors_quote_at_most_a_bounded_part_of_the_list() {
        let huge = "x".repeat(256 * 1024);
        for list in [huge.clone(), format!("1,,{huge}"), format!("{huge}-5")] {
            let msg = list.parse::<PortSet>().unwrap_err().to_string();
            assert!(msg.len() < 400, "{} bytes: {}", msg.len(), &msg[..200]);
        }
    }

    #[test]
    fn parses_linkerd_default_list() {
        let set = ps("25,587,3306,4444,5432,6379,9300,11211");
        assert_eq!(set.len(), 8);
        assert!(set.contains(3306) && set.contains(11211) && set.contains(25));
        assert!(!set.contains(26) && !set.contains(0));
        assert_eq!(set.to_string(), "25,587,3306,4444,5432,6379,9300,11211");
    }

    #[test]
    fn parses_ranges_and_whitespace() {
        let set = ps(" 4222, 8000-8100 ,9000 - 9001");
        assert_eq!(set.len(), 1 + 101 + 2);
        assert!(set.contains(8000) && set.contains(8100) && !set.contains(8101));
        assert_eq!(set.to_string(), "4222,8000-8100,9000-9001");
    }

    #[test]
    fn canonical_form_merges_overlaps_and_adjacent_items() {
        let set = ps("10-20,15-30,31,5,5");
        assert_eq!(set.to_string(), "5,10-31");
        assert_eq!(ps(&set.to_string()), set);
    }

    #[test]
    fn empty_string_is_empty_set() {
        assert!(ps("").is_empty());
        assert!(ps("   ").is_empty());
        assert_eq!(ps("").to_string(), "");
        assert_eq!(ps("").len(), 0);
    }

    #[test]
    fn full_range_and_extremes() {
        let set = ps("1-65535");
        assert_eq!(set.len(), 65535);
        assert!(set.contains(65535) && !set.contains(0));
        assert_eq!(set.to_string(), "1-65535");
        assert_eq!(set.iter().last(), Some(65535));
        assert_eq!(set.iter().next(), Some(1));
    }

    #[test]
    fn all_ports() {
        assert!(PortSet::all().is_all());
        assert_eq!(PortSet::all(), ps("1-65535"));
        assert!(ps("1-100,101-65535").is_all());
        assert!(!ps("2-65535").is_all() && !ps("1-65534").is_all() && !ps("").is_all());
        assert_eq!(PortSet::all().len(), 65535);
    }

    #[test]
    fn iter_union_insert() {
        let mut a = ps("1,64,65,128");
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 64, 65, 128]);
        assert!(!a.insert(64));
        assert!(a.insert(63));
        assert!(!a.insert(0));
        let b = ps("2,63,1000");
        assert_eq!(a.union(&b).to_string(), "1-2,63-65,128,1000");
        a.union_with(&b);
        assert_eq!(a.len(), 7);
        assert_eq!(
            [5u16, 3, 4].into_iter().collect::<PortSet>().to_string(),
            "3-5"
        );
    }

    #[test]
    fn ranges_stay_canonical_whatever_the_insertion_order() {
        let mut a = PortSet::new();
        for p in [10u16, 12, 11, 30, 29, 1, 65535, 65534, 2] {
            a.insert(p);
        }
        assert_eq!(a.ranges(), &[(1, 2), (10, 12), (29, 30), (65534, 65535)]);
        a.insert_range(3, 9);
        a.insert_range(13, 28);
        assert_eq!(a.ranges(), &[(1, 30), (65534, 65535)]);
        a.insert_range(0, 0);
        assert_eq!(a, ps("1-30,65534-65535"));
        assert!(a.contains(30) && !a.contains(31) && !a.contains(0) && a.contains(65535));
        assert_eq!(ps("7,5,6"), ps("5-7"));
    }

    #[test]
    fn bitmap_layout() {
        let words = ps("1,63,64,3306,65535").to_bitmap();
        assert_eq!(words[0], (1 << 1) | (1 << 63));
        assert_eq!(words[1], 1);
        assert_eq!(words[3306 / 64], 1 << (3306 % 64));
        assert_eq!(words[1023], 1 << 63);
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 5);
    }

    fn err(s: &str) -> PortListError {
        s.parse::<PortSet>().unwrap_err()
    }

    #[test]
    fn rejects_non_numbers() {
        for (input, item) in [
            ("x", "x"),
            ("a-b", "a-b"),
            ("25,http", "http"),
            ("1-2-3", "1-2-3"),
            ("+5", "+5"),
            ("-5", "-5"),
        ] {
            let e = err(input);
            assert_eq!(
                e,
                PortListError::NotANumber { item: item.into() },
                "{input}"
            );
            assert!(e.to_string().contains(&format!("\"{item}\"")), "{e}");
        }
    }

    #[test]
    fn rejects_port_zero() {
        assert_eq!(err("0").to_string(), "port 0 is not a valid port");
        assert_eq!(
            err("25,0-5").to_string(),
            "port 0 is not a valid port (in \"0-5\")"
        );
    }

    #[test]
    fn rejects_ports_above_65535() {
        assert_eq!(
            err("65536").to_string(),
            "port 65536 is out of range (1-65535)"
        );
        assert_eq!(
            err("1-99999999999999999999999").to_string(),
            "port 99999999999999999999999 is out of range (1-65535) (in \"1-99999999999999999999999\")"
        );
    }

    #[test]
    fn rejects_reversed_range() {
        assert_eq!(
            err("5-3"),
            PortListError::Reversed {
                item: "5-3".into(),
                start: 5,
                end: 3
            }
        );
        assert!(err("5-3").to_string().contains("\"5-3\""));
    }

    #[test]
    fn rejects_empty_items() {
        let e = err("25,,26");
        assert_eq!(
            e,
            PortListError::EmptyItem {
                list: "25,,26".into(),
                position: 2
            }
        );
        assert!(e.to_string().contains("\"25,,26\""), "{e}");
        assert!(matches!(
            err("25,"),
            PortListError::EmptyItem { position: 2, .. }
        ));
        assert!(matches!(
            err(",25"),
            PortListError::EmptyItem { position: 1, .. }
        ));
    }
}
