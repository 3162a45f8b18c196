//! Parquet datasets: reading keys by row group, the row store outputs are copied from, and
//! writing outputs as Parquet.
//!
//! **Format.** A dataset file is Parquet when its name ends in `.parquet`, `.parq` or `.pq`
//! (any case) or when it starts with the Parquet magic `PAR1`; anything else is CSV. Parquet is
//! local input only: nothing a peer sends is ever parsed as Parquet.
//!
//! **Columns and keys.** The columns are the schema's top-level fields; key columns are found
//! by name as in a CSV header (compared after trimming; a repeated name is an error). A key
//! column holds strings (`Utf8`, `LargeUtf8`, `Utf8View`) or integers (8 to 64 bits, signed or
//! unsigned), or a dictionary of either (keyed by its values). An integer's key bytes are its decimal text without sign for non-negative values
//! and without leading zeros (`42`, `-7`), so the Parquet int 42 and the CSV field `42` are the
//! same key; a CSV `042` or `+42` is not. Keys are then normalized as CSV keys are (trim, case
//! fold, the control-character check). A null in a key column is an error naming the column and
//! the row (1-based over the whole file, with its row group and its row inside it), never the
//! value; so is any other bad key.
//!
//! **Reading.** Row groups are read one after another in batches of [`BATCH_ROWS`] rows, only
//! the key columns for validation and hashing (all columns where rows are copied out), so memory
//! is bounded by one batch (and the reader's pages of one row group), whatever the file's size.
//!
//! **Outputs.** Rows are located by their row number (row group and row within it). A Parquet
//! file cannot give back one row cheaply, and outputs take rows in the joint order, which is
//! random over the file; so the side that writes an output converts its rows once, in the same
//! pass that hashes them, into a private *row store*: an unlinked temp file of Arrow row-format
//! records (`arrow-row`), each `len u32 LE ‖ row`, of every column (or only the key columns
//! with `--output keys`). Its places (offset, length, row number) are exactly what a CSV row's
//! span is, so the streaming path keeps them in its spill unchanged, and the output writer
//! decodes each bucket's rows from the mapped store into Arrow arrays and writes them with the
//! Parquet writer (Snappy), through the same temp file + rename as CSV outputs. The output's
//! schema is the input's (or its key columns), with a first string column `_side` for the
//! join types that tag rows; tagged outputs make every column nullable (placeholder rows are
//! nulls). A dictionary column comes out as its value type (the row format decodes it).
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::dataset::DatasetSpec;
use crate::error::{DataError, name_list, quoted_name};
use crate::keys::{KeyArena, check_key_chars, normalize};
use crate::storage::{AtRest, DataWriter};

/// The Parquet magic, at the start and the end of every Parquet file.
pub const MAGIC: &[u8; 4] = b"PAR1";
/// Rows per batch read.
pub(crate) const BATCH_ROWS: usize = 1 << 16;
/// Bytes before each record of a row store (its length).
pub(crate) const STORE_PREFIX: u64 = 4;

/// Whether `path` is read as Parquet (by its extension, else by its first four bytes). A file
/// that cannot be opened is not (the CSV reader then says why).
pub fn is_parquet(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    if matches!(ext.as_deref(), Some("parquet" | "parq" | "pq")) {
        return true;
    }
    let mut head = [0u8; 4];
    crate::storage::open_regular(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == MAGIC
}

/// The error for a non-PSI use of a Parquet dataset.
pub(crate) fn psi_only(path: &Path) -> DataError {
    DataError::file(path, "a Parquet dataset: only PSI jobs read Parquet (convert it to CSV for this job)")
}

fn bad_file(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::file(path, format!("not a readable Parquet file ({e})"))
}

/// Which columns a reader returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Columns {
    /// The key columns only (validation, hashing, `--output keys`).
    Keys,
    /// Every column (rows copied to an output).
    All,
}

/// A Parquet dataset read batch by batch, with each row's key.
pub(crate) struct ParquetRows {
    path: PathBuf,
    /// Top-level column names.
    pub(crate) columns: Vec<String>,
    /// The schema of the batches returned (the projected columns).
    pub(crate) batch_schema: SchemaRef,
    reader: ParquetRecordBatchReader,
    /// Per key column (in the spec's order): its index in the batches and its name.
    keys: Vec<(usize, String)>,
    /// First row number of each row group, and the total at the end.
    group_starts: Vec<u64>,
    /// Rows in the file (from its footer).
    pub(crate) rows: u64,
    next_row: u64,
}

impl ParquetRows {
    /// Opens `file` (already opened as `spec.file`), reads the footer and finds the key columns.
    pub(crate) fn open(spec: &DatasetSpec, file: File, columns: Columns) -> Result<ParquetRows, DataError> {
        let path = &spec.file;
        if spec.keys.is_empty() {
            return Err(DataError::Invalid(format!("dataset '{}': no key columns given", spec.name)));
        }
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad_file(path, e))?;
        let schema = builder.schema().clone();
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().trim().to_string()).collect();
        let mut seen = std::collections::HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if let Some(first) = seen.insert(n.as_str(), i) {
                return Err(DataError::file(
                    path,
                    format!("column {}: the name {} is already used by column {}", i + 1, quoted_name(n), first + 1),
                ));
            }
        }
        let mut positions = Vec::with_capacity(spec.keys.len());
        for (k, key) in spec.keys.iter().enumerate() {
            let name = key.trim();
            let column = quoted_name(name);
            if spec.keys[..k].iter().any(|other| other.trim() == name) {
                return Err(DataError::file(path, format!("column {column}: named twice as a key column")));
            }
            let Some(i) = names.iter().position(|c| c == name) else {
                let message = format!("column {column}: key column not in the schema (columns: {})", name_list(&names));
                return Err(DataError::file(path, message));
            };
            let ty = schema.field(i).data_type();
            if !key_type(ty) {
                return Err(DataError::file(
                    path,
                    format!("column {column}: a key column holds strings or integers, not {ty}"),
                ));
            }
            positions.push(i);
        }
        let mut group_starts = vec![0u64];
        for g in builder.metadata().row_groups() {
            let last = *group_starts.last().expect("one");
            group_starts.push(last + g.num_rows().max(0) as u64);
        }
        let rows = *group_starts.last().expect("one");
        let mut projected: Vec<usize> = match columns {
            Columns::Keys => positions.clone(),
            Columns::All => (0..names.len()).collect(),
        };
        projected.sort_unstable();
        let keys =
            positions.iter().map(|p| (projected.binary_search(p).expect("projected"), names[*p].clone())).collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), projected.iter().copied());
        let batch_schema = Arc::new(schema.project(&projected).map_err(|e| bad_file(path, e))?);
        let reader =
            builder.with_projection(mask).with_batch_size(BATCH_ROWS).build().map_err(|e| bad_file(path, e))?;
        Ok(ParquetRows {
            path: path.clone(),
            columns: names,
            batch_schema,
            reader,
            keys,
            group_starts,
            rows,
            next_row: 0,
        })
    }

    /// The next batch and its first row number (from 0), with one key per row appended to
    /// `keys`; `None` after the last row.
    pub(crate) fn next_batch(
        &mut self,
        spec: &DatasetSpec,
        keys: &mut KeyArena,
    ) -> Result<Option<(u64, RecordBatch)>, DataError> {
        let batch = match self.reader.next() {
            None => {
                if self.next_row != self.rows {
                    return Err(DataError::file(&self.path, "the file ends before the rows its footer announces"));
                }
                return Ok(None);
            }
            Some(b) => b.map_err(|e| bad_file(&self.path, e))?,
        };
        let first = self.next_row;
        let mut text = String::new();
        let columns = self
            .keys
            .iter()
            .map(|(c, name)| hydrate(batch.column(*c)).map_err(|m| self.row_error(first, name, m)))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..batch.num_rows() {
            let pushed = (|| {
                for ((_, name), column) in self.keys.iter().zip(&columns) {
                    let row = first + i as u64;
                    text.clear();
                    key_text(column, i, &mut text).map_err(|m| self.row_error(row, name, m))?;
                    let value = normalize(&text, &spec.normalize);
                    if value.is_empty() {
                        let what =
                            if spec.normalize.trim { "empty key (after trimming whitespace)" } else { "empty key" };
                        return Err(self.row_error(row, name, what.into()));
                    }
                    check_key_chars(&value).map_err(|m| self.row_error(row, name, m))?;
                    keys.push_column(value.as_bytes());
                }
                Ok(())
            })();
            match pushed {
                Ok(()) => keys.finish_key(),
                Err(e) => {
                    keys.discard_unfinished();
                    return Err(e);
                }
            }
        }
        self.next_row += batch.num_rows() as u64;
        if self.next_row > self.rows {
            return Err(DataError::file(&self.path, "more rows than the footer announces"));
        }
        Ok(Some((first, batch)))
    }

    /// `row` (from 0) as a message names it: from 1 over the file, with its row group and its
    /// row inside the group (both from 0, as Parquet tools show them).
    pub(crate) fn place(&self, row: u64) -> String {
        let g = self.group_starts.partition_point(|&s| s <= row).saturating_sub(1);
        format!("row {} (row group {g}, row {})", row + 1, row - self.group_starts[g])
    }

    fn row_error(&self, row: u64, column: &str, message: String) -> DataError {
        DataError::file(&self.path, format!("{}: column {}: {message}", self.place(row), quoted_name(column)))
    }
}

fn key_type(ty: &DataType) -> bool {
    use DataType::*;
    match ty {
        // Dictionary-encoded strings or integers (pandas categoricals): keyed by their values.
        Dictionary(_, values) => !matches!(**values, Dictionary(..)) && key_type(values),
        _ => {
            matches!(ty, Utf8 | LargeUtf8 | Utf8View | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64)
        }
    }
}

/// A key column with a dictionary replaced by its values (one `take` per batch).
fn hydrate(column: &ArrayRef) -> Result<ArrayRef, String> {
    if !matches!(column.data_type(), DataType::Dictionary(..)) {
        return Ok(column.clone());
    }
    let d = column.as_any_dictionary();
    let keys = arrow_array::UInt64Array::from_iter(
        d.normalized_keys().into_iter().enumerate().map(|(i, k)| (!column.is_null(i)).then_some(k as u64)),
    );
    arrow_select::take::take(d.values().as_ref(), &keys, None).map_err(|e| format!("a damaged dictionary ({e})"))
}

/// The type a column has in an output: its own, or a dictionary's value type (the row format
/// decodes dictionaries to their values).
fn output_type(ty: &DataType) -> DataType {
    match ty {
        DataType::Dictionary(_, values) => values.as_ref().clone(),
        other => other.clone(),
    }
}

/// Appends the key text of row `i` of a key column (a type [`key_type`] accepts) to `out`.
fn key_text(column: &ArrayRef, i: usize, out: &mut String) -> Result<(), String> {
    use std::fmt::Write as _;
    if column.is_null(i) {
        return Err("null key".into());
    }
    let written = match column.data_type() {
        DataType::Utf8 => {
            out.push_str(column.as_string::<i32>().value(i));
            Ok(())
        }
        DataType::LargeUtf8 => {
            out.push_str(column.as_string::<i64>().value(i));
            Ok(())
        }
        DataType::Utf8View => {
            out.push_str(column.as_string_view().value(i));
            Ok(())
        }
        DataType::Int8 => write!(out, "{}", column.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => write!(out, "{}", column.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => write!(out, "{}", column.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => write!(out, "{}", column.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => write!(out, "{}", column.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => write!(out, "{}", column.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => write!(out, "{}", column.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => write!(out, "{}", column.as_primitive::<UInt64Type>().value(i)),
        other => return Err(format!("a key column holds strings or integers, not {other}")),
    };
    written.map_err(|_| "cannot format the key".into())
}

/// Validates every row of a Parquet dataset (keys only) and counts them, in constant memory.
/// Returns the column names and the row count.
pub(crate) fn check(spec: &DatasetSpec, file: File) -> Result<(Vec<String>, u64), DataError> {
    let mut rows = ParquetRows::open(spec, file, Columns::Keys)?;
    let mut keys = KeyArena::new();
    let mut count = 0u64;
    while let Some((_, batch)) = rows.next_batch(spec, &mut keys)? {
        count += batch.num_rows() as u64;
        keys = KeyArena::new();
    }
    Ok((rows.columns, count))
}

/// The row converter of a row store of `schema`'s columns.
pub(crate) fn converter(path: &Path, schema: &Schema) -> Result<RowConverter, DataError> {
    let fields: Vec<SortField> = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
    if !RowConverter::supports_fields(&fields) {
        return Err(DataError::file(
            path,
            "a column's type cannot be copied to an output (use --output keys, or convert the file)",
        ));
    }
    RowConverter::new(fields).map_err(|e| DataError::file(path, format!("cannot copy rows: {e}")))
}

/// Appends the rows of `batch` to a row store (`len u32 ‖ row` each) at `offset`, calling
/// `place(offset of the row's bytes, length)` for each; returns the new end offset.
pub(crate) fn store_batch(
    converter: &RowConverter,
    batch: &RecordBatch,
    out: &mut BufWriter<File>,
    mut offset: u64,
    mut place: impl FnMut(u64, u32),
) -> std::io::Result<u64> {
    let rows = converter.convert_columns(batch.columns()).map_err(std::io::Error::other)?;
    for row in rows.iter() {
        let bytes = row.as_ref();
        let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("a row of more than 4 GiB"))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(bytes)?;
        place(offset + STORE_PREFIX, len);
        offset += STORE_PREFIX + len as u64;
    }
    Ok(offset)
}

/// Walks a row store's records in order: `(offset of the bytes, length)` of each.
pub(crate) fn store_places(store: &[u8]) -> impl Iterator<Item = Result<(u64, u32), DataError>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at == store.len() {
            return None;
        }
        let len = store.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4")));
        let Some(len) = len.filter(|&l| at + 4 + l as usize <= store.len()) else {
            at = store.len();
            return Some(Err(DataError::Invalid("the row store is damaged".into())));
        };
        let place = ((at + 4) as u64, len);
        at += 4 + len as usize;
        Some(Ok(place))
    })
}

/// A job's Parquet output: rows decoded from a row store, written with the Parquet writer into
/// the output's temp file ([`DataWriter`]), renamed by [`ParquetOut::finish`].
pub(crate) struct ParquetOut {
    writer: ArrowWriter<DataWriter>,
    converter: RowConverter,
    schema: SchemaRef,
    tagged: bool,
}

impl ParquetOut {
    /// An output of rows of `stored` (the row store's columns); with `tagged` a first column
    /// `_side` and every column nullable.
    pub(crate) fn create(out: &Path, at_rest: &AtRest, stored: &Schema, tagged: bool) -> Result<ParquetOut, DataError> {
        let dir = crate::storage::parent_dir(out);
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let converter = converter(out, stored)?;
        let mut fields: Vec<Field> = Vec::new();
        if tagged {
            fields.push(Field::new("_side", DataType::Utf8, false));
        }
        fields.extend(stored.fields().iter().map(|f| {
            let f = f.as_ref().clone().with_data_type(output_type(f.data_type()));
            if tagged { f.with_nullable(true) } else { f }
        }));
        let schema = Arc::new(Schema::new_with_metadata(fields, stored.metadata().clone()));
        let w = DataWriter::create(out, at_rest).map_err(|e| DataError::io(dir, e))?;
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let writer = ArrowWriter::try_new(w, schema.clone(), Some(props))
            .map_err(|e| DataError::file(out, format!("cannot write Parquet: {e}")))?;
        Ok(ParquetOut { writer, converter, schema, tagged })
    }

    fn side_column(&self, side: Option<crate::join::Side>, n: usize) -> Option<ArrayRef> {
        let name = side.map(|s| {
            let t = s.tag();
            std::str::from_utf8(&t[..t.len() - 1]).expect("ascii")
        });
        self.tagged.then(|| Arc::new(StringArray::from(vec![name.unwrap_or("both"); n])) as ArrayRef)
    }

    fn write_columns(
        &mut self,
        side: Option<crate::join::Side>,
        columns: Vec<ArrayRef>,
        n: usize,
    ) -> std::io::Result<()> {
        let mut all: Vec<ArrayRef> = self.side_column(side, n).into_iter().collect();
        all.extend(columns);
        let batch = RecordBatch::try_new(self.schema.clone(), all).map_err(std::io::Error::other)?;
        self.writer.write(&batch).map_err(std::io::Error::other)
    }

    /// Writes the rows at `places` (offset, length in `store`), in order, tagged `side`.
    pub(crate) fn write_rows(
        &mut self,
        store: &[u8],
        places: &[(u64, u32)],
        side: Option<crate::join::Side>,
    ) -> Result<(), DataError> {
        for chunk in places.chunks(BATCH_ROWS) {
            let parser = self.converter.parser();
            let rows = chunk
                .iter()
                .map(|&(offset, len)| {
                    usize::try_from(offset)
                        .ok()
                        .and_then(|s| store.get(s..s + len as usize))
                        .map(|bytes| parser.parse(bytes))
                        .ok_or_else(|| DataError::Invalid("a spilled row lies outside the row store".into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let columns = self
                .converter
                .convert_rows(rows)
                .map_err(|e| DataError::Invalid(format!("the row store is damaged ({e})")))?;
            self.write_columns(side, columns, chunk.len())
                .map_err(|e| DataError::Invalid(format!("cannot write Parquet: {e}")))?;
        }
        Ok(())
    }

    /// Writes `n` placeholder rows (every column null) tagged `side`.
    pub(crate) fn write_fill(&mut self, mut n: u64, side: crate::join::Side) -> Result<(), DataError> {
        while n > 0 {
            let take = n.min(BATCH_ROWS as u64) as usize;
            let start = usize::from(self.tagged);
            let columns = self.schema.fields()[start..].iter().map(|f| new_null_array(f.data_type(), take)).collect();
            self.write_columns(Some(side), columns, take)
                .map_err(|e| DataError::Invalid(format!("cannot write Parquet: {e}")))?;
            n -= take as u64;
        }
        Ok(())
    }

    /// Writes the footer and renames the output into place.
    pub(crate) fn finish(self) -> std::io::Result<PathBuf> {
        self.writer.into_inner().map_err(std::io::Error::other)?.finish()
    }
}

/// Writes a Parquet file of `batches` (tests and `consort gen psi --format parquet`) to `path`
/// atomically.
pub fn write_file(
    path: &Path,
    schema: SchemaRef,
    batches: impl IntoIterator<Item = RecordBatch>,
) -> Result<(), DataError> {
    let w = DataWriter::create(path, &AtRest::Plain).map_err(|e| DataError::io(path, e))?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = ArrowWriter::try_new(w, schema, Some(props)).map_err(|e| DataError::file(path, e.to_string()))?;
    for b in batches {
        writer.write(&b).map_err(|e| DataError::file(path, e.to_string()))?;
    }
    let w = writer.into_inner().map_err(|e| DataError::file(path, e.to_string()))?;
    w.finish().map_err(|e| DataError::io(path, e))?;
    Ok(())
}

/// Test helpers: CSV tables to Parquet and Parquet files back to tables of text.
#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Writes the CSV file at `csv` (header first) as Parquet at `out`: every column `Utf8`,
    /// except those named in `ints` (`Int64`) and an empty field in `nulls` columns (null).
    pub(crate) fn csv_to_parquet(csv: &Path, out: &Path, ints: &[&str], nulls: &[&str], group_rows: usize) {
        let mut r = ::csv::ReaderBuilder::new().has_headers(false).flexible(true).from_path(csv).unwrap();
        let mut records = r.records().map(|r| r.unwrap());
        let header: Vec<String> = records.next().unwrap().iter().map(str::to_string).collect();
        let rows: Vec<Vec<String>> = records.map(|r| r.iter().map(str::to_string).collect()).collect();
        let fields: Vec<Field> = header
            .iter()
            .map(|h| {
                let ty = if ints.contains(&h.as_str()) { DataType::Int64 } else { DataType::Utf8 };
                Field::new(h, ty, nulls.contains(&h.as_str()))
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(group_rows.max(1))).build();
        let file = File::create(out).unwrap();
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        for chunk in rows.chunks(7).chain(rows.is_empty().then_some(&rows[..])) {
            let columns: Vec<ArrayRef> = header
                .iter()
                .enumerate()
                .map(|(c, h)| {
                    let value = |r: &Vec<String>| {
                        let v = r[c].clone();
                        (!(v.is_empty() && nulls.contains(&h.as_str()))).then_some(v)
                    };
                    if ints.contains(&h.as_str()) {
                        let v: Vec<Option<i64>> = chunk.iter().map(|r| value(r).map(|v| v.parse().unwrap())).collect();
                        Arc::new(arrow_array::Int64Array::from(v)) as ArrayRef
                    } else {
                        Arc::new(StringArray::from(chunk.iter().map(value).collect::<Vec<_>>())) as ArrayRef
                    }
                })
                .collect();
            w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
        }
        w.close().unwrap();
    }

    /// A Parquet file as rows of text: the header (column names), then each row (null as "").
    pub(crate) fn read_table(path: &Path) -> Vec<Vec<String>> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        let header: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
        let mut table = vec![header];
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            for i in 0..batch.num_rows() {
                let row = batch
                    .columns()
                    .iter()
                    .map(|c| {
                        let mut s = String::new();
                        if !c.is_null(i) {
                            key_text(c, i, &mut s).unwrap();
                        }
                        s
                    })
                    .collect();
                table.push(row);
            }
        }
        table
    }
}

#[cfg(test)]
#[path = "parquet_io_tests.rs"]
mod tests;
