//! `consort gen lr`, `consort train` and `consort score` as processes: two real nodes, the whole
//! flow through the CLI, and the one-line errors.

mod common;

use common::{fails, ok, start_node};

#[test]
fn gen_train_score_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = |s: &str| root.join(s).display().to_string();
    let out = ok(&[
        "gen",
        "lr",
        "--rows",
        "1200",
        "--features-a",
        "2",
        "--features-b",
        "2",
        "--missing-b",
        "50",
        "--out",
        &p("data"),
    ]);
    assert!(out.contains("1200 rows") && out.contains("1150 rows"), "{out}");
    ok(&["init", &p("bank"), "--name", "bank", "--listen", "127.0.0.1:0"]);
    ok(&["init", &p("partner"), "--name", "partner", "--listen", "127.0.0.1:0"]);
    let (_a, a_addr) = start_node(&root.join("bank"));
    let (_b, b_addr) = start_node(&root.join("partner"));
    ok(&["peer", "add", &p("bank"), "--name", "partner", "--addr", &b_addr, "--cert", &p("partner/node.crt")]);
    ok(&["peer", "add", &p("partner"), "--name", "bank", "--addr", &a_addr, "--cert", &p("bank/node.crt")]);
    let a_csv = p("data/a.csv");
    let b_csv = p("data/b.csv");
    ok(&[
        "dataset",
        "add",
        &p("bank"),
        "--name",
        "loans",
        "--file",
        &a_csv,
        "--key",
        "id",
        "--grant",
        "partner:train,score",
    ]);
    ok(&[
        "dataset",
        "add",
        &p("partner"),
        "--name",
        "feats",
        "--file",
        &b_csv,
        "--key",
        "id",
        "--grant",
        "bank:train,score",
    ]);

    let train = |label: &str| {
        vec![
            "train".to_string(),
            p("bank"),
            "--peer".into(),
            "partner".into(),
            "--dataset".into(),
            "loans".into(),
            "--peer-dataset".into(),
            "feats".into(),
            "--label".into(),
            label.into(),
            "--epochs".into(),
            "2".into(),
            "--batch-size".into(),
            "128".into(),
            "--seed".into(),
            "3".into(),
            "--out".into(),
            p("model.json"),
        ]
    };
    let args = train("y");
    let text = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text.contains("1150 aligned") && text.contains("AUC") && text.contains("KS"), "{text}");
    // Model files and predictions are sealed under the node's storage key.
    let key_a = consort_node::at_rest::load_key(&root.join("bank")).unwrap();
    let read = |name: &str| consort_engine::storage::read_data(&root.join(name), Some(&key_a)).unwrap();
    assert!(consort_engine::sealed::is_sealed(&root.join("model.json")).unwrap());
    let model: serde_json::Value = serde_json::from_slice(&read("model.json")).unwrap();
    assert_eq!(model["format"], "consort-lr/1");
    assert_eq!(model["features"].as_array().unwrap().len(), 2);

    let json = ok(&[
        "score",
        &p("bank"),
        "--peer",
        "partner",
        "--dataset",
        "loans",
        "--peer-dataset",
        "feats",
        "--model",
        &p("model.json"),
        "--out",
        &p("pred.csv"),
        "--json",
    ]);
    let status: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(status["state"], "done");
    assert!(consort_engine::sealed::is_sealed(&root.join("pred.csv")).unwrap());
    assert_eq!(String::from_utf8(read("pred.csv")).unwrap().lines().count(), 1151);
    ok(&["export", &p("bank"), &p("pred.csv"), "--out", &p("pred-plain.csv")]);
    assert_eq!(std::fs::read(root.join("pred-plain.csv")).unwrap(), read("pred.csv"));

    // A sealed model with one flipped byte: the score job is refused before it runs, naming the
    // file, and writes no predictions; on the responder's side the job fails without its model.
    let score = |model: &str, out: &str| {
        let args = ["score", &p("bank"), "--peer", "partner", "--dataset", "loans", "--peer-dataset", "feats"];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--model".into(), p(model), "--out".into(), p(out)]);
        fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut bytes = std::fs::read(root.join("model.json")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(root.join("model-flipped.json"), &bytes).unwrap();
    let err = score("model-flipped.json", "pred-flipped.csv");
    assert!(err.contains("model-flipped.json") && err.contains("fails authentication"), "{err}");
    assert!(!root.join("pred-flipped.csv").exists());
    let partner_models: Vec<_> = std::fs::read_dir(root.join("partner/outputs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".model.json"))
        .collect();
    assert_eq!(partner_models.len(), 1);
    let mut bytes = std::fs::read(&partner_models[0]).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&partner_models[0], &bytes).unwrap();
    let err = score("model.json", "pred-2.csv");
    assert!(err.contains("no model of train job"), "{err}");
    assert!(!root.join("pred-2.csv").exists());

    // A second model on the same dataset: refused by the partner's grant (one model by default:
    // each scored model gives the bank one more combination of the partner's features per row),
    // until the partner's operator allows more.
    let err = fails(&train("y").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("the budget of 1 model(s) on this dataset is used up"), "{err}");
    ok(&[
        "grant",
        "set",
        &p("partner"),
        "--dataset",
        "feats",
        "--peer",
        "bank",
        "--jobs",
        "train,score",
        "--models",
        "9",
    ]);

    // The poly3 sigmoid through the CLI: JSON summary and model file name it.
    let mut args = train("y");
    args.extend(["--sigmoid".to_string(), "poly3".to_string(), "--json".to_string()]);
    let json = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(status["state"], "done");
    assert_eq!(status["report"]["sigmoid"], "poly3", "{status}");
    assert_eq!(status["report"]["weights_epoch"], 2, "{status}");
    let model: serde_json::Value = serde_json::from_slice(&read("model.json")).unwrap();
    assert_eq!((&model["sigmoid"], &model["training"]["params"]["sigmoid"]), (&"poly3".into(), &"poly3".into()));
    let mut args = train("y");
    args.extend(["--sigmoid".to_string(), "exact".to_string()]);
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("poly3"), "{err}");

    // A label column that does not exist: the job fails with the file, line and column.
    let args = train("target");
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("a.csv:1: column 'target': no such label column"), "{err}");
    // Bad hyper-parameters are refused before anything runs.
    let mut args = train("y");
    args.extend(["--learning-rate".to_string(), "0".to_string()]);
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("learning rate"), "{err}");
}

#[test]
fn secureboost_through_the_cli_needs_its_own_grant() {
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
        "20",
        "--out",
        &p("data"),
    ]);
    ok(&["init", &p("bank"), "--name", "bank", "--listen", "127.0.0.1:0"]);
    ok(&["init", &p("partner"), "--name", "partner", "--listen", "127.0.0.1:0"]);
    let (_a, a_addr) = start_node(&root.join("bank"));
    let (_b, b_addr) = start_node(&root.join("partner"));
    ok(&["peer", "add", &p("bank"), "--name", "partner", "--addr", &b_addr, "--cert", &p("partner/node.crt")]);
    ok(&["peer", "add", &p("partner"), "--name", "bank", "--addr", &a_addr, "--cert", &p("bank/node.crt")]);
    let add = |dir: &str, name: &str, file: &str, grant: &str| {
        ok(&["dataset", "add", &p(dir), "--name", name, "--file", &p(file), "--key", "id", "--grant", grant]);
    };
    add("bank", "loans", "data/a.csv", "partner:train,score,secureboost,secureboost-score");
    add("partner", "lr-only", "data/b.csv", "bank:train,score");
    add("partner", "sb", "data/b.csv", "bank:secureboost,secureboost-score");
    let train = |peer_dataset: &str| {
        common::consort(&[
            "train",
            &p("bank"),
            "--peer",
            "partner",
            "--dataset",
            "loans",
            "--peer-dataset",
            peer_dataset,
            "--label",
            "y",
            "--model",
            "secureboost",
            "--trees",
            "2",
            "--max-depth",
            "2",
            "--max-bins",
            "9",
            "--out",
            &p("sb.json"),
        ])
    };
    // The partner grants LR only: refused (exit 3), no model.
    let refused = train("lr-only");
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(!root.join("sb.json").exists());
    let done = train("sb");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(stdout.contains("holdout loss per tree") && stdout.contains("AUC"), "{stdout}");
    // `consort score` reads the model file's format and runs a secureboost-score job.
    let out = ok(&[
        "score",
        &p("bank"),
        "--peer",
        "partner",
        "--dataset",
        "loans",
        "--peer-dataset",
        "sb",
        "--model",
        &p("sb.json"),
        "--out",
        &p("sb-scores.csv"),
    ]);
    assert!(out.contains("secureboost-score job") && out.contains("580 predictions"), "{out}");
    // SecureBoost flags without --model secureboost are a usage mistake, not an LR job.
    let e = fails(&[
        "train",
        &p("bank"),
        "--peer",
        "partner",
        "--dataset",
        "loans",
        "--peer-dataset",
        "lr-only",
        "--label",
        "y",
        "--trees",
        "3",
        "--out",
        &p("lr.json"),
    ]);
    assert!(e.contains("add --model secureboost"), "{e}");
}
