//! Dealer mode for `train` jobs: a third node that supplies the matrix-product correlations
//! ([`consort_protocols::mpc::dealer`]) instead of the dealer-free OT generation.
//!
//! Explicit opt-in: the bank names the dealer (`consort train --dealer NAME`) and the partner
//! must have pinned a node of that name too, else it refuses the job. Both parties then open a
//! `deal` job stream to the dealer with the train job's id; the dealer pairs the two streams by
//! job id, checks that one is party A and the other party B and that each names the other (names
//! as the dealer pinned them: use the same names on all three nodes), and runs the dealer. It
//! sees only the shapes; it must not collude with either party (see the protocol module).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use consort_protocols::Metered;
use consort_protocols::mpc::dealer::run_dealer;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::node::NodeState;
use crate::peer::{ANSWER_TIMEOUT, JOB_PROTOCOL_VERSION, connect};
use crate::proto::peer_frame::Kind;
use crate::proto::{JobAccept, JobReject, JobRequest, JobStatus, PeerFrame};
use crate::tls::PeerInfo;
use crate::transport::{GrpcChannel, kind_name};
use crate::{FRAME_BUFFER, config, jobs};

pub const KIND: &str = "deal";

/// How long the dealer waits for the second party of a job.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DealParams {
    /// "A" or "B".
    party: String,
    /// The other party, as the caller names it.
    peer: String,
}

/// One party's stream waiting for the other: (node directory, job id) → waiting party.
struct Waiting {
    party: String,
    name: String,
    claimed_peer: String,
    channel: GrpcChannel,
}

type WaitingMap = Mutex<HashMap<(PathBuf, String), Waiting>>;

fn waiting() -> &'static WaitingMap {
    static MAP: OnceLock<WaitingMap> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// Party side: opens the `deal` stream to the dealer node for train job `job_id`.
pub async fn connect_dealer(
    state: &NodeState,
    dealer: &str,
    job_id: &str,
    party: &str,
    peer: &str,
) -> Result<GrpcChannel> {
    let entry = state.config().peer(dealer).map_err(|_| anyhow!("no pinned dealer node '{dealer}'"))?.clone();
    let (mut client, _wire) = connect(state, &entry).await?;
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    let params = serde_json::to_string(&DealParams { party: party.into(), peer: peer.into() })?;
    let request = JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: job_id.into(),
        kind: KIND.into(),
        params,
        ..Default::default()
    };
    tx.send(PeerFrame { kind: Some(Kind::Request(request)) }).await.map_err(|_| anyhow!("dealer stream closed"))?;
    let inbound = client
        .run_job(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow!("dealer '{dealer}' did not take the job: {}", s.message()))?
        .into_inner();
    let channel = GrpcChannel::new(tx, inbound);
    match tokio::time::timeout(PAIRING_TIMEOUT + ANSWER_TIMEOUT, channel.recv_kind()).await {
        Ok(Ok(Kind::Accept(_))) => Ok(channel),
        Ok(Ok(Kind::Reject(r))) => bail!("dealer '{dealer}' refused: {}", r.reason),
        Ok(Ok(other)) => bail!("dealer '{dealer}' answered with a {} frame", kind_name(&other)),
        Ok(Err(e)) => bail!("dealer '{dealer}' dropped the job: {e}"),
        Err(_) => bail!("dealer '{dealer}' did not answer"),
    }
}

/// Dealer side: pairs the two parties' streams of a job and runs the dealer.
pub async fn respond(state: Arc<NodeState>, peer: PeerInfo, job: JobRequest, channel: GrpcChannel) {
    let params = match admit(&job) {
        Ok(p) => p,
        Err(reason) => {
            warn!(peer = %peer.name, job = %job.job_id, "refused deal job: {reason}");
            let _ = channel.send_kind(Kind::Reject(JobReject { reason })).await;
            return;
        }
    };
    let key = (state.dir.clone(), job.job_id.clone());
    let me = Waiting { party: params.party, name: peer.name.clone(), claimed_peer: params.peer, channel };
    let first = {
        let mut map = waiting().lock().unwrap_or_else(|p| p.into_inner());
        match map.remove(&key) {
            Some(first) => first,
            None => {
                map.insert(key.clone(), me);
                drop(map);
                // Wait for the other party; give up (and tell this one) after the timeout.
                tokio::spawn(async move {
                    tokio::time::sleep(PAIRING_TIMEOUT).await;
                    let stale = waiting().lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                    if let Some(w) = stale {
                        let reason = "the other party of the job never reached the dealer".to_string();
                        let _ = w.channel.send_kind(Kind::Reject(JobReject { reason })).await;
                    }
                });
                return;
            }
        }
    };
    let second = me;
    let consistent =
        first.party != second.party && first.claimed_peer == second.name && second.claimed_peer == first.name;
    if !consistent {
        let reason = format!(
            "the two requests for job {} do not pair up (one party A and one party B naming each other)",
            job.job_id
        );
        warn!(job = %job.job_id, "{reason}");
        for w in [&first, &second] {
            let _ = w.channel.send_kind(Kind::Reject(JobReject { reason: reason.clone() })).await;
        }
        return;
    }
    let (a, b) = if first.party == "A" { (first, second) } else { (second, first) };
    let status = JobStatus {
        job_id: job.job_id.clone(),
        kind: KIND.into(),
        role: "dealer".into(),
        peer: format!("{}+{}", a.name, b.name),
        state: jobs::PENDING.into(),
        ..Default::default()
    };
    let Some(handle) = state.jobs.insert(status) else {
        let reason = format!("job id {} is already in use here", job.job_id);
        for w in [&a, &b] {
            let _ = w.channel.send_kind(Kind::Reject(JobReject { reason: reason.clone() })).await;
        }
        return;
    };
    for w in [&a, &b] {
        let _ = w.channel.send_kind(Kind::Accept(JobAccept { rows: 0 })).await;
    }
    info!(job = %job.job_id, a = %a.name, b = %b.name, "dealing");
    handle.stage("deal", 0, 0);
    let (ca, cb) = (Metered::new(a.channel), Metered::new(b.channel));
    let result = run_dealer(&ca, &cb).await;
    let stats = ca.stats();
    let other = cb.stats();
    handle.update(|s| {
        s.bytes_sent = stats.bytes_sent + other.bytes_sent;
        s.bytes_received = stats.bytes_received + other.bytes_received;
    });
    match result {
        Ok(r) => {
            info!(job = %job.job_id, sessions = r.sessions, "dealer done");
            handle.finish();
        }
        Err(e) => {
            warn!(job = %job.job_id, "dealer failed: {e}");
            handle.fail(e.to_string());
        }
    }
}

fn admit(job: &JobRequest) -> Result<DealParams, String> {
    if job.version != JOB_PROTOCOL_VERSION {
        return Err(format!("job protocol version {} is not supported", job.version));
    }
    config::check_name("job id", &job.job_id).map_err(|e| e.to_string())?;
    let p: DealParams = serde_json::from_str(&job.params).map_err(|e| format!("bad deal parameters: {e}"))?;
    if p.party != "A" && p.party != "B" {
        return Err("party must be A or B".into());
    }
    Ok(p)
}
