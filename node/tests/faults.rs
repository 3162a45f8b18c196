//! Fault injection (issue 11) on real `consort node` processes: a full disk during an audit append
//! and during an output write, and `kill -9` of either node at each stage of a job.
//!
//! The full disk is a file-size limit (`RLIMIT_FSIZE`, set on the running node with `prlimit`,
//! SIGXFSZ ignored so that writes past it fail with `EFBIG`): unlike a loop device or a small
//! tmpfs it needs no root, no mkfs and no mount, so it runs on any CI machine, and it hits the
//! same error paths as ENOSPC (a short or failed write, then the cleanup).
//!
//! The stages are hit by timing, without hooks: the datasets are large enough (debug build) that
//! each stage lasts, the job's stage is read from the node's control socket, and the output
//! stages are seen on disk (the `.partial` temp file, then the renamed output).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{NodeProc, TwoNodes, audit_verifies, job, psi_args, restart_partner, start_node, two_nodes, wait_final};

/// Node commands whose writes past a file-size limit fail (`EFBIG`) instead of killing them.
fn ignore_sigxfsz(command: &mut Command) {
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// Sets (or lifts, with `None`) the running process's file-size limit.
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = libc::rlimit { rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY), rlim_max: libc::RLIM_INFINITY };
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Files in the node's outputs directory (none may be left by a failed or interrupted job).
fn outputs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("outputs"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn psi(nodes: &TwoNodes, out: &Path) -> serde_json::Value {
    let out = common::consort(&psi_args(&nodes.a, out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(
        |_| serde_json::json!({"state": "error", "error": String::from_utf8_lossy(&out.stderr).to_string()}),
    )
}

#[test]
fn a_failed_audit_append_stops_new_jobs_keeps_the_log_verifiable_and_a_restart_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = restart_partner(two_nodes(tmp.path(), 2000, 500), |c| {
        ignore_sigxfsz(c);
        c.args(["--metrics", "127.0.0.1:0"]);
    });
    let out = tmp.path().join("out.csv");
    common::legit_psi_succeeds(&nodes, &out, 500);
    let metrics = common::metrics_addr(&nodes.b);
    assert_eq!(common::http_get(&metrics, "/healthz").0, 200);

    // The partner's audit log cannot grow: its next entry fails with EFBIG.
    let log = nodes.b.join("audit/log.jsonl");
    limit_file_size(nodes.nb.pid(), Some(file_len(&log) + 8));
    let started = Instant::now();
    let failed = psi(&nodes, &tmp.path().join("x.csv"));
    let took = started.elapsed();
    assert_ne!(failed["state"], "done", "{failed}");
    let id = failed["job_id"].as_str().unwrap_or_default().to_string();
    eprintln!("job during the failed append: {failed} after {:.2} s", took.as_secs_f64());
    if !id.is_empty() {
        let record = wait_final(&nodes.b, &id, Duration::from_secs(10));
        assert_eq!(record["state"], "failed", "{record}");
        assert!(record["error"].as_str().unwrap().contains("audit"), "{record}");
    }
    assert!(!tmp.path().join("x.csv").exists());
    audit_verifies(&nodes.b);
    audit_verifies(&nodes.a);

    // Space returns: the running node still takes no jobs (by design, until restarted) and says why.
    limit_file_size(nodes.nb.pid(), None);
    let refused = psi(&nodes, &tmp.path().join("y.csv"));
    assert_ne!(refused["state"], "done", "{refused}");
    let why = refused["error"].as_str().unwrap_or_default();
    assert!(why.contains("audit log"), "{refused}");
    common::jobs(&nodes.b);
    // Its health endpoint says so; the metrics count the failure and the refusal.
    let (status, body) = common::http_get(&metrics, "/healthz");
    assert!(status == 503 && body.contains("audit log could not be written"), "{status} {body}");
    assert_eq!(common::http_get(&metrics, "/readyz").0, 503);
    let scrape = common::http_get(&metrics, "/metrics").1;
    assert!(common::sample(&scrape, "consort_audit_failures_total", "") >= Some(1.0), "{scrape}");
    assert!(common::sample(&scrape, "consort_refusals_total", "reason=\"audit\"") >= Some(1.0), "{scrape}");
    // Its own operator is told at submission.
    let own = common::fails(&[
        "psi",
        common::s(&nodes.b),
        "--peer",
        "bank",
        "--dataset",
        "accounts",
        "--peer-dataset",
        "customers",
        "--out",
        common::s(&tmp.path().join("z.csv")),
    ]);
    assert!(own.contains("takes no new jobs") && own.contains("audit/log.jsonl"), "{own}");
    eprintln!("the partner's operator is told: {}", own.trim());

    // Restarted, it verifies its log, and jobs run again.
    let nodes = restart_partner(nodes, |_| {});
    common::legit_psi_succeeds(&nodes, &out, 500);
    audit_verifies(&nodes.b);
    audit_verifies(&nodes.a);
}

/// A PSI job during which the partner cannot write its output (b.csv is over 1 MB: the partner's
/// copy of it for the output cannot be written under a 256 KiB limit): the nodes and the
/// requester's final status.
fn failed_output_write(tmp: &Path) -> (TwoNodes, PathBuf, serde_json::Value) {
    let nodes = restart_partner(two_nodes(tmp, 30_000, 10_000), ignore_sigxfsz);
    assert!(file_len(&tmp.join("data/b.csv")) > 1 << 20);
    limit_file_size(nodes.nb.pid(), Some(256 << 10));
    let out = tmp.join("out.csv");
    let started = Instant::now();
    let failed = psi(&nodes, &out);
    eprintln!("job with a failed output write: {failed} after {:.2} s", started.elapsed().as_secs_f64());
    (nodes, out, failed)
}

#[test]
fn a_failed_output_write_fails_the_job_on_both_sides_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, out, failed) = failed_output_write(tmp.path());
    assert_eq!(failed["state"], "failed", "{failed}");
    let id = failed["job_id"].as_str().unwrap();
    let record = wait_final(&nodes.b, id, Duration::from_secs(10));
    assert_eq!(record["state"], "failed", "{record}");
    assert!(!out.exists(), "the requester removed its output");
    assert_eq!(outputs(&nodes.b), Vec::<String>::new(), "no output, partial or whole, at the partner");
    audit_verifies(&nodes.b);
    audit_verifies(&nodes.a);

    // The audit log was never hit: with the limit lifted the same node runs jobs again.
    limit_file_size(nodes.nb.pid(), None);
    common::legit_psi_succeeds(&nodes, &out, 10_000);
    audit_verifies(&nodes.b);
}

/// The requester's record of a job whose peer failed after the protocol must not name the output
/// it removed.
#[test]
fn a_job_failed_at_the_end_names_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (_nodes, out, failed) = failed_output_write(tmp.path());
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(!out.exists());
    assert_eq!((&failed["output"], &failed["output_rows"]), (&serde_json::Value::Null, &0.into()), "{failed}");
}

/// The requester's failure names the peer's abort reason, not only that the stream closed.
#[test]
fn the_requester_hears_why_the_peer_failed_at_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (_nodes, _out, failed) = failed_output_write(tmp.path());
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("could not read its data or write its output"), "{failed}");
}

// ------------------------------------------------------------------------------------------------
// kill -9 at each stage
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// Loading the dataset.
    Load,
    /// The PSI protocol.
    Protocol,
    /// Writing the output (its `.partial` temp file exists).
    Output,
    /// Output renamed into place, job not yet ended: the audit evidence and the end exchange.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Requester,
    Responder,
}

/// The job's stage as the node's control socket shows it (`""` if no such job yet).
fn live_stage(rt: &tokio::runtime::Runtime, dir: &Path) -> Option<(String, String, String)> {
    rt.block_on(async {
        let client = consort_node::client::NodeClient::connect(dir).await.ok()?;
        let jobs = client.jobs().await.ok()?;
        let j = jobs.into_iter().find(|j| !j.job_state().is_final())?;
        Some((j.job_id.clone(), j.job_state().to_string(), j.stage.clone()))
    })
}

fn has_file(dir: &Path, pred: impl Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).any(|e| pred(&e.file_name().to_string_lossy())))
        .unwrap_or(false)
}

/// Where `side` writes its output in these jobs.
fn output_dir(nodes: &TwoNodes, side: Side, out: &Path) -> PathBuf {
    match side {
        Side::Requester => out.parent().unwrap().to_path_buf(),
        Side::Responder => nodes.b.join("outputs"),
    }
}

/// Waits until the job is at `stage` on `side`: the job id, or `None` if the job got past it.
fn reach(rt: &tokio::runtime::Runtime, nodes: &TwoNodes, side: Side, stage: Stage, out: &Path) -> Option<String> {
    let dir = match side {
        Side::Requester => &nodes.a,
        Side::Responder => &nodes.b,
    };
    let out_dir = output_dir(nodes, side, out);
    let started = Instant::now();
    let mut id = None;
    while started.elapsed() < Duration::from_secs(120) {
        let file_stage = match stage {
            Stage::Output => has_file(&out_dir, |n| n.ends_with(".partial")),
            Stage::End => has_file(&out_dir, |n| n.ends_with(".csv") && n != "a.csv"),
            _ => false,
        };
        if file_stage {
            return id.or_else(|| live_stage(rt, dir).map(|l| l.0));
        }
        match live_stage(rt, dir) {
            Some((job, _, st)) => {
                id = Some(job);
                let at = match stage {
                    // RR22 jobs stream their dataset: the envelope only checks and counts it.
                    Stage::Load => st == "load dataset" || st == "check dataset",
                    Stage::Protocol => {
                        !["", "queued", "load dataset", "check dataset", "connect"].contains(&st.as_str())
                    }
                    Stage::Output | Stage::End => false,
                };
                if at {
                    return id;
                }
            }
            None if id.is_some() => return None,
            None => {}
        }
        std::thread::sleep(Duration::from_millis(if matches!(stage, Stage::Output | Stage::End) { 1 } else { 5 }));
    }
    None
}

/// One case: a PSI job from the bank, `side`'s node killed at `stage`. Returns false if the job
/// got past the stage before the kill (the caller retries).
fn kill_at(side: Side, stage: Stage) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = two_nodes(tmp.path(), 200_000, 100_000);
    let out = tmp.path().join("out").join("rows.csv");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut args = psi_args(&nodes.a, &out);
    args.extend(["--protocol", "rr22"]);
    if stage == Stage::Load {
        // Registration recorded a full check of each file, which a job on the unchanged file
        // reuses: its check stage then takes no time and the kill cannot land in it. A new
        // modification time makes the record stale, so the job checks the file itself.
        let data = tmp.path().join("data");
        for file in ["a.csv", "b.csv"] {
            let f = std::fs::File::options().write(true).open(data.join(file)).unwrap();
            f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60)).unwrap();
        }
    }
    let submitter: Child = Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let Some(id) = reach(&rt, &nodes, side, stage, &out) else {
        eprintln!("{side:?} {stage:?}: the job got past the stage before the kill; retrying");
        let _ = submitter.wait_with_output();
        return false;
    };
    let TwoNodes { a, b, na, nb, .. } = nodes;
    let (killed_dir, survivor_dir, survivor): (&Path, &Path, NodeProc) = match side {
        Side::Requester => {
            na.kill9();
            (&a, &b, nb)
        }
        Side::Responder => {
            nb.kill9();
            (&b, &a, na)
        }
    };
    let killed_at = Instant::now();
    if (side, stage) == (Side::Requester, Stage::Load) {
        // The request was never sent: the responder has no record of the job at all.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(job(survivor_dir, &id), None, "the responder heard of a job never requested");
    } else {
        let record = wait_final(survivor_dir, &id, Duration::from_secs(30));
        assert_eq!(record["state"], "failed", "{side:?} {stage:?}: the survivor's job {record}");
    }
    let took = killed_at.elapsed();
    let _ = submitter.wait_with_output();

    // No output anywhere once the killed node has started again (it removes what its interrupted
    // job left: the output named in its record, the temp files of a write cut short): the
    // requester's --out directory, both outputs directories.
    audit_verifies(survivor_dir);
    audit_verifies(killed_dir);
    drop(survivor);
    let (restarted, _) = start_node(killed_dir);
    let state = job(killed_dir, &id).map(|j| j["state"].clone());
    let leftovers: Vec<String> = [out.parent().unwrap().to_path_buf(), a.join("outputs"), b.join("outputs")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().map(|e| e.unwrap().path().display().to_string()))
        .collect();
    drop(restarted);
    audit_verifies(killed_dir);
    eprintln!(
        "CASE kill -9 {side:?} at {stage:?}: survivor's job final after {:.2} s; killed node lists {state:?}; leftovers {leftovers:?}",
        took.as_secs_f64()
    );
    assert_eq!(state, Some("interrupted".into()), "{side:?} {stage:?}");
    assert!(leftovers.is_empty(), "{side:?} {stage:?}: output left behind: {leftovers:?}");
    true
}

fn kill_case(side: Side, stage: Stage) {
    assert!((0..3).any(|_| kill_at(side, stage)), "{side:?} {stage:?}: never hit the stage");
}

#[test]
fn kill9_requester_while_loading() {
    kill_case(Side::Requester, Stage::Load);
}

#[test]
fn kill9_responder_while_loading() {
    kill_case(Side::Responder, Stage::Load);
}

#[test]
fn kill9_requester_during_the_protocol() {
    kill_case(Side::Requester, Stage::Protocol);
}

#[test]
fn kill9_responder_during_the_protocol() {
    kill_case(Side::Responder, Stage::Protocol);
}

#[test]
fn kill9_requester_while_writing_its_output() {
    kill_case(Side::Requester, Stage::Output);
}

#[test]
fn kill9_responder_while_writing_its_output() {
    kill_case(Side::Responder, Stage::Output);
}

#[test]
fn kill9_requester_between_its_output_and_the_end_exchange() {
    kill_case(Side::Requester, Stage::End);
}

#[test]
fn kill9_responder_between_its_output_and_the_end_exchange() {
    kill_case(Side::Responder, Stage::End);
}
