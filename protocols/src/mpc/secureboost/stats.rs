//! Per-tree cost figures: a byte-counting view of the job's channel (no digest: the node's own
//! `Metered` channel keeps the transcript) and the wall time and bytes of the setup and of each
//! tree, for the job report.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::channel::{Channel, ChannelError};

/// Wall seconds and bytes each way of one phase (the setup, or one tree).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhaseStats {
    pub seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Counts the bytes of every frame sent and received through it.
pub(super) struct Counted<'a, C> {
    inner: &'a C,
    sent: AtomicU64,
    received: AtomicU64,
}

impl<'a, C: Channel> Counted<'a, C> {
    pub(super) fn new(inner: &'a C) -> Self {
        Self { inner, sent: AtomicU64::new(0), received: AtomicU64::new(0) }
    }

    /// A mark to measure the next phase from.
    pub(super) fn mark(&self) -> Mark {
        Mark {
            at: Instant::now(),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }

    /// What the phase begun at `mark` took.
    pub(super) fn since(&self, mark: &Mark) -> PhaseStats {
        PhaseStats {
            seconds: mark.at.elapsed().as_secs_f64(),
            bytes_sent: self.sent.load(Ordering::Relaxed) - mark.sent,
            bytes_received: self.received.load(Ordering::Relaxed) - mark.received,
        }
    }
}

/// Where a phase began: time and byte counts.
pub(super) struct Mark {
    at: Instant,
    sent: u64,
    received: u64,
}

impl<C: Channel> Channel for Counted<'_, C> {
    async fn send(&self, frame: Bytes) -> Result<(), ChannelError> {
        let len = frame.len() as u64;
        self.inner.send(frame).await?;
        self.sent.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    async fn recv(&self) -> Result<Bytes, ChannelError> {
        let frame = self.inner.recv().await?;
        self.received.fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(frame)
    }
}
