//! The `consort` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use consort_engine::{DatasetSpec, Normalization, PsiProtocol};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::NodeClient;
use crate::proto::{JobStatus, PsiRequest};
use crate::{config, identity, node, peer, setup};

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
        #[arg(long)]
        name: String,
        /// Address for the peer service, HOST:PORT (port 0 picks a free port at start).
        #[arg(long)]
        listen: String,
    },
    /// Manage pinned peers.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Manage datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Run the node in the foreground (logs to stderr; stops cleanly on Ctrl-C or SIGTERM).
    Node { dir: PathBuf },
    /// Run a private set intersection with a peer through the local node.
    Psi(PsiArgs),
    /// Train a joint logistic regression with a peer (this node holds the labels).
    Train(crate::lr_cli::TrainArgs),
    /// Score new aligned rows with a jointly trained model (predictions for this node only).
    Score(crate::lr_cli::ScoreArgs),
    /// List the jobs a running node knows.
    Jobs {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Generate synthetic data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Run the whole pipeline on generated data: two nodes with TLS on loopback, PSI, plaintext check.
    Demo(crate::demo::DemoArgs),
    /// End-to-end benchmarks with two real node processes.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Audit evidence: export a job's bundle, verify bundles and logs offline.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
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
        /// Replace an existing pin of the same name.
        #[arg(long)]
        replace: bool,
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

#[derive(Args)]
struct PsiArgs {
    /// The local node's directory (the node must be running).
    dir: PathBuf,
    /// The pinned peer to intersect with.
    #[arg(long)]
    peer: String,
    /// Local dataset.
    #[arg(long)]
    dataset: String,
    /// The peer's dataset.
    #[arg(long)]
    peer_dataset: String,
    /// PSI protocol: ecdh (ECDH-PSI) or rr22 (RR22 over silent VOLE, for large sets).
    #[arg(long, default_value = "ecdh")]
    protocol: String,
    /// Who learns the intersection: both, or self (only this node).
    #[arg(long, default_value = "both")]
    reveal: String,
    /// This node's output: its own rows of the intersection, in the order both sides share.
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
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
    Lr(crate::lr_cli::GenLrArgs),
}

/// Entry point of the binary: one-line error on stderr and a non-zero exit on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Node { .. }) { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
        Command::Init { dir, name, listen } => {
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
        Command::Peer(PeerCommand::Add { dir, name, addr, cert, replace }) => {
            let fingerprint = setup::peer_add(&dir, &name, &addr, &cert, replace)?;
            let reloaded = setup::notify_node(&dir).await?;
            println!(
                "pinned peer '{name}' at {addr}: {fingerprint}{}",
                if reloaded { " (running node reloaded)" } else { "" }
            );
            Ok(())
        }
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
                let grants: Vec<String> = d.grants.iter().map(|g| format!("{}:{}", g.peer, g.jobs.join(","))).collect();
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
        Command::Node { dir } => run_node(&dir).await,
        Command::Psi(args) => psi(args).await,
        Command::Jobs { dir, json } => {
            let jobs = NodeClient::connect(&dir).await?.jobs().await?;
            for j in &jobs {
                if json {
                    println!("{}", status_json(j));
                } else {
                    println!(
                        "{}\t{}\t{}\t{}\tpeer={}\tdataset={}\t{:.1}s",
                        j.job_id, j.kind, j.role, j.state, j.peer, j.dataset, j.seconds
                    );
                }
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
        Command::Gen(GenCommand::Lr(args)) => crate::lr_cli::gen_lr(args).await,
        Command::Train(args) => crate::lr_cli::train(args).await,
        Command::Score(args) => crate::lr_cli::score(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Bench(cmd) => crate::bench::run(cmd).await,
        Command::Audit(cmd) => crate::audit::run(cmd).await,
    }
}

async fn run_node(dir: &Path) -> Result<()> {
    let handle = node::start(dir).await?;
    let config = handle.state.config();
    eprintln!(
        "consort node '{}' listening on {} (control socket {})",
        config.name,
        handle.peer_addr(),
        handle.state.dir.join(config::CONTROL_SOCKET).display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("shutting down");
    handle.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn psi(args: PsiArgs) -> Result<()> {
    let protocol: PsiProtocol = args.protocol.parse().map_err(anyhow::Error::msg)?;
    peer::parse_reveal(&args.reveal).map_err(anyhow::Error::msg)?;
    let out = config::absolute(&args.out)?;
    let client = NodeClient::connect(&args.dir).await?;
    let request = PsiRequest {
        peer: args.peer.clone(),
        dataset: args.dataset.clone(),
        peer_dataset: args.peer_dataset.clone(),
        protocol: protocol.name().into(),
        reveal: args.reveal.clone(),
        out: out.display().to_string(),
    };
    let job_id = client.submit_psi(request).await?;
    let status = watch_with_progress(&client, &job_id, args.json).await?;
    if args.json {
        println!("{}", status_json(&status));
    } else {
        println!("{}", summary(&status));
    }
    if status.state != crate::jobs::DONE {
        anyhow::bail!("job {job_id} failed: {}", status.error);
    }
    Ok(())
}

/// Follows a job with a progress bar on stderr (hidden when stderr is not a terminal).
pub async fn watch_with_progress(client: &NodeClient, job_id: &str, quiet: bool) -> Result<JobStatus> {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<20} [{bar:30}] {pos}/{len} ({elapsed})")
            .context("progress style")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let status = client
        .watch(job_id, |s| {
            bar.set_message(if s.stage.is_empty() { s.state.clone() } else { s.stage.clone() });
            bar.set_length(s.total);
            bar.set_position(s.done);
        })
        .await?;
    bar.finish_and_clear();
    Ok(status)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A readable summary of a finished job.
pub fn summary(s: &JobStatus) -> String {
    if s.state != crate::jobs::DONE {
        return format!("PSI job {} {} after {:.1} s: {}", s.job_id, s.state, s.seconds, s.error);
    }
    let mut lines = vec![format!(
        "PSI job {} ({}, reveal {}) done in {:.2} s with peer '{}'",
        s.job_id, s.protocol, s.reveal, s.seconds, s.peer
    )];
    lines.push(format!("  rows: {} here, {} at the peer", s.local_rows, s.peer_rows));
    if s.has_intersection {
        lines.push(format!("  intersection: {} rows", s.intersection));
    }
    if !s.output.is_empty() {
        lines.push(format!("  wrote {} rows to {}", s.output_rows, s.output));
    }
    if s.peer_output.is_empty() {
        lines.push("  the peer wrote no output".into());
    } else {
        lines.push(format!("  the peer wrote its rows under its node directory: {}", s.peer_output));
    }
    let items = (s.local_rows + s.peer_rows).max(1) as f64;
    lines.push(format!(
        "  sent {}, received {} on the wire ({:.1} bytes per item)",
        mb(s.wire_bytes_sent),
        mb(s.wire_bytes_received),
        (s.wire_bytes_sent + s.wire_bytes_received) as f64 / items
    ));
    let stages: Vec<String> = s.stages.iter().map(|st| format!("{} {:.2}s", st.name, st.seconds)).collect();
    if !stages.is_empty() {
        lines.push(format!("  stages: {}", stages.join(", ")));
    }
    lines.join("\n")
}

/// A job status as one JSON object.
pub fn status_json(s: &JobStatus) -> serde_json::Value {
    serde_json::json!({
        "job_id": s.job_id,
        "kind": s.kind,
        "protocol": s.protocol,
        "role": s.role,
        "peer": s.peer,
        "dataset": s.dataset,
        "reveal": s.reveal,
        "state": s.state,
        "error": if s.error.is_empty() { None } else { Some(&s.error) },
        "seconds": s.seconds,
        "local_rows": s.local_rows,
        "peer_rows": s.peer_rows,
        "intersection": if s.has_intersection { Some(s.intersection) } else { None },
        "output": if s.output.is_empty() { None } else { Some(&s.output) },
        "output_rows": s.output_rows,
        "peer_output": if s.peer_output.is_empty() { None } else { Some(&s.peer_output) },
        "bytes_sent": s.bytes_sent,
        "bytes_received": s.bytes_received,
        "wire_bytes_sent": s.wire_bytes_sent,
        "wire_bytes_received": s.wire_bytes_received,
        "stages": s.stages.iter().map(|st| serde_json::json!({"name": st.name, "seconds": st.seconds})).collect::<Vec<_>>(),
    })
}
