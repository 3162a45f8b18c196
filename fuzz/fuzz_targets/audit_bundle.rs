//! Audit bundle JSON (`consort audit export`'s file) and its verification (`consort audit
//! verify`): one bundle, or two (split at the first NUL byte) for the cross-checks between the
//! two nodes' evidence of a job.
#![no_main]

use consort_engine::audit::{Bundle, VerifyOptions, verify_bundles};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.splitn(2, |&b| b == 0).collect();
    let dir = consort_fuzz::scratch();
    let mut bundles = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let Ok(bundle) = serde_json::from_slice::<Bundle>(part) else { return };
        bundles.push((dir.join(format!("bundle-{i}.json")), bundle));
    }
    let _ = verify_bundles(&bundles, &VerifyOptions::default());
    let trusted = VerifyOptions { trusted_keys: vec![consort_fuzz::audit_key().verifying_key()], full: true };
    let _ = verify_bundles(&bundles, &trusted);
});
