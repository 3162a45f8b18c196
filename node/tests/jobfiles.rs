//! Job files (`consort run DIR JOB.toml`, `--save-job`) with real node processes: a file saved
//! from a CLI run reproduces that run; keys are named in errors.

mod common;

use std::path::Path;

use common::{fails, job, ok, psi_args, s, two_nodes};

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap()
}

/// The figures two runs of the same job must share.
fn same_run(a: &serde_json::Value, b: &serde_json::Value) {
    for key in ["state", "kind", "protocol", "reveal", "peer", "dataset", "peer_dataset", "output"] {
        assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
    }
    for key in ["intersection", "output_rows", "local_rows", "peer_rows"] {
        assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
    }
    assert_ne!(a["job_id"], b["job_id"]);
}

#[test]
fn a_psi_job_file_saved_from_the_cli_reproduces_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = two_nodes(tmp.path(), 300, 120);
    let (out, job) = (tmp.path().join("out.csv"), tmp.path().join("psi.toml"));
    let mut args = psi_args(&nodes.a, &out);
    args.extend(["--protocol", "rr22", "--reveal", "requester-only", "--save-job", s(&job)]);
    let first = json(&ok(&args));
    assert_eq!((first["state"].as_str(), first["intersection"].as_u64()), (Some("done"), Some(120)), "{first}");

    let text = std::fs::read_to_string(&job).unwrap();
    assert!(text.contains("kind = \"psi\"") && text.contains("protocol = \"rr22\""), "{text}");
    assert!(!text.contains(s(&nodes.a)), "the node directory comes from `consort run`: {text}");
    std::fs::remove_file(&out).unwrap();
    let again = json(&ok(&["run", s(&nodes.a), s(&job), "--json"]));
    same_run(&first, &again);
    assert_eq!((again["protocol"].as_str(), again["reveal"].as_str()), (Some("rr22"), Some("requester-only")));

    // The example file names the same peer and datasets as `two_nodes`; its relative `out` is
    // relative to where `consort run` starts.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs/psi.toml");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(["run", s(&nodes.a), s(&example), "--json"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v = json(&String::from_utf8(run.stdout).unwrap());
    assert_eq!((v["intersection"].as_u64(), v["output_rows"].as_u64()), (Some(120), Some(120)), "{v}");
    assert!(v["output"].as_str().unwrap().ends_with("matches.csv") && tmp.path().join("matches.csv").exists());
}

#[test]
fn a_train_job_file_saved_from_the_cli_reproduces_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = |s: &str| root.join(s).display().to_string();
    ok(&[
        "gen",
        "lr",
        "--rows",
        "600",
        "--features-a",
        "2",
        "--features-b",
        "2",
        "--missing-b",
        "40",
        "--out",
        &p("data"),
    ]);
    let nodes = two_nodes(&root.join("psi"), 10, 5);
    let (bank, partner) = (s(&nodes.a), s(&nodes.b));
    for (dir, name, file, peer) in [(bank, "loans", "data/a.csv", "partner"), (partner, "feats", "data/b.csv", "bank")]
    {
        let grant = format!("{peer}:train");
        ok(&["dataset", "add", dir, "--name", name, "--file", &p(file), "--key", "id", "--grant", &grant]);
    }
    // Two models on the partner's dataset: the run and its repetition.
    ok(&["grant", "set", partner, "--dataset", "feats", "--peer", "bank", "--jobs", "train", "--models", "2"]);
    let job_file = p("train.toml");
    let in_root = |args: &[&str]| {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_consort")).args(args).current_dir(root).output();
        let run = run.unwrap();
        assert!(run.status.success(), "{args:?}: {}", String::from_utf8_lossy(&run.stderr));
        json(&String::from_utf8(run.stdout).unwrap())
    };
    let first = in_root(&[
        "train",
        bank,
        "--peer",
        "partner",
        "--dataset",
        "loans",
        "--peer-dataset",
        "feats",
        "--label",
        "y",
        "--epochs",
        "2",
        "--batch-size",
        "128",
        "--out",
        "model.json",
        "--json",
        "--save-job",
        "train.toml",
    ]);
    let text = std::fs::read_to_string(&job_file).unwrap();
    assert!(text.contains("kind = \"train\"") && text.contains("seed = "), "the drawn seed is saved: {text}");
    assert!(text.contains(&format!("out = \"{}\"", p("model.json"))), "paths are saved absolute: {text}");
    std::fs::remove_file(p("model.json")).unwrap();

    let again = json(&ok(&["run", bank, &job_file, "--json"]));
    same_run(&first, &again);
    let (r1, r2) = (&first["report"], &again["report"]);
    for key in ["aligned_rows", "train_rows", "holdout_rows", "epochs_run", "features", "peer_features", "sigmoid"] {
        assert_eq!(r1[key], r2[key], "{key}: {r1} vs {r2}");
    }
    // The partner received the same parameters (the split seed included) both times. (The same
    // seed does not hold out the same rows: the split is over the PSI's joint order, which is
    // new in every run.)
    let params = |id: &serde_json::Value| job(&nodes.b, id.as_str().unwrap()).unwrap()["request"]["parameters"].clone();
    let (p1, p2) = (params(&first["job_id"]), params(&again["job_id"]));
    assert!(p1["split_seed"].is_u64() && p1["epochs"] == 2, "{p1}");
    assert_eq!(p1, p2);
}

#[test]
fn unknown_keys_and_wrong_types_are_errors_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, file) = (tmp.path().join("node"), tmp.path().join("job.toml"));
    let base = "kind = \"train\"\npeer = \"p\"\ndataset = \"d\"\npeer-dataset = \"e\"\nlabel = \"y\"\nout = \"m\"\n";
    let run = |extra: &str| {
        std::fs::write(&file, format!("{base}{extra}")).unwrap();
        fails(&["run", s(&dir), s(&file)])
    };
    let err = run("epoch = 3\n");
    assert!(err.contains("job.toml:7:1: unknown key 'epoch' in a train job (keys: peer, dataset"), "{err}");
    let err = run("epochs = \"ten\"\n");
    assert!(err.contains("job.toml:7:1: invalid value 'ten' for key 'epochs'"), "{err}");
    let err = run("epochs = [3]\n");
    assert!(err.contains("job.toml:7:10: key 'epochs' must be a string or a number, not array"), "{err}");
    let err = run("features = [\"a\", { b = 1 }]\n");
    assert!(err.contains("key 'features' must be an array of strings or numbers"), "{err}");
    let err = run("json = true\n");
    assert!(err.contains("unknown key 'json'"), "{err}");
    std::fs::write(&file, "kind = \"train\"\npeer = \"p\n").unwrap();
    let err = fails(&["run", s(&dir), s(&file)]);
    assert!(err.contains("job.toml:2:"), "{err}");
}
