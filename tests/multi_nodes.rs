//! Several peers in one PSI payload job: a bank and two data sources, three in-process nodes on
//! real loopback sockets with mutual TLS (`consort_node::multi`). Every table is checked against
//! a plaintext join computed here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consort_api::JobState;
use consort_engine::DatasetSpec;
use consort_engine::multi_join::MultiJoin;
use consort_node::client::NodeClient;
use consort_node::multi::{self, MultiPeer, MultiSpec};
use consort_node::node::{self, NodeHandle};
use consort_node::{config, identity, setup};

const BANK: &str = "bank";
const SOURCES: [&str; 2] = ["s1", "s2"];

/// A source's dataset: its name on the source, the file, whether it keeps duplicate keys, and
/// the column it shares with the bank ("" for none).
struct Source<'a> {
    dataset: &'a str,
    csv: String,
    dedup: bool,
    share: &'a str,
}

struct Trio {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    bank_dir: PathBuf,
    dirs: Vec<PathBuf>,
    bank: NodeHandle,
    sources: Vec<NodeHandle>,
}

impl Trio {
    async fn shutdown(self) {
        self.bank.shutdown(Duration::from_secs(1)).await;
        for s in self.sources {
            s.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// A bank pinned with two sources (each pins the bank), the bank's dataset `customers` granted
/// to both, each source's dataset granted to the bank with its shared column.
async fn trio(bank_csv: &str, sources: [Source<'_>; 2]) -> Trio {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let bank_dir = root.join(BANK);
    identity::init(&bank_dir, BANK, "127.0.0.1:0").unwrap();
    let bank = node::start(&bank_dir).await.unwrap();
    let mut dirs = Vec::new();
    let mut handles = Vec::new();
    for (name, source) in SOURCES.iter().zip(&sources) {
        let dir = root.join(name);
        identity::init(&dir, name, "127.0.0.1:0").unwrap();
        let h = node::start(&dir).await.unwrap();
        let cert = |d: &Path| d.join(config::TLS_CERT_FILE);
        setup::peer_add(&bank_dir, name, &h.peer_addr().to_string(), &cert(&dir), true).unwrap();
        setup::peer_add(&dir, BANK, &bank.peer_addr().to_string(), &cert(&bank_dir), true).unwrap();
        let file = root.join(format!("{name}.csv"));
        std::fs::write(&file, &source.csv).unwrap();
        let mut spec = DatasetSpec::new(source.dataset, &file, &["id"]);
        spec.dedup = source.dedup;
        let mut grant = setup::parse_grant(BANK).unwrap();
        if !source.share.is_empty() {
            let columns = spec.check_header().unwrap();
            setup::apply_shares(std::slice::from_mut(&mut grant), &[format!("{BANK}:{}", source.share)], &columns)
                .unwrap();
        }
        setup::dataset_add(&dir, spec, vec![grant], true, true).unwrap();
        h.state.reload().unwrap();
        dirs.push(dir);
        handles.push(h);
    }
    std::fs::write(root.join("bank.csv"), bank_csv).unwrap();
    let grants = SOURCES.iter().map(|s| setup::parse_grant(s).unwrap()).collect();
    setup::dataset_add(&bank_dir, DatasetSpec::new("customers", root.join("bank.csv"), &["id"]), grants, true, true)
        .unwrap();
    bank.state.reload().unwrap();
    Trio { _tmp: tmp, root, bank_dir, dirs, bank, sources: handles }
}

fn source<'a>(dataset: &'a str, csv: &str, dedup: bool, share: &'a str) -> Source<'a> {
    Source { dataset, csv: csv.to_string(), dedup, share }
}

fn spec(t: &Trio, join: MultiJoin, columns: [&str; 2], out: &str) -> MultiSpec {
    let datasets = ["risk", "scores"];
    MultiSpec {
        dataset: "customers".into(),
        peers: (0..2)
            .map(|i| MultiPeer {
                peer: SOURCES[i].into(),
                peer_dataset: datasets[i].into(),
                columns: vec![columns[i].into()],
            })
            .collect(),
        join,
        out: t.root.join(out),
    }
}

type Table = Vec<Vec<String>>;

fn records(text: &[u8]) -> Table {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(text);
    r.records().map(|rec| rec.unwrap().iter().map(String::from).collect()).collect()
}

/// The plaintext several-peer join of the bank's file with each source's `column`: own rows in
/// file order; per source its rows of the key in file order; every combination (last source
/// fastest); `left` keeps unmatched rows with empty fields.
fn plaintext(bank: &str, sources: &[(&str, &str, &str)], join: MultiJoin) -> Table {
    let own = records(bank.as_bytes());
    let mut header = own[0].clone();
    let mut maps = Vec::new();
    for (name, csv, column) in sources {
        let t = records(csv.as_bytes());
        let (id, at) = (t[0].iter().position(|h| h == "id").unwrap(), t[0].iter().position(|h| h == column).unwrap());
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in &t[1..] {
            map.entry(row[id].trim().to_string()).or_default().push(row[at].clone());
        }
        header.push(format!("{name}.{column}"));
        maps.push(map);
    }
    let id = own[0].iter().position(|h| h == "id").unwrap();
    let mut out = vec![header];
    for row in &own[1..] {
        let mut partial = vec![row.clone()];
        for map in &maps {
            let found = map.get(row[id].trim()).cloned().unwrap_or_default();
            if found.is_empty() && join == MultiJoin::Inner {
                partial.clear();
            }
            let choices = if found.is_empty() { vec![String::new()] } else { found };
            partial = partial
                .iter()
                .flat_map(|p| choices.iter().map(move |c| p.iter().cloned().chain([c.clone()]).collect()))
                .collect();
        }
        out.extend(partial);
    }
    out
}

fn read_table(t: &Trio, out: &Path) -> Table {
    records(&consort_engine::storage::read_data(out, Some(&t.bank.state.storage.key)).unwrap())
}

/// Files left in a node's outputs directory.
fn outputs(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join(config::OUTPUTS_DIR)) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

fn logged_events(dir: &Path, job: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("audit/log.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["job"] == job)
        .map(|v| v["event"].as_str().unwrap().to_string())
        .collect()
}

const BANK_CSV: &str =
    "id,name,city\nk1,Ann,\"Paris, FR\"\nk2,\"Bo \"\"B\"\"\",東京\nk3,Cé,\nk4,x,y\nk5,z,\"two\nlines\"\n";
const RISK: &str = "id,risk_tag,other\nk1,\"high, very\",a\nk3,Zürich,b\nk4,,c\nk9,low,d\n";
/// A key on several rows (k1 twice, k4 twice): kept with `dedup`, every row joins.
const SCORES: &str = "score,id\n0.5,k1\n\"say \"\"hi\"\"\",k2\n0.7,k4\n0.9,k1\n\"ö,1\",k4\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_bank_and_two_sources_give_the_plaintext_join() {
    let t = trio(BANK_CSV, [source("risk", RISK, false, "risk_tag"), source("scores", SCORES, true, "score")]).await;
    let sources = [("s1", RISK, "risk_tag"), ("s2", SCORES, "score")];
    for (join, rows) in [(MultiJoin::Left, 7), (MultiJoin::Inner, 4)] {
        let updates = std::sync::Mutex::new(Vec::new());
        let on_update = |peer: &str, s: &consort_api::proto::JobStatus| {
            updates.lock().unwrap().push((peer.to_string(), s.stage.clone()));
        };
        let spec = spec(&t, join, ["risk_tag", "score"], &format!("{}.csv", join.name()));
        let outcome = multi::run(&t.bank_dir, &spec, &on_update).await.map_err(|f| f.error).unwrap();
        let got = read_table(&t, &spec.out);
        assert_eq!(got, plaintext(BANK_CSV, &sources, join), "{join:?}");
        assert_eq!(outcome.merge.rows, rows);
        assert_eq!(outcome.merge.matched, [3, 3], "k1, k3, k4 at s1; k1, k2, k4 at s2");
        let seen = updates.into_inner().unwrap();
        for s in SOURCES {
            assert!(seen.iter().any(|(p, _)| p == s), "progress of {s}");
        }
        // Each source ran an ordinary requester-only payload join: it learned no intersection
        // and wrote nothing; the bank kept no pairwise output.
        for (i, child) in outcome.children.iter().enumerate() {
            assert_eq!(child.peer, SOURCES[i]);
            assert_eq!(child.status.job_state(), JobState::Done);
            let theirs = t.sources[i].state.jobs.get(&child.status.job_id).unwrap().status();
            assert!(!theirs.has_intersection && theirs.output.is_empty(), "{} learns no rows", SOURCES[i]);
            assert!(!theirs.request.contains("row_index"), "the row index is never sent: {}", theirs.request);
            assert!(outputs(&t.dirs[i]).is_empty());
        }
        assert!(outputs(&t.bank_dir).is_empty(), "pairwise outputs removed: {:?}", outputs(&t.bank_dir));
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_without_matches_and_an_empty_bank_give_the_plaintext_join() {
    let none = "id,score\nz1,1\nz2,2\n";
    let t = trio(BANK_CSV, [source("risk", RISK, false, "risk_tag"), source("scores", none, false, "score")]).await;
    let sources = [("s1", RISK, "risk_tag"), ("s2", none, "score")];
    for (join, rows) in [(MultiJoin::Left, 5), (MultiJoin::Inner, 0)] {
        let spec = spec(&t, join, ["risk_tag", "score"], &format!("{}.csv", join.name()));
        let outcome = multi::run(&t.bank_dir, &spec, &|_, _| {}).await.map_err(|f| f.error).unwrap();
        assert_eq!(read_table(&t, &spec.out), plaintext(BANK_CSV, &sources, join));
        assert_eq!((outcome.merge.rows, outcome.merge.matched.clone()), (rows, vec![3, 0]));
    }
    // An empty bank: header only, on both joins.
    std::fs::write(t.root.join("bank.csv"), "id,name,city\n").unwrap();
    let grants = SOURCES.iter().map(|s| setup::parse_grant(s).unwrap()).collect();
    setup::dataset_add(
        &t.bank_dir,
        DatasetSpec::new("customers", t.root.join("bank.csv"), &["id"]),
        grants,
        true,
        true,
    )
    .unwrap();
    t.bank.state.reload().unwrap();
    for join in [MultiJoin::Left, MultiJoin::Inner] {
        let spec = spec(&t, join, ["risk_tag", "score"], "empty.csv");
        let outcome = multi::run(&t.bank_dir, &spec, &|_, _| {}).await.map_err(|f| f.error).unwrap();
        assert_eq!(read_table(&t, &spec.out), plaintext("id,name,city\n", &sources, join));
        assert_eq!(outcome.merge.rows, 0);
    }
    t.shutdown().await;
}

/// A source whose grant does not share the column refuses before any protocol message: the job
/// fails naming it, no table, the other source's pairwise output removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_does_not_share_the_column_fails_the_job_with_no_output() {
    let t = trio(BANK_CSV, [source("risk", RISK, false, "risk_tag"), source("scores", SCORES, true, "")]).await;
    let spec = spec(&t, MultiJoin::Left, ["risk_tag", "score"], "never.csv");
    let failure = multi::run(&t.bank_dir, &spec, &|_, _| {}).await.unwrap_err();
    let message = format!("{:#}", failure.error);
    assert!(message.contains("peer 's2'") && message.contains("not shared"), "{message}");
    let failed = failure.failed.unwrap();
    assert_eq!(failed.peer, "s2");
    assert!(failed.status.refused_by_peer);
    assert_eq!(logged_events(&t.dirs[1], &failed.status.job_id), ["request", "grant"], "refused before the protocol");
    assert!(!spec.out.exists());
    assert!(outputs(&t.bank_dir).is_empty(), "{:?}", outputs(&t.bank_dir));
    let s1 = failure.children.iter().find(|c| c.peer == "s1").unwrap();
    assert_eq!(s1.status.job_state(), JobState::Done, "the other pairwise job finished; its output is gone");
    t.shutdown().await;
}

/// A source that stops mid-job fails the whole job cleanly: no table, no pairwise output.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_drops_mid_job_fails_the_job_cleanly() {
    let mut bank = String::from("id,name\n");
    let mut big = String::from("id,score\n");
    for i in 0..150_000u64 {
        bank.push_str(&format!("{},n{i}\n", 10_000_000_000u64 + i));
        big.push_str(&format!("{},{i}\n", 10_000_000_000u64 + 2 * i));
    }
    let mut t = trio(&bank, [source("risk", RISK, false, "risk_tag"), source("scores", &big, false, "score")]).await;
    let s2 = t.sources.pop().unwrap();
    let mut s2 = Some(s2);
    let spec = spec(&t, MultiJoin::Inner, ["risk_tag", "score"], "never.csv");
    let bank_dir = t.bank_dir.clone();
    let run = tokio::spawn({
        let spec = spec.clone();
        async move { multi::run(&bank_dir, &spec, &|_, _| {}).await }
    });
    // Wait for the pairwise job with s2 to be under way, then stop s2 abruptly.
    let client = NodeClient::connect(&t.bank_dir).await.unwrap();
    let mut dropped = false;
    for _ in 0..2000 {
        let jobs = client.jobs().await.unwrap();
        let under_way = jobs.iter().any(|j| {
            j.peer == "s2"
                && j.job_state() == JobState::Running
                && !["", "queued", "connect", "load dataset", "check dataset"].contains(&j.stage.as_str())
        });
        if under_way {
            s2.take().unwrap().shutdown(Duration::from_millis(0)).await;
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(dropped, "the pairwise job with s2 never got under way");
    let failure =
        tokio::time::timeout(Duration::from_secs(120), run).await.expect("the job hangs").unwrap().unwrap_err();
    let message = format!("{:#}", failure.error);
    assert!(message.contains("peer 's2'"), "{message}");
    assert!(!spec.out.exists());
    assert!(outputs(&t.bank_dir).is_empty(), "{:?}", outputs(&t.bank_dir));
    t.shutdown().await;
}
