//! Plaintext checks of PSI outputs (demo, benchmark harness, tests).
//!
//! Reads both inputs in the clear, so it is for data both sides may see (generated data, tests),
//! never part of a real job.
use std::path::Path;

use crate::csv_rows::{RowScanner, strip_terminator};
use crate::dataset::{Dataset, DatasetSpec, push_key};
use crate::error::DataError;
use crate::keys::{KeyArena, KeyIndex, display_key, key_hash};
use crate::sealed::StorageKey;

/// An output file to check and, if it is sealed, the key of the node that wrote it.
#[derive(Clone, Copy)]
pub struct OutputFile<'a> {
    pub path: &'a Path,
    pub key: Option<&'a StorageKey>,
}

impl<'a> OutputFile<'a> {
    pub fn plain(path: &'a Path) -> Self {
        OutputFile { path, key: None }
    }

    pub fn sealed(path: &'a Path, key: &'a StorageKey) -> Self {
        OutputFile { path, key: Some(key) }
    }
}

/// The outcome of [`verify_psi_outputs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Size of the plaintext intersection of the two inputs' (normalized) keys.
    pub expected: u64,
    /// No problems found.
    pub ok: bool,
    /// What is wrong, one line each (the first few; the last line counts the rest).
    pub problems: Vec<String>,
}

/// Problems listed in full; the rest are counted.
const MAX_PROBLEMS: usize = 20;

#[derive(Default)]
struct Problems {
    listed: Vec<String>,
    more: u64,
}

impl Problems {
    fn add(&mut self, p: String) {
        if self.listed.len() < MAX_PROBLEMS {
            self.listed.push(p);
        } else {
            self.more += 1;
        }
    }

    fn extend(&mut self, other: Problems) {
        for p in other.listed {
            self.add(p);
        }
        self.more += other.more;
    }

    fn into_list(mut self) -> Vec<String> {
        if self.more > 0 {
            self.listed.push(format!("... and {} more problems", self.more));
        }
        self.listed
    }
}

/// One input with what the check needs to know about it.
struct Side<'a> {
    name: &'static str,
    input: &'a Dataset,
    index: KeyIndex,
    /// Per input row: its key is in the intersection.
    shared: Vec<bool>,
}

/// One output row: its line, its key (index into the output's keys; none if the key is bad),
/// the input row with that key, and a hash of its bytes.
#[derive(Clone, Copy)]
struct OutRow {
    line: u64,
    key: Option<u32>,
    input: Option<u32>,
    content: u64,
}

/// Hash of a row's bytes without its terminator, to compare rows without keeping them.
fn content_hash(raw: &[u8]) -> u64 {
    key_hash(strip_terminator(raw))
}

/// Checks PSI outputs against the plaintext intersection of the datasets `a` and `b`: each given
/// output must hold the input's header and exactly the intersecting rows, byte-identical to the
/// input rows, each once; with both outputs, row i of both must have the same key (aligned order).
/// Errors are for unreadable inputs; anything wrong with an output is a problem in the report.
pub fn verify_psi_outputs(
    a: &DatasetSpec,
    b: &DatasetSpec,
    a_out: Option<OutputFile<'_>>,
    b_out: Option<OutputFile<'_>>,
) -> Result<VerifyReport, DataError> {
    let (da, db) = rayon::join(|| Dataset::load_indexed(a), || Dataset::load_indexed(b));
    let ((da, index_a), (db, index_b)) = (da?, db?);
    let (mut shared_a, mut shared_b) = (vec![false; da.len()], vec![false; db.len()]);
    for (i, j) in index_a.join(&da.keys, &index_b, &db.keys) {
        shared_a[i as usize] = true;
        shared_b[j as usize] = true;
    }
    let expected = shared_a.iter().filter(|&&s| s).count() as u64;
    let side_a = Side { name: "a", input: &da, index: index_a, shared: shared_a };
    let side_b = Side { name: "b", input: &db, index: index_b, shared: shared_b };

    let check = |side: &Side<'_>, out: Option<OutputFile<'_>>| {
        let mut problems = Problems::default();
        let rows = out.map(|o| check_output(side, o.path, o.key, &mut problems)).transpose();
        rows.map(|rows| (rows.flatten(), problems))
    };
    let (a, b) = rayon::join(|| check(&side_a, a_out), || check(&side_b, b_out));
    let ((out_a, mut problems), (out_b, problems_b)) = (a?, b?);
    problems.extend(problems_b);
    if let (Some(ra), Some(rb)) = (&out_a, &out_b) {
        check_aligned(&da, ra, &db, rb, &mut problems);
    }
    let problems = problems.into_list();
    Ok(VerifyReport { expected, ok: problems.is_empty(), problems })
}

/// Checks one output file; returns its rows as matched to the input, or `None` if it could not
/// be read at all.
fn check_output(
    side: &Side<'_>,
    out: &Path,
    key: Option<&StorageKey>,
    problems: &mut Problems,
) -> Result<Option<Vec<OutRow>>, DataError> {
    let input = side.input;
    let shown = out.display();
    let Some((keys, mut rows)) = read_output(side, out, key, problems) else {
        return Ok(None);
    };

    // Match output keys to input rows by joining the two hash-sorted indexes.
    let mut input_of = vec![None; keys.len()];
    for (k, i) in KeyIndex::build(&keys).join(&keys, &side.index, &input.keys) {
        input_of[k as usize] = Some(i);
    }
    let mut seen = vec![false; input.len()];
    let mut expect = Vec::new();
    for (r, row) in rows.iter_mut().enumerate() {
        let Some(k) = row.key else { continue };
        let at = || format!("{shown}:{}: key {}", row.line, display_key(keys.get(k as usize)));
        row.input = input_of[k as usize];
        match row.input {
            None => problems.add(format!("{} is not in input {}", at(), input.spec.file.display())),
            Some(i) if !side.shared[i as usize] => problems.add(format!("{} is not in the intersection", at())),
            Some(i) if seen[i as usize] => problems.add(format!("{} appears more than once", at())),
            Some(i) => {
                seen[i as usize] = true;
                expect.push((i, r as u32));
            }
        }
    }
    for (i, r) in compare_contents(input, &rows, expect)? {
        let row = &rows[r as usize];
        problems.add(format!(
            "{shown}:{}: key {}: the row differs from the input row with that key",
            row.line,
            input.display_key(i as usize)
        ));
    }
    let missing: Vec<usize> = (0..input.len()).filter(|&i| side.shared[i] && !seen[i]).collect();
    if let Some(&first) = missing.first() {
        problems.add(format!(
            "{shown}: {} intersecting rows are missing (the first: key {})",
            missing.len(),
            input.display_key(first)
        ));
    }
    Ok(Some(rows))
}

/// Reads an output file: the key of each row (with the input's key columns and normalization)
/// and a hash of its bytes. `None` if the file cannot be read or has no usable header.
fn read_output(
    side: &Side<'_>,
    out: &Path,
    key: Option<&StorageKey>,
    problems: &mut Problems,
) -> Option<(KeyArena, Vec<OutRow>)> {
    let input = side.input;
    let spec = DatasetSpec { file: out.to_path_buf(), ..input.spec.clone() };
    let mut scanner =
        RowScanner::open_data(out, key).map_err(|e| problems.add(format!("output {}: {e}", side.name))).ok()?;
    let header = spec.read_header(&mut scanner).map_err(|e| problems.add(e.to_string())).ok()?;
    if strip_terminator(&header.raw) != strip_terminator(input.header_bytes()) {
        problems.add(format!("{}:1: the header differs from the input's", out.display()));
    }
    let mut keys = KeyArena::new();
    let mut rows = Vec::new();
    loop {
        let row = match scanner.next_row() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => {
                problems.add(e.to_string());
                break;
            }
        };
        let key = match push_key(&spec, &header, &row, &mut keys) {
            Ok(()) => Some(keys.len() as u32 - 1),
            Err(e) => {
                problems.add(e.to_string());
                None
            }
        };
        rows.push(OutRow { line: row.line, key, input: None, content: content_hash(row.raw) });
    }
    Some((keys, rows))
}

/// Compares output rows with the input rows they claim to be, in one sequential pass over the
/// input. `expect` holds `(input row, output row)` pairs; returns those whose bytes differ.
fn compare_contents(
    input: &Dataset,
    rows: &[OutRow],
    mut expect: Vec<(u32, u32)>,
) -> Result<Vec<(u32, u32)>, DataError> {
    expect.sort_unstable();
    drop(input.open_unchanged()?);
    let mut scanner = RowScanner::open(&input.spec.file)?;
    scanner.next_row()?; // the header
    let mut differ = Vec::new();
    let (mut kept, mut next) = (0usize, 0usize);
    while next < expect.len() {
        let Some(row) = scanner.next_row()? else {
            break;
        };
        // Rows dropped as duplicates are not kept rows; kept rows are recognized by their offset.
        if kept < input.len() && row.start == input.row_span(kept).0 {
            while next < expect.len() && expect[next].0 as usize == kept {
                if content_hash(row.raw) != rows[expect[next].1 as usize].content {
                    differ.push(expect[next]);
                }
                next += 1;
            }
            kept += 1;
        }
    }
    Ok(differ)
}

/// Row i of both outputs must be the same entity.
fn check_aligned(da: &Dataset, ra: &[OutRow], db: &Dataset, rb: &[OutRow], problems: &mut Problems) {
    if ra.len() != rb.len() {
        problems.add(format!("the outputs have different row counts: a {}, b {}", ra.len(), rb.len()));
    }
    let mut misaligned = 0u64;
    for (x, y) in ra.iter().zip(rb) {
        let (Some(i), Some(j)) = (x.input, y.input) else {
            continue;
        };
        let (ka, kb) = (da.keys.get(i as usize), db.keys.get(j as usize));
        if ka != kb {
            misaligned += 1;
            if misaligned <= 3 {
                problems.add(format!(
                    "not aligned: a line {} has key {}, b line {} has key {}",
                    x.line,
                    display_key(ka),
                    y.line,
                    display_key(kb)
                ));
            }
        }
    }
    if misaligned > 3 {
        problems.add(format!("{misaligned} rows in all are not aligned"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{PsiGenSpec, generate_psi};

    struct Case {
        dir: tempfile::TempDir,
        a: DatasetSpec,
        b: DatasetSpec,
        da: Dataset,
        db: Dataset,
        /// Joint order: (a index, b index) of each shared key, in some order both agree on.
        pairs: Vec<(u32, u32)>,
    }

    fn case() -> Case {
        let dir = tempfile::tempdir().unwrap();
        generate_psi(&PsiGenSpec { rows_a: 400, rows_b: 300, overlap: 50, seed: 11, out_dir: dir.path().into() })
            .unwrap();
        let spec = |f: &str| DatasetSpec::new(f, dir.path().join(f), &["id"]);
        let (a, b) = (spec("a.csv"), spec("b.csv"));
        let (da, db) = (Dataset::load(&a).unwrap(), Dataset::load(&b).unwrap());
        let mut pairs: Vec<(u32, u32)> = (0..da.len())
            .filter_map(|i| (0..db.len()).find(|&j| db.keys.get(j) == da.keys.get(i)).map(|j| (i as u32, j as u32)))
            .collect();
        pairs.sort_by_key(|&(i, _)| da.key_of(i as usize));
        Case { dir, a, b, da, db, pairs }
    }

    impl Case {
        fn write(&self, name: &str, a_side: bool, order: &[u32]) -> std::path::PathBuf {
            let out = self.dir.path().join(name);
            let ds = if a_side { &self.da } else { &self.db };
            ds.write_rows(order, &out, &crate::storage::AtRest::Plain).unwrap();
            out
        }
        fn orders(&self) -> (Vec<u32>, Vec<u32>) {
            self.pairs.iter().copied().unzip()
        }
        fn verify(&self, a_out: Option<&Path>, b_out: Option<&Path>) -> VerifyReport {
            verify_psi_outputs(&self.a, &self.b, a_out.map(OutputFile::plain), b_out.map(OutputFile::plain)).unwrap()
        }
    }

    #[test]
    fn accepts_correct_aligned_outputs() {
        let c = case();
        let (oa, ob) = c.orders();
        let (pa, pb) = (c.write("oa.csv", true, &oa), c.write("ob.csv", false, &ob));
        let r = c.verify(Some(&pa), Some(&pb));
        assert_eq!(r, VerifyReport { expected: 50, ok: true, problems: vec![] });
        assert!(c.verify(Some(&pa), None).ok);
        assert!(c.verify(None, Some(&pb)).ok);
    }

    #[test]
    fn catches_misaligned_outputs() {
        let c = case();
        let (oa, mut ob) = c.orders();
        ob.swap(3, 7);
        let (pa, pb) = (c.write("oa.csv", true, &oa), c.write("ob.csv", false, &ob));
        assert!(c.verify(Some(&pa), None).ok && c.verify(None, Some(&pb)).ok, "each alone is right");
        let r = c.verify(Some(&pa), Some(&pb));
        assert!(!r.ok);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(r.problems[0].starts_with("not aligned: a line 5 has key '"), "{:?}", r.problems);
    }

    #[test]
    fn catches_missing_extra_repeated_and_altered_rows() {
        let c = case();
        let (oa, _) = c.orders();
        let not_shared = (0..c.da.len() as u32).find(|i| !oa.contains(i)).unwrap();
        let mut bad = oa.clone();
        bad.pop();
        bad.push(not_shared);
        bad.push(oa[0]);
        let p = c.write("bad.csv", true, &bad);
        let r = c.verify(Some(&p), None);
        assert!(!r.ok);
        let text = r.problems.join("\n");
        assert!(
            text.contains(&format!("key '{}' is not in the intersection", c.da.key_of(not_shared as usize))),
            "{text}"
        );
        assert!(text.contains(&format!("bad.csv:52: key '{}' appears more than once", c.da.key_of(oa[0] as usize))));
        assert!(text.contains("bad.csv: 1 intersecting rows are missing"), "{text}");

        // A row whose payload was altered, and a key from the other file.
        let good = c.write("good.csv", true, &oa);
        let text = std::fs::read_to_string(&good).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[2] = format!("{},Someone Else,1,1", c.da.key_of(oa[1] as usize));
        let stranger = (0..c.db.len()).find(|&j| !c.pairs.iter().any(|p| p.1 as usize == j)).unwrap();
        lines[3] = format!("{},Zed Zed,1,1", c.db.key_of(stranger));
        std::fs::write(&good, lines.join("\n") + "\n").unwrap();
        let r = c.verify(Some(&good), None);
        let text = r.problems.join("\n");
        let key = |i: u32| c.da.key_of(i as usize);
        assert!(
            text.contains(&format!("good.csv:3: key '{}': the row differs from the input row", key(oa[1]))),
            "{text}"
        );
        assert!(text.contains(&format!("good.csv:4: key '{}' is not in input", c.db.key_of(stranger))), "{text}");
        assert!(text.contains(&format!("1 intersecting rows are missing (the first: key '{}')", key(oa[2]))), "{text}");
        assert_eq!(r.problems.len(), 3);
    }

    #[test]
    fn a_missing_output_is_a_problem_not_an_error() {
        let c = case();
        let r = c.verify(Some(&c.dir.path().join("nope.csv")), None);
        assert!(!r.ok);
        assert!(r.problems[0].starts_with("output a: "), "{:?}", r.problems);
    }
}
