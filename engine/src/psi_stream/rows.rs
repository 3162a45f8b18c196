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
//! is read with positioned reads instead, a chunk's rows in file order, rows less than [`GAP`]
//! apart in one read: no page-table work and no mapped pages for the kernel to reclaim (measured
//! at 10^9: see [`map_limit`]). The writers hand their rows over a bucket at a time
//! ([`RowReader::push`]); with reads they are gathered across buckets ([`GATHER_ROWS`]) so that a
//! pass reads the file in long runs rather than one system call per row.
//!
//! The file is also re-stamped (`fstat`) before each chunk: a file truncated since the last
//! chunk is an error, not a fault. A truncation *during* a chunk's copy (milliseconds) makes the
//! copy fault (SIGBUS: the node process dies); no output is renamed into place (the output is a
//! temp file renamed only at the end) and the stamp check on restart or resume refuses the
//! changed file (docs/security.md).
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use consort_protocols::psi::rr22::ItemHasher;
use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;

use super::Place;
use crate::csv_rows::{RowParser, lines_at};
use crate::dataset::{DatasetSpec, FileStamp, Header, changed, push_key};
use crate::error::DataError;
use crate::keys::KeyArena;

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
/// With positioned reads the writers gather rows across buckets ([`RowReader::push`]) up to this
/// many rows or row bytes, then read them in one pass over the file. One bucket's rows lie ~24 KB
/// apart in a 12 GB input (10^9 ids): a read each, ~5·10^8 system calls (~350 CPU-s) for the
/// job. A range's rows (~1.5·10^7 at 10^9, half the ids shared) lie ~800 B apart: the pass reads
/// the file in [`MAX_READ`] runs, ~12,000 reads per range. The same pages are read either way
/// (every page holds a row), in file order here. At most ~1 GiB in memory (the rows' spans and
/// digests, 32 B each, their bytes, ends and order).
const GATHER_ROWS: usize = 1 << 24;
const GATHER_BYTES: usize = 256 << 20;
/// Chunks of at least this many rows read with positioned reads have their keys checked on the
/// rayon pool before the rows are handed out (a resumable job's segments are written in the
/// background during the next range, so the check shares the pool with the protocol; a range's
/// pass, ~10 s at 10^9, then ends well within the next range's ~25 s rather than trailing it).
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
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    total.map_or(8 << 30, |kib| kib * 1024 * 10 / 28)
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
    /// Rows handed to [`Self::push`] and not yet read (positioned reads only), their row bytes.
    pending: Vec<(u128, Place)>,
    pending_bytes: usize,
    /// Most row bytes and rows per chunk ([`CHUNK_BYTES`], [`CHUNK_ROWS`] with the map,
    /// [`GATHER_BYTES`], [`GATHER_ROWS`] with reads) and [`DROP_BYTES`] (smaller in tests, to
    /// cross their boundaries).
    chunk_bytes: usize,
    chunk_rows: usize,
    drop_bytes: u64,
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
            None => (GATHER_BYTES, GATHER_ROWS),
        };
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
            pending: Vec::new(),
            pending_bytes: 0,
            chunk_bytes,
            chunk_rows,
            drop_bytes: DROP_BYTES,
        })
    }

    /// This reader with other chunk and drop sizes (tests).
    #[cfg(test)]
    pub(super) fn with_sizes(mut self, chunk_bytes: usize, drop_bytes: u64) -> RowReader {
        (self.chunk_bytes, self.drop_bytes) = (chunk_bytes, drop_bytes);
        self
    }

    /// This reader with positioned reads instead of the map (tests: both ways give the same rows).
    #[cfg(test)]
    pub(super) fn with_reads(mut self) -> RowReader {
        self.map = None;
        self.chunk_rows = GATHER_ROWS;
        self
    }

    /// Hands `batch`'s rows to `emit` as [`Self::rows`] does, at once with the map; with
    /// positioned reads they are gathered with the next batches' ([`GATHER_ROWS`]) and handed over
    /// in order by a later `push` or by [`Self::flush`], which the caller must call after its last
    /// batch. Rows reach `emit` in the order of the batches and within each batch.
    pub(super) fn push(
        &mut self,
        batch: Vec<(u128, Place)>,
        emit: impl FnMut(&[u8]) -> std::io::Result<()>,
        out: &Path,
    ) -> Result<(), DataError> {
        if self.map.is_some() {
            return self.rows(&batch, emit, out);
        }
        self.pending_bytes += batch.iter().map(|r| r.1.1 as usize).sum::<usize>();
        match self.pending.capacity() {
            0 => self.pending = batch,
            _ => self.pending.extend_from_slice(&batch),
        }
        if self.pending.len() >= self.chunk_rows || self.pending_bytes >= self.chunk_bytes {
            return self.flush(emit, out);
        }
        Ok(())
    }

    /// Hands the rows gathered by [`Self::push`] to `emit`.
    pub(super) fn flush(
        &mut self,
        emit: impl FnMut(&[u8]) -> std::io::Result<()>,
        out: &Path,
    ) -> Result<(), DataError> {
        let mut pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let done = self.rows(&pending, emit, out);
        pending.clear();
        self.pending = pending;
        done
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
            // A gathered chunk (positioned reads): its keys are checked on the pool first, then
            // the rows handed out.
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
