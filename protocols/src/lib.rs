//! consort's cryptographic protocols.
//!
//! Pure protocol logic over a byte [`channel::Channel`]: no files, no sockets, no async runtime.
//! Each protocol module opens with what it computes, what each party learns, its security model
//! and the paper it follows. Every protocol is tested against a plaintext computation over
//! [`channel::memory_pair`].

pub mod channel;
pub mod cpu;
pub mod dleq;
pub mod he;
pub mod items;
pub mod mem;
pub mod merkle;
pub mod mpc;
pub mod okvs;
pub mod ot;
pub mod psi;
pub mod simd;
#[cfg(test)]
mod test_support;
pub mod vole;

pub use channel::{Channel, ChannelError, ChannelStats, Metered, TRANSCRIPT_DIGEST, memory_pair};
pub use items::Items;
pub use psi::{ProgressFn, PsiOutput, PsiProgress, Reveal, Role};
