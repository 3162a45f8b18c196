//! End to end: two nodes' logs of a real ECDH-PSI run over an in-memory channel, exported as
//! bundles and verified; then every kind of tampering, each caught with a message naming it.

use std::path::{Path, PathBuf};

use consort_protocols::psi::ecdh::{self, Cheat, EcdhEvidence, EcdhPsiConfig, EcdhPsiError};
use consort_protocols::{ChannelStats, Metered, PsiOutput, Reveal, Role, memory_pair};
use ed25519_dalek::SigningKey;
use serde_json::json;

use super::events::{record_ecdh, record_file, record_transcript};
use super::evidence::{Bundle, VerifyOptions, export, verify_bundles};
use super::{AuditLog, Report};

type Run = Result<(PsiOutput, Option<EcdhEvidence>), EcdhPsiError>;

struct Node {
    name: &'static str,
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Node {
    fn new(name: &'static str, seed: u8) -> Node {
        Node { name, dir: tempfile::tempdir().unwrap(), key: SigningKey::from_bytes(&[seed; 32]) }
    }

    /// Logs the job as a node does: request, start, transcript, proofs, output, end or failure.
    fn record(&self, job: &str, role: &str, stats: &ChannelStats, run: &Run) {
        let mut log = AuditLog::open(self.dir.path(), self.key.clone()).unwrap();
        log.append(job, "request", json!({"role": role, "protocol": "ecdh", "reveal": "both"})).unwrap();
        log.append(job, "start", json!({})).unwrap();
        record_transcript(&mut log, job, stats).unwrap();
        match run {
            Ok((output, evidence)) => {
                if let Some(evidence) = evidence {
                    record_ecdh(&mut log, job, evidence).unwrap();
                }
                let out = self.dir.path().join("out.csv");
                std::fs::write(&out, "id\n1\n").unwrap();
                let rows = output.intersection.as_ref().map_or(0, |v| v.len() as u64);
                record_file(&mut log, job, "output", &out, rows, None).unwrap();
                log.append(job, "end", json!({})).unwrap();
            }
            Err(e) => {
                log.append(job, "failure", json!({"reason": e.to_string()})).unwrap();
            }
        }
        // Another job after this one: bundles must prove consistency across later appends.
        log.append("other", "request", json!({})).unwrap();
    }

    fn export(&self, job: &str, out_dir: &Path) -> (PathBuf, Bundle) {
        let out = out_dir.join(format!("{}.json", self.name));
        let bundle = export(&self.dir.path().join("audit"), self.name, &self.key.verifying_key(), job, &out).unwrap();
        (out, bundle)
    }
}

fn keys(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| format!("id{i}").into_bytes()).collect()
}

/// Runs a job between `a` (requester, maybe cheating) and `b`, logs it on both, exports both bundles.
async fn job(cheat: Option<Cheat>, out_dir: &Path) -> (Node, Node, Vec<(PathBuf, Bundle)>) {
    let (a, b) = (Node::new("a", 1), Node::new("b", 2));
    let (ca, cb) = memory_pair(8);
    let (ca, cb) = (Metered::new(ca), Metered::new(cb));
    // A cheater is the responder of a requester-only job: it returns points and proves, and its
    // run ends (with its evidence) once it has sent its proof, while the requester checks it.
    let reveal = if cheat.is_some() { Reveal::RequesterOnly } else { Reveal::Both };
    let config = move |role| EcdhPsiConfig { role, reveal, progress: None, proofs: true, max_peer_items: u64::MAX };
    let (items_a, items_b) = (keys(0..300), keys(100..500));
    let run_a = async move {
        let run = ecdh::run_with_evidence(&ca, &items_a, &config(Role::Requester)).await;
        let stats = ca.stats();
        drop(ca);
        (run, stats)
    };
    let run_b = async move {
        let run = match cheat {
            Some(cheat) => ecdh::run_cheating(&cb, &items_b, &config(Role::Responder), cheat).await,
            None => ecdh::run_with_evidence(&cb, &items_b, &config(Role::Responder)).await,
        };
        let stats = cb.stats();
        drop(cb);
        (run, stats)
    };
    let ((ra, stats_a), (rb, stats_b)) = futures_join(run_a, run_b).await;
    a.record("j1", "requester", &stats_a, &ra);
    b.record("j1", "responder", &stats_b, &rb);
    let bundles = vec![a.export("j1", out_dir), b.export("j1", out_dir)];
    (a, b, bundles)
}

/// Joins two futures; each drops its channel end when its side is done (so an abort on one side
/// ends the other, as a node closing the job's stream does).
async fn futures_join<A: std::future::Future, B: std::future::Future>(a: A, b: B) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

fn trusted(a: &Node, b: &Node, full: bool) -> VerifyOptions {
    VerifyOptions { trusted_keys: vec![a.key.verifying_key(), b.key.verifying_key()], full }
}

fn assert_fails(report: &Report, needles: &[&str]) {
    assert!(!report.ok(), "tampering not caught: {report:#?}");
    let failures: Vec<String> = report.failures().map(|c| format!("{}: {}", c.name, c.detail)).collect();
    let text = failures.join("\n");
    for needle in needles {
        assert!(text.contains(needle), "failures {text:?} do not mention {needle:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn honest_job_verifies_from_both_bundles_sampled_and_full() {
    let out = tempfile::tempdir().unwrap();
    let (a, b, bundles) = job(None, out.path()).await;
    for full in [false, true] {
        let report = verify_bundles(&bundles, &trusted(&a, &b, full));
        assert!(report.ok(), "{report:#?}");
        assert!(report.checks.iter().any(|c| c.name.contains("transcript digests agree")));
        assert!(report.checks.iter().any(|c| c.name.contains("ECDH commitments and proofs agree")));
        let proofs = report.checks.iter().find(|c| c.name.contains("a.json: ECDH DLEQ proofs")).unwrap();
        assert!(proofs.detail.contains(if full { "all 400" } else { "a sample of 256 of 400" }), "{}", proofs.detail);
    }
    // One bundle alone verifies too; without pinned keys the report says so.
    let report = verify_bundles(&bundles[..1], &VerifyOptions::default());
    assert!(report.ok(), "{report:#?}");
    assert!(report.checks[0].detail.contains("NOT pinned"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_bundles_are_caught() {
    let out = tempfile::tempdir().unwrap();
    let (a, b, bundles) = job(None, out.path()).await;
    let options = trusted(&a, &b, true);
    let tampered = |f: &dyn Fn(&mut Bundle)| {
        let mut copy = bundles.clone();
        f(&mut copy[0].1);
        verify_bundles(&copy, &options)
    };
    // A flipped byte in any entry.
    for i in 0..bundles[0].1.entries.len() {
        let report = tampered(&|bundle| {
            let entry = &mut bundle.entries[i].entry;
            let flipped = entry.replacen("\"job\":\"j1\"", "\"job\":\"j2\"", 1);
            *entry = if flipped != *entry { flipped } else { entry.replacen('1', "2", 1) };
        });
        let index = bundles[0].1.entries[i].index;
        assert_fails(&report, &["a.json: log entries", &format!("entry {index} is not in the signed log")]);
    }
    // A removed entry, a reordered pair of entries, the job's last entries left out.
    assert_fails(&tampered(&|b| drop(b.entries.remove(2))), &["entries were removed or reordered"]);
    assert_fails(&tampered(&|b| b.entries.swap(1, 2)), &["removed or reordered"]);
    assert_fails(&tampered(&|b| drop(b.entries.pop())), &["later entries were left out"]);
    // A wrong signature on either head.
    assert_fails(
        &tampered(&|b| b.head.signature = b.job_head.signature.clone()),
        &["signed tree heads", "head: the signature", "does not verify"],
    );
    // A rewritten history: the job head does not extend to the export head.
    assert_fails(&tampered(&|b| b.consistency[0] = "00".repeat(32)), &["is not an extension"]);
    // An untrusted key.
    let report = verify_bundles(&bundles, &VerifyOptions { trusted_keys: vec![a.key.verifying_key()], full: false });
    assert_fails(&report, &["b.json: node key", "not one of the trusted keys"]);
    // A forged DLEQ proof in the bundle (not the one the log signed).
    assert_fails(
        &tampered(&|b| {
            let sent = b.ecdh.as_mut().unwrap().sent.as_mut().unwrap();
            let first = if sent.summary.proof.starts_with('0') { "1" } else { "0" };
            sent.summary.proof.replace_range(..1, first);
        }),
        &["differ from the ones the signed log commits to"],
    );
    // A sampled pair replaced.
    assert_fails(
        &tampered(&|b| {
            let sent = b.ecdh.as_mut().unwrap().sent.as_mut().unwrap();
            sent.sample[3].d = sent.sample[4].d.clone();
        }),
        &["a.json: ECDH DLEQ proofs", "audit path"],
    );
    // A flipped byte in a points file (full check only).
    let points =
        out.path().join(bundles[0].1.ecdh.as_ref().unwrap().sent.as_ref().unwrap().points_file.clone().unwrap());
    let honest = std::fs::read(&points).unwrap();
    let mut bytes = honest.clone();
    bytes[32 * 400 + 5] ^= 1;
    std::fs::write(&points, &bytes).unwrap();
    assert_fails(&verify_bundles(&bundles, &options), &["a.json: ECDH DLEQ proofs", "Merkle root of the pairs"]);
    assert!(verify_bundles(&bundles, &trusted(&a, &b, false)).ok());
    // The same pairs in the peer's bundle (checked in full once, then only against the root).
    std::fs::write(&points, &honest).unwrap();
    let peer_points =
        out.path().join(bundles[1].1.ecdh.as_ref().unwrap().received.as_ref().unwrap().points_file.clone().unwrap());
    let mut bytes = std::fs::read(&peer_points).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&peer_points, &bytes).unwrap();
    assert_fails(&verify_bundles(&bundles, &options), &["b.json: ECDH DLEQ proofs", "Merkle root of the pairs"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mismatched_transcript_digests_are_caught() {
    let out = tempfile::tempdir().unwrap();
    let (a, b, mut bundles) = job(None, out.path()).await;
    // Node b's log, rebuilt as if one frame had been altered in transit: b signs what it saw.
    let b2 = Node::new("b", 2);
    let (ca, cb) = memory_pair(8);
    let (ca, cb) = (Metered::new(ca), Metered::new(cb));
    let config =
        |role| EcdhPsiConfig { role, reveal: Reveal::Both, progress: None, proofs: true, max_peer_items: u64::MAX };
    let (config_a, config_b, items) = (config(Role::Requester), config(Role::Responder), keys(0..10));
    let (x, y) =
        tokio::join!(ecdh::run_with_evidence(&ca, &items, &config_a), ecdh::run_with_evidence(&cb, &items, &config_b),);
    x.unwrap();
    y.unwrap();
    let mut stats = cb.stats();
    stats.received_digest[0] ^= 1;
    b2.record("j1", "responder", &stats, &Err(EcdhPsiError::Protocol("n/a".into())));
    bundles[1] = b2.export("j1", out.path());
    let report = verify_bundles(&bundles, &trusted(&a, &b, false));
    assert_fails(&report, &["transcript digests agree", "mismatched transcript digests"]);
    drop(b);
}

/// A transcript entry of an older node (SHA-256, no `digest` field) next to a BLAKE3 one: the
/// verifier says the digests cannot be compared instead of calling them tampered or equal.
#[tokio::test(flavor = "multi_thread")]
async fn transcript_digests_of_different_hashes_are_not_compared() {
    let out = tempfile::tempdir().unwrap();
    let (a, b, mut bundles) = job(None, out.path()).await;
    let ok = verify_bundles(&bundles, &trusted(&a, &b, false));
    let agree = ok.checks.iter().find(|c| c.name.contains("transcript digests agree")).unwrap();
    assert!(agree.ok && agree.detail.starts_with("blake3: "), "{agree:?}");
    // b's log as an older node would have written it: the same digests, no hash named.
    let transcript: serde_json::Value = bundles[1]
        .1
        .entries
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.entry).unwrap())
        .find(|v| v["event"] == "transcript")
        .unwrap();
    assert_eq!(transcript["digest"], "blake3");
    let b2 = Node::new("b", 2);
    let mut log = AuditLog::open(b2.dir.path(), b2.key.clone()).unwrap();
    log.append("j1", "request", json!({"role": "responder", "protocol": "ecdh", "reveal": "both"})).unwrap();
    log.append("j1", "start", json!({})).unwrap();
    let (sent, received) = (&transcript["sent_digest"], &transcript["received_digest"]);
    log.append("j1", "transcript", json!({"sent_digest": sent, "received_digest": received})).unwrap();
    log.append("j1", "end", json!({})).unwrap();
    drop(log);
    bundles[1] = b2.export("j1", out.path());
    let report = verify_bundles(&bundles, &trusted(&a, &b, false));
    assert_fails(&report, &["transcript digests agree", "recorded blake3, 'b' sha256"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_used_two_keys_is_caught_by_its_peer_and_by_the_auditor() {
    let out = tempfile::tempdir().unwrap();
    let (a, b, bundles) = job(Some(Cheat::SecondKeyFrom(0)), out.path()).await;
    // The honest peer aborted during the job and logged why.
    let a_entries: Vec<&str> = bundles[0].1.entries.iter().map(|e| e.entry.as_str()).collect();
    assert!(a_entries.iter().any(|e| e.contains("failure") && e.contains("DLEQ proof")), "{a_entries:?}");
    // The cheater's own signed evidence does not verify.
    let report = verify_bundles(&bundles, &trusted(&a, &b, false));
    assert_fails(&report, &["b.json: ECDH DLEQ proofs", "the proof this node made (sent) does not verify"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_forged_proof_is_caught() {
    let out = tempfile::tempdir().unwrap();
    let (a, b, bundles) = job(Some(Cheat::ForgedProof), out.path()).await;
    let report = verify_bundles(&bundles[1..], &trusted(&a, &b, true));
    assert_fails(&report, &["the proof this node made (sent) does not verify"]);
}

/// A sharded job's logs: each node logs one `shard` entry per worker connection (as the node's
/// `job::shards` does). Honest entries cross-match; an altered connection, a different range
/// digest, a shard one side did not log, or a shard logged twice is caught.
#[test]
fn shard_entries_cross_match_and_mismatches_are_caught() {
    let out = tempfile::tempdir().unwrap();
    let digest = |c: u8| "ab".repeat(31) + &format!("{c:02x}");
    // (shard, sent, received, range) per node.
    let log_job = |node: &Node, shards: &[(u64, String, String, String)], job_digests: (u8, u8)| {
        let mut log = AuditLog::open(node.dir.path(), node.key.clone()).unwrap();
        log.append("j1", "request", json!({"role": "requester", "protocol": "rr22"})).unwrap();
        log.append("j1", "start", json!({})).unwrap();
        for (shard, sent, received, range) in shards {
            let fields = json!({"shard": shard, "peer": "p", "peer_certificate": "sha256:00", "range_digest": range,
                "sent_digest": sent, "received_digest": received, "digest": "blake3", "bytes_sent": 10,
                "bytes_received": 20, "wire_bytes_sent": 15, "wire_bytes_received": 25});
            log.append("j1", "shard", fields).unwrap();
        }
        log.append(
            "j1",
            "transcript",
            json!({"sent_digest": digest(job_digests.0), "received_digest": digest(job_digests.1), "digest": "blake3"}),
        )
        .unwrap();
        log.append("j1", "end", json!({})).unwrap();
        drop(log);
        node.export("j1", out.path())
    };
    let honest_a: Vec<_> =
        (0..3).map(|i| (i, digest(10 + i as u8), digest(20 + i as u8), digest(30 + i as u8))).collect();
    let mirror = |v: &[(u64, String, String, String)]| -> Vec<_> {
        v.iter().map(|(i, s, r, g)| (*i, r.clone(), s.clone(), g.clone())).collect()
    };
    let honest_b = mirror(&honest_a);
    let check = |shards_a: &[(u64, String, String, String)], shards_b: &[(u64, String, String, String)]| {
        let (a, b) = (Node::new("a", 1), Node::new("b", 2));
        let bundles = vec![log_job(&a, shards_a, (1, 2)), log_job(&b, shards_b, (2, 1))];
        verify_bundles(&bundles, &trusted(&a, &b, false))
    };
    let report = check(&honest_a, &honest_b);
    assert!(report.ok(), "{report:#?}");
    let agree = report.checks.iter().find(|c| c.name.contains("shard transcripts agree")).unwrap();
    assert!(agree.detail.contains("3 shards"), "{agree:?}");

    let mut altered = honest_b.clone();
    altered[1].2 = digest(99);
    assert_fails(&check(&honest_a, &altered), &["shard transcripts agree", "shard 1: mismatched transcript digests"]);
    let mut other_range = honest_b.clone();
    other_range[2].3 = digest(98);
    assert_fails(&check(&honest_a, &other_range), &["shard 2: the range digests differ"]);
    assert_fails(&check(&honest_a, &honest_b[..2]), &["the logs name different shards"]);
    let mut twice = honest_b.clone();
    twice.push(honest_b[0].clone());
    assert_fails(&check(&honest_a, &twice), &["b.json: log entries", "shard 0 is logged twice"]);
}
