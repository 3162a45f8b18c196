//! How the engine and the node put files on disk and open the files they are given, so that a
//! crash, a full disk or an odd file cannot corrupt state or hang the node.
//!
//! - [`write_atomic`]: a file is either its old contents or its new contents, never a mix, also
//!   after a power loss: temp file in the same directory, write, fsync, rename, fsync the
//!   directory (without the last step the rename itself may be lost).
//! - [`open_regular`]: opening a FIFO for reading blocks until a writer appears, and a device
//!   never ends; a dataset must be a regular file (a symlink to one is fine).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
