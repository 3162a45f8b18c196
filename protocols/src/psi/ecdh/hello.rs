//! Step 1: the hello both parties send first, and the checks that both run the same protocol,
//! version, reveal mode and proofs setting with opposite roles.

use bytes::Bytes;

use super::{EcdhPsiError, HELLO, HELLO_LEN, PROTOCOL_ID, VERSION, violation};
use crate::dleq;
use crate::psi::{Reveal, Role};

/// The hello both parties send first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hello {
    pub(super) role: Role,
    pub(super) reveal: Reveal,
    pub(super) size: u64,
    pub(super) proofs: bool,
    /// `B = k·G` (all zero without proofs).
    pub(super) commitment: [u8; 32],
}

impl Hello {
    pub(super) fn encode(&self) -> Bytes {
        let mut frame = Vec::with_capacity(HELLO_LEN);
        frame.push(HELLO);
        frame.extend_from_slice(PROTOCOL_ID);
        frame.extend_from_slice(&VERSION.to_be_bytes());
        frame.push(self.role.wire());
        frame.push(self.reveal.wire());
        frame.extend_from_slice(&self.size.to_be_bytes());
        frame.push(u8::from(self.proofs));
        frame.extend_from_slice(&self.commitment);
        Bytes::from(frame)
    }

    pub(super) fn decode(frame: &[u8]) -> Result<Hello, EcdhPsiError> {
        if frame.len() < 19 || frame[0] != HELLO || &frame[1..17] != PROTOCOL_ID {
            return Err(violation("the peer's first message is not an ECDH-PSI hello"));
        }
        let version = u16::from_be_bytes([frame[17], frame[18]]);
        if version != VERSION {
            return Err(violation(format!(
                "the peer speaks ECDH-PSI version {version}, this party speaks version {VERSION}"
            )));
        }
        if frame.len() != HELLO_LEN {
            return Err(violation(format!("the peer's hello has {} bytes, expected {HELLO_LEN}", frame.len())));
        }
        let role = Role::from_wire(frame[19])
            .ok_or_else(|| violation(format!("the peer's hello has unknown role {}", frame[19])))?;
        let reveal = Reveal::from_wire(frame[20])
            .ok_or_else(|| violation(format!("the peer's hello has unknown reveal mode {}", frame[20])))?;
        let size = u64::from_be_bytes(frame[21..29].try_into().expect("8 bytes"));
        if size > u64::from(u32::MAX) {
            return Err(violation(format!(
                "the peer announced {size} items; ECDH-PSI supports at most {} per party",
                u32::MAX
            )));
        }
        let proofs = match frame[29] {
            0 => false,
            1 => true,
            other => return Err(violation(format!("the peer's hello has unknown proofs flag {other}"))),
        };
        let commitment: [u8; 32] = frame[30..62].try_into().expect("32 bytes");
        if proofs && dleq::decode_commitment(&commitment).is_err() {
            return Err(violation("the peer's key commitment is not a valid non-identity ristretto255 point"));
        }
        Ok(Hello { role, reveal, size, proofs, commitment })
    }

    pub(super) fn check_compatible(&self, peer: &Hello) -> Result<(), EcdhPsiError> {
        if peer.role == self.role {
            return Err(violation(format!(
                "both parties claim the {} role",
                match self.role {
                    Role::Requester => "requester",
                    Role::Responder => "responder",
                }
            )));
        }
        if peer.reveal != self.reveal {
            let name = |reveal| match reveal {
                Reveal::Both => "both",
                Reveal::RequesterOnly => "requester-only",
            };
            return Err(violation(format!(
                "reveal mode mismatch: this party runs with reveal={}, the peer with reveal={}",
                name(self.reveal),
                name(peer.reveal)
            )));
        }
        if peer.proofs != self.proofs {
            let name = |on| if on { "on" } else { "off" };
            return Err(violation(format!(
                "proofs mismatch: this party runs with proofs {}, the peer with proofs {}",
                name(self.proofs),
                name(peer.proofs)
            )));
        }
        Ok(())
    }
}
