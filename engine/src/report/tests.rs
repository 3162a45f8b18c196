use super::*;
use rand::{RngExt, SeedableRng};

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

fn report(scores: &[f64], labels: &[u8]) -> Report {
    let options = Options { score_column: "probability", label_column: "y", ..Options::default() };
    Report::compute(scores, labels, &options).unwrap()
}

#[test]
fn auc_ks_gini_with_ties_match_hand_computed_values() {
    // Bads {0.9, 0.5}, goods {0.5, 0.1}: pairs 0.9>0.5, 0.9>0.1, 0.5=0.5 (½), 0.5>0.1 → 3.5/4.
    let r = report(&[0.9, 0.5, 0.5, 0.1], &[1, 1, 0, 0]);
    close(r.auc, 0.875);
    close(r.gini, 0.75);
    // Thresholds: ≥0.9 → TPR ½, FPR 0; ≥0.5 → 1, ½; ≥0.1 → 1, 1. The tie group is never split.
    close(r.ks, 0.5);
    close(r.ks_score, 0.9);
    assert_eq!((r.rows, r.bads, r.goods), (4, 2, 2));
    close(auc(&[0.9, 0.5, 0.5, 0.1], &[1, 1, 0, 0]).unwrap(), 0.875);
    close(ks(&[0.9, 0.5, 0.5, 0.1], &[1, 1, 0, 0]).unwrap(), 0.5);
    // Perfect and reversed ranking.
    close(auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]).unwrap(), 1.0);
    close(auc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]).unwrap(), 0.0);
    close(ks(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]).unwrap(), 1.0);
    // ROC from (0,0) to (1,1) through the tie group's diagonal step.
    assert_eq!(r.roc, vec![[0.0, 0.0], [0.0, 0.5], [0.5, 1.0], [1.0, 1.0]]);
}

#[test]
fn auc_and_ks_match_a_brute_force_count_and_the_lr_metrics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for n in [2usize, 3, 10, 101, 500] {
        // Scores on a coarse grid, so many ties.
        let scores: Vec<f64> = (0..n).map(|_| rng.random_range(0..12) as f64 / 11.0).collect();
        let mut labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..2u8)).collect();
        labels[0] = 0;
        labels[1] = 1;
        let (mut pairs, mut good) = (0.0, 0.0);
        for i in 0..n {
            for j in 0..n {
                if labels[i] == 1 && labels[j] == 0 {
                    pairs += 1.0;
                    good += if scores[i] > scores[j] {
                        1.0
                    } else if scores[i] == scores[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        let a = auc(&scores, &labels).unwrap();
        close(a, good / pairs);
        close(a, crate::lr::auc(&scores, &labels).unwrap());
        // KS by brute force over every distinct threshold.
        let (p, q) =
            (labels.iter().filter(|&&l| l == 1).count() as f64, labels.iter().filter(|&&l| l == 0).count() as f64);
        let best = scores
            .iter()
            .map(|&t| {
                let tp = (0..n).filter(|&i| labels[i] == 1 && scores[i] >= t).count() as f64;
                let fp = (0..n).filter(|&i| labels[i] == 0 && scores[i] >= t).count() as f64;
                (tp / p - fp / q).abs()
            })
            .fold(0.0, f64::max);
        close(ks(&scores, &labels).unwrap(), best);
        close(ks(&scores, &labels).unwrap(), crate::lr::ks(&scores, &labels).unwrap());
    }
}

#[test]
fn one_class_one_row_and_bad_values_are_clear_errors() {
    let options = Options { score_column: "s", label_column: "y", ..Options::default() };
    for (scores, labels) in [(&[0.1, 0.2][..], &[1u8, 1][..]), (&[0.1, 0.2], &[0, 0]), (&[0.3], &[1])] {
        let e = Report::compute(scores, labels, &options).unwrap_err().to_string();
        assert!(e.contains("one class only"), "{e}");
        assert!(auc(scores, labels).is_err() && ks(scores, labels).is_err());
    }
    let e = Report::compute(&[0.1, 0.2], &[0, 2], &options).unwrap_err().to_string();
    assert!(e.contains("row 2: the label must be 0 or 1"), "{e}");
    let e = Report::compute(&[0.1, f64::NAN], &[0, 1], &options).unwrap_err().to_string();
    assert!(e.contains("row 2: the score is not a finite number"), "{e}");
    assert!(Report::compute(&[], &[], &options).is_err());
    // Two rows, one of each class: everything defined.
    let r = report(&[0.2, 0.7], &[0, 1]);
    close(r.auc, 1.0);
    close(r.ks, 1.0);
}

#[test]
fn equal_scores_give_auc_one_half_and_one_decile() {
    let r = report(&[0.5; 4], &[0, 1, 0, 1]);
    close(r.auc, 0.5);
    close(r.gini, 0.0);
    close(r.ks, 0.0);
    assert_eq!(r.deciles[0].rows, 4);
    close(r.deciles[0].lift.unwrap(), 1.0);
    close(r.deciles[0].cumulative_gain, 1.0);
    for d in &r.deciles[1..] {
        assert_eq!((d.rows, d.bad_rate, d.lift, d.min_score), (0, None, None, None));
        close(d.cumulative_gain, 1.0);
    }
    assert_eq!(r.distribution.edges, vec![0.5, 0.5]);
    assert_eq!((r.distribution.bads.clone(), r.distribution.goods.clone()), (vec![1.0], vec![1.0]));
}

#[test]
fn deciles_lift_and_gain_match_hand_computed_values() {
    // 20 distinct scores 20..1; bads at positions 0, 1 and 10 (scores 20, 19, 10).
    let scores: Vec<f64> = (1..=20).rev().map(f64::from).collect();
    let mut labels = vec![0u8; 20];
    labels[0] = 1;
    labels[1] = 1;
    labels[10] = 1;
    let r = report(&scores, &labels);
    close(r.bad_rate, 0.15);
    assert!(r.deciles.iter().all(|d| d.rows == 2));
    let d1 = &r.deciles[0];
    assert_eq!((d1.bads, d1.min_score, d1.max_score), (2, Some(19.0), Some(20.0)));
    close(d1.lift.unwrap(), 1.0 / 0.15);
    close(d1.cumulative_gain, 2.0 / 3.0);
    let d6 = &r.deciles[5];
    assert_eq!((d6.bads, d6.cumulative_rows, d6.cumulative_bads), (1, 12, 3));
    close(d6.lift.unwrap(), 0.5 / 0.15);
    close(d6.cumulative_gain, 1.0);
    close(d6.cumulative_lift.unwrap(), (3.0 / 12.0) / 0.15);
    close(r.deciles[9].cumulative_lift.unwrap(), 1.0);
}

#[test]
fn deciles_keep_ties_together_in_the_decile_of_their_first_row() {
    // n = 10, so row i is nominally in decile i + 1.
    let scores = [5.0, 4.0, 4.0, 4.0, 3.0, 2.0, 2.0, 1.0, 1.0, 1.0];
    let labels = [1, 0, 1, 0, 0, 1, 0, 0, 0, 1];
    let r = report(&scores, &labels);
    let rows: Vec<u64> = r.deciles.iter().map(|d| d.rows).collect();
    assert_eq!(rows, [1, 3, 0, 0, 1, 2, 0, 3, 0, 0]);
    assert_eq!(r.deciles[1].bads, 1);
    assert_eq!(r.deciles[3].cumulative_rows, 4);
    assert_eq!(r.deciles.iter().map(|d| d.rows).sum::<u64>(), 10);
}

#[test]
fn bands_follow_the_documented_edges() {
    // Probability bands: 0.1 opens [0.1, 0.2); 1.0 closes the last band.
    let r = report(&[0.0, 0.1, 0.15, 0.95, 1.0], &[0, 0, 1, 1, 1]);
    assert_eq!(r.bands.kind, "probability");
    let rows: Vec<u64> = r.bands.bands.iter().map(|b| b.rows).collect();
    assert_eq!(rows, [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
    assert_eq!(r.bands.bands[1].bads, 1);
    close(r.bands.bands[1].bad_rate.unwrap(), 0.5);
    close(r.bands.bands[9].share, 0.4);
    // Scores outside [0, 1]: ten equal bands from min to max.
    let r = report(&[-2.0, 0.0, 3.0, 8.0], &[0, 1, 0, 1]);
    assert_eq!(r.bands.kind, "score");
    let rows: Vec<u64> = r.bands.bands.iter().map(|b| b.rows).collect();
    assert_eq!(rows, [1, 0, 1, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!((r.bands.bands[0].lower, r.bands.bands[9].upper), (-2.0, 8.0));
    // Points: bands of 20 aligned on multiples of 20.
    let points = [598.0, 600.0, 619.0, 620.0, 655.0];
    let options = Options {
        score_column: "probability",
        label_column: "y",
        points: Some(("points", &points)),
        ..Options::default()
    };
    let r = Report::compute(&[0.5, 0.4, 0.3, 0.2, 0.1], &[1, 1, 0, 0, 1], &options).unwrap();
    assert_eq!((r.bands.kind, r.bands.column.as_str()), ("points", "points"));
    let got: Vec<(f64, f64, u64, u64)> = r.bands.bands.iter().map(|b| (b.lower, b.upper, b.rows, b.bads)).collect();
    assert_eq!(got, [(580.0, 600.0, 1, 1), (600.0, 620.0, 2, 1), (620.0, 640.0, 1, 0), (640.0, 660.0, 1, 1)]);
    let tiny = Options { band_width: Some(0.1), ..options.clone() };
    let e = Report::compute(&[0.5, 0.4, 0.3, 0.2, 0.1], &[1, 1, 0, 0, 1], &tiny).unwrap_err().to_string();
    assert!(e.contains("pass a larger band width"), "{e}");
}

#[test]
fn psi_of_identical_distributions_is_zero() {
    let base: Vec<f64> = (0..1000).map(|i| ((i * 37) % 101) as f64 / 100.0).collect();
    assert_eq!(psi(&base, &base).unwrap().value, 0.0);
    // Same shares, different order and twice the rows.
    let mut twice: Vec<f64> = base.iter().chain(&base).copied().collect();
    twice.reverse();
    assert_eq!(psi(&base, &twice).unwrap().value, 0.0);
    // A constant baseline has one bin: PSI 0 whatever the scored rows.
    let p = psi(&[0.3; 5], &[0.1, 0.9]).unwrap();
    assert_eq!((p.bins.len(), p.value), (1, 0.0));
}

#[test]
fn psi_matches_hand_computed_values() {
    let eps = PSI_EPSILON;
    // Baseline 1..=10: cut points 1..=9, ten bins of one baseline row each (e = 0.1).
    let base: Vec<f64> = (1..=10).map(f64::from).collect();
    let p = psi(&base, &[1.0, 1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0, 10.0, 10.0]).unwrap();
    assert_eq!(p.bins.len(), 10);
    assert_eq!(
        (p.bins[0].lower, p.bins[0].upper, p.bins[9].lower, p.bins[9].upper),
        (None, Some(1.0), Some(9.0), None)
    );
    let want = 2.0 * (0.5 - 0.1) * (0.5f64 / 0.1).ln() + 8.0 * (eps - 0.1) * (eps / 0.1).ln();
    close(p.value, want);
    // 1,1,1 in (−∞,1]; 2..8 one each in (1,2]..(7,8]; none above 8.
    let p = psi(&base, &[1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
    close(p.value, 0.2 * 3f64.ln() + 2.0 * (eps - 0.1) * (eps / 0.1).ln());
    // Ties in the baseline merge cut points: cuts {1} → bins (−∞,1] (e = 0.9) and (1,∞) (e = 0.1).
    let base = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0];
    let p = psi(&base, &[1.0, 2.0, 2.0, 2.0, 2.0]).unwrap();
    assert_eq!(p.bins.len(), 2);
    close(p.value, (0.2 - 0.9) * (0.2f64 / 0.9).ln() + (0.8 - 0.1) * (0.8f64 / 0.1).ln());
    assert!(psi(&[], &[1.0]).is_err());
    assert!(psi(&[1.0], &[f64::INFINITY]).is_err());
}

fn write_csv(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn scored_files_are_read_strictly_with_errors_that_name_the_place_not_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let cols = Columns { score: None, label: Some("y"), points: None };
    // The default score column: `probability` before `score`.
    let p = write_csv(dir.path(), "s.csv", "id,score,probability,y\na,9,0.25,1\nb,8,0.75,0.0\n");
    let s = read_scored(&p, None, &cols).unwrap();
    assert_eq!((s.score_column.as_str(), s.scores, s.labels), ("probability", vec![0.25, 0.75], Some(vec![1, 0])));
    let p = write_csv(dir.path(), "t.csv", "id,score,y\na,9,1\n");
    assert_eq!(read_scored(&p, None, &cols).unwrap().score_column, "score");
    let cases = [
        ("id,probability,y\na,0.5,1\nb,SECRETVALUE,0\n", "bad.csv:3: column 'probability': not a number"),
        ("id,probability,y\na,0.5,1\nb,0.4,7\n", "bad.csv:3: column 'y': the label must be 0 or 1"),
        ("id,probability,y\na,0.5,1\nb,0.4,yes\n", "bad.csv:3: column 'y': not a number"),
        ("id,probability,y\na,0.5,1\n\nb,inf,0\n", "bad.csv:4: column 'probability': not a finite number"),
        ("id,probability,y\na,0.5\n", "bad.csv:2: column 'y': missing value (row too short)"),
        ("id,probability,y\n", "bad.csv: no rows after the header"),
        ("", "bad.csv: empty file (no header line)"),
        ("id,p,y\na,0.5,1\n", "bad.csv:1: no 'probability' or 'score' column"),
        ("id,probability,label\na,0.5,1\n", "bad.csv:1: column 'y': no such label column"),
        ("id,probability,y,y\na,0.5,1,1\n", "bad.csv:1: column 'y': the label column is named twice"),
    ];
    for (text, want) in cases {
        let p = write_csv(dir.path(), "bad.csv", text);
        let e = read_scored(&p, None, &cols).unwrap_err().to_string();
        assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        assert!(!e.contains("SECRETVALUE") && !e.contains('7') && !e.contains("yes"), "{e}");
    }
    let same = Columns { score: Some("y"), label: Some("y"), points: None };
    let p = write_csv(dir.path(), "u.csv", "y\n1\n");
    assert!(read_scored(&p, None, &same).unwrap_err().to_string().contains("two roles"));
}

#[test]
fn build_reads_scores_labels_points_and_a_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let scored = write_csv(
        dir.path(),
        "scored.csv",
        "id,points,probability,y\na,600,0.9,1\nb,640,0.5,1\nc,620,0.5,0\nd,700,0.1,0\n",
    );
    let baseline = write_csv(dir.path(), "train.csv", "id,probability\na,0.9\nb,0.5\nc,0.5\nd,0.1\n");
    let inputs = Inputs {
        scored: scored.clone(),
        baseline: Some(baseline),
        label_column: "y".into(),
        points_column: Some("points".into()),
        ..Inputs::default()
    };
    let r = build(&inputs, None).unwrap();
    close(r.auc, 0.875);
    assert_eq!(r.bands.kind, "points");
    assert_eq!(r.psi.as_ref().unwrap().value, 0.0);
    // A file with one class: the error names the file.
    let one = write_csv(dir.path(), "one.csv", "id,probability,y\na,0.9,1\n");
    let e = build(&Inputs { scored: one, points_column: None, ..inputs.clone() }, None).unwrap_err().to_string();
    assert!(e.starts_with("one.csv: the labels have one class only"), "{e}");
}

#[test]
fn html_has_the_four_charts_no_url_no_script_and_escaped_names() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let labels: Vec<u8> = (0..2000).map(|_| rng.random_range(0..2u8)).collect();
    let scores: Vec<f64> = labels.iter().map(|&l| (rng.random::<f64>() + 0.6 * l as f64) / 1.6).collect();
    let name = "<script>alert(\"x\")</script>&'";
    let options =
        Options { score_column: name, label_column: "y&<b>", baseline: Some(&scores[..500]), ..Options::default() };
    let r = Report::compute(&scores, &labels, &options).unwrap();
    assert!(r.roc.len() <= MAX_CURVE_POINTS && r.ks_curve.len() <= MAX_CURVE_POINTS);
    let html = render_html(&r).unwrap();
    for id in ["roc-chart", "ks-chart", "distribution-chart", "gain-chart"] {
        let at = html.find(&format!("<figure id=\"{id}\">")).unwrap_or_else(|| panic!("no {id}"));
        assert!(html[at..].trim_start_matches(|c| c != '\n').trim_start().starts_with("<svg"), "{id} has no svg");
    }
    assert_eq!(html.matches("<svg").count(), 4);
    assert_eq!(html.matches("</svg>").count(), 4);
    let lower = html.to_ascii_lowercase();
    for banned in ["http://", "https://", "<script", "src=", "href=", "@import", "url("] {
        assert!(!lower.contains(banned), "the page contains {banned}");
    }
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"));
    assert!(html.contains("y&amp;&lt;b&gt;"));
    assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
    // The JSON form holds the figures.
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["auc"].as_f64(), Some(r.auc));
    assert_eq!(json["deciles"].as_array().unwrap().len(), 10);
    assert!(json["psi"]["value"].is_number());
}

#[test]
fn write_puts_both_files_in_place_or_neither() {
    let dir = tempfile::tempdir().unwrap();
    let r = report(&[0.9, 0.5, 0.5, 0.1], &[1, 1, 0, 0]);
    let (html, json) = (dir.path().join("r.html"), dir.path().join("r.json"));
    write(&r, &html, Some(&json)).unwrap();
    let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(back["auc"].as_f64(), Some(0.875));
    assert!(std::fs::read_to_string(&html).unwrap().contains("<figure id=\"roc-chart\">"));
    // The HTML cannot be written (no such directory): the JSON is not left behind.
    let json2 = dir.path().join("r2.json");
    assert!(write(&r, &dir.path().join("missing/r.html"), Some(&json2)).is_err());
    assert!(!json2.exists());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
