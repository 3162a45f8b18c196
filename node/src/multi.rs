//! Several peers in one PSI payload job (`consort psi --peer p1 --peer p2 --multi left|inner`):
//! the requester's rows joined with each peer's columns, as one table.
//!
//! Flow (on the requester, through its running node's control socket):
//!
//! 1. load this node's dataset (the merge needs its rows; a change of the file after this is
//!    caught when the table is written);
//! 2. submit one ordinary `psi` job per peer — RR22 payload join, `--reveal requester-only`,
//!    with the requester-only `row_index` option (`crate::job::psi::PsiParams`), output to a
//!    temporary file under `DIR/outputs/` — so each goes through the one job envelope (grant,
//!    policy, limits, audit evidence) and runs concurrently with the others (the node's job
//!    slots permitting);
//! 3. follow every pairwise job to its end, reporting each one's stage;
//! 4. if every one is done, merge their outputs by row index into one table
//!    (`consort_engine::multi_join`: product rule, left or inner), written atomically and
//!    sealed like any output; in every case remove the pairwise outputs.
//!
//! One pairwise job failing or refused fails the whole job: the others run to their end (a job
//! cannot be cancelled from the control API), then every pairwise output is removed and no
//! table is written; the error names the peer.
//!
//! What each peer learns is exactly what it learns in a two-party requester-only payload join
//! (the requester's set size and the columns asked for); the `row_index` option never leaves
//! this node. See docs/security.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use consort_api::JobState;
use consort_api::proto::{JobStatus, SubmitRequest};
use consort_engine::multi_join::{self, MergeReport, MultiJoin, Part};
use consort_engine::storage::AtRest;
use consort_engine::{Dataset, PsiProtocol};
use consort_protocols::Reveal;

use crate::client::NodeClient;
use crate::config::{self, NodeConfig};

/// One peer of a several-peer join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiPeer {
    /// The pinned peer's name (also the prefix of its columns in the table).
    pub peer: String,
    /// The peer's dataset.
    pub peer_dataset: String,
    /// The peer's columns to join (its grant must share each with this node).
    pub columns: Vec<String>,
}

/// A several-peer join, as the operator asked for it.
#[derive(Debug, Clone)]
pub struct MultiSpec {
    /// This node's dataset.
    pub dataset: String,
    pub peers: Vec<MultiPeer>,
    pub join: MultiJoin,
    /// The merged table (absolute).
    pub out: PathBuf,
}

impl MultiSpec {
    /// Checks what can be checked before anything runs: peers named once, each with columns.
    pub fn validate(&self) -> Result<()> {
        if self.peers.is_empty() {
            bail!("a several-peer join needs at least one --peer");
        }
        for (i, p) in self.peers.iter().enumerate() {
            if self.peers[..i].iter().any(|q| q.peer == p.peer) {
                bail!("peer '{}' is named twice", p.peer);
            }
            if p.columns.is_empty() {
                bail!("peer '{}' has no --peer-columns (give {}:COLUMN,...)", p.peer, p.peer);
            }
            if p.peer_dataset.is_empty() {
                bail!("peer '{}' has no --peer-dataset (give {}:DATASET)", p.peer, p.peer);
            }
        }
        if !self.out.is_absolute() {
            bail!("the output path must be absolute");
        }
        Ok(())
    }
}

/// One pairwise job as it ended.
#[derive(Debug, Clone)]
pub struct Child {
    pub peer: String,
    pub status: JobStatus,
}

/// A finished several-peer join.
#[derive(Debug)]
pub struct MultiOutcome {
    pub children: Vec<Child>,
    pub merge: MergeReport,
    /// This node's dataset rows.
    pub local_rows: u64,
    /// Wall seconds: the whole job and the merge.
    pub seconds: f64,
    pub merge_seconds: f64,
}

/// A several-peer join that failed: why (naming the peer), and the pairwise jobs as they ended
/// (for the operator's status).
#[derive(Debug)]
pub struct MultiFailure {
    pub error: anyhow::Error,
    pub children: Vec<Child>,
    /// The first failed pairwise job, if the failure is one.
    pub failed: Option<Child>,
}

/// The request of one pairwise job.
fn pairwise_request(spec: &MultiSpec, peer: &MultiPeer, out: &Path) -> SubmitRequest {
    let mut request = SubmitRequest::psi(
        &peer.peer,
        &spec.dataset,
        &peer.peer_dataset,
        PsiProtocol::Rr22,
        Reveal::RequesterOnly,
        out,
    );
    // `..Default::default()`: an option added to `PsiParams` later keeps its default here.
    #[allow(clippy::needless_update)]
    let params =
        crate::job::psi::PsiParams { peer_columns: peer.columns.clone(), row_index: true, ..Default::default() };
    request.params = serde_json::to_string(&params).expect("serializable");
    request
}

/// Runs a several-peer join through the node in `dir` (see the module docs); `on_update` sees
/// every status update of every pairwise job, with its peer.
pub async fn run(
    dir: &Path,
    spec: &MultiSpec,
    on_update: &(dyn Fn(&str, &JobStatus) + Send + Sync),
) -> Result<MultiOutcome, MultiFailure> {
    let fail = |error: anyhow::Error| MultiFailure { error, children: Vec::new(), failed: None };
    spec.validate().map_err(fail)?;
    let started = Instant::now();
    // The pairwise jobs' outputs are named to the node by absolute paths.
    let dir = &config::absolute(dir).map_err(fail)?;
    let config = NodeConfig::load(dir).map_err(fail)?;
    let mut dataset_spec = config.dataset(&spec.dataset).map_err(fail)?.spec.clone();
    if dataset_spec.file.is_relative() {
        dataset_spec.file = dir.join(&dataset_spec.file);
    }
    let key = crate::at_rest::load_key(dir).map_err(fail)?;
    let at_rest = if config.storage.encrypt_outputs { AtRest::Sealed(key.into()) } else { AtRest::Plain };
    let client = NodeClient::connect(dir).await.map_err(|e| fail(e.into()))?;
    let dataset = tokio::task::spawn_blocking(move || Dataset::load(&dataset_spec))
        .await
        .map_err(|e| fail(anyhow!("the dataset task failed: {e}")))?
        .with_context(|| format!("dataset '{}'", spec.dataset))
        .map_err(fail)?;
    let outputs = dir.join(config::OUTPUTS_DIR);
    std::fs::create_dir_all(&outputs).with_context(|| format!("cannot create {}", outputs.display())).map_err(fail)?;
    let tag = crate::table::new_job_id();
    let parts: Vec<Part> = spec
        .peers
        .iter()
        .map(|p| Part {
            peer: p.peer.clone(),
            columns: p.columns.clone(),
            file: outputs.join(format!(".multi-{tag}-{}.csv", sanitized(&p.peer))),
        })
        .collect();
    let remove_parts = || {
        for p in &parts {
            if let Err(e) = std::fs::remove_file(&p.file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove the pairwise output {}: {e}", p.file.display());
            }
        }
    };

    // Submit every pairwise job; a refusal by this node (its own grant, an unknown peer) stops
    // the submissions, and the jobs already submitted still run to their end.
    let mut submitted = Vec::new();
    let mut refused = None;
    for (peer, part) in spec.peers.iter().zip(&parts) {
        match client.submit(pairwise_request(spec, peer, &part.file)).await {
            Ok(id) => submitted.push((peer.peer.clone(), id)),
            Err(e) => {
                refused = Some(
                    anyhow::Error::new(e).context(format!("peer '{}': the pairwise job was not started", peer.peer)),
                );
                break;
            }
        }
    }
    let watches = submitted.iter().map(|(peer, id)| {
        let client = &client;
        async move {
            let status = client.watch(id, |s| on_update(peer, s)).await;
            (peer.clone(), id.clone(), status)
        }
    });
    let ended = futures::future::join_all(watches).await;
    let mut children = Vec::new();
    let mut failed = None;
    let mut lost = None;
    for (peer, id, status) in ended {
        match status {
            Ok(status) => {
                if status.job_state() != JobState::Done && failed.is_none() {
                    failed = Some(Child { peer: peer.clone(), status: status.clone() });
                }
                children.push(Child { peer, status });
            }
            Err(e) => {
                lost.get_or_insert_with(|| {
                    anyhow::Error::new(e).context(format!("peer '{peer}': cannot follow job {id}"))
                });
            }
        }
    }
    if let Some(error) = refused.or(lost) {
        remove_parts();
        return Err(MultiFailure { error, children, failed });
    }
    if let Some(f) = failed {
        remove_parts();
        let error = anyhow!(
            "peer '{}': pairwise job {} {}: {} (no table written; the other pairwise outputs were removed)",
            f.peer,
            f.status.job_id,
            f.status.job_state(),
            f.status.error
        );
        return Err(MultiFailure { error, children, failed: Some(f) });
    }

    let merge_started = Instant::now();
    let (join, out) = (spec.join, spec.out.clone());
    let local_rows = dataset.len() as u64;
    let merge_parts = parts.clone();
    let merged = tokio::task::spawn_blocking(move || multi_join::merge(&dataset, &merge_parts, join, &out, &at_rest))
        .await
        .map_err(|e| anyhow!("the merge task failed: {e}"))
        .and_then(|r| r.map_err(anyhow::Error::new));
    remove_parts();
    let merge = merged.context("cannot write the merged table").map_err(|error| MultiFailure {
        error,
        children: children.clone(),
        failed: None,
    })?;
    Ok(MultiOutcome {
        children,
        merge,
        local_rows,
        seconds: started.elapsed().as_secs_f64(),
        merge_seconds: merge_started.elapsed().as_secs_f64(),
    })
}

/// A peer name as part of a file name.
fn sanitized(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
