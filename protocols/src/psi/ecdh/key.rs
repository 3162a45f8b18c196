//! The job's secrets: the key `k` and the order in which a party streams its own items.

use rand::rngs::{StdRng, SysRng};
use rand::seq::SliceRandom;
use rand::{SeedableRng, TryRng};
use zeroize::{Zeroize, Zeroizing};

use crate::dleq;
use curve25519_dalek::scalar::Scalar;

/// The per-job secret `k`, stored as `k/2` (the encoding doubles). Sampling `k/2` uniformly is
/// sampling `k` uniformly, since 2 is invertible mod ℓ. Zeroized on drop.
pub(super) struct HalfKey(pub(super) Scalar);

impl HalfKey {
    pub(super) fn random() -> HalfKey {
        let mut wide = Zeroizing::new([0u8; 64]);
        loop {
            SysRng.try_fill_bytes(&mut wide[..]).expect("the operating system's random number generator failed");
            let half = Scalar::from_bytes_mod_order_wide(&wide);
            if half != Scalar::ZERO {
                return HalfKey(half);
            }
        }
    }

    /// The encoding of `B = k·G`, `k = 2·(k/2)`.
    pub(super) fn commitment(&self) -> [u8; 32] {
        let k = Zeroizing::new(self.0 + self.0);
        dleq::commit(&k).to_bytes()
    }
}

impl Drop for HalfKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A uniformly random order of `0..n` (Fisher–Yates with a ChaCha generator seeded from the OS),
/// in which this party streams its own items.
pub(super) fn secret_order(n: usize) -> Zeroizing<Vec<u32>> {
    let mut order: Zeroizing<Vec<u32>> = Zeroizing::new((0..n as u32).collect());
    let mut rng = StdRng::try_from_rng(&mut SysRng).expect("the operating system's random number generator failed");
    order.shuffle(&mut rng);
    order
}
