//! Both parties' training over an in-memory channel against the plaintext mirror ([`super::plain`]),
//! and the data the topic modules share.
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::plain::train_plain;
use super::*;
use crate::memory_pair;
use crate::mpc::ot_mul::Matrix;
use crate::mpc::{MpcError, Party};

mod dealer;
mod early_stopping;
mod onehot;
mod sigmoid;
mod widths;

/// Synthetic vertical data with a known logistic ground truth: encoded features of A and B,
/// decoded copies for the plaintext mirror, labels.
struct Data {
    qa: Vec<u64>,
    qb: Vec<u64>,
    fa: Vec<f64>,
    fb: Vec<f64>,
    y: Vec<u8>,
    d_a: usize,
    d_b: usize,
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box–Muller.
    let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn data(n: usize, d_a: usize, d_b: usize, seed: u64, config: &LrConfig) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let truth: Vec<f64> = (0..d_a + d_b).map(|_| normal(&mut rng)).collect();
    let (mut qa, mut qb, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let x: Vec<f64> = (0..d_a + d_b).map(|_| normal(&mut rng)).collect();
        let z: f64 = x.iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>() - 0.5;
        y.push(u8::from(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())));
        qa.extend(x[..d_a].iter().map(|&v| config.encode_feature(v)));
        qb.extend(x[d_a..].iter().map(|&v| config.encode_feature(v)));
    }
    let fa = qa.iter().map(|&q| config.decode_feature(q)).collect();
    let fb = qb.iter().map(|&q| config.decode_feature(q)).collect();
    Data { qa, qb, fa, fb, y, d_a, d_b }
}

fn split(n: usize) -> (Vec<u32>, Vec<u32>) {
    let cut = n * 4 / 5;
    ((0..cut as u32).collect(), (cut as u32..n as u32).collect())
}

async fn run(
    d: &Data,
    config: &LrConfig,
    cfg_b: &LrConfig,
    train_rows: &[u32],
    holdout: &[u32],
) -> (Result<LrOutput, MpcError>, Result<LrOutput, MpcError>) {
    let n = d.y.len();
    let input_a = LrInput {
        party: Party::A,
        features: Matrix::new(d.qa.clone(), n, d.d_a, config.feature_bits).into(),
        labels: Some(d.y.clone()),
        train: train_rows.to_vec(),
        holdout: holdout.to_vec(),
        onehot: None,
    };
    let input_b = LrInput {
        party: Party::B,
        features: Matrix::new(d.qb.clone(), n, d.d_b, cfg_b.feature_bits).into(),
        labels: None,
        train: train_rows.to_vec(),
        holdout: holdout.to_vec(),
        onehot: None,
    };
    let (ca, cb) = memory_pair(16);
    futures::join!(train(&ca, input_a, config, None), train(&cb, input_b, cfg_b, None))
}

/// Strong-signal data: ground-truth weights scaled so that |z| reaches 4–8 for many rows.
fn strong_data(n: usize, d_a: usize, d_b: usize, seed: u64, scale: f64, config: &LrConfig) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let truth: Vec<f64> = (0..d_a + d_b).map(|_| scale * normal(&mut rng)).collect();
    let (mut qa, mut qb, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let x: Vec<f64> = (0..d_a + d_b).map(|_| normal(&mut rng)).collect();
        let z: f64 = x.iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>() + 0.3;
        y.push(u8::from(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())));
        qa.extend(x[..d_a].iter().map(|&v| config.encode_feature(v)));
        qb.extend(x[d_a..].iter().map(|&v| config.encode_feature(v)));
    }
    let fa = qa.iter().map(|&q| config.decode_feature(q)).collect();
    let fb = qb.iter().map(|&q| config.decode_feature(q)).collect();
    Data { qa, qb, fa, fb, y, d_a, d_b }
}

fn weights(m: &plain::PlainModel) -> Vec<f64> {
    m.weights_a.iter().chain(&m.weights_b).chain([&m.intercept]).copied().collect()
}

fn distance(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_training_matches_the_plaintext_mirror() {
    let config = LrConfig { epochs: 4, batch_size: 256, learning_rate: 0.5, l2: 0.01, ..LrConfig::default() };
    let d = data(3000, 3, 4, 11, &config);
    let (train_rows, holdout) = split(3000);
    let (a, b) = run(&d, &config, &config, &train_rows, &holdout).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    let p = train_plain(&d.fa, 3, &d.fb, 4, &d.y, &train_rows, &holdout, &config, false);
    assert_eq!((a.peer_features, b.peer_features), (4, 3));
    assert_eq!((a.epochs_run, b.epochs_run), (4, 4));
    assert!(b.intercept.is_none() && b.holdout_loss.is_empty());
    let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 2e-3);
    assert!(close(&a.weights, &p.weights_a), "{:?} vs {:?}", a.weights, p.weights_a);
    assert!(close(&b.weights, &p.weights_b), "{:?} vs {:?}", b.weights, p.weights_b);
    assert!((a.intercept.unwrap() - p.intercept).abs() < 2e-3);
    assert_eq!(a.holdout_loss.len(), 4);
    assert!(close(&a.holdout_loss, &p.holdout_loss), "{:?} vs {:?}", a.holdout_loss, p.holdout_loss);
    // Training learned something: the weights are not zero and the loss went down from ln 2.
    assert!(a.weights.iter().chain(&b.weights).any(|w| w.abs() > 0.3));
    assert!(a.holdout_loss[3] < std::f64::consts::LN_2 - 0.05);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_batches_and_no_holdout_with_fresh_ots_per_batch() {
    // 1000 rows in batches of 300: the last batch has 100 rows (a different p and constant).
    // No OT cache: every batch extends fresh OTs.
    let config = LrConfig { epochs: 2, batch_size: 300, learning_rate: 1.0, ot_cache_bytes: 0, ..LrConfig::default() };
    let d = data(1000, 1, 2, 12, &config);
    let train_rows: Vec<u32> = (0..1000).rev().collect();
    let (a, b) = run(&d, &config, &config, &train_rows, &[]).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    let p = train_plain(&d.fa, 1, &d.fb, 2, &d.y, &train_rows, &[], &config, false);
    assert!((a.weights[0] - p.weights_a[0]).abs() < 2e-3);
    assert!(b.weights.iter().zip(&p.weights_b).all(|(x, y)| (x - y).abs() < 2e-3));
    assert!(a.holdout_loss.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_parameters_are_refused() {
    let config = LrConfig { epochs: 1, ..LrConfig::default() };
    let other = LrConfig { learning_rate: 0.25, ..config.clone() };
    let d = data(100, 1, 1, 14, &config);
    let (train_rows, holdout) = split(100);
    let (a, b) = run(&d, &config, &other, &train_rows, &holdout).await;
    for r in [a, b] {
        let e = r.unwrap_err();
        assert!(e.to_string().contains("disagree"), "{e}");
    }
}

#[test]
fn out_of_range_hyper_parameters_are_refused() {
    // A train job of 4·10^9 epochs at batch size 1 was accepted and would never end.
    let huge = LrConfig { epochs: 4_000_000_000, batch_size: 1, ..LrConfig::default() };
    assert!(huge.validate().unwrap_err().to_string().contains("epochs must be between 1 and 1000"));
    assert!(LrConfig { epochs: MAX_EPOCHS, ..LrConfig::default() }.validate().is_ok());
    assert!(LrConfig { epochs: 0, ..LrConfig::default() }.validate().is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_announcing_too_many_features_is_refused_before_any_ot() {
    // B's 20,000 features × batch 1024 × 12 bits would be 2.5e8 OTs per batch for A.
    let config = LrConfig { epochs: 1, batch_size: 1024, ..LrConfig::default() };
    let (n, d_a, d_b) = (4, 2, 20_000);
    let input_a = LrInput {
        party: Party::A,
        features: Matrix::new(vec![0; n * d_a], n, d_a, config.feature_bits).into(),
        labels: Some(vec![0, 1, 0, 1]),
        train: (0..n as u32).collect(),
        holdout: vec![],
        onehot: None,
    };
    let input_b = LrInput {
        party: Party::B,
        features: Matrix::new(vec![0; n * d_b], n, d_b, config.feature_bits).into(),
        labels: None,
        train: (0..n as u32).collect(),
        holdout: vec![],
        onehot: None,
    };
    let (ca, cb) = memory_pair(16);
    let config_b = config.clone();
    // Each side drops its end when it returns, so the other is not left waiting.
    let (ra, _rb) = futures::join!(
        async move {
            let r = train(&ca, input_a, &config, None).await;
            drop(ca);
            r
        },
        async move {
            let r = train(&cb, input_b, &config_b, None).await;
            drop(cb);
            r
        }
    );
    let err = ra.unwrap_err().to_string();
    assert!(err.contains("the peer claims 20000 features"), "{err}");
}
