//! The peer service: takes a job stream from a pinned peer and hands it to the envelope.

use std::pin::Pin;
use std::sync::Arc;

use consort_api::proto::PeerFrame;
use consort_api::proto::peer_frame::Kind;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::channel::JobChannel;
use super::envelope::{MAX_REQUEST_BYTES, REQUEST_TIMEOUT};
use crate::FRAME_BUFFER;
use crate::state::NodeState;
use crate::tls::PeerInfo;

pub struct PeerService {
    state: Arc<NodeState>,
}

impl PeerService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<PeerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl consort_api::proto::peer_server::Peer for PeerService {
    type RunJobStream = FrameStream;

    async fn run_job(&self, request: Request<Streaming<PeerFrame>>) -> Result<Response<FrameStream>, Status> {
        // The caller is the peer whose pinned certificate its TLS connection presented.
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("connection has no pinned peer identity"))?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REQUEST_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no job request received"))??;
        let Some(PeerFrame { kind: Some(Kind::Request(job)) }) = first else {
            return Err(Status::invalid_argument("the first frame of a job must be a job request"));
        };
        if prost::Message::encoded_len(&job) > MAX_REQUEST_BYTES {
            tracing::warn!(peer = %peer.name, "refused a job request over {MAX_REQUEST_BYTES} bytes");
            self.state.refusals.note(&peer.name);
            return Err(Status::resource_exhausted(format!("a job request is at most {MAX_REQUEST_BYTES} bytes")));
        }
        let (tx, rx) = mpsc::channel(FRAME_BUFFER);
        let state = self.state.clone();
        self.state.spawn_job(async move {
            let channel = JobChannel::new(tx, inbound, state.config().limits.peer_idle());
            super::envelope::respond(state, peer, job, channel).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}
