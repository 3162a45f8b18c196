//! The messages of the protocol that are not plain ciphertext vectors: the hello, the per-level
//! decisions, partitions as bit vectors. Every size is known to the receiver before it reads (from
//! the agreed row lists, the instance sets both parties track and the hello), so nothing a peer
//! announces sizes a buffer unchecked.
use super::config::SbConfig;
use crate::channel::Channel;
use crate::mpc::wire::{recv_bytes, send_bytes};
use crate::mpc::{MpcError, violation};

/// Most features a peer may announce.
pub const MAX_PEER_FEATURES: usize = 1 << 12;
/// Most histogram cells (bins summed over features) a peer may announce: 2^16 cells of 384-byte
/// ciphertexts are 24 MiB per node.
pub const MAX_PEER_CELLS: usize = 1 << 16;

/// Bits (LSB first) to bytes.
pub fn pack_bits(bits: impl ExactSizeIterator<Item = bool>) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.enumerate() {
        out[i / 8] |= (b as u8) << (i % 8);
    }
    out
}

/// `n` bits from exactly ⌈n/8⌉ bytes whose padding bits are zero.
pub fn unpack_bits(bytes: &[u8], n: usize) -> Result<Vec<bool>, MpcError> {
    if bytes.len() != n.div_ceil(8) {
        return Err(violation(format!("bit vector of {} bytes for {n} bits", bytes.len())));
    }
    if !n.is_multiple_of(8) && bytes[n / 8] >> (n % 8) != 0 {
        return Err(violation("bit vector with padding bits set"));
    }
    Ok((0..n).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect())
}

/// What A decided for a node that could be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Leaf,
    /// A splits on one of its own features (B is told only that, and the partition).
    SplitA,
    /// B's feature k, bin j wins: B sends the partition.
    SplitB {
        feature: u32,
        bin: u8,
    },
}

const DECISION_BYTES: usize = 6;

pub fn encode_decisions(decisions: &[Decision]) -> Vec<u8> {
    let mut out = Vec::with_capacity(decisions.len() * DECISION_BYTES);
    for d in decisions {
        let (tag, f, b) = match *d {
            Decision::Leaf => (0u8, 0u32, 0u8),
            Decision::SplitA => (1, 0, 0),
            Decision::SplitB { feature, bin } => (2, feature, bin),
        };
        out.push(tag);
        out.extend_from_slice(&f.to_le_bytes());
        out.push(b);
    }
    out
}

/// Parses `count` decisions, checking B's (feature, bin) against its own bins: a split must leave
/// a bin on the right.
pub fn decode_decisions(bytes: &[u8], count: usize, bins: &[u32]) -> Result<Vec<Decision>, MpcError> {
    if bytes.len() != count * DECISION_BYTES {
        return Err(violation("decision frame of the wrong length"));
    }
    bytes
        .chunks_exact(DECISION_BYTES)
        .map(|c| {
            let f = u32::from_le_bytes(c[1..5].try_into().unwrap());
            match (c[0], f, c[5]) {
                (0, 0, 0) => Ok(Decision::Leaf),
                (1, 0, 0) => Ok(Decision::SplitA),
                (2, f, b) if (f as usize) < bins.len() && u32::from(b) + 1 < bins[f as usize] => {
                    Ok(Decision::SplitB { feature: f, bin: b })
                }
                _ => Err(violation("bad split decision")),
            }
        })
        .collect()
}

/// The hello both parties send: the digest of what they must agree on, then their feature count
/// (u32) and each feature's bin count (u16).
pub async fn exchange_hello<C: Channel>(
    channel: &C,
    digest: [u8; 32],
    bins: &[u32],
    config: &SbConfig,
) -> Result<Vec<u32>, MpcError> {
    let mut head = digest.to_vec();
    head.extend_from_slice(&(bins.len() as u32).to_le_bytes());
    let body: Vec<u8> = bins.iter().flat_map(|&b| (b as u16).to_le_bytes()).collect();
    let send = async {
        send_bytes(channel, &head).await?;
        send_bytes(channel, &body).await
    };
    let recv = async {
        let theirs = recv_bytes(channel, 36).await?;
        if theirs[..32] != digest {
            return Err(violation("the parties disagree on the parameters, row count, training rows or holdout rows"));
        }
        let d = u32::from_le_bytes(theirs[32..].try_into().unwrap()) as usize;
        if d > MAX_PEER_FEATURES {
            return Err(violation(format!("the peer claims {d} features (at most {MAX_PEER_FEATURES})")));
        }
        let body = recv_bytes(channel, 2 * d).await?;
        let bins: Vec<u32> = body.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
        if bins.iter().any(|b| !(2..=config.max_bins).contains(b)) {
            return Err(violation("the peer announces a feature with a bin count out of range"));
        }
        if bins.iter().map(|&b| b as usize).sum::<usize>() > MAX_PEER_CELLS {
            return Err(violation(format!("the peer announces more than {MAX_PEER_CELLS} histogram cells")));
        }
        Ok(bins)
    };
    let (sent, bins) = futures::join!(send, recv);
    sent?;
    bins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_decisions_round_trip_and_refuse_garbage() {
        let bits = [true, false, true, true, false, false, false, false, true];
        let bytes = pack_bits(bits.iter().copied());
        assert_eq!(bytes, vec![0b1101, 1]);
        assert_eq!(unpack_bits(&bytes, 9).unwrap(), bits);
        assert!(unpack_bits(&[0b1101, 3], 9).is_err(), "padding bit set");
        assert!(unpack_bits(&bytes, 17).is_err(), "short");
        let ds = [Decision::Leaf, Decision::SplitA, Decision::SplitB { feature: 1, bin: 2 }];
        let enc = encode_decisions(&ds);
        assert_eq!(decode_decisions(&enc, 3, &[4, 4]).unwrap(), ds);
        assert!(decode_decisions(&enc, 3, &[4, 3]).is_err(), "bin leaves nothing on the right");
        assert!(decode_decisions(&enc, 3, &[4]).is_err(), "feature out of range");
        assert!(decode_decisions(&enc[..17], 3, &[4, 4]).is_err(), "truncated");
        let mut bad = enc.clone();
        bad[0] = 7;
        assert!(decode_decisions(&bad, 3, &[4, 4]).is_err(), "unknown tag");
        let mut bad = enc;
        bad[1] = 1;
        assert!(decode_decisions(&bad, 3, &[4, 4]).is_err(), "a leaf with a feature");
    }
}
