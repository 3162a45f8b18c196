//! The byte `Channel` every two-party protocol is written against.
//!
//! A channel is ordered, reliable and framed: frames arrive in the order they were sent, whole and
//! unmodified, between exactly two parties. Protocols never see sockets, files or runtimes; the node
//! plugs a gRPC bidirectional stream in, tests and the SDK's in-process mode use [`memory_pair`].
//!
//! `send` and `recv` take `&self` so that one task can stream frames out while another reads frames
//! in on the same channel (protocols are written so that neither direction waits on the other,
//! which keeps bounded buffers from deadlocking).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, mpsc};

/// Why a channel could not deliver a frame.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// The other party closed the channel (or its process went away) before the protocol ended.
    #[error("the peer closed the channel before the protocol finished")]
    Closed,
    /// The other party aborted the job and said why.
    #[error("the peer aborted: {0}")]
    Aborted(String),
    /// The transport failed (network error, TLS error, oversized frame...).
    #[error("transport error: {0}")]
    Transport(String),
}

/// An ordered, reliable, framed byte channel to exactly one peer.
pub trait Channel: Send + Sync {
    /// Sends one frame. Waits while the transport's buffers are full (this is the flow control
    /// that bounds memory).
    fn send(&self, frame: Bytes) -> impl Future<Output = Result<(), ChannelError>> + Send;
    /// Receives the next frame from the peer.
    fn recv(&self) -> impl Future<Output = Result<Bytes, ChannelError>> + Send;
}

impl<C: Channel> Channel for &C {
    fn send(&self, frame: Bytes) -> impl Future<Output = Result<(), ChannelError>> + Send {
        (**self).send(frame)
    }
    fn recv(&self) -> impl Future<Output = Result<Bytes, ChannelError>> + Send {
        (**self).recv()
    }
}

/// One end of an in-memory channel pair (tests, SDK in-process mode, benchmarks of pure protocol cost).
pub struct MemoryChannel {
    tx: mpsc::Sender<Bytes>,
    rx: Mutex<mpsc::Receiver<Bytes>>,
}

/// Two connected in-memory channel ends. `capacity` frames may be in flight per direction before
/// `send` waits.
pub fn memory_pair(capacity: usize) -> (MemoryChannel, MemoryChannel) {
    let (a_tx, b_rx) = mpsc::channel(capacity.max(1));
    let (b_tx, a_rx) = mpsc::channel(capacity.max(1));
    (MemoryChannel { tx: a_tx, rx: Mutex::new(a_rx) }, MemoryChannel { tx: b_tx, rx: Mutex::new(b_rx) })
}

impl Channel for MemoryChannel {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        self.tx.send(frame).await.map_err(|_| ChannelError::Closed)
    }
    async fn recv(&self) -> Result<Bytes, ChannelError> {
        self.rx.lock().await.recv().await.ok_or(ChannelError::Closed)
    }
}

/// Byte and frame counts of a [`Metered`] channel, plus the running transcript digests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// SHA-256 over every frame sent, in order, each prefixed by its length (u64 big-endian).
    pub sent_digest: [u8; 32],
    /// SHA-256 over every frame received, in order, each prefixed by its length (u64 big-endian).
    pub received_digest: [u8; 32],
}

#[derive(Default)]
struct Counters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
}

/// Wraps a channel to count bytes and frames per direction and keep a running SHA-256 transcript of
/// each direction (the audit evidence gets it for free). Both parties' digests of the same direction
/// agree when nothing was altered in transit.
pub struct Metered<C> {
    inner: C,
    counters: Arc<Counters>,
    sent: std::sync::Mutex<Sha256>,
    received: std::sync::Mutex<Sha256>,
}

impl<C: Channel> Metered<C> {
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            counters: Arc::default(),
            sent: std::sync::Mutex::new(Sha256::new()),
            received: std::sync::Mutex::new(Sha256::new()),
        }
    }

    /// Counts and digests so far.
    pub fn stats(&self) -> ChannelStats {
        let c = &self.counters;
        ChannelStats {
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            sent_digest: lock(&self.sent).clone().finalize().into(),
            received_digest: lock(&self.received).clone().finalize().into(),
        }
    }

    /// A cheap live view of the byte counters (for progress displays while the protocol runs).
    pub fn byte_counter(&self) -> ByteCounter {
        ByteCounter(self.counters.clone())
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }
}

fn lock(m: &std::sync::Mutex<Sha256>) -> std::sync::MutexGuard<'_, Sha256> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn absorb(m: &std::sync::Mutex<Sha256>, frame: &[u8]) {
    let mut h = lock(m);
    h.update((frame.len() as u64).to_be_bytes());
    h.update(frame);
}

/// Live byte counts of a [`Metered`] channel: `(sent, received)`.
#[derive(Clone)]
pub struct ByteCounter(Arc<Counters>);

impl ByteCounter {
    pub fn get(&self) -> (u64, u64) {
        (self.0.bytes_sent.load(Ordering::Relaxed), self.0.bytes_received.load(Ordering::Relaxed))
    }
}

impl<C: Channel> Channel for Metered<C> {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        // Digest in send order: the digest is updated before the frame can be overtaken.
        absorb(&self.sent, &frame);
        let len = frame.len() as u64;
        self.inner.send(frame).await?;
        self.counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
        self.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn recv(&self) -> Result<Bytes, ChannelError> {
        let frame = self.inner.recv().await?;
        absorb(&self.received, &frame);
        self.counters.bytes_received.fetch_add(frame.len() as u64, Ordering::Relaxed);
        self.counters.frames_received.fetch_add(1, Ordering::Relaxed);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_pair_delivers_in_order_both_ways() {
        let (a, b) = memory_pair(2);
        let a = Metered::new(a);
        let b = Metered::new(b);
        let sender = async {
            for i in 0..100u32 {
                a.send(Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
            }
        };
        let receiver = async {
            for i in 0..100u32 {
                let f = b.recv().await.unwrap();
                assert_eq!(&f[..], &i.to_be_bytes());
            }
        };
        futures::join!(sender, receiver);
        b.send(Bytes::from_static(b"back")).await.unwrap();
        assert_eq!(&a.recv().await.unwrap()[..], b"back");
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.bytes_sent, 400);
        assert_eq!(sb.bytes_received, 400);
        assert_eq!(sa.frames_sent, 100);
        assert_eq!(sa.sent_digest, sb.received_digest);
        assert_eq!(sa.received_digest, sb.sent_digest);
        assert_ne!(sa.sent_digest, sa.received_digest);
    }

    #[tokio::test]
    async fn dropped_peer_is_reported_as_closed() {
        let (a, b) = memory_pair(1);
        drop(b);
        assert_eq!(a.recv().await, Err(ChannelError::Closed));
        assert_eq!(a.send(Bytes::new()).await, Err(ChannelError::Closed));
    }
}
