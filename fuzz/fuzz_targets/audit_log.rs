//! Opening an audit log: `log.jsonl` and `heads.jsonl` from the input (split at the first NUL
//! byte) in a node directory, opened as a node opens its log (torn-tail repair, verification of
//! every entry, head, signature and root) with the node's key, and read and verified as
//! `consort audit verify` does.
#![no_main]

use consort_engine::audit::log::{HEADS_FILE, LOG_FILE, read_log};
use consort_engine::audit::{AUDIT_DIR, AuditLog, verify_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (log, heads) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let node = consort_fuzz::scratch().join("audit-node");
    let dir = node.join(AUDIT_DIR);
    std::fs::create_dir_all(&dir).expect("scratch");
    std::fs::write(dir.join(LOG_FILE), log).expect("scratch file");
    std::fs::write(dir.join(HEADS_FILE), heads).expect("scratch file");
    let key = consort_fuzz::audit_key();
    if let Ok((lines, heads)) = read_log(&dir) {
        let _ = verify_log(&dir, &lines, &heads, &key.verifying_key());
    }
    let _ = AuditLog::open(&node, key);
});
