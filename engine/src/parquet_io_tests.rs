//! Parquet datasets: keys, errors, generated files and PSI outputs against plaintext (the join
//! types over Parquet and `--output keys` are in `crate::join_tests`).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use consort_protocols::{Reveal, Role, memory_pair};

use super::test_util::{csv_to_parquet, read_table};
use super::*;
use crate::dataset::Dataset;
use crate::psi::{JobLimits, OutputColumns, PayloadJob, PsiJob, PsiProtocol, run_psi};
use crate::psi_stream::{StreamInput, StreamOptions, run_psi_streaming};
use crate::synth::{PsiGenSpec, generate_psi, generate_psi_ids, generate_psi_parquet};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `text` (CSV) as `NAME.parquet` with row groups of `group` rows.
fn parquet(dir: &Path, name: &str, text: &str, ints: &[&str], nulls: &[&str], group: usize) -> DatasetSpec {
    let csv = write(dir, &format!("{name}.src.csv"), text);
    let out = dir.join(format!("{name}.parquet"));
    csv_to_parquet(&csv, &out, ints, nulls, group);
    DatasetSpec::new(name, out, &["id"])
}

fn keys(ds: &Dataset) -> Vec<String> {
    (0..ds.len()).map(|i| ds.key_of(i)).collect()
}

fn load_err(spec: &DatasetSpec) -> String {
    let a = Dataset::load(spec).unwrap_err().to_string();
    let b = StreamInput::open(spec).unwrap_err().to_string();
    assert_eq!(a, b, "both paths say the same");
    a
}

#[test]
fn detected_by_extension_or_magic() {
    let dir = tempfile::tempdir().unwrap();
    let spec = parquet(dir.path(), "a", "id\n1\n", &[], &[], 8);
    assert!(is_parquet(&spec.file));
    let renamed = dir.path().join("a.data");
    std::fs::copy(&spec.file, &renamed).unwrap();
    assert!(is_parquet(&renamed), "by its magic");
    assert!(!is_parquet(&write(dir.path(), "b.csv", "PAR,x\n1,2\n")));
    assert!(!is_parquet(&dir.path().join("none.csv")));
    // Jobs that read CSV only refuse it by name instead of parsing binary as text.
    let err = crate::csv_rows::RowScanner::open(&renamed).err().unwrap().to_string();
    assert_eq!(err, "a.data: a Parquet dataset: only PSI jobs read Parquet (convert it to CSV for this job)");
    let ds = Dataset::load(&DatasetSpec::new("a", &renamed, &["id"])).unwrap();
    assert!(ds.row_bytes(0).is_err());
    // The LR's, scorecard's and SecureBoost's feature read opens its rows through this.
    let err = ds.open_csv_rows().err().unwrap().to_string();
    assert_eq!(err, "a.data: a Parquet dataset: only PSI jobs read Parquet (convert it to CSV for this job)");
}

/// Integers are keyed by their decimal text: a Parquet int 42 and a CSV "42" are one key;
/// strings are normalized as CSV fields are.
#[test]
fn integer_and_string_keys_match_the_csv_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = "id,name\n42,a\n-7,b\n0,c\n9223372036854775807,d\n";
    let csv = Dataset::load(&DatasetSpec::new("c", write(dir.path(), "c.csv", text), &["id"])).unwrap();
    let ints = Dataset::load(&parquet(dir.path(), "i", text, &["id"], &[], 2)).unwrap();
    let strings = Dataset::load(&parquet(dir.path(), "s", text, &[], &[], 3)).unwrap();
    assert_eq!(keys(&csv), ["42", "-7", "0", "9223372036854775807"]);
    assert_eq!(keys(&ints), keys(&csv));
    assert_eq!(keys(&strings), keys(&csv));
    assert_eq!(
        (0..4).map(|i| ints.keys.get(i)).collect::<Vec<_>>(),
        (0..4).map(|i| csv.keys.get(i)).collect::<Vec<_>>()
    );
    // Trimming and case folding apply to Parquet strings as to CSV fields.
    let mut spec = parquet(dir.path(), "t", "id\n  Ab \nx\n", &[], &[], 8);
    spec.normalize.case_fold = true;
    assert_eq!(keys(&Dataset::load(&spec).unwrap()), ["ab", "x"]);
    // A composite key of an integer and a string column.
    let mut spec = parquet(dir.path(), "k", "id,name\n1,x\n1,y\n", &["id"], &[], 8);
    spec.keys = vec!["id".into(), "name".into()];
    assert_eq!(keys(&Dataset::load(&spec).unwrap()), ["1,x", "1,y"]);
}

#[test]
fn null_keys_and_bad_keys_name_the_column_and_the_row_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("id,secret\n");
    for i in 0..12 {
        let id = if i == 9 { String::new() } else { format!("k{i}") };
        text.push_str(&format!("{id},hidden{i}\n"));
    }
    let spec = parquet(dir.path(), "n", &text, &[], &["id"], 4);
    assert_eq!(load_err(&spec), "n.parquet: row 10 (row group 2, row 1): column 'id': null key");
    let spec = parquet(dir.path(), "e", "id,v\nk1,a\n  ,b\n", &[], &[], 4);
    assert_eq!(
        load_err(&spec),
        "e.parquet: row 2 (row group 0, row 1): column 'id': empty key (after trimming whitespace)"
    );
    let spec = parquet(dir.path(), "c", "id,v\nk1,a\n\"a\u{1b}b\",b\n", &[], &[], 4);
    assert_eq!(
        load_err(&spec),
        "c.parquet: row 2 (row group 0, row 1): column 'id': the key contains a control character (U+001B)"
    );
    // Duplicates: the in-memory load names both rows; the streaming check leaves them to the job.
    let spec = parquet(dir.path(), "d", "id,v\nk1,a\nk2,b\nk1,c\n", &[], &[], 2);
    let err = Dataset::load(&spec).unwrap_err().to_string();
    assert_eq!(
        err,
        "d.parquet: row 3: column 'id': duplicate key, first seen on row 1; pass --dedup to keep the first row of each"
    );
    assert!(!err.contains("k1"));
    assert_eq!(StreamInput::open(&spec).unwrap().rows, 3);
    let mut dedup = spec.clone();
    dedup.dedup = true;
    let ds = Dataset::load(&dedup).unwrap();
    assert_eq!((keys(&ds), ds.duplicates_dropped), (vec!["k1".to_string(), "k2".into()], 1));
}

#[test]
fn wrong_columns_and_key_types_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = parquet(dir.path(), "a", "id,v\n1,2\n", &["v"], &[], 4);
    spec.keys = vec!["phone".into()];
    assert_eq!(load_err(&spec), "a.parquet: column 'phone': key column not in the schema (columns: 'id', 'v')");
    assert!(spec.check_header().is_err());
    spec.keys = vec!["id".into()];
    assert_eq!(spec.check_header().unwrap(), ["id", "v"]);
    // A float key column.
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Float64, false)]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow_array::Float64Array::from(vec![1.5]))]).unwrap();
    let file = dir.path().join("f.parquet");
    write_file(&file, schema, [batch]).unwrap();
    let err = load_err(&DatasetSpec::new("f", file, &["id"]));
    assert_eq!(err, "f.parquet: column 'id': a key column holds strings or integers, not Float64");
}

#[test]
fn corrupt_or_truncated_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("id,v\n");
    for i in 0..5000 {
        text.push_str(&format!("k{i},value {i}\n"));
    }
    let spec = parquet(dir.path(), "a", &text, &[], &[], 1000);
    let bytes = std::fs::read(&spec.file).unwrap();
    let damaged = |name: &str, content: &[u8]| {
        let file = write(dir.path(), name, "");
        std::fs::write(&file, content).unwrap();
        DatasetSpec::new(name, file, &["id"])
    };
    let mut cases = vec![
        damaged("half.parquet", &bytes[..bytes.len() / 2]),
        damaged("head.parquet", &bytes[..3]),
        damaged("empty.parquet", b""),
        damaged("text.parquet", b"id\n1\n"),
    ];
    // The footer intact, the data pages overwritten.
    let mut garbled = bytes.clone();
    for b in &mut garbled[8..bytes.len() / 2] {
        *b = 0x5a;
    }
    cases.push(damaged("garbled.parquet", &garbled));
    for spec in cases {
        let name = spec.file.file_name().unwrap().to_string_lossy().to_string();
        let err = load_err(&spec);
        assert!(err.starts_with(&format!("{name}: ")), "{err}");
        assert!(err.contains("Parquet"), "{err}");
    }
}

fn job(protocol: PsiProtocol, role: Role, output: PathBuf, columns: OutputColumns) -> PsiJob {
    PsiJob {
        protocol,
        role,
        reveal: Reveal::Both,
        output: Some(output),
        at_rest: crate::storage::AtRest::Plain,
        progress: None,
        proofs: false,
        limits: JobLimits::default(),
        payload: PayloadJob::None,
        join: crate::join::JoinType::Inner,
        columns,
    }
}

/// Runs a PSI of `a` (requester) and `b`, streaming (RR22 from disk) or in memory (ECDH);
/// outputs go to `out/a.out` and `out/b.out`.
async fn run_pair(
    dir: &Path,
    a: &DatasetSpec,
    b: &DatasetSpec,
    streaming: bool,
    columns: OutputColumns,
) -> Result<(u64, u64), String> {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let protocol = if streaming { PsiProtocol::Rr22 } else { PsiProtocol::Ecdh };
    let ja = job(protocol, Role::Requester, dir.join("out/a.out"), columns);
    let jb = job(protocol, Role::Responder, dir.join("out/b.out"), columns);
    let (ca, cb) = memory_pair(64);
    let (ra, rb) = if streaming {
        let (ia, ib) = (StreamInput::open(a).map_err(|e| e.to_string())?, StreamInput::open(b).unwrap());
        let oa = StreamOptions { spill_dir: dir.join("spill-a"), bucket_size: 256 };
        let ob = StreamOptions { spill_dir: dir.join("spill-b"), bucket_size: 256 };
        let (ra, rb) = tokio::join!(
            async {
                let r = run_psi_streaming(&ca, &ia, &ja, &oa).await;
                drop(ca);
                r
            },
            async {
                let r = run_psi_streaming(&cb, &ib, &jb, &ob).await;
                drop(cb);
                r
            }
        );
        (ra.map(|r| r.0), rb.map(|r| r.0))
    } else {
        let (da, db) = (Dataset::load(a).map_err(|e| e.to_string())?, Dataset::load(b).unwrap());
        tokio::join!(run_psi(&ca, &da, &ja), run_psi(&cb, &db, &jb))
    };
    match (ra, rb) {
        (Ok(ra), Ok(rb)) => Ok((ra.output_rows, rb.output_rows)),
        (ra, rb) => Err(format!("{:?} / {:?}", ra.err().map(|e| e.to_string()), rb.err().map(|e| e.to_string()))),
    }
}

/// The rows of `own` (a CSV table, header first) whose `id` is in `peer`'s, as a sorted set.
fn plaintext(own: &[Vec<String>], peer: &[Vec<String>]) -> Vec<Vec<String>> {
    let at = |t: &[Vec<String>]| t[0].iter().position(|h| h == "id").unwrap();
    let peer_ids: HashSet<&String> = peer[1..].iter().map(|r| &r[at(peer)]).collect();
    let mut rows: Vec<Vec<String>> = own[1..].iter().filter(|r| peer_ids.contains(&r[at(own)])).cloned().collect();
    rows.sort();
    rows
}

fn csv_table(path: &Path) -> Vec<Vec<String>> {
    let mut r = ::csv::ReaderBuilder::new().has_headers(false).from_path(path).unwrap();
    r.records().map(|rec| rec.unwrap().iter().map(str::to_string).collect()).collect()
}

fn table(path: &Path) -> Vec<Vec<String>> {
    if is_parquet(path) { read_table(path) } else { csv_table(path) }
}

/// Generated CSV and Parquet files of the same spec hold the same keys in the same order, and
/// every pairing of formats gives the plaintext intersection, row for row after conversion,
/// on the streaming and the in-memory path; with `--output keys` only the key column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_parquet_inputs_give_the_same_intersection() {
    let dir = tempfile::tempdir().unwrap();
    let gen_spec =
        |sub: &str| PsiGenSpec { rows_a: 3000, rows_b: 2200, overlap: 900, seed: 5, out_dir: dir.path().join(sub) };
    generate_psi(&gen_spec("g")).unwrap();
    let s = generate_psi_parquet(&gen_spec("g"), false).unwrap();
    assert_eq!((s.rows_a, s.rows_b), (3000, 2200));
    generate_psi_ids(&gen_spec("ids")).unwrap();
    generate_psi_parquet(&gen_spec("ids"), true).unwrap();
    let spec = |sub: &str, f: &str| DatasetSpec::new(f, dir.path().join(sub).join(f), &["id"]);
    for sub in ["g", "ids"] {
        for side in ["a", "b"] {
            let csv = Dataset::load(&spec(sub, &format!("{side}.csv"))).unwrap();
            let pq = Dataset::load(&spec(sub, &format!("{side}.parquet"))).unwrap();
            assert_eq!(keys(&csv), keys(&pq), "{sub}/{side}: the same keys in the same order");
        }
    }
    // The generated Parquet holds the CSV's rows: id as Int64, the rest as the CSV's text.
    let (csv_a, pq_a) = (csv_table(&dir.path().join("g/a.csv")), read_table(&dir.path().join("g/a.parquet")));
    assert_eq!(csv_a, pq_a);
    let csv_b = csv_table(&dir.path().join("g/b.csv"));
    let (want_a, want_b) = (plaintext(&csv_a, &csv_b), plaintext(&csv_b, &csv_a));
    assert_eq!(want_a.len(), 900);
    for streaming in [true, false] {
        for (fa, fb) in [("csv", "parquet"), ("parquet", "csv"), ("parquet", "parquet"), ("csv", "csv")] {
            for columns in [OutputColumns::Rows, OutputColumns::Keys] {
                let what = format!("{fa} × {fb} streaming={streaming} {columns:?}");
                let (a, b) = (spec("g", &format!("a.{fa}")), spec("g", &format!("b.{fb}")));
                let rows = run_pair(dir.path(), &a, &b, streaming, columns).await.unwrap();
                assert_eq!(rows, (900, 900), "{what}");
                let (out_a, out_b) = (dir.path().join("out/a.out"), dir.path().join("out/b.out"));
                assert_eq!(is_parquet(&out_a), fa == "parquet", "{what}");
                assert_eq!(is_parquet(&out_b), fb == "parquet", "{what}");
                let (got_a, got_b) = (table(&out_a), table(&out_b));
                // Row k of both outputs is the same id.
                let id = |t: &[Vec<String>], k: usize| t[k][t[0].iter().position(|h| h == "id").unwrap()].clone();
                assert!((1..got_a.len()).all(|k| id(&got_a, k) == id(&got_b, k)), "{what}: aligned");
                let project = |want: &[Vec<String>], header: &[String]| -> Vec<Vec<String>> {
                    let at = header.iter().position(|h| h == "id").unwrap();
                    match columns {
                        OutputColumns::Rows => want.to_vec(),
                        OutputColumns::Keys => want.iter().map(|r| vec![r[at].clone()]).collect(),
                    }
                };
                for (got, want, header) in [(got_a, &want_a, &csv_a[0]), (got_b, &want_b, &csv_b[0])] {
                    let expected_header = match columns {
                        OutputColumns::Rows => header.clone(),
                        OutputColumns::Keys => vec!["id".to_string()],
                    };
                    assert_eq!(got[0], expected_header, "{what}");
                    let mut body = got[1..].to_vec();
                    body.sort();
                    assert_eq!(body, project(want, header), "{what}: the plaintext intersection's rows");
                }
            }
        }
    }
}

/// A Parquet input that changes after it was checked fails the job with no output left, and
/// one that is truncated never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_truncated_parquet_input_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("id,v\n");
    for i in 0..3000 {
        text.push_str(&format!("k{i},v{i}\n"));
    }
    let a = parquet(dir.path(), "a", &text, &[], &[], 500);
    let b = parquet(dir.path(), "b", &text, &[], &[], 700);
    for streaming in [true, false] {
        let ia = StreamInput::open(&a).unwrap();
        let da = Dataset::load(&a).unwrap();
        let bytes = std::fs::read(&a.file).unwrap();
        std::fs::write(&a.file, &bytes[..bytes.len() - 100]).unwrap();
        let _ = std::fs::remove_dir_all(dir.path().join("out"));
        let ja = job(
            if streaming { PsiProtocol::Rr22 } else { PsiProtocol::Ecdh },
            Role::Requester,
            dir.path().join("out/a.out"),
            OutputColumns::Rows,
        );
        let jb = job(ja.protocol, Role::Responder, dir.path().join("out/b.out"), OutputColumns::Rows);
        let (ca, cb) = memory_pair(64);
        let err = if streaming {
            let ib = StreamInput::open(&b).unwrap();
            let oa = StreamOptions { spill_dir: dir.path().join("spill-a"), bucket_size: 256 };
            let ob = StreamOptions { spill_dir: dir.path().join("spill-b"), bucket_size: 256 };
            let (ra, _) = tokio::join!(
                async {
                    let r = run_psi_streaming(&ca, &ia, &ja, &oa).await;
                    drop(ca);
                    r
                },
                async {
                    let r = run_psi_streaming(&cb, &ib, &jb, &ob).await;
                    drop(cb);
                    r
                }
            );
            ra.unwrap_err().to_string()
        } else {
            let db = Dataset::load(&b).unwrap();
            let (ra, _) = tokio::join!(run_psi(&ca, &da, &ja), run_psi(&cb, &db, &jb));
            ra.unwrap_err().to_string()
        };
        assert!(err.contains("a.parquet: the file changed after it was loaded"), "{err}");
        let out = dir.path().join("out");
        assert!(!out.join("a.out").exists());
        assert!(
            std::fs::read_dir(&out).map(|d| d.flatten().all(|e| e.file_name() == "b.out")).unwrap_or(true),
            "no temp file left"
        );
        std::fs::write(&a.file, &bytes).unwrap();
    }
}

/// An empty Parquet file (schema, no rows) and a one-row one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_one_row_parquet_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = parquet(dir.path(), "e", "id,v\n", &["id"], &[], 4);
    let one = parquet(dir.path(), "o", "id,v\n7,x\n", &["id"], &[], 4);
    let other = DatasetSpec::new("c", write(dir.path(), "c.csv", "v,id\ny,7\nz,8\n"), &["id"]);
    assert_eq!(StreamInput::open(&empty).unwrap().rows, 0);
    for streaming in [true, false] {
        assert_eq!(run_pair(dir.path(), &empty, &other, streaming, OutputColumns::Rows).await.unwrap(), (0, 0));
        let t = read_table(&dir.path().join("out/a.out"));
        assert_eq!(t, vec![vec!["id".to_string(), "v".to_string()]], "the schema, no rows");
        assert_eq!(run_pair(dir.path(), &one, &other, streaming, OutputColumns::Rows).await.unwrap(), (1, 1));
        assert_eq!(read_table(&dir.path().join("out/a.out"))[1], ["7", "x"]);
        assert_eq!(std::fs::read_to_string(dir.path().join("out/b.out")).unwrap(), "v,id\ny,7\n");
    }
}

/// Payload joins read and write CSV rows: a Parquet dataset (or `--output keys`) is refused
/// before any message, on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_joins_refuse_parquet_and_key_outputs_before_any_message() {
    let dir = tempfile::tempdir().unwrap();
    let pq = Dataset::load(&parquet(dir.path(), "b", "id,v\n1,a\n", &[], &[], 4)).unwrap();
    let csv = Dataset::load(&DatasetSpec::new("c", write(dir.path(), "c.csv", "id,v\n1,a\n"), &["id"])).unwrap();
    let send = PayloadJob::Send { columns: vec!["v".into()] };
    let receive = PayloadJob::Receive { header: vec!["p.v".into()], max_bytes: 1024, row_index: false };
    let cases = [
        (&pq, Role::Responder, send.clone(), OutputColumns::Rows),
        (&pq, Role::Requester, receive.clone(), OutputColumns::Rows),
        (&csv, Role::Requester, receive, OutputColumns::Keys),
    ];
    for (dataset, role, payload, columns) in cases {
        let (ca, cb) = memory_pair(8);
        let mut j = job(PsiProtocol::Rr22, role, dir.path().join("o.out"), columns);
        j.payload = payload;
        let err = run_psi(&cb, dataset, &j).await.unwrap_err().to_string();
        assert!(err.contains("a payload join writes every column of CSV rows"), "{err}");
        drop(cb);
        assert!(consort_protocols::Channel::recv(&ca).await.is_err(), "no frame was sent");
    }
}

/// Dictionary-encoded columns (pandas categoricals): a key column is keyed by its values, and
/// outputs hold the values (the row format decodes dictionaries), as plain strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionary_encoded_columns_are_read_by_value() {
    use arrow_array::DictionaryArray;
    use arrow_array::types::Int32Type;
    let dir = tempfile::tempdir().unwrap();
    let dict = |v: Vec<Option<&str>>| Arc::new(v.into_iter().collect::<DictionaryArray<Int32Type>>()) as ArrayRef;
    let ty = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", ty.clone(), true),
        Field::new("cat", ty, true),
        Field::new("v", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            dict(vec![Some("k1"), Some("k2"), Some("k3"), Some("k4")]),
            dict(vec![Some("red"), None, Some("red"), Some("blue")]),
            Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
        ],
    )
    .unwrap();
    let file = dir.path().join("d.parquet");
    write_file(&file, schema.clone(), [batch]).unwrap();
    let a = DatasetSpec::new("d", &file, &["id"]);
    assert_eq!(keys(&Dataset::load(&a).unwrap()), ["k1", "k2", "k3", "k4"]);
    let b = DatasetSpec::new("c", write(dir.path(), "c.csv", "id\nk2\nk4\nk9\n"), &["id"]);
    for streaming in [true, false] {
        assert_eq!(run_pair(dir.path(), &a, &b, streaming, OutputColumns::Rows).await.unwrap(), (2, 2));
        let mut t = read_table(&dir.path().join("out/a.out"));
        t[1..].sort();
        assert_eq!(t, [vec!["id", "cat", "v"], vec!["k2", "", "b"], vec!["k4", "blue", "d"]]);
        let out = ParquetRecordBatchReaderBuilder::try_new(File::open(dir.path().join("out/a.out")).unwrap()).unwrap();
        assert!(out.schema().fields().iter().take(2).all(|f| f.data_type() == &DataType::Utf8), "{:?}", out.schema());
    }
    // A null inside a dictionary key column is named like any null key.
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![dict(vec![Some("k1"), None]), dict(vec![None, None]), Arc::new(StringArray::from(vec!["a", "b"]))],
    )
    .unwrap();
    write_file(&file, schema, [batch]).unwrap();
    assert_eq!(load_err(&a), "d.parquet: row 2 (row group 0, row 1): column 'id': null key");
}
