//! Node identity: an ed25519 signing key (for audit evidence) and a TLS key with a self-signed
//! certificate, created by `consort init`. Peers pin the certificate; there is no CA.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::at_rest;
use crate::config::{self, NodeConfig};

/// Creates a node directory: config, ed25519 identity, TLS key and certificate.
pub fn init(dir: &Path, name: &str, listen: &str) -> Result<()> {
    config::check_name("node name", name)?;
    listen_addr_is_valid(listen)?;
    if dir.join(config::CONFIG_FILE).exists() {
        bail!("{} is already a node directory (it has {})", dir.display(), config::CONFIG_FILE);
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The directory holds keys and the control socket: owner only.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set permissions on {}", dir.display()))?;
    fs::create_dir_all(dir.join(config::PEERS_DIR))?;
    fs::create_dir_all(dir.join(config::OUTPUTS_DIR))?;

    // Node keys are sealed only under a storage key kept outside this directory (see `at_rest`).
    let (storage_key, storage, seal_node_keys) = at_rest::init_key(dir)?;
    let seal = seal_node_keys.then_some(&storage_key);
    let signing = ed25519_dalek::SigningKey::from_bytes(&random_seed()?);
    let seed = Zeroizing::new(hex(signing.as_bytes()));
    at_rest::write_secret(&dir.join(config::IDENTITY_KEY_FILE), seed.as_bytes(), seal)?;

    let (key_pem, cert_pem) = new_tls_identity(name)?;
    at_rest::write_secret(&dir.join(config::TLS_KEY_FILE), key_pem.as_bytes(), seal)?;
    config::write_atomic(&dir.join(config::TLS_CERT_FILE), cert_pem.as_bytes(), false)?;

    NodeConfig {
        name: name.to_string(),
        listen: listen.to_string(),
        peers: vec![],
        datasets: vec![],
        limits: Default::default(),
        storage,
        metrics: None,
    }
    .save(dir)
}

/// A fresh TLS key (ed25519, PEM, zeroized on drop) and its self-signed certificate (PEM).
fn new_tls_identity(name: &str) -> Result<(Zeroizing<String>, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).context("cannot generate the TLS key")?;
    let mut params =
        rcgen::CertificateParams::new(vec![tls_server_name(name)]).context("cannot build the certificate")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("consort node {name}"));
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let cert = params.self_signed(&key).context("cannot sign the certificate")?;
    Ok((Zeroizing::new(key.serialize_pem()), cert.pem()))
}

/// The next TLS identity during a key rotation (`consort init --rotate-key`).
pub const NEXT_KEY_FILE: &str = "node.next.key";
pub const NEXT_CERT_FILE: &str = "node.next.crt";
/// The certificate the node presented before its last rotation (kept for the operator's records).
pub const PREVIOUS_CERT_FILE: &str = "node.previous.crt";

/// What a step of a key rotation did.
pub enum Rotation {
    /// A next key and certificate were made: peers pin the certificate with `peer add --rotate`.
    Prepared { cert: std::path::PathBuf, fingerprint: String },
    /// The next key became the node's key (used from the node's next start).
    Activated { fingerprint: String, previous: String },
}

/// Rotates the node's TLS identity in two steps, so that no job fails: first a next key and
/// certificate (`DIR/node.next.*`) that the peers pin beside the current one (`consort peer add
/// --rotate`, which keeps accepting the current one for a window); then, with `activate`, the next
/// key replaces the current one (the old certificate is kept as `node.previous.crt`, the old key
/// is deleted). The running node presents the new certificate from its next start.
pub fn rotate_tls_key(dir: &Path, activate: bool) -> Result<Rotation> {
    let config = NodeConfig::load(dir)?;
    let (next_key, next_cert) = (dir.join(NEXT_KEY_FILE), dir.join(NEXT_CERT_FILE));
    if !activate {
        if next_cert.exists() {
            bail!(
                "a rotation is already prepared ({}): give it to the peers, then run `consort init {} --rotate-key --activate`",
                next_cert.display(),
                dir.display()
            );
        }
        let (key_pem, cert_pem) = new_tls_identity(&config.name)?;
        // Sealed like the current key (under a storage key kept outside the directory), or not.
        let current = dir.join(config::TLS_KEY_FILE);
        let storage_key = if consort_engine::sealed::is_sealed(&current).unwrap_or(false) {
            Some(at_rest::load_key(dir)?)
        } else {
            None
        };
        at_rest::write_secret(&next_key, key_pem.as_bytes(), storage_key.as_ref())?;
        config::write_atomic(&next_cert, cert_pem.as_bytes(), false)?;
        let fingerprint = fingerprint(&read_cert(&next_cert)?);
        return Ok(Rotation::Prepared { cert: next_cert, fingerprint });
    }
    if !next_cert.exists() && next_key.exists() {
        // An activation stopped between its two renames: the certificate is in place, the key
        // not yet.
        fs::rename(&next_key, dir.join(config::TLS_KEY_FILE)).context("cannot install the new key")?;
        consort_engine::storage::sync_dir(dir).context("cannot sync the node directory")?;
        let new = fingerprint(&read_cert(&dir.join(config::TLS_CERT_FILE))?);
        let previous = read_cert(&dir.join(PREVIOUS_CERT_FILE)).map(|c| fingerprint(&c)).unwrap_or_default();
        return Ok(Rotation::Activated { fingerprint: new, previous });
    }
    if !next_cert.exists() || !next_key.exists() {
        bail!("no rotation is prepared: run `consort init {} --rotate-key` first", dir.display());
    }
    let new = fingerprint(&read_cert(&next_cert)?);
    let old = fingerprint(&read_cert(&dir.join(config::TLS_CERT_FILE))?);
    // Each step is a rename (atomic); a crash between them leaves either the old identity or the
    // new one in place, and the next key file tells which step remains.
    fs::copy(dir.join(config::TLS_CERT_FILE), dir.join(PREVIOUS_CERT_FILE))
        .context("cannot keep the previous certificate")?;
    fs::rename(&next_cert, dir.join(config::TLS_CERT_FILE)).context("cannot install the new certificate")?;
    fs::rename(&next_key, dir.join(config::TLS_KEY_FILE)).context("cannot install the new key")?;
    consort_engine::storage::sync_dir(dir).context("cannot sync the node directory")?;
    Ok(Rotation::Activated { fingerprint: new, previous: old })
}

/// The DNS name in a node's certificate. Pinning compares whole certificates, so this only has to
/// be a valid name both sides agree on.
pub fn tls_server_name(node: &str) -> String {
    format!("{}.consort.invalid", node.to_ascii_lowercase().replace('_', "-"))
}

fn listen_addr_is_valid(listen: &str) -> Result<()> {
    match listen.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => bail!("invalid listen address '{listen}': expected HOST:PORT, e.g. 127.0.0.1:7001"),
    }
}

fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("the OS random number generator failed: {e}"))?;
    Ok(seed)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:` + hex of the SHA-256 of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex(&Sha256::digest(cert.as_ref())))
}

/// Reads the first certificate of a PEM file.
pub fn read_cert(path: &Path) -> Result<CertificateDer<'static>> {
    let pem = fs::read(path).with_context(|| format!("cannot read certificate {}", path.display()))?;
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .with_context(|| format!("{}: no PEM certificate found", path.display()))?
        .with_context(|| format!("{}: invalid PEM certificate", path.display()))
}

/// The node's TLS certificate and key.
pub fn read_tls_identity(dir: &Path) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let cert = read_cert(&dir.join(config::TLS_CERT_FILE))?;
    let key_path = dir.join(config::TLS_KEY_FILE);
    let pem = at_rest::read_secret(dir, &key_path)?;
    let key =
        PrivateKeyDer::from_pem_slice(&pem).with_context(|| format!("cannot read TLS key {}", key_path.display()))?;
    Ok((cert, key))
}

/// The node's ed25519 signing key.
pub fn read_signing_key(dir: &Path) -> Result<ed25519_dalek::SigningKey> {
    let path = dir.join(config::IDENTITY_KEY_FILE);
    let bytes = at_rest::read_secret(dir, &path)?;
    let text = std::str::from_utf8(&bytes).with_context(|| format!("{}: expected 64 hex digits", path.display()))?;
    let mut seed = Zeroizing::new([0u8; 32]);
    let t = text.trim();
    // ASCII first: the digits are sliced by byte, and a multi-byte character must not split.
    if t.len() != 64 || !t.is_ascii() {
        bail!("{}: expected 64 hex digits", path.display());
    }
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&t[2 * i..2 * i + 2], 16).with_context(|| format!("{}: invalid hex", path.display()))?;
    }
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found while writing the key-parsing fuzz target (fuzz/fuzz_targets/pem.rs): 64 bytes that are not 64
    /// ASCII characters panicked on a slice inside a character instead of being refused.
    #[test]
    fn an_identity_key_with_a_multibyte_character_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(config::IDENTITY_KEY_FILE);
        for text in [format!("a\u{e9}{}", "0".repeat(61)), format!("{}\u{20ac}0", "0".repeat(60))] {
            assert_eq!(text.len(), 64);
            fs::write(&path, &text).unwrap();
            let err = read_signing_key(dir.path()).unwrap_err().to_string();
            assert!(err.contains("expected 64 hex digits"), "{err}");
        }
        fs::write(&path, "0f".repeat(32)).unwrap();
        assert_eq!(read_signing_key(dir.path()).unwrap().to_bytes(), [0x0f; 32]);
    }
}
