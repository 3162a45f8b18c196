//! SecureBoost jobs between two in-process nodes on loopback with mutual TLS: train, score, the
//! plaintext mirror, grants, and bad inputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consort_api::{JobKind, JobState};
use consort_engine::lr_synth::{LrGenSpec, generate_lr};
use consort_engine::secureboost::{SbModelFile, SbParamsWire, plaintext_comparison};
use consort_engine::{Dataset, DatasetSpec, PsiProtocol};
use consort_node::cli::lr::submit_request;
use consort_node::client::NodeClient;
use consort_node::job::secureboost::{SbScoreRequest, SbTrainRequest};
use consort_node::node::{self, NodeHandle};
use consort_node::proto::{JobStatus, SubmitRequest};
use consort_node::{pair, setup};

struct Pair {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a_dir: PathBuf,
    b_dir: PathBuf,
    a: NodeHandle,
    b: NodeHandle,
}

/// Two nodes pinning each other; the bank's "loans" (granted `a_kinds`) and the partner's
/// "features" (granted `b_kinds`).
async fn pair_with_data(rows: u64, missing_b: u64, a_kinds: &str, b_kinds: &str) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a_dir, b_dir) = pair::init_pair(&root).unwrap();
    let a = node::start(&a_dir).await.unwrap();
    let b = node::start(&b_dir).await.unwrap();
    pair::pin_pair(&a_dir, a.peer_addr(), &b_dir, b.peer_addr()).unwrap();
    let spec = LrGenSpec { rows, features_a: 2, features_b: 3, missing_b, seed: 4, out_dir: root.join("data") };
    generate_lr(&spec).unwrap();
    let grant = |peer: &str, kinds: &str| setup::parse_grant(&format!("{peer}:{kinds}")).unwrap();
    let ds = |name: &str, file: &str| DatasetSpec::new(name, root.join("data").join(file), &["id"]);
    setup::dataset_add(&a_dir, ds("loans", "a.csv"), vec![grant(pair::B, a_kinds)], true, false).unwrap();
    setup::dataset_add(&b_dir, ds("features", "b.csv"), vec![grant(pair::A, b_kinds)], true, false).unwrap();
    a.state.reload().unwrap();
    b.state.reload().unwrap();
    Pair { _tmp: tmp, root, a_dir, b_dir, a, b }
}

fn params() -> SbParamsWire {
    SbParamsWire { trees: 3, max_depth: 3, max_bins: 17, holdout: 0.25, seed: 9, ..SbParamsWire::default() }
}

/// [`params`] with histogram backend `h` (`he` or `ot`).
fn params_in(h: &str) -> SbParamsWire {
    SbParamsWire { histograms: h.into(), ..params() }
}

fn train_request(p: &Pair, label: &str, params: SbParamsWire) -> SubmitRequest {
    let train = SbTrainRequest { label: label.into(), features: vec![], params };
    let parties = (pair::B, "loans", "features");
    submit_request(JobKind::Secureboost, parties, PsiProtocol::Ecdh, &train, &p.root.join("sb-a.json")).unwrap()
}

fn score_request(p: &Pair, out: &Path) -> SubmitRequest {
    let score = SbScoreRequest { model: p.root.join("sb-a.json") };
    submit_request(JobKind::SecureboostScore, (pair::B, "loans", "features"), PsiProtocol::Ecdh, &score, out).unwrap()
}

async fn run(dir: &Path, request: SubmitRequest) -> Result<JobStatus, String> {
    let client = NodeClient::connect(dir).await.unwrap();
    let id = client.submit(request).await.map_err(|e| e.to_string())?;
    Ok(tokio::time::timeout(Duration::from_secs(300), client.watch(&id, |_| {})).await.expect("job hangs").unwrap())
}

fn predictions(p: &Pair, out: &Path) -> HashMap<String, f64> {
    let text = consort_engine::storage::read_data(out, Some(&p.a.state.storage.key)).unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (k, s) = l.split_once(',').unwrap();
            (k.to_string(), s.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn secureboost_train_then_score_matches_the_plaintext_mirror_he() {
    train_then_score_matches_the_plaintext_mirror(params_in("he")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn secureboost_train_then_score_matches_the_plaintext_mirror_ot() {
    train_then_score_matches_the_plaintext_mirror(params_in("ot")).await
}

/// The privacy-enhanced mode through both nodes: the same checks (the mirror does not hide).
#[tokio::test(flavor = "multi_thread")]
async fn secureboost_train_then_score_matches_the_plaintext_mirror_hidden_partitions() {
    train_then_score_matches_the_plaintext_mirror(SbParamsWire { hide_partitions: true, ..params_in("ot") }).await
}

async fn train_then_score_matches_the_plaintext_mirror(params: SbParamsWire) {
    // B lacks 150 of A's ids.
    let p = pair_with_data(1200, 150, "secureboost,secureboost-score", "secureboost,secureboost-score").await;
    let status = run(&p.a_dir, train_request(&p, "y", params.clone())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    let report: serde_json::Value = serde_json::from_str(&status.summary).unwrap();
    assert_eq!(report["histograms"], params.histograms.as_str());
    assert_eq!(report["hide_partitions"], params.hide_partitions);
    assert_eq!((status.local_rows, status.peer_rows, status.intersection), (1200, 1050, 1050));
    let report: serde_json::Value = serde_json::from_str(&status.summary).unwrap();
    assert_eq!((report["features"].as_u64(), report["peer_features"].as_u64()), (Some(2), Some(3)));
    assert_eq!(report["holdout_loss"].as_array().unwrap().len(), 3);
    let auc = report["auc"].as_f64().unwrap();
    assert!(auc > 0.6 && auc <= 1.0, "auc {auc}");
    assert_eq!(status.peer_output, format!("outputs/{}.sb-model.json", status.job_id));
    let ma = SbModelFile::load(&p.root.join("sb-a.json"), Some(&p.a.state.storage.key)).unwrap();
    let mb = SbModelFile::load(&p.b_dir.join(&status.peer_output), Some(&p.b.state.storage.key)).unwrap();
    assert_eq!((ma.party.as_str(), mb.party.as_str()), ("A", "B"));
    assert!(!ma.model_id.is_empty());
    assert_eq!(ma.model_id, mb.model_id, "both halves carry the same model id");
    // B's half holds no leaf weight and none of A's features.
    assert!(
        mb.trees.iter().flat_map(|t| &t.nodes).all(|n| matches!(n, consort_engine::secureboost::SbNode::Own { .. }))
    );
    assert!(mb.training.auc.is_none());

    // The plaintext mirror: same keys, split, bins and hyper-parameters.
    let spec = |f: &str| DatasetSpec::new("x", p.root.join("data").join(f), &["id"]);
    let (da, db) = (Dataset::load(&spec("a.csv")).unwrap(), Dataset::load(&spec("b.csv")).unwrap());
    let cmp = plaintext_comparison(&da, &db, &ma, &mb, &params).await.unwrap();
    assert!(cmp.same_bins);
    assert_eq!((cmp.aligned_rows, cmp.holdout_rows), (1050, report["holdout_rows"].as_u64().unwrap()));
    assert!(cmp.max_prediction_diff < 1e-9, "{}", cmp.max_prediction_diff);
    assert!((cmp.auc_secure.unwrap() - cmp.auc_plaintext.unwrap()).abs() < 1e-12);
    assert!((cmp.auc_secure.unwrap() - auc).abs() < 1e-12, "the job's AUC is the mirror's");

    // Score: A's predictions equal the reference's, and a second run (models reloaded) is identical.
    let train_job = status.job_id.clone();
    let out = p.root.join("scores.csv");
    let scored = run(&p.a_dir, score_request(&p, &out)).await.unwrap();
    assert_eq!(scored.job_state(), JobState::Done, "{}", scored.error);
    assert_eq!(scored.job_kind(), JobKind::SecureboostScore);
    let got = predictions(&p, &out);
    assert_eq!(got.len(), 1050);
    for (key, want) in &cmp.plaintext_scores {
        let g = got[key];
        assert!((g - want).abs() <= 1e-6, "{key}: {g} vs {want}");
    }
    let out2 = p.root.join("scores2.csv");
    let again = run(&p.a_dir, score_request(&p, &out2)).await.unwrap();
    assert_eq!(again.job_state(), JobState::Done, "{}", again.error);
    assert_eq!(predictions(&p, &out2), got);

    // The audit evidence of the train and the score job verifies.
    let trained = ["request", "grant", "start", "transcript", "proofs", "output", "end"];
    verify_evidence(&p, &train_job, [&trained, &trained]);
    let scored_a = ["request", "grant", "start", "transcript", "proofs", "output", "end"];
    let scored_b = ["request", "grant", "start", "transcript", "proofs", "end"];
    verify_evidence(&p, &scored.job_id, [&scored_a, &scored_b]);

    // A's model of another training is not the other half of B's: refused by B.
    let mut other = ma.clone();
    other.model_id = "00".repeat(16);
    other.save(&p.root.join("sb-a.json"), &p.a.state.storage.at_rest()).unwrap();
    let refused = run(&p.a_dir, score_request(&p, &p.root.join("scores3.csv"))).await.unwrap();
    assert_eq!(refused.job_state(), JobState::Failed);
    assert!(refused.refused_by_peer && refused.error.contains("not the other half"), "{}", refused.error);
    assert!(!p.root.join("scores3.csv").exists());
}

/// Exports both nodes' bundles of `job` (whose events must be `events`) and verifies them together.
fn verify_evidence(p: &Pair, job: &str, events: [&[&str]; 2]) {
    use consort_engine::audit::{self, VerifyOptions};
    let mut bundles = Vec::new();
    let mut keys = Vec::new();
    for ((name, dir), expected) in [(pair::A, &p.a_dir), (pair::B, &p.b_dir)].into_iter().zip(events) {
        let key = consort_node::identity::read_signing_key(dir).unwrap().verifying_key();
        let out = p.root.join(format!("evidence-{job}-{name}.json"));
        let bundle = audit::export(&dir.join("audit"), name, &key, job, &out).unwrap();
        let logged: Vec<String> = bundle
            .entries
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.entry).unwrap()["event"].as_str().unwrap().into())
            .collect();
        assert_eq!(logged, expected, "{name}: job {job}");
        bundles.push((out, bundle));
        keys.push(key);
    }
    let report = audit::verify_bundles(&bundles, &VerifyOptions { trusted_keys: keys, full: true });
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secureboost_needs_its_own_grant() {
    // The partner grants LR only: refused by the partner before any protocol message.
    let p = pair_with_data(200, 0, "secureboost", "psi,train,score").await;
    let status = run(&p.a_dir, train_request(&p, "y", params())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.refused_by_peer, "{}", status.error);
    assert!(status.error.contains("only psi, train, score jobs, not secureboost"), "{}", status.error);
    assert_eq!((status.bytes_sent, status.bytes_received), (0, 0), "no protocol message");
    let theirs = p.b.state.jobs.get(&status.job_id).unwrap().status();
    assert_eq!(theirs.job_state(), JobState::Refused);
    assert!(!p.root.join("sb-a.json").exists());
    // This node's own grant for LR does not allow SecureBoost either (refused at submission).
    let p = pair_with_data(200, 0, "train,score", "secureboost").await;
    let err = run(&p.a_dir, train_request(&p, "y", params())).await.unwrap_err();
    assert!(err.contains("not secureboost"), "{err}");
    // Nor does a SecureBoost grant allow LR.
    let lr = consort_node::job::train::TrainRequest {
        label: "y".into(),
        features: vec![],
        params: consort_engine::lr::LrParams::default(),
    };
    let req = submit_request(JobKind::Train, (pair::B, "loans", "features"), PsiProtocol::Ecdh, &lr, &p.root.join("m"));
    let p2 = pair_with_data(200, 0, "secureboost", "secureboost").await;
    let err = run(&p2.a_dir, req.unwrap()).await.unwrap_err();
    assert!(err.contains("not train"), "{err}");
}

/// The responder's `max_split_nodes` bounds trees × (2^depth − 1) before any protocol message;
/// a job within it runs.
#[tokio::test(flavor = "multi_thread")]
async fn secureboost_split_nodes_are_bounded_by_the_responders_grant() {
    let p = pair_with_data(200, 0, "secureboost", "secureboost").await;
    let bounded = consort_node::config::Grant {
        max_split_nodes: Some(20),
        ..consort_node::config::Grant::new(pair::A, vec![JobKind::Secureboost])
    };
    setup::grant_set(&p.b_dir, "features", bounded).unwrap();
    p.b.state.reload().unwrap();
    // 3 trees of depth 3: 21 split nodes.
    let status = run(&p.a_dir, train_request(&p, "y", params())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.refused_by_peer, "{}", status.error);
    assert!(
        status.error.contains("may grow 21 split nodes") && status.error.contains("at most 20"),
        "{}",
        status.error
    );
    assert_eq!((status.bytes_sent, status.bytes_received), (0, 0), "no protocol message");
    assert_eq!(p.b.state.jobs.get(&status.job_id).unwrap().status().job_state(), JobState::Refused);
    assert!(!p.root.join("sb-a.json").exists());
    // 2 trees of depth 3: 14.
    let status = run(&p.a_dir, train_request(&p, "y", SbParamsWire { trees: 2, ..params() })).await.unwrap();
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
}

#[tokio::test(flavor = "multi_thread")]
async fn secureboost_bad_inputs_fail_cleanly_with_no_output() {
    let p = pair_with_data(300, 0, "secureboost", "secureboost").await;
    let data = p.root.join("data");
    // A label that is not 0/1 on line 5.
    let text = std::fs::read_to_string(data.join("a.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let y = header.iter().position(|c| *c == "y").unwrap();
    let mut fields: Vec<String> = lines[4].split(',').map(String::from).collect();
    fields[y] = "2".into();
    lines[4] = fields.join(",");
    std::fs::write(data.join("a.csv"), lines.join("\n") + "\n").unwrap();
    let status = run(&p.a_dir, train_request(&p, "y", params())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("a.csv:5: column 'y': the label must be 0 or 1"), "{}", status.error);
    assert!(!p.root.join("sb-a.json").exists());
    let theirs = settled(&p.b, &status.job_id).await;
    assert_eq!(theirs.job_state(), JobState::Failed);
    assert!(!theirs.error.contains("a.csv"), "the peer does not learn the file: {}", theirs.error);
    assert!(!p.b_dir.join(format!("outputs/{}.sb-model.json", status.job_id)).exists());

    // A non-numeric feature at the partner, on line 3: its operator sees file and line, the
    // requester only that the partner's data failed; nothing written on either side.
    std::fs::write(data.join("a.csv"), text).unwrap();
    let b_text = std::fs::read_to_string(data.join("b.csv")).unwrap();
    let mut b_lines: Vec<String> = b_text.lines().map(String::from).collect();
    let mut fields: Vec<String> = b_lines[2].split(',').map(String::from).collect();
    fields[1] = "SECRET-abc".into();
    b_lines[2] = fields.join(",");
    std::fs::write(data.join("b.csv"), b_lines.join("\n") + "\n").unwrap();
    let status = run(&p.a_dir, train_request(&p, "y", params())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(!status.error.contains("SECRET"), "{}", status.error);
    // The partner's reason, whether this side was sending or receiving when it failed.
    assert!(status.error.contains("the peer aborted"), "{}", status.error);
    let theirs = settled(&p.b, &status.job_id).await;
    assert!(theirs.error.contains("b.csv:3: column 'b0': not a number"), "{}", theirs.error);
    assert!(!theirs.error.contains("SECRET"));
    assert!(!p.root.join("sb-a.json").exists());
    assert!(!p.b_dir.join(format!("outputs/{}.sb-model.json", status.job_id)).exists());
}

/// The peer's record of `job` once it ended there.
async fn settled(node: &NodeHandle, job: &str) -> JobStatus {
    for _ in 0..200 {
        let s = node.state.jobs.get(job).unwrap().status();
        if !matches!(s.job_state(), JobState::Running | JobState::Pending) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} did not end at the peer");
}
