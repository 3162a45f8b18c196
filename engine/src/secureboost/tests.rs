//! Model files from a real two-party run: round trips, thresholds, importance, joint scoring
//! against the plaintext reference.
use std::sync::Arc;

use consort_protocols::he::KeyPair;
use consort_protocols::memory_pair;
use consort_protocols::mpc::Party;
use consort_protocols::mpc::secureboost::{self, BinnedFeatures, SbConfig, SbInput, plain};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::sealed::StorageKey;
use crate::storage::AtRest;

struct Trained {
    models: [SbModelFile; 2],
    columns: [Vec<Vec<f64>>; 2],
    binned: [BinnedFeatures; 2],
    labels: Vec<u8>,
    train: Vec<u32>,
    config: SbConfig,
}

fn columns(n: usize, d: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
    (0..d)
        .map(|_| {
            (0..n).map(|_| if rng.random::<f64>() < 0.1 { f64::NAN } else { rng.random::<f64>() * 6.0 - 3.0 }).collect()
        })
        .collect()
}

async fn trained() -> Trained {
    let n = 300;
    let mut rng = StdRng::seed_from_u64(11);
    let (ca, cb) = (columns(n, 2, &mut rng), columns(n, 3, &mut rng));
    let v = |x: f64| if x.is_nan() { 0.0 } else { x };
    let labels: Vec<u8> = (0..n)
        .map(|i| (rng.random::<f64>() < crate::lr::sigmoid(1.5 * v(ca[0][i]) - 2.0 * v(cb[1][i]))) as u8)
        .collect();
    let train: Vec<u32> = (50..n as u32).collect();
    let holdout: Vec<u32> = (0..50).collect();
    let config = SbConfig { trees: 3, max_depth: 3, max_bins: 17, ..SbConfig::default() };
    let (ea, xa) = BinnedFeatures::fit(&ca, n, &train, config.max_bins);
    let (eb, xb) = BinnedFeatures::fit(&cb, n, &train, config.max_bins);
    let key = Arc::new(KeyPair::generate(&mut StdRng::seed_from_u64(3)));
    let input = |party, x: &BinnedFeatures| SbInput {
        party,
        features: x.clone(),
        labels: (party == Party::A).then(|| labels.clone()),
        train: train.clone(),
        holdout: holdout.clone(),
        key: (party == Party::A).then(|| key.clone()),
    };
    let (pa, pb) = memory_pair(32);
    let (oa, ob) = tokio::join!(
        secureboost::train(&pa, input(Party::A, &xa), &config, None),
        secureboost::train(&pb, input(Party::B, &xb), &config, None)
    );
    let feats = |prefix: &str, e: Vec<secureboost::FeatureBins>| {
        e.into_iter().enumerate().map(|(i, f)| SbFeature { name: format!("{prefix}{i}"), edges: f.edges }).collect()
    };
    let ma = SbModelFile::from_output(Party::A, feats("a", ea), &oa.unwrap(), &config);
    let mb = SbModelFile::from_output(Party::B, feats("b", eb), &ob.unwrap(), &config);
    Trained { models: [ma, mb], columns: [ca, cb], binned: [xa, xb], labels, train, config }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_files_round_trip_and_score_like_the_reference() {
    let t = trained().await;
    let [ma, mb] = &t.models;
    // Sealed and plain files load back identical (bit for bit: thresholds must not move by an ulp).
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(StorageKey::from_bytes([5; 32]));
    ma.save(&dir.path().join("a.json"), &AtRest::Sealed(key.clone())).unwrap();
    mb.save(&dir.path().join("b.json"), &AtRest::Plain).unwrap();
    assert_eq!(&SbModelFile::load(&dir.path().join("a.json"), Some(&key)).unwrap(), ma);
    assert_eq!(&SbModelFile::load(&dir.path().join("b.json"), None).unwrap(), mb);
    // B's file holds only its own splits, with thresholds that mean what the bins meant.
    let b_nodes: Vec<&SbNode> = mb.trees.iter().flat_map(|t| &t.nodes).collect();
    assert!(!b_nodes.is_empty());
    for n in &b_nodes {
        let SbNode::Own { feature, bin, threshold, gain, .. } = **n else { panic!("B has only its own splits: {n:?}") };
        assert_eq!(gain, None);
        for (r, &x) in t.columns[1][feature as usize].iter().enumerate() {
            let left = x.is_nan() || threshold.is_some_and(|th| x <= th);
            assert_eq!(left, t.binned[1].columns[feature as usize][r] <= bin);
        }
    }
    // A's importance: B's features by index, split counts matching B's nodes.
    let imp = ma.importance();
    assert_eq!(imp.len(), 5);
    assert_eq!(imp[2..].iter().map(|i| i.splits as usize).sum::<usize>(), b_nodes.len());
    assert_eq!(imp[2].feature, "peer:0");
    assert!(imp.iter().all(|i| i.gain >= 0.0 && (i.splits == 0) == (i.gain == 0.0)));
    // Joint scoring of every row from the raw values equals the reference's σ(Σ leaf weights).
    let (pa, pb) = memory_pair(8);
    let rows = t.labels.len();
    let (sa, sb) = tokio::join!(score(&pa, ma, &t.columns[0], rows), score(&pb, mb, &t.columns[1], rows));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert!(sb.is_empty());
    let reference =
        plain::train(&t.binned[0], &t.binned[1], &t.labels, &t.train, &(0..50).collect::<Vec<_>>(), &t.config);
    for (r, s) in sa.iter().enumerate() {
        let m: f64 = reference.trees.iter().map(|tr| plain::score_row(tr, &t.binned[0], &t.binned[1], r)).sum();
        assert_eq!(*s, crate::lr::sigmoid(m), "row {r}");
    }
    let (auc, ks) = evaluate(&sa[..50], &t.labels[..50]);
    assert!(auc.unwrap() > 0.7 && ks.unwrap() > 0.3, "{auc:?} {ks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_model_files_are_refused() {
    let t = trained().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    let mut bad = t.models[0].clone();
    bad.peer_features = 0;
    bad.save(&path, &AtRest::Plain).unwrap();
    let has_peer = t.models[0].trees.iter().flat_map(|t| &t.nodes).any(|n| matches!(n, SbNode::Peer { .. }));
    assert!(has_peer);
    assert!(SbModelFile::load(&path, None).unwrap_err().to_string().contains("does not have"));
    let mut bad = t.models[1].clone();
    bad.features[0].edges.reverse();
    bad.save(&path, &AtRest::Plain).unwrap();
    assert!(SbModelFile::load(&path, None).unwrap_err().to_string().contains("bin edges"));
    let mut bad = t.models[1].clone();
    bad.format = "consort-secureboost/0".into();
    bad.save(&path, &AtRest::Plain).unwrap();
    assert!(SbModelFile::load(&path, None).unwrap_err().to_string().contains("model format"));
    // Scoring refuses rows without the model's features.
    assert!(t.models[0].bin(&t.columns[0][..1], 300).is_err());
}

/// The privacy-enhanced mode's wire parameter: absent when off (standard requests are as
/// before), read back when on, and refused with the `he` histograms.
#[test]
fn hidden_partitions_parameter() {
    let standard = SbParamsWire::default();
    let text = serde_json::to_string(&standard).unwrap();
    assert!(!text.contains("hide_partitions"), "{text}");
    assert!(!standard.config().unwrap().hide_partitions);
    let hidden = SbParamsWire { hide_partitions: true, ..SbParamsWire::default() };
    let back: SbParamsWire = serde_json::from_str(&serde_json::to_string(&hidden).unwrap()).unwrap();
    assert!(back.config().unwrap().hide_partitions);
    let he = SbParamsWire { histograms: "he".into(), ..hidden };
    assert!(he.config().unwrap_err().to_string().contains("ot histograms"));
}
