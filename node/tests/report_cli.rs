//! `consort report` as a user runs it: no node, no peer; bad input exits 6 and writes nothing;
//! sealed inputs open with `--dir`.

mod common;

use std::io::Write;
use std::path::Path;

use common::{consort, ok, s};
use consort_engine::sealed::StorageKey;
use consort_engine::storage::{AtRest, DataWriter};

/// 200 rows: the score rises with the row number, every third row with score ≥ 0.5 is bad and
/// a few below too, so both classes are present and AUC is well above one half.
fn scored_csv() -> String {
    let mut text = String::from("id,points,probability,label\n");
    for i in 0..200 {
        let p = i as f64 / 200.0;
        let bad = (p >= 0.5 && i % 3 != 0) || i % 17 == 0;
        text.push_str(&format!("k{i},{},{p:.6},{}\n", 600 - i / 2, u8::from(bad)));
    }
    text
}

#[test]
fn report_writes_html_and_json_without_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let scores = tmp.path().join("scored.csv");
    std::fs::write(&scores, scored_csv()).unwrap();
    let (html, json) = (tmp.path().join("r.html"), tmp.path().join("r.json"));
    let out = ok(&[
        "report",
        "--scores",
        s(&scores),
        "--label",
        "label",
        "--points-column",
        "points",
        "--baseline",
        s(&scores),
        "--out",
        s(&html),
        "--json-out",
        s(&json),
    ]);
    assert!(out.starts_with("200 rows (") && out.contains("AUC 0.") && out.contains("PSI 0.0000 (stable)"), "{out}");
    let figures: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(figures["rows"], 200);
    assert_eq!(figures["bands"]["kind"], "points");
    assert!(figures["auc"].as_f64().unwrap() > 0.7);
    let page = std::fs::read_to_string(&html).unwrap();
    for id in ["roc-chart", "ks-chart", "distribution-chart", "gain-chart"] {
        assert!(page.contains(&format!("<figure id=\"{id}\">")), "no {id}");
    }
    assert!(!page.contains("http://") && !page.contains("https://"));
    // --json: the same figures as one JSON object on stdout.
    let printed = ok(&["report", "--scores", s(&scores), "--label", "label", "--out", s(&html), "--json"]);
    let printed: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(printed["rows"], 200);
    assert_eq!(printed["auc"], figures["auc"]);
}

#[test]
fn bad_input_exits_6_names_the_place_not_the_value_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("id,probability,label\na,0.5,1\nb,0.SECRET,0\n", "scored.csv:3: column 'probability': not a number"),
        ("id,probability,label\na,0.5,1\nb,0.4,2\n", "scored.csv:3: column 'label': the label must be 0 or 1"),
        ("id,probability,label\na,0.5,1\nb,0.4,1\n", "scored.csv: the labels have one class only"),
        ("id,probability,y\na,0.5,1\n", "scored.csv:1: column 'label': no such label column"),
    ];
    for (text, want) in cases {
        let scores = tmp.path().join("scored.csv");
        std::fs::write(&scores, text).unwrap();
        let (html, json) = (tmp.path().join("r.html"), tmp.path().join("r.json"));
        let run =
            consort(&["report", "--scores", s(&scores), "--label", "label", "--out", s(&html), "--json-out", s(&json)]);
        assert_eq!(run.status.code(), Some(6), "{text:?}");
        let err = String::from_utf8(run.stderr).unwrap();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
        assert!(!err.contains("SECRET") && err.trim_end().lines().count() == 1, "{err}");
        assert!(!html.exists() && !json.exists(), "partial output for {text:?}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}

#[test]
fn sealed_scores_open_with_the_nodes_key_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    ok(&["init", s(&dir), "--name", "bank", "--listen", "127.0.0.1:0"]);
    let key = StorageKey::load(&dir.join("storage.key")).unwrap();
    let scores = tmp.path().join("scored.csv");
    seal(&scores, key, &scored_csv());
    let html = tmp.path().join("r.html");
    let run = consort(&["report", "--scores", s(&scores), "--label", "label", "--out", s(&html)]);
    assert_eq!(run.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&run.stderr).contains("scored.csv: sealed by a node; pass --dir"));
    assert!(!html.exists());
    let out = ok(&["report", "--scores", s(&scores), "--label", "label", "--dir", s(&dir), "--out", s(&html)]);
    assert!(out.starts_with("200 rows ("), "{out}");
    assert!(html.exists());
}

fn seal(path: &Path, key: StorageKey, text: &str) {
    let mut w = DataWriter::create(path, &AtRest::Sealed(std::sync::Arc::new(key))).unwrap();
    w.write_all(text.as_bytes()).unwrap();
    w.finish().unwrap();
}
