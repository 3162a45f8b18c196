//! Streaming RR22 PSI: the dataset flows from disk bucket by bucket, nothing is kept per row in
//! memory, so a job's memory is fixed whatever its size.
//!
//! # How a job runs
//!
//! 1. **Count** ([`StreamInput::open`]): a constant-memory pass validates every row (as loading
//!    does: field counts, keys) and counts them. The count is the set size this party announces.
//! 2. **Hello** ([`rr22::start`]): both parties exchange their hellos; this fixes the joint salt,
//!    so digests can be computed, and the [`Layout`](consort_protocols::psi::rr22::Layout) (bucket
//!    count and public capacities) from both set sizes. The salt exchange therefore happens
//!    before the scan: the hello carries only the counts and the salt shares.
//! 3. **Scan, digest, spill**: one streaming pass parses the CSV (csv-core, [`RowScanner`]),
//!    computes each row's salted 128-bit digest of its normalized key and appends (digest, row
//!    offset, row length, row number) — 32 bytes, no raw id — to its bucket's spill file. Spill files are
//!    sealed ([`crate::sealed`]: AES-256-GCM in 64 KiB chunks, each chunk's nonce unique, the
//!    STREAM construction) under a fresh per-job key that lives only in memory and is zeroized
//!    when the job ends; memory is one 64 KiB chunk buffer per bucket. A party that learns the
//!    intersection first copies its input to an unlinked private snapshot and scans that, so the
//!    rows it later copies out are exactly the rows it hashed (no check-then-use window).
//! 4. **Buckets** ([`rr22::run_buckets`]): each bucket's spill is read back when the protocol
//!    reaches it (the next one while the current runs), duplicate keys are found within the
//!    bucket (equal keys have equal digests, so they always share one), and the matches go to a
//!    writer thread that appends the bucket's rows, in the joint order, to the output's temp file.
//!    A bucket's spill is deleted as soon as the bucket is finished. The responder with
//!    `Reveal::Both` learns its matches only when the requester's positions arrive after the last
//!    bucket: until then it keeps each bucket's secret stream order as a sealed spill too
//!    (16 bytes per padded position), read back bucket by bucket as the positions come.
//! 5. **Join tail** ([`crate::join`], not for `inner`): a side whose unmatched rows its output
//!    shows keeps a bitmap (1 bit per row) of rows matched or dropped as duplicates; after the last
//!    bucket the placeholder counts are exchanged and one pass over the snapshot appends the
//!    unmatched rows, then the placeholders, to the same temp file.
//! 6. **Finish**: the grant's minimum is checked, then the temp file is renamed into place. On
//!    any error no output exists and the spill directory is removed.
//!
//! Buckets run as a range `[start, end)` ([`rr22::run_buckets`]); today one range covers the
//! job, but a range can be run alone once both sides agree on it, which is how resuming a job
//! and sharding it will plug in.
//!
//! # What is different from the in-memory path
//!
//! The announced set size is the file's row count, before duplicates are dropped (`dedup`): the
//! peer learns the number of rows rather than of distinct keys. Duplicate keys without `dedup`
//! fail the job when their bucket is reached (the in-memory path fails before the hello). The
//! requester keeps the matched stream positions (4 bytes per match) until it sends them at the
//! end. ECDH-PSI and payload joins keep the in-memory path ([`crate::psi`]).
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use consort_protocols::psi::rr22::{self, BucketSink, BucketSource, ItemHasher, Rr22Config, Rr22Error};
use consort_protocols::psi::{PayloadMode, PsiError};
use consort_protocols::{Channel, cpu};
use rayon::prelude::*;

use crate::csv_rows::{RowScanner, lines_at};
use crate::dataset::{DatasetSpec, FileStamp, changed, open_unchanged, push_key};
use crate::error::{DataError, EngineError};
use crate::keys::KeyArena;
use crate::psi::{PayloadJob, PsiJob, PsiProtocol, PsiReport};
use crate::sealed::{SealedReader, SealedWriter, StorageKey};
use crate::storage::{Access, DataWriter};

/// Most bytes of one spill record ([`put_record`]): digest (16), then LEB128 varints of the row
/// number's step (≤ 5), the row offset's step (≤ 10) and the row length (≤ 5). A typical record
/// is 19–22 bytes (ids-only rows, 10^7–10^9 rows), against 32 with fixed-width fields.
const RECORD: usize = 16 + 5 + 10 + 5;
/// Bytes of one kept position of a responder's order: row offset (8), length (4), number (4).
const KEPT: usize = 16;
/// Rows hashed per parallel block during the scan.
const SCAN_BLOCK: usize = 1 << 16;
/// A row length marking a dummy position in a kept order.
const DUMMY_LEN: u32 = u32::MAX;

/// A dataset to stream: validated and counted, nothing per row kept.
#[derive(Debug, Clone)]
pub struct StreamInput {
    pub spec: DatasetSpec,
    pub columns: Vec<String>,
    /// Data rows in the file (duplicates included): the set size announced.
    pub rows: u64,
    stamp: FileStamp,
    /// A Parquet file ([`crate::parquet_io`]), else CSV.
    parquet: bool,
}

impl StreamInput {
    /// Whether the input is a Parquet file (such jobs stream without resume checkpoints:
    /// [`resume::run_psi_resumable`] takes CSV inputs with whole-row outputs).
    pub fn is_parquet(&self) -> bool {
        self.parquet
    }

    /// The file's size in bytes when it was checked.
    pub fn bytes(&self) -> u64 {
        self.stamp.len
    }

    /// What a registration's full check found, to be kept with the dataset's registration
    /// ([`StreamInput::open_checked`]).
    pub fn record(&self) -> CheckRecord {
        CheckRecord {
            spec: self.spec.clone(),
            stamp: self.stamp.clone(),
            rows: self.rows,
            columns: self.columns.clone(),
            parquet: self.parquet,
        }
    }

    /// The input of `spec` for a job: from `record` (the registration's full check) without
    /// reading the file again when the record is for this very spec and the file's stamp (size,
    /// modification time) is still the record's; else a full check ([`StreamInput::open`]).
    ///
    /// Trusting the record skips nothing a job relies on: the job's scan parses every row and
    /// normalizes its key (a bad row fails it naming the line), and fails if the rows it counts
    /// are not the record's or the stamp changed ([`crate::dataset::changed`]); output rows are
    /// checked as always. What the record saves is the count's pass before the peer is
    /// contacted (the set size is announced first): at 10^9 rows one read of a 12 GB file.
    pub fn open_checked(spec: &DatasetSpec, record: Option<&CheckRecord>) -> Result<StreamInput, DataError> {
        if let Some(r) = record
            && r.spec == *spec
            && r.rows < u32::MAX as u64
        {
            let file = crate::storage::open_regular(&spec.file).map_err(|e| DataError::io(&spec.file, e))?;
            if FileStamp::of(&file, &spec.file)? == r.stamp {
                return Ok(StreamInput {
                    spec: spec.clone(),
                    columns: r.columns.clone(),
                    rows: r.rows,
                    stamp: r.stamp.clone(),
                    parquet: r.parquet,
                });
            }
        }
        Self::open(spec)
    }

    /// Validates every row and counts them, in constant memory (also `dataset add`'s check): the
    /// file must be unchanged (size, modification time) at the end of the pass.
    pub fn open(spec: &DatasetSpec) -> Result<StreamInput, DataError> {
        if crate::parquet_io::is_parquet(&spec.file) {
            let file = crate::storage::open_regular(&spec.file).map_err(|e| DataError::io(&spec.file, e))?;
            let stamp = FileStamp::of(&file, &spec.file)?;
            let checked = file.try_clone().map_err(|e| DataError::io(&spec.file, e))?;
            let (columns, rows) = crate::parquet_io::check(spec, file)?;
            if FileStamp::of(&checked, &spec.file)? != stamp {
                return Err(changed(&spec.file));
            }
            if rows >= u32::MAX as u64 {
                return Err(DataError::file(&spec.file, "more than 2^32 - 2 rows"));
            }
            return Ok(StreamInput { spec: spec.clone(), columns, rows, stamp, parquet: true });
        }
        let mut scanner = RowScanner::open(&spec.file)?;
        let stamp = FileStamp::of(scanner.file(), &spec.file)?;
        let header = spec.read_header(&mut scanner)?;
        let mut keys = KeyArena::new();
        let mut rows = 0u64;
        while let Some(row) = scanner.next_row()? {
            push_key(spec, &header, &row, &mut keys)?;
            rows += 1;
            if keys.len() >= SCAN_BLOCK {
                keys = KeyArena::new();
            }
        }
        if FileStamp::of(scanner.file(), &spec.file)? != stamp {
            return Err(changed(&spec.file));
        }
        if rows >= u32::MAX as u64 {
            return Err(DataError::file(&spec.file, "more than 2^32 - 2 rows"));
        }
        Ok(StreamInput { spec: spec.clone(), columns: header.columns, rows, stamp, parquet: false })
    }
}

/// A registration's full check of a dataset (`dataset add`): the spec it checked, the file's
/// stamp then, its rows and columns. Kept in the node's config with the dataset; a job whose
/// file still has this stamp takes the count from here ([`StreamInput::open_checked`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckRecord {
    spec: DatasetSpec,
    stamp: FileStamp,
    rows: u64,
    columns: Vec<String>,
    parquet: bool,
}

/// Where and how a streaming job spills.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// A directory of its own for this job's spill (created, and removed at the end).
    pub spill_dir: PathBuf,
    /// Target items per bucket (both parties must agree; [`rr22::DEFAULT_BUCKET_SIZE`]).
    pub bucket_size: usize,
}

/// Whether a job runs on the streaming path: RR22 without payloads.
pub fn streams(job: &PsiJob) -> bool {
    job.protocol == PsiProtocol::Rr22 && job.payload == PayloadJob::None
}

/// Removes the spill directory when the job ends, however it ends.
struct SpillDir(PathBuf);

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bucket_path(dir: &Path, b: usize) -> PathBuf {
    dir.join(format!("bucket-{b:07}"))
}

fn order_path(dir: &Path, b: usize) -> PathBuf {
    dir.join(format!("order-{b:07}"))
}

/// What the source and the sink share: the job's spill, the rows of buckets in flight, the first
/// local failure (kept here: the protocol only hears that this side failed).
struct Shared {
    dir: PathBuf,
    key: StorageKey,
    spec: DatasetSpec,
    /// Places of the items of buckets loaded but not finished.
    rows: Mutex<HashMap<usize, Vec<Place>>>,
    failure: Mutex<Option<DataError>>,
    dropped: AtomicU64,
    /// This party writes rows (else a bucket's spill goes as soon as it is read).
    learns: bool,
    /// Bytes of spill on disk now and at most (shared with the row reader's pass files).
    disk: Arc<DiskUse>,
    /// A join that shows this side's unmatched rows: one bit per row (by row number), set for
    /// rows matched or dropped as duplicates; the rest are written after the buckets.
    done: Option<Mutex<Vec<u64>>>,
    /// Rows matched so far (the intersection's size).
    matched: AtomicU64,
    /// The intersection's rows go to the output (not for `difference`).
    writes_matched: bool,
    /// A resumable job ([`resume`]): a bucket's spill stays until both sides recorded its range,
    /// and each bucket's matches are written in digest order (see [`resume`]).
    keeps: bool,
    /// A resumable job's learning side: the digests of buckets loaded but not finished.
    digests: Mutex<HashMap<usize, Vec<u128>>>,
}

/// A row's place in the input: file offset, length (terminator included), row number.
type Place = (u64, u32, u32);

/// A job's temporary disk: the bytes of its spill directory's files now and at most (the job
/// report's `peak_temp_bytes`).
#[derive(Default)]
struct DiskUse {
    now: AtomicU64,
    peak: AtomicU64,
}

impl DiskUse {
    fn add(&self, bytes: u64) {
        let now = self.now.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Removes the file at `path` (if there) and takes its bytes off the account.
    fn remove(&self, path: &Path) {
        if let Ok(meta) = std::fs::metadata(path) {
            self.now.fetch_sub(meta.len().min(self.now.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
        let _ = std::fs::remove_file(path);
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

fn set_bits(bits: &mut [u64], rows: impl Iterator<Item = u32>) -> Result<(), DataError> {
    for r in rows {
        let word =
            bits.get_mut(r as usize / 64).ok_or_else(|| DataError::Invalid("a row number out of range".into()))?;
        *word |= 1 << (r % 64);
    }
    Ok(())
}

impl Shared {
    fn fail(&self, e: DataError) -> Rr22Error {
        let mut slot = self.failure.lock().expect("not poisoned");
        slot.get_or_insert(e);
        Rr22Error::Input("this party's input or spill failed (its operator sees why)".into())
    }

    fn added(&self, bytes: u64) {
        self.disk.add(bytes);
    }

    fn remove(&self, path: &Path) {
        self.disk.remove(path);
    }

    /// Where a row reader's pass files go: this spill directory, counted in its disk.
    fn pass_dir(&self) -> rows::PassDir {
        rows::PassDir { dir: self.dir.clone(), disk: self.disk.clone() }
    }

    /// Bucket `b`'s kept order (a responder's, [`SpillSink::keep_order`]): each stream position's
    /// row ([`DUMMY_LEN`] for a dummy) and, on a learning side, its digest.
    fn read_order(&self, b: usize) -> Result<(Vec<Place>, Vec<u128>), DataError> {
        let path = order_path(&self.dir, b);
        let bytes = self.read_sealed(&path)?;
        let kept = if self.learns { KEPT + 16 } else { KEPT };
        if !bytes.len().is_multiple_of(kept) {
            return Err(DataError::file(&path, "spill file damaged"));
        }
        let digests = match self.learns {
            true => bytes.chunks_exact(kept).map(|r| u128::from_le_bytes(r[KEPT..].try_into().expect("16"))).collect(),
            false => Vec::new(),
        };
        let places = bytes
            .chunks_exact(kept)
            .map(|r| {
                (
                    u64::from_le_bytes(r[..8].try_into().expect("8")),
                    u32::from_le_bytes(r[8..12].try_into().expect("4")),
                    u32::from_le_bytes(r[12..16].try_into().expect("4")),
                )
            })
            .collect();
        Ok((places, digests))
    }

    fn read_sealed(&self, path: &Path) -> Result<Vec<u8>, DataError> {
        let mut bytes = Vec::new();
        SealedReader::open(path, &self.key)
            .and_then(|mut r| r.read_to_end(&mut bytes))
            .map_err(|e| DataError::io(path, e))?;
        Ok(bytes)
    }
}

/// The last row written to a bucket's spill: (offset, row number). Records of a bucket are in
/// file order, so each record stores its row's steps from the previous one, which are small (a
/// bucket gets about every B-th row).
type Last = (u64, u32);

/// Appends one spill record to `out`: the digest (16 bytes, little endian), then LEB128 varints
/// (prost's) of the row number's and the row offset's step from `last` (both rows of the same
/// bucket, in file order) and of the row's length; updates `last`. Rows out of file order are an
/// internal error (the scans push rows in order).
fn put_record(out: &mut Vec<u8>, last: &mut Last, digest: u128, place: Place) -> Result<(), DataError> {
    let (offset, len, number) = place;
    let (Some(offset_step), Some(number_step)) = (offset.checked_sub(last.0), number.checked_sub(last.1)) else {
        return Err(DataError::Invalid("spill records out of file order".into()));
    };
    out.extend_from_slice(&digest.to_le_bytes());
    prost::encoding::encode_varint(u64::from(number_step), out);
    prost::encoding::encode_varint(offset_step, out);
    prost::encoding::encode_varint(u64::from(len), out);
    *last = (offset, number);
    Ok(())
}

/// Decodes a bucket's spill records ([`put_record`]); `None` if they are malformed.
fn read_records(mut bytes: &[u8]) -> Option<(Vec<u128>, Vec<Place>)> {
    let mut digests = Vec::with_capacity(bytes.len() / 20);
    let mut places = Vec::with_capacity(bytes.len() / 20);
    let mut last: Last = (0, 0);
    while !bytes.is_empty() {
        let (digest, rest) = bytes.split_first_chunk::<16>()?;
        bytes = rest;
        let mut varint = || prost::encoding::decode_varint(&mut bytes).ok();
        let number = last.1.checked_add(u32::try_from(varint()?).ok()?)?;
        let offset = last.0.checked_add(varint()?)?;
        let len = u32::try_from(varint()?).ok()?;
        digests.push(u128::from_le_bytes(*digest));
        places.push((offset, len, number));
        last = (offset, number);
    }
    Some((digests, places))
}

/// Reads buckets back from their spill files.
struct SpillSource(Arc<Shared>);

impl BucketSource for SpillSource {
    fn bucket(&self, b: usize) -> Result<(Vec<u128>, Vec<u32>), Rr22Error> {
        let s = &self.0;
        let (digests, rows, dropped) = s.read_bucket(b).map_err(|e| s.fail(e))?;
        if !dropped.is_empty() {
            if let Some(done) = &s.done {
                set_bits(&mut done.lock().expect("not poisoned"), dropped.iter().copied()).map_err(|e| s.fail(e))?;
            }
            s.dropped.fetch_add(dropped.len() as u64, Ordering::Relaxed);
        }
        let ids = (0..digests.len() as u32).collect();
        if s.learns {
            // The digests a learning side's output rows are checked against (see `rows`).
            s.digests.lock().expect("not poisoned").insert(b, digests.clone());
            s.rows.lock().expect("not poisoned").insert(b, rows);
        } else if !s.keeps {
            s.remove(&bucket_path(&s.dir, b));
        }
        Ok((digests, ids))
    }
}

/// A bucket's items as loaded ([`Shared::read_bucket`]): their digests and places, and the row
/// numbers dropped as duplicate keys.
type LoadedBucket = (Vec<u128>, Vec<Place>, Vec<u32>);

impl Shared {
    /// Bucket `b`'s items from its spill, in file order, duplicates of a key dropped (the first
    /// row of each key kept: the smallest offset) when the dataset allows them, else refused with
    /// an error naming both lines: each kept item's digest and place, and the row numbers
    /// dropped. No side effect, so a resumable requester's segment can be rebuilt from the
    /// same bucket ([`resume`]): the indices the protocol matched are indices into this list.
    fn read_bucket(&self, b: usize) -> Result<LoadedBucket, DataError> {
        let path = bucket_path(&self.dir, b);
        let bytes = self.read_sealed(&path)?;
        let (mut digests, mut rows) =
            read_records(&bytes).ok_or_else(|| DataError::file(&path, "spill file damaged"))?;
        drop(bytes);
        // Duplicate keys share a digest, hence a bucket: found here, in file order.
        let repeats = repeated_digests(&digests);
        if repeats.is_empty() {
            return Ok((digests, rows, Vec::new()));
        }
        if !self.spec.dedup {
            let &(first, again) = repeats.iter().min_by_key(|&&(_, r)| rows[r as usize].0).expect("one");
            let lines = lines_at(&self.spec.file, &[rows[first as usize].0, rows[again as usize].0])?;
            return Err(DataError::DuplicateKey {
                path: self.spec.file.clone(),
                columns: self.spec.keys.iter().map(|k| k.trim().to_string()).collect(),
                first_line: lines[0],
                line: lines[1],
                more: 0,
            });
        }
        // Keep the first row of each key (the smallest offset: records are in file order).
        let mut drop_row = vec![false; digests.len()];
        for &(_, again) in &repeats {
            drop_row[again as usize] = true;
        }
        let dropped = repeats.iter().map(|&(_, again)| rows[again as usize].2).collect();
        let mut keep = drop_row.iter().map(|d| !d);
        digests.retain(|_| keep.next().expect("one flag each"));
        let mut keep = drop_row.iter().map(|d| !d);
        rows.retain(|_| keep.next().expect("one flag each"));
        Ok((digests, rows, dropped))
    }
}

/// Pairs `(first, again)` of indices of equal digests: within each group of equal digests, every
/// index with the next larger one. Almost every bucket has none, so that is checked first in
/// linear time ([`any_repeat`]); only a bucket with a repeat pays for the sort by digest.
fn repeated_digests(digests: &[u128]) -> Vec<(u32, u32)> {
    if !any_repeat(digests) {
        return Vec::new();
    }
    let mut by_digest: Vec<u32> = (0..digests.len() as u32).collect();
    by_digest.par_sort_unstable_by_key(|&k| (digests[k as usize], k));
    by_digest.windows(2).filter(|w| digests[w[0] as usize] == digests[w[1] as usize]).map(|w| (w[0], w[1])).collect()
}

/// Whether two of `digests` are equal, in linear time: a counting sort spreads them over bins of
/// about four by their low bits (SHA-256 outputs: uniform; equal digests share a bin), and each
/// bin is then sorted alone and its neighbours compared.
fn any_repeat(digests: &[u128]) -> bool {
    let bins = (digests.len() / 4).max(1).next_power_of_two();
    let bin = |d: u128| d as usize & (bins - 1);
    let mut ends = vec![0u32; bins + 1];
    for &d in digests {
        ends[bin(d) + 1] += 1;
    }
    for b in 0..bins {
        ends[b + 1] += ends[b];
    }
    let mut next = ends.clone();
    let mut spread = vec![0u128; digests.len()];
    for &d in digests {
        let at = &mut next[bin(d)];
        spread[*at as usize] = d;
        *at += 1;
    }
    ends.windows(2).any(|w| {
        let group = &mut spread[w[0] as usize..w[1] as usize];
        group.sort_unstable();
        group.windows(2).any(|p| p[0] == p[1])
    })
}

/// A bucket's rows to append to the output, in the joint order, each with the digest it was
/// matched by (the output checks the row's key against it: [`rows`]).
type RowBatch = Vec<(u128, Place)>;

/// Hands finished buckets to the output writer and keeps the responder's orders.
struct SpillSink {
    shared: Arc<Shared>,
    writer: Option<std::sync::mpsc::SyncSender<RowBatch>>,
    /// The responder's current bucket, by stream position (from its kept order).
    positions: Vec<Place>,
    /// A resumable job's responder: the digests of `positions`.
    position_digests: Vec<u128>,
    /// A resumable job's learning responder: its matches go to the range's sealed positions,
    /// not to a writer; its segment is written from them once the range is recorded ([`resume`]).
    deferred: Option<Deferred>,
    /// A deferred sink without a join bitmap: each kept bucket's dummy positions (one bit per
    /// stream position, and the order's length), so the matched positions are checked and
    /// recorded the moment they arrive without reading the bucket's sealed order back (the
    /// background segment writer reads it). ~1 bit per item of the range in memory.
    dummies: std::collections::HashMap<usize, (usize, Vec<u64>)>,
}

/// Where a learning responder of a resumable job puts a range's matches ([`SpillSink`]).
struct Deferred {
    /// The range's sealed positions file (`positions-R`), finished when the range's run ends.
    out: std::io::BufWriter<SealedWriter>,
    path: PathBuf,
    /// Rows the range's segment will hold.
    rows: u64,
}

impl SpillSink {
    /// A sink writing matched rows to `writer`; `deferred`: a resumable job's learning responder.
    fn new(
        shared: Arc<Shared>,
        writer: Option<std::sync::mpsc::SyncSender<RowBatch>>,
        deferred: Option<Deferred>,
    ) -> SpillSink {
        let (positions, position_digests, dummies) = (Vec::new(), Vec::new(), Default::default());
        SpillSink { shared, writer, positions, position_digests, deferred, dummies }
    }

    /// Whether the matched positions need only the dummy bits kept in memory ([`Self::dummies`]):
    /// a deferred sink with no join bitmap (which needs the row numbers from the order).
    fn orders_in_memory(&self) -> bool {
        self.deferred.is_some() && self.shared.done.is_none()
    }

    /// A learning responder of a resumable job: bucket `b`'s matches (stream positions within
    /// the bucket) are counted, marked in the join's bitmap and appended to the range's sealed
    /// positions; their rows are written after the range is recorded.
    fn defer(&mut self, b: usize, ids: Vec<u32>) -> Result<(), Rr22Error> {
        let s = self.shared.clone();
        // The requester: `ids` index its bucket's items as loaded (`Shared::read_bucket`).
        let stashed = s.rows.lock().expect("not poisoned").remove(&b);
        if let Some(rows) = stashed {
            s.digests.lock().expect("not poisoned").remove(&b);
            let numbers = ids
                .iter()
                .map(|&i| rows.get(i as usize).map(|row| row.2))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| s.fail(DataError::Invalid(format!("bucket {b}: a match without a row"))))?;
            if let Some(done) = &s.done {
                set_bits(&mut done.lock().expect("not poisoned"), numbers.into_iter()).map_err(|e| s.fail(e))?;
            }
        } else if !self.orders_in_memory() {
            // With the orders in memory the positions were checked against the dummy bits by the
            // protocol (a dummy is skipped there, as ever) and there is no bitmap to mark; the
            // rows are checked again when the segment is written.
            let numbers = ids
                .iter()
                .map(|&p| self.positions.get(p as usize).filter(|row| row.1 != DUMMY_LEN).map(|row| row.2))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| s.fail(DataError::Invalid(format!("bucket {b}: a match without a row"))))?;
            self.positions = Vec::new();
            self.position_digests = Vec::new();
            if let Some(done) = &s.done {
                set_bits(&mut done.lock().expect("not poisoned"), numbers.into_iter()).map_err(|e| s.fail(e))?;
            }
        }
        s.matched.fetch_add(ids.len() as u64, Ordering::Relaxed);
        let d = self.deferred.as_mut().expect("deferred");
        if s.writes_matched {
            d.rows += ids.len() as u64;
        }
        resume::put_positions(&mut d.out, b, &ids).map_err(|e| s.fail(DataError::io(&d.path, e)))
    }

    fn send(&mut self, rows: RowBatch) -> Result<(), Rr22Error> {
        let s = self.shared.clone();
        match &self.writer {
            Some(w) => w.send(rows).map_err(|_| s.fail(DataError::Invalid("the output writer stopped".into()))),
            None => Ok(()),
        }
    }
}

impl BucketSink for SpillSink {
    fn matched(&mut self, b: usize, ids: Vec<u32>) -> Result<(), Rr22Error> {
        let s = self.shared.clone();
        if !s.learns {
            return Ok(());
        }
        if self.deferred.is_some() {
            return self.defer(b, ids);
        }
        let stashed = s.rows.lock().expect("not poisoned").remove(&b);
        let rows = match &stashed {
            Some(rows) => ids.iter().map(|&i| rows.get(i as usize).copied()).collect::<Option<Vec<_>>>(),
            // The responder: ids are stream positions of the order taken last.
            None => ids
                .iter()
                .map(|&p| self.positions.get(p as usize).copied().filter(|row| row.1 != DUMMY_LEN))
                .collect::<Option<Vec<_>>>(),
        }
        .ok_or_else(|| s.fail(DataError::Invalid(format!("bucket {b}: a match without a row"))))?;
        let digests = match &stashed {
            Some(_) => s.digests.lock().expect("not poisoned").remove(&b).unwrap_or_default(),
            None => std::mem::take(&mut self.position_digests),
        };
        let mut rows: RowBatch = ids
            .iter()
            .zip(rows)
            .map(|(&i, row)| digests.get(i as usize).map(|&d| (d, row)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| s.fail(DataError::Invalid(format!("bucket {b}: a match without a digest"))))?;
        drop(digests);
        if s.keeps {
            // A resumable job's order within a bucket: by digest (equal on both sides for a
            // match, fixed by the salt alone), so a range run again writes the same bytes.
            rows.par_sort_unstable_by_key(|&(d, row)| (d, row.2));
        }
        if !s.keeps {
            s.remove(&bucket_path(&s.dir, b));
            s.remove(&order_path(&s.dir, b));
        }
        self.positions = Vec::new();
        s.matched.fetch_add(rows.len() as u64, Ordering::Relaxed);
        if let Some(done) = &s.done {
            set_bits(&mut done.lock().expect("not poisoned"), rows.iter().map(|r| r.1.2)).map_err(|e| s.fail(e))?;
        }
        if !s.writes_matched {
            return Ok(());
        }
        self.send(rows)
    }

    fn keep_order(&mut self, b: usize, order: Vec<u32>) -> Result<(), Rr22Error> {
        let s = self.shared.clone();
        let rows = s.rows.lock().expect("not poisoned").remove(&b).unwrap_or_default();
        if self.orders_in_memory() {
            let mut bits = vec![0u64; order.len().div_ceil(64)];
            let dummies = (0..order.len() as u32).filter(|&p| order[p as usize] as usize >= rows.len());
            set_bits(&mut bits, dummies).map_err(|e| s.fail(e))?;
            self.dummies.insert(b, (order.len(), bits));
        }
        let digests = if s.learns { s.digests.lock().expect("not poisoned").remove(&b) } else { None };
        let path = order_path(&s.dir, b);
        let written = (|| -> std::io::Result<u64> {
            let mut w =
                std::io::BufWriter::with_capacity(1 << 16, SealedWriter::create(&path, &s.key, Access::OwnerOnly)?);
            for &k in &order {
                let (offset, len, number) = rows.get(k as usize).copied().unwrap_or((0, DUMMY_LEN, 0));
                w.write_all(&offset.to_le_bytes())?;
                w.write_all(&len.to_le_bytes())?;
                w.write_all(&number.to_le_bytes())?;
                if s.learns {
                    let digest = digests.as_ref().and_then(|d| d.get(k as usize)).copied().unwrap_or(0);
                    w.write_all(&digest.to_le_bytes())?;
                }
            }
            w.into_inner().map_err(|e| e.into_error())?.finish()?;
            Ok(std::fs::metadata(&path)?.len())
        })()
        .map_err(|e| s.fail(DataError::io(&path, e)))?;
        s.added(written);
        if !s.keeps {
            s.remove(&bucket_path(&s.dir, b));
        }
        Ok(())
    }

    fn take_order(&mut self, b: usize) -> Result<Vec<u32>, Rr22Error> {
        let s = self.shared.clone();
        if self.orders_in_memory() {
            let (len, bits) = self
                .dummies
                .remove(&b)
                .ok_or_else(|| s.fail(DataError::Invalid(format!("bucket {b}: no order kept"))))?;
            return Ok((0..len as u32)
                .map(|p| if bits[p as usize / 64] >> (p % 64) & 1 == 1 { u32::MAX } else { p })
                .collect());
        }
        (self.positions, self.position_digests) = s.read_order(b).map_err(|e| s.fail(e))?;
        Ok((0..self.positions.len() as u32)
            .map(|p| if self.positions[p as usize].1 == DUMMY_LEN { u32::MAX } else { p })
            .collect())
    }
}

/// Figures of a streaming job, besides the report's stages.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamFigures {
    /// Most bytes of temporary files at once (snapshot and spill).
    pub peak_temp_bytes: u64,
    /// Rows dropped as duplicate keys (`dedup`).
    pub duplicates_dropped: u64,
}

/// Runs this party's side of an RR22 PSI job from disk ([`streams`] must hold for `job`) and
/// writes the output bucket by bucket into a temp file renamed at the end.
pub async fn run_psi_streaming<C: Channel>(
    channel: &C,
    input: &StreamInput,
    job: &PsiJob,
    options: &StreamOptions,
) -> Result<(PsiReport, StreamFigures), EngineError> {
    run_streaming_observed(channel, input, job, options, None).await
}

/// A failure injected by tests after this many buckets were written.
type FailAfter = Option<usize>;

async fn run_streaming_observed<C: Channel>(
    channel: &C,
    input: &StreamInput,
    job: &PsiJob,
    options: &StreamOptions,
    fail_after: FailAfter,
) -> Result<(PsiReport, StreamFigures), EngineError> {
    if !streams(job) {
        return Err(DataError::Invalid("only RR22 jobs without payloads stream".into()).into());
    }
    let config = Rr22Config {
        role: job.role,
        reveal: job.reveal,
        progress: job.progress.clone(),
        bucket_size: options.bucket_size,
        max_peer_items: job.limits.max_peer_rows,
        payload: PayloadMode::None,
    };
    let psi_err = |e: Rr22Error| EngineError::Psi(PsiError::Rr22(e));
    let session = rr22::start(channel, input.rows as usize, &config).await.map_err(psi_err)?;
    let learns = session.learns() && job.output.is_some();
    let mut stages = Vec::new();
    // Scan, digest, spill.
    let started = Instant::now();
    std::fs::create_dir_all(&options.spill_dir).map_err(|e| DataError::io(&options.spill_dir, e))?;
    let guard = SpillDir(options.spill_dir.clone());
    let key = StorageKey::generate().map_err(|e| DataError::io(&options.spill_dir, e))?;
    let shared = new_shared(&options.spill_dir, key, input, job, learns, false);
    let scan = {
        let (input, shared, hasher, cap) = (input.clone(), shared.clone(), session.hasher(), session.own_capacity());
        let buckets = session.layout.buckets;
        let keys_only = job.columns == crate::psi::OutputColumns::Keys;
        cpu::run(move || scan(&input, &shared, &hasher, buckets, cap, learns, keys_only)).await
    };
    let Scanned { snapshot, header, terminator, parquet, columns } = match scan {
        Ok(s) => s,
        // The caller closes the channel: the peer hears only that this side failed.
        Err(e) => return Err(e.into()),
    };
    stages.push(("scan".to_string(), started.elapsed().as_secs_f64()));
    // The writer: one thread appending finished buckets' rows to the output's temp file.
    let started = Instant::now();
    // The rows a learning side copies out: its row store (Parquet), its key-column CSV
    // (`--output keys`), else the input itself, opened again under the job's stamp.
    let rows_file = match (&snapshot, learns) {
        (Some(f), _) => Some(f.try_clone().map_err(|e| DataError::io(&options.spill_dir, e))?),
        (None, true) if parquet.is_none() => Some(open_unchanged(&input.spec.file, &input.stamp)?),
        (None, _) => None,
    };
    let tail_input = match &rows_file {
        Some(f) => Some(f.try_clone().map_err(|e| DataError::io(&options.spill_dir, e))?),
        None => None,
    };
    // The input, whose stamp is checked again before the output is renamed into place.
    let stamped = match (&snapshot, &rows_file) {
        (None, Some(f)) => Some(f.try_clone().map_err(|e| DataError::io(&input.spec.file, e))?),
        _ => None,
    };
    let tagged = job.join.tagged();
    let (writer, rows_tx) = match (learns, &job.output) {
        (true, Some(out)) => {
            let (tx, rx) = std::sync::mpsc::sync_channel::<RowBatch>(2);
            let (out, at_rest) = (out.clone(), job.at_rest.clone());
            let file = rows_file.expect("a learning party has its rows");
            let header = header.clone();
            let parquet = parquet.clone();
            let reader = match parquet {
                Some(_) => None,
                None => Some(rows::RowReader::from_file(
                    file.try_clone().map_err(|e| DataError::io(out.as_path(), e))?,
                    &input.spec,
                    session.hasher(),
                    shared.pass_dir(),
                )?),
            };
            let handle = std::thread::Builder::new()
                .name("psi-output".into())
                .spawn(move || match (parquet, reader) {
                    (Some(schema), _) => write_rows_parquet(&file, &schema, tagged, &out, &at_rest, rx, fail_after),
                    (None, Some(reader)) => {
                        write_rows(reader, &header, terminator, tagged, &out, &at_rest, rx, fail_after)
                    }
                    (None, None) => Err(DataError::Invalid("no rows to write".into())),
                })
                .map_err(|e| DataError::Invalid(format!("cannot start the output writer: {e}")))?;
            (Some(handle), Some(tx))
        }
        _ => (None, None),
    };
    let source: Arc<dyn BucketSource> = Arc::new(SpillSource(shared.clone()));
    let mut sink = SpillSink::new(shared.clone(), rows_tx, None);
    let all = 0..session.layout.buckets;
    let run = rr22::run_buckets(channel, &session, source, &mut sink, all).await;
    drop(sink);
    let protocol_secs = started.elapsed().as_secs_f64();
    // The writer's result first: a failed write ends the protocol with a local error.
    let started = Instant::now();
    let written = match writer {
        Some(h) => Some(h.join().map_err(|_| DataError::Invalid("the output writer panicked".into()))?),
        None => None,
    };
    let written = match written {
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(w)) => Some(w),
        None => None,
    };
    if let Some(e) = shared.failure.lock().expect("not poisoned").take() {
        return Err(e.into());
    }
    let done = run.map_err(psi_err)?;
    stages.push(("protocol".to_string(), protocol_secs));
    stages.extend(done.timings.iter().map(|&(step, secs)| (format!("protocol/{step}"), secs)));
    let matched = shared.matched.load(Ordering::Relaxed);
    let (sections, done_bits) = tail_sections(channel, job, &session, &shared, input.rows).await?;
    let (mut output, mut output_rows) = (None, 0);
    if let Some(written) = written {
        let (mut pending, mut rows) = written;
        if !sections.is_empty() {
            let (file, spec) = (tail_input.expect("a learning party snapshots"), input.spec.clone());
            let parquet = parquet.is_some();
            let bits = done_bits.unwrap_or_default();
            let sections = sections.clone();
            let out = job.output.clone().expect("learns");
            let (w, tail) = cpu::run(move || {
                write_tail(file, &spec, pending, &bits, &sections, columns, tagged, terminator, parquet).map_err(|e| {
                    match e {
                        TailError::Data(d) => d,
                        TailError::Io(e) => DataError::io(&out, e),
                    }
                })
            })
            .await?;
            pending = w;
            rows += tail;
        }
        if let Some(f) = &stamped
            && FileStamp::of(f, &input.spec.file)? != input.stamp
        {
            return Err(changed(&input.spec.file).into());
        }
        let out = job.output.clone().expect("learns");
        cpu::run(move || pending.finish()).await.map_err(|e| DataError::io(&out, e))?;
        output = job.output.clone();
        output_rows = rows;
        stages.push(("output".to_string(), started.elapsed().as_secs_f64()));
    }
    let figures = StreamFigures {
        peak_temp_bytes: shared.disk.peak(),
        duplicates_dropped: shared.dropped.load(Ordering::Relaxed),
    };
    drop(guard);
    let report = PsiReport {
        local_rows: input.rows - figures.duplicates_dropped,
        peer_rows: session.peer_size,
        intersection: session.learns().then_some(matched),
        output,
        output_rows,
        stages,
        ecdh_evidence: None,
    };
    Ok((report, figures))
}

/// What the scan leaves for the output.
struct Scanned {
    /// The learning party's rows to copy out: the private snapshot of a CSV input, a CSV of the
    /// key columns (`--output keys`), or a Parquet input's row store ([`crate::parquet_io`]).
    snapshot: Option<File>,
    /// The CSV output's header line (the snapshot's first line).
    header: Vec<u8>,
    /// The CSV file's line terminator.
    terminator: &'static [u8],
    /// A Parquet input: the row store's columns (the output's schema, before `_side`).
    parquet: Option<arrow_schema::SchemaRef>,
    /// Columns of an output row (placeholders have this many fields).
    columns: usize,
}

/// Hashes blocks of keys and appends their records to the bucket spill files.
struct Spiller<'a> {
    shared: &'a Shared,
    hasher: &'a ItemHasher,
    cap: usize,
    writers: Vec<std::io::BufWriter<SealedWriter>>,
    /// Each bucket's last row written ([`put_record`]).
    last: Vec<Last>,
    record: Vec<u8>,
    fill: Vec<usize>,
    keys: KeyArena,
    places: Vec<Place>,
}

impl<'a> Spiller<'a> {
    fn new(shared: &'a Shared, hasher: &'a ItemHasher, buckets: usize, cap: usize) -> Result<Self, DataError> {
        let writers = (0..buckets)
            .map(|b| {
                let path = bucket_path(&shared.dir, b);
                SealedWriter::create(&path, &shared.key, Access::OwnerOnly)
                    .map(|w| std::io::BufWriter::with_capacity(RECORD * 1024, w))
                    .map_err(|e| DataError::io(&path, e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Spiller {
            shared,
            hasher,
            cap,
            writers,
            last: vec![(0, 0); buckets],
            record: Vec::with_capacity(RECORD),
            fill: vec![0; buckets],
            keys: KeyArena::with_capacity(SCAN_BLOCK, SCAN_BLOCK * 16),
            places: Vec::with_capacity(SCAN_BLOCK),
        })
    }

    /// Digests the keys pushed so far (one per place) and spills them.
    fn flush(&mut self) -> Result<(), DataError> {
        let (keys, hasher) = (&self.keys, self.hasher);
        let digests: Vec<u128> = (0..keys.len()).into_par_iter().map(|k| hasher.digest(keys.get(k))).collect();
        for (d, &(offset, len, number)) in digests.iter().zip(self.places.iter()) {
            let b = self.hasher.bucket_of(*d);
            self.fill[b] += 1;
            if self.fill[b] > self.cap {
                return Err(DataError::Invalid(format!(
                    "bucket {b} gets more than its capacity of {} items; the job cannot hide bucket sizes",
                    self.cap
                )));
            }
            self.record.clear();
            put_record(&mut self.record, &mut self.last[b], *d, (offset, len, number))?;
            self.writers[b].write_all(&self.record).map_err(|e| DataError::io(bucket_path(&self.shared.dir, b), e))?;
        }
        self.keys = KeyArena::with_capacity(SCAN_BLOCK, SCAN_BLOCK * 16);
        self.places.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(), DataError> {
        self.flush()?;
        for (b, w) in self.writers.into_iter().enumerate() {
            let path = bucket_path(&self.shared.dir, b);
            w.into_inner().map_err(|e| e.into_error()).and_then(|w| w.finish()).map_err(|e| DataError::io(&path, e))?;
            self.shared.added(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
        }
        Ok(())
    }
}

/// The scan: every row's digest and place into its bucket's sealed spill file. A learning
/// party scans a private snapshot of its input (returned, for the output) so the rows it copies
/// out later are the rows it hashed; with `keys_only` (or a Parquet input) the snapshot it
/// writes holds only what the output copies, written in the same pass as the rows are hashed.
fn scan(
    input: &StreamInput,
    shared: &Shared,
    hasher: &ItemHasher,
    buckets: usize,
    cap: usize,
    learns: bool,
    keys_only: bool,
) -> Result<Scanned, DataError> {
    let mut spill = Spiller::new(shared, hasher, buckets, cap)?;
    let scanned = if input.parquet {
        scan_parquet(input, &mut spill, learns, keys_only)?
    } else {
        scan_csv(input, &mut spill, learns, keys_only)?
    };
    spill.finish()?;
    Ok(scanned)
}

fn scan_csv(input: &StreamInput, spill: &mut Spiller, learns: bool, keys_only: bool) -> Result<Scanned, DataError> {
    let spec = &input.spec;
    let shared = spill.shared;
    let source = open_unchanged(&spec.file, &input.stamp)?;
    // No snapshot: a learning side copies its rows from the input itself, checking each row's
    // key against the digest it was matched by and the file's stamp ([`rows`]).
    let mut scanner = RowScanner::from_file(&spec.file, source);
    let header = spec.read_header(&mut scanner)?;
    let terminator: &'static [u8] = if header.raw.ends_with(b"\r\n") { b"\r\n" } else { b"\n" };
    // `--output keys`: the snapshot is a CSV of the key columns (file order), written here.
    let mut key_positions = header.key_positions.clone();
    key_positions.sort_unstable();
    let mut keys_out = None;
    let mut key_header = Vec::new();
    if learns && keys_only {
        let names: Vec<&[u8]> = key_positions.iter().map(|&c| header.columns[c].as_bytes()).collect();
        crate::payload::write_fields(&mut key_header, &names);
        key_header.extend_from_slice(terminator);
        let file = tempfile::tempfile_in(&shared.dir).map_err(|e| DataError::io(&shared.dir, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
        w.write_all(&key_header).map_err(|e| DataError::io(&shared.dir, e))?;
        keys_out = Some((w, key_header.len() as u64));
    }
    let mut rows = 0u64;
    let mut line = Vec::new();
    while let Some(row) = scanner.next_row()? {
        push_key(spec, &header, &row, &mut spill.keys)?;
        let mut place = (row.start, row.raw.len() as u32, rows as u32);
        if let Some((w, offset)) = &mut keys_out {
            line.clear();
            let fields: Vec<&[u8]> = key_positions.iter().map(|&c| row.field(c)).collect();
            crate::payload::write_fields(&mut line, &fields);
            line.extend_from_slice(terminator);
            w.write_all(&line).map_err(|e| DataError::io(&shared.dir, e))?;
            place = (*offset, line.len() as u32, rows as u32);
            *offset += line.len() as u64;
        }
        spill.places.push(place);
        rows += 1;
        if spill.places.len() == SCAN_BLOCK {
            spill.flush()?;
        }
    }
    if rows != input.rows {
        return Err(changed(&spec.file));
    }
    let (snapshot, raw, columns) = match keys_out {
        Some((w, size)) => {
            let mut file = w.into_inner().map_err(|e| DataError::io(&shared.dir, e.into_error()))?;
            file.seek(std::io::SeekFrom::Start(0)).map_err(|e| DataError::io(&shared.dir, e))?;
            shared.added(size);
            (Some(file), key_header, key_positions.len())
        }
        None => {
            if FileStamp::of(scanner.file(), &spec.file)? != input.stamp {
                return Err(changed(&spec.file));
            }
            (None, header.raw, header.columns.len())
        }
    };
    Ok(Scanned { snapshot, header: raw, terminator, parquet: None, columns })
}

/// [`scan_csv`] for a Parquet input: row group by row group; a learning party writes the rows
/// (or their key columns) to a row store, in the same pass.
fn scan_parquet(input: &StreamInput, spill: &mut Spiller, learns: bool, keys_only: bool) -> Result<Scanned, DataError> {
    use crate::parquet_io::{Columns, ParquetRows, converter, store_batch};
    let spec = &input.spec;
    let shared = spill.shared;
    let source = open_unchanged(&spec.file, &input.stamp)?;
    let projection = if learns && !keys_only { Columns::All } else { Columns::Keys };
    let mut reader = ParquetRows::open(spec, source, projection)?;
    let schema = reader.batch_schema.clone();
    let mut store = None;
    if learns {
        let file = tempfile::tempfile_in(&shared.dir).map_err(|e| DataError::io(&shared.dir, e))?;
        store = Some((converter(&spec.file, &schema)?, std::io::BufWriter::with_capacity(1 << 16, file), 0u64));
    }
    let mut rows = 0u64;
    while let Some((first, batch)) = reader.next_batch(spec, &mut spill.keys)? {
        let n = batch.num_rows();
        match &mut store {
            Some((conv, w, offset)) => {
                let mut number = first as u32;
                let places = &mut spill.places;
                *offset = store_batch(conv, &batch, w, *offset, |at, len| {
                    places.push((at, len, number));
                    number += 1;
                })
                .map_err(|e| DataError::io(&shared.dir, e))?;
            }
            None => spill.places.extend((0..n as u32).map(|i| (0, 0, first as u32 + i))),
        }
        rows += n as u64;
        spill.flush()?;
    }
    let source = open_unchanged(&spec.file, &input.stamp);
    if rows != input.rows || source.is_err() {
        return Err(changed(&spec.file));
    }
    let snapshot = match store {
        Some((_, w, size)) => {
            let file = w.into_inner().map_err(|e| DataError::io(&shared.dir, e.into_error()))?;
            shared.added(size);
            Some(file)
        }
        None => None,
    };
    let columns = schema.fields().len();
    Ok(Scanned { snapshot, header: Vec::new(), terminator: b"\n", parquet: Some(schema), columns })
}

/// The output's temp file, CSV or Parquet, until it is renamed into place.
enum Pending {
    Csv(DataWriter),
    Parquet(Box<crate::parquet_io::ParquetOut>),
}

impl Pending {
    fn finish(self) -> std::io::Result<PathBuf> {
        match self {
            Pending::Csv(w) => w.finish(),
            Pending::Parquet(w) => w.finish(),
        }
    }
}

/// [`write_rows`] for a Parquet input: each finished bucket's rows decoded from the row store.
fn write_rows_parquet(
    store: &File,
    schema: &arrow_schema::Schema,
    tagged: bool,
    out: &Path,
    at_rest: &crate::storage::AtRest,
    batches: std::sync::mpsc::Receiver<RowBatch>,
    fail_after: FailAfter,
) -> Result<(Pending, u64), DataError> {
    let mut w = crate::parquet_io::ParquetOut::create(out, at_rest, schema, tagged)?;
    // SAFETY: the map is only read, and it maps our private, unlinked row store.
    let map = unsafe { memmap2::Mmap::map(store) }.map_err(|e| DataError::io(out, e))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    let side = tagged.then_some(crate::join::Side::Both);
    let mut rows = 0u64;
    for (buckets, batch) in batches.into_iter().enumerate() {
        if fail_after == Some(buckets) {
            return Err(DataError::Invalid("injected failure".into()));
        }
        let places: Vec<(u64, u32)> = batch.iter().map(|&(_, (offset, len, _))| (offset, len)).collect();
        w.write_rows(&map, &places, side)?;
        rows += batch.len() as u64;
    }
    Ok((Pending::Parquet(Box::new(w)), rows))
}

/// The output writer: the header, then each finished bucket's rows copied from the input (or
/// the key-column CSV), each row's key checked against its digest ([`rows`]), into a temp file;
/// returns it unfinished (renamed only once the job succeeded) with its row count.
#[allow(clippy::too_many_arguments)]
fn write_rows(
    mut reader: rows::RowReader,
    header: &[u8],
    terminator: &[u8],
    tagged: bool,
    out: &Path,
    at_rest: &crate::storage::AtRest,
    batches: std::sync::mpsc::Receiver<RowBatch>,
    fail_after: FailAfter,
) -> Result<(Pending, u64), DataError> {
    let dir = crate::storage::parent_dir(out);
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let io_err = |e| DataError::io(out, e);
    let mut w = DataWriter::create(out, at_rest).map_err(|e| DataError::io(dir, e))?;
    let tag = if tagged { crate::join::Side::Both.tag() } else { &[][..] };
    if tagged {
        w.write_all(crate::join::SIDE_HEADER).map_err(io_err)?;
    }
    w.write_all(header).map_err(io_err)?;
    if !header.ends_with(b"\n") && !header.ends_with(b"\r") {
        w.write_all(terminator).map_err(io_err)?;
    }
    let mut rows = 0u64;
    for (buckets, batch) in batches.into_iter().enumerate() {
        if fail_after == Some(buckets) {
            return Err(DataError::Invalid("injected failure".into()));
        }
        rows += batch.len() as u64;
        reader.push(batch, |row| copy_row(&mut w, tag, row, terminator), out)?;
    }
    reader.flush(|row| copy_row(&mut w, tag, row, terminator), out)?;
    Ok((Pending::Csv(w), rows))
}

/// Appends one output row: the side tag (a tagged join), the row's bytes, a terminator if the
/// row (the file's last) had none.
fn copy_row(w: &mut impl Write, tag: &[u8], row: &[u8], terminator: &[u8]) -> std::io::Result<()> {
    w.write_all(tag)?;
    w.write_all(row)?;
    if !row.ends_with(b"\n") && !row.ends_with(b"\r") {
        w.write_all(terminator)?;
    }
    Ok(())
}

enum TailError {
    Data(DataError),
    Io(std::io::Error),
}

impl From<std::io::Error> for TailError {
    fn from(e: std::io::Error) -> Self {
        TailError::Io(e)
    }
}

/// The state the scan, the buckets and the writers share; `keeps`: a resumable job's spill stays
/// until the peer confirms its range.
fn new_shared(
    dir: &Path,
    key: StorageKey,
    input: &StreamInput,
    job: &PsiJob,
    learns: bool,
    keeps: bool,
) -> Arc<Shared> {
    Arc::new(Shared {
        dir: dir.to_path_buf(),
        key,
        spec: input.spec.clone(),
        rows: Mutex::new(HashMap::new()),
        failure: Mutex::new(None),
        dropped: AtomicU64::new(0),
        learns,
        disk: Arc::default(),
        done: (learns && job.join.needs_unmatched(job.role))
            .then(|| Mutex::new(vec![0u64; (input.rows as usize).div_ceil(64)])),
        matched: AtomicU64::new(0),
        writes_matched: job.join.writes_intersection(),
        keeps,
        digests: Mutex::new(HashMap::new()),
    })
}

/// After the buckets, on a learning side: checks the grant's minimum on the intersection, then a
/// join's sections after it (this side's unmatched rows, a pass over the snapshot, and
/// placeholders for the peer's, whose count the peer tells), with the bitmap of this side's
/// matched or dropped rows when the join tracks them. Nothing for a side that does not learn.
async fn tail_sections<C: Channel>(
    channel: &C,
    job: &PsiJob,
    session: &rr22::Session,
    shared: &Shared,
    rows: u64,
) -> Result<(Vec<crate::join::Section>, Option<Vec<u64>>), EngineError> {
    if !session.learns() {
        return Ok((Vec::new(), None));
    }
    let matched = shared.matched.load(Ordering::Relaxed);
    job.limits.check_aligned(matched)?;
    let (own, done_bits) = match shared.done.as_ref() {
        Some(done) => {
            let bits = std::mem::take(&mut *done.lock().expect("not poisoned"));
            let set: u64 = bits.iter().map(|w| w.count_ones() as u64).sum();
            (rows - set, Some(bits))
        }
        None => (rows - shared.dropped.load(Ordering::Relaxed) - matched, None),
    };
    let peer =
        crate::join::exchange_counts(channel, job.join, job.role, job.reveal, own, session.peer_size, matched).await?;
    Ok((job.join.sections(job.role, job.reveal, peer), done_bits))
}

/// A join's sections after the intersection ([`crate::join`]), appended to the output's temp
/// file: this side's rows whose bit in `done` is clear (a pass over the snapshot, file order) and
/// placeholder rows for the peer's. Returns the writer and the rows appended.
#[allow(clippy::too_many_arguments)]
fn write_tail(
    snapshot: File,
    spec: &DatasetSpec,
    w: Pending,
    done: &[u64],
    sections: &[crate::join::Section],
    columns: usize,
    tagged: bool,
    terminator: &[u8],
    parquet: bool,
) -> Result<(Pending, u64), TailError> {
    match w {
        Pending::Csv(w) => write_tail_csv(snapshot, spec, w, done, sections, columns, tagged, terminator)
            .map(|(w, rows)| (Pending::Csv(w), rows)),
        Pending::Parquet(mut w) if parquet => {
            let rows = write_tail_parquet(&snapshot, &mut w, done, sections, tagged)?;
            Ok((Pending::Parquet(w), rows))
        }
        Pending::Parquet(_) => Err(TailError::Data(DataError::Invalid("a Parquet output of a CSV input".into()))),
    }
}

fn is_done(done: &[u64], number: usize) -> bool {
    done.get(number / 64).is_some_and(|word| word & (1 << (number % 64)) != 0)
}

/// [`write_tail`] for a Parquet input: the unmatched rows from the row store, placeholders as
/// null rows.
fn write_tail_parquet(
    store: &File,
    w: &mut crate::parquet_io::ParquetOut,
    done: &[u64],
    sections: &[crate::join::Section],
    tagged: bool,
) -> Result<u64, TailError> {
    use crate::join::Section;
    let mut rows = 0u64;
    for &section in sections {
        match section {
            Section::Own(side) => {
                // SAFETY: read only; our private, unlinked row store.
                let map = unsafe { memmap2::Mmap::map(store) }?;
                let mut pending = Vec::new();
                for (number, place) in crate::parquet_io::store_places(&map).enumerate() {
                    let place = place.map_err(TailError::Data)?;
                    if is_done(done, number) {
                        continue;
                    }
                    pending.push(place);
                    if pending.len() == crate::parquet_io::BATCH_ROWS {
                        w.write_rows(&map, &pending, tagged.then_some(side)).map_err(TailError::Data)?;
                        rows += pending.len() as u64;
                        pending.clear();
                    }
                }
                w.write_rows(&map, &pending, tagged.then_some(side)).map_err(TailError::Data)?;
                rows += pending.len() as u64;
            }
            Section::Fill(side, n) => {
                w.write_fill(n, side).map_err(TailError::Data)?;
                rows += n;
            }
        }
    }
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
fn write_tail_csv(
    mut snapshot: File,
    spec: &DatasetSpec,
    mut w: DataWriter,
    done: &[u64],
    sections: &[crate::join::Section],
    columns: usize,
    tagged: bool,
    terminator: &[u8],
) -> Result<(DataWriter, u64), TailError> {
    use crate::join::Section;
    let mut rows = 0u64;
    let tag = |side: crate::join::Side| if tagged { side.tag() } else { &[][..] };
    for &section in sections {
        match section {
            Section::Own(side) => {
                snapshot.seek(std::io::SeekFrom::Start(0))?;
                let mut scanner = RowScanner::from_file(&spec.file, snapshot.try_clone()?);
                spec.read_header(&mut scanner).map_err(TailError::Data)?;
                let mut out = std::io::BufWriter::with_capacity(1 << 16, &mut w);
                let mut number = 0usize;
                while let Some(row) = scanner.next_row().map_err(TailError::Data)? {
                    let set = is_done(done, number);
                    number += 1;
                    if set {
                        continue;
                    }
                    out.write_all(tag(side))?;
                    out.write_all(row.raw)?;
                    if !row.raw.ends_with(b"\n") && !row.raw.ends_with(b"\r") {
                        out.write_all(terminator)?;
                    }
                    rows += 1;
                }
                out.flush()?;
            }
            Section::Fill(side, n) => {
                let mut line = tag(side).to_vec();
                line.extend(std::iter::repeat_n(b',', columns.saturating_sub(1)));
                line.extend_from_slice(terminator);
                let mut out = std::io::BufWriter::with_capacity(1 << 16, &mut w);
                for _ in 0..n {
                    out.write_all(&line)?;
                }
                out.flush()?;
                rows += n;
            }
        }
    }
    Ok((w, rows))
}

pub mod resume;
mod rows;
#[cfg(test)]
mod tests;
