//! Vertical logistic regression on secret shares, two parties, no third party.
//!
//! # Setting
//!
//! The rows are aligned (row i is the same entity on both sides, e.g. from PSI). Party A holds
//! features X_A (n × d_A) and labels y ∈ {0,1}^n; party B holds features X_B (n × d_B). Each
//! standardizes its own features locally and encodes them as ℓ-bit fixed point with f_x fraction
//! bits ([`LrConfig::feature_bits`], [`LrConfig::feature_frac_bits`]; defaults 12 and 8: range
//! [−8, 8) standard deviations, resolution 1/256, values outside are clipped). Features are never
//! shared: each party keeps its matrix in the clear on its side.
//!
//! # What it computes
//!
//! Mini-batch gradient descent on the logistic loss with L2 regularization, on the batches the
//! caller fixes (both parties pass the same row order), with the sigmoid replaced by an
//! approximation σ̂ ([`Sigmoid`], chosen by [`LrConfig::sigmoid`]; its docs tabulate the errors):
//!
//! - `taylor1` (default): the first-order Taylor expansion σ̂(z) = 1/2 + z/4. That is exact
//!   gradient descent on the second-order Taylor expansion of the log-loss, L̂(z) = ln 2 + z/2 +
//!   z²/8 − y·z (the approximation FATE's hetero-LR and Hardy et al. 2017 use). Error of σ̂
//!   against σ: 0 at z = 0, 0.019 at |z| = 1, 0.119 at |z| = 2, 0.52 at |z| = 4 (σ̂ is not
//!   clamped to [0, 1]). Linear: no secure multiplication per row.
//! - `poly3`: σ̂(z) = 1/2 + 0.15012·z − 0.0015930·z³, the least-squares cubic on [−8, 8] (max
//!   error 0.114 there; it diverges outside). Costs three share×share products per row.
//!
//! Per batch I:
//!
//! 1. z = X_A·w_A + X_B·w_B + w₀ on shares: the local parts X_P·⟨w_P⟩_P plus two Gilboa products
//!    ([`super::ot_mul`], forward) of each party's plaintext matrix with the other party's share
//!    of that party's weights; then truncation by f_x (to f = [`super::FRAC_BITS`] fraction bits).
//! 2. r' = 4(σ̂(z) − y): `taylor1` 2 + z − 4y, local (A adds the public constant and its
//!    labels); `poly3` 2 + trunc(q₁·z − q₃·z³) − 4y, where z³ comes from two elementwise
//!    products of shares (z² then z²·z, each truncated; [`sigmoid_part`]) by Gilboa OT
//!    multiplication with one party's 64-bit share bits as choice bits (64 OTs per cross term,
//!    one cross term for z², both for z²·z: 192 random OTs per row and batch, fresh from the
//!    IKNP extension); in dealer mode with two Beaver triples per row from the dealer instead
//!    ([`super::dealer::DealerSession::triple`]: 32 bytes per row and party on the wire).
//! 3. g = Xᵀ·r' (own part local, cross parts by the backward Gilboa product on the *same* OTs as
//!    step 1, the other 64-bit half of each pad), g₀ = Σ r'.
//! 4. w ← w − trunc(c·trunc(g, f_x + p) + c₂·w, 20) with 2^p ≥ |I| > 2^(p−1), c = round(η·2^p /
//!    (4|I|)·2^20) and c₂ = round(η·λ·2^20): i.e. w ← w − η·(mean gradient) − η·λ·w (no L2 on w₀).
//!
//! After each epoch, on the holdout rows, the parties compute shares of S₁ = Σ z, S₂ = Σ z² and
//! S₃ = Σ y·z (one more Gilboa product with A's 64-bit shares as choice bits), with `poly3` also
//! S₄ = Σ z⁴ (two elementwise squarings, 128 OTs per holdout row), and B sends its shares to A,
//! who computes the holdout loss — the surrogate whose gradient the sigmoid gives,
//! L̂ = ln 2 + (S₁/2 + c₁·S₂/2 − c₃·S₄/4 − S₃)/n_h ([`Sigmoid::loss`]; `taylor1`: c₁ = 1/4,
//! c₃ = 0, the second-order Taylor log-loss) — and decides on early stopping (stop when it
//! improved by less than [`LrConfig::tolerance`]); A sends B one byte: continue or stop, and
//! whether this epoch's loss is the lowest so far. With early stopping on, both parties keep a copy of
//! their shares after the best epoch and return those (the best epoch's weights, not the last
//! epoch's). At the end each party sends the other its share of the other's weights: A learns
//! w_A and w₀, B learns w_B.
//!
//! # What each party learns
//!
//! - Both: n, the batch order and holdout split (inputs both agreed on), the other's feature
//!   count, the hyper-parameters, the number of epochs run (early stopping is visible) and, with
//!   early stopping on, which epochs had the lowest holdout loss so far (the returned epoch).
//! - A: per epoch, the holdout aggregates S₁, S₂, S₃ (and S₄ with `poly3`), so the holdout loss;
//!   at the end w_A, w₀.
//! - B: at the end w_B.
//! - Nothing else: every message is an OT-extension message, a choice-bit correction masked by a
//!   random choice bit, a τ masked by a pseudorandom pad, or a uniformly random share. No
//!   gradient, residual, score or label is revealed during training.
//!
//! Evaluation and scoring afterwards ([`exchange_partial_scores`]) reveal to A, per row, B's
//! partial score x_B·w_B (equivalently the prediction, given A's own part).
//!
//! # Security model and numerical bounds
//!
//! Semi-honest, both parties (OT extension per [`crate::ot::extension`]). Truncation is
//! SecureML's local truncation ([`super::trunc_share`]): error ≤ 1 ulp, failure probability
//! ≤ |x|·2^−63 per truncated value x (`poly3` adds four truncations per row of values below
//! 2^31 while |z| ≤ 8, see [`sigmoid_part`]). The truncated values here are z·2^{f_x+f} (|z| ≲ 2^6 →
//! 2^30), mean-gradient sums (≲ 2^{11+24} for batches ≤ 2^11 with |x·r'| ≲ 1 on average) and
//! updates (≲ 2^36): per training run of 10 epochs on 10^5 rows, about 10^6 truncations of
//! values below 2^31 and 10^4 of values below 2^36, so a failure probability around 10^−3 at
//! worst, far less in practice. A failure shows as a weight off by ±2^44 or more; the revealed
//! weights are checked and the run fails with [`MpcError::Overflow`] instead of returning it.
//! Shares of weights, OT pads and feature matrices are zeroized when dropped.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::dealer::{DealerClient, DealerSession, List, SessionId};
use super::ot_mul::{self, Matrix, chooser_backward, chooser_forward, sender_backward, sender_forward};
use super::wire::{recv_bytes, recv_u64s, send_bytes, send_u64s};
use super::{FRAC_BITS, MpcError, Party, decode, encode, trunc_share, violation};
use crate::channel::Channel;
use crate::cpu;
use crate::ot::{IknpReceiver, IknpSender, Security};

/// Fraction bits of the learning-rate and L2 constants.
const CONST_FRAC_BITS: u32 = 20;
/// Revealed weights beyond this magnitude mean the fixed-point computation broke down.
const MAX_WEIGHT: f64 = (1u64 << 20) as f64;

/// The sigmoid approximation used on shares.
///
/// max \|σ̂ − σ\| over \|z\| ≤ t:
///
/// | name      | σ̂(z)                          | t = 1  | t = 2 | t = 4 | t = 8 | outside [−8, 8]                        |
/// |-----------|--------------------------------|--------|-------|-------|-------|----------------------------------------|
/// | `taylor1` | 1/2 + z/4                      | 0.019  | 0.119 | 0.52  | 1.50  | linear: error ≈ \|z\|/4 − 1/2            |
/// | `poly3`   | 1/2 + 0.15012·z − 0.0015930·z³ | 0.083  | 0.098 | 0.098 | 0.114 | cubic: 0.50 off at \|z\| = 9.7, diverges |
///
/// `poly3` is the least-squares odd cubic on [−8, 8] (uniform weight; the coefficients of Kim et
/// al., "Secure logistic regression based on homomorphic encryption", 2018), as evaluated on shares
/// with its coefficients rounded to 4·c₁·2¹² and 4·c₃·2¹⁸ ([`Sigmoid::eval`] is the exact function
/// the protocol computes, up to fixed-point rounding). Its error is spread evenly over the interval
/// (≤ 0.114), where `taylor1` is close near 0 and useless beyond |z| ≈ 2 (σ̂ leaves [0, 1]).
///
/// Which is better: `taylor1` when the scores stay small (|z| ≲ 2 for most rows: weak signal, as
/// typical credit data), since it is more accurate there and costs no secure multiplication;
/// `poly3` when the signal is strong (many rows with |z| of 3–8), where `taylor1`'s residuals are
/// far too large and its weights come out shrunk. Outside [−8, 8] `poly3` is worse than useless
/// (its σ̂ leaves [0, 1] and eventually crosses 1/2), so it needs standardized features and
/// scores that stay in the interval; `taylor1` is then the safer default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sigmoid {
    /// σ̂(z) = 1/2 + z/4 (see the module docs for its error).
    Taylor1,
    /// σ̂(z) = 1/2 + c₁·z − c₃·z³ on [−8, 8] (table above). Per row: three secure products of
    /// shares (z² and z³ with truncation after each): 192 random OTs, or two dealer triples in
    /// dealer mode.
    Poly3,
}

/// `poly3`: c₁ and c₃ as the protocol uses them: 4·c₁ with [`POLY_CONST_BITS`] fraction bits and
/// 4·c₃ with [`POLY_CONST_BITS`] + 6.
const POLY3_C1: f64 = 0.150_119_877;
const POLY3_C3: f64 = 0.001_592_998;
/// Fraction bits of z inside the polynomial (z is truncated from 16 to this before the products).
const POLY_FRAC_BITS: u32 = 10;
/// Fraction bits of 4·c₁ (4·c₃ has this + 6, so both products land on 16 + 12 bits).
const POLY_CONST_BITS: u32 = 12;

impl Sigmoid {
    pub fn name(self) -> &'static str {
        match self {
            Sigmoid::Taylor1 => "taylor1",
            Sigmoid::Poly3 => "poly3",
        }
    }

    pub fn parse(name: &str) -> Option<Sigmoid> {
        match name {
            "taylor1" => Some(Sigmoid::Taylor1),
            "poly3" => Some(Sigmoid::Poly3),
            _ => None,
        }
    }

    /// The fixed-point coefficients (4·c₁·2^12, 4·c₃·2^18) of `poly3`.
    fn poly3_q() -> (u64, u64) {
        (
            (4.0 * POLY3_C1 * (POLY_CONST_BITS as f64).exp2()).round() as u64,
            (4.0 * POLY3_C3 * ((POLY_CONST_BITS + 16 - POLY_FRAC_BITS) as f64).exp2()).round() as u64,
        )
    }

    /// (c₁, c₃) of σ̂ = 1/2 + c₁·z − c₃·z³ as the protocol rounds them (`taylor1`: (1/4, 0)).
    fn coefficients(self) -> (f64, f64) {
        match self {
            Sigmoid::Taylor1 => (0.25, 0.0),
            Sigmoid::Poly3 => {
                let (q1, q3) = Self::poly3_q();
                (
                    q1 as f64 / (POLY_CONST_BITS as f64).exp2() / 4.0,
                    q3 as f64 / ((POLY_CONST_BITS + 16 - POLY_FRAC_BITS) as f64).exp2() / 4.0,
                )
            }
        }
    }

    /// σ̂(z) in plaintext, with the rounded coefficients the protocol uses.
    pub fn eval(self, z: f64) -> f64 {
        let (c1, c3) = self.coefficients();
        0.5 + c1 * z - c3 * z * z * z
    }

    /// The surrogate loss whose gradient descent this σ̂ performs, L̂(z) = ln 2 + ∫₀^z (σ̂ − y) =
    /// ln 2 + z/2 + c₁·z²/2 − c₃·z⁴/4 − y·z (`taylor1`: the second-order Taylor log-loss), summed
    /// over rows (without the ln 2) from S₁ = Σz, S₂ = Σz², S₃ = Σyz and S₄ = Σz⁴.
    fn loss_sum(self, s1: f64, s2: f64, s3: f64, s4: f64) -> f64 {
        let (c1, c3) = self.coefficients();
        s1 / 2.0 + c1 * s2 / 2.0 - c3 * s4 / 4.0 - s3
    }

    /// L̂(z) for one row with label `y` (plaintext).
    pub fn loss(self, z: f64, y: f64) -> f64 {
        std::f64::consts::LN_2 + self.loss_sum(z, z * z, y * z, z * z * z * z)
    }
}

/// Hyper-parameters; both parties must use the same (they are checked).
#[derive(Debug, Clone, PartialEq)]
pub struct LrConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// L2 penalty λ (loss + λ/2·‖w‖², intercept excluded).
    pub l2: f64,
    /// ℓ: bits per encoded feature (two's complement).
    pub feature_bits: u32,
    /// f_x: fraction bits of encoded features.
    pub feature_frac_bits: u32,
    /// Early stopping: stop when the holdout loss improved by less than this (0 disables).
    pub tolerance: f64,
    pub sigmoid: Sigmoid,
    pub security: Security,
    /// Keep the random OTs of all rows across epochs (re-keyed per epoch, see
    /// [`ot_mul::ChooserCache`]) when they fit in this many bytes per party; otherwise extend
    /// fresh OTs for every batch.
    pub ot_cache_bytes: u64,
}

impl Default for LrConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 1024,
            learning_rate: 0.5,
            l2: 0.0,
            feature_bits: 12,
            feature_frac_bits: 8,
            tolerance: 0.0,
            sigmoid: Sigmoid::Taylor1,
            security: Security::SemiHonest,
            ot_cache_bytes: 1536 << 20,
        }
    }
}

impl LrConfig {
    pub fn validate(&self) -> Result<(), MpcError> {
        let bad = |m: &str| Err(MpcError::Invalid(m.to_string()));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if !(1..=1 << 16).contains(&self.batch_size) {
            return bad("batch size must be between 1 and 65536");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 16.0) {
            return bad("learning rate must be in (0, 16]");
        }
        if !(0.0..=1.0).contains(&self.l2) || self.l2 * self.learning_rate >= 1.0 {
            return bad("L2 penalty must be in [0, 1] with learning rate × L2 < 1");
        }
        if !(2..=24).contains(&self.feature_bits) || self.feature_frac_bits + 2 > self.feature_bits {
            return bad("feature bits must be 2..=24 with at least 2 integer bits beyond the fraction bits");
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return bad("tolerance must be a non-negative number");
        }
        Ok(())
    }

    /// Encodes a standardized feature value: round(v·2^f_x), clipped to the ℓ-bit range.
    pub fn encode_feature(&self, v: f64) -> u64 {
        let half = 1i64 << (self.feature_bits - 1);
        let q = (v * (self.feature_frac_bits as f64).exp2()).round();
        let q = if q.is_nan() { 0 } else { (q as i64).clamp(-half, half - 1) };
        q as u64
    }

    /// The real value of an encoded feature.
    pub fn decode_feature(&self, q: u64) -> f64 {
        q as i64 as f64 / (self.feature_frac_bits as f64).exp2()
    }

    fn digest(&self, h: &mut Sha256) {
        h.update(self.epochs.to_le_bytes());
        h.update((self.batch_size as u64).to_le_bytes());
        h.update(self.learning_rate.to_le_bytes());
        h.update(self.l2.to_le_bytes());
        h.update(self.feature_bits.to_le_bytes());
        h.update(self.feature_frac_bits.to_le_bytes());
        h.update(self.tolerance.to_le_bytes());
        h.update([self.sigmoid as u8, matches!(self.security, Security::Malicious) as u8]);
        h.update(self.ot_cache_bytes.to_le_bytes());
    }
}

/// One party's inputs.
pub struct LrInput {
    pub party: Party,
    /// Encoded features of every aligned row ([`LrConfig::encode_feature`]), row-major.
    pub features: Matrix,
    /// Labels (A only), one per row, 0 or 1.
    pub labels: Option<Vec<u8>>,
    /// Training rows in batch order (the same on both sides).
    pub train: Vec<u32>,
    /// Holdout rows (the same on both sides; may be empty, then no loss and no early stopping).
    pub holdout: Vec<u32>,
}

/// Progress, for progress bars: called after every batch and after every epoch's loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrProgress {
    pub epoch: u32,
    pub epochs: u32,
    pub batch: usize,
    pub batches: usize,
    /// Holdout loss of the finished epoch (A only, once per epoch).
    pub loss: Option<f64>,
}

pub type LrProgressFn = Arc<dyn Fn(LrProgress) + Send + Sync>;

/// One party's result.
#[derive(Debug, Clone, PartialEq)]
pub struct LrOutput {
    /// Weights of this party's own (standardized) features.
    pub weights: Vec<f64>,
    /// The intercept (A only).
    pub intercept: Option<f64>,
    pub epochs_run: u32,
    /// The epoch (1-based) whose weights these are: with early stopping on (tolerance > 0) and a
    /// holdout, the one with the lowest holdout loss; otherwise the last.
    pub weights_epoch: u32,
    pub stopped_early: bool,
    /// Holdout loss L̂ after each epoch (A only; empty without holdout).
    pub holdout_loss: Vec<f64>,
    pub peer_features: usize,
}

/// The shared state: this party's shares of both weight vectors and the intercept.
#[derive(Clone)]
struct Shares {
    own: Zeroizing<Vec<u64>>,
    peer: Zeroizing<Vec<u64>>,
    w0: u64,
}

struct Ctx<'a, C, D> {
    channel: &'a C,
    /// The dealer and the peer's masked matrices (train, holdout), in dealer mode.
    dealer: Option<(DealerClient<'a, D>, [Vec<u64>; 2])>,
    party: Party,
    config: &'a LrConfig,
    receiver: IknpReceiver,
    sender: IknpSender,
    features: Arc<Matrix>,
    labels: Option<&'a [u8]>,
    peer_cols: usize,
    /// OTs of the training rows (in batch order) and of the holdout rows, kept across epochs.
    caches: Option<[(ot_mul::ChooserCache, ot_mul::SenderCache); 2]>,
}

/// Rows per OT extension when filling the caches.
const CACHE_CHUNK_ROWS: usize = 4096;

/// Upper bound on either party's cache: 16 bytes per own OT and 32 per peer OT.
fn cache_bytes(rows: usize, cols_a: usize, cols_b: usize, bits: u32) -> u64 {
    32 * rows as u64 * (cols_a + cols_b) as u64 * bits as u64
}

async fn fill_caches<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    lists: [&[u32]; 2],
) -> Result<[(ot_mul::ChooserCache, ot_mul::SenderCache); 2], MpcError> {
    let bits = ctx.config.feature_bits;
    let mut out = Vec::new();
    for list in lists {
        let mut own = ot_mul::ChooserCache::new(list.len(), ctx.features.cols(), bits);
        let mut peer = ot_mul::SenderCache::new(list.len(), ctx.peer_cols, bits);
        for chunk in list.chunks(CACHE_CHUNK_ROWS) {
            let (features, rows) = (ctx.features.clone(), chunk.to_vec());
            let x = Arc::new(cpu::run(move || gather(&features, &rows)).await);
            let (c, s) = ot_mul::prepare_both(
                ctx.channel,
                &mut ctx.receiver,
                &mut ctx.sender,
                x,
                chunk.len(),
                ctx.peer_cols,
                bits,
            )
            .await?;
            own.append(c);
            peer.append(s);
        }
        out.push((own, peer));
    }
    let mut it = out.into_iter();
    Ok([it.next().unwrap(), it.next().unwrap()])
}

/// Runs one party's side of the training over `channel`, dealer-free.
pub async fn train<C: Channel>(
    channel: &C,
    input: LrInput,
    config: &LrConfig,
    progress: Option<LrProgressFn>,
) -> Result<LrOutput, MpcError> {
    train_inner::<C, C>(channel, None, input, config, progress).await
}

/// Runs one party's side of the training with the matrix-product correlations from a dealer
/// ([`super::dealer`]; the other party must use the same dealer).
pub async fn train_with_dealer<C: Channel, D: Channel>(
    channel: &C,
    dealer: &D,
    input: LrInput,
    config: &LrConfig,
    progress: Option<LrProgressFn>,
) -> Result<LrOutput, MpcError> {
    train_inner(channel, Some(dealer), input, config, progress).await
}

async fn train_inner<C: Channel, D: Channel>(
    channel: &C,
    dealer: Option<&D>,
    input: LrInput,
    config: &LrConfig,
    progress: Option<LrProgressFn>,
) -> Result<LrOutput, MpcError> {
    config.validate()?;
    check_input(&input, config)?;
    let peer_cols = handshake(channel, &input, config, dealer.is_some()).await?;
    let (receiver, sender) = match input.party {
        Party::A => {
            let s = IknpSender::setup(channel, config.security).await?;
            (IknpReceiver::setup(channel, config.security).await?, s)
        }
        Party::B => {
            let r = IknpReceiver::setup(channel, config.security).await?;
            (r, IknpSender::setup(channel, config.security).await?)
        }
    };
    let own_cols = input.features.cols();
    let mut ctx = Ctx {
        channel,
        party: input.party,
        config,
        receiver,
        sender,
        features: Arc::new(input.features),
        labels: input.labels.as_deref(),
        peer_cols,
        caches: None,
        dealer: None,
    };
    let (cols_a, cols_b) = if input.party == Party::A { (own_cols, peer_cols) } else { (peer_cols, own_cols) };
    let rows_used = input.train.len() + input.holdout.len();
    if let Some(d) = dealer {
        ctx.dealer = Some(connect_dealer(&ctx, d, [&input.train, &input.holdout]).await?);
    } else if cache_bytes(rows_used, cols_a, cols_b, config.feature_bits) <= config.ot_cache_bytes {
        ctx.caches = Some(fill_caches(&mut ctx, [&input.train, &input.holdout]).await?);
    }
    let mut w = Shares { own: Zeroizing::new(vec![0; own_cols]), peer: Zeroizing::new(vec![0; peer_cols]), w0: 0 };
    let batches: Vec<&[u32]> = input.train.chunks(config.batch_size).collect();
    let mut losses = Vec::new();
    let (mut epochs_run, mut stopped_early) = (0, false);
    // With early stopping: the epoch (1-based) with the lowest holdout loss and the shares after it.
    let mut best: Option<(u32, Shares)> = None;
    for epoch in 0..config.epochs {
        for (b, rows) in batches.iter().enumerate() {
            let corr = correlations(&ctx, epoch as u64, List::Train, b * config.batch_size, rows.len()).await?;
            step(&mut ctx, &mut w, rows, corr).await?;
            if let Some(p) = &progress {
                p(LrProgress { epoch, epochs: config.epochs, batch: b + 1, batches: batches.len(), loss: None });
            }
        }
        epochs_run = epoch + 1;
        if input.holdout.is_empty() {
            continue;
        }
        let loss = holdout_loss(&mut ctx, &w, &input.holdout, epoch as u64).await?;
        if let (Some(loss), Some(p)) = (loss, &progress) {
            p(LrProgress {
                epoch,
                epochs: config.epochs,
                batch: batches.len(),
                batches: batches.len(),
                loss: Some(loss),
            });
        }
        // A's flag: bit 0 = stop, bit 1 = this epoch has the lowest holdout loss so far (both
        // parties then keep a copy of their shares: early stopping returns the best epoch's).
        let flag = match (ctx.party, loss) {
            (Party::A, Some(loss)) => {
                let stop =
                    config.tolerance > 0.0 && losses.last().is_some_and(|&prev: &f64| prev - loss < config.tolerance);
                let best = losses.iter().all(|&l| loss < l);
                losses.push(loss);
                let flag = stop as u8 | (best as u8) << 1;
                send_bytes(channel, &[flag]).await?;
                flag
            }
            _ => match recv_bytes(channel, 1).await?[0] {
                f @ 0..=3 => f,
                _ => return Err(violation("bad early-stopping flag")),
            },
        };
        if config.tolerance > 0.0 && flag & 2 != 0 {
            best = Some((epoch + 1, w.clone()));
        }
        if flag & 1 != 0 {
            stopped_early = epoch + 1 < config.epochs;
            break;
        }
    }
    let (weights_epoch, w) = match best {
        Some((e, b)) => (e, b),
        None => (epochs_run, w),
    };
    let (weights, intercept) = reveal_weights(&ctx, &w).await?;
    Ok(LrOutput {
        weights,
        intercept,
        epochs_run,
        weights_epoch,
        stopped_early,
        holdout_loss: losses,
        peer_features: peer_cols,
    })
}

fn check_input(input: &LrInput, config: &LrConfig) -> Result<(), MpcError> {
    let rows = input.features.rows();
    if input.features.bits() != config.feature_bits {
        return Err(MpcError::Invalid("features encoded with a different bit width than configured".into()));
    }
    if let Some(&bad) = input.train.iter().chain(&input.holdout).find(|&&r| r as usize >= rows) {
        return Err(MpcError::Invalid(format!("row {bad} is out of range ({rows} rows)")));
    }
    if input.train.is_empty() {
        return Err(MpcError::Invalid("no training rows".into()));
    }
    match (input.party, &input.labels) {
        (Party::A, Some(y)) if y.len() == rows && y.iter().all(|&v| v <= 1) => Ok(()),
        (Party::A, Some(_)) => Err(MpcError::Invalid("labels must be one 0/1 value per row".into())),
        (Party::A, None) => Err(MpcError::Invalid("party A must provide labels".into())),
        (Party::B, Some(_)) => Err(MpcError::Invalid("party B holds no labels".into())),
        (Party::B, None) => Ok(()),
    }
}

/// Both parties send the digest of (parameters, rows, batch order, holdout) and their feature
/// count; disagreeing parties stop here.
async fn handshake<C: Channel>(
    channel: &C,
    input: &LrInput,
    config: &LrConfig,
    dealer: bool,
) -> Result<usize, MpcError> {
    let mut h = Sha256::new();
    h.update(b"consort/lr/v1");
    config.digest(&mut h);
    h.update([dealer as u8]);
    h.update((input.features.rows() as u64).to_le_bytes());
    for list in [&input.train, &input.holdout] {
        h.update((list.len() as u64).to_le_bytes());
        for r in list.iter() {
            h.update(r.to_le_bytes());
        }
    }
    let mut msg = h.finalize().to_vec();
    msg.extend_from_slice(&(input.features.cols() as u64).to_le_bytes());
    let (sent, theirs) = futures::join!(send_bytes(channel, &msg), recv_bytes(channel, 40));
    sent?;
    let theirs = theirs?;
    if theirs[..32] != msg[..32] {
        return Err(violation(
            "the parties disagree on the training parameters, row count, batch order, holdout split or dealer",
        ));
    }
    let cols = u64::from_le_bytes(theirs[32..].try_into().unwrap());
    if cols > 1 << 20 {
        return Err(violation(format!("the peer claims {cols} features")));
    }
    Ok(cols as usize)
}

/// The rows `rows` of the own feature matrix.
fn gather(features: &Matrix, rows: &[u32]) -> Matrix {
    let cols = features.cols();
    let mut data = Vec::with_capacity(rows.len() * cols);
    for &r in rows {
        data.extend_from_slice(&features.data()[r as usize * cols..(r as usize + 1) * cols]);
    }
    Matrix::new(data, rows.len(), cols, features.bits())
}

fn add_into(acc: &mut [u64], other: &[u64]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a = a.wrapping_add(*b);
    }
}

/// The correlations of one batch: re-keyed cached OTs, fresh OTs (`None` here: extended in
/// [`forward`]) or the dealer's.
enum Corr {
    Ot(ot_mul::ChooserOts, ot_mul::SenderOts),
    Dealer(DealerSession),
}

impl Corr {
    /// Length of the peer's message for our own matrix (m rows).
    fn msg_len(&self, forward: bool, m: usize, own_cols: usize, bits: u32) -> usize {
        match (self, forward) {
            (Corr::Ot(..), _) => m * own_cols * bits as usize,
            (Corr::Dealer(_), true) => own_cols,
            (Corr::Dealer(_), false) => m,
        }
    }

    /// Our message for the peer's matrix and our share of its product with `y`.
    fn peer_side(&self, forward: bool, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        match (self, forward) {
            (Corr::Ot(_, s), true) => sender_forward(s, y),
            (Corr::Ot(_, s), false) => sender_backward(s, y),
            (Corr::Dealer(d), true) => Ok(d.peer_forward(y)),
            (Corr::Dealer(d), false) => Ok(d.peer_backward(y)),
        }
    }

    /// Our share of the product of our own matrix with the peer's vector, given its message.
    fn own_side(&self, forward: bool, x: &Matrix, msg: &[u64]) -> Result<Vec<u64>, MpcError> {
        match (self, forward) {
            (Corr::Ot(c, _), true) => chooser_forward(c, x, msg),
            (Corr::Ot(c, _), false) => chooser_backward(c, x, msg),
            (Corr::Dealer(d), true) => Ok(d.owner_forward(x, msg)),
            (Corr::Dealer(d), false) => Ok(d.owner_backward(x, msg)),
        }
    }
}

/// Announces the shape to the dealer, gets the seeds, and swaps masked matrices with the peer
/// (once: the masks are reused for every epoch).
async fn connect_dealer<'a, C: Channel, D: Channel>(
    ctx: &Ctx<'a, C, D>,
    dealer: &'a D,
    [train, holdout]: [&[u32]; 2],
) -> Result<(DealerClient<'a, D>, [Vec<u64>; 2]), MpcError> {
    let cfg = ctx.config;
    let triples = match cfg.sigmoid {
        Sigmoid::Taylor1 => 0,
        Sigmoid::Poly3 => 2,
    };
    let client = DealerClient::connect_with_triples(
        dealer,
        ctx.features.cols(),
        ctx.peer_cols,
        cfg.epochs,
        cfg.batch_size,
        train.len(),
        holdout.len(),
        triples,
    )
    .await?;
    let mut peer_e = Vec::new();
    for (list, rows) in [(List::Train, train), (List::Holdout, holdout)] {
        let (features, rows_v) = (ctx.features.clone(), rows.to_vec());
        let x = cpu::run(move || gather(&features, &rows_v)).await;
        let e = client.masked(&x, list, 0);
        peer_e.push(ot_mul::exchange_tau(ctx.channel, &e, rows.len() * ctx.peer_cols).await?);
    }
    let mut it = peer_e.into_iter();
    Ok((client, [it.next().unwrap(), it.next().unwrap()]))
}

/// The correlations for `m` rows at position `at` of `list` in `epoch`, if they come from the
/// cache or the dealer (`None`: extend fresh OTs).
async fn correlations<C: Channel, D: Channel>(
    ctx: &Ctx<'_, C, D>,
    epoch: u64,
    list: List,
    at: usize,
    m: usize,
) -> Result<Option<Corr>, MpcError> {
    if let Some(caches) = &ctx.caches {
        let (own, peer) = &caches[list as usize];
        return Ok(Some(Corr::Ot(own.session(epoch, at..at + m), peer.session(epoch, at..at + m))));
    }
    if let Some((client, peer_e)) = &ctx.dealer {
        let cols = ctx.peer_cols;
        let e = Matrix::new(peer_e[list as usize][at * cols..(at + m) * cols].to_vec(), m, cols, 64);
        let s = SessionId { epoch, list, first: at, rows: m };
        return Ok(Some(Corr::Dealer(client.session(s, e).await?)));
    }
    Ok(None)
}

/// One product in both directions: our share of (own matrix × the peer's vector) plus our share
/// of (the peer's matrix × `y`).
async fn product<C: Channel, D: Channel>(
    ctx: &Ctx<'_, C, D>,
    corr: &Arc<Corr>,
    x: &Arc<Matrix>,
    y: Vec<u64>,
    forward: bool,
) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
    let c2 = corr.clone();
    let (msg, peer_part) = cpu::run(move || c2.peer_side(forward, &y)).await?;
    let n = corr.msg_len(forward, x.rows(), x.cols(), ctx.config.feature_bits);
    let theirs = ot_mul::exchange_tau(ctx.channel, &msg, n).await?;
    let (c2, x2) = (corr.clone(), x.clone());
    let own_part = cpu::run(move || c2.own_side(forward, &x2, &theirs)).await?;
    Ok((own_part, peer_part))
}

/// Forward pass on rows `rows`: returns the batch matrix, the correlations (for the backward
/// pass) and this party's shares of z (f fraction bits).
async fn forward<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    w: &Shares,
    rows: &[u32],
    corr: Option<Corr>,
) -> Result<(Arc<Matrix>, Arc<Corr>, Vec<u64>), MpcError> {
    let (features, rows_v) = (ctx.features.clone(), rows.to_vec());
    let x = Arc::new(cpu::run(move || gather(&features, &rows_v)).await);
    let (m, bits) = (rows.len(), ctx.config.feature_bits);
    let corr = match corr {
        Some(c) => c,
        None => {
            let (c, s) = ot_mul::prepare_both(
                ctx.channel,
                &mut ctx.receiver,
                &mut ctx.sender,
                x.clone(),
                m,
                ctx.peer_cols,
                bits,
            )
            .await?;
            Corr::Ot(c, s)
        }
    };
    let corr = Arc::new(corr);
    let (own_part, peer_part) = product(ctx, &corr, &x, w.peer.to_vec(), true).await?;
    let (x2, own, w0, fx, party) = (x.clone(), w.own.to_vec(), w.w0, ctx.config.feature_frac_bits, ctx.party);
    let z = cpu::run(move || {
        let mut z = own_part;
        add_into(&mut z, &x2.mul_vec(&own));
        add_into(&mut z, &peer_part);
        let w0 = w0 << fx;
        z.into_iter().map(|v| trunc_share(v.wrapping_add(w0), fx, party)).collect::<Vec<u64>>()
    })
    .await;
    Ok((x, corr, z))
}

/// Shares of x∘y (elementwise, mod 2^64, no truncation) for shared vectors x and y: the local
/// x_P∘y_P plus the cross terms by Gilboa OT multiplication with 64-bit choice bits. For a square
/// (`y` = `None`) one cross term x_A·x_B, counted twice (A chooses with x_A, B sends x_B: 64 OTs
/// per entry); otherwise both x_A·y_B (A chooses) and x_B·y_A (B chooses), concurrently (128).
///
/// In dealer mode the dealer's multiplication triple number `k` of the session replaces the OTs
/// (Beaver: the parties open d = x − a and e = y − b, uniformly random, and keep
/// c + d·b + e·a, A also d·e).
async fn mul_shared<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    corr: &Corr,
    k: usize,
    x: &[u64],
    y: Option<&[u64]>,
) -> Result<Vec<u64>, MpcError> {
    let n = x.len();
    if let Corr::Dealer(session) = corr
        && let Some((a, b, c)) = session.triple(k)
    {
        let y = y.unwrap_or(x);
        let mut mine: Vec<u64> = x.iter().zip(a).map(|(x, a)| x.wrapping_sub(*a)).collect();
        mine.extend(y.iter().zip(b).map(|(y, b)| y.wrapping_sub(*b)));
        let theirs = ot_mul::exchange_tau(ctx.channel, &mine, 2 * n).await?;
        let is_a = ctx.party == Party::A;
        return Ok((0..n)
            .map(|i| {
                let d = mine[i].wrapping_add(theirs[i]);
                let e = mine[n + i].wrapping_add(theirs[n + i]);
                let v = c[i].wrapping_add(d.wrapping_mul(b[i])).wrapping_add(e.wrapping_mul(a[i]));
                if is_a { v.wrapping_add(d.wrapping_mul(e)) } else { v }
            })
            .collect());
    }
    let mine = Arc::new(Matrix::new(x.to_vec(), n, 1, 64));
    let local: Vec<u64> = match y {
        None => x.iter().map(|&v| v.wrapping_mul(v)).collect(),
        Some(y) => x.iter().zip(y).map(|(&a, &b)| a.wrapping_mul(b)).collect(),
    };
    let cross = match y {
        None => match ctx.party {
            Party::A => {
                let ots = ot_mul::chooser_prepare(ctx.channel, &mut ctx.receiver, mine.clone()).await?;
                let tau = recv_u64s(ctx.channel, n * 64).await?;
                let c = cpu::run(move || chooser_forward(&ots, &mine, &tau)).await?;
                c.into_iter().map(|v| v.wrapping_mul(2)).collect::<Vec<u64>>()
            }
            Party::B => {
                let ots = ot_mul::sender_prepare(ctx.channel, &mut ctx.sender, n, 1, 64).await?;
                let xv = Zeroizing::new(x.to_vec());
                let (tau, c) = cpu::run(move || ot_mul::sender_elementwise(&ots, &xv)).await?;
                send_u64s(ctx.channel, &tau).await?;
                c.into_iter().map(|v| v.wrapping_mul(2)).collect()
            }
        },
        Some(y) => {
            let (c, s) =
                ot_mul::prepare_both(ctx.channel, &mut ctx.receiver, &mut ctx.sender, mine.clone(), n, 1, 64).await?;
            let yv = Zeroizing::new(y.to_vec());
            let (tau, peer_part) = cpu::run(move || ot_mul::sender_elementwise(&s, &yv)).await?;
            let theirs = ot_mul::exchange_tau(ctx.channel, &tau, n * 64).await?;
            let own_part = cpu::run(move || chooser_forward(&c, &mine, &theirs)).await?;
            own_part.iter().zip(&peer_part).map(|(a, b)| a.wrapping_add(*b)).collect()
        }
    };
    Ok(local.iter().zip(&cross).map(|(a, b)| a.wrapping_add(*b)).collect())
}

/// Shares of 4·(σ̂(z) − 1/2) for shares of z (f fraction bits), per [`LrConfig::sigmoid`].
/// `poly3`: z' = trunc(z, f − 10); s = trunc(z'², 10); c = trunc(s·z', 10) (z³ with 10 fraction
/// bits); result trunc(q₁·z − q₃·c, 12) with q₁ = 4c₁·2^12, q₃ = 4c₃·2^18. The truncated values
/// stay below 2^31 for |z| ≤ 8 (2^38 at |z| = 64), so their failure probability is ≤ 2^−32
/// each in the interval.
async fn sigmoid_part<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    corr: &Corr,
    z: &[u64],
) -> Result<Vec<u64>, MpcError> {
    match ctx.config.sigmoid {
        Sigmoid::Taylor1 => Ok(z.to_vec()),
        Sigmoid::Poly3 => {
            let party = ctx.party;
            let zl: Zeroizing<Vec<u64>> =
                Zeroizing::new(z.iter().map(|&v| trunc_share(v, FRAC_BITS - POLY_FRAC_BITS, party)).collect());
            let sq = Zeroizing::new(mul_shared(ctx, corr, 0, &zl, None).await?);
            let sq: Zeroizing<Vec<u64>> =
                Zeroizing::new(sq.iter().map(|&v| trunc_share(v, POLY_FRAC_BITS, party)).collect());
            let cube = Zeroizing::new(mul_shared(ctx, corr, 1, &sq, Some(&zl)).await?);
            let (q1, q3) = Sigmoid::poly3_q();
            Ok(z.iter()
                .zip(cube.iter())
                .map(|(&z, &c)| {
                    let c = trunc_share(c, POLY_FRAC_BITS, party);
                    trunc_share(q1.wrapping_mul(z).wrapping_sub(q3.wrapping_mul(c)), POLY_CONST_BITS, party)
                })
                .collect())
        }
    }
}

/// One mini-batch step (module docs, steps 1–4).
async fn step<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    w: &mut Shares,
    rows: &[u32],
    corr: Option<Corr>,
) -> Result<(), MpcError> {
    let (x, corr, z) = forward(ctx, w, rows, corr).await?;
    let m = rows.len();
    // Step 2: r' = 4(σ̂(z) − y) = 2 + 4(σ̂(z) − 1/2) − 4y (A adds the constants).
    let z = Zeroizing::new(sigmoid_part(ctx, &corr, &Zeroizing::new(z)).await?);
    let r = Zeroizing::new(match (ctx.party, ctx.labels) {
        (Party::A, Some(y)) => {
            let (two, four) = (encode(2.0, FRAC_BITS), encode(4.0, FRAC_BITS));
            z.iter().zip(rows).map(|(&z, &i)| z.wrapping_add(two).wrapping_sub(four * y[i as usize] as u64)).collect()
        }
        _ => z.to_vec(),
    });
    // Step 3.
    let (g_own, g_peer) = product(ctx, &corr, &x, r.to_vec(), false).await?;
    let (mut g_own, g_peer) = (Zeroizing::new(g_own), Zeroizing::new(g_peer));
    let (x2, r2) = (x.clone(), Zeroizing::new(r.to_vec()));
    add_into(&mut g_own, &Zeroizing::new(cpu::run(move || x2.mul_t_vec(&r2)).await));
    let g0 = r.iter().fold(0u64, |a, &v| a.wrapping_add(v));
    // Step 4.
    let cfg = ctx.config;
    let p = (m as u64).next_power_of_two().trailing_zeros();
    let c = encode(cfg.learning_rate * (1u64 << p) as f64 / (4.0 * m as f64), CONST_FRAC_BITS);
    let c2 = encode(cfg.learning_rate * cfg.l2, CONST_FRAC_BITS);
    let party = ctx.party;
    let update = |w: &mut [u64], g: &[u64], l2: u64, shift: u32| {
        for (wi, &gi) in w.iter_mut().zip(g) {
            let mean = trunc_share(gi, shift, party);
            let delta = trunc_share(c.wrapping_mul(mean).wrapping_add(l2.wrapping_mul(*wi)), CONST_FRAC_BITS, party);
            *wi = wi.wrapping_sub(delta);
        }
    };
    update(&mut w.own, &g_own, c2, cfg.feature_frac_bits + p);
    update(&mut w.peer, &g_peer, c2, cfg.feature_frac_bits + p);
    update(std::slice::from_mut(&mut w.w0), &[g0], 0, p);
    Ok(())
}

/// Holdout loss L̂ (A gets `Some`, B `None`).
async fn holdout_loss<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    w: &Shares,
    rows: &[u32],
    epoch: u64,
) -> Result<Option<f64>, MpcError> {
    let mut z = Zeroizing::new(Vec::with_capacity(rows.len()));
    // poly3: S₄ = Σ z⁴ (20 fraction bits) from z'² (as in [`sigmoid_part`]) squared again.
    let mut s4 = 0u64;
    for (k, chunk) in rows.chunks(ctx.config.batch_size).enumerate() {
        let corr = correlations(ctx, epoch, List::Holdout, k * ctx.config.batch_size, chunk.len()).await?;
        let (_, corr, zc) = forward(ctx, w, chunk, corr).await?;
        if ctx.config.sigmoid == Sigmoid::Poly3 {
            let party = ctx.party;
            let zl: Zeroizing<Vec<u64>> =
                Zeroizing::new(zc.iter().map(|&v| trunc_share(v, FRAC_BITS - POLY_FRAC_BITS, party)).collect());
            let sq = Zeroizing::new(mul_shared(ctx, &corr, 0, &zl, None).await?);
            let sq: Zeroizing<Vec<u64>> =
                Zeroizing::new(sq.iter().map(|&v| trunc_share(v, POLY_FRAC_BITS, party)).collect());
            let q = Zeroizing::new(mul_shared(ctx, &corr, 1, &sq, None).await?);
            s4 = q.iter().fold(s4, |a, &v| a.wrapping_add(v));
        }
        z.extend(zc);
    }
    let n = rows.len();
    let s1 = z.iter().fold(0u64, |a, &v| a.wrapping_add(v));
    let s2_local = z.iter().fold(0u64, |a, &v| a.wrapping_add(v.wrapping_mul(v)));
    // Cross terms: A chooses with [y_i, z_A,i] (64-bit entries), B sends z_B: shares of
    // Σ y_i·z_B,i and Σ z_A,i·z_B,i.
    match (ctx.party, ctx.labels) {
        (Party::A, Some(y)) => {
            let mut data = Vec::with_capacity(2 * n);
            for (&i, &zi) in rows.iter().zip(z.iter()) {
                data.extend([y[i as usize] as u64, zi]);
            }
            let x = Arc::new(Matrix::new(data, n, 2, 64));
            let ots = ot_mul::chooser_prepare(ctx.channel, &mut ctx.receiver, x.clone()).await?;
            let tau = recv_u64s(ctx.channel, n * 2 * 64).await?;
            let cross = cpu::run(move || chooser_backward(&ots, &x, &tau)).await?;
            let theirs = recv_u64s(ctx.channel, 4).await?;
            let yz_own = rows.iter().zip(z.iter()).fold(0u64, |a, (&i, &zi)| a.wrapping_add(y[i as usize] as u64 * zi));
            let s1 = s1.wrapping_add(theirs[0]);
            let s2 = s2_local.wrapping_add(cross[1].wrapping_mul(2)).wrapping_add(theirs[1]);
            let s3 = yz_own.wrapping_add(cross[0]).wrapping_add(theirs[2]);
            let (s1, s2, s3) = (decode(s1, FRAC_BITS), decode(s2, 2 * FRAC_BITS), decode(s3, FRAC_BITS));
            let s4 = decode(s4.wrapping_add(theirs[3]), 2 * POLY_FRAC_BITS);
            Ok(Some(std::f64::consts::LN_2 + ctx.config.sigmoid.loss_sum(s1, s2, s3, s4) / n as f64))
        }
        _ => {
            let ots = ot_mul::sender_prepare(ctx.channel, &mut ctx.sender, n, 2, 64).await?;
            let z2 = z.clone();
            let (tau, cross) = cpu::run(move || sender_backward(&ots, &z2)).await?;
            send_u64s(ctx.channel, &tau).await?;
            let s2 = s2_local.wrapping_add(cross[1].wrapping_mul(2));
            send_u64s(ctx.channel, &[s1, s2, cross[0], s4]).await?;
            Ok(None)
        }
    }
}

/// Each party sends its share of the other's weights (B also its share of w₀).
async fn reveal_weights<C: Channel, D: Channel>(
    ctx: &Ctx<'_, C, D>,
    w: &Shares,
) -> Result<(Vec<f64>, Option<f64>), MpcError> {
    let mut ours = w.peer.to_vec();
    let own_cols = w.own.len();
    let theirs_len = match ctx.party {
        Party::A => own_cols + 1,
        Party::B => {
            ours.push(w.w0);
            own_cols
        }
    };
    let (sent, theirs) = futures::join!(send_u64s(ctx.channel, &ours), recv_u64s(ctx.channel, theirs_len));
    sent?;
    let theirs = theirs?;
    let weights: Vec<f64> = w.own.iter().zip(&theirs).map(|(&a, &b)| decode(a.wrapping_add(b), FRAC_BITS)).collect();
    let intercept = (ctx.party == Party::A).then(|| decode(w.w0.wrapping_add(theirs[own_cols]), FRAC_BITS));
    if let Some(bad) = weights.iter().chain(&intercept).find(|v| v.abs() > MAX_WEIGHT) {
        return Err(MpcError::Overflow(format!(
            "a trained weight came out as {bad:e}: a truncation failed or training diverged (try a smaller \
             learning rate, or run again)"
        )));
    }
    Ok((weights, intercept))
}

/// Evaluation and scoring: B sends its partial scores x_B·w_B (one per row) to A, who gets them
/// back; B gets `None`. Reveals B's partial score per row to A (see the module docs).
pub async fn exchange_partial_scores<C: Channel>(
    channel: &C,
    party: Party,
    partial: &[f64],
) -> Result<Option<Vec<f64>>, MpcError> {
    let n = partial.len();
    match party {
        Party::B => {
            send_u64s(channel, &partial.iter().map(|v| v.to_bits()).collect::<Vec<_>>()).await?;
            Ok(None)
        }
        Party::A => {
            let v = recv_u64s(channel, n).await?;
            let v: Vec<f64> = v.into_iter().map(f64::from_bits).collect();
            if v.iter().any(|s| !s.is_finite()) {
                return Err(violation("the peer sent a non-finite score"));
            }
            Ok(Some(v))
        }
    }
}

/// The plaintext mirror of [`train`] (and the baseline with the exact sigmoid): same batches,
/// same constants, real arithmetic on the decoded features. Used by tests and by the engine's
/// plaintext baseline.
pub mod plain {
    use super::*;

    /// A plaintext model: weights for A's and B's features, intercept, holdout losses.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PlainModel {
        pub weights_a: Vec<f64>,
        pub weights_b: Vec<f64>,
        pub intercept: f64,
        pub holdout_loss: Vec<f64>,
        pub epochs_run: u32,
        /// The epoch (1-based) whose weights these are (see [`LrOutput::weights_epoch`]).
        pub weights_epoch: u32,
    }

    /// Trains on decoded features `x_a` (n × d_a) and `x_b` (n × d_b), row-major. With `exact`,
    /// uses σ itself (and reports the true log-loss); otherwise `config.sigmoid` (as
    /// [`Sigmoid::eval`]) and L̂.
    #[allow(clippy::too_many_arguments)]
    pub fn train_plain(
        x_a: &[f64],
        d_a: usize,
        x_b: &[f64],
        d_b: usize,
        y: &[u8],
        train: &[u32],
        holdout: &[u32],
        config: &LrConfig,
        exact: bool,
    ) -> PlainModel {
        let mut wa = vec![0.0; d_a];
        let mut wb = vec![0.0; d_b];
        let mut w0 = 0.0;
        let score = |wa: &[f64], wb: &[f64], w0: f64, i: usize| -> f64 {
            let a: f64 = x_a[i * d_a..(i + 1) * d_a].iter().zip(wa).map(|(x, w)| x * w).sum();
            let b: f64 = x_b[i * d_b..(i + 1) * d_b].iter().zip(wb).map(|(x, w)| x * w).sum();
            a + b + w0
        };
        let c2 = decode(encode(config.learning_rate * config.l2, CONST_FRAC_BITS), CONST_FRAC_BITS);
        let mut losses = Vec::new();
        let mut epochs_run = 0;
        let mut best: Option<(u32, Vec<f64>, Vec<f64>, f64)> = None;
        for _ in 0..config.epochs {
            for rows in train.chunks(config.batch_size) {
                let m = rows.len();
                let p = (m as u64).next_power_of_two().trailing_zeros();
                let c = decode(
                    encode(config.learning_rate * (1u64 << p) as f64 / (4.0 * m as f64), CONST_FRAC_BITS),
                    CONST_FRAC_BITS,
                ) / (1u64 << p) as f64;
                let (mut ga, mut gb, mut g0) = (vec![0.0; d_a], vec![0.0; d_b], 0.0);
                for &i in rows {
                    let i = i as usize;
                    let z = score(&wa, &wb, w0, i);
                    let s = if exact { 1.0 / (1.0 + (-z).exp()) } else { config.sigmoid.eval(z) };
                    let r = 4.0 * (s - y[i] as f64);
                    for (g, x) in ga.iter_mut().zip(&x_a[i * d_a..(i + 1) * d_a]) {
                        *g += x * r;
                    }
                    for (g, x) in gb.iter_mut().zip(&x_b[i * d_b..(i + 1) * d_b]) {
                        *g += x * r;
                    }
                    g0 += r;
                }
                for (w, g) in wa.iter_mut().zip(&ga).chain(wb.iter_mut().zip(&gb)) {
                    *w -= c * g + c2 * *w;
                }
                w0 -= c * g0;
            }
            epochs_run += 1;
            if holdout.is_empty() {
                continue;
            }
            let loss = holdout
                .iter()
                .map(|&i| {
                    let z = score(&wa, &wb, w0, i as usize);
                    let y = y[i as usize] as f64;
                    if exact { (1.0 + z.exp()).ln() - y * z } else { config.sigmoid.loss(z, y) }
                })
                .sum::<f64>()
                / holdout.len() as f64;
            let stop =
                config.tolerance > 0.0 && losses.last().is_some_and(|&prev: &f64| prev - loss < config.tolerance);
            if config.tolerance > 0.0 && losses.iter().all(|&l| loss < l) {
                best = Some((epochs_run, wa.clone(), wb.clone(), w0));
            }
            losses.push(loss);
            if stop {
                break;
            }
        }
        let weights_epoch = match best {
            Some((e, a, b, i)) => {
                (wa, wb, w0) = (a, b, i);
                e
            }
            None => epochs_run,
        };
        PlainModel { weights_a: wa, weights_b: wb, intercept: w0, holdout_loss: losses, epochs_run, weights_epoch }
    }
}

#[cfg(test)]
mod tests;
