use std::path::{Path, PathBuf};

use consort_protocols::{Reveal, Role, memory_pair};

use super::*;
use crate::check::{OutputFile, verify_psi_outputs};
use crate::csv_rows::RowScanner;
use crate::psi::{JobLimits, run_psi};
use crate::storage::AtRest;
use crate::synth::{PsiGenSpec, generate_psi};
use crate::{Dataset, PsiProtocol};

fn job(role: Role, reveal: Reveal, output: PathBuf) -> PsiJob {
    PsiJob {
        protocol: PsiProtocol::Rr22,
        role,
        reveal,
        output: Some(output),
        at_rest: AtRest::Plain,
        progress: None,
        proofs: false,
        limits: JobLimits::default(),
        payload: PayloadJob::None,
        join: crate::join::JoinType::Inner,
        columns: crate::psi::OutputColumns::Rows,
    }
}

fn csv(dir: &Path, name: &str, ids: &[&str]) -> DatasetSpec {
    let mut text = String::from("id,v\r\n");
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!("{id},row {i} of {name}\r\n"));
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, text).unwrap();
    DatasetSpec::new(name, path, &["id"])
}

fn options(dir: &Path, name: &str, bucket_size: usize) -> StreamOptions {
    StreamOptions { spill_dir: dir.join(format!("spill-{name}")), bucket_size }
}

/// Both sides stream; returns both reports.
async fn run_both(
    dir: &Path,
    a: &DatasetSpec,
    b: &DatasetSpec,
    reveal: Reveal,
    bucket_size: usize,
) -> Result<(PsiReport, PsiReport), String> {
    run_opened(dir, &StreamInput::open(a).unwrap(), &StreamInput::open(b).unwrap(), reveal, bucket_size).await
}

/// [`run_both`] on inputs already opened (checked, or taken from a registration's record).
async fn run_opened(
    dir: &Path,
    ia: &StreamInput,
    ib: &StreamInput,
    reveal: Reveal,
    bucket_size: usize,
) -> Result<(PsiReport, PsiReport), String> {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let (ja, jb) =
        (job(Role::Requester, reveal, dir.join("out/a.csv")), job(Role::Responder, reveal, dir.join("out/b.csv")));
    let (oa, ob) = (options(dir, "a", bucket_size), options(dir, "b", bucket_size));
    let (ca, cb) = memory_pair(64);
    let (ra, rb) = tokio::join!(
        async {
            let r = run_psi_streaming(&ca, ia, &ja, &oa).await;
            drop(ca);
            r
        },
        async {
            let r = run_psi_streaming(&cb, ib, &jb, &ob).await;
            drop(cb);
            r
        }
    );
    assert!(!oa.spill_dir.exists() && !ob.spill_dir.exists(), "spill removed at the end");
    match (ra, rb) {
        (Ok(a), Ok(b)) => Ok((a.0, b.0)),
        (ra, rb) => Err(format!("{:?} / {:?}", ra.err().map(|e| e.to_string()), rb.err().map(|e| e.to_string()))),
    }
}

fn check(dir: &Path, a: &DatasetSpec, b: &DatasetSpec, reveal: Reveal, expected: u64) {
    let out_a = dir.join("out/a.csv");
    let out_b = dir.join("out/b.csv");
    let b_out = (reveal == Reveal::Both).then(|| OutputFile::plain(&out_b));
    if reveal == Reveal::RequesterOnly {
        assert!(!out_b.exists());
    }
    let report = verify_psi_outputs(a, b, Some(OutputFile::plain(&out_a)), b_out).unwrap();
    assert_eq!(report.expected, expected);
    assert!(report.ok, "{:?}", report.problems);
}

/// The streaming path against the plaintext intersection, on the edge cases, one bucket and many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_matches_the_plaintext_intersection() {
    let ids = |r: std::ops::Range<u32>| r.map(|i| format!("id{i:05}")).collect::<Vec<_>>();
    let refs = |v: &[String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("|");
    let cases: Vec<(&str, Vec<String>, Vec<String>, u64)> = vec![
        ("empty both", vec![], vec![], 0),
        ("empty requester", vec![], ids(0..50), 0),
        ("empty responder", ids(0..50), vec![], 0),
        ("one item, shared", ids(7..8), ids(7..8), 1),
        ("one item, not shared", ids(7..8), ids(8..9), 0),
        ("disjoint", ids(0..300), ids(300..700), 0),
        ("identical", ids(0..500), ids(0..500), 500),
        ("unequal sizes", ids(0..40), ids(20..2000), 20),
    ];
    for bucket_size in [1 << 20, 64] {
        for (name, a_ids, b_ids, expected) in &cases {
            for reveal in [Reveal::Both, Reveal::RequesterOnly] {
                let dir = tempfile::tempdir().unwrap();
                let a_text = refs(a_ids);
                let b_text = refs(b_ids);
                let a_list: Vec<&str> = a_text.split('|').filter(|s| !s.is_empty()).collect();
                let b_list: Vec<&str> = b_text.split('|').filter(|s| !s.is_empty()).collect();
                let (a, b) = (csv(dir.path(), "a", &a_list), csv(dir.path(), "b", &b_list));
                let (ra, rb) = run_both(dir.path(), &a, &b, reveal, bucket_size)
                    .await
                    .unwrap_or_else(|e| panic!("{name} {reveal:?} {bucket_size}: {e}"));
                assert_eq!(ra.intersection, Some(*expected), "{name}");
                assert_eq!((ra.local_rows, ra.peer_rows), (a_list.len() as u64, b_list.len() as u64));
                assert_eq!(rb.intersection, (reveal == Reveal::Both).then_some(*expected), "{name}");
                check(dir.path(), &a, &b, reveal, *expected);
            }
        }
    }
}

/// Many buckets (a small bucket size) on generated data, both reveal modes, a sealed output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_buckets_on_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    generate_psi(&PsiGenSpec { rows_a: 6000, rows_b: 4000, overlap: 1500, seed: 5, out_dir: dir.path().into() })
        .unwrap();
    let spec = |n: &str| DatasetSpec::new(n, dir.path().join(format!("{n}.csv")), &["id"]);
    let (a, b) = (spec("a"), spec("b"));
    for reveal in [Reveal::Both, Reveal::RequesterOnly] {
        let (ra, _) = run_both(dir.path(), &a, &b, reveal, 512).await.unwrap();
        assert_eq!(ra.intersection, Some(1500));
        check(dir.path(), &a, &b, reveal, 1500);
    }
}

/// Duplicate keys: refused (naming both lines) without `dedup`, the first row kept with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_refused_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let a = csv(dir.path(), "a", &["k1", "k2", "k1", "k3", "k2", "k9"]);
    let b = csv(dir.path(), "b", &["k2", "k3", "k4"]);
    let err = run_both(dir.path(), &a, &b, Reveal::Both, 1 << 20).await.unwrap_err();
    assert!(err.contains("a.csv:4: column 'id': duplicate key, first seen on line 2"), "{err}");
    assert!(!dir.path().join("out/a.csv").exists() && !dir.path().join("out/b.csv").exists());
    let a = DatasetSpec { dedup: true, ..a };
    let (ra, rb) = run_both(dir.path(), &a, &b, Reveal::Both, 1 << 20).await.unwrap();
    assert_eq!((ra.intersection, rb.intersection), (Some(2), Some(2)));
    assert_eq!(ra.local_rows, 4);
    check(dir.path(), &a, &b, Reveal::Both, 2);
    // The kept rows are the first of each key.
    let out = std::fs::read_to_string(dir.path().join("out/a.csv")).unwrap();
    assert!(out.contains("k2,row 1 of a\r\n") && !out.contains("row 4 of a"), "{out}");
}

/// One side streams, the other runs the in-memory path: the wire is the same, the outputs align,
/// and each output holds exactly the rows (byte for byte) the in-memory path writes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_in_memory_agree() {
    let dir = tempfile::tempdir().unwrap();
    generate_psi(&PsiGenSpec { rows_a: 3000, rows_b: 2500, overlap: 900, seed: 8, out_dir: dir.path().into() })
        .unwrap();
    let spec = |n: &str| DatasetSpec::new(n, dir.path().join(format!("{n}.csv")), &["id"]);
    let (a, b) = (spec("a"), spec("b"));
    let sorted_lines = |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let header = lines.remove(0);
        lines.sort();
        (header, lines)
    };
    // Reference: both in memory.
    let (da, db) = (Dataset::load(&a).unwrap(), Dataset::load(&b).unwrap());
    let (ref_a, ref_b) = (dir.path().join("ref/a.csv"), dir.path().join("ref/b.csv"));
    let (ca, cb) = memory_pair(64);
    let (ja, jb) =
        (job(Role::Requester, Reveal::Both, ref_a.clone()), job(Role::Responder, Reveal::Both, ref_b.clone()));
    let (x, y) = tokio::join!(run_psi(&ca, &da, &ja), run_psi(&cb, &db, &jb));
    x.unwrap();
    y.unwrap();
    for streaming_side in [Role::Requester, Role::Responder] {
        let (out_a, out_b) = (dir.path().join("out/a.csv"), dir.path().join("out/b.csv"));
        let (ja, jb) =
            (job(Role::Requester, Reveal::Both, out_a.clone()), job(Role::Responder, Reveal::Both, out_b.clone()));
        let (ca, cb) = memory_pair(64);
        let opts = options(dir.path(), "s", rr22::DEFAULT_BUCKET_SIZE);
        let (ra, rb) = match streaming_side {
            Role::Requester => {
                let input = StreamInput::open(&a).unwrap();
                let (x, y) = tokio::join!(run_psi_streaming(&ca, &input, &ja, &opts), run_psi(&cb, &db, &jb));
                (x.unwrap().0, y.unwrap())
            }
            Role::Responder => {
                let input = StreamInput::open(&b).unwrap();
                let (x, y) = tokio::join!(run_psi(&ca, &da, &ja), run_psi_streaming(&cb, &input, &jb, &opts));
                (x.unwrap(), y.unwrap().0)
            }
        };
        assert_eq!((ra.intersection, rb.intersection), (Some(900), Some(900)));
        check(dir.path(), &a, &b, Reveal::Both, 900);
        assert_eq!(sorted_lines(&out_a), sorted_lines(&ref_a), "{streaming_side:?}");
        assert_eq!(sorted_lines(&out_b), sorted_lines(&ref_b), "{streaming_side:?}");
        assert!(!opts.spill_dir.exists());
    }
}

/// A failure in the middle of the output (after one bucket was written): no output appears, the
/// spill is removed, and a job below the grant's minimum writes nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leave_no_output_and_no_spill() {
    let dir = tempfile::tempdir().unwrap();
    generate_psi(&PsiGenSpec { rows_a: 3000, rows_b: 3000, overlap: 1000, seed: 2, out_dir: dir.path().into() })
        .unwrap();
    let spec = |n: &str| DatasetSpec::new(n, dir.path().join(format!("{n}.csv")), &["id"]);
    let (ia, ib) = (StreamInput::open(&spec("a")).unwrap(), StreamInput::open(&spec("b")).unwrap());
    let (out_a, out_b) = (dir.path().join("out/a.csv"), dir.path().join("out/b.csv"));
    for (fail_after, limits) in
        [(Some(1), JobLimits::default()), (None, JobLimits { min_aligned_rows: 1001, ..JobLimits::default() })]
    {
        let ja = PsiJob { limits, ..job(Role::Requester, Reveal::Both, out_a.clone()) };
        let jb = job(Role::Responder, Reveal::Both, out_b.clone());
        let (oa, ob) = (options(dir.path(), "a", 256), options(dir.path(), "b", 256));
        let (ca, cb) = memory_pair(64);
        let (ra, _) = tokio::join!(
            async {
                let r = run_streaming_observed(&ca, &ia, &ja, &oa, fail_after).await;
                drop(ca);
                r
            },
            async {
                let r = run_psi_streaming(&cb, &ib, &jb, &ob).await;
                drop(cb);
                r
            }
        );
        let err = ra.unwrap_err().to_string();
        assert!(err.contains("injected failure") || err.contains("fewer rows than this node's grant"), "{err}");
        assert!(!out_a.exists(), "no partial output");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            leftovers.iter().all(|n| n != "a.csv" && !n.to_string_lossy().starts_with(".consort-")),
            "{leftovers:?}"
        );
        assert!(!oa.spill_dir.exists() && !ob.spill_dir.exists());
    }
}

/// The spill: sealed bucket files holding digests and row places, never a raw id.
#[test]
fn spill_files_hold_no_raw_id() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..2000).map(|i| format!("customer-{i:06}@example.org")).collect();
    let list: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let a = csv(dir.path(), "a", &list);
    let input = StreamInput::open(&a).unwrap();
    let spill = dir.path().join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let shared = Shared {
        dir: spill.clone(),
        key: StorageKey::generate().unwrap(),
        spec: a.clone(),
        rows: Mutex::new(HashMap::new()),
        failure: Mutex::new(None),
        dropped: AtomicU64::new(0),
        learns: false,
        disk: Arc::default(),
        done: None,
        matched: AtomicU64::new(0),
        writes_matched: true,
        keeps: false,
        digests: Mutex::new(HashMap::new()),
    };
    let layout = rr22::Layout::new(2000, 2000, 256);
    let hasher = test_hasher(layout.buckets);
    let Scanned { snapshot, header, .. } =
        scan(&input, &shared, &hasher, layout.buckets, layout.cap_receiver, false, false).unwrap();
    assert!(snapshot.is_none());
    assert_eq!(header, b"id,v\r\n");
    let files: Vec<PathBuf> = std::fs::read_dir(&spill).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), layout.buckets);
    let mut records = 0;
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        assert!(crate::sealed::is_sealed(f).unwrap());
        for id in ["customer-", "example.org", "row "] {
            assert!(!raw.windows(id.len()).any(|w| w == id.as_bytes()), "{id} in {}", f.display());
        }
        // Decrypted, it holds each row's digest and place, nothing else.
        let plain = shared.read_sealed(f).unwrap();
        for id in ["customer-", "example.org"] {
            assert!(!plain.windows(id.len()).any(|w| w == id.as_bytes()));
        }
        let (digests, places) = read_records(&plain).expect("well-formed records");
        assert_eq!(digests.len(), places.len());
        // Compact: the digest and three small varints (short rows, neighbours ~B rows apart).
        assert!(plain.len() <= digests.len() * 22, "{} bytes for {} records", plain.len(), digests.len());
        records += digests.len();
    }
    assert_eq!(records, 2000);
    // Reading a bucket back gives its digests (and, not learning, deletes its spill).
    let source = SpillSource(Arc::new(shared));
    let (digests, ids) = source.bucket(0).unwrap();
    assert_eq!(digests.len(), ids.len());
    assert!(digests.iter().all(|&d| hasher.bucket_of(d) == 0));
    assert!(!bucket_path(&spill, 0).exists());
}

/// A hasher for tests that need one without a session: a job's start over a memory pair.
fn test_hasher(buckets: usize) -> ItemHasher {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (ca, cb) = memory_pair(8);
        let n = buckets * 8;
        let ra = Rr22Config { bucket_size: 8, ..Rr22Config::new(Role::Requester, Reveal::Both) };
        let rb = Rr22Config { bucket_size: 8, ..Rr22Config::new(Role::Responder, Reveal::Both) };
        let (x, _) = tokio::join!(rr22::start(&ca, n, &ra), rr22::start(&cb, n, &rb));
        let session = x.unwrap();
        assert_eq!(session.layout.buckets, buckets);
        session.hasher()
    })
}

#[test]
fn spill_records_round_trip_and_refuse_damage() {
    // Places of one bucket in file order: first row, neighbours, large steps, the largest values.
    let places: Vec<Place> = vec![
        (7, 12, 0),
        (19, 12, 1),
        (19 + 954 * 12, 200_000, 955),
        (1 << 40, 1, 1 << 20),
        (u64::MAX - 1, u32::MAX - 1, u32::MAX - 1),
    ];
    let digests: Vec<u128> = (0..places.len() as u128).map(|i| (u128::MAX / 3).wrapping_mul(i + 1) ^ i).collect();
    let mut bytes = Vec::new();
    let mut last = (0, 0);
    for (&d, &p) in digests.iter().zip(&places) {
        let before = bytes.len();
        put_record(&mut bytes, &mut last, d, p).unwrap();
        assert!(bytes.len() - before <= RECORD);
    }
    assert_eq!(read_records(&bytes), Some((digests.clone(), places.clone())));
    assert_eq!(read_records(&[]), Some((vec![], vec![])));
    // Neighbouring short rows take 16 + 3 bytes.
    let mut small = Vec::new();
    put_record(&mut small, &mut (7, 0), 1, (19, 12, 1)).unwrap();
    assert_eq!(small.len(), 19);
    // Every truncation is refused (a record cut short), never a panic.
    for cut in 1..bytes.len() {
        let (d, p) = match read_records(&bytes[..cut]) {
            Some(x) => x,
            None => continue,
        };
        // A cut can only end on a record boundary if it parses.
        assert!(d.len() < digests.len() && places[..p.len()] == p[..], "cut {cut}");
    }
    assert_eq!(read_records(&bytes[..bytes.len() - 1]), None);
    // A step past the u32 row number or a varint that never ends is refused.
    let mut bad = 1u128.to_le_bytes().to_vec();
    prost::encoding::encode_varint(1 << 32, &mut bad);
    bad.extend_from_slice(&[0, 0]);
    assert_eq!(read_records(&bad), None);
    let mut endless = 1u128.to_le_bytes().to_vec();
    endless.extend_from_slice(&[0xff; 11]);
    assert_eq!(read_records(&endless), None);
    // Rows out of file order are an error when writing.
    let mut last = (100, 10);
    assert!(put_record(&mut Vec::new(), &mut last, 0, (99, 1, 11)).is_err());
    assert!(put_record(&mut Vec::new(), &mut last, 0, (101, 1, 9)).is_err());
}

/// The places and digests the scan would spill for `spec`'s file (its own parser's spans), in file
/// order, and each row's bytes.
fn scanned_rows(spec: &DatasetSpec, hasher: &ItemHasher) -> (RowBatch, Vec<Vec<u8>>) {
    let mut scanner = RowScanner::open(&spec.file).unwrap();
    let header = spec.read_header(&mut scanner).unwrap();
    let (mut rows, mut spans): (RowBatch, _) = (Vec::new(), Vec::new());
    while let Some(row) = scanner.next_row().unwrap() {
        let mut keys = KeyArena::new();
        push_key(spec, &header, &row, &mut keys).unwrap();
        rows.push((hasher.digest(keys.get(0)), (row.start, row.raw.len() as u32, rows.len() as u32)));
        spans.push(row.raw.to_vec());
    }
    (rows, spans)
}

/// A row reader's pass files go to `dir`, counted in an account of their own.
fn pass_dir(dir: &Path) -> rows::PassDir {
    rows::PassDir { dir: dir.to_path_buf(), disk: Arc::default() }
}

/// The pass files left in `dir`.
fn pass_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pass-") || n.starts_with(".consort-"))
        .collect()
}

/// Rows served by passes with positioned reads (runs merged by offset, chunks large enough to
/// have their keys checked on all cores, rows put back a window at a time): the rows come out
/// in the batches' order, whatever the passes' sizes, with the pass files counted in the disk
/// account and gone after each pass (another process's left-overs when the reader opens); a changed key anywhere fails the pass naming the first
/// such row's line in file order, whichever thread found it, and leaves no pass file.
#[test]
fn rows_read_in_passes_come_out_in_the_batches_order_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    let n = 3 * (1 << 16) / 2;
    let text: String = std::iter::once("id\n".to_string()).chain((0..n).map(|i| format!("u{i:07}\n"))).collect();
    std::fs::write(&path, &text).unwrap();
    let spec = DatasetSpec::new("in", path.clone(), &["id"]);
    let input = StreamInput::open(&spec).unwrap();
    let hasher = test_hasher(2);
    let (rows, spans) = scanned_rows(&spec, &hasher);
    // Batches (as buckets) in an order unlike the file's: every 7th row from each start.
    let order: Vec<usize> = (0..7).flat_map(|s| (s..n).step_by(7)).collect();
    let batches: Vec<RowBatch> = order.chunks(10_000).map(|c| c.iter().map(|&i| rows[i]).collect()).collect();
    let expected: Vec<Vec<u8>> = order.iter().map(|&i| spans[i].clone()).collect();
    let pass = dir.path().join("pass");
    std::fs::create_dir_all(&pass).unwrap();
    // A pass file another process left (killed during a pass): deleted when a reader opens.
    std::fs::write(pass.join("pass-1-0-rows-3"), b"stale").unwrap();
    let run = |batches: &[RowBatch], sizes: Option<(usize, usize)>| {
        let disk: Arc<DiskUse> = Arc::default();
        let at = rows::PassDir { dir: pass.clone(), disk: disk.clone() };
        let mut reader = rows::RowReader::open(&spec, &input.stamp, hasher.clone(), at).unwrap().with_reads();
        if let Some((bytes, runs)) = sizes {
            reader = reader.with_sizes(bytes, 1).with_max_files(runs);
        }
        let mut got = Vec::new();
        let mut emit = |r: &[u8]| {
            got.push(r.to_vec());
            Ok(())
        };
        let done = batches
            .iter()
            .try_for_each(|b| reader.push(b.clone(), &mut emit, &path))
            .and_then(|()| reader.flush(&mut emit, &path));
        assert!(pass_files(&pass).is_empty(), "pass files left: {:?}", pass_files(&pass));
        done.map(|()| (got, disk.peak()))
    };
    let (got, peak) = run(&batches, None).unwrap();
    assert_eq!(got, expected);
    // Every row's record (32 B) was on disk at once, then its bytes.
    assert!(peak >= 32 * n as u64, "{peak}");
    // Merge chunks of ~4 KB (rows of 9 B); at most three rows files a pass (a pass per batch, its
    // windows widened to three), or 64 (windows of ~4 KB, ~23 a batch: a pass per three batches).
    for files in [3, 64] {
        let (got, _) = run(&batches, Some((4000, files))).unwrap();
        assert_eq!(got, expected, "{files} files a pass");
    }
    // Two wrong digests: the error names the one first in file order.
    let mut bad = batches.clone();
    let last = bad.len() - 1;
    bad[last][5].0 ^= 1;
    bad[last - 1][9].0 ^= 1;
    let line = bad[last][5].1.2.min(bad[last - 1][9].1.2) + 2;
    let err = run(&bad, None).unwrap_err().to_string();
    assert!(err.contains(&format!(":{line}:")) && err.contains("modified during the job"), "{err}");
}

/// The output's rows come from the input itself: read by their spans (CRLF, quoted fields with
/// embedded newlines, a last row without a terminator), each row's key checked against its
/// digest; a key changed in place (same length, modification time put back) is an error naming
/// the file and line but not the value; a changed stamp is refused.
#[test]
fn output_rows_are_read_from_the_input_and_their_keys_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    let text = b"id,v\r\nk1,plain\r\n\"k,2\",\"two\r\nlines\"\r\n k3 ,x\r\n\r\nk4,last";
    std::fs::write(&path, text).unwrap();
    let mut spec = DatasetSpec::new("in", path.clone(), &["id"]);
    spec.normalize.trim = true;
    let input = StreamInput::open(&spec).unwrap();
    assert_eq!(input.rows, 4);
    let hasher = test_hasher(2);
    let (mut batch, mut spans) = scanned_rows(&spec, &hasher);
    // In a joint order unlike the file's.
    batch.reverse();
    spans.reverse();
    let mut reader = rows::RowReader::open(&spec, &input.stamp, hasher.clone(), pass_dir(dir.path())).unwrap();
    let mut got = Vec::new();
    reader
        .rows(
            &batch,
            |r| {
                got.push(r.to_vec());
                Ok(())
            },
            &path,
        )
        .unwrap();
    assert_eq!(got, spans);
    // The same through chunks of a row or two and page drops after every byte of file passed
    // (every chunk boundary and mid-chunk drop crossed): the same rows, in the same order.
    // And with positioned reads instead of the map (inputs too large for the page cache).
    for (chunk, drop, reads) in [
        (1, 1, false),
        (12, 1, false),
        (40, 4096, false),
        (1 << 20, 1, false),
        (1, 1, true),
        (12, 1, true),
        (1 << 20, 1, true),
    ] {
        let mut small = rows::RowReader::open(&spec, &input.stamp, hasher.clone(), pass_dir(dir.path()))
            .unwrap()
            .with_sizes(chunk, drop);
        if reads {
            small = small.with_reads();
        }
        let mut again = Vec::new();
        small
            .rows(
                &batch,
                |r| {
                    again.push(r.to_vec());
                    Ok(())
                },
                &path,
            )
            .unwrap();
        assert_eq!(again, spans, "chunk {chunk}, drop {drop}, positioned reads {reads}");
        // Pushed in pieces (as the writers hand over one bucket at a time) and flushed: served by
        // one pass with reads (chunk and window limits crossed inside a piece), at once with the map;
        // the same rows in the same order either way, nothing held back after the flush.
        let mut pushed = Vec::new();
        for piece in [&batch[..1], &batch[1..1], &batch[1..3], &batch[3..]] {
            small
                .push(
                    piece.to_vec(),
                    |r| {
                        pushed.push(r.to_vec());
                        Ok(())
                    },
                    &path,
                )
                .unwrap();
        }
        small
            .flush(
                |r| {
                    pushed.push(r.to_vec());
                    Ok(())
                },
                &path,
            )
            .unwrap();
        assert_eq!(pushed, spans, "pushed: chunk {chunk}, drop {drop}, positioned reads {reads}");
    }
    // A span that ends past the file, or whose end overflows: refused, never a panic (mapped or read).
    let mut reads =
        rows::RowReader::open(&spec, &input.stamp, hasher.clone(), pass_dir(dir.path())).unwrap().with_reads();
    for (offset, len) in [(text.len() as u64 - 2, 3), (u64::MAX - 1, 4)] {
        let mut bad = batch.clone();
        bad[1].1 = (offset, len, bad[1].1.2);
        let err = reader.rows(&bad, |_| Ok(()), &path).unwrap_err().to_string();
        assert!(err.contains("outside the input"), "{err}");
        let err = reads.rows(&bad, |_| Ok(()), &path).unwrap_err().to_string();
        assert!(err.contains("outside the input"), "{err}");
    }
    // A wrong digest for one row (as if its key had changed): refused, line named.
    let mut wrong = batch.clone();
    wrong[2].0 ^= 1;
    let err = reader.rows(&wrong, |_| Ok(()), &path).unwrap_err().to_string();
    assert!(err.contains(":3:") && err.contains("modified during the job"), "{err}");
    // A span outside the file: refused, never a panic.
    let mut outside = batch.clone();
    outside[0].1.0 = text.len() as u64;
    assert!(reader.rows(&outside, |_| Ok(()), &path).is_err());
    // The key bytes change in place, same length, the modification time put back: the stamp
    // cannot tell, the key check does (and the message does not hold the value).
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let changed_text = String::from_utf8(text.to_vec()).unwrap().replace("k1,", "k9,");
    std::fs::write(&path, &changed_text).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    let mut reader = rows::RowReader::open(&spec, &input.stamp, hasher.clone(), pass_dir(dir.path())).unwrap();
    let err = reader.rows(&batch, |_| Ok(()), &path).unwrap_err().to_string();
    assert!(err.contains(":2:") && !err.contains("k9") && !err.contains("k1"), "{err}");
    // Truncated while mapped (between two chunks): the next chunk's stamp check refuses it
    // before any mapped byte past the new end is touched (no SIGBUS).
    let mut mapped =
        rows::RowReader::open(&spec, &input.stamp, hasher.clone(), pass_dir(dir.path())).unwrap().with_sizes(1, 1);
    let mut seen = 0;
    let err = mapped
        .rows(
            &batch,
            |_| {
                seen += 1;
                if seen == 1 {
                    std::fs::File::options().write(true).open(&path)?.set_len(4)?;
                }
                Ok(())
            },
            &path,
        )
        .unwrap_err()
        .to_string();
    assert!(seen == 1 && err.contains("changed after it was loaded"), "{seen} {err}");
    std::fs::write(&path, &changed_text).unwrap();
    // Appended to: the stamp differs, refused before any row is read.
    std::fs::write(&path, [text.as_slice(), b"\r\nk5,more"].concat()).unwrap();
    assert!(rows::RowReader::open(&spec, &input.stamp, hasher, pass_dir(dir.path())).is_err());
}

#[test]
fn a_check_record_is_used_only_for_its_spec_and_an_unchanged_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = csv(dir.path(), "a", &["1", "2", "3"]);
    let record = StreamInput::open(&spec).unwrap().record();
    let trusted = StreamInput::open_checked(&spec, Some(&record)).unwrap();
    assert_eq!((trusted.rows, trusted.columns.clone()), (3, vec!["id".to_string(), "v".to_string()]));
    // Another spec (other key column): the record is not for it, so the file is checked.
    let other = DatasetSpec::new("a", &spec.file, &["v"]);
    assert_eq!(StreamInput::open_checked(&other, Some(&record)).unwrap().rows, 3);
    // An appended row changes the stamp: a full check counts it, and a bad row is reported.
    csv(dir.path(), "a", &["1", "2", "3", "4"]);
    assert_eq!(StreamInput::open_checked(&spec, Some(&record)).unwrap().rows, 4);
    std::fs::write(&spec.file, "id,v\n1,x\n,x\n").unwrap();
    let err = StreamInput::open_checked(&spec, Some(&record)).unwrap_err().to_string();
    assert!(err.contains("a.csv") && err.contains('3'), "{err}");
    // No record: a full check.
    csv(dir.path(), "a", &["1"]);
    assert_eq!(StreamInput::open_checked(&spec, None).unwrap().rows, 1);
}

/// The file is rewritten in place to the same length with its modification time put back, so
/// a registration's record is trusted; the job's scan counts other rows (or finds a bad key) and
/// fails, with no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_stamp_fails_the_job_in_its_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (csv(dir.path(), "a", &["10", "20", "30"]), csv(dir.path(), "b", &["10", "30", "40"]));
    let record = StreamInput::open(&a).unwrap().record();
    let meta = std::fs::metadata(&a.file).unwrap();
    let good = std::fs::read(&a.file).unwrap();
    // Two rows instead of three (the count differs), and a row with a field too many.
    let fewer = format!("id,v\r\n1020,row 0 of a\r\n30,{}\r\n", "x".repeat(good.len() - 28));
    let extra = String::from_utf8(good.clone()).unwrap().replace("20,row 1", "20,row,1");
    for forged in [fewer, extra] {
        assert_eq!(forged.len() as u64, meta.len(), "same length");
        std::fs::write(&a.file, &forged).unwrap();
        std::fs::File::options().write(true).open(&a.file).unwrap().set_modified(meta.modified().unwrap()).unwrap();
        let ia = StreamInput::open_checked(&a, Some(&record)).unwrap();
        assert_eq!(ia.rows, 3, "the record was trusted");
        let err = run_opened(dir.path(), &ia, &StreamInput::open(&b).unwrap(), Reveal::RequesterOnly, 4)
            .await
            .expect_err("the scan fails");
        assert!(err.contains("a.csv"), "{err}");
        assert!(!err.contains("1020"), "never the value: {err}");
        assert!(!dir.path().join("out/a.csv").exists(), "no output");
    }
}

/// The linear-time duplicate check finds exactly the repeats the sort by digest finds: none in
/// distinct digests (also with equal low bits, i.e. the same bin), every pair of every group
/// otherwise, wherever the copies lie.
#[test]
fn repeated_digests_are_found_as_by_the_sort() {
    use rand::{RngExt, SeedableRng};
    let by_sort = |digests: &[u128]| {
        let mut by_digest: Vec<u32> = (0..digests.len() as u32).collect();
        by_digest.sort_unstable_by_key(|&k| (digests[k as usize], k));
        by_digest
            .windows(2)
            .filter(|w| digests[w[0] as usize] == digests[w[1] as usize])
            .map(|w| (w[0], w[1]))
            .collect::<Vec<_>>()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for n in [0usize, 1, 2, 3, 7, 100, 5000] {
        let distinct: Vec<u128> = (0..n).map(|_| rng.random()).collect();
        assert!(!any_repeat(&distinct), "n = {n}");
        assert!(repeated_digests(&distinct).is_empty());
        // The same low 64 bits everywhere: one bin, still no repeat.
        let same_bin: Vec<u128> = (0..n as u128).map(|i| (i << 64) | 5).collect();
        assert!(!any_repeat(&same_bin), "n = {n}");
        if n < 2 {
            continue;
        }
        for copies in [2usize, 3] {
            let mut with = distinct.clone();
            for _ in 1..copies {
                let (from, to) = (rng.random_range(0..n), rng.random_range(0..n));
                with[to] = with[from];
            }
            let expected = by_sort(&with);
            assert_eq!(any_repeat(&with), !expected.is_empty(), "n = {n}");
            assert_eq!(repeated_digests(&with), expected, "n = {n}");
        }
        let mut last_first = distinct.clone();
        last_first[n - 1] = last_first[0];
        assert_eq!(repeated_digests(&last_first), vec![(0, n as u32 - 1)]);
        assert!(any_repeat(&vec![7u128; n]));
    }
}

/// A learning responder of a resumable inner join keeps only each order's dummy bits in memory;
/// `take_order` answers exactly as from the order read back from its sealed spill (a real item's
/// stream position, or a dummy), so a dummy position a requester claims is skipped by the
/// protocol on both paths (`claimed_dummy_positions_are_skipped` in the protocol's tests), and
/// each kept order is taken once.
#[test]
fn dummy_bits_kept_in_memory_answer_as_the_sealed_order() {
    let dir = tempfile::tempdir().unwrap();
    let spec = csv(dir.path(), "b", &["x", "y"]);
    let input = StreamInput::open(&spec).unwrap();
    let job = job(Role::Responder, Reveal::Both, dir.path().join("out.csv"));
    let spill = dir.path().join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let key = || StorageKey::from_bytes([3; 32]);
    let shared = new_shared(&spill, key(), &input, &job, true, true);
    // Bucket 2: 5 rows in a stream of 70 (so the bits span two words); the rest are dummies.
    let rows: Vec<Place> = (0..5).map(|i| (i * 10, 9, i as u32)).collect();
    // The protocol marks a dummy's place in an order with u32::MAX.
    let mut order = vec![u32::MAX; 70];
    for (k, p) in [(0u32, 3usize), (1, 64), (2, 0), (3, 69), (4, 41)] {
        order[p] = k;
    }
    let expected: Vec<u32> = (0..70).map(|p| if order[p] == u32::MAX { u32::MAX } else { p as u32 }).collect();
    for in_memory in [true, false] {
        shared.rows.lock().unwrap().insert(2, rows.clone());
        shared.digests.lock().unwrap().insert(2, (1..=5).collect());
        let deferred = in_memory.then(|| {
            let path = spill.join("positions-test");
            let out = std::io::BufWriter::new(SealedWriter::create(&path, &key(), Access::OwnerOnly).unwrap());
            Deferred { out, path, rows: 0 }
        });
        let mut sink = SpillSink::new(shared.clone(), None, deferred);
        assert_eq!(sink.orders_in_memory(), in_memory);
        sink.keep_order(2, order.clone()).unwrap();
        assert!(order_path(&spill, 2).exists(), "the sealed order is written either way");
        assert_eq!(sink.take_order(2).unwrap(), expected, "in memory: {in_memory}");
        if in_memory {
            assert!(sink.take_order(2).is_err(), "an order is taken once");
            assert!(sink.take_order(3).is_err(), "no order was kept for bucket 3");
        }
    }
}
