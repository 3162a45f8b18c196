//! The CSV row scanner (quoting, CRLF, blank lines, the row-length bound) on a file of the input's
//! bytes, then the whole dataset load over it (header checks, key normalization and strictness).
#![no_main]

use consort_engine::{Dataset, DatasetSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = consort_fuzz::scratch().join("rows.csv");
    std::fs::write(&path, data).expect("scratch file");
    let _ = consort_engine::fuzzing::scan_rows(&path);
    let _ = Dataset::load(&DatasetSpec::new("d", &path, &["id"]));
});
