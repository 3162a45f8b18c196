//! `consort report`: the model evaluation report of a scored file (`consort_engine::report`):
//! AUC, KS, Gini, lift and gain by decile, bad rate by score band and, with `--baseline`, PSI
//! against the training population; one self-contained HTML page and, with `--json-out FILE`, the
//! same figures as JSON (`--json` prints them on stdout). Local and plaintext: no node needs to run and no peer is involved.
//!
//! The labels are a column of the scored file (join them to the scores beforehand, e.g. the
//! label column of the dataset that was scored, by key). Sealed files (`consort score` output
//! under `[storage] encrypt_outputs`) open with `--dir`, the node directory holding the storage
//! key. Bad input (a score that is not a number, a label not 0/1, a missing column, one class
//! only) exits with 6, naming file, line and column but no value, and writes nothing.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use consort_engine::report::{self, Inputs};
use consort_engine::sealed;

use super::exit::Exit;
use crate::at_rest;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The scored file (CSV with a header): a score column and the label column.
    #[arg(long, value_name = "SCORED.csv")]
    scores: PathBuf,
    /// The label column of the scored file (1 = bad/event, 0 = good).
    #[arg(long)]
    label: String,
    /// The score column (higher = more likely bad) [default: `probability` if the file has it, else `score`].
    #[arg(long)]
    score_column: Option<String>,
    /// A scorecard's points column: bad rate is then given by points band instead of score band.
    #[arg(long)]
    points_column: Option<String>,
    /// Width of a points band (bands aligned on its multiples).
    #[arg(long, default_value_t = report::DEFAULT_POINTS_BAND_WIDTH, requires = "points_column")]
    band_width: f64,
    /// The training population scored by the same model (same score column), for PSI.
    #[arg(long, value_name = "TRAIN_SCORED.csv")]
    baseline: Option<PathBuf>,
    /// A node directory whose storage key opens sealed input files (the node need not run).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The HTML report to write (replaced atomically).
    #[arg(long, value_name = "REPORT.html")]
    out: PathBuf,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "REPORT.json")]
    json_out: Option<PathBuf>,
    /// Print the figures as one JSON object on stdout instead of the summary line.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ReportArgs) -> Result<()> {
    tokio::task::spawn_blocking(move || report(&args)).await.context("the report task failed")?
}

fn report(args: &ReportArgs) -> Result<()> {
    if args.json_out.as_ref() == Some(&args.out) {
        bail!("--out and --json-out name the same file");
    }
    let key = match &args.dir {
        Some(dir) => Some(at_rest::load_key(dir)?),
        None => None,
    };
    for path in std::iter::once(&args.scores).chain(&args.baseline) {
        let is_sealed = sealed::is_sealed(path).with_context(|| format!("cannot read {}", path.display()))?;
        if is_sealed && key.is_none() {
            let name = path.file_name().unwrap_or(path.as_os_str()).to_string_lossy();
            return Err(Exit::BadInput.wrap(anyhow::anyhow!(
                "{name}: sealed by a node; pass --dir NODE_DIR to open it with that node's storage key"
            )));
        }
    }
    let inputs = Inputs {
        scored: args.scores.clone(),
        baseline: args.baseline.clone(),
        score_column: args.score_column.clone(),
        label_column: args.label.clone(),
        points_column: args.points_column.clone(),
        band_width: Some(args.band_width),
    };
    let report = report::build(&inputs, key.as_ref()).context("cannot build the report")?;
    report::write(&report, &args.out, args.json_out.as_deref()).context("cannot write the report")?;
    if args.json {
        return super::print_json(&report);
    }
    let psi =
        report.psi.as_ref().map_or(String::new(), |p| format!(", PSI {:.4} ({})", p.value, report::psi_grade(p.value)));
    println!(
        "{} rows ({} bads): AUC {:.4}, KS {:.4}, Gini {:.4}{psi}; wrote {}{}",
        report.rows,
        report.bads,
        report.auc,
        report.ks,
        report.gini,
        args.out.display(),
        args.json_out.as_ref().map_or(String::new(), |j| format!(" and {}", j.display()))
    );
    Ok(())
}
