//! `consort worker`: one shard of a sharded psi job (`crate::worker`).
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::worker::{Meet, WorkerTask};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The node directory (config, TLS identity, pins, storage key, the job's state).
    dir: PathBuf,
    /// The sharded job's id (its state is DIR/spill/JOB, prepared by the node). Without it the
    /// worker waits (up to 10 minutes) for the job its node names in DIR/shard-job.json (a node
    /// run with CONSORT_SHARD_WORKERS=external, e.g. on Kubernetes).
    #[arg(long)]
    job: Option<String>,
    /// This worker's shard, 0 to N-1 (default: $JOB_COMPLETION_INDEX, a Kubernetes Indexed
    /// Job's pod index).
    #[arg(long)]
    shard: Option<usize>,
    /// The pinned peer whose worker of the same shard this one pairs with.
    #[arg(long)]
    peer: String,
    /// Listen on HOST:PORT for the peer's worker (port 0: any free port; the bound address is
    /// printed as `listening ADDR` on the first stdout line).
    #[arg(long, value_name = "ADDR", conflicts_with = "connect")]
    listen: Option<String>,
    /// Connect to the peer's worker at HOST:PORT (retried for 60 s while it starts).
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
}

pub async fn run(args: WorkerArgs) -> Result<()> {
    let meet = match (args.listen, args.connect) {
        (Some(a), None) => Meet::Listen(a),
        (None, Some(a)) => Meet::Connect(a),
        _ => bail!("give --listen ADDR or --connect ADDR"),
    };
    let shard = match args.shard {
        Some(s) => s,
        None => match std::env::var("JOB_COMPLETION_INDEX") {
            Ok(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("JOB_COMPLETION_INDEX is not a shard index"))?,
            Err(_) => bail!("give --shard I (or set JOB_COMPLETION_INDEX)"),
        },
    };
    let job = match args.job {
        Some(job) => job,
        None => crate::worker::current_job(&args.dir).await?,
    };
    let task = WorkerTask { dir: args.dir, job, shard, peer: args.peer, meet };
    let report = crate::worker::run(&task, |addr| println!("listening {addr}")).await?;
    // The last stdout line: the shard's figures, for the node (or a person).
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
