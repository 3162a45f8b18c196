//! Sharded streaming RR22 jobs (issue 12 item 4): the bucket space split into contiguous ranges
//! that run as independent worker pairs, worker `i` of one party with worker `i` of the other.
//!
//! # How a sharded job runs
//!
//! 1. **Prepare** ([`prepare_shards`], on each coordinating node, over the job's channel): the
//!    hello (joint salt and layout, agreed once), the scan into the job's sealed bucket spill and
//!    the resumable job's checkpoint ([`super`]) with a range size of `ceil(B / N)` buckets, so
//!    range `i` is shard `i` — the same function on both sides, since both derive it from the
//!    same layout and the `N` both nodes agreed. No snapshot: a learning side's workers read their
//!    rows from the input itself, each row's key checked against the digest it was matched by
//!    and the input's stamp checked ([`super::rows`]). A sealed `shards` manifest records what a
//!    worker needs (shard count, role, reveal mode, the peer-size bound, the input's stamp when
//!    this side learns).
//! 2. **Shards** ([`run_shard`], one worker process per shard, over its own connection): the
//!    workers first exchange a pairing frame (the session fingerprint, shard index, shard count
//!    and bucket range) and refuse a peer worker of another job or shard; then the range runs
//!    ([`rr22::run_buckets`], its own VOLE setup and positions), its rows go to the sealed
//!    segment `segment-I`, both workers compare the range's transcript digest, and the worker
//!    records its shard (`shard-I`: digest and counts, sealed) and deletes the range's spill.
//! 3. **Merge** ([`finish_shards`], on each coordinating node, over the job's channel): the
//!    shards' records become the checkpoint's finished ranges (running counts in shard order),
//!    and the job is taken up as a resume ([`run_psi_resumable`]): both nodes compare every
//!    shard's digest, then the output is written as header + segments in shard order into a
//!    temp file renamed into place, and the spill directory is removed.
//!
//! A shard that failed leaves no record: the job fails with no output and keeps its state; the
//! checkpoint records the shards finished before the first failed one, so `--resume` of the job
//! runs from that shard on (as one pair, from the kept spill) and writes the same output.
//!
//! # What each worker learns
//! What the whole job reveals, restricted to its shard: the peer's padded bucket capacities (as
//! the whole job: public from the set sizes), this shard's intersection (the learning side) and,
//! through the shard's message sizes, nothing beyond the padded sizes the layout fixes. Per-shard
//! intersection sizes are visible to a learning side's operator (they sum to the job's).
//! Only inner joins are sharded (a join's unmatched-row bitmap would have to be merged).
use super::*;

/// Most shards one job may have (both nodes check it in `plan`).
pub const MAX_SHARDS: usize = 64;
const MANIFEST_VERSION: u32 = 1;
/// Frame tag of the workers' pairing message.
const PAIR: u8 = 0x74;
/// Frame tag of the coordinating nodes' shard count message (after the hello).
const COUNT: u8 = 0x75;

fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("shards")
}

fn record_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("shard-{i:05}"))
}

/// What a worker needs besides the checkpoint: sealed in the spill directory.
#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u32,
    /// Shards that run: `min(N, B)` ranges of `ceil(B / N)` buckets.
    shards: u32,
    requester: bool,
    reveal_both: bool,
    max_peer_rows: u64,
    spec: DatasetSpec,
    rows: u64,
    /// The input's stamp when the job started.
    stamp: FileStamp,
    /// A learning side's input stamp (the rows come from the input: [`super::rows`]); `None` on
    /// a side that writes no rows. (Named for the snapshot earlier versions copied.)
    snapshot: Option<FileStamp>,
    /// The input's line terminator is CRLF (for a last row without one).
    crlf: bool,
}

impl Manifest {
    fn load(dir: &Path, key: &StorageKey) -> Result<Manifest, DataError> {
        let path = manifest_path(dir);
        if !path.exists() {
            return Err(DataError::Invalid("this job has no shard manifest (not a sharded job, or finished)".into()));
        }
        let m: Manifest = serde_json::from_slice(&read_sealed(&path, key)?)
            .map_err(|_| DataError::file(&path, "the shard manifest is damaged"))?;
        if m.version != MANIFEST_VERSION || m.shards == 0 || m.shards as usize > MAX_SHARDS {
            return Err(DataError::file(&path, "the shard manifest is damaged"));
        }
        Ok(m)
    }

    fn job(&self) -> PsiJob {
        PsiJob {
            protocol: PsiProtocol::Rr22,
            role: if self.requester { Role::Requester } else { Role::Responder },
            reveal: if self.reveal_both {
                consort_protocols::Reveal::Both
            } else {
                consort_protocols::Reveal::RequesterOnly
            },
            output: None,
            at_rest: crate::storage::AtRest::Plain,
            progress: None,
            proofs: false,
            limits: crate::psi::JobLimits { max_peer_rows: self.max_peer_rows, min_aligned_rows: 0 },
            payload: PayloadJob::None,
            join: crate::join::JoinType::Inner,
            columns: crate::psi::OutputColumns::Rows,
        }
    }

    fn input(&self) -> StreamInput {
        StreamInput {
            spec: self.spec.clone(),
            columns: Vec::new(),
            rows: self.rows,
            stamp: self.stamp.clone(),
            parquet: false,
        }
    }
}

/// The shard plan both coordinating nodes derive from the agreed layout and shard count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// Shards that run (`min(N, buckets)`, ranges of `ceil(buckets / N)` buckets).
    pub shards: usize,
    /// Each shard's bucket range.
    pub ranges: Vec<std::ops::Range<usize>>,
}

/// The ranges of `buckets` buckets split for `shards` shards: contiguous, in order, covering all.
pub fn shard_ranges(buckets: usize, shards: usize) -> Vec<std::ops::Range<usize>> {
    let size = buckets.div_ceil(shards.max(1)).max(1);
    (0..buckets.div_ceil(size)).map(|r| r * size..((r + 1) * size).min(buckets)).collect()
}

/// What one worker reports: its shard's counts and protocol time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ShardDone {
    pub shard: u32,
    digest: [u8; 32],
    pub matched: u64,
    pub dropped: u64,
    /// Rows in the shard's segment.
    pub rows: u64,
    /// Wall seconds of the shard's protocol.
    pub secs: f64,
}

impl ShardDone {
    /// The shard's range transcript digest (both workers compared it; the audit log keeps it).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

/// Another handle on a key (the shared state owns one; the bytes are zeroized on drop).
fn copy_key(key: &StorageKey) -> StorageKey {
    StorageKey::from_bytes(*key.secret_bytes())
}

fn check_sharded(input: &StreamInput, job: &PsiJob, shards: usize) -> Result<(), DataError> {
    if !streams(job) || input.parquet || !job.columns.is_rows() || !job.join.is_inner() {
        return Err(DataError::Invalid(
            "only streaming rr22 inner joins over CSV datasets with whole-row outputs run in shards".into(),
        ));
    }
    if !(1..=MAX_SHARDS).contains(&shards) {
        return Err(DataError::Invalid(format!("a job runs in 1 to {MAX_SHARDS} shards")));
    }
    Ok(())
}

/// Step 1 on a coordinating node: the hello, the scan and the checkpoint of a job to run in
/// `shards` shards (its spill directory `options.spill_dir` made by the caller with `key`,
/// [`create_job_key`]). Returns the plan both nodes derive. On error the state is discarded.
pub async fn prepare_shards<C: Channel>(
    channel: &C,
    input: &StreamInput,
    job: &PsiJob,
    options: &StreamOptions,
    key: &StorageKey,
    shards: usize,
) -> Result<ShardPlan, EngineError> {
    check_sharded(input, job, shards)?;
    let dir = options.spill_dir.clone();
    let prepared = prepare(channel, input, job, options, key, shards).await;
    if prepared.is_err() {
        let _ = discard(&dir);
    }
    prepared
}

async fn prepare<C: Channel>(
    channel: &C,
    input: &StreamInput,
    job: &PsiJob,
    options: &StreamOptions,
    key: &StorageKey,
    shards: usize,
) -> Result<ShardPlan, EngineError> {
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
    let session = rr22::start(channel, input.rows as usize, &config).await.map_err(psi_err)?;
    // Both nodes agreed the shard count in `plan`; checked here again before the scan.
    channel.send(Bytes::from(vec![COUNT, shards as u8])).await.map_err(closed)?;
    let peer = channel.recv().await.map_err(closed)?;
    if peer.len() != 2 || peer[0] != COUNT {
        return Err(peer_err("the peer's shard count message is malformed"));
    }
    if peer[1] as usize != shards {
        return Err(peer_err(format!("the peer runs the job in {} shards, this node in {shards}", peer[1])));
    }
    let learns = session.learns() && job.output.is_some();
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let buckets = session.layout.buckets;
    let ranges = shard_ranges(buckets, shards);
    let (input2, key2) = (input.clone(), copy_key(key));
    let (hasher, cap) = (session.hasher(), session.own_capacity());
    let dir2 = dir.clone();
    let job2 = job.clone();
    let (snapshot, crlf) = cpu::run(move || -> Result<(Option<FileStamp>, bool), DataError> {
        // No snapshot: a learning side's workers read their rows from the input itself, each
        // row's key checked against its digest and the input's stamp checked ([`super::rows`]).
        let shared = new_shared(&dir2, key2, &input2, &job2, false, true);
        let done = scan(&input2, &shared, &hasher, buckets, cap, false, false)?;
        Ok((learns.then(|| input2.stamp.clone()), done.terminator == b"\r\n"))
    })
    .await?;
    let state = session.state(options.bucket_size).expect("no payloads");
    let c = Checkpoint {
        version: CHECKPOINT_VERSION,
        role: names(job).0,
        reveal: names(job).1,
        join: job.join,
        own_size: state.own_size,
        peer_size: state.peer_size,
        bucket_size: state.bucket_size,
        salt: state.salt,
        range_buckets: ranges.first().map_or(1, |r| r.len()) as u64,
        stamp: input.stamp.clone(),
        finished: Vec::new(),
    };
    c.save(&dir, key)?;
    let m = Manifest {
        version: MANIFEST_VERSION,
        shards: ranges.len() as u32,
        requester: job.role == Role::Requester,
        reveal_both: job.reveal == consort_protocols::Reveal::Both,
        max_peer_rows: job.limits.max_peer_rows,
        spec: input.spec.clone(),
        rows: input.rows,
        stamp: input.stamp.clone(),
        snapshot,
        crlf,
    };
    let text = serde_json::to_vec(&m).map_err(|e| DataError::Invalid(e.to_string()))?;
    write_sealed(&manifest_path(&dir), key, &text)?;
    Ok(ShardPlan { shards: ranges.len(), ranges })
}

/// The shard count of a prepared job (what a worker checks its index against).
pub fn shard_count(spill_dir: &Path, key: &StorageKey) -> Result<usize, DataError> {
    Ok(Manifest::load(spill_dir, key)?.shards as usize)
}

fn pairing(fingerprint: &[u8; 32], shard: usize, shards: usize, range: &std::ops::Range<usize>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1 + 32 + 4 * 4);
    frame.push(PAIR);
    frame.extend_from_slice(fingerprint);
    for v in [shard, shards, range.start, range.end] {
        frame.extend_from_slice(&(v as u32).to_le_bytes());
    }
    frame
}

/// Step 2, one worker: runs shard `shard` of the prepared job in `spill_dir` with the peer's
/// worker of the same shard over `channel`, writes the shard's segment and record.
pub async fn run_shard<C: Channel>(
    channel: &C,
    spill_dir: &Path,
    key: &StorageKey,
    shard: usize,
) -> Result<ShardDone, EngineError> {
    let started = Instant::now();
    let dir = spill_dir.to_path_buf();
    let m = Manifest::load(&dir, key)?;
    let c = Checkpoint::load(&dir, key)?;
    let shards = m.shards as usize;
    if shard >= shards {
        return Err(DataError::Invalid(format!("shard {shard} of a job of {shards} shards")).into());
    }
    let job = m.job();
    let config = Rr22Config {
        role: job.role,
        reveal: job.reveal,
        progress: None,
        bucket_size: c.bucket_size as usize,
        max_peer_items: m.max_peer_rows,
        payload: PayloadMode::None,
    };
    let psi_err = |e: Rr22Error| EngineError::Psi(PsiError::Rr22(e));
    let mut session = rr22::resume_session(&c.state(), &config).map_err(psi_err)?;
    // Matches are put in digest order by the sink (as in every resumable range).
    session.matches_in_any_order();
    let ranges = shard_ranges(session.layout.buckets, shards);
    if ranges.len() != shards || ranges[0].len() as u64 != c.range_buckets {
        return Err(DataError::file(manifest_path(&dir), "the shard manifest is damaged").into());
    }
    let range = ranges[shard].clone();
    // Pairing: both workers must hold the same session and run the same shard of it.
    let fingerprint = session.fingerprint();
    let own = pairing(&fingerprint, shard, shards, &range);
    channel.send(Bytes::from(own.clone())).await.map_err(closed)?;
    let peer = channel.recv().await.map_err(closed)?;
    if peer.len() != own.len() || peer[0] != PAIR {
        return Err(peer_err("the peer worker's pairing message is malformed"));
    }
    if peer[1..33] != own[1..33] {
        return Err(peer_err("the peer worker belongs to another job (its session differs)"));
    }
    if peer[33..] != own[33..] {
        return Err(peer_err(format!("the peer worker runs another shard than {shard} of {shards}")));
    }
    let learns = session.learns() && m.snapshot.is_some();
    let shared = new_shared(&dir, copy_key(key), &m.input(), &job, learns, true);
    let snap = match &m.snapshot {
        Some(stamp) if learns => {
            Some(super::rows::RowReader::open(&m.spec, stamp, session.hasher(), shared.pass_dir())?)
        }
        _ => None,
    };
    let terminator: &'static [u8] = if m.crlf { b"\r\n" } else { b"\n" };
    let SegmentWriter { handle, tx } =
        SegmentWriter::start(snap, terminator, false, segment_path(&dir, shard), &shared)?;
    let source: Arc<dyn BucketSource> = Arc::new(SpillSource(shared.clone()));
    let mut sink = SpillSink::new(shared.clone(), tx, None);
    let transcript = Transcript::new(channel);
    let run = rr22::run_buckets(&transcript, &session, source, &mut sink, range.clone()).await;
    drop(sink);
    // The writer's error first: a row it refused stops the sink ("the writer stopped").
    let (rows, _) = SegmentWriter::join(handle)??;
    if let Some(e) = shared.failure.lock().expect("not poisoned").take() {
        return Err(e.into());
    }
    run.map_err(psi_err)?;
    let digest = transcript.digest(&fingerprint, job.role, shard, &range);
    let done = ShardDone {
        shard: shard as u32,
        digest,
        matched: shared.matched.load(Ordering::Relaxed),
        dropped: shared.dropped.load(Ordering::Relaxed),
        rows,
        secs: started.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_vec(&done).map_err(|e| DataError::Invalid(e.to_string()))?;
    write_sealed(&record_path(&dir, shard), key, &text)?;
    recorded(channel, shard, &digest).await?;
    let peer = channel.recv().await.map_err(closed)?;
    check_recorded(&peer, shard, &digest)?;
    // The range's spill stays until the merge: if another shard fails, a resume runs this range
    // again (the ranges after the first failed one), from this spill.
    Ok(done)
}

/// The shard records written so far, in shard order (`None` for a shard without one).
pub fn shard_records(spill_dir: &Path, key: &StorageKey) -> Result<Vec<Option<ShardDone>>, DataError> {
    let m = Manifest::load(spill_dir, key)?;
    (0..m.shards as usize)
        .map(|i| {
            let path = record_path(spill_dir, i);
            if !path.exists() {
                return Ok(None);
            }
            let d: ShardDone = serde_json::from_slice(&read_sealed(&path, key)?)
                .map_err(|_| DataError::file(&path, "a shard record is damaged"))?;
            if d.shard as usize != i {
                return Err(DataError::file(&path, "a shard record is damaged"));
            }
            Ok(Some(d))
        })
        .collect()
}

/// Records the shards finished before the first one without a record as the checkpoint's
/// finished ranges (so a `--resume` runs from the first failed shard on); returns how many.
pub fn record_shards(spill_dir: &Path, key: &StorageKey) -> Result<usize, DataError> {
    let records = shard_records(spill_dir, key)?;
    let mut c = Checkpoint::load(spill_dir, key)?;
    c.finished.clear();
    let (mut matched, mut dropped, mut rows) = (0, 0, 0);
    for d in records.iter().map_while(|d| d.as_ref()) {
        (matched, dropped, rows) = (matched + d.matched, dropped + d.dropped, rows + d.rows);
        c.finished.push(Finished { digest: d.digest, matched, dropped, rows });
    }
    c.save(spill_dir, key)?;
    Ok(c.finished.len())
}

/// Step 3 on a coordinating node once every worker finished: records the shards, then takes the
/// job up as a resume over `channel` (both nodes compare every shard's digest; the output is
/// header + segments in shard order, renamed into place; the spill directory is removed).
pub async fn finish_shards<C: Channel>(
    channel: &C,
    input: &StreamInput,
    job: &PsiJob,
    options: &StreamOptions,
    key: &StorageKey,
) -> Result<(PsiReport, StreamFigures), EngineError> {
    let shards = Manifest::load(&options.spill_dir, key)?.shards as usize;
    let finished = record_shards(&options.spill_dir, key)?;
    if finished != shards {
        return Err(DataError::Invalid(format!(
            "shard {finished} of {shards} did not finish: the job's state is kept for --resume"
        ))
        .into());
    }
    run_psi_resumable(channel, input, job, options, Resumable { key: copy_key(key), range_buckets: 0, resume: true })
        .await
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
