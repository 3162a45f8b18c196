//! A client of a node's control service over its Unix socket (used by the CLI and the SDK).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::CONTROL_SOCKET;
use crate::proto::control_client::ControlClient;
use crate::proto::{Empty, JobRef, JobStatus, NodeInfo, SubmitRequest};

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node runs in the directory (its control socket does not exist).
    #[error("no node is running in {dir} ({socket} does not exist; start one with `consort node {dir}`)")]
    NotRunning { dir: String, socket: String },
    #[error("cannot connect to the node's control socket {socket} (is `consort node` running?): {reason}")]
    Connect { socket: String, reason: String },
    /// The node answered with an error: its message, and the gRPC code (e.g. `PermissionDenied`
    /// for a missing grant, `InvalidArgument` for bad parameters).
    #[error("{message}")]
    Node { code: tonic::Code, message: String },
    #[error("the node sent no status for job {0}")]
    NoStatus(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Node { code: s.code(), message: s.message().to_string() }
    }
}

/// A connection to a running node's control socket.
#[derive(Clone)]
pub struct NodeClient {
    inner: ControlClient<Channel>,
}

impl NodeClient {
    /// Connects to the node running in `dir`.
    pub async fn connect(dir: &Path) -> Result<NodeClient, ClientError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let socket: PathBuf = dir.join(CONTROL_SOCKET);
        if !socket.exists() {
            return Err(ClientError::NotRunning {
                dir: dir.display().to_string(),
                socket: socket.display().to_string(),
            });
        }
        let path = socket.clone();
        // The URI is required by tonic but unused: the connector always dials the socket.
        let channel = Endpoint::from_static("http://consort.local")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .map_err(|e| ClientError::Connect { socket: socket.display().to_string(), reason: e.to_string() })?;
        Ok(NodeClient { inner: ControlClient::new(channel) })
    }

    /// Submits a job with this node as the requester; returns its id.
    pub async fn submit(&self, request: SubmitRequest) -> Result<String, ClientError> {
        Ok(self.inner.clone().submit(request).await?.into_inner().job_id)
    }

    /// Streams status updates of a job until it reaches a final state; `on_update` sees each one.
    pub async fn watch(&self, job_id: &str, mut on_update: impl FnMut(&JobStatus)) -> Result<JobStatus, ClientError> {
        let mut stream = self.inner.clone().watch(JobRef { job_id: job_id.into() }).await?.into_inner();
        let mut last = None;
        while let Some(status) = stream.message().await? {
            on_update(&status);
            last = Some(status);
        }
        last.ok_or_else(|| ClientError::NoStatus(job_id.to_string()))
    }

    pub async fn job(&self, job_id: &str) -> Result<JobStatus, ClientError> {
        Ok(self.inner.clone().get_job(JobRef { job_id: job_id.into() }).await?.into_inner())
    }

    pub async fn jobs(&self) -> Result<Vec<JobStatus>, ClientError> {
        Ok(self.inner.clone().list_jobs(Empty {}).await?.into_inner().jobs)
    }

    pub async fn reload(&self) -> Result<NodeInfo, ClientError> {
        Ok(self.inner.clone().reload(Empty {}).await?.into_inner())
    }

    pub async fn info(&self) -> Result<NodeInfo, ClientError> {
        Ok(self.inner.clone().info(Empty {}).await?.into_inner())
    }

    /// Approves (or denies, with a reason the requester is told) a job awaiting this node's
    /// approval.
    pub async fn decide(&self, job_id: &str, approve: bool, reason: &str) -> Result<JobStatus, ClientError> {
        let decision = crate::proto::Decision { job_id: job_id.into(), approve, reason: reason.into() };
        Ok(self.inner.clone().decide(decision).await?.into_inner())
    }

    /// Removes an interrupted job's resumable state; false if the node had none.
    pub async fn discard(&self, job_id: &str) -> Result<bool, ClientError> {
        let job = crate::proto::JobRef { job_id: job_id.into() };
        Ok(self.inner.clone().discard(job).await?.into_inner().removed)
    }
}
