//! Optional trusted dealer: a third party that hands out the correlations for the matrix products
//! of [`super::lr`] instead of the OT-based generation of [`super::ot_mul`].
//!
//! # What it computes
//!
//! For each party's feature matrix X (the *owner*, rows in a fixed order) and the other party
//! (the *peer*) the dealer draws a reusable mask U (uniform in Z_2^64, one per matrix entry,
//! SecureML's "reusable masks for fixed matrices") and, per use, fresh vectors v (forward, one per
//! column) and v' (backward, one per row) and the peer's shares R, R' of U·v and Uᵀ·v'. The owner
//! receives Z = U·v − R and Z' = Uᵀ·v' − R'. Everything but Z and Z' is expanded from two 128-bit
//! seeds per matrix (the owner's, for U; the peer's, for v, v', R, R'), so the dealer sends each
//! party two seeds and then m + d words per batch.
//!
//! The parties then multiply without further correlations: once, the owner sends E = X − U; per
//! product the peer sends f = y − v (forward) or g = r − v' (backward); the owner keeps X·f + Z
//! (or Xᵀ·g + Z'), the peer E·v + R (or Eᵀ·v' + R'). They add up to X·y (Xᵀ·r) since E + U = X.
//!
//! # What each party learns, and the trust this needs
//!
//! The peer sees E = X − U (one-time padded by U, which it never sees) and the owner sees f and g
//! (padded by the fresh v, v'): nothing, *as long as the dealer does not collude with either
//! party*. The dealer sees only the shapes (rows per batch, feature counts, epochs) and sends
//! data that does not depend on the inputs. But a dealer colluding with the peer learns X
//! (from E and U), and with the owner learns y or r (from f, g and v, v'): the dealer is a
//! trusted third party for privacy. It cannot see, and need not be trusted with, anything if it
//! stays apart. Semi-honest model, like the rest of the protocol.
//!
//! # Wire format
//!
//! Party → dealer: `hello` = feature count, epochs, batch size, training rows, holdout rows,
//! triples per row (u64 LE each) — the dealer checks that both parties agree on everything but
//! the feature counts. Dealer → party: own U seed, peer's v seed (16 bytes each), then per session
//! (every training batch and holdout chunk of every epoch, in order) Z (m words), Z' (d words)
//! and the party's c shares of t·m multiplication triples (t = triples per row; the party's a
//! and b shares come from its own seed, c_A is uniform and c_B = a·b − c_A). The triples serve
//! elementwise products of two shared vectors (Beaver), e.g. z² and z³ of the `poly3` sigmoid;
//! the dealer sees none of the opened d = x − a, e = y − b, but it knows a and b, so colluding
//! with either party it would learn x and y themselves (per-row scores z and their powers).

use rand::TryRng;
use rand::rngs::SysRng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::ot_mul::Matrix;
use super::wire::{recv_bytes, recv_u64s, send_bytes, send_u64s};
use super::{MpcError, violation};
use crate::channel::{Channel, ChannelError};
use crate::ot::aes_hash::AesPrg;

/// Which list of rows a session draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Train = 0,
    Holdout = 1,
}

/// A session: epoch, list, first row (position in the list) and row count.
#[derive(Debug, Clone, Copy)]
pub struct SessionId {
    pub epoch: u64,
    pub list: List,
    pub first: usize,
    pub rows: usize,
}

fn subseed(seed: u128, label: &str, parts: &[u64]) -> u128 {
    let mut h = Sha256::new();
    h.update(b"consort/dealer/v1/");
    h.update(label.as_bytes());
    h.update(seed.to_le_bytes());
    for p in parts {
        h.update(p.to_le_bytes());
    }
    u128::from_le_bytes(h.finalize()[..16].try_into().unwrap())
}

/// Words `first..first + n` of the stream of `seed`.
fn words(seed: u128, first: usize, n: usize) -> Zeroizing<Vec<u64>> {
    let prg = AesPrg::new(seed);
    let (b0, b1) = (first / 2, (first + n).div_ceil(2));
    let mut blocks = Zeroizing::new(vec![0u128; b1 - b0]);
    blocks.par_chunks_mut(4096).enumerate().for_each(|(k, c)| prg.fill_blocks((b0 + k * 4096) as u64, c));
    let off = first - 2 * b0;
    Zeroizing::new(blocks.iter().flat_map(|b| [*b as u64, (b >> 64) as u64]).skip(off).take(n).collect())
}

/// The owner's mask rows `first..first + rows` of list `list` (rows × cols).
fn mask(seed: u128, list: List, first: usize, rows: usize, cols: usize) -> Zeroizing<Vec<u64>> {
    words(subseed(seed, "U", &[list as u64]), first * cols, rows * cols)
}

/// The peer's per-session vectors: v (cols), v' (rows), R (rows), R' (cols).
struct PeerVectors {
    v: Zeroizing<Vec<u64>>,
    v2: Zeroizing<Vec<u64>>,
    r: Zeroizing<Vec<u64>>,
    r2: Zeroizing<Vec<u64>>,
}

fn peer_vectors(seed: u128, s: SessionId, cols: usize) -> PeerVectors {
    let id = [s.epoch, s.list as u64, s.first as u64];
    PeerVectors {
        v: words(subseed(seed, "v", &id), 0, cols),
        v2: words(subseed(seed, "v'", &id), 0, s.rows),
        r: words(subseed(seed, "R", &id), 0, s.rows),
        r2: words(subseed(seed, "R'", &id), 0, cols),
    }
}

fn sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)).collect()
}

fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

/// Most features of a party (as the LR handshake's bound on the peer's).
const MAX_COLS: u64 = 1 << 16;
/// Largest batch (`LrConfig::validate`).
const MAX_BATCH: u64 = 1 << 16;
/// Most mask words (rows × cols) per session and party: a party accepts at most 2^27 OTs per
/// batch at 2 or more bits per feature, so 2^26 (512 MiB) is every shape a party can run.
const MAX_SESSION_WORDS: u64 = 1 << 26;

/// The shape both parties announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hello {
    cols: u64,
    epochs: u64,
    batch: u64,
    train: u64,
    holdout: u64,
    /// Multiplication triples per row and session (elementwise products of shares; 0 or 2).
    triples: u64,
}

impl Hello {
    fn to_words(self) -> [u64; 6] {
        [self.cols, self.epochs, self.batch, self.train, self.holdout, self.triples]
    }

    /// Within what a party accepts (`LrConfig::validate`, the LR handshake's bound on the peer's
    /// features), checked before anything is allocated for it: a session's mask is rows × cols
    /// words per party, so the announced shape must not size it beyond that.
    fn plausible(self) -> bool {
        let rows = self.batch.max(1).min(self.train.max(self.holdout));
        self.cols <= MAX_COLS
            && self.batch <= MAX_BATCH
            && self.epochs <= u64::from(super::lr::MAX_EPOCHS)
            && self.train.checked_add(self.holdout).is_some_and(|n| n <= 1 << 32)
            && rows.saturating_mul(self.cols) <= MAX_SESSION_WORDS
            && self.triples <= 4
    }

    fn sessions(self) -> impl Iterator<Item = SessionId> {
        let batch = self.batch.max(1) as usize;
        (0..self.epochs).flat_map(move |epoch| {
            [(List::Train, self.train), (List::Holdout, self.holdout)].into_iter().flat_map(move |(list, n)| {
                (0..n as usize).step_by(batch).map(move |first| SessionId {
                    epoch,
                    list,
                    first,
                    rows: batch.min(n as usize - first),
                })
            })
        })
    }
}

fn random_seed() -> u128 {
    let mut b = [0u8; 16];
    SysRng.try_fill_bytes(&mut b).expect("the operating system's random number generator failed");
    u128::from_le_bytes(b)
}

/// What the dealer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DealerReport {
    pub sessions: u64,
    /// A party closed its channel before all sessions were sent (early stopping). Best effort:
    /// with small shapes every session may already sit in the channel buffers.
    pub stopped_early: bool,
}

/// Runs the dealer for one training job between parties A (`to_a`) and B (`to_b`). Ends when all
/// sessions are sent or when the parties close their channels (early stopping).
pub async fn run_dealer<A: Channel, B: Channel>(to_a: &A, to_b: &B) -> Result<DealerReport, MpcError> {
    let (ha, hb) = futures::join!(recv_u64s(to_a, 6), recv_u64s(to_b, 6));
    let (ha, hb) = (ha?, hb?);
    let hello = |w: &[u64]| Hello { cols: w[0], epochs: w[1], batch: w[2], train: w[3], holdout: w[4], triples: w[5] };
    let (ha, hb) = (hello(&ha), hello(&hb));
    if (ha.epochs, ha.batch, ha.train, ha.holdout, ha.triples)
        != (hb.epochs, hb.batch, hb.train, hb.holdout, hb.triples)
    {
        return Err(violation("the parties announced different training shapes"));
    }
    if !ha.plausible() || !hb.plausible() {
        return Err(violation("implausible training shape"));
    }
    // Seeds: per matrix, the owner's (U) and the peer's (v, v', R, R').
    let seeds_all = Zeroizing::new([random_seed(), random_seed(), random_seed(), random_seed()]);
    let [ua, va, ub, vb] = *seeds_all;
    let seeds = |own: u128, peer: u128| Zeroizing::new([own.to_le_bytes(), peer.to_le_bytes()].concat());
    let (seeds_a, seeds_b) = (seeds(ua, vb), seeds(ub, va));
    let (sa, sb) = futures::join!(send_bytes(to_a, &seeds_a), send_bytes(to_b, &seeds_b));
    sa?;
    sb?;
    let mut sessions = 0;
    for s in ha.sessions() {
        let (za, zb) = futures::join!(
            crate::cpu::run(move || owner_correlation(ua, va, s, ha.cols as usize)),
            crate::cpu::run(move || owner_correlation(ub, vb, s, hb.cols as usize)),
        );
        let (mut za, mut zb) = (za, zb);
        let t = ha.triples as usize;
        if t > 0 {
            let (ca, cb) = crate::cpu::run(move || triple_c_shares(ua, ub, s, t)).await;
            za.extend_from_slice(&ca);
            zb.extend_from_slice(&cb);
        }
        let (ra, rb) = futures::join!(send_u64s(to_a, &za), send_u64s(to_b, &zb));
        match (ra, rb) {
            (Ok(()), Ok(())) => sessions += 1,
            (Err(MpcError::Channel(ChannelError::Closed)), _) | (_, Err(MpcError::Channel(ChannelError::Closed))) => {
                return Ok(DealerReport { sessions, stopped_early: true });
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        }
    }
    Ok(DealerReport { sessions, stopped_early: false })
}

/// Z = U·v − R (rows) followed by Z' = Uᵀ·v' − R' (cols) for one session of one matrix.
fn owner_correlation(u_seed: u128, v_seed: u128, s: SessionId, cols: usize) -> Vec<u64> {
    let u = Matrix::new(mask(u_seed, s.list, s.first, s.rows, cols).to_vec(), s.rows, cols, 64);
    let p = peer_vectors(v_seed, s, cols);
    let mut out = sub(&u.mul_vec(&p.v), &p.r);
    out.extend(sub(&u.mul_t_vec(&p.v2), &p.r2));
    out
}

/// A party's shares a_P, b_P of the multiplication triples of session `s` (`t` per row, rows
/// × t each), from its own seed.
fn triple_ab(seed: u128, s: SessionId, t: usize) -> (Zeroizing<Vec<u64>>, Zeroizing<Vec<u64>>) {
    let id = [s.epoch, s.list as u64, s.first as u64];
    (words(subseed(seed, "ta", &id), 0, s.rows * t), words(subseed(seed, "tb", &id), 0, s.rows * t))
}

/// The dealer's c shares for both parties: c_A uniform, c_B = a·b − c_A (a = a_A + a_B, ...).
fn triple_c_shares(ua: u128, ub: u128, s: SessionId, t: usize) -> (Vec<u64>, Vec<u64>) {
    let ((aa, ba), (ab, bb)) = (triple_ab(ua, s, t), triple_ab(ub, s, t));
    let id = [s.epoch, s.list as u64, s.first as u64];
    let ca = words(subseed(ua, "tc", &id), 0, s.rows * t);
    let cb = (0..s.rows * t)
        .map(|i| aa[i].wrapping_add(ab[i]).wrapping_mul(ba[i].wrapping_add(bb[i])).wrapping_sub(ca[i]))
        .collect();
    (ca.to_vec(), cb)
}

/// A party's connection to the dealer for one training run.
pub struct DealerClient<'a, D> {
    channel: &'a D,
    own_seed: u128,
    peer_seed: u128,
    own_cols: usize,
    peer_cols: usize,
    triples: usize,
}

impl<D> Drop for DealerClient<'_, D> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.own_seed);
        zeroize::Zeroize::zeroize(&mut self.peer_seed);
    }
}

impl<'a, D: Channel> DealerClient<'a, D> {
    /// Announces the shape and receives the seeds.
    pub async fn connect(
        channel: &'a D,
        own_cols: usize,
        peer_cols: usize,
        epochs: u32,
        batch: usize,
        train: usize,
        holdout: usize,
    ) -> Result<Self, MpcError> {
        Self::connect_with_triples(channel, own_cols, peer_cols, epochs, batch, train, holdout, 0).await
    }

    /// [`Self::connect`], asking also for `triples` multiplication triples per row and session.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect_with_triples(
        channel: &'a D,
        own_cols: usize,
        peer_cols: usize,
        epochs: u32,
        batch: usize,
        train: usize,
        holdout: usize,
        triples: usize,
    ) -> Result<Self, MpcError> {
        let hello = Hello {
            triples: triples as u64,
            cols: own_cols as u64,
            epochs: epochs as u64,
            batch: batch as u64,
            train: train as u64,
            holdout: holdout as u64,
        };
        send_u64s(channel, &hello.to_words()).await?;
        let seeds = recv_bytes(channel, 32).await?;
        let own_seed = u128::from_le_bytes(seeds[..16].try_into().unwrap());
        let peer_seed = u128::from_le_bytes(seeds[16..].try_into().unwrap());
        Ok(Self { channel, own_seed, peer_seed, own_cols, peer_cols, triples })
    }

    /// E = X − U for the owner's rows `first..` of `list` (sent once to the peer).
    pub fn masked(&self, x: &Matrix, list: List, first: usize) -> Vec<u64> {
        sub(x.data(), &mask(self.own_seed, list, first, x.rows(), self.own_cols))
    }

    /// This party's correlations for session `s`: its Z, Z' (from the dealer) and its peer-side
    /// vectors for the other party's matrix.
    pub async fn session(&self, s: SessionId, peer_e: Matrix) -> Result<DealerSession, MpcError> {
        let z = recv_u64s(self.channel, s.rows + self.own_cols + s.rows * self.triples).await?;
        let (seed, cols) = (self.peer_seed, self.peer_cols);
        let p = crate::cpu::run(move || peer_vectors(seed, s, cols)).await;
        let (a, b) = triple_ab(self.own_seed, s, self.triples);
        let mut z = Zeroizing::new(z);
        let c = Zeroizing::new(z.split_off(s.rows + self.own_cols));
        Ok(DealerSession { z, rows: s.rows, peer: p, peer_e, triples: Triples { a, b, c } })
    }
}

/// This party's shares of a session's multiplication triples (c = a·b), `rows` per triple index.
pub struct Triples {
    a: Zeroizing<Vec<u64>>,
    b: Zeroizing<Vec<u64>>,
    c: Zeroizing<Vec<u64>>,
}

/// One batch's dealer correlations, both roles.
pub struct DealerSession {
    z: Zeroizing<Vec<u64>>,
    triples: Triples,
    rows: usize,
    peer: PeerVectors,
    /// The peer's masked matrix rows of this session (rows × peer cols).
    peer_e: Matrix,
}

impl DealerSession {
    /// This party's shares (a, b, c) of triple number `k` (one per row), if the dealer sent any.
    pub fn triple(&self, k: usize) -> Option<(&[u64], &[u64], &[u64])> {
        let r = k * self.rows..(k + 1) * self.rows;
        let t = &self.triples;
        (t.c.len() >= r.end).then(|| (&t.a[r.clone()], &t.b[r.clone()], &t.c[r]))
    }

    /// Peer side, forward: the message f = y − v and the peer's share E·v + R.
    pub fn peer_forward(&self, y: &[u64]) -> (Vec<u64>, Vec<u64>) {
        (sub(y, &self.peer.v), add(&self.peer_e.mul_vec(&self.peer.v), &self.peer.r))
    }

    /// Peer side, backward: g = r − v' and Eᵀ·v' + R'.
    pub fn peer_backward(&self, r: &[u64]) -> (Vec<u64>, Vec<u64>) {
        (sub(r, &self.peer.v2), add(&self.peer_e.mul_t_vec(&self.peer.v2), &self.peer.r2))
    }

    /// Owner side, forward: X·f + Z.
    pub fn owner_forward(&self, x: &Matrix, f: &[u64]) -> Vec<u64> {
        add(&x.mul_vec(f), &self.z[..self.rows])
    }

    /// Owner side, backward: Xᵀ·g + Z'.
    pub fn owner_backward(&self, x: &Matrix, g: &[u64]) -> Vec<u64> {
        add(&x.mul_t_vec(g), &self.z[self.rows..])
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::memory_pair;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dealer_products_match_plaintext() {
        let mut rng = StdRng::seed_from_u64(3);
        let (n, da, db, batch) = (70, 3, 2, 32);
        let xa: Vec<u64> = (0..n * da).map(|_| ((rng.next_u64() as i64) >> 52) as u64).collect();
        let ((a_d, d_a), (b_d, d_b)) = (memory_pair(8), memory_pair(8));
        let dealer = async { run_dealer(&d_a, &d_b).await.unwrap() };
        // Party A as owner of X_A; party B as its peer holding y (forward) and r (backward).
        let y: Vec<u64> = (0..da).map(|_| rng.next_u64()).collect();
        let r: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
        let a = async {
            let c = DealerClient::connect(&a_d, da, db, 1, batch, n, 0).await.unwrap();
            let x = Matrix::new(xa.clone(), n, da, 12);
            let e = c.masked(&x, List::Train, 0);
            let mut out = Vec::new();
            for first in (0..n).step_by(batch) {
                let rows = batch.min(n - first);
                let s = SessionId { epoch: 0, list: List::Train, first, rows };
                let xs = Matrix::new(xa[first * da..(first + rows) * da].to_vec(), rows, da, 12);
                let dummy = Matrix::new(vec![0; rows * db], rows, db, 64);
                let sess = c.session(s, dummy).await.unwrap();
                out.push((xs, sess));
            }
            (e, out)
        };
        // B reads its sessions afterwards (the dealer's frames wait in the channel buffer).
        let b = async { DealerClient::connect(&b_d, db, da, 1, batch, n, 0).await.unwrap() };
        let (report, (e, a_sessions), b_client) = futures::join!(dealer, a, b);
        assert_eq!(report.sessions, 3);
        // B receives E and runs its peer side per session; B's own-matrix Z's are unused here.
        let mut fwd_sum = vec![0u64; n];
        let mut bwd_sum = vec![0u64; da];
        for (k, (xs, a_sess)) in a_sessions.iter().enumerate() {
            let first = k * batch;
            let rows = xs.rows();
            let s = SessionId { epoch: 0, list: List::Train, first, rows };
            let pe = Matrix::new(e[first * da..(first + rows) * da].to_vec(), rows, da, 64);
            let b_sess = b_client.session(s, pe).await.unwrap();
            let (f, peer_f) = b_sess.peer_forward(&y);
            let own_f = a_sess.owner_forward(xs, &f);
            for i in 0..rows {
                fwd_sum[first + i] = own_f[i].wrapping_add(peer_f[i]);
            }
            let (g, peer_b) = b_sess.peer_backward(&r[first..first + rows]);
            let own_b = a_sess.owner_backward(xs, &g);
            for j in 0..da {
                bwd_sum[j] = bwd_sum[j].wrapping_add(own_b[j]).wrapping_add(peer_b[j]);
            }
        }
        let x = Matrix::new(xa, n, da, 12);
        assert_eq!(fwd_sum, x.mul_vec(&y));
        assert_eq!(bwd_sum, x.mul_t_vec(&r));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dealer_refuses_disagreeing_shapes() {
        let ((a_d, d_a), (b_d, d_b)) = (memory_pair(8), memory_pair(8));
        let (r, _, _) = futures::join!(
            run_dealer(&d_a, &d_b),
            send_u64s(&a_d, &[2, 1, 32, 100, 0, 0]),
            send_u64s(&b_d, &[2, 1, 32, 101, 0, 0]),
        );
        assert!(matches!(r, Err(MpcError::Protocol(_))));
    }
}
