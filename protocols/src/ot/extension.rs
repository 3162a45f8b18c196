//! OT extension: IKNP (Ishai, Kilian, Nissim, Petrank, CRYPTO 2003) with the optional consistency
//! check of KOS (Keller, Orsini, Scholl, "Actively Secure OT Extension with Optimal Overhead",
//! CRYPTO 2015), turning 128 base OTs into any number of correlated and random OTs.
//!
//! # What it computes
//!
//! After a one-time [`IknpSender::setup`] / [`IknpReceiver::setup`] (128 base OTs, [`super::base`],
//! run with the roles swapped), each `extend_*` call produces n OTs:
//!
//! - **Correlated OT (Δ-OT, "COT")**, [`IknpSender::extend_correlated`]: the sender holds a
//!   secret Δ ∈ {0,1}^128, fixed at setup, and gets blocks q_i; the receiver gets uniformly random
//!   choice bits b_i and blocks t_i with **t_i = q_i ⊕ b_i·Δ**. This is the form silent VOLE and
//!   GGM-tree puncturing consume.
//! - **Random OT**, [`IknpSender::extend_random`]: the sender gets (m_i^0, m_i^1) =
//!   (H(i, q_i), H(i, q_i ⊕ Δ)), the receiver b_i and m_i^{b_i} = H(i, t_i), with H the
//!   fixed-key-AES TCCR hash of [`super::aes_hash`] and i the OT's index in the session (the
//!   tweak: [`CorrelatedSenderOutput::first_index`] onwards).
//!
//! The protocol: IKNP's semi-honest extension in its correlated-OT form (as KOS'15 present it,
//! their "Π_COTe"), with KOS's correlation check for malicious mode. For ℓ = n rounded up to 128
//! (after adding 256 padding OTs in malicious mode), in chunks of at most [`CHUNK_OTS`] OTs:
//!
//! 1. **Setup.** The extension *receiver* acts as base-OT sender and gets seeds (k_j^0, k_j^1),
//!    j < 128; the extension *sender* acts as base-OT receiver with choice bits Δ and gets
//!    k_j^{Δ_j}. Each seed keys an AES-CTR stream G(k) ([`super::aes_hash::AesPrg`]); a chunk
//!    uses the next ℓ/128 blocks of every stream, so streams are never reused.
//! 2. **Receiver.** Picks random choice bits r ∈ {0,1}^ℓ; for every j, t^j = G(k_j^0) and
//!    sends u^j = t^j ⊕ G(k_j^1) ⊕ r.
//! 3. **Sender.** q^j = G(k_j^{Δ_j}) ⊕ Δ_j·u^j, which equals t^j ⊕ Δ_j·r.
//! 4. **Both** transpose their 128 × ℓ bit matrices ([`super::transpose`]); row i gives
//!    q_i = t_i ⊕ r_i·Δ.
//! 5. **KOS check** (malicious mode only). After the last chunk the receiver commits to a seed
//!    s_R; the sender answers with a seed s_S; both derive χ_i ∈ GF(2^128) from
//!    SHA-256(s_S ‖ s_R); the receiver opens s_R and sends x = Σ χ_i·r_i and t = Σ χ_i·t_i over
//!    all ℓ OTs; the sender accepts iff t = Σ χ_i·q_i ⊕ x·Δ. The 256 padding OTs (≥ κ + s for
//!    κ = 128, s = 40 as KOS require) have random choice bits and are dropped afterwards: they
//!    make x and t independent of the real choice bits.
//!
//! # What each party learns
//!
//! The sender sees only u^j = (t^j ⊕ G(k_j^1)) ⊕ r: since it does not know k_j^{1−Δ_j}, every u^j
//! is masked by a stream it cannot compute, so it learns nothing about r (and in malicious mode,
//! x and t are masked by the padding OTs). The receiver learns nothing about Δ: it only ever sees
//! its own seeds (and s_S); for random OTs, the message it did not choose,
//! H(i, t_i ⊕ Δ), is pseudorandom to it because H is (tweakable) correlation robust. The Δ-OT form hands Δ to the sender and the q_i/t_i to the
//! parties as is: the protocol consuming them must hash or otherwise protect them.
//! Both parties learn n and the security mode.
//!
//! # Security model
//!
//! - [`Security::SemiHonest`]: plain IKNP. Secure against semi-honest adversaries (either party),
//!   assuming AES is a PRF (the PRG), the base OT, and for random OTs the TCCR property of
//!   fixed-key AES (GKWY20, random-permutation model).
//! - [`Security::Malicious`]: IKNP + the KOS'15 check. Secure against a malicious receiver
//!   (who could otherwise use inconsistent r's across columns to learn bits of Δ) and a
//!   malicious sender (whose only message is s_S; the base OT of MR19 is itself malicious
//!   secure). As KOS discuss, a cheating receiver can still pass with probability 2^−c while
//!   guessing c bits of Δ (selective failure): the random-OT outputs remain secure because the
//!   hash only needs the remaining entropy of Δ; consumers of the *correlated* outputs must
//!   tolerate this leakage. The analysis of this check was revisited by later work (Roy,
//!   "SoftSpokenOT", CRYPTO 2022, proves a generalization of it); the check implemented here is
//!   the standard KOS one, with χ from a commit-then-reveal coin toss. A failed check makes the
//!   sender refuse all further use of the setup ([`OtError::Aborted`]).
//!
//! Secrets (seeds, Δ, choice bits, q/t, random-OT messages, scratch buffers) are zeroized on drop;
//! Δ_j enters the computation through masks, never branches.
//!
//! # Wire format
//!
//! | frame   | from     | kind   | body                                                          |
//! |---------|----------|--------|---------------------------------------------------------------|
//! | u chunk | receiver | `0x20` | mode `u8` (0 semi-honest, 1 malicious), stream position `u64` BE (in 128-bit blocks per column), rows `u32` BE, then u^0 ‖ … ‖ u^127 (rows / 8 bytes each) |
//! | commit  | receiver | `0x21` | SHA-256(`"consort/ot/kos/v1/commit"` ‖ position ‖ s_R) (32 bytes) |
//! | seed    | sender   | `0x22` | s_S (16 bytes)                                                |
//! | check   | receiver | `0x23` | s_R ‖ x ‖ t (16 bytes each)                                   |
//!
//! (Setup runs [`super::base`] first, with its own frames.) A chunk holds [`CHUNK_OTS`] = 65 536
//! rows except the last, so u frames are at most 1 MiB + 14 bytes. The sender checks every header
//! against its own expectation, so parties that disagree on n or the mode get
//! [`OtError::Protocol`] instead of garbage. Semi-honest extension is one-way (receiver to
//! sender, no round trip); the check adds one round trip. Communication: 16 bytes per OT.
//!
//! # Performance
//!
//! Each chunk runs on rayon ([`crate::cpu::run`]): 128 columns of PRG output in parallel (1 AES
//! per OT for the sender, 2 for the receiver), then the transpose in parallel tiles; random OTs
//! add the TCCR hash (2 AES per hash: 4 per OT for the sender, 2 for the receiver). Buffers are
//! allocated once per call (outputs) or per chunk (the frame), never per OT.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::aes_hash::{AesPrg, FixedKeyAes};
use super::transpose::{padded_stride, par_transpose_128xn};
use super::{ChoiceBits, OtError, base, gf128, os_random_block, protocol};
use crate::channel::Channel;
use crate::cpu;

/// OTs per u frame (the last may be shorter): 128 columns × 8 KiB = 1 MiB.
pub const CHUNK_OTS: usize = 1 << 16;

/// Padding OTs in malicious mode: κ + s rounded up to a multiple of 128 (κ = 128, s = 40 → 168).
pub const KOS_PADDING: usize = 256;

/// Base OTs (and columns): the computational security parameter κ.
const KAPPA: usize = 128;

const KIND_U: u8 = 0x20;
const KIND_COMMIT: u8 = 0x21;
const KIND_SEED: u8 = 0x22;
const KIND_CHECK: u8 = 0x23;
const U_HEADER: usize = 14;
const COMMIT_DOMAIN: &[u8] = b"consort/ot/kos/v1/commit";
const CHI_DOMAIN: &[u8] = b"consort/ot/kos/v1/chi";

/// Rows per rayon task when hashing or summing (a multiple of the AES batch).
const PAR_ROWS: usize = 4096;

/// Which protocol variant runs; both parties must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain IKNP: secure against semi-honest adversaries.
    SemiHonest,
    /// IKNP with the KOS'15 consistency check: secure against malicious adversaries (see the
    /// module documentation for the selective-failure leakage on Δ).
    Malicious,
}

impl Security {
    fn wire(self) -> u8 {
        match self {
            Security::SemiHonest => 0,
            Security::Malicious => 1,
        }
    }

    fn padding(self) -> usize {
        match self {
            Security::SemiHonest => 0,
            Security::Malicious => KOS_PADDING,
        }
    }
}

/// The sender's long-term secrets: Δ and the 128 streams G(k_j^{Δ_j}).
struct SenderKeys {
    delta: u128,
    streams: Vec<AesPrg>,
}

impl Drop for SenderKeys {
    fn drop(&mut self) {
        self.delta.zeroize();
    }
}

/// The receiver's long-term secrets: the 128 pairs of streams G(k_j^0), G(k_j^1).
struct ReceiverKeys {
    streams: Vec<[AesPrg; 2]>,
}

/// Where a call's OTs sit in the session: the stream position (128-bit blocks per column) of its
/// first chunk and the index of its first output OT (the random-OT tweak).
#[derive(Debug, Clone, Copy)]
struct Cursor {
    position: u64,
    index: u64,
}

impl Cursor {
    /// Reserves the streams and indices of a call of `n` OTs padded to `total` rows, *before*
    /// any I/O, so that a failed call never leads to a stream being reused.
    fn reserve(&mut self, n: usize, total: usize) -> Cursor {
        let this = *self;
        self.position += (total / 128) as u64;
        self.index += n as u64;
        this
    }
}

/// The OT extension sender: holds Δ. Create with [`IknpSender::setup`], then call `extend_*` any
/// number of times, in step with the receiver's calls (same n, same order).
pub struct IknpSender {
    keys: Arc<SenderKeys>,
    security: Security,
    cursor: Cursor,
    aborted: bool,
    /// Output buffers handed back by [`IknpSender::recycle`], reused by the next call.
    spare: Spare,
}

/// The OT extension receiver: gets the choice bits. See [`IknpSender`].
pub struct IknpReceiver {
    keys: Arc<ReceiverKeys>,
    security: Security,
    cursor: Cursor,
    /// See [`IknpSender::recycle`].
    spare: Spare,
}

/// At most this many recycled buffers are kept per party role (the sender's m⁰ and m¹).
const MAX_SPARE: usize = 2;

/// Recycled output buffers (old OT messages: secret, zeroized when dropped, i.e. when they are
/// not reused, and at the latest with the extension object).
#[derive(Default)]
struct Spare(Vec<Zeroizing<Vec<u128>>>);

impl Spare {
    fn put(&mut self, buf: Zeroizing<Vec<u128>>) {
        if self.0.len() < MAX_SPARE && buf.capacity() > 0 {
            self.0.push(buf);
        }
    }

    /// A buffer of `n` blocks whose contents the caller overwrites entirely: a recycled one
    /// (stale blocks, no clearing, no page faults) if one is large enough, else a fresh zeroed one.
    fn take(&mut self, n: usize) -> Zeroizing<Vec<u128>> {
        if let Some(i) = self.0.iter().position(|b| b.capacity() >= n) {
            let mut buf = self.0.swap_remove(i);
            if buf.len() > n {
                // The tail stays in the spare capacity, zeroized with the vector.
                buf.truncate(n);
            } else {
                buf.resize(n, 0);
            }
            return buf;
        }
        Zeroizing::new(vec![0u128; n])
    }
}

impl std::fmt::Debug for IknpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IknpSender").field("security", &self.security).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IknpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IknpReceiver").field("security", &self.security).finish_non_exhaustive()
    }
}

impl IknpSender {
    /// Runs the base OTs (as base-OT receiver) with a fresh uniform Δ.
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails.
    pub async fn setup<C: Channel>(channel: &C, security: Security) -> Result<Self, OtError> {
        Self::setup_with_delta(channel, security, os_random_block()).await
    }

    /// Runs the base OTs with a given Δ (e.g. the global Δ of a VOLE built on these OTs). Δ must
    /// be uniformly random and secret for the security claims to hold.
    pub async fn setup_with_delta<C: Channel>(channel: &C, security: Security, delta: u128) -> Result<Self, OtError> {
        let choices = ChoiceBits::from_bytes(delta.to_le_bytes().to_vec(), KAPPA);
        let base = base::receive_with_choices(channel, choices).await?;
        let streams = base.keys().iter().map(|&k| AesPrg::new(k)).collect();
        Ok(Self {
            keys: Arc::new(SenderKeys { delta, streams }),
            security,
            cursor: Cursor { position: 0, index: 0 },
            aborted: false,
            spare: Spare::default(),
        })
    }

    /// Hands back the buffer of spent random-OT messages (e.g. [`RandomSenderOutput::into_parts`]
    /// after use) for the next `extend_*` call to overwrite instead of allocating, clearing and
    /// later zeroizing a fresh one: for callers that extend OTs of the same size again and again
    /// (a training run's batches). The old messages stay in memory until overwritten or until
    /// this object is dropped (then zeroized). At most two are kept; others are zeroized now.
    pub fn recycle(&mut self, buf: Zeroizing<Vec<u128>>) {
        self.spare.put(buf);
    }

    /// The correlation Δ (secret).
    pub fn delta(&self) -> u128 {
        self.keys.delta
    }

    pub fn security(&self) -> Security {
        self.security
    }

    /// Extends to `n` correlated OTs: Δ and q_i, with t_i = q_i ⊕ b_i·Δ on the receiver's side.
    pub async fn extend_correlated<C: Channel>(
        &mut self,
        channel: &C,
        n: usize,
    ) -> Result<CorrelatedSenderOutput, OtError> {
        let (q, _, first_index) = self.extend(channel, n, false).await?;
        Ok(CorrelatedSenderOutput { delta: self.keys.delta, q, first_index })
    }

    /// Extends to `n` random OTs: (m_i^0, m_i^1) = (H(i, q_i), H(i, q_i ⊕ Δ)).
    pub async fn extend_random<C: Channel>(&mut self, channel: &C, n: usize) -> Result<RandomSenderOutput, OtError> {
        if self.security == Security::SemiHonest {
            // Hashed chunk by chunk while the rows are in cache.
            let (m0, m1, _) = self.extend(channel, n, true).await?;
            return Ok(RandomSenderOutput { m0, m1 });
        }
        // The KOS check needs the unhashed q_i of every chunk, so hash after it.
        let correlated = self.extend_correlated(channel, n).await?;
        Ok(cpu::run(move || correlated.into_random()).await)
    }

    /// Steps 3–5 for a call of `n` OTs: returns q (or, with `hash`, m^0 and m^1; semi-honest
    /// mode only) and the session index of the first OT.
    async fn extend<C: Channel>(
        &mut self,
        channel: &C,
        n: usize,
        hash: bool,
    ) -> Result<(Vec<u128>, Vec<u128>, u64), OtError> {
        debug_assert!(!hash || self.security == Security::SemiHonest);
        if self.aborted {
            return Err(OtError::Aborted);
        }
        let total = (n + self.security.padding()).next_multiple_of(128);
        let at = self.cursor.reserve(n, total);
        // Zeroizing: an error or a cancelled call must not leave rows or columns behind.
        // Every row of q (and m1) is written below, so a recycled buffer needs no clearing.
        let mut q = self.spare.take(total);
        let mut m1 = if hash { self.spare.take(total) } else { Zeroizing::new(Vec::new()) };
        let mut scratch = Zeroizing::new(vec![0u8; 128 * padded_stride(total.min(CHUNK_OTS) / 8)]);
        let mut start = 0;
        while start < total {
            let rows = (total - start).min(CHUNK_OTS);
            let position = at.position + (start / 128) as u64;
            let frame = channel.recv().await?;
            check_u_header(&frame, self.security, position, rows)?;
            let keys = self.keys.clone();
            (q, m1, scratch) = cpu::run(move || {
                let u = &frame[U_HEADER..];
                let chunk = start..start + rows;
                sender_chunk(&keys, position, u, &mut scratch, &mut q[chunk.clone()]);
                if hash {
                    let tweak = (at.index + start as u64) as u128;
                    hash_pairs(tweak, keys.delta, &mut q[chunk.clone()], &mut m1[chunk]);
                }
                (q, m1, scratch)
            })
            .await;
            start += rows;
        }
        drop(scratch);
        if self.security == Security::Malicious {
            let (checked, verdict) = self.kos_verify(channel, q, at.position).await;
            q = checked;
            if let Err(error) = verdict {
                if error == OtError::ConsistencyCheck {
                    self.aborted = true;
                }
                return Err(error);
            }
        }
        Ok((truncate(q, n), truncate(m1, n), at.index))
    }

    /// KOS step 5, the sender's side: returns `q` back with the verdict.
    async fn kos_verify<C: Channel>(
        &self,
        channel: &C,
        q: Zeroizing<Vec<u128>>,
        position: u64,
    ) -> (Zeroizing<Vec<u128>>, Result<(), OtError>) {
        let exchange = async {
            let commitment = recv_kind(channel, KIND_COMMIT, 32, "commitment").await?;
            let seed_s = os_random_block();
            let mut frame = BytesMut::with_capacity(17);
            frame.put_u8(KIND_SEED);
            frame.put_slice(&seed_s.to_le_bytes());
            channel.send(frame.freeze()).await?;
            let check = recv_kind(channel, KIND_CHECK, 48, "check values").await?;
            let block = |k: usize| u128::from_le_bytes(check[16 * k..16 * k + 16].try_into().unwrap());
            let (seed_r, x, t) = (block(0), block(1), block(2));
            if commit(position, seed_r)[..] != commitment[..] {
                // Opening to another seed than committed is cheating, like a failed check.
                return Err(OtError::ConsistencyCheck);
            }
            Ok((chi_seed(position, seed_s, seed_r), x, t))
        };
        let (chi, x, t) = match exchange.await {
            Ok(values) => values,
            Err(error) => return (q, Err(error)),
        };
        let delta = self.keys.delta;
        cpu::run(move || {
            let (lo, hi) = weighted_sum(chi, &q, None);
            let expected = gf128::reduce(lo, hi) ^ gf128::mul(x, delta);
            let verdict = if expected == t { Ok(()) } else { Err(OtError::ConsistencyCheck) };
            (q, verdict)
        })
        .await
    }
}

impl IknpReceiver {
    /// Runs the base OTs (as base-OT sender).
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails.
    pub async fn setup<C: Channel>(channel: &C, security: Security) -> Result<Self, OtError> {
        let base = base::send(channel, KAPPA).await?;
        let streams = base.keys().iter().map(|&[k0, k1]| [AesPrg::new(k0), AesPrg::new(k1)]).collect();
        Ok(Self {
            keys: Arc::new(ReceiverKeys { streams }),
            security,
            cursor: Cursor { position: 0, index: 0 },
            spare: Spare::default(),
        })
    }

    /// As [`IknpSender::recycle`], for spent receiver messages
    /// ([`RandomReceiverOutput::into_messages`]).
    pub fn recycle(&mut self, buf: Zeroizing<Vec<u128>>) {
        self.spare.put(buf);
    }

    pub fn security(&self) -> Security {
        self.security
    }

    /// Extends to `n` correlated OTs: random choice bits b_i and t_i = q_i ⊕ b_i·Δ.
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails.
    pub async fn extend_correlated<C: Channel>(
        &mut self,
        channel: &C,
        n: usize,
    ) -> Result<CorrelatedReceiverOutput, OtError> {
        let (choices, t, first_index) = self.extend(channel, n, false).await?;
        Ok(CorrelatedReceiverOutput { choices, t, first_index })
    }

    /// Extends to `n` random OTs: b_i and m_i^{b_i} = H(i, t_i).
    ///
    /// # Panics
    ///
    /// If the OS random number generator fails.
    pub async fn extend_random<C: Channel>(&mut self, channel: &C, n: usize) -> Result<RandomReceiverOutput, OtError> {
        if self.security == Security::SemiHonest {
            let (choices, messages, _) = self.extend(channel, n, true).await?;
            return Ok(RandomReceiverOutput { choices, messages });
        }
        let correlated = self.extend_correlated(channel, n).await?;
        Ok(cpu::run(move || correlated.into_random()).await)
    }

    /// Steps 2, 4 and 5 for a call of `n` OTs: returns the choice bits, t (or, with `hash`,
    /// H(i, t_i); semi-honest mode only) and the session index of the first OT.
    async fn extend<C: Channel>(
        &mut self,
        channel: &C,
        n: usize,
        hash: bool,
    ) -> Result<(ChoiceBits, Vec<u128>, u64), OtError> {
        debug_assert!(!hash || self.security == Security::SemiHonest);
        let total = (n + self.security.padding()).next_multiple_of(128);
        let at = self.cursor.reserve(n, total);
        // The choice bits r come from a fresh AES-CTR stream keyed by the OS CSPRNG: chunk k
        // reads its own range, so chunks are independent.
        let choice_stream = Arc::new(AesPrg::from_entropy());
        let mut state = ReceiverState {
            // Every row is written by the chunks' transposes: a recycled buffer needs no clearing.
            t: self.spare.take(total),
            choices: Zeroizing::new(vec![0u8; total / 8]),
            scratch: Zeroizing::new(vec![0u8; 128 * padded_stride(total.min(CHUNK_OTS) / 8)]),
        };
        let mut start = 0;
        while start < total {
            let rows = (total - start).min(CHUNK_OTS);
            let position = at.position + (start / 128) as u64;
            let (keys, choice_stream, security) = (self.keys.clone(), choice_stream.clone(), self.security);
            let frame;
            (state, frame) = cpu::run(move || {
                let chunk = Chunk { position, start, rows };
                let frame = receiver_chunk(&keys, &choice_stream, security, chunk, &mut state);
                if hash {
                    let tweak = (at.index + start as u64) as u128;
                    hash_rows(tweak, &mut state.t[start..start + rows]);
                }
                (state, frame)
            })
            .await;
            channel.send(frame).await?;
            start += rows;
        }
        let mut state =
            if self.security == Security::Malicious { kos_prove(channel, state, at.position).await? } else { state };
        let t = truncate(std::mem::take(&mut state.t), n);
        let mut choices = std::mem::take(&mut *state.choices);
        choices[n.div_ceil(8)..].fill(0);
        Ok((ChoiceBits::from_bytes(choices, n), t, at.index))
    }
}

/// Drops the padding rows, zeroing them first (truncation leaves them in the spare capacity,
/// which is only zeroized when the vector is dropped).
fn truncate(mut rows: Zeroizing<Vec<u128>>, n: usize) -> Vec<u128> {
    let mut rows = std::mem::take(&mut *rows);
    if rows.len() > n {
        rows[n..].fill(0);
        rows.truncate(n);
    }
    rows
}

/// `rows[k] ← H(tweak + k, rows[k])` (the receiver's random-OT messages), on rayon.
fn hash_rows(tweak: u128, rows: &mut [u128]) {
    let pi = FixedKeyAes::fixed();
    rows.par_chunks_mut(PAR_ROWS).enumerate().for_each(|(piece, rows)| {
        pi.tccr_hash_blocks(tweak + (piece * PAR_ROWS) as u128, rows);
    });
}

/// `(q[k], m1[k]) ← (H(tweak + k, q[k]), H(tweak + k, q[k] ⊕ Δ))` (the sender's random-OT
/// messages), on rayon.
fn hash_pairs(tweak: u128, delta: u128, q: &mut [u128], m1: &mut [u128]) {
    let pi = FixedKeyAes::fixed();
    q.par_chunks_mut(PAR_ROWS).zip(m1.par_chunks_mut(PAR_ROWS)).enumerate().for_each(|(piece, (q, m1))| {
        pi.tccr_hash_correlated(tweak + (piece * PAR_ROWS) as u128, delta, q, m1);
    });
}

/// Where a chunk sits: its stream position, first row and row count.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    position: u64,
    start: usize,
    rows: usize,
}

/// The receiver's buffers for one call, moved to the rayon pool and back for every chunk.
/// Zeroizing: an error or a cancelled call must not leave secrets behind.
struct ReceiverState {
    t: Zeroizing<Vec<u128>>,
    choices: Zeroizing<Vec<u8>>,
    /// The t^j columns of the current chunk, `padded_stride` bytes apart.
    scratch: Zeroizing<Vec<u8>>,
}

/// Steps 2 and 4 for one chunk of `rows` OTs starting at row `start`: fills the choice bits and
/// t rows of the chunk and returns the u frame.
fn receiver_chunk(
    keys: &ReceiverKeys,
    choice_stream: &AesPrg,
    security: Security,
    chunk: Chunk,
    state: &mut ReceiverState,
) -> Bytes {
    let Chunk { position, start, rows } = chunk;
    let row_bytes = rows / 8;
    let stride = padded_stride(row_bytes);
    let ReceiverState { t, choices, scratch } = state;
    let (t, choices, scratch) = (&mut **t, &mut **choices, &mut **scratch);
    let r = &mut choices[start / 8..start / 8 + row_bytes];
    choice_stream.fill_bytes((start / 128) as u64, r);
    let r = &*r;

    let mut frame = BytesMut::zeroed(U_HEADER + KAPPA * row_bytes);
    frame[0] = KIND_U;
    frame[1] = security.wire();
    frame[2..10].copy_from_slice(&position.to_be_bytes());
    frame[10..14].copy_from_slice(&(rows as u32).to_be_bytes());
    let columns = &mut scratch[..KAPPA * stride];
    columns
        .par_chunks_mut(stride)
        .zip(frame[U_HEADER..].par_chunks_mut(row_bytes))
        .zip(keys.streams.par_iter())
        .with_min_len(8)
        .for_each(|((t_col, u_col), [g0, g1])| {
            let t_col = &mut t_col[..row_bytes];
            g0.fill_bytes(position, t_col);
            g1.fill_bytes(position, u_col);
            for ((u, t), r) in u_col.iter_mut().zip(t_col.iter()).zip(r) {
                *u ^= t ^ r;
            }
        });
    par_transpose_128xn(columns, stride, &mut t[start..start + rows]);
    frame.freeze()
}

/// Steps 3 and 4 for one chunk: `q` (the chunk's rows) from the receiver's u columns.
fn sender_chunk(keys: &SenderKeys, position: u64, u: &[u8], scratch: &mut [u8], q: &mut [u128]) {
    let row_bytes = q.len() / 8;
    let stride = padded_stride(row_bytes);
    let delta = keys.delta;
    let columns = &mut scratch[..KAPPA * stride];
    columns
        .par_chunks_mut(stride)
        .zip(u.par_chunks(row_bytes))
        .zip(keys.streams.par_iter())
        .enumerate()
        .with_min_len(8)
        .for_each(|(j, ((q_col, u_col), g))| {
            let q_col = &mut q_col[..row_bytes];
            g.fill_bytes(position, q_col);
            // Δ_j as an all-zeros or all-ones byte mask: no branch on the secret.
            let mask = 0u8.wrapping_sub(((delta >> j) & 1) as u8);
            for (q, u) in q_col.iter_mut().zip(u_col) {
                *q ^= u & mask;
            }
        });
    par_transpose_128xn(columns, stride, q);
}

/// Checks a u frame's kind, mode, position and size against what this sender expects.
fn check_u_header(frame: &Bytes, security: Security, position: u64, rows: usize) -> Result<(), OtError> {
    if frame.len() < U_HEADER || frame[0] != KIND_U {
        return Err(protocol("OT extension: expected a u chunk from the receiver"));
    }
    if frame[1] != security.wire() {
        return Err(protocol(format!(
            "OT extension: the receiver runs security mode {}, this sender {:?}",
            frame[1], security
        )));
    }
    let theirs = u64::from_be_bytes(frame[2..10].try_into().unwrap());
    let their_rows = u32::from_be_bytes(frame[10..14].try_into().unwrap()) as usize;
    if theirs != position || their_rows != rows {
        return Err(protocol(format!(
            "OT extension: the receiver sent rows {their_rows} at position {theirs}, this sender \
             expected {rows} at {position} (do both parties extend by the same counts?)"
        )));
    }
    if frame.len() != U_HEADER + KAPPA * rows / 8 {
        return Err(protocol("OT extension: a u chunk has the wrong length"));
    }
    Ok(())
}

/// KOS step 5, the receiver's side.
async fn kos_prove<C: Channel>(channel: &C, state: ReceiverState, position: u64) -> Result<ReceiverState, OtError> {
    let seed_r = os_random_block();
    let mut frame = BytesMut::with_capacity(33);
    frame.put_u8(KIND_COMMIT);
    frame.put_slice(&commit(position, seed_r));
    channel.send(frame.freeze()).await?;
    let seed = recv_kind(channel, KIND_SEED, 16, "seed").await?;
    let seed_s = u128::from_le_bytes(seed[..].try_into().unwrap());
    let chi = chi_seed(position, seed_s, seed_r);
    let (state, x, t) = cpu::run(move || {
        let (lo, hi) = weighted_sum(chi, &state.t, None);
        let (x_lo, x_hi) = weighted_sum(chi, &[], Some(&state.choices));
        (state, gf128::reduce(x_lo, x_hi), gf128::reduce(lo, hi))
    })
    .await;
    let mut frame = BytesMut::with_capacity(49);
    frame.put_u8(KIND_CHECK);
    for block in [seed_r, x, t] {
        frame.put_slice(&block.to_le_bytes());
    }
    channel.send(frame.freeze()).await?;
    Ok(state)
}

/// With χ_i block i of the AES-CTR stream under `chi`: Σ χ_i·v_i (unreduced) for the blocks `v`,
/// or, given packed `bits` instead, Σ χ_i·bit_i (a plain XOR of the selected χ_i, since the
/// "product" with a bit is a mask). Parallel over [`PAR_ROWS`]-row pieces.
fn weighted_sum(chi: u128, v: &[u128], bits: Option<&[u8]>) -> gf128::Wide {
    let stream = AesPrg::new(chi);
    let rows = bits.map_or(v.len(), |b| b.len() * 8);
    (0..rows.div_ceil(PAR_ROWS))
        .into_par_iter()
        .map(|piece| {
            let start = piece * PAR_ROWS;
            let end = (start + PAR_ROWS).min(rows);
            let mut chis = vec![0u128; end - start];
            stream.fill_blocks(start as u64, &mut chis);
            match bits {
                None => gf128::inner_product_wide(&chis, &v[start..end]),
                Some(bits) => {
                    let sum = chis.iter().enumerate().fold(0u128, |acc, (k, &c)| {
                        let i = start + k;
                        let bit = (bits[i / 8] >> (i % 8)) & 1;
                        acc ^ (c & 0u128.wrapping_sub(bit as u128))
                    });
                    (sum, 0)
                }
            }
        })
        .reduce(|| (0, 0), |(a, b), (c, d)| (a ^ c, b ^ d))
}

fn commit(position: u64, seed_r: u128) -> [u8; 32] {
    Sha256::new()
        .chain_update(COMMIT_DOMAIN)
        .chain_update(position.to_be_bytes())
        .chain_update(seed_r.to_le_bytes())
        .finalize()
        .into()
}

fn chi_seed(position: u64, seed_s: u128, seed_r: u128) -> u128 {
    let digest = Sha256::new()
        .chain_update(CHI_DOMAIN)
        .chain_update(position.to_be_bytes())
        .chain_update(seed_s.to_le_bytes())
        .chain_update(seed_r.to_le_bytes())
        .finalize();
    u128::from_le_bytes(digest[..16].try_into().unwrap())
}

async fn recv_kind<C: Channel>(channel: &C, kind: u8, len: usize, what: &str) -> Result<Bytes, OtError> {
    let frame = channel.recv().await?;
    if frame.len() != 1 + len || frame[0] != kind {
        return Err(protocol(format!("OT extension: expected the peer's {what}")));
    }
    Ok(frame.slice(1..))
}

/// The sender's correlated OTs: Δ and q_i. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CorrelatedSenderOutput {
    delta: u128,
    q: Vec<u128>,
    first_index: u64,
}

impl CorrelatedSenderOutput {
    /// Δ.
    pub fn delta(&self) -> u128 {
        self.delta
    }

    /// q_i; the receiver holds t_i = q_i ⊕ b_i·Δ.
    pub fn q(&self) -> &[u128] {
        &self.q
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// The session index of the first OT (the random-OT hash tweak of `q()[0]`).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Hashes into random OTs: (H(i, q_i), H(i, q_i ⊕ Δ)) with the TCCR hash and i the session
    /// index. CPU-heavy (4 AES per OT, parallel on rayon): call from [`crate::cpu::run`].
    pub fn into_random(mut self) -> RandomSenderOutput {
        let mut m0 = std::mem::take(&mut self.q);
        let mut m1 = vec![0u128; m0.len()];
        hash_pairs(self.first_index as u128, self.delta, &mut m0, &mut m1);
        RandomSenderOutput { m0, m1 }
    }
}

/// The receiver's correlated OTs: b_i and t_i = q_i ⊕ b_i·Δ. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CorrelatedReceiverOutput {
    choices: ChoiceBits,
    t: Vec<u128>,
    first_index: u64,
}

impl CorrelatedReceiverOutput {
    /// b_i (uniformly random).
    pub fn choices(&self) -> &ChoiceBits {
        &self.choices
    }

    /// t_i.
    pub fn t(&self) -> &[u128] {
        &self.t
    }

    pub fn len(&self) -> usize {
        self.t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    /// The session index of the first OT (see [`CorrelatedSenderOutput::first_index`]).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Hashes into random OTs: m_i^{b_i} = H(i, t_i). CPU-heavy (2 AES per OT, parallel on
    /// rayon): call from [`crate::cpu::run`].
    pub fn into_random(mut self) -> RandomReceiverOutput {
        let mut messages = std::mem::take(&mut self.t);
        hash_rows(self.first_index as u128, &mut messages);
        let choices = std::mem::replace(&mut self.choices, ChoiceBits::from_bytes(Vec::new(), 0));
        RandomReceiverOutput { choices, messages }
    }
}

/// The sender's random OTs. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RandomSenderOutput {
    m0: Vec<u128>,
    m1: Vec<u128>,
}

impl RandomSenderOutput {
    /// `[m_i^0, m_i^1]`.
    pub fn messages(&self, i: usize) -> [u128; 2] {
        [self.m0[i], self.m1[i]]
    }

    /// All m_i^0.
    pub fn m0(&self) -> &[u128] {
        &self.m0
    }

    /// All m_i^1.
    pub fn m1(&self) -> &[u128] {
        &self.m1
    }

    pub fn len(&self) -> usize {
        self.m0.len()
    }

    /// (all m_i^0, all m_i^1), moved out without a copy (still zeroized on drop).
    pub fn into_parts(mut self) -> (Zeroizing<Vec<u128>>, Zeroizing<Vec<u128>>) {
        (Zeroizing::new(std::mem::take(&mut self.m0)), Zeroizing::new(std::mem::take(&mut self.m1)))
    }

    pub fn is_empty(&self) -> bool {
        self.m0.is_empty()
    }
}

/// The receiver's random OTs. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RandomReceiverOutput {
    choices: ChoiceBits,
    messages: Vec<u128>,
}

impl RandomReceiverOutput {
    /// b_i.
    pub fn choices(&self) -> &ChoiceBits {
        &self.choices
    }

    /// m_i^{b_i}.
    pub fn messages(&self) -> &[u128] {
        &self.messages
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// All m_i^{b_i}, moved out without a copy (still zeroized on drop).
    pub fn into_messages(mut self) -> Zeroizing<Vec<u128>> {
        Zeroizing::new(std::mem::take(&mut self.messages))
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

macro_rules! opaque_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            // The contents are secret.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($t), "({} OTs)"), self.len())
            }
        }
    )*};
}

opaque_debug!(CorrelatedSenderOutput, CorrelatedReceiverOutput, RandomSenderOutput, RandomReceiverOutput);

#[cfg(test)]
mod tests;
