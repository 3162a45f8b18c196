//! End-to-end train and score jobs of both parties over an in-memory channel, and the helpers
//! the unit tests of the `lr` modules share.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use consort_protocols::memory_pair;
use consort_protocols::mpc::lr::Sigmoid;
use consort_protocols::mpc::lr::plain::train_plain;

use super::*;
use crate::dataset::{Dataset, DatasetSpec};
use crate::lr_synth::{LrGenSpec, generate_lr};
use crate::sealed::StorageKey;
use crate::storage::AtRest;

fn make_data(dir: &Path, rows: u64, fa: u32, fb: u32, missing_b: u64) {
    generate_lr(&LrGenSpec { rows, features_a: fa, features_b: fb, missing_b, seed: 5, out_dir: dir.to_path_buf() })
        .unwrap();
}

fn datasets(dir: &Path) -> (Dataset, Dataset) {
    let a = Dataset::load(&DatasetSpec::new("a", dir.join("a.csv"), &["id"])).unwrap();
    let b = Dataset::load(&DatasetSpec::new("b", dir.join("b.csv"), &["id"])).unwrap();
    (a, b)
}

/// Raw rows of a CSV by id: (id → values after the id column), and the header.
fn read_csv(path: &Path) -> (Vec<String>, HashMap<String, Vec<f64>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), rec.iter().skip(1).map(|v| v.parse().unwrap()).collect())
        })
        .collect();
    (header, rows)
}

/// Party A's storage key: A seals its model and predictions, B keeps its model plain.
fn key_a() -> Arc<StorageKey> {
    Arc::new(StorageKey::from_bytes([0xa1; 32]))
}

fn at_rest(role: Role) -> AtRest {
    match role {
        Role::Requester => AtRest::Sealed(key_a()),
        Role::Responder => AtRest::Plain,
    }
}

pub(super) fn params() -> LrParams {
    LrParams { epochs: 5, batch_size: 256, learning_rate: 0.5, l2: 0.001, split_seed: 99, ..LrParams::default() }
}

async fn train_both(dir: &Path, a: &Dataset, b: &Dataset, params: LrParams) -> (TrainReport, TrainReport) {
    let job = |role, label: Option<&str>, out: &str| TrainJob {
        role,
        psi: crate::PsiProtocol::Ecdh,
        columns: ColumnChoice { label: label.map(String::from), features: None },
        params: params.clone(),
        model_out: dir.join(out),
        at_rest: at_rest(role),
        job_id: "j1".into(),
        peer: "peer".into(),
        psi_progress: None,
        progress: None,
        limits: crate::JobLimits::default(),
    };
    let (ja, jb) = (job(Role::Requester, Some("y"), "model-a.json"), job(Role::Responder, None, "model-b.json"));
    let (ca, cb) = memory_pair(16);
    let (ra, rb) = tokio::join!(run_train(&ca, a, &ja), run_train(&cb, b, &jb));
    (ra.unwrap(), rb.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_with_missing_ids_matches_plaintext_lr_and_models_reload() {
    let dir = tempfile::tempdir().unwrap();
    make_data(dir.path(), 6000, 3, 4, 700);
    let (a, b) = datasets(dir.path());
    let (ra, rb) = train_both(dir.path(), &a, &b, params()).await;
    assert_eq!((ra.local_rows, rb.local_rows, ra.aligned_rows, rb.aligned_rows), (6000, 5300, 5300, 5300));
    assert_eq!((ra.features, ra.peer_features, rb.features, rb.peer_features), (3, 4, 4, 3));
    assert_eq!(ra.holdout_rows, 1060);
    assert!(rb.auc.is_none() && rb.holdout_loss.is_empty());
    let (auc_secure, ks_secure) = (ra.auc.unwrap(), ra.ks.unwrap());
    assert!(auc_secure > 0.75, "auc {auc_secure}");
    assert!(ks_secure > 0.3 && ks_secure < 1.0);

    // Models: each party only its own features; A has the intercept.
    let ma = ModelFile::load(&dir.path().join("model-a.json"), Some(&key_a())).unwrap();
    let mb = ModelFile::load(&dir.path().join("model-b.json"), None).unwrap();
    assert_eq!(ma.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["a0", "a1", "a2"]);
    assert_eq!(mb.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["b0", "b1", "b2", "b3"]);
    assert!(ma.intercept.is_some() && mb.intercept.is_none());

    // Plaintext baseline on the same aligned rows (joined by id) with the same hyper-parameters
    // and the exact sigmoid; compare AUC on all aligned rows.
    let (_, rows_a) = read_csv(&dir.path().join("a.csv"));
    let (_, rows_b) = read_csv(&dir.path().join("b.csv"));
    let mut ids: Vec<&String> = rows_b.keys().collect();
    ids.sort();
    let y: Vec<u8> = ids.iter().map(|id| rows_a[*id][0] as u8).collect();
    let xa: Vec<f64> = ids.iter().flat_map(|id| rows_a[*id][1..].to_vec()).collect();
    let xb: Vec<f64> = ids.iter().flat_map(|id| rows_b[*id].clone()).collect();
    let n = ids.len();
    let (train, holdout) = split(n, 0.2, 99);
    let config = params().config().unwrap();
    let std_a = standardization(&xa, 3, &train);
    let std_b = standardization(&xb, 4, &train);
    let enc = |x: &[f64], s: &[(f64, f64)]| -> Vec<f64> {
        x.chunks(s.len())
            .flat_map(|r| {
                r.iter().zip(s).map(|(&v, &(m, sd))| config.decode_feature(config.encode_feature((v - m) / sd)))
            })
            .collect()
    };
    let (fa, fb) = (enc(&xa, &std_a), enc(&xb, &std_b));
    let exact = train_plain(&fa, 3, &fb, 4, &y, &train, &holdout, &config, true);
    let score_plain = |i: usize| {
        let s: f64 = fa[i * 3..i * 3 + 3].iter().zip(&exact.weights_a).map(|(x, w)| x * w).sum::<f64>()
            + fb[i * 4..i * 4 + 4].iter().zip(&exact.weights_b).map(|(x, w)| x * w).sum::<f64>();
        s + exact.intercept
    };
    let plain_scores: Vec<f64> = (0..n).map(score_plain).collect();
    let secure_scores: Vec<f64> = {
        let pa = ma.partial_scores(&xa);
        let pb = mb.partial_scores(&xb);
        pa.iter().zip(&pb).map(|(a, b)| a + b + ma.intercept.unwrap()).collect()
    };
    let (auc_plain, auc_sec_all) = (auc(&plain_scores, &y).unwrap(), auc(&secure_scores, &y).unwrap());
    assert!((auc_plain - auc_sec_all).abs() < 0.01, "plaintext {auc_plain} vs secure {auc_sec_all}");

    // Scoring with the reloaded models: A's predictions equal σ(own + peer + w0) from the files.
    let (ca, cb) = memory_pair(16);
    let out = dir.path().join("scores.csv");
    // Scoring aligns with RR22 (training used ECDH-PSI): same joint-order contract.
    let job = |role, model: &ModelFile, out: Option<PathBuf>| ScoreJob {
        role,
        psi: crate::PsiProtocol::Rr22,
        model: Arc::new(model.clone()),
        out,
        at_rest: at_rest(role),
        psi_progress: None,
        limits: crate::JobLimits::default(),
    };
    let (ja, jb) = (job(Role::Requester, &ma, Some(out.clone())), job(Role::Responder, &mb, None));
    let (sa, sb) = tokio::join!(run_score(&ca, &a, &ja), run_score(&cb, &b, &jb));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!((sa.aligned_rows, sb.aligned_rows), (5300, 5300));
    assert!(sb.output.is_none());
    assert!(
        crate::sealed::is_sealed(&out).unwrap() && crate::sealed::is_sealed(&dir.path().join("model-a.json")).unwrap()
    );
    let text = String::from_utf8(crate::storage::read_data(&out, Some(&key_a())).unwrap()).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,score"));
    let mut count = 0;
    for line in lines {
        let (id, score) = line.split_once(',').unwrap();
        let i = ids.binary_search(&&id.to_string()).unwrap();
        let want = sigmoid(secure_scores[i]);
        assert!((score.parse::<f64>().unwrap() - want).abs() < 1e-6, "{id}");
        count += 1;
    }
    assert_eq!(count, 5300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poly3_and_early_stopping_reach_the_reports_and_model_files() {
    let dir = tempfile::tempdir().unwrap();
    make_data(dir.path(), 2000, 2, 2, 0);
    let (a, b) = datasets(dir.path());
    let p = LrParams { sigmoid: Sigmoid::Poly3, epochs: 4, tolerance: 1e-9, ..params() };
    let (ra, rb) = train_both(dir.path(), &a, &b, p.clone()).await;
    assert_eq!((ra.sigmoid.as_str(), rb.sigmoid.as_str()), ("poly3", "poly3"));
    assert!(ra.auc.unwrap() > 0.75, "auc {:?}", ra.auc);
    assert!(ra.weights_epoch >= 1 && ra.weights_epoch <= ra.epochs_run && ra.weights_epoch == rb.weights_epoch);
    // The returned epoch has the lowest holdout loss.
    let best = ra.holdout_loss.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(ra.holdout_loss[ra.weights_epoch as usize - 1], best);
    for m in ["model-a.json", "model-b.json"] {
        let model = ModelFile::load(&dir.path().join(m), Some(&key_a())).unwrap();
        assert_eq!((model.sigmoid.as_str(), model.training.params.sigmoid.name()), ("poly3", "poly3"));
        assert_eq!(model.training.weights_epoch, ra.weights_epoch);
    }
}
