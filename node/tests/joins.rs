//! `consort psi --join left|full` between two node processes, through the CLI, against a
//! plaintext join of the generated inputs; and the refusals that come before any protocol message.
mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{fails, ok, psi_args, s, two_nodes};

/// A sealed output as plaintext lines (through `consort export`).
fn export(dir: &Path, file: &Path) -> Vec<String> {
    ok(&["export", s(dir), s(file), "--out", "-"]).lines().map(str::to_string).collect()
}

/// Generated data: plain fields, no quoting. (header, rows), rows as lines.
fn input(path: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines().map(str::to_string);
    let header = lines.next().unwrap();
    (header, lines.collect())
}

fn key(header: &str, row: &str) -> String {
    let at = header.split(',').position(|h| h == "id").unwrap();
    row.split(',').nth(at).unwrap().trim().to_string()
}

/// One side's expected output: the tagged intersection rows (as a set, sorted), then the tail.
fn expected(
    own: &(String, Vec<String>),
    peer: &(String, Vec<String>),
    own_side: &str,
    full: bool,
) -> (String, Vec<String>, Vec<String>) {
    let peer_keys: HashSet<String> = peer.1.iter().map(|r| key(&peer.0, r)).collect();
    let own_keys: HashSet<String> = own.1.iter().map(|r| key(&own.0, r)).collect();
    let mut both: Vec<String> =
        own.1.iter().filter(|r| peer_keys.contains(&key(&own.0, r))).map(|r| format!("both,{r}")).collect();
    both.sort();
    let mine: Vec<String> =
        own.1.iter().filter(|r| !peer_keys.contains(&key(&own.0, r))).map(|r| format!("{own_side},{r}")).collect();
    let peer_side = if own_side == "left" { "right" } else { "left" };
    let placeholder = format!("{peer_side},{}", ",".repeat(own.0.split(',').count() - 1));
    let theirs = vec![placeholder; peer.1.iter().filter(|r| !own_keys.contains(&key(&peer.0, r))).count()];
    // left: only the requester's section; full: left section, then right section.
    let tail = match (own_side, full) {
        ("left", false) => mine,
        ("right", false) => theirs,
        ("left", true) => [mine, theirs].concat(),
        (_, true) => [theirs, mine].concat(),
        _ => unreachable!(),
    };
    (format!("_side,{}", own.0), both, tail)
}

fn check(got: &[String], want: &(String, Vec<String>, Vec<String>), what: &str) {
    assert_eq!(got[0], want.0, "{what}: header");
    let body = &got[1..];
    assert_eq!(body.len(), want.1.len() + want.2.len(), "{what}: rows");
    let mut both = body[..want.1.len()].to_vec();
    both.sort();
    assert_eq!(both, want.1, "{what}: intersection rows");
    assert_eq!(&body[want.1.len()..], &want.2[..], "{what}: rows after the intersection");
}

#[test]
fn left_and_full_joins_between_two_node_processes_match_a_plaintext_join() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let nodes = two_nodes(root, 60, 20);
    let (a, b) = (&nodes.a, &nodes.b);
    let data = root.join("data");
    let (ta, tb) = (input(&data.join("a.csv")), input(&data.join("b.csv")));
    for (join, protocol) in [("left", "rr22"), ("full", "ecdh"), ("full", "rr22")] {
        let out = root.join(format!("{join}-{protocol}.csv"));
        let mut args = psi_args(a, &out);
        args.extend(["--join", join, "--protocol", protocol]);
        let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        assert_eq!(v["state"], "done", "{v}");
        assert_eq!(v["intersection"], 20, "{v}");
        let full = join == "full";
        assert_eq!(v["output_rows"], if full { 100 } else { 60 }, "{v}");
        let mine = export(a, &out);
        let theirs = export(b, &b.join(v["peer_output"].as_str().unwrap()));
        check(&mine, &expected(&ta, &tb, "left", full), &format!("{join} {protocol} requester"));
        check(&theirs, &expected(&tb, &ta, "right", full), &format!("{join} {protocol} responder"));
        // Row k of both files: the same side, and in the intersection the same key.
        for (m, t) in mine[1..].iter().zip(&theirs[1..]) {
            let (ms, ts) = (m.split_once(',').unwrap(), t.split_once(',').unwrap());
            assert_eq!(ms.0, ts.0);
            if ms.0 == "both" {
                let hdr = |h: &str| h.to_string();
                assert_eq!(key(&hdr(&ta.0), ms.1), key(&hdr(&tb.0), ts.1));
            }
        }
    }
    // A job file carries the join type.
    let job = root.join("left.toml");
    let out = root.join("from-file.csv");
    let mut args = psi_args(a, &out);
    args.extend(["--join", "left", "--save-job", s(&job)]);
    ok(&args);
    assert!(std::fs::read_to_string(&job).unwrap().contains("join = \"left\""));
    std::fs::remove_file(&out).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&["run", s(a), s(&job), "--json"])).unwrap();
    assert_eq!((v["state"].as_str(), v["output_rows"].as_u64()), (Some("done"), Some(60)), "{v}");
    // Right and full with only the requester learning, and a payload join other than inner or
    // left, are refused before any protocol message: nothing written, the partner saw no job.
    let jobs_before = std::fs::read_to_string(b.join("audit/log.jsonl")).unwrap().lines().count();
    for (join, extra) in [("right", &[][..]), ("full", &[][..]), ("difference", &["--peer-columns", "x"][..])] {
        let never = root.join("never.csv");
        let mut args = psi_args(a, &never);
        args.extend(["--join", join, "--protocol", "rr22"]);
        if extra.is_empty() {
            args.extend(["--reveal", "requester-only"]);
        }
        args.extend(extra);
        let err = fails(&args);
        let expect = if extra.is_empty() { "needs --reveal both" } else { "inner or left join" };
        assert!(err.contains(expect), "{join}: {err}");
        assert!(!never.exists());
    }
    let jobs_after = std::fs::read_to_string(b.join("audit/log.jsonl")).unwrap().lines().count();
    assert_eq!(jobs_before, jobs_after, "the partner heard of no refused job");
    drop(nodes);
}

/// A Parquet dataset on one node and `--output keys`, between two node processes: the
/// responder's output is Parquet (named `.parquet`), the requester's CSV holds only the key
/// column, both as the plaintext intersection says; `--output keys` with peer columns is refused
/// before any protocol message.
#[test]
fn parquet_datasets_and_key_outputs_between_two_node_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let nodes = two_nodes(root, 60, 20);
    let (a, b) = (&nodes.a, &nodes.b);
    let data = root.join("data");
    ok(&["gen", "psi", "--rows", "60", "--overlap", "20", "--seed", "3", "--out", s(&data), "--format", "parquet"]);
    let added = ok(&[
        "dataset",
        "add",
        s(b),
        "--name",
        "accounts",
        "--file",
        s(&data.join("b.parquet")),
        "--key",
        "id",
        "--grant",
        "bank",
        "--replace",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&added).unwrap();
    assert_eq!((v["rows"].as_u64(), v["columns"][0].as_str()), (Some(60), Some("id")), "{v}");
    let (ta, tb) = (input(&data.join("a.csv")), input(&data.join("b.csv")));
    let b_keys: HashSet<String> = tb.1.iter().map(|r| key(&tb.0, r)).collect();
    let mut shared: Vec<String> = ta.1.iter().map(|r| key(&ta.0, r)).filter(|k| b_keys.contains(k)).collect();
    shared.sort();
    for (protocol, join) in [("rr22", "inner"), ("ecdh", "inner"), ("rr22", "left")] {
        let out = root.join(format!("keys-{protocol}-{join}.csv"));
        let mut args = psi_args(a, &out);
        args.extend(["--protocol", protocol, "--output", "keys", "--join", join]);
        let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        assert_eq!((v["state"].as_str(), v["intersection"].as_u64()), (Some("done"), Some(20)), "{v}");
        let mine = export(a, &out);
        let tagged = join == "left";
        assert_eq!(mine[0], if tagged { "_side,id" } else { "id" });
        let mut got: Vec<String> = mine[1..]
            .iter()
            .filter(|r| !tagged || r.starts_with("both,"))
            .map(|r| r.trim_start_matches("both,").to_string())
            .collect();
        got.sort();
        assert_eq!(got, shared, "{protocol} {join}: the shared keys, and nothing else of the rows");
        assert_eq!(mine.len() - 1, if tagged { 60 } else { 20 });
        let peer_output = v["peer_output"].as_str().unwrap();
        assert!(peer_output.ends_with(".parquet"), "{peer_output}");
        let plain = root.join(format!("peer-{protocol}-{join}.parquet"));
        ok(&["export", s(b), s(&b.join(peer_output)), "--out", s(&plain)]);
        let bytes = std::fs::read(&plain).unwrap();
        assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"), "the responder's output is Parquet");
    }
    let jobs_before = std::fs::read_to_string(b.join("audit/log.jsonl")).unwrap().lines().count();
    let never = root.join("never.csv");
    let mut args = psi_args(a, &never);
    args.extend(["--protocol", "rr22", "--output", "keys", "--peer-columns", "region"]);
    let err = fails(&args);
    assert!(err.contains("--output keys is for plain PSI"), "{err}");
    assert!(!never.exists());
    let jobs_after = std::fs::read_to_string(b.join("audit/log.jsonl")).unwrap().lines().count();
    assert_eq!(jobs_before, jobs_after, "the partner heard of no refused job");
    drop(nodes);
}

/// `consort psi --peer-columns` between two node processes, over both protocols, inner and left
/// and both reveal modes, against a plaintext join of the generated inputs; a column the partner
/// does not share is refused before any protocol message over either protocol.
#[test]
fn payload_joins_between_two_node_processes_match_a_plaintext_join() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let nodes = two_nodes(root, 60, 20);
    let (a, b) = (&nodes.a, &nodes.b);
    let data = root.join("data");
    let (ta, tb) = (input(&data.join("a.csv")), input(&data.join("b.csv")));
    // The partner's dataset again, sharing two of its columns with the bank.
    let file = data.join("b.csv");
    let add = ["dataset", "add", s(b), "--name", "risk", "--file", s(&file), "--key", "id", "--grant", "bank"];
    ok(&[&add[..], &["--share", "bank:score,balance"]].concat());
    // score and balance are the last two columns (region holds quoted commas).
    assert!(tb.0.ends_with(",score,balance"), "{}", tb.0);
    let peer_values: std::collections::HashMap<String, String> =
        tb.1.iter()
            .map(|r| {
                let f: Vec<&str> = r.rsplitn(3, ',').collect();
                (key(&tb.0, r), format!("{},{}", f[1], f[0]))
            })
            .collect();
    for protocol in ["ecdh", "rr22"] {
        for (join, reveal) in [("inner", "requester-only"), ("inner", "both"), ("left", "requester-only")] {
            let out = root.join(format!("pay-{protocol}-{join}-{reveal}.csv"));
            let mut args = psi_args(a, &out);
            args.extend(["--protocol", protocol, "--join", join, "--reveal", reveal]);
            args.extend(["--peer-columns", "score,balance"]);
            let at = args.iter().position(|x| *x == "accounts").unwrap();
            args[at] = "risk";
            let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
            let what = format!("{protocol} {join} {reveal}");
            assert_eq!((v["state"].as_str(), v["intersection"].as_u64()), (Some("done"), Some(20)), "{what}: {v}");
            let got = export(a, &out);
            let left = join == "left";
            let header = format!("{}{},partner.score,partner.balance", if left { "_side," } else { "" }, ta.0);
            assert_eq!(got[0], header, "{what}");
            let mut want: Vec<String> =
                ta.1.iter()
                    .filter_map(|r| match peer_values.get(&key(&ta.0, r)) {
                        Some(p) => Some(format!("{}{r},{p}", if left { "both," } else { "" })),
                        None if left => Some(format!("left,{r},,")),
                        None => None,
                    })
                    .collect();
            want.sort();
            let mut body = got[1..].to_vec();
            body.sort();
            assert_eq!(body, want, "{what}: the plaintext join");
            assert_eq!(v["output_rows"].as_u64(), Some(want.len() as u64), "{what}");
        }
    }
    // A column not shared: refused by the partner before any protocol message, over either protocol.
    for protocol in ["ecdh", "rr22"] {
        let never = root.join("never.csv");
        let mut args = psi_args(a, &never);
        args.retain(|x| *x != "--json");
        args.extend(["--protocol", protocol, "--peer-columns", "score,region"]);
        let at = args.iter().position(|x| *x == "accounts").unwrap();
        args[at] = "risk";
        let err = fails(&args);
        assert!(err.contains("column 'region' is not shared"), "{protocol}: {err}");
        assert!(!never.exists());
    }
    drop(nodes);
}
