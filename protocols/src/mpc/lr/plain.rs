//! The plaintext mirror of [`train`](fn@super::train) (and the baseline with the exact sigmoid): same batches,
//! same constants, real arithmetic on the decoded features. Used by tests and by the engine's
//! plaintext baseline.

use super::LrConfig;
use super::config::CONST_FRAC_BITS;
use crate::mpc::{decode, encode};

/// A plaintext model: weights for A's and B's features, intercept, holdout losses.
#[derive(Debug, Clone, PartialEq)]
pub struct PlainModel {
    pub weights_a: Vec<f64>,
    pub weights_b: Vec<f64>,
    pub intercept: f64,
    pub holdout_loss: Vec<f64>,
    pub epochs_run: u32,
    /// The epoch (1-based) whose weights these are (see [`LrOutput::weights_epoch`](super::LrOutput::weights_epoch)).
    pub weights_epoch: u32,
}

/// Trains on decoded features `x_a` (n × d_a) and `x_b` (n × d_b), row-major. With `exact`,
/// uses σ itself (and reports the true log-loss); otherwise `config.sigmoid` (as
/// [`Sigmoid::eval`](super::Sigmoid::eval)) and L̂.
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
        let stop = config.tolerance > 0.0 && losses.last().is_some_and(|&prev: &f64| prev - loss < config.tolerance);
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
