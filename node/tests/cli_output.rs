//! What scripts rely on, checked against the real binary and two real node processes: every
//! command that prints a result prints exactly one JSON value on stdout with `--json`, failures
//! exit with their documented code (`consort --help`, `cli::exit`), and the completion scripts
//! and man pages are generated.

mod common;

use std::path::Path;
use std::process::Output;

use common::{consort, ok, s, start_node};
use consort_node::cli::exit::Exit;
use serde_json::Value;

/// Runs `consort ARGS`, which must succeed, and parses its whole stdout as one JSON value (so
/// anything else printed on stdout fails the test).
fn json(args: &[&str]) -> Value {
    let stdout = ok(args);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("consort {args:?}: stdout is not one JSON value ({e}): {stdout}"))
}

/// Runs `consort ARGS`, which must fail with `exit` and a one-line cause on stderr.
fn exits(args: &[&str], exit: Exit) -> Output {
    let out = consort(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(exit.code())), "consort {args:?}: {err}");
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "one-line cause expected: {err}");
    out
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn lines(file: &Path) -> usize {
    std::fs::read_to_string(file).unwrap().lines().count()
}

#[test]
fn json_output_and_exit_codes_with_two_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = (root.join("bank"), root.join("partner"));
    let (psi_data, lr_data) = (root.join("psi-data"), root.join("lr-data"));

    let init_a = json(&["init", s(&a), "--name", "bank", "--listen", "127.0.0.1:0", "--json"]);
    let init_b = json(&["init", s(&b), "--name", "partner", "--listen", "127.0.0.1:0", "--json"]);
    assert_eq!((init_a["name"].as_str(), init_b["name"].as_str()), (Some("bank"), Some("partner")));
    assert!(Path::new(init_b["cert"].as_str().unwrap()).is_file(), "{init_b}");
    let fingerprint_b = init_b["fingerprint"].as_str().unwrap();
    assert!(fingerprint_b.starts_with("sha256:") && fingerprint_b != init_a["fingerprint"], "{init_a} {init_b}");

    let gen_psi = ["gen", "psi", "--rows", "300", "--rows-b", "200", "--overlap", "60", "--out", s(&psi_data)];
    let g = json(&[&gen_psi[..], &["--json"]].concat());
    assert_eq!((g["rows_a"].as_u64(), g["rows_b"].as_u64(), g["overlap"].as_u64()), (Some(300), Some(200), Some(60)));
    assert_eq!(lines(Path::new(g["b"].as_str().unwrap())), 201, "header and 200 rows");
    let gen_lr = ["gen", "lr", "--rows", "400", "--features-a", "2", "--features-b", "2", "--out", s(&lr_data)];
    let g = json(&[&gen_lr[..], &["--json"]].concat());
    assert_eq!(g["rows_a"].as_u64(), Some(400), "{g}");
    assert_eq!(lines(Path::new(g["a"].as_str().unwrap())), 401, "{g}");

    let (_na, addr_a) = start_node(&a);
    let (_nb, addr_b) = start_node(&b);
    let pin = json(&[
        "peer",
        "add",
        s(&a),
        "--name",
        "partner",
        "--addr",
        &addr_b,
        "--cert",
        s(&b.join("node.crt")),
        "--json",
    ]);
    assert_eq!((pin["fingerprint"].as_str(), pin["reloaded"].as_bool()), (Some(fingerprint_b), Some(true)), "{pin}");
    ok(&["peer", "add", s(&b), "--name", "bank", "--addr", &addr_a, "--cert", s(&a.join("node.crt"))]);
    let peers = json(&["peer", "list", s(&a), "--json"]);
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "{peers}");
    assert_eq!((peers[0]["name"].as_str(), peers[0]["fingerprint"].as_str()), (Some("partner"), Some(fingerprint_b)));

    let add = |dir: &Path, name: &str, file: &Path, grant: &str| {
        json(&["dataset", "add", s(dir), "--name", name, "--file", s(file), "--key", "id", "--grant", grant, "--json"])
    };
    let added = add(&a, "customers", &psi_data.join("a.csv"), "partner");
    assert_eq!((added["rows"].as_u64(), added["columns"][0].as_str()), (Some(300), Some("id")), "{added}");
    add(&b, "accounts", &psi_data.join("b.csv"), "bank");
    add(&a, "loans", &lr_data.join("a.csv"), "partner:train,score");
    add(&b, "features", &lr_data.join("b.csv"), "bank:train,score");
    let datasets = json(&["dataset", "list", s(&a), "--json"]);
    let names: Vec<&str> = datasets.as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["customers", "loans"]);
    let set = json(&["grant", "set", s(&b), "--dataset", "accounts", "--peer", "bank", "--jobs", "psi", "--json"]);
    assert_eq!((set["dataset"].as_str(), set["grant"]["peer"].as_str()), (Some("accounts"), Some("bank")), "{set}");
    let grants = json(&["grant", "list", s(&a), "--json"]);
    let listed: Vec<(&str, &str)> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["dataset"].as_str().unwrap(), g["grant"]["peer"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("customers", "partner"), ("loans", "partner")]);

    let job = |kind: &str, dataset: &str, peer_dataset: &str| {
        vec![kind.to_string(), s(&a).into(), "--peer".into(), "partner".into(), "--dataset".into(), dataset.into()]
            .into_iter()
            .chain(["--peer-dataset".to_string(), peer_dataset.into()])
            .collect::<Vec<String>>()
    };
    let run = |args: Vec<String>, extra: &[&str]| {
        let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
        argv.extend(extra);
        argv.push("--json");
        json(&argv)
    };
    let psi_out = root.join("shared.csv");
    let psi = run(job("psi", "customers", "accounts"), &["--out", s(&psi_out)]);
    assert_eq!((psi["state"].as_str(), psi["intersection"].as_u64()), (Some("done"), Some(60)), "{psi}");
    let id = psi["job_id"].as_str().unwrap();
    let record = json(&["job", s(&a), id, "--json"]);
    assert_eq!((record["job_id"].as_str(), record["output_rows"].as_u64()), (Some(id), Some(60)), "{record}");

    let bundle = root.join("evidence.json");
    let exported = json(&["audit", "export", s(&a), "--job", id, "--out", s(&bundle), "--json"]);
    assert!(exported["entries"].as_u64().unwrap() > 0 && bundle.is_file(), "{exported}");
    assert_eq!(exported["job"].as_str(), Some(id));
    let key = json(&["audit", "key", s(&a), "--json"]);
    let key = key["key"].as_str().unwrap();
    assert_eq!(key.len(), 64, "{key}");
    let verified = json(&["audit", "verify", s(&bundle), "--key", key, "--json"]);
    assert_eq!(verified["ok"], true, "{verified}");

    let model = root.join("model.json");
    let small = ["--epochs", "1", "--batch-size", "128", "--seed", "5", "--out", s(&model)];
    let train = run(job("train", "loans", "features"), &[&["--label", "y"][..], &small].concat());
    assert_eq!((train["state"].as_str(), train["kind"].as_str()), (Some("done"), Some("train")), "{train}");
    assert!(train["report"]["auc"].as_f64().is_some(), "{train}");
    let scores = root.join("scores.csv");
    let score = run(job("score", "loans", "features"), &["--model", s(&model), "--out", s(&scores)]);
    assert_eq!((score["state"].as_str(), score["output_rows"].as_u64()), (Some("done"), Some(400)), "{score}");

    exit_codes(root, (&a, &b), &psi_data);
}

/// Each documented failure class, from a real binary against the running nodes.
fn exit_codes(root: &Path, (a, b): (&Path, &Path), psi_data: &Path) {
    let out = root.join("x.csv");
    let psi = |dir: &Path, dataset: &str, peer_dataset: &str, extra: &[&str]| {
        let args = ["psi", s(dir), "--peer", "partner", "--dataset", dataset, "--peer-dataset", peer_dataset];
        args.iter().chain(extra).chain(&["--out", s(&out)]).map(|a| a.to_string()).collect::<Vec<String>>()
    };

    // Usage (clap): a missing argument, a value outside the vocabulary.
    let usage = consort(&["psi", s(a)]);
    assert_eq!(usage.status.code(), Some(2), "{}", String::from_utf8_lossy(&usage.stderr));
    let bad_value = psi(a, "customers", "accounts", &["--reveal", "nobody"]);
    assert_eq!(consort(&strs(&bad_value)).status.code(), Some(2));

    // Refused by the peer: its dataset is not shared. The JSON record says so too.
    let refused = psi(a, "customers", "missing", &["--json"]);
    let shown = exits(&strs(&refused), Exit::Refused);
    let record: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!((record["state"].as_str(), record["refused_by_peer"].as_bool()), (Some("failed"), Some(true)));
    assert!(!out.exists());
    // Refused by this node's own grant: the bank's "loans" is not granted for PSI.
    let err = exits(&strs(&psi(a, "loans", "accounts", &[])), Exit::Refused);
    assert!(String::from_utf8_lossy(&err.stderr).contains("grant"), "{}", String::from_utf8_lossy(&err.stderr));

    // Refused by the peer's operator: a grant that needs approval, and `deny --json`.
    ok(&["grant", "set", s(b), "--dataset", "accounts", "--peer", "bank", "--jobs", "psi", "--approval"]);
    let waiting = std::process::Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(strs(&psi(a, "customers", "accounts", &[])))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let id = loop {
        let awaiting = common::jobs(b).into_iter().find(|j| j["state"] == "awaiting-approval");
        if let Some(job) = awaiting {
            break job["job_id"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed().as_secs() < 60, "no job awaits approval");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let denied = json(&["deny", s(b), &id, "--reason", "not this week", "--json"]);
    assert_eq!((denied["job_id"].as_str(), denied["state"].as_str()), (Some(id.as_str()), Some("refused")), "{denied}");
    let requester = waiting.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&requester.stderr);
    assert_eq!(requester.status.code(), Some(i32::from(Exit::Refused.code())), "{err}");
    assert!(err.contains("denied") && err.contains("not this week"), "{err}");
    ok(&["grant", "set", s(b), "--dataset", "accounts", "--peer", "bank", "--jobs", "psi"]);

    // Job failed: the job runs, but its dataset's file is gone by then.
    let copy = root.join("gone.csv");
    std::fs::copy(psi_data.join("a.csv"), &copy).unwrap();
    ok(&["dataset", "add", s(a), "--name", "gone", "--file", s(&copy), "--key", "id", "--grant", "partner"]);
    std::fs::remove_file(&copy).unwrap();
    exits(&strs(&psi(a, "gone", "accounts", &[])), Exit::JobFailed);

    // Node unavailable: a node directory whose node is not running.
    let idle = root.join("idle");
    ok(&["init", s(&idle), "--name", "idle", "--listen", "127.0.0.1:0"]);
    exits(&strs(&psi(&idle, "customers", "accounts", &[])), Exit::NodeUnavailable);

    // Bad input data: a key column not in the file, a job file with an unknown key, a file that
    // is not an evidence bundle, a sealed output changed on disk.
    let file = psi_data.join("a.csv");
    exits(&["dataset", "add", s(b), "--name", "bad", "--file", s(&file), "--key", "nope"], Exit::BadInput);
    let job_file = root.join("bad-job.toml");
    std::fs::write(&job_file, "kind = \"psi\"\npeer = \"partner\"\nbogus = 1\n").unwrap();
    exits(&["run", s(a), s(&job_file)], Exit::BadInput);
    exits(&["audit", "verify", s(&job_file)], Exit::BadInput);
    let sealed = root.join("shared.csv");
    let mut bytes = std::fs::read(&sealed).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 1;
    let tampered = root.join("tampered.csv");
    std::fs::write(&tampered, bytes).unwrap();
    exits(&["export", s(a), s(&tampered), "--out", s(&root.join("plain.csv"))], Exit::BadInput);

    // Anything else is a plain failure: an unknown peer.
    let mut unknown = psi(a, "customers", "accounts", &[]);
    unknown[3] = "nobody".into();
    exits(&strs(&unknown), Exit::Failure);
}

#[test]
fn bench_prints_one_json_line() {
    let tmp = tempfile::tempdir().unwrap();
    let v = json(&["bench", "psi", "--rows", "300", "--dir", s(tmp.path()), "--json"]);
    assert_eq!(
        (v["n"].as_u64(), v["intersection"].as_u64(), v["output_ok"].as_bool()),
        (Some(300), Some(150), Some(true))
    );
}

#[test]
fn completion_scripts_and_man_pages_are_generated() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef consort"), ("fish", "complete -c consort")] {
        let script = ok(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        assert!(
            script.contains("requester-only") && script.contains("peer-dataset"),
            "{shell}: values or flags missing"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let v = json(&["man", "--out", s(&dir), "--json"]);
    let pages: Vec<&str> = v["pages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    // One page per command and subcommand, each a roff page naming its command.
    for name in ["consort", "consort-psi", "consort-peer-add", "consort-audit-verify", "consort-gen-lr", "consort-man"]
    {
        let page = dir.join(format!("{name}.1"));
        assert!(pages.contains(&s(&page)), "{name} not listed: {pages:?}");
        let text = std::fs::read_to_string(&page).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{name}: not a roff page");
        assert!(text.contains(&name.replace('-', "\\-")), "{name}: the page does not name its command");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), pages.len());
    // The main page carries the exit codes of `consort --help`.
    let main = std::fs::read_to_string(dir.join("consort.1")).unwrap();
    assert!(main.contains("bad input data") && main.contains("node unavailable"), "exit codes missing from consort.1");
    let help = ok(&["--help"]);
    assert!(help.contains("Exit status:") && help.contains("3  refused"), "{help}");
}
