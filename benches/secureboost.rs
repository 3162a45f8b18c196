//! SecureBoost benchmark (a bench binary, not criterion: one training run takes minutes).
//!
//! `cargo bench --bench secureboost` prints, as plain lines:
//! - OU (3072-bit n) per-operation costs: key generation, encryption tables, encryption (one
//!   thread and all threads), addition, decryption;
//! - training on synthetic data (A: 10 features and labels, B: 10 features, 32 value bins + the
//!   missing bin, 5 trees of depth 5) over `memory_pair`, both parties in this process sharing
//!   the machine's cores: wall time per tree, bytes on the wire per tree (both directions), and
//!   the time in A's encryption, B's histogram sums and A's decryption.
//!
//! `SB_ROWS=10000,100000` (the default) chooses the row counts; `SB_TREES` the trees.
use std::sync::Arc;
use std::time::Instant;

use consort_protocols::he::{Encryptor, KeyPair};
use consort_protocols::mpc::Party;
use consort_protocols::mpc::secureboost::{BinnedFeatures, SbConfig, SbInput, train};
use consort_protocols::{Metered, memory_pair};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

fn per_op(label: &str, ops: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    let s = t.elapsed().as_secs_f64();
    println!("{label:44} {:>10.1} µs/op {:>10.0} ops/s", s * 1e6 / ops as f64, ops as f64 / s);
    s
}

fn he_ops() -> Arc<KeyPair> {
    let mut rng = StdRng::seed_from_u64(1);
    let t = Instant::now();
    let key = Arc::new(KeyPair::generate(&mut rng));
    println!("ou keygen (3072-bit n)                       {:>10.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let enc = Encryptor::new(&key.public).unwrap();
    println!("ou encryption tables                         {:>10.2} s", t.elapsed().as_secs_f64());
    let n = 2000;
    let values: Vec<i128> = (0..n).map(|i| (i as i128 - 1000) << 60 | 12345).collect();
    let crt = Encryptor::for_key_holder(&key).unwrap();
    let mut cts = Vec::new();
    per_op("ou encrypt, public key (1 thread)", n, || {
        cts = values.iter().map(|&m| enc.encrypt(m, &mut rng).unwrap()).collect();
    });
    per_op("ou encrypt, key holder CRT (1 thread)", n, || {
        cts = values.iter().map(|&m| crt.encrypt(m, &mut rng).unwrap()).collect();
    });
    per_op(&format!("ou encrypt, key holder CRT ({} threads)", rayon::current_num_threads()), n, || {
        let _: Vec<_> =
            values.par_iter().map_init(|| StdRng::seed_from_u64(2), |r, &m| crt.encrypt(m, r).unwrap()).collect();
    });
    let mut acc = key.public.zero();
    per_op("ou add (1 thread)", n, || cts.iter().for_each(|c| key.public.add_assign(&mut acc, c)));
    let m = 200;
    per_op("ou decrypt (1 thread)", m, || {
        for c in &cts[..m] {
            std::hint::black_box(key.secret.decrypt(c).unwrap());
        }
    });
    key
}

fn synthetic(n: usize, d: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
    (0..d).map(|_| (0..n).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect()).collect()
}

fn training(rt: &tokio::runtime::Runtime, key: Arc<KeyPair>, n: usize, trees: u32) {
    let mut rng = StdRng::seed_from_u64(n as u64);
    let (xa, xb) = (synthetic(n, 10, &mut rng), synthetic(n, 10, &mut rng));
    let labels: Vec<u8> = (0..n)
        .map(|i| {
            let z = xa[0][i] - xa[1][i] + 1.5 * xb[0][i] - xb[2][i];
            (rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())) as u8
        })
        .collect();
    let train_rows: Vec<u32> = (0..n as u32).collect();
    let config = SbConfig { trees, max_depth: 5, max_bins: 33, ..SbConfig::default() };
    let (_, ba) = BinnedFeatures::fit(&xa, n, &train_rows, config.max_bins);
    let (_, bb) = BinnedFeatures::fit(&xb, n, &train_rows, config.max_bins);
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
    let (ra, rb) = rt.block_on(async { futures::join!(train(&ca, a, &config), train(&cb, b, &config)) });
    let wall = t.elapsed().as_secs_f64();
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let s = ca.stats();
    let per_tree = |x: f64| x / f64::from(ra.trees_run);
    let splits =
        |o: &consort_protocols::mpc::secureboost::SbOutput| o.trees.iter().map(|t| t.nodes.len()).sum::<usize>();
    println!(
        "train n={n} trees={} depth=5 bins=32: {:.1} s per tree; wire per tree A→B {:.1} MB, B→A {:.1} MB; \
         per tree: encrypt {:.1} s, B histograms {:.1} s, decrypt {:.1} s (A nodes {}, B splits {})",
        ra.trees_run,
        per_tree(wall),
        per_tree(s.bytes_sent as f64) / 1e6,
        per_tree(s.bytes_received as f64) / 1e6,
        per_tree(ra.timings.encrypt),
        per_tree(rb.timings.histograms),
        per_tree(ra.timings.decrypt),
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
    let key = he_ops();
    let rows = std::env::var("SB_ROWS").unwrap_or_else(|_| "10000,100000".into());
    let trees = std::env::var("SB_TREES").ok().and_then(|t| t.parse().ok()).unwrap_or(5);
    for n in rows.split(',').filter_map(|r| r.trim().parse().ok()) {
        training(&rt, key.clone(), n, trees);
    }
}
