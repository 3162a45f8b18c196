//! Unbalanced PSI between two in-process nodes on loopback with mutual TLS: the partner owns a
//! list and runs the one-time setup, the bank fetches it once and queries it; results against a
//! plaintext join and a fresh balanced PSI, rotation, tampering, grants and budgets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use consort_api::JobKind;
use consort_api::JobState;
use consort_engine::DatasetSpec;
use consort_node::cli::unbalanced::run_setup;
use consort_node::client::NodeClient;
use consort_node::config::Grant;
use consort_node::job::unbalanced::fetched_path;
use consort_node::node::{self, NodeHandle};
use consort_node::proto::{JobStatus, SubmitRequest};
use consort_node::{pair, setup};

struct Pair {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// The querier ("bank").
    a_dir: PathBuf,
    /// The list owner ("partner").
    b_dir: PathBuf,
    a: NodeHandle,
    b: NodeHandle,
}

/// The owner's list: ids with a label column of awkward values, and a column not shared.
const LIST: &str = "id,risk,secret\n\
    15550000001,\"high, very\",x\n\
    15550000002,\"say \"\"no\"\"\",x\n\
    15550000003,,x\n\
    15550000004,\u{e9}lev\u{e9} \u{4e2d},x\n\
    15550000005,low,x\n";
/// The bank's query: members, non-members, in an order of its own.
const QUERY: &str = "id,case\n15550000009,c1\n15550000004,c2\n15550000001,c3\n15550000077,c4\n15550000003,c5\n";

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Two running nodes pinning each other; the partner's list is granted to the bank with `grant`,
/// the bank's query set to the partner for psi-query and psi.
async fn nodes(grant: Grant) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a_dir, b_dir) = pair::init_pair(&root).unwrap();
    let a = node::start(&a_dir).await.unwrap();
    let b = node::start(&b_dir).await.unwrap();
    pair::pin_pair(&a_dir, a.peer_addr(), &b_dir, b.peer_addr()).unwrap();
    write(&root.join("query.csv"), QUERY);
    write(&root.join("list.csv"), LIST);
    let query_grant = Grant::new(pair::B, vec![JobKind::PsiQuery, JobKind::Psi]);
    setup::dataset_add(
        &a_dir,
        DatasetSpec::new("suspects", root.join("query.csv"), &["id"]),
        vec![query_grant],
        true,
        false,
    )
    .unwrap();
    setup::dataset_add(&b_dir, DatasetSpec::new("blacklist", root.join("list.csv"), &["id"]), vec![grant], true, false)
        .unwrap();
    a.state.reload().unwrap();
    b.state.reload().unwrap();
    Pair { _tmp: tmp, root, a_dir, b_dir, a, b }
}

fn full_grant() -> Grant {
    Grant {
        share: vec!["risk".into()],
        ..Grant::new(pair::A, vec![JobKind::PsiFetch, JobKind::PsiQuery, JobKind::Psi])
    }
}

async fn submit(dir: &Path, request: SubmitRequest) -> JobStatus {
    let client = NodeClient::connect(dir).await.unwrap();
    let id = client.submit(request).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), client.watch(&id, |_| {})).await.expect("job hangs").unwrap()
}

async fn fetch(p: &Pair) -> JobStatus {
    submit(
        &p.a_dir,
        SubmitRequest {
            kind: JobKind::PsiFetch as i32,
            peer: pair::B.into(),
            peer_dataset: "blacklist".into(),
            ..Default::default()
        },
    )
    .await
}

async fn query(p: &Pair, out: &Path) -> JobStatus {
    submit(
        &p.a_dir,
        SubmitRequest {
            kind: JobKind::PsiQuery as i32,
            peer: pair::B.into(),
            dataset: "suspects".into(),
            peer_dataset: "blacklist".into(),
            out: out.display().to_string(),
            ..Default::default()
        },
    )
    .await
}

fn setup_list(p: &Pair, columns: &[&str], rotate: bool) {
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    run_setup(&p.b_dir, "blacklist", &columns, 1_000_000, rotate).unwrap();
}

fn records(text: &[u8]) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text)
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// The plaintext join: the bank's rows (file order) whose id is in the list, with the list's risk.
fn plaintext(columns: bool) -> Vec<Vec<String>> {
    let list: BTreeMap<String, String> =
        records(LIST.as_bytes())[1..].iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let mut out = vec![if columns {
        vec!["id".into(), "case".into(), "partner.risk".into()]
    } else {
        vec!["id".into(), "case".into()]
    }];
    for r in &records(QUERY.as_bytes())[1..] {
        if let Some(risk) = list.get(&r[0]) {
            let mut row = r.clone();
            if columns {
                row.push(risk.clone());
            }
            out.push(row);
        }
    }
    out
}

fn read(p: &Pair, path: &Path) -> Vec<u8> {
    consort_engine::storage::read_data(path, Some(&p.a.state.storage.key)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_after_a_setup_match_a_plaintext_join_and_a_balanced_psi() {
    let p = nodes(full_grant()).await;
    setup_list(&p, &["risk"], false);
    let fetched = fetch(&p).await;
    assert_eq!(fetched.job_state(), JobState::Done, "{}", fetched.error);
    assert_eq!(fetched.peer_rows, 5);
    assert!(fetched_path(&p.a_dir, pair::B, "blacklist").exists());
    // Queried twice: the same answer, with bytes proportional to the query, not the list.
    for round in 0..2 {
        let out = p.root.join(format!("matches-{round}.csv"));
        let status = query(&p, &out).await;
        assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
        assert_eq!((status.local_rows, status.intersection), (5, 3));
        assert!(
            status.bytes_sent < 1000 && status.bytes_received < 1000,
            "{} / {}",
            status.bytes_sent,
            status.bytes_received
        );
        let got = records(&read(&p, &out));
        assert_eq!(got, plaintext(true));
        // The owner learns the number of query items and nothing else: it writes no output.
        let owner = p.b.state.jobs.get(&status.job_id).unwrap().status();
        assert_eq!(owner.job_state(), JobState::Done);
        assert_eq!((owner.peer_rows, owner.output.as_str()), (5, ""));
    }
    // A fresh balanced PSI finds the same ids.
    let out = p.root.join("balanced.csv");
    let request = SubmitRequest::psi(
        pair::B,
        "suspects",
        "blacklist",
        "ecdh".parse().unwrap(),
        consort_protocols::Reveal::RequesterOnly,
        &out,
    );
    let balanced = submit(&p.a_dir, request).await;
    assert_eq!(balanced.job_state(), JobState::Done, "{}", balanced.error);
    let ids = |rows: Vec<Vec<String>>| rows[1..].iter().map(|r| r[0].clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(records(&read(&p, &out))), ids(plaintext(false)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_without_labels_gives_the_matched_rows() {
    let p = nodes(full_grant()).await;
    setup_list(&p, &[], false);
    assert_eq!(fetch(&p).await.job_state(), JobState::Done);
    let out = p.root.join("m.csv");
    let status = query(&p, &out).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!(records(&read(&p, &out)), plaintext(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_invalidates_the_fetched_copy_until_fetched_again() {
    let p = nodes(full_grant()).await;
    setup_list(&p, &["risk"], false);
    assert_eq!(fetch(&p).await.job_state(), JobState::Done);
    // A second setup without --rotate is refused; with it, the old setup id is refused.
    let again = run_setup(&p.b_dir, "blacklist", &["risk".to_string()], 1_000_000, false).unwrap_err();
    assert!(again.to_string().contains("--rotate"), "{again}");
    setup_list(&p, &["risk"], true);
    let out = p.root.join("stale.csv");
    let status = query(&p, &out).await;
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("superseded"), "{}", status.error);
    assert!(!out.exists(), "no output from a refused query");
    assert_eq!(fetch(&p).await.job_state(), JobState::Done);
    let status = query(&p, &out).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!(records(&read(&p, &out)), plaintext(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_fetched_copy_is_refused() {
    let p = nodes(full_grant()).await;
    setup_list(&p, &["risk"], false);
    assert_eq!(fetch(&p).await.job_state(), JobState::Done);
    let path = fetched_path(&p.a_dir, pair::B, "blacklist");
    let mut raw = std::fs::read(&path).unwrap();
    let at = raw.len() - 40;
    raw[at] ^= 1;
    std::fs::write(&path, &raw).unwrap();
    let out = p.root.join("t.csv");
    let status = query(&p, &out).await;
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_columns_and_budgets_are_enforced() {
    // Only plain PSI granted: both unbalanced kinds are refused.
    let p = nodes(Grant { share: vec!["risk".into()], ..Grant::new(pair::A, vec![JobKind::Psi]) }).await;
    setup_list(&p, &["risk"], false);
    let status = fetch(&p).await;
    assert!(status.refused_by_peer, "{}", status.error);
    // A label column the grant does not share: the fetch is refused before any protocol message.
    let p = nodes(Grant::new(pair::A, vec![JobKind::PsiFetch, JobKind::PsiQuery])).await;
    setup_list(&p, &["risk"], false);
    let status = fetch(&p).await;
    assert!(status.refused_by_peer && status.error.contains("column 'risk' is not shared"), "{}", status.error);
    // No setup: refused, telling what to do.
    let p = nodes(full_grant()).await;
    let status = fetch(&p).await;
    assert!(status.refused_by_peer && status.error.contains("psi-setup"), "{}", status.error);
    // A query budget of 7 items: the first 5-item query runs, the second is refused.
    let p = nodes(Grant { queries: Some(7), ..full_grant() }).await;
    setup_list(&p, &["risk"], false);
    assert_eq!(fetch(&p).await.job_state(), JobState::Done);
    assert_eq!(query(&p, &p.root.join("q1.csv")).await.job_state(), JobState::Done);
    let status = query(&p, &p.root.join("q2.csv")).await;
    assert!(status.refused_by_peer && status.error.contains("budget of 7 query items"), "{}", status.error);
    // A query larger than the grant's max_peer_rows is refused.
    let p = nodes(Grant { max_peer_rows: Some(4), ..full_grant() }).await;
    setup_list(&p, &["risk"], false);
    assert_eq!(fetch(&p).await.job_state(), JobState::Done);
    let status = query(&p, &p.root.join("q3.csv")).await;
    assert!(status.refused_by_peer, "{}", status.error);
}
