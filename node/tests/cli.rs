//! The CLI flow with two real `consort node` processes talking TLS gRPC on loopback.

mod common;

use common::{consort, fails, ok, s, start_node};

use std::path::{Path, PathBuf};

use consort_engine::check::OutputFile;
use consort_node::at_rest::load_key;

/// `consort psi` from the bank's node against the partner's "accounts", parsed `--json` summary.
fn psi_json(node: &Path, out: &Path, reveal: &str, protocol: &str) -> serde_json::Value {
    let json = ok(&[
        "psi",
        s(node),
        "--peer",
        "partner",
        "--dataset",
        "customers",
        "--peer-dataset",
        "accounts",
        "--reveal",
        reveal,
        "--protocol",
        protocol,
        "--out",
        s(out),
        "--json",
    ]);
    serde_json::from_str(json.trim()).unwrap()
}

#[test]
fn two_node_processes_run_psi_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b, data): (PathBuf, PathBuf, PathBuf) = (root.join("bank"), root.join("partner"), root.join("data"));
    ok(&["init", s(&a), "--name", "bank", "--listen", "127.0.0.1:0"]);
    ok(&["init", s(&b), "--name", "partner", "--listen", "127.0.0.1:0"]);
    fails(&["init", s(&a), "--name", "bank", "--listen", "127.0.0.1:0"]);
    ok(&["gen", "psi", "--rows", "3000", "--rows-b", "2000", "--overlap", "700", "--seed", "5", "--out", s(&data)]);

    let (_na, addr_a) = start_node(&a);
    let (_nb, addr_b) = start_node(&b);
    // Pinning and datasets are added while the nodes run: they reload their config.
    let pinned = ok(&["peer", "add", s(&a), "--name", "partner", "--addr", &addr_b, "--cert", s(&b.join("node.crt"))]);
    assert!(pinned.contains("sha256:"), "{pinned}");
    ok(&["peer", "add", s(&b), "--name", "bank", "--addr", &addr_a, "--cert", s(&a.join("node.crt"))]);
    let err = fails(&[
        "dataset",
        "add",
        s(&a),
        "--name",
        "customers",
        "--file",
        s(&data.join("a.csv")),
        "--key",
        "customer_id",
        "--grant",
        "partner",
    ]);
    assert!(err.contains("customer_id"), "{err}");
    ok(&[
        "dataset",
        "add",
        s(&a),
        "--name",
        "customers",
        "--file",
        s(&data.join("a.csv")),
        "--key",
        "id",
        "--grant",
        "partner",
    ]);
    ok(&[
        "dataset",
        "add",
        s(&b),
        "--name",
        "accounts",
        "--file",
        s(&data.join("b.csv")),
        "--key",
        "id",
        "--grant",
        "bank",
    ]);

    let out = root.join("shared.csv");
    let v = psi_json(&a, &out, "both", "ecdh");
    let ecdh_job = v["job_id"].as_str().unwrap().to_string();
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["intersection"], 700);
    assert_eq!(v["local_rows"], 3000);
    assert_eq!(v["peer_rows"], 2000);
    let peer_out = b.join(v["peer_output"].as_str().unwrap());
    let spec = |name: &str, file: &Path| consort_engine::DatasetSpec::new(name, file, &["id"]);
    // Each node sealed its output under its own storage key.
    let (key_a, key_b) = (load_key(&a).unwrap(), load_key(&b).unwrap());
    let check = consort_engine::check::verify_psi_outputs(
        &spec("a", &data.join("a.csv")),
        &spec("b", &data.join("b.csv")),
        Some(OutputFile::sealed(&out, &key_a)),
        Some(OutputFile::sealed(&peer_out, &key_b)),
    )
    .unwrap();
    assert!(check.ok, "{:?}", check.problems);
    assert_eq!(check.expected, 700);

    // The same through RR22.
    let out_rr22 = root.join("shared-rr22.csv");
    let v = psi_json(&a, &out_rr22, "both", "rr22");
    assert_eq!(
        (v["state"].as_str(), v["protocol"].as_str(), v["intersection"].as_u64()),
        (Some("done"), Some("rr22"), Some(700)),
        "{v}"
    );
    let check = consort_engine::check::verify_psi_outputs(
        &spec("a", &data.join("a.csv")),
        &spec("b", &data.join("b.csv")),
        Some(OutputFile::sealed(&out_rr22, &key_a)),
        Some(OutputFile::sealed(&b.join(v["peer_output"].as_str().unwrap()), &key_b)),
    )
    .unwrap();
    assert!(check.ok, "{:?}", check.problems);

    // Only the requester learns: the partner writes nothing.
    let out_self = root.join("shared-self.csv");
    let v = psi_json(&a, &out_self, "self", "rr22");
    assert_eq!(v["intersection"], 700);
    assert!(v["peer_output"].is_null(), "{v}");
    let check = consort_engine::check::verify_psi_outputs(
        &spec("a", &data.join("a.csv")),
        &spec("b", &data.join("b.csv")),
        Some(OutputFile::sealed(&out_self, &key_a)),
        None,
    )
    .unwrap();
    assert!(check.ok, "{:?}", check.problems);
    export_through_the_cli(root, (&a, &b), (&out, &peer_out), &data);

    // Errors name what is wrong.
    let err = fails(&[
        "psi",
        s(&a),
        "--peer",
        "nobody",
        "--dataset",
        "customers",
        "--peer-dataset",
        "accounts",
        "--out",
        s(&root.join("x.csv")),
    ]);
    assert!(err.contains("unknown peer 'nobody'"), "{err}");
    let err = fails(&[
        "psi",
        s(&a),
        "--peer",
        "partner",
        "--dataset",
        "customers",
        "--peer-dataset",
        "missing",
        "--out",
        s(&root.join("x.csv")),
    ]);
    assert!(err.contains("refused") && err.contains("missing"), "{err}");
    assert!(!root.join("x.csv").exists());
    let jobs = ok(&["jobs", s(&a)]);
    assert!(jobs.lines().count() >= 4, "{jobs}");

    audit_through_the_cli(root, &a, &b, &ecdh_job);
}

/// `consort audit key/export/verify` on the job just run, then a tampered bundle and log.
/// Outputs on disk hold no input id; `consort export` gives back exactly their plaintext, refuses to
/// overwrite, and fails without writing anything on a changed file.
fn export_through_the_cli(root: &Path, (a, b): (&Path, &Path), (out, peer_out): (&Path, &Path), data: &Path) {
    let ids: Vec<String> = std::fs::read_to_string(data.join("a.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    for sealed in [out, peer_out] {
        let raw = std::fs::read(sealed).unwrap();
        assert!(consort_engine::sealed::is_sealed(sealed).unwrap());
        for id in &ids {
            assert!(
                !raw.windows(id.len()).any(|w| w == id.as_bytes()),
                "id {id} in plain text in {}",
                sealed.display()
            );
        }
    }
    let key_a = load_key(a).unwrap();
    let plain = root.join("plain.csv");
    let said = ok(&["export", s(a), s(out), "--out", s(&plain)]);
    assert!(said.contains("decrypted"), "{said}");
    let expected = consort_engine::storage::read_data(out, Some(&key_a)).unwrap();
    assert_eq!(std::fs::read(&plain).unwrap(), expected);
    assert!(String::from_utf8_lossy(&expected).lines().count() == 701, "header and 700 rows");
    let err = fails(&["export", s(a), s(out), "--out", s(&plain)]);
    assert!(err.contains("exists (pass --force"), "{err}");
    ok(&["export", s(a), s(out), "--out", s(&plain), "--force"]);
    assert_eq!(ok(&["export", s(a), s(out), "--out", "-"]).as_bytes(), expected);
    // A sealed output is not a dataset; its plaintext is.
    let err = fails(&["dataset", "add", s(a), "--name", "again", "--file", s(out), "--key", "id"]);
    assert!(err.contains("is sealed") && err.contains("consort export"), "{err}");
    ok(&["dataset", "add", s(a), "--name", "again", "--file", s(&plain), "--key", "id"]);
    // The responder's output by the name `consort jobs` shows, relative to its node directory.
    let rel = peer_out.strip_prefix(b).unwrap();
    let peer_plain = root.join("peer-plain.csv");
    ok(&["export", s(b), s(rel), "--out", s(&peer_plain)]);
    assert_eq!(String::from_utf8(std::fs::read(&peer_plain).unwrap()).unwrap().lines().count(), 701);
    // Another node's key does not open it.
    let err = fails(&["export", s(a), s(peer_out), "--out", s(&root.join("never.csv"))]);
    assert!(err.contains("sealed under another storage key"), "{err}");
    // One flipped byte: a non-zero exit, and nothing written (also not to stdout).
    let mut bytes = std::fs::read(out).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x10;
    let tampered = root.join("tampered.csv");
    std::fs::write(&tampered, &bytes).unwrap();
    let target = root.join("from-tampered.csv");
    let err = fails(&["export", s(a), s(&tampered), "--out", s(&target)]);
    assert!(err.contains("fails authentication") && err.contains("tampered.csv"), "{err}");
    assert!(!target.exists());
    let stdout = common::consort(&["export", s(a), s(&tampered), "--out", "-"]);
    assert!(!stdout.status.success() && stdout.stdout.is_empty());
    assert_eq!(
        std::fs::read_dir(root)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".partial"))
            .count(),
        0
    );
}

fn audit_through_the_cli(root: &Path, a: &Path, b: &Path, job: &str) {
    let key_a = ok(&["audit", "key", s(a)]).trim().to_string();
    let key_b = ok(&["audit", "key", s(b)]).trim().to_string();
    let (bundle_a, bundle_b) = (root.join("evidence/a.json"), root.join("evidence/b.json"));
    std::fs::create_dir_all(root.join("evidence")).unwrap();
    ok(&["audit", "export", s(a), "--job", job, "--out", s(&bundle_a)]);
    ok(&["audit", "export", s(b), "--job", job, "--out", s(&bundle_b)]);
    let keys = ["--key", &key_a, "--key", &key_b];
    let mut args = vec!["audit", "verify", s(&bundle_a), s(&bundle_b), "--full"];
    args.extend(keys);
    let report = ok(&args);
    assert!(report.contains("evidence verifies") && report.contains("transcript digests agree"), "{report}");
    args.push("--json");
    let json: serde_json::Value = serde_json::from_str(ok(&args).trim()).unwrap();
    assert_eq!(json["ok"], true);

    // A flipped byte in a bundle's log entry.
    let text = std::fs::read_to_string(&bundle_a).unwrap();
    let tampered = root.join("evidence/tampered.json");
    std::fs::write(&tampered, text.replacen("\\\"event\\\":\\\"start\\\"", "\\\"event\\\":\\\"stArt\\\"", 1)).unwrap();
    let err = fails(&["audit", "verify", s(&tampered), "--key", &key_a]);
    assert!(err.contains("is not in the signed log"), "{err}");
    // A whole log, then a flipped byte in it.
    let log_dir = a.join("audit");
    let out = ok(&["audit", "verify", "--log", s(&log_dir), "--key", &key_a]);
    assert!(out.contains("every head verifies"), "{out}");
    let log = std::fs::read_to_string(log_dir.join("log.jsonl")).unwrap();
    std::fs::write(log_dir.join("log.jsonl"), log.replacen("\"event\":\"grant\"", "\"event\":\"grAnt\"", 1)).unwrap();
    let err = fails(&["audit", "verify", "--log", s(&log_dir), "--key", &key_a]);
    assert!(err.contains("log.jsonl line 2 (entry 1)") || err.contains("entry 1 ("), "{err}");
    std::fs::write(log_dir.join("log.jsonl"), log).unwrap();
}

#[test]
fn help_and_usage_errors() {
    for cmd in [
        vec!["--help"],
        vec!["psi", "--help"],
        vec!["gen", "psi", "--help"],
        vec!["bench", "psi", "--help"],
        vec!["dataset", "add", "--help"],
    ] {
        ok(&cmd);
    }
    let out = consort(&["psi"]);
    assert!(!out.status.success());
    // Vocabulary values are listed in --help and offered by shell completion.
    let help = ok(&["psi", "--help"]);
    assert!(help.contains("[possible values: ecdh, rr22]") && help.contains("both, requester-only"), "{help}");
    let completion = ok(&["completions", "bash"]);
    assert!(completion.contains("requester-only") && completion.contains("rr22"), "bash completion lacks values");
    let out = consort(&[
        "psi",
        "/tmp",
        "--peer",
        "p",
        "--dataset",
        "d",
        "--peer-dataset",
        "e",
        "--out",
        "x",
        "--reveal",
        "no",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("invalid value 'no' for '--reveal"), "{err}");
    let out = consort(&[
        "psi",
        "/nonexistent-node-dir",
        "--peer",
        "p",
        "--dataset",
        "d",
        "--peer-dataset",
        "e",
        "--out",
        "/tmp/x.csv",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node is running"));
}
