//! OT layer benchmarks: base OT, the kernels (transpose, fixed-key AES hashing, AES-CTR), and IKNP
//! extension end to end over an in-memory channel (both parties in one process, sharing the
//! machine's cores: the numbers are "OTs per second of wall time for the pair").

use std::hint::black_box;
use std::time::Duration;

use consort_protocols::memory_pair;
use consort_protocols::ot::aes_hash::{AesPrg, FixedKeyAes};
use consort_protocols::ot::transpose::{padded_stride, par_transpose_128xn, transpose_128xn};
use consort_protocols::ot::{IknpReceiver, IknpSender, Security, base};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn base_ot(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("base_ot");
    group.throughput(Throughput::Elements(128));
    group.bench_function("mr19_128", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (x, y) = memory_pair(4);
                let (s, r) = futures::join!(base::send(&x, 128), base::receive(&y, 128));
                (s.unwrap(), r.unwrap())
            })
        })
    });
    group.finish();
}

fn kernels(c: &mut Criterion) {
    let n = 1 << 20;
    // A padded stride, as the extension uses: a stride that is a multiple of 4 KiB makes all 128
    // rows of a tile collide in the same cache sets.
    let stride = padded_stride(n / 8);
    let mut rows = vec![0u8; 128 * stride];
    AesPrg::new(1).fill_bytes(0, &mut rows);
    let mut out = vec![0u128; n];
    let mut group = c.benchmark_group("kernels");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("transpose_128x2^20", |b| b.iter(|| transpose_128xn(black_box(&rows), stride, &mut out)));
    group.bench_function("par_transpose_128x2^20", |b| {
        b.iter(|| par_transpose_128xn(black_box(&rows), stride, &mut out))
    });
    let pi = FixedKeyAes::fixed();
    group.bench_function("cr_hash_2^20_blocks", |b| b.iter(|| pi.cr_hash_blocks(&mut out)));
    group.bench_function("tccr_hash_2^20_blocks", |b| b.iter(|| pi.tccr_hash_blocks(0, &mut out)));
    let prg = AesPrg::new(2);
    group.bench_function("aes_ctr_2^20_blocks", |b| b.iter(|| prg.fill_blocks(0, &mut out)));
    group.finish();
}

fn iknp(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("iknp");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for security in [Security::SemiHonest, Security::Malicious] {
        let (x, y) = memory_pair(4);
        let (s, r) =
            rt.block_on(async { futures::join!(IknpSender::setup(&x, security), IknpReceiver::setup(&y, security)) });
        let (mut s, mut r) = (s.unwrap(), r.unwrap());
        let tag = match security {
            Security::SemiHonest => "semi_honest",
            Security::Malicious => "kos",
        };
        for log_n in [20, 24] {
            let n = 1usize << log_n;
            group.throughput(Throughput::Elements(n as u64));
            // About a second per 2^24 iteration: flat sampling (the same few iterations per sample).
            let (mode, secs) = if log_n > 20 { (SamplingMode::Flat, 20) } else { (SamplingMode::Auto, 5) };
            group.sampling_mode(mode).measurement_time(Duration::from_secs(secs));
            group.bench_with_input(BenchmarkId::new(format!("random_{tag}"), format!("2^{log_n}")), &n, |b, &n| {
                b.iter(|| {
                    rt.block_on(async {
                        let (p, q) = futures::join!(s.extend_random(&x, n), r.extend_random(&y, n));
                        (p.unwrap(), q.unwrap())
                    })
                })
            });
            group.bench_with_input(BenchmarkId::new(format!("correlated_{tag}"), format!("2^{log_n}")), &n, |b, &n| {
                b.iter(|| {
                    rt.block_on(async {
                        let (p, q) = futures::join!(s.extend_correlated(&x, n), r.extend_correlated(&y, n));
                        (p.unwrap(), q.unwrap())
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, base_ot, kernels, iknp);
criterion_main!(benches);
