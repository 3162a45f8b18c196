//! Node directory administration shared by the CLI, the demo and the benchmark harness:
//! pinning peers and registering datasets. A running node picks changes up on `Reload`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use consort_api::JobKind;
use consort_engine::DatasetSpec;

use crate::config::{self, DatasetEntry, Grant, NodeConfig, PeerEntry};
use crate::identity;

/// How a pin is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinChange {
    /// A new peer name.
    New,
    /// Replace the peer's pin (and address): connections with the old certificate are closed.
    Replace,
    /// A rotation: the new certificate becomes the pin, the old one stays accepted for this many
    /// seconds.
    Rotate(u64),
}

/// Pins `cert` as peer `name` at `addr` (copied into DIR/peers/NAME.crt). Returns the fingerprint.
pub fn peer_add(dir: &Path, name: &str, addr: &str, cert: &Path, replace: bool) -> Result<String> {
    peer_pin(dir, name, addr, cert, if replace { PinChange::Replace } else { PinChange::New })
}

/// [`peer_add`] with the kind of change spelled out (`--replace`, `--rotate`).
pub fn peer_pin(dir: &Path, name: &str, addr: &str, cert: &Path, change: PinChange) -> Result<String> {
    let replace = change != PinChange::New;
    config::check_name("peer name", name)?;
    let mut config = NodeConfig::load(dir)?;
    if name == config.name {
        bail!("'{name}' is this node's own name; a peer needs another name");
    }
    if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
        bail!("invalid peer address '{addr}': expected HOST:PORT");
    }
    let der = identity::read_cert(cert)?;
    if der.as_ref() == identity::read_tls_identity(dir)?.0.as_ref() {
        bail!("{} is this node's own certificate, not the peer's", cert.display());
    }
    let existing = config.peers.iter().position(|p| p.name == name);
    if existing.is_some() && !replace {
        bail!(
            "peer '{name}' is already pinned (pass --replace to pin a new certificate or address, --rotate to accept both for a while)"
        );
    }
    let fingerprint = identity::fingerprint(&der);
    let previous = match (change, existing) {
        (PinChange::Rotate(_), None) => bail!("peer '{name}' is not pinned yet: add it without --rotate"),
        (PinChange::Rotate(window), Some(i)) => {
            let old = &config.peers[i];
            if old.fingerprint == fingerprint {
                bail!("{} is the certificate already pinned for '{name}'", cert.display());
            }
            let kept = PathBuf::from(config::PEERS_DIR).join(format!("{name}.previous.crt"));
            let old_pem =
                std::fs::read(dir.join(&old.cert)).with_context(|| format!("cannot read {}", old.cert.display()))?;
            config::write_atomic(&dir.join(&kept), &old_pem, false)?;
            let until = crate::table::now_unix() + window;
            Some(config::PreviousPin { cert: kept, fingerprint: old.fingerprint.clone(), until })
        }
        _ => None,
    };
    let rel = PathBuf::from(config::PEERS_DIR).join(format!("{name}.crt"));
    std::fs::create_dir_all(dir.join(config::PEERS_DIR))?;
    let pem = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    config::write_atomic(&dir.join(&rel), &pem, false)?;
    let entry =
        PeerEntry { name: name.into(), addr: addr.into(), cert: rel, fingerprint: fingerprint.clone(), previous };
    match existing {
        Some(i) => config.peers[i] = entry,
        None => config.peers.push(entry),
    }
    config.save(dir)?;
    Ok(fingerprint)
}

/// Unpins peer `name`: its certificates, its grants on every dataset and its place in dealer
/// allow-lists go. Returns what was removed, for the operator.
pub fn peer_remove(dir: &Path, name: &str) -> Result<Vec<String>> {
    let mut config = NodeConfig::load(dir)?;
    let Some(i) = config.peers.iter().position(|p| p.name == name) else {
        bail!("no pinned peer '{name}'");
    };
    let entry = config.peers.remove(i);
    let mut removed = vec![format!("pin {}", entry.fingerprint)];
    for d in &mut config.datasets {
        let before = d.grants.len();
        d.grants.retain(|g| g.peer != name);
        if d.grants.len() < before {
            removed.push(format!("grant on dataset '{}'", d.spec.name));
        }
        for g in &mut d.grants {
            if g.dealers.iter().any(|x| x == name) {
                g.dealers.retain(|x| x != name);
                removed.push(format!("dealer in the grant for '{}' on '{}'", g.peer, d.spec.name));
            }
        }
    }
    config.save(dir)?;
    for cert in std::iter::once(&entry.cert).chain(entry.previous.as_ref().map(|p| &p.cert)) {
        let _ = std::fs::remove_file(dir.join(cert));
    }
    Ok(removed)
}

/// Sets (adds or replaces) the grant for `grant.peer` on dataset `dataset`.
pub fn grant_set(dir: &Path, dataset: &str, grant: Grant) -> Result<()> {
    let mut config = NodeConfig::load(dir)?;
    config.peer(&grant.peer)?;
    for dealer in &grant.dealers {
        config.peer(dealer).with_context(|| format!("dealer '{dealer}'"))?;
    }
    let entry = config.datasets.iter_mut().find(|d| d.spec.name == dataset);
    let Some(entry) = entry else { bail!("unknown dataset '{dataset}'") };
    match entry.grants.iter_mut().find(|g| g.peer == grant.peer) {
        Some(g) => *g = grant,
        None => entry.grants.push(grant),
    }
    config.save(dir)
}

/// Removes the grant for `peer` on `dataset`.
pub fn grant_revoke(dir: &Path, dataset: &str, peer: &str) -> Result<()> {
    let mut config = NodeConfig::load(dir)?;
    let entry = config.datasets.iter_mut().find(|d| d.spec.name == dataset);
    let Some(entry) = entry else { bail!("unknown dataset '{dataset}'") };
    let before = entry.grants.len();
    entry.grants.retain(|g| g.peer != peer);
    if entry.grants.len() == before {
        bail!("dataset '{dataset}' has no grant for '{peer}'");
    }
    config.save(dir)
}

/// Parses `PEER` or `PEER:kind,kind` into a grant (a bare peer name grants PSI).
pub fn parse_grant(s: &str) -> Result<Grant> {
    let (peer, words): (&str, Vec<&str>) = match s.split_once(':') {
        Some((p, j)) => (p, j.split(',').map(str::trim).filter(|k| !k.is_empty()).collect()),
        None => (s, vec!["psi"]),
    };
    config::check_name("peer name in grant", peer)?;
    let mut jobs = Vec::new();
    for word in words {
        let kind: JobKind = word.parse().map_err(|e| anyhow::anyhow!("grant '{s}': {e}"))?;
        if !config::GRANTABLE.contains(&kind) {
            bail!("grant '{s}': job kind '{kind}' uses no dataset and cannot be granted on one");
        }
        jobs.push(kind);
    }
    if jobs.is_empty() {
        bail!("grant '{s}' names no job kinds");
    }
    Ok(Grant::new(peer, jobs))
}

/// Adds `--share PEER:COL,COL` to the grant of PEER in `grants`: the columns must be in the
/// dataset's header (`columns`) and the grant must allow PSI jobs.
pub fn apply_shares(grants: &mut [Grant], shares: &[String], columns: &[String]) -> Result<()> {
    for s in shares {
        let Some((peer, cols)) = s.split_once(':') else {
            bail!("--share '{s}': expected PEER:COLUMN[,COLUMN]");
        };
        let Some(grant) = grants.iter_mut().find(|g| g.peer == peer) else {
            bail!("--share '{s}': peer '{peer}' has no --grant on this dataset");
        };
        if !grant.jobs.contains(&JobKind::Psi) {
            bail!("--share '{s}': the grant for '{peer}' does not allow psi jobs");
        }
        for c in cols.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !columns.iter().any(|h| h.trim() == c) {
                bail!("--share '{s}': the dataset has no column '{c}'");
            }
            if !grant.share.iter().any(|x| x == c) {
                grant.share.push(c.to_string());
            }
        }
        if grant.share.is_empty() {
            bail!("--share '{s}' names no columns");
        }
    }
    Ok(())
}

/// What `dataset_add` found in the file.
#[derive(Debug)]
pub struct DatasetCheck {
    pub columns: Vec<String>,
    /// Data rows in the file (duplicates included), if the whole file was checked.
    pub rows: Option<u64>,
    /// Always `None` now: registration is a constant-memory pass and does not look for duplicate
    /// keys; a job finds them (kept for the JSON answer's shape: `null` = "checked by jobs").
    pub duplicates_dropped: Option<u64>,
    /// The file's size in bytes when it was checked (with `full_check`).
    pub bytes: Option<u64>,
}

/// Registers (or with `replace`, re-registers) a dataset. `full_check` reads the whole file now,
/// in constant memory ([`consort_engine::psi_stream::StreamInput::open`], CSV and Parquet): every
/// row is parsed, its key normalized and checked, the rows counted, and the file must be unchanged
/// (size, modification time) at the end of the pass, so a bad row is reported at registration
/// (file, line, column; never the value) and nothing is registered. Duplicate keys are **not**
/// looked for here (that needs memory or disk per row): every job finds them — the in-memory
/// paths when they load the file (before the peer is contacted), the streaming RR22 path when it
/// reaches the bucket the duplicates share — and fails naming both lines, or keeps the first row
/// of each key with `dedup`.
pub fn dataset_add(
    dir: &Path,
    mut spec: DatasetSpec,
    grants: Vec<Grant>,
    replace: bool,
    full_check: bool,
) -> Result<DatasetCheck> {
    config::check_name("dataset name", &spec.name)?;
    let mut config = NodeConfig::load(dir)?;
    if spec.keys.is_empty() {
        bail!("dataset '{}' needs at least one --key column", spec.name);
    }
    spec.file = config::absolute(&spec.file)?;
    if consort_engine::sealed::is_sealed(&spec.file).unwrap_or(false) {
        bail!(
            "{} is sealed (an output of a node?): register its plaintext, from `consort export`",
            spec.file.display()
        );
    }
    for g in &grants {
        if !config.peers.iter().any(|p| p.name == g.peer) {
            bail!("cannot grant unknown peer '{}' (pin it first with `consort peer add`)", g.peer);
        }
    }
    let existing = config.datasets.iter().position(|d| d.spec.name == spec.name);
    if existing.is_some() && !replace {
        bail!("dataset '{}' is already registered (pass --replace to change it)", spec.name);
    }
    let (check, checked) = if full_check {
        // CSV or Parquet: one constant-memory validation pass; duplicate keys are found by jobs.
        // Its record is kept: streaming jobs on the unchanged file skip their own count pass.
        let input = consort_engine::psi_stream::StreamInput::open(&spec)?;
        let check = DatasetCheck {
            columns: input.columns.clone(),
            rows: Some(input.rows),
            duplicates_dropped: None,
            bytes: Some(input.bytes()),
        };
        (check, Some(input.record()))
    } else {
        (DatasetCheck { columns: spec.check_header()?, rows: None, duplicates_dropped: None, bytes: None }, None)
    };
    let entry = DatasetEntry { spec, grants, checked };
    match existing {
        Some(i) => config.datasets[i] = entry,
        None => config.datasets.push(entry),
    }
    config.save(dir)?;
    Ok(check)
}

/// Asks a running node in `dir` to re-read its config. Not running is fine: it reads it at start.
pub async fn notify_node(dir: &Path) -> Result<bool> {
    if !dir.join(config::CONTROL_SOCKET).exists() {
        return Ok(false);
    }
    match crate::client::NodeClient::connect(dir).await {
        Ok(client) => {
            client.reload().await?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let (a, _b) = crate::pair::init_pair(tmp.path()).unwrap();
        (tmp, a)
    }

    fn registered(dir: &Path) -> Vec<String> {
        NodeConfig::load(dir).unwrap().datasets.into_iter().map(|d| d.spec.name).collect()
    }

    #[test]
    fn a_bad_row_names_file_line_and_column_never_the_value_and_registers_nothing() {
        let (tmp, dir) = node();
        let file = tmp.path().join("bad.csv");
        // Line 4, column 'id': a control character in the key (the value must not be echoed).
        std::fs::write(&file, "id,v\nk1,1\nk2,2\nSECRET\u{1}X,3\nk4,4\n").unwrap();
        let err = dataset_add(&dir, DatasetSpec::new("bad", &file, &["id"]), vec![], false, true).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("bad.csv:4: column 'id': the key contains a control character"), "{msg}");
        assert!(!msg.contains("SECRET"), "{msg}");
        assert!(registered(&dir).is_empty());

        // Line 3: a missing field, named by the column that is missing.
        std::fs::write(&file, "id,v\nk1,1\nk2\n").unwrap();
        let msg = format!(
            "{:#}",
            dataset_add(&dir, DatasetSpec::new("bad", &file, &["id"]), vec![], false, true).unwrap_err()
        );
        assert!(msg.contains("bad.csv:3: column 'v': missing"), "{msg}");
        assert!(registered(&dir).is_empty());

        // Parquet: the same pass (a garbled file is an error naming it).
        let pq = tmp.path().join("bad.parquet");
        std::fs::write(&pq, b"PAR1 not really").unwrap();
        let msg =
            format!("{:#}", dataset_add(&dir, DatasetSpec::new("bad", &pq, &["id"]), vec![], false, true).unwrap_err());
        assert!(msg.contains("bad.parquet"), "{msg}");
        assert!(registered(&dir).is_empty());
    }

    #[test]
    fn a_full_check_is_recorded_and_survives_the_config_round_trip() {
        let (tmp, dir) = node();
        let file = tmp.path().join("ids.csv");
        std::fs::write(&file, "id,v\nk1,1\nk2,2\n").unwrap();
        let spec = DatasetSpec::new("ids", &file, &["id"]);
        dataset_add(&dir, spec.clone(), vec![], false, true).unwrap();
        let entry = NodeConfig::load(&dir).unwrap().datasets.remove(0);
        let record = entry.checked.expect("recorded");
        assert_eq!(record, consort_engine::psi_stream::StreamInput::open(&entry.spec).unwrap().record());
        let input = consort_engine::psi_stream::StreamInput::open_checked(&entry.spec, Some(&record)).unwrap();
        assert_eq!(input.rows, 2);
        // A quick registration (header only) keeps no record, and replaces the old one.
        dataset_add(&dir, spec, vec![], true, false).unwrap();
        assert!(NodeConfig::load(&dir).unwrap().datasets[0].checked.is_none());
    }

    #[test]
    fn registration_counts_rows_and_leaves_duplicates_to_jobs() {
        let (tmp, dir) = node();
        let file = tmp.path().join("dups.csv");
        let text = "id,v\nk1,1\nk2,2\n K1 ,3\n";
        std::fs::write(&file, text).unwrap();
        let mut spec = DatasetSpec::new("dups", &file, &["id"]);
        spec.normalize.case_fold = true;
        let check = dataset_add(&dir, spec.clone(), vec![], false, true).unwrap();
        assert_eq!(check.columns, ["id", "v"]);
        assert_eq!((check.rows, check.duplicates_dropped, check.bytes), (Some(3), None, Some(text.len() as u64)));
        assert_eq!(registered(&dir), ["dups"]);
        // A job still refuses the duplicate (the in-memory load names both lines) ...
        let err = consort_engine::Dataset::load(&spec).unwrap_err().to_string();
        assert!(err.contains("dups.csv:4: column 'id': duplicate key, first seen on line 2"), "{err}");
        // ... and keeps the first row with dedup.
        spec.dedup = true;
        assert_eq!(consort_engine::Dataset::load(&spec).unwrap().len(), 2);
    }
}
