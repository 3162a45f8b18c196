//! Encryption at rest: where a node's storage key lives and what is sealed under it
//! ([`consort_engine::sealed`] is the format). What the key protects against, and what it does
//! not, is in `docs/security.md`.
//!
//! The key file is found, in order: `$CONSORT_STORAGE_KEY_FILE`, `[storage] key_file` in
//! config.toml, `DIR/storage.key`. `consort init` creates it (at the first of those places that is
//! set; a key file that already exists there, e.g. a mounted secret, is used as it is). A node
//! directory made before encryption at rest gets `DIR/storage.key` at its next start. A key file
//! named outside the node directory is never created by a start: a missing secret mount stops the
//! node instead of sealing new files under a key nobody keeps.
//!
//! Node keys (`identity.key`, `node.key`) are sealed too when `consort init` finds the storage key
//! outside the node directory; next to the key in the same directory, sealing them would protect
//! nothing. Readers take sealed and plain files alike (sniffed by the magic).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use consort_engine::sealed::{self, StorageKey};
use consort_engine::storage::AtRest;
use zeroize::Zeroizing;

use crate::config::{self, NodeConfig};

pub const STORAGE_KEY_FILE: &str = "storage.key";
/// Names the storage key file, overriding `[storage] key_file`.
pub const STORAGE_KEY_ENV: &str = "CONSORT_STORAGE_KEY_FILE";

/// Where a node's storage key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlace {
    /// `DIR/storage.key`: created when missing; protects copies of outputs, not of the directory.
    NodeDir(PathBuf),
    /// A file the operator named (environment or config), e.g. a mounted secret, usually outside
    /// the node directory: never created by a node start.
    Named(PathBuf),
}

impl KeyPlace {
    pub fn path(&self) -> &Path {
        match self {
            KeyPlace::NodeDir(p) | KeyPlace::Named(p) => p,
        }
    }

    /// Where the key of the node in `dir` is, by the environment and its config.
    pub fn of(dir: &Path, storage: &config::Storage) -> Result<KeyPlace> {
        // The environment's path is relative to the working directory, the config's to the node
        // directory (the config travels with the directory, the environment with the process).
        if let Some(p) = std::env::var_os(STORAGE_KEY_ENV) {
            return Ok(KeyPlace::Named(config::absolute(Path::new(&p))?));
        }
        match &storage.key_file {
            Some(p) => Ok(KeyPlace::Named(config::absolute(&dir.join(p))?)),
            None => Ok(KeyPlace::NodeDir(dir.join(STORAGE_KEY_FILE))),
        }
    }
}

/// A running node's storage: its key (always loaded, so files sealed earlier stay readable) and
/// whether it seals what it writes.
#[derive(Debug, Clone)]
pub struct NodeStorage {
    pub key: Arc<StorageKey>,
    pub encrypt_outputs: bool,
}

impl NodeStorage {
    /// What job outputs are written as.
    pub fn at_rest(&self) -> AtRest {
        if self.encrypt_outputs { AtRest::Sealed(self.key.clone()) } else { AtRest::Plain }
    }

    /// Opens the storage of the node in `dir` at its start: loads the key, creating
    /// `DIR/storage.key` for a node directory made before encryption at rest.
    pub fn open(dir: &Path, config: &NodeConfig) -> Result<NodeStorage> {
        let place = KeyPlace::of(dir, &config.storage)?;
        let key = match &place {
            KeyPlace::NodeDir(path) if !path.exists() => {
                let key = StorageKey::generate()?;
                key.create_file(path).with_context(|| format!("cannot create the storage key {}", path.display()))?;
                tracing::info!(key = %path.display(), "created the storage key (this node directory predates encryption at rest)");
                key
            }
            _ => load_key_at(&place)?,
        };
        Ok(NodeStorage { key: Arc::new(key), encrypt_outputs: config.storage.encrypt_outputs })
    }
}

fn load_key_at(place: &KeyPlace) -> Result<StorageKey> {
    let path = place.path();
    StorageKey::load(path).with_context(|| match place {
        KeyPlace::NodeDir(_) => format!("cannot read the storage key {}", path.display()),
        KeyPlace::Named(_) => format!(
            "cannot read the storage key {} (named by ${STORAGE_KEY_ENV} or [storage] key_file; is the secret mounted?)",
            path.display()
        ),
    })
}

/// The storage key of the node in `dir` (for commands that read its files: `consort export`, the
/// demo, tests). Creates nothing.
pub fn load_key(dir: &Path) -> Result<StorageKey> {
    let config = NodeConfig::load(dir)?;
    load_key_at(&KeyPlace::of(dir, &config.storage)?)
}

/// `consort init`: creates (or adopts, if the operator put one there) the storage key, and says
/// whether node keys are to be sealed under it (only when it is kept outside `dir`). Returns the
/// config's `[storage]` section.
pub fn init_key(dir: &Path) -> Result<(StorageKey, config::Storage, bool)> {
    let place = KeyPlace::of(dir, &config::Storage::default())?;
    let path = place.path();
    let key = if path.exists() {
        load_key_at(&place)?
    } else {
        let key = StorageKey::generate()?;
        key.create_file(path).with_context(|| format!("cannot create the storage key {}", path.display()))?;
        key
    };
    let outside = match &place {
        KeyPlace::Named(p) => !p.starts_with(config::absolute(dir)?),
        KeyPlace::NodeDir(_) => false,
    };
    let key_file = match place {
        KeyPlace::Named(p) => Some(p),
        KeyPlace::NodeDir(_) => None,
    };
    Ok((key, config::Storage { encrypt_outputs: true, key_file }, outside))
}

/// Writes a secret file (mode 0600), sealed under `key` if given.
pub fn write_secret(path: &Path, bytes: &[u8], key: Option<&StorageKey>) -> Result<()> {
    let Some(key) = key else {
        return config::write_atomic(path, bytes, true);
    };
    let mut w = sealed::SealedWriter::create(path, key, consort_engine::storage::Access::OwnerOnly)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut w, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    w.finish().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads a secret file of the node in `dir`, unsealing it with the node's storage key if sealed.
pub fn read_secret(dir: &Path, path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let sealed = sealed::is_sealed(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = if sealed { Some(load_key(dir)?) } else { None };
    let bytes = consort_engine::storage::read_data(path, key.as_ref())
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Zeroizing::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node directory as `consort init` makes it (no test here sets the environment variable).
    fn node_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node");
        crate::identity::init(&dir, "n", "127.0.0.1:0").unwrap();
        (tmp, dir)
    }

    #[test]
    fn init_keeps_the_key_in_the_directory_and_node_keys_plain() {
        let (_tmp, dir) = node_dir();
        let config = NodeConfig::load(&dir).unwrap();
        assert_eq!(config.storage, config::Storage::default());
        let storage = NodeStorage::open(&dir, &config).unwrap();
        assert_eq!(storage.key.id(), load_key(&dir).unwrap().id());
        assert!(matches!(storage.at_rest(), AtRest::Sealed(_)));
        for f in [config::IDENTITY_KEY_FILE, config::TLS_KEY_FILE] {
            assert!(!sealed::is_sealed(&dir.join(f)).unwrap(), "{f}: sealing next to the key protects nothing");
        }
    }

    #[test]
    fn an_older_node_directory_gets_a_key_at_start_and_sealing_can_be_turned_off() {
        let (_tmp, dir) = node_dir();
        std::fs::remove_file(dir.join(STORAGE_KEY_FILE)).unwrap();
        let mut config = NodeConfig::load(&dir).unwrap();
        config.storage.encrypt_outputs = false;
        let storage = NodeStorage::open(&dir, &config).unwrap();
        assert!(dir.join(STORAGE_KEY_FILE).exists());
        assert!(matches!(storage.at_rest(), AtRest::Plain));
        // The key is kept: the next start reads the same one.
        assert_eq!(NodeStorage::open(&dir, &config).unwrap().key.id(), storage.key.id());
    }

    #[test]
    fn a_missing_key_outside_the_directory_stops_the_node_and_is_not_created() {
        let (tmp, dir) = node_dir();
        let mut config = NodeConfig::load(&dir).unwrap();
        let secret = tmp.path().join("secrets/storage.key");
        // A relative key file in the config is relative to the node directory.
        config.storage.key_file = Some(PathBuf::from("../secrets/storage.key"));
        let err = format!("{:#}", NodeStorage::open(&dir, &config).unwrap_err());
        assert!(err.contains("is the secret mounted?") && err.contains("node/../secrets/storage.key"), "{err}");
        assert!(!secret.exists());
        std::fs::create_dir(tmp.path().join("secrets")).unwrap();
        std::fs::copy(dir.join(STORAGE_KEY_FILE), &secret).unwrap();
        assert_eq!(NodeStorage::open(&dir, &config).unwrap().key.id(), load_key(&dir).unwrap().id());
    }

    #[test]
    fn secrets_sealed_or_plain_read_back() {
        let (tmp, dir) = node_dir();
        let key = load_key(&dir).unwrap();
        let path = tmp.path().join("secret");
        write_secret(&path, b"seed", Some(&key)).unwrap();
        assert!(sealed::is_sealed(&path).unwrap());
        assert_eq!(&**read_secret(&dir, &path).unwrap(), b"seed");
        write_secret(&path, b"plain", None).unwrap();
        assert_eq!(&**read_secret(&dir, &path).unwrap(), b"plain");
    }
}
