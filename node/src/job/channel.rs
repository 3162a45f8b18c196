//! A job's stream of [`PeerFrame`]s as the protocol [`Channel`].
//!
//! Protocol frames travel as `PeerFrame::data`; the job envelope uses the other frame kinds
//! (request, accept, reject, end, abort) around the protocol. Outbound frames go through a bounded
//! queue (flow control); inbound frames come from any stream of frames: tonic's `Streaming` on a
//! node (whose HTTP/2 window bounds the rest), or an in-memory queue in tests ([`memory_pair`]),
//! so the envelope is tested without TLS.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use consort_api::proto::{Abort, PeerFrame, peer_frame::Kind};
use consort_protocols::{Channel, ChannelError};
use futures::{Stream, StreamExt};
use tokio::sync::{Mutex, mpsc};

use super::envelope::peer_text;

type Inbound = Pin<Box<dyn Stream<Item = Result<PeerFrame, tonic::Status>> + Send>>;

/// How long a side whose send failed waits for the peer's `Abort` among the frames left inbound.
const ABORT_WAIT: Duration = Duration::from_secs(2);

pub struct JobChannel {
    tx: mpsc::Sender<PeerFrame>,
    rx: Mutex<Inbound>,
    /// A peer that sends nothing for this long fails the job (it may be stalling on purpose).
    idle: Duration,
}

impl JobChannel {
    pub fn new(
        tx: mpsc::Sender<PeerFrame>,
        rx: impl Stream<Item = Result<PeerFrame, tonic::Status>> + Send + 'static,
        idle: Duration,
    ) -> Self {
        Self { tx, rx: Mutex::new(Box::pin(rx)), idle }
    }

    /// Sends a job-layer frame. When the peer has gone, the error is its `Abort` if one is waiting
    /// inbound ([`Self::abort_left`]), so a side that was sending when its peer failed reports the
    /// peer's reason, as a side that was receiving does, not a bare "closed".
    pub async fn send_kind(&self, kind: Kind) -> Result<(), ChannelError> {
        match self.tx.send(PeerFrame { kind: Some(kind) }).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.abort_left().await.unwrap_or(ChannelError::Closed)),
        }
    }

    /// The peer's `Abort`, if it sent one before its stream ended: reads (and drops) what is left
    /// inbound for at most [`ABORT_WAIT`]. None if the inbound stream is being read elsewhere (that
    /// reader gets the `Abort` itself), ends without one, or stays open.
    async fn abort_left(&self) -> Option<ChannelError> {
        let mut rx = self.rx.try_lock().ok()?;
        let drain = async {
            while let Some(frame) = rx.next().await {
                if let Ok(PeerFrame { kind: Some(Kind::Abort(a)) }) = frame {
                    return Some(ChannelError::Aborted(peer_text(&a.reason)));
                }
                if frame.is_err() {
                    return None;
                }
            }
            None
        };
        tokio::time::timeout(ABORT_WAIT, drain).await.ok().flatten()
    }

    /// Tells the peer this side failed. Best effort: the peer may already be gone.
    pub async fn abort(&self, reason: &str) {
        // Not `send_kind`: a side that is failing has no use for the peer's own `Abort`.
        let _ = self.tx.send(PeerFrame { kind: Some(Kind::Abort(Abort { reason: reason.to_string() })) }).await;
    }

    /// Receives the next frame of any kind; an `Abort` from the peer becomes an error.
    pub async fn recv_kind(&self) -> Result<Kind, ChannelError> {
        self.recv_within(self.idle).await
    }

    /// [`recv_kind`](Self::recv_kind) with its own silence bound (a job waiting for an approval
    /// hears nothing from its peer for hours).
    pub async fn recv_within(&self, idle: std::time::Duration) -> Result<Kind, ChannelError> {
        let mut rx = self.rx.lock().await;
        loop {
            let next = tokio::time::timeout(idle, rx.next())
                .await
                .map_err(|_| ChannelError::Transport(format!("the peer sent nothing for {} s", idle.as_secs())))?;
            match next {
                Some(Ok(PeerFrame { kind: Some(Kind::Abort(a)) })) => {
                    return Err(ChannelError::Aborted(peer_text(&a.reason)));
                }
                Some(Ok(PeerFrame { kind: Some(kind) })) => return Ok(kind),
                Some(Ok(PeerFrame { kind: None })) => continue,
                None => return Err(ChannelError::Closed),
                Some(Err(status)) => return Err(status_error(status)),
            }
        }
    }
}

fn status_error(status: tonic::Status) -> ChannelError {
    match status.code() {
        tonic::Code::Cancelled | tonic::Code::Unavailable => ChannelError::Closed,
        _ => ChannelError::Transport(peer_text(status.message())),
    }
}

impl Channel for JobChannel {
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
        Kind::Waiting(_) => "waiting",
    }
}

/// Two connected job channels in memory (tests of the envelope and the kinds).
pub fn memory_pair(buffer: usize) -> (JobChannel, JobChannel) {
    memory_pair_idle(buffer, Duration::from_secs(600))
}

/// [`memory_pair`] whose ends give up on a silent peer after `idle`.
pub fn memory_pair_idle(buffer: usize, idle: Duration) -> (JobChannel, JobChannel) {
    let (a_tx, a_rx) = mpsc::channel(buffer);
    let (b_tx, b_rx) = mpsc::channel(buffer);
    let inbound = |rx| tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<PeerFrame, tonic::Status>);
    (JobChannel::new(a_tx, inbound(b_rx), idle), JobChannel::new(b_tx, inbound(a_rx), idle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A side that was sending when its peer aborted and went away reports the peer's reason
    /// (the frames before the `Abort` are dropped); without an `Abort` it is "closed"; a side
    /// whose inbound stream is being read elsewhere leaves the `Abort` to that reader.
    #[tokio::test]
    async fn a_send_to_a_peer_that_aborted_and_left_reports_its_reason() {
        let (a, b) = memory_pair(4);
        b.send(Bytes::from_static(b"frame")).await.unwrap();
        b.send(Bytes::from_static(b"frame")).await.unwrap();
        b.abort("the peer's input failed its checks").await;
        drop(b);
        assert_eq!(
            a.send(Bytes::from_static(b"x")).await,
            Err(ChannelError::Aborted("the peer's input failed its checks".into()))
        );

        let (a, b) = memory_pair(4);
        b.send(Bytes::from_static(b"frame")).await.unwrap();
        drop(b);
        assert_eq!(a.send(Bytes::from_static(b"x")).await, Err(ChannelError::Closed));

        let (a, b) = memory_pair(4);
        b.abort("why").await;
        drop(b);
        let held = a.rx.lock().await;
        assert_eq!(a.send(Bytes::from_static(b"x")).await, Err(ChannelError::Closed));
        drop(held);
        assert_eq!(a.recv().await, Err(ChannelError::Aborted("why".into())));
    }

    /// A peer's abort reason is its own text: a megabyte of it, with line breaks and terminal
    /// escapes, reaches this side's error (and so its log, job table and the CLI) cut to
    /// `MAX_REASON_CHARS` with no control character, on the receive and on the send path.
    #[tokio::test]
    async fn a_peers_abort_reason_is_cut_and_cleaned() {
        use super::super::envelope::MAX_REASON_CHARS;
        let hostile = format!("fake\n2026-12-05 INFO job done\x1b[2J{}", "x".repeat(1 << 20));
        let check = |e: Result<_, ChannelError>| {
            let Err(ChannelError::Aborted(r)) = e else { panic!("not an abort: {e:?}") };
            assert!(r.chars().count() <= MAX_REASON_CHARS, "{} chars", r.chars().count());
            assert!(!r.chars().any(char::is_control), "{r:?}");
            assert!(r.starts_with("fake\u{FFFD}2026-12-05 INFO job done\u{FFFD}[2J"), "{r:?}");
            assert!(r.ends_with(&format!("… ({} bytes in all)", hostile.len())), "{r:?}");
        };
        let (a, b) = memory_pair(4);
        b.abort(&hostile).await;
        check(a.recv().await.map(|_| ()));
        let (a, b) = memory_pair(4);
        b.abort(&hostile).await;
        drop(b);
        check(a.send(Bytes::from_static(b"x")).await);
        // A short reason keeps every printable character.
        let (a, b) = memory_pair(4);
        b.abort("bad label «2» at row 7\tend").await;
        assert_eq!(a.recv().await, Err(ChannelError::Aborted("bad label «2» at row 7\u{FFFD}end".into())));
    }
}
