//! Node identity: an ed25519 signing key (for audit evidence) and a TLS key with a self-signed
//! certificate, created by `consort init`. Peers pin the certificate; there is no CA.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

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

    let signing = ed25519_dalek::SigningKey::from_bytes(&random_seed()?);
    let seed = Zeroizing::new(hex(signing.as_bytes()));
    config::write_atomic(&dir.join(config::IDENTITY_KEY_FILE), seed.as_bytes(), true)?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).context("cannot generate the TLS key")?;
    let mut params =
        rcgen::CertificateParams::new(vec![tls_server_name(name)]).context("cannot build the certificate")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("consort node {name}"));
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let cert = params.self_signed(&key).context("cannot sign the certificate")?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    config::write_atomic(&dir.join(config::TLS_KEY_FILE), key_pem.as_bytes(), true)?;
    config::write_atomic(&dir.join(config::TLS_CERT_FILE), cert.pem().as_bytes(), false)?;

    NodeConfig {
        name: name.to_string(),
        listen: listen.to_string(),
        peers: vec![],
        datasets: vec![],
        limits: Default::default(),
    }
    .save(dir)
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
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read TLS key {}", key_path.display()))?;
    Ok((cert, key))
}

/// The node's ed25519 signing key.
pub fn read_signing_key(dir: &Path) -> Result<ed25519_dalek::SigningKey> {
    let path = dir.join(config::IDENTITY_KEY_FILE);
    let text = Zeroizing::new(fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?);
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
