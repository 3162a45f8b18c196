//! Where the correlated randomness of a batch's products comes from: random OTs extended fresh
//! for the batch (Gilboa, CRYPTO 1999, over IKNP), the OTs of every row extended once and
//! re-keyed per epoch ([`ot_mul::ChooserCache`]), or a dealer's reusable masks (SecureML,
//! Mohassel–Zhang S&P 2017: the masked matrix E = X − U is sent once and reused in every
//! iteration, see [`crate::mpc::dealer`]).
use std::sync::Arc;

use super::Sigmoid;
use super::state::{Batch, Ctx, batch, gather};
use crate::channel::Channel;
use crate::cpu;
use crate::mpc::dealer::{DealerClient, DealerSession, List, SessionId};
use crate::mpc::ot_mul::onehot::{OneHotChooser, OneHotChooserSession, OneHotSender, OneHotSenderSession};
use crate::mpc::ot_mul::{self, Matrix, chooser_backward, chooser_forward, sender_backward, sender_forward};
use crate::mpc::{MpcError, Party};

/// Rows per OT extension when filling the caches.
const CACHE_CHUNK_ROWS: usize = 4096;

/// Where this run's correlations come from, decided once before the first epoch: the dealer
/// (its seeds, and the masked matrices swapped with the peer), or the OTs of every row extended
/// now when they fit in [`LrConfig::ot_cache_bytes`](super::LrConfig::ot_cache_bytes); otherwise
/// neither, and every batch extends fresh OTs.
pub(super) async fn prepare_correlations<'a, C: Channel, D: Channel>(
    ctx: &mut Ctx<'a, C, D>,
    dealer: Option<&'a D>,
    lists: [&[u32]; 2],
) -> Result<(), MpcError> {
    let (own, peer) = (ctx.features.layout().per_row(), ctx.peer_layout.per_row());
    let (ots_a, ots_b) = if ctx.party == Party::A { (own, peer) } else { (peer, own) };
    let rows_used = lists[0].len() + lists[1].len();
    if let Some(d) = dealer {
        ctx.dealer = Some(connect_dealer(ctx, d, lists).await?);
    } else if ctx.own_groups.is_some() || ctx.peer_groups.is_some() {
        // The side that is not one-hot (e.g. A's WOE columns next to B's indicators) keeps its
        // OTs too when they fit: the same rule as below with only the dense side's OTs.
        let dense_a = if ctx.party == Party::A { ctx.own_groups.is_none() } else { ctx.peer_groups.is_none() };
        let dense_b = if ctx.party == Party::B { ctx.own_groups.is_none() } else { ctx.peer_groups.is_none() };
        let dense = cache_bytes(rows_used, if dense_a { ots_a } else { 0 }, if dense_b { ots_b } else { 0 });
        ctx.kept = Some(fill_kept(ctx, lists, dense <= ctx.config.ot_cache_bytes).await?);
    } else if cache_bytes(rows_used, ots_a, ots_b) <= ctx.config.ot_cache_bytes {
        ctx.caches = Some(fill_caches(ctx, lists).await?);
    }
    Ok(())
}

/// Upper bound on either party's cache (A's and B's OTs per row given): 16 bytes per own OT and
/// 32 per peer OT. The same on both sides, so both decide alike.
fn cache_bytes(rows: usize, ots_a: usize, ots_b: usize) -> u64 {
    32 * rows as u64 * (ots_a + ots_b) as u64
}

async fn fill_caches<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    lists: [&[u32]; 2],
) -> Result<[(ot_mul::ChooserCache, ot_mul::SenderCache); 2], MpcError> {
    let mut out = Vec::new();
    for list in lists {
        let mut own = ot_mul::ChooserCache::with_layout(list.len(), ctx.features.layout().clone());
        let mut peer = ot_mul::SenderCache::with_layout(list.len(), ctx.peer_layout.clone());
        for chunk in list.chunks(CACHE_CHUNK_ROWS) {
            let (features, rows) = (ctx.features.clone(), chunk.to_vec());
            let x = Arc::new(cpu::run(move || gather(&features, &rows)).await);
            let (c, s) = ot_mul::prepare_both(
                ctx.channel,
                &mut ctx.receiver,
                &mut ctx.sender,
                x,
                chunk.len(),
                ctx.peer_layout.clone(),
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

/// The one-hot correlations kept across epochs (train list, holdout list), for this party's own
/// matrix (chooser) and for the peer's (sender), whichever is one-hot
/// ([`ot_mul::onehot`]); and, when they fit, the random OTs of the side that is not one-hot
/// ([`ot_mul::ChooserCache`], [`ot_mul::SenderCache`]: re-keyed per epoch as in the dense runs'
/// cache), so that no batch extends fresh OTs.
pub(super) struct Kept {
    own: Option<[Arc<OneHotChooser>; 2]>,
    peer: Option<[Arc<OneHotSender>; 2]>,
    own_ots: Option<Arc<[ot_mul::ChooserCache; 2]>>,
    peer_ots: Option<Arc<[ot_mul::SenderCache; 2]>>,
}

/// Sets up the kept one-hot correlations of both lists, in chunks of rows: A's matrix first, then
/// B's, so both parties run the OT extensions in the same order. With `cache_dense`, the matrix
/// that is not one-hot gets its random OTs here too (its owner the chooser), chunk by chunk in the
/// same order.
async fn fill_kept<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    lists: [&[u32]; 2],
    cache_dense: bool,
) -> Result<Kept, MpcError> {
    let (mut own, mut peer, mut own_ots, mut peer_ots) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let own_dense = cache_dense && ctx.own_groups.is_none();
    let peer_dense = cache_dense && ctx.peer_groups.is_none();
    let all_rows = (lists[0].len() + lists[1].len()).max(1) as u64;
    for list in lists {
        let mut o = ctx.own_groups.clone().map(|g| OneHotChooser::new(g, list.len()));
        let mut p = ctx.peer_groups.clone().map(|g| OneHotSender::new(g, list.len()));
        // Kept leaves (local): the list's share of the budget by its rows, the own matrix's
        // trees first, kept by the setup itself from the expansion it makes anyway; on normal
        // pages (a batch reads a contiguous range of rows).
        let mut budget = usize::try_from(ctx.config.kept_leaves_bytes / all_rows * list.len() as u64).unwrap_or(0);
        if let Some(o) = o.as_mut() {
            budget = budget.saturating_sub(o.keep_during_setup(budget, false)?);
        }
        if let Some(p) = p.as_mut() {
            p.keep_during_setup(budget, false)?;
        }
        let mut oc = own_dense.then(|| ot_mul::ChooserCache::with_layout(list.len(), ctx.features.layout().clone()));
        let mut pc = peer_dense.then(|| ot_mul::SenderCache::with_layout(list.len(), ctx.peer_layout.clone()));
        for chunk in list.chunks(CACHE_CHUNK_ROWS) {
            for matrix_of in [Party::A, Party::B] {
                if matrix_of == ctx.party {
                    let (features, rows) = (ctx.features.clone(), chunk.to_vec());
                    if let Some(o) = o.as_mut() {
                        // The own matrix is one-hot (it has groups), so it is kept as leaves.
                        match cpu::run(move || batch(&features, &rows, true)).await {
                            Batch::Leaves { leaves, .. } => {
                                o.extend_leaves(ctx.channel, &mut ctx.receiver, chunk.len(), leaves).await?
                            }
                            Batch::Dense(x) => o.extend(ctx.channel, &mut ctx.receiver, &x).await?,
                        }
                    } else if let Some(mut c) = oc.take() {
                        let x = Arc::new(cpu::run(move || gather(&features, &rows)).await);
                        let ots = ot_mul::chooser_prepare(ctx.channel, &mut ctx.receiver, x).await?;
                        oc = Some(cpu::run(move || (c.append(ots), c).1).await);
                    }
                } else if let Some(p) = p.as_mut() {
                    p.extend(ctx.channel, &mut ctx.sender, chunk.len()).await?;
                } else if let Some(mut c) = pc.take() {
                    let layout = ctx.peer_layout.clone();
                    let ots = ot_mul::sender_prepare_layout(ctx.channel, &mut ctx.sender, chunk.len(), layout).await?;
                    pc = Some(cpu::run(move || (c.append(ots), c).1).await);
                }
            }
        }
        own.extend(o.map(Arc::new));
        peer.extend(p.map(Arc::new));
        own_ots.extend(oc);
        peer_ots.extend(pc);
    }
    Ok(Kept {
        own: own.try_into().ok(),
        peer: peer.try_into().ok(),
        own_ots: own_ots.try_into().ok().map(Arc::new),
        peer_ots: peer_ots.try_into().ok().map(Arc::new),
    })
}

/// This party's side of its own matrix's products in a batch.
pub(super) enum Own {
    Ot(ot_mul::ChooserOts),
    OneHot(Arc<OneHotChooserSession>),
}

/// This party's side of the peer's matrix's products in a batch.
pub(super) enum Peer {
    Ot(ot_mul::SenderOts),
    OneHot(Arc<OneHotSenderSession>),
}

/// The kept one-hot sessions of a batch made ahead of it, their expansion already running on
/// rayon ([`OneHotSenderSession::precompute`], [`OneHotChooserSession::precompute`]). The LR
/// starts batch b + 1's while batch b's messages are exchanged: the expansion does not depend on
/// the weights, so both parties expand at the same time instead of A (the sender, before its
/// forward message) and then B (the chooser, after it). Local only: nothing on the wire changes.
pub(super) struct Ahead {
    own: Option<Arc<OneHotChooserSession>>,
    peer: Option<Arc<OneHotSenderSession>>,
    task: cpu::Task<Result<DenseOts, MpcError>>,
}

/// The kept OTs of the side that is not one-hot, re-keyed for one batch (each `None` when that
/// side is one-hot or its OTs are not kept).
type DenseOts = (Option<ot_mul::ChooserOts>, Option<ot_mul::SenderOts>);

/// Re-keys the kept dense-side OTs of rows `at..at + m` of `list` for `epoch` (CPU work: run on
/// rayon).
fn dense_sessions(
    own: Option<Arc<[ot_mul::ChooserCache; 2]>>,
    peer: Option<Arc<[ot_mul::SenderCache; 2]>>,
    epoch: u64,
    list: List,
    at: usize,
    m: usize,
) -> DenseOts {
    let l = list as usize;
    (own.map(|c| c[l].session(epoch, at..at + m)), peer.map(|c| c[l].session(epoch, at..at + m)))
}

/// The kept one-hot sessions of the rows at `at..at + m` of `list` in `epoch` (holdout sessions
/// forward-only: a holdout batch has no backward product).
fn kept_sessions(
    kept: &Kept,
    epoch: u64,
    list: List,
    at: usize,
    m: usize,
) -> (Option<Arc<OneHotChooserSession>>, Option<Arc<OneHotSenderSession>>) {
    let l = list as usize;
    let holdout = list == List::Holdout;
    let own = kept.own.as_ref().map(|o| o[l].session(epoch, at, m)).map(|s| if holdout { s.forward_only() } else { s });
    let peer =
        kept.peer.as_ref().map(|p| p[l].session(epoch, at, m)).map(|s| if holdout { s.forward_only() } else { s });
    (own.map(Arc::new), peer.map(Arc::new))
}

/// Starts the kept one-hot sessions of the rows at `at..at + m` of `list` in `epoch` ahead
/// ([`Ahead`]); `None` without kept correlations.
pub(super) fn ahead<C: Channel, D: Channel>(
    ctx: &Ctx<'_, C, D>,
    epoch: u64,
    list: List,
    at: usize,
    m: usize,
) -> Option<Ahead> {
    let kept = ctx.kept.as_ref()?;
    let (own, peer) = kept_sessions(kept, epoch, list, at, m);
    let (o, p, oc, pc) = (own.clone(), peer.clone(), kept.own_ots.clone(), kept.peer_ots.clone());
    let task = cpu::spawn(move || {
        if let Some(o) = o {
            o.precompute()?;
        }
        if let Some(p) = p {
            p.precompute()?;
        }
        Ok(dense_sessions(oc, pc, epoch, list, at, m))
    });
    Some(Ahead { own, peer, task })
}

/// The correlations of one batch: re-keyed cached OTs, fresh OTs (`None` here: extended in
/// [`forward`](super::products::forward)), the dealer's, or with a one-hot matrix on either side
/// its kept correlations and, for the other side, fresh OTs (`Split`).
pub(super) enum Corr {
    Ot(ot_mul::ChooserOts, ot_mul::SenderOts),
    Dealer(DealerSession),
    Split(Own, Peer),
}

impl Corr {
    /// Length of the peer's message for our own matrix (m rows).
    pub(super) fn msg_len(&self, forward: bool, x: &Batch) -> usize {
        match (self, forward) {
            (Corr::Ot(..) | Corr::Split(Own::Ot(_), _), _) => x.rows() * x.layout().per_row(),
            (Corr::Split(Own::OneHot(c), _), true) => c.forward_len(),
            (Corr::Split(Own::OneHot(c), _), false) => c.backward_len(),
            (Corr::Dealer(_), true) => x.cols(),
            (Corr::Dealer(_), false) => x.rows(),
        }
    }

    /// Our message for the peer's matrix and our share of its product with `y`.
    pub(super) fn peer_side(&self, forward: bool, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        match (self, forward) {
            (Corr::Ot(_, s) | Corr::Split(_, Peer::Ot(s)), true) => sender_forward(s, y),
            (Corr::Ot(_, s) | Corr::Split(_, Peer::Ot(s)), false) => sender_backward(s, y),
            (Corr::Split(_, Peer::OneHot(s)), true) => s.forward(y),
            (Corr::Split(_, Peer::OneHot(s)), false) => s.backward(y),
            (Corr::Dealer(d), true) => Ok(d.peer_forward(y)),
            (Corr::Dealer(d), false) => Ok(d.peer_backward(y)),
        }
    }

    /// Hands a product's spent messages (the one we sent, the one we received) to the kept one-hot
    /// stores they came from or went to, for the next batch's buffers.
    pub(super) fn recycle(&self, sent: Vec<u64>, received: Vec<u64>) {
        if let Corr::Split(own, peer) = self {
            if let Own::OneHot(c) = own {
                c.recycle(received);
            }
            if let Peer::OneHot(s) = peer {
                s.recycle(sent);
            }
        }
    }

    /// Our share of the product of our own matrix with the peer's vector, given its message.
    pub(super) fn own_side(&self, forward: bool, x: &Batch, msg: &[u64]) -> Result<Vec<u64>, MpcError> {
        match (self, forward) {
            (Corr::Ot(c, _) | Corr::Split(Own::Ot(c), _), true) => chooser_forward(c, x.matrix()?, msg),
            (Corr::Ot(c, _) | Corr::Split(Own::Ot(c), _), false) => chooser_backward(c, x.matrix()?, msg),
            (Corr::Split(Own::OneHot(c), _), true) => c.forward(msg),
            (Corr::Split(Own::OneHot(c), _), false) => c.backward(msg),
            (Corr::Dealer(d), true) => Ok(d.owner_forward(x.matrix()?, msg)),
            (Corr::Dealer(d), false) => Ok(d.owner_backward(x.matrix()?, msg)),
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

/// The correlations for the rows `rows` at position `at` of `list` in `epoch`, if they come from
/// the cache, the dealer or the kept one-hot correlations (`None`: extend fresh OTs). `ahead`:
/// this batch's kept sessions started by [`ahead`] with the same arguments.
pub(super) async fn correlations<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    epoch: u64,
    list: List,
    at: usize,
    rows: &[u32],
    ahead: Option<Ahead>,
) -> Result<Option<Corr>, MpcError> {
    let m = rows.len();
    if let Some(kept) = &ctx.kept {
        let (own, peer, (own_ots, peer_ots)) = match ahead {
            Some(a) => {
                let dense = a.task.await?;
                (a.own, a.peer, dense)
            }
            None => {
                let (o, p) = kept_sessions(kept, epoch, list, at, m);
                let (oc, pc) = (kept.own_ots.clone(), kept.peer_ots.clone());
                (o, p, cpu::run(move || dense_sessions(oc, pc, epoch, list, at, m)).await)
            }
        };
        // The side that is not one-hot: its kept OTs, else fresh OTs, one direction only.
        let own = match (own, own_ots) {
            (Some(o), _) => Own::OneHot(o),
            (None, Some(c)) => Own::Ot(c),
            (None, None) => {
                let (features, rows_v) = (ctx.features.clone(), rows.to_vec());
                let x = Arc::new(cpu::run(move || gather(&features, &rows_v)).await);
                Own::Ot(ot_mul::chooser_prepare(ctx.channel, &mut ctx.receiver, x).await?)
            }
        };
        let peer = match (peer, peer_ots) {
            (Some(p), _) => Peer::OneHot(p),
            (None, Some(s)) => Peer::Ot(s),
            (None, None) => {
                Peer::Ot(ot_mul::sender_prepare_layout(ctx.channel, &mut ctx.sender, m, ctx.peer_layout.clone()).await?)
            }
        };
        return Ok(Some(Corr::Split(own, peer)));
    }
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
