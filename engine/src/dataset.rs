//! Datasets: a CSV file with a header, one or more key columns, normalization options.
//!
//! Loading keeps, per row, only its normalized key (in a [`KeyArena`]) and where the row lives in
//! the file (offset and length, 12 bytes); outputs copy the selected rows' original bytes back out
//! of the file with positioned reads. So a dataset costs O(rows) small integers plus its keys, not
//! the whole file, and output rows are byte-identical to the input rows.
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::csv_rows::{MAX_ROW_BYTES, Row, RowScanner, lines_at};
use crate::error::{Column, DataError, name_list, quoted_name};
pub use crate::keys::Normalization;
use crate::keys::{KeyArena, KeyIndex, check_key_chars, decode_key, display_key, normalize};
use crate::storage::{AtRest, DataWriter};

/// A registered dataset as stored in the node config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub name: String,
    pub file: PathBuf,
    /// Key column names; more than one makes a composite key.
    pub keys: Vec<String>,
    #[serde(default)]
    pub normalize: Normalization,
    /// Keep the first row of each duplicate key instead of failing.
    #[serde(default)]
    pub dedup: bool,
}

/// A loaded dataset: normalized keys of every kept row plus where each row lives in the file.
pub struct Dataset {
    pub spec: DatasetSpec,
    /// Column names from the header.
    pub columns: Vec<String>,
    pub keys: KeyArena,
    /// Data rows read from the file.
    pub rows_read: u64,
    /// Rows dropped as duplicates (only with `dedup`).
    pub duplicates_dropped: u64,
    /// Each dropped duplicate row's file offset and the kept row of its key (only with `dedup`),
    /// for payload joins, which carry every row of a key ([`crate::payload`]).
    repeats: Vec<(u64, u32)>,
    /// Per kept row: file offset and length (terminator included) of its bytes.
    starts: Vec<u64>,
    lens: Vec<u32>,
    /// The kept row that has no line terminator (the file's last line may lack one).
    open_row: Option<u32>,
    /// The header's bytes as in the file, terminator included.
    header: Vec<u8>,
    /// The file's line terminator (from its header line), for rows that lack one.
    terminator: &'static [u8],
    stamp: FileStamp,
    /// A Parquet file ([`crate::parquet_io`]): `starts` hold row numbers, there is no header.
    parquet: bool,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("spec", &self.spec)
            .field("columns", &self.columns)
            .field("rows", &self.len())
            .field("rows_read", &self.rows_read)
            .field("duplicates_dropped", &self.duplicates_dropped)
            .finish_non_exhaustive()
    }
}

/// Opens `path`, checking it still looks as it did when stamped.
pub(crate) fn open_unchanged(path: &Path, stamp: &FileStamp) -> Result<File, DataError> {
    let file = crate::storage::open_regular(path).map_err(|e| DataError::io(path, e))?;
    if FileStamp::of(&file, path)? != *stamp {
        return Err(changed(path));
    }
    Ok(file)
}

pub(crate) fn changed(path: &Path) -> DataError {
    DataError::file(path, "the file changed after it was loaded; load the dataset again")
}

/// What the file looked like when loaded, so outputs never copy spans from a changed file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileStamp {
    pub(crate) len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    pub(crate) fn of(file: &File, path: &Path) -> Result<Self, DataError> {
        let meta = file.metadata().map_err(|e| DataError::io(path, e))?;
        Ok(Self { len: meta.len(), modified: meta.modified().ok() })
    }
}

/// The header's column names and the positions of the key columns in it.
pub(crate) struct Header {
    pub columns: Vec<String>,
    pub key_positions: Vec<usize>,
    pub raw: Vec<u8>,
}

impl DatasetSpec {
    /// A dataset keyed on `keys`, with the default normalization (trim) and duplicates rejected.
    pub fn new(name: impl Into<String>, file: impl Into<PathBuf>, keys: &[&str]) -> DatasetSpec {
        DatasetSpec {
            name: name.into(),
            file: file.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            normalize: Normalization::default(),
            dedup: false,
        }
    }

    /// Reads only the header and checks the key columns exist (quick check for `dataset add`).
    pub fn check_header(&self) -> Result<Vec<String>, DataError> {
        if crate::parquet_io::is_parquet(&self.file) {
            let file = crate::storage::open_regular(&self.file).map_err(|e| DataError::io(&self.file, e))?;
            return Ok(crate::parquet_io::ParquetRows::open(self, file, crate::parquet_io::Columns::Keys)?.columns);
        }
        let mut scanner = RowScanner::open(&self.file)?;
        Ok(self.read_header(&mut scanner)?.columns)
    }

    /// Reads the header row and finds the key columns (names compared after trimming).
    pub(crate) fn read_header(&self, scanner: &mut RowScanner) -> Result<Header, DataError> {
        let path = &self.file;
        if self.keys.is_empty() {
            return Err(DataError::Invalid(format!("dataset '{}': no key columns given", self.name)));
        }
        let row = scanner.next_row()?.ok_or_else(|| DataError::file(path, "empty file (no header line)"))?;
        let line = row.line;
        let columns: Vec<String> =
            (0..row.len()).map(|i| String::from_utf8_lossy(row.field(i)).trim().to_string()).collect();
        let raw = row.raw.to_vec();
        let header_error =
            |column: Option<Column>, message: String| DataError::Row { path: path.clone(), line, column, message };
        if let Some((first, again)) = first_repeated_name(&columns) {
            let message = format!("the name {} is already used by column {}", quoted_name(&columns[again]), first + 1);
            return Err(header_error(Column::at(again), message));
        }
        let mut key_positions = Vec::with_capacity(self.keys.len());
        for (k, key) in self.keys.iter().enumerate() {
            let name = key.trim();
            if self.keys[..k].iter().any(|other| other.trim() == name) {
                return Err(header_error(Column::name(name), "named twice as a key column".into()));
            }
            let Some(i) = columns.iter().position(|c| c == name) else {
                let message = format!("key column not in the header (columns: {})", name_list(&columns));
                return Err(header_error(Column::name(name), message));
            };
            key_positions.push(i);
        }
        Ok(Header { columns, key_positions, raw })
    }
}

/// The first column whose name an earlier column already has, as `(earlier, repeated)`
/// positions. Columns are found by name (key and feature columns, and a model's features when
/// scoring), so a repeated name would make them ambiguous.
fn first_repeated_name(columns: &[String]) -> Option<(usize, usize)> {
    let mut seen = std::collections::HashMap::with_capacity(columns.len());
    columns.iter().enumerate().find_map(|(i, name)| seen.insert(name.as_str(), i).map(|first| (first, i)))
}

/// Appends the normalized key of `row` to `keys`, or says what is wrong with it (and appends
/// nothing).
pub(crate) fn push_key(
    spec: &DatasetSpec,
    header: &Header,
    row: &Row<'_>,
    keys: &mut KeyArena,
) -> Result<(), DataError> {
    let pushed = push_key_columns(spec, header, row, keys);
    match pushed {
        Ok(()) => keys.finish_key(),
        Err(_) => keys.discard_unfinished(),
    }
    pushed
}

fn push_key_columns(spec: &DatasetSpec, header: &Header, row: &Row<'_>, keys: &mut KeyArena) -> Result<(), DataError> {
    let error = |column: Option<&str>, message: String| DataError::Row {
        path: spec.file.clone(),
        line: row.line,
        column: column.and_then(Column::name),
        message,
    };
    let ncols = header.columns.len();
    if row.len() != ncols {
        return Err(if row.len() < ncols {
            error(
                Some(&header.columns[row.len()]),
                format!("missing: the row has {} fields, the header has {ncols}", row.len()),
            )
        } else {
            error(None, format!("the row has {} fields, the header has {ncols}", row.len()))
        });
    }
    for &c in &header.key_positions {
        let column = Some(header.columns[c].as_str());
        let value = std::str::from_utf8(row.field(c)).map_err(|e| {
            error(column, format!("key is not valid UTF-8 (bad byte at position {})", e.valid_up_to() + 1))
        })?;
        let value = normalize(value, &spec.normalize);
        if value.is_empty() {
            let what = if spec.normalize.trim { "empty key (after trimming whitespace)" } else { "empty key" };
            return Err(error(column, what.into()));
        }
        check_key_chars(&value).map_err(|m| error(column, m))?;
        keys.push_column(value.as_bytes());
    }
    Ok(())
}

impl Dataset {
    /// Reads and validates the whole file.
    pub fn load(spec: &DatasetSpec) -> Result<Dataset, DataError> {
        Ok(Self::load_indexed(spec)?.0)
    }

    /// [`Dataset::load`], also returning the key index built to find duplicates.
    pub(crate) fn load_indexed(spec: &DatasetSpec) -> Result<(Dataset, KeyIndex), DataError> {
        let path = &spec.file;
        if crate::parquet_io::is_parquet(path) {
            return Self::load_parquet(spec);
        }
        let mut scanner = RowScanner::open(path)?;
        let stamp = FileStamp::of(scanner.file(), path)?;
        let header = spec.read_header(&mut scanner)?;
        let mut keys = KeyArena::new();
        let (mut starts, mut lens) = (Vec::new(), Vec::new());
        let mut last_open = false;
        while let Some(row) = scanner.next_row()? {
            push_key(spec, &header, &row, &mut keys)?;
            starts.push(row.start);
            lens.push(row.raw.len() as u32); // at most MAX_ROW_BYTES
            last_open = !row.raw.ends_with(b"\n") && !row.raw.ends_with(b"\r");
        }
        let header = (header.columns, header.raw);
        Self::finish_load(spec, keys, starts, lens, last_open, header, stamp, false)
    }

    /// [`Dataset::load_indexed`] of a Parquet file: the keys row group by row group; a row's
    /// place is its row number.
    fn load_parquet(spec: &DatasetSpec) -> Result<(Dataset, KeyIndex), DataError> {
        let path = &spec.file;
        let file = crate::storage::open_regular(path).map_err(|e| DataError::io(path, e))?;
        let stamp = FileStamp::of(&file, path)?;
        let mut reader = crate::parquet_io::ParquetRows::open(spec, file, crate::parquet_io::Columns::Keys)?;
        let mut keys = KeyArena::new();
        let mut rows = 0u64;
        while let Some((_, batch)) = reader.next_batch(spec, &mut keys)? {
            rows += batch.num_rows() as u64;
        }
        let starts: Vec<u64> = (0..rows).collect();
        let lens = vec![0u32; starts.len()];
        let header = (reader.columns.clone(), Vec::new());
        Self::finish_load(spec, keys, starts, lens, false, header, stamp, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_load(
        spec: &DatasetSpec,
        keys: KeyArena,
        starts: Vec<u64>,
        lens: Vec<u32>,
        last_open: bool,
        (columns, raw_header): (Vec<String>, Vec<u8>),
        stamp: FileStamp,
        parquet: bool,
    ) -> Result<(Dataset, KeyIndex), DataError> {
        let path = &spec.file;
        debug_assert!(lens.iter().all(|&l| l as usize <= MAX_ROW_BYTES + 2));
        if starts.len() > u32::MAX as usize {
            return Err(DataError::file(path, "more than 2^32 - 1 rows"));
        }
        let rows_read = starts.len() as u64;
        let open_row = (last_open && !starts.is_empty()).then(|| starts.len() as u32 - 1);
        let terminator: &'static [u8] = if raw_header.ends_with(b"\r\n") { b"\r\n" } else { b"\n" };
        let mut dataset = Dataset {
            spec: spec.clone(),
            columns,
            keys,
            rows_read,
            duplicates_dropped: 0,
            repeats: Vec::new(),
            starts,
            lens,
            open_row,
            header: raw_header,
            terminator,
            stamp,
            parquet,
        };
        let index = KeyIndex::build(&dataset.keys);
        let repeats = index.repeats(&dataset.keys);
        let index = if repeats.is_empty() {
            index
        } else {
            drop(index);
            dataset.handle_duplicates(repeats)?;
            KeyIndex::build(&dataset.keys)
        };
        dataset.keys.shrink_to_fit();
        dataset.starts.shrink_to_fit();
        dataset.lens.shrink_to_fit();
        tracing::debug!(
            dataset = %spec.name,
            rows = dataset.len(),
            duplicates_dropped = dataset.duplicates_dropped,
            "dataset loaded"
        );
        Ok((dataset, index))
    }

    /// Fails on repeated keys, or with `dedup` keeps the first row of each key.
    fn handle_duplicates(&mut self, repeats: Vec<(u32, u32)>) -> Result<(), DataError> {
        if !self.spec.dedup {
            let &(first, repeat) = repeats.iter().min_by_key(|&&(_, r)| r).expect("not empty");
            let mut firsts: Vec<u32> = repeats.iter().map(|&(f, _)| f).collect();
            firsts.par_sort_unstable();
            firsts.dedup();
            let (first, repeat) = (self.starts[first as usize], self.starts[repeat as usize]);
            if self.parquet {
                let columns: Vec<String> = self.spec.keys.iter().map(|k| quoted_name(k.trim())).collect();
                let more = if firsts.len() > 1 {
                    format!(" (and {} more duplicate keys)", firsts.len() - 1)
                } else {
                    String::new()
                };
                return Err(DataError::file(
                    &self.spec.file,
                    format!(
                        "row {}: column{} {}: duplicate key, first seen on row {}{more}; pass --dedup to keep the first row of each",
                        repeat + 1,
                        if columns.len() > 1 { "s" } else { "" },
                        columns.join(", "),
                        first + 1
                    ),
                ));
            }
            let lines = lines_at(&self.spec.file, &[first, repeat])?;
            return Err(DataError::DuplicateKey {
                path: self.spec.file.clone(),
                columns: self.spec.keys.iter().map(|k| k.trim().to_string()).collect(),
                first_line: lines[0],
                line: lines[1],
                more: firsts.len() as u64 - 1,
            });
        }
        let mut dropped = vec![false; self.keys.len()];
        for &(_, r) in &repeats {
            dropped[r as usize] = true;
        }
        // Kept index of each row after the drop: rows before it minus dropped rows before it.
        let mut kept_index = Vec::with_capacity(dropped.len());
        let mut kept = 0u32;
        for &d in &dropped {
            kept_index.push(kept);
            kept += u32::from(!d);
        }
        self.repeats = repeats.iter().map(|&(f, r)| (self.starts[r as usize], kept_index[f as usize])).collect();
        self.keys.retain(|i| !dropped[i]);
        retain_kept(&mut self.starts, &dropped);
        retain_kept(&mut self.lens, &dropped);
        self.open_row = self.open_row.filter(|&r| !dropped[r as usize]).map(|_| self.starts.len() as u32 - 1);
        self.duplicates_dropped = repeats.len() as u64;
        Ok(())
    }

    /// Number of kept rows (= items in the PSI).
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Frees the keys (about 20 bytes per row) once the protocol no longer needs them; row
    /// spans stay, so outputs can still be written. Key accessors return nothing afterwards.
    pub(crate) fn release_keys(&mut self) {
        self.keys = KeyArena::new();
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The normalized key of kept row `i` as text; the columns of a composite key are joined
    /// with `,` (a display form for tests and messages; the protocol uses [`Dataset::keys`]).
    pub fn key_of(&self, i: usize) -> String {
        decode_key(self.keys.get(i)).map(String::from_utf8_lossy).collect::<Vec<_>>().join(",")
    }

    /// The key of kept row `i` as shown to the local operator (quoted); never put it in an error.
    pub fn display_key(&self, i: usize) -> String {
        display_key(self.keys.get(i))
    }

    /// The header line's bytes as in the file (terminator included, if it has one).
    pub fn header_bytes(&self) -> &[u8] {
        &self.header
    }

    /// The bytes of kept row `i` as in the file (terminator included, if it has one).
    pub fn row_bytes(&self, i: usize) -> Result<Vec<u8>, DataError> {
        let file = self.open_csv_rows()?;
        let mut buf = vec![0; self.lens[i] as usize];
        file.read_exact_at(&mut buf, self.starts[i]).map_err(|e| DataError::io(&self.spec.file, e))?;
        Ok(buf)
    }

    /// Where the kept rows and the dropped duplicates (`dedup` only: file offset and the kept
    /// row of the same key) are, owned, for a scan on rayon ([`crate::payload`]).
    pub(crate) fn row_source(&self) -> RowSource {
        // A Parquet dataset's `starts` are row numbers: the CSV reader of the payload refuses it.
        RowSource {
            path: self.spec.file.clone(),
            stamp: self.stamp.clone(),
            starts: self.starts.clone(),
            repeats: self.repeats.clone(),
        }
    }

    /// File offset and length of kept row `i`.
    pub(crate) fn row_span(&self, i: usize) -> (u64, u32) {
        (self.starts[i], self.lens[i])
    }

    /// Bytes of memory held per dataset (keys plus row spans), for reports.
    pub fn heap_bytes(&self) -> usize {
        self.keys.heap_bytes() + self.starts.capacity() * 8 + self.lens.capacity() * 4 + self.header.capacity()
    }

    /// Opens the file to read rows by their spans: a CSV (a Parquet dataset is PSI-only), checked
    /// to be the one that was loaded.
    pub(crate) fn open_csv_rows(&self) -> Result<File, DataError> {
        if self.parquet {
            return Err(crate::parquet_io::psi_only(&self.spec.file));
        }
        self.open_unchanged()
    }

    /// Opens the file, checking it is the one that was loaded.
    pub(crate) fn open_unchanged(&self) -> Result<File, DataError> {
        open_unchanged(&self.spec.file, &self.stamp)
    }

    /// The rows `order` selects, as a plan that owns what it needs (so it can move to rayon).
    /// Does no I/O.
    pub(crate) fn output_plan(&self, order: &[u32]) -> Result<OutputPlan, DataError> {
        let n = self.len();
        let rows = order
            .iter()
            .map(|&i| {
                let k = i as usize;
                if k >= n {
                    return Err(DataError::Invalid(format!("row index {i} out of range: the dataset has {n} rows")));
                }
                Ok(self.span(i))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OutputPlan {
            tagged: false,
            fill_line: Vec::new(),
            source: self.spec.file.clone(),
            stamp: self.stamp.clone(),
            header: self.header.clone(),
            terminator: self.terminator,
            rows,
            header_suffix: Vec::new(),
            suffixes: Vec::new(),
            keys: None,
            parquet: self.parquet.then(|| self.spec.clone()),
        })
    }

    /// Whether the dataset is a Parquet file.
    pub fn is_parquet(&self) -> bool {
        self.parquet
    }

    /// `plan` with only the key columns (`--output keys`): the header and each row hold the
    /// key fields, in the file's column order.
    pub(crate) fn keys_plan(&self, mut plan: OutputPlan) -> Result<OutputPlan, DataError> {
        let mut at: Vec<usize> = Vec::with_capacity(self.spec.keys.len());
        for key in &self.spec.keys {
            let name = key.trim();
            let i = self
                .columns
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| DataError::Invalid(format!("key column {} not found", quoted_name(name))))?;
            at.push(i);
        }
        at.sort_unstable();
        if !self.parquet {
            let names: Vec<&[u8]> = at.iter().map(|&c| self.columns[c].as_bytes()).collect();
            let mut header = Vec::new();
            crate::payload::write_fields(&mut header, &names);
            header.extend_from_slice(self.terminator);
            plan.header = header;
        }
        plan.keys = Some(at);
        Ok(plan)
    }

    fn span(&self, i: u32) -> Span {
        let k = i as usize;
        Span {
            start: self.starts[k],
            len: self.lens[k],
            open: self.open_row == Some(i),
            suffix: None,
            tag: None,
            fill: 0,
        }
    }

    /// The kept rows not in `matched` (indices into kept rows), in file order.
    pub(crate) fn unmatched(&self, matched: &[u32]) -> Result<Vec<u32>, DataError> {
        let n = self.len();
        let mut seen = vec![false; n];
        for &i in matched {
            *seen
                .get_mut(i as usize)
                .ok_or_else(|| DataError::Invalid(format!("row index {i} out of range: the dataset has {n} rows")))? =
                true;
        }
        Ok((0..n as u32).filter(|&i| !seen[i as usize]).collect())
    }

    /// Appends a join's sections ([`crate::join`]) to `plan`: `unmatched` (this side's rows not
    /// in the intersection, file order) for its own section, placeholder rows for the peer's.
    /// A tagged plan's rows so far are the intersection (`both`). Rows of a plan with suffixes
    /// (a payload join) get `empty_suffix` (the peer's columns, empty).
    pub(crate) fn join_plan(
        &self,
        mut plan: OutputPlan,
        join: crate::join::JoinType,
        sections: &[crate::join::Section],
        unmatched: &[u32],
        empty_suffix: &[u8],
    ) -> OutputPlan {
        use crate::join::{Section, Side};
        if join.tagged() {
            plan.tagged = true;
            for r in &mut plan.rows {
                r.tag = Some(Side::Both);
            }
        }
        let with_suffix = !plan.header_suffix.is_empty();
        let tag = |side: Side| join.tagged().then_some(side);
        for &section in sections {
            match section {
                Section::Own(side) => {
                    for &i in unmatched {
                        let mut span = Span { tag: tag(side), ..self.span(i) };
                        if with_suffix {
                            span.suffix = Some(plan.suffixes.len() as u32);
                            plan.suffixes.push(empty_suffix.to_vec());
                        }
                        plan.rows.push(span);
                    }
                }
                Section::Fill(side, mut n) => {
                    // The placeholder: every field empty (the `_side` field says which side).
                    let columns = plan.keys.as_ref().map_or(self.columns.len(), Vec::len);
                    plan.fill_line = vec![b','; columns.saturating_sub(1)];
                    plan.fill_line.extend_from_slice(empty_suffix);
                    while n > 0 {
                        let take = n.min(FILL_RUN as u64);
                        plan.rows.push(Span {
                            start: 0,
                            len: 0,
                            open: false,
                            suffix: None,
                            tag: tag(side),
                            fill: take as u32,
                        });
                        n -= take;
                    }
                }
            }
        }
        plan
    }

    /// Writes the header and the given rows (indices into kept rows), in that order, to `out`
    /// atomically (temp file in the same directory, then rename). Returns rows written.
    pub fn write_rows(&self, order: &[u32], out: &Path, at_rest: &AtRest) -> Result<u64, DataError> {
        self.output_plan(order)?.write(out, at_rest)
    }
}

/// A dataset's row places, owned ([`Dataset::row_source`]).
pub(crate) struct RowSource {
    pub(crate) path: PathBuf,
    stamp: FileStamp,
    pub(crate) starts: Vec<u64>,
    pub(crate) repeats: Vec<(u64, u32)>,
}

impl RowSource {
    /// Fails if the file is no longer the one loaded.
    pub(crate) fn check_unchanged(&self) -> Result<(), DataError> {
        open_unchanged(&self.path, &self.stamp).map(drop)
    }

    pub(crate) fn changed(&self) -> DataError {
        changed(&self.path)
    }
}

fn retain_kept<T>(items: &mut Vec<T>, dropped: &[bool]) {
    let mut dropped = dropped.iter();
    items.retain(|_| !dropped.next().expect("one flag per item"));
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    len: u32,
    /// The row has no terminator (the file's last line); one is added on output.
    open: bool,
    /// Bytes appended to the row before its terminator: an index into the plan's suffixes.
    suffix: Option<u32>,
    /// The row's `_side` field, in a tagged output (join types, [`crate::join`]).
    tag: Option<crate::join::Side>,
    /// Not a row of the source but this many placeholder rows (the tag, then empty fields).
    fill: u32,
}

/// Most placeholder rows one span stands for (a read chunk of spans stays small).
const FILL_RUN: u32 = 64;

/// Rows to copy from a dataset's file to an output, in output order.
pub(crate) struct OutputPlan {
    source: PathBuf,
    stamp: FileStamp,
    header: Vec<u8>,
    terminator: &'static [u8],
    rows: Vec<Span>,
    /// Appended to the header, before its terminator (payload joins: the peer's columns).
    header_suffix: Vec<u8>,
    /// Appended to rows, before their terminator (payload joins: the peer's values).
    suffixes: Vec<Vec<u8>>,
    /// The header starts with `_side` and each row with its tag ([`crate::join`]).
    tagged: bool,
    /// A placeholder row after its tag, without terminator.
    fill_line: Vec<u8>,
    /// `--output keys`: the positions of the key columns, the only fields written.
    keys: Option<Vec<usize>>,
    /// The source is this Parquet dataset: the output is Parquet ([`crate::parquet_io`]).
    parquet: Option<DatasetSpec>,
}

/// Rows read per batch; reading one batch overlaps writing the previous one.
const WRITE_BATCH: usize = 1 << 16;
/// Rows per rayon task within a batch.
const READ_CHUNK: usize = 2048;

impl OutputPlan {
    /// The plan with `suffixes[i]` appended to row `i` and `header_suffix` to the header (each
    /// before the line's terminator).
    pub(crate) fn with_suffixes(mut self, header_suffix: Vec<u8>, suffixes: Vec<Vec<u8>>) -> OutputPlan {
        assert_eq!(suffixes.len(), self.rows.len(), "one suffix per row");
        for (i, r) in self.rows.iter_mut().enumerate() {
            r.suffix = Some(i as u32);
        }
        self.header_suffix = header_suffix;
        self.suffixes = suffixes;
        self
    }

    /// Copies the rows to `out` through a temp file in the same directory, renamed into place
    /// only when complete: on any error no output file exists.
    pub(crate) fn write(&self, out: &Path, at_rest: &AtRest) -> Result<u64, DataError> {
        self.write_observed(out, at_rest, || {})
    }

    /// [`OutputPlan::write`], calling `mapped` once the source is mapped, before any row is
    /// copied (tests change the source there).
    fn write_observed(&self, out: &Path, at_rest: &AtRest, mapped: impl FnOnce()) -> Result<u64, DataError> {
        if let Some(spec) = &self.parquet {
            return self.write_parquet(spec, out, at_rest);
        }
        let file = open_unchanged(&self.source, &self.stamp)?;
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let snapshot = self.snapshot(&file, dir)?;
        // SAFETY: the map is only read, and it maps our private, unlinked copy of the source,
        // which no other process can truncate (that would fault: SIGBUS). The copy matched the
        // stamp; bytes rewritten in place before it are caught by the row-terminator check
        // below. One copy per row instead of one `pread` per row: 5 million rows take well
        // under a second instead of tens of seconds.
        let map = unsafe { memmap2::Mmap::map(&snapshot) }.map_err(|e| DataError::io(dir, e))?;
        if map.len() as u64 != self.stamp.len {
            return Err(changed(&self.source));
        }
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        let source: &[u8] = &map;
        mapped();
        let io_err = |e| DataError::io(out, e);
        // Sealed or plain, through a temp file that only `finish` renames into place.
        let mut w = DataWriter::create(out, at_rest).map_err(|e| DataError::io(dir, e))?;
        if self.tagged {
            w.write_all(crate::join::SIDE_HEADER).map_err(io_err)?;
        }
        if self.header_suffix.is_empty() {
            w.write_all(&self.header).map_err(io_err)?;
            if !self.header.ends_with(b"\n") && !self.header.ends_with(b"\r") {
                w.write_all(self.terminator).map_err(io_err)?;
            }
        } else {
            let line = crate::csv_rows::strip_terminator(&self.header);
            let end = &self.header[line.len()..];
            w.write_all(line).map_err(io_err)?;
            w.write_all(&self.header_suffix).map_err(io_err)?;
            w.write_all(if end.is_empty() { self.terminator } else { end }).map_err(io_err)?;
        }
        let mut pending: Vec<Vec<u8>> = Vec::new();
        for batch in self.rows.chunks(WRITE_BATCH) {
            let (read, written) = rayon::join(
                || batch.par_chunks(READ_CHUNK).map(|c| self.read_rows(source, c)).collect::<Result<Vec<_>, _>>(),
                || pending.iter().try_for_each(|b| w.write_all(b)),
            );
            written.map_err(io_err)?;
            pending = read?;
        }
        pending.iter().try_for_each(|b| w.write_all(b)).map_err(io_err)?;
        // The rename may not survive a crash if the directory fsync fails: then no output is left.
        w.finish().map_err(io_err)?;
        let rows = self.row_count();
        tracing::debug!(rows, output = %out.display(), "rows written");
        Ok(rows)
    }

    /// Rows the plan writes (placeholders included).
    pub(crate) fn row_count(&self) -> u64 {
        self.rows.iter().map(|r| if r.fill > 0 { r.fill as u64 } else { 1 }).sum()
    }

    /// A private copy of the source as it was loaded: an unlinked temp file in `dir` (next to
    /// the output), so the map the rows are copied from cannot shrink under us. Mapping the
    /// source itself let any process that truncated it kill the node with SIGBUS. Costs one
    /// sequential in-kernel copy (`copy_file_range`; a reflink where the filesystem has them)
    /// and, while the output is written, disk space for the source. A source that changes
    /// during the copy gives an error.
    fn snapshot(&self, file: &File, dir: &Path) -> Result<File, DataError> {
        let mut copy = tempfile::tempfile_in(dir).map_err(|e| DataError::io(dir, e))?;
        let copied = std::io::copy(&mut file.take(self.stamp.len + 1), &mut copy).map_err(|e| DataError::io(dir, e))?;
        if copied != self.stamp.len || FileStamp::of(file, &self.source)? != self.stamp {
            return Err(changed(&self.source));
        }
        Ok(copy)
    }

    /// [`OutputPlan::write`] of a Parquet source: one pass converts its rows (or key columns)
    /// into a private row store next to the output, then the plan's rows are decoded from it in
    /// order and written as Parquet.
    fn write_parquet(&self, spec: &DatasetSpec, out: &Path, at_rest: &AtRest) -> Result<u64, DataError> {
        use crate::parquet_io::{Columns, ParquetOut, ParquetRows, converter, store_batch};
        if !self.suffixes.is_empty() || !self.header_suffix.is_empty() {
            return Err(DataError::file(&self.source, "payload joins read CSV datasets only"));
        }
        let dir = crate::storage::parent_dir(out);
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let file = open_unchanged(&self.source, &self.stamp)?;
        let columns = if self.keys.is_some() { Columns::Keys } else { Columns::All };
        let mut reader = ParquetRows::open(spec, file, columns)?;
        let schema = reader.batch_schema.clone();
        let conv = converter(&self.source, &schema)?;
        let store = tempfile::tempfile_in(dir).map_err(|e| DataError::io(dir, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, store);
        let mut places: Vec<(u64, u32)> = Vec::new();
        let mut offset = 0u64;
        let mut keys = KeyArena::new();
        while let Some((_, batch)) = reader.next_batch(spec, &mut keys)? {
            keys = KeyArena::new();
            offset = store_batch(&conv, &batch, &mut w, offset, |at, len| places.push((at, len)))
                .map_err(|e| DataError::io(dir, e))?;
        }
        let store = w.into_inner().map_err(|e| DataError::io(dir, e.into_error()))?;
        // SAFETY: read only; our private, unlinked row store.
        let map = unsafe { memmap2::Mmap::map(&store) }.map_err(|e| DataError::io(dir, e))?;
        let mut writer = ParquetOut::create(out, at_rest, &schema, self.tagged)?;
        let mut run: Vec<(u64, u32)> = Vec::new();
        let mut run_tag = None;
        for r in &self.rows {
            if r.fill > 0 || r.tag != run_tag || run.len() == crate::parquet_io::BATCH_ROWS {
                writer.write_rows(&map, &run, run_tag)?;
                run.clear();
                run_tag = r.tag;
            }
            if r.fill > 0 {
                writer.write_fill(r.fill as u64, r.tag.unwrap_or(crate::join::Side::Both))?;
                continue;
            }
            let place = places.get(r.start as usize).ok_or_else(|| changed(&self.source))?;
            run.push(*place);
        }
        writer.write_rows(&map, &run, run_tag)?;
        writer.finish().map_err(|e| DataError::io(out, e))?;
        Ok(self.row_count())
    }

    /// [`OutputPlan::read_rows`] for `--output keys` on CSV: each row's key fields re-encoded.
    fn read_key_rows(&self, source: &[u8], rows: &[Span], at: &[usize]) -> Result<Vec<u8>, DataError> {
        let mut buf = Vec::new();
        for r in rows {
            let tag = r.tag.map_or(&[][..], |t| t.tag());
            if r.fill > 0 {
                for _ in 0..r.fill {
                    buf.extend_from_slice(tag);
                    buf.extend_from_slice(&self.fill_line);
                    buf.extend_from_slice(self.terminator);
                }
                continue;
            }
            let len = r.len as usize;
            let raw = usize::try_from(r.start)
                .ok()
                .and_then(|s| source.get(s..s + len))
                .ok_or_else(|| changed(&self.source))?;
            let fields = crate::csv_rows::fields_of(raw);
            let values = at
                .iter()
                .map(|&c| fields.get(c).map(Vec::as_slice))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| changed(&self.source))?;
            buf.extend_from_slice(tag);
            crate::payload::write_fields(&mut buf, &values);
            buf.extend_from_slice(self.terminator);
        }
        Ok(buf)
    }

    /// Reads `rows` from the source file into one buffer, in order.
    fn read_rows(&self, source: &[u8], rows: &[Span]) -> Result<Vec<u8>, DataError> {
        if let Some(at) = &self.keys {
            return self.read_key_rows(source, rows, at);
        }
        let suffix = |r: &Span| r.suffix.map_or(&[][..], |i| &self.suffixes[i as usize][..]);
        let tag = |r: &Span| r.tag.map_or(&[][..], |t| t.tag());
        let total: usize = rows
            .iter()
            .map(|r| match r.fill {
                0 => tag(r).len() + r.len as usize + suffix(r).len() + if r.open { self.terminator.len() } else { 0 },
                n => n as usize * (tag(r).len() + self.fill_line.len() + self.terminator.len()),
            })
            .sum();
        let mut buf = vec![0u8; total];
        let mut at = 0;
        for r in rows {
            if r.fill > 0 {
                for _ in 0..r.fill {
                    for part in [tag(r), &self.fill_line, self.terminator] {
                        buf[at..at + part.len()].copy_from_slice(part);
                        at += part.len();
                    }
                }
                continue;
            }
            let t = tag(r);
            buf[at..at + t.len()].copy_from_slice(t);
            at += t.len();
            let len = r.len as usize;
            let dst = &mut buf[at..at + len];
            let from = usize::try_from(r.start).ok().and_then(|s| source.get(s..s + len));
            dst.copy_from_slice(from.ok_or_else(|| changed(&self.source))?);
            // A cheap check that the span still holds a whole row.
            if !r.open && !matches!(dst.last(), Some(b'\n' | b'\r')) {
                return Err(changed(&self.source));
            }
            at += len;
            let extra = suffix(r);
            if !extra.is_empty() {
                // Before the row's own terminator (moved after the suffix).
                let line = crate::csv_rows::strip_terminator(&buf[at - len..at]).len();
                let end = len - line;
                buf.copy_within(at - end..at, at - end + extra.len());
                buf[at - end..at - end + extra.len()].copy_from_slice(extra);
                at += extra.len();
            }
            if r.open {
                buf[at..at + self.terminator.len()].copy_from_slice(self.terminator);
                at += self.terminator.len();
            }
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Self { dir: tempfile::tempdir().unwrap() }
        }
        fn file(&self, name: &str, content: &[u8]) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        }
        fn spec(&self, name: &str, content: &[u8], keys: &[&str]) -> DatasetSpec {
            DatasetSpec {
                name: "t".into(),
                file: self.file(name, content),
                keys: keys.iter().map(|k| k.to_string()).collect(),
                normalize: Normalization::default(),
                dedup: false,
            }
        }
        fn load_err(&self, name: &str, content: &[u8], keys: &[&str]) -> String {
            match Dataset::load(&self.spec(name, content, keys)) {
                Ok(_) => panic!("{name} loaded"),
                Err(e) => e.to_string().replace(&format!("{}/", self.dir.path().display()), ""),
            }
        }
    }

    #[test]
    fn loads_keys_normalized() {
        let f = Fixture::new();
        let mut spec = f.spec("a.csv", b"id,name\n 1555 ,Ann\n\t1666,Bob\n", &["id"]);
        let ds = Dataset::load(&spec).unwrap();
        assert_eq!(ds.columns, vec!["id", "name"]);
        assert_eq!((ds.len(), ds.rows_read, ds.duplicates_dropped), (2, 2, 0));
        assert_eq!(ds.key_of(0), "1555");
        assert_eq!(ds.key_of(1), "1666");
        assert_eq!(ds.keys.get(0), b"\x041555");

        spec.file = f.file("c.csv", b"email, Last ,first\nA@X.org,Lee,Ann\na@x.org , lee,ann\n");
        spec.keys = vec!["email".into(), "last".into()];
        assert!(Dataset::load(&spec).unwrap_err().to_string().contains("column 'last': key column not in the header"));
        spec.keys = vec!["email".into(), "Last".into()];
        spec.normalize.case_fold = true;
        let err = Dataset::load(&spec).unwrap_err().to_string();
        assert!(err.contains("c.csv:3: columns 'email', 'Last': duplicate key, first seen on line 2"), "{err}");
        spec.normalize.case_fold = false;
        let ds = Dataset::load(&spec).unwrap();
        assert_eq!(ds.key_of(0), "A@X.org,Lee");
        assert_eq!(ds.display_key(1), "('a@x.org', 'lee')");
    }

    #[test]
    fn missing_key_column_lists_the_columns() {
        let f = Fixture::new();
        let err = f.load_err("a.csv", b"id,name,age\n1,a,3\n", &["phone"]);
        assert_eq!(err, "a.csv:1: column 'phone': key column not in the header (columns: 'id', 'name', 'age')");
        let spec = f.spec("b.csv", b"id,name,age\n1,a,3\n", &["phone"]);
        assert!(spec.check_header().is_err());
        let spec = f.spec("b.csv", b"id,name,age\n1,a,3\n", &["name"]);
        assert_eq!(spec.check_header().unwrap(), vec!["id", "name", "age"]);
        let err = f.load_err("e.csv", b"", &["id"]);
        assert_eq!(err, "e.csv: empty file (no header line)");
        let err = f.load_err("d.csv", b"id,x,id\n", &["id"]);
        assert_eq!(err, "d.csv:1: column 3: the name 'id' is already used by column 1");
    }

    #[test]
    fn duplicate_header_names_are_refused() {
        // Training reads features by position and scoring by name: two columns named alike
        // made them disagree.
        let f = Fixture::new();
        let err = f.load_err("a.csv", b"id,x,y,x\n1,2,3,4\n", &["id"]);
        assert_eq!(err, "a.csv:1: column 4: the name 'x' is already used by column 2");
        // Names are compared after trimming, as key and feature names are looked up.
        let err = f.load_err("b.csv", b"id,x,\" x \"\r\n1,2,3\r\n", &["id"]);
        assert_eq!(err, "b.csv:1: column 3: the name 'x' is already used by column 2");
        let err = f.load_err("c.csv", b"id,,\n1,2,3\n", &["id"]);
        assert_eq!(err, "c.csv:1: column 3: the name '' is already used by column 2");
        assert!(f.spec("d.csv", b"id,v,v\n", &["id"]).check_header().is_err(), "dataset add refuses it too");
        // A long name is shown shortened.
        let long = "n".repeat(100);
        let err = f.load_err("e.csv", format!("id,{long},{long}\n").as_bytes(), &["id"]);
        assert_eq!(err, format!("e.csv:1: column 3: the name '{}…' is already used by column 2", &long[..64]));
    }

    #[test]
    fn control_characters_in_keys_are_refused() {
        let f = Fixture::new();
        let err = f.load_err("a.csv", b"id,v\n1,a\n2\x003,b\n", &["id"]);
        assert_eq!(err, "a.csv:3: column 'id': the key contains a control character (U+0000)");
        let err = f.load_err("b.csv", b"v,id\r\na,1\r\nb,\"4\r\n5\"\r\n", &["id"]);
        assert_eq!(err, "b.csv:3: column 'id': the key contains a control character (U+000D)");
        let err = f.load_err("c.csv", b"id\n\x1b[0m\n", &["id"]);
        assert_eq!(err, "c.csv:2: column 'id': the key contains a control character (U+001B)");
        let err = f.load_err("d.csv", "id\n7\u{7f}\n8\u{85}9\n".as_bytes(), &["id"]);
        assert_eq!(err, "d.csv:2: column 'id': the key contains a control character (U+007F)");
        // Tabs are allowed inside a key; around it (like a CR) trimming removes them first.
        let ds = Dataset::load(&f.spec("e.csv", b"id,v\r\n4\t5,a\r\n\"\t6\r\",b\r\n", &["id"])).unwrap();
        assert_eq!((ds.key_of(0), ds.key_of(1)), ("4\t5".into(), "6".into()));
        let mut spec = f.spec("g.csv", b"id\n\"6\r\"\n", &["id"]);
        spec.normalize.trim = false;
        let err = Dataset::load(&spec).unwrap_err().to_string();
        assert!(err.ends_with("g.csv:2: column 'id': the key contains a control character (U+000D)"), "{err}");
        // Other columns may hold anything.
        assert_eq!(Dataset::load(&f.spec("h.csv", b"id,v\n1,\x00\x01\n", &["id"])).unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_file_not_its_directory() {
        let f = Fixture::new();
        let spec = f.spec("a.csv", b"id,v\n1,a\n1,b\n", &["id"]);
        let err = Dataset::load(&spec).unwrap_err().to_string();
        assert!(err.starts_with("a.csv:3: column 'id': duplicate key"), "{err}");
        let err = Dataset::load(&DatasetSpec::new("t", f.dir.path().join("none.csv"), &["id"])).unwrap_err();
        assert!(err.to_string().starts_with("none.csv: "), "{err}");
    }

    #[test]
    fn a_fifo_or_directory_is_refused_at_once_naming_the_file() {
        let f = Fixture::new();
        let fifo = f.dir.path().join("fifo.csv");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for file in [fifo, f.dir.path().to_path_buf()] {
            let spec = DatasetSpec::new("t", &file, &["id"]);
            let (tx, rx) = std::sync::mpsc::channel();
            // A blocked open would hang this thread, not the test: the timeout below fails it.
            std::thread::spawn(move || {
                let errors = [spec.check_header().map(drop), Dataset::load(&spec).map(drop)];
                tx.send(errors.map(|r| r.unwrap_err().to_string()))
            });
            // Named by the file's name (errors never show its directory).
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            for error in rx.recv_timeout(std::time::Duration::from_secs(5)).expect("refused promptly") {
                assert!(error.starts_with(&format!("{name}: ")), "{error}");
                assert!(error.contains("a directory") || error.contains("not a regular file"), "{error}");
            }
        }
    }

    #[test]
    fn empty_key_names_line_and_column() {
        let f = Fixture::new();
        let err = f.load_err("a.csv", b"name,id\nx,1\ny,  \n", &["id"]);
        assert_eq!(err, "a.csv:3: column 'id': empty key (after trimming whitespace)");
        let err = f.load_err("b.csv", b"name,id\r\nx,1\r\n\r\n\"multi\nline\",\"\"\r\n", &["id"]);
        assert_eq!(err, "b.csv:4: column 'id': empty key (after trimming whitespace)");
    }

    #[test]
    fn wrong_field_count_names_line_and_column() {
        let f = Fixture::new();
        let err = f.load_err("a.csv", b"id,name,age\n1,a,3\n2,b\n", &["id"]);
        assert_eq!(err, "a.csv:3: column 'age': missing: the row has 2 fields, the header has 3");
        let err = f.load_err("b.csv", b"id,name\n1,a\n2,b,c\n", &["id"]);
        assert_eq!(err, "b.csv:3: the row has 3 fields, the header has 2");
    }

    #[test]
    fn non_utf8_key_is_an_error_but_other_columns_may_be_anything() {
        let f = Fixture::new();
        let err = f.load_err("a.csv", b"id,name\n1,a\nx\xffy,b\n", &["id"]);
        assert_eq!(err, "a.csv:3: column 'id': key is not valid UTF-8 (bad byte at position 2)");
        let ds = Dataset::load(&f.spec("b.csv", b"id,name\n1,\xff\xfe\n", &["id"])).unwrap();
        assert_eq!(ds.row_bytes(0).unwrap(), b"1,\xff\xfe\n");
    }

    #[test]
    fn duplicates_fail_naming_the_first_or_are_dropped_with_dedup() {
        let f = Fixture::new();
        let mut content = String::from("id,v\n");
        for (i, k) in ["1", "15551234567", "2", "3", "4", "5", "6", "7", "8", "9"].iter().enumerate() {
            content += &format!("{k},{i}\n");
        }
        // Line 12 is the first repeat (of line 11); four other keys repeat later, one twice.
        for k in ["9", "15551234567", "2", "4", "4", "5"] {
            content += &format!("{k},dup\n");
        }
        let err = f.load_err("b.csv", content.as_bytes(), &["id"]);
        assert_eq!(
            err,
            "b.csv:12: column 'id': duplicate key, first seen on line 11 (and 4 more duplicate keys); \
             pass --dedup to keep the first row of each"
        );
        let mut spec = f.spec("b.csv", content.as_bytes(), &["id"]);
        spec.dedup = true;
        let ds = Dataset::load(&spec).unwrap();
        assert_eq!((ds.len(), ds.rows_read, ds.duplicates_dropped), (10, 16, 6));
        assert_eq!(ds.row_bytes(1).unwrap(), b"15551234567,1\n");
        assert_eq!(ds.row_bytes(9).unwrap(), b"9,9\n");

        let err = f.load_err("c.csv", b"id\n15551234567\n1\n15551234567\n", &["id"]);
        // The key itself is data: it is never part of the message.
        assert_eq!(
            err,
            "c.csv:4: column 'id': duplicate key, first seen on line 2; pass --dedup to keep the first row of each"
        );
    }

    #[test]
    fn dedup_keeps_an_unterminated_last_row_consistent() {
        let f = Fixture::new();
        let mut spec = f.spec("a.csv", b"id,v\r\n1,a\r\n2,b\r\n1,c", &["id"]);
        spec.dedup = true;
        let ds = Dataset::load(&spec).unwrap();
        assert_eq!(ds.len(), 2);
        let out = f.dir.path().join("o.csv");
        ds.write_rows(&[1, 0], &out, &AtRest::Plain).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"id,v\r\n2,b\r\n1,a\r\n");
        spec.file = f.file("b.csv", b"id,v\r\n1,a\r\n2,b\r\n3,c");
        let ds = Dataset::load(&spec).unwrap();
        ds.write_rows(&[2, 0], &out, &AtRest::Plain).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"id,v\r\n3,c\r\n1,a\r\n");
    }

    #[test]
    fn write_rows_copies_raw_rows_in_order() {
        let f = Fixture::new();
        let content: &[u8] =
            b"id,note\r\n1,\"multi\r\nline, \"\"quoted\"\"\"\r\n\r\n2,plain\r\n3,\"x\ny\"\n4,last no newline";
        let ds = Dataset::load(&f.spec("a.csv", content, &["id"])).unwrap();
        assert_eq!(ds.len(), 4);
        let out = f.dir.path().join("sub/dir/out.csv");
        assert_eq!(ds.write_rows(&[3, 0, 2, 1], &out, &AtRest::Plain).unwrap(), 4);
        let written = std::fs::read(&out).unwrap();
        assert_eq!(
            written,
            b"id,note\r\n4,last no newline\r\n1,\"multi\r\nline, \"\"quoted\"\"\"\r\n3,\"x\ny\"\n2,plain\r\n"
                .as_slice()
        );
        // The output parses to the same records as the input (checked with the `csv` crate).
        let records = |bytes: &[u8]| -> Vec<csv::ByteRecord> {
            let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes);
            r.byte_records().map(Result::unwrap).collect()
        };
        let (input, output) = (records(content), records(&written));
        assert_eq!(output[0], input[0]);
        assert_eq!(output[1..], [input[4].clone(), input[1].clone(), input[3].clone(), input[2].clone()]);

        // Header only, no newline.
        let ds = Dataset::load(&f.spec("h.csv", b"id,v", &["id"])).unwrap();
        assert!(ds.is_empty());
        ds.write_rows(&[], &out, &AtRest::Plain).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"id,v\n");
        // Output file is readable only by its owner (it holds rows of the intersection).
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o077, 0);
    }

    #[test]
    fn write_rows_leaves_nothing_on_error() {
        let f = Fixture::new();
        let spec = f.spec("a.csv", b"id\n1\n2\n", &["id"]);
        let ds = Dataset::load(&spec).unwrap();
        let out_dir = f.dir.path().join("out");
        let out = out_dir.join("o.csv");
        let err = ds.write_rows(&[0, 5], &out, &AtRest::Plain).unwrap_err();
        assert_eq!(err.to_string(), "row index 5 out of range: the dataset has 2 rows");
        assert!(!out.exists());
        // The input changed after loading: refuse rather than copy garbage.
        std::fs::create_dir_all(&out_dir).unwrap();
        std::fs::write(&spec.file, b"id\n1\n2\n3\n").unwrap();
        let err = ds.write_rows(&[0, 1], &out, &AtRest::Plain).unwrap_err();
        assert!(err.to_string().ends_with("the file changed after it was loaded; load the dataset again"), "{err}");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "no output and no temp file");
        // An output path that cannot be created (its parent is a file).
        let ds = Dataset::load(&spec).unwrap();
        let err = ds.write_rows(&[0], &spec.file.join("o.csv"), &AtRest::Plain).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
    }

    #[test]
    fn a_source_truncated_during_output_cannot_crash_the_node() {
        // The source was memory-mapped: truncating it mid-copy killed the node with SIGBUS.
        let f = Fixture::new();
        let mut content = String::from("id,v\n");
        for i in 0..50_000 {
            content += &format!("{i},{}\n", "x".repeat(40));
        }
        let spec = f.spec("a.csv", content.as_bytes(), &["id"]);
        let ds = Dataset::load(&spec).unwrap();
        let order: Vec<u32> = (0..ds.len() as u32).rev().collect();
        let out = f.dir.path().join("o.csv");
        let truncate = || File::options().write(true).open(&spec.file).unwrap().set_len(0).unwrap();
        let written = ds.output_plan(&order).unwrap().write_observed(&out, &AtRest::Plain, truncate).unwrap();
        assert_eq!(written, ds.len() as u64);
        // The output holds the rows as loaded, and there is nothing else in the directory.
        let mut expected = b"id,v\n".to_vec();
        for i in (0..50_000).rev() {
            expected.extend_from_slice(format!("{i},{}\n", "x".repeat(40)).as_bytes());
        }
        assert!(std::fs::read(&out).unwrap() == expected);
        assert_eq!(std::fs::read_dir(f.dir.path()).unwrap().count(), 2, "input and output only");
        // The next output sees the change.
        let err = ds.write_rows(&[0], &out, &AtRest::Plain).unwrap_err();
        assert!(err.to_string().ends_with("the file changed after it was loaded; load the dataset again"), "{err}");
    }

    #[test]
    fn write_failure_midway_removes_the_temp_file() {
        let f = Fixture::new();
        let mut content = String::from("id,v\n");
        for i in 0..200_000 {
            content += &format!("{i},{}\n", "x".repeat(20));
        }
        let spec = f.spec("a.csv", content.as_bytes(), &["id"]);
        let ds = Dataset::load(&spec).unwrap();
        let order: Vec<u32> = (0..ds.len() as u32).rev().collect();
        // After a few batches are written, a row past the end of the file cannot be read.
        let mut plan = ds.output_plan(&order).unwrap();
        let end = content.len() as u64;
        plan.rows.push(Span { start: end, len: 10, open: false, suffix: None, tag: None, fill: 0 });
        let out_dir = f.dir.path().join("out");
        let err = plan.write(&out_dir.join("o.csv"), &AtRest::Plain).unwrap_err();
        assert!(err.to_string().contains("the file changed after it was loaded"), "{err}");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
    }
}
