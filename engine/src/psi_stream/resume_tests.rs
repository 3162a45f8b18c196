//! Resume tests: a job interrupted at every point (a dropped channel on either side, after any
//! number of frames) and resumed writes the same bytes as the same session run without a stop;
//! forged resume messages are refused without output.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

use consort_protocols::channel::MemoryChannel;
use consort_protocols::{Reveal, Role, memory_pair};

use super::*;
use crate::check::{OutputFile, verify_psi_outputs};
use crate::join::JoinType;
use crate::psi::{JobLimits, PsiProtocol};
use crate::storage::AtRest;

const BUCKET: usize = 16;
const RANGE: usize = 4;

/// A channel that fails (as a dropped connection) after `left` sends and receives.
struct Dying {
    inner: MemoryChannel,
    left: AtomicUsize,
}

impl Dying {
    fn alive(&self) -> bool {
        self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

impl Channel for Dying {
    fn send(&self, frame: Bytes) -> impl std::future::Future<Output = Result<(), ChannelError>> + Send {
        let alive = self.alive();
        async move { if alive { self.inner.send(frame).await } else { Err(ChannelError::Closed) } }
    }
    fn recv(&self) -> impl std::future::Future<Output = Result<Bytes, ChannelError>> + Send {
        let alive = self.alive();
        async move { if alive { self.inner.recv().await } else { Err(ChannelError::Closed) } }
    }
}

fn job(role: Role, reveal: Reveal, join: JoinType, output: PathBuf) -> PsiJob {
    PsiJob {
        protocol: PsiProtocol::Rr22,
        role,
        reveal,
        output: Some(output),
        at_rest: AtRest::Plain,
        progress: None,
        proofs: false,
        limits: JobLimits::default(),
        payload: PayloadJob::None,
        join,
        columns: crate::psi::OutputColumns::Rows,
    }
}

fn csv(dir: &Path, name: &str, ids: &[String], dedup: bool) -> DatasetSpec {
    let mut text = String::from("id,v\r\n");
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!("{id},row {i} of {name}\r\n"));
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, text).unwrap();
    let mut spec = DatasetSpec::new(name, path, &["id"]);
    spec.dedup = dedup;
    spec
}

fn key() -> StorageKey {
    StorageKey::from_bytes([7; 32])
}

/// One case: both inputs, the jobs, where each side spills and writes.
struct Case {
    dir: PathBuf,
    a: DatasetSpec,
    b: DatasetSpec,
    reveal: Reveal,
    join: JoinType,
}

impl Case {
    fn new(dir: &Path, reveal: Reveal, join: JoinType, dedup: bool) -> Case {
        let ids = |r: std::ops::Range<u32>| r.map(|i| format!("id{i:05}")).collect::<Vec<_>>();
        let mut a_ids = ids(0..300);
        let b_ids = ids(150..420);
        if dedup {
            a_ids.extend(ids(140..160));
        }
        Case { dir: dir.to_path_buf(), a: csv(dir, "a", &a_ids, dedup), b: csv(dir, "b", &b_ids, dedup), reveal, join }
    }

    fn spill(&self, side: &str) -> PathBuf {
        self.dir.join(format!("spill-{side}"))
    }

    fn out(&self, side: &str) -> PathBuf {
        self.dir.join(format!("out/{side}.csv"))
    }

    /// Runs both sides (resumable), side `dies` ("a"/"b") dropping its channel after `after`
    /// frames; returns both results as strings.
    async fn run(&self, resume: bool, dies: Option<(&str, usize)>) -> (Result<(), String>, Result<(), String>) {
        let (ia, ib) = (StreamInput::open(&self.a).unwrap(), StreamInput::open(&self.b).unwrap());
        let ja = job(Role::Requester, self.reveal, self.join, self.out("a"));
        let jb = job(Role::Responder, self.reveal, self.join, self.out("b"));
        let oa = StreamOptions { spill_dir: self.spill("a"), bucket_size: BUCKET };
        let ob = StreamOptions { spill_dir: self.spill("b"), bucket_size: BUCKET };
        let (ca, cb) = memory_pair(64);
        let limit = |side: &str| match dies {
            Some((s, n)) if s == side => n,
            _ => usize::MAX,
        };
        let ca = Dying { inner: ca, left: AtomicUsize::new(limit("a")) };
        let cb = Dying { inner: cb, left: AtomicUsize::new(limit("b")) };
        let resumable = || Resumable { key: key(), range_buckets: RANGE, resume };
        let (ra, rb) = tokio::join!(
            async {
                let r = run_psi_resumable(&ca, &ia, &ja, &oa, resumable()).await;
                drop(ca);
                r.map(|_| ()).map_err(|e| e.to_string())
            },
            async {
                let r = run_psi_resumable(&cb, &ib, &jb, &ob, resumable()).await;
                drop(cb);
                r.map(|_| ()).map_err(|e| e.to_string())
            }
        );
        (ra, rb)
    }

    fn finished(&self, side: &str) -> Option<usize> {
        Checkpoint::load(&self.spill(side), &key()).ok().map(|c| c.finished.len())
    }

    fn outputs(&self) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        (std::fs::read(self.out("a")).ok(), std::fs::read(self.out("b")).ok())
    }

    fn save(&self, name: &str) {
        for side in ["a", "b"] {
            let to = self.dir.join(format!("{name}-{side}"));
            let _ = std::fs::remove_dir_all(&to);
            copy_dir(&self.spill(side), &to);
        }
    }

    fn restore(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.dir.join("out"));
        for side in ["a", "b"] {
            let _ = std::fs::remove_dir_all(self.spill(side));
            copy_dir(&self.dir.join(format!("{name}-{side}")), &self.spill(side));
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn sorted_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|&c| c == b'\n').collect();
    lines.sort();
    lines
}

/// Runs the job to the state right after both scans (each side's channel dropped at its resume
/// message: 2 hello frames, then the agree frame) and saves it as `s0`.
async fn state_after_scan(case: &Case) {
    let (ra, rb) = case.run(false, Some(("a", 2))).await;
    assert!(ra.is_err() && rb.is_err(), "{ra:?} {rb:?}");
    assert_eq!((case.finished("a"), case.finished("b")), (Some(0), Some(0)), "both scanned and recorded");
    assert_eq!(case.outputs(), (None, None), "no output after a failure");
    case.save("s0");
}

/// The whole sweep for one case: the session from `s0` run without a stop is the reference; then
/// every interruption point on either side, then a resume, gives the reference's bytes.
async fn interrupted_everywhere(case: &Case) {
    state_after_scan(case).await;
    case.restore("s0");
    let (ra, rb) = case.run(true, None).await;
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
    let reference = case.outputs();
    assert!(!case.spill("a").exists() && !case.spill("b").exists(), "a finished job leaves nothing");
    let learns_b = case.reveal == Reveal::Both;
    assert_eq!(reference.1.is_some(), learns_b);
    // The rows are the plaintext's (inner joins; the join types' own tests cover their tails).
    if case.join == JoinType::Inner {
        let (pa, pb) = (case.out("a"), case.out("b"));
        let b_out = learns_b.then(|| OutputFile::plain(&pb));
        let report = verify_psi_outputs(&case.a, &case.b, Some(OutputFile::plain(&pa)), b_out).unwrap();
        assert!(report.ok, "{:?}", report.problems);
    }
    // The same rows as the non-resumable streaming path.
    {
        let (ia, ib) = (StreamInput::open(&case.a).unwrap(), StreamInput::open(&case.b).unwrap());
        let dir = case.dir.join("plain");
        let ja = job(Role::Requester, case.reveal, case.join, dir.join("a.csv"));
        let jb = job(Role::Responder, case.reveal, case.join, dir.join("b.csv"));
        let oa = StreamOptions { spill_dir: dir.join("spill-a"), bucket_size: BUCKET };
        let ob = StreamOptions { spill_dir: dir.join("spill-b"), bucket_size: BUCKET };
        let (ca, cb) = memory_pair(64);
        let (ra, rb) = tokio::join!(run_psi_streaming(&ca, &ia, &ja, &oa), run_psi_streaming(&cb, &ib, &jb, &ob));
        ra.unwrap();
        rb.unwrap();
        let plain_a = std::fs::read(dir.join("a.csv")).unwrap();
        assert_eq!(sorted_lines(reference.0.as_ref().unwrap()), sorted_lines(&plain_a));
    }
    let mut resumed_mid = 0;
    let mut saved_s1 = false;
    for side in ["a", "b"] {
        let mut n = 1;
        loop {
            case.restore("s0");
            let (ra, rb) = case.run(true, Some((side, n))).await;
            if ra.is_ok() && rb.is_ok() {
                assert_eq!(case.outputs(), reference, "{side} never stopped");
                break;
            }
            assert!(ra.is_err() && rb.is_err(), "one side failed, both must: {ra:?} {rb:?}");
            assert_eq!(case.outputs(), (None, None), "no output after a failure ({side} after {n} frames)");
            let finished = (case.finished("a").unwrap(), case.finished("b").unwrap());
            assert!(finished.0.abs_diff(finished.1) <= 1, "{finished:?}");
            if !saved_s1 && finished.0 >= 1 && finished.1 >= 1 {
                case.save("s1");
                saved_s1 = true;
            }
            if finished.0.min(finished.1) > 0 {
                resumed_mid += 1;
            }
            let (ra, rb) = case.run(true, None).await;
            assert!(ra.is_ok() && rb.is_ok(), "resume after {side} stopped at {n} frames {finished:?}: {ra:?} {rb:?}");
            assert_eq!(case.outputs(), reference, "resumed after {side} stopped at {n} frames {finished:?}");
            assert!(!case.spill("a").exists() && !case.spill("b").exists());
            n += 1 + n / 3;
        }
    }
    assert!(resumed_mid >= 4, "only {resumed_mid} stops after a recorded range");
    assert!(saved_s1);
}

/// Rows read with positioned reads (inputs larger than the page cache), a range's buckets served
/// by one pass over the input, give the bytes the map gives: the same session run to the end both ways, resumable
/// (the requester's segments, a learning responder's rebuilt from its positions) and not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positioned_reads_write_the_bytes_the_map_writes() {
    for (reveal, join) in [(Reveal::Both, JoinType::Inner), (Reveal::Both, JoinType::Full)] {
        let dir = tempfile::tempdir().unwrap();
        let case = Case::new(dir.path(), reveal, join, true);
        state_after_scan(&case).await;
        case.restore("s0");
        let (ra, rb) = case.run(true, None).await;
        assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
        let mapped = case.outputs();
        assert!(mapped.0.is_some() && mapped.1.is_some());
        case.restore("s0");
        let (ra, rb) = super::rows::READS_ONLY.scope(true, case.run(true, None)).await;
        assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
        assert_eq!(case.outputs(), mapped, "{join:?}: positioned reads");
        // A learning responder's segment rebuilt from its sealed positions, with reads.
        if join == JoinType::Inner {
            state_recorded_without_segment(&case).await;
            let (ra, rb) = super::rows::READS_ONLY.scope(true, case.run(true, None)).await;
            assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
            assert_eq!(case.outputs(), mapped, "rebuilt with positioned reads");
        }
        // The non-resumable path: the plaintext's rows.
        let (ia, ib) = (StreamInput::open(&case.a).unwrap(), StreamInput::open(&case.b).unwrap());
        let plain = case.dir.join("plain");
        let ja = job(Role::Requester, reveal, JoinType::Inner, plain.join("a.csv"));
        let jb = job(Role::Responder, reveal, JoinType::Inner, plain.join("b.csv"));
        let oa = StreamOptions { spill_dir: plain.join("spill-a"), bucket_size: BUCKET };
        let ob = StreamOptions { spill_dir: plain.join("spill-b"), bucket_size: BUCKET };
        let (ca, cb) = memory_pair(64);
        let both = async { tokio::join!(run_psi_streaming(&ca, &ia, &ja, &oa), run_psi_streaming(&cb, &ib, &jb, &ob)) };
        let (ra, rb) = super::rows::READS_ONLY.scope(true, both).await;
        ra.unwrap();
        rb.unwrap();
        let (pa, pb) = (plain.join("a.csv"), plain.join("b.csv"));
        let report =
            verify_psi_outputs(&case.a, &case.b, Some(OutputFile::plain(&pa)), Some(OutputFile::plain(&pb))).unwrap();
        assert!(report.ok, "{:?}", report.problems);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_and_resumed_jobs_write_the_same_bytes() {
    for (reveal, join, dedup) in [
        (Reveal::Both, JoinType::Inner, false),
        (Reveal::RequesterOnly, JoinType::Inner, false),
        (Reveal::Both, JoinType::Full, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let case = Case::new(dir.path(), reveal, join, dedup);
        interrupted_everywhere(&case).await;
    }
}

/// Side A resumes against a peer that answers its resume message with `forge(message)`.
async fn resume_against(case: &Case, forge: impl FnOnce(Vec<u8>) -> Vec<u8>) -> String {
    let ia = StreamInput::open(&case.a).unwrap();
    let ja = job(Role::Requester, case.reveal, case.join, case.out("a"));
    let oa = StreamOptions { spill_dir: case.spill("a"), bucket_size: BUCKET };
    let (ca, cb) = memory_pair(64);
    let peer = async move {
        let frame = cb.recv().await.unwrap().to_vec();
        cb.send(Bytes::from(forge(frame))).await.unwrap();
        // Keep the channel open until A has read the answer.
        let _ = cb.recv().await;
    };
    let (r, ()) = tokio::join!(
        async {
            let r = run_psi_resumable(&ca, &ia, &ja, &oa, Resumable { key: key(), range_buckets: RANGE, resume: true })
                .await;
            drop(ca);
            r
        },
        peer
    );
    assert!(!case.out("a").exists(), "no output");
    assert!(case.spill("a").exists(), "a refused resume keeps the job's state");
    r.map(|_| ()).unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_resume_messages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case::new(dir.path(), Reveal::Both, JoinType::Inner, false);
    state_after_scan(&case).await;
    // Up to a state where both recorded a range: A stops after many frames.
    let mut n = 20;
    loop {
        case.restore("s0");
        let _ = case.run(true, Some(("a", n))).await;
        if case.finished("a").unwrap() >= 1 && case.finished("b").unwrap() >= 1 {
            break;
        }
        n += 10;
        assert!(n < 10_000, "never recorded a range");
    }
    case.save("s1");
    let own_finished = case.finished("a").unwrap();
    let tamper = |at: usize| {
        move |mut f: Vec<u8>| {
            f[at] ^= 1;
            f
        }
    };
    let e = resume_against(&case, tamper(5)).await;
    assert!(e.contains("another session"), "{e}");
    let e = resume_against(&case, tamper(34)).await;
    assert!(e.contains("range sizes differ"), "{e}");
    let e = resume_against(&case, tamper(45)).await;
    assert!(e.contains("digest differs"), "{e}");
    let e = resume_against(&case, |mut f| {
        f[41..45].copy_from_slice(&1000u32.to_le_bytes());
        f.extend(std::iter::repeat_n(0, 32 * (1000 - own_finished)));
        f
    })
    .await;
    assert!(e.contains("finished ranges of the job's"), "{e}");
    let e = resume_against(&case, |f| f[..40].to_vec()).await;
    assert!(e.contains("malformed"), "{e}");
    let e = resume_against(&case, |mut f| {
        f.push(0);
        f
    })
    .await;
    assert!(e.contains("malformed"), "{e}");
    // The job's state survived the forgeries: the honest resume works.
    let (ra, rb) = case.run(true, None).await;
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
    let report = verify_psi_outputs(
        &case.a,
        &case.b,
        Some(OutputFile::plain(&case.out("a"))),
        Some(OutputFile::plain(&case.out("b"))),
    )
    .unwrap();
    assert!(report.ok, "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_an_unknown_job_and_a_changed_input() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case::new(dir.path(), Reveal::Both, JoinType::Inner, false);
    // No state at all: a clean error, nothing written.
    let (ra, rb) = case.run(true, None).await;
    assert!(ra.as_ref().unwrap_err().contains("no resumable state"), "{ra:?}");
    assert!(rb.is_err());
    assert_eq!(case.outputs(), (None, None));
    // A stop before the checkpoint (inside the hello) leaves nothing to resume, and nothing.
    let (ra, rb) = case.run(false, Some(("a", 1))).await;
    assert!(ra.is_err() && rb.is_err());
    assert!(!case.spill("a").exists());
    // The requester's input changes after the first run: refused, state kept.
    state_after_scan(&case).await;
    case.restore("s0");
    let text = std::fs::read_to_string(&case.a.file).unwrap().replace("row 7 of a", "row 7 of A");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&case.a.file, text).unwrap();
    let (ra, rb) = case.run(true, None).await;
    assert!(ra.as_ref().unwrap_err().contains("the input changed"), "{ra:?}");
    assert!(rb.is_err());
    assert_eq!(case.outputs(), (None, None));
    assert!(case.spill("a").exists());
    discard(&case.spill("a")).unwrap();
    assert!(!case.spill("a").exists());
}

/// Resumable runs without a stop against the plaintext intersection on the edge cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_runs_match_the_plaintext_on_edge_cases() {
    let ids = |r: std::ops::Range<u32>| r.map(|i| format!("id{i:05}")).collect::<Vec<_>>();
    let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        ("empty both", vec![], vec![]),
        ("empty requester", vec![], ids(0..50)),
        ("empty responder", ids(0..50), vec![]),
        ("one item, shared", ids(7..8), ids(7..8)),
        ("one item, not shared", ids(7..8), ids(8..9)),
        ("disjoint", ids(0..100), ids(100..250)),
        ("identical", ids(0..200), ids(0..200)),
        ("unequal sizes", ids(0..20), ids(10..400)),
    ];
    for (name, a_ids, b_ids) in &cases {
        for reveal in [Reveal::Both, Reveal::RequesterOnly] {
            let dir = tempfile::tempdir().unwrap();
            let case = Case {
                dir: dir.path().to_path_buf(),
                a: csv(dir.path(), "a", a_ids, false),
                b: csv(dir.path(), "b", b_ids, false),
                reveal,
                join: JoinType::Inner,
            };
            let (ra, rb) = case.run(false, None).await;
            assert!(ra.is_ok() && rb.is_ok(), "{name} {reveal:?}: {ra:?} {rb:?}");
            let (pa, pb) = (case.out("a"), case.out("b"));
            let b_out = (reveal == Reveal::Both).then(|| OutputFile::plain(&pb));
            assert_eq!(pb.exists(), reveal == Reveal::Both, "{name}");
            let report = verify_psi_outputs(&case.a, &case.b, Some(OutputFile::plain(&pa)), b_out).unwrap();
            assert!(report.ok, "{name} {reveal:?}: {:?}", report.problems);
            assert!(!case.spill("a").exists() && !case.spill("b").exists(), "{name}: nothing left");
        }
    }
}

#[test]
fn default_ranges_are_few_and_large_at_small_n() {
    // (buckets, range size, ranges)
    for (buckets, size, ranges) in
        [(1, 1, 1), (3, 3, 1), (4, 4, 1), (10, 4, 3), (96, 4, 24), (128, 4, 32), (1000, 32, 32)]
    {
        let r = default_range_buckets(buckets);
        assert_eq!((r, buckets.div_ceil(r)), (size, ranges), "{buckets} buckets");
    }
}

/// A channel whose range acknowledgements (`0x71`) are altered by `forge` on the way out.
struct ForgedAcks<F> {
    inner: MemoryChannel,
    forge: F,
}

impl<F: Fn(Vec<u8>) -> Vec<u8> + Send + Sync> Channel for ForgedAcks<F> {
    fn send(&self, frame: Bytes) -> impl std::future::Future<Output = Result<(), ChannelError>> + Send {
        let frame =
            if frame.len() == 37 && frame[0] == RECORDED { Bytes::from((self.forge)(frame.to_vec())) } else { frame };
        self.inner.send(frame)
    }
    fn recv(&self) -> impl std::future::Future<Output = Result<Bytes, ChannelError>> + Send {
        self.inner.recv()
    }
}

/// The acknowledgements are checked when they arrive (the next range's first frame, or at the
/// end): a forged or malformed one fails the job with no output, the job's state stays, and an
/// honest resume then writes the plaintext's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_range_acknowledgements_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case::new(dir.path(), Reveal::Both, JoinType::Inner, false);
    state_after_scan(&case).await;
    type Forge = fn(Vec<u8>) -> Vec<u8>;
    let forgeries: [(Forge, &str); 3] = [
        (
            |mut f| {
                f[36] ^= 1;
                f
            },
            "digests differ",
        ),
        (
            |mut f| {
                f[1] ^= 1;
                f
            },
            "another range",
        ),
        (|f| f[..36].to_vec(), "malformed"),
    ];
    for (forge, expected) in forgeries {
        case.restore("s0");
        let (ia, ib) = (StreamInput::open(&case.a).unwrap(), StreamInput::open(&case.b).unwrap());
        let ja = job(Role::Requester, case.reveal, case.join, case.out("a"));
        let jb = job(Role::Responder, case.reveal, case.join, case.out("b"));
        let oa = StreamOptions { spill_dir: case.spill("a"), bucket_size: BUCKET };
        let ob = StreamOptions { spill_dir: case.spill("b"), bucket_size: BUCKET };
        let (ca, cb) = memory_pair(64);
        let cb = ForgedAcks { inner: cb, forge };
        let resumable = || Resumable { key: key(), range_buckets: RANGE, resume: true };
        let (ra, rb) = tokio::join!(
            async {
                let r = run_psi_resumable(&ca, &ia, &ja, &oa, resumable()).await;
                drop(ca);
                r
            },
            async {
                let r = run_psi_resumable(&cb, &ib, &jb, &ob, resumable()).await;
                drop(cb);
                r
            }
        );
        let e = ra.map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(expected), "{e}");
        assert!(rb.is_err());
        assert_eq!(case.outputs(), (None, None), "no output");
        assert!(case.spill("a").exists() && case.spill("b").exists(), "the state stays");
        // A recorded range 0 but never saw its acknowledgement: its spill is still there.
        assert!(bucket_path(&case.spill("a"), 0).exists() || order_path(&case.spill("a"), 0).exists());
        let (ra, rb) = case.run(true, None).await;
        assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
        let report = verify_psi_outputs(
            &case.a,
            &case.b,
            Some(OutputFile::plain(&case.out("a"))),
            Some(OutputFile::plain(&case.out("b"))),
        )
        .unwrap();
        assert!(report.ok, "{:?}", report.problems);
    }
}

/// No snapshot: a resumed learning side reads its rows from the input again, so an input whose
/// key bytes changed in place (same length, modification time put back: the stamp cannot tell)
/// fails the job at the first changed row it copies, with no output and the state kept; an input
/// appended to or truncated is refused by its stamp before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_input_fails_the_resume_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case::new(dir.path(), Reveal::Both, JoinType::Inner, false);
    state_after_scan(&case).await;
    let original = std::fs::read(&case.a.file).unwrap();
    let mtime = std::fs::metadata(&case.a.file).unwrap().modified().unwrap();
    // id00200 is in both sets: its key becomes id00201 (in both sets too), same length.
    let text = String::from_utf8(original.clone()).unwrap().replace("id00200,", "id00201,");
    std::fs::write(&case.a.file, &text).unwrap();
    std::fs::File::options().write(true).open(&case.a.file).unwrap().set_modified(mtime).unwrap();
    case.restore("s0");
    let (ra, rb) = case.run(true, None).await;
    let err = ra.unwrap_err();
    assert!(err.contains("modified during the job") && err.contains(":202:"), "{err}");
    assert!(!err.contains("id0020"), "{err}");
    assert!(rb.is_err());
    assert_eq!(case.outputs(), (None, None));
    assert!(case.spill("a").exists() && case.spill("b").exists(), "state kept");
    // Appended to, then truncated: refused by the stamp.
    for changed in [[original.as_slice(), b"id99999,more\r\n"].concat(), original[..original.len() - 2].to_vec()] {
        std::fs::write(&case.a.file, &changed).unwrap();
        case.restore("s0");
        let (ra, rb) = case.run(true, None).await;
        assert!(ra.as_ref().unwrap_err().contains("changed"), "{ra:?}");
        assert!(rb.is_err());
        assert_eq!(case.outputs(), (None, None));
    }
    // The original file back (modification time too): the resume finishes with the plaintext's rows.
    std::fs::write(&case.a.file, &original).unwrap();
    std::fs::File::options().write(true).open(&case.a.file).unwrap().set_modified(mtime).unwrap();
    case.restore("s0");
    let (ra, rb) = case.run(true, None).await;
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
    let (pa, pb) = (case.out("a"), case.out("b"));
    let report =
        verify_psi_outputs(&case.a, &case.b, Some(OutputFile::plain(&pa)), Some(OutputFile::plain(&pb))).unwrap();
    assert!(report.ok, "{:?}", report.problems);
}

/// Runs from `s0` with side A's channel dropped after more and more frames until the responder
/// (B, learning: reveal both) has recorded range 0 on both sides but still holds range 0's
/// sealed positions (its segment was written in the background and the job failed before it
/// took it up); then removes B's segment of range 0, as a kill between the record and the
/// segment's rename leaves it, and saves that as `cut`.
async fn state_recorded_without_segment(case: &Case) {
    let mut n = 10;
    loop {
        case.restore("s0");
        let (ra, rb) = case.run(true, Some(("a", n))).await;
        assert!(ra.is_err() && rb.is_err(), "never cut ({n} frames)");
        let both = case.finished("a").unwrap() >= 1 && case.finished("b").unwrap() >= 1;
        if both && ["a", "b"].iter().all(|side| positions_path(&case.spill(side), 0).exists()) {
            break;
        }
        n += 1;
        assert!(n < 10_000, "never reached a recorded range with its positions");
    }
    let (a, b) = (case.spill("a"), case.spill("b"));
    assert!((0..RANGE).all(|bucket| order_path(&b, bucket).exists()), "the orders stay with the positions");
    assert!((0..RANGE).all(|bucket| bucket_path(&a, bucket).exists()), "the buckets stay with the positions");
    // Absent already when the job failed between the record and the segment's start.
    for side in [&a, &b] {
        let _ = std::fs::remove_file(segment_path(side, 0));
        assert!(!segment_path(side, 0).exists());
    }
    case.save("cut");
}

/// A learning side records a range as soon as its matched positions are sealed, before its
/// segment is written: a job cut there resumes (each segment rebuilt from the sealed positions and
/// the kept orders (responder) or buckets, duplicates dropped again (requester)) to the bytes of
/// the same session run without a stop; sealed positions that are tampered with, cut short or
/// that do not fit the range fail the resume with no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_range_without_its_segment_is_rebuilt_from_its_positions() {
    for (join, dedup) in [(JoinType::Inner, false), (JoinType::Full, true)] {
        let dir = tempfile::tempdir().unwrap();
        let case = Case::new(dir.path(), Reveal::Both, join, dedup);
        state_after_scan(&case).await;
        case.restore("s0");
        let (ra, rb) = case.run(true, None).await;
        assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
        let reference = case.outputs();
        assert!(reference.0.is_some() && reference.1.is_some());
        state_recorded_without_segment(&case).await;
        let (ra, rb) = case.run(true, None).await;
        assert!(ra.is_ok() && rb.is_ok(), "{join:?}: {ra:?} {rb:?}");
        assert_eq!(case.outputs(), reference, "{join:?}: the rebuilt segment's bytes");
        assert!(!case.spill("a").exists() && !case.spill("b").exists(), "a finished job leaves nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_sealed_positions_fail_the_resume_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case::new(dir.path(), Reveal::Both, JoinType::Inner, false);
    state_after_scan(&case).await;
    state_recorded_without_segment(&case).await;
    // The responder's positions index its kept orders, the requester's its buckets.
    for side in ["b", "a"] {
        case.restore("cut");
        let path = positions_path(&case.spill(side), 0);
        let sealed = std::fs::read(&path).unwrap();
        let plain = read_sealed(&path, &key()).unwrap();
        // The honest positions file: one bucket header per bucket of range 0, in order.
        assert_eq!(u32::from_le_bytes(plain[..4].try_into().unwrap()), 0);
        let count = u32::from_le_bytes(plain[4..8].try_into().unwrap()) as usize;
        let resealed = |bytes: Vec<u8>| move |p: &Path| write_sealed(p, &key(), &bytes).unwrap();
        let mut flipped = sealed.clone();
        flipped[sealed.len() / 2] ^= 1;
        let mut wrong_bucket = plain.clone();
        wrong_bucket[..4].copy_from_slice(&1u32.to_le_bytes());
        let mut too_many = plain.clone();
        too_many[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut outside = plain.clone();
        assert!(count > 0, "bucket 0 has matches");
        outside[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut trailing = plain.clone();
        trailing.push(0);
        type Damage = Box<dyn Fn(&Path)>;
        let damages: Vec<(&str, Damage)> = vec![
            ("a flipped bit", Box::new(move |p: &Path| std::fs::write(p, &flipped).unwrap())),
            ("cut short", Box::new(move |p: &Path| std::fs::write(p, &sealed[..sealed.len() - 20]).unwrap())),
            ("truncated plaintext", Box::new(resealed(plain[..plain.len() - 4].to_vec()))),
            ("another bucket", Box::new(resealed(wrong_bucket))),
            ("more positions than the bucket", Box::new(resealed(too_many))),
            ("a position outside the bucket", Box::new(resealed(outside))),
            ("bytes after the last bucket", Box::new(resealed(trailing))),
            ("missing", Box::new(|p: &Path| std::fs::remove_file(p).unwrap())),
        ];
        for (what, damage) in damages {
            case.restore("cut");
            damage(&path);
            let (ra, rb) = case.run(true, None).await;
            let (mine, theirs) = if side == "b" { (rb, ra) } else { (ra, rb) };
            let e = mine.unwrap_err();
            assert!(e.contains("sealed matched positions") && e.contains("positions-00000"), "{side} {what}: {e}");
            assert!(theirs.is_err(), "{side} {what}");
            assert_eq!(case.outputs(), (None, None), "{side} {what}: no output");
            assert!(case.spill(side).exists(), "{side} {what}: the state stays");
        }
    }
    // The honest file: the resume finishes with the plaintext's rows.
    case.restore("cut");
    let (ra, rb) = case.run(true, None).await;
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
    let report = verify_psi_outputs(
        &case.a,
        &case.b,
        Some(OutputFile::plain(&case.out("a"))),
        Some(OutputFile::plain(&case.out("b"))),
    )
    .unwrap();
    assert!(report.ok, "{:?}", report.problems);
}
