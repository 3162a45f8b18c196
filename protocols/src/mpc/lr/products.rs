//! The secure products of a step: one party's plaintext matrix times the other party's share
//! (forward X·w and backward Xᵀ·r', Gilboa OT multiplication or the dealer's masks) and
//! elementwise products of two shared vectors (Gilboa with 64-bit choice bits, or Beaver triples).
use std::sync::Arc;

use zeroize::Zeroizing;

use super::correlations::Corr;
use super::state::{Batch, Ctx, Features, Shares, batch};
use crate::channel::Channel;
use crate::cpu;
use crate::mpc::ot_mul::{self, Layout, Matrix, chooser_forward};
use crate::mpc::wire::{recv_u64s, send_u64s};
use crate::mpc::{MpcError, Party, trunc_share};

pub(super) fn add_into(acc: &mut [u64], other: &[u64]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a = a.wrapping_add(*b);
    }
}

/// One product in both directions: our share of (own matrix × the peer's vector) plus our share
/// of (the peer's matrix × `y`).
pub(super) async fn product<C: Channel, D: Channel>(
    ctx: &Ctx<'_, C, D>,
    corr: &Arc<Corr>,
    x: &Arc<Batch>,
    y: Vec<u64>,
    forward: bool,
) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
    let c2 = corr.clone();
    let (msg, peer_part) = cpu::run(move || c2.peer_side(forward, &y)).await?;
    let n = corr.msg_len(forward, x);
    let theirs = ot_mul::exchange_tau(ctx.channel, &msg, n).await?;
    let (c2, x2) = (corr.clone(), x.clone());
    let own_part = cpu::run(move || {
        let own = c2.own_side(forward, &x2, &theirs);
        c2.recycle(msg, theirs);
        own
    })
    .await?;
    Ok((own_part, peer_part))
}

/// Forward pass on rows `rows`: returns the batch matrix, the correlations (for the backward
/// pass) and this party's shares of z (f fraction bits).
pub(super) async fn forward<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    w: &Shares,
    rows: &[u32],
    corr: Option<Corr>,
) -> Result<(Arc<Batch>, Arc<Corr>, Vec<u64>), MpcError> {
    // A one-hot matrix with kept correlations is always on them (never fresh OTs or a dealer).
    let leaves = ctx.kept.is_some() && matches!(*ctx.features, Features::OneHot { .. });
    let (features, rows_v) = (ctx.features.clone(), rows.to_vec());
    let x = Arc::new(cpu::run(move || batch(&features, &rows_v, leaves)).await);
    let m = rows.len();
    let corr = match corr {
        Some(c) => c,
        None => {
            let (c, s) = ot_mul::prepare_both(
                ctx.channel,
                &mut ctx.receiver,
                &mut ctx.sender,
                x.matrix()?.clone(),
                m,
                ctx.peer_layout.clone(),
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
        // Back from f_x + f to f fraction bits: SecureML's local truncation (Mohassel–Zhang S&P
        // 2017, Thm. 1), no message.
        z.into_iter().map(|v| trunc_share(v.wrapping_add(w0), fx, party)).collect::<Vec<u64>>()
    })
    .await;
    Ok((x, corr, z))
}

/// Shares of x∘y (elementwise, mod 2^64, no truncation) for shared vectors x and y (`None`: x∘x):
/// with the dealer's multiplication triple number `k` of the session in dealer mode
/// ([`beaver_mul`]), otherwise by OT ([`gilboa_mul`]).
pub(super) async fn mul_shared<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    corr: &Corr,
    k: usize,
    x: &[u64],
    y: Option<&[u64]>,
) -> Result<Vec<u64>, MpcError> {
    if let Corr::Dealer(session) = corr
        && let Some(triple) = session.triple(k)
    {
        return beaver_mul(ctx, triple, x, y.unwrap_or(x)).await;
    }
    gilboa_mul(ctx, x, y).await
}

/// Beaver's multiplication (Beaver, CRYPTO 1991) with a dealer's triple (c = a·b shared): the
/// parties open d = x − a and e = y − b, uniformly random, and keep c + d·b + e·a, A also d·e.
async fn beaver_mul<C: Channel, D: Channel>(
    ctx: &Ctx<'_, C, D>,
    (a, b, c): (&[u64], &[u64], &[u64]),
    x: &[u64],
    y: &[u64],
) -> Result<Vec<u64>, MpcError> {
    let n = x.len();
    let mut mine: Vec<u64> = x.iter().zip(a).map(|(x, a)| x.wrapping_sub(*a)).collect();
    mine.extend(y.iter().zip(b).map(|(y, b)| y.wrapping_sub(*b)));
    let theirs = ot_mul::exchange_tau(ctx.channel, &mine, 2 * n).await?;
    let is_a = ctx.party == Party::A;
    Ok((0..n)
        .map(|i| {
            let d = mine[i].wrapping_add(theirs[i]);
            let e = mine[n + i].wrapping_add(theirs[n + i]);
            let v = c[i].wrapping_add(d.wrapping_mul(b[i])).wrapping_add(e.wrapping_mul(a[i]));
            if is_a { v.wrapping_add(d.wrapping_mul(e)) } else { v }
        })
        .collect())
}

/// x∘y by the local x_P∘y_P plus the cross terms by Gilboa OT multiplication (Gilboa, CRYPTO 1999)
/// with 64-bit choice bits. For a square (`y` = `None`) one cross term x_A·x_B, counted twice (A
/// chooses with x_A, B sends x_B: 64 OTs per entry); otherwise both x_A·y_B (A chooses) and
/// x_B·y_A (B chooses), concurrently (128).
async fn gilboa_mul<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    x: &[u64],
    y: Option<&[u64]>,
) -> Result<Vec<u64>, MpcError> {
    let n = x.len();
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
            let full = Arc::new(Layout::full(1, 64));
            let (c, s) =
                ot_mul::prepare_both(ctx.channel, &mut ctx.receiver, &mut ctx.sender, mine.clone(), n, full).await?;
            let yv = Zeroizing::new(y.to_vec());
            let (tau, peer_part) = cpu::run(move || ot_mul::sender_elementwise(&s, &yv)).await?;
            let theirs = ot_mul::exchange_tau(ctx.channel, &tau, n * 64).await?;
            let own_part = cpu::run(move || chooser_forward(&c, &mine, &theirs)).await?;
            own_part.iter().zip(&peer_part).map(|(a, b)| a.wrapping_add(*b)).collect()
        }
    };
    Ok(local.iter().zip(&cross).map(|(a, b)| a.wrapping_add(*b)).collect())
}
