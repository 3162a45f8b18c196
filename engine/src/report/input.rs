//! Reading a scored file for the report: a CSV with a header holding a score column, and the
//! label (and a scorecard's points) as columns of the same file. Values are read strictly: a
//! score or points value must be a finite number, a label `0` or `1` (as numbers: `1.0` is 1);
//! an error names the file, line and column, never the value.

use std::path::Path;

use crate::csv_rows::RowScanner;
use crate::error::{Column, DataError, name_list};
use crate::sealed::StorageKey;

/// The columns to read; `score: None` picks `probability` if the header has it, else `score`.
#[derive(Debug, Clone, Default)]
pub struct Columns<'a> {
    pub score: Option<&'a str>,
    pub label: Option<&'a str>,
    pub points: Option<&'a str>,
}

/// The columns read, in file order.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The score column's name (the default resolved).
    pub score_column: String,
    pub scores: Vec<f64>,
    pub labels: Option<Vec<u8>>,
    pub points: Option<Vec<f64>>,
}

/// Reads the chosen columns of `path` (sealed files open with `key`, plain ones without).
pub fn read_scored(path: &Path, key: Option<&StorageKey>, columns: &Columns<'_>) -> Result<Scored, DataError> {
    let mut scanner = match key {
        Some(key) => RowScanner::open_data(path, Some(key))?,
        None => RowScanner::open(path)?,
    };
    let header = scanner.next_row()?.ok_or_else(|| DataError::file(path, "empty file (no header line)"))?;
    let line = header.line;
    let names: Vec<String> =
        (0..header.len()).map(|i| String::from_utf8_lossy(header.field(i)).trim().to_string()).collect();
    let header_err = |column: &str, message: String| DataError::Row {
        path: path.to_path_buf(),
        line,
        column: Column::name(column),
        message,
    };
    let find = |name: &str, what: &str| -> Result<usize, DataError> {
        let mut at = names.iter().enumerate().filter(|(_, n)| *n == name.trim()).map(|(i, _)| i);
        match (at.next(), at.next()) {
            (Some(i), None) => Ok(i),
            (Some(_), Some(_)) => Err(header_err(name, format!("the {what} column is named twice in the header"))),
            (None, _) => Err(header_err(name, format!("no such {what} column (columns: {})", name_list(&names)))),
        }
    };
    let score = match columns.score {
        Some(name) => find(name, "score")?,
        None => match ["probability", "score"].iter().find(|c| names.iter().any(|n| n == *c)) {
            Some(name) => find(name, "score")?,
            None => {
                let message = format!(
                    "no 'probability' or 'score' column; name the score column (columns: {})",
                    name_list(&names)
                );
                return Err(DataError::Row { path: path.to_path_buf(), line, column: None, message });
            }
        },
    };
    let label = columns.label.map(|l| find(l, "label")).transpose()?;
    let points = columns.points.map(|p| find(p, "points")).transpose()?;
    let chosen = [Some(score), label, points];
    for (i, a) in chosen.iter().enumerate() {
        if let Some(a) = a
            && chosen[i + 1..].contains(&Some(*a))
        {
            return Err(header_err(&names[*a], "the same column is chosen for two roles".into()));
        }
    }
    let score_column = names[score].clone();
    let mut scores = Vec::new();
    let mut labels = label.map(|_| Vec::new());
    let mut point_values = points.map(|_| Vec::new());
    while let Some(row) = scanner.next_row()? {
        let at = |c: usize, message: &str| DataError::Row {
            path: path.to_path_buf(),
            line: row.line,
            column: Column::name(&names[c]),
            message: message.into(),
        };
        scores.push(row.number(score).map_err(|m| at(score, m))?);
        if let (Some(c), Some(labels)) = (label, labels.as_mut()) {
            labels.push(match row.number(c).map_err(|m| at(c, m))? {
                0.0 => 0,
                1.0 => 1,
                _ => return Err(at(c, "the label must be 0 or 1")),
            });
        }
        if let (Some(c), Some(values)) = (points, point_values.as_mut()) {
            values.push(row.number(c).map_err(|m| at(c, m))?);
        }
    }
    if scores.is_empty() {
        return Err(DataError::file(path, "no rows after the header"));
    }
    Ok(Scored { score_column, scores, labels, points: point_values })
}
