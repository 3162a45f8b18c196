//! The entry points and the run of one party: input checks, the parameter handshake, the OT
//! setup, the epochs (with A's early-stopping decision) and the final reveal of the weights.
use std::sync::Arc;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::correlations::{ahead, correlations, prepare_correlations};
use super::holdout::holdout_loss;
use super::state::{Ctx, Features, Shares};
use super::step::step;
use super::{LrConfig, LrFeatures, LrInput, LrOutput, LrProgress, LrProgressFn};
use crate::channel::Channel;
use crate::cpu;
use crate::mpc::dealer::List;
use crate::mpc::ot_mul::onehot::Groups;
use crate::mpc::ot_mul::{ColBits, Layout, Matrix};
use crate::mpc::wire::{recv_bytes, recv_u64s, send_bytes, send_u64s};
use crate::mpc::{FRAC_BITS, MpcError, Party, decode, violation};
use crate::ot::{IknpReceiver, IknpSender};

/// Revealed weights beyond this magnitude mean the fixed-point computation broke down.
const MAX_WEIGHT: f64 = (1u64 << 20) as f64;

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
/// ([`crate::mpc::dealer`]; the other party must use the same dealer).
pub async fn train_with_dealer<C: Channel, D: Channel>(
    channel: &C,
    dealer: &D,
    input: LrInput,
    config: &LrConfig,
    progress: Option<LrProgressFn>,
) -> Result<LrOutput, MpcError> {
    train_inner(channel, Some(dealer), input, config, progress).await
}

/// This party's features as the protocol keeps them, checked before any message: a one-hot
/// matrix against its groups, then kept as its leaves ([`Features::OneHot`]; the dense matrix is
/// dropped here, before the kept correlations are made); leaves given as such against the groups.
/// Groups of no columns keep nothing, as for a matrix of no columns.
fn own_features(
    features: LrFeatures,
    onehot: Option<Groups>,
    narrow: bool,
) -> Result<(Features, Option<Arc<Groups>>), MpcError> {
    let g = onehot.map(Arc::new);
    match features {
        LrFeatures::Matrix(m) => {
            let f = if narrow { m.tightened() } else { m };
            let Some(g) = g else { return Ok((Features::Dense(f), None)) };
            let leaves = g.leaves_of(&f)?;
            if g.is_empty() {
                return Ok((Features::Dense(f), Some(g)));
            }
            let (rows, bits, layout) = (f.rows(), f.bits(), f.layout().clone());
            drop(f);
            Ok((Features::OneHot { leaves, groups: g.clone(), rows, bits, layout }, Some(g)))
        }
        LrFeatures::Leaves { leaves, rows, bits } => {
            let g =
                g.ok_or_else(|| MpcError::Invalid("features given as one-hot leaves without their groups".into()))?;
            g.check_leaves(&leaves, rows, bits)?;
            if g.is_empty() {
                return Ok((Features::Dense(Matrix::new(Vec::new(), rows, 0, bits)), Some(g)));
            }
            let layout = Arc::new(g.layout_of_leaves(&leaves, rows, bits, narrow));
            Ok((Features::OneHot { leaves, groups: g.clone(), rows, bits, layout }, Some(g)))
        }
    }
}

/// Both entry points: checks, the handshake, the OT setup, the source of the correlations, the
/// epochs and the reveal.
async fn train_inner<C: Channel, D: Channel>(
    channel: &C,
    dealer: Option<&D>,
    input: LrInput,
    config: &LrConfig,
    progress: Option<LrProgressFn>,
) -> Result<LrOutput, MpcError> {
    config.validate()?;
    check_input(&input, config)?;
    let (narrow, onehot, features) = (config.narrow_bits, input.onehot, input.features);
    let (features, own_groups) = cpu::run(move || own_features(features, onehot, narrow)).await?;
    // No groups (no columns) is announced as none: both sides then agree there is nothing kept.
    let own_groups = own_groups.filter(|g| !g.is_empty());
    let peer_cols =
        handshake(channel, &input.train, &input.holdout, features.rows(), features.cols(), config, dealer.is_some())
            .await?;
    let peer_layout = exchange_layouts(channel, features.layout(), peer_cols, config).await?;
    let peer_groups = exchange_groups(channel, own_groups.as_deref(), peer_cols).await?.map(Arc::new);
    let (receiver, sender) = setup_ots(channel, input.party, config).await?;
    let mut ctx = Ctx {
        channel,
        party: input.party,
        config,
        receiver,
        sender,
        features: Arc::new(features),
        labels: input.labels.as_deref(),
        peer_cols,
        peer_layout,
        caches: None,
        dealer: None,
        own_groups,
        peer_groups,
        kept: None,
    };
    prepare_correlations(&mut ctx, dealer, [&input.train, &input.holdout]).await?;
    let run = run_epochs(&mut ctx, &input.train, &input.holdout, progress).await?;
    let (weights, intercept) = reveal_weights(&ctx, &run.shares).await?;
    // The kept correlations (GBs at the scorecard's shape) are zeroized on rayon as they drop,
    // off the async runtime.
    if let Some(kept) = ctx.kept.take() {
        cpu::run(move || drop(kept)).await;
    }
    Ok(LrOutput {
        weights,
        intercept,
        epochs_run: run.epochs_run,
        weights_epoch: run.weights_epoch,
        stopped_early: run.stopped_early,
        holdout_loss: run.losses,
        peer_features: peer_cols,
    })
}

/// IKNP in both directions (each party is the chooser for its own matrix and the sender for the
/// peer's); A sets up its sender first, B its receiver, so the two base-OT runs pair up.
async fn setup_ots<C: Channel>(
    channel: &C,
    party: Party,
    config: &LrConfig,
) -> Result<(IknpReceiver, IknpSender), MpcError> {
    Ok(match party {
        Party::A => {
            let s = IknpSender::setup(channel, config.security).await?;
            (IknpReceiver::setup(channel, config.security).await?, s)
        }
        Party::B => {
            let r = IknpReceiver::setup(channel, config.security).await?;
            (r, IknpSender::setup(channel, config.security).await?)
        }
    })
}

/// The shares a run ends with, and how it ended.
struct EpochsRun {
    /// The shares to reveal: after the best epoch with early stopping, else after the last.
    shares: Shares,
    epochs_run: u32,
    weights_epoch: u32,
    stopped_early: bool,
    /// A's holdout loss per epoch (empty on B's side).
    losses: Vec<f64>,
}

/// The epochs: every batch in order (steps 1–4), then the holdout loss and A's decision to go on.
async fn run_epochs<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    train: &[u32],
    holdout: &[u32],
    progress: Option<LrProgressFn>,
) -> Result<EpochsRun, MpcError> {
    let config = ctx.config;
    let mut w = Shares {
        own: Zeroizing::new(vec![0; ctx.features.cols()]),
        peer: Zeroizing::new(vec![0; ctx.peer_cols]),
        w0: 0,
    };
    let batches: Vec<&[u32]> = train.chunks(config.batch_size).collect();
    let mut losses = Vec::new();
    let (mut epochs_run, mut stopped_early) = (0, false);
    // With early stopping: the epoch (1-based) with the lowest holdout loss and the shares after it.
    let mut best: Option<(u32, Shares)> = None;
    for epoch in 0..config.epochs {
        let mut next = None;
        for (b, rows) in batches.iter().enumerate() {
            let corr = correlations(ctx, epoch as u64, List::Train, b * config.batch_size, rows, next.take()).await?;
            // The next batch's kept one-hot expansion runs while this one's messages go.
            if let Some(n) = batches.get(b + 1) {
                next = ahead(ctx, epoch as u64, List::Train, (b + 1) * config.batch_size, n.len());
            }
            step(ctx, &mut w, rows, corr).await?;
            if let Some(p) = &progress {
                p(LrProgress { epoch, epochs: config.epochs, batch: b + 1, batches: batches.len(), loss: None });
            }
        }
        epochs_run = epoch + 1;
        if holdout.is_empty() {
            continue;
        }
        let loss = holdout_loss(ctx, &w, holdout, epoch as u64).await?;
        if let (Some(loss), Some(p)) = (loss, &progress) {
            p(LrProgress {
                epoch,
                epochs: config.epochs,
                batch: batches.len(),
                batches: batches.len(),
                loss: Some(loss),
            });
        }
        let flag = early_stopping_flag(ctx, loss, &mut losses).await?;
        if config.tolerance > 0.0 && flag & 2 != 0 {
            best = Some((epoch + 1, w.clone()));
        }
        if flag & 1 != 0 {
            stopped_early = epoch + 1 < config.epochs;
            break;
        }
    }
    let (weights_epoch, shares) = match best {
        Some((e, b)) => (e, b),
        None => (epochs_run, w),
    };
    Ok(EpochsRun { shares, epochs_run, weights_epoch, stopped_early, losses })
}

/// A's flag after an epoch's holdout loss: bit 0 = stop, bit 1 = this epoch has the lowest
/// holdout loss so far (both parties then keep a copy of their shares: early stopping returns the
/// best epoch's). A decides and sends it (recording the loss in `losses`); B receives it.
async fn early_stopping_flag<C: Channel, D: Channel>(
    ctx: &Ctx<'_, C, D>,
    loss: Option<f64>,
    losses: &mut Vec<f64>,
) -> Result<u8, MpcError> {
    let tolerance = ctx.config.tolerance;
    Ok(match (ctx.party, loss) {
        (Party::A, Some(loss)) => {
            let stop = tolerance > 0.0 && losses.last().is_some_and(|&prev: &f64| prev - loss < tolerance);
            let best = losses.iter().all(|&l| loss < l);
            losses.push(loss);
            let flag = stop as u8 | (best as u8) << 1;
            send_bytes(ctx.channel, &[flag]).await?;
            flag
        }
        _ => match recv_bytes(ctx.channel, 1).await?[0] {
            f @ 0..=3 => f,
            _ => return Err(violation("bad early-stopping flag")),
        },
    })
}

pub(super) fn check_input(input: &LrInput, config: &LrConfig) -> Result<(), MpcError> {
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
/// Most features a peer may announce.
pub const MAX_PEER_FEATURES: u64 = 1 << 16;
/// Most random OTs one batch's products may need (2^27 OTs: 2 GiB of 16-byte OT messages).
pub const MAX_OTS_PER_BATCH: u64 = 1 << 27;

pub(super) async fn handshake<C: Channel>(
    channel: &C,
    train: &[u32],
    holdout: &[u32],
    rows: usize,
    own_cols: usize,
    config: &LrConfig,
    dealer: bool,
) -> Result<usize, MpcError> {
    let mut h = Sha256::new();
    h.update(b"consort/lr/v1");
    config.digest(&mut h);
    h.update([dealer as u8]);
    h.update((rows as u64).to_le_bytes());
    for list in [train, holdout] {
        h.update((list.len() as u64).to_le_bytes());
        for r in list.iter() {
            h.update(r.to_le_bytes());
        }
    }
    let mut msg = h.finalize().to_vec();
    msg.extend_from_slice(&(own_cols as u64).to_le_bytes());
    let (sent, theirs) = futures::join!(send_bytes(channel, &msg), recv_bytes(channel, 40));
    sent?;
    let theirs = theirs?;
    if theirs[..32] != msg[..32] {
        return Err(violation(
            "the parties disagree on the training parameters, row count, batch order, holdout split or dealer",
        ));
    }
    let cols = u64::from_le_bytes(theirs[32..].try_into().unwrap());
    // The peer's feature count sizes this party's OT work per batch (its features' bits are the
    // choice bits): bound it before anything is allocated for it.
    let ots = cols.saturating_mul(config.batch_size as u64).saturating_mul(u64::from(config.feature_bits));
    if cols > MAX_PEER_FEATURES || ots > MAX_OTS_PER_BATCH {
        return Err(violation(format!(
            "the peer claims {cols} features: with batch size {} and {} bits that is {ots} OTs per batch (at most \
             {MAX_OTS_PER_BATCH}, and at most {MAX_PEER_FEATURES} features)",
            config.batch_size, config.feature_bits
        )));
    }
    Ok(cols as usize)
}

/// Each party announces which bits of its columns get an OT ([`LrConfig::narrow_bits`]): two bytes
/// per column, `lo` and `hi | signed << 7`. The peer's is checked (0 ≤ lo ≤ hi ≤ ℓ, no sign bit on
/// an empty column) before it sizes anything.
async fn exchange_layouts<C: Channel>(
    channel: &C,
    own: &Layout,
    peer_cols: usize,
    config: &LrConfig,
) -> Result<Arc<Layout>, MpcError> {
    let msg: Vec<u8> = own.cols().iter().flat_map(|c| [c.lo, c.hi | (c.signed as u8) << 7]).collect();
    let (sent, theirs) = futures::join!(send_bytes(channel, &msg), recv_bytes(channel, 2 * peer_cols));
    sent?;
    let theirs = theirs?;
    let mut cols = Vec::with_capacity(peer_cols);
    for pair in theirs.chunks(2) {
        let (lo, hi, signed) = (pair[0], pair[1] & 0x7f, pair[1] >> 7 == 1);
        if lo > hi || u32::from(hi) > config.feature_bits || (signed && lo == hi) {
            return Err(violation("the peer announced a malformed bit layout of its features"));
        }
        cols.push(ColBits { lo, hi, signed });
    }
    Ok(Arc::new(Layout::new(cols)))
}

/// Each party announces the one-hot groups of its columns ([`LrInput::onehot`]; a 12-byte header
/// with the group count, 0 for none, and the scale, then one byte per group). The peer's count is
/// checked against its column count before its sizes are received, the sizes before use.
async fn exchange_groups<C: Channel>(
    channel: &C,
    own: Option<&Groups>,
    peer_cols: usize,
) -> Result<Option<Groups>, MpcError> {
    let (head, sizes) = match own {
        Some(g) => g.to_bytes(),
        None => (vec![0; 12], Vec::new()),
    };
    let (sent, theirs) = futures::join!(send_bytes(channel, &head), recv_bytes(channel, 12));
    sent?;
    let (n, scale) = Groups::count_from_header(&theirs?, peer_cols)?;
    let (sent, theirs) =
        futures::join!(async { if sizes.is_empty() { Ok(()) } else { send_bytes(channel, &sizes).await } }, async {
            if n == 0 { Ok(Vec::new()) } else { recv_bytes(channel, n).await }
        });
    sent?;
    let theirs = theirs?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(Groups::from_peer(&theirs, scale, peer_cols)?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpc::ot_mul::Matrix;

    #[test]
    fn bad_inputs_and_parameters_are_rejected() {
        let config = LrConfig::default();
        assert!(LrConfig { epochs: 0, ..config.clone() }.validate().is_err());
        assert!(LrConfig { learning_rate: -1.0, ..config.clone() }.validate().is_err());
        assert!(LrConfig { feature_bits: 8, feature_frac_bits: 7, ..config.clone() }.validate().is_err());
        let input = |labels: Option<Vec<u8>>, party| LrInput {
            party,
            features: Matrix::new(vec![0; 4], 2, 2, 12).into(),
            labels,
            train: vec![0, 1],
            holdout: vec![],
            onehot: None,
        };
        assert!(check_input(&input(Some(vec![0, 2]), Party::A), &config).is_err());
        assert!(check_input(&input(None, Party::A), &config).is_err());
        assert!(check_input(&input(Some(vec![0, 1]), Party::B), &config).is_err());
        assert!(check_input(&input(Some(vec![0, 1]), Party::A), &config).is_ok());
        let mut out_of_range = input(None, Party::B);
        out_of_range.holdout = vec![2];
        assert!(check_input(&out_of_range, &config).is_err());
    }
}
