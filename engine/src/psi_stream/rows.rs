//! The learning side's output rows, read from the registered input itself (no snapshot).
//!
//! A streaming job's output copies each matched row's bytes from the input file by the span its
//! spill record kept. Nothing copies the input first (a snapshot would double the job's disk on
//! file systems without reflinks, and its mapped pages grew the process's RSS with n), so the
//! rows are checked instead:
//! - **keys, per row**: every row copied out is parsed again, its key columns normalized and
//!   digested under the job's salt, and the digest compared with the one the row was matched by
//!   (its spill record's). A difference (the file was modified in place between the scan and the
//!   output) fails the job: an error naming the file and the row's line, never the value; no
//!   output is renamed into place (a resumable job keeps its state as after any failure).
//! - **the other columns**: covered by the file's stamp (length, modification time), checked
//!   when the job starts, before the output is renamed into place, and on resume.
//!
//! Reads are positioned (`pread`) into a bounded buffer, a chunk of rows at a time in file order
//! (neighbouring rows share one read), so memory stays fixed and no file page is mapped into the
//! process.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use consort_protocols::psi::rr22::ItemHasher;

use super::Place;
use crate::csv_rows::{RowParser, lines_at};
use crate::dataset::{DatasetSpec, FileStamp, Header, changed, push_key};
use crate::error::DataError;
use crate::keys::KeyArena;

/// Rows read and checked per chunk.
const CHUNK_ROWS: usize = 4096;
/// Rows closer than this many bytes share one read.
const GAP: u64 = 256;
/// Most bytes of one read (a longer row is read alone).
const MAX_READ: u64 = 1 << 20;

/// A learning side's reader of its output rows from the input file, checking each row's key.
pub(super) struct RowReader {
    file: File,
    stamp: FileStamp,
    check: Check,
    /// The chunk's rows' bytes, in the batch's order, and their ends.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    read: Vec<u8>,
    by_offset: Vec<u32>,
}

impl RowReader {
    /// Opens the input of `stamp` (refused if it changed) and reads its header.
    pub(super) fn open(spec: &DatasetSpec, stamp: &FileStamp, hasher: ItemHasher) -> Result<RowReader, DataError> {
        let file = crate::dataset::open_unchanged(&spec.file, stamp)?;
        Self::from_file(file, spec, hasher)
    }

    /// Reads rows from `file` (at its start; a CSV with `spec`'s key columns), whose present
    /// stamp is the one later checks compare with; errors name `spec`'s file.
    pub(super) fn from_file(file: File, spec: &DatasetSpec, hasher: ItemHasher) -> Result<RowReader, DataError> {
        let stamp = FileStamp::of(&file, &spec.file)?;
        let mut scanner = crate::csv_rows::RowScanner::from_file(
            &spec.file,
            file.try_clone().map_err(|e| DataError::io(&spec.file, e))?,
        );
        let header = spec.read_header(&mut scanner)?;
        Ok(RowReader {
            file,
            stamp,
            check: Check { spec: spec.clone(), header, hasher, parser: RowParser::new(), keys: KeyArena::new() },
            bytes: Vec::new(),
            ends: Vec::new(),
            read: Vec::new(),
            by_offset: Vec::new(),
        })
    }

    /// Reads the rows of `batch` (each with the digest it was matched by), checks each row's key
    /// against its digest, and hands the rows to `emit` in the batch's order.
    pub(super) fn rows(
        &mut self,
        batch: &[(u128, Place)],
        mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
        out: &Path,
    ) -> Result<(), DataError> {
        for chunk in batch.chunks(CHUNK_ROWS) {
            self.read_chunk(chunk)?;
            let mut start = 0;
            for (k, &(digest, place)) in chunk.iter().enumerate() {
                let end = self.ends[k];
                let raw = &self.bytes[start..end];
                start = end;
                if !key_matches(&mut self.check, raw, place, digest) {
                    return Err(self.key_changed(place));
                }
                emit(raw).map_err(|e| DataError::io(out, e))?;
            }
        }
        Ok(())
    }

    /// Reads `chunk`'s rows (in file order, neighbours in one read) into `bytes`, in the chunk's
    /// order.
    fn read_chunk(&mut self, chunk: &[(u128, Place)]) -> Result<(), DataError> {
        let outside = || DataError::Invalid("a spilled row lies outside the input".into());
        self.by_offset.clear();
        self.by_offset.extend(0..chunk.len() as u32);
        self.by_offset.sort_unstable_by_key(|&k| chunk[k as usize].1.0);
        let mut spans = vec![(0usize, 0usize); chunk.len()];
        let mut at = 0;
        while at < self.by_offset.len() {
            let first = chunk[self.by_offset[at] as usize].1;
            let start = first.0;
            let mut end = start.checked_add(u64::from(first.1)).ok_or_else(outside)?;
            let mut last = at + 1;
            while last < self.by_offset.len() {
                let (offset, len, _) = chunk[self.by_offset[last] as usize].1;
                let next_end = offset.checked_add(u64::from(len)).ok_or_else(outside)?;
                if offset > end + GAP || next_end.max(end) - start > MAX_READ {
                    break;
                }
                end = end.max(next_end);
                last += 1;
            }
            if end > self.stamp.len {
                return Err(outside());
            }
            let n = usize::try_from(end - start).map_err(|_| outside())?;
            let base = self.read.len();
            self.read.resize(base + n, 0);
            self.file
                .read_exact_at(&mut self.read[base..], start)
                .map_err(|e| DataError::io(&self.check.spec.file, e))?;
            for &k in &self.by_offset[at..last] {
                let (offset, len, _) = chunk[k as usize].1;
                let from = base + (offset - start) as usize;
                spans[k as usize] = (from, from + len as usize);
            }
            at = last;
        }
        self.bytes.clear();
        self.ends.clear();
        for &(from, to) in &spans {
            self.bytes.extend_from_slice(&self.read[from..to]);
            self.ends.push(self.bytes.len());
        }
        self.read.clear();
        Ok(())
    }

    /// The error for a row whose key is no longer the one hashed: file and line, never a value.
    fn key_changed(&self, place: Place) -> DataError {
        match lines_at(&self.check.spec.file, &[place.0]) {
            Ok(lines) => DataError::Row {
                path: self.check.spec.file.clone(),
                line: lines[0],
                column: None,
                message: "this row's key is not the one the job hashed: the file was modified during the job (no output was written; load the dataset again)".into(),
            },
            Err(_) => changed(&self.check.spec.file),
        }
    }
}

/// What checking a row's key takes: the dataset's key columns and normalization, the job's salt.
struct Check {
    spec: DatasetSpec,
    header: Header,
    hasher: ItemHasher,
    parser: RowParser,
    keys: KeyArena,
}

/// Whether `raw` is one row whose key digests to `digest` under the job's salt.
fn key_matches(c: &mut Check, raw: &[u8], place: Place, digest: u128) -> bool {
    let Some(row) = c.parser.parse(raw, 0, place.0) else { return false };
    c.keys.clear();
    if push_key(&c.spec, &c.header, &row, &mut c.keys).is_err() || c.keys.len() != 1 {
        return false;
    }
    c.hasher.digest(c.keys.get(0)) == digest
}
