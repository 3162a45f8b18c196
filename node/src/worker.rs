//! `consort worker`: one shard of a sharded streaming RR22 job (issue 12 item 4; the protocol side
//! is `consort_engine::psi_stream::resume::shard`, the coordination `crate::job::shards`).
//!
//! A worker runs in the node's directory (it reads the node's config, TLS identity, pins and
//! storage key, and the job's state in `DIR/spill/JOB/`), connects to the peer's worker of the
//! same shard, runs the shard's bucket range and writes its sealed segment and record there.
//!
//! **Connection.** Mutual TLS 1.3 with the node's own identity and the peer's pinned certificate
//! (the node's pins, not per-job certificates: no new key material to issue, rotate or revoke,
//! and a worker is exactly as trusted as the node that started it). The ALPN protocol is
//! `consort-worker/1`, so a worker never talks to a node's gRPC port or the reverse. Binding a
//! connection to one job and shard is the engine's pairing frame: the session fingerprint (the
//! job's fresh joint salt, sizes and layout), the shard index, the shard count and the bucket
//! range must be equal on both sides, else both refuse before any protocol frame.
//!
//! Frames are length-prefixed (u32, little-endian) on the TLS stream; a frame above
//! [`MAX_FRAME`] is refused before a buffer is sized.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use consort_protocols::{Channel, ChannelError};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::config::{self, NodeConfig};
use crate::{identity, tls};

/// ALPN protocol of worker connections.
pub const ALPN: &[u8] = b"consort-worker/1";
/// Largest frame a worker accepts (the node's gRPC message bound).
pub const MAX_FRAME: usize = crate::MAX_MESSAGE_BYTES;
/// How long a listening worker waits for its peer, and a connecting one keeps trying.
pub const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How long a listening worker gives one connection to finish its TLS handshake.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// A framed [`Channel`] over a byte stream (a worker's TLS connection): tokio-util's
/// length-delimited codec (u32 little-endian lengths), a frame over [`MAX_FRAME`] refused before
/// its buffer is sized.
pub struct StreamChannel<S> {
    read: Mutex<FramedRead<ReadHalf<S>, LengthDelimitedCodec>>,
    write: Mutex<FramedWrite<WriteHalf<S>, LengthDelimitedCodec>>,
}

impl<S: AsyncRead + AsyncWrite + Send> StreamChannel<S> {
    pub fn new(stream: S) -> Self {
        let codec = || {
            LengthDelimitedCodec::builder()
                .length_field_length(4)
                .little_endian()
                .max_frame_length(MAX_FRAME)
                .new_codec()
        };
        let (read, write) = tokio::io::split(stream);
        StreamChannel {
            read: Mutex::new(FramedRead::new(read, codec())),
            write: Mutex::new(FramedWrite::new(write, codec())),
        }
    }
}

fn transport(e: std::io::Error) -> ChannelError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ChannelError::Closed
    } else if e.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) {
        ChannelError::Transport(format!("the peer sent a frame over the limit of {MAX_FRAME} bytes"))
    } else {
        ChannelError::Transport(e.to_string())
    }
}

impl<S: AsyncRead + AsyncWrite + Send> Channel for StreamChannel<S> {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        if frame.len() > MAX_FRAME {
            return Err(ChannelError::Transport(format!("a frame of {} bytes is over the limit", frame.len())));
        }
        self.write.lock().await.send(frame).await.map_err(transport)
    }

    async fn recv(&self) -> Result<Bytes, ChannelError> {
        match self.read.lock().await.next().await {
            Some(frame) => frame.map(|f| f.freeze()).map_err(transport),
            None => Err(ChannelError::Closed),
        }
    }
}

/// Where a worker meets its peer: it listens (and prints the bound port) or connects.
#[derive(Debug, Clone)]
pub enum Meet {
    Listen(String),
    Connect(String),
}

/// One worker's task.
#[derive(Debug, Clone)]
pub struct WorkerTask {
    /// The node directory.
    pub dir: PathBuf,
    /// The job (its state is `DIR/spill/JOB`).
    pub job: String,
    pub shard: usize,
    /// The pinned peer whose worker this one pairs with.
    pub peer: String,
    pub meet: Meet,
}

/// What a worker prints on its last stdout line (JSON) when it finished its shard.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerReport {
    pub shard: u32,
    pub matched: u64,
    pub rows: u64,
    /// Wall seconds of the shard (pairing, protocol, segment).
    pub secs: f64,
    /// CPU seconds of the worker process (user + system).
    pub cpu_secs: f64,
    /// The shard's connection, for the job's status (bytes) and audit log (`shard` entries).
    #[serde(default)]
    pub evidence: Option<ShardEvidence>,
}

/// What a worker's connection leaves for its node: who the peer worker was, what was said, how
/// many bytes. The node logs it as the job's `shard` entry and adds the bytes to the job's.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardEvidence {
    /// The fingerprint (`sha256:…`) of the certificate the peer worker presented (one of the
    /// peer's pinned certificates, or the handshake fails).
    pub peer_certificate: String,
    /// The shard's range transcript digest, compared with the peer worker's (and again by the
    /// nodes at the merge), hex.
    pub range_digest: String,
    /// The connection's frames, as the job channel's `transcript` entry: digests (hex) and counts.
    pub sent_digest: String,
    pub received_digest: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Bytes on the TCP connection (TLS records, framing), as the job's wire bytes.
    pub wire_bytes_sent: u64,
    pub wire_bytes_received: u64,
}

/// The sealed file in the job's spill directory where a worker leaves its report (the node
/// waiting on external workers reads it).
pub fn report_path(spill: &Path, shard: usize) -> PathBuf {
    spill.join(format!("worker-{shard:05}"))
}

/// Reads a worker's sealed report (`None`: not written).
pub fn read_report(
    spill: &Path,
    shard: usize,
    key: &consort_engine::sealed::StorageKey,
) -> Result<Option<WorkerReport>> {
    use std::io::Read;
    let path = report_path(spill, shard);
    if !path.exists() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    consort_engine::sealed::SealedReader::open(&path, key)
        .and_then(|mut r| r.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let report: WorkerReport =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
    if report.shard as usize != shard {
        bail!("{} is damaged", path.display());
    }
    Ok(Some(report))
}

fn write_report(spill: &Path, report: &WorkerReport, key: &consort_engine::sealed::StorageKey) -> Result<()> {
    use std::io::Write;
    let path = report_path(spill, report.shard as usize);
    let bytes = serde_json::to_vec(report).expect("serializable");
    consort_engine::sealed::SealedWriter::create(&path, key, consort_engine::storage::Access::OwnerOnly)
        .and_then(|mut w| {
            w.write_all(&bytes)?;
            w.finish()
        })
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// CPU seconds (user + system) this process used so far.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The TLS configurations of a worker: the node's identity, only `peer`'s pinned certificates.
fn tls_configs(dir: &Path, config: &NodeConfig, peer: &str) -> Result<(rustls::ServerConfig, rustls::ClientConfig)> {
    let entry = config.peer(peer)?;
    let certs = crate::state::peer_certs(dir, entry)?;
    let (cert, key) = identity::read_tls_identity(dir)?;
    let pinned = tls::PinnedPeers::default();
    pinned.replace(certs.iter().map(|c| (peer.to_string(), c.clone(), None)).collect());
    let mut server = tls::server_config(cert.clone(), key.clone_key(), pinned)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = tls::client_config(cert, key, certs)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

/// How long a worker without `--job` waits for its node to name the job.
pub const JOB_WAIT: Duration = Duration::from_secs(600);

/// The job an external worker runs: the one its node names in `DIR/shard-job.json` (waiting for
/// it up to [`JOB_WAIT`]).
pub async fn current_job(dir: &Path) -> Result<String> {
    let path = config::absolute(dir)?.join(crate::job::shards::CURRENT_FILE);
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        if let Ok(bytes) = std::fs::read(&path) {
            let current: crate::job::shards::Current =
                serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
            return Ok(current.job);
        }
        if Instant::now() > deadline {
            bail!("no sharded job named in {} within {}s", path.display(), JOB_WAIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Marks a shard failed in the job's spill directory, for a node waiting on external workers.
fn mark_failed(task: &WorkerTask) {
    if let Ok(dir) = config::absolute(&task.dir) {
        let spill = dir.join(config::SPILL_DIR).join(&task.job);
        if spill.is_dir() {
            let _ = std::fs::write(spill.join(format!("failed-{:05}", task.shard)), b"");
        }
    }
}

/// Runs one worker to the end (a failed shard is marked in the job's spill directory);
/// `on_listen` hears the bound address of a listening worker before it waits for its peer.
pub async fn run(task: &WorkerTask, on_listen: impl FnOnce(SocketAddr)) -> Result<WorkerReport> {
    let result = run_inner(task, on_listen).await;
    if result.is_err() && config::check_name("job id", &task.job).is_ok() {
        mark_failed(task);
    }
    result
}

/// Runs one worker to the end; `on_listen` hears the bound address of a listening worker
/// before it waits for its peer.
async fn run_inner(task: &WorkerTask, on_listen: impl FnOnce(SocketAddr)) -> Result<WorkerReport> {
    let dir = config::absolute(&task.dir)?;
    config::check_name("job id", &task.job)?;
    let config = NodeConfig::load(&dir)?;
    let storage = crate::at_rest::NodeStorage::open(&dir, &config)?;
    let spill = dir.join(config::SPILL_DIR).join(&task.job);
    let key = consort_engine::psi_stream::resume::load_job_key(&spill, &storage.key)?;
    let shards = consort_engine::psi_stream::resume::shard::shard_count(&spill, &key)?;
    if task.shard >= shards {
        bail!("shard {} is out of range: the job runs {shards} shards", task.shard);
    }
    let (server, client) = tls_configs(&dir, &config, &task.peer)?;
    let started = Instant::now();
    let wire = Arc::new(crate::tls::WireCounters::default());
    let counted = |tcp| crate::tls::Counting::new(tcp, wire.clone());
    let stream = match &task.meet {
        Meet::Listen(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            on_listen(listener.local_addr()?);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
            // The first connection that completes the handshake with the pinned peer pairs; others
            // (not the peer) are dropped and the worker keeps waiting until its deadline.
            let stream = loop {
                let (tcp, _) = tokio::time::timeout_at(deadline, listener.accept())
                    .await
                    .map_err(|_| anyhow!("the peer's worker did not connect within {}s", CONNECT_WAIT.as_secs()))??;
                let _ = tcp.set_nodelay(true);
                // A connection that stalls its handshake is dropped after HANDSHAKE_WAIT.
                let until = deadline.min(tokio::time::Instant::now() + HANDSHAKE_WAIT);
                match tokio::time::timeout_at(until, acceptor.accept(counted(tcp))).await {
                    Ok(Ok(s)) => break s,
                    Ok(Err(e)) => tracing::warn!("a worker connection was refused: {e}"),
                    Err(_) => tracing::warn!("a worker connection did not finish its TLS handshake in time"),
                }
            };
            tokio_rustls::TlsStream::from(stream)
        }
        Meet::Connect(addr) => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let deadline = Instant::now() + CONNECT_WAIT;
            let tcp = loop {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(tcp) => break tcp,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!("peer worker at {addr} not there yet: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(anyhow!("cannot connect to the peer's worker at {addr}: {e}")),
                }
            };
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(identity::tls_server_name(&task.peer))
                .map_err(|e| anyhow!("invalid peer name: {e}"))?;
            let stream = connector
                .connect(name, counted(tcp))
                .await
                .context("the TLS handshake with the peer's worker failed")?;
            tokio_rustls::TlsStream::from(stream)
        }
    };
    let peer_certificate =
        stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(identity::fingerprint).unwrap_or_default();
    let channel = consort_protocols::channel::Metered::new(StreamChannel::new(stream));
    // Fault injection for tests: this shard's worker stops once connected (its peer worker then
    // fails too, the other shards finish).
    if std::env::var("CONSORT_TEST_FAIL_SHARD").ok().and_then(|v| v.parse::<usize>().ok()) == Some(task.shard) {
        bail!("shard {}: stopped on purpose (CONSORT_TEST_FAIL_SHARD)", task.shard);
    }
    let done = consort_engine::psi_stream::resume::shard::run_shard(&channel, &spill, &key, task.shard).await;
    let done = done.map_err(|e| anyhow!("shard {}: {e}", task.shard))?;
    let (stats, (wire_sent, wire_received)) = (channel.stats(), wire.get());
    let report = WorkerReport {
        shard: done.shard,
        matched: done.matched,
        rows: done.rows,
        secs: started.elapsed().as_secs_f64(),
        cpu_secs: cpu_secs(),
        evidence: Some(ShardEvidence {
            peer_certificate,
            range_digest: identity::hex(&done.digest()),
            sent_digest: identity::hex(&stats.sent_digest),
            received_digest: identity::hex(&stats.received_digest),
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            frames_sent: stats.frames_sent,
            frames_received: stats.frames_received,
            wire_bytes_sent: wire_sent,
            wire_bytes_received: wire_received,
        }),
    };
    write_report(&spill, &report, &key)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Frames round-trip; a frame length above the limit is refused before a buffer is sized.
    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ca, cb) = (StreamChannel::new(a), StreamChannel::new(b));
        ca.send(Bytes::from_static(b"hello")).await.unwrap();
        ca.send(Bytes::new()).await.unwrap();
        assert_eq!(&cb.recv().await.unwrap()[..], b"hello");
        assert!(cb.recv().await.unwrap().is_empty());
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut raw = a;
        raw.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let cb = StreamChannel::new(b);
        let e = cb.recv().await.unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        drop(raw);
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        assert_eq!(StreamChannel::new(b).recv().await.unwrap_err(), ChannelError::Closed);
    }
}
