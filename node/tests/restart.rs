//! Jobs survive their node: a node killed (SIGKILL) while a job runs shows that job as
//! `interrupted` afterwards — from the job table on disk with the node stopped, and from the node
//! once it runs again — earlier jobs as done, and a request reusing any earlier job id is refused
//! before anything is logged under it. Real `consort node` processes on loopback.

mod common;

use common::{TwoNodes, ok, psi_args, s, start_node, two_nodes};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use consort_api::proto::{self, JobRequest};
use consort_api::{JOB_PROTOCOL_VERSION, JobKind};
use consort_node::job::connect::{self, Answer};
use consort_node::state::NodeState;

/// `consort jobs DIR --json`, one object per job.
fn jobs(dir: &Path) -> Vec<serde_json::Value> {
    ok(&["jobs", s(dir), "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn state_of(jobs: &[serde_json::Value], id: &str) -> String {
    jobs.iter().find(|j| j["job_id"] == id).map(|j| j["state"].as_str().unwrap().to_string()).unwrap_or_default()
}

fn audit_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("audit/log.jsonl")).unwrap().lines().count()
}

/// Sends a job request with a chosen id to the node at `addr` as the node of `client_dir` (stopped).
async fn raw_request(client_dir: &Path, peer: &str, addr: &str, job_id: &str, dataset: &str) -> Answer {
    let state = NodeState::open(client_dir, "127.0.0.1:9".parse().unwrap()).await.unwrap();
    let mut entry = state.config().peer(peer).unwrap().clone();
    entry.addr = addr.to_string();
    let request = JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: job_id.into(),
        kind: JobKind::Psi as i32,
        protocol: proto::PsiProtocol::Ecdh as i32,
        reveal: proto::Reveal::Both as i32,
        responder_dataset: dataset.into(),
        params: String::new(),
        rows: 1,
    };
    connect::open(&state, &entry, request, None).await.unwrap().1
}

#[test]
fn a_killed_node_marks_its_running_job_interrupted_and_never_reuses_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let TwoNodes { a, b, na, nb, .. } = two_nodes(root, 150_000, 50_000);

    // A job that completes, then one during which the bank's node is killed.
    let out = root.join("first.csv");
    let first: serde_json::Value = serde_json::from_str(ok(&psi_args(&a, &out)).trim()).unwrap();
    let first_id = first["job_id"].as_str().unwrap().to_string();
    assert_eq!(first["state"], "done", "{first}");
    let out2 = root.join("second.csv");
    let submitter = Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(psi_args(&a, &out2))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut second_id = String::new();
    for _ in 0..400 {
        let running = jobs(&a).into_iter().find(|j| j["job_id"] != first_id.as_str() && j["state"] == "running");
        if let Some(j) = running {
            second_id = j["job_id"].as_str().unwrap().to_string();
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(!second_id.is_empty(), "the second job never ran");
    std::thread::sleep(Duration::from_millis(300));
    na.kill9();
    let _ = submitter.wait_with_output();

    // The node is stopped (its stale control socket is still there): the table on disk tells.
    let offline = jobs(&a);
    assert_eq!(state_of(&offline, &first_id), "done");
    assert_eq!(state_of(&offline, &second_id), "interrupted", "{offline:?}");
    assert!(!out2.exists(), "no output from an interrupted job");

    // Restarted, the node has marked it (table and audit log) and still lists both.
    let (na, _) = start_node(&a);
    let online = jobs(&a);
    assert_eq!(state_of(&online, &first_id), "done");
    assert_eq!(state_of(&online, &second_id), "interrupted");
    let log = std::fs::read_to_string(a.join("audit/log.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains(&second_id) && l.contains("\"failure\"") && l.contains("interrupted")));
    drop(na);
    let offline = jobs(&a);
    assert_eq!(state_of(&offline, &second_id), "interrupted", "stopped cleanly, still interrupted");

    // Requests reusing either id are refused by both nodes before anything is logged under them.
    let (_na, addr_a2) = start_node(&a);
    drop(nb);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for id in [&first_id, &second_id] {
        let before = audit_lines(&a);
        let answer = runtime.block_on(raw_request(&b, "bank", &addr_a2, id, "customers"));
        let Answer::Refused(reason) = answer else { panic!("job id {id} reused") };
        assert!(reason.contains("already used"), "{reason}");
        assert_eq!(audit_lines(&a), before, "nothing logged under a reused id");
    }
    drop(_na);
    let (_nb, addr_b2) = start_node(&b);
    for id in [&first_id, &second_id] {
        let before = audit_lines(&b);
        let answer = runtime.block_on(raw_request(&a, "partner", &addr_b2, id, "accounts"));
        let Answer::Refused(reason) = answer else { panic!("job id {id} reused") };
        assert!(reason.contains("already used"), "{reason}");
        assert_eq!(audit_lines(&b), before, "nothing logged under a reused id");
    }
}
