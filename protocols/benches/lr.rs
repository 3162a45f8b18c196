//! Vertical logistic regression benchmark (a bench binary, not criterion: one epoch at the target
//! shape takes tens of seconds).
//!
//! `cargo bench -p consort-protocols --bench lr` trains on synthetic data over `memory_pair` (both parties in this
//! process, sharing the machine's cores; each side's channel is [`Metered`], as in the node, so
//! the BLAKE3 transcript cost is included) and prints one line per epoch (wall time, rows/s,
//! bytes on the wire in both directions) and a summary with the peak RSS of the process (both
//! parties together).
//!
//! Environment (defaults in brackets):
//! - `LR_ROWS` [100000]: aligned rows (all training, no holdout unless `LR_HOLDOUT` > 0);
//! - `LR_HOLDOUT` [0]: extra holdout rows;
//! - `LR_A` [30], `LR_B` [300]: features of A and of B;
//! - `LR_B_KIND` [raw]: `raw` (standard normal, 12-bit fixed point with 8 fraction bits) or `bin`
//!   (0/1 bin indicators, as binned scorecard features: each row has one 1 per group of 10);
//! - `LR_EPOCHS` [1], `LR_BATCH` [1024], `LR_LR` [0.5] (learning rate: with many indicator columns
//!   ‖x‖² is large and plain gradient descent needs a smaller one, e.g. 0.01 for 3000);
//! - `LR_DEALER` [0]: 1 trains with a dealer (three parties in this process);
//! - `LR_CACHE_MB` [1536]: [`LrConfig::ot_cache_bytes`] in MiB;
//! - `LR_ONEHOT` [0]: 1 (with `LR_B_KIND=bin`) announces B's groups of 10 as one-hot
//!   ([`LrInput::onehot`]): its products run on the kept correlations instead of fresh OTs.
//!
//! Each epoch line also gives the process's CPU seconds (both parties, user + system) in it; the
//! first epoch's figures include the setup of the kept correlations or the OT cache.
//!
//! The target shapes: `LR_ROWS=100000 LR_A=30 LR_B=300` (raw), the same with
//! `LR_B_KIND=bin`, and `LR_ROWS=100000 LR_A=30 LR_B=3000 LR_B_KIND=bin LR_EPOCHS=10`.
mod common;
use common::cpu_seconds;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use consort_protocols::mpc::Party;
use consort_protocols::mpc::dealer::run_dealer;
use consort_protocols::mpc::lr::{LrConfig, LrInput, LrProgress, train, train_with_dealer};
use consort_protocols::mpc::ot_mul::Matrix;
use consort_protocols::mpc::ot_mul::onehot::Groups;
use consort_protocols::{Metered, memory_pair};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn normal(rng: &mut StdRng) -> f64 {
    let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1));
    kb.and_then(|k| k.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// At the end of an epoch: (time, bytes A sent, bytes A received, CPU seconds).
type Mark = (f64, u64, u64, f64);

fn main() {
    let n: usize = env("LR_ROWS", 100_000);
    let n_hold: usize = env("LR_HOLDOUT", 0);
    let (d_a, d_b): (usize, usize) = (env("LR_A", 30), env("LR_B", 300));
    let kind: String = env("LR_B_KIND", "raw".to_string());
    let dealer = env("LR_DEALER", 0u8) == 1;
    let onehot = env("LR_ONEHOT", 0u8) == 1 && kind == "bin";
    let config = LrConfig {
        epochs: env("LR_EPOCHS", 1),
        batch_size: env("LR_BATCH", 1024),
        learning_rate: env("LR_LR", 0.5),
        ot_cache_bytes: env("LR_CACHE_MB", 1536u64) << 20,
        ..LrConfig::default()
    };
    let total = n + n_hold;
    let mut rng = StdRng::seed_from_u64(7);
    let t = Instant::now();
    let mut qa = Vec::with_capacity(total * d_a);
    let mut qb = Vec::with_capacity(total * d_b);
    let mut y = Vec::with_capacity(total);
    for _ in 0..total {
        let mut z = -0.5;
        for _ in 0..d_a {
            let v = normal(&mut rng);
            z += 0.1 * v;
            qa.push(config.encode_feature(v));
        }
        for j in 0..d_b {
            match kind.as_str() {
                "bin" => {
                    // One indicator set per group of 10 columns (a feature's 10 bins).
                    if j % 10 == 0 {
                        let hot = rng.random_range(0..10.min(d_b - j));
                        for k in 0..10.min(d_b - j) {
                            qb.push(u64::from(k == hot) << config.feature_frac_bits);
                            z += if k == hot { 0.02 * (k as f64 - 4.5) } else { 0.0 };
                        }
                    }
                }
                _ => {
                    let v = normal(&mut rng);
                    z += 0.02 * v;
                    qb.push(config.encode_feature(v));
                }
            }
        }
        y.push(u8::from(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())));
    }
    println!("data: {total} rows, {d_a} + {d_b} features ({kind}), generated in {:.1} s", t.elapsed().as_secs_f64());
    let train_rows: Vec<u32> = (0..n as u32).collect();
    let holdout: Vec<u32> = (n as u32..total as u32).collect();
    let input_a = LrInput {
        party: Party::A,
        features: Matrix::new(qa, total, d_a, config.feature_bits).into(),
        labels: Some(y),
        train: train_rows.clone(),
        holdout: holdout.clone(),
        onehot: None,
    };
    let input_b = LrInput {
        party: Party::B,
        features: Matrix::new(qb, total, d_b, config.feature_bits).into(),
        labels: None,
        train: train_rows,
        holdout,
        onehot: onehot.then(|| {
            let sizes: Vec<u32> = (0..d_b).step_by(10).map(|j| 10.min(d_b - j) as u32).collect();
            Groups::new(&sizes, 1 << config.feature_frac_bits).expect("groups of 10")
        }),
    };
    let (ca, cb) = memory_pair(64);
    let (ca, cb) = (Metered::new(ca), Metered::new(cb));
    let counter = ca.byte_counter();
    // Per epoch: (end time, bytes A sent, bytes A received, CPU seconds), from A's progress
    // callback.
    let marks: Arc<Mutex<Vec<Mark>>> = Arc::default();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let (m2, batches_per_epoch) = (marks.clone(), n.div_ceil(config.batch_size));
    let progress = Arc::new(move |p: LrProgress| {
        if p.loss.is_none() && p.batch == batches_per_epoch {
            let (s, r) = counter.get();
            m2.lock().unwrap().push((start.elapsed().as_secs_f64(), s, r, cpu_seconds()));
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (a, b) = rt.block_on(async {
        if dealer {
            let ((a_d, d_a), (b_d, d_b)) = (memory_pair(64), memory_pair(64));
            let dealer = async {
                let r = run_dealer(&d_a, &d_b).await;
                drop((d_a, d_b));
                r
            };
            let a = async {
                let r = train_with_dealer(&ca, &a_d, input_a, &config, Some(progress)).await;
                drop(a_d);
                r
            };
            let b = async {
                let r = train_with_dealer(&cb, &b_d, input_b, &config, None).await;
                drop(b_d);
                r
            };
            let (d, a, b) = futures::join!(dealer, a, b);
            d.expect("dealer");
            (a, b)
        } else {
            futures::join!(train(&ca, input_a, &config, Some(progress)), train(&cb, input_b, &config, None))
        }
    });
    let total_s = start.elapsed().as_secs_f64();
    let mut prev = (0.0, 0, 0, cpu0);
    for (e, &(t, s, r, c)) in marks.lock().unwrap().iter().enumerate() {
        let (dt, bytes) = (t - prev.0, (s - prev.1) + (r - prev.2));
        println!(
            "epoch {:>3}: {dt:8.2} s  {:>10.0} rows/s  {:>8.1} MB on the wire (both directions)  {:7.1} CPU-s",
            e + 1,
            n as f64 / dt,
            bytes as f64 / 1e6,
            c - prev.3
        );
        prev = (t, s, r, c);
    }
    let (a, b) = (a.expect("party A"), b.expect("party B"));
    assert_eq!(b.weights.len(), d_b);
    let st = ca.stats();
    println!(
        "total {total_s:.2} s (setup + {} epochs + reveal), {:.1} MB on the wire, peak RSS {:.0} MB (both parties{}), \
         {} weights, intercept {:.3}, mode {}",
        a.epochs_run,
        (st.bytes_sent + st.bytes_received) as f64 / 1e6,
        peak_rss() as f64 / 1e6,
        if dealer { " and the dealer" } else { "" },
        a.weights.len() + b.weights.len(),
        a.intercept.unwrap_or(0.0),
        if dealer { "dealer" } else { "dealer-free" },
    );
}
