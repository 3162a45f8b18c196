//! A client of a node's control service over its Unix socket (used by the CLI and the SDK).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::config;
use crate::proto::control_client::ControlClient;
use crate::proto::{Empty, JobRef, JobStatus, LrRequest, NodeInfo, PsiRequest};

/// A connection to a running node's control socket.
#[derive(Clone)]
pub struct NodeClient {
    inner: ControlClient<Channel>,
}

impl NodeClient {
    /// Connects to the node running in `dir`.
    pub async fn connect(dir: &Path) -> Result<NodeClient> {
        let socket = config::absolute(&dir.join(config::CONTROL_SOCKET))?;
        if !socket.exists() {
            return Err(anyhow!(
                "no node is running in {} ({} does not exist; start one with `consort node {}`)",
                dir.display(),
                socket.display(),
                dir.display()
            ));
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
            .with_context(|| {
                format!("cannot connect to the node's control socket {} (is `consort node` running?)", socket.display())
            })?;
        Ok(NodeClient { inner: ControlClient::new(channel) })
    }

    pub async fn submit_psi(&self, request: PsiRequest) -> Result<String> {
        let r = self.inner.clone().submit_psi(request).await.map_err(status_error)?;
        Ok(r.into_inner().job_id)
    }

    pub async fn submit_lr(&self, request: LrRequest) -> Result<String> {
        let r = self.inner.clone().submit_lr(request).await.map_err(status_error)?;
        Ok(r.into_inner().job_id)
    }

    /// Streams status updates of a job until it is done or failed; `on_update` sees each one.
    pub async fn watch(&self, job_id: &str, mut on_update: impl FnMut(&JobStatus)) -> Result<JobStatus> {
        let mut stream =
            self.inner.clone().watch(JobRef { job_id: job_id.into() }).await.map_err(status_error)?.into_inner();
        let mut last = None;
        while let Some(status) = stream.message().await.map_err(status_error)? {
            on_update(&status);
            last = Some(status);
        }
        last.ok_or_else(|| anyhow!("the node sent no status for job {job_id}"))
    }

    pub async fn job(&self, job_id: &str) -> Result<JobStatus> {
        Ok(self.inner.clone().get_job(JobRef { job_id: job_id.into() }).await.map_err(status_error)?.into_inner())
    }

    pub async fn jobs(&self) -> Result<Vec<JobStatus>> {
        Ok(self.inner.clone().list_jobs(Empty {}).await.map_err(status_error)?.into_inner().jobs)
    }

    pub async fn reload(&self) -> Result<NodeInfo> {
        Ok(self.inner.clone().reload(Empty {}).await.map_err(status_error)?.into_inner())
    }

    pub async fn info(&self) -> Result<NodeInfo> {
        Ok(self.inner.clone().info(Empty {}).await.map_err(status_error)?.into_inner())
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}
