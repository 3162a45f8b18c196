//! `consort bin`: secure binning, WOE/IV and feature selection with a peer (a `bin` job; this node
//! holds the labels). Prints the IV summary table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use consort_api::proto::JobStatus;
use consort_api::{JobKind, JobState};
use consort_engine::PsiProtocol;
use consort_engine::binning::{BinParamsWire, Method};

use super::status::{ensure_done, watch_with_progress};
use super::{JobArgs, jobfile};
use crate::client::NodeClient;
use crate::config;
use crate::job::bin::BinRequest;

/// How bins are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodArg {
    /// Quantile edges of each party's own values.
    Quantile,
    /// Fine quantile bins merged by ChiMerge on the event counts (supervised).
    Tree,
}

/// Serialized (kebab-case, without the node directory and the output format): its job file.
#[derive(Args, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BinArgs {
    /// This node holds the labels (party A); the peer's features are binned for it.
    #[command(flatten)]
    #[serde(flatten)]
    pub job: JobArgs,
    /// Label column (0/1).
    #[arg(long)]
    pub label: String,
    /// Feature columns, comma-separated (default: every column but keys and label).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Value bins per feature (1..=128); missing values get a bin of their own on top.
    #[arg(long, default_value_t = 10)]
    pub bins: u32,
    /// quantile, or tree (fine bins merged by ChiMerge; the peer learns the merges).
    #[arg(long, value_enum, default_value_t = MethodArg::Quantile)]
    pub method: MethodArg,
    /// tree: value bins of the first, fine pass (bins..=128).
    #[arg(long, default_value_t = 32)]
    pub fine_bins: u32,
    /// Drop features whose information value is below this.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_iv: Option<f64>,
    /// Drop a feature whose correlation with a kept feature of the same party (and higher IV)
    /// exceeds this in absolute value (0..=1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_corr: Option<f64>,
    /// Bits of this node's Okamoto–Uchiyama key: 3072 (≈ 128-bit security) or 2048 (≈ 112-bit, faster).
    #[arg(long, default_value_t = 3072)]
    pub key_bits: u32,
    /// PSI protocol aligning the rows (ecdh, rr22).
    #[arg(long, default_value = "ecdh", value_parser = super::vocab::<PsiProtocol>())]
    #[serde(serialize_with = "jobfile::vocab_name")]
    pub protocol: PsiProtocol,
    /// Where to write this node's bins file (JSON: bins, counts, WOE, IV, selection).
    #[arg(long)]
    pub out: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
    /// Also write this job as a job file (TOML) for `consort run`, then run it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub save_job: Option<PathBuf>,
}

impl BinArgs {
    pub fn params(&self) -> BinParamsWire {
        BinParamsWire {
            method: match self.method {
                MethodArg::Quantile => Method::Quantile,
                MethodArg::Tree => Method::Tree,
            },
            bins: self.bins,
            fine_bins: self.fine_bins,
            min_iv: self.min_iv,
            max_corr: self.max_corr,
            key_bits: self.key_bits,
        }
    }
}

pub async fn bin(mut args: BinArgs) -> Result<()> {
    args.out = config::absolute(&args.out)?;
    let params = args.params();
    params.config()?;
    jobfile::save_if_asked(args.save_job.as_deref(), JobKind::Bin, &args)?;
    let request = BinRequest { label: args.label.clone(), features: args.features.clone(), params };
    let j = &args.job;
    let submit = super::lr::submit_request(
        JobKind::Bin,
        (&j.peer, &j.dataset, &j.peer_dataset),
        args.protocol,
        &request,
        &args.out,
    )?;
    let client = NodeClient::connect(&j.dir).await?;
    let job_id = client.submit(submit).await?;
    let status = watch_with_progress(&client, &job_id, args.json).await?;
    if args.json {
        println!("{}", super::lr::status_json(&status));
    } else {
        println!("{}", summary(&status));
    }
    ensure_done(&status)
}

/// The job's summary and the IV table (by descending IV).
pub fn summary(s: &JobStatus) -> String {
    if s.job_state() != JobState::Done {
        return format!("bin job {} {} after {:.1} s: {}", s.job_id, s.job_state(), s.seconds, s.error);
    }
    let r: serde_json::Value = serde_json::from_str(&s.summary).unwrap_or_default();
    let mut lines = vec![format!("bin job {} done in {:.2} s with peer '{}'", s.job_id, s.seconds, s.peer)];
    lines.push(format!("  rows: {} here, {} at the peer, {} aligned", s.local_rows, s.peer_rows, s.intersection));
    lines.push(format!(
        "  features: {} here, {} at the peer (peer:K = the peer's feature K); method {}; {} selected",
        r["features"],
        r["peer_features"],
        r["method"].as_str().unwrap_or("?"),
        r["selected"]
    ));
    if let Some(iv) = r["iv"].as_array() {
        let width = iv.iter().filter_map(|l| l["feature"].as_str()).map(str::len).max().unwrap_or(7).max(7);
        lines.push(format!(
            "  {:<width$}  {:<5}  {:>4}  {:>8}  {:<8}  reason",
            "feature", "owner", "bins", "IV", "selected"
        ));
        for l in iv {
            lines.push(format!(
                "  {:<width$}  {:<5}  {:>4}  {:>8.4}  {:<8}  {}",
                l["feature"].as_str().unwrap_or("?"),
                l["owner"].as_str().unwrap_or("?"),
                l["bins"],
                l["iv"].as_f64().unwrap_or(f64::NAN),
                if l["selected"] == true { "yes" } else { "no" },
                l["reason"].as_str().unwrap_or("")
            ));
        }
    }
    lines.push(format!("  bins file: {}", s.output));
    if !s.peer_output.is_empty() {
        lines.push(format!("  the peer's bins file: {} (under its node directory)", s.peer_output));
    }
    lines.push(format!(
        "  sent {:.1} MB, received {:.1} MB on the wire",
        s.wire_bytes_sent as f64 / 1e6,
        s.wire_bytes_received as f64 / 1e6
    ));
    let stages: Vec<String> = s.stages.iter().map(|st| format!("{} {:.2}s", st.name, st.seconds)).collect();
    if !stages.is_empty() {
        lines.push(format!("  stages: {}", stages.join(", ")));
    }
    lines.join("\n")
}
