//! Wire capture (issue 11): real PSI (ECDH and RR22), train and score jobs (LR and SecureBoost) and a bin job between two node
//! states through the real envelope on both sides, with every `PeerFrame` recorded as it is sent
//! (protobuf-encoded, as the gRPC stream would carry it; the request too). Then no input value —
//! id, feature value, label sequence — and no node secret key may appear in any frame, any reject
//! or abort reason, any file of either node's audit directory, or any exported audit bundle, in
//! any of the encodings a leak would plausibly take. Failures are provoked (bad data in a train
//! job, a duplicate key, a refused request) so their reasons are searched too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use consort_api::proto::peer_frame::Kind as Frame;
use consort_api::proto::{self, JobRequest, PeerFrame, SubmitRequest};
use consort_api::{JobKind, JobState};
use consort_engine::{DatasetSpec, PsiProtocol};
use futures::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::channel::JobChannel;
use super::connect::Answer;
use super::envelope;
use crate::state::NodeState;
use crate::tls::{PeerInfo, WireCounters};
use crate::{identity, pair, setup};

/// Rows of the requester's dataset; the responder's overlap it on `OVERLAP` rows.
const ROWS: usize = 40;
const OVERLAP: usize = 30;
/// A value of the responder's bad dataset that is not a number (the train job fails on it).
const BAD_VALUE: &str = "BAD-7e1c9a0f55d2e8b4";

/// One recorded frame: who sent it, its bytes on the wire, and its reason if it is a reject or
/// an abort.
struct Captured {
    from: &'static str,
    bytes: Vec<u8>,
    reason: Option<String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    fn record(&self, from: &'static str, frame: &PeerFrame) {
        let reason = match &frame.kind {
            Some(Frame::Reject(r)) => Some(r.reason.clone()),
            Some(Frame::Abort(a)) => Some(a.reason.clone()),
            _ => None,
        };
        self.0.lock().unwrap().push(Captured { from, bytes: frame.encode_to_vec(), reason });
    }
}

/// One direction of a recording pair: the sending end's frames are recorded, then delivered.
fn recording_link(capture: &Capture, from: &'static str) -> (mpsc::Sender<PeerFrame>, mpsc::Receiver<PeerFrame>) {
    let (app_tx, mut app_rx) = mpsc::channel::<PeerFrame>(8);
    let (wire_tx, wire_rx) = mpsc::channel(8);
    let capture = capture.clone();
    tokio::spawn(async move {
        while let Some(frame) = app_rx.recv().await {
            capture.record(from, &frame);
            if wire_tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    (app_tx, wire_rx)
}

/// Two job channels (requester, responder) whose every sent frame is recorded.
fn recording_pair(capture: &Capture) -> (JobChannel, JobChannel) {
    let (req_tx, req_to_resp) = recording_link(capture, "requester");
    let (resp_tx, resp_to_req) = recording_link(capture, "responder");
    let inbound = |rx| tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<PeerFrame, tonic::Status>);
    let idle = std::time::Duration::from_secs(600);
    (JobChannel::new(req_tx, inbound(resp_to_req), idle), JobChannel::new(resp_tx, inbound(req_to_resp), idle))
}

/// The distinctive inputs of both datasets.
struct Inputs {
    ids: Vec<String>,
    /// Feature values as written in the CSV files.
    features: Vec<String>,
    /// The requester's labels in file order.
    labels: Vec<u8>,
}

impl Inputs {
    fn new() -> Inputs {
        // Ids of 27 characters; feature values with long, irregular decimal expansions.
        let ids = (0..ROWS + ROWS - OVERLAP)
            .map(|i| format!("ID-{:016x}{:08x}", (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15), i * 7919 + 11))
            .collect();
        let features = (0..(ROWS + ROWS - OVERLAP) * 2)
            .map(|k| {
                format!(
                    "{:.10}",
                    4_096.318_730_562 + (k as f64) * 37.013_617_93 + ((k * k) % 97) as f64 * 0.000_271_828_18
                )
            })
            .collect();
        let labels = (0..ROWS).map(|i| u8::from((i * 7 + 3) % 5 < 2)).collect();
        Inputs { ids, features, labels }
    }

    /// The requester's dataset: id, two features, the label.
    fn requester_csv(&self) -> String {
        let mut csv = String::from("id,f1,f2,label\n");
        for i in 0..ROWS {
            let f = &self.features;
            csv += &format!("{},{},{},{}\n", self.ids[i], f[2 * i], f[2 * i + 1], self.labels[i]);
        }
        csv
    }

    /// The responder's dataset: id and two features, its rows from `ROWS - OVERLAP` on; `bad`
    /// replaces one aligned feature value, `dup` repeats one aligned row.
    fn responder_csv(&self, bad: bool, dup: bool) -> String {
        let mut csv = String::from("id,g1,g2\n");
        for i in ROWS - OVERLAP..self.ids.len() {
            let (mut g1, g2) = (self.features[2 * i].as_str(), &self.features[2 * i + 1]);
            if bad && i == ROWS - 5 {
                g1 = BAD_VALUE;
            }
            csv += &format!("{},{g1},{g2}\n", self.ids[i]);
            if dup && i == ROWS - 3 {
                csv += &format!("{},{g1},{g2}\n", self.ids[i]);
            }
        }
        csv
    }
}

struct Two {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a: Arc<NodeState>,
    b: Arc<NodeState>,
    capture: Capture,
}

fn addr() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

/// Two pinned node states: `bank` (requester, party A) with `customers`, `partner` with
/// `accounts`, `accounts_bad` and `accounts_dup`, all granted for psi, train, score, both
/// SecureBoost kinds and bin.
async fn two(inputs: &Inputs) -> Two {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (a_dir, b_dir) = pair::init_pair(&root).unwrap();
    pair::pin_pair(&a_dir, addr(), &b_dir, addr()).unwrap();
    let files = [
        (&a_dir, pair::B, "customers", inputs.requester_csv()),
        (&b_dir, pair::A, "accounts", inputs.responder_csv(false, false)),
        (&b_dir, pair::A, "accounts_bad", inputs.responder_csv(true, false)),
        (&b_dir, pair::A, "accounts_dup", inputs.responder_csv(false, false)),
    ];
    for (dir, peer, name, csv) in files {
        let file = root.join(format!("{name}.csv"));
        std::fs::write(&file, csv).unwrap();
        let mut grant =
            setup::parse_grant(&format!("{peer}:psi,train,score,secureboost,secureboost-score,bin")).unwrap();
        // One LR and one SecureBoost model (they share the models budget).
        grant.models = Some(2);
        setup::dataset_add(dir, DatasetSpec::new(name, file, &["id"]), vec![grant], true, true).unwrap();
    }
    // `dataset add` checks the file: the duplicate comes after it, as an edit of the file would.
    std::fs::write(root.join("accounts_dup.csv"), inputs.responder_csv(false, true)).unwrap();
    let a = NodeState::open(&a_dir, addr()).await.unwrap();
    let b = NodeState::open(&b_dir, addr()).await.unwrap();
    Two { _tmp: tmp, root, a, b, capture: Capture::default() }
}

type Opened = Result<(JobChannel, Answer, Arc<WireCounters>)>;
type Opening = std::pin::Pin<Box<dyn Future<Output = Opened> + Send>>;

/// Opens the job "connection" to `b`'s real envelope over a recording pair; the request is
/// recorded as the first frame, as the gRPC stream carries it.
fn opener(b: Arc<NodeState>, capture: Capture) -> impl FnOnce(JobRequest) -> Opening {
    move |request| {
        Box::pin(async move {
            capture.record("requester", &PeerFrame { kind: Some(Frame::Request(request.clone())) });
            let (ca, cb) = recording_pair(&capture);
            let fingerprint = b.config().peer(pair::A).map(|p| p.fingerprint.clone()).unwrap_or_default();
            let peer = PeerInfo { name: pair::A.into(), fingerprint, remote: addr(), wire: Default::default() };
            tokio::spawn(envelope::respond(b, peer, request, cb));
            let answer = match ca.recv_kind().await? {
                Frame::Accept(a) => Answer::Accepted(a),
                Frame::Reject(r) => Answer::Refused(r.reason),
                _ => bail!("unexpected first answer"),
            };
            Ok((ca, answer, Arc::new(WireCounters::default())))
        })
    }
}

/// Submits on `a`, runs both envelopes to the end and returns the requester's final status.
async fn run(t: &Two, request: SubmitRequest) -> proto::JobStatus {
    let (ask, job, dataset, handle) = envelope::prepare(&t.a, request).await.unwrap();
    let result = envelope::request(&t.a, &handle, &ask, job, dataset, opener(t.b.clone(), t.capture.clone())).await;
    envelope::conclude_then_close(&t.a, &handle, result).await;
    for _ in 0..1000 {
        match t.b.jobs.get(&ask.job_id) {
            Some(h) if h.status().job_state().is_final() => break,
            _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    handle.status()
}

fn submit(kind: JobKind, peer_dataset: &str, protocol: PsiProtocol, out: &Path, params: String) -> SubmitRequest {
    SubmitRequest {
        kind: kind as i32,
        peer: pair::B.into(),
        dataset: "customers".into(),
        peer_dataset: peer_dataset.into(),
        protocol: proto::PsiProtocol::from(protocol) as i32,
        reveal: proto::Reveal::Both as i32,
        out: out.display().to_string(),
        params,
    }
}

fn train_params() -> String {
    let params = consort_engine::lr::LrParams { epochs: 3, batch_size: 8, ..Default::default() };
    let request = super::train::TrainRequest { label: "label".into(), features: vec![], params };
    serde_json::to_string(&request).unwrap()
}

/// Every job of the capture: ECDH and RR22 PSI, train, score, a train failing on the
/// responder's bad value, a PSI on a dataset with a duplicate key, a refused request.
async fn run_jobs(t: &Two) -> Vec<String> {
    let out = |name: &str| t.root.join(name);
    let mut ids = Vec::new();
    let mut expect = |status: proto::JobStatus, state: JobState| {
        assert_eq!(status.job_state(), state, "{}", status.error);
        ids.push(status.job_id);
    };
    for (protocol, file) in [(PsiProtocol::Ecdh, "ecdh.csv"), (PsiProtocol::Rr22, "rr22.csv")] {
        let status = run(t, submit(JobKind::Psi, "accounts", protocol, &out(file), String::new())).await;
        assert_eq!(status.intersection, OVERLAP as u64);
        expect(status, JobState::Done);
    }
    let model = out("model.json");
    let train = run(t, submit(JobKind::Train, "accounts", PsiProtocol::Ecdh, &model, train_params())).await;
    expect(train, JobState::Done);
    let score_params = serde_json::json!({ "model": model }).to_string();
    let score = run(t, submit(JobKind::Score, "accounts", PsiProtocol::Ecdh, &out("scores.csv"), score_params)).await;
    expect(score, JobState::Done);
    let sb_model = out("sb-model.json");
    let sb_params =
        consort_engine::secureboost::SbParamsWire { trees: 2, max_depth: 2, max_bins: 9, ..Default::default() };
    let sb_request = super::secureboost::SbTrainRequest { label: "label".into(), features: vec![], params: sb_params };
    let sb_request = serde_json::to_string(&sb_request).unwrap();
    let sb = run(t, submit(JobKind::Secureboost, "accounts", PsiProtocol::Ecdh, &sb_model, sb_request)).await;
    expect(sb, JobState::Done);
    let sb_score_params = serde_json::json!({ "model": sb_model }).to_string();
    let sb_score = run(
        t,
        submit(JobKind::SecureboostScore, "accounts", PsiProtocol::Ecdh, &out("sb-scores.csv"), sb_score_params),
    )
    .await;
    expect(sb_score, JobState::Done);
    // Secure binning with every message: merges (tree) and the responder's correlated pairs.
    let bin_params = consort_engine::binning::BinParamsWire {
        method: consort_engine::binning::Method::Tree,
        bins: 3,
        fine_bins: 8,
        min_iv: Some(0.01),
        max_corr: Some(0.0),
        key_bits: 2048,
    };
    let bin_request = super::bin::BinRequest { label: "label".into(), features: vec![], params: bin_params };
    let bin_request = serde_json::to_string(&bin_request).unwrap();
    let bin = run(t, submit(JobKind::Bin, "accounts", PsiProtocol::Ecdh, &out("bins.json"), bin_request)).await;
    expect(bin, JobState::Done);
    let bad = run(t, submit(JobKind::Train, "accounts_bad", PsiProtocol::Ecdh, &out("bad.json"), train_params())).await;
    expect(bad, JobState::Failed);
    let dup = run(t, submit(JobKind::Psi, "accounts_dup", PsiProtocol::Rr22, &out("dup.csv"), String::new())).await;
    expect(dup, JobState::Failed);
    let refused = run(t, submit(JobKind::Psi, "nope", PsiProtocol::Ecdh, &out("no.csv"), String::new())).await;
    expect(refused, JobState::Failed);
    ids
}

/// The byte strings that must never leave a node, each with a name for the failure message.
fn needles(inputs: &Inputs, a: &NodeState, b: &NodeState) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for id in &inputs.ids {
        out.push((format!("id {id}"), id.as_bytes().to_vec()));
        out.push((format!("id {id} (hex part as raw bytes)"), hex_bytes(&id[3..])));
        out.push((format!("unsalted SHA-256 of id {id}"), Sha256::digest(id.as_bytes())[..16].to_vec()));
        let utf16: Vec<u8> = id.encode_utf16().flat_map(u16::to_le_bytes).collect();
        out.push((format!("id {id} (UTF-16)"), utf16));
    }
    for text in inputs.features.iter().map(String::as_str).chain([BAD_VALUE]) {
        out.push((format!("feature {text}"), text.as_bytes().to_vec()));
        let Ok(v) = text.parse::<f64>() else { continue };
        out.push((format!("feature {text} (shortest decimal)"), v.to_string().into_bytes()));
        out.push((format!("feature {text} (f64 LE)"), v.to_le_bytes().to_vec()));
        out.push((format!("feature {text} (f64 BE)"), v.to_be_bytes().to_vec()));
        let fixed = consort_protocols::mpc::encode(v, consort_protocols::mpc::FRAC_BITS);
        out.push((format!("feature {text} (fixed point LE)"), fixed.to_le_bytes().to_vec()));
        out.push((format!("feature {text} (fixed point BE)"), fixed.to_be_bytes().to_vec()));
    }
    // The label column, as the sequence it is in the file (one byte or one digit per row).
    out.push(("labels (bytes)".into(), inputs.labels.clone()));
    out.push(("labels (digits)".into(), inputs.labels.iter().map(|l| b'0' + l).collect()));
    out.push(("labels (lines)".into(), inputs.labels.iter().flat_map(|l| [b'0' + l, b'\n']).collect()));
    // The nodes' secret keys: identity seed (raw and hex) and TLS private key (DER).
    for (name, state) in [("bank", a), ("partner", b)] {
        let seed = identity::read_signing_key(&state.dir).unwrap().to_bytes();
        out.push((format!("{name} identity key"), seed.to_vec()));
        out.push((format!("{name} identity key (hex)"), identity::hex(&seed).into_bytes()));
        out.push((format!("{name} TLS key"), state.key().secret_der().to_vec()));
    }
    out
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// Needles indexed by their first 8 bytes, so each haystack is scanned once.
struct Search {
    needles: Vec<(String, Vec<u8>)>,
    by_prefix: HashMap<[u8; 8], Vec<usize>>,
}

impl Search {
    fn new(needles: Vec<(String, Vec<u8>)>) -> Search {
        let mut by_prefix: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
        for (i, (name, bytes)) in needles.iter().enumerate() {
            assert!(bytes.len() >= 8, "needle {name} too short to search without false alarms");
            by_prefix.entry(bytes[..8].try_into().unwrap()).or_default().push(i);
        }
        Search { needles, by_prefix }
    }

    /// The names of the needles found in `hay`.
    fn find(&self, hay: &[u8]) -> Vec<&str> {
        let mut found = Vec::new();
        for at in 0..hay.len().saturating_sub(7) {
            let Some(candidates) = self.by_prefix.get(&<[u8; 8]>::try_from(&hay[at..at + 8]).unwrap()) else {
                continue;
            };
            for &i in candidates {
                let (name, bytes) = &self.needles[i];
                if hay[at..].starts_with(bytes) && !found.contains(&name.as_str()) {
                    found.push(name.as_str());
                }
            }
        }
        found
    }
}

/// Every file under `dir` (audit directories, bundle directories).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

/// Exports the bundle of every job each node logged into `out/NODE/` (as `consort audit export`).
fn export_bundles(t: &Two, jobs: &[String], out: &Path) -> usize {
    let mut exported = 0;
    for (name, state) in [(pair::A, &t.a), (pair::B, &t.b)] {
        let key = identity::read_signing_key(&state.dir).unwrap().verifying_key();
        let audit = state.dir.join(consort_engine::audit::AUDIT_DIR);
        let logged = state.audit.with(|log| Ok(log.job_ids())).unwrap();
        for job in jobs.iter().filter(|j| logged.contains(*j)) {
            let file = out.join(name).join(format!("{job}.json"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            consort_engine::audit::export(&audit, name, &key, job, &file).unwrap();
            exported += 1;
        }
    }
    exported
}

#[tokio::test(flavor = "multi_thread")]
async fn no_input_value_or_key_appears_on_the_wire_in_reasons_audit_entries_or_bundles() {
    let inputs = Inputs::new();
    let t = two(&inputs).await;
    let jobs = run_jobs(&t).await;
    let bundles = t.root.join("bundles");
    assert!(export_bundles(&t, &jobs, &bundles) >= 12, "bundles of both nodes' jobs");
    let search = Search::new(needles(&inputs, &t.a, &t.b));

    // The search can fail: it finds every id and feature value in the input files, and every
    // encoding of a value planted among other bytes.
    let inputs_text = [&t.root.join("customers.csv"), &t.root.join("accounts.csv")].map(|p| std::fs::read(p).unwrap());
    let found: Vec<&str> = inputs_text.iter().flat_map(|csv| search.find(csv)).collect();
    for id in &inputs.ids {
        assert!(found.contains(&format!("id {id}").as_str()), "the search misses {id}");
    }
    for text in &inputs.features {
        assert!(found.contains(&format!("feature {text}").as_str()), "the search misses {text}");
    }
    let v: f64 = inputs.features[3].parse().unwrap();
    let fixed = consort_protocols::mpc::encode(v, consort_protocols::mpc::FRAC_BITS);
    let planted = [&[0x55u8; 13][..], &v.to_le_bytes(), &[1, 2, 3], &fixed.to_be_bytes(), &[9; 5]].concat();
    assert_eq!(search.find(&planted).len(), 2, "planted f64 and fixed-point values are found");
    assert!(!search.find(&[&[7u8; 3][..], &inputs.labels, &[7]].concat()).is_empty(), "planted labels are found");

    // The capture is the jobs' traffic: protocol data, and the reasons of the failures.
    let frames = std::mem::take(&mut *t.capture.0.lock().unwrap());
    let total: usize = frames.iter().map(|f| f.bytes.len()).sum();
    assert!(frames.len() > 100 && total > 100_000, "{} frames, {total} bytes", frames.len());
    let reasons: Vec<&str> = frames.iter().filter_map(|f| f.reason.as_deref()).collect();
    assert!(reasons.len() >= 3, "reject and abort reasons captured: {reasons:?}");

    let mut leaks = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        for name in search.find(&frame.bytes) {
            leaks.push(format!("frame {i} from the {}: {name}", frame.from));
        }
    }
    for reason in &reasons {
        for name in search.find(reason.as_bytes()) {
            leaks.push(format!("reason {reason:?}: {name}"));
        }
    }
    let audit_dirs = [&t.a, &t.b].map(|s| s.dir.join(consort_engine::audit::AUDIT_DIR));
    let files: Vec<PathBuf> = audit_dirs.iter().chain([&bundles]).flat_map(|d| files_under(d)).collect();
    assert!(files.iter().any(|f| f.ends_with(consort_engine::audit::log::LOG_FILE)), "audit logs searched");
    for file in &files {
        for name in search.find(&std::fs::read(file).unwrap()) {
            leaks.push(format!("{}: {name}", file.display()));
        }
    }
    assert!(leaks.is_empty(), "input values or keys leave the node:\n{}", leaks.join("\n"));
}

/// The protocol frames (`data`) the responder sent, by their kind byte.
fn responder_data(frames: &[Captured]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter(|f| f.from == "responder")
        .filter_map(|f| match PeerFrame::decode(f.bytes.as_slice()).ok()?.kind {
            Some(Frame::Data(d)) => Some(d.to_vec()),
            _ => None,
        })
        .collect()
}

/// Payload joins (issue 13): the responder's shared feature values never appear in clear, matched
/// or not (the search finds every id and feature value); a plain PSI sends no payload frame at all.
#[tokio::test(flavor = "multi_thread")]
async fn payload_joins_send_no_value_in_clear_and_plain_psi_sends_no_payload() {
    const PAYLOAD_WIDTH: u8 = 0x44;
    const PAYLOADS: u8 = 0x45;
    let inputs = Inputs::new();
    let t = two(&inputs).await;
    let mut grant = crate::config::Grant::new(pair::A, vec![JobKind::Psi]);
    grant.share = vec!["g1".into(), "g2".into()];
    setup::grant_set(&t.b.dir, "accounts", grant).unwrap();
    t.b.reload().unwrap();
    let search = Search::new(needles(&inputs, &t.a, &t.b));

    // A plain RR22 PSI: no payload frame.
    let out = t.root.join("plain.csv");
    let status = run(&t, submit(JobKind::Psi, "accounts", PsiProtocol::Rr22, &out, String::new())).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    let frames = std::mem::take(&mut *t.capture.0.lock().unwrap());
    let data = responder_data(&frames);
    assert!(data.iter().any(|d| d.first() == Some(&0x42)), "the responder's protocol frames (its values) are captured");
    assert!(!data.iter().any(|d| matches!(d.first(), Some(&PAYLOAD_WIDTH | &PAYLOADS))), "no payload was asked");

    // The payload join, requester-only: every responder row's values travel sealed.
    let out = t.root.join("joined.csv");
    let params = serde_json::json!({ "peer_columns": ["g1", "g2"] }).to_string();
    let request = SubmitRequest {
        reveal: proto::Reveal::RequesterOnly as i32,
        ..submit(JobKind::Psi, "accounts", PsiProtocol::Rr22, &out, params)
    };
    let status = run(&t, request).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!(status.output_rows, OVERLAP as u64);
    let frames = std::mem::take(&mut *t.capture.0.lock().unwrap());
    let data = responder_data(&frames);
    let sealed: usize = data.iter().filter(|d| d.first() == Some(&PAYLOADS)).map(|d| d.len() - 9).sum();
    assert!(sealed > 0 && data.iter().any(|d| d.first() == Some(&PAYLOAD_WIDTH)), "payload frames are captured");
    let mut leaks = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        for name in search.find(&frame.bytes) {
            leaks.push(format!("frame {i} from the {}: {name}", frame.from));
        }
    }
    assert!(leaks.is_empty(), "shared values or keys in clear on the wire:\n{}", leaks.join("\n"));
    // The requester's table holds the values: the search can find them there.
    let joined = consort_engine::storage::read_data(&out, Some(&t.a.storage.key)).unwrap();
    let found = search.find(&joined);
    assert!(found.iter().any(|n| n.starts_with("feature ")), "the joined output holds the peer's values");

    // The same over ECDH. A plain ECDH-PSI sends no frame of the payload join (whose hello is
    // 0x11 and whose records frames follow the OPRF set's hello).
    const ECDH_PAYLOAD_HELLO: u8 = 0x11;
    const RECORDS: u8 = 0x02;
    let out = t.root.join("plain-ecdh.csv");
    let status = run(&t, submit(JobKind::Psi, "accounts", PsiProtocol::Ecdh, &out, String::new())).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    let frames = std::mem::take(&mut *t.capture.0.lock().unwrap());
    let data = responder_data(&frames);
    assert!(data.len() > 1, "the responder's protocol frames are captured");
    assert!(!data.iter().any(|d| d.first() == Some(&ECDH_PAYLOAD_HELLO)), "no payload was asked");
    // The ECDH payload join, requester-only: one sealed record per responder row, matched or not,
    // and no value in clear anywhere.
    let out = t.root.join("joined-ecdh.csv");
    let params = serde_json::json!({ "peer_columns": ["g1", "g2"] }).to_string();
    let request = SubmitRequest {
        reveal: proto::Reveal::RequesterOnly as i32,
        ..submit(JobKind::Psi, "accounts", PsiProtocol::Ecdh, &out, params)
    };
    let status = run(&t, request).await;
    assert_eq!(status.job_state(), JobState::Done, "{}", status.error);
    assert_eq!(status.output_rows, OVERLAP as u64);
    let frames = std::mem::take(&mut *t.capture.0.lock().unwrap());
    let data = responder_data(&frames);
    assert_eq!(data.first().and_then(|d| d.first()), Some(&ECDH_PAYLOAD_HELLO), "the payload join's hello");
    // Each record: a tag (≥ 5 bytes), then the sealed payload (width ≥ 2 × 15-byte values and
    // their lengths, + 16).
    let records: usize = data.iter().skip(2).filter(|d| d.first() == Some(&RECORDS)).map(|d| d.len() - 1).sum();
    assert!(records >= ROWS * (5 + 8 + 30 + 4 + 16), "one sealed record per responder row: {records} bytes");
    let mut leaks = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        for name in search.find(&frame.bytes) {
            leaks.push(format!("frame {i} from the {}: {name}", frame.from));
        }
    }
    assert!(leaks.is_empty(), "shared values or keys in clear on the wire (ECDH):\n{}", leaks.join("\n"));
    let joined = consort_engine::storage::read_data(&out, Some(&t.a.storage.key)).unwrap();
    assert!(search.find(&joined).iter().any(|n| n.starts_with("feature ")), "the ECDH joined output holds values");
}
