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
use consort_engine::DatasetSpec;
use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "config.toml";
pub const IDENTITY_KEY_FILE: &str = "identity.key";
pub const TLS_KEY_FILE: &str = "node.key";
pub const TLS_CERT_FILE: &str = "node.crt";
pub const CONTROL_SOCKET: &str = consort_api::CONTROL_SOCKET;
pub const LISTEN_ADDR_FILE: &str = "listen.addr";
pub const OUTPUTS_DIR: &str = "outputs";
pub const PEERS_DIR: &str = "peers";

/// Job kinds a dataset grant can allow (a `deal` job uses no dataset).
pub const GRANTABLE: &[JobKind] = &[JobKind::Psi, JobKind::Train, JobKind::Score];

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

/// How much a node lets its jobs take (`[limits]` in config.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Jobs that run at once; more wait (state `pending`, stage `queued`) rather than being
    /// refused. Read at start.
    pub max_concurrent_jobs: u32,
    /// A job fails when its peer sends nothing for this long (seconds) once the job runs.
    pub peer_idle_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_concurrent_jobs: 4, peer_idle_seconds: 600 }
    }
}

impl Limits {
    fn is_default(&self) -> bool {
        *self == Limits::default()
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
}

/// A registered dataset and who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetEntry {
    #[serde(flatten)]
    pub spec: DatasetSpec,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// Permission for one peer to run jobs of the listed kinds on a dataset (and so learn what those
/// jobs reveal to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub peer: String,
    pub jobs: Vec<JobKind>,
}

impl DatasetEntry {
    /// Why `peer` may not run a `kind` job on this dataset, or `None` if it may.
    pub fn refusal(&self, peer: &str, kind: JobKind) -> Option<String> {
        match self.grants.iter().find(|g| g.peer == peer) {
            None => Some(format!("dataset '{}' has no grant for peer '{peer}'", self.spec.name)),
            Some(g) if !g.jobs.contains(&kind) => Some(format!(
                "dataset '{}' grants peer '{peer}' only {} jobs, not {kind}",
                self.spec.name,
                g.jobs.iter().map(|j| j.to_string()).collect::<Vec<_>>().join(", ")
            )),
            Some(_) => None,
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
            for g in &d.grants {
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
