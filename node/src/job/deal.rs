//! `deal` jobs: this node as the dealer of a `train` job ([`consort_protocols::mpc::dealer`]),
//! supplying the matrix-product correlations instead of the dealer-free OT generation.
//!
//! Explicit opt-in: the bank names the dealer (`consort train --dealer NAME`) and the partner must
//! have pinned a node of that name too, else it refuses the train job. Each party then opens its
//! own `deal` job to the dealer (job id `TRAIN.deal-a` / `TRAIN.deal-b`, so the dealer's ids stay
//! unique) naming the train job; the dealer pairs the two by train job, checks that one is party A
//! and the other party B and that each names the other (names as the dealer pinned them: use the
//! same names on all three nodes), and runs the dealer. Each stream goes through the envelope like
//! any job: request, grant, start, transcript and end in the dealer's audit log. The dealer sees
//! only the shapes; it must not collude with either party (see the protocol module).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::anyhow;
use consort_api::JobKind;
use consort_engine::PsiProtocol;
use consort_protocols::mpc::dealer::run_dealer;
use consort_protocols::{Metered, Reveal};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Ask, Failure, Job, JobChannel, Kind, Outcome, RunCtx};
use crate::config;
use crate::state::NodeState;

/// How long the dealer waits for the second party of a train job.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Party {
    A,
    B,
}

/// A deal job's parameters on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DealParams {
    pub party: Party,
    /// The other party, as the caller names it.
    pub peer: String,
    /// The train job this deal serves.
    pub train_job: String,
}

/// The id of party `party`'s deal job for train job `train_job`.
pub fn deal_job_id(train_job: &str, party: Party) -> String {
    format!("{train_job}.deal-{}", if party == Party::A { "a" } else { "b" })
}

pub struct Deal;

impl Kind for Deal {
    fn kind(&self) -> JobKind {
        JobKind::Deal
    }

    fn uses_dataset(&self) -> bool {
        false
    }

    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        if ask.role != consort_protocols::Role::Responder {
            return Err("deal jobs are opened by the parties of a train job".into());
        }
        let p: DealParams = serde_json::from_str(&ask.params).map_err(|e| format!("bad deal parameters: {e}"))?;
        config::check_name("train job id", &p.train_job).map_err(|_| "invalid train job id".to_string())?;
        if ask.job_id != deal_job_id(&p.train_job, p.party) {
            return Err("the deal job's id does not match its train job and party".into());
        }
        if state.config().peer(&p.peer).is_err() {
            return Err("the other party of the train job is not pinned at the dealer".into());
        }
        Ok(Box::new(DealPlan { params: p }))
    }
}

struct DealPlan {
    params: DealParams,
}

/// One party's stream waiting for the other: (node directory, train job) → waiting party.
struct Waiting {
    party: Party,
    name: String,
    claimed_peer: String,
    channel: Arc<Metered<JobChannel>>,
    /// The second party's task runs the dealer on both streams and reports here.
    done: oneshot::Sender<Result<(), String>>,
}

type WaitingMap = Mutex<HashMap<(PathBuf, String), Waiting>>;

fn waiting() -> &'static WaitingMap {
    static MAP: OnceLock<WaitingMap> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

#[tonic::async_trait]
impl Job for DealPlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        None
    }

    fn wire_params(&self) -> String {
        serde_json::to_string(&self.params).expect("parameters serialize")
    }

    fn audited(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let key = (ctx.state.dir.clone(), self.params.train_job.clone());
        ctx.handle.stage("waiting for the other party", 0, 0);
        let (done, result) = oneshot::channel();
        let me = Waiting {
            party: self.params.party,
            name: ctx.ask.peer.clone(),
            claimed_peer: self.params.peer.clone(),
            channel: ctx.channel.clone(),
            done,
        };
        let first = {
            let mut map = waiting().lock().unwrap_or_else(|p| p.into_inner());
            let first = map.remove(&key);
            if first.is_none() {
                map.insert(key.clone(), me);
            }
            first
        };
        let Some(first) = first else {
            return wait_for_partner(key, result).await;
        };
        let me = (self.params.party, ctx.ask.peer.clone(), self.params.peer.clone());
        let consistent = first.party != me.0 && first.claimed_peer == me.1 && me.2 == first.name;
        if !consistent {
            let reason = "the two deal requests do not pair up (one party A and one party B naming each other)";
            let _ = first.done.send(Err(reason.into()));
            return Err(Failure::shared(anyhow!(reason)));
        }
        ctx.handle.stage("deal", 0, 0);
        let (a, b) = if first.party == Party::A {
            (first.channel.clone(), ctx.channel.clone())
        } else {
            (ctx.channel.clone(), first.channel.clone())
        };
        let result = run_dealer(&*a, &*b).await.map(|_| ()).map_err(|e| e.to_string());
        let _ = first.done.send(result.clone());
        result.map_err(|e| Failure::shared(anyhow!(e)))?;
        Ok(Outcome::default())
    }
}

/// The first party's side: waits until the second arrives and the dealer has run on both streams.
async fn wait_for_partner(
    key: (PathBuf, String),
    result: oneshot::Receiver<Result<(), String>>,
) -> Result<Outcome, Failure> {
    let mut result = result;
    let outcome = match tokio::time::timeout(PAIRING_TIMEOUT, &mut result).await {
        Ok(r) => r,
        Err(_) => {
            let stale = waiting().lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            if stale.is_some() {
                return Err(Failure::shared(anyhow!("the other party of the train job never reached the dealer")));
            }
            // The partner arrived just now and is dealing.
            result.await
        }
    };
    match outcome {
        Ok(Ok(())) => Ok(Outcome::default()),
        Ok(Err(reason)) => Err(Failure::shared(anyhow!(reason))),
        Err(_) => Err(Failure::shared(anyhow!("the dealer stopped before the deal ended"))),
    }
}
