//! Logistic regression jobs between two in-process nodes on loopback with mutual TLS: train,
//! score, grants, and bad inputs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use consort_api::{JobKind, JobState};
use consort_engine::DatasetSpec;
use consort_engine::PsiProtocol;
use consort_engine::lr::{LrParams, ModelFile};
use consort_engine::lr_synth::{LrGenSpec, generate_lr};
use consort_node::cli::lr::submit_request;
use consort_node::client::NodeClient;
use consort_node::job::score::ScoreRequest;
use consort_node::job::train::TrainRequest;
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

/// Two nodes pinning each other; the bank's "loans" and the partner's "features" with `grant_kinds`.
async fn pair_with_lr_data(rows: u64, missing_b: u64, grant_kinds: &str) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a_dir, b_dir) = pair::init_pair(&root).unwrap();
    let a = node::start(&a_dir).await.unwrap();
    let b = node::start(&b_dir).await.unwrap();
    pair::pin_pair(&a_dir, a.peer_addr(), &b_dir, b.peer_addr()).unwrap();
    let spec = LrGenSpec { rows, features_a: 2, features_b: 3, missing_b, seed: 4, out_dir: root.join("data") };
    generate_lr(&spec).unwrap();
    let grant = |peer: &str| setup::parse_grant(&format!("{peer}:{grant_kinds}")).unwrap();
    let ds = |name: &str, file: &str| DatasetSpec::new(name, root.join("data").join(file), &["id"]);
    setup::dataset_add(&a_dir, ds("loans", "a.csv"), vec![grant(pair::B)], true, false).unwrap();
    setup::dataset_add(&b_dir, ds("features", "b.csv"), vec![grant(pair::A)], true, false).unwrap();
    a.state.reload().unwrap();
    b.state.reload().unwrap();
    Pair { _tmp: tmp, root, a_dir, b_dir, a, b }
}

fn lr_params() -> LrParams {
    LrParams { epochs: 3, batch_size: 256, split_seed: 5, ..LrParams::default() }
}

fn train_request(p: &Pair, label: &str, protocol: PsiProtocol, params: LrParams) -> SubmitRequest {
    let train = TrainRequest { label: label.into(), features: vec![], params };
    let parties = (pair::B, "loans", "features");
    submit_request(JobKind::Train, parties, protocol, &train, &p.root.join("model-a.json")).unwrap()
}

async fn run(dir: &Path, request: SubmitRequest) -> Result<JobStatus, String> {
    let client = NodeClient::connect(dir).await.unwrap();
    let id = client.submit(request).await.map_err(|e| e.to_string())?;
    Ok(tokio::time::timeout(Duration::from_secs(120), client.watch(&id, |_| {})).await.expect("job hangs").unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn train_then_score_between_two_nodes() {
    let p = pair_with_lr_data(3000, 250, "psi,train,score").await;
    // Aligned with RR22 here (the other tests use the default, ECDH-PSI).
    let status = run(&p.a_dir, train_request(&p, "y", PsiProtocol::Rr22, lr_params())).await.unwrap();
    assert_eq!(status.protocol_name(), "rr22");
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!((status.local_rows, status.peer_rows, status.intersection), (3000, 2750, 2750));
    let report: serde_json::Value = serde_json::from_str(&status.summary).unwrap();
    assert_eq!((report["features"].as_u64(), report["peer_features"].as_u64()), (Some(2), Some(3)));
    let auc = report["auc"].as_f64().unwrap();
    assert!(auc > 0.7 && auc <= 1.0, "auc {auc}");
    assert!(status.wire_bytes_sent > 0 && status.bytes_received > 0);
    // The partner's model sits under its node directory and holds only its own features.
    assert_eq!(status.peer_output, format!("outputs/{}.model.json", status.job_id));
    let mb = ModelFile::load(&p.b_dir.join(&status.peer_output), Some(&p.b.state.storage.key)).unwrap();
    assert_eq!(mb.features.len(), 3);
    assert!(mb.intercept.is_none() && mb.training.auc.is_none());
    let peer_job = p.b.state.jobs.get(&status.job_id).unwrap().status();
    assert_eq!((peer_job.job_state(), peer_job.role_name()), (JobState::Done, "responder"));
    // Both audit logs record the request (with its parameters), the grant decision and the end.
    for (dir, role, dataset) in [(&p.a_dir, "requester", "loans"), (&p.b_dir, "responder", "features")] {
        let log = std::fs::read_to_string(dir.join("audit/log.jsonl")).unwrap();
        let events: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["job"] == status.job_id.as_str())
            .collect();
        let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
        // Audited like a PSI job: the dataset commitment, the transcript, the model's commitment.
        assert_eq!(names, ["request", "grant", "start", "transcript", "output", "end"], "{role}");
        let request = &events[0];
        assert_eq!((request["kind"].as_str(), request["role"].as_str()), (Some("train"), Some(role)));
        assert_eq!(request["dataset"].as_str(), Some(dataset));
        assert_eq!(request["parameters"]["epochs"].as_u64(), Some(3), "{request}");
        assert_eq!(events[1]["decision"].as_str(), Some("accepted"));
    }

    let train_job = status.job_id.clone();

    // The partner's model scores only the dataset it was trained on.
    let other = DatasetSpec::new("features-copy", p.root.join("data").join("b.csv"), &["id"]);
    let grant = setup::parse_grant(&format!("{}:train,score", pair::A)).unwrap();
    setup::dataset_add(&p.b_dir, other, vec![grant], true, false).unwrap();
    p.b.state.reload().unwrap();
    let model = ScoreRequest { model: p.root.join("model-a.json") };
    let out = p.root.join("scores-copy.csv");
    let score =
        submit_request(JobKind::Score, (pair::B, "loans", "features-copy"), PsiProtocol::Ecdh, &model, &out).unwrap();
    let refused = run(&p.a_dir, score).await.unwrap();
    assert_eq!(refused.job_state(), JobState::Failed);
    assert!(refused.error.contains("was trained on dataset 'features', not 'features-copy'"), "{}", refused.error);
    assert!(!out.exists());

    let out = p.root.join("scores.csv");
    let model = ScoreRequest { model: p.root.join("model-a.json") };
    let score =
        submit_request(JobKind::Score, (pair::B, "loans", "features"), PsiProtocol::Ecdh, &model, &out).unwrap();
    let status = run(&p.a_dir, score).await.unwrap();
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    let text = consort_engine::storage::read_data(&out, Some(&p.a.state.storage.key)).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), 2751);
    assert!(
        text.lines().skip(1).all(|l| l
            .split(',')
            .nth(1)
            .unwrap()
            .parse::<f64>()
            .is_ok_and(|s| (0.0..=1.0).contains(&s)))
    );

    // Both jobs' evidence verifies like a PSI job's (the score job aligned with ECDH-PSI: with its
    // DLEQ proofs), and a flipped byte in either bundle is caught.
    let trained = ["request", "grant", "start", "transcript", "output", "end"];
    verify_evidence(&p, &train_job, [&trained, &trained]);
    let scored = ["request", "grant", "start", "transcript", "proofs", "output", "end"];
    let scored_b = ["request", "grant", "start", "transcript", "proofs", "end"];
    verify_evidence(&p, &status.job_id, [&scored, &scored_b]);
}

/// Exports both nodes' bundles of `job` (whose events must be `events`), verifies them together,
/// then flips a byte in each.
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
    let options = VerifyOptions { trusted_keys: keys, full: true };
    let report = audit::verify_bundles(&bundles, &options);
    assert!(report.ok(), "{report:#?}");
    assert!(report.checks.iter().any(|c| c.name.contains("transcript digests agree") && c.ok));
    for i in 0..2 {
        let mut tampered = bundles.clone();
        let start = tampered[i].1.entries.iter_mut().find(|e| e.entry.contains("\"event\":\"start\"")).unwrap();
        start.entry = start.entry.replacen("\"event\":\"start\"", "\"event\":\"stArt\"", 1);
        assert_ne!(tampered[i].1, bundles[i].1);
        let report = audit::verify_bundles(&tampered, &options);
        assert!(!report.ok(), "a changed byte in bundle {i} of job {job} went unnoticed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn train_needs_a_train_grant_and_a_label_column() {
    let p = pair_with_lr_data(200, 0, "psi").await;
    let err = run(&p.a_dir, train_request(&p, "y", PsiProtocol::Ecdh, lr_params())).await.unwrap_err();
    assert!(err.contains("grants peer 'partner' only psi jobs, not train"), "{err}");

    let p = pair_with_lr_data(200, 0, "train").await;
    let status = run(&p.a_dir, train_request(&p, "label", PsiProtocol::Ecdh, lr_params())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("a.csv:1: column 'label': no such label column"), "{}", status.error);
    assert!(!p.root.join("model-a.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn train_with_a_dealer_node() {
    let p = pair_with_lr_data(1500, 100, "train").await;
    // A third node, pinned by both parties under the same name, pinning both of them.
    let d_dir = p.root.join("dealer");
    consort_node::identity::init(&d_dir, "dealer", "127.0.0.1:0").unwrap();
    let d = node::start(&d_dir).await.unwrap();
    let cert = |dir: &Path| dir.join(consort_node::config::TLS_CERT_FILE);
    for (dir, name) in [(&p.a_dir, pair::A), (&p.b_dir, pair::B)] {
        setup::peer_add(dir, "dealer", &d.peer_addr().to_string(), &cert(&d_dir), false).unwrap();
        let addr = std::fs::read_to_string(dir.join(consort_node::config::LISTEN_ADDR_FILE)).unwrap();
        setup::peer_add(&d_dir, name, addr.trim(), &cert(dir), false).unwrap();
    }
    // Each party's grant lists the dealer (without it, training is dealer-free only).
    let allow = |dir: &Path, dataset: &str, peer: &str| {
        let mut grant = setup::parse_grant(&format!("{peer}:train")).unwrap();
        grant.dealers = vec!["dealer".into()];
        setup::grant_set(dir, dataset, grant).unwrap();
    };
    allow(&p.a_dir, "loans", pair::B);
    allow(&p.b_dir, "features", pair::A);
    d.state.reload().unwrap();
    p.a.state.reload().unwrap();
    p.b.state.reload().unwrap();

    let mut params = lr_params();
    params.dealer = Some("dealer".into());
    let status = run(&p.a_dir, train_request(&p, "y", PsiProtocol::Ecdh, params.clone())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    let report: serde_json::Value = serde_json::from_str(&status.summary).unwrap();
    assert!(report["auc"].as_f64().unwrap() > 0.7);
    // The dealer ran one deal job per party, each through the envelope and audited.
    for party in ["a", "b"] {
        let dealt = d.state.jobs.get(&format!("{}.deal-{party}", status.job_id)).unwrap().status();
        assert_eq!(
            (dealt.job_kind(), dealt.role_name(), dealt.job_state()),
            (JobKind::Deal, "responder", JobState::Done)
        );
        assert!(dealt.bytes_sent > 0);
    }

    // A dealer this node has not pinned: refused at submission.
    params.dealer = Some("nobody".into());
    let err = run(&p.a_dir, train_request(&p, "y", PsiProtocol::Ecdh, params)).await.unwrap_err();
    assert!(err.contains("no pinned dealer node 'nobody'"), "{err}");
}
