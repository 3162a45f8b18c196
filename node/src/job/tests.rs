//! The envelope's branches over an in-memory job channel pair: no TLS, no sockets. Two node
//! directories that pin each other, their states opened as a node would, requests driven by the
//! real envelope on one side and either the real envelope or raw frames on the other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use consort_api::proto::peer_frame::Kind as Frame;
use consort_api::proto::{self, JobRequest, SubmitRequest};
use consort_api::{JOB_PROTOCOL_VERSION, JobKind, JobState};
use consort_engine::{DatasetSpec, PsiProtocol};
use consort_protocols::{Reveal, Role};

use super::channel::{JobChannel, memory_pair};
use super::connect::Answer;
use super::envelope;
use super::{Ask, Failure, Job, Outcome, Output, RunCtx};
use crate::state::NodeState;
use crate::tls::{PeerInfo, WireCounters};
use crate::{pair, setup};

const A_CSV: &str = "id,v\n1,a\n2,b\n3,c\n4,d\n";
const B_CSV: &str = "id,w\n3,x\n4,y\n5,z\n";

struct Two {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a: Arc<NodeState>,
    b: Arc<NodeState>,
}

fn addr() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

async fn two() -> Two {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a_dir, b_dir) = pair::init_pair(&root).unwrap();
    pair::pin_pair(&a_dir, addr(), &b_dir, addr()).unwrap();
    std::fs::write(root.join("a.csv"), A_CSV).unwrap();
    std::fs::write(root.join("b.csv"), B_CSV).unwrap();
    let spec = |name: &str, file: &str| DatasetSpec::new(name, root.join(file), &["id"]);
    setup::dataset_add(&a_dir, spec("customers", "a.csv"), vec![setup::parse_grant(pair::B).unwrap()], true, true)
        .unwrap();
    let grant = setup::parse_grant(&format!("{}:psi,train,score", pair::A)).unwrap();
    setup::dataset_add(&b_dir, spec("accounts", "b.csv"), vec![grant], true, true).unwrap();
    let a = NodeState::open(&a_dir, addr()).await.unwrap();
    let b = NodeState::open(&b_dir, addr()).await.unwrap();
    Two { _tmp: tmp, root, a, b }
}

fn psi_submit(peer_dataset: &str, out: &Path) -> SubmitRequest {
    SubmitRequest {
        kind: JobKind::Psi as i32,
        peer: pair::B.into(),
        dataset: "customers".into(),
        peer_dataset: peer_dataset.into(),
        protocol: proto::PsiProtocol::from(PsiProtocol::Ecdh) as i32,
        reveal: proto::Reveal::Both as i32,
        out: out.display().to_string(),
        params: String::new(),
    }
}

/// `name` as `at` knows it: the fingerprint of the certificate pinned there.
fn peer_info(at: &NodeState, name: &str) -> PeerInfo {
    let fingerprint = at.config().peer(name).map(|p| p.fingerprint.clone()).unwrap_or_default();
    PeerInfo { name: name.into(), fingerprint, remote: addr(), wire: Arc::new(WireCounters::default()) }
}

type Opened = Result<(JobChannel, Answer, Arc<WireCounters>)>;
type Opening = std::pin::Pin<Box<dyn Future<Output = Opened> + Send>>;

/// Opens the job "connection" to `b`'s real envelope over an in-memory pair.
fn opener(b: Arc<NodeState>) -> impl FnOnce(JobRequest) -> Opening {
    move |request| {
        Box::pin(async move {
            let (ca, cb) = memory_pair(8);
            let peer = peer_info(&b, pair::A);
            tokio::spawn(envelope::respond(b, peer, request, cb));
            let answer = first_answer(&ca).await?;
            Ok((ca, answer, Arc::new(WireCounters::default())))
        })
    }
}

async fn first_answer(channel: &JobChannel) -> Result<Answer> {
    match channel.recv_kind().await? {
        Frame::Accept(a) => Ok(Answer::Accepted(a)),
        Frame::Reject(r) => Ok(Answer::Refused(r.reason)),
        _ => bail!("unexpected first answer"),
    }
}

/// Submits on `a` and runs the requester's envelope to the end; returns its final status.
async fn run_submitted(t: &Two, request: SubmitRequest) -> proto::JobStatus {
    let (ask, job, dataset, handle) = envelope::prepare(&t.a, request).await.unwrap();
    let result = envelope::request(&t.a, &handle, &ask, job, dataset, opener(t.b.clone())).await;
    envelope::conclude_then_close(&t.a, &handle, result).await;
    // The responder concludes on its own task: wait until its record is final.
    for _ in 0..500 {
        match t.b.jobs.get(&ask.job_id) {
            Some(h) if h.status().job_state().is_final() => break,
            _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    handle.status()
}

fn events(state: &NodeState, job: &str) -> Vec<String> {
    state
        .audit
        .with(|log| Ok(log.entries().to_vec()))
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["job"] == job)
        .map(|v| v["event"].as_str().unwrap().to_string())
        .collect()
}

fn entries(state: &NodeState) -> usize {
    state.audit.with(|log| Ok(log.entries().len())).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_psi_job_runs_through_the_envelope_on_both_sides() {
    let t = two().await;
    let out = t.root.join("out.csv");
    let status = run_submitted(&t, psi_submit("accounts", &out)).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!((status.intersection, status.output_rows), (2, 2));
    let peer = t.b.jobs.get(&status.job_id).unwrap().status();
    assert_eq!((peer.job_state(), peer.role_name(), peer.job_kind()), (JobState::Done, "responder", JobKind::Psi));
    let all = ["request", "grant", "start", "transcript", "proofs", "output", "end"];
    assert_eq!(events(&t.a, &status.job_id), all);
    assert_eq!(events(&t.b, &status.job_id), all);
    let plain = consort_engine::storage::read_data(&out, Some(&t.a.storage.key)).unwrap();
    assert_eq!(String::from_utf8(plain).unwrap().lines().count(), 3);
    assert!(consort_engine::sealed::is_sealed(&t.b.dir.join(&status.peer_output)).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_request_is_recorded_as_refused_and_never_starts() {
    let t = two().await;
    let out = t.root.join("out.csv");
    let status = run_submitted(&t, psi_submit("nope", &out)).await;
    assert_eq!(status.job_state(), JobState::Failed);
    assert!(status.error.contains("refused the job: no dataset 'nope' is shared with 'bank'"), "{}", status.error);
    let peer = t.b.jobs.get(&status.job_id).unwrap().status();
    assert_eq!(peer.job_state(), JobState::Refused);
    assert_eq!(events(&t.b, &status.job_id), ["request", "grant"]);
    assert_eq!(events(&t.a, &status.job_id), ["request", "grant", "failure"]);
    assert!(!out.exists());
    assert_eq!(status.bytes_sent, 0, "no protocol message before the decision");
}

/// Sends `request` to `b`'s envelope as the pinned peer `bank` and returns the first answer.
async fn raw_request(b: &Arc<NodeState>, request: JobRequest) -> Answer {
    let (ca, cb) = memory_pair(8);
    tokio::spawn(envelope::respond(b.clone(), peer_info(b, pair::A), request, cb));
    first_answer(&ca).await.unwrap()
}

fn raw_psi(job_id: &str) -> JobRequest {
    JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: job_id.into(),
        kind: JobKind::Psi as i32,
        protocol: proto::PsiProtocol::Ecdh as i32,
        reveal: proto::Reveal::Both as i32,
        responder_dataset: "accounts".into(),
        params: String::new(),
        rows: 10,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_job_id_is_refused_before_anything_is_logged_under_it() {
    let t = two().await;
    let done = run_submitted(&t, psi_submit("accounts", &t.root.join("out.csv"))).await;
    let refused = run_submitted(&t, psi_submit("nope", &t.root.join("x.csv"))).await;
    for id in [&done.job_id, &refused.job_id] {
        let before = events(&t.b, id);
        let Answer::Refused(reason) = raw_request(&t.b, raw_psi(id)).await else { panic!("reuse accepted") };
        assert!(reason.contains("already used"), "{reason}");
        assert_eq!(events(&t.b, id), before, "nothing logged under a reused id");
    }
    // Still refused after the node restarts (the table is on disk).
    let b = NodeState::open(&t.b.dir, addr()).await.unwrap();
    let Answer::Refused(reason) = raw_request(&b, raw_psi(&done.job_id)).await else { panic!("reuse accepted") };
    assert!(reason.contains("already used"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_or_old_requests_are_refused_without_a_record() {
    let t = two().await;
    let before = entries(&t.b);
    let old = JobRequest { version: 1, ..raw_psi("j1") };
    let Answer::Refused(reason) = raw_request(&t.b, old).await else { panic!("old version accepted") };
    assert!(reason.contains("job protocol version 1 is not supported (this node speaks 2"), "{reason}");
    let bad_id = raw_psi("../../etc");
    let Answer::Refused(reason) = raw_request(&t.b, bad_id).await else { panic!("bad id accepted") };
    assert_eq!(reason, "invalid job id");
    let huge = JobRequest { params: "x".repeat(envelope::MAX_PARAMS_BYTES + 1), ..raw_psi("j2") };
    let Answer::Refused(reason) = raw_request(&t.b, huge).await else { panic!("huge params accepted") };
    assert!(reason.contains("parameters over"), "{reason}");
    // A parameter parser's message quoting a large request is cut before it is logged or sent.
    let long = JobRequest {
        kind: JobKind::Train as i32,
        params: format!("{{\"{}\": 1}}", "x".repeat(7_000)),
        ..raw_psi("j4")
    };
    let Answer::Refused(reason) = raw_request(&t.b, long).await else { panic!("bad params accepted") };
    assert!(reason.len() < envelope::MAX_REASON_CHARS * 4, "{} bytes", reason.len());
    let logged = t.b.audit.with(|log| Ok(log.entries().last().cloned().unwrap())).unwrap();
    assert!(logged.len() < 2_000, "the refusal logged {} bytes", logged.len());
    let unknown_kind = JobRequest { kind: 99, ..raw_psi("j3") };
    let Answer::Refused(reason) = raw_request(&t.b, unknown_kind).await else { panic!("unknown kind accepted") };
    assert!(reason.contains("unknown or unspecified job kind"), "{reason}");
    // The first three left no trace; the long parameters and the unknown kind are policy
    // refusals under good ids.
    assert_eq!(entries(&t.b), before + 4);
    assert!(t.b.jobs.get("j1").is_none() && t.b.jobs.get("j2").is_none());
    assert_eq!(t.b.jobs.get("j3").unwrap().status().job_state(), JobState::Refused);
    // Garbage in the typed fields: refused as policy decisions, never misread as a default.
    for (id, request) in [
        ("j5", JobRequest { protocol: 77, ..raw_psi("j5") }),
        ("j6", JobRequest { reveal: -3, ..raw_psi("j6") }),
        ("j7", JobRequest { kind: JobKind::Deal as i32, params: "{not json".into(), ..raw_psi("j7") }),
    ] {
        let Answer::Refused(reason) = raw_request(&t.b, request).await else { panic!("{id} accepted") };
        assert!(reason.contains("unknown") || reason.contains("bad deal parameters"), "{id}: {reason}");
    }
    // The node is alive and its audit log still verifies after all of it.
    assert_eq!(t.b.jobs.get("j5").unwrap().status().job_state(), JobState::Refused);
    let (lines, heads) = consort_engine::audit::log::read_log(&t.b.dir.join("audit")).unwrap();
    let key = crate::identity::read_signing_key(&t.b.dir).unwrap().verifying_key();
    consort_engine::audit::verify_log(&t.b.dir.join("audit"), &lines, &heads, &key).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_whose_pin_was_replaced_carries_no_request() {
    let t = two().await;
    let before = entries(&t.b);
    // The connection presented the bank's old certificate; the pin has since been replaced.
    let stale = PeerInfo { fingerprint: "sha256:00".into(), ..peer_info(&t.b, pair::A) };
    let (ca, cb) = memory_pair(8);
    tokio::spawn(envelope::respond(t.b.clone(), stale, raw_psi("j1"), cb));
    let Answer::Refused(reason) = first_answer(&ca).await.unwrap() else { panic!("stale pin accepted") };
    assert!(reason.contains("no longer pinned"), "{reason}");
    assert_eq!(entries(&t.b), before, "nothing logged for a revoked connection");
    assert!(t.b.jobs.get("j1").is_none());
    // The responder logs the certificate the connection presented.
    let status = run_submitted(&t, psi_submit("accounts", &t.root.join("o.csv"))).await;
    let presented = peer_info(&t.b, pair::A).fingerprint;
    let log = t.b.audit.with(|log| Ok(log.entries().to_vec())).unwrap();
    let request = log.iter().find(|l| l.contains(&status.job_id) && l.contains("\"request\"")).unwrap();
    assert!(request.contains(&presented), "{request}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_beyond_the_cap_queue_and_then_run() {
    let t = two().await;
    // Every slot of the responder is taken: the request waits, neither refused nor started.
    let slots = t.b.job_slots.clone().acquire_many_owned(4).await.unwrap();
    let t = Arc::new(t);
    let running = {
        let t = t.clone();
        tokio::spawn(async move { run_submitted(&t, psi_submit("accounts", &t.root.join("q.csv"))).await })
    };
    let mut queued = None;
    for _ in 0..200 {
        queued = t.b.jobs.list().into_iter().find(|s| s.stage == "queued");
        if queued.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let queued = queued.expect("the responder never queued the job");
    assert_eq!(queued.job_state(), JobState::Pending);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(t.b.jobs.get(&queued.job_id).unwrap().status().stage, "queued", "it waits while the slots are taken");
    drop(slots);
    let status = running.await.unwrap();
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_holds_its_share_of_slots_queues_though_slots_are_free() {
    let t = two().await;
    // The bank holds its whole share (all slots but one); a free slot is left for other peers.
    let share = t.b.config().limits.jobs_per_peer() as u32;
    assert_eq!(share, 3);
    let held = t.b.peer_share(pair::A).acquire_many_owned(share).await.unwrap();
    let t = Arc::new(t);
    let running = {
        let t = t.clone();
        tokio::spawn(async move { run_submitted(&t, psi_submit("accounts", &t.root.join("q.csv"))).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let queued = t.b.jobs.list().into_iter().find(|s| s.stage == "queued").expect("the bank's job should queue");
    assert_eq!(t.b.job_slots.available_permits(), 4, "the node's slots stay free for other peers");
    drop(held);
    let status = running.await.unwrap();
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!(t.b.jobs.get(&queued.job_id).unwrap().status().job_state(), JobState::Done);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_peer_fails_the_job_after_the_idle_time() {
    let (mine, theirs) = super::channel::memory_pair_idle(8, std::time::Duration::from_secs(1));
    let started = std::time::Instant::now();
    let err = mine.recv_kind().await.unwrap_err();
    assert!(err.to_string().contains("the peer sent nothing for 1 s"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    drop(theirs);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dealer_must_be_a_third_node() {
    let t = two().await;
    // `peer add` refuses a node's own certificate; a hand-edited config pins it under a name.
    let mut config = crate::config::NodeConfig::load(&t.b.dir).unwrap();
    config.peers.push(crate::config::PeerEntry {
        name: "me".into(),
        addr: "127.0.0.1:9".into(),
        cert: crate::config::TLS_CERT_FILE.into(),
        fingerprint: crate::identity::fingerprint(&t.b.cert),
        previous: None,
    });
    config.save(&t.b.dir).unwrap();
    t.b.reload().unwrap();
    let train = |id: &str, dealer: &str| {
        let params = consort_engine::lr::LrParams { dealer: Some(dealer.into()), ..Default::default() };
        JobRequest { kind: JobKind::Train as i32, params: serde_json::to_string(&params).unwrap(), ..raw_psi(id) }
    };
    for (id, dealer, why) in [("j1", pair::A, "is the other party"), ("j2", "me", "is this node")] {
        let Answer::Refused(reason) = raw_request(&t.b, train(id, dealer)).await else { panic!("{dealer} accepted") };
        assert!(reason.contains(why), "{reason}");
        assert_eq!(t.b.jobs.get(id).unwrap().status().job_state(), JobState::Refused);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_audit_write_error_the_node_refuses_new_jobs() {
    let t = two().await;
    // The audit directory becomes a file: the next append fails (ENOTDIR).
    let audit = t.b.dir.join("audit");
    std::fs::rename(&audit, t.b.dir.join("audit.moved")).unwrap();
    std::fs::write(&audit, b"").unwrap();
    let Answer::Refused(reason) = raw_request(&t.b, raw_psi("j1")).await else { panic!("accepted unlogged") };
    assert!(reason.contains("cannot record the job in its audit log"), "{reason}");
    assert!(!t.b.audit.healthy());
    // Space or permissions back: still no new jobs until the node restarts.
    std::fs::remove_file(&audit).unwrap();
    std::fs::rename(t.b.dir.join("audit.moved"), &audit).unwrap();
    let Answer::Refused(reason) = raw_request(&t.b, raw_psi("j2")).await else { panic!("accepted unlogged") };
    assert!(reason.contains("takes no new jobs"), "{reason}");
    let restarted = NodeState::open(&t.b.dir, addr()).await.unwrap();
    assert!(restarted.audit.healthy());
}

/// A job kind of the tests: writes its output, then succeeds or fails as told.
struct TestJob {
    fail: bool,
}

#[tonic::async_trait]
impl Job for TestJob {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        None
    }
    fn wire_params(&self) -> String {
        String::new()
    }
    fn audited(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        if self.fail {
            return Err(Failure::private(anyhow::anyhow!("secret.csv:7: bad value 'alice'")));
        }
        let path = ctx.state.dir.join("outputs/test-out.csv");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "k\n1\n").unwrap();
        Ok(Outcome {
            output: Some(Output { path, shown: "outputs/test-out.csv".into(), rows: 1 }),
            ..Default::default()
        })
    }
}

fn test_ask(id: &str) -> Ask {
    Ask {
        kind: JobKind::Psi,
        role: Role::Requester,
        job_id: id.into(),
        peer: pair::B.into(),
        dataset: String::new(),
        peer_dataset: String::new(),
        protocol: None,
        reveal: None,
        out: None,
        params: String::new(),
    }
}

/// [`TestJob`] (failing with `fail`) through the envelope's accepted path over `channel`.
async fn run_test_job(
    state: &Arc<NodeState>,
    handle: &Arc<super::JobHandle>,
    ask: &Ask,
    fail: bool,
    channel: JobChannel,
) -> Result<envelope::Stream, Failure> {
    envelope::run_accepted(
        state,
        handle,
        ask,
        Box::new(TestJob { fail }),
        channel,
        None,
        &WireCounters::default(),
        consort_engine::JobLimits::default(),
    )
    .await
}

async fn test_handle(state: &NodeState, id: &str) -> Arc<super::JobHandle> {
    let status = proto::JobStatus { job_id: id.into(), state: JobState::Pending as i32, ..Default::default() };
    state.jobs.insert(status).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_aborts_at_the_end_rolls_back_this_sides_output() {
    let t = two().await;
    let handle = test_handle(&t.a, "jt1").await;
    let (mine, theirs) = memory_pair(8);
    let peer = tokio::spawn(async move {
        // The peer sees our JobEnd, then fails.
        let end = theirs.recv_kind().await.unwrap();
        assert!(matches!(end, Frame::End(ref e) if e.output_rows == 1), "{end:?}");
        theirs.abort("could not write its output").await;
    });
    let ask = test_ask("jt1");
    let result = run_test_job(&t.a, &handle, &ask, false, mine).await;
    peer.await.unwrap();
    let Err(e) = result else { panic!("the job should fail") };
    assert!(format!("{:#}", e.local).contains("the peer failed at the end of the job: could not write"), "{e:?}");
    assert!(!t.a.dir.join("outputs/test-out.csv").exists(), "output rolled back");
    envelope::conclude(&t.a, &handle, Err(e)).await;
    assert_eq!(events(&t.a, "jt1"), ["start", "transcript", "output", "failure"]);
    assert_eq!(handle.status().job_state(), JobState::Failed);
}

/// The peer's `JobEnd` names where it wrote its output: its own text, which this side's job table
/// (persisted, shown by `consort job` and the CLI's summary) keeps cut and cleaned.
#[tokio::test(flavor = "multi_thread")]
async fn a_peers_output_path_is_cut_and_cleaned() {
    let t = two().await;
    let handle = test_handle(&t.a, "jt9").await;
    let (mine, theirs) = memory_pair(8);
    let sent = format!("outputs/x\n\x1b[2J{}", "y".repeat(1 << 20));
    let peer = tokio::spawn(async move {
        let ours = theirs.recv_kind().await.unwrap();
        assert!(matches!(ours, Frame::End(_)), "{ours:?}");
        theirs.send_kind(Frame::End(proto::JobEnd { output_rows: 1, output: sent })).await.unwrap();
    });
    let result = run_test_job(&t.a, &handle, &test_ask("jt9"), false, mine).await;
    peer.await.unwrap();
    assert!(result.is_ok(), "the job should succeed");
    let shown = handle.status().peer_output;
    assert!(shown.chars().count() <= envelope::MAX_REASON_CHARS, "{} chars", shown.chars().count());
    assert!(shown.starts_with("outputs/x\u{FFFD}\u{FFFD}[2J") && !shown.chars().any(char::is_control), "{shown:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_tells_the_peer_only_the_safe_reason() {
    let t = two().await;
    let handle = test_handle(&t.a, "jt2").await;
    let (mine, theirs) = memory_pair(8);
    let ask = test_ask("jt2");
    let result = run_test_job(&t.a, &handle, &ask, true, mine).await;
    let Err(failure) = result else { panic!("the job should fail") };
    let local = format!("{:#}", failure.local);
    assert!(local.contains("secret.csv:7"), "the operator sees why: {local}");
    match theirs.recv_kind().await {
        Err(consort_protocols::ChannelError::Aborted(reason)) => {
            assert!(!reason.contains("secret") && !reason.contains("alice"), "{reason}");
            assert!(reason.contains("its operator sees why in its log"), "{reason}");
        }
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(events(&t.a, "jt2"), ["start"]);
    // The audit log's failure entry holds the safe reason; the job record the whole story.
    envelope::conclude(&t.a, &handle, Err(failure)).await;
    let log = t.a.audit.with(|log| Ok(log.entries().last().cloned().unwrap())).unwrap();
    assert!(log.contains("\"failure\"") && !log.contains("secret") && !log.contains("alice"), "{log}");
    assert!(handle.status().error.contains("secret.csv:7"));
    let record = std::fs::read_to_string(t.a.dir.join("jobs/jt2.json")).unwrap();
    assert!(record.contains("secret.csv:7"), "the local job table keeps the details");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_goes_away_before_answering_fails_the_request() {
    let t = two().await;
    let (ask, job, dataset, handle) =
        envelope::prepare(&t.a, psi_submit("accounts", &t.root.join("o.csv"))).await.unwrap();
    let open = |_request: JobRequest| async move {
        let (ca, cb) = memory_pair(8);
        drop(cb);
        let answer = first_answer(&ca).await?;
        Ok((ca, answer, Arc::new(WireCounters::default())))
    };
    let result = envelope::request(&t.a, &handle, &ask, job, dataset, open).await;
    assert!(result.is_err());
    envelope::conclude_then_close(&t.a, &handle, result).await;
    assert_eq!(handle.status().job_state(), JobState::Failed);
    assert_eq!(events(&t.a, &ask.job_id), ["failure"]);
}

// ------------------------------------------------------------------------------------------------
// Grant policy (issue 11): every bound is checked in the envelope, for every kind, before the job
// is accepted; a refusal is logged as one bounded `grant` entry.
// ------------------------------------------------------------------------------------------------

/// Replaces `bank`'s grant on `accounts` at `b` and reloads.
fn set_grant(t: &Two, f: impl FnOnce(&mut crate::config::Grant)) {
    let mut grant = crate::config::Grant::new(pair::A, vec![JobKind::Psi, JobKind::Train, JobKind::Score]);
    f(&mut grant);
    setup::grant_set(&t.b.dir, "accounts", grant).unwrap();
    t.b.reload().unwrap();
}

fn train_request(id: &str) -> JobRequest {
    let params = consort_engine::lr::LrParams::default();
    JobRequest { kind: JobKind::Train as i32, params: serde_json::to_string(&params).unwrap(), ..raw_psi(id) }
}

async fn refused(t: &Two, request: JobRequest) -> String {
    let id = request.job_id.clone();
    let Answer::Refused(reason) = raw_request(&t.b, request).await else { panic!("{id} accepted") };
    assert_eq!(t.b.jobs.get(&id).unwrap().status().job_state(), JobState::Refused, "{id}");
    assert_eq!(events(&t.b, &id), ["request", "grant"], "{id}: one bounded record of the refusal");
    reason
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_bounds_protocols_reveal_modes_peer_size_dealers_and_time() {
    let t = two().await;
    set_grant(&t, |g| g.protocols = vec![PsiProtocol::Rr22]);
    assert!(refused(&t, raw_psi("p1")).await.contains("protocol ecdh is not allowed"));
    set_grant(&t, |g| g.reveal = vec![Reveal::RequesterOnly]);
    assert!(refused(&t, raw_psi("p2")).await.contains("reveal mode both is not allowed"));
    set_grant(&t, |g| g.max_peer_rows = Some(9));
    let reason = refused(&t, raw_psi("p3")).await;
    assert!(reason.contains("set of 10 rows is larger than the 9 allowed"), "{reason}");
    set_grant(&t, |g| g.min_aligned_rows = 5);
    let only_requester = JobRequest { reveal: proto::Reveal::RequesterOnly as i32, ..raw_psi("p4") };
    assert!(refused(&t, only_requester).await.contains("cannot check when only the requester learns"));
    set_grant(&t, |g| g.expires = Some("2020-01-01".into()));
    assert!(refused(&t, raw_psi("p5")).await.contains("the grant expired on 2020-01-01"));
    // A dealer the grant does not list (default: dealer-free only).
    set_grant(&t, |_| {});
    let mut config = crate::config::NodeConfig::load(&t.b.dir).unwrap();
    config.peers.push(crate::config::PeerEntry { name: "carol".into(), ..config.peers[0].clone() });
    config.peers.last_mut().unwrap().fingerprint = "0".repeat(64);
    config.save(&t.b.dir).unwrap();
    t.b.reload().unwrap();
    let params = consort_engine::lr::LrParams { dealer: Some("carol".into()), ..Default::default() };
    let with_dealer = JobRequest { params: serde_json::to_string(&params).unwrap(), ..train_request("p6") };
    assert!(refused(&t, with_dealer).await.contains("training with a dealer ('carol') is not allowed"));
    // The same requests inside the grant's bounds are accepted.
    set_grant(&t, |g| {
        g.protocols = vec![PsiProtocol::Ecdh];
        g.max_peer_rows = Some(10);
        g.expires = Some("2999-01-01".into());
    });
    assert!(matches!(raw_request(&t.b, raw_psi("p7")).await, Answer::Accepted(_)));
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_count_jobs_per_day_and_models_per_dataset() {
    let t = two().await;
    // Earlier jobs of this peer on this dataset, as the table holds them.
    let earlier = |id: &str, kind: JobKind| proto::JobStatus {
        job_id: id.into(),
        kind: kind as i32,
        role: proto::Role::Responder as i32,
        peer: pair::A.into(),
        dataset: "accounts".into(),
        ..Default::default()
    };
    let h = t.b.jobs.insert(earlier("t0", JobKind::Train)).await.unwrap().unwrap();
    h.set_state(JobState::Done, None).await;
    // Default: one model per dataset, so a second train job is refused (the reconstruction
    // probe of issue 11 needs one model per feature).
    let reason = refused(&t, train_request("t1")).await;
    assert!(reason.contains("the budget of 1 model(s) on this dataset is used up"), "{reason}");
    // A failed train job left no model and does not count; a second model needs the grant to say so.
    set_grant(&t, |g| g.models = Some(2));
    let h = t.b.jobs.insert(earlier("t2", JobKind::Train)).await.unwrap().unwrap();
    h.set_state(JobState::Failed, None).await;
    assert!(matches!(raw_request(&t.b, train_request("t3")).await, Answer::Accepted(_)));
    // Jobs per day: refused requests do not count, accepted ones of any kind do.
    set_grant(&t, |g| g.jobs_per_day = Some(3));
    let reason = refused(&t, raw_psi("d1")).await;
    assert!(reason.contains("the budget of 3 jobs per 24 hours is used up"), "{reason}");
    // A job of this node that the peer refused (failed here, `refused_by_peer`) does not count.
    let h =
        t.b.jobs
            .insert(proto::JobStatus { refused_by_peer: true, ..earlier("r0", JobKind::Psi) })
            .await
            .unwrap()
            .unwrap();
    h.set_state(JobState::Failed, None).await;
    set_grant(&t, |g| g.jobs_per_day = Some(4));
    assert!(matches!(raw_request(&t.b, raw_psi("d2")).await, Answer::Accepted(_)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_keeps_being_refused_is_turned_away_unrecorded() {
    let t = two().await;
    set_grant(&t, |g| g.protocols = vec![PsiProtocol::Rr22]);
    for i in 0..crate::policy::MAX_REFUSALS_PER_MINUTE {
        refused(&t, raw_psi(&format!("r{i}"))).await;
    }
    let before = entries(&t.b);
    let Answer::Refused(reason) = raw_request(&t.b, raw_psi("over")).await else { panic!("accepted") };
    assert!(reason.contains("too many refused requests"), "{reason}");
    assert_eq!(entries(&t.b), before, "nothing logged");
    assert!(t.b.jobs.get("over").is_none(), "nothing recorded");
}

/// Sends `request` to `b` and returns the requester's end of the channel after the first frame.
async fn waiting_request(b: &Arc<NodeState>, request: JobRequest) -> JobChannel {
    let (ca, cb) = memory_pair(8);
    tokio::spawn(envelope::respond(b.clone(), peer_info(b, pair::A), request, cb));
    match ca.recv_kind().await.unwrap() {
        Frame::Waiting(_) => ca,
        other => panic!("expected a waiting frame, got {}", super::channel::kind_name(&other)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_approval_a_job_waits_for_the_operator() {
    let t = two().await;
    set_grant(&t, |g| g.approval = true);
    // Approved: the job goes on (accepted), the decision is logged.
    let ca = waiting_request(&t.b, raw_psi("a1")).await;
    let status = t.b.jobs.get("a1").unwrap().status();
    assert_eq!(status.job_state(), JobState::AwaitingApproval);
    assert!(status.request.contains("\"kind\":\"psi\"") && status.request.contains("accounts"), "{}", status.request);
    assert!(t.b.approvals.decide("a1", crate::policy::Verdict::Approve));
    assert!(matches!(first_answer(&ca).await.unwrap(), Answer::Accepted(_)));
    assert_eq!(events(&t.b, "a1")[..3], ["request", "grant", "approval"]);
    drop(ca);
    // Denied: refused with the operator's reason.
    let ca = waiting_request(&t.b, raw_psi("a2")).await;
    assert!(t.b.approvals.decide("a2", crate::policy::Verdict::Deny("not this quarter".into())));
    let Answer::Refused(reason) = first_answer(&ca).await.unwrap() else { panic!("denied job accepted") };
    assert!(reason.contains("denied the job: not this quarter"), "{reason}");
    assert_eq!(t.b.jobs.get("a2").unwrap().status().job_state(), JobState::Refused);
    // The requester goes away while waiting: the job fails, nothing waits any more.
    let ca = waiting_request(&t.b, raw_psi("a3")).await;
    drop(ca);
    for _ in 0..200 {
        if t.b.jobs.get("a3").unwrap().status().job_state().is_final() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(t.b.jobs.get("a3").unwrap().status().job_state(), JobState::Failed);
    assert!(!t.b.approvals.decide("a3", crate::policy::Verdict::Approve));
    let key = crate::identity::read_signing_key(&t.b.dir).unwrap().verifying_key();
    let (lines, heads) = consort_engine::audit::log::read_log(&t.b.dir.join("audit")).unwrap();
    consort_engine::audit::verify_log(&t.b.dir.join("audit"), &lines, &heads, &key).unwrap();
}

// ------------------------------------------------------------------------------------------------
// Payload (labeled) PSI joins (issue 13 item 1)
// ------------------------------------------------------------------------------------------------

fn payload_submit(out: &Path, columns: &[&str], reveal: Reveal, protocol: PsiProtocol) -> SubmitRequest {
    let params = serde_json::json!({ "peer_columns": columns }).to_string();
    SubmitRequest {
        protocol: proto::PsiProtocol::from(protocol) as i32,
        reveal: proto::Reveal::from(reveal) as i32,
        params,
        ..psi_submit("accounts", out)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_join_gives_the_requester_the_shared_columns_of_its_matches() {
    let t = two().await;
    set_grant(&t, |g| g.share = vec!["w".into()]);
    let runs = [PsiProtocol::Rr22, PsiProtocol::Ecdh]
        .into_iter()
        .flat_map(|p| [(p, Reveal::RequesterOnly), (p, Reveal::Both)]);
    for (protocol, reveal) in runs {
        let out = t.root.join(format!("joined-{protocol:?}-{reveal:?}.csv"));
        let status = run_submitted(&t, payload_submit(&out, &["w"], reveal, protocol)).await;
        assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
        assert_eq!((status.intersection, status.output_rows), (2, 2));
        let plain = consort_engine::storage::read_data(&out, Some(&t.a.storage.key)).unwrap();
        let mut lines: Vec<String> = String::from_utf8(plain).unwrap().lines().map(String::from).collect();
        let header = lines.remove(0);
        lines.sort();
        assert_eq!(header, format!("id,v,{}.w", pair::B));
        assert_eq!(lines, ["3,c,x", "4,d,y"], "the plaintext join of A_CSV and B_CSV on id");
        let peer = t.b.jobs.get(&status.job_id).unwrap().status();
        assert_eq!(peer.job_state(), JobState::Done);
        assert_eq!(
            status.peer_output.is_empty(),
            reveal == Reveal::RequesterOnly,
            "the responder writes rows only with reveal both"
        );
        assert_eq!(peer.has_intersection, reveal == Reveal::Both);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_column_not_shared_is_refused_before_any_protocol_message() {
    let t = two().await;
    let over = |protocol: PsiProtocol, columns: &[&str], id: &str| JobRequest {
        protocol: proto::PsiProtocol::from(protocol) as i32,
        params: serde_json::json!({ "peer_columns": columns }).to_string(),
        ..raw_psi(id)
    };
    let with = |columns: &[&str], id: &str| over(PsiProtocol::Rr22, columns, id);
    // No share at all, then a share of another column; over both protocols.
    for protocol in [PsiProtocol::Rr22, PsiProtocol::Ecdh] {
        set_grant(&t, |_| {});
        let reason = refused(&t, over(protocol, &["w"], &format!("s1-{protocol:?}"))).await;
        assert!(reason.contains("column 'w' is not shared with this peer"), "{reason}");
        set_grant(&t, |g| g.share = vec!["id".into()]);
        let reason = refused(&t, over(protocol, &["id", "w"], &format!("s2-{protocol:?}"))).await;
        assert!(reason.contains("column 'w' is not shared") && reason.contains("(shared: id)"), "{reason}");
    }
    // Invalid parameters are refused in `plan`, before the grant is even looked at.
    for (n, (params, expect)) in [
        (serde_json::json!({ "peer_columns": ["w\n"] }).to_string(), "peer column 1 is not a valid column name"),
        (serde_json::json!({ "peer_columns": ["id", "id"] }).to_string(), "peer column 2 is named twice"),
        (serde_json::json!({ "peer_columns": vec!["c"; 65] }).to_string(), "at most 64 peer columns"),
        (serde_json::json!({ "other": 1 }).to_string(), "psi parameters are not valid"),
    ]
    .into_iter()
    .enumerate()
    {
        let request = JobRequest { params, ..with(&[], &format!("s3-{n}")) };
        let Answer::Refused(reason) = raw_request(&t.b, request).await else { panic!("accepted") };
        assert!(reason.contains(expect), "{reason}");
    }
    // The row index of a several-peer join is the requester's own option: a peer asking a
    // responder for it is refused (it would change nothing there; it is malformed).
    set_grant(&t, |g| g.share = vec!["w".into()]);
    let indexed = JobRequest {
        params: serde_json::json!({ "peer_columns": ["w"], "row_index": true }).to_string(),
        ..with(&[], "s5")
    };
    let Answer::Refused(reason) = raw_request(&t.b, indexed).await else { panic!("accepted") };
    assert!(reason.contains("the row index is an option of the requester"), "{reason}");
    set_grant(&t, |g| g.share = vec!["id".into()]);
    // Through the requester: the job fails as refused by the peer, nothing is written.
    for protocol in [PsiProtocol::Rr22, PsiProtocol::Ecdh] {
        let out = t.root.join("never.csv");
        let status = run_submitted(&t, payload_submit(&out, &["w"], Reveal::RequesterOnly, protocol)).await;
        assert_eq!(status.job_state(), JobState::Failed);
        assert!(status.refused_by_peer && status.error.contains("column 'w' is not shared"), "{}", status.error);
        assert!(!out.exists());
    }
}

/// A SecureBoost train job's stage follows the protocol: the setup, then every tree with trees
/// done of trees asked for, and A's holdout loss when there is one.
#[tokio::test(flavor = "multi_thread")]
async fn secureboost_progress_sets_the_stage_per_tree() {
    use consort_protocols::mpc::secureboost::SbProgress;
    let t = two().await;
    let handle = test_handle(&t.a, "jsb").await;
    let progress = super::secureboost::sb_progress(&handle);
    let seen = |p: SbProgress| {
        progress(p);
        let s = handle.status();
        (s.stage, s.done, s.total)
    };
    assert_eq!(
        seen(SbProgress { trees_done: 0, trees: 40, setup: true, loss: None }),
        ("secureboost setup".into(), 0, 40)
    );
    assert_eq!(
        seen(SbProgress { trees_done: 3, trees: 40, setup: false, loss: Some(0.41234) }),
        ("tree 3/40 holdout loss 0.4123".into(), 3, 40)
    );
    assert_eq!(seen(SbProgress { trees_done: 4, trees: 40, setup: false, loss: None }), ("tree 4/40".into(), 4, 40));
}
