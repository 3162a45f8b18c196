//! Labeled PSI: the responder's payloads, one per item, encrypted under a key only a matching
//! requester item can derive (used by [`crate::psi::rr22`] when [`PayloadMode`] asks for it).
//!
//! # Construction (ours, from the labeled-PSI idea: Chen, Huang, Laine, Rindal, "Labeled PSI
//! from fully homomorphic encryption with malicious security", CCS 2018, §1; the OPRF-keyed
//! variant every OPRF-based PSI admits)
//!
//! In RR22 both parties evaluate the same OPRF input `z(x)` for an item `x` (S as
//! `Decode(K, x) ⊕ Δ·v(x)`, R as `Decode(C, x)`, equal exactly when R holds `x`); the PSI's
//! match values are `H_x(z)` truncated to ℓ bits. For the payload of each of its items S derives,
//! with one SHA-256 per item,
//!
//! ```text
//! e(x) ‖ m(x) = SHA-256(KEY_DOMAIN ‖ salt ‖ d(x) ‖ z(x))     (16 + 16 bytes; d(x): the item's salted digest)
//! ```
//!
//! — a second random-oracle output on the OPRF input, independent of the match value — and sends
//! (format 2, [`FORMAT`], encrypt-then-MAC with one-time keys):
//!
//! ```text
//! c = (len ‖ payload ‖ 0-padding) ⊕ pad(e(x))     pad = e[..W] if W ≤ 16, else AES-128-CTR_e(0, 1, ...)[..W]
//! t = SHA-256(TAG_DOMAIN ‖ m(x) ‖ c)[..16]        (compared in constant time)
//! ```
//!
//! Every plaintext is padded to the job's width `W` (announced first with the format, checked by R
//! against its limit before anything is sized by it), so every sealed payload is `W + 16` bytes.
//! Each key seals one message (S's items are distinct, which [`Payloads`] senders must ensure: a
//! caller with several rows per key groups them into one payload; the salt is fresh per job), so
//! the pad is a one-time pad and `m` a one-time MAC key. Format 1 (AES-128-GCM under a 16-byte
//! key from the same hash) cost an AES key schedule, a GHASH key and an allocation per item on
//! both sides; format 2 costs two SHA-256 calls (three compression rounds at W ≤ 20) and, for
//! `W > 16`, one AES key schedule. Both sides refuse the other format (the width frame carries
//! it).
//!
//! The ciphertexts travel in the *same secret random order* as S's match values (bucket by
//! bucket, dummies included: a dummy's ciphertext is random bytes), right after them. R opens
//! the ciphertext at each position whose match value it matched, with the key of its own item.
//!
//! # What each party learns (semi-honest, random-oracle model for SHA-256 and the OPRF's hash)
//!
//! - **R** learns the payloads of the matched items and nothing about the others: for an item
//!   R does not hold, `z(x)` is masked by Δ (see [`crate::psi::rr22`]), so `e(x) ‖ m(x)` is
//!   uniformly random to R, the pad hides the plaintext perfectly (or as AES-CTR under a random
//!   key), and the tag — SHA-256 keyed by the secret `m(x)`, a random oracle — is random too: the
//!   sealed payload is indistinguishable from the random bytes of a dummy. R also learns `W`,
//!   the largest payload of the job (to the byte, after its 4-byte length), and S's padded
//!   stream size (as in the plain PSI).
//! - **S** learns nothing more than in the plain PSI: it sends, it receives nothing new. With
//!   [`crate::psi::Reveal::RequesterOnly`] it learns R's set size and not which of its rows matched.
//!
//! # What a malicious peer can do
//!
//! A malicious S can send any payload for any of its items (input substitution), an empty or
//! over-long width (refused: `W` above R's limit aborts before allocation), or garbage where a
//! matched payload should be: the matched item's sealed payload then fails its tag and R aborts the
//! job ("a matched payload does not open") — so a cheating S can make the job fail, not give R a
//! payload for an item it does not hold without R noticing a wrong key (S cannot compute `k(x)`
//! for an item it does not hold). A selective-failure attack remains (S garbles one position, R
//! aborts iff it matched it); it reveals one membership bit per job to a party that also sees
//! the abort, and is inherent to this semi-honest protocol. A malicious R learns nothing beyond the
//! payloads of items it put in (the OPRF's security).

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ot::aes_hash::AesPrg;

/// Domain of the per-item payload keys (format 2).
pub const KEY_DOMAIN: &[u8] = b"consort/psi-payload/v2/keys";
/// Domain of the per-item tag (format 2).
pub const TAG_DOMAIN: &[u8] = b"consort/psi-payload/v2/tag";
/// The sealing format, sent with the width: both sides refuse another.
pub const FORMAT: u8 = 2;
/// Bytes of the tag after each sealed payload (the AES-GCM tag of format 1, the truncated SHA-256 of format 2).
pub const TAG_BYTES: usize = 16;
/// Bytes of the length before each padded payload.
pub const LEN_BYTES: usize = 4;
/// Largest payload (of one item, before its length and padding) this implementation accepts
/// from a peer unless the caller sets a smaller limit.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The payloads of one party's items: item `i`'s payload is `bytes[ends[i-1]..ends[i]]`.
/// `Debug` shows sizes only, never a payload.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Payloads {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl std::fmt::Debug for Payloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payloads({} items, {} bytes)", self.ends.len(), self.bytes.len())
    }
}

impl Payloads {
    pub fn new() -> Payloads {
        Payloads::default()
    }

    /// Appends the next item's payload.
    pub fn push(&mut self, payload: &[u8]) {
        self.bytes.extend_from_slice(payload);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Item `i`'s payload.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// The longest payload's length (0 if none).
    pub fn max_len(&self) -> usize {
        let mut start = 0;
        let mut max = 0;
        for &e in &self.ends {
            max = max.max(e - start);
            start = e;
        }
        max
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Appends all of `other`'s payloads, in order (one copy of the bytes).
    pub fn append(&mut self, other: &Payloads) {
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + offset));
    }
}

/// A payload list is also a list of items (the ECDH payload join copies its items into one to
/// hand them to rayon).
impl crate::items::Items for Payloads {
    fn len(&self) -> usize {
        self.ends.len()
    }
    fn get(&self, index: usize) -> &[u8] {
        Payloads::get(self, index)
    }
}

/// Whether a party sends or receives payloads in a PSI run (both must agree: the responder sends,
/// the requester receives).
#[derive(Debug, Clone, Default)]
pub enum PayloadMode {
    /// A plain PSI.
    #[default]
    None,
    /// The responder: one payload per own item (same order as the items), at most
    /// [`MAX_PAYLOAD_BYTES`] each.
    Send(std::sync::Arc<Payloads>),
    /// The requester: receives the matched items' payloads; refuses a width above `max_bytes`
    /// (a payload's bytes, before length and padding) before sizing anything by it.
    Receive { max_bytes: usize },
}

impl PayloadMode {
    pub fn is_none(&self) -> bool {
        matches!(self, PayloadMode::None)
    }
}

/// One item's one-time keys `e ‖ m` (see the module docs), zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct ItemKeys {
    pad: [u8; 16],
    mac: [u8; 16],
}

/// The keys of an item's payload from its salted digest and its OPRF input (see the module docs).
pub(crate) fn item_keys(salt: &[u8; 32], digest: u128, z: u128) -> ItemKeys {
    let mut h = Sha256::new();
    h.update(KEY_DOMAIN);
    h.update(salt);
    h.update(digest.to_le_bytes());
    h.update(z.to_le_bytes());
    let mut out = <[u8; 32]>::from(h.finalize());
    let keys = ItemKeys { pad: out[..16].try_into().expect("16 bytes"), mac: out[16..].try_into().expect("16 bytes") };
    out.zeroize();
    keys
}

/// `body ⊕= pad(e)`: the key itself for up to 16 bytes, else AES-128-CTR under it.
fn xor_pad(keys: &ItemKeys, body: &mut [u8]) {
    if body.len() <= 16 {
        body.iter_mut().zip(&keys.pad).for_each(|(b, p)| *b ^= p);
        return;
    }
    let prg = AesPrg::new(u128::from_le_bytes(keys.pad));
    let mut stream = Zeroizing::new([0u8; 512]);
    for (i, chunk) in body.chunks_mut(512).enumerate() {
        let stream = &mut stream[..chunk.len()];
        prg.fill_bytes((i * 512 / 16) as u64, stream);
        chunk.iter_mut().zip(stream.iter()).for_each(|(b, p)| *b ^= p);
    }
}

fn tag_of(keys: &ItemKeys, body: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update(TAG_DOMAIN).chain_update(keys.mac).chain_update(body).finalize().into()
}

/// Seals `payload` (at most `width - LEN_BYTES` bytes) padded to `width` under `keys` into `out`
/// (`width + TAG_BYTES` bytes): format 2 (see the module docs).
pub(crate) fn seal_item(keys: &ItemKeys, payload: &[u8], width: usize, out: &mut [u8]) {
    debug_assert!(payload.len() + LEN_BYTES <= width && out.len() == width + TAG_BYTES);
    let (body, tag_out) = out.split_at_mut(width);
    body.fill(0);
    body[..LEN_BYTES].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    body[LEN_BYTES..LEN_BYTES + payload.len()].copy_from_slice(payload);
    xor_pad(keys, body);
    tag_out.copy_from_slice(&tag_of(keys, body)[..TAG_BYTES]);
}

/// Opens a payload of [`seal_item`] into `body` (`sealed.len() - TAG_BYTES` bytes, overwritten):
/// the payload's length (its bytes are `body[LEN_BYTES..][..len]`); `None` if the tag fails (in
/// constant time) or the length inside is out of range.
pub(crate) fn open_item(keys: &ItemKeys, sealed: &[u8], body: &mut [u8]) -> Option<usize> {
    let width = sealed.len().checked_sub(TAG_BYTES)?;
    if body.len() != width || width < LEN_BYTES {
        return None;
    }
    let tag = tag_of(keys, &sealed[..width]);
    if !bool::from(tag[..TAG_BYTES].ct_eq(&sealed[width..])) {
        return None;
    }
    body.copy_from_slice(&sealed[..width]);
    xor_pad(keys, body);
    let len = u32::from_be_bytes(body[..LEN_BYTES].try_into().expect("4 bytes")) as usize;
    (len <= width - LEN_BYTES).then_some(len)
}

/// Encrypts `payload` (at most `width - LEN_BYTES` bytes) padded to `width` under `key` into
/// `out` (`width + TAG_BYTES` bytes) with AES-128-GCM (nonce 0): the unbalanced PSI's labels,
/// whose keys come from its OPRF output (format 1 of the payload joins).
pub(crate) fn seal(key: &[u8; 16], payload: &[u8], width: usize, out: &mut [u8]) {
    debug_assert!(payload.len() + LEN_BYTES <= width && out.len() == width + TAG_BYTES);
    let (body, tag_out) = out.split_at_mut(width);
    body.fill(0);
    body[..LEN_BYTES].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    body[LEN_BYTES..LEN_BYTES + payload.len()].copy_from_slice(payload);
    let cipher = Aes128Gcm::new_from_slice(key).expect("16-byte key");
    let tag = cipher.encrypt_inout_detached(&Nonce::default(), &[], body.into()).expect("small message");
    tag_out.copy_from_slice(&tag);
}

/// Opens a ciphertext of [`seal`]; `None` if the tag fails or the length inside is out of range.
pub(crate) fn open(key: &[u8; 16], sealed: &[u8]) -> Option<Vec<u8>> {
    let width = sealed.len().checked_sub(TAG_BYTES)?;
    let mut body = Zeroizing::new(sealed[..width].to_vec());
    let tag = Tag::try_from(&sealed[width..]).ok()?;
    let cipher = Aes128Gcm::new_from_slice(key).expect("16-byte key");
    cipher.decrypt_inout_detached(&Nonce::default(), &[], body.as_mut_slice().into(), &tag).ok()?;
    let len = u32::from_be_bytes(body.get(..LEN_BYTES)?.try_into().ok()?) as usize;
    body.get(LEN_BYTES..LEN_BYTES.checked_add(len)?).map(<[u8]>::to_vec)
}

/// The width the responder announces for its payloads.
pub(crate) fn width_for(payloads: &Payloads) -> usize {
    payloads.max_len() + LEN_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_vec(keys: &ItemKeys, sealed: &[u8]) -> Option<Vec<u8>> {
        let mut body = vec![0u8; sealed.len().checked_sub(TAG_BYTES)?];
        let len = open_item(keys, sealed, &mut body)?;
        Some(body[LEN_BYTES..LEN_BYTES + len].to_vec())
    }

    #[test]
    fn sealed_payloads_open_only_under_their_keys() {
        let salt = [7u8; 32];
        let keys = item_keys(&salt, 1, 2);
        let (other, salted) = (item_keys(&salt, 1, 3), item_keys(&[8u8; 32], 1, 2));
        assert_ne!((keys.pad, keys.mac), (other.pad, other.mac), "the keys depend on the OPRF input");
        assert_ne!((keys.pad, keys.mac), (salted.pad, salted.mac), "and on the job's salt");
        assert_ne!(keys.pad, keys.mac);
        // Widths on both sides of the 16-byte pad (key as pad, then AES-CTR), and past 512.
        let long = vec![0xabu8; 700];
        for payload in [&b""[..], b"a", b"12345678", b"risk,\"quoted\"\n\xc3\xa9", &long] {
            for width in [payload.len() + LEN_BYTES, payload.len() + LEN_BYTES + 13] {
                let mut out = vec![0u8; width + TAG_BYTES];
                seal_item(&keys, payload, width, &mut out);
                if !payload.is_empty() {
                    assert!(!out.windows(payload.len()).any(|w| w == payload), "the payload in clear");
                }
                assert_eq!(open_vec(&keys, &out).as_deref(), Some(payload));
                assert_eq!(open_vec(&other, &out), None, "a wrong key fails the tag");
                for at in [0, LEN_BYTES, width - 1, width, out.len() - 1] {
                    let mut tampered = out.clone();
                    tampered[at] ^= 1;
                    assert_eq!(open_vec(&keys, &tampered), None, "a flipped bit at {at} fails the tag");
                }
                let mut tampered = out.clone();
                tampered.pop();
                assert_eq!(open_vec(&keys, &tampered), None, "a shortened payload fails");
            }
        }
        // Two items with the same payload seal to unrelated bytes (one-time keys).
        let (mut a, mut b) = ([0u8; 28], [0u8; 28]);
        seal_item(&keys, b"same", 12, &mut a);
        seal_item(&other, b"same", 12, &mut b);
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 8);
        assert_eq!(open_vec(&keys, &[0u8; 5]), None, "shorter than a tag");
        assert_eq!(open_vec(&keys, &[0u8; 16 + 3]), None, "shorter than a length");
    }

    /// A length field past the width is refused even under the right keys (a cheating sender).
    #[test]
    fn an_out_of_range_length_does_not_open() {
        let keys = item_keys(&[1u8; 32], 5, 6);
        let width = 12;
        let mut body = vec![0u8; width];
        body[..LEN_BYTES].copy_from_slice(&9u32.to_be_bytes());
        xor_pad(&keys, &mut body);
        let mut sealed = body.clone();
        sealed.extend_from_slice(&tag_of(&keys, &body)[..TAG_BYTES]);
        assert_eq!(open_vec(&keys, &sealed), None);
        // Length 8 fits exactly.
        let mut body = vec![0u8; width];
        body[..LEN_BYTES].copy_from_slice(&8u32.to_be_bytes());
        xor_pad(&keys, &mut body);
        let mut sealed = body.clone();
        sealed.extend_from_slice(&tag_of(&keys, &body)[..TAG_BYTES]);
        assert_eq!(open_vec(&keys, &sealed), Some(vec![0u8; 8]));
    }

    #[test]
    fn labels_open_only_under_their_key() {
        let key = [3u8; 16];
        for payload in [&b""[..], b"a", b"risk,\"quoted\"\n\xc3\xa9"] {
            let width = 20;
            let mut out = vec![0u8; width + TAG_BYTES];
            seal(&key, payload, width, &mut out);
            assert_eq!(open(&key, &out).as_deref(), Some(payload));
            assert_eq!(open(&[4u8; 16], &out), None, "a wrong key fails the tag");
            out[3] ^= 1;
            assert_eq!(open(&key, &out), None, "a flipped bit fails the tag");
        }
        assert_eq!(open(&key, &[0u8; 5]), None, "shorter than a tag");
    }

    #[test]
    fn payloads_store_items_in_order() {
        let mut p = Payloads::new();
        for x in [&b"ab"[..], b"", b"xyz"] {
            p.push(x);
        }
        assert_eq!((p.len(), p.max_len()), (3, 3));
        assert_eq!(p.iter().collect::<Vec<_>>(), [&b"ab"[..], b"", b"xyz"]);
        assert_eq!(width_for(&p), 7);
        let mut q = Payloads::new();
        q.push(b"first");
        q.append(&p);
        q.append(&Payloads::new());
        assert_eq!(q.iter().collect::<Vec<_>>(), [&b"first"[..], b"ab", b"", b"xyz"]);
    }
}
