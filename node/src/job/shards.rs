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
    let (key, _lock) = super::resume::job_key(ctx.state, ctx.ask, dir, false).await?;
    let run = async {
        let started = Instant::now();
        let plan = prepare_shards(ctx.channel, input, psi, options, &key, shards).await.map_err(super::psi::failure)?;
        let prepare = started.elapsed().as_secs_f64();
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
        record_evidence(ctx, &reports).await?;
        let (mut report, figures) =
            finish_shards(ctx.channel, input, psi, options, &key).await.map_err(super::psi::failure)?;
        // `prepare`: hello and scan; `shards`: the workers; then the merge's own stages.
        let mut stages = vec![("prepare".to_string(), prepare), ("shards".to_string(), wall)];
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

/// Logs each shard's connection as the job's `shard` entry (the peer worker's certificate, the
/// range digest both workers compared, the connection's transcript digests and bytes) and counts
/// its bytes in the job's. A worker that reported no evidence fails the job: its connection
/// would be missing from the evidence.
async fn record_evidence(ctx: &Ctx<'_>, reports: &[WorkerReport]) -> Result<(), Failure> {
    let handle = ctx.state.jobs.get(&ctx.ask.job_id);
    for r in reports {
        let Some(e) = &r.evidence else {
            return Err(Failure::private(anyhow::anyhow!("worker {} reported no connection evidence", r.shard)));
        };
        let fields = serde_json::json!({
            "shard": r.shard,
            "peer": ctx.ask.peer,
            "peer_certificate": e.peer_certificate,
            "range_digest": e.range_digest,
            "sent_digest": e.sent_digest,
            "received_digest": e.received_digest,
            "digest": consort_protocols::TRANSCRIPT_DIGEST,
            "bytes_sent": e.bytes_sent,
            "bytes_received": e.bytes_received,
            "frames_sent": e.frames_sent,
            "frames_received": e.frames_received,
            "wire_bytes_sent": e.wire_bytes_sent,
            "wire_bytes_received": e.wire_bytes_received,
            "rows": r.rows,
        });
        if let Err(err) = ctx.state.audit.append_async(&ctx.ask.job_id, "shard", fields).await {
            return Err(Failure::context("the node could not write its audit log", err));
        }
        if let Some(h) = &handle {
            h.add_connection_bytes((e.bytes_sent, e.bytes_received), (e.wire_bytes_sent, e.wire_bytes_received));
        }
    }
    Ok(())
}

/// The node's environment variable that makes the workers external (`external`: Kubernetes
/// runs them as an Indexed Job; the node does not start processes).
pub const WORKERS_ENV: &str = "CONSORT_SHARD_WORKERS";
/// The file naming the sharded job whose workers external workers are to run (`DIR/shard-job.json`).
pub const CURRENT_FILE: &str = "shard-job.json";
/// How long a node waits for external workers (`CONSORT_SHARD_WAIT_SECS`, default one day).
fn external_wait() -> std::time::Duration {
    let secs = std::env::var("CONSORT_SHARD_WAIT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(86_400);
    std::time::Duration::from_secs(secs)
}

/// What external workers read to find their job (`consort worker DIR` without `--job`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Current {
    pub job: String,
    pub shards: usize,
}

/// External workers: names the job in `DIR/shard-job.json`, then waits until every shard has a
/// record (or a worker marked its shard failed, or the wait ran out).
async fn external(ctx: &Ctx<'_>, shards: usize) -> Result<Vec<WorkerReport>, Failure> {
    let dir = &ctx.state.dir;
    let spill = dir.join(crate::config::SPILL_DIR).join(&ctx.ask.job_id);
    let current = serde_json::to_vec(&Current { job: ctx.ask.job_id.clone(), shards }).expect("serializable");
    let path = dir.join(CURRENT_FILE);
    consort_engine::storage::write_atomic(&path, &current, consort_engine::storage::Access::OwnerOnly)
        .map_err(|e| Failure::private(anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    let storage = &ctx.state.storage.key;
    let key = consort_engine::psi_stream::resume::load_job_key(&spill, storage).map_err(Failure::private)?;
    let deadline = Instant::now() + external_wait();
    let result = loop {
        let failed: Vec<String> =
            (0..shards).filter(|i| spill.join(format!("failed-{i:05}")).exists()).map(|i| i.to_string()).collect();
        if !failed.is_empty() {
            break Err(failed);
        }
        let records =
            consort_engine::psi_stream::resume::shard::shard_records(&spill, &key).map_err(Failure::private)?;
        if records.iter().all(Option::is_some) {
            // Each worker leaves its report (with its connection's evidence) after its record.
            let reports: Vec<Option<WorkerReport>> = (0..shards)
                .map(|i| crate::worker::read_report(&spill, i, &key))
                .collect::<anyhow::Result<_>>()
                .map_err(Failure::private)?;
            if reports.iter().all(Option::is_some) {
                break Ok(reports.into_iter().flatten().collect());
            }
        }
        if Instant::now() > deadline {
            break Err(records.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i.to_string()).collect());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let _ = std::fs::remove_file(&path);
    result.map_err(|failed| {
        shared(format!(
            "shard(s) {} failed or did not finish (the workers' logs say why); the job's state is kept: run it again with --resume {}",
            failed.join(", "),
            ctx.ask.job_id
        ))
    })
}

/// Starts one worker per shard, exchanges the responder's ports, waits for all of them.
async fn workers(ctx: &Ctx<'_>, shards: usize) -> Result<Vec<WorkerReport>, Failure> {
    if std::env::var(WORKERS_ENV).is_ok_and(|v| v == "external") {
        return external(ctx, shards).await;
    }
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
            let ports = parse_ports(&frame, shards).map_err(shared)?;
            let config = ctx.state.config();
            let peer = config.peer(&ctx.ask.peer).map_err(Failure::private)?;
            let host = peer_host(&peer.addr);
            for (shard, port) in ports.into_iter().enumerate() {
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

/// The responder's worker ports (frame `0x76`): exactly one non-zero port per shard.
fn parse_ports(frame: &[u8], shards: usize) -> Result<Vec<u16>, String> {
    let malformed = || "the peer's worker ports message is malformed".to_string();
    if frame.len() != 1 + 2 * shards || frame.first() != Some(&PORTS) {
        return Err(malformed());
    }
    let ports: Vec<u16> = frame[1..].chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
    if ports.contains(&0) {
        return Err(malformed());
    }
    Ok(ports)
}

/// The host of a peer address `HOST:PORT` (`[V6]:PORT`).
fn peer_host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's ports message is checked before any worker starts: its tag, one port per shard,
    /// no port 0.
    #[test]
    fn worker_ports_from_the_peer_are_checked() {
        assert_eq!(parse_ports(&[PORTS, 1, 0, 2, 0], 2).unwrap(), vec![1, 2]);
        for bad in [&[][..], &[PORTS][..], &[PORTS, 1, 0][..], &[PORTS, 1, 0, 0, 0][..], &[0x70, 1, 0, 2, 0][..]] {
            assert!(parse_ports(bad, 2).unwrap_err().contains("malformed"), "{bad:?}");
        }
        assert!(parse_ports(&[PORTS, 1, 0, 2, 0, 3], 2).is_err());
        assert_eq!(peer_host("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(peer_host("[::1]:7001"), "[::1]");
        assert_eq!(peer_host("partner.example.com:7001"), "partner.example.com");
    }
}
