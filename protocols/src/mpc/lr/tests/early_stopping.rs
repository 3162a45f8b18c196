//! Early stopping: A decides, B follows, both return the best epoch's weights.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_stopping_is_decided_by_a_and_followed_by_b() {
    let config = LrConfig { epochs: 10, batch_size: 128, tolerance: 1.0, ..LrConfig::default() };
    let d = data(800, 2, 2, 13, &config);
    let (train_rows, holdout) = split(800);
    let (a, b) = run(&d, &config, &config, &train_rows, &holdout).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    // With a tolerance of 1.0, the second epoch cannot improve enough.
    assert_eq!((a.epochs_run, b.epochs_run), (2, 2));
    assert!(a.stopped_early && b.stopped_early);
    let p = train_plain(&d.fa, 2, &d.fb, 2, &d.y, &train_rows, &holdout, &config, false);
    assert_eq!(p.epochs_run, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_stopping_returns_the_best_epochs_weights() {
    // A learning rate this large oscillates: the holdout loss goes 1.20, 0.57, 0.94, so training
    // stops after epoch 3 and must return epoch 2's weights, not epoch 3's.
    let config = LrConfig { epochs: 8, batch_size: 128, learning_rate: 7.0, tolerance: 1e-6, ..LrConfig::default() };
    let d = data(1000, 2, 2, 13, &config);
    let (train_rows, holdout) = split(1000);
    let (a, b) = run(&d, &config, &config, &train_rows, &holdout).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.epochs_run, b.epochs_run), (3, 3));
    assert_eq!((a.weights_epoch, b.weights_epoch), (2, 2));
    assert!(a.holdout_loss[1] < a.holdout_loss[0] && a.holdout_loss[1] < a.holdout_loss[2], "{:?}", a.holdout_loss);
    let p = train_plain(&d.fa, 2, &d.fb, 2, &d.y, &train_rows, &holdout, &config, false);
    assert_eq!((p.epochs_run, p.weights_epoch), (3, 2));
    let secure: Vec<f64> = a.weights.iter().chain(&b.weights).chain(&a.intercept).copied().collect();
    assert!(secure.iter().zip(weights(&p)).all(|(x, y)| (x - y).abs() < 2e-3), "{secure:?} vs {:?}", weights(&p));
    // ... which are epoch 2's: the same as two epochs without early stopping, far from three.
    let two = train_plain(
        &d.fa,
        2,
        &d.fb,
        2,
        &d.y,
        &train_rows,
        &holdout,
        &LrConfig { epochs: 2, tolerance: 0.0, ..config.clone() },
        false,
    );
    let three = train_plain(
        &d.fa,
        2,
        &d.fb,
        2,
        &d.y,
        &train_rows,
        &holdout,
        &LrConfig { epochs: 3, tolerance: 0.0, ..config.clone() },
        false,
    );
    assert_eq!(weights(&two), weights(&p));
    assert!(distance(&weights(&three), &secure) > 0.05, "{:?} vs {secure:?}", weights(&three));
    assert_eq!(three.weights_epoch, 3);
}
