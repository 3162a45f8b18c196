//! consort's data plane: datasets from CSV, key normalization, PSI jobs over a channel, outputs.
//!
//! Knows nothing of gRPC or the node; CPU and file work runs on rayon through
//! [`consort_protocols::cpu::run`] so async callers never block their runtime.

pub mod audit;
pub mod binning;
pub mod check;
mod csv_rows;
pub mod dataset;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod join;
pub mod keys;
pub mod lr;
pub mod lr_synth;
pub mod memory;
pub mod multi_join;
pub mod parquet_io;
pub mod payload;
pub mod psi;
pub mod psi_stream;
pub mod report;
pub mod scorecard;
pub mod sealed;
pub mod secureboost;
pub mod storage;
pub mod synth;
pub mod unbalanced;

pub use dataset::{Dataset, DatasetSpec, Normalization};
pub use error::{DataError, EngineError};
pub use join::JoinType;
pub use psi::{JobLimits, OutputColumns, PayloadJob, PsiJob, PsiProtocol, PsiReport, run_psi, run_psi_owned};
pub use synth::{GenSummary, PsiGenSpec, generate_psi};
