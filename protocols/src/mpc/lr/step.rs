//! One mini-batch step of gradient descent on shares (module docs, steps 1–4).
use zeroize::Zeroizing;

use super::Sigmoid;
use super::config::{CONST_FRAC_BITS, POLY_CONST_BITS, POLY_FRAC_BITS};
use super::correlations::Corr;
use super::products::{add_into, forward, mul_shared, product};
use super::state::{Ctx, Shares};
use crate::channel::Channel;
use crate::cpu;
use crate::mpc::{FRAC_BITS, MpcError, Party, encode, trunc_share};

/// Shares of 4·(σ̂(z) − 1/2) for shares of z (f fraction bits), per [`LrConfig::sigmoid`](super::LrConfig::sigmoid).
/// `poly3`: z' = trunc(z, f − 10); s = trunc(z'², 10); c = trunc(s·z', 10) (z³ with 10 fraction
/// bits); result trunc(q₁·z − q₃·c, 12) with q₁ = 4c₁·2^12, q₃ = 4c₃·2^18. The truncated values
/// stay below 2^31 for |z| ≤ 8 (2^38 at |z| = 64), so their failure probability is ≤ 2^−32
/// each in the interval.
pub(super) async fn sigmoid_part<C: Channel, D: Channel>(
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
pub(super) async fn step<C: Channel, D: Channel>(
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
    // Step 3: the backward products on the correlations of step 1 (the other 64-bit half of each
    // OT pad, or the dealer's second mask).
    let (g_own, g_peer) = product(ctx, &corr, &x, r.to_vec(), false).await?;
    let (mut g_own, g_peer) = (Zeroizing::new(g_own), Zeroizing::new(g_peer));
    let (x2, r2) = (x.clone(), Zeroizing::new(r.to_vec()));
    add_into(&mut g_own, &Zeroizing::new(cpu::run(move || x2.mul_t_vec(&r2)).await));
    let g0 = r.iter().fold(0u64, |a, &v| a.wrapping_add(v));
    // Step 4: every share truncated locally (SecureML, Mohassel–Zhang S&P 2017, Thm. 1), first
    // the gradient sum to the mean's scale, then the scaled update to the weights' f bits.
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
    // The batch's fresh OT pads are spent (both halves used): their buffers go back to the OT
    // extension, which overwrites them in the next batch instead of allocating, clearing and
    // zeroizing ~16 bytes per OT per batch; they are zeroized when the run's extension objects
    // are dropped. (Cached or dealer correlations: nothing to recycle.)
    if ctx.caches.is_none()
        && ctx.dealer.is_none()
        && let Ok(Corr::Ot(c, s)) = std::sync::Arc::try_unwrap(corr)
    {
        ctx.receiver.recycle(c.into_buffer());
        let [m0, m1] = s.into_buffers();
        ctx.sender.recycle(m0);
        ctx.sender.recycle(m1);
    }
    Ok(())
}
