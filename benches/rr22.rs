//! RR22-PSI building blocks and the whole protocol in memory (no network, no CSV):
//! silent VOLE extension at one full bucket (m = 1.15 M correlations), and PSI of 2^20 × 2^20
//! items (half shared). Both parties run in this process, so on two cores each gets about one.

use consort_protocols::psi::rr22::{Rr22Config, run};
use consort_protocols::vole::{VoleReceiver, VoleSender};
use consort_protocols::{Reveal, Role, memory_pair, okvs};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let m = okvs::cells_for(1 << 20);
    let mut group = c.benchmark_group("vole_extend");
    group.sample_size(10);
    group.throughput(Throughput::Elements(m as u64));
    let (a, b) = memory_pair(16);
    let (mut s, mut r) = rt.block_on(async { tokio::join!(VoleSender::setup(&a), VoleReceiver::setup(&b)) });
    let (s, r) = (s.as_mut().unwrap(), r.as_mut().unwrap());
    group.bench_function(format!("{m}"), |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let (x, y) = tokio::join!(s.extend(&a, m), r.extend(&b, m));
                (x.unwrap(), y.unwrap())
            })
        })
    });
    group.finish();

    let n = 1usize << 20;
    let ka: Vec<Vec<u8>> = (0..n).map(|i| format!("id{i:012}").into_bytes()).collect();
    let kb: Vec<Vec<u8>> = (n / 2..n + n / 2).map(|i| format!("id{i:012}").into_bytes()).collect();
    let mut group = c.benchmark_group("rr22_psi_in_memory");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * n as u64));
    let (ca, cb) = (Rr22Config::new(Role::Requester, Reveal::Both), Rr22Config::new(Role::Responder, Reveal::Both));
    group.bench_function(format!("{n}x{n}"), |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let (a, b) = memory_pair(16);
                let (x, y) = tokio::join!(run(&a, &ka, &ca), run(&b, &kb, &cb));
                assert_eq!(x.unwrap().intersection.unwrap().len(), n / 2);
                y.unwrap()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
