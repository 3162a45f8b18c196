//! How the engine and the node put files on disk and open the files they are given, so that a
//! crash, a full disk or an odd file cannot corrupt state or hang the node.
//!
//! - [`write_atomic`]: a file is either its old contents or its new contents, never a mix, also
//!   after a power loss: temp file in the same directory, write, fsync, rename, fsync the
//!   directory (without the last step the rename itself may be lost).
//! - [`open_regular`]: opening a FIFO for reading blocks until a writer appears, and a device
//!   never ends; a dataset must be a regular file (a symlink to one is fine).
//! - [`DataWriter`] / [`open_data`]: files that hold data (outputs, models, predictions, spill)
//!   are sealed under the node's storage key when [`AtRest::Sealed`] ([`crate::sealed`]), written
//!   as a stream to a temp file renamed when complete; readers take sealed and plain files alike.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sealed::{MAGIC, SealedReader, SealedWriter, StorageKey};

/// Who may read a file written by [`write_atomic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Mode 0600 from the moment the file exists (keys, salts, models, outputs).
    OwnerOnly,
    /// Mode 0644 (certificates, config, public evidence).
    Readable,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::OwnerOnly => 0o600,
            Access::Readable => 0o644,
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `value` as pretty-printed JSON through a [`DataWriter`] (atomic: temp file, then
/// rename; sealed or plain as `at_rest` says), creating the directory: the model, bins and
/// scorecard files.
pub fn write_json<T: serde::Serialize>(
    path: &Path,
    value: &T,
    at_rest: &AtRest,
) -> Result<(), crate::error::DataError> {
    use crate::error::DataError;
    let text = serde_json::to_string_pretty(value).map_err(|e| DataError::Invalid(e.to_string()))?;
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut w = DataWriter::create(path, at_rest).map_err(|e| DataError::io(dir, e))?;
    w.write_all(text.as_bytes()).map_err(|e| DataError::io(path, e))?;
    w.finish().map_err(|e| DataError::io(path, e))?;
    Ok(())
}

/// Replaces `path` with `bytes` atomically and durably: a temp file in the same directory
/// (created 0600, so a secret is never readable by others, then set to `access`), written,
/// fsynced, renamed over `path`, and the directory fsynced. On error `path` is unchanged and the
/// temp file is removed. Errors are the OS's; callers name `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    if access != Access::OwnerOnly {
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(access.mode()))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Fsyncs a directory, so that a rename or a new file in it survives a power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens `path` for reading if it is a regular file (after following symlinks). The open does not
/// block on a FIFO (`O_NONBLOCK`, harmless on regular files), and the type is checked on the open
/// file, so nothing can be swapped in between.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}; give a regular file")));
    }
    Ok(file)
}

/// How a node keeps the data files it writes: sealed under its storage key (the default) or
/// plain (`[storage] encrypt_outputs = false`, for operators whose next system reads the files
/// in place).
#[derive(Debug, Clone)]
pub enum AtRest {
    Plain,
    Sealed(Arc<StorageKey>),
}

impl AtRest {
    /// The key readers use to open sealed files (also when writing plain: older files may be sealed).
    pub fn key(&self) -> Option<&StorageKey> {
        match self {
            AtRest::Plain => None,
            AtRest::Sealed(key) => Some(key),
        }
    }
}

/// Writes a data file as a stream, sealed or plain as [`AtRest`] says, through a temp file in the
/// target's directory (mode 0600). Only [`DataWriter::finish`] makes it appear (fsync, rename,
/// directory fsync); dropped before that, it leaves nothing.
pub struct DataWriter(Inner);

enum Inner {
    Plain { tmp: io::BufWriter<tempfile::NamedTempFile>, path: PathBuf },
    Sealed(Box<SealedWriter>),
}

impl DataWriter {
    /// Starts the file that will replace `path` (its directory must exist).
    pub fn create(path: &Path, at_rest: &AtRest) -> io::Result<DataWriter> {
        Ok(DataWriter(match at_rest {
            AtRest::Sealed(key) => Inner::Sealed(Box::new(SealedWriter::create(path, key, Access::OwnerOnly)?)),
            AtRest::Plain => {
                let tmp =
                    tempfile::Builder::new().prefix(".consort-").suffix(".partial").tempfile_in(parent_dir(path))?;
                Inner::Plain { tmp: io::BufWriter::with_capacity(1 << 16, tmp), path: path.to_path_buf() }
            }
        }))
    }

    /// Completes the file and puts it in place durably; on error no new file is at the path.
    pub fn finish(self) -> io::Result<PathBuf> {
        match self.0 {
            Inner::Sealed(w) => w.finish(),
            Inner::Plain { tmp, path } => {
                let tmp = tmp.into_inner().map_err(|e| e.into_error())?;
                tmp.as_file().sync_all()?;
                tmp.persist(&path).map_err(|e| e.error)?;
                if let Err(e) = sync_dir(parent_dir(&path)) {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
                Ok(path)
            }
        }
    }
}

impl Write for DataWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Inner::Plain { tmp, .. } => tmp.write(buf),
            Inner::Sealed(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.0 {
            Inner::Plain { tmp, .. } => tmp.write_all(buf),
            Inner::Sealed(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Inner::Plain { tmp, .. } => tmp.flush(),
            Inner::Sealed(w) => w.flush(),
        }
    }
}

/// Opens a data file this node wrote (a regular file): sealed files are authenticated chunk by
/// chunk with `key` as they are read, plain files are read as they are. A sealed file without a
/// key is an error naming the file.
pub fn open_data(path: &Path, key: Option<&StorageKey>) -> io::Result<Box<dyn Read + Send>> {
    let mut file = open_regular(path)?;
    let mut head = Vec::with_capacity(MAGIC.len());
    (&mut file).take(MAGIC.len() as u64).read_to_end(&mut head)?;
    let whole = io::Cursor::new(head.clone()).chain(file);
    if head != MAGIC {
        return Ok(Box::new(whole));
    }
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let key = key.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{name}: sealed, and no storage key was given to open it"))
    })?;
    Ok(Box::new(io::BufReader::with_capacity(1 << 16, SealedReader::new(whole, path, key)?)))
}

/// The whole of a data file ([`open_data`]), for small files (models).
pub fn read_data(path: &Path, key: Option<&StorageKey>) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_data(path, key)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_files_roundtrip_sealed_or_plain_and_appear_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(StorageKey::from_bytes([7; 32]));
        for at_rest in [AtRest::Plain, AtRest::Sealed(key.clone())] {
            let path = dir.path().join("out.csv");
            let mut w = DataWriter::create(&path, &at_rest).unwrap();
            w.write_all(b"id\nsecret-id-42\n").unwrap();
            assert!(!path.exists(), "nothing visible before finish");
            w.finish().unwrap();
            let raw = std::fs::read(&path).unwrap();
            let sealed = matches!(at_rest, AtRest::Sealed(_));
            assert_eq!(raw.windows(12).any(|w| w == b"secret-id-42"), !sealed);
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            // Readers take either kind, with or without a key for plain files.
            assert_eq!(read_data(&path, Some(&key)).unwrap(), b"id\nsecret-id-42\n");
            assert_eq!(read_data(&path, None).is_ok(), !sealed);
            let dropped = DataWriter::create(&dir.path().join("never.csv"), &at_rest).unwrap();
            drop(dropped);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only out.csv");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn writes_replace_whole_files_with_the_asked_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", Access::OwnerOnly).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        write_atomic(&path, b"two", Access::Readable).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"old", Access::OwnerOnly).unwrap();
        // The target is a directory that is not empty: the rename fails after the write.
        let blocked = dir.path().join("d");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_atomic(&blocked, b"new", Access::OwnerOnly).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temp file left");
    }

    #[test]
    fn only_regular_files_open_and_fifos_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.csv");
        std::fs::write(&file, b"id\n1\n").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        open_regular(&file).unwrap();
        open_regular(&link).unwrap();
        let fifo = dir.path().join("fifo.csv");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(open_regular(&fifo).map(drop).map_err(|e| e.to_string())));
        let error = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("opening a FIFO must not block");
        assert!(error.unwrap_err().contains("not a regular file"));
        assert!(open_regular(dir.path()).unwrap_err().to_string().contains("a directory"));
        assert!(open_regular(Path::new("/dev/null")).is_err());
    }
}
