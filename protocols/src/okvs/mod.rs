//! Oblivious key-value store (OKVS) over GF(2)^128 from random band matrices.
//!
//! # What it computes
//! [`Okvs::encode`] turns `n` pairs `(k_i, v_i)`, `v_i ∈ GF(2)^128`, into a vector `P` of
//! `m = ⌈(1 + ε)·n⌉ + w − 1` cells of 128 bits such that
//! `decode(P, k) = ⟨row(k), P⟩ = ⊕_{j : row(k)_j = 1} P_j` equals `v_i` at `k = k_i`. The row of a
//! key is a seed-keyed hash: `w` pseudorandom bits at a pseudorandom start column. Decoding is
//! GF(2)-linear in `P` with binary coefficients, so it commutes with any linear map of the cells:
//! `decode(B + Δ·A, k) = decode(B, k) + Δ·decode(A, k)` over GF(2^128), which is what the
//! VOLE-based OPRF of RR22 (Raghuraman–Rindal, CCS 2022) needs from its OKVS.
//!
//! Properties, for keys fixed before the seed is drawn:
//! - *Correctness*: encoding fails with probability below 2^-40 (table below), and then says so
//!   ([`OkvsError::Singular`]; the caller retries with a fresh seed). It never loops and never
//!   returns a wrong encoding.
//! - *Obliviousness*: cells that no equation pins down (`εn + w − 1` of them) are drawn from the
//!   caller's CSPRNG, so when the values are uniform `P` is uniform whatever the keys. The
//!   decoding of a key outside the set is uniform given the keys and values, unless its row is
//!   in the span of theirs (as unlikely as a failure).
//! - *Not constant-time*: which cells are read depends on the key's row. That is invisible to
//!   the peer (it sees only `P` or values derived from it) but not to a co-located cache-timing
//!   attacker, as with every OKVS. The AVX-512 and AVX2 kernels' instruction streams do not
//!   depend on the band; the portable bit-scan fallback's does.
//!
//! # Construction
//! RB-OKVS, Bienstock–Patranabis–Yeo–Yeo, "Near-Optimal Oblivious Key-Value Stores for Efficient
//! PSI, PSU and Volume-Hiding Multi-Maps" (USENIX Security 2023, ePrint 2023/903): the random
//! band matrix OKVS, with its band width chosen from the paper's experimental failure fit. The
//! band matrices and their analysis go back to Dietzfelbinger–Walzer, "Efficient Gauss
//! elimination for near-quadratic matrices with one short random block per row" (ESA 2019).
//! - Rows: `start ∈ [0, ⌈(1 + ε)n⌉)` and a `w`-bit band, both from AES under keys derived from
//!   the seed (`row.rs`). As in Ribbon (Dillinger–Walzer, "Ribbon filter", 2021) bit 0 of the
//!   band is forced to one, so every row's first one is its start.
//! - Encoding: rows are inserted into an echelon form indexed by pivot column, Ribbon's
//!   on-the-fly Gaussian elimination (`encode.rs`): a row XORs the pivot row at its first one and
//!   moves right until it finds a free pivot column, never leaving its band, so insertion costs
//!   `O(w)` word operations at most and `O(1)` on average. Rows are visited by ascending start
//!   (`order.rs`) so the echelon form streams through the cache. Back-substitution runs from the
//!   last column to the first, drawing free columns from the CSPRNG. Memory: the `m` cells, `m`
//!   slots of `w + 128` bits for the echelon form and `16n` bytes of ordering; no per-key
//!   allocation.
//! - Decoding: the XOR of the cells the band selects (`band_xor.rs`: 65 masked 512-bit loads
//!   with AVX-512, masked 256-bit loads with AVX2, a bit-scan loop elsewhere); batches are
//!   visited by start, in parallel over chunks.
//!
//! Why band matrices rather than 3-hash PaXoS (Pinkas–Rosulek–Trieu–Yanai 2020, used by RR22
//! with `m ≈ 1.23n` plus dense columns): 10% expansion instead of 23% (the OKVS is most of
//! RR22's traffic, and every cell costs a VOLE correlation), an encoder without hypergraph
//! peeling or 2-core handling, and a failure probability backed by published fits that our own
//! runs reproduce rather than by a heuristic bound. The price is decoding: `w` cells per key
//! instead of three random cells and a dense part.
//!
//! # Parameters and failure probability
//! `ε = 1/10`, `w = 256`: `m/n = 1.1 + 255/n`. Write `λ = −log2 Pr[encoding fails]`. For
//! `ε = 0.1` the RB-OKVS experiments give the linear fit `λ ≈ 0.2691·w − 15.21` (the form in
//! which implementations of the paper quote it), and our own runs at `n = 2^20` land on it.
//! Failures are local (a stretch of columns holding more rows than columns), so `Pr` grows
//! linearly with `n`: one bit of `λ` per doubling. The slope agrees with a queueing estimate,
//! `θ·log2 e = 0.271` where `θ` solves `(e^θ − 1)/(1 + ε) = θ`: pending pivots behave like a
//! queue with load `1/(1 + ε)`, and a row fails when the backlog outruns its band.
//!
//! | n    | w   | trials | failures | λ measured | λ fit (`+ log2(2^20 / n)`) |
//! |------|-----|--------|----------|------------|----------------------------|
//! | 2^16 | 64  | 4000   | 60       | 6.1        | 6.0                        |
//! | 2^16 | 80  | 40000  | 29       | 10.4       | 10.3                       |
//! | 2^20 | 64  | 600    | 129      | 2.2        | 2.0                        |
//! | 2^20 | 72  | 1000   | 62       | 4.0        | 4.2                        |
//! | 2^20 | 80  | 2000   | 28       | 6.2        | 6.3                        |
//! | 2^20 | 88  | 4000   | 13       | 8.3        | 8.5                        |
//! | 2^20 | 256 |        |          |            | 53.7                       |
//! | 2^22 | 256 |        |          |            | 51.7                       |
//! | 2^24 | 256 |        |          |            | 49.7                       |
//!
//! Measured rows come from the `failure_rate` test in this module: this implementation's
//! insertion and row distribution (bit 0 forced to one included), `ε = 0.1`. `w = 256` itself
//! is far beyond what can be sampled, so it rests on the fit, which the measured points follow
//! in both `w` and `n`. `w = 205` would already give 40 bits at `n = 2^20`; 256 keeps a margin of
//! about 10 bits for buckets of up to `2^24` keys and is four whole words.
//!
//! The code takes any `BAND_WIDTH` that is a multiple of 128 with any `ε`, but the pair must come
//! with its own evidence. `w = 128` would halve the decoding work; our short-range runs
//! (`w ≤ 44`, `n = 2^12`) point to `ε ≈ 0.25` for 40 bits there, too long an extrapolation to
//! rely on, and 25% expansion gives back most of what band matrices win over PaXoS.

mod band;
mod band_xor;
mod encode;
mod order;
mod row;

#[cfg(test)]
mod tests;

use rand::CryptoRng;
use rayon::prelude::*;

use self::band_xor::band_xor;
use self::order::for_each_batch_by_start;
use self::row::RowHasher;

/// Band width `w`: each row has its ones inside `w` consecutive columns.
pub const BAND_WIDTH: usize = 256;

/// Expansion `ε = EPSILON_NUM / EPSILON_DEN`: `n` keys get `⌈(1 + ε)·n⌉` start positions. A
/// fraction, so that both parties compute the same size without floating point.
pub const EPSILON_NUM: usize = 1;
pub const EPSILON_DEN: usize = 10;

/// Most keys one store takes (keys and start positions are sorted as 32-bit numbers); bucket
/// larger sets.
pub const MAX_KEYS: usize = 1 << 31;

/// Public randomness that fixes the key → row map; both parties use the same seed. Draw a fresh
/// one per encoding attempt (and per bucket) after the keys are fixed: the failure bound holds
/// for keys chosen independently of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OkvsSeed(pub [u8; 16]);

impl OkvsSeed {
    /// A uniformly random seed.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> OkvsSeed {
        let mut seed = [0u8; 16];
        rng.fill_bytes(&mut seed);
        OkvsSeed(seed)
    }
}

/// A key of the store: 128 bits (in consort, already a pseudorandom digest of the item).
pub trait OkvsKey: Sync {
    /// The key as one 16-byte block.
    fn to_block(&self) -> [u8; 16];
}

impl OkvsKey for u128 {
    fn to_block(&self) -> [u8; 16] {
        self.to_le_bytes()
    }
}

impl OkvsKey for [u8; 16] {
    fn to_block(&self) -> [u8; 16] {
        *self
    }
}

/// Why encoding did not produce a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OkvsError {
    #[error("{keys} keys but {values} values")]
    LengthMismatch { keys: usize, values: usize },
    #[error("key #{second} repeats key #{first} with a different value")]
    DuplicateKey { first: usize, second: usize },
    #[error(
        "the band system of {keys} keys is singular under this seed (probability below 2^-40); \
         encode again with a fresh seed"
    )]
    Singular { keys: usize },
    #[error("{keys} keys in one store; at most {MAX_KEYS}, bucket larger sets")]
    TooManyKeys { keys: usize },
    #[error("output buffer has {got} cells, but {keys} keys need {expected}")]
    OutputLength { keys: usize, got: usize, expected: usize },
    #[error("an encoding has {min} to {max} cells, got {got}")]
    CellCount { got: usize, min: usize, max: usize },
}

/// Start positions for `n` keys: `⌈(1 + ε)·n⌉`, at least one so that even an empty store decodes.
fn starts_for(n: usize) -> usize {
    (n + (n * EPSILON_NUM).div_ceil(EPSILON_DEN)).max(1)
}

/// Number of 128-bit cells `m` of the encoding of `n` keys: `⌈(1 + ε)·n⌉ + w − 1` (`w` for
/// `n = 0`). The receiver of an encoding can check its length against this.
pub fn cells_for(n: usize) -> usize {
    starts_for(n) + BAND_WIDTH - 1
}

/// Encodes `values[i]` under `keys[i]` into `out`, which must hold exactly [`cells_for`]`(n)`
/// cells: how a bucket is encoded into its slice of a larger buffer (buckets encode
/// independently, e.g. in parallel). Cells no equation pins down are drawn from `rng`, so the
/// encoding is uniform when the values are.
///
/// The same key twice with the same value is accepted (the copy is redundant); with different
/// values it is [`OkvsError::DuplicateKey`]. [`OkvsError::Singular`] means this seed failed
/// (probability below 2^-40): encode again with a fresh seed. On error `out` holds garbage.
pub fn encode_into<K: OkvsKey, R: CryptoRng + ?Sized>(
    keys: &[K],
    values: &[u128],
    seed: OkvsSeed,
    rng: &mut R,
    out: &mut [u128],
) -> Result<(), OkvsError> {
    let n = keys.len();
    if n != values.len() {
        return Err(OkvsError::LengthMismatch { keys: n, values: values.len() });
    }
    if n > MAX_KEYS {
        return Err(OkvsError::TooManyKeys { keys: n });
    }
    let expected = cells_for(n);
    if out.len() != expected {
        return Err(OkvsError::OutputLength { keys: n, got: out.len(), expected });
    }
    let hasher = RowHasher::new(&seed, starts_for(n));
    encode::solve(&hasher, keys, values, rng, out).map_err(|_| failure(keys, values))
}

/// Tells the caller's mistake (a key with two values: retrying cannot help) from bad luck with
/// the seed. Only runs after a failed encoding, so its sort costs nothing in the common case.
pub(crate) fn failure<K: OkvsKey>(keys: &[K], values: &[u128]) -> OkvsError {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by_key(|&i| (keys[i].to_block(), i));
    let conflict = order.windows(2).find(|pair| {
        let [a, b] = [pair[0], pair[1]];
        keys[a].to_block() == keys[b].to_block() && values[a] != values[b]
    });
    match conflict {
        Some(pair) => OkvsError::DuplicateKey { first: pair[0], second: pair[1] },
        None => OkvsError::Singular { keys: keys.len() },
    }
}

/// An encoded store: the cells `P` and the seed that maps keys to rows. `C` is `Vec<u128>` for an
/// owned store or `&[u128]` for a view into a larger buffer (one bucket of many).
#[derive(Clone)]
pub struct Okvs<C = Vec<u128>> {
    seed: OkvsSeed,
    hasher: RowHasher,
    cells: C,
}

impl<C: AsRef<[u128]>> std::fmt::Debug for Okvs<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Okvs").field("seed", &self.seed).field("cells", &self.cells.as_ref().len()).finish()
    }
}

impl Okvs {
    /// Encodes `values[i]` under `keys[i]` into a new store of [`cells_for`]`(n)` cells. See
    /// [`encode_into`] for duplicates and failures.
    pub fn encode<K: OkvsKey, R: CryptoRng + ?Sized>(
        keys: &[K],
        values: &[u128],
        seed: OkvsSeed,
        rng: &mut R,
    ) -> Result<Okvs, OkvsError> {
        let mut cells = vec![0u128; cells_for(keys.len())];
        encode_into(keys, values, seed, rng, &mut cells)?;
        Okvs::from_cells(seed, cells)
    }

    /// The cells, e.g. to send them.
    pub fn into_cells(self) -> Vec<u128> {
        self.cells
    }
}

impl<C: AsRef<[u128]>> Okvs<C> {
    /// A store over cells encoded under `seed`, or any GF(2)-linear function of such cells (as in
    /// VOLE-based OPRFs): from [`cells_for`]`(0)` to [`cells_for`]`(MAX_KEYS)` cells.
    pub fn from_cells(seed: OkvsSeed, cells: C) -> Result<Okvs<C>, OkvsError> {
        let len = cells.as_ref().len();
        let (min, max) = (cells_for(0), cells_for(MAX_KEYS));
        if !(min..=max).contains(&len) {
            return Err(OkvsError::CellCount { got: len, min, max });
        }
        Ok(Okvs { seed, hasher: RowHasher::new(&seed, len - BAND_WIDTH + 1), cells })
    }

    /// The seed the cells were encoded under (it travels with them).
    pub fn seed(&self) -> OkvsSeed {
        self.seed
    }

    /// The cells `P`.
    pub fn cells(&self) -> &[u128] {
        self.cells.as_ref()
    }

    /// `⟨row(key), P⟩`: the value encoded under `key`, or a pseudorandom-looking value for a key
    /// that was not encoded. For many keys use [`decode_batch`](Self::decode_batch).
    pub fn decode<K: OkvsKey>(&self, key: &K) -> u128 {
        let row = self.hasher.row(key);
        band_xor(self.cells(), row.start, &row.band)
    }

    /// Decodes `keys[i]` into `out[i]`, in parallel over chunks of keys on the rayon pool.
    ///
    /// # Panics
    /// If `keys` and `out` differ in length.
    pub fn decode_batch<K: OkvsKey>(&self, keys: &[K], out: &mut [u128]) {
        assert_eq!(keys.len(), out.len(), "decode_batch: one output per key");
        let (hasher, cells) = (&self.hasher, self.cells());
        // At least two chunks per thread so that the threads balance, at most DECODE_CHUNK keys.
        let chunk = keys.len().div_ceil(2 * rayon::current_num_threads()).clamp(MIN_PARALLEL_CHUNK, DECODE_CHUNK);
        keys.par_chunks(chunk)
            .zip(out.par_chunks_mut(chunk))
            .for_each(|(keys, out)| decode_rows(hasher, cells, keys, out));
    }

    /// [`decode_batch`](Self::decode_batch) on the calling thread only, for callers that spread
    /// work over threads themselves (e.g. one bucket per task).
    ///
    /// # Panics
    /// If `keys` and `out` differ in length.
    pub fn decode_batch_serial<K: OkvsKey>(&self, keys: &[K], out: &mut [u128]) {
        assert_eq!(keys.len(), out.len(), "decode_batch_serial: one output per key");
        for (keys, out) in keys.chunks(DECODE_CHUNK).zip(out.chunks_mut(DECODE_CHUNK)) {
            decode_rows(&self.hasher, self.cells(), keys, out);
        }
    }
}

/// Keys per unit of decoding work: large enough that the keys of a chunk, visited by start,
/// overlap in the cells they read (`m / DECODE_CHUNK` cells apart, against 256-cell windows, for
/// `m` up to 2^22); small enough that the chunk's outputs stay in L2 and two cores balance.
const DECODE_CHUNK: usize = 1 << 18;

/// Below this many keys per chunk, a rayon task costs more than it saves.
const MIN_PARALLEL_CHUNK: usize = 1 << 12;

fn decode_rows<K: OkvsKey>(hasher: &RowHasher, cells: &[u128], keys: &[K], out: &mut [u128]) {
    for_each_batch_by_start(hasher, keys, |indices, rows| {
        for (&i, row) in indices.iter().zip(rows) {
            out[i as usize] = band_xor(cells, row.start, &row.band);
        }
    });
}
