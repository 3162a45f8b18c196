use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use super::*;
use crate::memory_pair;
use crate::ot::Security;

fn random_matrix(rng: &mut StdRng, rows: usize, cols: usize, bits: u32) -> Matrix {
    let data = (0..rows * cols)
        .map(|_| if bits == 64 { rng.next_u64() } else { ((rng.next_u64() as i64) >> (64 - bits)) as u64 })
        .collect();
    Matrix::new(data, rows, cols, bits)
}

/// Plaintext X·y and Xᵀ·y mod 2^64.
fn plain(x: &Matrix, y_fwd: &[u64], y_bwd: &[u64]) -> (Vec<u64>, Vec<u64>) {
    (x.mul_vec(y_fwd), x.mul_t_vec(y_bwd))
}

async fn run_both(x: Matrix, y_fwd: Vec<u64>, y_bwd: Vec<u64>) -> ((Vec<u64>, Vec<u64>), (Vec<u64>, Vec<u64>)) {
    let (rows, layout) = (x.rows(), x.layout().clone());
    let n = rows * layout.per_row();
    let x = Arc::new(x);
    let (ca, cb) = memory_pair(8);
    let chooser = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let ots = chooser_prepare(&ca, &mut ext, x.clone()).await.unwrap();
        let tau = recv_u64s(&ca, n).await.unwrap();
        let f = chooser_forward(&ots, &x, &tau).unwrap();
        let tau = recv_u64s(&ca, n).await.unwrap();
        let b = chooser_backward(&ots, &x, &tau).unwrap();
        // Pads are single-use.
        assert!(chooser_backward(&ots, &x, &tau).is_err());
        (f, b)
    };
    let sender = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        let ots = sender_prepare_layout(&cb, &mut ext, rows, layout).await.unwrap();
        let (tau, f) = sender_forward(&ots, &y_fwd).unwrap();
        send_u64s(&cb, &tau).await.unwrap();
        let (tau, b) = sender_backward(&ots, &y_bwd).unwrap();
        send_u64s(&cb, &tau).await.unwrap();
        assert!(sender_forward(&ots, &y_fwd).is_err());
        (f, b)
    };
    futures::join!(chooser, sender)
}

fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_match_plaintext_for_random_and_edge_values() {
    let mut rng = StdRng::seed_from_u64(7);
    for (rows, cols, bits) in [(1, 1, 1), (3, 2, 12), (300, 7, 12), (513, 3, 64), (40, 1, 5), (1000, 2, 2)] {
        let x = random_matrix(&mut rng, rows, cols, bits);
        let mut y_fwd: Vec<u64> = (0..cols).map(|_| rng.next_u64()).collect();
        let mut y_bwd: Vec<u64> = (0..rows).map(|_| rng.next_u64()).collect();
        // Edge values of y.
        y_fwd[0] = u64::MAX;
        y_bwd[0] = 1 << 63;
        if rows > 1 {
            y_bwd[1] = 0;
        }
        let (want_f, want_b) = plain(&x, &y_fwd, &y_bwd);
        let ((cf, cbk), (sf, sb)) = run_both(x, y_fwd, y_bwd).await;
        assert_eq!(add(&cf, &sf), want_f, "forward {rows}x{cols}x{bits}");
        assert_eq!(add(&cbk, &sb), want_b, "backward {rows}x{cols}x{bits}");
        // Shares are not the answer in the clear.
        if rows > 10 {
            assert_ne!(cf, want_f);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_matrix_entries() {
    // The most negative and most positive entries of each width.
    let mut rng = StdRng::seed_from_u64(8);
    for bits in [1u32, 8, 12, 63, 64] {
        let min = if bits == 64 { 1u64 << 63 } else { (-(1i64 << (bits - 1))) as u64 };
        let max = if bits == 64 { i64::MAX as u64 } else { ((1i64 << (bits - 1)) - 1) as u64 };
        let x = Matrix::new(vec![min, max, 0, min, max, u64::from(bits == 1).wrapping_neg()], 3, 2, bits);
        let y_fwd = vec![rng.next_u64(), rng.random_range(0..5)];
        let y_bwd = vec![u64::MAX, 1, rng.next_u64()];
        let (want_f, want_b) = plain(&x, &y_fwd, &y_bwd);
        let ((cf, cbk), (sf, sb)) = run_both(x, y_fwd, y_bwd).await;
        assert_eq!(add(&cf, &sf), want_f, "bits {bits}");
        assert_eq!(add(&cbk, &sb), want_b, "bits {bits}");
    }
}

#[test]
#[should_panic(expected = "out of the 4-bit range")]
fn entries_must_fit_their_width() {
    Matrix::new(vec![8], 1, 1, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_corrections_are_rejected() {
    let x = Arc::new(Matrix::new(vec![1, 2], 1, 2, 4));
    let (ca, cb) = memory_pair(8);
    let chooser = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let ots = chooser_prepare(&ca, &mut ext, x.clone()).await.unwrap();
        chooser_forward(&ots, &x, &[0; 7]).unwrap_err()
    };
    let sender = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        sender_prepare(&cb, &mut ext, 1, 2, 4).await.unwrap();
    };
    let (err, ()) = futures::join!(chooser, sender);
    assert!(matches!(err, MpcError::Protocol(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_ots_rekeyed_per_use_give_correct_products_and_fresh_pads() {
    let mut rng = StdRng::seed_from_u64(9);
    let (rows, cols, bits) = (300, 3, 12);
    let x = random_matrix(&mut rng, rows, cols, bits);
    let (top, bottom) = (x.data()[..150 * cols].to_vec(), x.data()[150 * cols..].to_vec());
    let (top, bottom) = (Arc::new(Matrix::new(top, 150, cols, bits)), Arc::new(Matrix::new(bottom, 150, cols, bits)));
    let (ca, cb) = memory_pair(8);
    let chooser = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let mut cache = ChooserCache::new(rows, cols, bits);
        for part in [top.clone(), bottom.clone()] {
            cache.append(chooser_prepare(&ca, &mut ext, part).await.unwrap());
        }
        let mut outs = Vec::new();
        for use_id in 0..2u64 {
            // Rows 100..250 straddle the two appended parts.
            let sub: Vec<u64> = x.data()[100 * cols..250 * cols].to_vec();
            let sub = Matrix::new(sub, 150, cols, bits);
            let ots = cache.session(use_id, 100..250);
            let tau_f = recv_u64s(&ca, 150 * cols * bits as usize).await.unwrap();
            let tau_b = recv_u64s(&ca, 150 * cols * bits as usize).await.unwrap();
            outs.push((
                chooser_forward(&ots, &sub, &tau_f).unwrap(),
                chooser_backward(&ots, &sub, &tau_b).unwrap(),
                tau_f,
            ));
        }
        outs
    };
    let (y_f, y_b): (Vec<u64>, Vec<u64>) =
        ((0..cols).map(|_| rng.next_u64()).collect(), (0..150).map(|_| rng.next_u64()).collect());
    let sender = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        let mut cache = SenderCache::new(rows, cols, bits);
        for _ in 0..2 {
            cache.append(sender_prepare(&cb, &mut ext, 150, cols, bits).await.unwrap());
        }
        let mut outs = Vec::new();
        for use_id in 0..2u64 {
            let ots = cache.session(use_id, 100..250);
            let (tau_f, f) = sender_forward(&ots, &y_f).unwrap();
            let (tau_b, b) = sender_backward(&ots, &y_b).unwrap();
            send_u64s(&cb, &tau_f).await.unwrap();
            send_u64s(&cb, &tau_b).await.unwrap();
            outs.push((f, b));
        }
        outs
    };
    let (c, s) = futures::join!(chooser, sender);
    let sub = Matrix::new(x.data()[100 * cols..250 * cols].to_vec(), 150, cols, bits);
    let (want_f, want_b) = plain(&sub, &y_f, &y_b);
    for ((cf, cbk, _), (sf, sb)) in c.iter().zip(&s) {
        assert_eq!(add(cf, sf), want_f);
        assert_eq!(add(cbk, sb), want_b);
    }
    // The same inputs in two uses: different pads, so different corrections and shares.
    assert_ne!(c[0].2, c[1].2);
    assert_ne!(c[0].0, c[1].0);
}

#[test]
fn column_bits_are_the_narrowest_that_hold_the_entries() {
    let of = |v: &[i64]| ColBits::of(v.iter().map(|&x| x as u64));
    let cb = |lo, hi, signed| ColBits { lo, hi, signed };
    assert_eq!(of(&[]), cb(0, 0, false));
    assert_eq!(of(&[0, 0, 0]), cb(0, 0, false));
    assert_eq!(of(&[0, 1, 1, 0]), cb(0, 1, false));
    // A 0/1 indicator encoded with 8 fraction bits: still one bit.
    assert_eq!(of(&[0, 256]), cb(8, 9, false));
    assert_eq!(of(&[3, 3, 3]), cb(0, 2, false));
    assert_eq!(of(&[0, 1, 2, 3]), cb(0, 2, false));
    assert_eq!(of(&[-1, 0]), cb(0, 1, true));
    assert_eq!(of(&[-256]), cb(8, 9, true));
    assert_eq!(of(&[-256, 256]), cb(8, 10, true));
    assert_eq!(of(&[-2, 1]), cb(0, 2, true));
    assert_eq!(of(&[-2048, 2047]), cb(0, 12, true));
    assert_eq!(of(&[i64::MIN, 5]), cb(0, 64, true));
    assert_eq!(of(&[i64::MIN]), cb(63, 64, true));
    for c in [cb(0, 0, false), cb(0, 1, false), cb(8, 10, true), cb(0, 64, true)] {
        assert_eq!(Layout::new(vec![c]).per_row(), c.width());
    }
}

/// Columns of every kind: 0/1, 0/256 (an indicator at 8 fraction bits), small non-negative
/// integers, all zero, constant, negative only, 12-bit signed, and 64-bit.
fn mixed_matrix(rng: &mut StdRng, rows: usize) -> Matrix {
    let mut data = Vec::new();
    for i in 0..rows {
        data.extend([
            rng.random_range(0..2u64),
            rng.random_range(0..2u64) << 8,
            rng.random_range(0..4u64),
            0,
            5,
            (-(rng.random_range(1..100i64))) as u64,
            ((rng.next_u64() as i64) >> 52) as u64,
            if i == 0 { 1 << 63 } else { rng.next_u64() },
        ]);
    }
    Matrix::new(data, rows, 8, 64)
}

/// The row-major scan of `tightened` (blocks of rows merged on rayon) gives each column the
/// layout [`ColBits::of`] gives that column alone: for one row, a block's worth and several
/// blocks (the last one partial), with a column whose only non-zero entry is in the last row.
#[test]
fn tightened_layout_is_the_per_column_narrowest() {
    let mut rng = StdRng::seed_from_u64(12);
    for rows in [1usize, 256, 1000] {
        let x = mixed_matrix(&mut rng, rows);
        let (cols, data) = (x.cols(), x.data().to_vec());
        let mut extra = Vec::with_capacity(rows * (cols + 1));
        for (i, row) in data.chunks(cols).enumerate() {
            extra.extend_from_slice(row);
            extra.push(if i + 1 == rows { (-4096i64) as u64 } else { 0 });
        }
        let x = Matrix::new(extra, rows, cols + 1, 64);
        let want: Vec<ColBits> =
            (0..=cols).map(|j| ColBits::of((0..rows).map(|i| x.data()[i * (cols + 1) + j]))).collect();
        let x = x.tightened();
        assert_eq!(x.layout().cols(), &want[..], "{rows} rows");
        assert_eq!(want[cols], ColBits { lo: 12, hi: 13, signed: true });
    }
    let empty = Matrix::new(Vec::new(), 0, 3, 12).tightened();
    assert_eq!(empty.layout().cols(), &[ColBits { lo: 0, hi: 0, signed: false }; 3]);
    assert_eq!(Matrix::new(Vec::new(), 4, 0, 12).tightened().layout().per_row(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrow_layouts_give_the_same_products_with_fewer_ots() {
    let mut rng = StdRng::seed_from_u64(10);
    for rows in [1usize, 2, 300] {
        let x = mixed_matrix(&mut rng, rows).tightened();
        let widths: Vec<usize> = x.layout().cols().iter().map(|c| c.width()).collect();
        if rows == 300 {
            assert_eq!(widths[..5], [1, 1, 2, 0, 3]);
            assert!(widths[5] <= 8 && widths[6] <= 12 && widths[7] == 64, "{widths:?}");
        }
        let y_fwd: Vec<u64> = (0..8).map(|_| rng.next_u64()).collect();
        let y_bwd: Vec<u64> = (0..rows).map(|_| rng.next_u64()).collect();
        let (want_f, want_b) = plain(&x, &y_fwd, &y_bwd);
        let ((cf, cbk), (sf, sb)) = run_both(x, y_fwd, y_bwd).await;
        assert_eq!(add(&cf, &sf), want_f, "forward, {rows} rows");
        assert_eq!(add(&cbk, &sb), want_b, "backward, {rows} rows");
    }
    // A matrix with no OTs at all (every column zero).
    let x = Matrix::new(vec![0; 6], 3, 2, 12).tightened();
    assert_eq!(x.layout().per_row(), 0);
    let ((cf, cbk), (sf, sb)) = run_both(x, vec![7, 9], vec![1, 2, 3]).await;
    assert_eq!((add(&cf, &sf), add(&cbk, &sb)), (vec![0; 3], vec![0; 2]));
}

#[test]
#[should_panic(expected = "not representable")]
fn a_layout_must_hold_every_entry() {
    let narrow = Arc::new(Layout::new(vec![ColBits { lo: 0, hi: 1, signed: false }]));
    Matrix::new(vec![0, 1, 2], 3, 1, 12).with_layout(narrow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_ots_with_a_narrow_layout() {
    let mut rng = StdRng::seed_from_u64(11);
    let x = mixed_matrix(&mut rng, 200).tightened();
    let layout = x.layout().clone();
    let n = 100 * layout.per_row();
    let (ca, cb) = memory_pair(8);
    let (y_f, y_b): (Vec<u64>, Vec<u64>) =
        ((0..8).map(|_| rng.next_u64()).collect(), (0..100).map(|_| rng.next_u64()).collect());
    let sub = x.select_rows(&(50..150).collect::<Vec<u32>>());
    let chooser = async {
        let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
        let mut cache = ChooserCache::with_layout(200, layout.clone());
        cache.append(
            chooser_prepare(&ca, &mut ext, Arc::new(x.select_rows(&(0..200).collect::<Vec<u32>>()))).await.unwrap(),
        );
        let ots = cache.session(3, 50..150);
        let tau_f = recv_u64s(&ca, n).await.unwrap();
        let tau_b = recv_u64s(&ca, n).await.unwrap();
        (chooser_forward(&ots, &sub, &tau_f).unwrap(), chooser_backward(&ots, &sub, &tau_b).unwrap())
    };
    let sender = async {
        let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
        let mut cache = SenderCache::with_layout(200, layout.clone());
        cache.append(sender_prepare_layout(&cb, &mut ext, 200, layout.clone()).await.unwrap());
        let ots = cache.session(3, 50..150);
        let (tau_f, f) = sender_forward(&ots, &y_f).unwrap();
        let (tau_b, b) = sender_backward(&ots, &y_b).unwrap();
        send_u64s(&cb, &tau_f).await.unwrap();
        send_u64s(&cb, &tau_b).await.unwrap();
        (f, b)
    };
    let ((cf, cbk), (sf, sb)) = futures::join!(chooser, sender);
    let (want_f, want_b) = plain(&sub, &y_f, &y_b);
    assert_eq!(add(&cf, &sf), want_f);
    assert_eq!(add(&cbk, &sb), want_b);
}
