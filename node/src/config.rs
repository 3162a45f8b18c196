//! The node directory and its `config.toml`.
//!
//! ```text
//! DIR/config.toml      name, listen address, pinned peers, datasets and their grants
//! DIR/identity.key     ed25519 signing key (audit evidence), mode 0600
//! DIR/node.key         TLS private key, mode 0600
//! DIR/node.crt         TLS certificate (self-signed) — give this to peers to pin
//! DIR/storage.key      the key data files are sealed under (unless `[storage] key_file` is set),
//!                      mode 0600; see `crate::at_rest`
//! DIR/peers/NAME.crt   pinned certificates of peers
//! DIR/control.sock     operator control socket (while the node runs), mode 0600
//! DIR/listen.addr      the address the running node actually listens on
//! DIR/outputs/         outputs this node writes for jobs other nodes requested
//! DIR/jobs/ID.json     the job table: one record per job, past and running
//! DIR/audit/           the signed audit log (see `consort_engine::audit`)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use consort_api::JobKind;
use consort_engine::{DatasetSpec, PsiProtocol};
use consort_protocols::Reveal;
use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "config.toml";
pub const IDENTITY_KEY_FILE: &str = "identity.key";
pub const TLS_KEY_FILE: &str = "node.key";
pub const TLS_CERT_FILE: &str = "node.crt";
pub const CONTROL_SOCKET: &str = consort_api::CONTROL_SOCKET;
pub const LISTEN_ADDR_FILE: &str = "listen.addr";
/// The metrics endpoint's actual address while the node runs with one.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";
pub const OUTPUTS_DIR: &str = "outputs";
/// Streaming jobs' spill, one directory per job, removed when the job ends (and at start).
pub const SPILL_DIR: &str = "spill";
pub const PEERS_DIR: &str = "peers";

/// Job kinds a dataset grant can allow (a `deal` job uses no dataset).
pub const GRANTABLE: &[JobKind] = &[
    JobKind::Psi,
    JobKind::Train,
    JobKind::Score,
    JobKind::Secureboost,
    JobKind::SecureboostScore,
    JobKind::Bin,
    JobKind::PsiFetch,
    JobKind::PsiQuery,
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// This node's name (peers pin it under this name).
    pub name: String,
    /// Address the peer service listens on (HOST:PORT; port 0 picks a free port).
    pub listen: String,
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    #[serde(default)]
    pub datasets: Vec<DatasetEntry>,
    /// Limits on jobs (defaults when the section is absent).
    #[serde(default, skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
    /// Encryption at rest (defaults when the section is absent; see [`crate::at_rest`]).
    #[serde(default, skip_serializing_if = "Storage::is_default")]
    pub storage: Storage,
    /// The metrics and health endpoint (`[metrics] listen = "127.0.0.1:9464"`; off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// How a node keeps the data files it writes (`[storage]` in config.toml). Read at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Seal outputs, model files and predictions under the storage key (default true).
    pub encrypt_outputs: bool,
    /// The storage key file, if not `DIR/storage.key` (e.g. a mounted secret). The environment
    /// variable `CONSORT_STORAGE_KEY_FILE` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage { encrypt_outputs: true, key_file: None }
    }
}

impl Storage {
    fn is_default(&self) -> bool {
        *self == Storage::default()
    }
}

/// `[metrics]` in config.toml: where `consort node` serves `/metrics`, `/healthz` and `/readyz`
/// (see `crate::monitor`); `consort node --metrics ADDR` overrides it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// HOST:PORT, a local or monitoring address (port 0 picks a free port, written to
    /// `DIR/metrics.addr`).
    pub listen: String,
}

/// How much a node lets its jobs take (`[limits]` in config.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Jobs that run at once; more wait (state `pending`, stage `queued`) rather than being
    /// refused. Read at start.
    pub max_concurrent_jobs: u32,
    /// A job fails when its peer sends nothing for this long (seconds) once the job runs.
    pub peer_idle_seconds: u64,
    /// Slots one peer's jobs may hold at once (default: `max_concurrent_jobs − 1`, at least 1), so
    /// another peer's job always finds one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_jobs_per_peer: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_concurrent_jobs: 4, peer_idle_seconds: 600, max_jobs_per_peer: None }
    }
}

impl Limits {
    fn is_default(&self) -> bool {
        *self == Limits::default()
    }

    pub fn jobs_per_peer(&self) -> usize {
        let all = self.max_concurrent_jobs.max(1);
        self.max_jobs_per_peer.unwrap_or(all.saturating_sub(1)).clamp(1, all) as usize
    }

    pub fn peer_idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.peer_idle_seconds)
    }
}

/// A pinned peer: only a TLS connection presenting exactly this certificate is this peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: String,
    pub addr: String,
    /// Pinned certificate, relative to the node directory.
    pub cert: PathBuf,
    /// SHA-256 of the certificate's DER, for operators comparing out of band.
    pub fingerprint: String,
    /// The certificate pinned before a rotation (`peer add --rotate`), still accepted until its
    /// window ends, so the peer can switch keys without failing jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousPin>,
}

/// A peer's earlier certificate during a rotation window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousPin {
    pub cert: PathBuf,
    pub fingerprint: String,
    /// Unix seconds after which the earlier certificate is no longer accepted.
    pub until: u64,
}

impl PeerEntry {
    /// Whether a connection that presented `fingerprint` is this peer (now: the current pin, or
    /// the previous one inside its rotation window).
    pub fn accepts(&self, fingerprint: &str, now: u64) -> bool {
        self.fingerprint == fingerprint
            || self.previous.as_ref().is_some_and(|p| p.fingerprint == fingerprint && now < p.until)
    }
}

/// A registered dataset and who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetEntry {
    #[serde(flatten)]
    pub spec: DatasetSpec,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// What `dataset add`'s full check found (file stamp, rows, columns): streaming jobs on the
    /// unchanged file take their count from it instead of reading the file once more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<consort_engine::psi_stream::CheckRecord>,
}

/// Permission for one peer to run jobs of the listed kinds on a dataset (and so learn what those
/// jobs reveal to it), with the policy that bounds them (`[[datasets.grants]]` in config.toml;
/// `consort grant`). Every bound is checked by the job envelope for every job kind, on the
/// responder before the job is accepted and on the requester before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub peer: String,
    pub jobs: Vec<JobKind>,
    /// PSI protocols the jobs may run or align with (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "vocab_list")]
    pub protocols: Vec<PsiProtocol>,
    /// Reveal modes PSI jobs may use (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "vocab_list")]
    pub reveal: Vec<Reveal>,
    /// Largest set the peer may bring to a job (default [`DEFAULT_MAX_PEER_ROWS`]); the peer
    /// declares its size in the request and its protocol hello may not exceed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_peer_rows: Option<u64>,
    /// Fewest aligned rows a job may use (PSI output, training, scoring); 0: no minimum.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_aligned_rows: u64,
    /// Dealer nodes train jobs may use (by pinned name; never the peer or this node). Empty:
    /// dealer-free training only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dealers: Vec<String>,
    /// Jobs of this peer on this dataset in any 24 hours (all kinds, both roles; refused
    /// requests do not count). None: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_per_day: Option<u32>,
    /// Train jobs (models) this peer may run on this dataset when this node is the responder
    /// (default [`DEFAULT_MODELS`]): each model scored hands the party with the labels one more
    /// linear combination of this node's features per row (docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<u32>,
    /// When the grant ends: `YYYY-MM-DD` (midnight UTC) or RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Incoming jobs wait as `awaiting-approval` until this node's operator runs `consort
    /// approve` or `consort deny`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
    /// Columns of this dataset the peer may receive in payload (labeled) PSI joins it requests
    /// (`consort dataset add ... --share PEER:COL,COL`; `consort psi --peer-columns`). Empty:
    /// none; a job asking for a column not listed is refused before any protocol message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub share: Vec<String>,
    /// Unbalanced PSI: query items this peer may check against this dataset in `psi-query` jobs,
    /// in all (each job's size, as declared, counts; refused requests do not). None: no budget
    /// but the setup's own (`consort psi-setup --query-budget`). Each query item is one
    /// membership test of the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<u64>,
    /// SecureBoost: split nodes a train job of this peer may ask for when this node is the
    /// responder, counted as trees × (2^max_depth − 1). Each split on this node's features shows
    /// the label holder how that feature's threshold divides the node's rows (docs/security.md),
    /// so this bounds how many such partitions one job can reveal. None: only the protocol's
    /// own bounds (`MAX_TREES`, `MAX_DEPTH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_split_nodes: Option<u64>,
}

/// A grant's peer set size bound when it names none.
pub const DEFAULT_MAX_PEER_ROWS: u64 = 2_000_000_000;
/// A grant's model budget when it names none.
pub const DEFAULT_MODELS: u32 = 1;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Grant {
    /// A grant of `jobs` to `peer` with the default policy.
    pub fn new(peer: &str, jobs: Vec<JobKind>) -> Grant {
        Grant {
            peer: peer.into(),
            jobs,
            protocols: Vec::new(),
            reveal: Vec::new(),
            max_peer_rows: None,
            min_aligned_rows: 0,
            dealers: Vec::new(),
            jobs_per_day: None,
            models: None,
            expires: None,
            approval: false,
            share: Vec::new(),
            queries: None,
            max_split_nodes: None,
        }
    }

    pub fn max_peer_rows(&self) -> u64 {
        self.max_peer_rows.unwrap_or(DEFAULT_MAX_PEER_ROWS)
    }

    pub fn models(&self) -> u32 {
        self.models.unwrap_or(DEFAULT_MODELS)
    }

    /// Unix seconds at which the grant ends, if it does.
    pub fn expires_at(&self) -> Result<Option<u64>> {
        self.expires.as_deref().map(parse_date).transpose()
    }

    /// The policy in one line (`consort dataset list`, `consort grant list`).
    pub fn describe(&self) -> String {
        let mut parts =
            vec![format!("{}:{}", self.peer, self.jobs.iter().map(|j| j.to_string()).collect::<Vec<_>>().join(","))];
        let names = |v: Vec<&str>| v.join(",");
        if !self.protocols.is_empty() {
            parts.push(format!("protocols={}", names(self.protocols.iter().map(|p| p.name()).collect())));
        }
        if !self.reveal.is_empty() {
            parts.push(format!(
                "reveal={}",
                names(self.reveal.iter().map(|r| consort_api::vocab::Vocabulary::name(*r)).collect())
            ));
        }
        parts.push(format!("max-peer-rows={}", self.max_peer_rows()));
        if self.min_aligned_rows > 0 {
            parts.push(format!("min-aligned-rows={}", self.min_aligned_rows));
        }
        if !self.dealers.is_empty() {
            parts.push(format!("dealers={}", self.dealers.join(",")));
        }
        if let Some(n) = self.jobs_per_day {
            parts.push(format!("jobs-per-day={n}"));
        }
        if let Some(n) = self.queries {
            parts.push(format!("queries={n}"));
        }
        if self.jobs.contains(&JobKind::Train) || self.jobs.contains(&JobKind::Secureboost) {
            parts.push(format!("models={}", self.models()));
        }
        if let Some(n) = self.max_split_nodes {
            parts.push(format!("max-split-nodes={n}"));
        }
        if let Some(e) = &self.expires {
            parts.push(format!("expires={e}"));
        }
        if self.approval {
            parts.push("approval".into());
        }
        if !self.share.is_empty() {
            parts.push(format!("share={}", self.share.join(",")));
        }
        parts.join(" ")
    }
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339 to unix seconds.
pub fn parse_date(s: &str) -> Result<u64> {
    use time::format_description::well_known::Rfc3339;
    let full = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_string() };
    let t = time::OffsetDateTime::parse(&full, &Rfc3339)
        .map_err(|_| anyhow::anyhow!("invalid date '{s}': use YYYY-MM-DD or RFC 3339 (2027-01-31T18:00:00Z)"))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| anyhow::anyhow!("date '{s}' is before 1970"))
}

/// Serde for lists of vocabulary words (`["ecdh", "rr22"]`).
mod vocab_list {
    use consort_api::vocab::Vocabulary;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: Vocabulary>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.name()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Vocabulary>(d: D) -> Result<Vec<T>, D::Error> {
        let words = Vec::<String>::deserialize(d)?;
        words.iter().map(|w| T::parse_name(w).map_err(serde::de::Error::custom)).collect()
    }
}

impl DatasetEntry {
    /// The grant for `peer`, if it may run a `kind` job on this dataset, or why not.
    pub fn grant_for(&self, peer: &str, kind: JobKind) -> Result<&Grant, String> {
        match self.grants.iter().find(|g| g.peer == peer) {
            None => Err(format!("dataset '{}' has no grant for peer '{peer}'", self.spec.name)),
            Some(g) if !g.jobs.contains(&kind) => Err(format!(
                "dataset '{}' grants peer '{peer}' only {} jobs, not {kind}",
                self.spec.name,
                g.jobs.iter().map(|j| j.to_string()).collect::<Vec<_>>().join(", ")
            )),
            Some(g) => Ok(g),
        }
    }
}

impl NodeConfig {
    pub fn load(dir: &Path) -> Result<NodeConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is {} a node directory? create one with `consort init`)",
                path.display(),
                dir.display()
            )
        })?;
        let config: NodeConfig =
            toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
        config.validate().with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(config)
    }

    /// Writes the config atomically (temp file + rename), so a crash never leaves half a config.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        let text = toml::to_string_pretty(self).context("cannot encode config")?;
        write_atomic(&dir.join(CONFIG_FILE), text.as_bytes(), false)
    }

    fn validate(&self) -> Result<()> {
        check_name("node name", &self.name)?;
        if self.limits.max_concurrent_jobs == 0 || self.limits.peer_idle_seconds == 0 {
            bail!("[limits]: max_concurrent_jobs and peer_idle_seconds must be at least 1");
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            check_name("peer name", &p.name)?;
            if !seen.insert(&p.name) {
                bail!("peer '{}' is listed twice", p.name);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.datasets {
            check_name("dataset name", &d.spec.name)?;
            if !seen.insert(&d.spec.name) {
                bail!("dataset '{}' is listed twice", d.spec.name);
            }
            let mut peers = std::collections::HashSet::new();
            for g in &d.grants {
                if !peers.insert(&g.peer) {
                    bail!("dataset '{}': peer '{}' has two grants", d.spec.name, g.peer);
                }
                g.expires_at().with_context(|| format!("dataset '{}', grant for '{}'", d.spec.name, g.peer))?;
                if g.max_peer_rows == Some(0) {
                    bail!("dataset '{}', grant for '{}': max_peer_rows must be at least 1", d.spec.name, g.peer);
                }
                for dealer in &g.dealers {
                    check_name("dealer name", dealer)?;
                    if *dealer == g.peer || *dealer == self.name {
                        bail!(
                            "dataset '{}', grant for '{}': the dealer '{dealer}' must be a third node, not the peer or this node",
                            d.spec.name,
                            g.peer
                        );
                    }
                }
                for j in &g.jobs {
                    if !GRANTABLE.contains(j) {
                        bail!(
                            "dataset '{}': grant for '{}' names job kind '{j}', which uses no dataset",
                            d.spec.name,
                            g.peer
                        );
                    }
                }
            }
        }
        Ok(())
    }

    pub fn peer(&self, name: &str) -> Result<&PeerEntry> {
        self.peers.iter().find(|p| p.name == name).with_context(|| {
            format!(
                "unknown peer '{name}' (pinned peers: {}); add it with `consort peer add`",
                names(self.peers.iter().map(|p| &p.name))
            )
        })
    }

    pub fn dataset(&self, name: &str) -> Result<&DatasetEntry> {
        self.datasets.iter().find(|d| d.spec.name == name).with_context(|| {
            format!(
                "unknown dataset '{name}' (registered: {}); add it with `consort dataset add`",
                names(self.datasets.iter().map(|d| &d.spec.name))
            )
        })
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(|s| s.as_str()).collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// Names are used in file names and logs: keep them simple.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if !ok {
        bail!("invalid {what} '{name}': use 1-64 letters, digits, '-', '_' or '.', not starting with '.'");
    }
    Ok(())
}

/// Writes `bytes` to `path` with [`consort_engine::storage::write_atomic`] (temp file, fsync,
/// rename, directory fsync). `secret` files are 0600 from their creation, others 0644.
pub fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    use consort_engine::storage::{self, Access};
    let access = if secret { Access::OwnerOnly } else { Access::Readable };
    storage::write_atomic(path, bytes, access).with_context(|| format!("cannot write {}", path.display()))
}

/// Absolute form of a user-given path (relative to the current directory).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve path {}", path.display()))
}
