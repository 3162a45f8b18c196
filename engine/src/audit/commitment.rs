//! Salted commitments to data files: they bind a log entry to a file without revealing anything
//! about it (not even to a dictionary attack on low-entropy ids, thanks to the secret salt).
//!
//! `commitment = SHA-256(COMMITMENT_DOMAIN || salt || SHA-256(file))`, with a fresh 32-byte salt
//! from the OS CSPRNG per commitment. The node keeps the salts in `DIR/audit/salts.jsonl`
//! (mode 0600), outside the evidence; to open a commitment it hands an auditor the file and the
//! salt, and the auditor checks [`open`].

use std::io::Read;
use std::path::Path;

use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};

use crate::sealed::StorageKey;

use super::{AuditError, hex, write_atomic};

pub const COMMITMENT_DOMAIN: &[u8] = b"consort/audit/v1/commitment";
pub const SALTS_FILE: &str = "salts.jsonl";

/// A commitment and the salt that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    pub value: [u8; 32],
    pub salt: [u8; 32],
}

/// SHA-256 of a file's bytes, streamed.
fn file_digest(path: &Path) -> Result<[u8; 32], AuditError> {
    let file = std::fs::File::open(path).map_err(|e| AuditError::io(path, e))?;
    digest(path, file)
}

/// SHA-256 of what `reader` gives (`path` names it in errors).
fn digest(path: &Path, mut reader: impl Read) -> Result<[u8; 32], AuditError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| AuditError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

fn outer(salt: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    Sha256::new().chain_update(COMMITMENT_DOMAIN).chain_update(salt).chain_update(digest).finalize().into()
}

/// Commits to the file at `path` with a fresh random salt.
pub fn commit_file(path: &Path) -> Result<Commitment, AuditError> {
    let mut salt = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| AuditError::failed("salt", format!("the OS random number generator failed: {e}")))?;
    Ok(Commitment { value: outer(&salt, &file_digest(path)?), salt })
}

/// Commits to the plaintext of a data file the node wrote, sealed or plain
/// ([`crate::storage::open_data`]): the commitment opens with the exported plaintext file, so an
/// auditor never needs the node's storage key.
pub fn commit_data(path: &Path, key: Option<&StorageKey>) -> Result<Commitment, AuditError> {
    let reader = crate::storage::open_data(path, key).map_err(|e| AuditError::io(path, e))?;
    let value = digest(path, reader)?;
    let mut salt = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| AuditError::failed("salt", format!("the OS random number generator failed: {e}")))?;
    Ok(Commitment { value: outer(&salt, &value), salt })
}

/// Whether `file` and `salt` open `commitment`.
pub fn open(path: &Path, salt: &[u8; 32], commitment: &[u8; 32]) -> Result<bool, AuditError> {
    Ok(&outer(salt, &file_digest(path)?) == commitment)
}

/// Records a salt in the node's private salts file (atomically; mode 0600).
pub fn keep_salt(audit_dir: &Path, job: &str, what: &str, commitment: &Commitment) -> Result<(), AuditError> {
    let path = audit_dir.join(SALTS_FILE);
    let mut text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(AuditError::io(path, e)),
    };
    let line = serde_json::json!({"job": job, "what": what, "commitment": hex(&commitment.value), "salt": hex(&commitment.salt)});
    text.push_str(&line.to_string());
    text.push('\n');
    write_atomic(&path, text.as_bytes(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commitments_open_only_with_the_file_and_salt_and_hide_equal_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ids.csv");
        std::fs::write(&file, "id\n12345678901\n").unwrap();
        let c1 = commit_file(&file).unwrap();
        let c2 = commit_file(&file).unwrap();
        // Fresh salts: the same file gives unrelated commitments, and none is a plain hash.
        assert_ne!(c1.value, c2.value);
        assert_ne!(c1.value, file_digest(&file).unwrap());
        assert!(open(&file, &c1.salt, &c1.value).unwrap());
        assert!(!open(&file, &c2.salt, &c1.value).unwrap());
        std::fs::write(&file, "id\n12345678902\n").unwrap();
        assert!(!open(&file, &c1.salt, &c1.value).unwrap());
        keep_salt(dir.path(), "j1", "output", &c1).unwrap();
        keep_salt(dir.path(), "j1", "dataset", &c2).unwrap();
        let text = std::fs::read_to_string(dir.path().join(SALTS_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SALTS_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_sealed_output_commitment_opens_with_its_plaintext() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let key = std::sync::Arc::new(StorageKey::from_bytes([9; 32]));
        let (sealed, plain) = (dir.path().join("out.csv"), dir.path().join("plain.csv"));
        let at_rest = crate::storage::AtRest::Sealed(key.clone());
        let mut w = crate::storage::DataWriter::create(&sealed, &at_rest).unwrap();
        w.write_all(b"id\n12345678901\n").unwrap();
        w.finish().unwrap();
        std::fs::write(&plain, "id\n12345678901\n").unwrap();
        let c = commit_data(&sealed, Some(&key)).unwrap();
        assert!(open(&plain, &c.salt, &c.value).unwrap());
        assert!(!open(&sealed, &c.salt, &c.value).unwrap());
        assert!(commit_data(&sealed, None).is_err());
    }
}
