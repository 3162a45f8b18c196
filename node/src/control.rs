//! The control service: the local operator's API (Unix socket DIR/control.sock, mode 0600, inside a
//! 0700 node directory, so only the node's OS user can reach it).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use consort_engine::PsiProtocol;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::jobs;
use crate::node::NodeState;
use crate::peer::{self, PsiParams};
use crate::proto::{Empty, JobList, JobRef, JobStatus, LrRequest, NodeInfo, PsiRequest};

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

    fn job(&self, id: &str) -> Result<Arc<jobs::JobHandle>, Status> {
        self.state.jobs.get(id).ok_or_else(|| Status::not_found(format!("no job '{id}' on this node")))
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl crate::proto::control_server::Control for ControlService {
    async fn submit_psi(&self, request: Request<PsiRequest>) -> Result<Response<JobRef>, Status> {
        let r = request.into_inner();
        let protocol: PsiProtocol = r.protocol.parse().map_err(Status::invalid_argument)?;
        let reveal = peer::parse_reveal(&r.reveal).map_err(Status::invalid_argument)?;
        let config = self.state.config();
        config.peer(&r.peer).map_err(|e| Status::failed_precondition(e.to_string()))?;
        let entry = config.dataset(&r.dataset).map_err(|e| Status::failed_precondition(e.to_string()))?;
        if let Some(refusal) = entry.refusal(&r.peer, "psi") {
            return Err(Status::permission_denied(format!(
                "{refusal} (grant it with `consort dataset add ... --grant {}`)",
                r.peer
            )));
        }
        let out = if r.out.is_empty() {
            None
        } else {
            let p = PathBuf::from(&r.out);
            if !p.is_absolute() {
                return Err(Status::invalid_argument("the output path must be absolute"));
            }
            Some(p)
        };
        let job_id = jobs::new_job_id();
        let status = JobStatus {
            job_id: job_id.clone(),
            kind: "psi".into(),
            protocol: protocol.name().into(),
            role: "requester".into(),
            peer: r.peer.clone(),
            dataset: r.dataset.clone(),
            reveal: peer::reveal_name(reveal).into(),
            state: jobs::PENDING.into(),
            ..Default::default()
        };
        let handle = self.state.jobs.insert(status).ok_or_else(|| Status::internal("job id collision"))?;
        let params =
            PsiParams { peer: r.peer, dataset: r.dataset, peer_dataset: r.peer_dataset, protocol, reveal, out };
        self.state.spawn_job(peer::request_psi(self.state.clone(), handle, params));
        Ok(Response::new(JobRef { job_id }))
    }

    async fn submit_lr(&self, request: Request<LrRequest>) -> Result<Response<JobRef>, Status> {
        let job_id = crate::lr_job::submit(&self.state, request.into_inner())?;
        Ok(Response::new(JobRef { job_id }))
    }

    type WatchStream = StatusStream;

    async fn watch(&self, request: Request<JobRef>) -> Result<Response<StatusStream>, Status> {
        let mut rx = self.job(&request.into_inner().job_id)?.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                let status = rx.borrow_and_update().clone();
                let done = jobs::is_final(&status.state);
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
