//! Narrow bit layouts ([`LrConfig::narrow_bits`]): columns of 1, 2 and 12 bits, constant and
//! negative columns train to the plaintext mirror's model, padded or not; a malformed layout from
//! the peer is refused.
use super::*;
use crate::mpc::lr::train::handshake;
use crate::mpc::wire::send_bytes;

/// A: a normal column and a 0/1 indicator; B: an indicator, a small integer 0..3, a constant, a
/// negative-only column and a normal one. Labels from a logistic model on all of them.
fn mixed(n: usize, seed: u64, config: &LrConfig) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut qa, mut qb, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let a = [normal(&mut rng), f64::from(rng.random_range(0..2u8))];
        let b = [
            f64::from(rng.random_range(0..2u8)),
            f64::from(rng.random_range(0..4u8)),
            1.0,
            -rng.random_range(0.0..3.0),
            normal(&mut rng),
        ];
        let z = 0.8 * a[0] - 0.7 * a[1] + 0.9 * b[0] - 0.3 * b[1] + 0.2 * b[2] + 0.5 * b[3] - 0.6 * b[4] + 0.4;
        y.push(u8::from(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())));
        qa.extend(a.iter().map(|&v| config.encode_feature(v)));
        qb.extend(b.iter().map(|&v| config.encode_feature(v)));
    }
    let fa = qa.iter().map(|&q| config.decode_feature(q)).collect();
    let fb = qb.iter().map(|&q| config.decode_feature(q)).collect();
    Data { qa, qb, fa, fb, y, d_a: 2, d_b: 5 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrow_and_padded_layouts_match_the_plaintext_mirror() {
    let base = LrConfig { epochs: 3, batch_size: 250, learning_rate: 0.5, l2: 0.01, ..LrConfig::default() };
    let d = mixed(2000, 31, &base);
    // The widths B's columns get: 1 (indicator at bit 8), 2, 1 (constant 1.0 = 2^8), 10 or 11
    // (negative values down to −3·2^8), 11 (standard normal: all |x| < 4 in 2000 rows) or 12.
    let tight = Matrix::new(d.qb.clone(), 2000, 5, 12).tightened();
    let widths: Vec<usize> = tight.layout().cols().iter().map(|c| c.width()).collect();
    assert_eq!(widths[..3], [1, 2, 1]);
    assert!((10..=11).contains(&widths[3]) && (11..=12).contains(&widths[4]), "{widths:?}");
    let (train_rows, holdout) = split(2000);
    let p = train_plain(&d.fa, 2, &d.fb, 5, &d.y, &train_rows, &holdout, &base, false);
    // Narrow on both sides, padded on both, and mixed (each party's own choice); with the OT cache
    // and with fresh OTs per batch.
    for (narrow_a, narrow_b, cache) in
        [(true, true, 1u64 << 30), (false, false, 1 << 30), (true, false, 0), (false, true, 0)]
    {
        let ca = LrConfig { narrow_bits: narrow_a, ot_cache_bytes: cache, ..base.clone() };
        let cb = LrConfig { narrow_bits: narrow_b, ..ca.clone() };
        let (a, b) = run(&d, &ca, &cb, &train_rows, &holdout).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 2e-3);
        let case = format!("narrow A {narrow_a}, B {narrow_b}, cache {cache}");
        assert!(close(&a.weights, &p.weights_a), "{case}: {:?} vs {:?}", a.weights, p.weights_a);
        assert!(close(&b.weights, &p.weights_b), "{case}: {:?} vs {:?}", b.weights, p.weights_b);
        assert!((a.intercept.unwrap() - p.intercept).abs() < 2e-3, "{case}");
        assert!(close(&a.holdout_loss, &p.holdout_loss), "{case}");
    }
    // It learned: the indicator's weight is clearly positive.
    assert!(p.weights_b[0] > 0.2, "{:?}", p.weights_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_zero_and_binary_only_parties_train() {
    // B has only 0/1 indicators and an all-zero column (no OTs for it); A only indicators.
    let config = LrConfig { epochs: 2, batch_size: 128, ..LrConfig::default() };
    let mut rng = StdRng::seed_from_u64(32);
    let n = 600;
    let (mut qa, mut qb, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (a, b) = (rng.random_range(0..2u8), rng.random_range(0..2u8));
        y.push(u8::from(rng.random::<f64>() < if a + b > 0 { 0.7 } else { 0.3 }));
        qa.push(config.encode_feature(f64::from(a)));
        qb.extend([config.encode_feature(f64::from(b)), 0]);
    }
    let fa: Vec<f64> = qa.iter().map(|&q| config.decode_feature(q)).collect();
    let fb: Vec<f64> = qb.iter().map(|&q| config.decode_feature(q)).collect();
    let d = Data { qa, qb, fa, fb, y, d_a: 1, d_b: 2 };
    let train_rows: Vec<u32> = (0..n as u32).collect();
    let (a, b) = run(&d, &config, &config, &train_rows, &[]).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    let p = train_plain(&d.fa, 1, &d.fb, 2, &d.y, &train_rows, &[], &config, false);
    assert!((a.weights[0] - p.weights_a[0]).abs() < 2e-3);
    assert!((b.weights[0] - p.weights_b[0]).abs() < 2e-3);
    assert_eq!(b.weights[1], 0.0);
    assert!(p.weights_b[0] > 0.1);
}

/// B speaks the handshake honestly, then announces `layout` for its 2 columns.
async fn a_with_peer_layout(layout: &[u8]) -> MpcError {
    let config = LrConfig { epochs: 1, batch_size: 4, ..LrConfig::default() };
    let n = 4;
    let rows: Vec<u32> = (0..n as u32).collect();
    let input_a = LrInput {
        party: Party::A,
        features: Matrix::new(vec![0, 1, 0, 1], n, 1, config.feature_bits).into(),
        labels: Some(vec![0, 1, 0, 1]),
        train: rows.clone(),
        holdout: vec![],
        onehot: None,
    };
    let (ca, cb) = memory_pair(16);
    let cfg = config.clone();
    let (ra, ()) = futures::join!(
        async move {
            let r = train(&ca, input_a, &cfg, None).await;
            drop(ca);
            r
        },
        async move {
            handshake(&cb, &rows, &[], n, 2, &config, false).await.unwrap();
            send_bytes(&cb, layout).await.unwrap();
            // A's own layout (1 column).
            let _ = crate::mpc::wire::recv_bytes(&cb, 2).await;
            drop(cb);
        }
    );
    ra.unwrap_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_peer_layout_is_refused() {
    // lo > hi; hi beyond ℓ = 12; a sign bit on an empty column; hi of 64 (beyond ℓ).
    for bad in [[5u8, 3, 0, 12], [0, 13, 0, 1], [0, 0, 3, 3 | 0x80], [0, 64 | 0x80, 0, 1]] {
        let e = a_with_peer_layout(&bad).await;
        assert!(matches!(e, MpcError::Protocol(_)), "{bad:?}: {e}");
        assert!(e.to_string().contains("malformed bit layout"), "{bad:?}: {e}");
    }
    // A short layout message is an error too (not a panic).
    let e = a_with_peer_layout(&[0]).await;
    assert!(matches!(e, MpcError::Protocol(_)), "{e}");
}
