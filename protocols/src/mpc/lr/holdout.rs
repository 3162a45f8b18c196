//! The holdout loss after each epoch: shares of the aggregates S₁ = Σz, S₂ = Σz², S₃ = Σyz (and
//! S₄ = Σz⁴ with `poly3`), opened to A only (module docs, "What it computes").
use std::sync::Arc;

use zeroize::Zeroizing;

use super::Sigmoid;
use super::config::POLY_FRAC_BITS;
use super::correlations::{ahead, correlations};
use super::products::{forward, mul_shared};
use super::state::{Ctx, Shares};
use crate::channel::Channel;
use crate::cpu;
use crate::mpc::dealer::List;
use crate::mpc::ot_mul::{self, Matrix, chooser_backward, sender_backward};
use crate::mpc::wire::{recv_u64s, send_u64s};
use crate::mpc::{FRAC_BITS, MpcError, Party, decode, trunc_share};

/// Holdout loss L̂ (A gets `Some`, B `None`).
pub(super) async fn holdout_loss<C: Channel, D: Channel>(
    ctx: &mut Ctx<'_, C, D>,
    w: &Shares,
    rows: &[u32],
    epoch: u64,
) -> Result<Option<f64>, MpcError> {
    let mut z = Zeroizing::new(Vec::with_capacity(rows.len()));
    // poly3: S₄ = Σ z⁴ (20 fraction bits) from z'² (as in [`sigmoid_part`]) squared again.
    let mut s4 = 0u64;
    let (bs, mut next) = (ctx.config.batch_size, None);
    let chunks: Vec<&[u32]> = rows.chunks(bs).collect();
    for (k, &chunk) in chunks.iter().enumerate() {
        let corr = correlations(ctx, epoch, List::Holdout, k * bs, chunk, next.take()).await?;
        // The next chunk's kept one-hot expansion runs while this one's messages go.
        if let Some(n) = chunks.get(k + 1) {
            next = ahead(ctx, epoch, List::Holdout, (k + 1) * bs, n.len());
        }
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
