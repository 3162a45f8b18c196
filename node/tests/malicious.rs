//! A pinned but malicious peer (issue 11): a rogue node identity speaks the job exchange by hand
//! against a real `consort node` process (the victim, "partner"). Every case must end in a clean
//! refusal or abort within a bounded time, with the victim alive and answering, its peak RSS
//! bounded, a legitimate job with the honest node ("bank") still running, and the victim's audit
//! log verifying.
//!
//! Covered elsewhere: a job id reused across a restart (`restart.rs`), idle TCP connections that
//! never start TLS (`flood.rs`).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::rogue::{self, Ending, Rogue, ecdh_hello, ending, psi_request, rr22_hello};
use common::{TwoNodes, cpu_seconds, ok, restart_partner, s, set_limits, two_nodes, victim_survives, wait_final};
use consort_api::JobKind;
use consort_api::proto::PsiProtocol;
use consort_engine::lr::LrParams;
use consort_node::job::connect::Answer;

const ROWS: u64 = 2000;
const OVERLAP: u64 = 500;
/// Peak RSS the victim must stay under whatever the rogue announces.
const MAX_RSS_MIB: u64 = 500;
/// The victim's `[limits] peer_idle_seconds` in these tests.
const IDLE_SECS: u64 = 3;

/// The honest pair, the rogue "mallory" pinned by the victim ("partner", granted dataset "shared"
/// — its b.csv — for psi, train and score), and a runtime for the rogue's async side.
struct Setup {
    _tmp: tempfile::TempDir,
    nodes: TwoNodes,
    rogue: Rogue,
    rt: tokio::runtime::Runtime,
    out: PathBuf,
}

fn setup(max_concurrent_jobs: Option<u32>) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let nodes = two_nodes(&root, ROWS, OVERLAP);
    // The victim restarts with short limits so that stalls end within the test.
    set_limits(&nodes.b, max_concurrent_jobs, Some(IDLE_SECS));
    let nodes = restart_partner(nodes, |_| {});
    let data = root.join("data/b.csv");
    let b = &nodes.b;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rogue = rt.block_on(Rogue::pinned(&root, "mallory", b, "partner", &nodes.addr_b));
    ok(&[
        "dataset",
        "add",
        s(b),
        "--name",
        "shared",
        "--file",
        s(&data),
        "--key",
        "id",
        "--grant",
        "mallory:psi,train,score,secureboost,secureboost-score,bin",
    ]);
    Setup { out: root.join("legit.csv"), _tmp: tmp, nodes, rogue, rt }
}

impl Setup {
    fn survives(&self) -> u64 {
        victim_survives(&self.nodes, &self.out, OVERLAP, MAX_RSS_MIB)
    }

    fn audit_lines(&self) -> usize {
        std::fs::read_to_string(self.nodes.b.join("audit/log.jsonl")).map(|l| l.lines().count()).unwrap_or(0)
    }

    /// The victim's record of job `id` once final, which must be `state`.
    fn ends(&self, id: &str, state: &str, limit: Duration) -> serde_json::Value {
        let record = wait_final(&self.nodes.b, id, limit);
        assert_eq!(record["state"], state, "{record}");
        record
    }

    /// A request the victim must refuse before running anything: the reason.
    fn refused(&self, request: consort_api::proto::JobRequest) -> String {
        let id = request.job_id.clone();
        let reason = self.rt.block_on(self.rogue.refused(request));
        if let Some(record) = common::job(&self.nodes.b, &id) {
            assert_eq!(record["state"], "refused", "{record}");
        }
        reason
    }
}

/// An accepted PSI job whose requester sends `hello` and then one garbage frame: how the victim's
/// side ended, after how long, and the victim's record.
fn hello_then_garbage(t: &Setup, protocol: PsiProtocol, hello: bytes::Bytes) -> (Ending, Duration, serde_json::Value) {
    let request = psi_request(protocol, "shared");
    let id = request.job_id.clone();
    let (end, took) = t.rt.block_on(async {
        let channel = t.rogue.accepted(request).await;
        rogue::send(&channel, hello).await;
        rogue::send(&channel, bytes::Bytes::from_static(&[0xff; 64])).await;
        ending(&channel, Duration::from_secs(60)).await
    });
    let record = t.ends(&id, "failed", Duration::from_secs(10));
    (end, took, record)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn report(case: &str, end: &Ending, took: Duration, rss: u64) {
    eprintln!("CASE {case}: {end:?} after {:.2} s; victim peak RSS {rss} MiB; audit log verifies", took.as_secs_f64());
}

#[test]
fn ecdh_hello_announcing_2_pow_60_items_is_aborted() {
    let t = setup(None);
    let (end, took, record) = hello_then_garbage(&t, PsiProtocol::Ecdh, ecdh_hello(1 << 60));
    assert!(matches!(&end, Ending::Aborted(r) if r.contains("announced")), "{end:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(record["error"].as_str().unwrap().contains("at most"), "{record}");
    report("ecdh 2^60", &end, took, t.survives());
}

#[test]
fn ecdh_hello_announcing_2_pow_32_minus_1_items_then_garbage_is_aborted() {
    let t = setup(None);
    let (end, took, _) = hello_then_garbage(&t, PsiProtocol::Ecdh, ecdh_hello(u64::from(u32::MAX)));
    assert!(matches!(&end, Ending::Aborted(_)), "{end:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    report("ecdh 2^32-1", &end, took, t.survives());
}

#[test]
fn rr22_hello_announcing_2_pow_60_items_is_aborted() {
    let t = setup(None);
    let (end, took, _) = hello_then_garbage(&t, PsiProtocol::Rr22, rr22_hello(1 << 60));
    assert!(matches!(&end, Ending::Aborted(r) if r.contains("announces")), "{end:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    report("rr22 2^60", &end, took, t.survives());
}

/// Just under RR22's 32-bit position limit: the victim accepts the hello, so what it does next is
/// proportional to the announced size unless something bounds it.
#[test]
fn rr22_hello_announcing_2_pow_32_minus_2_items_then_garbage_is_aborted() {
    let t = setup(None);
    let pid = t.nodes.nb.pid();
    // Hello, then 2 s of silence: nothing proportional to the announced size starts before the
    // peer's next message.
    let request = psi_request(PsiProtocol::Rr22, "shared");
    let id = request.job_id.clone();
    let (stall_cpu, end) = t.rt.block_on(async {
        let channel = t.rogue.accepted(request).await;
        rogue::send(&channel, rr22_hello(u64::from(u32::MAX) - 1)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stall_cpu = cpu_seconds(pid) - before;
        rogue::send(&channel, bytes::Bytes::from_static(&[0xff; 64])).await;
        (stall_cpu, ending(&channel, Duration::from_secs(30)).await)
    });
    t.ends(&id, "failed", Duration::from_secs(10));
    eprintln!("rr22 2^32-2: victim CPU during a 2 s stall after the hello: {stall_cpu:.2} s; then garbage: {end:?}");
    assert!(stall_cpu < 0.5, "{stall_cpu}");
    let cpu_before = cpu_seconds(pid);
    let (end, took, _) = hello_then_garbage(&t, PsiProtocol::Rr22, rr22_hello(u64::from(u32::MAX) - 1));
    let cpu = cpu_seconds(pid) - cpu_before;
    eprintln!("rr22 2^32-2: victim CPU from request to abort {cpu:.2} s");
    assert!(matches!(&end, Ending::Aborted(_)), "{end:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    report("rr22 2^32-2", &end, took, t.survives());
}

/// What bounds the victim's work today is the peer: a hello announcing 2^32 − 2 (RR22) or 2^32 − 1
/// (ECDH) items is accepted, and the victim then works in proportion to the announced size for as
/// long as the peer keeps sending well-formed frames (RR22: 4096 buckets of ~2^20 cells, ~0.5 s of
/// CPU per bucket measured with an honest 2^20-item peer). With a per-grant maximum peer set size
/// the hello itself must be refused: here, before the idle limit ends the job. (If the maximum has
/// no default below 2^32, set it on the "shared" grant in `setup`.)
#[test]
fn a_hello_above_the_grants_maximum_peer_set_size_is_refused_at_once() {
    let t = setup(None);
    for (protocol, hello) in
        [(PsiProtocol::Rr22, rr22_hello(u64::from(u32::MAX) - 1)), (PsiProtocol::Ecdh, ecdh_hello(u64::from(u32::MAX)))]
    {
        let (end, took) = t.rt.block_on(async {
            let channel = t.rogue.accepted(psi_request(protocol, "shared")).await;
            rogue::send(&channel, hello).await;
            ending(&channel, Duration::from_secs(IDLE_SECS + 10)).await
        });
        eprintln!("{protocol:?} hello of ~2^32 items then silence: {end:?} after {took:?}");
        assert!(matches!(&end, Ending::Aborted(r) if !r.contains("sent nothing")), "{protocol:?}: {end:?}");
        assert!(took < Duration::from_secs(IDLE_SECS - 1), "{protocol:?}: {took:?}");
    }
    t.survives();
}

#[test]
fn oversized_request_fields_are_refused_unlogged() {
    let t = setup(None);
    let before = t.audit_lines();
    // Over the request cap (12 KiB): the stream is closed before anything is parsed or recorded.
    let huge = |f: &dyn Fn(&mut consort_api::proto::JobRequest)| {
        let mut r = psi_request(PsiProtocol::Ecdh, "shared");
        f(&mut r);
        let Err(e) = t.rt.block_on(t.rogue.open(r)) else { panic!("an oversized request was taken") };
        assert!(format!("{e:#}").contains("a job request is at most 12288 bytes"), "{e:#}");
    };
    huge(&|r| r.params = "x".repeat(8 << 20));
    huge(&|r| r.job_id = "j".repeat(100_000));
    huge(&|r| r.responder_dataset = "d".repeat(1 << 20));
    // Under it, each field has its own bound.
    let mut r = psi_request(PsiProtocol::Ecdh, "shared");
    r.params = "x".repeat(9 << 10);
    let reason = t.refused(r);
    assert!(reason.contains("job parameters over"), "{reason}");
    let mut r = psi_request(PsiProtocol::Ecdh, "shared");
    r.job_id = "j".repeat(1000);
    assert_eq!(t.refused(r), "invalid job id");
    let mut r = psi_request(PsiProtocol::Ecdh, "shared");
    r.responder_dataset = "d".repeat(1000);
    assert_eq!(t.refused(r), "invalid dataset name");
    assert_eq!(t.audit_lines(), before, "structural refusals log nothing");

    // A protocol frame just under the transport's 16 MiB limit, where a hello belongs.
    let started = Instant::now();
    let (end, took, _) = hello_then_garbage(&t, PsiProtocol::Ecdh, bytes::Bytes::from(vec![0x01; 15 << 20]));
    assert!(matches!(&end, Ending::Aborted(r) if r.contains("not an ECDH-PSI hello")), "{end:?}");
    report("oversized fields", &end, started.elapsed().max(took), t.survives());
}

#[test]
fn a_dealer_that_is_the_requester_is_refused() {
    let t = setup(None);
    let params = LrParams { dealer: Some("mallory".into()), ..LrParams::default() };
    let r = rogue::request(JobKind::Train, PsiProtocol::Ecdh, "shared", &serde_json::to_string(&params).unwrap());
    let reason = t.refused(r);
    assert!(reason.contains("is the other party"), "{reason}");
    report("dealer = requester", &Ending::Closed(reason), Duration::ZERO, t.survives());
}

#[test]
fn out_of_range_hyper_parameters_are_refused() {
    let t = setup(None);
    let base = serde_json::to_value(LrParams::default()).unwrap();
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("epochs", 0.into()),
        ("epochs", 1_000_000.into()),
        ("epochs", u64::MAX.into()),
        ("batch_size", 0.into()),
        ("batch_size", (1u64 << 40).into()),
        ("learning_rate", (-1.0).into()),
        ("learning_rate", 1e300.into()),
        ("l2", (-1.0).into()),
        ("feature_bits", 64.into()),
        ("feature_bits", 0.into()),
        ("feature_frac_bits", 63.into()),
        ("tolerance", (-1.0).into()),
        ("holdout", 0.95.into()),
        ("holdout", (-0.5).into()),
        ("sigmoid", "exp".into()),
        ("surprise", 1.into()),
    ];
    for (field, value) in cases {
        let mut params = base.clone();
        params[field] = value.clone();
        let r = rogue::request(JobKind::Train, PsiProtocol::Ecdh, "shared", &params.to_string());
        let reason = t.refused(r);
        assert!(reason.chars().count() < 400, "{reason}");
        eprintln!("{field} = {value}: refused: {reason}");
    }
    // Score parameters pointing anywhere are refused too.
    let r = rogue::request(JobKind::Score, PsiProtocol::Ecdh, "shared", r#"{"model":"/etc/passwd"}"#);
    eprintln!("score with a foreign model: refused: {}", t.refused(r));
    report("hyper-parameters", &Ending::Closed("all refused".into()), Duration::ZERO, t.survives());
}

#[test]
fn out_of_range_secureboost_parameters_and_rows_are_refused_before_allocation() {
    let t = setup(None);
    let base = serde_json::to_value(consort_engine::secureboost::SbParamsWire::default()).unwrap();
    let before = t.audit_lines();
    // At most 19 refusals: the victim turns a peer away unrecorded past 20 a minute.
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("trees", 0.into()),
        ("trees", u32::MAX.into()),
        // (a u64 overflowing its u32 field is a deserialization error, as `seed` = −1 below)
        ("histograms", "paillier".into()),
        ("max_depth", 0.into()),
        ("max_depth", 64.into()),
        ("max_bins", 1.into()),
        ("max_bins", 257.into()),
        ("learning_rate", 1e300.into()),
        ("lambda", (-1.0).into()),
        ("min_child_weight", (-1.0).into()),
        ("subsample", 0.into()),
        ("subsample", 2.into()),
        ("tolerance", (-1.0).into()),
        ("holdout", 0.95.into()),
        ("seed", (-1).into()),
        ("surprise", 1.into()),
    ];
    for (field, value) in cases {
        let mut params = base.clone();
        params[field] = value.clone();
        let r = rogue::request(JobKind::Secureboost, PsiProtocol::Ecdh, "shared", &params.to_string());
        let reason = t.refused(r);
        assert!(reason.chars().count() < 400, "{reason}");
        eprintln!("secureboost {field} = {value}: refused: {reason}");
    }
    // A set of 2^63 rows announced in the request: refused by the grant's maximum, unread.
    let mut r = rogue::request(JobKind::Secureboost, PsiProtocol::Ecdh, "shared", &base.to_string());
    r.rows = 1 << 63;
    let reason = t.refused(r);
    assert!(reason.contains("larger than the"), "{reason}");
    // Score parameters naming a model that is not here, or no model id, are refused.
    let r = rogue::request(
        JobKind::SecureboostScore,
        PsiProtocol::Ecdh,
        "shared",
        r#"{"model_job":"jnothere","model_id":"00"}"#,
    );
    assert!(t.refused(r).contains("no SecureBoost model"));
    let r = rogue::request(
        JobKind::SecureboostScore,
        PsiProtocol::Ecdh,
        "shared",
        r#"{"model_job":"../../x","model_id":""}"#,
    );
    assert!(t.refused(r).contains("invalid model job id"));
    // Every refusal is one request and one grant entry: nothing started, nothing allocated.
    assert!(t.audit_lines() > before);
    report("secureboost parameters", &Ending::Closed("all refused".into()), Duration::ZERO, t.survives());
}

#[test]
fn out_of_range_bin_parameters_are_refused_before_allocation() {
    let t = setup(None);
    let base = serde_json::to_value(consort_engine::binning::BinParamsWire::default()).unwrap();
    let before = t.audit_lines();
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("bins", 0.into()),
        ("bins", 129.into()),
        ("bins", u64::MAX.into()),
        ("fine_bins", 9.into()),
        ("fine_bins", 1000.into()),
        ("method", "forest".into()),
        ("max_corr", 1.5.into()),
        ("max_corr", (-0.1).into()),
        ("min_iv", (-1.0).into()),
        ("key_bits", 1024.into()),
        ("surprise", 1.into()),
    ];
    for (field, value) in cases {
        let mut params = base.clone();
        params[field] = value.clone();
        if field == "fine_bins" {
            params["method"] = "tree".into();
        }
        let r = rogue::request(JobKind::Bin, PsiProtocol::Ecdh, "shared", &params.to_string());
        let reason = t.refused(r);
        assert!(reason.chars().count() < 400, "{reason}");
        eprintln!("bin {field} = {value}: refused: {reason}");
    }
    // Every refusal is one request and one grant entry: nothing started, nothing allocated.
    assert!(t.audit_lines() > before);
    report("bin parameters", &Ending::Closed("all refused".into()), Duration::ZERO, t.survives());
}

#[test]
fn a_stall_after_the_hello_fails_the_job_after_the_idle_limit() {
    let t = setup(None);
    for protocol in [PsiProtocol::Ecdh, PsiProtocol::Rr22] {
        let request = psi_request(protocol, "shared");
        let id = request.job_id.clone();
        let hello = if protocol == PsiProtocol::Ecdh { ecdh_hello(1000) } else { rr22_hello(1000) };
        let (end, took) = t.rt.block_on(async {
            let channel = t.rogue.accepted(request).await;
            rogue::send(&channel, hello).await;
            ending(&channel, Duration::from_secs(IDLE_SECS + 30)).await
        });
        let record = t.ends(&id, "failed", Duration::from_secs(5));
        assert!(record["error"].as_str().unwrap().contains("sent nothing"), "{record}");
        assert!(took < Duration::from_secs(IDLE_SECS + 10), "{took:?}");
        report(&format!("stall after {protocol:?} hello"), &end, took, t.survives());
    }
}

#[test]
fn many_concurrent_stalled_jobs_and_idle_connections_end_and_the_victim_recovers() {
    const JOBS: usize = 10;
    // As many idle connections as the per-peer cap leaves room for beside the jobs.
    const CONNECTIONS: usize = consort_node::tls::MAX_CONNECTIONS_PER_PEER - JOBS;
    let t = setup(Some(2));
    let started = Instant::now();
    let ids: Vec<String> = t.rt.block_on(async {
        // One after the other: more than 64 handshakes at once would hit the pending-handshake cap.
        let mut idle = Vec::new();
        for _ in 0..CONNECTIONS {
            idle.push(t.rogue.connection().await);
        }
        eprintln!("{CONNECTIONS} idle TLS connections: the victim holds {} descriptors", open_fds(t.nodes.nb.pid()));
        let jobs = (0..JOBS).map(|_| async {
            let request = psi_request(PsiProtocol::Ecdh, "shared");
            let id = request.job_id.clone();
            // Each accepted job stalls until the victim gives up on it.
            if let Ok((channel, Answer::Accepted(_))) = t.rogue.open(request).await {
                ending(&channel, Duration::from_secs(120)).await;
            }
            id
        });
        let ids = futures::future::join_all(jobs).await;
        drop(idle);
        ids
    });
    let took = started.elapsed();
    for id in &ids {
        t.ends(id, "failed", Duration::from_secs(10));
    }
    // Two slots, each held for the idle limit by a stalled job: about JOBS / 2 × IDLE_SECS.
    assert!(took < Duration::from_secs((JOBS as u64 / 2 + 2) * (IDLE_SECS + 3)), "{took:?}");
    report("concurrent jobs + idle connections", &Ending::Closed(format!("{JOBS} jobs failed")), took, t.survives());
}

/// A rogue's stalled jobs hold only its share of the slots: an honest peer's job runs at once.
#[test]
fn an_honest_job_does_not_wait_behind_a_rogue_peers_stalled_jobs() {
    const JOBS: usize = 6;
    let t = setup(Some(2));
    let rogue_jobs = std::thread::scope(|scope| {
        let rogue = scope.spawn(|| {
            t.rt.block_on(futures::future::join_all((0..JOBS).map(|_| async {
                let request = psi_request(PsiProtocol::Ecdh, "shared");
                if let Ok((channel, Answer::Accepted(_))) = t.rogue.open(request).await {
                    ending(&channel, Duration::from_secs(120)).await;
                }
            })))
        });
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        common::legit_psi_succeeds(&t.nodes, &t.out, OVERLAP);
        let waited = started.elapsed();
        eprintln!("an honest job submitted behind {JOBS} stalled rogue jobs took {:.1} s", waited.as_secs_f64());
        rogue.join().unwrap();
        waited
    });
    // The rogue's jobs hold at most its share (one of the two slots): the honest job does not wait
    // for them (it waited 3 waves × IDLE_SECS, 10.2 s, before peers had shares).
    assert!(rogue_jobs < Duration::from_secs(2 * IDLE_SECS), "the honest job waited {rogue_jobs:?}");
    t.survives();
}

#[test]
fn a_replaced_pin_stops_an_open_connection() {
    let t = setup(None);
    let mut client = t.rt.block_on(t.rogue.connection());
    // The victim's operator replaces mallory's pin (a new certificate); the running node reloads.
    let other = t.nodes.b.parent().unwrap().join("mallory2");
    ok(&["init", s(&other), "--name", "mallory", "--listen", "127.0.0.1:0"]);
    let replaced = ok(&[
        "peer",
        "add",
        s(&t.nodes.b),
        "--name",
        "mallory",
        "--addr",
        "127.0.0.1:9",
        "--cert",
        s(&other.join("node.crt")),
        "--replace",
    ]);
    assert!(replaced.contains("reloaded"), "{replaced}");
    let before = t.audit_lines();
    let jobs_before = common::jobs(&t.nodes.b).len();
    let started = Instant::now();
    let answer = t.rt.block_on(rogue::open_on(&mut client, psi_request(PsiProtocol::Ecdh, "shared")));
    match &answer {
        Ok(Answer::Refused(reason)) => assert!(reason.contains("no longer pinned"), "{reason}"),
        Ok(Answer::Accepted(_)) => panic!("a request on a revoked connection was accepted"),
        Err(e) => eprintln!("the revoked connection's stream failed: {e}"),
    }
    assert_eq!(t.audit_lines(), before, "nothing logged for a revoked connection");
    assert_eq!(common::jobs(&t.nodes.b).len(), jobs_before, "no job registered");
    // A new connection with the old certificate does not get through TLS.
    let fresh = t.rt.block_on(t.rogue.open(psi_request(PsiProtocol::Ecdh, "shared")));
    assert!(!matches!(fresh, Ok((_, Answer::Accepted(_)))), "the old certificate still connects");
    let end = match answer {
        Ok(Answer::Refused(r)) => Ending::Closed(format!("refused: {r}")),
        Err(e) => Ending::Closed(e),
        Ok(Answer::Accepted(_)) => unreachable!(),
    };
    report("revoked pin, open connection", &end, started.elapsed(), t.survives());
}

/// A train job whose requester runs the real alignment (ECDH-PSI) and then an LR handshake with the
/// right digest claiming `cols` features: the victim must refuse before sizing anything by it.
fn lr_handshake_claiming(t: &Setup, cols: u64) -> (Ending, Duration) {
    use consort_protocols::psi::{self, PsiConfig};
    use consort_protocols::{Reveal, Role};
    use sha2::{Digest, Sha256};
    let root = t.nodes.b.parent().unwrap();
    let data = root.join("lrdata");
    if !data.exists() {
        ok(&["gen", "lr", "--rows", "1000", "--features-a", "1", "--features-b", "2", "--out", s(&data)]);
        let b = s(&t.nodes.b);
        ok(&[
            "dataset",
            "add",
            b,
            "--name",
            "feats",
            "--file",
            s(&data.join("b.csv")),
            "--key",
            "id",
            "--grant",
            "mallory:train",
        ]);
    }
    let own =
        consort_engine::Dataset::load(&consort_engine::DatasetSpec::new("own", data.join("a.csv"), &["id"])).unwrap();
    let params = LrParams::default();
    let r = rogue::request(JobKind::Train, PsiProtocol::Ecdh, "feats", &serde_json::to_string(&params).unwrap());
    t.rt.block_on(async {
        let channel = t.rogue.accepted(r).await;
        let config = PsiConfig::new(Role::Requester, Reveal::Both);
        let aligned = psi::run(&channel, &own.keys, consort_engine::PsiProtocol::Ecdh, &config).await.unwrap();
        let n = aligned.output.intersection.unwrap().len();
        // The digest as `mpc::lr::train::handshake` computes it, then the claimed feature count.
        let (train, holdout) = consort_engine::lr::split(n, params.holdout, params.split_seed);
        let mut h = Sha256::new();
        h.update(b"consort/lr/v1");
        params.config().unwrap().digest(&mut h);
        h.update([0u8]);
        h.update((n as u64).to_le_bytes());
        for list in [&train, &holdout] {
            h.update((list.len() as u64).to_le_bytes());
            list.iter().for_each(|r| h.update(r.to_le_bytes()));
        }
        let mut msg = h.finalize().to_vec();
        msg.extend_from_slice(&cols.to_le_bytes());
        let started = Instant::now();
        rogue::send(&channel, bytes::Bytes::from(msg)).await;
        let (end, _) = ending(&channel, Duration::from_secs(60)).await;
        (end, started.elapsed())
    })
}

#[test]
fn lr_handshake_claiming_huge_feature_counts_is_aborted() {
    let t = setup(None);
    for cols in [u64::MAX, 1 << 40, 1 << 16] {
        let (end, took) = lr_handshake_claiming(&t, cols);
        assert!(matches!(&end, Ending::Aborted(r) if r.contains("features")), "{cols}: {end:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        report(&format!("LR handshake claiming {cols} features"), &end, took, t.survives());
    }
}

// ------------------------------------------------------------------------------------------------
// The LR reconstruction probe
// ------------------------------------------------------------------------------------------------

/// R² of the least-squares fit of `y` on the columns of `x` (an intercept included).
fn r_squared(x: &[Vec<f64>], y: &[f64]) -> f64 {
    let k = x[0].len() + 1;
    let row = |i: usize| std::iter::once(1.0).chain(x[i].iter().copied()).collect::<Vec<f64>>();
    // Normal equations (XᵀX) β = Xᵀy, solved by Gaussian elimination with partial pivoting.
    let mut m = vec![vec![0.0; k + 1]; k];
    for (i, &yi) in y.iter().enumerate() {
        let r = row(i);
        for p in 0..k {
            for q in 0..k {
                m[p][q] += r[p] * r[q];
            }
            m[p][k] += r[p] * yi;
        }
    }
    for c in 0..k {
        let pivot = (c..k).max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs())).unwrap();
        m.swap(c, pivot);
        let pivot_row = m[c].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot_row[c];
                row.iter_mut().zip(&pivot_row).skip(c).for_each(|(v, p)| *v -= f * p);
            }
        }
    }
    let beta: Vec<f64> = (0..k).map(|c| m[c][k] / m[c][c]).collect();
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let (mut ss_res, mut ss_tot) = (0.0, 0.0);
    for (i, &yi) in y.iter().enumerate() {
        let fit: f64 = row(i).iter().zip(&beta).map(|(a, b)| a * b).sum();
        ss_res += (yi - fit).powi(2);
        ss_tot += (yi - mean).powi(2);
    }
    1.0 - ss_res / ss_tot
}

/// A CSV file as rows of fields keyed by its first column (header skipped).
fn csv_by_key(path: &std::path::Path) -> std::collections::HashMap<String, Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            let key = f.next().unwrap().to_string();
            (key, f.map(|v| v.parse().unwrap()).collect())
        })
        .collect()
}

/// The probe of issue 11: a requester (label holder) trains three models on random labels against
/// the same responder dataset, scores with each, and from the three predictions per row rebuilds
/// the responder's three features up to a linear map (each prediction's logit is its own part, known
/// to it, plus x_B·w_B for that model). The per-grant budget of models per (peer, dataset) — one by
/// default — must refuse the second train job (without it the probe runs to the end: R² 1.0000 for
/// each feature, and the test fails with the R² it reached).
#[test]
fn the_lr_reconstruction_probe_is_refused_at_the_second_train_job() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = |x: &str| root.join(x).display().to_string();
    ok(&["gen", "lr", "--rows", "2000", "--features-a", "1", "--features-b", "3", "--out", &p("data")]);
    // The attacker's dataset: the ids, one noise feature z and three random label columns.
    let ids = csv_by_key(&root.join("data/a.csv"));
    let mut probe = String::from("id,z,y1,y2,y3\n");
    for (n, id) in ids.keys().enumerate() {
        let h = |salt: u64| (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(salt as u32 * 13) ^ salt;
        probe.push_str(&format!("{id},{:.4},{},{},{}\n", (h(7) % 1000) as f64 / 1000.0, h(1) & 1, h(2) & 1, h(3) & 1));
    }
    std::fs::write(root.join("probe.csv"), probe).unwrap();
    ok(&["init", &p("bank"), "--name", "bank", "--listen", "127.0.0.1:0"]);
    ok(&["init", &p("partner"), "--name", "partner", "--listen", "127.0.0.1:0"]);
    let (_a, a_addr) = common::start_node(&root.join("bank"));
    let (nb, b_addr) = common::start_node(&root.join("partner"));
    ok(&["peer", "add", &p("bank"), "--name", "partner", "--addr", &b_addr, "--cert", &p("partner/node.crt")]);
    ok(&["peer", "add", &p("partner"), "--name", "bank", "--addr", &a_addr, "--cert", &p("bank/node.crt")]);
    let probe_csv = p("probe.csv");
    let b_csv = p("data/b.csv");
    ok(&[
        "dataset",
        "add",
        &p("bank"),
        "--name",
        "probe",
        "--file",
        &probe_csv,
        "--key",
        "id",
        "--grant",
        "partner:train,score",
    ]);
    ok(&[
        "dataset",
        "add",
        &p("partner"),
        "--name",
        "feats",
        "--file",
        &b_csv,
        "--key",
        "id",
        "--grant",
        "bank:train,score",
    ]);
    let job = |kind: &str, k: usize| {
        let (model, pred) = (p(&format!("model{k}.json")), p(&format!("pred{k}.csv")));
        let mut args: Vec<String> =
            [kind, &p("bank"), "--peer", "partner", "--dataset", "probe", "--peer-dataset", "feats"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        match kind {
            "train" => args.extend(
                [
                    "--label",
                    &format!("y{k}"),
                    "--features",
                    "z",
                    "--epochs",
                    "2",
                    "--batch-size",
                    "128",
                    "--out",
                    &model,
                ]
                .map(String::from),
            ),
            _ => args.extend(["--model", &model, "--out", &pred].map(String::from)),
        }
        common::consort(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let first = job("train", 1);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = job("train", 2);
    if !second.status.success() {
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(err.contains("refused"), "the second train job failed, but was not refused: {err}");
        assert!(std::path::Path::new(&format!("/proc/{}", nb.pid())).exists());
        audit_verifies_both(root);
        return;
    }
    // Not refused: run the probe to the end and say how well it worked.
    assert!(job("train", 3).status.success());
    for k in 1..=3 {
        let scored = job("score", k);
        assert!(scored.status.success(), "{}", String::from_utf8_lossy(&scored.stderr));
    }
    let preds: Vec<_> = (1..=3).map(|k| csv_by_key(&root.join(format!("pred{k}.csv")))).collect();
    let truth = csv_by_key(&root.join("data/b.csv"));
    let probe_rows = csv_by_key(&root.join("probe.csv"));
    let logit = |q: f64| (q / (1.0 - q)).ln();
    let (mut x, mut features) = (Vec::new(), vec![Vec::new(); 3]);
    for (id, row) in &preds[0] {
        let (Some(t), Some(others)) = (truth.get(id), preds[1..].iter().map(|p| p.get(id)).collect::<Option<Vec<_>>>())
        else {
            continue;
        };
        x.push(vec![probe_rows[id][0], logit(row[0]), logit(others[0][0]), logit(others[1][0])]);
        for (j, f) in features.iter_mut().enumerate() {
            f.push(t[j]);
        }
    }
    let r2: Vec<f64> = features.iter().map(|f| r_squared(&x, f)).collect();
    panic!(
        "the probe was not refused: 3 models trained, {} rows scored, the responder's features rebuilt with R² {r2:.4?}",
        x.len()
    );
}

fn audit_verifies_both(root: &std::path::Path) {
    common::audit_verifies(&root.join("bank"));
    common::audit_verifies(&root.join("partner"));
}

/// Established (authenticated) connections that never carry a job are not capped: each holds a
/// descriptor for as long as the peer answers HTTP/2 pings. With the common soft limit of 1024
/// descriptors on the victim, one pinned peer shuts out every other.
#[test]
fn idle_established_connections_cannot_exhaust_the_victims_descriptors() {
    let t = setup(None);
    let nofile = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
    let pid = t.nodes.nb.pid() as libc::pid_t;
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &nofile, std::ptr::null_mut()) }, 0);
    let idle = t.rt.block_on(async {
        let mut idle = Vec::new();
        for _ in 0..1100 {
            match tokio::time::timeout(Duration::from_secs(5), t.rogue.try_connection()).await {
                Ok(Ok(c)) => idle.push(c),
                _ => break,
            }
        }
        idle
    });
    eprintln!("{} idle TLS connections held; the victim holds {} descriptors", idle.len(), open_fds(t.nodes.nb.pid()));
    let started = Instant::now();
    let out = common::consort(&common::psi_args(&t.nodes.a, &t.out));
    eprintln!(
        "an honest job meanwhile: {} after {:.1} s",
        String::from_utf8_lossy(if out.status.success() { &out.stdout } else { &out.stderr }).trim(),
        started.elapsed().as_secs_f64()
    );
    let held = idle.len();
    drop(idle);
    // Once they close, the victim takes jobs again.
    std::thread::sleep(Duration::from_secs(1));
    t.survives();
    assert!(out.status.success(), "an honest job failed while a rogue peer held {held} connections");
}

/// A rogue requester's scorecard train jobs: out-of-range card parameters, B-feature lists that
/// would size the victim's matrix wrongly, requester-only fields, and bin jobs that are not there
/// (or are paths) — all refused before the victim reads a bins file or sizes anything.
#[test]
fn malformed_scorecard_parameters_are_refused_before_allocation() {
    let t = setup(None);
    let card = consort_engine::scorecard::CardParams {
        bins_job: "jnothere".into(),
        bins_id: "00".into(),
        peer_features: vec![consort_engine::scorecard::PeerFeature { index: 0, bins: 10, reference: 3 }],
        ..consort_engine::scorecard::CardParams::new(600.0, 50.0, 20.0)
    };
    let base = serde_json::to_value(LrParams { scorecard: Some(card), ..LrParams::default() }).unwrap();
    let before = t.audit_lines();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("pdo", 0.into(), "pdo"),
        ("base_odds", (-1.0).into(), "base odds"),
        ("base_score", 1e300.into(), "base score"),
        ("peer_features", serde_json::json!([[0, 0, 0]]), "out of range"),
        ("peer_features", serde_json::json!([[0, 10, 10]]), "out of range"),
        ("peer_features", serde_json::json!([[0, 257, 0]]), "out of range"),
        ("peer_features", serde_json::json!([[5, 10, 0], [5, 10, 0]]), "increasing index"),
        ("peer_features", serde_json::json!([[0, 10]]), ""),
        ("bins_job", "../../etc".into(), "invalid bin job id"),
        ("bins_job", "jnothere".into(), "no bins file of bin job jnothere"),
        ("bins_file", "/etc/passwd".into(), ""),
        ("surprise", 1.into(), ""),
    ];
    for (field, value, expect) in cases {
        let mut params = base.clone();
        params["scorecard"][field] = value.clone();
        let r = rogue::request(JobKind::Train, PsiProtocol::Ecdh, "shared", &params.to_string());
        let reason = t.refused(r);
        assert!(reason.chars().count() < 400, "{reason}");
        assert!(reason.contains(expect), "scorecard {field}: {reason}");
        eprintln!("scorecard {field} = {value}: refused: {reason}");
    }
    // Feature lists sized by the rogue: 900 of B's features (~9 KB) are over the 8 KiB parameter bound
    // (refused, recorded); 2^16 + 1 (the card's maximum + 1) are over the 12 KiB request cap (the
    // stream is closed before anything is parsed).
    let features = |n: u32| serde_json::json!((0..n).map(|i| [i, 2, 0]).collect::<Vec<_>>());
    let mut params = base.clone();
    params["scorecard"]["peer_features"] = features(900);
    let reason = t.refused(rogue::request(JobKind::Train, PsiProtocol::Ecdh, "shared", &params.to_string()));
    assert!(reason.contains("job parameters over"), "{reason}");
    params["scorecard"]["peer_features"] = features((1 << 16) + 1);
    let r = rogue::request(JobKind::Train, PsiProtocol::Ecdh, "shared", &params.to_string());
    let Err(e) = t.rt.block_on(t.rogue.open(r)) else { panic!("an oversized scorecard request was taken") };
    assert!(format!("{e:#}").contains("a job request is at most 12288 bytes"), "{e:#}");
    assert!(t.audit_lines() > before);
    report("scorecard parameters", &Ending::Closed("all refused".into()), Duration::ZERO, t.survives());
}
