//! The `consort` command line: strings are parsed here, once, into typed values (clap value
//! enums for the vocabulary) and carried inward; `main` prints one-line errors.

pub mod admin;
pub mod audit;
pub mod bench;
pub mod bin;
pub mod dataset;
pub mod demo;
pub mod exit;
pub mod export;
pub mod init;
pub mod jobfile;
pub mod lr;
pub mod lr_demo;
pub mod manual;
pub mod multi;
pub mod peer;
pub mod psi;
pub mod report;
pub mod sb_demo;
pub mod status;
pub mod synth;
pub mod unbalanced;
pub mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use consort_api::vocab::Vocabulary;

use crate::client::NodeClient;
use crate::{config, node};
use exit::Exit;

/// What every job submission names: the local node, the peer, and each side's dataset.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct JobArgs {
    /// The local node's directory (the node must be running); this node is the requester.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The pinned peer (the responder).
    #[arg(long)]
    pub peer: String,
    /// This node's dataset.
    #[arg(long)]
    pub dataset: String,
    /// The peer's dataset.
    #[arg(long)]
    pub peer_dataset: String,
}

/// A value parser for a vocabulary enum: its names (and aliases) in `--help` and completions.
pub fn vocab<T: Vocabulary + Clone + Send + Sync>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|v| PossibleValue::new(v.name()).aliases(v.aliases().iter().copied()));
    PossibleValuesParser::new(values).map(|s| T::parse_name(&s).expect("a listed value"))
}

#[derive(Parser)]
#[command(
    name = "consort",
    version,
    about = "Privacy-preserving joins and joint computation between data owners",
    long_about = None,
    after_help = exit::AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// One parsed command per process: the size of its largest variant (`train`'s flags) is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create a node directory: config, ed25519 identity, TLS key and self-signed certificate.
    Init(init::InitArgs),
    /// Manage pinned peers.
    #[command(subcommand)]
    Peer(peer::PeerCommand),
    /// Manage datasets.
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
    /// Grants: which peer may run which jobs on a dataset, and the policy that bounds them.
    #[command(subcommand)]
    Grant(admin::GrantCommand),
    /// Approve a job waiting for this node's approval (grant with --approval).
    Approve {
        dir: PathBuf,
        job: String,
        /// Print the job's record as a JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Deny a job waiting for this node's approval; the requester is told the reason.
    Deny {
        dir: PathBuf,
        job: String,
        #[arg(long)]
        reason: Option<String>,
        /// Print the job's record as a JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Remove an interrupted streaming job's resumable state (DIR/spill/JOB) at once, instead of
    /// keeping it for `consort psi ... --resume JOB` until it expires (7 days, at a node start).
    Discard { dir: PathBuf, job: String },
    /// Run the node in the foreground (logs to stderr; stops cleanly on Ctrl-C or SIGTERM).
    Node {
        dir: PathBuf,
        /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) over plain HTTP on
        /// this local address, HOST:PORT (overrides `[metrics] listen` in config.toml; keep it
        /// off the peers' network).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Log format on stderr: text, or json (one object per line, for log shippers).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Run a private set intersection with a peer through the local node.
    Psi(psi::PsiArgs),
    /// Run one shard of a sharded psi job (`consort psi --shards N`): started by the node, or
    /// as a Kubernetes Indexed Job's pod (the shard from JOB_COMPLETION_INDEX).
    Worker(worker::WorkerArgs),
    /// Unbalanced PSI, list owner: evaluate the list once with a fresh OPRF key (local; sealed).
    PsiSetup(unbalanced::PsiSetupArgs),
    /// Unbalanced PSI, querier: fetch the owner's evaluated list once (kept sealed here).
    PsiFetch(unbalanced::PsiFetchArgs),
    /// Unbalanced PSI, querier: check a small query set against the fetched list (work and bytes
    /// proportional to the query); writes the matched rows and their labels.
    PsiQuery(unbalanced::PsiQueryArgs),
    /// Train a joint logistic regression with a peer (this node holds the labels).
    Train(lr::TrainArgs),
    /// Score new aligned rows with a jointly trained model (predictions for this node only).
    Score(lr::ScoreArgs),
    /// Bin both parties' features securely, with WOE, IV and feature selection (this node holds the labels).
    Bin(bin::BinArgs),
    /// Run the job a job file describes (TOML: `kind` and the flags of `consort KIND`, e.g. one
    /// saved with `--save-job`; see examples/jobs/).
    Run {
        /// The local node's directory (the node must be running); this node is the requester.
        dir: PathBuf,
        /// The job file.
        job: PathBuf,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the jobs of a node, running or past (works with the node stopped).
    Jobs {
        dir: PathBuf,
        /// One JSON object per job, one per line (JSON Lines), instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One job in full: its state, stages, figures and, on the responder, the request as the
    /// peer sent it (what `consort approve` approves). Works with the node stopped.
    Job {
        dir: PathBuf,
        job: String,
        /// Print the record as one line of JSON (default: indented JSON).
        #[arg(long)]
        json: bool,
    },
    /// Generate synthetic data.
    #[command(subcommand)]
    Gen(synth::GenCommand),
    /// Run the whole pipeline on generated data: two nodes with TLS on loopback, PSI, plaintext check.
    Demo(demo::DemoArgs),
    /// End-to-end benchmarks with two real node processes.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Model evaluation report of a scored file: AUC, KS, Gini, lift by decile, PSI (HTML, JSON; no peer).
    Report(report::ReportArgs),
    /// Write the plaintext of a sealed output or model file of this node (to hand a result on).
    Export(export::ExportArgs),
    /// Audit evidence: export a job's bundle, verify bundles and logs offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print a shell completion script (e.g. `consort completions bash > /etc/bash_completion.d/consort`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages, one per command and subcommand (consort.1, consort-psi.1, ...), into a
    /// directory.
    Man {
        /// Directory to write the pages into (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Print a JSON object (the pages written) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// How `consort node` writes its log.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum LogFormat {
    Text,
    Json,
}

/// Help and version go to stdout as clap renders them; a usage error becomes one line on stderr
/// (the cause and, for a bad value, the values allowed) and exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let line: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{}", line.join(" "));
    Exit::Usage.into()
}

/// Entry point of the binary: one-line error on stderr and a non-zero exit on failure.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let default_log = if matches!(cli.command, Command::Node { .. }) { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    use std::io::IsTerminal;
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if matches!(cli.command, Command::Node { log_format: LogFormat::Json, .. }) {
        log.json().init();
    } else {
        log.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            exit::classify(&e).into()
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Prints one JSON value on stdout: with `--json`, a command's whole output there (messages
/// and progress go to stderr).
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Peer(cmd) => peer::run(cmd).await,
        Command::Dataset(cmd) => dataset::run(cmd).await,
        Command::Grant(cmd) => admin::grant(cmd).await,
        Command::Approve { dir, job, json } => admin::decide(dir, job, true, None, json).await,
        Command::Deny { dir, job, reason, json } => admin::decide(dir, job, false, reason, json).await,
        Command::Discard { dir, job } => {
            let dir = config::absolute(&dir)?;
            // A running node discards and logs it; else this process logs it in the node's log.
            let removed = match crate::client::NodeClient::connect(&dir).await {
                Ok(client) => client.discard(&job).await?,
                Err(_) => crate::job::resume::discard_offline(&dir, &job).await?,
            };
            println!(
                "{}",
                if removed { "removed the job's resumable state" } else { "no resumable state for that job" }
            );
            Ok(())
        }
        Command::Node { dir, metrics, log_format } => run_node(&dir, metrics.as_deref(), log_format).await,
        Command::Psi(args) => psi::psi(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::PsiSetup(args) => unbalanced::setup(args).await,
        Command::PsiFetch(args) => unbalanced::fetch(args).await,
        Command::PsiQuery(args) => unbalanced::query(args).await,
        Command::Jobs { dir, json } => jobs(&dir, json).await,
        Command::Job { dir, job, json } => {
            let all = job_records(&dir).await?;
            let Some(status) = all.iter().find(|j| j.job_id == job) else {
                anyhow::bail!("no job '{job}' on the node in {}", dir.display());
            };
            if json {
                println!("{}", status::status_json(status));
            } else {
                println!("{}", serde_json::to_string_pretty(&status::status_json(status))?);
            }
            Ok(())
        }
        Command::Gen(cmd) => synth::run(cmd).await,
        Command::Train(args) => lr::train(args).await,
        Command::Score(args) => lr::score(args).await,
        Command::Bin(args) => bin::bin(args).await,
        Command::Run { dir, job, json } => jobfile::run(dir, job, json).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Export(args) => export::run(args).await,
        Command::Report(args) => report::run(args).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Completions { shell } => {
            manual::completions(shell);
            Ok(())
        }
        Command::Man { out, json } => manual::man(&out, json),
    }
}

async fn run_node(dir: &Path, metrics: Option<&str>, log_format: LogFormat) -> Result<()> {
    let handle = node::start_with_metrics(dir, metrics).await?;
    // With --log-format json stderr carries log objects only (the `node started` event has the
    // addresses); the lines below are for a person at a terminal.
    let text = log_format == LogFormat::Text;
    let config = handle.state.config();
    if text {
        eprintln!(
            "consort node '{}' listening on {} (control socket {})",
            config.name,
            handle.peer_addr(),
            handle.state.dir.join(config::CONTROL_SOCKET).display()
        );
        if let Some(addr) = handle.metrics_addr() {
            eprintln!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if text {
        eprintln!("shutting down");
    } else {
        tracing::info!("shutting down");
    }
    handle.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// `consort jobs`: the running node's live view, or the job table on disk when it is stopped.
async fn jobs(dir: &Path, json: bool) -> Result<()> {
    let jobs = job_records(dir).await?;
    for j in &jobs {
        if json {
            println!("{}", status::status_json(j));
        } else {
            println!("{}", status::job_line(j));
        }
    }
    Ok(())
}

/// The running node's live job records, or the job table on disk when it is stopped.
async fn job_records(dir: &Path) -> Result<Vec<consort_api::proto::JobStatus>> {
    Ok(match NodeClient::connect(dir).await {
        Ok(client) => client.jobs().await?,
        // No node answers (never started, stopped, or killed leaving its socket): the table on disk.
        Err(consort_api::ClientError::NotRunning { .. } | consort_api::ClientError::Connect { .. }) => {
            crate::table::read_table_stopped(dir)?
        }
        Err(e) => return Err(e.into()),
    })
}
