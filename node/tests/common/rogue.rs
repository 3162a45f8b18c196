//! A malicious peer for tests: a real node identity (made by `consort init`, pinned both ways)
//! that opens the peer connection with the node library and then speaks the job exchange by hand —
//! any `JobRequest`, raw protocol frames (hellos announcing absurd sizes, garbage), or nothing.
//!
//! The frames are encoded here exactly as the protocols encode them (see the wire tables in
//! `protocols/src/psi/ecdh/mod.rs` and `protocols/src/psi/rr22/mod.rs`), so the victim gets past
//! its framing checks and reaches the checks under test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use consort_api::proto::peer_client::PeerClient;
use consort_api::proto::{self, JobRequest};
use consort_api::{JOB_PROTOCOL_VERSION, JobKind};
use consort_node::config::PeerEntry;
use consort_node::job::JobChannel;
use consort_node::job::connect::{self, Answer};
use consort_node::state::NodeState;
use consort_protocols::{Channel, ChannelError};

use super::{ok, s};

/// The rogue node: its directory and its view of the victim.
pub struct Rogue {
    pub dir: PathBuf,
    pub name: String,
    state: Arc<NodeState>,
    victim: PeerEntry,
}

impl Rogue {
    /// Makes node `name` under `root`, pins the victim (directory `victim_dir`, running at
    /// `victim_addr`) under `victim_name`, and has the victim pin it back (the running victim
    /// reloads). The rogue never runs as a node: it only opens connections.
    pub async fn pinned(root: &Path, name: &str, victim_dir: &Path, victim_name: &str, victim_addr: &str) -> Rogue {
        let dir = root.join(name);
        ok(&["init", s(&dir), "--name", name, "--listen", "127.0.0.1:0"]);
        ok(&[
            "peer",
            "add",
            s(&dir),
            "--name",
            victim_name,
            "--addr",
            victim_addr,
            "--cert",
            s(&victim_dir.join("node.crt")),
        ]);
        ok(&[
            "peer",
            "add",
            s(victim_dir),
            "--name",
            name,
            "--addr",
            "127.0.0.1:9",
            "--cert",
            s(&dir.join("node.crt")),
        ]);
        let state = NodeState::open(&dir, "127.0.0.1:9".parse().unwrap()).await.unwrap();
        let victim = state.config().peer(victim_name).unwrap().clone();
        Rogue { dir, name: name.to_string(), state, victim }
    }

    /// Opens a job stream to the victim with `request`: the stream and the victim's answer.
    pub async fn open(&self, request: JobRequest) -> anyhow::Result<(JobChannel, Answer)> {
        let (channel, answer, _wire) = connect::open(&self.state, &self.victim, request, None).await?;
        Ok((channel, answer))
    }

    /// [`Rogue::open`], which must be accepted: the stream.
    pub async fn accepted(&self, request: JobRequest) -> JobChannel {
        match self.open(request).await.unwrap() {
            (channel, Answer::Accepted(_)) => channel,
            (_, Answer::Refused(reason)) => panic!("the victim refused: {reason}"),
        }
    }

    /// [`Rogue::open`], which must be refused: the reason.
    pub async fn refused(&self, request: JobRequest) -> String {
        match self.open(request).await.unwrap() {
            (_, Answer::Refused(reason)) => reason,
            (_, Answer::Accepted(_)) => panic!("the victim accepted a request it should refuse"),
        }
    }

    /// A TLS connection to the victim with no job on it yet (HTTP/2 is up once this returns).
    pub async fn connection(&self) -> PeerClient<tonic::transport::Channel> {
        self.try_connection().await.unwrap()
    }

    /// [`Rogue::connection`], or why it could not be made.
    pub async fn try_connection(&self) -> anyhow::Result<PeerClient<tonic::transport::Channel>> {
        Ok(connect::connect(&self.state, &self.victim).await?.0)
    }
}

/// A version-2 job request with a fresh id (`rogue-N`-style ids are valid names).
pub fn request(kind: JobKind, protocol: proto::PsiProtocol, dataset: &str, params: &str) -> JobRequest {
    JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: consort_node::table::new_job_id(),
        kind: kind as i32,
        protocol: protocol as i32,
        reveal: proto::Reveal::Both as i32,
        responder_dataset: dataset.into(),
        params: params.into(),
        // The set size the rogue declares; its protocol hellos may then announce anything.
        rows: ROGUE_ROWS,
    }
}

/// What a rogue's requests declare as their set size (within the default grant's maximum).
pub const ROGUE_ROWS: u64 = 1000;

/// A PSI request (reveal both) for the victim's `dataset`.
pub fn psi_request(protocol: proto::PsiProtocol, dataset: &str) -> JobRequest {
    request(JobKind::Psi, protocol, dataset, "")
}

/// `B = G`, the ristretto255 base point (compressed): a valid non-identity key commitment.
const RISTRETTO_BASEPOINT: [u8; 32] = [
    0xe2, 0xf2, 0xae, 0x0a, 0x6a, 0xbc, 0x4e, 0x71, 0xa8, 0x84, 0xa9, 0x61, 0xc5, 0x00, 0x51, 0x5f, 0x58, 0xe3, 0x0b,
    0x6a, 0xa5, 0x82, 0xdd, 0x8d, 0xb6, 0xa6, 0x59, 0x45, 0xe0, 0x8d, 0x2d, 0x76,
];

/// The requester's ECDH-PSI hello (protocol version 3, reveal both, proofs on) announcing `size`
/// items: kind `0x01`, "consort/ecdh-psi", version, role, reveal, size (u64 BE), proofs flag,
/// commitment.
pub fn ecdh_hello(size: u64) -> Bytes {
    let mut f = vec![0x01];
    f.extend_from_slice(consort_protocols::psi::ecdh::PROTOCOL_ID);
    f.extend_from_slice(&consort_protocols::psi::ecdh::VERSION.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // role requester, reveal both
    f.extend_from_slice(&size.to_be_bytes());
    f.push(1);
    f.extend_from_slice(&RISTRETTO_BASEPOINT);
    Bytes::from(f)
}

/// The requester's RR22-PSI hello (reveal both, the default bucket size) announcing `size` items:
/// kind `0x40`, "consort/rr22-psi", version, role, reveal, size, bucket size (u64 BE), salt share.
pub fn rr22_hello(size: u64) -> Bytes {
    use consort_protocols::psi::rr22;
    let mut f = vec![0x40];
    f.extend_from_slice(rr22::PROTOCOL_ID);
    f.extend_from_slice(&rr22::VERSION.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&size.to_be_bytes());
    f.extend_from_slice(&(rr22::DEFAULT_BUCKET_SIZE as u64).to_be_bytes());
    f.extend_from_slice(&[7; 16]);
    Bytes::from(f)
}

/// How the victim's side of a job stream ended, as the rogue saw it.
#[derive(Debug)]
pub enum Ending {
    /// The victim sent `Abort` with this reason.
    Aborted(String),
    /// The stream closed (or failed) without an abort.
    Closed(String),
    /// Nothing final within the wait.
    Silent,
}

/// Reads (and drops) the victim's frames until it aborts or closes the stream, at most `limit`:
/// how it ended and after how long.
pub async fn ending(channel: &JobChannel, limit: Duration) -> (Ending, Duration) {
    let started = Instant::now();
    let ending = tokio::time::timeout(limit, async {
        loop {
            match channel.recv_kind().await {
                Ok(_frame) => continue,
                Err(ChannelError::Aborted(reason)) => return Ending::Aborted(reason),
                Err(e) => return Ending::Closed(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or(Ending::Silent);
    (ending, started.elapsed())
}

/// Sends one protocol frame (best effort: the victim may already have given up).
pub async fn send(channel: &JobChannel, frame: Bytes) {
    let _ = channel.send(frame).await;
}

/// Sends `request` on an already open connection (as [`connect::open`] does on a fresh one): the
/// victim's answer, or the error that ended the stream first.
pub async fn open_on(
    client: &mut PeerClient<tonic::transport::Channel>,
    request: JobRequest,
) -> Result<Answer, String> {
    use consort_api::proto::PeerFrame;
    use consort_api::proto::peer_frame::Kind;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(PeerFrame { kind: Some(Kind::Request(request)) }).await.unwrap();
    let inbound = client
        .run_job(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let channel = JobChannel::new(tx, inbound, Duration::from_secs(30));
    match channel.recv_kind().await {
        Ok(Kind::Accept(a)) => Ok(Answer::Accepted(a)),
        Ok(Kind::Reject(r)) => Ok(Answer::Refused(r.reason)),
        Ok(_other) => Err("an unexpected frame".into()),
        Err(e) => Err(e.to_string()),
    }
}
