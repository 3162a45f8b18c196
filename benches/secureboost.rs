//! SecureBoost benchmark (a bench binary, not criterion: one training run takes minutes).
//!
//! `cargo bench --bench secureboost` prints, as plain lines:
//! - OU per-operation costs for each key size: key generation, encryption tables, encryption (one
//!   thread and all threads), addition (crypto-bigint Montgomery, next to num-bigint's `a·b mod
//!   n` for comparison), decryption;
//! - training on synthetic data over `memory_pair`, both parties in this process sharing the
//!   machine's cores: wall time per tree, trees/s, bytes on the wire per tree (both directions),
//!   and per tree the time in A's encryption, B's histogram sums, A's decryption and the rest.
//!
//! Environment (defaults in brackets):
//! - `SB_ROWS` [10000]: row counts, comma-separated;
//! - `SB_A_FEATURES` [10], `SB_B_FEATURES` [10]: features of A and of B;
//! - `SB_BINS` [32]: value bins per feature (+ the missing-value bin);
//! - `SB_TREES` [5], `SB_DEPTH` [5];
//! - `SB_KEY_BITS` [3072]: key sizes to train with, comma-separated (2048 and/or 3072);
//! - `SB_OPS` [1]: 0 skips the per-operation figures;
//! - `SB_HISTOGRAMS` [he,ot]: histogram backends to train with, comma-separated. With `ot` the
//!   one-time setup of the kept correlations is reported apart (its time from the protocol's
//!   timings, its bytes from the channel's counters sampled every 20 ms, read at that time), and the
//!   per-tree figures exclude it.
//!
//! The target shapes: `SB_ROWS=100000 SB_A_FEATURES=30 SB_B_FEATURES=300 SB_TREES=1` and
//! `SB_ROWS=285000 SB_A_FEATURES=10 SB_B_FEATURES=20 SB_TREES=3`.
use std::sync::Arc;
use std::time::Instant;

use consort_protocols::he::{Encryptor, KeyPair, KeySize};
use consort_protocols::mpc::Party;
use consort_protocols::mpc::secureboost::{BinnedFeatures, Histograms, SbConfig, SbInput, train};
use consort_protocols::{Metered, memory_pair};
use num_bigint::BigUint;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

fn per_op(label: &str, ops: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    let s = t.elapsed().as_secs_f64();
    println!("{label:52} {:>10.2} µs/op {:>10.0} ops/s", s * 1e6 / ops as f64, ops as f64 / s);
    s
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name).unwrap_or_else(|_| default.into()).split(',').filter_map(|r| r.trim().parse().ok()).collect()
}

fn size_of(bits: u64) -> KeySize {
    match bits {
        2048 => KeySize::Bits2048,
        3072 => KeySize::Bits3072,
        _ => panic!("SB_KEY_BITS: 2048 or 3072"),
    }
}

fn key(size: KeySize) -> Arc<KeyPair> {
    let t = Instant::now();
    let key = Arc::new(KeyPair::generate_sized(&mut StdRng::seed_from_u64(1), size));
    println!("ou keygen ({}-bit n)                              {:>10.2} s", size.bits(), t.elapsed().as_secs_f64());
    key
}

fn he_ops(key: &KeyPair) {
    let bits = key.public.size().bits();
    let mut rng = StdRng::seed_from_u64(2);
    let t = Instant::now();
    let enc = Encryptor::new(&key.public).unwrap();
    println!("ou {bits} encryption tables, public key               {:>10.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let crt = Encryptor::for_key_holder(key).unwrap();
    println!("ou {bits} encryption tables, key holder (CRT)         {:>10.2} s", t.elapsed().as_secs_f64());
    let n = 2000;
    // Packed (g, h) of the size SecureBoost encrypts: about 87 bits.
    let values: Vec<i128> = (0..n).map(|i| (i as i128 + 1) << 56 | (i as i128 * 7919) << 20).collect();
    let mut cts = Vec::new();
    per_op(&format!("ou {bits} encrypt, public key (1 thread)"), n, || {
        cts = values.iter().map(|&m| enc.encrypt(m, &mut rng).unwrap()).collect();
    });
    per_op(&format!("ou {bits} encrypt to bytes, key holder CRT (1 thread)"), n, || {
        let mut out = Vec::new();
        values.iter().for_each(|&m| crt.encrypt_to_bytes(m, &mut rng, &mut out).unwrap());
    });
    per_op(&format!("ou {bits} encrypt to bytes, CRT ({} threads)", rayon::current_num_threads()), n, || {
        let _: Vec<_> = values
            .par_chunks(64)
            .map_init(
                || StdRng::seed_from_u64(3),
                |r, c| {
                    let mut out = Vec::new();
                    c.iter().for_each(|&m| crt.encrypt_to_bytes(m, r, &mut out).unwrap());
                    out
                },
            )
            .collect();
    });
    let reps = 20;
    let mut acc = key.public.zero();
    let mut adder = key.public.adder();
    per_op(&format!("ou {bits} add, crypto-bigint Montgomery (1 thread)"), n * reps, || {
        for _ in 0..reps {
            cts.iter().for_each(|c| adder.add_assign(&mut acc, c));
        }
    });
    // The same additions as num-bigint computed them before (a·b mod n), for comparison.
    let w = key.public.ciphertext_bytes();
    let modulus = BigUint::from_bytes_le(&key.public.to_bytes()[..w]);
    let big: Vec<BigUint> = cts
        .iter()
        .map(|c| {
            let mut b = Vec::new();
            key.public.ciphertext_to_bytes(c, &mut b);
            BigUint::from_bytes_le(&b)
        })
        .collect();
    let mut acc = BigUint::from(1u8);
    per_op(&format!("ou {bits} add, num-bigint a·b mod n (1 thread)"), n * reps, || {
        for _ in 0..reps {
            big.iter().for_each(|c| acc = (&acc * c) % &modulus);
        }
    });
    std::hint::black_box(acc);
    let m = 200;
    per_op(&format!("ou {bits} decrypt (1 thread)"), m, || {
        for c in &cts[..m] {
            std::hint::black_box(key.secret.decrypt(c).unwrap());
        }
    });
}

fn synthetic(n: usize, d: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
    (0..d).map(|_| (0..n).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect()).collect()
}

struct Shape {
    rows: usize,
    a_features: usize,
    b_features: usize,
    bins: u32,
    trees: u32,
    depth: u32,
}

fn training(rt: &tokio::runtime::Runtime, key: Arc<KeyPair>, s: &Shape, histograms: Histograms) {
    let n = s.rows;
    let mut rng = StdRng::seed_from_u64(n as u64);
    let (xa, xb) = (synthetic(n, s.a_features, &mut rng), synthetic(n, s.b_features, &mut rng));
    let labels: Vec<u8> = (0..n)
        .map(|i| {
            let z = xa[0][i] - xa[1 % s.a_features][i] + 1.5 * xb[0][i] - xb[2 % s.b_features][i];
            (rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())) as u8
        })
        .collect();
    let train_rows: Vec<u32> = (0..n as u32).collect();
    let config =
        SbConfig { trees: s.trees, max_depth: s.depth, max_bins: s.bins + 1, histograms, ..SbConfig::default() };
    let (_, ba) = BinnedFeatures::fit(&xa, n, &train_rows, config.max_bins);
    let (_, bb) = BinnedFeatures::fit(&xb, n, &train_rows, config.max_bins);
    drop((xa, xb));
    let bits = key.public.size().bits();
    let a = SbInput {
        party: Party::A,
        features: ba,
        labels: Some(labels),
        train: train_rows.clone(),
        holdout: vec![],
        key: Some(key),
    };
    let b = SbInput { party: Party::B, features: bb, labels: None, train: train_rows, holdout: vec![], key: None };
    let (ca, cb) = memory_pair(16);
    let (ca, cb) = (Metered::new(ca), Metered::new(cb));
    let t = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    // (seconds, bytes A sent, bytes A received), every 20 ms: the setup's bytes.
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let (ra, rb) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let st = ca.stats();
                samples.push((t.elapsed().as_secs_f64(), st.bytes_sent, st.bytes_received));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let r = rt.block_on(async { futures::join!(train(&ca, a, &config, None), train(&cb, b, &config, None)) });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    let total_wall = t.elapsed().as_secs_f64();
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut st = ca.stats();
    let setup = ra.timings.setup.max(rb.timings.setup);
    let wall = total_wall - setup;
    if histograms == Histograms::Ot {
        let at = samples.iter().rev().find(|x| x.0 <= setup).copied().unwrap_or((0.0, 0, 0));
        println!(
            "ot setup n={n} B features={} bins={}: {:.2} s, A→B {:.1} MB, B→A {:.1} MB (bytes sampled at {:.2} s)",
            s.b_features,
            s.bins,
            setup,
            at.1 as f64 / 1e6,
            at.2 as f64 / 1e6,
            at.0
        );
        st.bytes_sent -= at.1;
        st.bytes_received -= at.2;
    }
    let trees = f64::from(ra.trees_run);
    if histograms == Histograms::Ot {
        println!(
            "  ot per tree: A backward {:.2} s, B backward {:.2} s, A histogram exchanges {:.2} s; setup A {:.2} s B {:.2} s",
            ra.timings.backward / trees,
            rb.timings.backward / trees,
            ra.timings.histograms / trees,
            ra.timings.setup,
            rb.timings.setup
        );
    }
    let per_tree = |x: f64| x / trees;
    let splits =
        |o: &consort_protocols::mpc::secureboost::SbOutput| o.trees.iter().map(|t| t.nodes.len()).sum::<usize>();
    let (enc, hist, dec) = (ra.timings.encrypt, rb.timings.histograms, ra.timings.decrypt);
    println!(
        "train {} key={bits} n={n} features={}+{} bins={} trees={} depth={}: {:.2} s per tree, {:.3} trees/s; \
         wire per tree A→B {:.1} MB, B→A {:.1} MB; per tree: A encrypt {:.2} s, B histograms {:.2} s, \
         A decrypt {:.2} s, rest {:.2} s (A nodes {}, B splits {})",
        histograms.name(),
        s.a_features,
        s.b_features,
        s.bins,
        ra.trees_run,
        s.depth,
        per_tree(wall),
        trees / wall,
        per_tree(st.bytes_sent as f64) / 1e6,
        per_tree(st.bytes_received as f64) / 1e6,
        per_tree(enc),
        per_tree(hist),
        per_tree(dec),
        per_tree(wall - enc - hist - dec),
        splits(&ra),
        splits(&rb),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("secureboost: bench");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let keys: Vec<Arc<KeyPair>> = list("SB_KEY_BITS", "3072").into_iter().map(|b| key(size_of(b))).collect();
    if env("SB_OPS", 1u32) != 0 {
        keys.iter().for_each(|k| he_ops(k));
    }
    for rows in list("SB_ROWS", "10000") {
        let shape = Shape {
            rows: rows as usize,
            a_features: env("SB_A_FEATURES", 10),
            b_features: env("SB_B_FEATURES", 10),
            bins: env("SB_BINS", 32),
            trees: env("SB_TREES", 5),
            depth: env("SB_DEPTH", 5),
        };
        for h in std::env::var("SB_HISTOGRAMS").unwrap_or_else(|_| "he,ot".into()).split(',') {
            let h = Histograms::parse(h.trim()).expect("SB_HISTOGRAMS: he and/or ot");
            // The key matters only to `he`: `ot` trains once.
            let keys = if h == Histograms::Ot { &keys[..1] } else { &keys[..] };
            for k in keys {
                training(&rt, k.clone(), &shape, h);
            }
        }
    }
}
