use std::time::Instant;
use consort_engine::*;
fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let dir = std::path::PathBuf::from(std::env::args().nth(2).unwrap_or("/tmp/consort-tp".into()));
    if std::env::var("VERIFY_ONLY").is_ok() {
        let spec = |f: &str| DatasetSpec { name: f.into(), file: dir.join(f), keys: vec!["id".into()], normalize: Normalization::default(), dedup: false };
        let t = Instant::now();
        let r = consort_engine::check::verify_psi_outputs(&spec("a.csv"), &spec("b.csv"), Some(&dir.join("out/a.csv")), Some(&dir.join("out/b.csv"))).unwrap();
        println!("verify: {:?} in {:.3}s", (r.expected, r.ok, &r.problems), t.elapsed().as_secs_f64());
        return;
    }
    let t = Instant::now();
    let s = generate_psi(&PsiGenSpec { rows_a: n, rows_b: n, overlap: n / 2, seed: 1, out_dir: dir.clone() }).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("gen: {} rows ({} + {} bytes) in {:.3}s = {:.2} M rows/s, {:.0} MB/s", 2 * n, s.bytes_a, s.bytes_b, secs, 2.0 * n as f64 / secs / 1e6, (s.bytes_a + s.bytes_b) as f64 / secs / 1e6);
    let spec = |f: &str| DatasetSpec { name: f.into(), file: dir.join(f), keys: vec!["id".into()], normalize: Normalization::default(), dedup: false };
    for f in ["a.csv", "b.csv"] {
        let t = Instant::now();
        let ds = Dataset::load(&spec(f)).unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!("load {f}: {} rows in {:.3}s = {:.2} M rows/s; heap {:.1} MB", ds.len(), secs, ds.len() as f64 / secs / 1e6, ds.heap_bytes() as f64 / 1e6);
    }
    let a = Dataset::load(&spec("a.csv")).unwrap();
    let b = Dataset::load(&spec("b.csv")).unwrap();
    // joint order: sort shared by key
    let t = Instant::now();
    let mut map = std::collections::HashMap::with_capacity(b.len());
    for j in 0..b.len() { map.insert(b.keys.get(j).to_vec(), j as u32); }
    let mut pairs: Vec<(u32, u32, u64)> = (0..a.len()).filter_map(|i| map.get(a.keys.get(i)).map(|&j| (i as u32, j, { use std::hash::{Hash, Hasher}; let mut h = std::collections::hash_map::DefaultHasher::new(); a.keys.get(i).hash(&mut h); h.finish() }))).collect();
    pairs.sort_by_key(|p| p.2);
    println!("(plaintext join {:.3}s)", t.elapsed().as_secs_f64());
    let oa: Vec<u32> = pairs.iter().map(|p| p.0).collect();
    let ob: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let t = Instant::now();
    let w = a.write_rows(&oa, &dir.join("out/a.csv")).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("write_rows: {w} rows (random order) in {:.3}s = {:.2} M rows/s", secs, w as f64 / secs / 1e6);
    b.write_rows(&ob, &dir.join("out/b.csv")).unwrap();
    let t = Instant::now();
    let r = consort_engine::check::verify_psi_outputs(&spec("a.csv"), &spec("b.csv"), Some(&dir.join("out/a.csv")), Some(&dir.join("out/b.csv"))).unwrap();
    println!("verify: {:?} in {:.3}s", (r.expected, r.ok, &r.problems), t.elapsed().as_secs_f64());
}
