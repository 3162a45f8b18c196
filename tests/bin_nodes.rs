//! `bin` jobs between two in-process nodes on loopback with mutual TLS: the job end to end against
//! a plaintext computation, its evidence, grants, and bad inputs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use consort_api::{JobKind, JobState};
use consort_engine::binning::{BinParamsWire, BinsFile, Method, check_against_plaintext};
use consort_engine::{Dataset, DatasetSpec, PsiProtocol};
use consort_node::cli::lr::submit_request;
use consort_node::client::NodeClient;
use consort_node::job::bin::BinRequest;
use consort_node::node::{self, NodeHandle};
use consort_node::proto::{JobStatus, SubmitRequest};
use consort_node::{pair, setup};
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

/// a.csv: id, y, a0 (informative, every 9th missing), a1 (constant), a2 (= a0);
/// b.csv: id, b0 (informative, every 7th missing), b1 (noise), b2 (= b0); B lacks every 10th id.
fn write_data(dir: &Path, rows: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = StdRng::seed_from_u64(17);
    let mut a = String::from("id,y,a0,a1,a2\n");
    let mut b = String::from("id,b0,b1,b2\n");
    for i in 0..rows {
        let (x, z): (f64, f64) = (rng.random::<f64>() * 4.0 - 2.0, rng.random::<f64>() * 4.0 - 2.0);
        let y = (rng.random::<f64>() < 1.0 / (1.0 + (-(1.2 * x + z)).exp())) as u8;
        let a0 = if i % 9 == 0 { String::new() } else { format!("{x:.4}") };
        a.push_str(&format!("id{i},{y},{a0},5,{a0}\n"));
        if i % 10 != 3 {
            let b0 = if i % 7 == 0 { String::new() } else { format!("{z:.4}") };
            b.push_str(&format!("id{i},{b0},{:.5},{b0}\n", rng.random::<f64>()));
        }
    }
    std::fs::write(dir.join("a.csv"), a).unwrap();
    std::fs::write(dir.join("b.csv"), b).unwrap();
}

async fn pair_with_data(rows: usize, a_kinds: &str, b_kinds: &str) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a_dir, b_dir) = pair::init_pair(&root).unwrap();
    let a = node::start(&a_dir).await.unwrap();
    let b = node::start(&b_dir).await.unwrap();
    pair::pin_pair(&a_dir, a.peer_addr(), &b_dir, b.peer_addr()).unwrap();
    write_data(&root.join("data"), rows);
    let grant = |peer: &str, kinds: &str| setup::parse_grant(&format!("{peer}:{kinds}")).unwrap();
    let ds = |name: &str, file: &str| DatasetSpec::new(name, root.join("data").join(file), &["id"]);
    setup::dataset_add(&a_dir, ds("loans", "a.csv"), vec![grant(pair::B, a_kinds)], true, false).unwrap();
    setup::dataset_add(&b_dir, ds("features", "b.csv"), vec![grant(pair::A, b_kinds)], true, false).unwrap();
    a.state.reload().unwrap();
    b.state.reload().unwrap();
    Pair { _tmp: tmp, root, a_dir, b_dir, a, b }
}

fn params() -> BinParamsWire {
    BinParamsWire {
        method: Method::Tree,
        bins: 5,
        fine_bins: 24,
        min_iv: Some(0.02),
        max_corr: Some(0.9),
        key_bits: 2048,
    }
}

fn bin_request(p: &Pair, params: BinParamsWire) -> SubmitRequest {
    let r = BinRequest { label: "y".into(), features: vec![], params };
    submit_request(JobKind::Bin, (pair::B, "loans", "features"), PsiProtocol::Ecdh, &r, &p.root.join("bins.json"))
        .unwrap()
}

async fn run(dir: &Path, request: SubmitRequest) -> Result<JobStatus, String> {
    let client = NodeClient::connect(dir).await.unwrap();
    let id = client.submit(request).await.map_err(|e| e.to_string())?;
    Ok(tokio::time::timeout(Duration::from_secs(300), client.watch(&id, |_| {})).await.expect("job hangs").unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn bin_job_matches_the_plaintext_computation() {
    let p = pair_with_data(900, "bin", "bin").await;
    for params in [BinParamsWire { key_bits: 2048, ..BinParamsWire::default() }, params()] {
        let status = run(&p.a_dir, bin_request(&p, params.clone())).await.unwrap();
        assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
        assert_eq!(status.job_kind(), JobKind::Bin);
        assert_eq!((status.local_rows, status.peer_rows, status.intersection), (900, 810, 810));
        assert_eq!(status.peer_output, format!("outputs/{}.bins.json", status.job_id));
        let fa = BinsFile::load(&p.root.join("bins.json"), Some(&p.a.state.storage.key)).unwrap();
        let fb = BinsFile::load(&p.b_dir.join(&status.peer_output), Some(&p.b.state.storage.key)).unwrap();
        assert_eq!((fa.job_id.as_str(), fb.job_id.as_str()), (status.job_id.as_str(), status.job_id.as_str()));
        let spec = |f: &str| DatasetSpec::new("x", p.root.join("data").join(f), &["id"]);
        let (da, db) = (Dataset::load(&spec("a.csv")).unwrap(), Dataset::load(&spec("b.csv")).unwrap());
        assert_eq!(check_against_plaintext(&da, &db, &fa, &fb, "y").await, Ok(810));
        let report: serde_json::Value = serde_json::from_str(&status.summary).unwrap();
        assert_eq!((report["features"].as_u64(), report["peer_features"].as_u64()), (Some(3), Some(3)));
        let iv = report["iv"].as_array().unwrap();
        assert_eq!(iv.len(), 6);
        let sel = |name: &str| fa.features.iter().find(|f| f.name == name).unwrap().selected.unwrap();
        if params.max_corr.is_some() {
            assert!(sel("a0") && sel("peer:0") && !sel("a1") && !sel("a2") && !sel("peer:2"), "{iv:#?}");
            assert!(fb.features.iter().all(|f| f.edges.as_ref().unwrap().len() <= 4), "B holds the merged edges");
        }
        let text = consort_node::cli::bin::summary(&status);
        assert!(text.contains("peer:0") && text.contains("a0") && text.contains("IV"), "{text}");
        verify_evidence(&p, &status.job_id);
    }
}

/// Exports both nodes' bundles of `job` and verifies them together.
fn verify_evidence(p: &Pair, job: &str) {
    use consort_engine::audit::{self, VerifyOptions};
    let events = ["request", "grant", "start", "transcript", "proofs", "output", "end"];
    let mut bundles = Vec::new();
    let mut keys = Vec::new();
    for (name, dir) in [(pair::A, &p.a_dir), (pair::B, &p.b_dir)] {
        let key = consort_node::identity::read_signing_key(dir).unwrap().verifying_key();
        let out = p.root.join(format!("evidence-{job}-{name}.json"));
        let bundle = audit::export(&dir.join("audit"), name, &key, job, &out).unwrap();
        let logged: Vec<String> = bundle
            .entries
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.entry).unwrap()["event"].as_str().unwrap().into())
            .collect();
        assert_eq!(logged, events, "{name}: job {job}");
        bundles.push((out, bundle));
        keys.push(key);
    }
    let report = audit::verify_bundles(&bundles, &VerifyOptions { trusted_keys: keys, full: true });
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bin_needs_its_own_grant() {
    // The partner grants training kinds only: refused before any protocol message.
    let p = pair_with_data(100, "bin", "psi,train,score,secureboost,secureboost-score").await;
    let status = run(&p.a_dir, bin_request(&p, params())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.refused_by_peer, "{}", status.error);
    assert!(status.error.contains("not bin"), "{}", status.error);
    assert_eq!((status.bytes_sent, status.bytes_received), (0, 0), "no protocol message");
    assert_eq!(p.b.state.jobs.get(&status.job_id).unwrap().status().job_state(), JobState::Refused);
    assert!(!p.root.join("bins.json").exists());
    // This node's own grant without bin refuses at submission; a bin grant allows no training.
    let p = pair_with_data(100, "train,secureboost", "bin").await;
    let err = run(&p.a_dir, bin_request(&p, params())).await.unwrap_err();
    assert!(err.contains("not bin"), "{err}");
    let p = pair_with_data(100, "bin", "bin").await;
    let lr = consort_node::job::train::TrainRequest {
        label: "y".into(),
        features: vec![],
        params: consort_engine::lr::LrParams::default(),
    };
    let req = submit_request(JobKind::Train, (pair::B, "loans", "features"), PsiProtocol::Ecdh, &lr, &p.root.join("m"));
    let err = run(&p.a_dir, req.unwrap()).await.unwrap_err();
    assert!(err.contains("not train"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bin_bad_inputs_fail_cleanly_with_no_output() {
    let p = pair_with_data(200, "bin", "bin").await;
    let data = p.root.join("data");
    let text = std::fs::read_to_string(data.join("a.csv")).unwrap();
    // A label that is not 0/1 on line 6 (id4, which both hold).
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut fields: Vec<String> = lines[5].split(',').map(String::from).collect();
    fields[1] = "2".into();
    lines[5] = fields.join(",");
    std::fs::write(data.join("a.csv"), lines.join("\n") + "\n").unwrap();
    let status = run(&p.a_dir, bin_request(&p, params())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("a.csv:6: column 'y': the label must be 0 or 1"), "{}", status.error);
    assert!(!p.root.join("bins.json").exists());
    let theirs = settled(&p.b, &status.job_id).await;
    assert_eq!(theirs.job_state(), JobState::Failed);
    assert!(!theirs.error.contains("a.csv"), "the peer does not learn the file: {}", theirs.error);
    assert!(!p.b_dir.join(format!("outputs/{}.bins.json", status.job_id)).exists());

    // A non-numeric feature at the partner, line 3: file, line and column there; the requester
    // only hears that the partner's data failed; no output on either side.
    std::fs::write(data.join("a.csv"), &text).unwrap();
    let b_text = std::fs::read_to_string(data.join("b.csv")).unwrap();
    let mut b_lines: Vec<String> = b_text.lines().map(String::from).collect();
    let mut fields: Vec<String> = b_lines[2].split(',').map(String::from).collect();
    fields[2] = "SECRET-abc".into();
    b_lines[2] = fields.join(",");
    std::fs::write(data.join("b.csv"), b_lines.join("\n") + "\n").unwrap();
    let status = run(&p.a_dir, bin_request(&p, params())).await.unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(!status.error.contains("SECRET"), "{}", status.error);
    // The partner's reason, whether this side was sending or receiving when it failed.
    assert!(status.error.contains("the peer aborted"), "{}", status.error);
    let theirs = settled(&p.b, &status.job_id).await;
    assert!(theirs.error.contains("b.csv:3: column 'b1': not a number"), "{}", theirs.error);
    assert!(!theirs.error.contains("SECRET"));
    assert!(!p.root.join("bins.json").exists());
    assert!(!p.b_dir.join(format!("outputs/{}.bins.json", status.job_id)).exists());

    // An empty dataset (header only) at the requester: refused, nothing written.
    std::fs::write(data.join("b.csv"), &b_text).unwrap();
    std::fs::write(data.join("a.csv"), "id,y,a0,a1,a2\n").unwrap();
    let status = run(&p.a_dir, bin_request(&p, params())).await.unwrap();
    assert_ne!(status.job_state(), JobState::Done);
    assert!(!status.error.is_empty());
    assert!(!p.root.join("bins.json").exists());
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
