//! Payload (labeled) joins over ECDH: the responder's payloads, one per item, for the requester's
//! matching items — the `--protocol ecdh` form of the payload joins ([`super::payload`] is the
//! RR22 one). [`super::run`] runs this when the protocol is [`super::PsiProtocol::Ecdh`] and the
//! [`PayloadMode`] is not `None`.
//!
//! # Construction (the DH-OPRF of the unbalanced mode, per job)
//!
//! This is the unbalanced PSI of [`super::unbalanced`] (2HashDH: Jarecki, Kiayias, Krawczyk,
//! ASIACRYPT 2014; for PSI: Kiss et al., PETS 2017) run once per job, with a **fresh OPRF key per
//! job** (never a list owner's long-lived setup key):
//!
//! 1. **Hello** (both): protocol id, version, role, reveal mode, set size. Each party refuses a
//!    peer size above the job's agreed bound (`max_peer_items`) or `u32::MAX` before anything is
//!    sized by it. The responder S (payloads) thus learns the requester's size `m`, the requester
//!    R the responder's size `n`.
//! 2. **Evaluate and send** (S): S draws `k` uniform in ℤ_ℓ \ {0} from the OS, computes
//!    `F_k(y) = SHA-512(OPRF_DOMAIN ‖ len(y) ‖ y ‖ enc(2k·H(y)))` for each own item `y`, and keeps
//!    the record `F_k(y)[..t] ‖ AES-128-GCM_{F_k(y)[32..48]}(payload(y) padded to W)`, sorted by
//!    tag ([`super::unbalanced::evaluate_set`] with the query budget `m`, so
//!    [`super::unbalanced::tag_bytes`] bounds the chance of any false tag hit in the job by
//!    `n·m·2^(−8t) ≤ 2^−40`). It sends the parameters (commitment `k·G`, `n`, `t`, `W`, `m`, the
//!    records' digest) and the records: the unbalanced *fetch*. R checks `n` against the hello and
//!    its bound, `W` against its payload limit, the budget against its own size, before anything
//!    is sized by them ([`super::unbalanced::FetchLimits`]), then that the records are whole,
//!    sorted and hash to the digest.
//! 3. **Query** (R → S → R): R blinds every own item additively, `X_i = 2·(H(x_i) + r_i·G)`, S
//!    answers `(k/2)·X_i`, R unblinds with `K = k·G` from the parameters and gets `F_k(x_i)` — a
//!    value only the holder of `x_i` can compute (S never sees `H(x_i)`; R never sees `k`). R looks
//!    the tag up among the records and opens the label under its label key: a hit counts only
//!    if the label opens (AES-GCM tag), so a truncation collision or a tampered label is no match.
//! 4. **Reveal both only**: R sends the positions (in S's record order) of the records it
//!    matched, ascending; S maps them to its items. Both list the intersection in record order —
//!    the *joint order*, a pseudorandom order fixed by `k` — R with every copy of a matched item
//!    (adjacent, by index).
//!
//! The key derivation matters: a key from the ECDH joint value `H(x)^{ab}` would be wrong, since
//! in ECDH-PSI R computes `H(y)^{ab}` for *every* item of S and could open every payload. Here the
//! label key of `y` is `F_k(y)`, which R can compute only for items it queries (one OPRF
//! evaluation per query point, at most `m` of them).
//!
//! Items must be distinct on S's side (each label key seals one message; the engine's datasets
//! have distinct keys and group a key's rows into one payload, as for RR22).
//!
//! # What each party learns (semi-honest; the one-more-DH assumption for the OPRF, SHA-512 and
//! the hash to the curve as random oracles)
//!
//! - **R** learns `n`, the label width `W` (the largest payload of the job, to the byte), the
//!   set of truncated tags (pseudorandom values of items it does not hold: nothing about them),
//!   which of its items S holds and their payloads. The labels of S's other items stay sealed
//!   under keys R cannot derive. Same as the RR22 payload join.
//! - **S** learns `m` and nothing else with [`Reveal::RequesterOnly`]: each query point is a
//!   uniformly random point (`r_i·G` is a one-time pad in the group), and R sends nothing after
//!   the answers. With [`Reveal::Both`] it also learns which of its items matched (the
//!   intersection, as in the RR22 payload join with `--reveal both`).
//!
//! # What a malicious peer can still do
//!
//! - **S** can use any input and any payloads (input substitution), answer the query with
//!   another key or garbage (R then sees no match, or misses items — no DLEQ proof binds the
//!   answers here, as in the unbalanced mode: this payload mode runs **without proofs** even when
//!   the job asks for them, and produces no ECDH proof evidence), or tamper with a label (that
//!   item then does not match: a tag hit whose label does not open is dropped, not an abort, so
//!   S gains nothing it could not get by dropping the item). It *can* make the job fail exactly
//!   when R holds an item it chose, by sealing a well-formed label whose content the engine
//!   cannot decode (a selective failure; the same holds for the RR22 payload join): one
//!   membership bit per job, to a party that sees the abort. Wrong sizes, widths, budgets,
//!   unsorted or truncated records, invalid points and unknown frames are refused with
//!   [`EcdhPsiError::Protocol`], before anything is sized by an announced count.
//! - **R** can send any points instead of hashes: it learns `(k/2)·X` for at most `m` points of
//!   its choice, which is the OPRF evaluation of at most `m` items it may choose anyway (its
//!   input); `m` is bounded by the grant. With [`Reveal::Both`] it can report any record
//!   positions: S's output then lists rows that did not match (S cannot check R's claim), as a
//!   cheating party can make the peer's result wrong in ECDH-PSI without proofs.
//!
//! # Wire format (integers big-endian; every frame starts with a one-byte kind)
//!
//! | frame     | kind   | body |
//! |-----------|--------|------|
//! | hello     | `0x11` | `"consort/ecdh-lbl"` (16) ‖ version `u16` (= 1) ‖ role `u8` ‖ reveal `u8` ‖ set size `u64` (both parties) |
//! | —         |        | then the unbalanced *fetch* (S → R: its hello with the parameters, then the records) and *query* (R → S points, S → R evaluated points), see [`super::unbalanced`] |
//! | matched   | `0x12` | (reveal both, R → S) count `u64` of matched records |
//! | positions | `0x13` | (reveal both, R → S) record positions `u32`, strictly ascending, ≤ 256 Ki per frame, exactly `count` in all |
//!
//! Cost per item: S one variable-base multiplication per own item (evaluation) and per query
//! item (answer); R a hash to the curve, two fixed-base multiplications and a decoding per own
//! item. Bytes: `t + W + 16` per item of S, 32 per item of R each way.

use std::sync::Arc;
use std::time::Instant;

use super::payload::{PayloadMode, Payloads};
use super::unbalanced::{
    FetchLimits, MAX_LABEL_BYTES, OprfKey, UnbalancedError, answer, evaluate_set_ordered, fetch, query, serve_fetch,
};
use super::{Progress, ProgressFn, PsiOutput, Reveal, Role, Timings};
use crate::channel::Channel;
use crate::cpu;
use crate::items::Items;
use crate::psi::ecdh::EcdhPsiError;

/// Protocol id carried in the hello.
pub const PROTOCOL_ID: &[u8; 16] = b"consort/ecdh-lbl";
/// Wire format version.
pub const VERSION: u16 = 1;
/// Record positions per positions frame (1 MiB).
pub const POSITIONS_PER_FRAME: usize = 256 * 1024;

const HELLO: u8 = 0x11;
const MATCHED: u8 = 0x12;
const POSITIONS: u8 = 0x13;
const HELLO_LEN: usize = 1 + 16 + 2 + 1 + 1 + 8;

/// One party's parameters; both must agree on everything but the role and the payload side.
#[derive(Clone)]
pub struct LabeledConfig {
    pub role: Role,
    pub reveal: Reveal,
    pub progress: Option<ProgressFn>,
    /// Most items the peer may announce (refused above, before anything is sized).
    pub max_peer_items: u64,
    /// The responder's payloads ([`PayloadMode::Send`]) or the requester's limit
    /// ([`PayloadMode::Receive`]).
    pub payload: PayloadMode,
}

fn violation(message: impl Into<String>) -> EcdhPsiError {
    EcdhPsiError::Protocol(message.into())
}

fn from_unbalanced(e: UnbalancedError) -> EcdhPsiError {
    match e {
        UnbalancedError::Channel(c) => EcdhPsiError::Channel(c),
        UnbalancedError::Protocol(m) => EcdhPsiError::Protocol(m),
        UnbalancedError::Input(m) => EcdhPsiError::Input(m),
    }
}

fn hello(role: Role, reveal: Reveal, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HELLO_LEN);
    out.push(HELLO);
    out.extend_from_slice(PROTOCOL_ID);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.push(role.wire());
    out.push(reveal.wire());
    out.extend_from_slice(&size.to_be_bytes());
    out
}

/// The peer's set size from its hello, after checking that it runs this protocol with the other
/// role, the same reveal mode and a size within `max`.
fn read_hello(frame: &[u8], role: Role, reveal: Reveal, max: u64) -> Result<u64, EcdhPsiError> {
    if frame.first() == Some(&0x01) && frame.get(1..17) == Some(&super::ecdh::PROTOCOL_ID[..]) {
        return Err(violation("the peer runs a plain ECDH-PSI, not a payload join"));
    }
    if frame.len() < 19 || frame[0] != HELLO || &frame[1..17] != PROTOCOL_ID {
        return Err(violation("the peer's first message is not an ECDH payload join hello"));
    }
    let version = u16::from_be_bytes([frame[17], frame[18]]);
    if version != VERSION {
        return Err(violation(format!(
            "the peer speaks ECDH payload join version {version}, this party speaks version {VERSION}"
        )));
    }
    if frame.len() != HELLO_LEN {
        return Err(violation(format!("the peer's hello has {} bytes, expected {HELLO_LEN}", frame.len())));
    }
    match Role::from_wire(frame[19]) {
        Some(r) if r != role => {}
        Some(_) => return Err(violation("the peer claims the same role")),
        None => return Err(violation(format!("the peer's hello has unknown role {}", frame[19]))),
    }
    if Reveal::from_wire(frame[20]) != Some(reveal) {
        return Err(violation("the peer expects another reveal mode"));
    }
    let size = u64::from_be_bytes(frame[21..29].try_into().expect("8 bytes"));
    if size > u64::from(u32::MAX) {
        return Err(violation(format!("the peer announced {size} items; at most {} per party", u32::MAX)));
    }
    if size > max {
        return Err(violation(format!("the peer announced {size} items, more than the {max} agreed for this job")));
    }
    Ok(size)
}

/// Runs this party's side of an ECDH payload join (see the module docs). The requester's
/// [`PsiOutput`] has the intersection in the joint order and the payloads in the same order; the
/// responder's has the intersection only with [`Reveal::Both`], and no payloads.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub async fn run<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    config: &LabeledConfig,
) -> Result<PsiOutput, EcdhPsiError> {
    let LabeledConfig { role, reveal, ref progress, max_peer_items, ref payload } = *config;
    let progress = Progress(progress.as_ref());
    let n_own = items.len();
    if n_own as u64 > u64::from(u32::MAX) {
        return Err(EcdhPsiError::Input(format!("a payload join holds at most {} items per party", u32::MAX)));
    }
    match (role, payload) {
        (Role::Responder, PayloadMode::Send(p)) if p.len() != n_own => {
            return Err(EcdhPsiError::Input("one payload per item is needed".into()));
        }
        (Role::Responder, PayloadMode::Send(p)) if p.max_len() > MAX_LABEL_BYTES => {
            return Err(EcdhPsiError::Input(format!(
                "a payload is larger than the {MAX_LABEL_BYTES} bytes an ECDH payload join carries"
            )));
        }
        (Role::Responder, PayloadMode::Send(_)) | (Role::Requester, PayloadMode::Receive { .. }) => {}
        _ => {
            return Err(EcdhPsiError::Input("the responder sends the payloads and the requester receives them".into()));
        }
    }
    let mut timings = Timings::default();
    let started = Instant::now();
    channel.send(hello(role, reveal, n_own as u64).into()).await?;
    let peer_size = read_hello(&channel.recv().await?, role, reveal, max_peer_items)?;
    timings.add("hello", started);
    // An owned copy of the items, for rayon (as the ECDH-PSI gathers its frames).
    let mut own = Payloads::new();
    for i in 0..n_own {
        own.push(items.get(i));
    }
    let own = Arc::new(own);
    let intersection = match payload {
        PayloadMode::Send(payloads) => {
            let started = Instant::now();
            let key = Arc::new(OprfKey::random());
            let (k, o, p) = (key.clone(), own.clone(), payloads.clone());
            progress.report("evaluate own set", 0, n_own);
            let (set, order) =
                cpu::run(move || evaluate_set_ordered(&k, &*o, Some(&p), peer_size)).await.map_err(from_unbalanced)?;
            progress.report("evaluate own set", n_own, n_own);
            timings.add("evaluate", started);
            let started = Instant::now();
            serve_fetch(channel, &set).await.map_err(from_unbalanced)?;
            timings.add("send set", started);
            let started = Instant::now();
            answer(channel, &key, &set.params, peer_size).await.map_err(from_unbalanced)?;
            progress.report("answer peer query", peer_size as usize, peer_size as usize);
            timings.add("answer", started);
            drop(key);
            match reveal {
                Reveal::Both => {
                    let started = Instant::now();
                    let matched = receive_positions(channel, n_own as u64, peer_size).await?;
                    timings.add("positions", started);
                    Some(matched.into_iter().map(|r| order[r as usize]).collect())
                }
                Reveal::RequesterOnly => None,
            }
        }
        PayloadMode::Receive { max_bytes } => {
            let started = Instant::now();
            let limits = FetchLimits {
                max_items: peer_size,
                max_bytes: u64::MAX,
                max_label_bytes: (*max_bytes).min(MAX_LABEL_BYTES),
            };
            let set = fetch(channel, &limits).await.map_err(from_unbalanced)?;
            if set.params.items != peer_size {
                return Err(violation("the peer sent another number of records than its hello announced"));
            }
            if set.params.query_budget != n_own as u64 {
                return Err(violation("the peer sized its tags for another set size than this party's"));
            }
            if set.params.label_width == 0 {
                return Err(violation("the peer sent no payloads"));
            }
            progress.report("receive peer set", peer_size as usize, peer_size as usize);
            timings.add("receive set", started);
            let started = Instant::now();
            let mut matches = query(channel, &Arc::new(set), &own).await.map_err(from_unbalanced)?;
            progress.report("query", n_own, n_own);
            timings.add("query", started);
            // The joint order: record order, copies of an item by index.
            matches.sort_unstable_by_key(|m| (m.record, m.index));
            let mut labels = Payloads::new();
            for m in &matches {
                labels.push(m.label.as_deref().ok_or_else(|| violation("a matched record has no payload"))?);
            }
            if reveal == Reveal::Both {
                let started = Instant::now();
                let mut positions: Vec<u32> = matches.iter().map(|m| m.record as u32).collect();
                positions.dedup();
                send_positions(channel, &positions).await?;
                timings.add("positions", started);
            }
            let intersection = matches.iter().map(|m| m.index).collect();
            return Ok(PsiOutput {
                peer_size,
                intersection: Some(intersection),
                payloads: Some(labels),
                timings: timings.into_vec(),
            });
        }
        PayloadMode::None => unreachable!("checked above"),
    };
    Ok(PsiOutput { peer_size, intersection, payloads: None, timings: timings.into_vec() })
}

async fn send_positions<C: Channel>(channel: &C, positions: &[u32]) -> Result<(), EcdhPsiError> {
    let mut head = vec![MATCHED];
    head.extend_from_slice(&(positions.len() as u64).to_be_bytes());
    channel.send(head.into()).await?;
    for chunk in positions.chunks(POSITIONS_PER_FRAME) {
        let mut frame = Vec::with_capacity(1 + 4 * chunk.len());
        frame.push(POSITIONS);
        chunk.iter().for_each(|p| frame.extend_from_slice(&p.to_be_bytes()));
        channel.send(frame.into()).await?;
    }
    Ok(())
}

/// The record positions the requester matched: at most `min(records, peer_size)` (checked before
/// anything is sized), each below `records`, strictly ascending.
async fn receive_positions<C: Channel>(channel: &C, records: u64, peer_size: u64) -> Result<Vec<u32>, EcdhPsiError> {
    let head = channel.recv().await?;
    if head.len() != 9 || head[0] != MATCHED {
        return Err(violation("expected the count of matched records"));
    }
    let count = u64::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
    if count > records.min(peer_size) {
        return Err(violation(format!(
            "the peer claims {count} matched records, more than {} possible",
            records.min(peer_size)
        )));
    }
    let count = count as usize;
    let mut out: Vec<u32> = Vec::with_capacity(count.min(1 << 20));
    while out.len() < count {
        let frame = channel.recv().await?;
        let body = match frame.split_first() {
            Some((&POSITIONS, body)) if !body.is_empty() && body.len() % 4 == 0 => body,
            _ => return Err(violation("expected a frame of whole record positions")),
        };
        if body.len() / 4 > count - out.len() {
            return Err(violation("the peer sent more record positions than it announced"));
        }
        for p in body.chunks_exact(4) {
            let p = u32::from_be_bytes(p.try_into().expect("4 bytes"));
            if u64::from(p) >= records || out.last().is_some_and(|&last| p <= last) {
                return Err(violation("a record position is out of range or out of order"));
            }
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "labeled_tests.rs"]
mod tests;
