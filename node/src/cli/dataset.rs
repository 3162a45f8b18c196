//! `consort dataset add|list`: the datasets this node registers, and their grants.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use consort_engine::{DatasetSpec, Normalization};
use serde_json::json;

use super::admin::reloaded_note;
use super::print_json;
use crate::config::NodeConfig;
use crate::setup;

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Register a CSV file (with a header) or a Parquet file (`.parquet`, `.parq`, `.pq`, or
    /// starting with PAR1) as a dataset. Parquet: key columns hold strings or integers (an
    /// integer's key is its decimal text, so int 42 matches CSV "42"); the file is checked row
    /// group by row group in constant memory, duplicate keys when a job runs; only PSI jobs
    /// read it, and their outputs are Parquet.
    Add(AddArgs),
    /// List registered datasets and their grants.
    List {
        dir: PathBuf,
        /// Print a JSON array (one object per dataset, as config.toml holds it) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct AddArgs {
    dir: PathBuf,
    #[arg(long)]
    name: String,
    #[arg(long)]
    file: PathBuf,
    /// Key column; repeat for a composite key.
    #[arg(long = "key", required = true)]
    keys: Vec<String>,
    /// Peer allowed to run jobs on this dataset: PEER (PSI) or PEER:KIND[,KIND]. Repeatable.
    #[arg(long = "grant")]
    grants: Vec<String>,
    /// Columns a granted peer may receive in payload PSI joins it requests (`consort psi
    /// --peer-columns`): PEER:COL[,COL]. Repeatable; PEER needs a --grant with psi.
    #[arg(long = "share", value_name = "PEER:COL,...")]
    shares: Vec<String>,
    /// Keep the first row of each duplicate key instead of failing the job (duplicates are found
    /// when a job runs, not at registration).
    #[arg(long)]
    dedup: bool,
    /// Lower-case keys before matching.
    #[arg(long)]
    case_fold: bool,
    /// Do not trim whitespace around keys.
    #[arg(long)]
    no_trim: bool,
    /// Only check the header now (the full file is checked when a job runs). Without it the
    /// whole file is read once in constant memory: every row and key (errors name the line and
    /// column), the row count; duplicate keys are always found by the job.
    #[arg(long)]
    no_check: bool,
    /// Replace an existing dataset of the same name.
    #[arg(long)]
    replace: bool,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: DatasetCommand) -> Result<()> {
    match cmd {
        DatasetCommand::Add(args) => add(args).await,
        DatasetCommand::List { dir, json } => {
            let datasets = NodeConfig::load(&dir)?.datasets;
            if json {
                return print_json(&datasets);
            }
            for d in datasets {
                let grants: Vec<String> = d.grants.iter().map(|g| format!("[{}]", g.describe())).collect();
                println!(
                    "{}\t{}\tkeys={}\tgrants={}",
                    d.spec.name,
                    d.spec.file.display(),
                    d.spec.keys.join("+"),
                    grants.join(" ")
                );
            }
            Ok(())
        }
    }
}

async fn add(a: AddArgs) -> Result<()> {
    let mut grants = a.grants.iter().map(|g| setup::parse_grant(g)).collect::<Result<Vec<_>>>()?;
    let name = a.name;
    let spec_dedup = a.dedup;
    let spec = DatasetSpec {
        name: name.clone(),
        file: a.file,
        keys: a.keys,
        normalize: Normalization { trim: !a.no_trim, case_fold: a.case_fold },
        dedup: a.dedup,
    };
    if !a.shares.is_empty() {
        let columns = spec.check_header()?;
        setup::apply_shares(&mut grants, &a.shares, &columns)?;
    }
    let check = setup::dataset_add(&a.dir, spec, grants, a.replace, !a.no_check)?;
    let reloaded = setup::notify_node(&a.dir).await?;
    if a.json {
        return print_json(&json!({
            "name": name,
            "columns": check.columns,
            "rows": check.rows,
            "duplicates_dropped": check.duplicates_dropped,
            "reloaded": reloaded,
            "bytes": check.bytes,
            "duplicates": "checked when a job runs",
        }));
    }
    let columns = check.columns.join(",");
    match check.rows {
        Some(rows) => println!(
            "registered dataset '{name}': {rows} rows, columns {columns} (duplicate keys are checked when a job runs{}){}",
            if spec_dedup { ": the first row of each is kept" } else { "" },
            reloaded_note(reloaded)
        ),
        None => println!("registered dataset '{name}': columns {columns}"),
    }
    Ok(())
}
