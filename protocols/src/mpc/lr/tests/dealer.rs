//! Dealer mode: the same model as the plaintext mirror, with the dealer's correlations.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dealer_mode_matches_the_plaintext_mirror_and_survives_early_stopping() {
    use crate::mpc::dealer::run_dealer;
    for tolerance in [0.0, 1.0] {
        let config = LrConfig { epochs: 3, batch_size: 200, l2: 0.01, tolerance, ..LrConfig::default() };
        let d = data(1500, 2, 3, 16, &config);
        let (train_rows, holdout) = split(1500);
        let n = d.y.len();
        let input = |party, q: &Vec<u64>, cols, labels| LrInput {
            party,
            features: Matrix::new(q.clone(), n, cols, config.feature_bits).into(),
            labels,
            train: train_rows.clone(),
            holdout: holdout.clone(),
            onehot: None,
        };
        let (ab_a, ab_b) = memory_pair(16);
        let ((a_d, d_a), (b_d, d_b)) = (memory_pair(16), memory_pair(16));
        let dealer = async {
            let r = run_dealer(&d_a, &d_b).await;
            drop((d_a, d_b));
            r
        };
        let a = async {
            let r = train_with_dealer(&ab_a, &a_d, input(Party::A, &d.qa, 2, Some(d.y.clone())), &config, None).await;
            drop(a_d);
            r
        };
        let b = async {
            let r = train_with_dealer(&ab_b, &b_d, input(Party::B, &d.qb, 3, None), &config, None).await;
            drop(b_d);
            r
        };
        let (report, a, b) = futures::join!(dealer, a, b);
        let (a, b, report) = (a.unwrap(), b.unwrap(), report.unwrap());
        let p = train_plain(&d.fa, 2, &d.fb, 3, &d.y, &train_rows, &holdout, &config, false);
        assert_eq!(a.epochs_run, p.epochs_run);
        // The dealer streamed at least what the parties used (it cannot always tell that they
        // stopped early: its frames may all fit in the channel buffers).
        let per_epoch = train_rows.len().div_ceil(200) + holdout.len().div_ceil(200);
        assert!(report.sessions as usize >= per_epoch * a.epochs_run as usize);
        let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 2e-3);
        assert!(close(&a.weights, &p.weights_a), "{:?} vs {:?}", a.weights, p.weights_a);
        assert!(close(&b.weights, &p.weights_b), "{:?} vs {:?}", b.weights, p.weights_b);
        assert!(close(&a.holdout_loss, &p.holdout_loss));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poly3_in_dealer_mode_matches_its_plaintext_mirror() {
    use crate::mpc::dealer::run_dealer;
    let config = LrConfig { epochs: 3, batch_size: 200, sigmoid: Sigmoid::Poly3, ..LrConfig::default() };
    let d = strong_data(1500, 2, 3, 22, 1.0, &config);
    let (train_rows, holdout) = split(1500);
    let n = d.y.len();
    let input = |party, q: &Vec<u64>, cols, labels| LrInput {
        party,
        features: Matrix::new(q.clone(), n, cols, config.feature_bits).into(),
        labels,
        train: train_rows.clone(),
        holdout: holdout.clone(),
        onehot: None,
    };
    let (ab_a, ab_b) = memory_pair(16);
    let ab_a = crate::channel::Metered::new(ab_a);
    let ((a_d, d_a), (b_d, d_b)) = (memory_pair(16), memory_pair(16));
    let (report, a, b) = futures::join!(
        run_dealer(&d_a, &d_b),
        train_with_dealer(&ab_a, &a_d, input(Party::A, &d.qa, 2, Some(d.y.clone())), &config, None),
        train_with_dealer(&ab_b, &b_d, input(Party::B, &d.qb, 3, None), &config, None),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    report.unwrap();
    let p = train_plain(&d.fa, 2, &d.fb, 3, &d.y, &train_rows, &holdout, &config, false);
    let secure: Vec<f64> = a.weights.iter().chain(&b.weights).chain(&a.intercept).copied().collect();
    assert!(secure.iter().zip(weights(&p)).all(|(x, y)| (x - y).abs() < 5e-3), "{secure:?} vs {:?}", weights(&p));
    // The share products used the dealer's triples, not OTs: with OTs A alone would send ≈ 2.5 kB
    // per training row and epoch (128 IKNP rows of 16 bytes, 64 τ of 8; 1200 rows × 3 epochs:
    // ≈ 9 MB); Beaver costs 16 bytes per product and party.
    let sent = ab_a.stats().bytes_sent;
    assert!(sent < 4_000_000, "A sent {sent} bytes");
    // The holdout loss is poly3's own surrogate (with Σz⁴), as in the mirror.
    assert_eq!(a.holdout_loss.len(), 3);
    assert!(
        a.holdout_loss.iter().zip(&p.holdout_loss).all(|(x, y)| (x - y).abs() < 5e-3),
        "{:?} vs {:?}",
        a.holdout_loss,
        p.holdout_loss
    );
}

/// Found while writing the dealer's fuzz target (fuzz/fuzz_targets/lr.rs): a shape whose rows ×
/// cols is beyond what any party runs made the dealer allocate it (8 GiB and up), and training and
/// holdout sizes whose sum overflows panicked. Both are refused now, before any allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dealer_refuses_shapes_no_party_runs_before_allocating_them() {
    use crate::mpc::dealer::run_dealer;
    use crate::mpc::wire::send_u64s;
    // cols, epochs, batch, train, holdout, triples
    let shapes: [[u64; 6]; 4] = [
        [1 << 16, 1, 1 << 16, 1 << 20, 0, 0],
        [1 << 20, 1, 1024, 1 << 20, 0, 0],
        [2, 1, 4, u64::MAX, 1, 0],
        [2, 1, 1 << 40, 1 << 20, 0, 0],
    ];
    for shape in shapes {
        let ((a, d_a), (b, d_b)) = (memory_pair(4), memory_pair(4));
        let (_, _, dealt) = futures::join!(send_u64s(&a, &shape), send_u64s(&b, &shape), run_dealer(&d_a, &d_b));
        let err = dealt.unwrap_err().to_string();
        assert!(err.contains("implausible training shape"), "{shape:?}: {err}");
    }
}
