//! Join types against a plaintext join computed here, for ECDH-PSI, RR22 in memory and
//! streaming RR22.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use consort_protocols::{Reveal, Role, memory_pair};

use super::JoinType;
use crate::dataset::{Dataset, DatasetSpec};
use crate::psi::{JobLimits, PayloadJob, PsiJob, PsiProtocol, run_psi};
use crate::psi_stream::{StreamInput, StreamOptions, run_psi_streaming};
use crate::storage::AtRest;

type Table = Vec<Vec<String>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Ecdh,
    Rr22,
    Stream,
}

const ROUTES: [Route; 3] = [Route::Ecdh, Route::Rr22, Route::Stream];

fn read_table(path: &Path) -> Table {
    if crate::parquet_io::is_parquet(path) {
        return crate::parquet_io::test_util::read_table(path);
    }
    let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_path(path).unwrap();
    r.records().map(|rec| rec.unwrap().iter().map(str::to_string).collect()).collect()
}

/// A dataset of `ids`; the requester's has columns `id,v`, the responder's `w,id,x` (values
/// with a comma, quotes and non-ASCII so rows must be copied verbatim).
fn write_csv(dir: &Path, name: &str, ids: &[String], requester: bool, dedup: bool) -> DatasetSpec {
    let mut text = String::from(if requester { "id,v\n" } else { "w,id,x\n" });
    for (i, id) in ids.iter().enumerate() {
        if requester {
            text.push_str(&format!("{id},\"r{i}, \"\"é\"\"\"\n"));
        } else {
            text.push_str(&format!("w{i},{id},東{i}\n"));
        }
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, text).unwrap();
    let mut spec = DatasetSpec::new(name, path, &["id"]);
    spec.dedup = dedup;
    spec
}

/// The plaintext join of one side: (intersection rows as a set, then the tail in order), each
/// row as its fields (tag first for tagged joins), from the inputs alone.
struct Expected {
    header: Vec<String>,
    both: Vec<Vec<String>>,
    tail: Vec<Vec<String>>,
}

fn plaintext(own: &Table, peer: &Table, role: Role, join: JoinType, reveal: Reveal) -> Option<Expected> {
    let learns = role == Role::Requester || reveal == Reveal::Both;
    if !learns {
        return None;
    }
    let id_at = |t: &Table| t[0].iter().position(|h| h == "id").unwrap();
    // dedup: first row of each key.
    let firsts = |t: &Table| -> Vec<Vec<String>> {
        let at = id_at(t);
        let mut seen = HashSet::new();
        t[1..].iter().filter(|r| seen.insert(r[at].clone())).cloned().collect()
    };
    let (own_rows, peer_rows) = (firsts(own), firsts(peer));
    let peer_keys: HashSet<&String> = peer_rows.iter().map(|r| &r[id_at(peer)]).collect();
    let own_keys: HashSet<&String> = own_rows.iter().map(|r| &r[id_at(own)]).collect();
    let tagged = join.tagged();
    let tag = |side: &str, row: &[String]| -> Vec<String> {
        if tagged { std::iter::once(side.to_string()).chain(row.iter().cloned()).collect() } else { row.to_vec() }
    };
    let matched: Vec<Vec<String>> =
        own_rows.iter().filter(|r| peer_keys.contains(&r[id_at(own)])).map(|r| tag("both", r)).collect();
    let own_unmatched: Vec<Vec<String>> =
        own_rows.iter().filter(|r| !peer_keys.contains(&r[id_at(own)])).cloned().collect();
    let peer_unmatched = peer_rows.iter().filter(|r| !own_keys.contains(&r[id_at(peer)])).count();
    let (own_side, peer_side) = match role {
        Role::Requester => ("left", "right"),
        Role::Responder => ("right", "left"),
    };
    let shows = |side: &str| match join {
        JoinType::Inner => false,
        JoinType::Left => side == "left",
        JoinType::Right => side == "right",
        JoinType::Full | JoinType::Difference => true,
    };
    let placeholder: Vec<String> =
        std::iter::once(peer_side.to_string()).chain(own[0].iter().map(|_| String::new())).collect();
    let mut tail = Vec::new();
    for side in ["left", "right"] {
        if side == own_side && shows(side) {
            tail.extend(own_unmatched.iter().map(|r| tag(side, r)));
        } else if side == peer_side && shows(side) && join != JoinType::Difference && reveal == Reveal::Both {
            tail.extend(std::iter::repeat_n(placeholder.clone(), peer_unmatched));
        }
    }
    let header = if tagged {
        std::iter::once("_side".to_string()).chain(own[0].iter().cloned()).collect()
    } else {
        own[0].clone()
    };
    let both = if join == JoinType::Difference { Vec::new() } else { matched };
    Some(Expected { header, both, tail })
}

fn job(protocol: PsiProtocol, role: Role, reveal: Reveal, output: PathBuf, join: JoinType) -> PsiJob {
    job_with(protocol, role, reveal, output, join, crate::psi::OutputColumns::Rows)
}

fn job_with(
    protocol: PsiProtocol,
    role: Role,
    reveal: Reveal,
    output: PathBuf,
    join: JoinType,
    columns: crate::psi::OutputColumns,
) -> PsiJob {
    PsiJob {
        protocol,
        role,
        reveal,
        output: Some(output),
        at_rest: AtRest::Plain,
        progress: None,
        proofs: protocol == PsiProtocol::Ecdh,
        limits: JobLimits::default(),
        payload: PayloadJob::None,
        join,
        columns,
    }
}

/// Runs both sides; returns (requester's, responder's) intersection sizes.
async fn run_both(
    dir: &Path,
    path: Route,
    a: &DatasetSpec,
    b: &DatasetSpec,
    reveal: Reveal,
    join: JoinType,
) -> (Option<u64>, Option<u64>) {
    run_both_with(dir, path, a, b, reveal, join, crate::psi::OutputColumns::Rows).await
}

#[allow(clippy::too_many_arguments)]
async fn run_both_with(
    dir: &Path,
    path: Route,
    a: &DatasetSpec,
    b: &DatasetSpec,
    reveal: Reveal,
    join: JoinType,
    columns: crate::psi::OutputColumns,
) -> (Option<u64>, Option<u64>) {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let protocol = if path == Route::Ecdh { PsiProtocol::Ecdh } else { PsiProtocol::Rr22 };
    let ja = job_with(protocol, Role::Requester, reveal, dir.join("out/a.csv"), join, columns);
    let jb = job_with(protocol, Role::Responder, reveal, dir.join("out/b.csv"), join, columns);
    let (ca, cb) = memory_pair(64);
    let (ra, rb) = if path == Route::Stream {
        let (ia, ib) = (StreamInput::open(a).unwrap(), StreamInput::open(b).unwrap());
        let oa = StreamOptions { spill_dir: dir.join("spill-a"), bucket_size: 16 };
        let ob = StreamOptions { spill_dir: dir.join("spill-b"), bucket_size: 16 };
        let (ra, rb) = tokio::join!(run_psi_streaming(&ca, &ia, &ja, &oa), run_psi_streaming(&cb, &ib, &jb, &ob));
        (ra.map(|r| r.0), rb.map(|r| r.0))
    } else {
        let (da, db) = (Dataset::load(a).unwrap(), Dataset::load(b).unwrap());
        tokio::join!(run_psi(&ca, &da, &ja), run_psi(&cb, &db, &jb))
    };
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    (ra.intersection, rb.intersection)
}

fn check_side(got: Option<Table>, expected: Option<Expected>, what: &str) -> Option<Table> {
    match (got, expected) {
        (None, None) => None,
        (Some(mut got), Some(e)) => {
            assert_eq!(got[0], e.header, "{what}: header");
            let body = got.split_off(1);
            assert_eq!(body.len(), e.both.len() + e.tail.len(), "{what}: row count");
            let (mut both, tail) = (body[..e.both.len()].to_vec(), &body[e.both.len()..]);
            let mut want = e.both.clone();
            both.sort();
            want.sort();
            assert_eq!(both, want, "{what}: the intersection rows");
            assert_eq!(tail, &e.tail[..], "{what}: the rows after the intersection");
            Some(body)
        }
        (got, e) => panic!("{what}: output {:?}, expected one: {}", got.is_some(), e.is_some()),
    }
}

async fn check_case(path: Route, a_ids: &[String], b_ids: &[String], dedup: bool, join: JoinType, reveal: Reveal) {
    check_case_with(path, a_ids, b_ids, dedup, join, reveal, Formats::CSV).await
}

/// The inputs' formats and the outputs' columns of a case.
#[derive(Debug, Clone, Copy)]
struct Formats {
    /// The requester's and the responder's dataset is Parquet (else CSV).
    parquet: (bool, bool),
    columns: crate::psi::OutputColumns,
}

impl Formats {
    const CSV: Formats = Formats { parquet: (false, false), columns: crate::psi::OutputColumns::Rows };
}

/// The expected output with only the key column `id` (and `_side`), as `--output keys` writes.
fn keys_only(e: Option<Expected>, tagged: bool) -> Option<Expected> {
    fn keep(row: &[String], at: usize, tagged: bool) -> Vec<String> {
        if tagged { vec![row[0].clone(), row[at].clone()] } else { vec![row[at].clone()] }
    }
    let mut e = e?;
    let at = e.header.iter().position(|h| h == "id").unwrap();
    e.header = keep(&e.header, at, tagged);
    e.both = e.both.iter().map(|r| keep(r, at, tagged)).collect();
    e.tail = e.tail.iter().map(|r| keep(r, at, tagged)).collect();
    Some(e)
}

#[allow(clippy::too_many_arguments)]
async fn check_case_with(
    path: Route,
    a_ids: &[String],
    b_ids: &[String],
    dedup: bool,
    join: JoinType,
    reveal: Reveal,
    formats: Formats,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = write_csv(dir.path(), "a", a_ids, true, dedup);
    let mut b = write_csv(dir.path(), "b", b_ids, false, dedup);
    let (ta, tb) = (read_table(&a.file), read_table(&b.file));
    // The same tables as Parquet (every column Utf8; small row groups).
    for (spec, parquet) in [(&mut a, formats.parquet.0), (&mut b, formats.parquet.1)] {
        if parquet {
            let file = spec.file.with_extension("parquet");
            crate::parquet_io::test_util::csv_to_parquet(&spec.file, &file, &[], &[], 16);
            spec.file = file;
        }
    }
    let (ia, ib) = run_both_with(dir.path(), path, &a, &b, reveal, join, formats.columns).await;
    let what =
        format!("{path:?} {join:?} {reveal:?} dedup={dedup} {formats:?} |a|={} |b|={}", a_ids.len(), b_ids.len());
    let out = |n: &str| dir.path().join(format!("out/{n}.csv"));
    let got_a = out("a").exists().then(|| read_table(&out("a")));
    let got_b = out("b").exists().then(|| read_table(&out("b")));
    for (name, parquet) in [("a", formats.parquet.0), ("b", formats.parquet.1)] {
        if out(name).exists() {
            let written = crate::parquet_io::is_parquet(&out(name));
            assert_eq!(written, parquet, "{what}: the output is in the input's format");
        }
    }
    let mut ea = plaintext(&ta, &tb, Role::Requester, join, reveal);
    let mut eb = plaintext(&tb, &ta, Role::Responder, join, reveal);
    if formats.columns == crate::psi::OutputColumns::Keys {
        (ea, eb) = (keys_only(ea, join.tagged()), keys_only(eb, join.tagged()));
    }
    let shared = ea.as_ref().map(|e| e.both.len() as u64);
    let body_a = check_side(got_a, ea, &format!("{what} requester"));
    let body_b = check_side(got_b, eb, &format!("{what} responder"));
    let expected_shared = {
        let keys: HashSet<&String> = b_ids.iter().collect();
        a_ids.iter().filter(|k| keys.contains(k)).collect::<HashSet<_>>().len() as u64
    };
    assert_eq!(ia, Some(expected_shared), "{what}: requester's intersection");
    assert_eq!(ib, (reveal == Reveal::Both).then_some(expected_shared), "{what}: responder's intersection");
    if join != JoinType::Difference {
        assert_eq!(shared, Some(expected_shared));
    }
    // Row k of both outputs: the same side and, in the intersection, the same key.
    if let (Some(ra), Some(rb)) = (body_a, body_b)
        && join != JoinType::Difference
    {
        assert_eq!(ra.len(), rb.len(), "{what}: both outputs have as many rows");
        let keys = formats.columns == crate::psi::OutputColumns::Keys;
        let (ka, kb) = match (join.tagged(), keys) {
            (true, false) => (1, 2),
            (false, false) => (0, 1),
            (true, true) => (1, 1),
            (false, true) => (0, 0),
        };
        for (x, y) in ra.iter().zip(&rb) {
            if join.tagged() {
                assert_eq!(x[0], y[0], "{what}: _side of row");
            }
            if !join.tagged() || x[0] == "both" {
                assert_eq!(x[ka], y[kb], "{what}: key of an aligned row");
            }
        }
    }
}

fn ids(r: std::ops::Range<u32>) -> Vec<String> {
    r.map(|i| format!("id{i:04}")).collect()
}

fn cases() -> Vec<(Vec<String>, Vec<String>)> {
    vec![
        (vec![], vec![]),
        (vec![], ids(0..30)),
        (ids(0..30), vec![]),
        (ids(3..4), ids(3..4)),
        (ids(3..4), ids(4..5)),
        (ids(0..40), ids(40..90)),
        (ids(0..60), ids(0..60)),
        (ids(0..25), ids(10..130)),
        (ids(0..130).into_iter().rev().collect(), ids(100..110)),
    ]
}

/// With `dedup`: repeated keys on both sides, matched and unmatched.
fn dup_cases() -> Vec<(Vec<String>, Vec<String>)> {
    let mut a = ids(0..40);
    a.extend(ids(0..5));
    a.extend(ids(30..35));
    let mut b = ids(20..70);
    b.extend(ids(25..30));
    b.extend(ids(60..62));
    vec![(a.clone(), b.clone()), (b, a), (vec!["id0001".into(); 3], vec!["id0001".into(); 2])]
}

fn reveals(join: JoinType) -> Vec<Reveal> {
    match join {
        JoinType::Right | JoinType::Full => vec![Reveal::Both],
        _ => vec![Reveal::Both, Reveal::RequesterOnly],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_join_type_matches_a_plaintext_join() {
    for path in ROUTES {
        for join in JoinType::ALL {
            for reveal in reveals(join) {
                for (a, b) in cases() {
                    check_case(path, &a, &b, false, join, reveal).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_join_type_with_duplicates_matches_a_plaintext_join() {
    for path in ROUTES {
        for join in JoinType::ALL {
            for reveal in reveals(join) {
                for (a, b) in dup_cases() {
                    check_case(path, &a, &b, true, join, reveal).await;
                }
            }
        }
    }
}

/// Parquet inputs (both or one side) and `--output keys` (CSV and Parquet), for every join
/// type, on every path: the outputs are the plaintext join's rows, in the input's format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_inputs_and_key_outputs_match_a_plaintext_join() {
    use crate::psi::OutputColumns::{Keys, Rows};
    let variants = [
        Formats { parquet: (true, true), columns: Rows },
        Formats { parquet: (false, true), columns: Rows },
        Formats { parquet: (true, false), columns: Keys },
        Formats { parquet: (false, false), columns: Keys },
    ];
    for formats in variants {
        for path in ROUTES {
            for join in JoinType::ALL {
                for reveal in reveals(join) {
                    for (a, b) in cases().into_iter().step_by(2) {
                        check_case_with(path, &a, &b, false, join, reveal, formats).await;
                    }
                }
            }
            if formats.parquet.0 {
                let (a, b) = dup_cases().swap_remove(0);
                check_case_with(path, &a, &b, true, JoinType::Full, Reveal::Both, formats).await;
            }
        }
    }
}

/// The inner join's output is byte for byte what a plain PSI wrote before join types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inner_join_has_no_side_column() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_csv(dir.path(), "a", &ids(0..20), true, false);
    let b = write_csv(dir.path(), "b", &ids(10..30), false, false);
    for path in ROUTES {
        run_both(dir.path(), path, &a, &b, Reveal::Both, JoinType::Inner).await;
        let text = std::fs::read_to_string(dir.path().join("out/a.csv")).unwrap();
        assert!(text.starts_with("id,v\n"), "{path:?}");
        assert!(!text.contains("both,"), "{path:?}");
        assert_eq!(text.lines().count(), 11, "{path:?}");
    }
}

/// A payload left join (over both protocols): the requester's unmatched rows get empty peer columns; the values with
/// commas, quotes, empty strings and non-ASCII survive; with reveal both the responder writes
/// placeholders aligned with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_left_join_gives_unmatched_rows_empty_peer_columns() {
    let dir = tempfile::tempdir().unwrap();
    let own = "id,name\nk1,Ann\nk2,\"Bo, \"\"B\"\"\"\nk7,Cé\nk3,東京\n";
    let peer = "score,id,risk_tag\n1,k1,\"high, very\"\n,k2,\"say \"\"hi\"\"\"\n3.5,k3,Zürich\n4,k4,low\n";
    let pa = dir.path().join("a.csv");
    let pb = dir.path().join("b.csv");
    std::fs::write(&pa, own).unwrap();
    std::fs::write(&pb, peer).unwrap();
    let (a, b) = (
        Dataset::load(&DatasetSpec::new("a", pa, &["id"])).unwrap(),
        Dataset::load(&DatasetSpec::new("b", pb, &["id"])).unwrap(),
    );
    let runs = [PsiProtocol::Rr22, PsiProtocol::Ecdh]
        .into_iter()
        .flat_map(|p| [(p, Reveal::RequesterOnly), (p, Reveal::Both)]);
    for (protocol, reveal) in runs {
        let _ = std::fs::remove_dir_all(dir.path().join("out"));
        let (oa, ob) = (dir.path().join("out/a.csv"), dir.path().join("out/b.csv"));
        let columns = ["risk_tag", "score"];
        let mut ja = job(protocol, Role::Requester, reveal, oa.clone(), JoinType::Left);
        ja.payload = PayloadJob::Receive {
            header: columns.iter().map(|c| format!("peer.{c}")).collect(),
            max_bytes: 1 << 16,
            row_index: false,
        };
        let mut jb = job(protocol, Role::Responder, reveal, ob.clone(), JoinType::Left);
        jb.payload = PayloadJob::Send { columns: columns.iter().map(|c| c.to_string()).collect() };
        let (ca, cb) = memory_pair(16);
        let (ra, rb) = tokio::join!(run_psi(&ca, &a, &ja), run_psi(&cb, &b, &jb));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.intersection, Some(3));
        assert_eq!(ra.output_rows, 4);
        let got = read_table(&oa);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(got[0], s(&["_side", "id", "name", "peer.risk_tag", "peer.score"]));
        let mut both = got[1..4].to_vec();
        both.sort();
        assert_eq!(
            both,
            vec![
                s(&["both", "k1", "Ann", "high, very", "1"]),
                s(&["both", "k2", "Bo, \"B\"", "say \"hi\"", ""]),
                s(&["both", "k3", "東京", "Zürich", "3.5"]),
            ]
        );
        assert_eq!(got[4], s(&["left", "k7", "Cé", "", ""]));
        match reveal {
            Reveal::Both => {
                let theirs = read_table(&ob);
                assert_eq!(theirs.len(), 5);
                assert_eq!(theirs[4], s(&["left", "", "", ""]));
                assert_eq!(rb.output_rows, 4);
                for (x, y) in got[1..].iter().zip(&theirs[1..]) {
                    assert_eq!(x[0], y[0]);
                    if x[0] == "both" {
                        assert_eq!(x[1], y[2]);
                    }
                }
            }
            Reveal::RequesterOnly => assert!(!ob.exists()),
        }
    }
}

/// A malicious peer's count after the PSI: the honest side fails with a clear error and
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_peer_count_fails_the_job_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_csv(dir.path(), "a", &ids(0..20), true, false);
    let b = write_csv(dir.path(), "b", &ids(10..30), false, false);
    let (da, db) = (Dataset::load(&a).unwrap(), Dataset::load(&b).unwrap());
    let out_b = dir.path().join("out/b.csv");
    // The requester runs an inner join (sends no count) and then a lie: 11 > 20 - 10.
    let ja = job(PsiProtocol::Ecdh, Role::Requester, Reveal::Both, dir.path().join("out/a.csv"), JoinType::Inner);
    let jb = job(PsiProtocol::Ecdh, Role::Responder, Reveal::Both, out_b.clone(), JoinType::Left);
    let (ca, cb) = memory_pair(64);
    let (ra, rb) = tokio::join!(
        async {
            let r = run_psi(&ca, &da, &ja).await;
            consort_protocols::Channel::send(&ca, bytes::Bytes::copy_from_slice(&11u64.to_le_bytes())).await.unwrap();
            r
        },
        run_psi(&cb, &db, &jb)
    );
    ra.unwrap();
    let e = rb.unwrap_err().to_string();
    assert!(e.contains("exceeds its announced set size"), "{e}");
    assert!(!out_b.exists());
}
