//! Fixed-key AES hashing and an AES-CTR PRG: the symmetric primitives of OT extension.
//!
//! # What it computes
//!
//! [`FixedKeyAes`] is AES-128 under a *public* key ([`FIXED_KEY`]), used as a random permutation
//! π of 128-bit blocks. From π it builds the hash functions of Guo, Katz, Wang and Yu, "Efficient
//! and Secure Multiparty Computation from Fixed-Key Block Ciphers" (IEEE S&P 2020, eprint
//! 2019/074), §7:
//!
//! | function                | definition                   | property (GKWY20)                      |
//! |-------------------------|------------------------------|----------------------------------------|
//! | [`FixedKeyAes::cr_hash`]   | π(x) ⊕ x ("MMO")          | correlation robust (§7.2)              |
//! | [`FixedKeyAes::ccr_hash`]  | π(σ(x)) ⊕ σ(x)            | circular correlation robust (§7.3)     |
//! | [`FixedKeyAes::tccr_hash`] | π(π(x) ⊕ i) ⊕ π(x)        | tweakable circular correlation robust (§7.4) |
//!
//! where σ(x_L ‖ x_R) = (x_L ⊕ x_R) ‖ x_L is a linear orthomorphism and i a 128-bit tweak.
//!
//! *Correlation robust* means: for a secret uniform Δ, the values H(x_k ⊕ Δ) for adversarially
//! chosen distinct x_k look uniform. That is exactly what IKNP needs to turn correlated OTs
//! (q, q ⊕ Δ) into random OTs. GKWY20 show that an untweaked hash lets an adversary that sees many
//! hashed values (across OTs, or a malicious receiver that repeats its t_i) attack all of them at
//! once with work 2^128 / (number of values); with a distinct tweak per OT (the OT's index)
//! every value has to be attacked on its own. [`super::extension`] therefore uses the TCCR hash
//! with tweak = OT index for random OTs (2 AES per hash instead of 1).
//!
//! [`AesPrg`] is AES-128 in counter mode under a secret seed: block `k` of the stream is
//! AES_seed(k). The position is explicit, so any range of the stream can be computed on its own
//! (OT extension expands many seeds chunk by chunk, in parallel).
//!
//! # Security model
//!
//! π is modeled as a random permutation (the ideal-cipher assumption on AES with a fixed, public
//! key), as in GKWY20; the PRG relies on AES being a pseudorandom function under a uniform key.
//! Nothing here branches on or indexes memory by secret data: with AES-NI/VAES the cipher is
//! constant-time; the crate's software fallback (`aes` fixslice) is constant-time too.
//!
//! # Performance
//!
//! All functions work on slices: the `aes` crate detects AES-NI and VAES at run time and keeps 8
//! (AES-NI) to 64 (VAES-512) blocks in flight, so callers should hash whole batches, never one
//! block at a time in a loop. The batch functions work through stack buffers of [`BATCH`] blocks.

use std::sync::LazyLock;

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use zeroize::ZeroizeOnDrop;

/// Blocks per call into the cipher: a few times what the widest backend keeps in flight (64 for
/// VAES-512), so the per-call dispatch and key broadcast are amortized; 2 KiB of stack per buffer.
pub const BATCH: usize = 128;

/// The public key of π: the first 128 bits of the fractional part of π (a "nothing up my sleeve"
/// number, as in other fixed-key AES implementations).
pub const FIXED_KEY: [u8; 16] = 0x243F_6A88_85A3_08D3_1319_8A2E_0370_7344u128.to_be_bytes();

static FIXED: LazyLock<FixedKeyAes> = LazyLock::new(|| FixedKeyAes::new(FIXED_KEY));

#[inline(always)]
fn to_aes(x: u128) -> aes::Block {
    Array::from(x.to_le_bytes())
}

#[inline(always)]
fn from_aes(b: &aes::Block) -> u128 {
    u128::from_le_bytes(b.0)
}

/// σ(x_L ‖ x_R) = (x_L ⊕ x_R) ‖ x_L with x_L the high half (GKWY20 §7.3). A linear
/// orthomorphism: both σ and x ↦ σ(x) ⊕ x are permutations.
#[inline(always)]
pub fn sigma(x: u128) -> u128 {
    let (hi, lo) = ((x >> 64) as u64, x as u64);
    (((hi ^ lo) as u128) << 64) | hi as u128
}

/// AES-128 under a public key, as a random permutation π (GKWY20).
#[derive(Clone)]
pub struct FixedKeyAes {
    aes: Aes128,
}

impl FixedKeyAes {
    /// π under `key`. Any public key works; protocols use [`FixedKeyAes::fixed`].
    pub fn new(key: [u8; 16]) -> Self {
        Self { aes: Aes128::new(&Array::from(key)) }
    }

    /// π under [`FIXED_KEY`] (key schedule computed once per process).
    pub fn fixed() -> &'static FixedKeyAes {
        &FIXED
    }

    /// π(x).
    pub fn permute(&self, x: u128) -> u128 {
        let mut b = to_aes(x);
        self.aes.encrypt_block(&mut b);
        from_aes(&b)
    }

    /// `x ← π(x)` for every block.
    pub fn permute_blocks(&self, xs: &mut [u128]) {
        self.map_blocks(xs, |x| x, |_, y| y);
    }

    /// `x ← π(x)` for every block in one call into the cipher (no copy: for large batches, which
    /// the backend pipelines as they come).
    pub fn permute_in_place(&self, xs: &mut [u128]) {
        with_aes_blocks(xs, |xs| self.aes.encrypt_blocks(xs));
    }

    /// `dst[k] ← π(src[k])` in one call into the cipher.
    ///
    /// # Panics
    ///
    /// If the slices differ in length.
    pub fn permute_to(&self, src: &[u128], dst: &mut [u128]) {
        assert_eq!(src.len(), dst.len(), "permutation into a slice of another length");
        // SAFETY: as in `with_aes_blocks`: `aes::Block` has the size of `u128`, alignment 1 and no
        // invalid bit patterns; the view covers exactly `src`'s memory, borrowed shared.
        let src = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<aes::Block>(), src.len()) };
        #[cfg(target_endian = "big")]
        let owned: Vec<aes::Block> = src.iter().map(|b| to_aes(u128::from_ne_bytes(b.0))).collect();
        #[cfg(target_endian = "big")]
        let src: &[aes::Block] = &owned;
        with_aes_blocks(dst, |dst| self.aes.encrypt_blocks_b2b(src, dst).expect("equal lengths"));
    }

    /// The correlation-robust hash π(x) ⊕ x (GKWY20 §7.2).
    pub fn cr_hash(&self, x: u128) -> u128 {
        self.permute(x) ^ x
    }

    /// `x ← π(x) ⊕ x` for every block.
    pub fn cr_hash_blocks(&self, xs: &mut [u128]) {
        self.map_blocks(xs, |x| x, |x, y| x ^ y);
    }

    /// The circular-correlation-robust hash π(σ(x)) ⊕ σ(x) (GKWY20 §7.3).
    pub fn ccr_hash(&self, x: u128) -> u128 {
        self.cr_hash(sigma(x))
    }

    /// `x ← π(σ(x)) ⊕ σ(x)` for every block.
    pub fn ccr_hash_blocks(&self, xs: &mut [u128]) {
        self.map_blocks(xs, sigma, |x, y| sigma(x) ^ y);
    }

    /// The tweakable circular-correlation-robust hash π(π(x) ⊕ i) ⊕ π(x) (GKWY20 §7.4).
    pub fn tccr_hash(&self, tweak: u128, x: u128) -> u128 {
        let y = self.permute(x);
        self.permute(y ^ tweak) ^ y
    }

    /// `xs[k] ← π(π(xs[k]) ⊕ (first_tweak + k)) ⊕ π(xs[k])`: the TCCR hash with consecutive
    /// tweaks (an OT's tweak is its index).
    pub fn tccr_hash_blocks(&self, first_tweak: u128, xs: &mut [u128]) {
        let mut y = [aes::Block::default(); BATCH];
        with_aes_blocks(xs, |xs| {
            for (c, chunk) in xs.chunks_mut(BATCH).enumerate() {
                let tweak = first_tweak.wrapping_add((c * BATCH) as u128);
                self.tccr_in_place(tweak, chunk, &mut y[..chunk.len()]);
            }
        });
    }

    /// The random-OT sender's hashes of a correlated pair: `m1[k] ← H(first_tweak + k, q[k] ⊕ Δ)`
    /// and `q[k] ← H(first_tweak + k, q[k])`, with H the TCCR hash, in one pass over `q`.
    ///
    /// # Panics
    ///
    /// If the slices differ in length.
    pub fn tccr_hash_correlated(&self, first_tweak: u128, delta: u128, q: &mut [u128], m1: &mut [u128]) {
        assert_eq!(q.len(), m1.len(), "correlated hash of slices of different lengths");
        let mut y = [aes::Block::default(); BATCH];
        with_aes_blocks(q, |q| {
            with_aes_blocks(m1, |m1| {
                for (c, (q, m1)) in q.chunks_mut(BATCH).zip(m1.chunks_mut(BATCH)).enumerate() {
                    for (m1, q) in m1.iter_mut().zip(q.iter()) {
                        *m1 = to_aes(from_aes(q) ^ delta);
                    }
                    let tweak = first_tweak.wrapping_add((c * BATCH) as u128);
                    self.tccr_in_place(tweak, q, &mut y[..q.len()]);
                    self.tccr_in_place(tweak, m1, &mut y[..q.len()]);
                }
            })
        });
    }

    /// TCCR on one batch in place; `y` is scratch of the same length.
    #[inline(always)]
    fn tccr_in_place(&self, first_tweak: u128, xs: &mut [aes::Block], y: &mut [aes::Block]) {
        self.aes.encrypt_blocks_b2b(xs, y).expect("equal lengths"); // y = π(x)
        let mut tweak = first_tweak;
        for (x, y) in xs.iter_mut().zip(y.iter()) {
            *x = to_aes(from_aes(y) ^ tweak); // x = π(x) ⊕ i
            tweak = tweak.wrapping_add(1);
        }
        self.aes.encrypt_blocks(xs); // x = π(π(x) ⊕ i)
        for (x, y) in xs.iter_mut().zip(y.iter()) {
            *x = to_aes(from_aes(x) ^ from_aes(y));
        }
    }

    /// `xs[k] ← post(xs[k], π(pre(xs[k])))`, [`BATCH`] blocks per call into the cipher.
    #[inline(always)]
    fn map_blocks(&self, xs: &mut [u128], pre: impl Fn(u128) -> u128, post: impl Fn(u128, u128) -> u128) {
        let mut y = [aes::Block::default(); BATCH];
        with_aes_blocks(xs, |xs| {
            for chunk in xs.chunks_mut(BATCH) {
                let y = &mut y[..chunk.len()];
                for (y, x) in y.iter_mut().zip(chunk.iter()) {
                    *y = to_aes(pre(from_aes(x)));
                }
                self.aes.encrypt_blocks(y);
                for (x, y) in chunk.iter_mut().zip(y.iter()) {
                    *x = to_aes(post(from_aes(x), from_aes(y)));
                }
            }
        });
    }
}

/// Runs `f` on `xs` viewed as AES blocks holding the little-endian encodings of the `u128`s,
/// without copying. On little-endian targets that is the memory of `xs` as is; big-endian
/// targets byte-swap in place before and after.
fn with_aes_blocks(xs: &mut [u128], f: impl FnOnce(&mut [aes::Block])) {
    #[cfg(target_endian = "big")]
    for x in xs.iter_mut() {
        *x = x.to_le();
    }
    // SAFETY: `aes::Block` is `Array<u8, U16>`, a `repr(transparent)` wrapper of `[u8; 16]`: same
    // size as `u128`, alignment 1 (which divides u128's), and every bit pattern is valid for
    // both types. The new slice covers exactly the memory of `xs` and borrows it mutably.
    let blocks = unsafe { std::slice::from_raw_parts_mut(xs.as_mut_ptr().cast::<aes::Block>(), xs.len()) };
    f(blocks);
    #[cfg(target_endian = "big")]
    for x in xs.iter_mut() {
        *x = u128::from_le(*x);
    }
}

impl std::fmt::Debug for FixedKeyAes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FixedKeyAes")
    }
}

/// A PRG: AES-128 in counter mode under a secret seed. Block `k` of the stream is
/// AES_seed(k) with `k` encoded as a little-endian 128-bit block; positions are explicit so any
/// range can be computed independently (and in parallel). The key schedule is zeroized on drop.
///
/// Security: pseudorandom as long as AES is a PRF and the seed is uniform and secret; never
/// read the same range of the same seed for two different purposes.
#[derive(Clone)]
pub struct AesPrg {
    aes: Aes128,
}

impl AesPrg {
    /// The stream of `seed`.
    pub fn new(seed: u128) -> Self {
        let mut key = Array::from(seed.to_le_bytes());
        let aes = Aes128::new(&key);
        zeroize::Zeroize::zeroize(&mut key.0);
        Self { aes }
    }

    /// A stream under a fresh seed from the OS CSPRNG.
    pub fn from_entropy() -> Self {
        Self::new(super::os_random_block())
    }

    /// `out[k] ← block (first + k)` of the stream.
    pub fn fill_blocks(&self, first: u64, out: &mut [u128]) {
        let mut buf = [aes::Block::default(); BATCH];
        let mut counter = first as u128;
        for chunk in out.chunks_mut(BATCH) {
            let buf = &mut buf[..chunk.len()];
            for b in buf.iter_mut() {
                *b = to_aes(counter);
                counter += 1;
            }
            self.aes.encrypt_blocks(buf);
            for (x, b) in chunk.iter_mut().zip(buf.iter()) {
                *x = from_aes(b);
            }
        }
        for b in buf.iter_mut() {
            zeroize::Zeroize::zeroize(&mut b.0);
        }
    }

    /// Fills `out` with the stream starting at the beginning of block `first` (a partial last
    /// block takes the first bytes of the next block). Encrypts in place: no copy.
    pub fn fill_bytes(&self, first: u64, out: &mut [u8]) {
        let (blocks, tail) = Array::slice_as_chunks_mut(out);
        // Counters go through a small buffer that stays in L1 and the cipher writes the output
        // once (block to block), instead of writing counters over the output and encrypting it
        // in place. Only the low 64 bits of a counter change: positions are u64.
        let mut counters = [aes::Block::default(); BATCH];
        let mut next = first;
        for chunk in blocks.chunks_mut(BATCH) {
            let counters = &mut counters[..chunk.len()];
            for (k, c) in counters.iter_mut().enumerate() {
                c[..8].copy_from_slice(&(next + k as u64).to_le_bytes());
            }
            self.aes.encrypt_blocks_b2b(counters, chunk).expect("equal lengths");
            next += chunk.len() as u64;
        }
        if !tail.is_empty() {
            let mut last = to_aes(next as u128);
            self.aes.encrypt_block(&mut last);
            tail.copy_from_slice(&last[..tail.len()]);
            zeroize::Zeroize::zeroize(&mut last.0);
        }
    }
}

impl ZeroizeOnDrop for AesPrg {}

impl std::fmt::Debug for AesPrg {
    // The key schedule is secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesPrg")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u128> {
        let prg = AesPrg::new(7);
        let mut v = vec![0u128; n];
        prg.fill_blocks(0, &mut v);
        v
    }

    #[test]
    fn aes_matches_fips_197_vector() {
        // FIPS-197 Appendix C.1: key 000102..0f, plaintext 00112233..ff.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let pt = u128::from_le_bytes(core::array::from_fn(|i| (i as u8) * 0x11));
        let ct = FixedKeyAes::new(key).permute(pt);
        assert_eq!(ct.to_le_bytes(), 0x69c4e0d86a7b0430d8cdb78070b4c55au128.to_be_bytes());
    }

    #[test]
    fn batch_hashes_match_single_block_definitions() {
        let pi = FixedKeyAes::fixed();
        // Lengths around the batch size exercise full and partial batches.
        for n in [0, 1, 7, 8, 63, 64, 65, 127, 128, 129, 300] {
            let xs = sample(n);
            let mut cr = xs.clone();
            pi.cr_hash_blocks(&mut cr);
            let mut ccr = xs.clone();
            pi.ccr_hash_blocks(&mut ccr);
            let mut tccr = xs.clone();
            pi.tccr_hash_blocks(1000, &mut tccr);
            let (mut h0, mut h1) = (xs.clone(), vec![0u128; n]);
            pi.tccr_hash_correlated(1000, 0xd17a, &mut h0, &mut h1);
            let mut perm = xs.clone();
            pi.permute_blocks(&mut perm);
            let mut whole = xs.clone();
            pi.permute_in_place(&mut whole);
            let mut to = vec![0u128; n];
            pi.permute_to(&xs, &mut to);
            assert_eq!((&whole, &to), (&perm, &perm));
            for (k, &x) in xs.iter().enumerate() {
                assert_eq!(cr[k], pi.permute(x) ^ x);
                assert_eq!(ccr[k], pi.permute(sigma(x)) ^ sigma(x));
                let y = pi.permute(x);
                assert_eq!(tccr[k], pi.permute(y ^ (1000 + k as u128)) ^ y);
                assert_eq!(h0[k], tccr[k]);
                assert_eq!(h1[k], pi.tccr_hash(1000 + k as u128, x ^ 0xd17a));
                assert_eq!(perm[k], y);
            }
        }
    }

    #[test]
    fn sigma_is_an_orthomorphism_on_samples() {
        // σ is linear; check σ and σ ⊕ id on a basis are both invertible via their kernels being
        // trivial on random samples, plus the closed form of σ(x) ⊕ x.
        for x in sample(100) {
            let (hi, lo) = (x >> 64, x & u64::MAX as u128);
            assert_eq!(sigma(x) ^ x, (lo << 64) | (hi ^ lo));
            assert_ne!(sigma(x), 0);
        }
    }

    #[test]
    fn prg_ranges_are_consistent() {
        let prg = AesPrg::new(0x1234);
        let mut whole = vec![0u128; 300];
        prg.fill_blocks(0, &mut whole);
        let mut part = vec![0u128; 100];
        prg.fill_blocks(150, &mut part);
        assert_eq!(&whole[150..250], &part[..]);
        let mut bytes = vec![0u8; 16 * 10 + 5];
        prg.fill_bytes(3, &mut bytes);
        for k in 0..10 {
            assert_eq!(bytes[16 * k..16 * k + 16], whole[3 + k].to_le_bytes());
        }
        assert_eq!(bytes[160..], whole[13].to_le_bytes()[..5]);
        assert_ne!(whole[0], whole[1]);
        let mut other = vec![0u128; 300];
        AesPrg::new(0x1235).fill_blocks(0, &mut other);
        assert!(whole.iter().zip(&other).all(|(a, b)| a != b));
    }
}
