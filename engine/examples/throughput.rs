use consort_engine::*;
use std::time::Instant;

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn timed<T>(what: &str, rows: u64, f: impl FnOnce() -> T) -> T {
    let (t, c) = (Instant::now(), cpu());
    let out = f();
    let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu() - c);
    println!("{what}: {rows} rows, wall {wall:.3}s = {:.2} M rows/s; cpu {cpu:.2}s = {:.2} M rows/cpu-s", rows as f64 / wall / 1e6, rows as f64 / cpu / 1e6);
    out
}

fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let dir = std::path::PathBuf::from(std::env::args().nth(2).unwrap_or("/tmp/consort-tp".into()));
    let s = timed("gen a+b", 2 * n, || generate_psi(&PsiGenSpec { rows_a: n, rows_b: n, overlap: n / 2, seed: 1, out_dir: dir.clone() }).unwrap());
    println!("  bytes {} + {}", s.bytes_a, s.bytes_b);
    let spec = |f: &str| DatasetSpec { name: f.into(), file: dir.join(f), keys: vec!["id".into()], normalize: Normalization::default(), dedup: false };
    let a = timed("load a", n, || Dataset::load(&spec("a.csv")).unwrap());
    let b = timed("load b", n, || Dataset::load(&spec("b.csv")).unwrap());
    println!("  heap per dataset {:.1} MB", a.heap_bytes() as f64 / 1e6);
    let mut map = std::collections::HashMap::with_capacity(b.len());
    for j in 0..b.len() { map.insert(b.keys.get(j), j as u32); }
    let mut pairs: Vec<(u32, u32)> = (0..a.len()).filter_map(|i| map.get(a.keys.get(i)).map(|&j| (i as u32, j))).collect();
    drop(map);
    pairs.sort_by_key(|p| (p.0 as u64).wrapping_mul(0x9E3779B97F4A7C15));
    let oa: Vec<u32> = pairs.iter().map(|p| p.0).collect();
    let ob: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    timed("write_rows a (joint order)", oa.len() as u64, || a.write_rows(&oa, &dir.join("out/a.csv")).unwrap());
    b.write_rows(&ob, &dir.join("out/b.csv")).unwrap();
    let r = timed("verify both", 2 * n, || check::verify_psi_outputs(&spec("a.csv"), &spec("b.csv"), Some(&dir.join("out/a.csv")), Some(&dir.join("out/b.csv"))).unwrap());
    println!("  {:?}", (r.expected, r.ok, &r.problems));
}
