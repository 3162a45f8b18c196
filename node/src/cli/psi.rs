//! `consort psi`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use consort_api::JobKind;
use consort_api::proto::SubmitRequest;
use consort_engine::{JoinType, PsiProtocol};
use consort_protocols::Reveal;

use super::status::{ensure_done, status_json, summary, watch_with_progress};
use super::{jobfile, vocab};
use crate::client::NodeClient;
use crate::config;

/// `consort psi`'s flags; serialized (kebab-case, without the node directory and the output
/// format) they are its job file (`super::jobfile`).
#[derive(Args, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PsiArgs {
    #[command(flatten)]
    #[serde(flatten)]
    job: super::multi::PsiJobArgs,
    /// PSI protocol: ecdh (ECDH-PSI) or rr22 (RR22 over silent VOLE, for large sets).
    #[arg(long, default_value = "ecdh", value_parser = vocab::<PsiProtocol>())]
    #[serde(serialize_with = "jobfile::vocab_name")]
    protocol: PsiProtocol,
    /// Who learns the intersection: both, or requester-only (only this node; alias: self).
    #[arg(long, default_value = "both", value_parser = vocab::<Reveal>())]
    #[serde(serialize_with = "jobfile::vocab_name")]
    reveal: Reveal,
    /// This node's output: its own rows of the intersection, in the order both sides share.
    #[arg(long)]
    out: PathBuf,
    /// Payload join (rr22 or ecdh): also receive these columns of the peer's matching rows
    /// (comma-separated; the peer's grant must share each: `dataset add ... --share ME:COL,...`).
    /// The output is this node's rows followed by the peer's values, named PEER.COLUMN, one row
    /// per pair of rows sharing a key (a key on several peer rows gives several output rows).
    /// The peer learns the columns asked for and, with --reveal requester-only, only this node's
    /// set size; this node learns the largest payload's size and the matched rows' values.
    /// With ecdh the join runs a per-job DH-OPRF (no DLEQ proofs; see docs/security.md).
    #[arg(long, value_delimiter = ',', value_name = "COL,...")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peer_columns: Vec<String>,
    /// Join type of both outputs ("left" is this node, "right" the peer; each writes its own):
    /// inner (default): the rows of the intersection, aligned row for row.
    /// left: this node's output has all its rows: the intersection first, then its other rows
    ///   (file order); with --reveal both the peer writes one empty placeholder row per such row,
    ///   so rows still correspond, and learns their count (it knows this node's set size already;
    ///   with rr22 and --dedup the count also tells it how many duplicate rows were dropped).
    /// right: the mirror (the peer's other rows, placeholders here); needs --reveal both.
    /// full: both; needs --reveal both; each side learns the other's unmatched row count.
    /// difference: each learning side writes its rows not in the intersection (file order);
    ///   learns nothing the intersection does not reveal.
    /// left, right and full outputs start with a column _side (both, left or right: where the
    /// row comes from). Payload joins (--peer-columns) run inner or left (empty peer columns).
    #[arg(long, default_value = "inner", value_parser = parse_join, verbatim_doc_comment)]
    #[serde(skip_serializing_if = "JoinType::is_inner")]
    join: JoinType,
    /// Columns of both outputs: rows (default: every column) or keys (only the key columns, in
    /// the file's column order: for rows too large to copy). Both sides write the same choice.
    /// Outputs are in the input's format: CSV for a CSV dataset, Parquet for a Parquet one.
    #[arg(long, default_value = "rows", value_parser = parse_output)]
    #[serde(skip_serializing_if = "consort_engine::OutputColumns::is_rows")]
    output: consort_engine::OutputColumns,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    #[serde(skip)]
    json: bool,
    /// Also write this job as a job file (TOML) for `consort run`, then run it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    save_job: Option<PathBuf>,
    /// Several peers in one job (repeat --peer; --peer-dataset PEER:DATASET and --peer-columns
    /// PEER:COL,... for each): one RR22 payload join per peer (requester-only: each peer learns
    /// only this node's set size, as in a two-party job), run concurrently, merged into one
    /// table of this node's rows in file order with each peer's columns named PEER.COLUMN.
    /// left: every row, empty fields where a peer has no match; inner: only rows every peer
    /// matched. A key on m_p rows of peer p gives the product of the m_p (left: of max(1, m_p))
    /// output rows. Any peer failing or refusing fails the job: no table is written.
    #[arg(long, value_name = "JOIN", value_parser = super::multi::join_parser())]
    #[serde(skip_serializing_if = "Option::is_none")]
    multi: Option<consort_engine::multi_join::MultiJoin>,
    /// Resume the interrupted streaming rr22 job JOB (a node killed or a connection lost; see
    /// `consort jobs`): run again with the same peer, datasets and flags and --resume JOB. Both
    /// nodes check they hold JOB's state for the same session and datasets (an input changed
    /// since is refused) and go on from the first bucket range not finished on both; the output
    /// is the one JOB would have written. The new job's audit record names JOB. Interrupted
    /// state is kept 7 days (`consort discard DIR JOB` removes it sooner).
    #[arg(long, value_name = "JOB")]
    #[serde(skip)]
    resume: Option<String>,
    /// Run the job as N worker pairs (rr22, inner join, whole rows; 1 to 64): the bucket space is
    /// split into N contiguous ranges, each node starts N `consort worker` processes, worker i of
    /// this node pairs with worker i of the peer, and the nodes merge the segments in shard order.
    /// Both nodes check N. A failed shard fails the job; --resume JOB runs the rest.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    shards: Option<u32>,
}

pub async fn psi(mut args: PsiArgs) -> Result<()> {
    args.out = config::absolute(&args.out)?;
    if let Some(join) = args.multi {
        if !args.join.is_inner() {
            return Err(super::exit::Exit::Usage.wrap(anyhow::anyhow!(
                "--join does not combine with --multi: --multi left|inner is the several-peer join"
            )));
        }
        // Several peers: every pairwise job is an RR22 payload join revealed to this node only.
        (args.protocol, args.reveal) = (PsiProtocol::Rr22, Reveal::RequesterOnly);
        let spec = super::multi::spec(&args.job, &args.peer_columns, join, args.out.clone())?;
        jobfile::save_if_asked(args.save_job.as_deref(), JobKind::Psi, &args)?;
        return super::multi::run(&args.job, spec, args.json).await;
    }
    let (peer, peer_dataset) = args.job.single()?;
    jobfile::save_if_asked(args.save_job.as_deref(), JobKind::Psi, &args)?;
    let out = &args.out;
    let j = &args.job;
    let client = NodeClient::connect(&j.dir).await?;
    let mut request = SubmitRequest::psi(peer, &j.dataset, peer_dataset, args.protocol, args.reveal, out);
    if !args.peer_columns.is_empty()
        || !args.join.is_inner()
        || !args.output.is_rows()
        || args.resume.is_some()
        || args.shards.is_some()
    {
        request.params = serde_json::to_string(&crate::job::psi::PsiParams {
            peer_columns: args.peer_columns.clone(),
            join: args.join,
            output: args.output,
            resume: args.resume.clone(),
            shards: args.shards,
            ..Default::default()
        })?;
    }
    let job_id = client.submit(request).await?;
    let status = watch_with_progress(&client, &job_id, args.json).await?;
    if args.json {
        println!("{}", status_json(&status));
    } else {
        println!("{}", summary(&status));
    }
    ensure_done(&status)
}

/// `--output`'s values.
pub fn parse_output(s: &str) -> Result<consort_engine::OutputColumns, String> {
    s.parse()
}

/// `--join`'s values.
pub fn parse_join(s: &str) -> Result<JoinType, String> {
    JoinType::parse(s).ok_or_else(|| "expected one of inner, left, right, full, difference".to_string())
}
