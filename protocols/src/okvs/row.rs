//! Key → row hashing: each key becomes a band row `(start, band)` of the linear system.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};

use super::band::{BAND_WORDS, Band};
use super::{BAND_WIDTH, OkvsKey, OkvsSeed};

/// One row of the band matrix: a one at column `start + k` for each set bit `k` of `band`.
/// Bit 0 of `band` is always set (see [`RowHasher`]), so a row is never zero and its first one is
/// at `start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Row {
    pub start: usize,
    pub band: Band,
}

/// AES blocks of band per key.
const BAND_BLOCKS: usize = BAND_WIDTH / 128;

/// Keys hashed per batch of AES calls: enough blocks in flight to fill the AES-NI/VAES pipeline,
/// few enough to live on the stack.
const CHUNK: usize = 64;

/// Maps keys to rows with seed-keyed AES.
///
/// For key `x`: `band = AES_{k_1}(x) ‖ … ‖ AES_{k_b}(x)` with bit 0 forced to one, and
/// `start = ⌊AES_{k_0}(x)_{lo 64} · starts / 2^64⌋`, where `k_j = AES_seed(j)`. For keys fixed
/// before the seed is drawn, AES under uniformly random keys is a pseudorandom permutation, so
/// distinct keys get independent-looking uniform rows, which is what the failure analysis in
/// [`super`] assumes. (Keys are already digests in consort; hashing them again under the seed
/// stops anyone who chose keys from steering them into a singular system.) Forcing bit 0 puts
/// the first one of each row at its start, as in Ribbon (Dillinger–Walzer 2021); the other
/// `w − 1` bits stay uniform.
#[derive(Clone)]
pub(crate) struct RowHasher {
    start: Aes128,
    band: [Aes128; BAND_BLOCKS],
    starts: u64,
}

impl RowHasher {
    /// A hasher for a system with `starts ≥ 1` start positions.
    pub fn new(seed: &OkvsSeed, starts: usize) -> RowHasher {
        debug_assert!(starts >= 1);
        let master = Aes128::new(&Array(seed.0));
        let derive = |label: usize| {
            let mut block = Array([0u8; 16]);
            block[0] = label as u8;
            master.encrypt_block(&mut block);
            Aes128::new(&block)
        };
        RowHasher { start: derive(0), band: std::array::from_fn(|j| derive(j + 1)), starts: starts as u64 }
    }

    /// Number of start positions; a row covers columns `start..start + BAND_WIDTH`.
    pub fn starts(&self) -> usize {
        self.starts as usize
    }

    /// The row of one key.
    pub fn row<K: OkvsKey>(&self, key: &K) -> Row {
        let mut start = Array(key.to_block());
        self.start.encrypt_block(&mut start);
        let mut band = [[0u8; 16]; BAND_BLOCKS];
        for (out, cipher) in band.iter_mut().zip(&self.band) {
            let mut block = Array(key.to_block());
            cipher.encrypt_block(&mut block);
            *out = block.0;
        }
        Row { start: self.start_of(&start.0), band: band_of(&band) }
    }

    /// Calls `f(i, row)` for every key in order.
    pub fn for_each_row<K: OkvsKey>(&self, keys: &[K], mut f: impl FnMut(usize, Row)) {
        let mut starts = [0usize; CHUNK];
        for (c, chunk) in keys.chunks(CHUNK).enumerate() {
            self.for_each_start(chunk, |j, start| starts[j] = start);
            self.for_each_band(chunk, |j, band| {
                f(c * CHUNK + j, Row { start: starts[j], band });
            });
        }
    }

    /// Calls `f(i, start)` for every key in order: one AES call per key, `CHUNK` keys per batch
    /// of calls (enough blocks in flight to fill the AES-NI/VAES pipeline).
    pub fn for_each_start<K: OkvsKey>(&self, keys: &[K], mut f: impl FnMut(usize, usize)) {
        let mut blocks = [[0u8; 16]; CHUNK];
        for (c, chunk) in keys.chunks(CHUNK).enumerate() {
            let blocks = load(&mut blocks, chunk);
            self.start.encrypt_blocks(Array::cast_slice_from_core_mut(blocks));
            for (j, block) in blocks.iter().enumerate() {
                f(c * CHUNK + j, self.start_of(block));
            }
        }
    }

    /// Calls `f(i, band)` for every key in order: `BAND_BLOCKS` AES calls per key.
    pub fn for_each_band<K: OkvsKey>(&self, keys: &[K], mut f: impl FnMut(usize, Band)) {
        let mut blocks = [[[0u8; 16]; CHUNK]; BAND_BLOCKS];
        for (c, chunk) in keys.chunks(CHUNK).enumerate() {
            for (blocks, cipher) in blocks.iter_mut().zip(&self.band) {
                let blocks = load(blocks, chunk);
                cipher.encrypt_blocks(Array::cast_slice_from_core_mut(blocks));
            }
            // Block b of key j's band sits in blocks[b][j].
            for (j, _) in chunk.iter().enumerate() {
                f(c * CHUNK + j, band_of(&std::array::from_fn(|b| blocks[b][j])));
            }
        }
    }

    /// Multiply-high maps 64 uniform bits onto `[0, starts)` with bias below `starts / 2^64`.
    fn start_of(&self, block: &[u8; 16]) -> usize {
        let lo = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        ((u128::from(lo) * u128::from(self.starts)) >> 64) as usize
    }
}

/// Copies the keys of `chunk` into the front of `blocks` and returns that part.
fn load<'a, K: OkvsKey>(blocks: &'a mut [[u8; 16]; CHUNK], chunk: &[K]) -> &'a mut [[u8; 16]] {
    for (block, key) in blocks.iter_mut().zip(chunk) {
        *block = key.to_block();
    }
    &mut blocks[..chunk.len()]
}

/// The band from its AES output blocks, with bit 0 forced to one.
fn band_of(blocks: &[[u8; 16]; BAND_BLOCKS]) -> Band {
    let mut band: Band =
        std::array::from_fn(|i| u64::from_le_bytes(blocks[i / 2][8 * (i % 2)..][..8].try_into().expect("8 bytes")));
    band[0] |= 1;
    band
}

const _: () = assert!(BAND_BLOCKS * 128 == BAND_WIDTH && BAND_WORDS * 64 == BAND_WIDTH);
