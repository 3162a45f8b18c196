//! Hashing items to digests and splitting them into buckets of a public capacity, so that a job
//! of any size runs bucket after bucket in fixed memory and per-bucket counts are never sent.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{HASH_BLOCK, Rr22Error, STAT_SECURITY};
use crate::cpu;
use crate::items::Items;
use crate::psi::Role;

/// The job's shape, derived identically by both parties from the two hellos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub buckets: usize,
    /// Items per bucket (padded) of R and S.
    pub cap_receiver: usize,
    pub cap_sender: usize,
    /// Bytes of each F value.
    pub value_bytes: usize,
}

impl Layout {
    pub fn new(n_receiver: usize, n_sender: usize, bucket_size: usize) -> Layout {
        let buckets = n_receiver.max(n_sender).div_ceil(bucket_size.max(1)).max(1);
        let cap = |n: usize| if buckets == 1 { n } else { bucket_capacity(n, buckets) };
        let (cap_receiver, cap_sender) = (cap(n_receiver), cap(n_sender));
        let comparisons = (buckets as f64) * (cap_receiver.max(1) as f64) * (cap_sender.max(1) as f64);
        let bits = STAT_SECURITY as usize + comparisons.log2().ceil().max(0.0) as usize;
        Layout { buckets, cap_receiver, cap_sender, value_bytes: bits.div_ceil(8).min(16) }
    }
}

/// Smallest c with Pr[some bucket gets more than c of n items] ≤ 2^-40 when items fall into
/// `buckets` buckets uniformly: Bernstein's inequality per bucket, union bound over buckets.
pub fn bucket_capacity(n: usize, buckets: usize) -> usize {
    let mean = n as f64 / buckets as f64;
    let l = (buckets as f64).ln() + STAT_SECURITY as f64 * std::f64::consts::LN_2;
    let t = l / 3.0 + (l * l / 9.0 + 2.0 * l * mean).sqrt();
    ((mean + t).ceil() as usize).min(n)
}

/// One party's items split into buckets: digests and item indices, bucket after bucket.
pub(super) struct Buckets {
    /// Bucket b's digests and item indices are `fill[b]` entries from `b · cap` on.
    pub(super) digests: Vec<u128>,
    pub(super) indices: Vec<u32>,
    pub(super) cap: usize,
    pub(super) fill: Vec<usize>,
}

impl Buckets {
    pub(super) fn bucket(&self, b: usize) -> (&[u128], &[u32]) {
        let r = b * self.cap..b * self.cap + self.fill[b];
        (&self.digests[r.clone()], &self.indices[r])
    }
}

/// In memory, a bucket's ids are the items' indices in the caller's list.
impl super::BucketSource for Buckets {
    fn bucket(&self, b: usize) -> Result<(Vec<u128>, Vec<u32>), Rr22Error> {
        let (digests, indices) = Buckets::bucket(self, b);
        Ok((digests.to_vec(), indices.to_vec()))
    }
}

/// The item's digest: SHA-256(salt ‖ item), first 128 bits.
pub(super) fn digest(salt: &[u8; 32], item: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(item);
    let out: [u8; 32] = h.finalize().into();
    u128::from_le_bytes(out[..16].try_into().expect("16"))
}

/// The bucket of a digest: its high 64 bits scaled to the bucket count (uniform, since the
/// digest is). The OKVS hashes the whole digest under its own seed, so sharing these bits with
/// the bucket choice costs it nothing.
pub(super) fn bucket_of(digest: u128, buckets: usize) -> usize {
    (((digest >> 64) * buckets as u128) >> 64) as usize
}

/// A block of items copied out of the caller's list, so it can be hashed on rayon without
/// blocking the async runtime.
struct ItemBlock {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl ItemBlock {
    fn gather<I: Items + ?Sized>(items: &I, range: std::ops::Range<usize>) -> ItemBlock {
        let mut block = ItemBlock { bytes: Vec::new(), ends: Vec::with_capacity(range.len()) };
        for i in range {
            block.bytes.extend_from_slice(items.get(i));
            block.ends.push(block.bytes.len());
        }
        block
    }

    fn digests(&self, salt: &[u8; 32]) -> Vec<u128> {
        (0..self.ends.len())
            .into_par_iter()
            .map(|k| {
                let start = if k == 0 { 0 } else { self.ends[k - 1] };
                digest(salt, &self.bytes[start..self.ends[k]])
            })
            .collect()
    }
}

/// Hashes every item (in parallel blocks on rayon, the next block copied out while one is hashed)
/// and puts each digest into its bucket's region of `cap` slots. Memory: 20 bytes per slot, but
/// regions are touched only as they fill (`zeroed_blocks` pages are mapped lazily), so about 20
/// bytes per item.
pub(super) async fn bucketize<I: Items + ?Sized>(
    items: &I,
    salt: [u8; 32],
    layout: &Layout,
    role: Role,
) -> Result<Buckets, Rr22Error> {
    let n = items.len();
    let nb = layout.buckets;
    let cap = match role {
        Role::Requester => layout.cap_receiver,
        Role::Responder => layout.cap_sender,
    };
    let mut buckets =
        Buckets { digests: crate::mem::zeroed_blocks(nb * cap), indices: vec![0u32; nb * cap], cap, fill: vec![0; nb] };
    let hash = |start: usize| {
        let block = ItemBlock::gather(items, start..(start + HASH_BLOCK).min(n));
        cpu::spawn(move || block.digests(&salt))
    };
    let mut pending = (n > 0).then(|| hash(0));
    let mut start = 0;
    while let Some(task) = pending.take() {
        let next = start + HASH_BLOCK;
        pending = (next < n).then(|| hash(next));
        let digests = task.await;
        buckets = cpu::run(move || {
            for (k, d) in digests.into_iter().enumerate() {
                let b = bucket_of(d, nb);
                let at = b * cap + buckets.fill[b];
                if buckets.fill[b] == cap {
                    return Err(Rr22Error::BucketOverflow { bucket: b, capacity: cap });
                }
                buckets.digests[at] = d;
                buckets.indices[at] = (start + k) as u32;
                buckets.fill[b] += 1;
            }
            Ok(buckets)
        })
        .await?;
        start = next;
    }
    Ok(buckets)
}
