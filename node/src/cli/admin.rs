//! `consort grant`, `consort approve` / `deny`: the data owner's policy over its datasets and its
//! decisions on jobs that wait for it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use consort_api::JobKind;
use consort_engine::PsiProtocol;
use consort_protocols::Reveal;

use super::{print_json, status};
use crate::client::NodeClient;
use crate::config::{self, Grant, NodeConfig};
use crate::setup;
use serde_json::json;

#[derive(Subcommand)]
pub enum GrantCommand {
    /// Allow a peer jobs on a dataset, with the policy that bounds them (replaces its grant).
    Set(GrantArgs),
    /// Withdraw a peer's grant on a dataset (jobs already running finish; new ones are refused).
    Revoke {
        dir: PathBuf,
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        peer: String,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every grant with its policy.
    List {
        dir: PathBuf,
        /// Print a JSON array (one object per grant: its dataset and its policy as config.toml
        /// holds it) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct GrantArgs {
    dir: PathBuf,
    #[arg(long)]
    dataset: String,
    #[arg(long)]
    peer: String,
    /// Job kinds allowed (comma-separated).
    #[arg(long, value_delimiter = ',', required = true, value_parser = super::vocab::<JobKind>())]
    jobs: Vec<JobKind>,
    /// PSI protocols allowed, for PSI jobs and the alignment of train and score jobs (default: all).
    #[arg(long, value_delimiter = ',', value_parser = super::vocab::<PsiProtocol>())]
    protocols: Vec<PsiProtocol>,
    /// Reveal modes allowed for PSI jobs (default: all).
    #[arg(long, value_delimiter = ',', value_parser = super::vocab::<Reveal>())]
    reveal: Vec<Reveal>,
    /// Largest set the peer may bring to a job (default 2000000000).
    #[arg(long)]
    max_peer_rows: Option<u64>,
    /// Fewest aligned rows a job may use (refuses `--reveal requester-only` PSI, which this node
    /// could not check).
    #[arg(long, default_value_t = 0)]
    min_aligned_rows: u64,
    /// A dealer node train jobs may use (pinned; never the peer or this node). Repeatable.
    /// Without one, training is dealer-free only.
    #[arg(long = "dealer")]
    dealers: Vec<String>,
    /// Jobs of this peer on this dataset in any 24 hours (default: no budget).
    #[arg(long)]
    jobs_per_day: Option<u32>,
    /// Train jobs (models) this peer may run on this dataset, ever (default 1): each model scored
    /// gives the label holder one more linear combination of this dataset's features per row.
    #[arg(long)]
    models: Option<u32>,
    /// Unbalanced PSI: query items this peer may check against this dataset in psi-query jobs,
    /// in all (default: only the setup's budget). Each item is one membership test of the list.
    #[arg(long)]
    queries: Option<u64>,
    /// SecureBoost: split nodes one train job may ask for, counted as trees × (2^max-depth − 1)
    /// (e.g. 100 trees of depth 5: 3100). Each split on this dataset's features shows the label
    /// holder how a threshold divides that node's rows (default: no bound but the protocol's).
    #[arg(long)]
    max_split_nodes: Option<u64>,
    /// When the grant ends: YYYY-MM-DD (midnight UTC) or RFC 3339.
    #[arg(long)]
    expires: Option<String>,
    /// Each job waits for `consort approve` / `consort deny` by this node's operator.
    #[arg(long)]
    approval: bool,
    /// Print a JSON object (the dataset and the grant as stored) instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn grant(cmd: GrantCommand) -> Result<()> {
    match cmd {
        GrantCommand::Set(a) => {
            for kind in &a.jobs {
                if !config::GRANTABLE.contains(kind) {
                    bail!("job kind '{kind}' uses no dataset and cannot be granted on one");
                }
            }
            if let Some(e) = &a.expires {
                config::parse_date(e)?;
            }
            let grant = Grant {
                protocols: a.protocols,
                reveal: a.reveal,
                max_peer_rows: a.max_peer_rows,
                min_aligned_rows: a.min_aligned_rows,
                dealers: a.dealers,
                jobs_per_day: a.jobs_per_day,
                models: a.models,
                queries: a.queries,
                max_split_nodes: a.max_split_nodes,
                expires: a.expires,
                approval: a.approval,
                ..Grant::new(&a.peer, a.jobs)
            };
            let line = grant.describe();
            setup::grant_set(&a.dir, &a.dataset, grant.clone())?;
            let reloaded = setup::notify_node(&a.dir).await?;
            if a.json {
                return print_json(&json!({"dataset": a.dataset, "grant": grant, "reloaded": reloaded}));
            }
            println!("dataset '{}': {line}{}", a.dataset, reloaded_note(reloaded));
        }
        GrantCommand::Revoke { dir, dataset, peer, json } => {
            setup::grant_revoke(&dir, &dataset, &peer)?;
            let reloaded = setup::notify_node(&dir).await?;
            if json {
                return print_json(&json!({"dataset": dataset, "peer": peer, "revoked": true, "reloaded": reloaded}));
            }
            println!("revoked the grant for '{peer}' on dataset '{dataset}'{}", reloaded_note(reloaded));
        }
        GrantCommand::List { dir, json } => {
            let datasets = NodeConfig::load(&dir)?.datasets;
            let grants = datasets.iter().flat_map(|d| d.grants.iter().map(move |g| (&d.spec.name, g)));
            if json {
                let list: Vec<_> = grants.map(|(dataset, grant)| json!({"dataset": dataset, "grant": grant})).collect();
                return print_json(&list);
            }
            for (dataset, g) in grants {
                println!("{dataset}\t{}", g.describe());
            }
        }
    }
    Ok(())
}

pub fn reloaded_note(reloaded: bool) -> &'static str {
    if reloaded { " (running node reloaded)" } else { "" }
}

/// `consort approve` / `consort deny`: prints the job's record after the decision (its JSON
/// object with `json`).
pub async fn decide(dir: PathBuf, job: String, approve: bool, reason: Option<String>, json: bool) -> Result<()> {
    let client = NodeClient::connect(&dir).await?;
    let before = client.job(&job).await?;
    if !approve || before.job_state() == consort_api::JobState::AwaitingApproval {
        // Show the operator what is being decided.
        eprintln!("request: {}", if before.request.is_empty() { "(not recorded)" } else { &before.request });
    }
    let after = client.decide(&job, approve, reason.as_deref().unwrap_or_default()).await?;
    if json {
        return print_json(&status::status_json(&after));
    }
    println!("{}", status::job_line(&after));
    Ok(())
}
