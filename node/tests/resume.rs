//! Resuming a streaming RR22 job after a node was killed (issue 12 item 3): real `consort node`
//! processes on loopback, small buckets and ranges so a job has many ranges.

mod common;

use common::{TwoNodes, fails, ok, psi_args, s, start_node_with, two_nodes_with, wait_final};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn small_ranges(c: &mut Command) {
    c.env("CONSORT_RR22_BUCKET_SIZE", "256").env("CONSORT_RESUME_RANGE_BUCKETS", "2");
}

fn rr22<'a>(a: &'a Path, out: &'a Path, resume: Option<&'a str>) -> Vec<&'a str> {
    let mut args = psi_args(a, out);
    args.extend(["--protocol", "rr22"]);
    if let Some(id) = resume {
        args.extend(["--resume", id]);
    }
    args
}

/// The plaintext of an output the node sealed, its lines sorted (two runs of a job draw different
/// salts, hence different joint orders; a resumed run continues its own).
fn sorted_rows(dir: &Path, out: &Path) -> Vec<String> {
    let text = ok(&["export", s(dir), s(out), "--out", "-"]);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("segment-")))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_job_cut_by_a_killed_responder_resumes_to_the_same_output() {
    cut_and_resume(false);
}

#[test]
fn a_job_cut_by_a_killed_requester_resumes_to_the_same_output() {
    cut_and_resume(true);
}

/// Kills the partner's node (or, with `requester`, the bank's) mid-job, restarts it, resumes.
fn cut_and_resume(requester: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let TwoNodes { a, b, na, nb, .. } = two_nodes_with(root, 40_000, 20_000, small_ranges);

    // The reference: the same job without a stop.
    let reference = root.join("reference.csv");
    let done: serde_json::Value = serde_json::from_str(ok(&rr22(&a, &reference, None)).trim()).unwrap();
    assert_eq!(done["state"], "done", "{done}");
    assert!(!a.join("spill").join(done["job_id"].as_str().unwrap()).exists(), "a finished job leaves nothing");

    // The job, and the partner's node killed once the bank recorded a few ranges.
    let out = root.join("out.csv");
    let submitter = Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(rr22(&a, &out, None))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let spill = a.join("spill");
    let mut job_id = String::new();
    for _ in 0..2000 {
        if let Some(entry) = std::fs::read_dir(&spill).ok().and_then(|mut d| d.next()) {
            let dir = entry.unwrap().path();
            if segments(&dir) >= 3 {
                job_id = dir.file_name().unwrap().to_string_lossy().into_owned();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!job_id.is_empty(), "the job never recorded three ranges");
    let (na, nb) = if requester {
        na.kill9();
        let _ = submitter.wait_with_output();
        assert_eq!(wait_final(&b, &job_id, Duration::from_secs(30))["state"], "failed");
        // The bank's node comes back (its state of the job kept); the partner re-pins it.
        let (na, addr_a) = start_node_with(&a, small_ranges);
        ok(&["peer", "add", s(&b), "--name", "bank", "--addr", &addr_a, "--cert", s(&a.join("node.crt")), "--replace"]);
        assert_eq!(common::job(&a, &job_id).unwrap()["state"], "interrupted");
        (na, nb)
    } else {
        nb.kill9();
        let _ = submitter.wait_with_output();
        assert_eq!(wait_final(&a, &job_id, Duration::from_secs(30))["state"], "failed");
        // The partner's node comes back (its state of the job kept); the bank re-pins it.
        let (nb, addr_b) = start_node_with(&b, small_ranges);
        ok(&[
            "peer",
            "add",
            s(&a),
            "--name",
            "partner",
            "--addr",
            &addr_b,
            "--cert",
            s(&b.join("node.crt")),
            "--replace",
        ]);
        (na, nb)
    };
    assert!(!out.exists(), "no output from the cut job");
    let finished_before = segments(&spill.join(&job_id));
    for dir in [&a, &b] {
        assert!(dir.join("spill").join(&job_id).join("checkpoint").exists(), "{} kept the job's state", dir.display());
    }

    // A resume of a job the peer does not have is refused, and leaves the bank's state.
    let err = fails(&rr22(&a, &root.join("never.csv"), Some("no-such-job")));
    assert!(err.contains("no resumable state"), "{err}");
    assert!(!root.join("never.csv").exists());

    // The resume: the same rows as the uninterrupted job, nothing left behind.
    let resumed: serde_json::Value = serde_json::from_str(ok(&rr22(&a, &out, Some(&job_id))).trim()).unwrap();
    assert_eq!(resumed["state"], "done", "{resumed}");
    assert_eq!(sorted_rows(&a, &out), sorted_rows(&a, &reference));
    assert!(finished_before >= 3);
    for dir in [&a, &b] {
        assert!(!dir.join("spill").join(&job_id).exists(), "a finished resume leaves nothing");
    }
    // The audit log links the parts: the resumed job's request names the first.
    let resumed_id = resumed["job_id"].as_str().unwrap();
    for dir in [&a, &b] {
        let log = std::fs::read_to_string(dir.join("audit/log.jsonl")).unwrap();
        assert!(
            log.lines().any(|l| l.contains(resumed_id) && l.contains(&format!("\"resume\":\"{job_id}\""))),
            "{} does not link {resumed_id} to {job_id}",
            dir.display()
        );
    }
    // A second resume of the finished job: nothing to resume.
    let err = fails(&rr22(&a, &root.join("again.csv"), Some(&job_id)));
    assert!(err.contains("no resumable state"), "{err}");
    drop((na, nb));
}
