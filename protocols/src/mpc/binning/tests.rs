//! Two-party runs over `memory_pair` checked against the plaintext counts on the same bins, edge
//! cases, and runs against a peer whose messages are tampered with.
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::channel::memory_pair;
use crate::he::{Encryptor, test_key};
use crate::mpc::secureboost::tests::{TamperFn, Tampered, with};

/// Columns of values (a share `missing` NaN) and labels depending on the first column.
fn data(n: usize, d: usize, missing: f64, seed: u64) -> (Vec<Vec<f64>>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cols: Vec<Vec<f64>> = (0..d)
        .map(|_| {
            (0..n)
                .map(|_| if rng.random::<f64>() < missing { f64::NAN } else { rng.random::<f64>() * 4.0 - 2.0 })
                .collect()
        })
        .collect();
    let labels = (0..n)
        .map(|i| {
            let z = cols.first().map_or(0.0, |c| if c[i].is_nan() { 1.0 } else { 2.0 * c[i] });
            (rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())) as u8
        })
        .collect();
    (cols, labels)
}

fn binned(cols: &[Vec<f64>], n: usize, max_bins: u32) -> BinnedFeatures {
    let all: Vec<u32> = (0..n as u32).collect();
    BinnedFeatures::fit(cols, n, &all, max_bins).1
}

struct Run {
    a: Result<BinOutput, MpcError>,
    b: Result<BinOutput, MpcError>,
}

async fn run_pair(
    xa: BinnedFeatures,
    xb: BinnedFeatures,
    labels: Vec<u8>,
    config: &BinConfig,
    tamper_a: Option<TamperFn>,
    tamper_b: Option<TamperFn>,
) -> Run {
    let (ca, cb) = memory_pair(64);
    let (ca, cb) = (Tampered::new(ca, tamper_a), Tampered::new(cb, tamper_b));
    let a = BinInput { party: Party::A, features: xa, labels: Some(labels), key: Some(test_key()) };
    let b = BinInput { party: Party::B, features: xb, labels: None, key: None };
    let fa = async move {
        let r = run(&ca, a, config).await;
        drop(ca);
        r
    };
    let fb = async move {
        let r = run(&cb, b, config).await;
        drop(cb);
        r
    };
    let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(600), async { futures::join!(fa, fb) })
        .await
        .expect("a party hangs");
    Run { a, b }
}

/// A's counts of B's features equal the plaintext counts of B's final bins (B's fine bins
/// re-binned by the maps B received), and B's correlated pairs equal a plaintext computation.
fn check(run: &Run, xb: &BinnedFeatures, labels: &[u8], config: &BinConfig) {
    let (a, b) = (run.a.as_ref().expect("A failed"), run.b.as_ref().expect("B failed"));
    assert_eq!(a.peer_maps, b.peer_maps, "both hold the same merges");
    assert_eq!(a.peer_counts.len(), xb.features());
    let mut finals = Vec::new();
    for (f, col) in xb.columns.iter().enumerate() {
        let fine = BinCounts::of(col, labels, xb.bins[f] as usize);
        assert_eq!(a.peer_fine_counts[f], fine, "feature {f}: fine counts");
        let map = &a.peer_maps[f];
        let final_col: Vec<u8> = col.iter().map(|&v| map[v as usize]).collect();
        let bins = map.iter().map(|&m| m as usize + 1).max().unwrap();
        assert!(bins <= config.bins as usize + 1);
        assert_eq!(a.peer_counts[f], BinCounts::of(&final_col, labels, bins), "feature {f}: final counts");
        // WOE/IV at A from the secure counts equal those of the plaintext counts (same numbers).
        assert_eq!(woe_iv(&a.peer_counts[f]), woe_iv(&BinCounts::of(&final_col, labels, bins)));
        finals.push(final_col);
    }
    match config.max_corr {
        Some(bound) => {
            let expect: Vec<(u32, u32, f64)> = index_correlations(&finals)
                .into_iter()
                .filter(|p| p.2.abs() > bound)
                .map(|(k, l, r)| (k, l, f64::from(r as f32)))
                .collect();
            assert_eq!(a.peer_correlated, expect);
        }
        None => assert!(a.peer_correlated.is_empty()),
    }
    assert!(b.peer_counts.is_empty() && b.peer_fine_counts.is_empty() && b.peer_correlated.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_equal_the_plaintext_counts_quantile_and_tree() {
    let n = 300;
    let (a_cols, labels) = data(n, 2, 0.0, 1);
    // B: two informative-ish features with missing values, a constant one, one that is a copy
    // of another (correlation 1), one all missing.
    let (mut b_cols, _) = data(n, 2, 0.1, 2);
    b_cols[0] = a_cols[0].iter().enumerate().map(|(i, &v)| if i % 9 == 0 { f64::NAN } else { v }).collect();
    b_cols.push(vec![3.0; n]);
    b_cols.push(b_cols[0].clone());
    b_cols.push(vec![f64::NAN; n]);
    for config in [
        BinConfig { bins: 10, ..BinConfig::default() },
        BinConfig { bins: 4, max_corr: Some(0.5), ..BinConfig::default() },
        BinConfig { method: BinMethod::Tree, bins: 4, fine_bins: 32, max_corr: Some(0.9), ..BinConfig::default() },
        BinConfig { method: BinMethod::Tree, bins: 1, fine_bins: 8, ..BinConfig::default() },
    ] {
        let xa = binned(&a_cols, n, config.max_bins());
        let xb = binned(&b_cols, n, config.max_bins());
        assert_eq!((xb.bins[2], xb.bins[4]), (2, 2), "a constant and an all-missing feature have one value bin");
        let run = run_pair(xa, xb.clone(), labels.clone(), &config, None, None).await;
        check(&run, &xb, &labels, &config);
        let a = run.a.unwrap();
        if config.max_corr == Some(0.5) {
            assert!(a.peer_correlated.iter().any(|&(k, l, r)| (k, l) == (0, 3) && r == 1.0), "{:?}", a.peer_correlated);
        }
        if config.method == BinMethod::Tree {
            assert!(a.peer_counts[0].counts.len() <= config.bins as usize + 1);
            assert!(a.peer_fine_counts[0].counts.len() > a.peer_counts[0].counts.len());
        }
        // The constant feature: every row in one value bin, no missing bin rows.
        assert_eq!(a.peer_counts[2].counts, vec![0, n as u64]);
        assert_eq!(a.peer_counts[4].counts, vec![n as u64, 0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_one_row_one_class_no_peer_features() {
    // (what, rows, B's features, labels all equal to)
    for (what, n, d, all) in [
        ("one row", 1, 2, None),
        ("all events", 50, 2, Some(1u8)),
        ("no events", 50, 2, Some(0u8)),
        ("B without features", 40, 0, None),
    ] {
        let (a_cols, mut labels) = data(n, 1, 0.0, 3);
        if let Some(y) = all {
            labels.iter_mut().for_each(|v| *v = y);
        }
        let (b_cols, _) = data(n, d, 0.2, 4);
        let config =
            BinConfig { method: BinMethod::Tree, bins: 3, fine_bins: 6, max_corr: Some(0.0), ..Default::default() };
        let xb = binned(&b_cols, n, config.max_bins());
        let run =
            run_pair(binned(&a_cols, n, config.max_bins()), xb.clone(), labels.clone(), &config, None, None).await;
        check(&run, &xb, &labels, &config);
        let a = run.a.unwrap();
        if let Some(y) = all {
            for c in &a.peer_counts {
                let w = woe_iv(c);
                assert!(w.woe.iter().chain(&w.iv_bins).all(|v| v.is_finite()), "{what}: smoothing keeps WOE finite");
                assert_eq!(c.events.iter().sum::<u64>(), if y == 1 { n as u64 } else { 0 }, "{what}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_before_anything_is_sent() {
    let xb = binned(&data(10, 1, 0.0, 5).0, 10, 11);
    let (ca, _cb) = memory_pair(4);
    let empty = BinnedFeatures { rows: 0, columns: vec![vec![]], bins: vec![2] };
    let input = BinInput { party: Party::B, features: empty, labels: None, key: None };
    assert!(run(&ca, input, &BinConfig::default()).await.unwrap_err().to_string().contains("no rows"));
    let input = BinInput { party: Party::A, features: xb.clone(), labels: Some(vec![2; 10]), key: Some(test_key()) };
    assert!(run(&ca, input, &BinConfig::default()).await.unwrap_err().to_string().contains("0/1"));
    let input = BinInput { party: Party::B, features: xb.clone(), labels: None, key: None };
    let bad = BinConfig { bins: 0, ..BinConfig::default() };
    assert!(run(&ca, input, &bad).await.is_err());
    let input = BinInput { party: Party::B, features: xb, labels: None, key: None };
    let narrow = BinConfig { bins: 3, ..BinConfig::default() };
    assert!(run(&ca, input, &narrow).await.unwrap_err().to_string().contains("bin out of range"));
}

const W: usize = 384;

/// The small fixture with one tampered frame from `from`; the victim must fail mentioning `expect`.
async fn attack(from: Party, what: &str, expect: &str, config: BinConfig, tamper: TamperFn) {
    let n = 40;
    let (a_cols, labels) = data(n, 1, 0.0, 6);
    let (b_cols, _) = data(n, 3, 0.1, 7);
    let (xa, xb) = (binned(&a_cols, n, config.max_bins()), binned(&b_cols, n, config.max_bins()));
    let run = match from {
        Party::A => run_pair(xa, xb, labels, &config, Some(tamper), None).await,
        Party::B => run_pair(xa, xb, labels, &config, None, Some(tamper)).await,
    };
    let victim = match from {
        Party::A => run.b,
        Party::B => run.a,
    };
    let err = victim.expect_err(what).to_string();
    assert!(err.contains(expect), "{what}: {err}");
}

fn at(index: usize, f: impl Fn(&mut Vec<u8>) + Send + Sync + 'static) -> TamperFn {
    Box::new(move |i, frame: &Bytes| (i == index).then(|| with(frame, &f)).flatten())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_from_b_are_errors_at_a() {
    // Frames B sends: 0 hello head, 1 hello body, 2 counts, 3 sums, then (with max_corr) 4 the
    // pair count, 5 the pairs.
    let q = BinConfig { bins: 4, ..BinConfig::default() };
    let corr = BinConfig { bins: 4, max_corr: Some(0.0), ..BinConfig::default() };
    attack(Party::B, "digest", "disagree", q.clone(), at(0, |v| v[0] ^= 1)).await;
    attack(
        Party::B,
        "too many features",
        "features",
        q.clone(),
        at(0, |v| v[32..36].copy_from_slice(&5000u32.to_le_bytes())),
    )
    .await;
    attack(Party::B, "bins out of range", "bin count", q.clone(), at(1, |v| v[0] = 9)).await;
    attack(
        Party::B,
        "oversized count",
        "do not add up",
        q.clone(),
        at(2, |v| v[4..8].copy_from_slice(&u32::MAX.to_le_bytes())),
    )
    .await;
    attack(Party::B, "one ciphertext too few", "expected", q.clone(), at(3, |v| v.truncate(v.len() - W))).await;
    attack(Party::B, "ciphertext out of range", "range", q.clone(), at(3, |v| v[..W].fill(0xff))).await;
    attack(
        Party::B,
        "a sum that is no count",
        "out of range",
        q.clone(),
        at(3, |v| {
            let enc = Encryptor::new(&test_key().public).unwrap();
            let mut out = Vec::new();
            enc.encrypt_to_bytes(1 << 40, &mut StdRng::seed_from_u64(1), &mut out).unwrap();
            v[W..2 * W].copy_from_slice(&out);
        }),
    )
    .await;
    attack(
        Party::B,
        "too many pairs",
        "more correlated pairs",
        corr.clone(),
        at(4, |v| v.copy_from_slice(&7u32.to_le_bytes())),
    )
    .await;
    attack(
        Party::B,
        "pair index out of range",
        "out of range",
        corr.clone(),
        at(5, |v| v[4..8].copy_from_slice(&3u32.to_le_bytes())),
    )
    .await;
    attack(
        Party::B,
        "pair not ordered",
        "out of range",
        corr.clone(),
        at(5, |v| v[..4].copy_from_slice(&2u32.to_le_bytes())),
    )
    .await;
    attack(
        Party::B,
        "correlation above 1",
        "out of range",
        corr,
        at(5, |v| v[8..12].copy_from_slice(&2.0f32.to_le_bytes())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_from_a_are_errors_at_b() {
    // Frames A sends: 0 hello head, 1 hello body, 2 key size, 3 key, 4 label ciphertexts, then
    // (tree) 5 the merges.
    let tree = BinConfig { method: BinMethod::Tree, bins: 3, fine_bins: 8, ..BinConfig::default() };
    let q = BinConfig { bins: 4, ..BinConfig::default() };
    attack(Party::A, "key too small", "1024-bit key", q.clone(), at(2, |v| v.copy_from_slice(&1024u16.to_le_bytes())))
        .await;
    attack(Party::A, "B requires 3072", "requires", BinConfig { min_key_bits: 4000, ..q.clone() }, at(99, |_| {}))
        .await;
    attack(Party::A, "bad key", "key", q.clone(), at(3, |v| v[..W].fill(0))).await;
    attack(Party::A, "one label ciphertext too few", "expected", q.clone(), at(4, |v| v.truncate(v.len() - W))).await;
    attack(Party::A, "label ciphertext out of range", "range", q.clone(), at(4, |v| v[W..2 * W].fill(0xff))).await;
    attack(Party::A, "a merge to a bin out of range", "merge", tree.clone(), at(5, |v| *v.last_mut().unwrap() = 200))
        .await;
    attack(Party::A, "missing bin merged", "merge", tree.clone(), at(5, |v| v[0] = 1)).await;
    attack(Party::A, "merges of the wrong length", "expected", tree, at(5, |v| v.truncate(v.len() - 1))).await;
}

#[test]
fn groups_take_the_cheapest_joint_size() {
    // 11 bins: triples (1331 cells) beat pairs for 10^5 rows; with 100 rows single features.
    assert_eq!(
        group_features(&[11; 7], &(0..7).collect::<Vec<_>>(), 100_000),
        vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]
    );
    assert_eq!(group_features(&[11; 3], &[0, 1, 2], 100), vec![vec![0], vec![1], vec![2]]);
    // 33 bins: 35,937 joint cells of three exceed the cap; pairs (1089 cells).
    assert_eq!(group_features(&[33; 4], &[0, 1, 2, 3], 100_000), vec![vec![0, 1], vec![2, 3]]);
}

#[test]
fn sums_by_groups_of_three_equal_sums_feature_by_feature() {
    let key = test_key();
    let n = 60;
    let (cols, labels) = data(n, 4, 0.2, 9);
    let x = binned(&cols, n, 6);
    let enc = Encryptor::new(&key.public).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let cts: Vec<Ciphertext> = labels.iter().map(|&y| enc.encrypt(i128::from(y), &mut rng).unwrap()).collect();
    let all: Vec<u32> = (0..n as u32).collect();
    let decrypt = |bytes: Vec<u8>| -> Vec<i128> {
        bytes.chunks_exact(W).map(|c| key.secret.decrypt(&key.public.ciphertext(c).unwrap()).unwrap()).collect()
    };
    let single: Vec<Vec<u32>> = (0..4).map(|f| vec![f]).collect();
    let expect = decrypt(grouped_histogram(&x, &single, &key.public, &cts, &all, &all));
    let plain: Vec<i128> =
        (0..4).flat_map(|f| BinCounts::of(&x.columns[f], &labels, x.bins[f] as usize).events).map(i128::from).collect();
    assert_eq!(expect, plain);
    for groups in [vec![vec![0, 1, 2], vec![3]], vec![vec![0], vec![1, 2, 3]], vec![vec![0, 1], vec![2, 3]]] {
        assert_eq!(decrypt(grouped_histogram(&x, &groups, &key.public, &cts, &all, &all)), plain, "{groups:?}");
    }
}
