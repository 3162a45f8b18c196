//! `consort gen psi|lr`: synthetic data (the engine's `synth` and `lr_synth`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::{lr, print_json};

#[derive(Subcommand)]
pub enum GenCommand {
    /// Two CSV files a.csv and b.csv (or with --format parquet a.parquet and b.parquet) with ids
    /// (11-digit phone numbers) and payload columns.
    Psi {
        /// Rows in a.csv.
        #[arg(long)]
        rows: u64,
        /// Ids present in both files.
        #[arg(long)]
        overlap: u64,
        /// Rows in b.csv (default: --rows).
        #[arg(long)]
        rows_b: Option<u64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Print a JSON object (files, rows, shared ids) instead of text.
        #[arg(long)]
        json: bool,
        /// Only the id column (about 12 bytes a row): large PSI inputs.
        #[arg(long)]
        ids_only: bool,
        /// File format: csv (a.csv, b.csv) or parquet (a.parquet, b.parquet: the same rows, the
        /// id column as Int64 so both formats give the same keys, Snappy, 2^20 rows a row group).
        #[arg(long, default_value = "csv", value_parser = ["csv", "parquet"])]
        format: String,
    },
    /// Vertical data with a logistic ground truth: a.csv (id, y, a0..), b.csv (id, b0..), truth.json.
    Lr(lr::GenLrArgs),
}

pub async fn run(cmd: GenCommand) -> Result<()> {
    match cmd {
        GenCommand::Psi { rows, overlap, rows_b, seed, out, json, ids_only, format } => {
            let spec = consort_engine::synth::PsiGenSpec {
                rows_a: rows,
                rows_b: rows_b.unwrap_or(rows),
                overlap,
                seed,
                out_dir: out,
            };
            let s = consort_protocols::cpu::run(move || match (format.as_str(), ids_only) {
                ("parquet", _) => consort_engine::synth::generate_psi_parquet(&spec, ids_only),
                (_, true) => consort_engine::synth::generate_psi_ids(&spec),
                (_, false) => consort_engine::synth::generate_psi(&spec),
            })
            .await?;
            if json {
                return print_json(&json!({
                    "a": s.a,
                    "b": s.b,
                    "rows_a": s.rows_a,
                    "rows_b": s.rows_b,
                    "overlap": s.overlap,
                    "seconds": s.seconds,
                    "bytes_a": s.bytes_a,
                    "bytes_b": s.bytes_b,
                }));
            }
            println!(
                "wrote {} ({} rows) and {} ({} rows), {} shared ids, in {:.1} s",
                s.a.display(),
                s.rows_a,
                s.b.display(),
                s.rows_b,
                s.overlap,
                s.seconds
            );
            Ok(())
        }
        GenCommand::Lr(args) => lr::gen_lr(args).await,
    }
}
