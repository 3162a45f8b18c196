//! ECDH-PSI: the curve kernels (single-threaded, per item) and a whole in-memory run.
//!
//! `cargo bench --bench ecdh`. The kernels are the ones the protocol runs
//! (`consort_protocols::psi::ecdh::kernels`); their per-item sum (hash + 2 × multiply/encode +
//! decode, per party) is the curve arithmetic floor the end-to-end figures are compared with.

use std::hint::black_box;
use std::time::Duration;

use consort_protocols::psi::ecdh::{self, EcdhPsiConfig, kernels};
use consort_protocols::{Reveal, Role, memory_pair};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use curve25519_dalek::scalar::Scalar;

/// A fixed key: benchmarks need a scalar of full size, not a secret one.
fn half_key() -> Scalar {
    Scalar::from_bytes_mod_order([0x5a; 32])
}

fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(|i| format!("{prefix}{i:016}").into_bytes()).collect()
}

fn curve_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("ecdh/kernels");
    let item = b"customer-0000000000042";
    group.throughput(Throughput::Elements(1));
    group.bench_function("hash_to_point", |b| b.iter(|| kernels::hash_to_point(black_box(item))));

    const N: usize = 1024;
    let mut points: Vec<_> = (0..N as u64).map(|i| kernels::hash_to_point(&i.to_le_bytes())).collect();
    let mut encoded = vec![0u8; 32 * N];
    let key = half_key();
    group.throughput(Throughput::Elements(N as u64));
    // Each iteration multiplies the previous iteration's output again: same cost, valid points.
    group.bench_function("multiply_encode/1024", |b| {
        b.iter(|| kernels::multiply_encode(&mut points, black_box(&key), &mut encoded))
    });

    group.throughput(Throughput::Elements(1));
    let encoding: [u8; 32] = encoded[..32].try_into().unwrap();
    group.bench_function("decode", |b| b.iter(|| kernels::decode(black_box(&encoding))));
    group.bench_function("tag", |b| b.iter(|| kernels::tag(black_box(&encoding))));
    group.finish();
}

fn in_memory_run(c: &mut Criterion) {
    const N: usize = 1 << 14;
    let requester = keys("k", 0..N);
    let responder = keys("k", N / 2..N / 2 + N);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let config =
        |role| EcdhPsiConfig { role, reveal: Reveal::Both, progress: None, proofs: true, max_peer_items: u64::MAX };
    let (config_a, config_b) = (config(Role::Requester), config(Role::Responder));

    let mut group = c.benchmark_group("ecdh/psi");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    // Elements: items per party (both parties run on this machine's cores at once).
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("in_memory/2^14x2^14", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (a, b) = memory_pair(8);
                let (ra, rb) = tokio::join!(ecdh::run(&a, &requester, &config_a), ecdh::run(&b, &responder, &config_b));
                let (ra, rb) = (ra.unwrap(), rb.unwrap());
                assert_eq!(ra.intersection.map(|i| i.len()), Some(N / 2));
                assert_eq!(rb.intersection.map(|i| i.len()), Some(N / 2));
            })
        })
    });
    group.finish();

    let costs = ecdh::measure_curve_costs(4096);
    let floor = costs.per_item_ns() * N as f64 * 2.0 / rayon::current_num_threads() as f64;
    println!(
        "curve costs per item: hash {:.0} ns, multiply+encode {:.0} ns, decode {:.0} ns; \
         2^14 x 2^14 curve floor on {} threads: {:.0} ms",
        costs.hash_to_point_ns,
        costs.multiply_encode_ns,
        costs.decode_ns,
        rayon::current_num_threads(),
        floor / 1e6
    );
}

criterion_group!(benches, curve_kernels, in_memory_run);
criterion_main!(benches);
