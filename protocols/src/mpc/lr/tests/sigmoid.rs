//! The `poly3` sigmoid against its mirror and `taylor1`; both parties must use the same.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poly3_matches_its_plaintext_mirror_and_beats_taylor1_on_strong_signal() {
    // Ground truth with |z| of 3–8 for many rows (z has std ≈ 3): taylor1's residuals are far too
    // large there and shrink the weights; poly3 follows σ within 0.114 on [−8, 8].
    let config = LrConfig { epochs: 10, batch_size: 256, sigmoid: Sigmoid::Poly3, ..LrConfig::default() };
    let d = strong_data(4000, 3, 3, 21, 1.2, &config);
    let (train_rows, holdout) = split(4000);
    let (a, b) = run(&d, &config, &config, &train_rows, &holdout).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    let mirror = train_plain(&d.fa, 3, &d.fb, 3, &d.y, &train_rows, &holdout, &config, false);
    let secure: Vec<f64> = a.weights.iter().chain(&b.weights).chain(&a.intercept).copied().collect();
    let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 5e-3);
    assert!(close(&secure, &weights(&mirror)), "{secure:?} vs {:?}", weights(&mirror));
    assert!(close(&a.holdout_loss, &mirror.holdout_loss), "{:?} vs {:?}", a.holdout_loss, mirror.holdout_loss);
    let exact = weights(&train_plain(&d.fa, 3, &d.fb, 3, &d.y, &train_rows, &holdout, &config, true));
    let taylor1 = LrConfig { sigmoid: Sigmoid::Taylor1, ..config.clone() };
    let t1 = weights(&train_plain(&d.fa, 3, &d.fb, 3, &d.y, &train_rows, &holdout, &taylor1, false));
    let (d_poly, d_taylor) = (distance(&secure, &exact), distance(&t1, &exact));
    assert!(d_poly < 0.7 * d_taylor, "poly3 {d_poly} vs taylor1 {d_taylor} from the exact-sigmoid weights");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parties_with_different_sigmoids_are_refused() {
    let config = LrConfig { epochs: 1, ..LrConfig::default() };
    let other = LrConfig { sigmoid: Sigmoid::Poly3, ..config.clone() };
    let d = data(100, 1, 1, 14, &config);
    let (train_rows, holdout) = split(100);
    let (a, b) = run(&d, &config, &other, &train_rows, &holdout).await;
    for r in [a, b] {
        assert!(r.unwrap_err().to_string().contains("disagree"));
    }
}
