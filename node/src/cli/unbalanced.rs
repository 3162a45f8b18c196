//! `consort psi-setup`, `consort psi-fetch`, `consort psi-query`: unbalanced PSI (repeated checks
//! of small query sets against a large list; `crate::job::unbalanced`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use consort_api::JobKind;
use consort_api::proto::SubmitRequest;
use consort_engine::Dataset;
use consort_engine::unbalanced as files;
use serde_json::json;

use super::status::{ensure_done, status_json, summary, watch_with_progress};
use crate::at_rest::NodeStorage;
use crate::client::NodeClient;
use crate::config::{self, NodeConfig};
use crate::identity::hex;
use crate::job::unbalanced::{key_path, set_path};

/// Default query budget of a setup: the most query items answered under one key.
pub const DEFAULT_QUERY_BUDGET: u64 = 1_000_000_000;

#[derive(Args, Debug)]
pub struct PsiSetupArgs {
    /// The list owner's node directory (the node may be running: the new setup applies to the
    /// next job).
    dir: PathBuf,
    /// The list: a registered dataset of this node (its distinct keys are evaluated).
    #[arg(long)]
    dataset: String,
    /// Label columns: queriers receive these columns' values for the ids they match (each must be
    /// shared with the querier: `dataset add ... --share PEER:COL,...`). Padded to the largest.
    #[arg(long, value_delimiter = ',', value_name = "COL,...")]
    columns: Vec<String>,
    /// Query items answered under this setup, all peers together; sets the tag length so that
    /// the chance of any false positive over the whole budget is at most 2^-40.
    #[arg(long, default_value_t = DEFAULT_QUERY_BUDGET)]
    query_budget: u64,
    /// Replace an existing setup with a fresh key: fetched copies and the old setup id stop
    /// working (queriers must fetch again).
    #[arg(long)]
    rotate: bool,
    /// Print a JSON line instead of text.
    #[arg(long)]
    json: bool,
}

/// `consort psi-setup`: evaluates the OPRF on the list once, seals key and set under the node's
/// storage key.
pub async fn setup(a: PsiSetupArgs) -> Result<()> {
    let dir = config::absolute(&a.dir)?;
    let (dataset, columns) = (a.dataset.clone(), a.columns.clone());
    let report =
        tokio::task::spawn_blocking(move || run_setup(&dir, &dataset, &columns, a.query_budget, a.rotate)).await??;
    if a.json {
        println!("{}", report.json());
    } else {
        let p = &report.params;
        println!(
            "dataset '{}': unbalanced PSI setup {} — {} items, {}-byte tags{}, {} bytes to fetch, budget {} query items ({:.1} s)",
            a.dataset,
            hex(&p.id()[..8]),
            p.items,
            p.tag_bytes,
            if p.label_width > 0 { format!(", labels of {} bytes", p.label_width) } else { String::new() },
            report.set_bytes,
            p.query_budget,
            report.seconds
        );
    }
    Ok(())
}

/// What a setup made, and how long it took.
#[derive(Debug)]
pub struct SetupReport {
    pub dataset: String,
    pub params: consort_protocols::psi::unbalanced::SetupParams,
    pub set_bytes: u64,
    pub load_seconds: f64,
    pub evaluate_seconds: f64,
    pub seconds: f64,
}

impl SetupReport {
    pub fn json(&self) -> serde_json::Value {
        let p = &self.params;
        json!({
            "dataset": self.dataset,
            "setup_id": hex(&p.id()),
            "items": p.items,
            "tag_bytes": p.tag_bytes,
            "label_width": p.label_width,
            "record_bytes": p.record_bytes(),
            "set_bytes": self.set_bytes,
            "query_budget": p.query_budget,
            "load_seconds": self.load_seconds,
            "evaluate_seconds": self.evaluate_seconds,
            "seconds": self.seconds,
        })
    }
}

/// The setup of `dataset` in the node directory `dir` (blocking; CPU work on rayon): loads the
/// list, evaluates it under a fresh key and replaces the setup files (the set first, then the key).
/// Refuses to replace an existing setup unless `rotate`.
pub fn run_setup(
    dir: &Path,
    dataset: &str,
    columns: &[String],
    query_budget: u64,
    rotate: bool,
) -> Result<SetupReport> {
    let cfg = NodeConfig::load(dir)?;
    let entry = cfg
        .datasets
        .iter()
        .find(|d| d.spec.name == dataset)
        .with_context(|| format!("unknown dataset '{dataset}' (register it with `consort dataset add`)"))?;
    let params = json!({ "peer_columns": columns }).to_string();
    crate::job::psi::parse_params(&params).map_err(|e| anyhow::anyhow!(e.replace("peer column", "label column")))?;
    let (key_file, set_file) = (key_path(dir, dataset), set_path(dir, dataset));
    if key_file.exists() && !rotate {
        bail!(
            "dataset '{dataset}' already has an unbalanced PSI setup; pass --rotate to replace it with a fresh key (fetched copies stop working)"
        );
    }
    let storage = NodeStorage::open(dir, &cfg)?;
    let started = Instant::now();
    let list = Dataset::load(&entry.spec)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let t = Instant::now();
    let (setup, set) = files::evaluate(&list, columns, query_budget)?;
    let evaluate_seconds = t.elapsed().as_secs_f64();
    drop(list);
    std::fs::create_dir_all(set_file.parent().expect("a parent"))
        .with_context(|| format!("cannot create {}", set_file.parent().expect("a parent").display()))?;
    // The set first: until the key file is replaced, queries run under the old setup, and a fetch
    // in between sees a key that does not match the set and is told to retry.
    files::write_set(&set_file, &set, &setup.columns, &storage.key)?;
    files::write_key(&key_file, &setup, &storage.key)?;
    Ok(SetupReport {
        dataset: dataset.to_string(),
        params: setup.params,
        set_bytes: set.records.len() as u64,
        load_seconds,
        evaluate_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[derive(Args, Debug)]
pub struct PsiFetchArgs {
    /// The querier's node directory (the node must be running).
    dir: PathBuf,
    /// The list owner (pinned peer).
    #[arg(long)]
    peer: String,
    /// The owner's list (its grant for this node must include psi-fetch).
    #[arg(long)]
    peer_dataset: String,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

/// `consort psi-fetch`: downloads the owner's evaluated list once (kept sealed on this node).
pub async fn fetch(a: PsiFetchArgs) -> Result<()> {
    let request = SubmitRequest {
        kind: JobKind::PsiFetch as i32,
        peer: a.peer,
        peer_dataset: a.peer_dataset,
        ..Default::default()
    };
    submit(&a.dir, request, a.json).await
}

#[derive(Args, Debug)]
pub struct PsiQueryArgs {
    /// The querier's node directory (the node must be running).
    dir: PathBuf,
    /// The list owner (pinned peer).
    #[arg(long)]
    peer: String,
    /// This node's query set (its grant for the peer must include psi-query).
    #[arg(long)]
    dataset: String,
    /// The owner's list, fetched before with `consort psi-fetch`.
    #[arg(long)]
    peer_dataset: String,
    /// This node's output: its rows whose key is in the list, in file order, followed by the
    /// setup's label columns named PEER.COLUMN. The owner learns the number of query items only.
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

/// `consort psi-query`: checks this node's query set against the fetched list.
pub async fn query(a: PsiQueryArgs) -> Result<()> {
    let request = SubmitRequest {
        kind: JobKind::PsiQuery as i32,
        peer: a.peer,
        dataset: a.dataset,
        peer_dataset: a.peer_dataset,
        out: config::absolute(&a.out)?.display().to_string(),
        ..Default::default()
    };
    submit(&a.dir, request, a.json).await
}

async fn submit(dir: &std::path::Path, request: SubmitRequest, json: bool) -> Result<()> {
    let client = NodeClient::connect(dir).await?;
    let job_id = client.submit(request).await?;
    let status = watch_with_progress(&client, &job_id, json).await?;
    if json {
        println!("{}", status_json(&status));
    } else {
        println!("{}", summary(&status));
    }
    ensure_done(&status)
}
