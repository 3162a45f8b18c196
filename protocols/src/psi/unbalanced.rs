//! Unbalanced PSI: repeated checks of small query sets against a large list whose owner does its
//! heavy work once (the anti-fraud "blacklist check").
//!
//! # Construction (DH-OPRF, "2HashDH": Jarecki, Kiayias, Krawczyk, "Round-Optimal
//! Password-Protected Secret Sharing and T-PAKE in the Password-Only Model", ASIACRYPT 2014;
//! its use for unbalanced PSI: Kiss, Liu, Schneider, Asokan, Peter, "Private Set Intersection
//! for Unequal Set Sizes with Mobile Applications", PETS 2017)
//!
//! The list owner O holds a long-lived OPRF key `k` (uniform in ℤ_ℓ \ {0}, from the OS) and the
//! list X; the querier Q holds a small set Y. With `H` the hash to ristretto255 of the ECDH-PSI
//! ([`super::ecdh::kernels::hash_to_point`]):
//!
//! ```text
//! F_k(x) = SHA-512(OPRF_DOMAIN ‖ len(x) ‖ x ‖ enc(2k·H(x)))       (64 bytes)
//! tag(x) = F_k(x)[..t]          label key(x) = F_k(x)[32..48]
//! ```
//!
//! 1. **Setup** (O alone, once per key): [`evaluate_set`] computes `F_k(x)` for every `x ∈ X`
//!    and keeps the truncated tags sorted, each with its label (the item's payload, padded to
//!    the set's width `W` and encrypted with AES-128-GCM under its label key, [`super::payload`]
//!    `seal`). The *setup id* ([`SetupParams::id`]) hashes the key commitment `k·G`, the list
//!    size, `t`, `W`, the query budget and the SHA-256 digest of the sorted records — which are a
//!    deterministic function of the key, the list and its labels — so it names one key epoch and
//!    one evaluated list, and a set whose records do not hash to its id is refused.
//! 2. **Fetch** ([`serve_fetch`] / [`fetch`]): O sends the parameters and the sorted records
//!    `tag ‖ label ciphertext`. Q checks every announced size against its limits before it sizes
//!    anything, that the tags are sorted and that the records hash to the announced digest, and
//!    keeps the set (the node seals it at rest).
//! 3. **Query** ([`query`] / [`answer`]), with *additive* blinding: Q draws a fresh uniform
//!    `r_i` per item and sends `enc(X_i)`, `X_i = 2·(H(y_i) + r_i·G)`, with the setup id it
//!    fetched; O refuses any other id than its current one (a superseded setup after a key
//!    rotation), confirms its id, and returns `enc((k/2)·X_i)` for each point (rejecting
//!    encodings that are not canonical or are the identity). Q checks the confirmed id, decodes
//!    `Y_i = (k/2)·X_i = k·H(y_i) + r_i·K` and unblinds with the key commitment `K = k·G` of the
//!    set it fetched (bound into the setup id O just confirmed): `k·H(y_i) = Y_i − r_i·K`; then
//!    `F_k(y_i)` and the tag lookup in the fetched set. With labels, a tag hit counts only if a
//!    label under the item's label key opens (so a truncation collision is caught by the AES-GCM
//!    tag). Work and bytes are proportional to the query: 32 bytes per item each way.
//!
//!    Cost per item: Q does two *fixed-base* multiplications (`r_i·G` with the basepoint table,
//!    `r_i·K` with a table of `K` built once per query, 1 ms) — both constant-time (radix-16
//!    windows with constant-time table lookups: `r_i` is secret) — instead of the two
//!    variable-base ones of multiplicative blinding (`r_i·H(y_i)`, `r_i⁻¹·…`), about 3× cheaper
//!    each; O still does one constant-time variable-base multiplication by its secret key. The
//!    factors of 2 exist so that every encoding on both sides (and at setup) is the batched
//!    double-and-encode, one shared inversion per frame, instead of one inversion per point.
//!
//! # Truncation
//!
//! A query item not in X matches some list tag with probability at most `n·2^(−8t)`. With `n` the
//! list size and `B` the query budget of the setup (the most query items the owner answers under
//! this key, counted by the node), [`tag_bytes`] picks the smallest `t` with
//! `n·B·2^(−8t) ≤ 2^−40`: over the whole budget the chance of any false positive is at most
//! `2^−40`. Example: `n = 10^8`, `B = 10^9` gives `t = 13` bytes per item (`B = 10^7`: 12).
//!
//! # What each party learns (semi-honest; DDH in ristretto255 — more precisely the one-more-DH
//! assumption for the OPRF — SHA-512 and the hash to the curve as random oracles)
//!
//! - **O** learns, per query job, the number of items `m` and when it ran; nothing about the items:
//!   each `X_i = 2·(H(y_i) + r_i·G)` is a uniformly random point (`r_i·G` is uniform in the
//!   prime-order group and independent of `y_i`: a one-time pad in the group, so this hiding is
//!   perfect, not computational), independent across items and queries. So
//!   repeated queries of the same id are **not linkable** by O through the protocol (only by
//!   side information such as timing and batch sizes).
//! - **Q** learns at fetch the list size `n`, the label width `W` and the set of truncated tags.
//!   Without `k` a tag is a pseudorandom function of the item: it reveals nothing about items Q
//!   does not query; each query item's membership (and label) is all Q learns per query. Q can
//!   test any id it likes, up to the budget: that is the service (an unbalanced PSI is a
//!   membership oracle, rate-limited by the grant's query budget and the per-job size). The
//!   labels of items Q never queried stay encrypted under keys it cannot derive.
//! - After a key rotation, the old fetched set is useless: O refuses its setup id, and its tags
//!   cannot be matched with evaluations under the new key.
//!
//! # What a malicious peer can still do
//!
//! - A malicious Q can send any points (not only hashes): it learns `(k/2)·X` for points of its
//!   choice, which is the OPRF evaluation it is allowed anyway (one per budgeted query item); it
//!   cannot evaluate more items than it sends. Invalid encodings and the identity are refused.
//! - A malicious O can answer with any points (another key, or `k·X + D` for a shift `D` of its
//!   choice: with additive blinding Q computes the answer minus `r_i·K`) for some queries: Q then
//!   sees no match for those items, or a wrong match it cannot tell — no DLEQ proof binds the
//!   answers to the committed key here, unlike the ECDH-PSI with proofs. O still learns nothing
//!   about the items from this (Q sends nothing after the answers); what it can do is the same as
//!   with multiplicative blinding: make a result depend on a function of the item it chose, as it
//!   already can by choosing its list. O can also send a list of its choice (input substitution,
//!   inherent), or abort. Wrong counts, unsorted or over-long fetches and invalid points are
//!   refused. Q takes `K` only from the fetched set whose records and parameters hash to the setup
//!   id O confirms, never from the query's own frames.
//!
//! # Wire format (integers big-endian; every frame starts with a one-byte kind)
//!
//! | frame     | kind   | body |
//! |-----------|--------|------|
//! | hello     | `0x01` | `"consort/ubal-psi"` (16) ‖ version `u16` (= 2) ‖ mode `u8` (1 fetch, 2 query) ‖ fetch: [`SetupParams`] encoding (85 bytes); query: setup id (32) ‖ items `u64` |
//! | records   | `0x02` | (fetch, O → Q) whole records `tag (t) ‖ label ciphertext (W + 16, if W > 0)`, in tag order, ≈ 1 MiB per frame |
//! | points    | `0x03` | (query, Q → O) `m ≥ 1` encodings `enc(X_i)` of 32 bytes |
//! | evaluated | `0x04` | (query, O → Q) as many encodings `enc((k/2)·X_i)`, in the order received |
//!
//! Version 2 (this one) changed the OPRF (`enc(2k·H(x))` in `F`, additive blinding, O's answers
//! by `k/2`): version 1 peers and version 1 setups are refused (the domains below carry `v2`, and
//! the engine's stored files have new magics), never silently mismatched.
//!
//! Query: Q sends its hello and its points; O answers with its own hello (its current setup id and
//! the same count) and then the evaluated points. Fetch: O sends its hello and the records.

use std::sync::Arc;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::TryRng;
use rand::rngs::SysRng;
use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, Zeroizing};

use super::ecdh::kernels::{decode, hash_to_point};
use super::payload::{LEN_BYTES, Payloads, TAG_BYTES, open, seal};
use crate::channel::{Channel, ChannelError};
use crate::cpu;
use crate::items::Items;

/// Protocol id carried in the hello.
pub const PROTOCOL_ID: &[u8; 16] = b"consort/ubal-psi";
/// Wire format version.
pub const VERSION: u16 = 2;
/// Domain of the OPRF output.
pub const OPRF_DOMAIN: &[u8] = b"consort/ubal-psi/v2/oprf";
/// Domain of the records' digest.
pub const RECORDS_DOMAIN: &[u8] = b"consort/ubal-psi/v2/records";
/// Domain of the setup id.
pub const SETUP_ID_DOMAIN: &[u8] = b"consort/ubal-psi/v2/setup-id";
/// Fewest and most tag bytes a set may use.
pub const MIN_TAG_BYTES: u8 = 5;
pub const MAX_TAG_BYTES: u8 = 16;
/// Most bytes of one item's label (its payload, before length and padding).
pub const MAX_LABEL_BYTES: usize = 64 << 10;
/// Points per query frame (64 KiB): small enough that both sides overlap their work.
pub const POINTS_PER_FRAME: usize = 2048;
/// Bytes of records per fetch frame (about).
pub const RECORD_FRAME_BYTES: usize = 1 << 20;
/// Most items one query may carry (indices are `u32`).
pub const MAX_QUERY_ITEMS: u64 = u32::MAX as u64;

const HELLO: u8 = 0x01;
const RECORDS: u8 = 0x02;
const POINTS: u8 = 0x03;
const EVALUATED: u8 = 0x04;
const MODE_FETCH: u8 = 1;
const MODE_QUERY: u8 = 2;
const HELLO_HEAD: usize = 1 + 16 + 2 + 1;

/// Why an unbalanced PSI step failed.
#[derive(Debug, thiserror::Error)]
pub enum UnbalancedError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The peer sent something that does not follow the protocol or exceeds a limit.
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// This party's own input or stored set cannot be used.
    #[error("invalid unbalanced PSI input: {0}")]
    Input(String),
}

fn violation(message: impl Into<String>) -> UnbalancedError {
    UnbalancedError::Protocol(message.into())
}

/// Tag bytes for a list of `items` answering at most `query_budget` query items: the smallest
/// `t ≥ MIN_TAG_BYTES` with `items·budget·2^(−8t) ≤ 2^−40`; `None` if more than 16 bytes would be
/// needed.
pub fn tag_bytes(items: u64, query_budget: u64) -> Option<u8> {
    let log2 = |v: u64| 64 - v.max(1).saturating_sub(1).leading_zeros(); // ⌈log2 v⌉
    let bits = 40 + log2(items) + log2(query_budget);
    let t = bits.div_ceil(8).max(MIN_TAG_BYTES as u32);
    (t <= MAX_TAG_BYTES as u32).then_some(t as u8)
}

// ------------------------------------------------------------------------------------------------
// The key and the set
// ------------------------------------------------------------------------------------------------

/// The list owner's OPRF key `k`, zeroized on drop.
pub struct OprfKey(Scalar);

impl std::fmt::Debug for OprfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OprfKey(..)")
    }
}

impl OprfKey {
    /// A fresh key from the operating system's random number generator.
    pub fn random() -> OprfKey {
        OprfKey(random_scalar())
    }

    /// The key from its 32-byte canonical encoding; `None` if not canonical or zero.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<OprfKey> {
        let k = Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes))?;
        (k != Scalar::ZERO).then_some(OprfKey(k))
    }

    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public commitment `k·G` (bound into the setup id).
    pub fn commitment(&self) -> [u8; 32] {
        (&self.0 * RISTRETTO_BASEPOINT_TABLE).compress().to_bytes()
    }
}

impl Drop for OprfKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

fn random_scalar() -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    loop {
        SysRng.try_fill_bytes(&mut wide[..]).expect("the operating system's random number generator failed");
        let s = Scalar::from_bytes_mod_order_wide(&wide);
        if s != Scalar::ZERO {
            return s;
        }
    }
}

/// What a setup is: public, sent at fetch, hashed into the setup id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupParams {
    /// `enc(k·G)`.
    pub commitment: [u8; 32],
    /// SHA-256 of the domain and the sorted records ([`records_digest`]).
    pub digest: [u8; 32],
    /// List items `n`.
    pub items: u64,
    /// Tag bytes `t` ([`tag_bytes`] of `items` and `query_budget`).
    pub tag_bytes: u8,
    /// Label width `W` (a label's bytes after its 4-byte length, padded); 0: no labels.
    pub label_width: u32,
    /// Most query items answered under this setup.
    pub query_budget: u64,
}

impl SetupParams {
    /// Bytes of [`SetupParams::encode`].
    pub const ENCODED: usize = 32 + 32 + 8 + 1 + 4 + 8;

    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut out = [0u8; Self::ENCODED];
        out[..32].copy_from_slice(&self.commitment);
        out[32..64].copy_from_slice(&self.digest);
        out[64..72].copy_from_slice(&self.items.to_be_bytes());
        out[72] = self.tag_bytes;
        out[73..77].copy_from_slice(&self.label_width.to_be_bytes());
        out[77..85].copy_from_slice(&self.query_budget.to_be_bytes());
        out
    }

    /// Decodes and checks the parameters' consistency (`t` as [`tag_bytes`] requires, the label
    /// width within [`MAX_LABEL_BYTES`], a valid commitment).
    pub fn decode(bytes: &[u8]) -> Result<SetupParams, String> {
        if bytes.len() != Self::ENCODED {
            return Err("setup parameters of the wrong length".into());
        }
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let p = SetupParams {
            commitment: bytes[..32].try_into().expect("32 bytes"),
            digest: bytes[32..64].try_into().expect("32 bytes"),
            items: u64_at(64),
            tag_bytes: bytes[72],
            label_width: u32::from_be_bytes(bytes[73..77].try_into().expect("4 bytes")),
            query_budget: u64_at(77),
        };
        if tag_bytes(p.items, p.query_budget) != Some(p.tag_bytes) {
            return Err(format!(
                "tags of {} bytes do not bound false positives for {} items and a budget of {} queries",
                p.tag_bytes, p.items, p.query_budget
            ));
        }
        if p.label_width as usize > MAX_LABEL_BYTES + LEN_BYTES
            || (p.label_width > 0 && (p.label_width as usize) < LEN_BYTES)
        {
            return Err(format!("a label width of {} bytes is out of range", p.label_width));
        }
        if decode(&p.commitment).is_none() {
            return Err("the key commitment is not a valid point".into());
        }
        Ok(p)
    }

    /// The setup id: SHA-256 over the domain and the encoded parameters.
    pub fn id(&self) -> [u8; 32] {
        Sha256::new().chain_update(SETUP_ID_DOMAIN).chain_update(self.encode()).finalize().into()
    }

    /// Bytes of one record: the tag, then the label ciphertext if there are labels.
    pub fn record_bytes(&self) -> usize {
        self.tag_bytes as usize + if self.label_width > 0 { self.label_width as usize + TAG_BYTES } else { 0 }
    }

    /// Bytes of all records (`None` on overflow).
    pub fn set_bytes(&self) -> Option<u64> {
        self.items.checked_mul(self.record_bytes() as u64)
    }
}

/// An evaluated list: the parameters and the records sorted by tag (bytewise).
pub struct OprfSet {
    pub params: SetupParams,
    pub records: Vec<u8>,
}

impl std::fmt::Debug for OprfSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OprfSet({} items, {} bytes)", self.params.items, self.records.len())
    }
}

impl OprfSet {
    /// A set from stored or received parts: checks the length, the tag order and the digest.
    pub fn new(params: SetupParams, records: Vec<u8>) -> Result<OprfSet, String> {
        if Some(records.len() as u64) != params.set_bytes() {
            return Err("the records do not match the set's size".into());
        }
        if records_digest(&records) != params.digest {
            return Err("the records do not match the setup's digest".into());
        }
        let set = OprfSet { params, records };
        let t = set.params.tag_bytes as usize;
        let sorted = set.records.par_chunks_exact(set.params.record_bytes()).collect::<Vec<_>>();
        if sorted.par_windows(2).any(|w| w[0][..t] > w[1][..t]) {
            return Err("the records are not sorted by tag".into());
        }
        Ok(set)
    }

    pub fn id(&self) -> [u8; 32] {
        self.params.id()
    }

    fn record(&self, i: usize) -> &[u8] {
        let r = self.params.record_bytes();
        &self.records[i * r..(i + 1) * r]
    }

    /// The records whose tag is `tag` (`t` bytes), with the position of the first.
    fn lookup(&self, tag: &[u8]) -> (usize, impl Iterator<Item = &[u8]>) {
        let t = self.params.tag_bytes as usize;
        let n = self.params.items as usize;
        // First record with a tag ≥ `tag`.
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if &self.record(mid)[..t] < tag { lo = mid + 1 } else { hi = mid }
        }
        (lo, (lo..n).map(move |i| self.record(i)).take_while(move |r| &r[..t] == tag))
    }
}

/// `F_k(x)` from the item and `enc(2k·H(x))`.
fn oprf_output(item: &[u8], evaluated: &[u8]) -> Zeroizing<[u8; 64]> {
    let mut h = Sha512::new();
    h.update(OPRF_DOMAIN);
    h.update((item.len() as u64).to_be_bytes());
    h.update(item);
    h.update(evaluated);
    Zeroizing::new(h.finalize().into())
}

fn label_key(output: &[u8; 64]) -> Zeroizing<[u8; 16]> {
    Zeroizing::new(output[32..48].try_into().expect("16 bytes"))
}

/// Setup: evaluates `F_k` on every item (in parallel on rayon), seals each item's label (if
/// `labels`, one per item, at most [`MAX_LABEL_BYTES`]) and sorts the records by tag. Items must
/// be distinct (the engine deduplicates; payloads of repeated keys are grouped by the caller):
/// each label key encrypts one message.
pub fn evaluate_set<I: Items + ?Sized>(
    key: &OprfKey,
    items: &I,
    labels: Option<&Payloads>,
    query_budget: u64,
) -> Result<OprfSet, UnbalancedError> {
    evaluate_set_ordered(key, items, labels, query_budget).map(|(set, _)| set)
}

/// [`evaluate_set`], also returning the item index of each record (record `r` is item
/// `order[r]`): the ECDH payload join ([`super::labeled`]) maps the records the requester matched
/// back to the responder's items with it.
pub fn evaluate_set_ordered<I: Items + ?Sized>(
    key: &OprfKey,
    items: &I,
    labels: Option<&Payloads>,
    query_budget: u64,
) -> Result<(OprfSet, Vec<u32>), UnbalancedError> {
    let n = items.len();
    if n as u64 > MAX_QUERY_ITEMS {
        return Err(UnbalancedError::Input(format!("a list holds at most {MAX_QUERY_ITEMS} items")));
    }
    if let Some(l) = labels {
        if l.len() != n {
            return Err(UnbalancedError::Input("one label per item is needed".into()));
        }
        if l.max_len() > MAX_LABEL_BYTES {
            return Err(UnbalancedError::Input(format!("a label is larger than {MAX_LABEL_BYTES} bytes")));
        }
    }
    let t = tag_bytes(n as u64, query_budget)
        .ok_or_else(|| UnbalancedError::Input("the list and the query budget are too large for 16-byte tags".into()))?;
    let label_width = labels.map(|l| l.max_len() + LEN_BYTES).unwrap_or(0);
    let params = SetupParams {
        commitment: key.commitment(),
        digest: [0; 32],
        items: n as u64,
        tag_bytes: t,
        label_width: label_width as u32,
        query_budget,
    };
    let record = params.record_bytes();
    let t = t as usize;
    // Unsorted records, in item order, then sorted through (tag, index) pairs.
    let mut unsorted = vec![0u8; n * record];
    unsorted.par_chunks_mut(record * EVAL_BATCH).enumerate().for_each(|(b, out)| {
        let first = b * EVAL_BATCH;
        let count = out.len() / record;
        let evaluated = evaluate_points(key, (first..first + count).map(|i| hash_to_point(items.get(i))));
        for (j, slot) in out.chunks_exact_mut(record).enumerate() {
            let output = oprf_output(items.get(first + j), evaluated[j].as_bytes());
            slot[..t].copy_from_slice(&output[..t]);
            if let Some(l) = labels {
                seal(&label_key(&output), l.get(first + j), label_width, &mut slot[t..]);
            }
        }
    });
    let mut order: Vec<([u8; 16], u32)> = unsorted
        .par_chunks_exact(record)
        .enumerate()
        .map(|(i, r)| {
            let mut tag = [0u8; 16];
            tag[..t].copy_from_slice(&r[..t]);
            (tag, i as u32)
        })
        .collect();
    order.par_sort_unstable();
    let mut records = vec![0u8; n * record];
    records.par_chunks_exact_mut(record).zip(order.par_iter()).for_each(|(slot, &(_, i))| {
        let i = i as usize;
        slot.copy_from_slice(&unsorted[i * record..(i + 1) * record]);
    });
    let params = SetupParams { digest: records_digest(&records), ..params };
    Ok((OprfSet { params, records }, order.into_iter().map(|(_, i)| i).collect()))
}

/// SHA-256 of [`RECORDS_DOMAIN`] and the records.
pub fn records_digest(records: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update(RECORDS_DOMAIN).chain_update(records).finalize().into()
}

/// Items per rayon task of the setup.
const EVAL_BATCH: usize = 1024;

/// `enc(2k·P)` for each point, with one shared inversion per batch.
fn evaluate_points(key: &OprfKey, points: impl Iterator<Item = RistrettoPoint>) -> Vec<CompressedRistretto> {
    let evaluated: Vec<RistrettoPoint> = points.map(|p| p * key.0).collect();
    RistrettoPoint::double_and_compress_batch(&evaluated)
}

/// `s/4`: the owner multiplies a query point `X` by it and double-and-encodes, so it answers
/// `enc((s/2)·X)` with one shared inversion per frame.
fn quartered(s: &Scalar) -> Zeroizing<Scalar> {
    Zeroizing::new(s * Scalar::from(4u8).invert())
}

/// `r_i` for `count` items, from one call to the OS generator (zeroized on drop).
fn random_scalars(count: usize) -> Zeroizing<Vec<Scalar>> {
    let mut wide = Zeroizing::new(vec![0u8; 64 * count]);
    SysRng.try_fill_bytes(&mut wide[..]).expect("the operating system's random number generator failed");
    Zeroizing::new(
        wide.chunks_exact(64).map(|w| Scalar::from_bytes_mod_order_wide(w.try_into().expect("64 bytes"))).collect(),
    )
}

// ------------------------------------------------------------------------------------------------
// Fetch
// ------------------------------------------------------------------------------------------------

fn hello(mode: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HELLO_HEAD + body.len());
    out.push(HELLO);
    out.extend_from_slice(PROTOCOL_ID);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.push(mode);
    out.extend_from_slice(body);
    out
}

/// The body of the peer's hello in `mode`, after checking the head.
fn read_hello(frame: &[u8], mode: u8, body_len: usize) -> Result<&[u8], UnbalancedError> {
    if frame.first() != Some(&HELLO) {
        return Err(violation("the first frame is not an unbalanced PSI hello"));
    }
    if frame.len() < HELLO_HEAD || &frame[1..17] != PROTOCOL_ID {
        return Err(violation("the peer does not speak the unbalanced PSI protocol"));
    }
    let version = u16::from_be_bytes([frame[17], frame[18]]);
    if version != VERSION {
        return Err(violation(format!(
            "unbalanced PSI version {version} is not supported (this node speaks {VERSION})"
        )));
    }
    if frame[19] != mode {
        return Err(violation("the peer runs another step of the unbalanced PSI"));
    }
    if frame.len() != HELLO_HEAD + body_len {
        return Err(violation("the hello has the wrong length"));
    }
    Ok(&frame[HELLO_HEAD..])
}

/// The owner's side of a fetch: sends the set. Returns the bytes of records sent.
pub async fn serve_fetch<C: Channel>(channel: &C, set: &OprfSet) -> Result<u64, UnbalancedError> {
    channel.send(hello(MODE_FETCH, &set.params.encode()).into()).await?;
    let record = set.params.record_bytes();
    let per_frame = (RECORD_FRAME_BYTES / record).max(1) * record;
    for chunk in set.records.chunks(per_frame) {
        let mut frame = Vec::with_capacity(1 + chunk.len());
        frame.push(RECORDS);
        frame.extend_from_slice(chunk);
        channel.send(frame.into()).await?;
    }
    Ok(set.records.len() as u64)
}

/// What a querier accepts at a fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Most list items.
    pub max_items: u64,
    /// Most bytes of records in all.
    pub max_bytes: u64,
    /// Most label bytes per item (before length and padding).
    pub max_label_bytes: usize,
}

/// The querier's side of a fetch: receives and checks the set (sizes against `limits` before
/// anything is sized by them; whole records; exactly the announced count; sorted tags).
pub async fn fetch<C: Channel>(channel: &C, limits: &FetchLimits) -> Result<OprfSet, UnbalancedError> {
    let first = channel.recv().await?;
    let params = SetupParams::decode(read_hello(&first, MODE_FETCH, SetupParams::ENCODED)?).map_err(violation)?;
    if params.items > limits.max_items {
        return Err(violation(format!(
            "the list of {} items is larger than the {} allowed",
            params.items, limits.max_items
        )));
    }
    if params.label_width as usize > limits.max_label_bytes + LEN_BYTES {
        return Err(violation(format!(
            "labels of {} bytes are larger than the {} allowed",
            params.label_width as usize - LEN_BYTES,
            limits.max_label_bytes
        )));
    }
    let total = params.set_bytes().filter(|&b| b <= limits.max_bytes).ok_or_else(|| {
        violation(format!(
            "a fetch of {} items of {} bytes is larger than the {} bytes allowed",
            params.items,
            params.record_bytes(),
            limits.max_bytes
        ))
    })?;
    let total = usize::try_from(total).map_err(|_| violation("the fetch does not fit in memory"))?;
    let record = params.record_bytes();
    // Grows with what arrives (bounded by the checked total), not by the announcement alone.
    let mut records = Vec::with_capacity(total.min(64 << 20));
    while records.len() < total {
        let frame = channel.recv().await?;
        if frame.first() != Some(&RECORDS) {
            return Err(violation("expected a records frame"));
        }
        let body = &frame[1..];
        if body.is_empty() || body.len() % record != 0 {
            return Err(violation("a records frame does not hold whole records"));
        }
        if body.len() > total - records.len() {
            return Err(violation("the peer sent more records than it announced"));
        }
        records.extend_from_slice(body);
    }
    cpu::run(move || OprfSet::new(params, records)).await.map_err(violation)
}

// ------------------------------------------------------------------------------------------------
// Query
// ------------------------------------------------------------------------------------------------

/// One matched query item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMatch {
    /// The item's index in the query.
    pub index: u32,
    /// Its label (the owner's payload), if the set has labels.
    pub label: Option<Vec<u8>>,
    /// The position of the matched record in the fetched set (tag order).
    pub record: u64,
}

/// The querier's side of a query: the query items found in `set`, by index (ascending).
pub async fn query<C: Channel, I: Items + Send + ?Sized + 'static>(
    channel: &C,
    set: &Arc<OprfSet>,
    items: &Arc<I>,
) -> Result<Vec<QueryMatch>, UnbalancedError> {
    let m = items.len();
    if m as u64 > MAX_QUERY_ITEMS {
        return Err(UnbalancedError::Input(format!("a query holds at most {MAX_QUERY_ITEMS} items")));
    }
    let mut body = set.id().to_vec();
    body.extend_from_slice(&(m as u64).to_be_bytes());
    channel.send(hello(MODE_QUERY, &body).into()).await?;
    // K = k·G from the fetched set (its parameters hash to the setup id the owner must confirm).
    let committed = decode(&set.params.commitment)
        .ok_or_else(|| UnbalancedError::Input("the fetched set's key commitment is not a valid point".into()))?;
    let key_table = Arc::new(cpu::run(move || RistrettoBasepointTable::create(&committed)).await);
    let starts: Vec<usize> = (0..m).step_by(POINTS_PER_FRAME).collect();
    // Blinds per frame on rayon: enc(2·(H(y_i) + r_i·G)); the r_i stay here until the answers
    // arrive.
    let blind = |start: usize| {
        let items = items.clone();
        cpu::spawn(move || {
            let end = (start + POINTS_PER_FRAME).min(items.len());
            let r = random_scalars(end - start);
            let points: Vec<RistrettoPoint> = (start..end)
                .into_par_iter()
                .zip(r.par_iter())
                .map(|(i, r)| hash_to_point(items.get(i)) + r * RISTRETTO_BASEPOINT_TABLE)
                .collect();
            let mut frame = Vec::with_capacity(1 + 32 * points.len());
            frame.push(POINTS);
            for c in RistrettoPoint::double_and_compress_batch(&points) {
                frame.extend_from_slice(c.as_bytes());
            }
            (frame, r)
        })
    };
    let (to_send, mut blinds_rx) = futures::channel::mpsc::unbounded();
    let sending = async {
        let mut next = starts.first().map(|&s| blind(s));
        for (f, _) in starts.iter().enumerate() {
            let (frame, blinds) = next.take().expect("started").await;
            next = starts.get(f + 1).map(|&s| blind(s));
            let _ = to_send.unbounded_send(blinds);
            channel.send(frame.into()).await?;
        }
        drop(to_send);
        Ok::<(), UnbalancedError>(())
    };
    let receiving = async {
        let answer = channel.recv().await?;
        let confirmed = read_hello(&answer, MODE_QUERY, 40)?;
        if confirmed[..32] != set.id() {
            return Err(violation("the owner answered under another setup (fetch its list again)"));
        }
        if u64::from_be_bytes(confirmed[32..40].try_into().expect("8 bytes")) != m as u64 {
            return Err(violation("the owner confirmed another number of query items"));
        }
        let mut matches = Vec::new();
        let mut pending: Option<cpu::Task<Result<Vec<QueryMatch>, UnbalancedError>>> = None;
        for &start in &starts {
            use futures::StreamExt;
            let frame = channel.recv().await?;
            let blinds = blinds_rx.next().await.ok_or_else(|| UnbalancedError::Input("blinding stopped".into()))?;
            if frame.first() != Some(&EVALUATED) || frame.len() != 1 + 32 * blinds.len() {
                return Err(violation("expected an evaluated frame with one point per query point"));
            }
            let (set, items, key_table) = (set.clone(), items.clone(), key_table.clone());
            let task = cpu::spawn(move || unblind_and_match(&set, &*items, start, &frame[1..], &blinds, &key_table));
            if let Some(p) = pending.replace(task) {
                matches.extend(p.await?);
            }
        }
        if let Some(p) = pending {
            matches.extend(p.await?);
        }
        Ok(matches)
    };
    let (sent, matches) = futures::join!(sending, receiving);
    let matches = matches?;
    sent?;
    Ok(matches)
}

fn unblind_and_match<I: Items + ?Sized>(
    set: &OprfSet,
    items: &I,
    start: usize,
    evaluated: &[u8],
    blinds: &[Scalar],
    key_table: &RistrettoBasepointTable,
) -> Result<Vec<QueryMatch>, UnbalancedError> {
    // k·H(y_i) = Y_i − r_i·K; double-and-encode gives enc(2k·H(y_i)), the setup's encoding.
    let points: Vec<RistrettoPoint> = evaluated
        .par_chunks_exact(32)
        .zip(blinds.par_iter())
        .enumerate()
        .map(|(j, (e, r))| {
            decode(e)
                .map(|y| y - r * key_table)
                .ok_or_else(|| violation(format!("evaluated point {} is not a valid point", start + j + 1)))
        })
        .collect::<Result<_, _>>()?;
    let encoded = RistrettoPoint::double_and_compress_batch(&points);
    let t = set.params.tag_bytes as usize;
    Ok(encoded
        .par_iter()
        .enumerate()
        .filter_map(|(j, e)| {
            let index = start + j;
            let output = oprf_output(items.get(index), e.as_bytes());
            let (first, mut hits) = set.lookup(&output[..t]);
            if set.params.label_width == 0 {
                return hits.next().map(|_| QueryMatch { index: index as u32, label: None, record: first as u64 });
            }
            let key = label_key(&output);
            hits.enumerate().find_map(|(j, r)| {
                open(&key, &r[t..]).map(|label| QueryMatch {
                    index: index as u32,
                    label: Some(label),
                    record: (first + j) as u64,
                })
            })
        })
        .collect())
}

/// The owner's side of a query: refuses any setup id but `current`'s and more than `max_items`
/// items (before anything is sized), then returns `(k/2)·X` for each valid point `X`. Returns the number
/// of items answered.
pub async fn answer<C: Channel>(
    channel: &C,
    key: &Arc<OprfKey>,
    current: &SetupParams,
    max_items: u64,
) -> Result<u64, UnbalancedError> {
    if key.commitment() != current.commitment {
        return Err(UnbalancedError::Input("the key does not belong to the setup".into()));
    }
    let first = channel.recv().await?;
    let body = read_hello(&first, MODE_QUERY, 40)?;
    if body[..32] != current.id() {
        return Err(violation(
            "the query names a setup that is not the owner's current one (superseded by a key rotation or a new setup: fetch the list again)",
        ));
    }
    let m = u64::from_be_bytes(body[32..40].try_into().expect("8 bytes"));
    if m > max_items.min(MAX_QUERY_ITEMS) {
        return Err(violation(format!(
            "a query of {m} items is larger than the {} allowed",
            max_items.min(MAX_QUERY_ITEMS)
        )));
    }
    channel.send(hello(MODE_QUERY, body).into()).await?;
    let mut received = 0u64;
    let mut pending: Option<cpu::Task<Result<Vec<u8>, UnbalancedError>>> = None;
    while received < m {
        let frame = channel.recv().await?;
        if frame.first() != Some(&POINTS) {
            return Err(violation("expected a points frame"));
        }
        let count = (frame.len() - 1) / 32;
        if count == 0 || (frame.len() - 1) % 32 != 0 {
            return Err(violation("a points frame does not hold whole points"));
        }
        if count as u64 > m - received {
            return Err(violation("the peer sent more points than it announced"));
        }
        let (key, first_index) = (key.clone(), received);
        let task = cpu::spawn(move || {
            let quarter = quartered(&key.0);
            let points: Vec<RistrettoPoint> = frame[1..]
                .par_chunks_exact(32)
                .enumerate()
                .map(|(j, e)| {
                    decode(e).map(|p| p * *quarter).ok_or_else(|| {
                        violation(format!("query point {} is not a valid point", first_index + j as u64 + 1))
                    })
                })
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(1 + 32 * points.len());
            out.push(EVALUATED);
            for c in RistrettoPoint::double_and_compress_batch(&points) {
                out.extend_from_slice(c.as_bytes());
            }
            Ok(out)
        });
        received += count as u64;
        if let Some(p) = pending.replace(task) {
            channel.send(p.await?.into()).await?;
        }
    }
    if let Some(p) = pending {
        channel.send(p.await?.into()).await?;
    }
    Ok(m)
}

#[cfg(test)]
#[path = "unbalanced_tests.rs"]
mod tests;
