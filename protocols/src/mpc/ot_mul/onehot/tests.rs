use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use super::*;
use crate::memory_pair;
use crate::ot::Security;

/// A one-hot matrix: per row and group a leaf in 0..=cols (0: none set), from `pick`.
fn onehot(rows: usize, sizes: &[u32], scale: u64, mut pick: impl FnMut(usize, usize) -> usize) -> Matrix {
    let total: usize = sizes.iter().map(|&c| c as usize).sum();
    let mut data = Vec::with_capacity(rows * total);
    for i in 0..rows {
        for (g, &c) in sizes.iter().enumerate() {
            let b = pick(i, g) % (c as usize + 1);
            data.extend((1..=c as usize).map(|j| if j == b { scale } else { 0 }));
        }
    }
    Matrix::new(data, rows, total, 64)
}

fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

/// Sets up kept correlations for `x` (in chunks of `chunk` rows), then runs `uses` uses of
/// batches of `batch` rows, each a forward and a backward product; returns per use the summed
/// shares and the plaintext answers.
async fn run(x: Matrix, sizes: &[u32], scale: u64, chunk: usize, batch: usize, uses: u64, seed: u64) {
    let groups = Arc::new(Groups::new(sizes, scale).unwrap());
    let (rows, cols) = (x.rows(), x.cols());
    let mut rng = StdRng::seed_from_u64(seed);
    let (ca, cb) = memory_pair(8);
    let xs: Vec<Matrix> = (0..rows.div_ceil(chunk))
        .map(|c| x.select_rows(&((c * chunk) as u32..((c + 1) * chunk).min(rows) as u32).collect::<Vec<_>>()))
        .collect();
    let chooser_setup = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let mut st = OneHotChooser::new(groups.clone(), rows);
        for part in &xs {
            st.extend(&ca, &mut ext, part).await.unwrap();
        }
        Arc::new(st)
    };
    let sender_setup = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        let mut st = OneHotSender::new(groups.clone(), rows);
        for c in 0..rows.div_ceil(chunk) {
            st.extend(&cb, &mut ext, ((c + 1) * chunk).min(rows) - c * chunk).await.unwrap();
        }
        Arc::new(st)
    };
    let (ch, se) = futures::join!(chooser_setup, sender_setup);
    assert_eq!(se.kept_bytes(), rows * groups.len() * 16);
    for u in 0..uses {
        for at in (0..rows).step_by(batch) {
            let m = batch.min(rows - at);
            let y_fwd: Vec<u64> = (0..cols).map(|_| rng.next_u64()).collect();
            let y_bwd: Vec<u64> = (0..m).map(|_| rng.next_u64()).collect();
            let xb = x.select_rows(&(at as u32..(at + m) as u32).collect::<Vec<_>>());
            let (mut want_f, want_b) = (xb.mul_vec(&y_fwd), xb.mul_t_vec(&y_bwd));
            if cols == 0 {
                // (`mul_vec` of a matrix without columns is empty: X·y is a zero per row.)
                want_f = vec![0; m];
            }
            let (s, c) = (se.session(u, at, m), ch.session(u, at, m));
            // Every other use expands ahead (as the LR does for its next batch).
            if u % 2 == 1 {
                s.precompute().unwrap();
                c.precompute().unwrap();
            }
            let (msg, sf) = s.forward(&y_fwd).unwrap();
            let cf = c.forward(&msg).unwrap();
            assert_eq!(add(&cf, &sf), want_f, "forward, use {u}, rows {at}+{m}");
            let (msg, sb) = s.backward(&y_bwd).unwrap();
            let cbk = c.backward(&msg).unwrap();
            assert_eq!(add(&cbk, &sb), want_b, "backward, use {u}, rows {at}+{m}");
            // Single use per session.
            assert!(s.forward(&y_fwd).is_err() && c.backward(&msg).is_err());
            // Shares are not the answer in the clear.
            if m > 8 && want_f.iter().any(|&v| v != 0) {
                assert_ne!(cf, want_f);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_match_plaintext_random_groups() {
    let mut rng = StdRng::seed_from_u64(3);
    let sizes = [9u32, 9, 3, 1, 2, 15, 16, 31, 200, 255];
    let x = onehot(300, &sizes, 256, |_, _| rng.random_range(0..256usize));
    run(x, &sizes, 256, 128, 64, 3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_match_plaintext_edges() {
    // k = 2 (one column), scale 1, batch size 1, rows not a multiple of the batch or the chunk.
    let x = onehot(7, &[1], 1, |i, _| i);
    run(x, &[1], 1, 3, 1, 2, 2).await;
    // All rows in one bin: the reference (no column set) and the last column.
    let x = onehot(50, &[9, 4], 256, |_, _| 0);
    run(x, &[9, 4], 256, 16, 7, 2, 3).await;
    let x = onehot(50, &[9, 4], 256, |_, g| [9, 4][g]);
    run(x, &[9, 4], 256, 16, 7, 2, 4).await;
    // One row; a scale beyond 2^63.
    let x = onehot(1, &[5, 1, 2], 3 << 62, |_, g| g + 1);
    run(x, &[5, 1, 2], 3 << 62, 1, 1, 1, 5).await;
    // No groups at all (a party without columns).
    let x = Matrix::new(vec![], 4, 0, 12);
    run(x, &[], 256, 4, 2, 1, 6).await;
}

#[test]
fn bad_matrices_and_announcements_are_refused() {
    let g = Groups::new(&[2, 3], 256).unwrap();
    // Two set in a group; a value other than the scale; a column count that does not match.
    let two = Matrix::new(vec![256, 256, 0, 0, 0], 1, 5, 12);
    assert!(g.leaves_of(&two).is_err());
    let odd = Matrix::new(vec![0, 1, 0, 0, 0], 1, 5, 12);
    assert!(g.leaves_of(&odd).is_err());
    assert!(g.leaves_of(&Matrix::new(vec![0; 4], 1, 4, 12)).is_err());
    assert_eq!(&**g.leaves_of(&Matrix::new(vec![0, 256, 0, 0, 256], 1, 5, 12)).unwrap(), &[2, 3]);
    // Group sizes 0 or above 255 locally; a peer's that do not cover its columns or a zero size.
    assert!(Groups::new(&[0], 1).is_err() && Groups::new(&[256], 1).is_err());
    assert!(Groups::from_peer(&[2, 3], 256, 6).is_err());
    assert!(Groups::from_peer(&[2, 0, 3], 256, 5).is_err());
    assert_eq!(Groups::from_peer(&[2, 3], 256, 5).unwrap(), g);
    let (head, sizes) = g.to_bytes();
    assert_eq!(Groups::count_from_header(&head, 5).unwrap(), (2, 256));
    assert_eq!(sizes, vec![2, 3]);
    // A count beyond the peer's columns is refused before anything is received.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&1u64.to_le_bytes());
    assert!(Groups::count_from_header(&huge, 5).is_err());
}

/// Leaves given directly are checked before any message: whole rows, each leaf within its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_leaves_are_refused_before_any_message() {
    let groups = Arc::new(Groups::new(&[3u32, 2], 1).unwrap());
    let (ca, cb) = memory_pair(8);
    let (ext, _s) =
        futures::join!(IknpReceiver::setup(&ca, Security::SemiHonest), IknpSender::setup(&cb, Security::SemiHonest));
    let mut ext = ext.unwrap();
    let mut st = OneHotChooser::new(groups.clone(), 4);
    for (rows, leaves) in [(2, vec![0u8, 1, 3]), (2, vec![0, 1, 3, 0, 0]), (1, vec![4, 0]), (1, vec![0, 3])] {
        let e = st.extend_leaves(&ca, &mut ext, rows, Zeroizing::new(leaves)).await.unwrap_err();
        assert!(matches!(e, MpcError::Invalid(_)), "{e:?}");
    }
    assert_eq!((st.rows, st.kept_bytes()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_or_tampered_messages_are_errors() {
    let sizes = [3u32, 2];
    let groups = Arc::new(Groups::new(&sizes, 1).unwrap());
    let x = onehot(10, &sizes, 1, |i, g| i + g);
    let (ca, cb) = memory_pair(8);
    let chooser = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let mut st = OneHotChooser::new(groups.clone(), 10);
        st.extend(&ca, &mut ext, &x).await.unwrap();
        // A second setup whose level sums come short: an error, not a panic.
        let mut st2 = OneHotChooser::new(groups.clone(), 10);
        assert!(st2.extend(&ca, &mut ext, &x).await.is_err());
        Arc::new(st)
    };
    let sender = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        let mut st = OneHotSender::new(groups.clone(), 10);
        st.extend(&cb, &mut ext, 10).await.unwrap();
        // The rogue second setup: the OTs, then a short vector of level sums.
        let ots = sender_prepare_layout(&cb, &mut ext, 10, Arc::new(groups.layout())).await.unwrap();
        drop(ots);
        send_u64s(&cb, &[1, 2, 3]).await.unwrap();
        Arc::new(st)
    };
    let (ch, se) = futures::join!(chooser, sender);
    let c = ch.session(0, 0, 10);
    // Short messages and out-of-range rows.
    assert!(c.forward(&[0; 49]).is_err());
    assert!(c.backward(&[0; 19]).is_err());
    assert!(ch.session(0, 5, 6).forward(&[0; 30]).is_err());
    assert!(se.session(0, 8, 3).backward(&[0; 3]).is_err());
    assert!(se.session(0, 0, 10).forward(&[0; 4]).is_err());
    // A tampered message gives wrong shares (semi-honest), never a panic.
    let s = se.session(1, 0, 10);
    let (mut msg, sf) = s.forward(&[5, 6, 7, 8, 9]).unwrap();
    msg[0] ^= 1;
    let c = ch.session(1, 0, 10);
    let cf = c.forward(&msg).unwrap();
    assert_eq!(cf.len(), sf.len());
}

#[test]
fn the_chooser_cannot_open_its_own_leaf() {
    // The punctured expansion agrees with the full one everywhere but on the chooser's leaf, and
    // the key there differs (it is not derivable from the co-path). Several trees at once, as
    // the batched kernel expands them.
    for k in [2usize, 3, 5, 10, 16, 17, 256] {
        let d = depth(k);
        let roots: Vec<u128> = (1..=4u128).map(|t| 0x1234_5678_9abc_def0_u128 * (k as u128) * t).collect();
        let mut full = Bufs::new(roots.len(), k);
        full.nodes.extend_from_slice(&roots);
        let mut levels = vec![vec![Vec::new(); d as usize + 1]; roots.len()];
        expand_many(&mut full, k, |t, l, z| levels[t][l as usize] = z.to_vec());
        for b in [0, k / 2, k - 1] {
            // The co-path as the setup delivers it: the sibling of the path node per level.
            let copath: Vec<Vec<u128>> = levels
                .iter()
                .map(|lv| (1..=d).map(|l| lv[l as usize].get((b >> (d - l)) ^ 1).copied().unwrap_or(0)).collect())
                .collect();
            let mut punct = Bufs::new(roots.len(), k);
            punct.nodes.resize(roots.len(), 0);
            expand_many(&mut punct, k, |t, l, z| {
                let p = b >> (d - l);
                z[p] = 0;
                if (p ^ 1) < z.len() {
                    z[p ^ 1] = copath[t][l as usize - 1];
                }
            });
            for t in 0..roots.len() {
                for j in 0..k {
                    let (p, f) = (punct.nodes[t * k + j], full.nodes[t * k + j]);
                    if j == b {
                        assert_ne!(p, f);
                    } else {
                        assert_eq!(p, f, "k {k} b {b} leaf {j}");
                    }
                }
            }
        }
        // Distinct roots give distinct leaves.
        assert_ne!(full.nodes[..k], full.nodes[k..2 * k]);
    }
}

/// Sets up kept correlations for `x` in one chunk (both sides).
async fn setup(x: &Matrix, groups: &Arc<Groups>) -> (Arc<OneHotSender>, Arc<OneHotChooser>) {
    let rows = x.rows();
    let (ca, cb) = memory_pair(8);
    let chooser = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let mut st = OneHotChooser::new(groups.clone(), rows);
        st.extend(&ca, &mut ext, x).await.unwrap();
        Arc::new(st)
    };
    let sender = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        let mut st = OneHotSender::new(groups.clone(), rows);
        st.extend(&cb, &mut ext, rows).await.unwrap();
        Arc::new(st)
    };
    let (ch, se) = futures::join!(chooser, sender);
    (se, ch)
}

/// Forward, backward and the paired backward on a list of rows against the plaintext.
fn check_rows(se: &Arc<OneHotSender>, ch: &Arc<OneHotChooser>, x: &Matrix, list: &[u32], use_id: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (m, cols) = (list.len(), x.cols());
    let xb = x.select_rows(list);
    let y_fwd: Vec<u64> = (0..cols).map(|_| rng.next_u64()).collect();
    let y_bwd: Vec<u64> = (0..m).map(|_| rng.next_u64()).collect();
    let mut want_f = xb.mul_vec(&y_fwd);
    if cols == 0 {
        want_f = vec![0; m];
    }
    let want_b = xb.mul_t_vec(&y_bwd);
    let rows: Arc<[u32]> = list.into();
    let (s, c) = (se.session_rows(use_id, rows.clone()), ch.session_rows(use_id, rows.clone()));
    let (msg, sf) = s.forward(&y_fwd).unwrap();
    assert_eq!(add(&c.forward(&msg).unwrap(), &sf), want_f, "forward of rows {list:?}");
    let (msg, sb) = s.backward(&y_bwd).unwrap();
    assert_eq!(add(&c.backward(&msg).unwrap(), &sb), want_b, "backward of rows {list:?}");
    // A session without a forward product: the backward alone.
    let (s, c) = (se.session_rows(use_id + 1, rows.clone()), ch.session_rows(use_id + 1, rows.clone()));
    let (msg, sb) = s.backward(&y_bwd).unwrap();
    assert_eq!(add(&c.backward(&msg).unwrap(), &sb), want_b, "backward alone of rows {list:?}");
    // Two vectors at once, alone and after a forward product.
    let y2: Vec<u64> = (0..m).map(|_| rng.next_u64()).collect();
    let want_2 = xb.mul_t_vec(&y2);
    for (u, with_forward) in [(2, false), (3, true)] {
        let (s, c) = (se.session_rows(use_id + u, rows.clone()), ch.session_rows(use_id + u, rows.clone()));
        if with_forward {
            let (msg, sf) = s.forward(&y_fwd).unwrap();
            assert_eq!(add(&c.forward(&msg).unwrap(), &sf), want_f);
        }
        let (msg, s0, s1) = s.backward_pair(&y_bwd, &y2).unwrap();
        assert_eq!(msg.len(), c.backward_pair_len());
        let (c0, c1) = c.backward_pair(&msg).unwrap();
        assert_eq!(add(&c0, &s0), want_b, "paired backward (first) of rows {list:?}");
        assert_eq!(add(&c1, &s1), want_2, "paired backward (second) of rows {list:?}");
        // One backward per session.
        assert!(s.backward(&y_bwd).is_err() && c.backward_pair(&msg).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_rows_match_plaintext() {
    let mut rng = StdRng::seed_from_u64(11);
    let sizes = [9u32, 1, 255, 3, 16];
    let x = onehot(600, &sizes, 256, |_, _| rng.random_range(0..256usize));
    let groups = Arc::new(Groups::new(&sizes, 256).unwrap());
    let (se, ch) = setup(&x, &groups).await;
    let every_third: Vec<u32> = (0..600).step_by(3).collect();
    let sparse: Vec<u32> = vec![0, 1, 7, 64, 65, 300, 599];
    let all: Vec<u32> = (0..600).collect();
    for (u, list) in [vec![], vec![0], vec![599], vec![313], sparse, every_third, all].iter().enumerate() {
        check_rows(&se, &ch, &x, list, 10 * u as u64, u as u64);
    }
    // One group with k = 2, and one with k = 256 alone.
    for sizes in [[1u32], [255]] {
        let x = onehot(70, &sizes, 3 << 62, |i, _| i * 37);
        let groups = Arc::new(Groups::new(&sizes, 3 << 62).unwrap());
        let (se, ch) = setup(&x, &groups).await;
        check_rows(&se, &ch, &x, &[5], 0, 1);
        check_rows(&se, &ch, &x, &[0, 2, 3, 40, 69], 2, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_row_lists_are_errors() {
    let sizes = [3u32, 2];
    let x = onehot(10, &sizes, 1, |i, g| i + g);
    let groups = Arc::new(Groups::new(&sizes, 1).unwrap());
    let (se, ch) = setup(&x, &groups).await;
    for bad in [vec![3u32, 3], vec![4, 2], vec![0, 10], vec![u32::MAX]] {
        let rows: Arc<[u32]> = bad.into();
        let (s, c) = (se.session_rows(0, rows.clone()), ch.session_rows(0, rows.clone()));
        assert!(s.forward(&[1; 5]).is_err());
        assert!(s.backward(&vec![1; rows.len()]).is_err());
        assert!(c.forward(&vec![0; rows.len() * 5]).is_err());
        assert!(c.backward(&vec![0; rows.len() * 2]).is_err());
    }
    // Messages of the wrong length for a list (a single backward's for a pair and back).
    let rows: Arc<[u32]> = vec![1u32, 4, 9].into();
    let c = ch.session_rows(0, rows.clone());
    assert!(c.forward(&[0; 14]).is_err() && c.backward(&[0; 5]).is_err());
    assert!(ch.session_rows(1, rows.clone()).backward_pair(&[0; 6]).is_err());
    assert!(ch.session_rows(2, rows.clone()).backward(&[0; 12]).is_err());
    assert!(se.session_rows(3, rows.clone()).backward_pair(&[0; 3], &[0; 2]).is_err());
    // A tampered pair message: wrong shares, no panic.
    let (s, c) = (se.session_rows(4, rows.clone()), ch.session_rows(4, rows));
    let (mut msg, ..) = s.backward_pair(&[1, 2, 3], &[4, 5, 6]).unwrap();
    msg[5] ^= 1;
    assert!(c.backward_pair(&msg).is_ok());
}

/// Kept stores of `rows` rows over a memory channel (chooser with `x`).
async fn stores(x: &Matrix, sizes: &[u32], scale: u64) -> (Arc<OneHotChooser>, Arc<OneHotSender>) {
    let groups = Arc::new(Groups::new(sizes, scale).unwrap());
    let (ca, cb) = memory_pair(8);
    let chooser = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let mut st = OneHotChooser::new(groups.clone(), x.rows());
        st.extend(&ca, &mut ext, x).await.unwrap();
        Arc::new(st)
    };
    let sender = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        let mut st = OneHotSender::new(groups.clone(), x.rows());
        st.extend(&cb, &mut ext, x.rows()).await.unwrap();
        Arc::new(st)
    };
    futures::join!(chooser, sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precomputed_uses_give_the_same_messages_and_shares() {
    let mut rng = StdRng::seed_from_u64(11);
    let sizes = [9u32, 1, 4, 255];
    let x = onehot(70, &sizes, 256, |_, _| rng.random_range(0..256usize));
    let (ch, se) = stores(&x, &sizes, 256).await;
    let cols = x.cols();
    for (at, m, fwd_only) in [(0, 70, false), (5, 1, false), (60, 10, true), (3, 0, false)] {
        let y_fwd: Vec<u64> = (0..cols).map(|_| rng.next_u64()).collect();
        let y_bwd: Vec<u64> = (0..m).map(|_| rng.next_u64()).collect();
        let (s0, c0) = (se.session(7, at, m), ch.session(7, at, m));
        let (s1, c1) = (se.session(7, at, m), ch.session(7, at, m));
        let (s0, c0, s1, c1) = if fwd_only {
            (s0.forward_only(), c0.forward_only(), s1.forward_only(), c1.forward_only())
        } else {
            (s0, c0, s1, c1)
        };
        s1.precompute().unwrap();
        c1.precompute().unwrap();
        let (msg0, sf0) = s0.forward(&y_fwd).unwrap();
        let (msg1, sf1) = s1.forward(&y_fwd).unwrap();
        assert_eq!((&msg0, &sf0), (&msg1, &sf1), "sender forward, rows {at}+{m}");
        let (cf0, cf1) = (c0.forward(&msg0).unwrap(), c1.forward(&msg1).unwrap());
        assert_eq!(cf0, cf1, "chooser forward, rows {at}+{m}");
        let xb = x.select_rows(&(at as u32..(at + m) as u32).collect::<Vec<_>>());
        assert_eq!(add(&cf1, &sf1), xb.mul_vec(&y_fwd));
        // Precomputing after the forward is refused; a forward after a precompute is the one use.
        assert!(s1.precompute().is_err() && c1.precompute().is_err());
        assert!(s1.forward(&y_fwd).is_err() && c1.forward(&msg1).is_err());
        if !fwd_only {
            let (b0, sb0) = s0.backward(&y_bwd).unwrap();
            let (b1, sb1) = s1.backward(&y_bwd).unwrap();
            assert_eq!((&b0, &sb0), (&b1, &sb1));
            let cb1 = c1.backward(&b1).unwrap();
            assert_eq!(c0.backward(&b0).unwrap(), cb1);
            assert_eq!(add(&cb1, &sb1), xb.mul_t_vec(&y_bwd));
        }
    }
    // A precomputed chooser still checks the message's length; a session beyond the kept rows
    // cannot be precomputed.
    let c = ch.session(8, 0, 4);
    c.precompute().unwrap();
    assert!(c.forward(&[0; 3]).is_err());
    assert!(se.session(8, 69, 2).precompute().is_err() && ch.session(8, 69, 2).precompute().is_err());
}

#[test]
fn matrix_of_leaves_is_the_matrix() {
    let mut rng = StdRng::seed_from_u64(12);
    let sizes = [9u32, 1, 4, 255, 2];
    let x = onehot(40, &sizes, 256, |_, _| rng.random_range(0..256usize)).tightened();
    let g = Groups::new(&sizes, 256).unwrap();
    let leaves = g.leaves_of(&x).unwrap();
    for rows in [vec![], vec![0], vec![39, 0, 17, 17], (0..40).collect::<Vec<u32>>()] {
        let m = g.matrix_of(&leaves, &rows, x.bits(), x.layout().clone());
        let want = x.select_rows(&rows);
        assert_eq!((m.data(), m.rows(), m.cols(), m.bits()), (want.data(), want.rows(), want.cols(), want.bits()));
        assert_eq!(m.layout().cols(), want.layout().cols());
    }
}

/// The local products on leaves equal the matrix's, with random full-range vectors (so the
/// mod-2^64 wrap is exercised) and blocks of more rows than one rayon task.
#[test]
fn local_products_on_leaves_are_the_matrix_products() {
    let mut rng = StdRng::seed_from_u64(13);
    let sizes = [9u32, 1, 4, 255, 2];
    let rows = 2 * SUM_ROWS + 37;
    let scale = 3u64 << 20;
    let x = onehot(rows, &sizes, scale, |_, _| rng.random_range(0..256usize));
    let g = Groups::new(&sizes, scale).unwrap();
    let leaves = g.leaves_of(&x).unwrap();
    let all: Vec<u32> = (0..rows as u32).collect();
    for list in [vec![], vec![5], vec![rows as u32 - 1, 0, 17, 17], all] {
        let batch = g.leaves_of_rows(&leaves, &list);
        let want = x.select_rows(&list);
        let v: Vec<u64> = (0..g.total_cols()).map(|_| rng.next_u64()).collect();
        assert_eq!(g.leaves_mul_vec(&batch, &v), want.mul_vec(&v));
        let r: Vec<u64> = (0..list.len()).map(|_| rng.next_u64()).collect();
        assert_eq!(g.leaves_mul_t_vec(&batch, &r), want.mul_t_vec(&r));
    }
    // All rows in one bin, and none set: a column gets every row or none.
    let x = onehot(300, &sizes, scale, |_, g| if g == 0 { 3 } else { 0 });
    let leaves = g.leaves_of(&x).unwrap();
    let r: Vec<u64> = (0..300).map(|_| rng.next_u64()).collect();
    let list: Vec<u32> = (0..300).collect();
    assert_eq!(g.leaves_mul_t_vec(&g.leaves_of_rows(&leaves, &list), &r), x.mul_t_vec(&r));
}
/// Leaves kept by either side (all groups, some, none) give the same messages and shares as the
/// expansion per use, and products equal to the plaintext's; the budget picks a prefix of the
/// groups; a store whose leaves are kept cannot be extended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_leaves_give_the_same_messages_and_shares() {
    let mut rng = StdRng::seed_from_u64(13);
    let sizes = [32u32, 1, 255, 3, 9];
    let rows = 300;
    let x = onehot(rows, &sizes, 1, |_, _| rng.random_range(0..256usize));
    let groups = Arc::new(Groups::new(&sizes, 1).unwrap());
    let (se, ch) = setup(&x, &groups).await;
    let list: Arc<[u32]> = (0..rows as u32).filter(|i| i % 3 != 1).collect();
    let y0: Vec<u64> = (0..list.len()).map(|_| rng.next_u64()).collect();
    let y1: Vec<u64> = (0..list.len()).map(|_| rng.next_u64()).collect();
    let pair = |se: &Arc<OneHotSender>, ch: &Arc<OneHotChooser>| {
        let (msg, s0, s1) = se.session_rows(7, list.clone()).backward_pair(&y0, &y1).unwrap();
        let (c0, c1) = ch.session_rows(7, list.clone()).backward_pair(&msg).unwrap();
        (msg, s0, s1, c0, c1)
    };
    let before = pair(&se, &ch);
    let xb = x.select_rows(&list);
    assert_eq!(add(&before.1, &before.3), xb.mul_t_vec(&y0));
    assert_eq!(add(&before.2, &before.4), xb.mul_t_vec(&y1));
    let (mut se, mut ch) = (Arc::try_unwrap(se).ok().unwrap(), Arc::try_unwrap(ch).ok().unwrap());
    let bytes = |g: usize| rows * (sizes[..g].iter().map(|&c| c as usize + 1).sum::<usize>()) * 16;
    // The sender keeps every group, the chooser the first two (a budget a byte short of three).
    assert_eq!(se.keep_leaves(usize::MAX), sizes.len());
    assert_eq!(ch.keep_leaves(bytes(3) - 1), 2);
    assert_eq!(se.kept_bytes(), rows * sizes.len() * 16 + bytes(sizes.len()));
    let (ca, cb) = memory_pair(8);
    let (er, es) =
        futures::join!(IknpReceiver::setup(&ca, Security::SemiHonest), IknpSender::setup(&cb, Security::SemiHonest));
    let (mut er, mut es) = (er.unwrap(), es.unwrap());
    assert!(se.extend(&cb, &mut es, 10).await.is_err() && ch.extend(&ca, &mut er, &x).await.is_err());
    let (se, ch) = (Arc::new(se), Arc::new(ch));
    assert_eq!(pair(&se, &ch), before, "kept leaves changed the paired backward");
    // Every other product on the listed rows, and the other way round (the chooser keeps all,
    // the sender none).
    check_rows(&se, &ch, &x, &list, 100, 1);
    let (se2, ch2) = setup(&x, &groups).await;
    let mut ch2 = Arc::try_unwrap(ch2).ok().unwrap();
    assert_eq!(ch2.keep_leaves(bytes(sizes.len())), sizes.len());
    let ch2 = Arc::new(ch2);
    check_rows(&se2, &ch2, &x, &list, 200, 2);
    check_rows(&se2, &ch2, &x, &[0, 299], 300, 3);
}

/// Stores set up in chunks of `chunk` rows (the last one shorter) with each side's leaves kept by
/// the setup itself within its budget ([`OneHotSender::keep_during_setup`]).
async fn setup_keeping(
    x: &Matrix,
    groups: &Arc<Groups>,
    chunk: usize,
    budgets: (usize, usize),
) -> (Arc<OneHotSender>, Arc<OneHotChooser>) {
    let rows = x.rows();
    let (ca, cb) = memory_pair(8);
    let chooser = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let mut st = OneHotChooser::new(groups.clone(), rows);
        st.keep_during_setup(budgets.1, chunk.is_multiple_of(2)).unwrap();
        for at in (0..rows).step_by(chunk) {
            let part = x.select_rows(&(at as u32..(at + chunk).min(rows) as u32).collect::<Vec<_>>());
            st.extend(&ca, &mut ext, &part).await.unwrap();
        }
        st
    };
    let sender = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        let mut st = OneHotSender::new(groups.clone(), rows);
        st.keep_during_setup(budgets.0, !chunk.is_multiple_of(2)).unwrap();
        for at in (0..rows).step_by(chunk) {
            st.extend(&cb, &mut ext, (at + chunk).min(rows) - at).await.unwrap();
        }
        st
    };
    let (ch, se) = futures::join!(chooser, sender);
    (Arc::new(se), Arc::new(ch))
}

/// Leaves kept by the setup itself (all groups, some, none; either side; several chunks over
/// kernel tasks of 128 rows) give products equal to the plaintext's; when every group is kept
/// the roots or co-path keys are not stored; planning after the setup began, or rows beyond those
/// reserved, are errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_kept_during_the_setup_give_the_plaintext_products() {
    let mut rng = StdRng::seed_from_u64(14);
    let sizes = [32u32, 1, 255, 3, 9];
    let rows = 300;
    let x = onehot(rows, &sizes, 1, |_, _| rng.random_range(0..256usize));
    let groups = Arc::new(Groups::new(&sizes, 1).unwrap());
    let bytes = |g: usize| rows * (sizes[..g].iter().map(|&c| c as usize + 1).sum::<usize>()) * 16;
    let list: Vec<u32> = (0..rows as u32).filter(|i| i % 3 != 1).collect();
    for (case, (budgets, chunk)) in
        [((usize::MAX, bytes(3) - 1), 130), ((bytes(1), usize::MAX), 300), ((0, 0), 77), ((usize::MAX, usize::MAX), 1)]
            .into_iter()
            .enumerate()
    {
        let (se, ch) = setup_keeping(&x, &groups, chunk, budgets).await;
        let kept = |b: usize| (0..=sizes.len()).rev().find(|&g| bytes(g) <= b).unwrap();
        let (ks, kc) = (kept(budgets.0), kept(budgets.1));
        let roots = if ks == sizes.len() { 0 } else { rows * sizes.len() * 16 };
        assert_eq!(se.kept_bytes(), roots + bytes(ks), "case {case}");
        let per: usize = sizes.iter().map(|&c| (c as usize + 1).next_power_of_two().trailing_zeros() as usize).sum();
        let copath = if kc == sizes.len() { 0 } else { rows * per * 16 };
        assert_eq!(ch.kept_bytes(), rows * sizes.len() + copath + bytes(kc), "case {case}");
        check_rows(&se, &ch, &x, &list, 10 * case as u64, case as u64);
        check_rows(&se, &ch, &x, &[0, 299], 10 * case as u64 + 5, case as u64);
    }
    // Planning after the first extend, and extending beyond the reserved rows while filling.
    let (ca, cb) = memory_pair(8);
    let (er, es) =
        futures::join!(IknpReceiver::setup(&ca, Security::SemiHonest), IknpSender::setup(&cb, Security::SemiHonest));
    let (mut er, mut es) = (er.unwrap(), es.unwrap());
    let part = x.select_rows(&[0, 1]);
    let (mut ch, mut se) = (OneHotChooser::new(groups.clone(), 2), OneHotSender::new(groups.clone(), 2));
    let (c, s) = futures::join!(ch.extend(&ca, &mut er, &part), se.extend(&cb, &mut es, 2));
    c.unwrap();
    s.unwrap();
    assert!(ch.keep_during_setup(usize::MAX, false).is_err() && se.keep_during_setup(usize::MAX, true).is_err());
    let (mut ch, mut se) = (OneHotChooser::new(groups.clone(), 1), OneHotSender::new(groups.clone(), 1));
    assert!(
        ch.keep_during_setup(usize::MAX, true).unwrap() > 0 && se.keep_during_setup(usize::MAX, false).unwrap() > 0
    );
    assert!(ch.extend(&ca, &mut er, &part).await.is_err() && se.extend(&cb, &mut es, 2).await.is_err());
}

#[test]
fn spare_buffers_are_reused_and_bounded() {
    let spare = Spare::default();
    assert!(spare.take(0).is_empty() && spare.take(0).capacity() == 0);
    spare.give(vec![u64::MAX; 100]);
    let v = spare.take(60);
    assert_eq!(v.len(), 60);
    assert!(v.capacity() >= 100, "the spare buffer was reused");
    spare.give(v);
    // A spare buffer with room but too few words is zero-filled.
    let mut short = spare.room(90);
    short.extend([5; 10]);
    spare.give(short);
    let v = spare.take(90);
    assert!(v.capacity() >= 100 && v == [0; 90]);
    spare.give(v);
    // Too small a spare is not used (nor grown: that would copy it); a larger request allocates.
    assert_eq!(spare.take(500), vec![0; 500]);
    let room = spare.room(80);
    assert!(room.is_empty() && room.capacity() >= 80);
    for n in [10, 20, 30, 40, 50, 60] {
        spare.give(vec![7; n]);
    }
    // The smallest that fits is taken.
    assert_eq!(spare.take(35).capacity(), 40);
    spare.give(vec![7; 40]);
    let kept = spare.0.lock().unwrap();
    assert_eq!(kept.len(), Spare::KEEP, "at most KEEP buffers");
    let mut caps: Vec<usize> = kept.iter().map(|v| v.capacity()).collect();
    caps.sort_unstable();
    assert!(caps[0] >= 30, "the largest are kept: {caps:?}");
}

/// As SecureBoost runs its uses: every message handed back to its store once sent or used, dirty
/// spare buffers of other sizes in both stores, received messages in the chooser's buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_buffers_give_the_plaintext_products() {
    let mut rng = StdRng::seed_from_u64(5);
    let sizes = [9u32, 2, 32, 1];
    let x = onehot(500, &sizes, 1, |_, _| rng.random_range(0..64usize));
    let groups = Arc::new(Groups::new(&sizes, 1).unwrap());
    let (se, ch) = setup(&x, &groups).await;
    for n in [3, 4_000, 40_000] {
        se.recycle(vec![u64::MAX; n]);
        ch.recycle(vec![u64::MAX; n]);
    }
    let lists: [Vec<u32>; 4] =
        [(0..500).collect(), (0..500).step_by(2).collect(), vec![3, 99, 400], (0..500).collect()];
    for (u, list) in lists.iter().enumerate() {
        let m = list.len();
        let xb = x.select_rows(list);
        let y: [Vec<u64>; 2] = [0, 1].map(|_| (0..m).map(|_| rng.next_u64()).collect());
        let rows: Arc<[u32]> = list.as_slice().into();
        let (msg, s0, s1) = se.session_rows(u as u64, rows.clone()).backward_pair(&y[0], &y[1]).unwrap();
        let mut got = ch.buffer(msg.len());
        got.extend_from_slice(&msg);
        se.recycle(msg);
        let (c0, c1) = ch.session_rows(u as u64, rows).backward_pair(&got).unwrap();
        ch.recycle(got);
        assert_eq!(add(&c0, &s0), xb.mul_t_vec(&y[0]), "use {u}");
        assert_eq!(add(&c1, &s1), xb.mul_t_vec(&y[1]), "use {u}");
    }
    // The forward and the single backward of a batch on the same stores.
    check_rows(&se, &ch, &x, &(0..500).collect::<Vec<_>>(), 100, 9);
}
