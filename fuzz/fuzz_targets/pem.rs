//! A node's key material as the node reads it from its directory: the PEM certificate
//! (`read_cert`, also used for pinned peers' certificates), the PEM TLS key with it
//! (`read_tls_identity`) and the hex ed25519 identity key (`read_signing_key`), all from the
//! input's bytes.
#![no_main]

use consort_node::config::{IDENTITY_KEY_FILE, TLS_CERT_FILE, TLS_KEY_FILE};
use consort_node::identity::{read_cert, read_signing_key, read_tls_identity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = consort_fuzz::scratch().join("pem-node");
    std::fs::create_dir_all(&dir).expect("scratch");
    for file in [TLS_CERT_FILE, TLS_KEY_FILE, IDENTITY_KEY_FILE] {
        std::fs::write(dir.join(file), data).expect("scratch file");
    }
    let _ = read_cert(&dir.join(TLS_CERT_FILE));
    let _ = read_tls_identity(&dir);
    let _ = read_signing_key(&dir);
});
