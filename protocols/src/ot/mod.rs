//! Oblivious transfer: base OT, IKNP/KOS OT extension, and the kernels they run on.
//!
//! The layer the RR22-class PSI (and the silent VOLE under it) is built on. Layout, bottom up:
//!
//! - [`aes_hash`]: fixed-key AES as a random permutation π, and the hash functions built from it
//!   (Guo–Katz–Wang–Yu 2020); an AES-CTR PRG for seed expansion.
//! - [`gf128`]: arithmetic in GF(2^128) (the KOS consistency check; later, VOLE).
//! - [`transpose`]: the 128 × n bit-matrix transpose at the heart of IKNP.
//! - [`base`]: 128 "public-key" OTs on ristretto255 (Masny–Rindal 2019).
//! - [`extension`]: IKNP (2003) OT extension with the optional KOS (2015) consistency check,
//!   producing correlated (Δ-)OTs and random OTs in any number.
//!
//! Conventions shared by all modules:
//!
//! - A *block* is a `u128`. Where a block meets bytes (AES, the wire, hashes) it is encoded
//!   little-endian, so bit `i` of the `u128` is bit `i % 8` of byte `i / 8`.
//! - Bit vectors are packed LSB-first: bit `i` is bit `i % 8` of byte `i / 8` ([`ChoiceBits`]).
//! - Every secret the layer holds (keys, seeds, Δ, choice bits, OT outputs) is zeroized when
//!   dropped; output types therefore hand out borrows rather than fields.
//! - Randomness comes from the operating system's CSPRNG (directly, or through an AES-CTR PRG
//!   keyed from it). Like `rand::rng()`, a failing OS generator is a panic, not an error: there
//!   is nothing a caller could do about it.

pub mod aes_hash;
pub mod base;
pub mod extension;
pub mod gf128;
pub mod transpose;

use rand::TryRng;
use rand::rngs::SysRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::channel::ChannelError;

pub use base::{BaseOtReceiverOutput, BaseOtSenderOutput};
pub use extension::{
    CorrelatedReceiverOutput, CorrelatedSenderOutput, IknpReceiver, IknpSender, RandomReceiverOutput,
    RandomSenderOutput, Security,
};

/// Why an OT protocol run failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OtError {
    /// The channel failed (the peer went away, aborted, or the transport broke).
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The peer sent something this protocol does not allow (wrong frame, size, or encoding), or
    /// the two parties disagree on parameters (count, security mode).
    #[error("OT protocol violation: {0}")]
    Protocol(String),
    /// The KOS consistency check failed: the OT extension receiver did not follow the protocol.
    /// The sender refuses any further extension with the same setup.
    #[error("the OT extension consistency check failed: the receiver deviated from the protocol")]
    ConsistencyCheck,
    /// This extension sender failed a consistency check earlier; its Δ may be partly known to the
    /// receiver, so it must not be used again (run a new setup).
    #[error("this OT extension sender failed a consistency check earlier and cannot be reused")]
    Aborted,
}

pub(crate) fn protocol(message: impl Into<String>) -> OtError {
    OtError::Protocol(message.into())
}

/// A packed vector of secret bits (choice bits): bit `i` is bit `i % 8` of byte `i / 8`; bits past
/// `len` in the last byte are zero. Zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ChoiceBits {
    bytes: Vec<u8>,
    len: usize,
}

impl ChoiceBits {
    /// `len` bits from the packed `bytes` (extra bytes are dropped, bits past `len` cleared).
    ///
    /// # Panics
    ///
    /// If `bytes` holds fewer than `len` bits.
    pub fn from_bytes(mut bytes: Vec<u8>, len: usize) -> Self {
        assert!(bytes.len() * 8 >= len, "{} bytes cannot hold {len} bits", bytes.len());
        bytes.truncate(len.div_ceil(8));
        if !len.is_multiple_of(8) {
            let last = bytes.len() - 1;
            bytes[last] &= (1u8 << (len % 8)) - 1;
        }
        Self { bytes, len }
    }

    /// Bits from booleans (mostly for tests and small inputs).
    pub fn from_bools(bits: &[bool]) -> Self {
        let mut bytes = vec![0u8; bits.len().div_ceil(8)];
        for (i, &b) in bits.iter().enumerate() {
            bytes[i / 8] |= (b as u8) << (i % 8);
        }
        Self { bytes, len: bits.len() }
    }

    /// `len` uniformly random bits from the OS CSPRNG.
    pub fn random(len: usize) -> Self {
        let mut bytes = vec![0u8; len.div_ceil(8)];
        os_random(&mut bytes);
        Self::from_bytes(bytes, len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i`.
    ///
    /// # Panics
    ///
    /// If `i >= len`.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "bit {i} of {}", self.len);
        (self.bytes[i / 8] >> (i % 8)) & 1 == 1
    }

    /// The packed bytes (`len.div_ceil(8)` of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.len).map(|i| self.get(i))
    }
}

impl std::fmt::Debug for ChoiceBits {
    // Choice bits are secret: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChoiceBits({} bits)", self.len)
    }
}

/// Fills `buf` from the OS CSPRNG.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub(crate) fn os_random(buf: &mut [u8]) {
    SysRng.try_fill_bytes(buf).expect("the operating system's random number generator failed");
}

/// A uniformly random block from the OS CSPRNG.
pub(crate) fn os_random_block() -> u128 {
    let mut bytes = [0u8; 16];
    os_random(&mut bytes);
    let block = u128::from_le_bytes(bytes);
    bytes.zeroize();
    block
}
