//! The protocol [`Channel`] over a gRPC bidirectional stream of [`PeerFrame`]s.
//!
//! Protocol frames travel as `PeerFrame::data`; the job layer uses the other frame kinds (request,
//! accept, end, abort) around the protocol. Outbound frames go through a bounded queue (flow
//! control), inbound frames come from tonic's `Streaming`, whose HTTP/2 window bounds the rest.

use bytes::Bytes;
use consort_protocols::{Channel, ChannelError};
use tokio::sync::{Mutex, mpsc};
use tonic::Streaming;

use crate::proto::{Abort, PeerFrame, peer_frame::Kind};

pub struct GrpcChannel {
    tx: mpsc::Sender<PeerFrame>,
    rx: Mutex<Streaming<PeerFrame>>,
}

impl GrpcChannel {
    pub fn new(tx: mpsc::Sender<PeerFrame>, rx: Streaming<PeerFrame>) -> Self {
        Self { tx, rx: Mutex::new(rx) }
    }

    /// Sends a job-layer frame.
    pub async fn send_kind(&self, kind: Kind) -> Result<(), ChannelError> {
        self.tx.send(PeerFrame { kind: Some(kind) }).await.map_err(|_| ChannelError::Closed)
    }

    /// Tells the peer this side failed. Best effort: the peer may already be gone.
    pub async fn abort(&self, reason: &str) {
        let _ = self.send_kind(Kind::Abort(Abort { reason: reason.to_string() })).await;
    }

    /// Receives the next frame of any kind; an `Abort` from the peer becomes an error.
    pub async fn recv_kind(&self) -> Result<Kind, ChannelError> {
        let mut rx = self.rx.lock().await;
        loop {
            match rx.message().await {
                Ok(Some(PeerFrame { kind: Some(Kind::Abort(a)) })) => return Err(ChannelError::Aborted(a.reason)),
                Ok(Some(PeerFrame { kind: Some(kind) })) => return Ok(kind),
                Ok(Some(PeerFrame { kind: None })) => continue,
                Ok(None) => return Err(ChannelError::Closed),
                Err(status) => return Err(status_error(status)),
            }
        }
    }
}

fn status_error(status: tonic::Status) -> ChannelError {
    match status.code() {
        tonic::Code::Cancelled | tonic::Code::Unavailable => ChannelError::Closed,
        _ => ChannelError::Transport(status.message().to_string()),
    }
}

impl Channel for GrpcChannel {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        self.send_kind(Kind::Data(frame)).await
    }

    async fn recv(&self) -> Result<Bytes, ChannelError> {
        match self.recv_kind().await? {
            Kind::Data(frame) => Ok(frame),
            other => {
                Err(ChannelError::Transport(format!("unexpected {} frame during the protocol", kind_name(&other))))
            }
        }
    }
}

pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Request(_) => "job request",
        Kind::Accept(_) => "accept",
        Kind::Reject(_) => "reject",
        Kind::Data(_) => "data",
        Kind::End(_) => "end",
        Kind::Abort(_) => "abort",
    }
}
