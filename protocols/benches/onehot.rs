//! Microbenchmark of the kept one-hot correlations' batched kernel ([`consort_protocols::mpc::ot_mul::onehot`];
//! a bench binary, not criterion: one use at the scorecard's shape takes seconds).
//!
//! `cargo bench -p consort-protocols --bench onehot` sets up the correlations for a one-hot matrix
//! over `memory_pair` (both parties in this process), then times each step of a use on its own,
//! one after the other, so each runs alone on the rayon pool: the sender's and the chooser's
//! forward (which also make the backward's pads from the same expansion) and backward. It
//! prints, per step, the wall time and the process's CPU seconds (user + system: the figure to
//! compare on a shared machine), CPU-ns per (row, group), and AES blocks per CPU second (the
//! blocks the step needs, counted from the tree shapes). `RAYON_NUM_THREADS=1` runs each step on
//! one core.
//!
//! Environment (defaults in brackets): `OH_ROWS` [100000], `OH_GROUPS` [300], `OH_COLS` [9]
//! (columns per group: a feature of 10 bins, the reference bin has no column), `OH_USES` [3],
//! `OH_BATCH` [1024] (rows per session, as the LR's batch), `OH_KEEP` [0] (1: both sides keep every
//! group's leaves as the setup expands them, `keep_during_setup` on normal pages as the LR does,
//! so uses skip the expansion; 2: expanded again after the setup, `keep_leaves` on huge pages, as
//! SecureBoost does), `OH_PAIR_ONLY` [0] (1: time
//! only the paired backward, SecureBoost's use, e.g. under a profiler), `OH_SCATTER` [0] (P > 0: one
//! session a use over a random P% of all rows, as a SecureBoost node's; with `OH_PAIR_ONLY=1`).
mod common;
use common::cpu_seconds;
use std::sync::Arc;
use std::time::Instant;

use consort_protocols::memory_pair;
use consort_protocols::mpc::ot_mul::Matrix;
use consort_protocols::mpc::ot_mul::onehot::{Groups, OneHotChooser, OneHotSender};
use consort_protocols::ot::{IknpReceiver, IknpSender, Security};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// AES blocks of one tree's expansion: one per child (0 when the leaves are kept).
fn expansion_blocks(k: usize, keep: bool) -> usize {
    let d = k.next_power_of_two().trailing_zeros();
    if keep { 0 } else { (1..=d).map(|l| k.div_ceil(1 << (d - l))).sum() }
}

fn main() {
    let (rows, g_n, cols, uses, batch) =
        (env("OH_ROWS", 100_000), env("OH_GROUPS", 300), env("OH_COLS", 9), env("OH_USES", 3), env("OH_BATCH", 1024));
    let k = cols + 1;
    let keep_mode = env("OH_KEEP", 0);
    let keep = keep_mode > 0;
    let pair_only = env("OH_PAIR_ONLY", 0) == 1;
    // A SecureBoost node's rows: each row in with this probability (percent), one session a use.
    let scatter = env("OH_SCATTER", 0);
    let threads = rayon::current_num_threads();
    let sizes = vec![cols as u32; g_n];
    let groups = Arc::new(Groups::new(&sizes, 1).expect("groups"));
    let mut rng = StdRng::seed_from_u64(1);
    let mut data = Vec::with_capacity(rows * g_n * cols);
    for _ in 0..rows * g_n {
        let b = rng.random_range(0..k);
        data.extend((1..=cols).map(|j| u64::from(j == b)));
    }
    let x = Matrix::new(data, rows, g_n * cols, 64);
    println!(
        "{rows} rows × {g_n} groups of {cols} columns (k = {k}), {threads} rayon threads, sessions of {batch} rows"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (ca, cb) = memory_pair(64);
    let t = Instant::now();
    let (ch, se) = rt.block_on(async {
        let chooser = async {
            let mut ext = IknpReceiver::setup(&ca, Security::SemiHonest).await.unwrap();
            let mut st = OneHotChooser::new(groups.clone(), rows);
            if keep_mode == 1 {
                st.keep_during_setup(usize::MAX, false).unwrap();
            }
            for at in (0..rows).step_by(4096) {
                let part = x.select_rows(&(at as u32..(at + 4096).min(rows) as u32).collect::<Vec<_>>());
                st.extend(&ca, &mut ext, &part).await.unwrap();
            }
            if keep_mode == 2 {
                st.keep_leaves(usize::MAX);
            }
            Arc::new(st)
        };
        let sender = async {
            let mut ext = IknpSender::setup(&cb, Security::SemiHonest).await.unwrap();
            let mut st = OneHotSender::new(groups.clone(), rows);
            if keep_mode == 1 {
                st.keep_during_setup(usize::MAX, false).unwrap();
            }
            for at in (0..rows).step_by(4096) {
                st.extend(&cb, &mut ext, (at + 4096).min(rows) - at).await.unwrap();
            }
            if keep_mode == 2 {
                st.keep_leaves(usize::MAX);
            }
            Arc::new(st)
        };
        futures::join!(chooser, sender)
    });
    println!(
        "setup (both parties together, with the IKNP OTs{}): {:.2} s",
        if keep { " and kept leaves" } else { "" },
        t.elapsed().as_secs_f64()
    );
    let trees = (rows * g_n) as f64;
    let e = expansion_blocks(k, keep);
    // Blocks per tree of each step: the forward expands once and hashes for both products.
    let steps = [
        ("sender forward + backward pads", e + 3 * k),
        ("chooser forward + backward pads", e + 2 + k),
        ("sender backward (pads kept)", 0),
        ("chooser backward (pads kept)", 0),
        ("sender backward alone", e + k),
        ("chooser backward alone", e + k),
        ("sender backward_pair alone", e + k),
        ("chooser backward_pair alone", e + k),
    ];
    let (mut secs, mut cpu) = (vec![0f64; steps.len()], vec![0f64; steps.len()]);
    for u in 0..uses as u64 {
        let y_fwd: Vec<u64> = (0..g_n * cols).map(|_| rng.next_u64()).collect();
        for at in (0..rows).step_by(batch) {
            let m = batch.min(rows - at);
            let y: Vec<u64> = (0..m).map(|_| rng.next_u64()).collect();
            let mut time = |i: usize, f: &mut dyn FnMut()| {
                let (t, c) = (Instant::now(), cpu_seconds());
                f();
                secs[i] += t.elapsed().as_secs_f64();
                cpu[i] += cpu_seconds() - c;
            };
            let mut msg = Vec::new();
            let rows: Arc<[u32]> = if scatter > 0 {
                (0..rows as u32).filter(|_| rng.random_range(0..100) < scatter).collect()
            } else {
                (at as u32..(at + m) as u32).collect()
            };
            let y: Vec<u64> = if scatter > 0 { (0..rows.len()).map(|_| rng.next_u64()).collect() } else { y };
            if !pair_only {
                let (s, c) = (se.session(2 * u, at, m), ch.session(2 * u, at, m));
                time(0, &mut || msg = s.forward(&y_fwd).unwrap().0);
                time(1, &mut || drop(c.forward(&msg).unwrap()));
                time(2, &mut || msg = s.backward(&y).unwrap().0);
                time(3, &mut || drop(c.backward(&msg).unwrap()));
                let (s, c) = (se.session_rows(2 * u + 1, rows.clone()), ch.session_rows(2 * u + 1, rows.clone()));
                time(4, &mut || msg = s.backward(&y).unwrap().0);
                time(5, &mut || drop(c.backward(&msg).unwrap()));
            }
            let (s, c) =
                (se.session_rows(2 * u + 1 + (1 << 40), rows.clone()), ch.session_rows(2 * u + 1 + (1 << 40), rows));
            time(6, &mut || msg = s.backward_pair(&y, &y).unwrap().0);
            time(7, &mut || drop(c.backward_pair(&msg).unwrap()));
            if scatter > 0 {
                break;
            }
        }
    }
    for (((name, blocks), s), c) in steps.iter().zip(&secs).zip(&cpu) {
        let (s, c) = (s / uses as f64, c / uses as f64);
        let rate = if *blocks > 0 {
            format!("{:6.0} M AES blocks per CPU-s", trees * *blocks as f64 / c / 1e6)
        } else {
            String::new()
        };
        println!("{name:34} {s:7.3} s, {c:7.3} CPU-s per use  {:6.1} CPU-ns per (row, group)  {rate}", c * 1e9 / trees);
    }
    let (w, c) = ((secs[..4].iter().sum::<f64>()) / uses as f64, cpu[..4].iter().sum::<f64>() / uses as f64);
    println!("one LR epoch's products of this matrix (both sides, forward + backward): {w:.2} s wall, {c:.2} CPU-s");
}
