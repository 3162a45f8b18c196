//! Secure binning for WOE/IV (issue 14 items 1–2): per-bin event and non-event counts of party B's
//! features, revealed to party A only, over rows aligned by PSI; two parties, no third party.
//!
//! # Setting
//!
//! Party A holds 0/1 labels (1 = event, e.g. default) and some features, party B other features
//! of the same rows. Each party bins its own features locally ([`FeatureBins`], quantile edges of
//! its own values, the missing values in their own bin 0). A computes everything about its own
//! features in the clear. This protocol gives A, for each of B's features and bins, the number of
//! rows and of events in the bin; A then computes WOE and IV ([`woe_iv`]) for both parties'
//! features and selects ([`crate::mpc::binning`] has no selection logic: the engine's job does it
//! from these figures).
//!
//! # Method (and why)
//!
//! Additively homomorphic encryption of the labels, as SecureBoost encrypts gradients, reusing its
//! code: A's Okamoto–Uchiyama key and fixed-base encryption ([`crate::he`],
//! `secureboost::active::encrypt_all`), B's summation of ciphertexts per feature and bin
//! (`secureboost::passive::grouped_histogram`, rayon over groups of features). Per row and
//! feature B does one modular multiplication, and it sums up to three features at a time through
//! their joint cells ([`group_features`]: with 11 bins, 1331 joint cells, then 3 additions per
//! cell), ≈ rows/3 + 1331 additions per feature; A encrypts each label once and decrypts one
//! ciphertext per B cell. The alternative the issue names — OT-based products of B's one-bit bin
//! indicators with shares of the labels — needs one OT per (row, feature, bin), ≈ 3·10⁸ OTs for
//! 10⁵ × 300 features × 11 bins (gigabytes on the wire), against ≈ 38 MB of label ciphertexts one
//! way and ≈ 1.3 MB of sums back here; and the HE code exists, is tested and measured.
//!
//! # Steps
//!
//! 0. Hello, both ways: a digest of what both must agree on (row count, method, target bins,
//!    whether correlations are asked for), then the party's feature count (u32) and bins per
//!    feature (u16, the missing-value bin included). Each side checks the other's against its
//!    bounds before sizing anything.
//! 1. A → B: its OU public key (size u16, then n | G | H; B refuses fewer bits than its
//!    `min_key_bits`), then Enc(y_i) for every row i (one ciphertext each, fresh randomness).
//! 2. B → A: per feature and bin the number of rows (u32, plaintext) and Σ Enc(y_i) over the bin's
//!    rows (an empty bin is sent as 1 = Enc(0) without randomness: A knows it is empty from the
//!    counts anyway). A decrypts and checks each feature: counts sum to the row count, each bin's
//!    events lie in [0, count], events sum to A's own number of events.
//! 3. `--method tree` only, A → B: for each of B's features the merge of its fine bins (one byte
//!    per fine bin: the merged bin it joins; the missing bin stays alone, value bins merge only
//!    with neighbours — [`valid_merge`]), chosen by ChiMerge on the fine counts ([`chi_merge`]).
//!    B checks each map and re-bins its rows; A merges the counts (no second round).
//! 4. With a correlation bound (`max_corr`), B → A: the pairs of B's own features whose bin
//!    indices correlate above the bound in absolute value (count u32, then per pair k u32, l u32,
//!    r f32), computed by B on its final bins; A checks the count and every index before use.
//!
//! # What each party learns
//!
//! - Both: the aligned row count (from the PSI), the method and bounds, the other's number of
//!   features and bins per feature.
//! - A: for each of B's features and (fine, with `--method tree`) bins, the number of rows and of
//!   events in the bin — so the distribution of B's binned feature and its event rate per bin,
//!   not which rows are in which bin (beyond what those counts imply: a bin of count 0, or whose
//!   events are 0 or equal its count, says those rows all share a label). With `max_corr`, which
//!   pairs of B's features correlate above the bound, and how strongly. Not B's feature values,
//!   edges or names (B's features are `peer:K` to A).
//! - B: nothing about the labels from steps 1–2 (OU ciphertexts under A's key, IND-CPA). With
//!   `--method tree`, the merged boundaries of its own features, which A chose from label counts:
//!   B learns which adjacent fine bins of its own features A found similar in event rate (a few
//!   bits per feature). With `--method quantile` B learns nothing label-derived. B does not learn
//!   the WOE, IV or which features were selected.
//!
//! # Security model
//!
//! Semi-honest for privacy, as SecureBoost. A pinned peer is authenticated, not trusted: every
//! size a peer announces is checked before a buffer is sized (features ≤ [`MAX_PEER_FEATURES`],
//! bins per feature 2..=`max_bins`, cells ≤ [`MAX_PEER_CELLS`], correlated pairs ≤ d(d − 1)/2),
//! every other length follows from agreed state (rows, the hellos), ciphertexts must lie in
//! [1, n), decrypted sums and counts must be consistent (step 2), merge maps and pair indices
//! must be in range: a malformed message is an [`MpcError`], never a panic. What a malicious peer
//! can still do: A can encrypt values other than 0/1 (e.g. distinct powers of two) and so learn
//! which of B's bins individual rows fall in — a zero-knowledge proof that each ciphertext holds
//! a bit would stop it and is not built; B can return wrong counts or sums consistent with the
//! checks of step 2 (wrong WOE/IV for its own features) and wrong correlations.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::channel::Channel;
use crate::cpu;
use crate::he::{Ciphertext, Encryptor, KeyPair};
use crate::mpc::secureboost::active::encrypt_all;
use crate::mpc::secureboost::passive::{grouped_histogram, receive_key};
use crate::mpc::secureboost::{BinnedFeatures, MAX_PEER_CELLS, MAX_PEER_FEATURES};
use crate::mpc::wire::{recv_bytes, send_bytes};
use crate::mpc::{MpcError, Party, violation};

pub use crate::mpc::secureboost::FeatureBins;
pub use woe::{BinCounts, WOE_SMOOTHING, Woe, chi_merge, index_correlations, valid_merge, value_correlations, woe_iv};

mod woe;

/// Most rows a binning run may have (label ciphertexts are held in memory on both sides).
pub const MAX_ROWS: usize = 1 << 22;
/// Most value bins a method may target, and most fine bins of `--method tree` (the missing-value
/// bin comes on top; bins are one byte).
pub const MAX_VALUE_BINS: u32 = 128;

/// How bins are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinMethod {
    /// Quantile edges of each party's own values, `bins` value bins at most.
    Quantile,
    /// `fine_bins` quantile bins, then ChiMerge (adjacent bins, by event counts) to `bins`.
    Tree,
}

/// What both parties must agree on.
#[derive(Debug, Clone, PartialEq)]
pub struct BinConfig {
    pub method: BinMethod,
    /// Target value bins per feature (the missing-value bin comes on top).
    pub bins: u32,
    /// Value bins of the first pass of `Tree` (ignored by `Quantile`).
    pub fine_bins: u32,
    /// The bound of B's correlated pairs (step 4); `None`: no correlations.
    pub max_corr: Option<f64>,
    /// B's policy: the fewest bits of A's OU key it accepts (not agreed).
    pub min_key_bits: u32,
}

impl Default for BinConfig {
    fn default() -> Self {
        Self { method: BinMethod::Quantile, bins: 10, fine_bins: 32, max_corr: None, min_key_bits: 2048 }
    }
}

impl BinConfig {
    pub fn validate(&self) -> Result<(), MpcError> {
        if !(1..=MAX_VALUE_BINS).contains(&self.bins) {
            return Err(MpcError::Invalid(format!("bins must be in 1..={MAX_VALUE_BINS}")));
        }
        if self.method == BinMethod::Tree && !(self.bins..=MAX_VALUE_BINS).contains(&self.fine_bins) {
            return Err(MpcError::Invalid(format!("fine bins must be in bins..={MAX_VALUE_BINS}")));
        }
        if self.max_corr.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err(MpcError::Invalid("the correlation bound must be in [0, 1]".into()));
        }
        Ok(())
    }

    /// Most bins per feature, the missing-value bin included, the binned input may have.
    pub fn max_bins(&self) -> u32 {
        match self.method {
            BinMethod::Quantile => self.bins + 1,
            BinMethod::Tree => self.fine_bins + 1,
        }
    }

    fn digest(&self, rows: usize) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"consort/binning/v1");
        h.update((rows as u64).to_le_bytes());
        h.update([self.method as u8]);
        h.update(self.bins.to_le_bytes());
        h.update(self.fine_bins.to_le_bytes());
        h.update(self.max_corr.map_or([0xff; 8], f64::to_le_bytes));
        h.finalize().into()
    }
}

/// One party's inputs.
pub struct BinInput {
    pub party: Party,
    /// This party's binned features of every aligned row (fine bins with `Tree`).
    pub features: BinnedFeatures,
    /// Labels (A only), one 0/1 per row.
    pub labels: Option<Vec<u8>>,
    /// A's OU key pair (A only).
    pub key: Option<Arc<KeyPair>>,
}

/// Wall time of the costly parts, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BinTimings {
    /// A: encrypting the labels.
    pub encrypt: f64,
    /// B: summing ciphertexts per bin.
    pub sums: f64,
    /// A: decrypting the sums.
    pub decrypt: f64,
    /// B: its pairwise correlations.
    pub correlations: f64,
}

/// One party's result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BinOutput {
    /// A: per B feature, its final bins' counts (merged with `Tree`). B: empty.
    pub peer_counts: Vec<BinCounts>,
    /// A: per B feature, its fine bins' counts (what A learned; equal to `peer_counts` with
    /// `Quantile`). B: empty.
    pub peer_fine_counts: Vec<BinCounts>,
    /// Per B feature, the map of its fine bins to its final bins (identity with `Quantile`): A's
    /// choice, known to both.
    pub peer_maps: Vec<Vec<u8>>,
    /// A: B's pairs (k < l) whose bin indices correlate above `max_corr` in absolute value.
    pub peer_correlated: Vec<(u32, u32, f64)>,
    pub timings: BinTimings,
}

/// Runs one party's side over `channel`.
pub async fn run<C: Channel>(channel: &C, input: BinInput, config: &BinConfig) -> Result<BinOutput, MpcError> {
    config.validate()?;
    check_input(&input, config)?;
    let peer_bins = exchange_hello(channel, config.digest(input.features.rows), &input.features.bins, config).await?;
    match input.party {
        Party::A => active(channel, input, config, peer_bins).await,
        Party::B => passive(channel, input, config).await,
    }
}

fn check_input(input: &BinInput, config: &BinConfig) -> Result<(), MpcError> {
    let x = &input.features;
    if x.rows == 0 {
        return Err(MpcError::Invalid("no rows to bin".into()));
    }
    if x.rows > MAX_ROWS {
        return Err(MpcError::Invalid(format!("{} rows: at most {MAX_ROWS}", x.rows)));
    }
    if x.bins.len() != x.columns.len()
        || x.columns.iter().zip(&x.bins).any(|(c, &b)| {
            c.len() != x.rows || !(2..=config.max_bins()).contains(&b) || c.iter().any(|&v| u32::from(v) >= b)
        })
    {
        return Err(MpcError::Invalid("a binned column has the wrong length or a bin out of range".into()));
    }
    match (input.party, &input.labels, &input.key) {
        (Party::A, Some(y), Some(_)) if y.len() == x.rows && y.iter().all(|&v| v <= 1) => Ok(()),
        (Party::A, Some(_), Some(_)) => Err(MpcError::Invalid("labels must be one 0/1 value per row".into())),
        (Party::A, _, _) => Err(MpcError::Invalid("party A must provide labels and a key".into())),
        (Party::B, None, None) => Ok(()),
        (Party::B, _, _) => Err(MpcError::Invalid("party B holds no labels and no key".into())),
    }
}

/// Step 0: send the digest, feature count and bins; receive and check the peer's.
async fn exchange_hello<C: Channel>(
    channel: &C,
    digest: [u8; 32],
    bins: &[u32],
    config: &BinConfig,
) -> Result<Vec<u32>, MpcError> {
    let mut head = digest.to_vec();
    head.extend_from_slice(&(bins.len() as u32).to_le_bytes());
    let body: Vec<u8> = bins.iter().flat_map(|&b| (b as u16).to_le_bytes()).collect();
    let send = async {
        send_bytes(channel, &head).await?;
        send_bytes(channel, &body).await
    };
    let recv = async {
        let theirs = recv_bytes(channel, 36).await?;
        if theirs[..32] != digest {
            return Err(violation("the parties disagree on the binning parameters or the row count"));
        }
        let d = u32::from_le_bytes(theirs[32..].try_into().unwrap()) as usize;
        if d > MAX_PEER_FEATURES {
            return Err(violation(format!("the peer claims {d} features (at most {MAX_PEER_FEATURES})")));
        }
        let body = recv_bytes(channel, 2 * d).await?;
        let bins: Vec<u32> = body.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
        if bins.iter().any(|b| !(2..=config.max_bins()).contains(b)) {
            return Err(violation("the peer announces a feature with a bin count out of range"));
        }
        if bins.iter().map(|&b| b as usize).sum::<usize>() > MAX_PEER_CELLS {
            return Err(violation(format!("the peer announces more than {MAX_PEER_CELLS} bins in all")));
        }
        Ok(bins)
    };
    let (sent, bins) = futures::join!(send, recv);
    sent?;
    bins
}

/// Bytes of one correlated pair in step 4.
const PAIR_BYTES: usize = 12;

async fn active<C: Channel>(
    channel: &C,
    input: BinInput,
    config: &BinConfig,
    peer_bins: Vec<u32>,
) -> Result<BinOutput, MpcError> {
    let key = input.key.clone().expect("checked");
    let labels = input.labels.expect("checked");
    let rows = input.features.rows;
    let mut timings = BinTimings::default();
    // Step 1.
    send_bytes(channel, &(key.public.size().bits() as u16).to_le_bytes()).await?;
    send_bytes(channel, &key.public.to_bytes()).await?;
    let started = Instant::now();
    let holder = key.clone();
    let plain: Vec<i128> = labels.iter().map(|&y| i128::from(y)).collect();
    let bytes = cpu::run(move || {
        let encryptor = Encryptor::for_key_holder(&holder).map_err(|e| MpcError::Invalid(e.to_string()))?;
        encrypt_all(&encryptor, &plain)
    })
    .await?;
    timings.encrypt = started.elapsed().as_secs_f64();
    send_bytes(channel, &bytes).await?;
    drop(bytes);
    // Step 2.
    let cells: usize = peer_bins.iter().map(|&b| b as usize).sum();
    let counts = recv_bytes(channel, 4 * cells).await?;
    let w = key.public.ciphertext_bytes();
    let sums = recv_bytes(channel, cells * w).await?;
    let started = Instant::now();
    let k = key.clone();
    let events: Vec<i128> = cpu::run(move || {
        sums.par_chunks_exact(w)
            .map(|c| {
                let c = k.public.ciphertext(c).map_err(|e| violation(e.to_string()))?;
                k.secret.decrypt(&c).map_err(|e| violation(format!("a bin's sum: {e}")))
            })
            .collect::<Result<Vec<i128>, MpcError>>()
    })
    .await?;
    timings.decrypt = started.elapsed().as_secs_f64();
    let total_events: u64 = labels.iter().map(|&y| u64::from(y)).sum();
    let mut fine = Vec::with_capacity(peer_bins.len());
    let mut at = 0;
    for &b in &peer_bins {
        let b = b as usize;
        let mut c = BinCounts { counts: Vec::with_capacity(b), events: Vec::with_capacity(b) };
        for j in at..at + b {
            let n = u64::from(u32::from_le_bytes(counts[4 * j..4 * j + 4].try_into().unwrap()));
            let e = events[j];
            if e < 0 || e > i128::from(n) {
                return Err(violation("a bin's event sum is out of range"));
            }
            c.counts.push(n);
            c.events.push(e as u64);
        }
        at += b;
        if c.counts.iter().sum::<u64>() != rows as u64 || c.events.iter().sum::<u64>() != total_events {
            return Err(violation("a feature's bin counts do not add up to the rows and events"));
        }
        fine.push(c);
    }
    // Step 3.
    let (counts, maps) = match config.method {
        BinMethod::Quantile => (fine.clone(), fine.iter().map(|c| (0..c.counts.len() as u8).collect()).collect()),
        BinMethod::Tree => {
            let maps: Vec<Vec<u8>> = fine.iter().map(|c| chi_merge(c, config.bins as usize)).collect();
            send_bytes(channel, &maps.concat()).await?;
            (fine.iter().zip(&maps).map(|(c, m)| c.merged(m)).collect(), maps)
        }
    };
    // Step 4.
    let mut correlated = Vec::new();
    if config.max_corr.is_some() {
        let d = peer_bins.len();
        let head = recv_bytes(channel, 4).await?;
        let count = u32::from_le_bytes(head.try_into().unwrap()) as usize;
        if count > d * d.saturating_sub(1) / 2 {
            return Err(violation("the peer announces more correlated pairs than it has pairs of features"));
        }
        let body = recv_bytes(channel, count * PAIR_BYTES).await?;
        for p in body.chunks_exact(PAIR_BYTES) {
            let k = u32::from_le_bytes(p[..4].try_into().unwrap());
            let l = u32::from_le_bytes(p[4..8].try_into().unwrap());
            let r = f64::from(f32::from_le_bytes(p[8..].try_into().unwrap()));
            if k >= l || l as usize >= d || !(-1.0..=1.0).contains(&r) {
                return Err(violation("a correlated pair is out of range"));
            }
            correlated.push((k, l, r));
        }
    }
    Ok(BinOutput { peer_counts: counts, peer_fine_counts: fine, peer_maps: maps, peer_correlated: correlated, timings })
}

async fn passive<C: Channel>(channel: &C, input: BinInput, config: &BinConfig) -> Result<BinOutput, MpcError> {
    let x = Arc::new(input.features);
    let rows = x.rows;
    let mut timings = BinTimings::default();
    // Step 1.
    let key = Arc::new(receive_key(channel, config.min_key_bits).await?);
    let w = key.ciphertext_bytes();
    let bytes = recv_bytes(channel, rows * w).await?;
    let k = key.clone();
    let cts: Vec<Ciphertext> =
        cpu::run(move || bytes.par_chunks_exact(w).map(|c| k.ciphertext(c)).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|e| violation(e.to_string()))?;
    // Step 2: counts, then sums.
    let mut counts = Vec::with_capacity(4 * x.bins.iter().sum::<u32>() as usize);
    for (col, &b) in x.columns.iter().zip(&x.bins) {
        let mut c = vec![0u32; b as usize];
        for &v in col {
            c[v as usize] += 1;
        }
        counts.extend(c.iter().flat_map(|n| n.to_le_bytes()));
    }
    send_bytes(channel, &counts).await?;
    let started = Instant::now();
    let (xs, k) = (x.clone(), key.clone());
    let sums = cpu::run(move || {
        let all: Vec<u32> = (0..rows as u32).collect();
        let feats: Vec<u32> = (0..xs.features() as u32).collect();
        grouped_histogram(&xs, &group_features(&xs.bins, &feats, rows), &k, &cts, &all, &all)
    })
    .await;
    timings.sums = started.elapsed().as_secs_f64();
    send_bytes(channel, &sums).await?;
    drop(sums);
    // Step 3.
    let mut maps: Vec<Vec<u8>> = x.bins.iter().map(|&b| (0..b as u8).collect()).collect();
    let mut columns = x.columns.clone();
    if config.method == BinMethod::Tree {
        let total: usize = x.bins.iter().map(|&b| b as usize).sum();
        let bytes = recv_bytes(channel, total).await?;
        let mut at = 0;
        for (f, &b) in x.bins.iter().enumerate() {
            let map = &bytes[at..at + b as usize];
            at += b as usize;
            if !valid_merge(map, b as usize, config.bins as usize + 1) {
                return Err(violation("a merge of bins is out of range"));
            }
            maps[f] = map.to_vec();
        }
        columns.par_iter_mut().zip(&maps).for_each(|(col, map)| col.iter_mut().for_each(|v| *v = map[*v as usize]));
    }
    // Step 4.
    if let Some(bound) = config.max_corr {
        let started = Instant::now();
        let pairs = cpu::run(move || index_correlations(&columns)).await;
        timings.correlations = started.elapsed().as_secs_f64();
        let above: Vec<&(u32, u32, f64)> = pairs.iter().filter(|p| p.2.abs() > bound).collect();
        let mut out = (above.len() as u32).to_le_bytes().to_vec();
        send_bytes(channel, &out).await?;
        out.clear();
        for &&(k, l, r) in &above {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&l.to_le_bytes());
            out.extend_from_slice(&(r as f32).to_le_bytes());
        }
        send_bytes(channel, &out).await?;
    }
    Ok(BinOutput { peer_maps: maps, timings, ..BinOutput::default() })
}

/// Consecutive features in groups of one to three whose joint cells B sums into first: a group
/// of k features with C = Π bins joint cells costs `rows + k·C` additions (for k = 1, `rows`), so
/// per feature (rows + k·C)/k; at each position the size with the least cost per feature is
/// taken, with C at most 4096 (the joint cells of a group are held in memory).
pub fn group_features(bins: &[u32], feats: &[u32], rows: usize) -> Vec<Vec<u32>> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < feats.len() {
        let mut best = (1usize, rows as f64);
        let mut cells = bins[feats[i] as usize] as usize;
        for k in 2..=3 {
            let Some(&f) = feats.get(i + k - 1) else { break };
            cells *= bins[f as usize] as usize;
            if cells > 4096 {
                break;
            }
            let cost = (rows + k * cells) as f64 / k as f64;
            if cost < best.1 {
                best = (k, cost);
            }
        }
        groups.push(feats[i..i + best.0].to_vec());
        i += best.0;
    }
    groups
}

#[cfg(test)]
mod tests;
