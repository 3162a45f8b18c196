//! Two-party runs over `memory_pair`, checked against the plaintext reference ([`super::plain`]),
//! and runs against a peer whose messages are tampered with.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::plain::{self, PlainNode};
use super::wire::pack_bits;
use super::*;
use crate::channel::{Channel, ChannelError, MemoryChannel, memory_pair};
use crate::he::{Encryptor, test_key, test_key_2048};
use crate::mpc::MpcError;

/// Synthetic rows: A's and B's features (standard normal, a share `missing` of them NaN) and labels
/// from a logistic model over `a_weights` and `b_weights`.
struct Data {
    a: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
    labels: Vec<u8>,
}

fn data(n: usize, a_weights: &[f64], b_weights: &[f64], missing: f64, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut col = |_| -> Vec<f64> {
        (0..n).map(|_| if rng.random::<f64>() < missing { f64::NAN } else { rng.random::<f64>() * 4.0 - 2.0 }).collect()
    };
    let a: Vec<Vec<f64>> = (0..a_weights.len()).map(&mut col).collect();
    let b: Vec<Vec<f64>> = (0..b_weights.len()).map(&mut col).collect();
    let labels = (0..n)
        .map(|i| {
            let z: f64 = a
                .iter()
                .zip(a_weights)
                .chain(b.iter().zip(b_weights))
                .map(|(c, w)| w * c[i].clamp(-2.0, 2.0) * (!c[i].is_nan() as u8 as f64))
                .sum();
            (rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())) as u8
        })
        .collect();
    Data { a, b, labels }
}

/// The default hyper-parameters with histogram backend `h`.
fn mode(h: Histograms) -> SbConfig {
    SbConfig { histograms: h, ..SbConfig::default() }
}

struct Run {
    a: Result<SbOutput, MpcError>,
    b: Result<SbOutput, MpcError>,
    xa: BinnedFeatures,
    xb: BinnedFeatures,
}

fn split_rows(n: usize, holdout: usize) -> (Vec<u32>, Vec<u32>) {
    let rows: Vec<u32> = (0..n as u32).collect();
    (rows[holdout..].to_vec(), rows[..holdout].to_vec())
}

fn inputs(d: &Data, train: &[u32], holdout: &[u32], config: &SbConfig) -> (SbInput, SbInput) {
    let n = d.labels.len();
    let (_, xa) = BinnedFeatures::fit(&d.a, n, train, config.max_bins);
    let (_, xb) = BinnedFeatures::fit(&d.b, n, train, config.max_bins);
    let a = SbInput {
        party: Party::A,
        features: xa,
        labels: Some(d.labels.clone()),
        train: train.to_vec(),
        holdout: holdout.to_vec(),
        key: Some(test_key()),
    };
    let b = SbInput {
        party: Party::B,
        features: xb,
        labels: None,
        train: train.to_vec(),
        holdout: holdout.to_vec(),
        key: None,
    };
    (a, b)
}

/// Runs both parties; `tamper_a`/`tamper_b` rewrite one frame the honest A (B) sends.
async fn run_with(
    a: SbInput,
    b: SbInput,
    config: &SbConfig,
    tamper_a: Option<TamperFn>,
    tamper_b: Option<TamperFn>,
) -> Run {
    let (xa, xb) = (a.features.clone(), b.features.clone());
    let (ca, cb) = memory_pair(64);
    let (ca, cb) = (Tampered::new(ca, tamper_a), Tampered::new(cb, tamper_b));
    let fa = async move {
        let r = train(&ca, a, config, None).await;
        drop(ca);
        r
    };
    let fb = async move {
        let r = train(&cb, b, config, None).await;
        drop(cb);
        r
    };
    let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(600), async { futures::join!(fa, fb) })
        .await
        .expect("a party hangs");
    Run { a, b, xa, xb }
}

/// Checks the secure trees against the reference node by node, and returns the number of A and B
/// splits.
fn check_against_plain(run: &Run, d: &Data, train: &[u32], holdout: &[u32], config: &SbConfig) -> (usize, usize) {
    let (a, b) = (run.a.as_ref().expect("A failed"), run.b.as_ref().expect("B failed"));
    let reference = plain::train(&run.xa, &run.xb, &d.labels, train, holdout, config);
    assert_eq!(a.trees.len(), reference.trees.len());
    assert_eq!(b.trees.len(), reference.trees.len());
    assert_eq!(a.holdout_loss, reference.holdout_loss);
    assert_eq!((a.trees_run, b.trees_run), (reference.trees_run, reference.trees_run));
    let (mut a_splits, mut b_splits) = (0, 0);
    for ((ta, tb), tp) in a.trees.iter().zip(&b.trees).zip(&reference.trees) {
        assert_eq!(ta.nodes.len(), tp.len(), "A's tree has the reference's nodes");
        let mut b_own = tb.nodes.iter();
        for (node, &(id, p)) in ta.nodes.iter().zip(tp) {
            assert_eq!(node.id, id);
            match (node.split, p) {
                (Split::Leaf { weight }, PlainNode::Leaf { weight: w }) => assert_eq!(weight, w),
                (Split::Own { feature, bin }, PlainNode::Split { party: 0, feature: f, bin: j, gain }) => {
                    assert_eq!((feature, bin, node.gain), (f, j, gain));
                    a_splits += 1;
                }
                (Split::Peer { feature, bin }, PlainNode::Split { party: 1, feature: f, bin: j, gain }) => {
                    assert_eq!((feature, bin, node.gain), (f, j, gain));
                    let own = b_own.next().expect("B has the split");
                    assert_eq!((own.id, own.split), (id, Split::Own { feature: f, bin: j }));
                    b_splits += 1;
                }
                (x, y) => panic!("node {id}: secure {x:?}, reference {y:?}"),
            }
        }
        assert!(b_own.next().is_none(), "B has no other nodes");
    }
    (a_splits, b_splits)
}

/// The setup and per-tree figures: one entry per tree run, and every byte one party counts as
/// sent in a phase the other counts as received in the same phase (the phases line up: each ends
/// with a message the other waits for).
fn check_phase_stats(run: &Run) {
    let (a, b) = (run.a.as_ref().unwrap(), run.b.as_ref().unwrap());
    assert_eq!(a.per_tree.len(), a.trees_run as usize);
    assert_eq!(b.per_tree.len(), b.trees_run as usize);
    assert!(a.setup.bytes_sent > 0 && a.setup.bytes_received > 0);
    for (pa, pb) in std::iter::once((&a.setup, &b.setup)).chain(a.per_tree.iter().zip(&b.per_tree)) {
        assert!(pa.bytes_sent > 0 && pa.seconds >= 0.0);
        assert_eq!(pa.bytes_sent, pb.bytes_received);
        assert_eq!(pa.bytes_received, pb.bytes_sent);
    }
}

/// Joint prediction of every row equals the reference's scores.
async fn check_prediction(run: &Run, d: &Data, config: &SbConfig, train: &[u32], holdout: &[u32]) {
    let (a, b) = (run.a.as_ref().unwrap(), run.b.as_ref().unwrap());
    let (ca, cb) = memory_pair(64);
    let (ma, mb) = futures::join!(predict(&ca, Party::A, &a.trees, &run.xa), predict(&cb, Party::B, &b.trees, &run.xb));
    let (ma, mb) = (ma.unwrap(), mb.unwrap());
    assert!(mb.is_empty());
    let reference = plain::train(&run.xa, &run.xb, &d.labels, train, holdout, config);
    for (r, m) in ma.iter().enumerate() {
        let expected: f64 = reference.trees.iter().map(|t| plain::score_row(t, &run.xa, &run.xb, r)).sum();
        assert_eq!(*m, expected, "row {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_and_predictions_equal_the_plaintext_reference_he() {
    trees_and_predictions_equal_the_plaintext_reference(Histograms::He).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_and_predictions_equal_the_plaintext_reference_ot() {
    trees_and_predictions_equal_the_plaintext_reference(Histograms::Ot).await
}

async fn trees_and_predictions_equal_the_plaintext_reference(h: Histograms) {
    let d = data(400, &[1.5, -1.0, 0.0], &[2.0, 0.0, -1.5, 0.5], 0.05, 1);
    let (train_rows, holdout) = split_rows(400, 60);
    let config = SbConfig { trees: 3, max_depth: 3, subsample: 0.8, seed: 9, max_bins: 9, ..mode(h) };
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let run = run_with(a, b, &config, None, None).await;
    let (a_splits, b_splits) = check_against_plain(&run, &d, &train_rows, &holdout, &config);
    assert!(a_splits > 0 && b_splits > 0, "both parties' features split ({a_splits}, {b_splits})");
    let out = run.a.as_ref().unwrap();
    assert_eq!(out.holdout_loss.len(), 3);
    assert!(out.holdout_loss[2] < out.holdout_loss[0], "the model learns: {:?}", out.holdout_loss);
    assert_eq!(out.peer_features, 4);
    check_phase_stats(&run);
    check_prediction(&run, &d, &config, &train_rows, &holdout).await;
    // Column subsampling: 2 of A's 3 and 2 of B's 4 features per tree.
    let config = SbConfig { colsample: 0.5, seed: 10, ..config };
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let run = run_with(a, b, &config, None, None).await;
    check_against_plain(&run, &d, &train_rows, &holdout, &config);
    check_prediction(&run, &d, &config, &train_rows, &holdout).await;
    for t in 0..3 {
        let (fa, fb) = (sample_features(3, &config, t, Party::A), sample_features(4, &config, t, Party::B));
        assert_eq!((fa.len(), fb.len()), (2, 2));
        for n in &run.a.as_ref().unwrap().trees[t as usize].nodes {
            match n.split {
                Split::Own { feature, .. } => assert!(fa.contains(&feature)),
                Split::Peer { feature, .. } => assert!(fb.contains(&feature)),
                Split::Leaf { .. } => {}
            }
        }
    }
}

/// With the `ot` backend, trees kept expanded for all of B's features, for some (a budget of
/// two of its four features: 340 training rows × 9 leaves × 16 bytes each) or none give the
/// reference's trees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_leaves_give_the_reference_trees() {
    let d = data(400, &[1.5, -1.0, 0.0], &[2.0, 0.0, -1.5, 0.5], 0.05, 3);
    let (train_rows, holdout) = split_rows(400, 60);
    for keep in [u64::MAX, 2 * 340 * 9 * 16 + 100, 0] {
        let config = SbConfig { trees: 2, max_depth: 3, max_bins: 9, kept_leaves_bytes: keep, ..mode(Histograms::Ot) };
        let (a, b) = inputs(&d, &train_rows, &holdout, &config);
        let run = run_with(a, b, &config, None, None).await;
        let (_, b_splits) = check_against_plain(&run, &d, &train_rows, &holdout, &config);
        assert!(b_splits > 0, "B's features split");
        check_prediction(&run, &d, &config, &train_rows, &holdout).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_match_the_reference_he() {
    edge_cases_match_the_reference(mode(Histograms::He)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_match_the_reference_ot() {
    edge_cases_match_the_reference(mode(Histograms::Ot)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_match_the_reference_hidden_partitions() {
    edge_cases_match_the_reference(hidden(mode(Histograms::Ot))).await
}

/// `modes`: the backend and mode (other fields are the cases').
async fn edge_cases_match_the_reference(modes: SbConfig) {
    let base = SbConfig { trees: 2, max_depth: 3, max_bins: 5, ..modes };
    // (what, rows, A's weights, B's weights, missing share, config)
    type Case = (&'static str, usize, Vec<f64>, Vec<f64>, f64, SbConfig);
    let cases: Vec<Case> = vec![
        ("one row", 1, vec![1.0], vec![1.0], 0.0, base.clone()),
        ("depth 1", 120, vec![1.0, 1.0], vec![2.0], 0.0, SbConfig { max_depth: 1, ..base.clone() }),
        ("unequal feature counts", 150, vec![2.0], vec![0.5, -1.0, 1.0, 0.0, 2.0], 0.0, base.clone()),
        ("missing values", 150, vec![1.0, 1.0], vec![2.0, -2.0], 0.4, base.clone()),
        ("B without features", 100, vec![2.0, -1.0], vec![], 0.0, base.clone()),
        (
            "min child weight and gamma",
            150,
            vec![2.0],
            vec![2.0],
            0.0,
            SbConfig { min_child_weight: 5.0, gamma: 0.5, lambda: 3.0, ..base.clone() },
        ),
    ];
    for (what, n, wa, wb, missing, config) in cases {
        let d = data(n, &wa, &wb, missing, 2);
        let (train_rows, holdout) = split_rows(n, n / 5);
        let (a, b) = inputs(&d, &train_rows, &holdout, &config);
        let run = run_with(a, b, &config, None, None).await;
        let (sa, sb) = check_against_plain(&run, &d, &train_rows, &holdout, &config);
        if what == "one row" {
            assert_eq!((sa, sb), (0, 0), "{what}");
        }
        if what == "depth 1" {
            assert!(run.a.as_ref().unwrap().trees.iter().all(|t| t.nodes.len() <= 3), "{what}");
        }
        check_prediction(&run, &d, &config, &train_rows, &holdout).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_labels_and_useless_b_features_give_no_b_splits_he() {
    constant_labels_and_useless_b_features_give_no_b_splits(Histograms::He).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_labels_and_useless_b_features_give_no_b_splits_ot() {
    constant_labels_and_useless_b_features_give_no_b_splits(Histograms::Ot).await
}

async fn constant_labels_and_useless_b_features_give_no_b_splits(h: Histograms) {
    let config = SbConfig { trees: 2, max_depth: 3, max_bins: 9, ..mode(h) };
    // B's features are constant: it never wins a split; all labels equal: nothing splits at all.
    let mut d = data(200, &[2.0, -2.0], &[0.0, 0.0], 0.0, 3);
    d.b.iter_mut().for_each(|c| c.fill(1.5));
    let (train_rows, holdout) = split_rows(200, 0);
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let run = run_with(a, b, &config, None, None).await;
    let (sa, sb) = check_against_plain(&run, &d, &train_rows, &holdout, &config);
    assert!(sa > 0 && sb == 0, "{sa} {sb}");
    d.labels.fill(1);
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let run = run_with(a, b, &config, None, None).await;
    assert_eq!(check_against_plain(&run, &d, &train_rows, &holdout, &config), (0, 0));
    check_prediction(&run, &d, &config, &train_rows, &holdout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_stopping_keeps_the_best_trees_on_both_sides_he() {
    early_stopping_keeps_the_best_trees_on_both_sides(mode(Histograms::He)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_stopping_keeps_the_best_trees_on_both_sides_ot() {
    early_stopping_keeps_the_best_trees_on_both_sides(mode(Histograms::Ot)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_stopping_keeps_the_best_trees_on_both_sides_hidden_partitions() {
    early_stopping_keeps_the_best_trees_on_both_sides(hidden(mode(Histograms::Ot))).await
}

/// `modes`: the backend and mode (other fields are the test's).
async fn early_stopping_keeps_the_best_trees_on_both_sides(modes: SbConfig) {
    let d = data(300, &[1.0], &[1.0], 0.0, 4);
    let (train_rows, holdout) = split_rows(300, 80);
    // A large tolerance stops after the second tree; a large learning rate overfits quickly.
    let config = SbConfig {
        trees: 6,
        max_depth: 4,
        learning_rate: 1.0,
        lambda: 0.0,
        min_child_weight: 0.0,
        tolerance: 0.05,
        max_bins: 17,
        ..modes
    };
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let run = run_with(a, b, &config, None, None).await;
    check_against_plain(&run, &d, &train_rows, &holdout, &config);
    let (a, b) = (run.a.as_ref().unwrap(), run.b.as_ref().unwrap());
    assert!(a.stopped_early && b.stopped_early);
    assert!(a.trees_run < 6);
    let best = a.holdout_loss.iter().enumerate().min_by(|x, y| x.1.total_cmp(y.1)).unwrap().0 + 1;
    assert_eq!(a.trees.len(), best);
    assert_eq!(b.trees.len(), best);
}

// ---- a peer whose messages are tampered with ----

pub(crate) type TamperFn = Box<dyn Fn(usize, &Bytes) -> Option<Bytes> + Send + Sync>;

/// A channel that lets `tamper` replace one frame it sends (the first for which it returns Some).
/// Also used by the binning protocol's tests.
pub(crate) struct Tampered {
    inner: MemoryChannel,
    tamper: Option<TamperFn>,
    sent: AtomicUsize,
    done: AtomicBool,
}

impl Tampered {
    pub(crate) fn new(inner: MemoryChannel, tamper: Option<TamperFn>) -> Self {
        Self { inner, tamper, sent: AtomicUsize::new(0), done: AtomicBool::new(false) }
    }
}

impl Channel for Tampered {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        let i = self.sent.fetch_add(1, Ordering::SeqCst);
        let frame = match &self.tamper {
            Some(t) if !self.done.load(Ordering::SeqCst) => match t(i, &frame) {
                Some(new) => {
                    self.done.store(true, Ordering::SeqCst);
                    new
                }
                None => frame,
            },
            _ => frame,
        };
        self.inner.send(frame).await
    }
    async fn recv(&self) -> Result<Bytes, ChannelError> {
        self.inner.recv().await
    }
}

pub(crate) fn with(frame: &Bytes, f: impl FnOnce(&mut Vec<u8>)) -> Option<Bytes> {
    let mut v = frame.to_vec();
    f(&mut v);
    Some(Bytes::from(v))
}

/// Runs the small fixture with one tampered frame from `from` and checks that the victim fails
/// with an error (no panic, no hang) mentioning `expect`.
async fn attack(from: Party, what: &str, expect: &str, tamper: TamperFn) {
    attack_depth(from, what, expect, tamper, 3).await
}

async fn attack_depth(from: Party, what: &str, expect: &str, tamper: TamperFn, max_depth: u32) {
    attack_in(Histograms::He, from, what, expect, tamper, max_depth).await
}

async fn attack_in(h: Histograms, from: Party, what: &str, expect: &str, tamper: TamperFn, max_depth: u32) {
    let d = data(120, &[1.0, -1.0], &[2.0, 1.0, 0.0], 0.0, 5);
    let (train_rows, holdout) = split_rows(120, 17);
    let config = SbConfig { trees: 2, max_depth, max_bins: 9, ..mode(h) };
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let run = match from {
        Party::A => run_with(a, b, &config, Some(tamper), None).await,
        Party::B => run_with(a, b, &config, None, Some(tamper)).await,
    };
    let victim = match from {
        Party::A => run.b,
        Party::B => run.a,
    };
    let err = victim.expect_err(what).to_string();
    assert!(err.contains(expect), "{what}: {err}");
}

const W: usize = 384;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_from_a_are_errors_at_b() {
    // Frames A sends: 0 hello head, 1 hello body, 2 key size, 3 public key, 4 sample bits (13 bytes
    // for 103 training rows: one padding bit), 5 ciphertexts, then per level: decisions, A's
    // partitions.
    attack(
        Party::A,
        "other parameters",
        "disagree",
        Box::new(|i, f| (i == 0).then(|| with(f, |v| v[0] ^= 1)).flatten()),
    )
    .await;
    attack(
        Party::A,
        "unknown key size",
        "announces a 1024-bit key",
        Box::new(|i, f| (i == 2).then(|| with(f, |v| v.copy_from_slice(&1024u16.to_le_bytes()))).flatten()),
    )
    .await;
    attack(
        Party::A,
        "truncated key size",
        "byte frame",
        Box::new(|i, f| (i == 2).then(|| with(f, |v| v.truncate(1))).flatten()),
    )
    .await;
    attack(
        Party::A,
        "a 3072-bit key announced as 2048",
        "byte frame",
        Box::new(|i, f| (i == 2).then(|| with(f, |v| v.copy_from_slice(&2048u16.to_le_bytes()))).flatten()),
    )
    .await;
    attack(
        Party::A,
        "truncated key",
        "expected 1152",
        Box::new(|i, f| (i == 3).then(|| with(f, |v| v.truncate(1000))).flatten()),
    )
    .await;
    attack(
        Party::A,
        "tiny modulus",
        "modulus",
        Box::new(|i, f| {
            (i == 3)
                .then(|| {
                    with(f, |v| {
                        v[..W].fill(0);
                        v[0] = 0xfb;
                    })
                })
                .flatten()
        }),
    )
    .await;
    attack(
        Party::A,
        "generator out of range",
        "generator",
        Box::new(|i, f| (i == 3).then(|| with(f, |v| v[W..2 * W].fill(0xff))).flatten()),
    )
    .await;
    attack(
        Party::A,
        "sample padding bits",
        "padding",
        Box::new(|i, f| (i == 4).then(|| with(f, |v| *v.last_mut().unwrap() |= 0x80)).flatten()),
    )
    .await;
    attack(
        Party::A,
        "oversized sample",
        "expected 13",
        Box::new(|i, f| (i == 4).then(|| with(f, |v| v.push(0))).flatten()),
    )
    .await;
    attack(
        Party::A,
        "ciphertext out of range",
        "out of range",
        Box::new(|i, f| (i == 5).then(|| with(f, |v| v[W..2 * W].fill(0xff))).flatten()),
    )
    .await;
    attack(
        Party::A,
        "zero ciphertext",
        "out of range",
        Box::new(|i, f| (i == 5).then(|| with(f, |v| v[..W].fill(0))).flatten()),
    )
    .await;
    attack(
        Party::A,
        "truncated ciphertexts",
        "byte frame",
        Box::new(|i, f| (i == 5).then(|| with(f, |v| v.truncate(v.len() - 1))).flatten()),
    )
    .await;
    // The root's decisions: one node, 6 bytes.
    attack(
        Party::A,
        "unknown decision",
        "bad split decision",
        Box::new(|i, f| (i == 6).then(|| with(f, |v| v[0] = 9)).flatten()),
    )
    .await;
    attack(
        Party::A,
        "B feature out of range",
        "bad split decision",
        Box::new(|i, f| {
            (i == 6)
                .then(|| {
                    with(f, |v| {
                        v[0] = 2;
                        v[1] = 3;
                    })
                })
                .flatten()
        }),
    )
    .await;
    attack(
        Party::A,
        "B bin past the last",
        "bad split decision",
        Box::new(|i, f| {
            (i == 6)
                .then(|| {
                    with(f, |v| {
                        v[0] = 2;
                        v[1..5].fill(0);
                        v[5] = 200;
                    })
                })
                .flatten()
        }),
    )
    .await;
    attack(
        Party::A,
        "truncated decisions",
        "byte frame",
        Box::new(|i, f| (i == 6).then(|| with(f, |v| v.truncate(5))).flatten()),
    )
    .await;
    // Depth 1: the only one-byte frames A sends are the flags (its partition of 103 rows is 13).
    attack_depth(
        Party::A,
        "bad early-stopping flag",
        "flag",
        Box::new(|_, f| (f.len() == 1).then(|| Bytes::from_static(&[9]))),
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_from_b_are_errors_at_a() {
    // Frames B sends: 0 hello head, 1 hello body (3 features × 2 bytes), then histograms (a
    // multiple of 384 bytes), partitions, directions.
    attack(
        Party::B,
        "too many features",
        "features",
        Box::new(|i, f| {
            (i == 0).then(|| with(f, |v| v[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes()))).flatten()
        }),
    )
    .await;
    attack(
        Party::B,
        "bin count out of range",
        "bin count",
        Box::new(|i, f| (i == 1).then(|| with(f, |v| v[0..2].copy_from_slice(&300u16.to_le_bytes()))).flatten()),
    )
    .await;
    attack(
        Party::B,
        "truncated bins",
        "byte frame",
        Box::new(|i, f| (i == 1).then(|| with(f, |v| v.truncate(4))).flatten()),
    )
    .await;
    let hist = |f: &Bytes| f.len() >= W && f.len().is_multiple_of(W);
    attack(
        Party::B,
        "histogram cell out of range",
        "out of range",
        Box::new(move |_, f| hist(f).then(|| with(f, |v| v[..W].fill(0xff))).flatten()),
    )
    .await;
    attack(
        Party::B,
        "short histogram",
        "byte frame",
        Box::new(move |_, f| hist(f).then(|| with(f, |v| v.truncate(v.len() - W))).flatten()),
    )
    .await;
    attack(
        Party::B,
        "oversized histogram",
        "byte frame",
        Box::new(move |_, f| hist(f).then(|| with(f, |v| v.extend_from_slice(&[1; W]))).flatten()),
    )
    .await;
    // A cell that decrypts to garbage (not a packed sum of at most 2^20 rows).
    attack(
        Party::B,
        "garbage sum",
        "histogram sum",
        Box::new(move |_, f| {
            hist(f)
                .then(|| {
                    with(f, |v| {
                        v[..W].fill(0x11);
                        v[W - 1] = 0;
                    })
                })
                .flatten()
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_contradicts_the_histogram_is_refused_he() {
    a_partition_that_contradicts_the_histogram_is_refused(Histograms::He).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_contradicts_the_histogram_is_refused_ot() {
    a_partition_that_contradicts_the_histogram_is_refused(Histograms::Ot).await
}

async fn a_partition_that_contradicts_the_histogram_is_refused(h: Histograms) {
    // B's first partition frame (13 bytes for the 104-row root would be the root's, if B wins it):
    // flip one row's direction.
    let d = data(120, &[0.0], &[3.0], 0.0, 6);
    let (train_rows, holdout) = split_rows(120, 16);
    let config = SbConfig { trees: 1, max_depth: 2, max_bins: 9, ..mode(h) };
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let tamper: TamperFn = Box::new(|_, f| (f.len() == 13).then(|| with(f, |v| v[0] ^= 1)).flatten());
    let run = run_with(a, b, &config, None, Some(tamper)).await;
    let err = run.a.expect_err("tampered partition").to_string();
    assert!(err.contains("does not match its histogram"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_refuses_a_mismatched_or_malformed_peer_he() {
    prediction_refuses_a_mismatched_or_malformed_peer(Histograms::He).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_refuses_a_mismatched_or_malformed_peer_ot() {
    prediction_refuses_a_mismatched_or_malformed_peer(Histograms::Ot).await
}

async fn prediction_refuses_a_mismatched_or_malformed_peer(h: Histograms) {
    let d = data(100, &[1.0], &[2.0], 0.0, 7);
    let (train_rows, holdout) = split_rows(100, 0);
    let config = SbConfig { trees: 2, max_depth: 2, max_bins: 9, ..mode(h) };
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let run = run_with(a, b, &config, None, None).await;
    let (ta, tb) = (run.a.as_ref().unwrap().trees.clone(), run.b.as_ref().unwrap().trees.clone());
    assert!(tb.iter().any(|t| !t.nodes.is_empty()), "B has splits to route");
    // One tree fewer on B's side: the hello differs.
    let (ca, cb) = memory_pair(8);
    let (ra, _) = futures::join!(predict(&ca, Party::A, &ta, &run.xa), predict(&cb, Party::B, &tb[..1], &run.xb));
    assert!(ra.unwrap_err().to_string().contains("disagree"));
    // Directions with padding bits set (100 rows: 13 bytes per node).
    let (ca, cb) = memory_pair(8);
    let cb = Tampered::new(cb, Some(Box::new(|i, f| (i == 1).then(|| with(f, |v| v[12] |= 0x80)).flatten())));
    let (ra, _) = futures::join!(predict(&ca, Party::A, &ta, &run.xa), predict(&cb, Party::B, &tb, &run.xb));
    assert!(ra.unwrap_err().to_string().contains("padding"));
    // Truncated directions.
    let (ca, cb) = memory_pair(8);
    let cb = Tampered::new(cb, Some(Box::new(|i, f| (i == 1).then(|| with(f, |v| v.truncate(3))).flatten())));
    let (ra, _) = futures::join!(predict(&ca, Party::A, &ta, &run.xa), predict(&cb, Party::B, &tb, &run.xb));
    assert!(ra.unwrap_err().to_string().contains("byte frame"));
}

// ---- B's encrypted histograms, the key sizes ----

/// B's encrypted histogram (single features and joint pairs alike) decrypts to the plaintext
/// histogram, for row sets from empty to all rows, with bins that pair and bins that do not.
#[test]
fn encrypted_histograms_equal_plaintext_histograms() {
    let key = test_key();
    let mut rng = StdRng::seed_from_u64(3);
    let n = 300;
    let bins = [5u32, 5, 3, 2, 33, 9, 4];
    let columns: Vec<Vec<u8>> = bins.iter().map(|&b| (0..n).map(|_| rng.random_range(0..b) as u8).collect()).collect();
    let x = BinnedFeatures { rows: n, columns, bins: bins.to_vec() };
    let layout = Layout::new(&x.bins);
    let gh: Vec<[i64; 2]> = (0..n).map(|_| gradient(rng.random::<f64>() * 6.0 - 3.0, rng.random_range(0..2))).collect();
    let enc = Encryptor::for_key_holder(&key).unwrap();
    let cts: Vec<_> = gh.iter().map(|&v| enc.encrypt(pack(v), &mut rng).unwrap()).collect();
    let slot: Vec<u32> = (0..n as u32).collect();
    let all: Vec<u32> = (0..n as u32).collect();
    let some: Vec<u32> = all.iter().copied().filter(|r| r % 3 == 1).collect();
    for (rows, feats) in [
        (all.clone(), (0..7).collect::<Vec<u32>>()),
        (some, vec![0, 1, 4, 5, 6]),
        (vec![7], vec![2, 3]),
        (vec![], vec![0, 1]),
        (all, vec![4]),
    ] {
        let groups = super::passive::pair_features(&x, &feats, rows.len());
        assert_eq!(groups.concat(), feats, "groups keep the features in order");
        for g in &groups {
            assert!(
                g.len() == 1 || 2 * x.bins[g[0] as usize] * x.bins[g[1] as usize] <= rows.len() as u32,
                "{g:?} pairs only when cheaper"
            );
        }
        let bytes = super::passive::encrypted_histogram(&x, &feats, &key.public, &cts, &slot, &rows);
        let w = key.public.ciphertext_bytes();
        let got: Vec<[i64; 2]> = bytes
            .chunks_exact(w)
            .map(|c| unpack(key.secret.decrypt(&key.public.ciphertext(c).unwrap()).unwrap()).unwrap())
            .collect();
        let plain = split::histogram(&x, &layout, &gh, &rows);
        let expected: Vec<[i64; 2]> = feats.iter().flat_map(|&f| plain[layout.range(f as usize)].to_vec()).collect();
        assert_eq!(got, expected, "{} rows, features {feats:?}", rows.len());
    }
    // With 300 rows, 5×5 and 3×2 bins pair at the root; 33×9 does not.
    assert_eq!(
        super::passive::pair_features(&x, &[0, 1, 2, 3, 4, 5, 6], 300),
        vec![vec![0, 1], vec![2, 3], vec![4], vec![5, 6]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2048_bit_key_gives_the_same_trees_and_b_can_refuse_it() {
    let d = data(200, &[1.5, -1.0], &[2.0, -1.5, 0.5], 0.05, 4);
    let (train_rows, holdout) = split_rows(200, 30);
    let config = SbConfig { trees: 2, max_depth: 3, max_bins: 9, ..mode(Histograms::He) };
    let (mut a, b) = inputs(&d, &train_rows, &holdout, &config);
    a.key = Some(test_key_2048());
    let run = run_with(a, b, &config, None, None).await;
    let (_, b_splits) = check_against_plain(&run, &d, &train_rows, &holdout, &config);
    assert!(b_splits > 0);
    check_prediction(&run, &d, &config, &train_rows, &holdout).await;
    // B requiring 3072 bits refuses A's 2048-bit key before reading it.
    let strict = SbConfig { min_key_bits: 3072, ..config.clone() };
    let (mut a, b) = inputs(&d, &train_rows, &holdout, &strict);
    a.key = Some(test_key_2048());
    let run = run_with(a, b, &strict, None, None).await;
    let err = run.b.expect_err("a key below B's minimum").to_string();
    assert!(err.contains("requires 3072"), "{err}");
    assert!(run.a.is_err(), "A fails too once B hangs up");
    // A 3072-bit key is accepted under either minimum (the default run above used 2048).
    let (a, b) = inputs(&d, &train_rows, &holdout, &strict);
    let run = run_with(a, b, &strict, None, None).await;
    check_against_plain(&run, &d, &train_rows, &holdout, &strict);
    assert!(SbConfig { min_key_bits: 1024, ..config }.validate().is_err());
}

// ---- the `ot` histogram backend ----

/// The attack fixture's B features, binned as [`attack_in`] bins them: the length in bytes of B's
/// answer for one node (g and h shares of every column, bins 1.. of each feature).
fn ot_answer_bytes() -> usize {
    let d = data(120, &[1.0, -1.0], &[2.0, 1.0, 0.0], 0.0, 5);
    let (train_rows, _) = split_rows(120, 17);
    let (_, xb) = BinnedFeatures::fit(&d.b, 120, &train_rows, 9);
    2 * 8 * xb.bins.iter().map(|&b| b as usize - 1).sum::<usize>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ot_histogram_frames_are_errors() {
    let ans = ot_answer_bytes();
    // B's answers: a cell out of range, short, long (the next frame A expects is a partition or
    // direction frame, so an extra word is a frame of the wrong length).
    let cases: Vec<(&str, &str, TamperFn)> = vec![
        (
            "answer cell out of range",
            "out of range",
            Box::new(move |_, f| {
                (f.len() == ans).then(|| with(f, |v| v[..8].copy_from_slice(&(1u64 << 62).to_le_bytes()))).flatten()
            }),
        ),
        (
            "short answer",
            "vector frame",
            Box::new(move |_, f| (f.len() == ans).then(|| with(f, |v| v.truncate(ans - 8))).flatten()),
        ),
        (
            "long answer",
            "vector frame",
            Box::new(move |_, f| (f.len() == ans).then(|| with(f, |v| v.extend_from_slice(&[0; 8]))).flatten()),
        ),
    ];
    for (what, expect, tamper) in cases {
        attack_in(Histograms::Ot, Party::B, what, expect, tamper, 3).await;
    }
    // A's root message: 103 rows × 3 B features, g and h paired, 8 bytes each.
    let msg = 103 * 3 * 2 * 8;
    attack_in(
        Histograms::Ot,
        Party::A,
        "short message",
        "vector frame",
        Box::new(move |_, f| (f.len() == msg).then(|| with(f, |v| v.truncate(msg - 8))).flatten()),
        3,
    )
    .await;
    // A's parameters say `he`, B's `ot`: the hello's digest differs.
    let d = data(60, &[1.0], &[1.0], 0.0, 8);
    let (train_rows, holdout) = split_rows(60, 0);
    let config = SbConfig { trees: 1, max_depth: 2, max_bins: 5, ..mode(Histograms::Ot) };
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let (ca, cb) = memory_pair(64);
    let he = SbConfig { histograms: Histograms::He, ..config.clone() };
    let (ra, rb) = futures::join!(train(&ca, a, &he, None), train(&cb, b, &config, None));
    assert!(ra.unwrap_err().to_string().contains("disagree"));
    assert!(rb.unwrap_err().to_string().contains("disagree"));
}

/// Progress: both sides report the setup, then every tree run (early stopping included) in
/// order; A's losses are the output's holdout losses, B never gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_the_setup_and_every_tree() {
    use std::sync::Mutex;
    let d = data(300, &[1.0, -0.5], &[2.0, -1.5], 0.1, 5);
    for (tolerance, holdout_share) in [(0.0, 60), (0.05, 60), (0.0, 0)] {
        let (train_rows, holdout) = split_rows(300, holdout_share);
        let config = SbConfig { trees: 6, max_depth: 2, max_bins: 5, tolerance, ..mode(Histograms::Ot) };
        let (a, b) = inputs(&d, &train_rows, &holdout, &config);
        let (ca, cb) = memory_pair(64);
        let seen: [Arc<Mutex<Vec<SbProgress>>>; 2] = Default::default();
        let hook = |i: usize| -> Option<SbProgressFn> {
            let seen = seen[i].clone();
            Some(Arc::new(move |p| seen.lock().unwrap().push(p)))
        };
        let (ra, rb) = futures::join!(train(&ca, a, &config, hook(0)), train(&cb, b, &config, hook(1)));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.trees_run, rb.trees_run);
        if tolerance > 0.0 {
            assert!(ra.stopped_early, "tolerance {tolerance}: the run should stop early");
        }
        for (i, seen) in seen.iter().enumerate() {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), ra.trees_run as usize + 1, "party {i}");
            assert_eq!(seen[0], SbProgress { trees_done: 0, trees: 6, setup: true, loss: None });
            for (t, p) in seen[1..].iter().enumerate() {
                let loss = (i == 0 && !holdout.is_empty()).then(|| ra.holdout_loss[t]);
                assert_eq!(*p, SbProgress { trees_done: t as u32 + 1, trees: 6, setup: false, loss }, "party {i}");
            }
        }
    }
}

/// With `ot`, A needs no OU key; the trees are the reference's, and the unsorted training list
/// (the kept correlations follow the ascending order on both sides) does not matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ot_needs_no_key_and_any_training_order() {
    let d = data(250, &[1.0, -0.5], &[2.0, -1.5, 0.5], 0.1, 11);
    let (mut train_rows, holdout) = split_rows(250, 40);
    train_rows.reverse();
    train_rows.swap(3, 100);
    let config = SbConfig { trees: 2, max_depth: 4, max_bins: 17, subsample: 0.7, seed: 3, ..mode(Histograms::Ot) };
    let (mut a, b) = inputs(&d, &train_rows, &holdout, &config);
    a.key = None;
    let run = run_with(a, b, &config, None, None).await;
    let (_, b_splits) = check_against_plain(&run, &d, &train_rows, &holdout, &config);
    assert!(b_splits > 0);
    check_prediction(&run, &d, &config, &train_rows, &holdout).await;
    let t = run.a.as_ref().unwrap().timings;
    assert!(t.setup > 0.0 && t.encrypt == 0.0 && t.decrypt == 0.0, "{t:?}");
    // With `he`, A must bring a key.
    let he = SbConfig { histograms: Histograms::He, ..config };
    let (mut a, _) = inputs(&d, &train_rows, &holdout, &he);
    a.key = None;
    assert!(super::setup::check_input(&a, &he).is_err());
}

/// The kept one-hot correlations over picked rows: the backward product of B's one-hot bins with y
/// equals the plaintext per-bin sums, for subsets from empty to all rows; a list that is not
/// strictly ascending, or out of range, is refused; a use id is single-use per session. A keeps
/// every feature's leaves expanded and B two of its four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picked_row_backward_products_equal_plaintext_bin_sums() {
    let mut rng = StdRng::seed_from_u64(12);
    let n = 300;
    let bins = [5u32, 2, 33, 9];
    let columns: Vec<Vec<u8>> = bins.iter().map(|&b| (0..n).map(|_| rng.random_range(0..b) as u8).collect()).collect();
    let x = Arc::new(BinnedFeatures { rows: n, columns, bins: bins.to_vec() });
    let kept: Vec<u32> = (0..n as u32).filter(|r| r % 7 != 3).collect();
    let (ca, cb) = memory_pair(64);
    let (s, c) = futures::join!(
        // A keeps every feature's leaves, B its first two features' (a local choice each).
        super::ot_hist::setup_sender(&ca, &bins, kept.len(), u64::MAX),
        super::ot_hist::setup_chooser(&cb, &x, &kept, (kept.len() * (5 + 2) * 16) as u64)
    );
    let (s, c) = (s.unwrap(), c.unwrap());
    let cols = super::ot_hist::ColumnLayout::new(&bins);
    let all: Vec<u32> = (0..kept.len() as u32).collect();
    for (k, pick) in
        [all.clone(), all.iter().copied().filter(|p| p % 3 == 0).collect(), vec![5], vec![]].into_iter().enumerate()
    {
        let y: Vec<u64> = pick.iter().map(|_| rng.random::<u64>()).collect();
        let pick: Arc<[u32]> = pick.into();
        let (msg, mine) = s.session_rows(k as u64, pick.clone()).backward(&y).unwrap();
        let theirs = c.session_rows(k as u64, pick.clone()).backward(&msg).unwrap();
        for (f, &b) in bins.iter().enumerate() {
            for bin in 1..b as usize {
                let col = cols.range(f).start + bin - 1;
                let expected = pick
                    .iter()
                    .zip(&y)
                    .filter(|(p, _)| x.columns[f][kept[**p as usize] as usize] as usize == bin)
                    .fold(0u64, |a, (_, v)| a.wrapping_add(*v));
                assert_eq!(mine[col].wrapping_add(theirs[col]), expected, "pick {k}, feature {f}, bin {bin}");
            }
        }
    }
    let session = s.session_rows(9, vec![1, 2].into());
    assert!(session.backward(&[1, 2]).is_ok());
    assert!(session.backward(&[1, 2]).is_err(), "a use is single-use");
    for bad in [vec![2u32, 1], vec![1, 1], vec![kept.len() as u32]] {
        let y = vec![0u64; bad.len()];
        assert!(s.session_rows(10, bad.clone().into()).backward(&y).is_err(), "{bad:?}");
        let msg = vec![0u64; bad.len() * bins.len()];
        assert!(c.session_rows(10, bad.clone().into()).backward(&msg).is_err(), "{bad:?}");
    }
}

// ---- hidden partitions (the privacy-enhanced mode) ----

fn hidden(config: SbConfig) -> SbConfig {
    SbConfig { hide_partitions: true, ..config }
}

/// With hidden partitions the trees, losses and predictions are still the reference's: with row
/// and column sampling, kept trees or not, and deeper trees (the edge cases and early stopping:
/// the tests above, in this mode too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_partitions_give_the_reference_trees() {
    let d = data(400, &[1.5, -1.0, 0.0], &[2.0, 0.0, -1.5, 0.5], 0.05, 1);
    let (train_rows, holdout) = split_rows(400, 60);
    let base = hidden(SbConfig { trees: 3, max_depth: 3, max_bins: 9, ..mode(Histograms::Ot) });
    let configs = [
        SbConfig { subsample: 0.8, seed: 9, ..base.clone() },
        SbConfig { colsample: 0.5, seed: 10, kept_leaves_bytes: u64::MAX, ..base.clone() },
        SbConfig { max_depth: 5, min_child_weight: 0.0, lambda: 0.1, ..base.clone() },
    ];
    for config in configs {
        let (a, b) = inputs(&d, &train_rows, &holdout, &config);
        let run = run_with(a, b, &config, None, None).await;
        let (a_splits, b_splits) = check_against_plain(&run, &d, &train_rows, &holdout, &config);
        assert!(a_splits > 0 && b_splits > 0, "both parties' features split ({a_splits}, {b_splits})");
        check_phase_stats(&run);
        check_prediction(&run, &d, &config, &train_rows, &holdout).await;
    }
}

/// A splits the root on its own feature: in the standard mode B receives that partition of the
/// sample (a frame of its bits), with hidden partitions no frame A sends holds it, and A sends
/// one frame fewer per level it decides on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_partitions_send_b_none_of_as_partitions() {
    let d = data(200, &[3.0], &[0.5], 0.0, 7);
    let (train_rows, holdout) = split_rows(200, 40);
    let mut frames = Vec::new();
    for hide in [false, true] {
        let config = SbConfig { trees: 1, max_depth: 2, max_bins: 9, hide_partitions: hide, ..mode(Histograms::Ot) };
        let (a, b) = inputs(&d, &train_rows, &holdout, &config);
        let xa = a.features.clone();
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Bytes>::new()));
        let keep = sent.clone();
        let record: TamperFn = Box::new(move |_, f| {
            keep.lock().unwrap().push(f.clone());
            None
        });
        let run = run_with(a, b, &config, Some(record), None).await;
        check_against_plain(&run, &d, &train_rows, &holdout, &config);
        let root = run.a.as_ref().unwrap().trees[0].nodes[0];
        let Split::Own { feature, bin } = root.split else { panic!("A splits the root: {root:?}") };
        let root_bits = pack_bits(train_rows.iter().map(|&r| xa.columns[feature as usize][r as usize] <= bin));
        let sent = sent.lock().unwrap().clone();
        let found = sent.iter().any(|f| f[..] == root_bits[..]);
        assert_eq!(found, !hide, "hide {hide}: A's root partition on the wire");
        frames.push(sent.len());
    }
    assert!(frames[1] < frames[0], "frames A sends: {frames:?}");
}

/// With hidden partitions, B's partition of its view is still checked against its histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_partitions_still_check_bs_partition() {
    let d = data(120, &[0.0], &[3.0], 0.0, 6);
    let (train_rows, holdout) = split_rows(120, 16);
    let config = hidden(SbConfig { trees: 1, max_depth: 2, max_bins: 9, ..mode(Histograms::Ot) });
    let (a, b) = inputs(&d, &train_rows, &holdout, &config);
    let tamper: TamperFn = Box::new(|_, f| (f.len() == 13).then(|| with(f, |v| v[0] ^= 1)).flatten());
    let run = run_with(a, b, &config, None, Some(tamper)).await;
    let err = run.a.expect_err("tampered partition").to_string();
    assert!(err.contains("does not match its histogram"), "{err}");
}

#[test]
fn hidden_partitions_need_the_ot_histograms() {
    assert!(hidden(mode(Histograms::He)).validate().is_err());
    assert!(hidden(mode(Histograms::Ot)).validate().is_ok());
}
