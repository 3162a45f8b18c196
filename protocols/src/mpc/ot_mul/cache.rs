//! Random OTs kept across epochs for a fixed matrix and re-keyed for every use.
use std::sync::Arc;

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::{ChooserOts, Layout, SenderOts};
use crate::ot::aes_hash::FixedKeyAes;

/// Random OTs kept across epochs for a fixed matrix (the chooser's side), re-keyed for every
/// use: the pads of use u are H(t, M) with H the TCCR hash of fixed-key AES and the tweak
/// t = (u + 1)·2^64 + o unique per (use, OT). Sound because each M^{1−c}_o is a uniformly random
/// key unknown to the chooser (a random-OT output), so its hashes under distinct tweaks are
/// independent pseudorandom pads (GKWY20 TCCR); the chooser's M^{c}_o is known to both, as in a
/// single use. Saves the OT extension (and its 16 bytes per OT) on every epoch after the first.
/// Stored as σ_o = π(M_o), so a use costs one AES per message.
pub struct ChooserCache {
    sigma: Zeroizing<Vec<u128>>,
    layout: Arc<Layout>,
}

/// The sender's side of a [`ChooserCache`].
pub struct SenderCache {
    sigma0: Zeroizing<Vec<u128>>,
    sigma1: Zeroizing<Vec<u128>>,
    layout: Arc<Layout>,
}

fn permuted(v: &[u128]) -> Zeroizing<Vec<u128>> {
    let mut out = Zeroizing::new(v.to_vec());
    out.par_chunks_mut(4096).for_each(|c| FixedKeyAes::fixed().permute_blocks(c));
    out
}

/// H(t_o, M_o) = π(σ_o ⊕ t_o) ⊕ σ_o for o in `range`, t_o = (use + 1)·2^64 + o.
fn rekey(sigma: &[u128], use_id: u64, range: std::ops::Range<usize>) -> Zeroizing<Vec<u128>> {
    let base = ((use_id as u128 + 1) << 64) + range.start as u128;
    let src = &sigma[range];
    let mut out = Zeroizing::new(vec![0u128; src.len()]);
    out.par_chunks_mut(4096).zip(src.par_chunks(4096)).enumerate().for_each(|(k, (o, s))| {
        let first = base + (k * 4096) as u128;
        for (i, (o, &s)) in o.iter_mut().zip(s).enumerate() {
            *o = s ^ (first + i as u128);
        }
        FixedKeyAes::fixed().permute_blocks(o);
        for (o, &s) in o.iter_mut().zip(s) {
            *o ^= s;
        }
    });
    out
}

impl ChooserCache {
    /// An empty cache for up to `rows` rows (reserved up front: growing would leave copies of
    /// secrets in freed memory).
    pub fn new(rows: usize, cols: usize, bits: u32) -> Self {
        Self::with_layout(rows, Arc::new(Layout::full(cols, bits)))
    }

    /// An empty cache for up to `rows` rows of a matrix with `layout`.
    pub fn with_layout(rows: usize, layout: Arc<Layout>) -> Self {
        Self { sigma: Zeroizing::new(Vec::with_capacity(rows * layout.per_row())), layout }
    }

    /// Appends the OTs of further rows (fresh, unused OTs of this cache's shape).
    pub fn append(&mut self, ots: ChooserOts) {
        assert!(*ots.layout == *self.layout, "OTs of another shape");
        assert!(self.sigma.len() + ots.msgs.len() <= self.sigma.capacity(), "cache full");
        self.sigma.extend(permuted(&ots.msgs).iter());
    }

    /// The OTs of rows `rows` for use number `use_id` (each use id at most once per row).
    pub fn session(&self, use_id: u64, rows: std::ops::Range<usize>) -> ChooserOts {
        let cb = self.layout.per_row();
        let msgs = rekey(&self.sigma, use_id, rows.start * cb..rows.end * cb);
        ChooserOts { msgs, rows: rows.len(), layout: self.layout.clone(), used: Default::default() }
    }
}

impl SenderCache {
    pub fn new(rows: usize, cols: usize, bits: u32) -> Self {
        Self::with_layout(rows, Arc::new(Layout::full(cols, bits)))
    }

    pub fn with_layout(rows: usize, layout: Arc<Layout>) -> Self {
        let n = rows * layout.per_row();
        Self { sigma0: Zeroizing::new(Vec::with_capacity(n)), sigma1: Zeroizing::new(Vec::with_capacity(n)), layout }
    }

    pub fn append(&mut self, ots: SenderOts) {
        assert!(*ots.layout == *self.layout, "OTs of another shape");
        assert!(self.sigma0.len() + ots.m0.len() <= self.sigma0.capacity(), "cache full");
        self.sigma0.extend(permuted(&ots.m0).iter());
        self.sigma1.extend(permuted(&ots.m1).iter());
    }

    pub fn session(&self, use_id: u64, rows: std::ops::Range<usize>) -> SenderOts {
        let cb = self.layout.per_row();
        let range = rows.start * cb..rows.end * cb;
        let m0 = rekey(&self.sigma0, use_id, range.clone());
        let m1 = rekey(&self.sigma1, use_id, range);
        SenderOts { m0, m1, rows: rows.len(), layout: self.layout.clone(), used: Default::default() }
    }
}
