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
//!   when the job starts, before each range of a resumable job, before the output is renamed
//!   into place, and on resume.
//!
//! Rows are copied from a read-only memory map of the input (made once per reader, after the
//! stamp check): a chunk of rows at a time (at most [`CHUNK_BYTES`] of row bytes), in file order
//! within the chunk, each span checked against the mapped length and the stamp's length before
//! it is sliced (a span outside is an error, never a panic). No system call per row: the rows of
//! one bucket lie all over the file, so reading them one `pread` each cost ~5·10^7 calls at 10^8.
//! The mapped pages are dropped from the process (`madvise(MADV_DONTNEED)`: the mapping is a
//! shared read-only file map, so a dropped page is read again from the page cache if touched
//! again; nothing is lost) every [`DROP_BYTES`] of file the chunk's copy moves past, and at the
//! end of each chunk, so at most ~`DROP_BYTES` + two fault-around windows of the file are mapped
//! into the process at any time, whatever the input's size.
//!
//! An input larger than [`map_limit`] (one that cannot stay in the page cache beside its spill)
//! is read with positioned reads instead: no page-table work and no mapped pages for the kernel
//! to reclaim (measured at 10^9: see [`map_limit`]). One bucket's rows lie ~24 KB apart in a
//! 12 GB input (10^9 ids), a read each; a range's (~1.5·10^7 rows at 10^9, half the ids shared)
//! lie ~800 B apart, so the writers' batches (buckets) are served together, in one pass over the
//! file per up to [`MAX_FILES`] batches, in memory that does not grow with the batches' rows:
//! - [`RowReader::push`] sorts a batch's rows by file offset, each with its place in the batch,
//!   and writes them to a sealed *run* file in the job's spill directory (32 B a row);
//! - [`RowReader::flush`] merges the runs by offset and reads the rows in file order,
//!   [`MERGE_ROWS`] at a time, rows less than [`GAP`] apart in one read of at most [`MAX_READ`];
//!   each chunk's keys are checked on the rayon pool, then each row goes, with its place in the
//!   batch, to the sealed *rows* file of its window of the batch's order ([`WINDOW_BYTES`] of
//!   rows); then each window's file is read back once and its rows handed out in the batch's
//!   order.
//!
//! The pass files are sealed under a key of the reader's own (made from OS randomness when the
//! reader opens, never stored: after a crash they are unreadable and the resume rebuilds the
//! segment from the sealed positions), written without fsync (deleted within seconds), counted
//! in the job's temporary disk, and deleted when the pass ends, whether it succeeds or not. At
//! 10^9 a range's pass writes and reads back ~0.8 GB of them (32 B + the row's bytes + 8 B a
//! row) instead of holding ~0.9 GB of rows, spans and digests in memory.
//!
//! The file is also re-stamped (`fstat`) before each chunk: a file truncated since the last
//! chunk is an error, not a fault. A truncation *during* a chunk's copy (milliseconds) makes the
//! copy fault (SIGBUS: the node process dies); no output is renamed into place (the output is a
//! temp file renamed only at the end) and the stamp check on restart or resume refuses the
//! changed file (docs/security.md).
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use consort_protocols::psi::rr22::ItemHasher;
use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;

use super::{DiskUse, Place};
use crate::csv_rows::{RowParser, lines_at};
use crate::dataset::{DatasetSpec, FileStamp, Header, changed, push_key};
use crate::error::DataError;
use crate::keys::KeyArena;
use crate::sealed::{SealedReader, SealedWriter, StorageKey};
use crate::storage::Access;

/// Most row bytes copied per chunk (a longer row is a chunk alone). At 10^8 ids-only rows a
/// bucket's ~5·10^5 output rows are one chunk: one pass over the file in offset order, faulting
/// each mapped page in once (with the kernel's fault-around, 16 pages at a time).
const CHUNK_BYTES: usize = 8 << 20;
/// Most rows per chunk (bounds the chunk's index vectors for very short rows).
const CHUNK_ROWS: usize = 1 << 20;
/// The copy drops the mapped pages behind it every this many bytes of file.
const DROP_BYTES: u64 = 128 << 20;
/// The kernel's default fault-around window (`fault_around_bytes`): a fault maps up to this many
/// bytes of the file around the faulting page, so the chunk's last drop reaches this far past
/// its last row.
const FAULT_AROUND: u64 = 64 << 10;

/// Rows closer than this many bytes share one positioned read: copying a 4 KiB gap from the page
/// cache (~0.4 µs here) costs less than the system call a read of its own takes (~0.7 µs).
const GAP: u64 = 4 << 10;
/// With positioned reads a pass's rows are read this many rows (or [`MERGE_BYTES`] of row bytes)
/// at a time, in file order ([`RowReader::flush`]).
const MERGE_ROWS: usize = 1 << 18;
const MERGE_BYTES: usize = 16 << 20;
/// Most rows files (windows) one pass over the file writes ([`RowReader::push`]), so at most
/// this many batches a pass, each with its run file open: ~130 open files, ~8 MiB of buffers.
const MAX_FILES: usize = 64;
/// Most row bytes put back in their batch's order at a time (a longer row is a window alone); a
/// batch of more than [`MAX_FILES`] such windows has proportionally larger ones.
const WINDOW_BYTES: usize = 32 << 20;
/// Chunks of at least this many rows handed to [`RowReader::rows`] with positioned reads have
/// their keys checked on the rayon pool before the rows are handed out; a pass's chunks always
/// are (a resumable job's segments are written in the background during the next range, so the
/// check shares the pool with the protocol; a range's pass, ~10 s at 10^9, then ends well within
/// the next range's ~25 s rather than trailing it).
const PAR_CHECK_ROWS: usize = 1 << 16;
/// Most bytes of one positioned read (a longer row is read alone).
const MAX_READ: u64 = 1 << 20;

/// The largest input whose rows are copied from a map; a larger one is read with positioned
/// reads. The map saves a system call per row (~60 CPU-s at 10^8 ids-only rows, 1.1 GB) while
/// the input stays in the page cache; at 10^9 (12 GB, beside ~20 GB of
/// spill per node on a 24 GiB box) it does not, and the map's faults, page drops and the
/// reclaim of mapped pages cost more than the reads: hand over matches 692 s mapped against 204 s
/// with reads, 33 of 69 CPU-minutes in the kernel. The input plus its spill (~1.8× the input)
/// should fit in memory: RAM / 2.8 (`MemTotal`; 8 GiB if it cannot be read).
fn map_limit() -> u64 {
    #[cfg(test)]
    if READS_ONLY.try_with(|reads| *reads).unwrap_or(false) {
        return 0;
    }
    crate::memory::total_bytes().map_or(8 << 30, |b| b * 10 / 28)
}

#[cfg(test)]
tokio::task_local! {
    /// Tests: the readers opened inside this scope use positioned reads whatever the input's size.
    pub(super) static READS_ONLY: bool;
}

/// A learning side's reader of its output rows from the input file, checking each row's key.
pub(super) struct RowReader {
    file: File,
    /// The input, mapped read-only (shared: in-place changes show, as with reads); `None`: rows
    /// are read with positioned reads instead ([`map_limit`]).
    map: Option<Mmap>,
    /// Positioned reads' buffer (neighbouring rows share one read).
    read: Vec<u8>,
    stamp: FileStamp,
    check: Check,
    scratch: Scratch,
    /// The chunk's rows' bytes, in the batch's order, and their ends.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    by_offset: Vec<u32>,
    /// Positioned reads: the batches handed to [`Self::push`] and not yet read, and where their
    /// pass files go.
    runs: Vec<Run>,
    pass: Arc<Pass>,
    /// Most row bytes and rows per chunk ([`CHUNK_BYTES`], [`CHUNK_ROWS`] with the map,
    /// [`MERGE_BYTES`], [`MERGE_ROWS`] with reads), [`DROP_BYTES`], [`WINDOW_BYTES`] and
    /// [`MAX_FILES`] (smaller in tests, to cross their boundaries).
    chunk_bytes: usize,
    chunk_rows: usize,
    drop_bytes: u64,
    window_bytes: usize,
    max_files: usize,
}

/// Where a reader's pass files go: the job's spill directory, whose disk account counts them.
pub(super) struct PassDir {
    pub(super) dir: PathBuf,
    pub(super) disk: Arc<DiskUse>,
}

/// A reader's pass files: their directory and account, the key they are sealed under (the
/// reader's own) and the name prefix that keeps two readers' files apart.
struct Pass {
    at: PassDir,
    key: StorageKey,
    prefix: String,
}

/// A batch handed to [`RowReader::push`] with positioned reads: its rows (sorted by offset) in
/// the run file, where each window of its order starts, and each window's rows file.
struct Run {
    rows: u32,
    windows: Vec<u32>,
    run: PathBuf,
    rows_files: Vec<PathBuf>,
}

/// A run file's record: the row's offset and length, its place in its batch, its digest.
const RECORD: usize = 32;

impl RowReader {
    /// Opens the input of `stamp` (refused if it changed) and reads its header.
    /// Pass files (positioned reads) go to `pass`.
    pub(super) fn open(
        spec: &DatasetSpec,
        stamp: &FileStamp,
        hasher: ItemHasher,
        pass: PassDir,
    ) -> Result<RowReader, DataError> {
        let file = crate::dataset::open_unchanged(&spec.file, stamp)?;
        Self::from_file(file, spec, hasher, pass)
    }

    /// Reads rows from `file` (at its start; a CSV with `spec`'s key columns), whose present
    /// stamp is the one later checks compare with; errors name `spec`'s file.
    pub(super) fn from_file(
        file: File,
        spec: &DatasetSpec,
        hasher: ItemHasher,
        pass: PassDir,
    ) -> Result<RowReader, DataError> {
        let stamp = FileStamp::of(&file, &spec.file)?;
        let mut scanner = crate::csv_rows::RowScanner::from_file(
            &spec.file,
            file.try_clone().map_err(|e| DataError::io(&spec.file, e))?,
        );
        let header = spec.read_header(&mut scanner)?;
        // SAFETY: a read-only shared map of the registered input. Its bytes are only copied out
        // (never borrowed across a drop of its pages); a concurrent truncation of the file is
        // the hazard the module's documentation describes (refused by the stamp before each
        // chunk; during a chunk's copy it faults the process, leaving no output).
        let map = match stamp.len <= map_limit() {
            true => Some(unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&spec.file, e))?),
            false => None,
        };
        let (chunk_bytes, chunk_rows) = match map {
            Some(_) => (CHUNK_BYTES, CHUNK_ROWS),
            None => (MERGE_BYTES, MERGE_ROWS),
        };
        let pass = Pass::new(pass)?;
        Ok(RowReader {
            file,
            map,
            read: Vec::new(),
            stamp,
            check: Check { spec: spec.clone(), header, hasher },
            scratch: Scratch::default(),
            bytes: Vec::new(),
            ends: Vec::new(),
            by_offset: Vec::new(),
            runs: Vec::new(),
            pass: Arc::new(pass),
            chunk_bytes,
            chunk_rows,
            drop_bytes: DROP_BYTES,
            window_bytes: WINDOW_BYTES,
            max_files: MAX_FILES,
        })
    }

    /// This reader with other chunk and drop sizes (tests).
    #[cfg(test)]
    pub(super) fn with_sizes(mut self, chunk_bytes: usize, drop_bytes: u64) -> RowReader {
        (self.chunk_bytes, self.drop_bytes, self.window_bytes) = (chunk_bytes, drop_bytes, chunk_bytes);
        self
    }

    /// This reader writing at most `files` rows files a pass (tests).
    #[cfg(test)]
    pub(super) fn with_max_files(mut self, files: usize) -> RowReader {
        self.max_files = files;
        self
    }

    /// This reader with positioned reads instead of the map (tests: both ways give the same rows).
    #[cfg(test)]
    pub(super) fn with_reads(mut self) -> RowReader {
        self.map = None;
        (self.chunk_bytes, self.chunk_rows) = (MERGE_BYTES, MERGE_ROWS);
        self
    }

    /// Hands `batch`'s rows to `emit` as [`Self::rows`] does, at once with the map; with
    /// positioned reads the batch is written to a run file and its rows handed over, in order, by
    /// the pass of a later `push` (every [`MAX_FILES`] windows) or of [`Self::flush`], which the
    /// caller must call after its last batch. Rows reach `emit` in the order of the batches and
    /// within each batch.
    pub(super) fn push(
        &mut self,
        batch: Vec<(u128, Place)>,
        emit: impl FnMut(&[u8]) -> std::io::Result<()>,
        out: &Path,
    ) -> Result<(), DataError> {
        if self.map.is_some() {
            return self.rows(&batch, emit, out);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let run = self.write_run(batch)?;
        self.runs.push(run);
        if self.runs.iter().map(|r| r.windows.len()).sum::<usize>() >= self.max_files {
            return self.flush(emit, out);
        }
        Ok(())
    }

    /// Hands the rows of the batches pushed since the last pass to `emit` (one pass over the
    /// file); the pass files are deleted whether it succeeds or not.
    pub(super) fn flush(
        &mut self,
        emit: impl FnMut(&[u8]) -> std::io::Result<()>,
        out: &Path,
    ) -> Result<(), DataError> {
        let runs = std::mem::take(&mut self.runs);
        if runs.is_empty() {
            return Ok(());
        }
        let done = self.merge(&runs).and_then(|()| self.put_back(&runs, emit, out));
        let pass = self.pass.clone();
        for run in &runs {
            pass.at.disk.remove(&run.run);
            run.rows_files.iter().for_each(|f| pass.at.disk.remove(f));
        }
        done
    }

    /// Writes `batch` (rows in the batch's order) as the next run: its rows sorted by offset,
    /// each with its place in the batch.
    fn write_run(&mut self, batch: Vec<(u128, Place)>) -> Result<Run, DataError> {
        let pass = self.pass.clone();
        let k = self.runs.len();
        let rows = u32::try_from(batch.len()).map_err(|_| DataError::Invalid("a bucket too large to output".into()))?;
        let total = batch.iter().map(|r| r.1.1 as usize).sum::<usize>();
        let window = self.window_bytes.max(total.div_ceil(self.max_files));
        let mut windows = vec![0u32];
        let mut bytes = 0usize;
        for (i, &(_, (_, len, _))) in batch.iter().enumerate() {
            if bytes > 0 && bytes + len as usize > window {
                windows.push(i as u32);
                bytes = 0;
            }
            bytes += len as usize;
        }
        let mut records: Vec<(u64, u32, u32, u128)> =
            batch.iter().enumerate().map(|(i, &(digest, (offset, len, _)))| (offset, len, i as u32, digest)).collect();
        drop(batch);
        records.par_sort_unstable_by_key(|r| (r.0, r.2));
        let run = pass.path(&format!("run-{k}"));
        let rows_files = (0..windows.len()).map(|w| pass.path(&format!("rows-{k}-{w}"))).collect();
        let io_err = |e| DataError::io(&run, e);
        let mut w = std::io::BufWriter::with_capacity(
            1 << 16,
            SealedWriter::create(&run, &pass.key, Access::OwnerOnly).map_err(io_err)?,
        );
        for &(offset, len, at, digest) in &records {
            let mut record = [0u8; RECORD];
            record[..8].copy_from_slice(&offset.to_le_bytes());
            record[8..12].copy_from_slice(&len.to_le_bytes());
            record[12..16].copy_from_slice(&at.to_le_bytes());
            record[16..].copy_from_slice(&digest.to_le_bytes());
            w.write_all(&record).map_err(io_err)?;
        }
        w.into_inner().map_err(|e| e.into_error()).and_then(|w| w.finish_scratch()).map_err(io_err)?;
        pass.account(&run);
        Ok(Run { rows, windows, run, rows_files })
    }

    /// The pass's first half: the runs merged by offset, their rows read in file order a chunk
    /// at a time, keys checked, each row written to its window's rows file with its place.
    fn merge(&mut self, runs: &[Run]) -> Result<(), DataError> {
        let pass = self.pass.clone();
        let mut readers = Vec::with_capacity(runs.len());
        let mut writers = Vec::with_capacity(runs.len());
        for run in runs {
            let reader = SealedReader::open(&run.run, &pass.key).map_err(|e| DataError::io(&run.run, e))?;
            readers.push((std::io::BufReader::with_capacity(1 << 16, reader), run.rows));
            let mut windows = Vec::with_capacity(run.rows_files.len());
            for f in &run.rows_files {
                let w = SealedWriter::create(f, &pass.key, Access::OwnerOnly).map_err(|e| DataError::io(f, e))?;
                windows.push(std::io::BufWriter::with_capacity(1 << 16, w));
            }
            writers.push(windows);
        }
        // The next record of each run, smallest offset first.
        let mut heads = std::collections::BinaryHeap::new();
        for (k, reader) in readers.iter_mut().enumerate() {
            if let Some(r) = next_record(reader, &runs[k].run)? {
                heads.push(std::cmp::Reverse((r, k as u32)));
            }
        }
        let mut chunk: Vec<(u128, Place)> = Vec::new();
        let mut to: Vec<(u32, u32)> = Vec::new();
        loop {
            chunk.clear();
            to.clear();
            let mut bytes = 0usize;
            while let Some(&std::cmp::Reverse(((offset, len, at, digest), k))) = heads.peek() {
                if !chunk.is_empty() && (chunk.len() >= self.chunk_rows || bytes + len as usize > self.chunk_bytes) {
                    break;
                }
                heads.pop();
                chunk.push((digest, (offset, len, 0)));
                to.push((k, at));
                bytes += len as usize;
                if let Some(r) = next_record(&mut readers[k as usize], &runs[k as usize].run)? {
                    heads.push(std::cmp::Reverse((r, k)));
                }
            }
            if chunk.is_empty() {
                break;
            }
            self.read_chunk(&chunk)?;
            if let Some(i) = self.first_changed(&chunk) {
                return Err(self.key_changed(chunk[i].1));
            }
            let mut start = 0;
            for (i, &(k, at)) in to.iter().enumerate() {
                let end = self.ends[i];
                let run = &runs[k as usize];
                // The window holding place `at` (the first window starts at 0).
                let window = run.windows.partition_point(|&from| from <= at) - 1;
                let w = &mut writers[k as usize][window];
                let io_err = |e| DataError::io(&run.rows_files[window], e);
                w.write_all(&at.to_le_bytes()).map_err(io_err)?;
                w.write_all(&((end - start) as u32).to_le_bytes()).map_err(io_err)?;
                w.write_all(&self.bytes[start..end]).map_err(io_err)?;
                start = end;
            }
        }
        for ((reader, left), run) in readers.iter_mut().zip(runs) {
            let mut rest = [0u8; 1];
            if *left != 0 || !matches!(reader.read(&mut rest), Ok(0)) {
                return Err(DataError::file(&run.run, "a pass file of the output's rows is damaged"));
            }
        }
        for (windows, run) in writers.into_iter().zip(runs) {
            for (w, f) in windows.into_iter().zip(&run.rows_files) {
                let io_err = |e| DataError::io(f, e);
                w.into_inner().map_err(|e| e.into_error()).and_then(|w| w.finish_scratch()).map_err(io_err)?;
                pass.account(f);
            }
        }
        Ok(())
    }

    /// The pass's second half: each window's rows file read back once, its rows handed to
    /// `emit` in the batch's order.
    fn put_back(
        &mut self,
        runs: &[Run],
        mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
        out: &Path,
    ) -> Result<(), DataError> {
        let pass = self.pass.clone();
        let mut index: Vec<(u32, usize, u32)> = Vec::new();
        for run in runs {
            for (w, (&lo, file)) in run.windows.iter().zip(&run.rows_files).enumerate() {
                let hi = run.windows.get(w + 1).copied().unwrap_or(run.rows);
                let damaged = || DataError::file(file, "a pass file of the output's rows is damaged");
                let sealed = SealedReader::open(file, &pass.key).map_err(|e| DataError::io(file, e))?;
                let mut reader = std::io::BufReader::with_capacity(1 << 16, sealed);
                self.bytes.clear();
                index.clear();
                for _ in lo..hi {
                    let mut head = [0u8; 8];
                    reader.read_exact(&mut head).map_err(|_| damaged())?;
                    let at = u32::from_le_bytes(head[..4].try_into().expect("4"));
                    let len = u32::from_le_bytes(head[4..].try_into().expect("4"));
                    let start = self.bytes.len();
                    self.bytes.resize(start + len as usize, 0);
                    reader.read_exact(&mut self.bytes[start..]).map_err(|_| damaged())?;
                    index.push((at, start, len));
                }
                let mut rest = [0u8; 1];
                if !matches!(reader.read(&mut rest), Ok(0)) {
                    return Err(damaged());
                }
                index.sort_unstable_by_key(|e| e.0);
                if index.iter().zip(lo..).any(|(e, at)| e.0 != at) {
                    return Err(damaged());
                }
                for &(_, start, len) in &index {
                    emit(&self.bytes[start..start + len as usize]).map_err(|e| DataError::io(out, e))?;
                }
            }
        }
        Ok(())
    }

    /// Checks that the input still has the stamp the reader opened it with, at its path and in
    /// the open file (a range of a resumable job starts with this check).
    pub(super) fn check_unchanged(&self) -> Result<(), DataError> {
        let path = &self.check.spec.file;
        let at_path = crate::storage::open_regular(path).map_err(|e| DataError::io(path, e))?;
        if FileStamp::of(&at_path, path)? != self.stamp || FileStamp::of(&self.file, path)? != self.stamp {
            return Err(changed(path));
        }
        Ok(())
    }

    /// Reads the rows of `batch` (each with the digest it was matched by), checks each row's key
    /// against its digest, and hands the rows to `emit` in the batch's order.
    pub(super) fn rows(
        &mut self,
        batch: &[(u128, Place)],
        mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
        out: &Path,
    ) -> Result<(), DataError> {
        let mut at = 0;
        while at < batch.len() {
            let mut end = at + 1;
            let mut total = batch[at].1.1 as usize;
            while end < batch.len() && end - at < self.chunk_rows {
                let len = batch[end].1.1 as usize;
                if total + len > self.chunk_bytes {
                    break;
                }
                total += len;
                end += 1;
            }
            let chunk = &batch[at..end];
            self.read_chunk(chunk)?;
            // A large chunk read with positioned reads: its keys are checked on the pool first,
            // then the rows handed out.
            let checked = self.map.is_none() && chunk.len() >= PAR_CHECK_ROWS;
            if checked && let Some(k) = self.first_changed(chunk) {
                return Err(self.key_changed(chunk[k].1));
            }
            let mut start = 0;
            for (k, &(digest, place)) in chunk.iter().enumerate() {
                let end = self.ends[k];
                let raw = &self.bytes[start..end];
                start = end;
                if !checked && !key_matches(&self.check, &mut self.scratch, raw, place, digest) {
                    return Err(self.key_changed(place));
                }
                emit(raw).map_err(|e| DataError::io(out, e))?;
            }
            at = end;
        }
        Ok(())
    }

    /// The first row of the chunk just read whose key does not match its digest, checked on all
    /// cores (each thread with its own parser and key buffer).
    fn first_changed(&self, chunk: &[(u128, Place)]) -> Option<usize> {
        let (check, bytes, ends) = (&self.check, &self.bytes, &self.ends);
        (0..chunk.len())
            .into_par_iter()
            .with_min_len(PAR_CHECK_ROWS / 4)
            .map_init(Scratch::default, |scratch, k| {
                let start = if k == 0 { 0 } else { ends[k - 1] };
                key_matches(check, scratch, &bytes[start..ends[k]], chunk[k].1, chunk[k].0)
            })
            .position_first(|ok| !ok)
    }

    /// Copies `chunk`'s rows from the map (in file order) into `bytes`, in the chunk's order,
    /// dropping the mapped pages behind the copy.
    fn read_chunk(&mut self, chunk: &[(u128, Place)]) -> Result<(), DataError> {
        let outside = || DataError::Invalid("a spilled row lies outside the input".into());
        // A file truncated since the last chunk: an error here rather than a fault in the copy.
        if FileStamp::of(&self.file, &self.check.spec.file)?.len != self.stamp.len {
            return Err(changed(&self.check.spec.file));
        }
        let limit = self.stamp.len.min(self.map.as_ref().map_or(u64::MAX, |m| m.len() as u64));
        self.ends.clear();
        let mut total = 0usize;
        for &(_, (offset, len, _)) in chunk {
            let end = offset.checked_add(u64::from(len)).ok_or_else(outside)?;
            if end > limit {
                return Err(outside());
            }
            total += len as usize;
            self.ends.push(total);
        }
        self.bytes.clear();
        self.bytes.resize(total, 0);
        self.by_offset.clear();
        self.by_offset.extend(0..chunk.len() as u32);
        self.by_offset.sort_unstable_by_key(|&k| chunk[k as usize].1.0);
        let Some(map) = &self.map else {
            return self.read_positioned(chunk);
        };
        // Where the mapped pages were last dropped up to (the chunk's first row before any).
        let mut kept_from = chunk[self.by_offset[0] as usize].1.0;
        let mut last_end = kept_from;
        for &k in &self.by_offset {
            let (offset, len, _) = chunk[k as usize].1;
            if offset >= kept_from + self.drop_bytes {
                self.drop_pages(kept_from.saturating_sub(FAULT_AROUND), offset);
                kept_from = offset;
            }
            let k = k as usize;
            let to = self.ends[k];
            let from = to - len as usize;
            // In bounds: checked against the mapped length above.
            let span = offset as usize..(offset + u64::from(len)) as usize;
            self.bytes[from..to].copy_from_slice(&map[span]);
            last_end = last_end.max(offset + u64::from(len));
        }
        self.drop_pages(kept_from.saturating_sub(FAULT_AROUND), last_end.saturating_add(FAULT_AROUND));
        Ok(())
    }

    /// [`Self::read_chunk`] without the map: the chunk's rows (spans checked, `by_offset` sorted)
    /// read in file order, rows less than [`GAP`] apart in one read of at most [`MAX_READ`].
    fn read_positioned(&mut self, chunk: &[(u128, Place)]) -> Result<(), DataError> {
        let mut at = 0;
        while at < self.by_offset.len() {
            let (start, len, _) = chunk[self.by_offset[at] as usize].1;
            let mut end = start + u64::from(len);
            let mut last = at + 1;
            while last < self.by_offset.len() {
                let (offset, len, _) = chunk[self.by_offset[last] as usize].1;
                let next_end = offset + u64::from(len);
                if offset > end + GAP || next_end.max(end) - start > MAX_READ {
                    break;
                }
                end = end.max(next_end);
                last += 1;
            }
            self.read.clear();
            self.read.resize((end - start) as usize, 0);
            self.file.read_exact_at(&mut self.read, start).map_err(|e| DataError::io(&self.check.spec.file, e))?;
            for &k in &self.by_offset[at..last] {
                let (offset, len, _) = chunk[k as usize].1;
                let to = self.ends[k as usize];
                let from = (offset - start) as usize;
                self.bytes[to - len as usize..to].copy_from_slice(&self.read[from..from + len as usize]);
            }
            at = last;
        }
        Ok(())
    }

    /// Drops the mapped pages of the file's bytes `[from, to)` (clipped to the map) from the
    /// process; touching them again reads them from the page cache.
    fn drop_pages(&self, from: u64, to: u64) {
        let Some(map) = &self.map else { return };
        let len = map.len() as u64;
        let (from, to) = (from.min(len), to.min(len));
        if from < to {
            // SAFETY: a shared read-only file map whose bytes are only copied out: no slice of it
            // is alive here, and a dropped page reads back the file's contents (MADV_DONTNEED
            // only zero-fills private anonymous maps). A failure only leaves pages mapped.
            let _ =
                unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, from as usize, (to - from) as usize) };
        }
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
}

/// A thread's reused buffers for checking keys.
struct Scratch {
    parser: RowParser,
    keys: KeyArena,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch { parser: RowParser::new(), keys: KeyArena::new() }
    }
}

/// Whether `raw` is one row whose key digests to `digest` under the job's salt.
fn key_matches(c: &Check, s: &mut Scratch, raw: &[u8], place: Place, digest: u128) -> bool {
    let Some(row) = s.parser.parse(raw, 0, place.0) else { return false };
    s.keys.clear();
    if push_key(&c.spec, &c.header, &row, &mut s.keys).is_err() || s.keys.len() != 1 {
        return false;
    }
    c.hasher.digest(s.keys.get(0)) == digest
}

impl Pass {
    /// A fresh key of the reader's own and a prefix no other reader in this process uses. Pass
    /// files another process left in the directory (a node killed during a pass: sealed under a
    /// key that died with it) are deleted; no other process uses a job's spill directory at the
    /// same time (the job's lock).
    fn new(at: PassDir) -> Result<Pass, DataError> {
        static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let key = StorageKey::generate().map_err(|e| DataError::io(&at.dir, e))?;
        let n = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ours = format!("pass-{}-", std::process::id());
        if let Ok(entries) = std::fs::read_dir(&at.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("pass-") && !name.starts_with(&ours) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Pass { at, key, prefix: format!("{ours}{n}") })
    }

    fn path(&self, what: &str) -> PathBuf {
        self.at.dir.join(format!("{}-{what}", self.prefix))
    }

    /// Counts the file at `path` in the job's temporary disk.
    fn account(&self, path: &Path) {
        if let Ok(meta) = std::fs::metadata(path) {
            self.at.disk.add(meta.len());
        }
    }
}

/// The next record of a run file (offset, length, place in the batch, digest), `None` once the
/// run's rows were read; `left` counts them down.
type Record = (u64, u32, u32, u128);

fn next_record(
    (reader, left): &mut (std::io::BufReader<SealedReader<File>>, u32),
    path: &Path,
) -> Result<Option<Record>, DataError> {
    if *left == 0 {
        return Ok(None);
    }
    let mut r = [0u8; RECORD];
    reader.read_exact(&mut r).map_err(|_| DataError::file(path, "a pass file of the output's rows is damaged"))?;
    *left -= 1;
    Ok(Some((
        u64::from_le_bytes(r[..8].try_into().expect("8")),
        u32::from_le_bytes(r[8..12].try_into().expect("4")),
        u32::from_le_bytes(r[12..16].try_into().expect("4")),
        u128::from_le_bytes(r[16..].try_into().expect("16")),
    )))
}
