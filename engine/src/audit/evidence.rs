//! Evidence bundles (`consort audit export`) and their offline verification (`consort audit
//! verify`).
//!
//! A bundle is one JSON file for one job on one node:
//!
//! ```text
//! format      "consort-audit-evidence/1"
//! node        the node's name;  public_key: its ed25519 key (hex) — pin it with --key
//! job         the job id
//! entries     the job's log entries: {index, entry (the exact log line), path (audit path in `head`)}
//! job_head    the signed tree head right after the job's last entry
//! head        the latest signed tree head when exported
//! consistency RFC 6962 consistency proof from job_head to head
//! ecdh        (ECDH-PSI with proofs) commitments and proof records: {pairs, pairs_root, challenge,
//!             m, z, proof, sample_proof, sample: [{index, c, d, leaf, path}], points_file}; points_file holds all
//!             pairs (C_0..C_{n-1} then D_0..D_{n-1}, 32 bytes each), next to the bundle
//! ```
//!
//! [`verify_bundles`] checks each bundle (signatures, consistency, inclusion of every entry, that
//! the ECDH records are the ones the signed log commits to, the DLEQ proofs — on the Fiat–Shamir
//! sample, and on all pairs with `full`), then, for two bundles of the same job, that the nodes'
//! transcript digests and ECDH commitments and roots agree.

use std::path::{Path, PathBuf};

use consort_protocols::merkle::{self, Hash};
use consort_protocols::psi::ecdh::{self, EcdhEvidence, ProofRecord, SampledPair};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::log::{SignedHead, read_log, verify_log};
use super::{AuditError, hex, unhex, unhex_vec, write_atomic};

pub const FORMAT: &str = "consort-audit-evidence/2";
/// Per-job ECDH evidence files live here, under the audit directory.
pub const JOBS_DIR: &str = "jobs";

/// A DLEQ proof as the signed log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofSummary {
    pub pairs: u64,
    pub pairs_root: String,
    /// The verifier's challenge seed and the composite `(M, Z)` it sent.
    pub challenge: String,
    pub m: String,
    pub z: String,
    pub proof: String,
    pub sample_proof: String,
}

/// The commitments and proofs of an ECDH-PSI job, as the signed log records them (`proofs` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcdhSummary {
    pub own_commitment: String,
    pub peer_commitment: String,
    pub sent: Option<ProofSummary>,
    pub received: Option<ProofSummary>,
}

/// A sampled pair with its audit path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleJson {
    pub index: u64,
    pub c: String,
    pub d: String,
    /// The pairs of the sampled pair's leaf, hex.
    pub leaf: String,
    pub path: Vec<String>,
}

/// A proof record in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofJson {
    #[serde(flatten)]
    pub summary: ProofSummary,
    pub sample: Vec<SampleJson>,
    /// All pairs, relative to the bundle (absent if not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcdhJson {
    pub own_commitment: String,
    pub peer_commitment: String,
    pub sent: Option<ProofJson>,
    pub received: Option<ProofJson>,
}

impl EcdhJson {
    pub fn summary(&self) -> EcdhSummary {
        EcdhSummary {
            own_commitment: self.own_commitment.clone(),
            peer_commitment: self.peer_commitment.clone(),
            sent: self.sent.as_ref().map(|p| p.summary.clone()),
            received: self.received.as_ref().map(|p| p.summary.clone()),
        }
    }
}

/// One log entry of the job with its audit path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleEntry {
    pub index: u64,
    pub entry: String,
    pub path: Vec<String>,
}

/// The evidence of one job on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    pub node: String,
    pub public_key: String,
    pub job: String,
    pub entries: Vec<BundleEntry>,
    pub job_head: SignedHead,
    pub head: SignedHead,
    pub consistency: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecdh: Option<EcdhJson>,
}

fn proof_json(record: &ProofRecord, points_file: Option<String>) -> ProofJson {
    ProofJson {
        summary: ProofSummary {
            pairs: record.pairs,
            pairs_root: hex(&record.pairs_root),
            challenge: hex(&record.challenge),
            m: hex(&record.m),
            z: hex(&record.z),
            proof: hex(&record.proof),
            sample_proof: hex(&record.sample_proof),
        },
        sample: record
            .sample
            .iter()
            .map(|p| SampleJson {
                index: p.index,
                c: hex(&p.c),
                d: hex(&p.d),
                leaf: hex(&p.leaf),
                path: p.path.iter().map(|h| hex(h)).collect(),
            })
            .collect(),
        points_file,
    }
}

/// Writes a job's ECDH evidence under `AUDIT_DIR/jobs/` (record JSON, and all pairs of each proof
/// in `JOB.sent.pairs` / `JOB.received.pairs`), atomically. Returns the summary for the log.
pub fn store_ecdh(audit_dir: &Path, job: &str, evidence: &EcdhEvidence) -> Result<EcdhSummary, AuditError> {
    let dir = audit_dir.join(JOBS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| AuditError::io(&dir, e))?;
    let store = |record: &Option<ProofRecord>, which: &str| -> Result<Option<ProofJson>, AuditError> {
        let Some(record) = record else { return Ok(None) };
        let name = format!("{job}.{which}.pairs");
        write_atomic(&dir.join(&name), &[record.c.as_slice(), record.d.as_slice()].concat(), false)?;
        Ok(Some(proof_json(record, Some(name))))
    };
    let json = EcdhJson {
        own_commitment: hex(&evidence.own_commitment),
        peer_commitment: hex(&evidence.peer_commitment),
        sent: store(&evidence.sent, "sent")?,
        received: store(&evidence.received, "received")?,
    };
    let text = serde_json::to_string_pretty(&json).expect("serializable");
    write_atomic(&dir.join(format!("{job}.ecdh.json")), text.as_bytes(), false)?;
    Ok(json.summary())
}

/// Builds the bundle of `job` from a node's audit directory (after verifying the whole log with the
/// node's key) and writes it to `out` (atomically), with the points files next to it.
pub fn export(audit_dir: &Path, node: &str, key: &VerifyingKey, job: &str, out: &Path) -> Result<Bundle, AuditError> {
    let (lines, heads) = read_log(audit_dir)?;
    verify_log(audit_dir, &lines, &heads, key)?;
    let leaves: Vec<Hash> = lines.iter().map(|l| merkle::leaf_hash(l.as_bytes())).collect();
    let mine: Vec<u64> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("job").and_then(|j| j.as_str()).map(|j| j == job))
                == Some(true)
        })
        .map(|(i, _)| i as u64)
        .collect();
    let Some(&last) = mine.last() else {
        return Err(AuditError::failed(
            audit_dir.display().to_string(),
            format!("the audit log has no entries for job '{job}'"),
        ));
    };
    let head = heads.last().expect("a verified log with entries has heads").clone();
    let job_head = heads.iter().find(|h| h.size > last).expect("a verified log covers every entry").clone();
    let hexes = |v: Vec<Hash>| v.iter().map(|h| hex(h)).collect::<Vec<_>>();
    let entries = mine
        .iter()
        .map(|&i| BundleEntry {
            index: i,
            entry: lines[i as usize].clone(),
            path: hexes(merkle::inclusion_proof(&leaves[..head.size as usize], i as usize).expect("in range")),
        })
        .collect();
    let consistency =
        hexes(merkle::consistency_proof(&leaves[..head.size as usize], job_head.size as usize).expect("in range"));
    let ecdh = export_ecdh(audit_dir, job, out)?;
    let bundle = Bundle {
        format: FORMAT.into(),
        node: node.into(),
        public_key: hex(key.as_bytes()),
        job: job.into(),
        entries,
        job_head,
        head,
        consistency,
        ecdh,
    };
    let text = serde_json::to_string_pretty(&bundle).expect("serializable");
    write_atomic(out, text.as_bytes(), false)?;
    Ok(bundle)
}

/// The job's stored ECDH evidence, with its points files linked (or copied) next to `out`.
fn export_ecdh(audit_dir: &Path, job: &str, out: &Path) -> Result<Option<EcdhJson>, AuditError> {
    let jobs = audit_dir.join(JOBS_DIR);
    let path = jobs.join(format!("{job}.ecdh.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::io(path, e)),
    };
    let mut json: EcdhJson =
        serde_json::from_str(&text).map_err(|e| AuditError::failed(path.display().to_string(), e.to_string()))?;
    let out_dir = out.parent().unwrap_or(Path::new("."));
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| job.into());
    for (which, record) in [("sent", &mut json.sent), ("received", &mut json.received)] {
        let Some(record) = record else { continue };
        let Some(name) = record.points_file.take() else { continue };
        let target_name = format!("{stem}.{which}.pairs");
        let target = out_dir.join(&target_name);
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(jobs.join(&name), &target).is_err() {
            std::fs::copy(jobs.join(&name), &target).map_err(|e| AuditError::io(&target, e))?;
        }
        record.points_file = Some(target_name);
    }
    Ok(Some(json))
}

/// One named check of a verification report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The result of [`verify_bundles`]: every check, passed or failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    fn push(&mut self, name: String, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.checks.push(Check { name, ok, detail });
    }
}

/// What to trust and how much to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The nodes' public keys, obtained out of band. Empty: check against the key in each bundle
    /// (which proves integrity, not origin; the report says so).
    pub trusted_keys: Vec<VerifyingKey>,
    /// Check the DLEQ proofs over all pairs (needs the points files), not only the sample.
    pub full: bool,
}

/// What one bundle's entries say, for cross-checks.
#[derive(Default)]
struct Facts {
    /// Sent and received digests, and their hash (`sha256` for entries of nodes that did not name it).
    transcript: Option<(String, String, String)>,
    ecdh: Option<EcdhSummary>,
    outcome: Option<String>,
    /// A sharded job's `shard` entries: per shard, its connection's sent and received digests and
    /// its range digest.
    shards: std::collections::BTreeMap<u64, (String, String, String)>,
}

/// Verifies one or more bundles (paths are used in messages and to find points files).
pub fn verify_bundles(bundles: &[(PathBuf, Bundle)], options: &VerifyOptions) -> Report {
    let mut report = Report::default();
    let mut facts = Vec::new();
    let mut verified = Verified::default();
    for (path, bundle) in bundles {
        facts.push(verify_one(path, bundle, options, &mut report, &mut verified));
    }
    if let [(path_a, a), (path_b, b)] = bundles {
        let name = format!("{} + {}", path_a.display(), path_b.display());
        report.push(format!("{name}: same job, two nodes"), same_job(a, b));
        if let [Some(fa), Some(fb)] = [&facts[0], &facts[1]] {
            report.push(format!("{name}: transcript digests agree"), transcripts_agree(fa, fb, &a.node, &b.node));
            if !fa.shards.is_empty() || !fb.shards.is_empty() {
                report.push(format!("{name}: shard transcripts agree"), shards_agree(fa, fb, &a.node, &b.node));
            }
            if fa.ecdh.is_some() || fb.ecdh.is_some() {
                report.push(format!("{name}: ECDH commitments and proofs agree"), ecdh_agree(fa, fb, &a.node, &b.node));
            }
        }
    }
    report
}

fn same_job(a: &Bundle, b: &Bundle) -> Result<String, String> {
    if a.job != b.job {
        return Err(format!("the bundles are of different jobs ('{}' and '{}')", a.job, b.job));
    }
    if a.public_key == b.public_key {
        return Err("both bundles come from the same node key".into());
    }
    Ok(format!("job {} on nodes '{}' and '{}'", a.job, a.node, b.node))
}

fn transcripts_agree(a: &Facts, b: &Facts, na: &str, nb: &str) -> Result<String, String> {
    let (Some((a_sent, a_recv, a_alg)), Some((b_sent, b_recv, b_alg))) = (&a.transcript, &b.transcript) else {
        return Err("a bundle has no transcript entry".into());
    };
    if a_alg != b_alg {
        return Err(format!(
            "the transcript digests cannot be compared: '{na}' recorded {a_alg}, '{nb}' {b_alg} (nodes of different versions)"
        ));
    }
    if a_sent != b_recv {
        return Err(format!(
            "mismatched transcript digests: '{na}' sent {a_sent} but '{nb}' received {b_recv} (frames were altered, dropped or injected, or a log lies)"
        ));
    }
    if b_sent != a_recv {
        return Err(format!(
            "mismatched transcript digests: '{nb}' sent {b_sent} but '{na}' received {a_recv} (frames were altered, dropped or injected, or a log lies)"
        ));
    }
    Ok(format!("{a_alg}: {na}→{nb} {a_sent}, {nb}→{na} {b_sent}"))
}

/// Every shard's worker connection: what one side's worker sent the other's received, and both
/// recorded the same range digest; both logs name the same shards.
fn shards_agree(a: &Facts, b: &Facts, na: &str, nb: &str) -> Result<String, String> {
    if a.shards.keys().ne(b.shards.keys()) {
        return Err(format!(
            "the logs name different shards: '{na}' {:?}, '{nb}' {:?}",
            a.shards.keys().collect::<Vec<_>>(),
            b.shards.keys().collect::<Vec<_>>()
        ));
    }
    for ((i, (a_sent, a_recv, a_range)), (b_sent, b_recv, b_range)) in a.shards.iter().zip(b.shards.values()) {
        if a_sent != b_recv || b_sent != a_recv {
            return Err(format!(
                "shard {i}: mismatched transcript digests between '{na}' and '{nb}' (frames were altered, dropped or injected, or a log lies)"
            ));
        }
        if a_range != b_range {
            return Err(format!("shard {i}: the range digests differ between '{na}' and '{nb}'"));
        }
    }
    Ok(format!("{} shards: each worker connection's digests cross-match", a.shards.len()))
}

fn ecdh_agree(a: &Facts, b: &Facts, na: &str, nb: &str) -> Result<String, String> {
    let (Some(ea), Some(eb)) = (&a.ecdh, &b.ecdh) else {
        return Err("only one bundle has ECDH proofs".into());
    };
    if ea.own_commitment != eb.peer_commitment || eb.own_commitment != ea.peer_commitment {
        return Err("the key commitments differ between the nodes' logs".into());
    }
    if ea.sent != eb.received {
        return Err(format!("the proof '{na}' sent differs from the one '{nb}' received and checked"));
    }
    if eb.sent != ea.received {
        return Err(format!("the proof '{nb}' sent differs from the one '{na}' received and checked"));
    }
    Ok("commitments cross-match; the proved point sets have the same Merkle roots on both sides".into())
}

/// Proofs already checked in this run, by (commitment, root, proof, full): the two bundles of a job
/// carry the same proof (one node sent it, the other received it), which need not be checked twice.
type Verified = std::collections::HashSet<(String, String, String, bool)>;

fn verify_one(
    path: &Path,
    bundle: &Bundle,
    options: &VerifyOptions,
    report: &mut Report,
    verified: &mut Verified,
) -> Option<Facts> {
    let file = path.display().to_string();
    let key = match check_key(bundle, options) {
        Ok((key, detail)) => {
            report.push(format!("{file}: node key"), Ok(detail));
            key
        }
        Err(e) => {
            report.push(format!("{file}: node key"), Err(e));
            return None;
        }
    };
    let root = match check_heads(bundle, &key) {
        Ok(root) => {
            report.push(
                format!("{file}: signed tree heads"),
                Ok(format!(
                    "heads of size {} and {} verify; the log at export extends the log at job end",
                    bundle.job_head.size, bundle.head.size
                )),
            );
            root
        }
        Err(e) => {
            report.push(format!("{file}: signed tree heads"), Err(e));
            return None;
        }
    };
    let facts = match check_entries(bundle, &root) {
        Ok(facts) => {
            report.push(
                format!("{file}: log entries"),
                Ok(format!(
                    "{} entries of job {} are in the signed log (outcome: {})",
                    bundle.entries.len(),
                    bundle.job,
                    facts.outcome.as_deref().unwrap_or("none recorded")
                )),
            );
            facts
        }
        Err(e) => {
            report.push(format!("{file}: log entries"), Err(e));
            return None;
        }
    };
    if facts.ecdh.is_some() || bundle.ecdh.is_some() {
        report.push(format!("{file}: ECDH DLEQ proofs"), check_ecdh(path, bundle, &facts, options.full, verified));
    }
    Some(facts)
}

fn check_key(bundle: &Bundle, options: &VerifyOptions) -> Result<(VerifyingKey, String), String> {
    if bundle.format != FORMAT {
        return Err(format!("unknown bundle format '{}' (expected {FORMAT})", bundle.format));
    }
    let bytes = unhex::<32>(&bundle.public_key).ok_or("the public key is not 64 hex digits")?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "the public key is not a valid ed25519 key".to_string())?;
    if options.trusted_keys.is_empty() {
        return Ok((
            key,
            format!("node '{}' key {} (NOT pinned: pass --key to check who signed)", bundle.node, bundle.public_key),
        ));
    }
    if !options.trusted_keys.contains(&key) {
        return Err(format!(
            "node '{}' signs with key {}, which is not one of the trusted keys",
            bundle.node, bundle.public_key
        ));
    }
    Ok((key, format!("node '{}' key {} is trusted", bundle.node, bundle.public_key)))
}

fn parse_hashes(hexes: &[String], what: &str) -> Result<Vec<Hash>, String> {
    hexes.iter().map(|h| unhex::<32>(h).ok_or_else(|| format!("{what}: '{h}' is not a 32-byte hex hash"))).collect()
}

fn check_heads(bundle: &Bundle, key: &VerifyingKey) -> Result<Hash, String> {
    let job_root = bundle.job_head.verify(key).map_err(|e| format!("job_head: {e}"))?;
    let root = bundle.head.verify(key).map_err(|e| format!("head: {e}"))?;
    let proof = parse_hashes(&bundle.consistency, "consistency")?;
    merkle::verify_consistency(bundle.job_head.size, bundle.head.size, &job_root, &root, &proof).map_err(|e| {
        format!(
            "the log at export (size {}) is not an extension of the log at job end (size {}): {e}",
            bundle.head.size, bundle.job_head.size
        )
    })?;
    Ok(root)
}

fn check_entries(bundle: &Bundle, root: &Hash) -> Result<Facts, String> {
    let mut facts = Facts::default();
    if bundle.entries.is_empty() {
        return Err("the bundle has no log entries".into());
    }
    let mut previous: Option<u64> = None;
    for entry in &bundle.entries {
        let place = format!("entry {}", entry.index);
        let path = parse_hashes(&entry.path, &place)?;
        merkle::verify_inclusion(
            &merkle::leaf_hash(entry.entry.as_bytes()),
            entry.index,
            bundle.head.size,
            &path,
            root,
        )
        .map_err(|e| format!("{place} is not in the signed log: {e}"))?;
        let value: serde_json::Value =
            serde_json::from_str(&entry.entry).map_err(|e| format!("{place}: not a JSON entry: {e}"))?;
        if value.get("seq").and_then(|s| s.as_u64()) != Some(entry.index) {
            return Err(format!("{place}: its seq is not its index"));
        }
        if value.get("job").and_then(|s| s.as_str()) != Some(bundle.job.as_str()) {
            return Err(format!("{place}: it is not an entry of job {}", bundle.job));
        }
        if entry.index >= bundle.job_head.size {
            return Err(format!("{place}: it was logged after the job's tree head"));
        }
        let prev = value.get("prev").and_then(|p| p.as_u64());
        if prev != previous {
            return Err(match prev {
                Some(p) => format!(
                    "{place}: the job's previous entry is {p}, which the bundle does not have in its place (entries were removed or reordered)"
                ),
                None => format!(
                    "{place}: it is the job's first entry but follows others in the bundle (entries were reordered)"
                ),
            });
        }
        previous = Some(entry.index);
        let text = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        match value.get("event").and_then(|e| e.as_str()) {
            Some("transcript") => {
                let alg = value.get("digest").and_then(|v| v.as_str()).unwrap_or("sha256").to_string();
                facts.transcript = Some((text("sent_digest"), text("received_digest"), alg));
            }
            Some("proofs") => {
                let summary = serde_json::from_value(value.get("ecdh").cloned().unwrap_or_default())
                    .map_err(|e| format!("{place}: the proofs entry is malformed: {e}"))?;
                facts.ecdh = Some(summary);
            }
            Some("shard") => {
                let shard = value
                    .get("shard")
                    .and_then(|v| v.as_u64())
                    .ok_or_else(|| format!("{place}: the shard entry has no shard number"))?;
                let entry = (text("sent_digest"), text("received_digest"), text("range_digest"));
                if facts.shards.insert(shard, entry).is_some() {
                    return Err(format!("{place}: shard {shard} is logged twice"));
                }
            }
            Some("end") => facts.outcome = Some("done".into()),
            Some("failure") => facts.outcome = Some(format!("failed: {}", text("reason"))),
            _ => {}
        }
    }
    if previous.map(|p| p + 1) != Some(bundle.job_head.size) {
        return Err(format!(
            "the job's tree head covers {} entries but the bundle's last entry is {}: the job's later entries were left out",
            bundle.job_head.size,
            previous.unwrap_or_default()
        ));
    }
    Ok(facts)
}

fn check_ecdh(
    path: &Path,
    bundle: &Bundle,
    facts: &Facts,
    full: bool,
    verified: &mut Verified,
) -> Result<String, String> {
    let (Some(signed), Some(json)) = (&facts.ecdh, &bundle.ecdh) else {
        return Err("the signed log records ECDH proofs but the bundle does not carry them, or the reverse".into());
    };
    if &json.summary() != signed {
        return Err("the bundle's ECDH records differ from the ones the signed log commits to".into());
    }
    let own = unhex::<32>(&json.own_commitment).ok_or("own_commitment is not 32-byte hex")?;
    let peer = unhex::<32>(&json.peer_commitment).ok_or("peer_commitment is not 32-byte hex")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut details = Vec::new();
    for (which, proof, commitment, prover) in
        [("sent", &json.sent, &own, "this node"), ("received", &json.received, &peer, "the peer")]
    {
        let Some(proof) = proof else { continue };
        let (record, have_points) = record_of(dir, proof, full).map_err(|e| format!("{which} proof: {e}"))?;
        let full_check = full && have_points;
        let key = (hex(commitment), proof.summary.pairs_root.clone(), proof.summary.proof.clone(), full_check);
        // The sample (with its audit paths) is always checked; the costly full check once per proof.
        if verified.contains(&key) {
            ecdh::verify_sample(commitment, &record).and_then(|()| match full_check {
                true if ecdh::pairs_root(&record.c, &record.d) != record.pairs_root => {
                    Err("the points do not hash to the recorded Merkle root of the pairs".into())
                }
                _ => Ok(()),
            })
        } else {
            ecdh::verify_record(commitment, &record, full_check)
        }
        .map_err(|e| format!("the proof {prover} made ({which}) does not verify: {e}"))?;
        verified.insert(key);
        let scope = match full_check {
            true => format!("all {} pairs", record.pairs),
            false => format!("a sample of {} of {} pairs", record.sample.len(), record.pairs),
        };
        details.push(format!("{which}: {prover} used its committed key on {scope}"));
        if full && !have_points {
            return Err(format!("{which} proof: --full needs the points file, which the bundle does not name"));
        }
    }
    Ok(details.join("; "))
}

fn record_of(dir: &Path, json: &ProofJson, full: bool) -> Result<(ProofRecord, bool), String> {
    let s = &json.summary;
    let bytes32 = |h: &str, what: &str| unhex::<32>(h).ok_or_else(|| format!("{what} is not 32-byte hex"));
    let bytes64 = |h: &str, what: &str| unhex::<64>(h).ok_or_else(|| format!("{what} is not 64-byte hex"));
    let sample = json
        .sample
        .iter()
        .map(|p| {
            Ok(SampledPair {
                index: p.index,
                c: bytes32(&p.c, "a sampled point")?,
                d: bytes32(&p.d, "a sampled point")?,
                leaf: unhex_vec(&p.leaf).ok_or("a sampled leaf is not hex")?,
                path: parse_hashes(&p.path, "a sample's audit path")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let (mut c, mut d) = (Vec::new(), Vec::new());
    let mut have_points = false;
    if let (true, Some(name)) = (full, &json.points_file) {
        let file = dir.join(name);
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let n = 32 * s.pairs as usize;
        if bytes.len() != 2 * n {
            return Err(format!("{}: {} bytes, expected 64 × {} pairs", file.display(), bytes.len(), s.pairs));
        }
        d = bytes[n..].to_vec();
        c = bytes;
        c.truncate(n);
        have_points = true;
    }
    let record = ProofRecord {
        pairs: s.pairs,
        pairs_root: bytes32(&s.pairs_root, "pairs_root")?,
        challenge: bytes32(&s.challenge, "challenge")?,
        m: bytes32(&s.m, "m")?,
        z: bytes32(&s.z, "z")?,
        proof: bytes64(&s.proof, "proof")?,
        sample_proof: bytes64(&s.sample_proof, "sample_proof")?,
        sample,
        c,
        d,
    };
    Ok((record, have_points))
}
