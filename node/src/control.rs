//! The control service: the local operator's API (Unix socket DIR/control.sock, mode 0600, inside a
//! 0700 node directory, so only the node's OS user can reach it).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::job::JobHandle;
use crate::policy::Verdict;
use crate::proto::{Decision, Discarded, Empty, JobList, JobRef, JobStatus, NodeInfo, SubmitRequest};
use crate::state::NodeState;

pub struct ControlService {
    state: Arc<NodeState>,
}

impl ControlService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }

    fn info(&self) -> NodeInfo {
        let config = self.state.config();
        NodeInfo {
            name: config.name.clone(),
            listen: self.state.listen_addr.to_string(),
            peers: config.peers.iter().map(|p| p.name.clone()).collect(),
            datasets: config.datasets.iter().map(|d| d.spec.name.clone()).collect(),
        }
    }

    fn job(&self, id: &str) -> Result<Arc<JobHandle>, Status> {
        self.state.jobs.get(id).ok_or_else(|| Status::not_found(format!("no job '{id}' on this node")))
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl crate::proto::control_server::Control for ControlService {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<JobRef>, Status> {
        let job_id = crate::job::envelope::submit(&self.state, request.into_inner()).await?;
        Ok(Response::new(JobRef { job_id }))
    }

    type WatchStream = StatusStream;

    async fn watch(&self, request: Request<JobRef>) -> Result<Response<StatusStream>, Status> {
        let mut rx = self.job(&request.into_inner().job_id)?.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                let status = rx.borrow_and_update().clone();
                let done = status.job_state().is_final();
                if tx.send(Ok(status)).await.is_err() || done {
                    break;
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn get_job(&self, request: Request<JobRef>) -> Result<Response<JobStatus>, Status> {
        Ok(Response::new(self.job(&request.into_inner().job_id)?.status()))
    }

    async fn list_jobs(&self, _: Request<Empty>) -> Result<Response<JobList>, Status> {
        Ok(Response::new(JobList { jobs: self.state.jobs.list() }))
    }

    async fn reload(&self, _: Request<Empty>) -> Result<Response<NodeInfo>, Status> {
        self.state.reload().map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(self.info()))
    }

    async fn discard(&self, request: Request<JobRef>) -> Result<Response<Discarded>, Status> {
        let job = request.into_inner().job_id;
        let removed = crate::job::resume::discard_logged(&self.state.dir, &self.state.audit, &job)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(Discarded { removed }))
    }

    async fn decide(&self, request: Request<Decision>) -> Result<Response<JobStatus>, Status> {
        let d = request.into_inner();
        let handle = self.job(&d.job_id)?;
        if handle.status().job_state() != consort_api::JobState::AwaitingApproval {
            return Err(Status::failed_precondition(format!(
                "job {} does not await approval (state {})",
                d.job_id,
                handle.status().job_state()
            )));
        }
        let verdict = if d.approve {
            Verdict::Approve
        } else if d.reason.is_empty() {
            Verdict::Deny("no reason given".into())
        } else {
            Verdict::Deny(d.reason)
        };
        if !self.state.approvals.decide(&d.job_id, verdict) {
            return Err(Status::failed_precondition(format!("job {} no longer awaits approval", d.job_id)));
        }
        // The job records the decision; report its state once it has.
        let mut rx = handle.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while rx.borrow_and_update().job_state() == consort_api::JobState::AwaitingApproval {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        Ok(Response::new(handle.status()))
    }

    async fn info(&self, _: Request<Empty>) -> Result<Response<NodeInfo>, Status> {
        Ok(Response::new(self.info()))
    }
}

/// A response stream fed by a task (status updates are coalesced by the watch channel, so a slow
/// reader sees the latest status rather than a backlog).
fn async_stream<F, Fut>(body: F) -> StatusStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<JobStatus, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
