//! The `consort` command line: strings are parsed here, once, into typed values (clap value
//! enums for the vocabulary) and carried inward; `main` prints one-line errors.

pub mod admin;
pub mod audit;
pub mod bench;
pub mod demo;
pub mod export;
pub mod jobfile;
pub mod lr;
pub mod lr_demo;
pub mod psi;
pub mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use consort_api::vocab::Vocabulary;
use consort_engine::{DatasetSpec, Normalization};

use crate::client::NodeClient;
use crate::{config, identity, node, setup};

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
#[command(name = "consort", version, about = "Privacy-preserving joins and joint computation between data owners", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node directory: config, ed25519 identity, TLS key and self-signed certificate.
    Init {
        /// Node directory to create.
        dir: PathBuf,
        /// This node's name (peers pin it under this name).
        #[arg(long, required_unless_present = "rotate_key")]
        name: Option<String>,
        /// Address for the peer service, HOST:PORT (port 0 picks a free port at start).
        #[arg(long, required_unless_present = "rotate_key")]
        listen: Option<String>,
        /// Rotate an existing node's TLS key: make the next key and certificate (peers pin it
        /// with `peer add --rotate`), then with --activate make it the node's key.
        #[arg(long, conflicts_with_all = ["name", "listen"])]
        rotate_key: bool,
        /// With --rotate-key: switch to the prepared key (used from the node's next start).
        #[arg(long, requires = "rotate_key")]
        activate: bool,
    },
    /// Manage pinned peers.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Manage datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Grants: which peer may run which jobs on a dataset, and the policy that bounds them.
    #[command(subcommand)]
    Grant(admin::GrantCommand),
    /// Approve a job waiting for this node's approval (grant with --approval).
    Approve { dir: PathBuf, job: String },
    /// Deny a job waiting for this node's approval; the requester is told the reason.
    Deny {
        dir: PathBuf,
        job: String,
        #[arg(long)]
        reason: Option<String>,
    },
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
    /// Train a joint logistic regression with a peer (this node holds the labels).
    Train(lr::TrainArgs),
    /// Score new aligned rows with a jointly trained model (predictions for this node only).
    Score(lr::ScoreArgs),
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
        #[arg(long)]
        json: bool,
    },
    /// One job in full: its state, stages, figures and, on the responder, the request as the
    /// peer sent it (what `consort approve` approves). Works with the node stopped.
    Job {
        dir: PathBuf,
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Generate synthetic data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Run the whole pipeline on generated data: two nodes with TLS on loopback, PSI, plaintext check.
    Demo(demo::DemoArgs),
    /// End-to-end benchmarks with two real node processes.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
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
}

/// How `consort node` writes its log.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Pin a peer's certificate (its DIR/node.crt, obtained out of band) under a name.
    Add {
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// The peer's peer-service address, HOST:PORT.
        #[arg(long)]
        addr: String,
        /// The peer's certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Replace an existing pin of the same name (open connections with the old certificate
        /// are closed).
        #[arg(long, conflicts_with = "rotate")]
        replace: bool,
        /// Pin the peer's new certificate and keep accepting its current one for
        /// --window-days (the peer rotates its key with `consort init --rotate-key`).
        #[arg(long)]
        rotate: bool,
        /// Days the previous certificate stays accepted after --rotate.
        #[arg(long, default_value_t = 7, requires = "rotate")]
        window_days: u64,
    },
    /// Unpin a peer: its certificates, its grants and its place in dealer lists go, and a
    /// running node closes its connections.
    Remove {
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// List pinned peers with their certificate fingerprints.
    List { dir: PathBuf },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Register a CSV file (with a header) as a dataset.
    Add {
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
        /// Keep the first row of each duplicate key instead of rejecting the file.
        #[arg(long)]
        dedup: bool,
        /// Lower-case keys before matching.
        #[arg(long)]
        case_fold: bool,
        /// Do not trim whitespace around keys.
        #[arg(long)]
        no_trim: bool,
        /// Only check the header now (the full file is checked when a job runs).
        #[arg(long)]
        no_check: bool,
        /// Replace an existing dataset of the same name.
        #[arg(long)]
        replace: bool,
    },
    /// List registered datasets and their grants.
    List { dir: PathBuf },
}

#[derive(Subcommand)]
enum GenCommand {
    /// Two CSV files a.csv and b.csv with ids (11-digit phone numbers) and payload columns.
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
    },
    /// Vertical data with a logistic ground truth: a.csv (id, y, a0..), b.csv (id, b0..), truth.json.
    Lr(lr::GenLrArgs),
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
    ExitCode::from(2)
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
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { dir, rotate_key: true, activate, .. } => {
            match identity::rotate_tls_key(&dir, activate)? {
                identity::Rotation::Prepared { cert, fingerprint } => {
                    println!("prepared the next TLS key: {} ({fingerprint})", cert.display());
                    println!(
                        "give it to each peer to pin with `consort peer add DIR --name {} --addr ... --cert {} --rotate`, then run `consort init {} --rotate-key --activate`",
                        config::NodeConfig::load(&dir)?.name,
                        cert.display(),
                        dir.display()
                    );
                }
                identity::Rotation::Activated { fingerprint, previous } => {
                    println!(
                        "the node's TLS key is now {fingerprint} (was {previous}); restart the node to present it"
                    );
                }
            }
            Ok(())
        }
        Command::Init { dir, name, listen, .. } => {
            let (name, listen) = (name.unwrap_or_default(), listen.unwrap_or_default());
            identity::init(&dir, &name, &listen)?;
            let cert = identity::read_cert(&dir.join(config::TLS_CERT_FILE))?;
            println!("created node '{name}' in {}", dir.display());
            println!(
                "certificate for peers to pin: {} ({})",
                dir.join(config::TLS_CERT_FILE).display(),
                identity::fingerprint(&cert)
            );
            Ok(())
        }
        Command::Peer(PeerCommand::Add { dir, name, addr, cert, replace, rotate, window_days }) => {
            let change = match (replace, rotate) {
                (_, true) => setup::PinChange::Rotate(window_days.saturating_mul(24 * 60 * 60)),
                (true, false) => setup::PinChange::Replace,
                (false, false) => setup::PinChange::New,
            };
            let fingerprint = setup::peer_pin(&dir, &name, &addr, &cert, change)?;
            let reloaded = setup::notify_node(&dir).await?;
            let also =
                if rotate { format!(", previous certificate accepted for {window_days} days") } else { String::new() };
            println!("pinned peer '{name}' at {addr}: {fingerprint}{also}{}", admin::reloaded_note(reloaded));
            Ok(())
        }
        Command::Peer(PeerCommand::Remove { dir, name }) => {
            let removed = setup::peer_remove(&dir, &name)?;
            let reloaded = setup::notify_node(&dir).await?;
            println!("removed peer '{name}': {}{}", removed.join(", "), admin::reloaded_note(reloaded));
            Ok(())
        }
        Command::Grant(cmd) => admin::grant(cmd).await,
        Command::Approve { dir, job } => admin::decide(dir, job, true, None).await,
        Command::Deny { dir, job, reason } => admin::decide(dir, job, false, reason).await,
        Command::Peer(PeerCommand::List { dir }) => {
            for p in config::NodeConfig::load(&dir)?.peers {
                println!("{}\t{}\t{}", p.name, p.addr, p.fingerprint);
            }
            Ok(())
        }
        Command::Dataset(DatasetCommand::Add {
            dir,
            name,
            file,
            keys,
            grants,
            dedup,
            case_fold,
            no_trim,
            no_check,
            replace,
        }) => {
            let grants = grants.iter().map(|g| setup::parse_grant(g)).collect::<Result<Vec<_>>>()?;
            let spec = DatasetSpec {
                name: name.clone(),
                file,
                keys,
                normalize: Normalization { trim: !no_trim, case_fold },
                dedup,
            };
            let check = setup::dataset_add(&dir, spec, grants, replace, !no_check)?;
            let reloaded = setup::notify_node(&dir).await?;
            match check.rows {
                Some(rows) => println!(
                    "registered dataset '{name}': {rows} rows, columns {}{}{}",
                    check.columns.join(","),
                    if check.duplicates_dropped > 0 {
                        format!(", {} duplicate rows dropped", check.duplicates_dropped)
                    } else {
                        String::new()
                    },
                    if reloaded { " (running node reloaded)" } else { "" }
                ),
                None => println!("registered dataset '{name}': columns {}", check.columns.join(",")),
            }
            Ok(())
        }
        Command::Dataset(DatasetCommand::List { dir }) => {
            for d in config::NodeConfig::load(&dir)?.datasets {
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
        Command::Node { dir, metrics, log_format } => run_node(&dir, metrics.as_deref(), log_format).await,
        Command::Psi(args) => psi::psi(args).await,
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
        Command::Gen(GenCommand::Psi { rows, overlap, rows_b, seed, out }) => {
            let spec = consort_engine::synth::PsiGenSpec {
                rows_a: rows,
                rows_b: rows_b.unwrap_or(rows),
                overlap,
                seed,
                out_dir: out.clone(),
            };
            let started = std::time::Instant::now();
            consort_protocols::cpu::run(move || consort_engine::synth::generate_psi(&spec)).await?;
            println!(
                "wrote {} ({rows} rows) and {} ({} rows), {overlap} shared ids, in {:.1} s",
                out.join("a.csv").display(),
                out.join("b.csv").display(),
                rows_b.unwrap_or(rows),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Gen(GenCommand::Lr(args)) => lr::gen_lr(args).await,
        Command::Train(args) => lr::train(args).await,
        Command::Score(args) => lr::score(args).await,
        Command::Run { dir, job, json } => jobfile::run(dir, job, json).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Export(args) => export::run(args).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "consort", &mut std::io::stdout());
            Ok(())
        }
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
