//! OKVS encode/decode throughput at 2^16 and 2^20 keys, and the size ratio m/n.

use std::hint::black_box;

use consort_protocols::okvs::{Okvs, OkvsSeed, cells_for};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const SIZES: [usize; 2] = [1 << 16, 1 << 20];

fn random_set(n: usize) -> (Vec<u128>, Vec<u128>) {
    let mut rng = StdRng::seed_from_u64(n as u64);
    let keys = (0..n).map(|_| rng.random::<u128>()).collect();
    let values = (0..n).map(|_| rng.random::<u128>()).collect();
    (keys, values)
}

fn bench(c: &mut Criterion) {
    let seed = OkvsSeed([3; 16]);
    let mut rng = StdRng::seed_from_u64(0);
    for n in SIZES {
        let m = cells_for(n);
        println!("okvs n = {n}: m = {m} cells, m/n = {:.4}", m as f64 / n as f64);
    }

    let mut group = c.benchmark_group("okvs_encode");
    group.sample_size(10);
    for n in SIZES {
        let (keys, values) = random_set(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| Okvs::encode(black_box(&keys), black_box(&values), seed, &mut rng).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("okvs_decode_batch");
    group.sample_size(10);
    for n in SIZES {
        let (keys, values) = random_set(n);
        let okvs = Okvs::encode(&keys, &values, seed, &mut rng).unwrap();
        let mut out = vec![0u128; n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("rayon", n), &n, |b, _| {
            b.iter(|| okvs.decode_batch(black_box(&keys), &mut out))
        });
        group.bench_with_input(BenchmarkId::new("one_core", n), &n, |b, _| {
            b.iter(|| okvs.decode_batch_serial(black_box(&keys), &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
