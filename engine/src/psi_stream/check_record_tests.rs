//! A registration's check record: trusted only for the same spec and an unchanged stamp, and a
//! job on a file forged to keep the stamp still fails in its scan.
use std::path::Path;

use consort_protocols::{Reveal, Role, memory_pair};

use super::*;
use crate::psi::JobLimits;
use crate::storage::AtRest;

fn write(path: &Path, ids: &[&str]) {
    let mut text = String::from("id,v\n");
    for id in ids {
        text.push_str(&format!("{id},x\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn job(role: Role, output: std::path::PathBuf) -> PsiJob {
    PsiJob {
        protocol: crate::PsiProtocol::Rr22,
        role,
        reveal: Reveal::RequesterOnly,
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

#[test]
fn a_record_is_used_only_for_its_spec_and_an_unchanged_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.csv");
    write(&path, &["1", "2", "3"]);
    let spec = DatasetSpec::new("a", &path, &["id"]);
    let record = StreamInput::open(&spec).unwrap().record();
    let trusted = StreamInput::open_checked(&spec, Some(&record)).unwrap();
    assert_eq!((trusted.rows, trusted.columns.clone()), (3, vec!["id".to_string(), "v".to_string()]));

    // Another spec (other key column): the record is not for it, so the file is checked.
    let other = DatasetSpec::new("a", &path, &["v"]);
    assert_eq!(StreamInput::open_checked(&other, Some(&record)).unwrap().rows, 3);
    // An appended row changes the stamp: a full check counts it, and a bad row is reported.
    write(&path, &["1", "2", "3", "4"]);
    assert_eq!(StreamInput::open_checked(&spec, Some(&record)).unwrap().rows, 4);
    std::fs::write(&path, "id,v\n1,x\n,x\n").unwrap();
    let err = StreamInput::open_checked(&spec, Some(&record)).unwrap_err().to_string();
    assert!(err.contains("a.csv") && err.contains('3'), "{err}");
    // No record: a full check.
    write(&path, &["1"]);
    assert_eq!(StreamInput::open_checked(&spec, None).unwrap().rows, 1);
}

/// The file is rewritten in place to the same length with its modification time put back, so
/// the record is trusted; the job's scan counts other rows (or finds a bad key) and fails, with
/// no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_stamp_fails_the_job_in_its_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    write(&pa, &["10", "20", "30"]);
    write(&pb, &["10", "30", "40"]);
    let (sa, sb) = (DatasetSpec::new("a", &pa, &["id"]), DatasetSpec::new("b", &pb, &["id"]));
    let record = StreamInput::open(&sa).unwrap().record();
    let modified = std::fs::metadata(&pa).unwrap().modified().unwrap();
    for forged in ["id,v\n1020,x\n30,xxxx\n", "id,v\n10,x\n,0,x\n30,x\n"] {
        assert_eq!(forged.len() as u64, std::fs::metadata(&pa).unwrap().len(), "same length");
        std::fs::write(&pa, forged).unwrap();
        std::fs::File::options().write(true).open(&pa).unwrap().set_modified(modified).unwrap();
        let ia = StreamInput::open_checked(&sa, Some(&record)).unwrap();
        assert_eq!(ia.rows, 3, "the record was trusted");
        let ib = StreamInput::open(&sb).unwrap();
        let out = dir.path().join("out/a.csv");
        let (ja, jb) = (job(Role::Requester, out.clone()), job(Role::Responder, dir.path().join("out/b.csv")));
        let oa = StreamOptions { spill_dir: dir.path().join("spill-a"), bucket_size: 4 };
        let ob = StreamOptions { spill_dir: dir.path().join("spill-b"), bucket_size: 4 };
        let (ca, cb) = memory_pair(64);
        let (ra, _) = tokio::join!(
            async {
                let r = run_psi_streaming(&ca, &ia, &ja, &oa).await;
                drop(ca);
                r
            },
            async {
                let r = run_psi_streaming(&cb, &ib, &jb, &ob).await;
                drop(cb);
                r
            }
        );
        let err = ra.expect_err("the scan fails").to_string();
        assert!(err.contains("a.csv"), "{err}");
        assert!(!err.contains("1020"), "never the value: {err}");
        assert!(!out.exists(), "no output");
    }
}
