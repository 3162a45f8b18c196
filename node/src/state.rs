//! What a node's services and jobs share: its directory, config, pinned peers, identity, audit log
//! and job table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Result;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

use crate::at_rest::NodeStorage;
use crate::config::{self, NodeConfig};
use crate::identity;
use crate::table::JobTable;
use crate::tls::PinnedPeers;

/// HTTP/2 windows sized for ~1 MiB protocol frames on fast links.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 8 << 20;

/// Everything the services share.
pub struct NodeState {
    pub dir: PathBuf,
    config: RwLock<Arc<NodeConfig>>,
    pub pinned: PinnedPeers,
    /// Every job this node has a record of (persisted in `DIR/jobs`).
    pub jobs: JobTable,
    /// One permit per job that may run at once (`[limits] max_concurrent_jobs`); jobs wait for one.
    pub job_slots: Arc<tokio::sync::Semaphore>,
    /// Each peer's share of the slots (`[limits] max_jobs_per_peer`), by peer name.
    peer_shares: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pub listen_addr: SocketAddr,
    job_tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// The node's signed audit log (`DIR/audit`).
    pub audit: Arc<crate::audit::NodeAudit>,
    /// Refusals per peer, to turn away a peer that keeps sending refused requests.
    pub refusals: crate::policy::RefusalLimiter,
    /// Jobs waiting for this node's operator to approve them.
    pub approvals: crate::policy::Approvals,
    /// The storage key and whether outputs are sealed under it (read at start).
    pub storage: NodeStorage,
    /// The figures `/metrics` serves (`crate::monitor`).
    pub metrics: crate::metrics::Metrics,
}

impl NodeState {
    pub fn config(&self) -> Arc<NodeConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs a job on the runtime, tracked so that shutdown can stop it.
    pub fn spawn_job(&self, job: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(job).abort_handle();
        let mut tasks = self.job_tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    pub(crate) fn abort_jobs(&self) {
        for t in self.job_tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }

    /// The semaphore of `peer`'s share of the job slots (read at start, like the slots).
    pub fn peer_share(&self, peer: &str) -> Arc<tokio::sync::Semaphore> {
        let share = self.config().limits.jobs_per_peer();
        let mut shares = self.peer_shares.lock().unwrap_or_else(|p| p.into_inner());
        shares.entry(peer.to_string()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(share))).clone()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Re-reads config.toml and the pinned certificates.
    pub fn reload(&self) -> Result<Arc<NodeConfig>> {
        let config = Arc::new(NodeConfig::load(&self.dir)?);
        self.pinned.replace(load_pins(&self.dir, &config)?);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
        Ok(config)
    }
}

/// Every certificate a peer may present: each peer's pin, and its previous pin while its rotation
/// window lasts.
fn load_pins(dir: &Path, config: &NodeConfig) -> Result<Vec<crate::tls::PinEntry>> {
    let now = crate::table::now_unix();
    let mut pins = Vec::new();
    for p in &config.peers {
        pins.push((p.name.clone(), identity::read_cert(&dir.join(&p.cert))?, None));
        if let Some(prev) = p.previous.as_ref().filter(|prev| now < prev.until) {
            pins.push((p.name.clone(), identity::read_cert(&dir.join(&prev.cert))?, Some(prev.until)));
        }
    }
    Ok(pins)
}

/// The certificates this node accepts from `peer` when it connects to it.
pub fn peer_certs(dir: &Path, peer: &crate::config::PeerEntry) -> Result<Vec<CertificateDer<'static>>> {
    let now = crate::table::now_unix();
    let mut certs = vec![identity::read_cert(&dir.join(&peer.cert))?];
    if let Some(prev) = peer.previous.as_ref().filter(|prev| now < prev.until) {
        certs.push(identity::read_cert(&dir.join(&prev.cert))?);
    }
    Ok(certs)
}

impl NodeState {
    /// Opens a node directory's state without serving anything: config, identity, pins, audit log
    /// and job table. Jobs that were running when the node last stopped are marked `interrupted`
    /// (table and audit log).
    pub async fn open(dir: &Path, listen_addr: SocketAddr) -> Result<Arc<NodeState>> {
        let dir = config::absolute(dir)?;
        let config = Arc::new(NodeConfig::load(&dir)?);
        let storage = NodeStorage::open(&dir, &config)?;
        let (cert, key) = identity::read_tls_identity(&dir)?;
        let audit = crate::audit::NodeAudit::open(&dir, Some(storage.key.clone()))?;
        let pinned = PinnedPeers::default();
        pinned.replace(load_pins(&dir, &config)?);
        let known = audit.with(|log| Ok(log.job_ids()))?;
        let (jobs, interrupted) = JobTable::open(&dir, known)?;
        for id in &interrupted {
            warn!(job = %id, "the node stopped while this job ran: marked interrupted");
            let fields = serde_json::json!({"reason": "interrupted: the node stopped while the job ran"});
            audit.append_async(id, "failure", fields).await?;
        }
        // Spill of streaming jobs a stop cut short: kept if resumable (and not expired), else
        // removed (`job::resume::keep_resumable`).
        crate::job::resume::keep_resumable(&dir.join(config::SPILL_DIR))?;
        let job_slots = Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrent_jobs as usize));
        let metrics = crate::metrics::Metrics::new(jobs.metrics(), &audit);
        Ok(Arc::new(NodeState {
            dir,
            config: RwLock::new(config),
            pinned,
            jobs,
            job_slots,
            peer_shares: Default::default(),
            cert,
            key,
            listen_addr,
            job_tasks: Default::default(),
            audit,
            refusals: Default::default(),
            approvals: Default::default(),
            storage,
            metrics,
        }))
    }
}
