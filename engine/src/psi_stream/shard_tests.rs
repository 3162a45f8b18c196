//! Shard tests: N worker pairs over their own channels give the plaintext intersection and, for
//! one session, byte for byte the output of the same session run as one pair; a worker of another
//! shard or job is refused; a failed shard leaves no output and a resumable state.
use std::path::{Path, PathBuf};

use consort_protocols::{Reveal, Role, memory_pair};

use super::*;
use crate::check::{OutputFile, verify_psi_outputs};
use crate::psi::{JobLimits, PsiProtocol};
use crate::storage::AtRest;

const BUCKET: usize = 16;

fn job(role: Role, reveal: Reveal, output: PathBuf) -> PsiJob {
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
        join: crate::join::JoinType::Inner,
        columns: crate::psi::OutputColumns::Rows,
    }
}

fn csv(dir: &Path, name: &str, ids: &[String]) -> DatasetSpec {
    let mut text = String::from("id,v\n");
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!("{id},row {i} of {name}\n"));
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, text).unwrap();
    DatasetSpec::new(name, path, &["id"])
}

fn key() -> StorageKey {
    StorageKey::from_bytes([9; 32])
}

struct Case {
    dir: PathBuf,
    a: DatasetSpec,
    b: DatasetSpec,
    reveal: Reveal,
}

impl Case {
    fn new(dir: &Path, reveal: Reveal, a: std::ops::Range<u32>, b: std::ops::Range<u32>) -> Case {
        let ids = |r: std::ops::Range<u32>| r.map(|i| format!("id{i:05}")).collect::<Vec<_>>();
        Case { dir: dir.to_path_buf(), a: csv(dir, "a", &ids(a)), b: csv(dir, "b", &ids(b)), reveal }
    }
    fn spill(&self, side: &str) -> PathBuf {
        self.dir.join(format!("spill-{side}"))
    }
    fn out(&self, side: &str) -> PathBuf {
        self.dir.join(format!("out/{side}.csv"))
    }
    fn jobs(&self) -> (PsiJob, PsiJob) {
        (job(Role::Requester, self.reveal, self.out("a")), job(Role::Responder, self.reveal, self.out("b")))
    }
    fn options(&self, side: &str) -> StreamOptions {
        StreamOptions { spill_dir: self.spill(side), bucket_size: BUCKET }
    }
    fn inputs(&self) -> (StreamInput, StreamInput) {
        (StreamInput::open(&self.a).unwrap(), StreamInput::open(&self.b).unwrap())
    }

    async fn prepare(&self, shards: (usize, usize)) -> (Result<ShardPlan, String>, Result<ShardPlan, String>) {
        let (ia, ib) = self.inputs();
        let (ja, jb) = self.jobs();
        let (ca, cb) = memory_pair(64);
        let (ra, rb) = tokio::join!(
            async {
                let r = prepare_shards(&ca, &ia, &ja, &self.options("a"), &key(), shards.0).await;
                drop(ca);
                r
            },
            async {
                let r = prepare_shards(&cb, &ib, &jb, &self.options("b"), &key(), shards.1).await;
                drop(cb);
                r
            }
        );
        (ra.map_err(|e| e.to_string()), rb.map_err(|e| e.to_string()))
    }

    /// Runs worker pairs one after another (`pairs`: which shard of a talks to which shard of b;
    /// the node tests run them as concurrent processes).
    async fn workers(&self, pairs: &[(usize, usize)]) -> Vec<(Result<ShardDone, String>, Result<ShardDone, String>)> {
        let mut results = Vec::new();
        for &(i, j) in pairs {
            let (ca, cb) = memory_pair(64);
            let (sa, sb) = (self.spill("a"), self.spill("b"));
            results.push(tokio::join!(
                async {
                    let r = run_shard(&ca, &sa, &key(), i).await;
                    drop(ca);
                    r.map_err(|e| e.to_string())
                },
                async {
                    let r = run_shard(&cb, &sb, &key(), j).await;
                    drop(cb);
                    r.map_err(|e| e.to_string())
                }
            ));
        }
        results
    }

    async fn finish(&self) -> (Result<PsiReport, String>, Result<PsiReport, String>) {
        let (ia, ib) = self.inputs();
        let (ja, jb) = self.jobs();
        let (ca, cb) = memory_pair(64);
        let (ra, rb) = tokio::join!(
            async {
                let r = finish_shards(&ca, &ia, &ja, &self.options("a"), &key()).await;
                drop(ca);
                r
            },
            async {
                let r = finish_shards(&cb, &ib, &jb, &self.options("b"), &key()).await;
                drop(cb);
                r
            }
        );
        (ra.map(|r| r.0).map_err(|e| e.to_string()), rb.map(|r| r.0).map_err(|e| e.to_string()))
    }

    /// The same prepared session as one pair: the resumable path over every range.
    async fn one_pair(&self) {
        let (ia, ib) = self.inputs();
        let (ja, jb) = self.jobs();
        let (ca, cb) = memory_pair(64);
        let resumable = || Resumable { key: key(), range_buckets: 0, resume: true };
        let (oa, ob) = (self.options("a"), self.options("b"));
        let (ra, rb) = tokio::join!(
            run_psi_resumable(&ca, &ia, &ja, &oa, resumable()),
            run_psi_resumable(&cb, &ib, &jb, &ob, resumable())
        );
        ra.unwrap();
        rb.unwrap();
    }

    fn outputs(&self) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        (std::fs::read(self.out("a")).ok(), std::fs::read(self.out("b")).ok())
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Four worker pairs: the plaintext intersection, and the bytes of the same session run as one
/// pair (the order within a bucket is the digest order, fixed by the salt, so shard order is the
/// one pair's order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_worker_pairs_write_the_one_pair_output() {
    for reveal in [Reveal::Both, Reveal::RequesterOnly] {
        for (a, b) in [(0..300, 150..420), (0..1, 0..1), (0..200, 300..500), (0..50, 0..50)] {
            let tmp = tempfile::tempdir().unwrap();
            let case = Case::new(tmp.path(), reveal, a.clone(), b.clone());
            let (pa, pb) = case.prepare((4, 4)).await;
            let (pa, pb) = (pa.unwrap(), pb.unwrap());
            assert_eq!(pa, pb, "both sides derive the same plan");
            if a.len() >= 200 {
                assert_eq!(pa.shards, 4, "{pa:?}");
            }
            for side in ["a", "b"] {
                copy_dir(&case.spill(side), &tmp.path().join(format!("saved-{side}")));
            }
            let pairs: Vec<(usize, usize)> = (0..pa.shards).map(|i| (i, i)).collect();
            for (ra, rb) in case.workers(&pairs).await {
                ra.unwrap();
                rb.unwrap();
            }
            let (ra, rb) = case.finish().await;
            let (ra, _) = (ra.unwrap(), rb.unwrap());
            let sharded = case.outputs();
            assert!(!case.spill("a").exists() && !case.spill("b").exists(), "a finished job leaves nothing");
            assert_eq!(sharded.1.is_some(), reveal == Reveal::Both);
            let expected = a.clone().filter(|i| b.contains(i)).count() as u64;
            assert_eq!(ra.intersection, Some(expected));
            let pb_path = case.out("b");
            let b_out = (reveal == Reveal::Both).then(|| OutputFile::plain(&pb_path));
            let report = verify_psi_outputs(&case.a, &case.b, Some(OutputFile::plain(&case.out("a"))), b_out).unwrap();
            assert!(report.ok, "{:?}", report.problems);
            // The same session as one pair.
            std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
            for side in ["a", "b"] {
                copy_dir(&tmp.path().join(format!("saved-{side}")), &case.spill(side));
            }
            case.one_pair().await;
            assert_eq!(case.outputs(), sharded, "{reveal:?} {a:?} {b:?}");
        }
    }
}

/// A worker paired with another shard's, or with a worker of another job, refuses before any
/// protocol frame; no shard is recorded and the merge refuses, with no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_workers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case::new(tmp.path(), Reveal::Both, 0..300, 150..420);
    let (pa, _) = case.prepare((4, 4)).await;
    assert_eq!(pa.unwrap().shards, 4);
    let runs = case.workers(&[(0, 1), (2, 2)]).await;
    let (ra, rb) = &runs[0];
    for r in [ra, rb] {
        assert!(r.as_ref().is_err_and(|e| e.contains("another shard")), "{r:?}");
    }
    assert!(runs[1].0.is_ok() && runs[1].1.is_ok());
    // Another job: b's state replaced by a fresh session's.
    let other_dir = tmp.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = Case::new(&other_dir, Reveal::Both, 0..300, 150..420);
    other.prepare((4, 4)).await.1.unwrap();
    let (ca, cb) = memory_pair(64);
    let (ra, rb) = tokio::join!(
        async {
            let r = run_shard(&ca, &case.spill("a"), &key(), 1).await;
            drop(ca);
            r
        },
        async {
            let r = run_shard(&cb, &other.spill("b"), &key(), 1).await;
            drop(cb);
            r
        }
    );
    for r in [ra.map(|_| ()), rb.map(|_| ())] {
        assert!(r.as_ref().is_err_and(|e| e.to_string().contains("another job")), "{r:?}");
    }
    let records = shard_records(&case.spill("a"), &key()).unwrap();
    assert_eq!(records.iter().map(Option::is_some).collect::<Vec<_>>(), [false, false, true, false]);
    let (ra, rb) = case.finish().await;
    assert!(ra.is_err() && rb.is_err());
    assert_eq!(case.outputs(), (None, None), "no output");
    assert!(case.spill("a").exists(), "the state is kept for a resume");
}

/// Shard counts out of bounds are refused before the hello; so is a join that is not inner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_counts_out_of_bounds_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case::new(tmp.path(), Reveal::Both, 0..30, 10..40);
    for n in [0, MAX_SHARDS + 1] {
        let (ia, _) = case.inputs();
        let (ja, _) = case.jobs();
        let (ca, _cb) = memory_pair(64);
        let e = prepare_shards(&ca, &ia, &ja, &case.options("a"), &key(), n).await.unwrap_err();
        assert!(e.to_string().contains("1 to 64 shards"), "{e}");
        assert!(!case.spill("a").exists());
    }
    // Both sides' counts in bounds but different: both refuse after the hello, nothing kept.
    let (ra, rb) = case.prepare((4, 2)).await;
    for r in [ra, rb] {
        assert!(r.as_ref().is_err_and(|e| e.contains("shards, this node in")), "{r:?}");
    }
    assert!(!case.spill("a").exists() && !case.spill("b").exists());
    assert_eq!(shard_ranges(10, 4), vec![0..3, 3..6, 6..9, 9..10]);
    assert_eq!(shard_ranges(9, 4), vec![0..3, 3..6, 6..9]);
    assert_eq!(shard_ranges(2, 4), vec![0..1, 1..2]);
    assert_eq!(shard_ranges(96, 5).len(), 5);
}

/// A failed shard: no output, the shards before it recorded; `--resume` (the resumable path)
/// runs the rest as one pair and writes the plaintext intersection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shard_is_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case::new(tmp.path(), Reveal::Both, 0..300, 150..420);
    let (pa, _) = case.prepare((4, 4)).await;
    assert_eq!(pa.unwrap().shards, 4);
    // Shards 0, 1 and 3 run; shard 2 does not.
    for (ra, rb) in case.workers(&[(0, 0), (1, 1), (3, 3)]).await {
        ra.unwrap();
        rb.unwrap();
    }
    let (ra, rb) = case.finish().await;
    assert!(ra.unwrap_err().contains("shard 2 of 4 did not finish") && rb.is_err());
    assert_eq!(case.outputs(), (None, None));
    assert_eq!(Checkpoint::load(&case.spill("a"), &key()).unwrap().finished.len(), 2);
    case.one_pair().await;
    let (pa, pb) = (case.out("a"), case.out("b"));
    let report =
        verify_psi_outputs(&case.a, &case.b, Some(OutputFile::plain(&pa)), Some(OutputFile::plain(&pb))).unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert!(!case.spill("a").exists());
}

/// Malformed shard messages from a peer are refused: a short or wrong-tag shard count after the
/// hello (nothing kept), a short or wrong-tag pairing frame (no record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_shard_messages_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case::new(tmp.path(), Reveal::Both, 0..100, 50..150);
    for bad in [vec![], vec![COUNT], vec![COUNT, 4, 0], vec![PAIR, 4]] {
        let (ia, _) = case.inputs();
        let (ja, _) = case.jobs();
        let (ca, cb) = memory_pair(64);
        let config = Rr22Config {
            role: Role::Responder,
            reveal: Reveal::Both,
            progress: None,
            bucket_size: BUCKET,
            max_peer_items: u64::MAX,
            payload: PayloadMode::None,
        };
        let (oa, k) = (case.options("a"), key());
        let (ra, _) = tokio::join!(prepare_shards(&ca, &ia, &ja, &oa, &k, 4), async {
            let _session = rr22::start(&cb, 50, &config).await.unwrap();
            cb.send(Bytes::from(bad.clone())).await.unwrap();
            let _ = cb.recv().await;
        });
        let e = ra.unwrap_err().to_string();
        assert!(e.contains("shard count message is malformed"), "{bad:?}: {e}");
        assert!(!case.spill("a").exists());
    }
    let (pa, pb) = case.prepare((4, 4)).await;
    let shards = pa.unwrap().shards;
    assert_eq!(shards, pb.unwrap().shards);
    for (bad, says) in [
        (vec![], "malformed"),
        (vec![PAIR], "malformed"),
        (vec![COUNT; 49], "malformed"),
        (vec![PAIR; 50], "malformed"),
        (vec![PAIR; 49], "another job"),
    ] {
        let (ca, cb) = memory_pair(64);
        let (sa, k) = (case.spill("a"), key());
        let (ra, _) = tokio::join!(run_shard(&ca, &sa, &k, 0), async {
            let _ = cb.recv().await;
            cb.send(Bytes::from(bad.clone())).await.unwrap();
        });
        let e = ra.unwrap_err().to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
    assert!(shard_records(&case.spill("a"), &key()).unwrap().iter().all(Option::is_none));
}
