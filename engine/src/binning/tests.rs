//! Both parties' bin jobs over `memory_pair` on CSV files, checked against a plaintext join of the
//! two files binned with the files' own edges; bad inputs.
use std::collections::HashMap;
use std::path::Path;

use consort_protocols::memory_pair;
use consort_protocols::mpc::binning::{BinCounts, FeatureBins, woe_iv};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::dataset::DatasetSpec;

/// a.csv: id, y, a0 (informative, some missing), a1 (constant), a2 (= a0, correlated);
/// b.csv: id, b0 (informative, missing), b1 (noise), b2 (two values), b3 (copy of b0); b lacks
/// some of a's ids and has some of its own.
fn write_data(dir: &Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = StdRng::seed_from_u64(21);
    let mut a = String::from("id,y,a0,a1,a2\n");
    let mut b = String::from("id,b0,b1,b2,b3\n");
    for i in 0..n {
        let x: f64 = rng.random::<f64>() * 4.0 - 2.0;
        let z: f64 = rng.random::<f64>() * 4.0 - 2.0;
        let y = (rng.random::<f64>() < 1.0 / (1.0 + (-(1.5 * x - z)).exp())) as u8;
        let a0 = if i % 11 == 0 { String::new() } else { format!("{x:.3}") };
        a.push_str(&format!("k{i},{y},{a0},7,{a0}\n"));
        if i % 13 != 5 {
            let b0 = if i % 7 == 0 { String::new() } else { format!("{z:.3}") };
            let noise: f64 = rng.random();
            b.push_str(&format!("k{i},{b0},{noise:.4},{},{b0}\n", i % 2));
        }
    }
    for i in 0..10 {
        b.push_str(&format!("only-b{i},1,1,1,1\n"));
    }
    let (pa, pb) = (dir.join("a.csv"), dir.join("b.csv"));
    std::fs::write(&pa, a).unwrap();
    std::fs::write(&pb, b).unwrap();
    (pa, pb)
}

fn job(role: Role, params: &BinParamsWire, out: std::path::PathBuf) -> BinJob {
    BinJob {
        role,
        psi: PsiProtocol::Rr22,
        columns: ColumnChoice { label: (role == Role::Requester).then(|| "y".to_string()), features: None },
        params: params.clone(),
        out,
        at_rest: AtRest::Plain,
        job_id: "bin-1".into(),
        peer: if role == Role::Requester { "b".into() } else { "a".into() },
        psi_progress: None,
        limits: JobLimits::default(),
    }
}

async fn run_both(
    a: &Dataset,
    b: &Dataset,
    params: &BinParamsWire,
    dir: &Path,
) -> (Result<BinReport, LrError>, Result<BinReport, LrError>) {
    let (ca, cb) = memory_pair(64);
    let (ja, jb) =
        (job(Role::Requester, params, dir.join("bins-a.json")), job(Role::Responder, params, dir.join("bins-b.json")));
    let fa = async move {
        let r = run_bin(&ca, a, &ja).await;
        drop(ca);
        r
    };
    let fb = async move {
        let r = run_bin(&cb, b, &jb).await;
        drop(cb);
        r
    };
    tokio::join!(fa, fb)
}

/// Parses a CSV value as the job does: empty = missing (NaN).
fn value(s: &str) -> f64 {
    if s.trim().is_empty() { f64::NAN } else { s.trim().parse().unwrap() }
}

fn read_csv(path: &Path) -> (Vec<String>, HashMap<String, Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| {
            let f: Vec<String> = l.split(',').map(String::from).collect();
            (f[0].clone(), f[1..].to_vec())
        })
        .collect();
    (header[1..].to_vec(), rows)
}

/// Every count, WOE and IV in A's file equals a plaintext computation on the joined files, binned
/// with the edges the two files give (A's own edges for A's features, B's file's edges for
/// `peer:K`); B's file holds no label-derived figure.
fn check_files(pa: &Path, pb: &Path, dir: &Path) -> (BinsFile, BinsFile) {
    let fa = BinsFile::load(&dir.join("bins-a.json"), None).unwrap();
    let fb = BinsFile::load(&dir.join("bins-b.json"), None).unwrap();
    assert_eq!((fa.party.as_str(), fb.party.as_str()), ("A", "B"));
    assert_eq!(fa.bins_id, fb.bins_id, "the two files of one job share the bins id");
    let (ha, ra) = read_csv(pa);
    let (hb, rb) = read_csv(pb);
    let keys: Vec<&String> = ra.keys().filter(|k| rb.contains_key(*k)).collect();
    assert_eq!(fa.rows, keys.len() as u64);
    let labels: Vec<u8> = keys.iter().map(|k| ra[*k][0].parse().unwrap()).collect();
    assert_eq!(fa.events, Some(labels.iter().map(|&y| u64::from(y)).sum()));
    let own: Vec<&BinnedFeature> = fa.features.iter().filter(|f| f.owner == "self").collect();
    let peer: Vec<&BinnedFeature> = fa.features.iter().filter(|f| f.owner == "peer").collect();
    assert_eq!((own.len(), peer.len(), fb.features.len()), (3, 4, 4));
    let check = |f: &BinnedFeature, edges: &[f64], raw: Vec<f64>| {
        let e = FeatureBins { edges: edges.to_vec() };
        let col: Vec<u8> = raw.iter().map(|&x| e.bin(x)).collect();
        let expect = BinCounts::of(&col, &labels, e.bins() as usize);
        let w = woe_iv(&expect);
        assert_eq!(f.bins.len(), expect.counts.len(), "{}", f.name);
        for (j, b) in f.bins.iter().enumerate() {
            assert_eq!(
                (b.bin, b.count, b.events, b.non_events),
                (j as u32, Some(expect.counts[j]), Some(expect.events[j]), Some(expect.counts[j] - expect.events[j])),
                "{} bin {j}",
                f.name
            );
            assert_eq!((b.woe, b.iv), (Some(w.woe[j]), Some(w.iv_bins[j])), "{} bin {j}", f.name);
        }
        assert_eq!(f.iv, Some(w.iv));
    };
    for f in &own {
        let c = ha.iter().position(|h| *h == f.name).unwrap();
        check(f, f.edges.as_ref().unwrap(), keys.iter().map(|k| value(&ra[*k][c])).collect());
    }
    for f in &peer {
        assert!(f.edges.is_none() && f.bins.iter().all(|b| b.range.is_none()), "A never sees B's edges");
        let theirs = &fb.features[f.index as usize];
        assert_eq!(f.name, format!("peer:{}", theirs.index));
        let c = hb.iter().position(|h| *h == theirs.name).unwrap();
        check(f, theirs.edges.as_ref().unwrap(), keys.iter().map(|k| value(&rb[*k][c])).collect());
    }
    for f in &fb.features {
        assert!(f.iv.is_none() && f.selected.is_none() && f.reason.is_none());
        assert!(f.bins.iter().all(|b| b.count.is_none() && b.events.is_none() && b.woe.is_none() && b.iv.is_none()));
    }
    assert!(fb.events.is_none() && fb.label.is_none() && fb.selection.is_none() && fb.woe_definition.is_none());
    (fa, fb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bin_jobs_equal_a_plaintext_computation_and_select() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = write_data(dir.path(), 400);
    let a = Dataset::load(&DatasetSpec::new("a", &pa, &["id"])).unwrap();
    let b = Dataset::load(&DatasetSpec::new("b", &pb, &["id"])).unwrap();
    for params in [
        BinParamsWire { key_bits: 2048, ..BinParamsWire::default() },
        BinParamsWire {
            method: Method::Tree,
            bins: 4,
            fine_bins: 16,
            min_iv: Some(0.02),
            max_corr: Some(0.9),
            key_bits: 2048,
        },
    ] {
        let (ra, rb) = run_both(&a, &b, &params, dir.path()).await;
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!((ra.aligned_rows, rb.aligned_rows), (ra.aligned_rows, ra.aligned_rows));
        assert_eq!((ra.features, ra.peer_features, rb.features), (3, 4, 4));
        let (fa, fb) = check_files(&pa, &pb, dir.path());
        assert_eq!(check_against_plaintext(&a, &b, &fa, &fb, "y").await, Ok(ra.aligned_rows as usize));
        let mut wrong = fa.clone();
        wrong.features[4].bins[1].events = wrong.features[4].bins[1].events.map(|e| e + 1);
        assert!(check_against_plaintext(&a, &b, &wrong, &fb, "y").await.is_err(), "the check can fail");
        let by_name: HashMap<&str, &BinnedFeature> = fa.features.iter().map(|f| (f.name.as_str(), f)).collect();
        // The constant feature has one value bin (and the missing bin).
        assert_eq!(by_name["a1"].bins.len(), 2);
        assert!(by_name["a0"].bins[0].count.unwrap() > 0, "missing values have their own bin");
        assert!(fb.features[0].edges.as_ref().unwrap().len() <= params.bins as usize);
        if params.max_corr.is_some() {
            // a2 = a0 and b3 = b0: one of each pair is dropped for correlation, the weaker
            // constant a1 and noise b1 for IV; b0/a0 are kept.
            let sel = |n: &str| by_name[n].selected.unwrap();
            assert!(sel("a0") && sel("peer:0"), "{:#?}", ra.iv);
            assert!(!sel("a2") && by_name["a2"].reason.as_ref().unwrap().contains("correlated with a0"));
            assert!(!sel("peer:3") && by_name["peer:3"].reason.as_ref().unwrap().contains("correlated with peer:0"));
            assert!(!sel("a1") && by_name["a1"].reason.as_ref().unwrap().contains("below min-iv"));
            assert_eq!(ra.selected, Some(fa.features.iter().filter(|f| f.selected == Some(true)).count() as u64));
            assert_eq!(fa.method, "tree");
        } else {
            assert!(fa.features.iter().all(|f| f.selected == Some(true)));
        }
        assert!(ra.iv.windows(2).all(|w| w[0].iv >= w[1].iv), "the IV summary is by descending IV");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_with_file_line_and_column_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pb) = write_data(dir.path(), 30);
    let b = Dataset::load(&DatasetSpec::new("b", &pb, &["id"])).unwrap();
    let params = BinParamsWire { key_bits: 2048, ..BinParamsWire::default() };
    for (content, expect) in [
        ("id,y,a0\nk1,0,1\nk2,2,1\n", "a.csv:3: column 'y': the label must be 0 or 1"),
        ("id,y,a0\nk1,0,1\nk2,1,SECRET\n", "a.csv:3: column 'a0': not a number"),
        ("id,y,a0\nk1,0,1\nk2,,1\n", "a.csv:3: column 'y': empty value"),
    ] {
        let pa = dir.path().join("a.csv");
        std::fs::write(&pa, content).unwrap();
        let a = Dataset::load(&DatasetSpec::new("a", &pa, &["id"])).unwrap();
        let (ra, rb) = run_both(&a, &b, &params, dir.path()).await;
        let err = ra.unwrap_err().to_string();
        assert_eq!(err, expect);
        assert!(!err.contains("SECRET"));
        assert!(rb.is_err(), "B stops when A does");
        assert!(!dir.path().join("bins-a.json").exists() && !dir.path().join("bins-b.json").exists());
    }
    // Parameters out of range are refused before anything runs.
    for bad in [
        BinParamsWire { bins: 0, ..params.clone() },
        BinParamsWire { bins: 500, ..params.clone() },
        BinParamsWire { method: Method::Tree, bins: 10, fine_bins: 5, ..params.clone() },
        BinParamsWire { max_corr: Some(1.5), ..params.clone() },
        BinParamsWire { min_iv: Some(f64::NAN), ..params.clone() },
        BinParamsWire { key_bits: 1024, ..params.clone() },
    ] {
        assert!(bad.config().is_err(), "{bad:?}");
    }
}
