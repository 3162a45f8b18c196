//! Key normalization and the compact key arena the protocols read.
//!
//! # Encoding
//! A key is one or more column values. Each value is normalized ([`normalize`]) and the key is
//! encoded as, for each key column in order, the value's byte length as an unsigned LEB128 varint
//! followed by the value's UTF-8 bytes ([`encode_key`]). Single-column keys follow the same rule,
//! so there is one encoding: two keys are equal exactly when their encodings are, and composite
//! keys cannot collide by shifting bytes between columns (`("ab", "c")` ≠ `("a", "bc")`).
//! Both parties of a job must use the same key columns count and normalization options, or equal
//! entities will not match.
use std::borrow::Cow;

use consort_protocols::Items;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How key values are normalized before hashing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Normalization {
    /// Strip leading/trailing whitespace, ASCII and Unicode (`White_Space`) (default on).
    #[serde(default = "yes")]
    pub trim: bool,
    /// Unicode lower-casing (`str::to_lowercase`) (default off).
    #[serde(default)]
    pub case_fold: bool,
}

fn yes() -> bool {
    true
}

impl Default for Normalization {
    fn default() -> Self {
        Self { trim: true, case_fold: false }
    }
}

/// Normalizes one key value; borrows when nothing changes.
pub fn normalize<'a>(value: &'a str, n: &Normalization) -> Cow<'a, str> {
    let value = if n.trim { value.trim() } else { value };
    if !n.case_fold {
        return Cow::Borrowed(value);
    }
    if value.is_ascii() {
        if value.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(value.to_ascii_lowercase())
        } else {
            Cow::Borrowed(value)
        }
    } else if value.chars().any(|c| c.is_uppercase()) {
        Cow::Owned(value.to_lowercase())
    } else {
        Cow::Borrowed(value)
    }
}

/// Refuses a normalized key value holding a control character (Unicode `Cc`: U+0000–U+001F,
/// U+007F–U+009F) other than tab. Such a key is almost always a broken export (a NUL from a
/// C string, a CR from a mixed line ending, an escape sequence) that would match nothing or the
/// wrong row. Tabs are allowed: some exports keep them inside values. Checked after
/// normalization, so with trimming on, whitespace controls at the edges (CR, LF, tab) are
/// removed first. The message names the character, never the value.
pub fn check_key_chars(value: &str) -> Result<(), String> {
    match value.chars().find(|&c| c.is_control() && c != '\t') {
        Some(c) => Err(format!("the key contains a control character (U+{:04X})", c as u32)),
        None => Ok(()),
    }
}

/// Appends one encoded column value (length varint, then bytes).
fn encode_column(value: &[u8], out: &mut Vec<u8>) {
    let mut len = value.len() as u64;
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(value);
}

/// Appends the encoding of a key made of `columns` (already normalized) to `out`.
pub fn encode_key<S: AsRef<[u8]>>(columns: &[S], out: &mut Vec<u8>) {
    for c in columns {
        encode_column(c.as_ref(), out);
    }
}

/// The column values of an encoded key. Stops early if the encoding is malformed.
pub fn decode_key(mut encoded: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let (&b, rest) = encoded.split_first()?;
            encoded = rest;
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
            if shift > 63 {
                return None;
            }
        }
        let len = usize::try_from(len).ok().filter(|&l| l <= encoded.len())?;
        let (value, rest) = encoded.split_at(len);
        encoded = rest;
        Some(value)
    })
}

/// A key as shown to the local operator: `'v'` for one column, `('v1', 'v2')` for several;
/// long values are shortened. Keys are data: never put one in an error, the audit log or a
/// message to the peer.
pub fn display_key(encoded: &[u8]) -> String {
    const MAX_CHARS: usize = 64;
    let parts: Vec<String> = decode_key(encoded)
        .map(|v| {
            let s = String::from_utf8_lossy(v);
            if s.chars().count() > MAX_CHARS {
                format!("'{}…'", s.chars().take(MAX_CHARS).collect::<String>())
            } else {
                format!("'{s}'")
            }
        })
        .collect();
    match parts.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join(", ")),
    }
}

/// All keys of a dataset in one buffer (no allocation per key): the encoded keys back to back,
/// plus the end offset of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyArena {
    bytes: Vec<u8>,
    ends: Vec<u64>,
}

impl KeyArena {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(keys: usize, bytes: usize) -> Self {
        Self { bytes: Vec::with_capacity(bytes), ends: Vec::with_capacity(keys) }
    }

    /// Appends one normalized column value to the key being built; [`KeyArena::finish_key`] ends it.
    pub fn push_column(&mut self, value: &[u8]) {
        encode_column(value, &mut self.bytes);
    }

    /// Removes every key (keeping the buffers).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Ends the key being built.
    pub fn finish_key(&mut self) {
        self.ends.push(self.bytes.len() as u64);
    }

    /// Appends a whole key made of `columns` (already normalized).
    pub fn push<S: AsRef<[u8]>>(&mut self, columns: &[S]) {
        encode_key(columns, &mut self.bytes);
        self.finish_key();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The encoded key `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    /// Keeps only the keys for which `keep(index)` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut write = 0usize;
        let mut kept = 0usize;
        let mut start = 0usize;
        for i in 0..self.ends.len() {
            let end = self.ends[i] as usize;
            if keep(i) {
                self.bytes.copy_within(start..end, write);
                write += end - start;
                self.ends[kept] = write as u64;
                kept += 1;
            }
            start = end;
        }
        self.bytes.truncate(write);
        self.ends.truncate(kept);
    }

    /// Bytes held on the heap (capacity).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 8
    }

    /// Drops the columns pushed since the last finished key.
    pub(crate) fn discard_unfinished(&mut self) {
        let end = self.ends.last().map_or(0, |&e| e as usize);
        self.bytes.truncate(end);
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

impl Items for KeyArena {
    fn len(&self) -> usize {
        KeyArena::len(self)
    }
    fn get(&self, index: usize) -> &[u8] {
        KeyArena::get(self, index)
    }
}

/// A 64-bit hash of a key for sorting equal keys together (not cryptographic; equal hashes are
/// always confirmed by comparing the keys).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (key.len() as u64).wrapping_mul(M) ^ 0x243f_6a88_85a3_08d3;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = fold_mul(h ^ w, M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = fold_mul(h ^ u64::from_le_bytes(w), M);
    }
    fmix64(h)
}

fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// MurmurHash3's 64-bit finalizer.
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The keys of an arena sorted by hash, 16 bytes per key: finds repeated keys, or equal keys in
/// two arenas, by walking sorted runs instead of random lookups.
pub(crate) struct KeyIndex {
    /// `(hash, index)`, sorted; equal keys are adjacent in ascending index order.
    entries: Vec<(u64, u32)>,
}

impl KeyIndex {
    pub(crate) fn build(keys: &KeyArena) -> Self {
        assert!(keys.len() <= u32::MAX as usize, "more than 2^32 keys");
        let mut entries: Vec<(u64, u32)> =
            (0..keys.len()).into_par_iter().map(|i| (key_hash(keys.get(i)), i as u32)).collect();
        entries.par_sort_unstable();
        Self { entries }
    }

    /// Every `(i, j)` with `keys.get(i) == other_keys.get(j)`, in hash order.
    pub(crate) fn join(&self, keys: &KeyArena, other: &KeyIndex, other_keys: &KeyArena) -> Vec<(u32, u32)> {
        let (mut x, mut y) = (self.entries.chunk_by(|a, b| a.0 == b.0), other.entries.chunk_by(|a, b| a.0 == b.0));
        let (mut rx, mut ry) = (x.next(), y.next());
        let mut out = Vec::new();
        while let (Some(a), Some(b)) = (rx, ry) {
            match a[0].0.cmp(&b[0].0) {
                std::cmp::Ordering::Less => rx = x.next(),
                std::cmp::Ordering::Greater => ry = y.next(),
                std::cmp::Ordering::Equal => {
                    for &(_, i) in a {
                        for &(_, j) in b {
                            if keys.get(i as usize) == other_keys.get(j as usize) {
                                out.push((i, j));
                            }
                        }
                    }
                    (rx, ry) = (x.next(), y.next());
                }
            }
        }
        out
    }

    /// Every repeated key as `(first, repeat)` index pairs: `repeat` has the same key as the
    /// earlier row `first`, which is the first row with that key.
    pub(crate) fn repeats(&self, keys: &KeyArena) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for run in self.entries.chunk_by(|a, b| a.0 == b.0) {
            if run.len() < 2 {
                continue;
            }
            let first = keys.get(run[0].1 as usize);
            if run.iter().all(|&(_, i)| keys.get(i as usize) == first) {
                out.extend(run[1..].iter().map(|&(_, i)| (run[0].1, i)));
            } else {
                // A hash collision between different keys: group by the key itself.
                let mut idx: Vec<u32> = run.iter().map(|&(_, i)| i).collect();
                idx.sort_by(|&a, &b| keys.get(a as usize).cmp(keys.get(b as usize)).then(a.cmp(&b)));
                for group in idx.chunk_by(|&a, &b| keys.get(a as usize) == keys.get(b as usize)) {
                    out.extend(group[1..].iter().map(|&i| (group[0], i)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(trim: bool, case_fold: bool) -> Normalization {
        Normalization { trim, case_fold }
    }

    #[test]
    fn trims_ascii_and_unicode_whitespace() {
        let n = Normalization::default();
        assert_eq!(normalize("  15551234567\t", &n), "15551234567");
        assert_eq!(normalize("\u{a0}\u{3000}abc\u{2009}\r\n", &n), "abc");
        assert_eq!(normalize(" a b ", &n), "a b");
        assert!(matches!(normalize("abc", &n), Cow::Borrowed(_)));
        assert_eq!(normalize("  x ", &norm(false, false)), "  x ");
        assert_eq!(normalize("   ", &n), "");
    }

    #[test]
    fn case_folding_is_optional_and_unicode_aware() {
        assert_eq!(normalize(" Alice@Example.COM ", &Normalization::default()), "Alice@Example.COM");
        assert_eq!(normalize(" Alice@Example.COM ", &norm(true, true)), "alice@example.com");
        assert_eq!(normalize("ÉCOLE Straße", &norm(true, true)), "école straße");
        assert!(matches!(normalize("already lower", &norm(true, true)), Cow::Borrowed(_)));
    }

    #[test]
    fn composite_keys_are_unambiguous() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        encode_key(&["ab", "c"], &mut a);
        encode_key(&["a", "bc"], &mut b);
        assert_ne!(a, b);
        let mut single = Vec::new();
        encode_key(&["abc"], &mut single);
        assert_eq!(single, b"\x03abc");
        let mut empty_then = Vec::new();
        encode_key(&["", "abc"], &mut empty_then);
        assert_ne!(empty_then, single);
        let long = "x".repeat(300);
        let mut enc = Vec::new();
        encode_key(&[long.as_str(), "y"], &mut enc);
        assert_eq!(&enc[..2], &[0xac, 0x02]); // 300 = 0b10_0101100
        let cols: Vec<&[u8]> = decode_key(&enc).collect();
        assert_eq!(cols, vec![long.as_bytes(), b"y".as_slice()]);
    }

    #[test]
    fn display_quotes_each_column() {
        let mut enc = Vec::new();
        encode_key(&["15551234567"], &mut enc);
        assert_eq!(display_key(&enc), "'15551234567'");
        enc.clear();
        encode_key(&["ann", "1990-01-02"], &mut enc);
        assert_eq!(display_key(&enc), "('ann', '1990-01-02')");
    }

    #[test]
    fn arena_stores_retains_and_serves_items() {
        let mut arena = KeyArena::new();
        for k in ["a", "bb", "", "dddd"] {
            arena.push(&[k]);
        }
        arena.push_column(b"x");
        arena.push_column(b"y");
        arena.finish_key();
        assert_eq!(Items::len(&arena), 5);
        assert_eq!(Items::get(&arena, 1), b"\x02bb");
        assert_eq!(arena.get(2), b"\x00");
        assert_eq!(arena.get(4), b"\x01x\x01y");
        arena.retain(|i| i % 2 == 0);
        assert_eq!(arena.len(), 3);
        assert_eq!(arena.get(0), b"\x01a");
        assert_eq!(arena.get(1), b"\x00");
        assert_eq!(arena.get(2), b"\x01x\x01y");
    }

    #[test]
    fn index_joins_and_finds_repeats() {
        let mut arena = KeyArena::new();
        for k in ["a", "b", "a", "c", "b", "a"] {
            arena.push(&[k]);
        }
        let index = KeyIndex::build(&arena);
        let mut other = KeyArena::new();
        for k in ["z", "b", "c", "y"] {
            other.push(&[k]);
        }
        let mut pairs = index.join(&arena, &KeyIndex::build(&other), &other);
        pairs.sort();
        assert_eq!(pairs, vec![(1, 1), (3, 2), (4, 1)]);
        let mut repeats = index.repeats(&arena);
        repeats.sort();
        assert_eq!(repeats, vec![(0, 2), (0, 5), (1, 4)]);
    }

    #[test]
    fn hash_spreads_similar_keys() {
        let hashes: std::collections::HashSet<u64> =
            (0..100_000u64).map(|i| key_hash(format!("1{:010}", i).as_bytes())).collect();
        assert_eq!(hashes.len(), 100_000);
    }
}
