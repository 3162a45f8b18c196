//! Sharded PSI jobs (issue 12 item 4): two real `consort node` processes on TLS loopback, each
//! starting 4 `consort worker` processes; small buckets so a few thousand rows make many buckets.

mod common;

use common::{TwoNodes, fails, ok, psi_args, s, two_nodes_with};

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

const ROWS: u64 = 3000;
const OVERLAP: u64 = 1200;

fn small_buckets(c: &mut Command) {
    c.env("CONSORT_RR22_BUCKET_SIZE", "64");
}

fn rr22<'a>(a: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = psi_args(a, out);
    args.extend(["--protocol", "rr22"]);
    args.extend(extra);
    args
}

/// An output's plaintext rows (header first), in the file's order.
fn rows(dir: &Path, out: &Path) -> Vec<String> {
    ok(&["export", s(dir), s(out), "--out", "-"]).lines().map(str::to_string).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The ids of a generated CSV (first column).
fn ids(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
}

/// The partner's output of job `id`.
fn partner_out(b: &Path, id: &str) -> std::path::PathBuf {
    b.join("outputs").join(format!("{id}-accounts.csv"))
}

fn run_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(ok(args).trim()).unwrap()
}

/// A node's audit entries of `job` with event `event`.
fn audit_entries(dir: &Path, job: &str, event: &str) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(dir.join("audit").join("log.jsonl")).unwrap();
    log.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["job"] == job && v["event"] == event)
        .collect()
}

/// Both nodes logged one `shard` entry per worker connection: the peer worker's certificate is
/// the peer's pinned one (as in the job's request entry), what one worker sent the other
/// received, both have the range digest, bytes were counted; the evidence bundles verify with
/// the shard cross-check.
fn shard_evidence_checks(root: &Path, a: &Path, b: &Path, job: &str, shards: usize) {
    let (sa, sb) = (audit_entries(a, job, "shard"), audit_entries(b, job, "shard"));
    assert_eq!((sa.len(), sb.len()), (shards, shards), "{sa:?}");
    for (dir, entries, other) in [(a, &sa, &sb), (b, &sb, &sa)] {
        let pinned = audit_entries(dir, job, "request")[0]["peer_certificate"].clone();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e["shard"], i, "{e}");
            assert!(pinned.as_str().unwrap().starts_with("sha256:"), "{pinned}");
            assert_eq!(e["peer_certificate"], pinned, "the peer worker presented the pinned certificate");
            assert_eq!(e["sent_digest"], other[i]["received_digest"], "shard {i}");
            assert_eq!(e["range_digest"], other[i]["range_digest"], "shard {i}");
            assert_eq!(e["bytes_sent"], other[i]["bytes_received"], "shard {i}");
            assert!(e["wire_bytes_sent"].as_u64().unwrap() > e["bytes_sent"].as_u64().unwrap(), "{e}");
        }
    }
    let evidence = root.join(format!("evidence-{job}"));
    std::fs::create_dir_all(&evidence).unwrap();
    let (ea, eb) = (evidence.join("a.json"), evidence.join("b.json"));
    ok(&["audit", "export", s(a), "--job", job, "--out", s(&ea)]);
    ok(&["audit", "export", s(b), "--job", job, "--out", s(&eb)]);
    let report = ok(&["audit", "verify", s(&ea), s(&eb)]);
    assert!(report.contains("shard transcripts agree") && report.contains("evidence verifies"), "{report}");
}

fn no_spill(dir: &Path) {
    let left = std::fs::read_dir(dir.join("spill")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "{} left spill", dir.display());
}

/// Four local worker pairs give the one-pair run's rows (the same set: two runs draw different
/// salts, so their joint orders differ; one session's sharded and one-pair outputs are byte
/// identical, `engine/src/psi_stream/shard_tests.rs`) and the plaintext intersection, on both
/// sides with reveal both and on the requester only with reveal self.
#[test]
fn four_worker_pairs_give_the_one_pair_output() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let TwoNodes { a, b, na, nb, .. } = two_nodes_with(root, ROWS, OVERLAP, small_buckets);
    let data = root.join("data");
    let expected: BTreeSet<String> =
        ids(&data.join("a.csv")).intersection(&ids(&data.join("b.csv"))).cloned().collect();
    assert_eq!(expected.len() as u64, OVERLAP);

    let one = root.join("one.csv");
    let single = run_json(&rr22(&a, &one, &[]));
    assert_eq!(single["state"], "done", "{single}");
    let sharded_out = root.join("sharded.csv");
    let sharded = run_json(&rr22(&a, &sharded_out, &["--shards", "4"]));
    assert_eq!(sharded["state"], "done", "{sharded}");
    assert_eq!(sharded["intersection"], OVERLAP, "{sharded}");

    let (one_rows, shard_rows) = (rows(&a, &one), rows(&a, &sharded_out));
    assert_eq!(one_rows[0], shard_rows[0], "the header first");
    assert_eq!(sorted(one_rows.clone()), sorted(shard_rows.clone()), "the same rows as one pair");
    let got: BTreeSet<String> = shard_rows[1..].iter().map(|l| l.split(',').next().unwrap().to_string()).collect();
    assert_eq!(got, expected, "the plaintext intersection");
    assert_eq!(shard_rows.len() - 1, expected.len(), "each row once");
    // The partner's output: its rows of the intersection, aligned row by row with the bank's.
    let (id1, id4) = (single["job_id"].as_str().unwrap(), sharded["job_id"].as_str().unwrap());
    let (p1, p4) = (rows(&b, &partner_out(&b, id1)), rows(&b, &partner_out(&b, id4)));
    assert_eq!(sorted(p1), sorted(p4.clone()));
    let keys = |v: &[String]| v[1..].iter().map(|l| l.split(',').next().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(keys(&p4), keys(&shard_rows), "both outputs in the joint order");
    // Per-shard stages: every shard ran and reported its CPU time.
    let job = common::job(&a, id4).unwrap();
    let stages = job["stages"].to_string();
    for i in 0..4 {
        assert!(stages.contains(&format!("shard/{i}/cpu")), "{stages}");
    }
    shard_evidence_checks(root, &a, &b, id4, 4);
    // The job's bytes count the workers' connections: about the one-pair job's (not just the
    // node connection's prepare and merge).
    let wire =
        |j: &serde_json::Value| j["wire_bytes_sent"].as_u64().unwrap() + j["wire_bytes_received"].as_u64().unwrap();
    let (w1, w4) = (wire(&common::job(&a, id1).unwrap()), wire(&job));
    assert!(w4 * 10 > w1 * 8, "sharded {w4} B, one pair {w1} B");
    no_spill(&a);
    no_spill(&b);

    // Reveal self: only the bank writes.
    let self_out = root.join("self.csv");
    let only = run_json(&rr22(&a, &self_out, &["--shards", "4", "--reveal", "self"]));
    assert_eq!(only["state"], "done", "{only}");
    assert_eq!(sorted(rows(&a, &self_out)), sorted(one_rows));
    assert!(!partner_out(&b, only["job_id"].as_str().unwrap()).exists());
    no_spill(&a);
    no_spill(&b);
    drop((na, nb));
}

/// Shard counts out of bounds, or with a join type or protocol that does not shard, are refused
/// before anything runs: no output, no state.
#[test]
fn bad_shard_counts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let TwoNodes { a, b, na, nb, .. } = two_nodes_with(root, 200, 50, small_buckets);
    let out = root.join("out.csv");
    for (extra, says) in [
        (&["--shards", "0"][..], "1 to 64 shards"),
        (&["--shards", "65"][..], "1 to 64 shards"),
        (&["--shards", "2", "--join", "left"][..], "run in shards"),
    ] {
        let err = fails(&rr22(&a, &out, extra));
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!out.exists());
    }
    let mut ecdh = psi_args(&a, &out);
    ecdh.extend(["--shards", "2"]);
    let err = fails(&ecdh);
    assert!(err.contains("run in shards"), "{err}");
    no_spill(&a);
    no_spill(&b);
    drop((na, nb));
}

/// A worker that stops fails the job (no output, the state kept, the shards before it recorded);
/// workers of another shard or another job are refused by the pairing; `--resume` then finishes
/// the job with the plaintext intersection.
#[test]
fn a_failed_shard_keeps_the_job_and_mismatched_workers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let fail_shard_2 = |c: &mut Command| {
        small_buckets(c);
        c.env("CONSORT_TEST_FAIL_SHARD", "2");
    };
    let TwoNodes { a, b, na, nb, .. } = two_nodes_with(root, ROWS, OVERLAP, fail_shard_2);
    let mut failed = Vec::new();
    for name in ["j1.csv", "j2.csv"] {
        let out = root.join(name);
        let out_json = Command::new(env!("CARGO_BIN_EXE_consort"))
            .args(rr22(&a, &out, &["--shards", "4"]))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out_json.status.success());
        let err = String::from_utf8_lossy(&out_json.stderr).into_owned();
        assert!(err.contains("shard(s) 2 failed"), "{err}");
        assert!(!out.exists(), "no output");
        let id = std::fs::read_dir(a.join("spill"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|id| !failed.contains(id))
            .expect("the failed job's state is kept");
        assert!(b.join("spill").join(&id).join("checkpoint").exists(), "the partner kept it too");
        failed.push(id);
    }
    // A worker of shard 1 meets a worker of shard 2 (same job): both refuse.
    let pair = |a_job: &str, a_shard: &str, b_job: &str, b_shard: &str| -> (String, String) {
        let mut listener = Command::new(env!("CARGO_BIN_EXE_consort"))
            .args(["worker", s(&b), "--job", b_job, "--peer", "bank", "--shard", b_shard, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(listener.stdout.as_mut().unwrap()), &mut first)
            .unwrap();
        let addr = first.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("{first}")).to_string();
        let connect = Command::new(env!("CARGO_BIN_EXE_consort"))
            .args(["worker", s(&a), "--job", a_job, "--peer", "partner", "--shard", a_shard, "--connect", &addr])
            .output()
            .unwrap();
        let listened = listener.wait_with_output().unwrap();
        assert!(!connect.status.success() && !listened.status.success());
        (String::from_utf8_lossy(&connect.stderr).into_owned(), String::from_utf8_lossy(&listened.stderr).into_owned())
    };
    let (ea, eb) = pair(&failed[0], "1", &failed[0], "2");
    assert!(ea.contains("another shard") && eb.contains("another shard"), "{ea}\n{eb}");
    let (ea, eb) = pair(&failed[0], "3", &failed[1], "3");
    assert!(ea.contains("another job") && eb.contains("another job"), "{ea}\n{eb}");
    // Both jobs resume (as one pair, from the first unrecorded shard) to the plaintext rows.
    let data = root.join("data");
    let expected: BTreeSet<String> =
        ids(&data.join("a.csv")).intersection(&ids(&data.join("b.csv"))).cloned().collect();
    for (i, id) in failed.iter().enumerate() {
        let out = root.join(format!("resumed-{i}.csv"));
        let done = run_json(&rr22(&a, &out, &["--resume", id]));
        assert_eq!(done["state"], "done", "{done}");
        let got: Vec<String> = rows(&a, &out)[1..].iter().map(|l| l.split(',').next().unwrap().to_string()).collect();
        assert_eq!(got.len(), expected.len());
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    }
    no_spill(&a);
    no_spill(&b);
    drop((na, nb));
}

/// Nodes with external workers (`CONSORT_SHARD_WORKERS=external`, as on Kubernetes): the node
/// names the prepared job in `DIR/shard-job.json` and waits; workers started on their own (no
/// `--job`, fixed addresses, as an Indexed Job's pods) run the shards; the merged output is the
/// plaintext intersection and nothing is left behind.
#[test]
fn external_workers_run_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let external = |c: &mut Command| {
        small_buckets(c);
        c.env("CONSORT_SHARD_WORKERS", "external");
    };
    let TwoNodes { a, b, na, nb, .. } = two_nodes_with(root, ROWS, OVERLAP, external);
    let out = root.join("out.csv");
    let submit = Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(rr22(&a, &out, &["--shards", "2"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two free ports for the partner's workers (an Indexed Job's fixed names and port).
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let worker = |dir: &Path, peer: &str, shard: usize, meet: [&str; 2]| {
        Command::new(env!("CARGO_BIN_EXE_consort"))
            .args(["worker", s(dir), "--peer", peer])
            .env("JOB_COMPLETION_INDEX", shard.to_string())
            .args(meet)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut workers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (listen, connect) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}"));
        workers.push(worker(&b, "bank", i, ["--listen", &listen]));
        workers.push(worker(&a, "partner", i, ["--connect", &connect]));
    }
    for w in workers {
        let done = w.wait_with_output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    let submitted = submit.wait_with_output().unwrap();
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    let done: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(done["state"], "done", "{done}");
    let data = root.join("data");
    let expected: BTreeSet<String> =
        ids(&data.join("a.csv")).intersection(&ids(&data.join("b.csv"))).cloned().collect();
    let got: Vec<String> = rows(&a, &out)[1..].iter().map(|l| l.split(',').next().unwrap().to_string()).collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    shard_evidence_checks(root, &a, &b, done["job_id"].as_str().unwrap(), 2);
    for dir in [&a, &b] {
        no_spill(dir);
        assert!(!dir.join("shard-job.json").exists());
    }
    drop((na, nb));
}

/// `consort discard` logs a `discard` entry in the node's audit log before removing the state:
/// through the running node, and by the CLI itself when the node is stopped (which then starts
/// again on a log that verifies). No state: nothing removed, nothing logged.
#[test]
fn discard_is_logged_with_the_node_running_or_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let fail_shard_1 = |c: &mut Command| {
        small_buckets(c);
        c.env("CONSORT_TEST_FAIL_SHARD", "1");
    };
    let TwoNodes { a, b, na, nb, .. } = two_nodes_with(root, ROWS, OVERLAP, fail_shard_1);
    let out = root.join("j.csv");
    let failed = Command::new(env!("CARGO_BIN_EXE_consort")).args(rr22(&a, &out, &["--shards", "2"])).output().unwrap();
    assert!(!failed.status.success());
    let id = std::fs::read_dir(a.join("spill")).unwrap().next().unwrap().unwrap().file_name();
    let id = id.to_str().unwrap().to_string();
    let verify_log = |dir: &Path| {
        let key = ok(&["audit", "key", s(dir)]).trim().to_string();
        ok(&["audit", "verify", "--log", s(&dir.join("audit")), "--key", &key]);
    };

    // Node a runs: its control service discards and logs.
    assert!(ok(&["discard", s(&a), &id]).contains("removed"));
    no_spill(&a);
    let entries = audit_entries(&a, &id, "discard");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (&entries[0]["peer"], &entries[0]["resumable"]),
        (&serde_json::json!("partner"), &serde_json::json!(true))
    );
    assert!(ok(&["discard", s(&a), &id]).contains("no resumable state"));
    assert_eq!(audit_entries(&a, &id, "discard").len(), 1, "nothing logged without state");
    verify_log(&a);

    // Node b is stopped: the CLI logs it in b's log itself.
    drop(nb);
    assert!(b.join("spill").join(&id).exists());
    assert!(ok(&["discard", s(&b), &id]).contains("removed"));
    no_spill(&b);
    assert_eq!(audit_entries(&b, &id, "discard").len(), 1);
    verify_log(&b);
    assert!(!b.join("control.sock").exists(), "the socket held meanwhile is gone");
    let (nb, _) = common::start_node(&b);
    drop((na, nb));
}
