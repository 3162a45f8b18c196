//! The feature CSV: reading the chosen columns of the aligned rows (errors name file, line and
//! column), standardization, and the holdout split both parties derive from the same seed.
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use consort_protocols::cpu;
use rayon::prelude::*;

use crate::csv_rows::{RowParser, RowScanner};
use crate::dataset::Dataset;
use crate::error::{Column, DataError, name_list};

/// Feature values (row-major) and labels of selected rows.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTable {
    pub names: Vec<String>,
    pub values: Vec<f64>,
    pub labels: Option<Vec<u8>>,
}

/// Which columns to read: the label (A only) and the features (`None`: every column that is
/// not a key or the label).
#[derive(Debug, Clone, Default)]
pub struct ColumnChoice {
    pub label: Option<String>,
    pub features: Option<Vec<String>>,
}

/// Reads the features (and label) of the dataset's kept rows `rows`, in that order, on rayon.
/// Every feature value must be a finite number (an empty cell is an error).
pub async fn load_features(dataset: &Dataset, rows: &[u32], choice: &ColumnChoice) -> Result<FeatureTable, DataError> {
    load_features_as(dataset, rows, choice, Missing::Refuse).await
}

/// What an empty feature cell (nothing but blanks) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// An error naming file, line and column (LR and SecureBoost training and scoring).
    Refuse,
    /// A missing value, read as NaN (binning: missing values get their own bin). Labels must
    /// still be 0 or 1, and a non-empty cell must still be a finite number.
    Keep,
}

/// [`load_features`] with the choice of what an empty feature cell means.
pub async fn load_features_as(
    dataset: &Dataset,
    rows: &[u32],
    choice: &ColumnChoice,
    missing: Missing,
) -> Result<FeatureTable, DataError> {
    let path = dataset.spec.file.clone();
    let columns = dataset.columns.clone();
    let keys: Vec<String> = dataset.spec.keys.iter().map(|k| k.trim().to_string()).collect();
    // Fails if the file changed since the dataset was loaded (row offsets would be stale).
    let file = if dataset.is_empty() { None } else { Some(dataset.open_csv_rows()?) };
    let spans: Vec<(u64, u32)> = rows.iter().map(|&r| dataset.row_span(r as usize)).collect();
    let choice = choice.clone();
    cpu::run(move || {
        let (label, features) = choose_columns(&path, &columns, &keys, &choice)?;
        let names = || features.iter().map(|&c| columns[c].clone()).collect();
        if let Some((values, labels)) = file.and_then(|f| read_spans(&f, &spans, label, &features, missing)) {
            return Ok(FeatureTable { names: names(), values, labels });
        }
        let starts: Vec<u64> = spans.iter().map(|s| s.0).collect();
        read_features(&path, &columns, &starts, (label, &features), missing)
    })
    .await
}

/// Rows per task of [`read_spans`].
const READ_ROWS: usize = 1024;

/// The fast path of [`load_features_as`]: each row read by its span (offset, length) and parsed
/// on its own, in tasks of [`READ_ROWS`] rows on rayon, straight into its place in the table.
/// `None` at the first cell that is not what it should be (and for anything unusual: no feature
/// columns, a row asked for twice): [`read_features`] then reads the file in order and gives
/// the same table or the error that names file, line and column, as if this had not run.
#[allow(clippy::type_complexity)]
fn read_spans(
    file: &File,
    spans: &[(u64, u32)],
    label: Option<usize>,
    features: &[usize],
    missing: Missing,
) -> Option<(Vec<f64>, Option<Vec<u8>>)> {
    let d = features.len();
    let mut starts: Vec<u64> = spans.iter().map(|s| s.0).collect();
    starts.sort_unstable();
    if d == 0 || starts.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut values = vec![0.0; spans.len() * d];
    let mut labels = vec![0u8; spans.len()];
    let ok = values
        .par_chunks_mut(READ_ROWS * d)
        .zip(labels.par_chunks_mut(READ_ROWS))
        .zip(spans.par_chunks(READ_ROWS))
        .all(|((out, lab), spans)| {
            let (mut parser, mut buf) = (RowParser::new(), Vec::new());
            spans.iter().enumerate().all(|(t, &(start, len))| {
                buf.resize(len as usize, 0);
                if file.read_exact_at(&mut buf, start).is_err() {
                    return false;
                }
                let Some(row) = parser.parse(&buf, 0, start) else { return false };
                let cells = features.iter().zip(&mut out[t * d..(t + 1) * d]).all(|(&c, v)| {
                    *v = match row.number(c) {
                        Ok(x) => x,
                        Err(_) if missing == Missing::Keep && row.is_blank(c) => f64::NAN,
                        Err(_) => return false,
                    };
                    true
                });
                let labelled = match label.map(|c| row.number(c)) {
                    None | Some(Ok(0.0)) => true,
                    Some(Ok(1.0)) => {
                        lab[t] = 1;
                        true
                    }
                    _ => false,
                };
                cells && labelled
            })
        });
    ok.then(|| (values, label.map(|_| labels)))
}

/// Reads the rows starting at byte offsets `starts` (in that order) of the CSV at `path`, in
/// file order: the slow path, whose errors name the first bad cell in the file.
fn read_features(
    path: &Path,
    columns: &[String],
    starts: &[u64],
    (label, features): (Option<usize>, &[usize]),
    missing: Missing,
) -> Result<FeatureTable, DataError> {
    let d = features.len();
    let slot: HashMap<u64, usize> = starts.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let mut values = vec![0.0; starts.len() * d];
    let mut labels = label.map(|_| vec![0u8; starts.len()]);
    let mut seen = 0;
    let mut scanner = RowScanner::open(path)?;
    scanner.next_row()?; // header
    while let Some(row) = scanner.next_row()? {
        let Some(&i) = slot.get(&row.start) else { continue };
        seen += 1;
        let number = |c: usize| {
            row.number(c).map_err(|message| DataError::Row {
                path: path.to_path_buf(),
                line: row.line,
                column: Column::name(&columns[c]),
                message: message.into(),
            })
        };
        for (j, &c) in features.iter().enumerate() {
            values[i * d + j] = match number(c) {
                Err(_) if missing == Missing::Keep && row.is_blank(c) => f64::NAN,
                v => v?,
            };
        }
        if let (Some(c), Some(labels)) = (label, labels.as_mut()) {
            labels[i] = match number(c)? {
                0.0 => 0,
                1.0 => 1,
                _ => {
                    return Err(DataError::Row {
                        path: path.to_path_buf(),
                        line: row.line,
                        column: Column::name(&columns[c]),
                        message: "the label must be 0 or 1".into(),
                    });
                }
            }
        }
    }
    if seen != starts.len() {
        return Err(DataError::file(path, "the file changed after it was loaded; load the dataset again"));
    }
    Ok(FeatureTable { names: features.iter().map(|&c| columns[c].clone()).collect(), values, labels })
}

/// The indices of the label column (if chosen) and of the feature columns; errors point at the
/// header line.
fn choose_columns(
    path: &Path,
    columns: &[String],
    keys: &[String],
    choice: &ColumnChoice,
) -> Result<(Option<usize>, Vec<usize>), DataError> {
    let header_err = |column: &str, message: String| DataError::Row {
        path: path.to_path_buf(),
        line: 1,
        column: Column::name(column),
        message,
    };
    let find = |name: &str| columns.iter().position(|c| c == name.trim());
    let label = match &choice.label {
        Some(l) => Some(
            find(l).ok_or_else(|| header_err(l, format!("no such label column (columns: {})", name_list(columns))))?,
        ),
        None => None,
    };
    let features: Vec<usize> = match &choice.features {
        Some(names) => names
            .iter()
            .map(|n| {
                let i = find(n).ok_or_else(|| header_err(n, "no such feature column".into()))?;
                if keys.contains(&columns[i]) || Some(i) == label {
                    return Err(header_err(n, "a key or label column cannot be a feature".into()));
                }
                Ok(i)
            })
            .collect::<Result<_, _>>()?,
        None => (0..columns.len()).filter(|&i| !keys.contains(&columns[i]) && Some(i) != label).collect(),
    };
    Ok((label, features))
}

/// Deterministic split of `n` aligned rows: (training rows in batch order, holdout rows).
pub fn split(n: usize, holdout: f64, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..n as u32).collect();
    // Fisher–Yates with SplitMix64: both parties must get the same order from the same seed.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let h = ((n as f64) * holdout).round() as usize;
    let h = h.min(n.saturating_sub(1));
    let holdout_rows = order[..h].to_vec();
    (order[h..].to_vec(), holdout_rows)
}

/// Mean and population standard deviation of each column over `rows` (std 1 for constant
/// columns).
pub fn standardization(values: &[f64], d: usize, rows: &[u32]) -> Vec<(f64, f64)> {
    (0..d)
        .map(|j| {
            let n = rows.len().max(1) as f64;
            let mean = rows.iter().map(|&i| values[i as usize * d + j]).sum::<f64>() / n;
            let var = rows.iter().map(|&i| (values[i as usize * d + j] - mean).powi(2)).sum::<f64>() / n;
            let std = var.sqrt();
            (mean, if std > 1e-12 { std } else { 1.0 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::DatasetSpec;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_inputs_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("x.csv"), "id,y,f1,f2\nk1,0,1.5,2\nk2,1,abc,3\nk3,2,1,1\n").unwrap();
        let ds = Dataset::load(&DatasetSpec::new("x", p.join("x.csv"), &["id"])).unwrap();
        let with = |label: Option<&str>, features: Option<Vec<&str>>| ColumnChoice {
            label: label.map(String::from),
            features: features.map(|f| f.into_iter().map(String::from).collect()),
        };
        let err = load_features(&ds, &[0, 1], &with(Some("y"), None)).await.unwrap_err().to_string();
        // Values are data: errors name the place and the kind of problem, never the value.
        assert_eq!(err, "x.csv:3: column 'f1': not a number");
        let err = load_features(&ds, &[0], &with(Some("label"), None)).await.unwrap_err().to_string();
        assert!(err.contains("x.csv:1: column 'label': no such label column"), "{err}");
        let err = load_features(&ds, &[2], &with(Some("y"), None)).await.unwrap_err().to_string();
        assert_eq!(err, "x.csv:4: column 'y': the label must be 0 or 1");
        let err = load_features(&ds, &[0], &with(None, Some(vec!["id"]))).await.unwrap_err().to_string();
        assert!(err.contains("cannot be a feature"), "{err}");
        let ok = load_features(&ds, &[2, 0], &with(None, Some(vec!["f2"]))).await.unwrap();
        assert_eq!((ok.values, ok.labels), (vec![1.0, 2.0], None));
        let ok = load_features(&ds, &[1, 0], &with(Some("y"), Some(vec!["f2"]))).await.unwrap();
        assert_eq!((ok.values, ok.labels), (vec![3.0, 2.0], Some(vec![1, 0])));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feature_errors_never_show_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b_bad.csv");
        std::fs::write(&file, "id,b1,b2\nk1,1,2\nk2,SECRET-VALUE-42,3\nk3,inf,1\nk4, ,1\nk5,1,\n").unwrap();
        let ds = Dataset::load(&DatasetSpec::new("b", &file, &["id"])).unwrap();
        let all = ColumnChoice::default();
        let err = |rows: &'static [u32]| {
            let ds = &ds;
            let all = &all;
            async move { load_features(ds, rows, all).await.unwrap_err().to_string() }
        };
        assert_eq!(err(&[0, 1]).await, "b_bad.csv:3: column 'b1': not a number");
        assert_eq!(err(&[2]).await, "b_bad.csv:4: column 'b1': not a finite number");
        assert_eq!(err(&[3]).await, "b_bad.csv:5: column 'b1': empty value");
        assert_eq!(err(&[4]).await, "b_bad.csv:6: column 'b2': empty value");
    }

    /// The rows read by their spans on rayon are the rows the in-order scan reads: several tasks'
    /// worth of rows asked for out of file order, quoted cells, CRLF and LF terminators, blank
    /// lines, a last row without a terminator, missing values; and the fast path does run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_read_by_span_are_the_rows_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.csv");
        let n = 3 * READ_ROWS + 17;
        let mut text = String::from("id,y,\"f,1\",f2\n");
        for i in 0..n {
            let f1 = if i % 7 == 3 { String::new() } else { format!("{}", i as f64 - 900.0 + 0.25) };
            let end = if i % 3 == 0 { "\r\n" } else { "\n" };
            let blank = if i % 11 == 5 { "\n" } else { "" };
            let f2 = if i % 5 == 1 { format!("\"{}e-3\"", i) } else { format!("{}", i * i) };
            text += &format!("k{i},{},{f1},{f2}{}{blank}", i % 2, if i + 1 == n { "" } else { end });
        }
        std::fs::write(&file, text).unwrap();
        let ds = Dataset::load(&DatasetSpec::new("big", &file, &["id"])).unwrap();
        let rows: Vec<u32> = (0..n as u64).map(|i| (i * 2_654_435_761 % n as u64) as u32).collect();
        let choice = ColumnChoice { label: Some("y".into()), features: Some(vec!["f2".into(), "f,1".into()]) };
        let t = load_features_as(&ds, &rows, &choice, Missing::Keep).await.unwrap();
        for (slot, &r) in rows.iter().enumerate() {
            let i = r as usize;
            let f2 = if i % 5 == 1 { format!("{i}e-3").parse().unwrap() } else { (i * i) as f64 };
            assert_eq!(t.values[slot * 2], f2, "row {i}");
            assert_eq!(t.values[slot * 2 + 1].is_nan(), i % 7 == 3, "row {i}");
            if i % 7 != 3 {
                assert_eq!(t.values[slot * 2 + 1], i as f64 - 900.0 + 0.25);
            }
            assert_eq!(t.labels.as_ref().unwrap()[slot], (i % 2) as u8);
        }
        assert_eq!(t.names, ["f2", "f,1"]);
        // The fast path gives this table (it did not fall back), and the in-order scan the same.
        let spans: Vec<(u64, u32)> = rows.iter().map(|&r| ds.row_span(r as usize)).collect();
        let fast = read_spans(&ds.open_unchanged().unwrap(), &spans, Some(1), &[3, 2], Missing::Keep).unwrap();
        let starts: Vec<u64> = spans.iter().map(|s| s.0).collect();
        let slow = read_features(&file, &ds.columns, &starts, (Some(1), &[3, 2]), Missing::Keep).unwrap();
        assert_eq!(fast.1, slow.labels);
        assert!(fast.0.iter().zip(&slow.values).all(|(a, b)| a.to_bits() == b.to_bits()));
        // Refusing missing values, a row with one is left to the scan, which names it.
        assert!(read_spans(&ds.open_unchanged().unwrap(), &spans, Some(1), &[3, 2], Missing::Refuse).is_none());
        let err = load_features(&ds, &rows, &choice).await.unwrap_err().to_string();
        assert_eq!(err, "big.csv:5: column 'f,1': empty value");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_values_are_kept_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.csv");
        std::fs::write(&file, "id,y,f1,f2\nk1,1,,2\nk2,0, ,3\nk3,1,4,\nk4,,1,1\nk5,1,x,1\n").unwrap();
        let ds = Dataset::load(&DatasetSpec::new("m", &file, &["id"])).unwrap();
        let choice = ColumnChoice { label: Some("y".into()), features: None };
        let t = load_features_as(&ds, &[0, 1, 2], &choice, Missing::Keep).await.unwrap();
        assert!(t.values[0].is_nan() && t.values[2].is_nan() && t.values[5].is_nan());
        assert_eq!((t.values[1], t.values[3], t.values[4]), (2.0, 3.0, 4.0));
        assert_eq!(t.labels, Some(vec![1, 0, 1]));
        // Without the opt-in, the same cell is an error; a missing label is one either way, and
        // so is a non-numeric value.
        let err = load_features(&ds, &[0], &choice).await.unwrap_err().to_string();
        assert_eq!(err, "m.csv:2: column 'f1': empty value");
        let err = load_features_as(&ds, &[3], &choice, Missing::Keep).await.unwrap_err().to_string();
        assert_eq!(err, "m.csv:5: column 'y': empty value");
        let err = load_features_as(&ds, &[4], &choice, Missing::Keep).await.unwrap_err().to_string();
        assert_eq!(err, "m.csv:6: column 'f1': not a number");
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let (t1, h1) = split(1000, 0.2, 7);
        let (t2, h2) = split(1000, 0.2, 7);
        assert_eq!((t1.clone(), h1.clone()), (t2, h2));
        assert_eq!((t1.len(), h1.len()), (800, 200));
        let mut all: Vec<u32> = t1.iter().chain(&h1).copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_ne!(split(1000, 0.2, 8).1, h1);
        assert_eq!(split(5, 0.0, 1).1.len(), 0);
    }
}
