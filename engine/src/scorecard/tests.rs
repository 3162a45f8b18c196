//! Bin job → scorecard training → scoring, both parties over `memory_pair` on CSV files, against
//! a plaintext mirror of the same encoding on a plaintext join; points against log-odds; reloads;
//! refusals of another bin job's files and of malformed peer points.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use consort_protocols::memory_pair;
use consort_protocols::mpc::Party;
use consort_protocols::mpc::lr::plain::train_plain;
use consort_protocols::{Role, mpc};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::train::{bin_rows, decoded};
use super::*;
use crate::binning::{BinJob, BinParamsWire, run_bin};
use crate::dataset::{Dataset, DatasetSpec};
use crate::lr::{ColumnChoice, Missing, TrainJob, load_features_as};
use crate::psi::{JobLimits, PsiProtocol};
use crate::storage::AtRest;

/// a.csv: id, y, a0 (informative, some missing), a1 (constant: one value bin), a2 (weak);
/// b.csv: id, b0 (informative, some missing), b1 (noise), b2 (constant), b3 (two values). b
/// lacks some of a's ids and has some of its own.
fn write_data(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let mut rng = StdRng::seed_from_u64(14);
    let mut a = String::from("id,y,a0,a1,a2\n");
    let mut b = String::from("id,b0,b1,b2,b3\n");
    for i in 0..n {
        let x: f64 = rng.random::<f64>() * 4.0 - 2.0;
        let z: f64 = rng.random::<f64>() * 4.0 - 2.0;
        let w: f64 = rng.random::<f64>();
        let t = (i % 3) as f64;
        let y = (rng.random::<f64>() < 1.0 / (1.0 + (-(1.2 * x - 1.0 * z + 0.5 * t - 0.8)).exp())) as u8;
        let a0 = if i % 11 == 0 { String::new() } else { format!("{x:.3}") };
        a.push_str(&format!("k{i},{y},{a0},7,{:.3}\n", w + 0.2 * x));
        if i % 13 != 5 {
            let b0 = if i % 7 == 0 { String::new() } else { format!("{z:.3}") };
            let noise: f64 = rng.random();
            b.push_str(&format!("k{i},{b0},{noise:.4},5,{t}\n"));
        }
    }
    for i in 0..10 {
        b.push_str(&format!("only-b{i},1,1,5,1\n"));
    }
    let (pa, pb) = (dir.join("a.csv"), dir.join("b.csv"));
    std::fs::write(&pa, a).unwrap();
    std::fs::write(&pb, b).unwrap();
    (pa, pb)
}

fn datasets(dir: &Path, n: usize) -> (Dataset, Dataset) {
    let (pa, pb) = write_data(dir, n);
    (
        Dataset::load(&DatasetSpec::new("a", pa, &["id"])).unwrap(),
        Dataset::load(&DatasetSpec::new("b", pb, &["id"])).unwrap(),
    )
}

fn peer_of(role: Role) -> String {
    if role == Role::Requester { "b".into() } else { "a".into() }
}

async fn bin_both(a: &Dataset, b: &Dataset, dir: &Path, job_id: &str) -> (BinsFile, BinsFile) {
    let (ca, cb) = memory_pair(64);
    let job = |role: Role, out: PathBuf| BinJob {
        role,
        psi: PsiProtocol::Rr22,
        columns: ColumnChoice { label: (role == Role::Requester).then(|| "y".to_string()), features: None },
        params: BinParamsWire { bins: 5, key_bits: 2048, ..BinParamsWire::default() },
        out,
        at_rest: AtRest::Plain,
        job_id: job_id.into(),
        peer: peer_of(role),
        psi_progress: None,
        limits: JobLimits::default(),
    };
    let (pa, pb) = (dir.join(format!("{job_id}-a.json")), dir.join(format!("{job_id}-b.json")));
    let (ja, jb) = (job(Role::Requester, pa.clone()), job(Role::Responder, pb.clone()));
    let (ra, rb) = tokio::join!(
        async move {
            let r = run_bin(&ca, a, &ja).await;
            drop(ca);
            r
        },
        async move {
            let r = run_bin(&cb, b, &jb).await;
            drop(cb);
            r
        }
    );
    ra.unwrap();
    rb.unwrap();
    (BinsFile::load(&pa, None).unwrap(), BinsFile::load(&pb, None).unwrap())
}

fn lr_params() -> LrParams {
    let mut card = CardParams::new(600.0, 50.0, 20.0);
    card.auto_rate = true;
    LrParams { epochs: 40, batch_size: 4096, holdout: 0.0, split_seed: 3, scorecard: Some(card), ..LrParams::default() }
}

/// A's parameters after its plan, and B's as they arrive (through JSON, as on the wire).
fn both_params(bins_a: &BinsFile, mut p: LrParams) -> (LrParams, LrParams) {
    prepare_requester(&mut p, bins_a, "b", "a").unwrap();
    let wire: LrParams = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    (p, wire)
}

fn train_job(role: Role, params: &LrParams, out: PathBuf) -> TrainJob {
    TrainJob {
        role,
        psi: PsiProtocol::Rr22,
        columns: ColumnChoice { label: (role == Role::Requester).then(|| "y".to_string()), features: None },
        params: params.clone(),
        model_out: out,
        at_rest: AtRest::Plain,
        job_id: "card-1".into(),
        peer: peer_of(role),
        psi_progress: None,
        limits: JobLimits::default(),
        progress: None,
    }
}

async fn train_both(
    a: &Dataset,
    b: &Dataset,
    bins: (&BinsFile, &BinsFile),
    params: (&LrParams, &LrParams),
    dir: &Path,
) -> (ScorecardFile, ScorecardFile) {
    let (ca, cb) = memory_pair(64);
    let (pa, pb) = (dir.join("card-a.json"), dir.join("card-b.json"));
    let (ja, jb) = (train_job(Role::Requester, params.0, pa.clone()), train_job(Role::Responder, params.1, pb.clone()));
    let (ra, rb) = tokio::join!(
        async move {
            let r = run_train_card::<_, consort_protocols::channel::MemoryChannel>(&ca, None, a, &ja, bins.0).await;
            drop(ca);
            r
        },
        async move {
            let r = run_train_card::<_, consort_protocols::channel::MemoryChannel>(&cb, None, b, &jb, bins.1).await;
            drop(cb);
            r
        }
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.aligned_rows, rb.aligned_rows);
    (ScorecardFile::load(&pa, None).unwrap(), ScorecardFile::load(&pb, None).unwrap())
}

async fn score_both(a: &Dataset, b: &Dataset, cards: (&ScorecardFile, &ScorecardFile), out: &Path) -> Vec<String> {
    let (ca, cb) = memory_pair(64);
    let job = |role: Role, card: &ScorecardFile| CardScoreJob {
        role,
        psi: PsiProtocol::Rr22,
        card: Arc::new(card.clone()),
        out: (role == Role::Requester).then(|| out.to_path_buf()),
        at_rest: AtRest::Plain,
        psi_progress: None,
        limits: JobLimits::default(),
    };
    let (ja, jb) = (job(Role::Requester, cards.0), job(Role::Responder, cards.1));
    let (ra, rb) = tokio::join!(
        async move {
            let r = run_score_card(&ca, a, &ja).await;
            drop(ca);
            r
        },
        async move {
            let r = run_score_card(&cb, b, &jb).await;
            drop(cb);
            r
        }
    );
    ra.unwrap();
    rb.unwrap();
    std::fs::read_to_string(out).unwrap().lines().map(String::from).collect()
}

/// Independent binning: 0 for missing, else 1 + #{edges < x}.
fn bin_of(edges: &[f64], x: f64) -> usize {
    if x.is_nan() { 0 } else { 1 + edges.iter().filter(|&&e| e < x).count() }
}

/// The plaintext join (sorted by key): keys, A's labels and raw values of the card features of
/// each party, read with missing values kept.
async fn join(a: &Dataset, b: &Dataset, card_a: &ScorecardFile, card_b: &ScorecardFile) -> Joined {
    let index_b: HashMap<String, u32> = (0..b.len()).map(|i| (b.key_of(i), i as u32)).collect();
    let mut pairs: Vec<(String, u32, u32)> =
        (0..a.len()).filter_map(|i| index_b.get(&a.key_of(i)).map(|&j| (a.key_of(i), i as u32, j))).collect();
    pairs.sort();
    let names = |c: &ScorecardFile| Some(c.features.iter().map(|f| f.name.clone()).collect::<Vec<_>>());
    let rows_a: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let rows_b: Vec<u32> = pairs.iter().map(|p| p.2).collect();
    let ca = ColumnChoice { label: Some("y".into()), features: names(card_a) };
    let ta = load_features_as(a, &rows_a, &ca, Missing::Keep).await.unwrap();
    let cb = ColumnChoice { label: None, features: names(card_b) };
    let tb = load_features_as(b, &rows_b, &cb, Missing::Keep).await.unwrap();
    Joined { keys: pairs.into_iter().map(|p| p.0).collect(), y: ta.labels.unwrap(), xa: ta.values, xb: tb.values }
}

struct Joined {
    keys: Vec<String>,
    y: Vec<u8>,
    xa: Vec<f64>,
    xb: Vec<f64>,
}

/// A card's (points, log-odds) of row `i` of `x` (raw values of its features), binned here.
fn card_row(card: &ScorecardFile, x: &[f64], i: usize) -> (i64, f64) {
    let d = card.features.len();
    card.features.iter().enumerate().fold((0, 0.0), |(p, z), (j, f)| {
        let bin = &f.bins[bin_of(&f.edges, x[i * d + j])];
        (p + bin.points, z + bin.logit)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scorecard_matches_its_plaintext_mirror_and_points_reproduce_log_odds() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = datasets(dir.path(), 600);
    let (bins_a, bins_b) = bin_both(&a, &b, dir.path(), "bin-1").await;
    let (pa, pb) = both_params(&bins_a, lr_params());
    check_responder(pb.scorecard.as_ref().unwrap(), &bins_b, "a", "b").unwrap();
    let rate = pa.learning_rate;
    assert!(rate > 0.0 && rate <= 0.5, "{rate}");
    let (card_a, card_b) = train_both(&a, &b, (&bins_a, &bins_b), (&pa, &pb), dir.path()).await;

    // The cards: A's selected own features as WOE, B's as indicators with a reference bin of 0
    // points; the constant features have one value bin (plus the missing-value bin).
    assert_eq!(card_a.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["a0", "a1", "a2"]);
    assert_eq!(card_b.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["b0", "b1", "b2", "b3"]);
    assert!(card_a.features.iter().all(|f| f.encoding == "woe" && f.bins[0].range == "missing"));
    for f in &card_b.features {
        let r = f.reference_bin.unwrap() as usize;
        assert_eq!((f.encoding.as_str(), f.bins[r].points, f.bins[r].logit), ("indicators", 0, 0.0));
    }
    assert_eq!(card_a.features[1].bins.len(), 2);
    assert_eq!(card_b.features[2].bins.len(), 2);
    assert_eq!(card_a.base_points.is_some(), card_b.base_points.is_none());
    assert_eq!((card_a.bins_id.clone(), card_b.bins_id.clone()), (bins_a.bins_id.clone(), bins_a.bins_id.clone()));
    let s = &card_a.scaling;
    assert!((s.factor - 20.0 / std::f64::consts::LN_2).abs() < 1e-12);
    assert!((s.offset - (600.0 - s.factor * 50f64.ln())).abs() < 1e-9);

    // The plaintext mirror: the same encoding of the plaintext join, the same training (one
    // batch of all rows, so the row order does not matter).
    let j = join(&a, &b, &card_a, &card_b).await;
    let n = j.keys.len();
    let config = pa.config().unwrap();
    let plan_a = plan_columns(true, pa.scorecard.as_ref().unwrap(), &bins_a).unwrap();
    let plan_b = plan_columns(false, pb.scorecard.as_ref().unwrap(), &bins_b).unwrap();
    let fa = decoded(&plan_a, &bin_rows(&plan_a, &j.xa, n), n, &config);
    let fb = decoded(&plan_b, &bin_rows(&plan_b, &j.xb, n), n, &config);
    let (da, db) = (fa.len() / n, fb.len() / n);
    let all: Vec<u32> = (0..n as u32).collect();
    let plain = train_plain(&fa, da, &fb, db, &j.y, &all, &[], &config, false);
    let dot = |x: &[f64], w: &[f64]| x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>();
    let (mut worst, mut worst_points) = (0f64, 0f64);
    let d_total = (card_a.features.len() + card_b.features.len()) as f64;
    for i in 0..n {
        let plain_z = dot(&fa[i * da..(i + 1) * da], &plain.weights_a)
            + dot(&fb[i * db..(i + 1) * db], &plain.weights_b)
            + plain.intercept;
        let ((pa_, za), (pb_, zb)) = (card_row(&card_a, &j.xa, i), card_row(&card_b, &j.xb, i));
        let z = za + zb + card_a.intercept.unwrap();
        worst = worst.max((z - plain_z).abs());
        let points = (card_a.base_points.unwrap() + pa_ + pb_) as f64;
        worst_points = worst_points.max((points - (s.offset - s.factor * z)).abs());
    }
    assert!(worst < 0.02, "secure vs plaintext log-odds differ by {worst}");
    assert!(worst_points <= 0.5 * (d_total + 1.0), "points vs log-odds differ by {worst_points}");
    // Not a constant model: the informative features carry points.
    let spread = |f: &CardFeature| {
        f.bins.iter().map(|b| b.points).max().unwrap() - f.bins.iter().map(|b| b.points).min().unwrap()
    };
    assert!(spread(&card_a.features[0]) > 20 && spread(&card_b.features[0]) > 20);

    // Scoring: A's file has every aligned row with the points both cards give (binned here) and
    // the model's probability σ(z).
    let out = dir.path().join("scored.csv");
    let lines = score_both(&a, &b, (&card_a, &card_b), &out).await;
    assert_eq!(lines[0], "id,points,probability");
    let row_of: HashMap<&str, usize> = j.keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    assert_eq!(lines.len() - 1, n);
    for line in &lines[1..] {
        let f: Vec<&str> = line.split(',').collect();
        let i = row_of[f[0]];
        let expect = card_a.base_points.unwrap() + card_row(&card_a, &j.xa, i).0 + card_row(&card_b, &j.xb, i).0;
        assert_eq!(f[1].parse::<i64>().unwrap(), expect);
        let z = card_a.intercept.unwrap() + card_row(&card_a, &j.xa, i).1 + card_row(&card_b, &j.xb, i).1;
        assert!((f[2].parse::<f64>().unwrap() - 1.0 / (1.0 + (-z).exp())).abs() < 1e-6);
        // Within rounding, the probability the integer points imply.
        assert!((card_a.probability(expect) - 1.0 / (1.0 + (-z).exp())).abs() < 0.05);
    }
    // The points rank like the labels: higher points, lower risk.
    let points: Vec<f64> = (0..n)
        .map(|i| {
            -((card_a.base_points.unwrap() + card_row(&card_a, &j.xa, i).0 + card_row(&card_b, &j.xb, i).0) as f64)
        })
        .collect();
    assert!(crate::lr::auc(&points, &j.y).unwrap() > 0.75);

    // Reloaded (here: sealed, then opened) scorecards give identical scores.
    let key = Arc::new(crate::sealed::StorageKey::from_bytes([9; 32]));
    let (sa, sb) = (dir.path().join("sealed-a.json"), dir.path().join("sealed-b.json"));
    card_a.save(&sa, &AtRest::Sealed(key.clone())).unwrap();
    card_b.save(&sb, &AtRest::Sealed(key.clone())).unwrap();
    assert!(is_scorecard(&sa, Some(&key)).unwrap());
    let (ra, rb) = (ScorecardFile::load(&sa, Some(&key)).unwrap(), ScorecardFile::load(&sb, Some(&key)).unwrap());
    assert_eq!((&ra, &rb), (&card_a, &card_b));
    // (The joint order of the rows is the alignment's, new in each job: compare as sets.)
    let mut again = score_both(&a, &b, (&ra, &rb), &dir.path().join("again.csv")).await;
    let mut first = lines.clone();
    again.sort();
    first.sort();
    assert_eq!(again, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_bin_jobs_files_and_bad_announcements_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = datasets(dir.path(), 200);
    let (bins_a, bins_b) = bin_both(&a, &b, dir.path(), "bin-1").await;
    let (_, other_b) = bin_both(&a, &b, dir.path(), "bin-2").await;
    let (pa, pb) = both_params(&bins_a, lr_params());
    let card = pb.scorecard.clone().unwrap();
    check_responder(&card, &bins_b, "a", "b").unwrap();
    let err = check_responder(&card, &other_b, "a", "b").unwrap_err().to_string();
    assert!(err.contains("not from the same bin job"), "{err}");
    // The peer or dataset of the bin job must be this job's.
    assert!(check_responder(&card, &bins_b, "mallory", "b").unwrap_err().to_string().contains("not 'mallory'"));
    assert!(check_responder(&card, &bins_b, "a", "other").unwrap_err().to_string().contains("dataset"));
    // A's file is not B's, and B's is not A's.
    assert!(check_responder(&card, &bins_a, "a", "b").is_err());
    let mut p = lr_params();
    assert!(prepare_requester(&mut p, &bins_b, "a", "b").unwrap_err().to_string().contains("responder's"));
    // Malformed announcements: a feature B lacks, a wrong bin count, a reference out of range,
    // duplicates, requester-only fields, too many features.
    let tampered = |f: &dyn Fn(&mut CardParams)| {
        let mut c = card.clone();
        f(&mut c);
        check_responder(&c, &bins_b, "a", "b").unwrap_err().to_string()
    };
    assert!(tampered(&|c| c.peer_features.last_mut().unwrap().index = 99).contains("lacks"));
    assert!(tampered(&|c| c.peer_features[0].bins += 1).contains("lacks"));
    assert!(tampered(&|c| c.peer_features[0].reference = c.peer_features[0].bins).contains("out of range"));
    assert!(tampered(&|c| c.peer_features[1].index = c.peer_features[0].index).contains("increasing index"));
    assert!(tampered(&|c| c.bins_file = Some("/etc/passwd".into())).contains("requester-only"));
    assert!(tampered(&|c| c.pdo = 0.0).contains("pdo"));
    assert!(tampered(&|c| c.base_odds = -1.0).contains("base odds"));
    assert!(
        tampered(&|c| c.peer_features = vec![PeerFeature { index: 0, bins: 2, reference: 0 }; MAX_CARD_FEATURES + 1])
            .contains("too many")
    );
    // The trainer itself refuses a bins file that is not the one the parameters name.
    let (ca, _cb) = memory_pair(64);
    let job = train_job(Role::Responder, &pb, dir.path().join("x.json"));
    let err = run_train_card::<_, consort_protocols::channel::MemoryChannel>(&ca, None, &b, &job, &other_b)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not the one the job names"), "{err}");
    assert!(!dir.path().join("x.json").exists());
    let _ = pa;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_points_that_are_not_integers_are_a_protocol_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = datasets(dir.path(), 120);
    let (bins_a, bins_b) = bin_both(&a, &b, dir.path(), "bin-1").await;
    let (pa, pb) = both_params(&bins_a, LrParams { epochs: 2, ..lr_params() });
    let (card_a, _) = train_both(&a, &b, (&bins_a, &bins_b), (&pa, &pb), dir.path()).await;
    for bad in [0.5, f64::NAN, 1e300] {
        let (ca, cb) = memory_pair(64);
        let out = dir.path().join("bad.csv");
        let job = CardScoreJob {
            role: Role::Requester,
            psi: PsiProtocol::Rr22,
            card: Arc::new(card_a.clone()),
            out: Some(out.clone()),
            at_rest: AtRest::Plain,
            psi_progress: None,
            limits: JobLimits::default(),
        };
        let fake_b = async {
            let al = crate::lr::align::align(&cb, &b, Role::Responder, PsiProtocol::Rr22, None, JobLimits::default())
                .await
                .unwrap();
            let _ = mpc::lr::exchange_partial_scores(&cb, Party::B, &vec![bad; al.order.len()]).await;
        };
        let (r, ()) = tokio::join!(run_score_card(&ca, &a, &job), fake_b);
        let err = r.unwrap_err().to_string();
        assert!(err.contains("not integers") || err.contains("non-finite"), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn three_hundred_peer_features_fit_in_the_job_parameters() {
    let mut card = CardParams::new(600.0, 50.0, 20.0);
    card.bins_job = "j0123456789ab".into();
    card.bins_id = "0123456789abcdef0123456789abcdef".into();
    card.peer_features = (0..300).map(|k| PeerFeature { index: 1000 + k, bins: 12, reference: 10 }).collect();
    let p = LrParams { scorecard: Some(card), ..LrParams::default() };
    let text = serde_json::to_string(&p).unwrap();
    assert!(text.len() < 8192 / 2 + 200, "{}", text.len());
    assert!(text.contains("[1000,12,10]"));
    assert_eq!(serde_json::from_str::<LrParams>(&text).unwrap(), p);
}

/// B's bin indicators given to the LR as leaves are the leaves of the matrix `encode` makes:
/// reference bins first, in the middle and last, one-bin features (no group), bins past the
/// last (no column set).
#[test]
fn onehot_leaves_are_the_leaves_of_the_encoded_matrix() {
    use super::train::{encode, onehot_groups, onehot_leaves};
    let config = mpc::lr::LrConfig::default();
    let feature = |k: u32, reference: u32| Planned {
        name: format!("f{k}_{reference}"),
        index: 0,
        edges: Vec::new(),
        ranges: Vec::new(),
        encoding: Encoding::Indicators { bins: k, reference },
    };
    let planned = vec![feature(10, 0), feature(1, 0), feature(5, 2), feature(33, 32), feature(2, 1), feature(4, 3)];
    let (n, d) = (400, planned.len());
    let mut rng = StdRng::seed_from_u64(3);
    let bins: Vec<u8> = (0..n * d)
        .map(|i| match &planned[i % d].encoding {
            Encoding::Indicators { bins: k, .. } => rng.random_range(0..*k as u8 + 1),
            Encoding::Woe(_) => 0,
        })
        .collect();
    let groups = onehot_groups(&planned, &config).expect("indicator-only features are one-hot groups");
    assert_eq!(groups.len(), 5, "the one-bin feature has no group");
    let leaves = onehot_leaves(&planned, &bins, n);
    assert_eq!(*leaves, *groups.leaves_of(&encode(&planned, &bins, n, &config)).unwrap());
    // And of the plaintext mirror's columns (written independently of `encode`).
    let mirror: Vec<u64> = decoded(&planned, &bins, n, &config).iter().map(|&v| config.encode_feature(v)).collect();
    let cols = mirror.len() / n;
    let mirror = consort_protocols::mpc::ot_mul::Matrix::new(mirror, n, cols, config.feature_bits);
    assert_eq!(*leaves, *groups.leaves_of(&mirror).unwrap());
    assert!(leaves.contains(&32) && leaves.iter().filter(|&&l| l == 0).count() > n);
    groups.check_leaves(&leaves, n, config.feature_bits).unwrap();
}
