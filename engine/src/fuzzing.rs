//! Narrow entry points for the fuzz targets (`fuzz/`) into decoders that are private to the
//! engine. They call the decoders unchanged; nothing else should use them.

use std::path::Path;

use crate::DataError;
use crate::csv_rows::RowScanner;

/// Reads every row of the CSV file at `path` with the row scanner datasets are loaded with, and
/// touches every field; returns the number of rows (header included).
pub fn scan_rows(path: &Path) -> Result<u64, DataError> {
    let mut scanner = RowScanner::open(path)?;
    let mut rows = 0;
    while let Some(row) = scanner.next_row()? {
        for i in 0..row.len() {
            std::hint::black_box(row.field(i));
        }
        std::hint::black_box((row.line, row.start, row.raw));
        rows += 1;
    }
    Ok(rows)
}
