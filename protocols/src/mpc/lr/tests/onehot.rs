//! One-hot matrices ([`LrInput::onehot`]): products on kept correlations train to the plaintext
//! mirror's model (B one-hot, A one-hot, both), with poly3, batch size 1 and rows not a multiple of
//! the batch; a one-hot announcement that does not fit is refused.
use super::*;
use crate::mpc::ot_mul::onehot::Groups;
use crate::mpc::wire::send_bytes;
use crate::ot::Security;

/// `d` one-hot features of `bins` bins each (bin 0 the reference: no column), as indicator
/// columns encoded with `config`, and the bins (for the labels).
fn indicators(n: usize, bins: &[u32], rng: &mut StdRng, config: &LrConfig) -> (Vec<u64>, Vec<Vec<u32>>) {
    let (one, zero) = (config.encode_feature(1.0), config.encode_feature(0.0));
    let (mut q, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let b: Vec<u32> = bins.iter().map(|&k| rng.random_range(0..k)).collect();
        for (&k, &bi) in bins.iter().zip(&b) {
            q.extend((1..k).map(|c| if c == bi { one } else { zero }));
        }
        rows.push(b);
    }
    (q, rows)
}

fn groups(bins: &[u32], config: &LrConfig) -> Groups {
    let sizes: Vec<u32> = bins.iter().map(|k| k - 1).collect();
    Groups::new(&sizes, config.encode_feature(1.0)).unwrap()
}

/// A: `a_bins` one-hot features (or one normal column if empty); B: `b_bins` one-hot features.
fn onehot_data(n: usize, a_bins: &[u32], b_bins: &[u32], seed: u64, config: &LrConfig) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let (qb, bb) = indicators(n, b_bins, &mut rng, config);
    let (qa, ba, d_a) = if a_bins.is_empty() {
        let v: Vec<u64> = (0..n).map(|_| config.encode_feature(normal(&mut rng))).collect();
        (v, vec![vec![]; n], 1)
    } else {
        let (q, b) = indicators(n, a_bins, &mut rng, config);
        (q, b, a_bins.iter().map(|k| (k - 1) as usize).sum())
    };
    let d_b = b_bins.iter().map(|k| (k - 1) as usize).sum();
    let mut y = Vec::new();
    for i in 0..n {
        let mut z = -0.2;
        for (f, &b) in bb[i].iter().chain(&ba[i]).enumerate() {
            z += if (b as usize + f).is_multiple_of(3) { 0.8 } else { -0.4 };
        }
        if a_bins.is_empty() {
            z += 0.7 * config.decode_feature(qa[i]);
        }
        y.push(u8::from(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())));
    }
    let fa = qa.iter().map(|&q| config.decode_feature(q)).collect();
    let fb = qb.iter().map(|&q| config.decode_feature(q)).collect();
    Data { qa, qb, fa, fb, y, d_a, d_b }
}

async fn run_onehot(
    d: &Data,
    config: &LrConfig,
    ga: Option<Groups>,
    gb: Option<Groups>,
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
        onehot: ga,
    };
    let input_b = LrInput {
        party: Party::B,
        features: Matrix::new(d.qb.clone(), n, d.d_b, config.feature_bits).into(),
        labels: None,
        train: train_rows.to_vec(),
        holdout: holdout.to_vec(),
        onehot: gb,
    };
    let (ca, cb) = memory_pair(16);
    futures::join!(train(&ca, input_a, config, None), train(&cb, input_b, config, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onehot_training_matches_the_plaintext_mirror() {
    let base = LrConfig { epochs: 3, batch_size: 128, learning_rate: 0.3, l2: 0.01, ..LrConfig::default() };
    let b_bins = [10u32, 2, 5, 1 + 1, 17];
    let a_bins = [3u32, 10];
    // B one-hot (the scorecard case, A a normal column), A one-hot too, both, with poly3; batch
    // size 1 on few rows; 1000 rows with batches of 128 (not a multiple); the OT cache on or off
    // for the side that is not one-hot (on: its OTs are kept and re-keyed per epoch, on A's side
    // as the chooser and on B's side); the trees' leaves kept (local: all groups, the first few,
    // none).
    type Case<'a> = (usize, &'a [u32], bool, bool, Sigmoid, usize, u64, u64);
    let all = 1u64 << 30;
    // 1000 rows (800 training, 200 holdout) × the first two of B's groups (10 + 2 leaves).
    let some = 16 * 1000 * 12 + 16;
    let cases: [Case; 10] = [
        (1000, &[], false, true, Sigmoid::Taylor1, 128, 1 << 30, 0),
        (1000, &[], false, true, Sigmoid::Taylor1, 128, 0, 0),
        (1000, &a_bins, true, false, Sigmoid::Taylor1, 128, 0, 0),
        (1000, &a_bins, true, false, Sigmoid::Taylor1, 128, 1 << 30, all),
        (1000, &[], false, true, Sigmoid::Poly3, 128, 1 << 30, all),
        (1000, &a_bins, true, true, Sigmoid::Poly3, 128, 0, 0),
        (1000, &a_bins, true, true, Sigmoid::Taylor1, 128, 0, all),
        (1000, &[], false, true, Sigmoid::Taylor1, 128, 1 << 30, some),
        (30, &[], false, true, Sigmoid::Taylor1, 1, 0, 0),
        (30, &[], false, true, Sigmoid::Taylor1, 1, 1 << 30, all),
    ];
    for (n, a_bins, a_hot, b_hot, sigmoid, batch, cache, kept) in cases {
        let config =
            LrConfig { sigmoid, batch_size: batch, ot_cache_bytes: cache, kept_leaves_bytes: kept, ..base.clone() };
        let d = onehot_data(n, a_bins, &b_bins, 5, &config);
        let (train_rows, holdout) = split(n);
        let ga = a_hot.then(|| groups(a_bins, &config));
        let gb = b_hot.then(|| groups(&b_bins, &config));
        let (a, b) = run_onehot(&d, &config, ga, gb, &train_rows, &holdout).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        let p = train_plain(&d.fa, d.d_a, &d.fb, d.d_b, &d.y, &train_rows, &holdout, &config, false);
        let case = format!("n {n}, A one-hot {a_hot}, B one-hot {b_hot}, {sigmoid:?}, batch {batch}, kept {kept}");
        let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 3e-3);
        assert!(close(&a.weights, &p.weights_a), "{case}: {:?} vs {:?}", a.weights, p.weights_a);
        assert!(close(&b.weights, &p.weights_b), "{case}: {:?} vs {:?}", b.weights, p.weights_b);
        assert!((a.intercept.unwrap() - p.intercept).abs() < 3e-3, "{case}");
        assert!(close(&a.holdout_loss, &p.holdout_loss), "{case}");
        // It learned something: the weights are not all zero.
        assert!(b.weights.iter().any(|w| w.abs() > 0.01), "{case}: {:?}", b.weights);
    }
}

/// Lists of several setup chunks (4 096 rows each; the test above has one chunk per list), with
/// the semi-honest and the malicious OT extension: the same model as the plaintext mirror, over a
/// channel that holds one frame per direction (a setup whose parties both wrote without reading
/// would deadlock on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setups_of_several_chunks_train_to_the_plaintext_mirror() {
    let base = LrConfig { epochs: 1, batch_size: 1024, learning_rate: 0.3, l2: 0.01, ..LrConfig::default() };
    let (a_bins, b_bins) = ([3u32, 10], [10u32, 5, 2]);
    // 11 000 rows: 8 800 training rows (3 chunks, the last short) and 2 200 holdout rows (1).
    let n = 11_000;
    for (security, a_hot, cache) in [
        (Security::SemiHonest, true, 0),
        (Security::SemiHonest, false, 1u64 << 30),
        (Security::SemiHonest, false, 0),
        (Security::Malicious, true, 0),
        (Security::Malicious, false, 1 << 30),
    ] {
        let config = LrConfig { security, ot_cache_bytes: cache, kept_leaves_bytes: 1 << 30, ..base.clone() };
        let a_bins: &[u32] = if a_hot { &a_bins } else { &[] };
        let d = onehot_data(n, a_bins, &b_bins, 9, &config);
        let (train_rows, holdout) = split(n);
        let input = |party, q: &[u64], d_x, labels, g| LrInput {
            party,
            features: Matrix::new(q.to_vec(), n, d_x, config.feature_bits).into(),
            labels,
            train: train_rows.clone(),
            holdout: holdout.clone(),
            onehot: g,
        };
        let ia = input(Party::A, &d.qa, d.d_a, Some(d.y.clone()), a_hot.then(|| groups(a_bins, &config)));
        let ib = input(Party::B, &d.qb, d.d_b, None, Some(groups(&b_bins, &config)));
        let (ca, cb) = memory_pair(1);
        let case = format!("{security:?}, A one-hot {a_hot}, OT cache {cache}");
        let both = async { futures::join!(train(&ca, ia, &config, None), train(&cb, ib, &config, None)) };
        let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(300), both)
            .await
            .unwrap_or_else(|_| panic!("{case}: the parties deadlocked"));
        let (a, b) = (a.unwrap(), b.unwrap());
        let p = train_plain(&d.fa, d.d_a, &d.fb, d.d_b, &d.y, &train_rows, &holdout, &config, false);
        let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 3e-3);
        assert!(close(&a.weights, &p.weights_a), "{case}: {:?} vs {:?}", a.weights, p.weights_a);
        assert!(close(&b.weights, &p.weights_b), "{case}: {:?} vs {:?}", b.weights, p.weights_b);
        assert!(close(&a.holdout_loss, &p.holdout_loss), "{case}");
        assert!(b.weights.iter().any(|w| w.abs() > 0.01), "{case}: {:?}", b.weights);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_that_is_not_one_hot_is_refused_before_any_message() {
    let config = LrConfig { epochs: 1, ..LrConfig::default() };
    let d = onehot_data(20, &[], &[4], 1, &config);
    // Groups of the wrong shape for B's 3 columns; and a row with two bins set.
    let input = |q: Vec<u64>, g| LrInput {
        party: Party::B,
        features: Matrix::new(q, 20, 3, 12).into(),
        labels: None,
        train: (0..20).collect(),
        holdout: vec![],
        onehot: Some(g),
    };
    let (ca, _cb) = memory_pair(16);
    let wrong = Groups::new(&[2], 256).unwrap();
    assert!(matches!(train(&ca, input(d.qb.clone(), wrong), &config, None).await, Err(MpcError::Invalid(_))));
    let mut q = d.qb.clone();
    q[0] = 256;
    q[1] = 256;
    let g = groups(&[4], &config);
    assert!(matches!(train(&ca, input(q, g), &config, None).await, Err(MpcError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_bad_groups_is_refused() {
    let config = LrConfig { epochs: 1, batch_size: 10, ..LrConfig::default() };
    let d = onehot_data(20, &[], &[4], 1, &config);
    let (train_rows, holdout) = split(20);
    // header: count, scale; then the sizes. Too many groups (checked before the sizes are read);
    // sizes that do not cover the peer's 3 columns; a zero size.
    let bad: [(u32, Vec<u8>); 3] = [(u32::MAX, vec![]), (1, vec![2]), (2, vec![0, 3])];
    for (count, sizes) in bad {
        let (ca, cb) = memory_pair(16);
        let input_a = LrInput {
            party: Party::A,
            features: Matrix::new(d.qa.clone(), 20, 1, 12).into(),
            labels: Some(d.y.clone()),
            train: train_rows.clone(),
            holdout: holdout.clone(),
            onehot: None,
        };
        let rogue = async {
            // B's handshake and layouts as an honest B, then the bad announcement.
            crate::mpc::lr::train::handshake(&cb, &train_rows, &holdout, 20, 3, &config, false).await.unwrap();
            let layout: Vec<u8> = (0..3).flat_map(|_| [8u8, 9]).collect();
            send_bytes(&cb, &layout).await.unwrap();
            let _ = crate::mpc::wire::recv_bytes(&cb, 2).await;
            let mut head = count.to_le_bytes().to_vec();
            head.extend_from_slice(&256u64.to_le_bytes());
            send_bytes(&cb, &head).await.unwrap();
            let _ = crate::mpc::wire::recv_bytes(&cb, 12).await;
            if !sizes.is_empty() {
                send_bytes(&cb, &sizes).await.unwrap();
            }
        };
        let (a, ()) = futures::join!(train(&ca, input_a, &config, None), rogue);
        assert!(matches!(&a, Err(MpcError::Protocol(m)) if m.contains("one-hot")), "{count}: {:?}", a.err());
    }
}

/// B's one-hot matrix given as its leaves ([`LrFeatures::Leaves`], as the scorecard's engine
/// passes it) trains to the plaintext mirror's model as the matrix does, with the narrow layout
/// (a bin no row falls in: a column without bits) and the full one; bad leaves are refused
/// before any message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_given_as_such_train_as_the_matrix() {
    let b_bins = [10u32, 2, 5, 17];
    for narrow in [true, false] {
        let config = LrConfig {
            epochs: 2,
            batch_size: 128,
            learning_rate: 0.3,
            l2: 0.01,
            narrow_bits: narrow,
            kept_leaves_bytes: 1 << 30,
            ..LrConfig::default()
        };
        let mut d = onehot_data(600, &[], &b_bins, 8, &config);
        // No row in B's last bin of its last feature: that column is all zero.
        let (n, last) = (600, d.d_b - 1);
        for i in 0..n {
            if d.qb[i * d.d_b + last] != 0 {
                d.qb[i * d.d_b + last] = 0;
                d.fb[i * d.d_b + last] = 0.0;
            }
        }
        let gb = groups(&b_bins, &config);
        let m = Matrix::new(d.qb.clone(), n, d.d_b, config.feature_bits);
        let m = if narrow { m.tightened() } else { m };
        let leaves = gb.leaves_of(&m).unwrap();
        assert_eq!(gb.layout_of_leaves(&leaves, n, config.feature_bits, narrow), **m.layout());
        let (train_rows, holdout) = split(n);
        let input_a = LrInput {
            party: Party::A,
            features: Matrix::new(d.qa.clone(), n, d.d_a, config.feature_bits).into(),
            labels: Some(d.y.clone()),
            train: train_rows.clone(),
            holdout: holdout.clone(),
            onehot: None,
        };
        let input_b = LrInput {
            party: Party::B,
            features: LrFeatures::Leaves { leaves, rows: n, bits: config.feature_bits },
            labels: None,
            train: train_rows.clone(),
            holdout: holdout.clone(),
            onehot: Some(gb),
        };
        let (ca, cb) = memory_pair(16);
        let (a, b) = futures::join!(train(&ca, input_a, &config, None), train(&cb, input_b, &config, None));
        let (a, b) = (a.unwrap(), b.unwrap());
        let p = train_plain(&d.fa, d.d_a, &d.fb, d.d_b, &d.y, &train_rows, &holdout, &config, false);
        let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 3e-3);
        assert!(close(&a.weights, &p.weights_a) && close(&b.weights, &p.weights_b), "narrow {narrow}");
        assert!((a.intercept.unwrap() - p.intercept).abs() < 3e-3 && close(&a.holdout_loss, &p.holdout_loss));
        assert!(b.weights.iter().any(|w| w.abs() > 0.01));
    }
    // Refused before any message (the peer end stays silent): a leaf past its group's columns,
    // leaves of the wrong length, a scale that is not a feature-bits entry, no groups.
    let config = LrConfig { epochs: 1, ..LrConfig::default() };
    let input = |leaves: Vec<u8>, g: Option<Groups>| LrInput {
        party: Party::B,
        features: LrFeatures::Leaves { leaves: Zeroizing::new(leaves), rows: 20, bits: config.feature_bits },
        labels: None,
        train: (0..20).collect(),
        holdout: vec![],
        onehot: g,
    };
    let g = || Some(groups(&[4, 2], &config));
    let mut past = vec![1u8; 40];
    past[39] = 2;
    let huge_scale = Some(Groups::new(&[3, 1], 1 << 40).unwrap());
    for (leaves, g) in [(past, g()), (vec![0; 39], g()), (vec![0; 40], huge_scale), (vec![0; 40], None)] {
        let (ca, _cb) = memory_pair(16);
        assert!(matches!(train(&ca, input(leaves, g), &config, None).await, Err(MpcError::Invalid(_))));
    }
}
