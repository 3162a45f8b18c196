//! Resuming an interrupted streaming RR22 job (issue 12 item 3).
//!
//! A resumable job ([`run_psi_resumable`]) runs its buckets in **ranges** of
//! [`Resumable::range_buckets`] buckets ([`default_range_buckets`]: the job's buckets split into
//! at most [`DEFAULT_RANGES`] ranges), each range with its own VOLE setup and positions
//! ([`rr22::run_buckets`]). Everything it needs to go on after a crash lives in its spill
//! directory, sealed under the job's spill key (which the caller keeps, e.g. sealed under the
//! node's storage key):
//! - `checkpoint`: the session both parties agreed (sizes, bucket size, joint salt), the role,
//!   reveal mode and join, the input's stamp (length and modification time), the range size and,
//!   per finished range, its digest and the running counts (matches, duplicates dropped, output
//!   rows). Written atomically (sealed temp file, fsync, rename, directory fsync);
//! - `bucket-B` / `order-B`: the spill of every bucket whose range is not known to be recorded
//!   by both sides (a bucket's spill is deleted only once the peer confirmed its range, and what a
//!   learning side builds its segment from only once that is written);
//! - `segment-R`: range R's output rows, sealed; a learning side writes it after the checkpoint
//!   records R (see below);
//! - `positions-R`: a learning side's matches of range R (4 bytes per match, per bucket: the
//!   requester's indices into the bucket's items, a responder's stream positions), sealed and
//!   fsynced before the checkpoint records R, deleted once `segment-R` is written;
//! - `bits`: a join's matched/dropped-row bitmap after the last recorded range (setting a bit
//!   twice is harmless, so a bitmap newer than the checkpoint is fine).
//!
//! **After each range** both sides record the range in the checkpoint, then exchange an
//! acknowledgement carrying the range's digest: SHA-256 over the session's
//! fingerprint, the range's index and bounds and the BLAKE3 hashes of the frames each way during
//! the range (length-prefixed, in order; BLAKE3 rather than SHA-256 because it runs over every
//! byte of the protocol on the critical path, ~4× faster here with AVX-512, and is as collision
//! resistant for this use). Both parties see the same frames, so honest digests are
//! equal; a difference means the two sides did not run the same range (another session, a
//! different salt or layout, a lost or altered frame, a forged record) and the job stops. The
//! digest is computed from frames the peer itself sent or received: it tells it nothing new.
//!
//! **When a range is recorded.** A learning side seals and fsyncs its matches as they come
//! (`positions-R`), records the range as soon as they are in, and writes `segment-R` from them in
//! the background while the next range runs: the requester from its kept `bucket-B` spill (read
//! again and its duplicates dropped as the protocol's load dropped them, so the indices point at
//! the same items), a responder with reveal both from its kept `order-B` spill (what it builds
//! from stays until the segment is written, not only until the peer confirms). Why: the responder
//! learns its matches only when the requester's positions arrive, at the end of the range; writing
//! its rows then took ~1.7 s after the requester recorded (10^7, branch `outmap`), a window in
//! which a kill made the resume run the range again. The requester wrote its segment during the
//! range and recorded after it; above RAM / 2.8 its rows are read in one pass per range once the
//! range's last bucket is in ([`super::rows`]), and waiting for that pass before recording cost
//! ~9.6 s per range at 10^9 (~300 s of 960) with the peer idle; now the pass overlaps the next
//! range's protocol. Re-reading a range's buckets costs a decryption and parse of ~20 B per item
//! of spill that is usually still in the page cache (it was read during the range). The **last**
//! range's segment is written before that range's acknowledgement is sent: a segment that fails
//! (a key changed in place in the input) must fail the job while the peer still waits, so that
//! both keep their state, rather than after the peer has finished and discarded its own. Without
//! a join bitmap (which needs each match's row number) the positions are checked against each
//! bucket's dummy bits, kept in memory since its values were sent (1 bit per position), not
//! against the order read back from disk: the record follows the last positions frame by the
//! positions' and checkpoint's fsyncs (~10 ms at 10^8), not by a read of the range's orders. A
//! resume rebuilds the segment of a range recorded without one the same way before the output is
//! assembled; a damaged, truncated or inconsistent positions file fails the job with an error
//! naming it. The segment's bytes are those an uninterrupted run writes (each bucket's rows in
//! digest order), and nothing the peer sees changes: the frames, hence the digests, the
//! acknowledgements and the resume exchange are as before.
//!
//! **Ranges and the VOLE setup.** Ranges are at least [`MIN_RANGE_BUCKETS`] buckets by default
//! (a boundary drains the bucket pipeline), and one run of the job does one VOLE setup for all
//! the ranges it goes through ([`rr22::KeptVole`]: the same VOLE messages as one call over all
//! their buckets); a resumed run starts with a fresh setup.
//!
//! **Acknowledgements without a stall.** A side that recorded range r sends its acknowledgement
//! (r, digest) and goes straight on with range r + 1; the peer's acknowledgement of r is the first
//! frame it receives in range r + 1 (each side sends its acknowledgement before any frame of the
//! next range, and the channel is ordered), checked when it arrives (outside the transcript), and
//! the last range's is awaited at the end. Why this is as safe as the round trip: range r's spill
//! is still deleted only after the peer's digest for r matched; a side can finish range r + 1 only
//! after receiving range r + 1's frames, which the peer sends only after recording r, so the two
//! sides' recorded counts differ by at most one at any crash, and a range one side may have to
//! run again still has its spill on both (the resume's agreement runs from the first range not
//! recorded on both). A wrong or missing acknowledgement fails the job as before.
//!
//! **Resuming**: both sides restore the session from their checkpoint (no new hello: the salt
//! must stay, since the unfinished buckets' spill was hashed under it), check the input is
//! unchanged (its stamp; a learning side reads its rows from it again, each row's key checked),
//! and exchange their fingerprint, range size and finished ranges' digests. The job goes on from
//! the first range not finished on both sides, after comparing the digests of the ranges both
//! finished; a side that had recorded more rolls back (drops those segments and counts). The
//! output is then the header, the segments in order and the join's tail: the same bytes, rows
//! and order, as an uninterrupted run of the same session.
//!
//! **Order.** The in-memory path orders a bucket's matches by their OPRF values, which depend on
//! the range's VOLE keys: a range run again after a resume would come out in another order. A
//! resumable job therefore writes each bucket's matches in **digest order** (the salted digest,
//! equal on both sides for a match, fixed by the salt that the resume keeps): the two outputs stay
//! aligned row by row, and a rerun range writes the same bytes. (Two *separate* runs of a job
//! still differ in order: each hello draws a fresh salt.)
//!
//! A finished job leaves nothing (the directory is removed); a failed one leaves its directory
//! for a resume or for the caller to discard ([`discard`]).
use std::io::Write;

use bytes::Bytes;
use consort_protocols::ChannelError;
use consort_protocols::Role;
use consort_protocols::psi::rr22::SessionState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::*;
use crate::dataset::FileStamp;

/// Ranges per job at most with [`default_range_buckets`].
pub const DEFAULT_RANGES: usize = 32;
/// Fewest buckets per range with [`default_range_buckets`] (a job with fewer buckets is one
/// range). A range boundary costs a pipeline drain (the next bucket's VOLE and OKVS no longer
/// overlap the current bucket's values and matching), a checkpoint write and an acknowledgement;
/// a resume loses at most one range of work and keeps one range of extra spill. With buckets of
/// 2^20, 4 buckets are ~4·10^6 items per side (~4 s of protocol on this 2-core box): 10^7 rows
/// (10 buckets) make 3 ranges, 10^8 (96 buckets) 24 ranges of 4.
pub const MIN_RANGE_BUCKETS: usize = 4;
/// Frame tags of the resume messages.
const AGREE: u8 = 0x70;
const RECORDED: u8 = 0x71;
/// 2: range digests over BLAKE3 transcripts (1: SHA-256; a version-1 checkpoint is refused).
const CHECKPOINT_VERSION: u32 = 2;

/// The range size (in buckets) a job of `buckets` buckets uses by default: at most
/// [`DEFAULT_RANGES`] ranges of at least [`MIN_RANGE_BUCKETS`] buckets.
pub fn default_range_buckets(buckets: usize) -> usize {
    buckets.div_ceil(DEFAULT_RANGES).max(MIN_RANGE_BUCKETS.min(buckets)).max(1)
}

/// What makes a streaming job resumable.
pub struct Resumable {
    /// The job's spill key: the caller keeps it across restarts (a node seals it under its
    /// storage key); the same key must be given to resume.
    pub key: StorageKey,
    /// Buckets per range; 0 for [`default_range_buckets`]. Both parties must agree (checked).
    pub range_buckets: usize,
    /// Take up the job whose state is in the spill directory instead of starting it.
    pub resume: bool,
}

/// The running counts after a finished range.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Finished {
    digest: [u8; 32],
    matched: u64,
    dropped: u64,
    /// Output rows written up to and including this range.
    rows: u64,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    /// `Requester` / `Responder`, `Both` / `RequesterOnly` (their Debug names).
    role: String,
    reveal: String,
    join: crate::join::JoinType,
    own_size: u64,
    peer_size: u64,
    bucket_size: u64,
    salt: [u8; 32],
    range_buckets: u64,
    stamp: FileStamp,
    finished: Vec<Finished>,
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

fn bits_path(dir: &Path) -> PathBuf {
    dir.join("bits")
}

fn segment_path(dir: &Path, r: usize) -> PathBuf {
    dir.join(format!("segment-{r:05}"))
}

fn write_sealed(path: &Path, key: &StorageKey, bytes: &[u8]) -> Result<(), DataError> {
    SealedWriter::create(path, key, Access::OwnerOnly)
        .and_then(|mut w| {
            w.write_all(bytes)?;
            w.finish()
        })
        .map(|_| ())
        .map_err(|e| DataError::io(path, e))
}

fn read_sealed(path: &Path, key: &StorageKey) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    SealedReader::open(path, key).and_then(|mut r| r.read_to_end(&mut bytes)).map_err(|e| DataError::io(path, e))?;
    Ok(bytes)
}

impl Checkpoint {
    fn save(&self, dir: &Path, key: &StorageKey) -> Result<(), DataError> {
        let text = serde_json::to_vec(self).map_err(|e| DataError::Invalid(e.to_string()))?;
        write_sealed(&checkpoint_path(dir), key, &text)
    }

    fn load(dir: &Path, key: &StorageKey) -> Result<Checkpoint, DataError> {
        let path = checkpoint_path(dir);
        if !path.exists() {
            return Err(DataError::Invalid(
                "this job has no resumable state (it stopped before its scan finished, or was discarded); run it again"
                    .into(),
            ));
        }
        let bytes = read_sealed(&path, key)?;
        let c: Checkpoint =
            serde_json::from_slice(&bytes).map_err(|_| DataError::file(&path, "the checkpoint is damaged"))?;
        if c.version != CHECKPOINT_VERSION {
            return Err(DataError::file(&path, "the checkpoint is from another version"));
        }
        Ok(c)
    }

    fn state(&self) -> SessionState {
        SessionState {
            own_size: self.own_size,
            peer_size: self.peer_size,
            bucket_size: self.bucket_size,
            salt: self.salt,
        }
    }
}

/// Removes a job's resumable state (its spill directory). Nothing else of the job is on disk.
pub fn discard(spill_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(spill_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The file in a job's spill directory holding its spill key, sealed under the caller's key.
const KEY_FILE: &str = "key";

/// Makes a resumable job's spill directory and spill key, the key kept in it sealed under
/// `under` (a node's storage key), so a restarted node can take the job up again.
pub fn create_job_key(spill_dir: &Path, under: &StorageKey) -> Result<StorageKey, DataError> {
    std::fs::create_dir_all(spill_dir).map_err(|e| DataError::io(spill_dir, e))?;
    let key = StorageKey::generate().map_err(|e| DataError::io(spill_dir, e))?;
    write_sealed(&spill_dir.join(KEY_FILE), under, key.secret_bytes())?;
    Ok(key)
}

/// The spill key of a resumable job ([`create_job_key`]).
pub fn load_job_key(spill_dir: &Path, under: &StorageKey) -> Result<StorageKey, DataError> {
    let path = spill_dir.join(KEY_FILE);
    if !path.exists() {
        return Err(DataError::Invalid("no resumable state for this job on this node".into()));
    }
    let bytes = zeroize::Zeroizing::new(read_sealed(&path, under)?);
    let bytes: [u8; 32] =
        bytes.as_slice().try_into().map_err(|_| DataError::file(&path, "the job's key file is damaged"))?;
    Ok(StorageKey::from_bytes(bytes))
}

/// Whether a spill directory holds a resumable job (its key and a checkpoint), so a node start
/// keeps it.
pub fn is_resumable(spill_dir: &Path) -> bool {
    spill_dir.join(KEY_FILE).is_file() && checkpoint_path(spill_dir).is_file()
}

/// A channel that hashes the frames each way (length-prefixed, in order): a range's transcript.
struct Transcript<'a, C> {
    inner: &'a C,
    sent: Mutex<blake3::Hasher>,
    received: Mutex<blake3::Hasher>,
    /// Nanoseconds spent hashing (reported as the step `transcript hash`).
    hashing: AtomicU64,
    /// The peer's acknowledgement of the previous range, expected as the first frame this range
    /// receives (not part of the transcript): (range, this side's digest of it).
    ack: Mutex<Option<(usize, [u8; 32])>>,
    /// Whether that acknowledgement arrived and matched; why not, if it did not.
    acked: std::sync::atomic::AtomicBool,
    ack_error: Mutex<Option<EngineError>>,
    /// Run once when that acknowledgement matched: deletes the previous range's spill at once
    /// (not at the end of this range), so a node holds one range's spill less.
    on_ack: Mutex<Option<Box<dyn FnOnce() + Send + 'a>>>,
}

impl<'a, C: Channel> Transcript<'a, C> {
    fn new(inner: &'a C) -> Self {
        Transcript {
            inner,
            sent: Mutex::new(blake3::Hasher::new()),
            received: Mutex::new(blake3::Hasher::new()),
            hashing: AtomicU64::new(0),
            ack: Mutex::new(None),
            acked: std::sync::atomic::AtomicBool::new(false),
            ack_error: Mutex::new(None),
            on_ack: Mutex::new(None),
        }
    }

    /// This range's first received frame is the peer's acknowledgement of range `r`.
    fn expecting(inner: &'a C, r: Option<(usize, [u8; 32])>) -> Self {
        let t = Transcript::new(inner);
        *t.ack.lock().expect("not poisoned") = r;
        t
    }

    fn absorb(&self, h: &Mutex<blake3::Hasher>, frame: &[u8]) {
        let clock = Instant::now();
        let mut h = h.lock().expect("not poisoned");
        h.update(&(frame.len() as u64).to_le_bytes());
        h.update(frame);
        self.hashing.fetch_add(clock.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// The range's digest, the same on both sides of one run.
    fn digest(self, fingerprint: &[u8; 32], role: Role, r: usize, range: &std::ops::Range<usize>) -> [u8; 32] {
        let sent: [u8; 32] = self.sent.into_inner().expect("not poisoned").finalize().into();
        let received: [u8; 32] = self.received.into_inner().expect("not poisoned").finalize().into();
        let (from_requester, from_responder) = match role {
            Role::Requester => (sent, received),
            Role::Responder => (received, sent),
        };
        let mut h = Sha256::new();
        h.update(b"consort/psi-resume/v2/range");
        h.update(fingerprint);
        for v in [r, range.start, range.end] {
            h.update((v as u64).to_le_bytes());
        }
        h.update(from_requester);
        h.update(from_responder);
        h.finalize().into()
    }
}

impl<C: Channel> Channel for Transcript<'_, C> {
    fn send(&self, frame: Bytes) -> impl std::future::Future<Output = Result<(), ChannelError>> + Send {
        self.absorb(&self.sent, &frame);
        self.inner.send(frame)
    }

    async fn recv(&self) -> Result<Bytes, ChannelError> {
        let expected = self.ack.lock().expect("not poisoned").take();
        if let Some((r, digest)) = expected {
            let frame = self.inner.recv().await?;
            if let Err(e) = check_recorded(&frame, r, &digest) {
                *self.ack_error.lock().expect("not poisoned") = Some(e);
                return Err(ChannelError::Transport("the peer's range acknowledgement failed".into()));
            }
            self.acked.store(true, Ordering::Relaxed);
            if let Some(f) = self.on_ack.lock().expect("not poisoned").take() {
                f();
            }
        }
        let frame = self.inner.recv().await?;
        self.absorb(&self.received, &frame);
        Ok(frame)
    }
}

fn peer_err(what: impl Into<String>) -> EngineError {
    EngineError::Peer(what.into())
}

fn closed(e: ChannelError) -> EngineError {
    EngineError::Peer(format!("the resume exchange failed: {e}"))
}

/// Both sides say which session they hold, their range size and the digests of the ranges they
/// finished; returns the first range to run (the first not finished on both sides). Every
/// field of the peer's message is checked before it is used.
async fn agree<C: Channel>(
    channel: &C,
    fingerprint: &[u8; 32],
    range_buckets: usize,
    ranges: usize,
    finished: &[Finished],
) -> Result<usize, EngineError> {
    let mut frame = Vec::with_capacity(1 + 32 + 8 + 4 + 32 * finished.len());
    frame.push(AGREE);
    frame.extend_from_slice(fingerprint);
    frame.extend_from_slice(&(range_buckets as u64).to_le_bytes());
    frame.extend_from_slice(&(finished.len() as u32).to_le_bytes());
    for f in finished {
        frame.extend_from_slice(&f.digest);
    }
    channel.send(Bytes::from(frame)).await.map_err(closed)?;
    let peer = channel.recv().await.map_err(closed)?;
    if peer.len() < 45 || peer[0] != AGREE {
        return Err(peer_err("the peer's resume message is malformed"));
    }
    if peer[1..33] != fingerprint[..] {
        return Err(peer_err(
            "the peer holds another session (salt, set sizes, reveal mode or layout differ): not the same job",
        ));
    }
    let peer_range = u64::from_le_bytes(peer[33..41].try_into().expect("8"));
    if peer_range != range_buckets as u64 {
        return Err(peer_err(format!("range sizes differ: this node {range_buckets} buckets, the peer {peer_range}")));
    }
    let peer_finished = u32::from_le_bytes(peer[41..45].try_into().expect("4")) as usize;
    if peer_finished > ranges {
        return Err(peer_err(format!("the peer claims {peer_finished} finished ranges of the job's {ranges}")));
    }
    if peer.len() != 45 + 32 * peer_finished {
        return Err(peer_err("the peer's resume message is malformed"));
    }
    let common = peer_finished.min(finished.len());
    for (r, f) in finished.iter().enumerate().take(common) {
        if peer[45 + 32 * r..45 + 32 * (r + 1)] != f.digest[..] {
            return Err(peer_err(format!("range {r}: the peer's digest differs from this node's record")));
        }
    }
    Ok(common)
}

/// After recording range `r`: tells the peer. Its acknowledgement is checked when it arrives
/// ([`check_recorded`]): as the first frame of the next range, or at the end of the job.
async fn recorded<C: Channel>(channel: &C, r: usize, digest: &[u8; 32]) -> Result<(), EngineError> {
    let mut frame = Vec::with_capacity(37);
    frame.push(RECORDED);
    frame.extend_from_slice(&(r as u32).to_le_bytes());
    frame.extend_from_slice(digest);
    channel.send(Bytes::from(frame)).await.map_err(closed)
}

/// The peer's acknowledgement of range `r`: it recorded the range with this side's digest.
fn check_recorded(peer: &[u8], r: usize, digest: &[u8; 32]) -> Result<(), EngineError> {
    if peer.len() != 37 || peer[0] != RECORDED {
        return Err(peer_err("the peer's range record message is malformed"));
    }
    if u32::from_le_bytes(peer[1..5].try_into().expect("4")) as usize != r {
        return Err(peer_err(format!("the peer recorded another range than {r}")));
    }
    if peer[5..] != digest[..] {
        return Err(peer_err(format!("range {r}: the two sides' digests differ (they did not run the same range)")));
    }
    Ok(())
}

/// A learning side's input on resume: the file the job started with (its stamp checked: a file
/// appended to, truncated or rewritten since is refused), read for its header; its rows are read
/// again from it for the ranges still to run ([`rows`]). No copy.
fn reopen(input: &StreamInput, stamp: &FileStamp) -> Result<Scanned, DataError> {
    let spec = &input.spec;
    let source = open_unchanged(&spec.file, stamp)?;
    let mut scanner = RowScanner::from_file(&spec.file, source);
    let header = spec.read_header(&mut scanner)?;
    let terminator: &'static [u8] = if header.raw.ends_with(b"\r\n") { b"\r\n" } else { b"\n" };
    let columns = header.columns.len();
    Ok(Scanned { snapshot: None, header: header.raw, terminator, parquet: None, columns })
}

/// The thread that writes a range's output segment (a learning side's rows, from its input,
/// each row's key checked against its digest: [`rows`]), sealed under the spill key:
/// `tx` feeds it; no thread and no sender when this side writes no rows.
pub(super) struct SegmentWriter {
    pub(super) handle: Option<std::thread::JoinHandle<Result<(u64, super::rows::RowReader), DataError>>>,
    pub(super) tx: Option<std::sync::mpsc::SyncSender<RowBatch>>,
}

impl SegmentWriter {
    pub(super) fn start(
        rows: Option<super::rows::RowReader>,
        terminator: &'static [u8],
        tagged: bool,
        path: PathBuf,
        shared: &Arc<Shared>,
    ) -> Result<SegmentWriter, DataError> {
        let Some(rows) = rows else { return Ok(SegmentWriter { handle: None, tx: None }) };
        let (tx, rx) = std::sync::mpsc::sync_channel::<RowBatch>(2);
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("psi-segment".into())
            .spawn(move || write_segment(rows, terminator, tagged, &path, &shared.key, rx))
            .map_err(|e| DataError::Invalid(format!("cannot start the output writer: {e}")))?;
        Ok(SegmentWriter { handle: Some(handle), tx: Some(tx) })
    }

    /// Waits for the writer (after the sender was dropped): the rows it wrote (0 without one) and
    /// its row reader back, for the next range (the input stays mapped once per job).
    pub(super) fn join(
        handle: Option<std::thread::JoinHandle<Result<(u64, super::rows::RowReader), DataError>>>,
    ) -> Result<Result<(u64, Option<super::rows::RowReader>), DataError>, DataError> {
        match handle {
            Some(h) => h
                .join()
                .map(|r| r.map(|(rows, reader)| (rows, Some(reader))))
                .map_err(|_| DataError::Invalid("the output writer panicked".into())),
            None => Ok(Ok((0, None))),
        }
    }
}

fn write_segment(
    mut reader: super::rows::RowReader,
    terminator: &[u8],
    tagged: bool,
    path: &Path,
    key: &StorageKey,
    batches: std::sync::mpsc::Receiver<RowBatch>,
) -> Result<(u64, super::rows::RowReader), DataError> {
    let io_err = |e| DataError::io(path, e);
    let mut w =
        std::io::BufWriter::with_capacity(1 << 16, SealedWriter::create(path, key, Access::OwnerOnly).map_err(io_err)?);
    let tag = if tagged { crate::join::Side::Both.tag() } else { &[][..] };
    let mut rows = 0u64;
    for batch in batches {
        rows += batch.len() as u64;
        reader.push(batch, |row| copy_row(&mut w, tag, row, terminator), path)?;
    }
    reader.flush(|row| copy_row(&mut w, tag, row, terminator), path)?;
    w.into_inner().map_err(|e| e.into_error()).and_then(|w| w.finish()).map_err(io_err)?;
    Ok((rows, reader))
}

/// Runs (or, with [`Resumable::resume`], takes up) a resumable streaming RR22 job: as
/// [`run_psi_streaming`], with the buckets in recorded ranges. On error the spill directory
/// stays, for a resume or [`discard`]; on success nothing is left but the output.
pub async fn run_psi_resumable<C: Channel>(
    channel: &C,
    input: &StreamInput,
    job: &PsiJob,
    options: &StreamOptions,
    resumable: Resumable,
) -> Result<(PsiReport, StreamFigures), EngineError> {
    if !streams(job) {
        return Err(DataError::Invalid("only RR22 jobs without payloads stream".into()).into());
    }
    if input.parquet || !job.columns.is_rows() {
        return Err(DataError::Invalid(
            "only CSV inputs with whole-row outputs run resumably (a Parquet input or --output keys runs without checkpoints)".into(),
        )
        .into());
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
    let dir = options.spill_dir.clone();
    let Resumable { key, range_buckets, resume } = resumable;
    let mut stages = Vec::new();
    let started = Instant::now();
    // The session, the spill and the checkpoint: made now, or found from the first run.
    let (mut session, checkpoint, shared, scanned) = if resume {
        let c = Checkpoint::load(&dir, &key)?;
        if (c.role.as_str(), c.reveal.as_str(), c.join) != (names(job).0.as_str(), names(job).1.as_str(), job.join) {
            return Err(
                DataError::Invalid("the job's role, reveal mode or join differ from the run to resume".into()).into()
            );
        }
        if c.bucket_size != options.bucket_size as u64 || c.own_size != input.rows || c.stamp != input.stamp {
            return Err(DataError::file(
                &input.spec.file,
                "the input changed since the job started (or its bucket size did): it cannot be resumed; discard the job and run it again",
            )
            .into());
        }
        let session = rr22::resume_session(&c.state(), &config).map_err(psi_err)?;
        let learns = session.learns() && job.output.is_some();
        let shared = new_shared(&dir, key, input, job, learns, true);
        let scanned = if learns {
            reopen(input, &c.stamp)?
        } else {
            Scanned { snapshot: None, header: Vec::new(), terminator: b"\n", parquet: None, columns: 0 }
        };
        (session, c, shared, scanned)
    } else {
        let session = rr22::start(channel, input.rows as usize, &config).await.map_err(psi_err)?;
        let learns = session.learns() && job.output.is_some();
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        let shared = new_shared(&dir, key, input, job, learns, true);
        let scanned = {
            let (input, shared, hasher, cap) =
                (input.clone(), shared.clone(), session.hasher(), session.own_capacity());
            let buckets = session.layout.buckets;
            cpu::run(move || scan(&input, &shared, &hasher, buckets, cap, learns, false)).await
        };
        // Stopped before its checkpoint, a job cannot be resumed: it leaves nothing.
        let scanned = scanned.inspect_err(|_| {
            let _ = discard(&dir);
        })?;
        let state = session.state(options.bucket_size).expect("no payloads");
        let range_buckets =
            if range_buckets == 0 { default_range_buckets(session.layout.buckets) } else { range_buckets };
        let c = Checkpoint {
            version: CHECKPOINT_VERSION,
            role: names(job).0,
            reveal: names(job).1,
            join: job.join,
            own_size: state.own_size,
            peer_size: state.peer_size,
            bucket_size: state.bucket_size,
            salt: state.salt,
            range_buckets: range_buckets as u64,
            stamp: input.stamp.clone(),
            finished: Vec::new(),
        };
        c.save(&dir, &shared.key).inspect_err(|_| {
            let _ = discard(&dir);
        })?;
        (session, c, shared, scanned)
    };
    stages.push(("scan".to_string(), started.elapsed().as_secs_f64()));
    // Each bucket's matches are put in digest order here (`SpillSink::matched`): the protocol's
    // own joint-order sorts would be undone, so they are skipped.
    session.matches_in_any_order();
    let mut checkpoint = checkpoint;
    let learns = shared.learns;
    let buckets = session.layout.buckets;
    let range_buckets = checkpoint.range_buckets as usize;
    if range_buckets == 0 {
        return Err(DataError::Invalid("a range of 0 buckets".into()).into());
    }
    let ranges = buckets.div_ceil(range_buckets);
    if checkpoint.finished.len() > ranges {
        return Err(DataError::file(checkpoint_path(&dir), "the checkpoint is damaged").into());
    }
    let fingerprint = session.fingerprint();
    let first = agree(channel, &fingerprint, range_buckets, ranges, &checkpoint.finished).await?;
    let range_of = |r: usize| r * range_buckets..((r + 1) * range_buckets).min(buckets);
    // A learning side records a range before its segment is written (from the range's sealed
    // positions and its kept spill, during the next range): see `PendingSegment`.
    let deferred = learns;
    let requester = job.role == Role::Requester;
    let keep = deferred.then_some(job.role);
    // Ranges before `first` are recorded on both sides: their spill can go, once their segments
    // are there (a learning responder's range recorded but not written is rebuilt first, below).
    // Ranges from `first` on run (again): their spill must be here, their segments, positions and
    // counts are dropped.
    let mut rebuild = Vec::new();
    for r in 0..first {
        if deferred && !segment_path(&dir, r).exists() {
            rebuild.push(r);
            continue;
        }
        shared.remove(&positions_path(&dir, r));
        for b in range_of(r) {
            shared.remove(&bucket_path(&dir, b));
            shared.remove(&order_path(&dir, b));
        }
    }
    for r in first..ranges {
        for b in range_of(r) {
            if !bucket_path(&dir, b).exists() && !order_path(&dir, b).exists() {
                return Err(DataError::Invalid(format!(
                    "range {r} must run again but this node's spill of bucket {b} is gone (the peer had confirmed the range): the job cannot be resumed"
                ))
                .into());
            }
        }
        let _ = std::fs::remove_file(segment_path(&dir, r));
        let _ = std::fs::remove_file(positions_path(&dir, r));
    }
    if checkpoint.finished.len() > first {
        checkpoint.finished.truncate(first);
        checkpoint.save(&dir, &shared.key)?;
    }
    let last = checkpoint.finished.last().copied();
    shared.matched.store(last.map_or(0, |f| f.matched), Ordering::Relaxed);
    shared.dropped.store(last.map_or(0, |f| f.dropped), Ordering::Relaxed);
    if let Some(done) = &shared.done
        && bits_path(&dir).exists()
    {
        let bytes = read_sealed(&bits_path(&dir), &shared.key)?;
        let mut bits = done.lock().expect("not poisoned");
        if bytes.len() != bits.len() * 8 {
            return Err(DataError::file(bits_path(&dir), "the row bitmap is damaged").into());
        }
        for (word, b) in bits.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(b.try_into().expect("8"));
        }
    }
    let Scanned { header, terminator, .. } = scanned;
    let tagged = job.join.tagged();
    // The ranges: each runs, writes its segment, is recorded, then confirmed by both sides.
    let started = Instant::now();
    let mut timings: Vec<(&'static str, f64)> = Vec::new();
    let add = |timings: &mut Vec<(&'static str, f64)>, step: &'static str, secs: f64| match timings
        .iter_mut()
        .find(|(s, _)| *s == step)
    {
        Some(t) => t.1 += secs,
        None => timings.push((step, secs)),
    };
    // One VOLE setup for the ranges this run goes through (see `rr22::KeptVole`: the same VOLE
    // messages as one call over all of them; any error ends the job, so both sides stay in step;
    // a resume starts with a fresh setup).
    let mut kept = rr22::KeptVole::default();
    // The previous range, recorded here and acknowledged to the peer, whose acknowledgement is
    // still to come (the first frame of the next range): its spill stays until then.
    let mut unconfirmed: Option<(usize, [u8; 32])> = None;
    // The input, mapped once for the job's ranges (its stamp checked again before each range).
    let mut reader = match learns {
        true => {
            Some(super::rows::RowReader::open(&input.spec, &checkpoint.stamp, session.hasher(), shared.pass_dir())?)
        }
        false => None,
    };
    // A learning responder's segment being written from its sealed positions (after its range
    // was recorded, during the next range); joined even when the job fails, so no writer outlives
    // the job.
    let mut pending = PendingGuard(None);
    for r in rebuild {
        let before = r.checked_sub(1).map_or(0, |p| checkpoint.finished[p].rows);
        let rows = checkpoint.finished[r]
            .rows
            .checked_sub(before)
            .ok_or_else(|| DataError::file(checkpoint_path(&dir), "the checkpoint is damaged"))?;
        let rows_reader = take_reader(&mut reader, &mut pending, &shared, &dir, &range_of)?;
        pending.0 = Some(PendingSegment::start(
            rows_reader,
            r,
            range_of(r),
            rows,
            (terminator, tagged, requester),
            &shared,
            started,
        )?);
        tracing::info!(range = r, "rebuilding a recorded range's segment from its sealed positions");
    }
    for r in first..ranges {
        let range = range_of(r);
        let source: Arc<dyn BucketSource> = Arc::new(SpillSource(shared.clone()));
        let positions = match deferred {
            true => Some(Deferred::create(positions_path(&dir, r), &shared.key)?),
            false => None,
        };
        // No rows are written during the range: its segment is written once it is recorded.
        let mut sink = SpillSink::new(shared.clone(), None, positions);
        let transcript = Transcript::expecting(channel, unconfirmed);
        if let Some((previous, _)) = unconfirmed {
            let (shared, dir, range) = (shared.clone(), dir.clone(), range_of(previous));
            *transcript.on_ack.lock().expect("not poisoned") =
                Some(Box::new(move || confirmed(&shared, &dir, range, keep)));
        }
        let run = rr22::run_buckets_keeping(&transcript, &session, source, &mut sink, range.clone(), &mut kept).await;
        let protocol_done = started.elapsed().as_secs_f64();
        let positions = sink.deferred.take();
        drop(sink);
        if let Some(e) = transcript.ack_error.lock().expect("not poisoned").take() {
            return Err(e);
        }
        if let Some(e) = shared.failure.lock().expect("not poisoned").take() {
            return Err(e.into());
        }
        let done = run.map_err(psi_err)?;
        // Durable before the range is recorded: a recorded range's segment can be built.
        let written = match positions {
            Some(positions) => positions.finish()?,
            None => 0,
        };
        for (step, secs) in done.timings {
            add(&mut timings, step, secs);
        }
        add(&mut timings, "transcript hash", transcript.hashing.load(Ordering::Relaxed) as f64 / 1e9);
        let clock = Instant::now();
        if let Some((previous, _)) = unconfirmed.take() {
            // Every range receives, so the acknowledgement came with its first frame.
            if !transcript.acked.load(Ordering::Relaxed) {
                return Err(peer_err(format!("range {previous}: no acknowledgement from the peer")));
            }
            confirmed(&shared, &dir, range_of(previous), keep);
        }
        let digest = transcript.digest(&fingerprint, job.role, r, &range);
        if let Some(done) = &shared.done {
            let bytes: Vec<u8> =
                done.lock().expect("not poisoned").iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
            write_sealed(&bits_path(&dir), &shared.key, &bytes)?;
        }
        let rows = checkpoint.finished.last().map_or(0, |f| f.rows) + written;
        checkpoint.finished.push(Finished {
            digest,
            matched: shared.matched.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
            rows,
        });
        checkpoint.save(&dir, &shared.key)?;
        add(&mut timings, "record range", clock.elapsed().as_secs_f64());
        // When each side's range ends and it is recorded (seconds since this part's ranges
        // began): what a kill at a given moment makes the resume run again. A learning side
        // records a range before its segment is written ("range segment written" says when that
        // happened).
        tracing::info!(
            range = r,
            role = ?job.role,
            protocol_done_s = protocol_done,
            recorded_s = started.elapsed().as_secs_f64(),
            "range recorded"
        );
        let last = r + 1 == ranges;
        // This range's segment, started once the previous one is written (its row reader back).
        let next_segment = |reader: &mut Option<super::rows::RowReader>, pending: &mut PendingGuard| {
            let rows_reader = take_reader(reader, pending, &shared, &dir, &range_of)?;
            rows_reader.check_unchanged()?;
            let how = (terminator, tagged, requester);
            PendingSegment::start(rows_reader, r, range.clone(), written, how, &shared, started)
        };
        if deferred && last {
            // The last range's segment is written before its acknowledgement: a segment that
            // fails (a key changed in place) then fails the job while the peer still waits for
            // that acknowledgement, so both keep their state (else the peer would finish and
            // discard its own). Its positions and spill go once the peer's acknowledgement is in.
            let clock = Instant::now();
            let segment = next_segment(&mut reader, &mut pending)?;
            reader = Some(segment.wait(&dir)?);
            add(&mut timings, "wait for the last segment", clock.elapsed().as_secs_f64());
        }
        recorded(channel, r, &digest).await?;
        unconfirmed = Some((r, digest));
        if deferred && !last {
            // The previous range's segment (written meanwhile), then this range's, in the
            // background while the next range runs.
            let clock = Instant::now();
            pending.0 = Some(next_segment(&mut reader, &mut pending)?);
            add(&mut timings, "wait for the previous segment", clock.elapsed().as_secs_f64());
        }
    }
    // The last range's acknowledgement.
    if let Some((r, digest)) = unconfirmed {
        let clock = Instant::now();
        let peer = channel.recv().await.map_err(closed)?;
        check_recorded(&peer, r, &digest)?;
        // The last range's segment is written (above): nothing of it is needed any more.
        confirmed(&shared, &dir, range_of(r), None);
        shared.remove(&positions_path(&dir, r));
        add(&mut timings, "acknowledge last range", clock.elapsed().as_secs_f64());
    }
    // A segment rebuilt from positions when no range was left to run.
    drop(finish_pending(&mut pending, &shared, &dir, &range_of)?);
    stages.push(("protocol".to_string(), started.elapsed().as_secs_f64()));
    stages.extend(timings.iter().map(|&(step, secs)| (format!("protocol/{step}"), secs)));
    // The output: header, segments in range order, the join's tail; renamed at the end.
    let started = Instant::now();
    let (matched, dropped) = (shared.matched.load(Ordering::Relaxed), shared.dropped.load(Ordering::Relaxed));
    let (sections, done_bits) = tail_sections(channel, job, &session, &shared, input.rows).await?;
    let (mut output, mut output_rows) = (None, 0);
    let input_file = match learns {
        true => Some(open_unchanged(&input.spec.file, &checkpoint.stamp)?),
        false => None,
    };
    if let (true, Some(out), Some(snap)) = (learns, job.output.clone(), input_file) {
        let stamp = checkpoint.stamp.clone();
        let (spec, columns, at_rest) = (input.spec.clone(), input.columns.len(), job.at_rest.clone());
        let (shared, dir, bits) = (shared.clone(), dir.clone(), done_bits.unwrap_or_default());
        let segment_rows = checkpoint.finished.last().map_or(0, |f| f.rows);
        let tail = cpu::run(move || -> Result<u64, DataError> {
            let parent = crate::storage::parent_dir(&out);
            std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
            let io_err = |e| DataError::io(&out, e);
            let mut w = DataWriter::create(&out, &at_rest).map_err(|e| DataError::io(parent, e))?;
            if tagged {
                w.write_all(crate::join::SIDE_HEADER).map_err(io_err)?;
            }
            w.write_all(&header).map_err(io_err)?;
            if !header.ends_with(b"\n") && !header.ends_with(b"\r") {
                w.write_all(terminator).map_err(io_err)?;
            }
            // Every range's segment: a learning side writes one per range, empty or not.
            for r in 0..ranges {
                let path = segment_path(&dir, r);
                SealedReader::open(&path, &shared.key)
                    .and_then(|mut seg| std::io::copy(&mut seg, &mut w))
                    .map_err(|e| DataError::io(&path, e))?;
            }
            let stamped = snap.try_clone().map_err(|e| DataError::io(&spec.file, e))?;
            let (w, tail) =
                write_tail_csv(snap, &spec, w, &bits, &sections, columns, tagged, terminator).map_err(|e| match e {
                    TailError::Data(d) => d,
                    TailError::Io(e) => DataError::io(&out, e),
                })?;
            // The input is still the file the job started with (its other columns than the keys
            // are covered by this stamp; the keys were checked row by row).
            if FileStamp::of(&stamped, &spec.file)? != stamp {
                return Err(changed(&spec.file));
            }
            w.finish().map_err(|e| DataError::io(&out, e))?;
            Ok(tail)
        })
        .await?;
        output = job.output.clone();
        output_rows = segment_rows + tail;
        stages.push(("output".to_string(), started.elapsed().as_secs_f64()));
    }
    let figures = StreamFigures { peak_temp_bytes: shared.disk.peak(), duplicates_dropped: dropped };
    discard(&dir).map_err(|e| DataError::io(&dir, e))?;
    let report = PsiReport {
        local_rows: input.rows - dropped,
        peer_rows: session.peer_size,
        intersection: session.learns().then_some(matched),
        output,
        output_rows,
        stages,
        ecdh_evidence: None,
    };
    Ok((report, figures))
}

/// Both sides recorded `range`: its spill can go, but for what the range's segment is still to
/// be written from (`keep`, a learning side's role: [`finish_pending`] removes it then): a
/// requester's buckets, a responder's orders.
fn confirmed(shared: &Shared, dir: &Path, range: std::ops::Range<usize>, keep: Option<Role>) {
    for b in range {
        if keep != Some(Role::Requester) {
            shared.remove(&bucket_path(dir, b));
        }
        if keep != Some(Role::Responder) {
            shared.remove(&order_path(dir, b));
        }
    }
}

fn positions_path(dir: &Path, r: usize) -> PathBuf {
    dir.join(format!("positions-{r:05}"))
}

/// Appends bucket `b`'s matched stream positions (within the bucket) to a range's positions
/// file: the bucket (u32), the count (u32), the positions (u32 each), all little endian. Every
/// bucket of the range is there once, in order (empty ones with a count of 0).
pub(super) fn put_positions(w: &mut impl Write, b: usize, ids: &[u32]) -> std::io::Result<()> {
    w.write_all(&(b as u32).to_le_bytes())?;
    w.write_all(&(ids.len() as u32).to_le_bytes())?;
    for id in ids {
        w.write_all(&id.to_le_bytes())?;
    }
    Ok(())
}

impl Deferred {
    fn create(path: PathBuf, key: &StorageKey) -> Result<Deferred, DataError> {
        let w = SealedWriter::create(&path, key, Access::OwnerOnly).map_err(|e| DataError::io(&path, e))?;
        Ok(Deferred { out: std::io::BufWriter::with_capacity(1 << 16, w), path, rows: 0 })
    }

    /// Seals, fsyncs and renames the range's positions into place; the rows its segment will
    /// hold.
    fn finish(self) -> Result<u64, DataError> {
        let Deferred { out, path, rows } = self;
        out.into_inner().map_err(|e| e.into_error()).and_then(|w| w.finish()).map_err(|e| DataError::io(&path, e))?;
        Ok(rows)
    }
}

type SegmentResult = Result<(u64, super::rows::RowReader, f64), DataError>;

/// A recorded range's segment being written from its sealed positions ([`write_from_positions`]).
struct PendingSegment {
    range: usize,
    /// The rows the checkpoint recorded for the range.
    rows: u64,
    handle: std::thread::JoinHandle<SegmentResult>,
}

/// Joins a [`PendingSegment`] left behind by a failing job (errors ignored: the job's own error
/// is the one reported; the state stays for a resume).
struct PendingGuard(Option<PendingSegment>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.handle.join();
        }
    }
}

impl PendingSegment {
    /// Waits for the segment and checks it holds the rows recorded; the row reader back.
    fn wait(self, dir: &Path) -> Result<super::rows::RowReader, DataError> {
        let (rows, reader, done_s) =
            self.handle.join().map_err(|_| DataError::Invalid("the output writer panicked".into()))??;
        if rows != self.rows {
            return Err(DataError::file(
                segment_path(dir, self.range),
                "the segment rebuilt holds another number of rows than the checkpoint recorded",
            ));
        }
        tracing::info!(range = self.range, segment_done_s = done_s, "range segment written");
        Ok(reader)
    }

    /// `how`: the rows' terminator, whether they are tagged (a join) and whether this side is
    /// the requester (its positions index its buckets' items, not a kept order).
    fn start(
        reader: super::rows::RowReader,
        r: usize,
        range: std::ops::Range<usize>,
        rows: u64,
        how: (&'static [u8], bool, bool),
        shared: &Arc<Shared>,
        started: Instant,
    ) -> Result<PendingSegment, DataError> {
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("psi-segment".into())
            .spawn(move || {
                let (rows, reader) = write_from_positions(reader, r, range, how, &shared)?;
                Ok((rows, reader, started.elapsed().as_secs_f64()))
            })
            .map_err(|e| DataError::Invalid(format!("cannot start the output writer: {e}")))?;
        Ok(PendingSegment { range: r, rows, handle })
    }
}

/// Waits for the pending segment, if any: checks it holds the rows recorded, then drops the
/// range's positions and orders (the range is recorded on both sides: its acknowledgement was
/// checked before, or the resume agreed on it). The row reader back.
fn finish_pending(
    pending: &mut PendingGuard,
    shared: &Shared,
    dir: &Path,
    range_of: &dyn Fn(usize) -> std::ops::Range<usize>,
) -> Result<Option<super::rows::RowReader>, DataError> {
    let Some(p) = pending.0.take() else { return Ok(None) };
    let range = p.range;
    let reader = p.wait(dir)?;
    shared.remove(&positions_path(dir, range));
    for b in range_of(range) {
        shared.remove(&bucket_path(dir, b));
        shared.remove(&order_path(dir, b));
    }
    Ok(Some(reader))
}

/// The row reader for the next segment written from positions: the one at hand, or the one the
/// pending segment's writer hands back once it is done ([`finish_pending`]).
fn take_reader(
    reader: &mut Option<super::rows::RowReader>,
    pending: &mut PendingGuard,
    shared: &Shared,
    dir: &Path,
    range_of: &dyn Fn(usize) -> std::ops::Range<usize>,
) -> Result<super::rows::RowReader, DataError> {
    let rows = match reader.take() {
        Some(rows) => Some(rows),
        None => finish_pending(pending, shared, dir, range_of)?,
    };
    rows.ok_or_else(|| DataError::Invalid("no reader for a learning side".into()))
}

/// Writes recorded range `r`'s segment from its sealed positions ([`put_positions`]) and its
/// buckets' kept orders (a responder) or items (the requester, [`Shared::read_bucket`]): each
/// bucket's rows in digest order, as [`SpillSink::matched`] writes them, so the segment is the
/// bytes an uninterrupted run writes. The positions file is checked as it is read (every bucket
/// once, in order, no more positions than the bucket's order or items hold, each a real row,
/// nothing after the last bucket): a damaged or truncated file is an error naming it, and no
/// segment is written.
fn write_from_positions(
    mut reader: super::rows::RowReader,
    r: usize,
    range: std::ops::Range<usize>,
    (terminator, tagged, requester): (&[u8], bool, bool),
    shared: &Shared,
) -> Result<(u64, super::rows::RowReader), DataError> {
    let (path, seg) = (positions_path(&shared.dir, r), segment_path(&shared.dir, r));
    let damaged = || {
        DataError::file(
            &path,
            "the sealed matched positions of a recorded range are damaged or cut short: the job cannot be resumed (discard it and run it again)",
        )
    };
    let sealed = SealedReader::open(&path, &shared.key).map_err(|_| damaged())?;
    let mut input = std::io::BufReader::with_capacity(1 << 16, sealed);
    let io_err = |e| DataError::io(&seg, e);
    let mut w = std::io::BufWriter::with_capacity(
        1 << 16,
        SealedWriter::create(&seg, &shared.key, Access::OwnerOnly).map_err(io_err)?,
    );
    let tag = if tagged { crate::join::Side::Both.tag() } else { &[][..] };
    let mut rows = 0u64;
    let mut ids = Vec::new();
    for b in range {
        let mut head = [0u8; 8];
        input.read_exact(&mut head).map_err(|_| damaged())?;
        let bucket = u32::from_le_bytes(head[..4].try_into().expect("4")) as usize;
        let count = u32::from_le_bytes(head[4..].try_into().expect("4")) as usize;
        if bucket != b {
            return Err(damaged());
        }
        let (places, digests) = match requester {
            // The bucket's items as the protocol loaded them (duplicates dropped the same way).
            true => shared.read_bucket(b).map(|(digests, places, _)| (places, digests))?,
            false => shared.read_order(b)?,
        };
        // Checked against the bucket's own order before anything is sized by it.
        if count > places.len() {
            return Err(damaged());
        }
        ids.resize(count * 4, 0);
        input.read_exact(&mut ids).map_err(|_| damaged())?;
        let mut batch: RowBatch = ids
            .chunks_exact(4)
            .map(|p| {
                let p = u32::from_le_bytes(p.try_into().expect("4")) as usize;
                let row = places.get(p).copied().filter(|row| row.1 != DUMMY_LEN)?;
                digests.get(p).map(|&d| (d, row))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(damaged)?;
        drop((places, digests));
        if !shared.writes_matched {
            continue;
        }
        batch.par_sort_unstable_by_key(|&(d, row)| (d, row.2));
        rows += batch.len() as u64;
        reader.push(batch, |row| copy_row(&mut w, tag, row, terminator), &seg)?;
    }
    // Nothing after the last bucket (reading to the end also checks the file is not cut short).
    let mut rest = [0u8; 1];
    if !matches!(input.read(&mut rest), Ok(0)) {
        return Err(damaged());
    }
    reader.flush(|row| copy_row(&mut w, tag, row, terminator), &seg)?;
    w.into_inner().map_err(|e| e.into_error()).and_then(|w| w.finish()).map_err(io_err)?;
    Ok((rows, reader))
}

/// The role's and reveal mode's names, as the checkpoint keeps them.
fn names(job: &PsiJob) -> (String, String) {
    (format!("{:?}", job.role), format!("{:?}", job.reveal))
}

#[cfg(test)]
#[path = "resume_tests.rs"]
mod tests;

#[path = "shard.rs"]
pub mod shard;
