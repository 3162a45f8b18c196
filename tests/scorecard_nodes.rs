//! Scorecard jobs between two in-process nodes on loopback with mutual TLS: bin job → `train
//! --scorecard` → `score --model CARD`, against a plaintext mirror of the same encoding; a bins
//! file of another bin job is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consort_api::{JobKind, JobState};
use consort_engine::binning::{BinParamsWire, BinsFile};
use consort_engine::lr::LrParams;
use consort_engine::scorecard::{CardParams, ScorecardFile};
use consort_engine::{Dataset, DatasetSpec, PsiProtocol};
use consort_node::cli::lr::submit_request;
use consort_node::client::NodeClient;
use consort_node::job::bin::BinRequest;
use consort_node::job::score::ScoreRequest;
use consort_node::job::train::TrainRequest;
use consort_node::node::{self, NodeHandle};
use consort_node::proto::{JobStatus, SubmitRequest};
use consort_node::{pair, setup};
use consort_protocols::mpc::lr::plain::train_plain;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

struct Pair {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a_dir: PathBuf,
    b_dir: PathBuf,
    a: NodeHandle,
    b: NodeHandle,
}

/// a.csv: id, y, a0 (informative, every 9th missing), a1 (constant); b.csv: id, b0 (informative,
/// every 7th missing), b1 (noise), b2 (three values); B lacks every 10th id.
fn write_data(dir: &Path, rows: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = StdRng::seed_from_u64(23);
    let mut a = String::from("id,y,a0,a1\n");
    let mut b = String::from("id,b0,b1,b2\n");
    for i in 0..rows {
        let (x, z): (f64, f64) = (rng.random::<f64>() * 4.0 - 2.0, rng.random::<f64>() * 4.0 - 2.0);
        let t = (i % 3) as f64;
        let y = (rng.random::<f64>() < 1.0 / (1.0 + (-(1.2 * x + z - 0.6 * t)).exp())) as u8;
        let a0 = if i % 9 == 0 { String::new() } else { format!("{x:.4}") };
        a.push_str(&format!("id{i},{y},{a0},5\n"));
        if i % 10 != 3 {
            let b0 = if i % 7 == 0 { String::new() } else { format!("{z:.4}") };
            b.push_str(&format!("id{i},{b0},{:.5},{t}\n", rng.random::<f64>()));
        }
    }
    std::fs::write(dir.join("a.csv"), a).unwrap();
    std::fs::write(dir.join("b.csv"), b).unwrap();
}

async fn pair_with_data(rows: usize) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a_dir, b_dir) = pair::init_pair(&root).unwrap();
    let a = node::start(&a_dir).await.unwrap();
    let b = node::start(&b_dir).await.unwrap();
    pair::pin_pair(&a_dir, a.peer_addr(), &b_dir, b.peer_addr()).unwrap();
    write_data(&root.join("data"), rows);
    let grant = |peer: &str| setup::parse_grant(&format!("{peer}:bin,train,score")).unwrap();
    let ds = |name: &str, file: &str| DatasetSpec::new(name, root.join("data").join(file), &["id"]);
    setup::dataset_add(&a_dir, ds("loans", "a.csv"), vec![grant(pair::B)], true, false).unwrap();
    setup::dataset_add(&b_dir, ds("features", "b.csv"), vec![grant(pair::A)], true, false).unwrap();
    a.state.reload().unwrap();
    b.state.reload().unwrap();
    Pair { _tmp: tmp, root, a_dir, b_dir, a, b }
}

macro_rules! request {
    ($kind:expr, $params:expr, $out:expr) => {
        submit_request($kind, (pair::B, "loans", "features"), PsiProtocol::Ecdh, $params, $out).unwrap()
    };
}

async fn run(dir: &Path, request: SubmitRequest) -> JobStatus {
    let client = NodeClient::connect(dir).await.unwrap();
    let id = client.submit(request).await.unwrap();
    tokio::time::timeout(Duration::from_secs(300), client.watch(&id, |_| {})).await.expect("job hangs").unwrap()
}

async fn bin_job(p: &Pair, out: &Path) -> JobStatus {
    let params = BinParamsWire { bins: 5, key_bits: 2048, ..BinParamsWire::default() };
    let s =
        run(&p.a_dir, request!(JobKind::Bin, &BinRequest { label: "y".into(), features: vec![], params }, out)).await;
    assert_eq!(s.job_state(), JobState::Done, "{}", s.error);
    s
}

fn card_request(bins: &Path, out: &Path) -> SubmitRequest {
    let mut card = CardParams::new(600.0, 50.0, 20.0);
    card.bins_file = Some(bins.to_path_buf());
    card.auto_rate = true;
    let params = LrParams {
        epochs: 30,
        batch_size: 4096,
        holdout: 0.0,
        split_seed: 9,
        scorecard: Some(card),
        ..LrParams::default()
    };
    request!(JobKind::Train, &TrainRequest { label: "y".into(), features: vec![], params }, out)
}

fn bin_of(edges: &[f64], x: f64) -> usize {
    if x.is_nan() { 0 } else { 1 + edges.iter().filter(|&&e| e < x).count() }
}

/// Each row's bins of a card's features, from the CSV (empty = missing), by key.
fn binned(file: &Path, card: &ScorecardFile) -> HashMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let cols: Vec<usize> = card.features.iter().map(|f| header.iter().position(|h| *h == f.name).unwrap()).collect();
    lines
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            let bins = cols
                .iter()
                .zip(&card.features)
                .map(|(&c, f)| bin_of(&f.edges, if v[c].is_empty() { f64::NAN } else { v[c].parse().unwrap() }))
                .collect();
            (v[0].to_string(), bins)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scorecard_train_and_score_match_a_plaintext_mirror() {
    let p = pair_with_data(700).await;
    let bins_path = p.root.join("bins.json");
    bin_job(&p, &bins_path).await;
    let card_path = p.root.join("card.json");
    let s = run(&p.a_dir, card_request(&bins_path, &card_path)).await;
    assert_eq!(s.job_state(), JobState::Done, "{}", s.error);
    let card_a = ScorecardFile::load(&card_path, Some(&p.a.state.storage.key)).unwrap();
    let card_b = ScorecardFile::load(&p.b_dir.join(&s.peer_output), Some(&p.b.state.storage.key)).unwrap();
    assert_eq!(s.peer_output, format!("outputs/{}.model.json", s.job_id));
    // B's file: its features' points per bin, no base points, no label.
    assert!(card_b.base_points.is_none() && card_b.label.is_none() && card_b.features.len() == 3);
    assert_eq!(card_a.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["a0", "a1"]);

    // The plaintext mirror on the plaintext join: A's columns the (encoded) WOE of the row's bin,
    // B's one indicator per non-reference bin; one batch of all rows, so the order is moot.
    let (ra, rb) = (binned(&p.root.join("data/a.csv"), &card_a), binned(&p.root.join("data/b.csv"), &card_b));
    let labels: HashMap<String, u8> = std::fs::read_to_string(p.root.join("data/a.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            (v[0].to_string(), v[1].parse().unwrap())
        })
        .collect();
    let mut keys: Vec<&String> = ra.keys().filter(|k| rb.contains_key(*k)).collect();
    keys.sort();
    let (mut xa, mut xb, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for k in &keys {
        for (f, &bin) in card_a.features.iter().zip(&ra[*k]) {
            xa.push(f.bins[bin].woe.unwrap());
        }
        for (f, &bin) in card_b.features.iter().zip(&rb[*k]) {
            let r = f.reference_bin.unwrap() as usize;
            xb.extend((0..f.bins.len()).filter(|&c| c != r).map(|c| if c == bin { 1.0 } else { 0.0 }));
        }
        y.push(labels[*k]);
    }
    let n = keys.len();
    assert_eq!(n, 630);
    let (da, db) = (xa.len() / n, xb.len() / n);
    let config = card_a.training.params.config().unwrap();
    let all: Vec<u32> = (0..n as u32).collect();
    let plain = train_plain(&xa, da, &xb, db, &y, &all, &[], &config, false);
    let dot = |x: &[f64], w: &[f64]| x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>();
    let card_points = |k: &str| -> (i64, f64) {
        let mut t = (card_a.base_points.unwrap(), card_a.intercept.unwrap());
        for (card, bins) in [(&card_a, &ra[k]), (&card_b, &rb[k])] {
            for (f, &bin) in card.features.iter().zip(bins) {
                t = (t.0 + f.bins[bin].points, t.1 + f.bins[bin].logit);
            }
        }
        t
    };
    for (i, k) in keys.iter().enumerate() {
        let z = dot(&xa[i * da..(i + 1) * da], &plain.weights_a)
            + dot(&xb[i * db..(i + 1) * db], &plain.weights_b)
            + plain.intercept;
        let (_, secure_z) = card_points(k);
        assert!((z - secure_z).abs() < 0.02, "row {k}: plaintext {z}, secure {secure_z}");
    }

    // Scoring: A's file has every aligned row's points (both cards, binned here) and probability.
    let scored = p.root.join("scored.csv");
    let s = run(&p.a_dir, request!(JobKind::Score, &ScoreRequest { model: card_path.clone() }, &scored)).await;
    assert_eq!(s.job_state(), JobState::Done, "{}", s.error);
    let bytes = consort_engine::storage::read_data(&scored, Some(&p.a.state.storage.key)).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,points,probability"));
    let mut rows = 0;
    let sc = &card_a.scaling;
    for l in lines {
        let v: Vec<&str> = l.split(',').collect();
        let (points, z) = card_points(v[0]);
        assert_eq!(v[1].parse::<i64>().unwrap(), points, "{l}");
        assert!((v[2].parse::<f64>().unwrap() - 1.0 / (1.0 + (-z).exp())).abs() < 1e-6);
        // Points and log-odds agree within rounding: points ≈ offset − factor·z.
        assert!((points as f64 - (sc.offset - sc.factor * z)).abs() <= 0.5 * 6.0, "{l}");
        rows += 1;
    }
    assert_eq!(rows, n);
    let _ = Dataset::load(&DatasetSpec::new("x", p.root.join("data/a.csv"), &["id"])).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bins_file_of_another_bin_job_is_refused() {
    let p = pair_with_data(300).await;
    let (first, second) = (p.root.join("bins-1.json"), p.root.join("bins-2.json"));
    let s1 = bin_job(&p, &first).await;
    let s2 = bin_job(&p, &second).await;
    // B's file of the first job replaced by its file of the second: same names, another job.
    std::fs::copy(p.b_dir.join(&s2.peer_output), p.b_dir.join(&s1.peer_output)).unwrap();
    let out = p.root.join("card.json");
    let s = run(&p.a_dir, card_request(&first, &out)).await;
    assert_eq!(s.job_state(), JobState::Failed);
    assert!(s.error.contains("not from the same bin job"), "{}", s.error);
    assert!(!out.exists());
    // A's own file must be A's: B's bins file is refused at submission.
    let b_file = p.root.join("b-bins.json");
    std::fs::copy(p.b_dir.join(&s2.peer_output), &b_file).unwrap();
    let client = NodeClient::connect(&p.a_dir).await.unwrap();
    let err = client.submit(card_request(&b_file, &out)).await.unwrap_err().to_string();
    assert!(err.contains("responder's") || err.contains("storage key") || err.contains("sealed"), "{err}");
    let _ = BinsFile::load(&second, Some(&p.a.state.storage.key)).unwrap();
}
