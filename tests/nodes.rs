//! Two in-process nodes on real loopback sockets with mutual TLS: the job path, grants, pinning and
//! bad inputs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use consort_api::JobState;
use consort_api::vocab::Vocabulary;
use consort_engine::DatasetSpec;
use consort_node::client::NodeClient;
use consort_node::node::{self, NodeHandle};
use consort_node::proto::{JobStatus, SubmitRequest};
use consort_node::{identity, pair, setup};

struct Pair {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a_dir: PathBuf,
    b_dir: PathBuf,
    a: NodeHandle,
    b: NodeHandle,
}

fn spec(name: &str, file: &Path) -> DatasetSpec {
    DatasetSpec::new(name, file, &["id"])
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Two running nodes that pin each other, each with a small dataset granted to the other.
async fn pair_with_data(a_csv: &str, b_csv: &str) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a_dir, b_dir) = pair::init_pair(&root).unwrap();
    let a = node::start(&a_dir).await.unwrap();
    let b = node::start(&b_dir).await.unwrap();
    pair::pin_pair(&a_dir, a.peer_addr(), &b_dir, b.peer_addr()).unwrap();
    write(&root.join("a.csv"), a_csv);
    write(&root.join("b.csv"), b_csv);
    setup::dataset_add(
        &a_dir,
        spec("customers", &root.join("a.csv")),
        vec![setup::parse_grant(pair::B).unwrap()],
        true,
        false,
    )
    .unwrap();
    setup::dataset_add(
        &b_dir,
        spec("accounts", &root.join("b.csv")),
        vec![setup::parse_grant(pair::A).unwrap()],
        true,
        false,
    )
    .unwrap();
    a.state.reload().unwrap();
    b.state.reload().unwrap();
    Pair { _tmp: tmp, root, a_dir, b_dir, a, b }
}

/// The bank's PSI request on its dataset "customers" with the partner's `peer_dataset`.
fn request(protocol: &str, peer_dataset: &str, reveal: &str, out: &str) -> SubmitRequest {
    let (protocol, reveal) = (protocol.parse().unwrap(), consort_protocols::Reveal::parse_name(reveal).unwrap());
    SubmitRequest::psi(pair::B, "customers", peer_dataset, protocol, reveal, Path::new(out))
}

async fn run_psi(dir: &Path, peer_dataset: &str, reveal: &str, out: &Path) -> JobStatus {
    run_psi_with("ecdh", dir, peer_dataset, reveal, out).await
}

async fn run_psi_with(protocol: &str, dir: &Path, peer_dataset: &str, reveal: &str, out: &Path) -> JobStatus {
    let client = NodeClient::connect(dir).await.unwrap();
    let id = client.submit(request(protocol, peer_dataset, reveal, &out.display().to_string())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), client.watch(&id, |_| {})).await.expect("job hangs").unwrap()
}

const A_CSV: &str = "id,name,age\n 15550000001 ,ann,31\n15550000002,bob,45\n15550000003,cy,27\n15550000004,di,52\n";
const B_CSV: &str = "region,id,score\nnorth,15550000004,0.1\nsouth,15550000009,0.7\neast,15550000001,0.3\n";

#[tokio::test(flavor = "multi_thread")]
async fn psi_between_two_nodes_gives_aligned_rows_on_both_sides() {
    for protocol in ["ecdh", "rr22"] {
        aligned_rows_on_both_sides(protocol).await;
    }
}

async fn aligned_rows_on_both_sides(protocol: &str) {
    let p = pair_with_data(A_CSV, B_CSV).await;
    let out = p.root.join("out.csv");
    let status = run_psi_with(protocol, &p.a_dir, "accounts", "both", &out).await;
    assert_eq!(status.protocol_name(), protocol);
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!((status.local_rows, status.peer_rows, status.intersection), (4, 3, 2));
    assert!(status.wire_bytes_sent > 0 && status.bytes_sent > 0);
    // Each side's output is sealed under its own node's storage key.
    let read = |path: &std::path::Path, key| {
        String::from_utf8(consort_engine::storage::read_data(path, Some(key)).unwrap()).unwrap()
    };
    let mine = read(&out, &p.a.state.storage.key);
    let theirs = read(&p.b_dir.join(&status.peer_output), &p.b.state.storage.key);
    let mine: Vec<&str> = mine.lines().collect();
    let theirs: Vec<&str> = theirs.lines().collect();
    assert_eq!(mine[0], "id,name,age");
    assert_eq!(theirs[0], "region,id,score");
    assert_eq!(mine.len(), 3);
    // Row i is the same customer on both sides; rows are the original bytes.
    for (m, t) in mine[1..].iter().zip(&theirs[1..]) {
        let id_m = m.split(',').next().unwrap().trim();
        let id_t = t.split(',').nth(1).unwrap();
        assert_eq!(id_m, id_t);
    }
    let mut ids: Vec<&str> = mine[1..].iter().map(|m| m.split(',').next().unwrap().trim()).collect();
    ids.sort();
    assert_eq!(ids, ["15550000001", "15550000004"]);
    // The responder recorded the same job.
    let peer_job = p.b.state.jobs.get(&status.job_id).unwrap().status();
    assert_eq!(peer_job.job_state(), JobState::Done);
    assert_eq!(peer_job.role_name(), "responder");
    assert_eq!(peer_job.intersection, 2);
    p.a.shutdown(Duration::from_secs(1)).await;
    p.b.shutdown(Duration::from_secs(1)).await;
}

/// The events of `job` in a node's audit log, in order.
fn logged_events(dir: &Path, job: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("audit/log.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["job"] == job)
        .map(|v| v["event"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_nodes_record_signed_evidence_that_an_auditor_verifies() {
    use consort_engine::audit::{self, VerifyOptions};
    let p = pair_with_data(A_CSV, B_CSV).await;
    let status = run_psi(&p.a_dir, "accounts", "both", &p.root.join("out.csv")).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    let events = ["request", "grant", "start", "transcript", "proofs", "output", "end"];
    assert_eq!(logged_events(&p.a_dir, &status.job_id), events);
    assert_eq!(logged_events(&p.b_dir, &status.job_id), events);

    let mut bundles = Vec::new();
    let mut keys = Vec::new();
    for (name, dir) in [(pair::A, &p.a_dir), (pair::B, &p.b_dir)] {
        let key = identity::read_signing_key(dir).unwrap().verifying_key();
        let out = p.root.join(format!("evidence-{name}.json"));
        let bundle = audit::export(&dir.join("audit"), name, &key, &status.job_id, &out).unwrap();
        bundles.push((out, bundle));
        keys.push(key);
    }
    let report = audit::verify_bundles(&bundles, &VerifyOptions { trusted_keys: keys.clone(), full: true });
    assert!(report.ok(), "{report:#?}");
    assert!(report.checks.iter().any(|c| c.name.contains("transcript digests agree") && c.ok));

    // A refused request is logged with the decision on the responder.
    let refused = run_psi(&p.a_dir, "nope", "both", &p.root.join("x.csv")).await;
    assert_eq!(refused.job_state(), JobState::Failed);
    assert_eq!(logged_events(&p.b_dir, &refused.job_id), ["request", "grant"]);
    assert_eq!(logged_events(&p.a_dir, &refused.job_id), ["request", "grant", "failure"]);
    let log = std::fs::read_to_string(p.b_dir.join("audit/log.jsonl")).unwrap();
    assert!(log.lines().last().unwrap().contains("\"decision\":\"refused\""));
    // Data commitments are salted: the dataset file's plain SHA-256 appears nowhere in the logs.
    use sha2::Digest;
    let plain: String = sha2::Sha256::digest(A_CSV.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert!(!std::fs::read_to_string(p.a_dir.join("audit/log.jsonl")).unwrap().contains(&plain));
    p.a.shutdown(Duration::from_secs(1)).await;
    p.b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reveal_self_leaves_the_responder_without_output() {
    for protocol in ["ecdh", "rr22"] {
        responder_without_output(protocol).await;
    }
}

async fn responder_without_output(protocol: &str) {
    let p = pair_with_data(A_CSV, B_CSV).await;
    let status = run_psi_with(protocol, &p.a_dir, "accounts", "self", &p.root.join("out.csv")).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!(status.intersection, 2);
    assert!(status.peer_output.is_empty());
    let peer_job = p.b.state.jobs.get(&status.job_id).unwrap().status();
    assert!(!peer_job.has_intersection);
    assert!(std::fs::read_dir(p.b_dir.join("outputs")).unwrap().next().is_none(), "responder wrote an output");
}

#[tokio::test(flavor = "multi_thread")]
async fn dataset_without_grant_is_refused_before_any_protocol_message() {
    let p = pair_with_data(A_CSV, B_CSV).await;
    setup::dataset_add(&p.b_dir, spec("private", &p.root.join("b.csv")), vec![], true, false).unwrap();
    p.b.state.reload().unwrap();
    let out = p.root.join("out.csv");
    let status = run_psi(&p.a_dir, "private", "both", &out).await;
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("refused") && status.error.contains("no grant for peer 'bank'"), "{}", status.error);
    assert!(!out.exists());
    assert_eq!(status.bytes_sent, 0, "no protocol bytes before the grant check");
    // The requester's own policy: its dataset must be granted to the peer too.
    setup::dataset_add(&p.a_dir, spec("customers", &p.root.join("a.csv")), vec![], true, false).unwrap();
    p.a.state.reload().unwrap();
    let client = NodeClient::connect(&p.a_dir).await.unwrap();
    let err = client.submit(request("ecdh", "accounts", "both", "")).await.unwrap_err();
    assert!(err.to_string().contains("no grant for peer 'partner'"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unpinned_certificates_are_rejected_both_ways() {
    let p = pair_with_data(A_CSV, B_CSV).await;
    // A third node that the partner never pinned claims to be the bank.
    let c_dir = p.root.join("mallory");
    identity::init(&c_dir, "bank", "127.0.0.1:0").unwrap();
    let c = node::start(&c_dir).await.unwrap();
    setup::peer_add(&c_dir, pair::B, &p.b.peer_addr().to_string(), &p.b_dir.join("node.crt"), false).unwrap();
    std::fs::copy(p.root.join("a.csv"), c_dir.join("a.csv")).unwrap();
    setup::dataset_add(
        &c_dir,
        spec("customers", &c_dir.join("a.csv")),
        vec![setup::parse_grant(pair::B).unwrap()],
        false,
        false,
    )
    .unwrap();
    c.state.reload().unwrap();
    let out = p.root.join("mallory-out.csv");
    let status = run_psi(&c_dir, "accounts", "both", &out).await;
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("partner"), "{}", status.error);
    assert!(!out.exists());
    assert!(p.b.state.jobs.list().is_empty(), "the partner must not see a job from an unpinned certificate");

    // The bank dials the partner's address but has pinned another certificate for it.
    setup::peer_add(&p.a_dir, pair::B, &p.b.peer_addr().to_string(), &c_dir.join("node.crt"), true).unwrap();
    p.a.state.reload().unwrap();
    let status = run_psi(&p.a_dir, "accounts", "both", &out).await;
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("does not match the one pinned"), "{}", status.error);
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_the_job_with_file_line_and_column_and_no_output() {
    let malformed = "id,name\n15550000001,ann\n15550000002\n";
    let p = pair_with_data(malformed, B_CSV).await;
    let out = p.root.join("out.csv");
    let status = run_psi(&p.a_dir, "accounts", "both", &out).await;
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("a.csv:3"), "{}", status.error);
    assert!(!out.exists());

    let dup = "id,name\n15550000001,ann\n15550000002,bob\n15550000001,cy\n";
    let p = pair_with_data(A_CSV, dup).await;
    let status = run_psi(&p.a_dir, "accounts", "both", &out).await;
    assert_eq!(status.job_state(), JobState::Failed);
    // The responder's file problem stays in its own log; the requester learns only that it failed.
    assert!(status.error.contains("could not load dataset 'accounts'"), "{}", status.error);
    let peer_job = p.b.state.jobs.list();
    // ... and names the lines, never the key itself (issue 11: no raw values in errors).
    let error = &peer_job[0].error;
    assert!(error.contains("b.csv:4: column 'id': duplicate key, first seen on line 2"), "{error}");
    assert!(!error.contains("15550000001"), "{error}");
    assert!(!out.exists());

    // With dedup the same file works.
    let mut s = spec("accounts", &p.root.join("b.csv"));
    s.dedup = true;
    setup::dataset_add(&p.b_dir, s, vec![setup::parse_grant(pair::A).unwrap()], true, false).unwrap();
    p.b.state.reload().unwrap();
    let status = run_psi(&p.a_dir, "accounts", "both", &out).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!(status.intersection, 2);

    // Missing key column: refused at registration.
    let mut s = spec("other", &p.root.join("b.csv"));
    s.keys = vec!["customer".into()];
    let err = setup::dataset_add(&p.b_dir, s, vec![], false, true).unwrap_err();
    assert!(format!("{err:#}").contains("customer"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_goes_away_mid_job_fails_cleanly() {
    // Enough rows that the job is still running when the partner stops.
    let mut a = String::from("id\n");
    let mut b = String::from("id\n");
    for i in 0..60_000u64 {
        a.push_str(&format!("{}\n", 10_000_000_000u64 + i));
        b.push_str(&format!("{}\n", 10_000_000_000u64 + 2 * i));
    }
    let p = pair_with_data(&a, &b).await;
    let out = p.root.join("out.csv");
    let client = NodeClient::connect(&p.a_dir).await.unwrap();
    let id = client.submit(request("ecdh", "accounts", "both", &out.display().to_string())).await.unwrap();
    // Wait for the protocol to start, then stop the partner abruptly.
    for _ in 0..400 {
        let s = client.job(&id).await.unwrap();
        if s.stage.starts_with("encrypt") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.b.shutdown(Duration::from_millis(0)).await;
    let status = tokio::time::timeout(Duration::from_secs(60), client.watch(&id, |_| {}))
        .await
        .expect("requester hangs")
        .unwrap();
    assert_eq!(status.job_state(), JobState::Failed, "{status:?}");
    assert!(!out.exists());
}

/// A payload join through gRPC between two node processes' services on loopback: the bank gets
/// its rows plus the partner's shared `score` column (quoted, empty and non-ASCII values and a
/// key on two partner rows round-trip), the partner writes nothing with reveal self; a column
/// the partner does not share is refused before any protocol message.
#[tokio::test(flavor = "multi_thread")]
async fn a_payload_join_between_two_nodes_matches_a_plaintext_join() {
    let b_csv = "region,id,score\nnorth,15550000004,\"0,1\"\nsouth,15550000009,0.7\neast,15550000001,\neast,15550000001,\"Zürich \"\"x\"\"\"\n";
    let p = pair_with_data(A_CSV, "region,id,score\nnorth,15550000004,1\n").await;
    write(&p.root.join("b.csv"), b_csv);
    let mut spec_b = spec("accounts", &p.root.join("b.csv"));
    spec_b.dedup = true;
    let mut grant = setup::parse_grant(pair::A).unwrap();
    setup::apply_shares(
        std::slice::from_mut(&mut grant),
        &[format!("{}:score", pair::A)],
        &["region".into(), "id".into(), "score".into()],
    )
    .unwrap();
    setup::dataset_add(&p.b_dir, spec_b, vec![grant], true, true).unwrap();
    p.b.state.reload().unwrap();
    let client = NodeClient::connect(&p.a_dir).await.unwrap();
    let submit = |columns: &str, out: &Path| {
        let mut r = request("rr22", "accounts", "requester-only", &out.display().to_string());
        r.params = serde_json::json!({ "peer_columns": columns.split(',').collect::<Vec<_>>() }).to_string();
        r
    };
    let out = p.root.join("joined.csv");
    let id = client.submit(submit("score", &out)).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), client.watch(&id, |_| {})).await.unwrap().unwrap();
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!((status.intersection, status.output_rows), (2, 3));
    let text = consort_engine::storage::read_data(&out, Some(&p.a.state.storage.key)).unwrap();
    let mut reader = csv::ReaderBuilder::new().from_reader(&text[..]);
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, ["id", "name", "age", &format!("{}.score", pair::B)]);
    let mut rows: Vec<Vec<String>> =
        reader.records().map(|r| r.unwrap().iter().map(|f| f.trim().to_string()).collect()).collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ["15550000001", "ann", "31", ""],
            ["15550000001", "ann", "31", "Zürich \"x\""],
            ["15550000004", "di", "52", "0,1"],
        ]
    );
    let peer_job = p.b.state.jobs.get(&status.job_id).unwrap().status();
    assert_eq!(peer_job.job_state(), JobState::Done);
    assert!(!peer_job.has_intersection && status.peer_output.is_empty(), "the partner learns no rows");
    assert!(std::fs::read_dir(p.b_dir.join("outputs")).unwrap().next().is_none(), "the partner wrote no output");
    // Not shared: refused by the partner before any protocol message, nothing written.
    let never = p.root.join("never.csv");
    let id = client.submit(submit("score,region", &never)).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), client.watch(&id, |_| {})).await.unwrap().unwrap();
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.refused_by_peer && status.error.contains("column 'region' is not shared"), "{}", status.error);
    assert_eq!(logged_events(&p.b_dir, &status.job_id), ["request", "grant"]);
    assert!(!never.exists());
    p.a.shutdown(Duration::from_secs(1)).await;
    p.b.shutdown(Duration::from_secs(1)).await;
}
