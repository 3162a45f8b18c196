//! Sharded psi jobs on a node (`consort psi ... --shards N`, issue 12 item 4; the protocol side
//! is `consort_engine::psi_stream::resume::shard`, the workers `crate::worker`).
//!
//! A psi job whose parameters carry `{"shards": N}` (validated in `plan` on both nodes, before
//! anything is logged; then grant, policy and limits as for any psi job: no new job kind) runs:
//! 1. over the job's channel: the hello, the shard count checked once more, the scan into the
//!    job's sealed spill and its checkpoint (`prepare_shards`), as a resumable job in
//!    `DIR/spill/JOB/`;
//! 2. each node starts one `consort worker` process per shard (the same executable as the node).
//!    The responder's workers listen on the node's listen address, port 0, and print the bound
//!    address; the responder sends the ports to the requester (one `0x76` frame, checked: one
//!    non-zero port per shard); the requester's workers connect to the peer's address with those
//!    ports. Worker i pairs only with the peer's worker i (mutual TLS with the nodes' pinned
//!    identities, then the engine's pairing frame);
//! 3. when every worker exited, over the job's channel: the shards' records become the
//!    checkpoint and the job finishes as a resume (`finish_shards`): both nodes compare every
//!    shard's digest, the output is header + segments in shard order, renamed into place.
//!
//! A failed worker fails the job (no output); the shards before the first failed one are recorded,
//! so `consort psi ... --resume JOB` runs the rest from the kept spill.
use std::process::Stdio;
use std::time::Instant;

use bytes::Bytes;
use consort_engine::psi_stream::resume::shard::{finish_shards, prepare_shards, record_shards};
use consort_engine::psi_stream::resume::{discard, is_resumable};
use consort_engine::psi_stream::{StreamFigures, StreamInput, StreamOptions};
use consort_engine::{PsiJob, PsiReport};
use consort_protocols::{Channel, Role};
use tokio::io::AsyncBufReadExt;

use super::{Ask, Failure};
use crate::state::NodeState;

/// What a sharded job uses of the job's context.
pub struct Ctx<'a> {
    pub state: &'a std::sync::Arc<NodeState>,
    pub ask: &'a Ask,
    pub channel: &'a consort_protocols::channel::Metered<super::channel::JobChannel>,
}
use crate::worker::WorkerReport;

/// Frame tag of the responder's worker ports.
const PORTS: u8 = 0x76;

fn shared(msg: String) -> Failure {
    Failure::shared(anyhow::anyhow!(msg))
}

/// Runs a sharded streaming job (the node's side) to its report.
pub async fn run(
    ctx: &Ctx<'_>,
    input: &StreamInput,
    psi: &PsiJob,
    options: &StreamOptions,
    shards: usize,
) -> Result<(PsiReport, StreamFigures), Failure> {
    let dir = &options.spill_dir;
    let (key, _lock) = super::resume::job_key(ctx.state, ctx.ask, dir, false)?;
    let run = async {
        let plan = prepare_shards(ctx.channel, input, psi, options, &key, shards).await.map_err(super::psi::failure)?;
        let started = Instant::now();
        let reports = workers(ctx, plan.shards).await;
        let wall = started.elapsed().as_secs_f64();
        let reports = match reports {
            Ok(r) => r,
            Err(e) => {
                // The shards before the first failed one count for a resume.
                if let Err(r) = record_shards(dir, &key) {
                    tracing::warn!(job = %ctx.ask.job_id, "cannot record the finished shards: {r}");
                }
                return Err(e);
            }
        };
        let (mut report, figures) =
            finish_shards(ctx.channel, input, psi, options, &key).await.map_err(super::psi::failure)?;
        let mut stages = vec![("shards".to_string(), wall)];
        for r in &reports {
            stages.push((format!("shard/{}/wall", r.shard), r.secs));
            stages.push((format!("shard/{}/cpu", r.shard), r.cpu_secs));
        }
        report.stages.splice(0..0, stages);
        Ok((report, figures))
    };
    let result = run.await;
    if result.is_err() && !is_resumable(dir) {
        let _ = discard(dir);
    }
    result
}

/// Starts one worker per shard, exchanges the responder's ports, waits for all of them.
async fn workers(ctx: &Ctx<'_>, shards: usize) -> Result<Vec<WorkerReport>, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::private(anyhow::anyhow!("cannot find consort: {e}")))?;
    let command = |shard: usize, meet: (&str, String)| {
        let mut c = tokio::process::Command::new(&exe);
        c.arg("worker")
            .arg(&ctx.state.dir)
            .args(["--job", &ctx.ask.job_id, "--peer", &ctx.ask.peer])
            .args(["--shard", &shard.to_string(), meet.0, &meet.1])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        c
    };
    let spawn_err = |e: std::io::Error| Failure::private(anyhow::anyhow!("cannot start a worker: {e}"));
    let mut children = Vec::with_capacity(shards);
    match ctx.ask.role {
        Role::Responder => {
            let host = ctx.state.listen_addr.ip();
            let mut ports = vec![PORTS];
            for shard in 0..shards {
                let mut child = command(shard, ("--listen", format!("{host}:0"))).spawn().map_err(spawn_err)?;
                let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
                let line = lines.next_line().await.ok().flatten().unwrap_or_default();
                let port = line
                    .strip_prefix("listening ")
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.port())
                    .ok_or_else(|| shared(format!("worker {shard} did not start")))?;
                ports.extend_from_slice(&port.to_le_bytes());
                children.push((child, lines));
            }
            ctx.channel.send(Bytes::from(ports)).await.map_err(Failure::shared)?;
        }
        Role::Requester => {
            let frame = ctx.channel.recv().await.map_err(Failure::shared)?;
            if frame.len() != 1 + 2 * shards || frame[0] != PORTS {
                return Err(shared("the peer's worker ports message is malformed".into()));
            }
            let config = ctx.state.config();
            let peer = config.peer(&ctx.ask.peer).map_err(Failure::private)?;
            let host = peer_host(&peer.addr);
            for (shard, port) in frame[1..].chunks_exact(2).enumerate() {
                let port = u16::from_le_bytes([port[0], port[1]]);
                if port == 0 {
                    return Err(shared("the peer's worker ports message is malformed".into()));
                }
                let mut child = command(shard, ("--connect", format!("{host}:{port}"))).spawn().map_err(spawn_err)?;
                let lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
                children.push((child, lines));
            }
        }
    }
    let waits = children.into_iter().enumerate().map(|(shard, (mut child, mut lines))| async move {
        let mut last = None;
        while let Ok(Some(line)) = lines.next_line().await {
            last = Some(line);
        }
        let status = child.wait().await;
        match (status, last.and_then(|l| serde_json::from_str::<WorkerReport>(&l).ok())) {
            (Ok(s), Some(r)) if s.success() && r.shard as usize == shard => Ok(r),
            _ => Err(shard),
        }
    });
    let results = futures::future::join_all(waits).await;
    let failed: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().map(|s| s.to_string())).collect();
    if !failed.is_empty() {
        return Err(shared(format!(
            "shard(s) {} failed (the workers' logs say why); the job's state is kept: run it again with --resume {}",
            failed.join(", "),
            ctx.ask.job_id
        )));
    }
    Ok(results.into_iter().map(|r| r.expect("checked")).collect())
}

/// The host of a peer address `HOST:PORT` (`[V6]:PORT`).
fn peer_host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}
