//! Sealed files: data encrypted at rest under a node-local storage key, streamed in chunks.
//!
//! What is sealed: everything a node writes that holds data (PSI outputs, model files,
//! predictions; spill files later). What it protects against, and what it does not, is in
//! `docs/security.md` ("Encryption at rest").
//!
//! # Format (version 1)
//! ```text
//! header (52 bytes)  magic "consort\x1a" (8) | version 1 (1) | log2 chunk size = 16 (1) | 0 0 (2)
//!                    | key id (8) | file id (32, random)
//! chunk 0..n         AES-256-GCM ciphertext of 64 KiB of plaintext | tag (16)
//! last chunk         AES-256-GCM ciphertext of 0..64 KiB − 1 bytes | tag (16)
//! ```
//! Each file has its own key, HKDF-SHA256(salt = file id, ikm = storage key, info =
//! "consort sealed file v1"), so no nonce is ever reused under one key and a chunk moved from one
//! file to another fails to authenticate. Chunk i is sealed with nonce = i (u64, big-endian) ‖ 0^32
//! and associated data = header ‖ i ‖ final flag (1 for the last chunk, 0 otherwise) — the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its
//! Nonce-Reuse Misuse-Resistance", CRYPTO 2015, §7). So a flipped bit anywhere, a changed header,
//! reordered or swapped chunks, a file cut at a chunk boundary (its last chunk is not flagged final)
//! and bytes appended after the final chunk are all detected; what a reader returns before the
//! error is authentic but may be incomplete, so readers that act on data treat the error as "no
//! file". Every chunk but the last holds exactly 64 KiB, the last fewer (possibly none): a reader
//! tells the last chunk by its short length and the writer never needs to know the length ahead.
//!
//! The key id (HKDF of the storage key with info "consort storage key id v1") lets a reader say
//! "sealed under another key" rather than "damaged"; it reveals nothing about the key.
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::storage::{Access, sync_dir};

/// The first bytes of every sealed file (`\x1a`, not text: no sealed file reads as a CSV line).
pub const MAGIC: &[u8; 8] = b"consort\x1a";
pub const VERSION: u8 = 1;
const CHUNK_LOG2: u8 = 16;
/// Plaintext bytes per chunk (every chunk but the last).
pub const CHUNK: usize = 1 << CHUNK_LOG2;
const TAG: usize = 16;
const KEY_ID: usize = 8;
const FILE_ID: usize = 32;
/// Header bytes: magic, version, chunk size, reserved, key id, file id.
pub const HEADER: usize = 8 + 1 + 1 + 2 + KEY_ID + FILE_ID;

/// A node's storage key: 32 random bytes (AES-256), zeroized on drop. Stored as 64 hex digits.
pub struct StorageKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StorageKey(id {})", hex(&self.id()))
    }
}

impl StorageKey {
    /// A new key from the OS random number generator.
    pub fn generate() -> io::Result<StorageKey> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SysRng.try_fill_bytes(&mut *bytes).map_err(|e| io::Error::other(format!("OS random number generator: {e}")))?;
        Ok(StorageKey { bytes })
    }

    pub fn from_bytes(bytes: [u8; 32]) -> StorageKey {
        StorageKey { bytes: Zeroizing::new(bytes) }
    }

    /// Reads a key file (64 hex digits, surrounding whitespace ignored). Errors name the file,
    /// never its contents.
    pub fn load(path: &Path) -> io::Result<StorageKey> {
        let bad = || invalid(path, "not a storage key (expected 64 hex digits)");
        let text = Zeroizing::new(std::fs::read(path)?);
        let t = text.trim_ascii();
        if t.len() != 64 {
            return Err(bad());
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        for (byte, pair) in bytes.iter_mut().zip(t.chunks(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(digits, 16).map_err(|_| bad())?;
        }
        Ok(StorageKey { bytes })
    }

    /// Writes the key to a new file, mode 0600 from its creation (atomically: a crash leaves no
    /// half key). Refuses to replace an existing file: losing a key loses every file sealed under it.
    pub fn create_file(&self, path: &Path) -> io::Result<()> {
        if path.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", name(path))));
        }
        let mut text = Zeroizing::new(hex(&*self.bytes));
        text.push('\n');
        crate::storage::write_atomic(path, text.as_bytes(), Access::OwnerOnly)
    }

    /// The key's bytes, for sealing it under another key (a resumable job's spill key).
    pub(crate) fn secret_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// A public 8-byte fingerprint of the key, stored in every file's header.
    pub fn id(&self) -> [u8; KEY_ID] {
        let mut id = [0u8; KEY_ID];
        Hkdf::<Sha256>::new(None, &*self.bytes).expand(b"consort storage key id v1", &mut id).expect("8 bytes");
        id
    }

    /// The key of the file with this id.
    fn file_cipher(&self, file_id: &[u8]) -> Aes256Gcm {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(file_id), &*self.bytes)
            .expand(b"consort sealed file v1", &mut *key)
            .expect("32 bytes");
        Aes256Gcm::new_from_slice(&*key).expect("32-byte key")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's name without its directory (errors may reach logs that must not show paths).
fn name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", name(path)))
}

fn nonce(index: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n.into()
}

/// Associated data of chunk `index`: the header, the index and whether it is the last chunk.
fn chunk_aad(header: &[u8; HEADER], index: u64, last: bool) -> [u8; HEADER + 9] {
    let mut aad = [0u8; HEADER + 9];
    aad[..HEADER].copy_from_slice(header);
    aad[HEADER..HEADER + 8].copy_from_slice(&index.to_be_bytes());
    aad[HEADER + 8] = last as u8;
    aad
}

/// Whether the file at `path` starts with the sealed-file magic (an unreadable or short file is
/// not sealed).
pub fn is_sealed(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; MAGIC.len()];
    let mut file = crate::storage::open_regular(path)?;
    Ok(read_full(&mut file, &mut head)? == head.len() && &head == MAGIC)
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes a sealed file: bytes written go through a temp file in the target's directory, which
/// [`SealedWriter::finish`] fsyncs and renames into place. Dropped unfinished, it leaves no file.
pub struct SealedWriter {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
    access: Access,
    cipher: Aes256Gcm,
    header: [u8; HEADER],
    index: u64,
    /// Plaintext of the current chunk, then its ciphertext and tag.
    buf: Zeroizing<Vec<u8>>,
    /// A chunk failed to be written: the file can only be dropped.
    failed: bool,
}

impl SealedWriter {
    /// Starts a sealed file that will replace `path` when finished (its directory must exist).
    pub fn create(path: &Path, key: &StorageKey, access: Access) -> io::Result<SealedWriter> {
        let dir = crate::storage::parent_dir(path);
        let mut tmp = tempfile::Builder::new().prefix(".consort-").suffix(".partial").tempfile_in(dir)?;
        let mut file_id = [0u8; FILE_ID];
        SysRng
            .try_fill_bytes(&mut file_id)
            .map_err(|e| io::Error::other(format!("OS random number generator: {e}")))?;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        header[9] = CHUNK_LOG2;
        header[12..12 + KEY_ID].copy_from_slice(&key.id());
        header[12 + KEY_ID..].copy_from_slice(&file_id);
        tmp.write_all(&header)?;
        Ok(SealedWriter {
            tmp,
            path: path.to_path_buf(),
            access,
            cipher: key.file_cipher(&file_id),
            header,
            index: 0,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK + TAG)),
            failed: false,
        })
    }

    /// Seals the buffered plaintext as chunk `index` and writes it.
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this sealed file failed"));
        }
        self.failed = true;
        let aad = chunk_aad(&self.header, self.index, last);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(self.index), &aad, self.buf.as_mut_slice().into())
            .map_err(|_| io::Error::other("chunk too long to seal"))?;
        self.buf.extend_from_slice(&tag);
        self.tmp.as_file_mut().write_all(&self.buf)?;
        self.buf.clear();
        self.index += 1;
        self.failed = false;
        Ok(())
    }

    /// Seals the last chunk, fsyncs, renames over the target and fsyncs its directory. On error
    /// the target is unchanged (or removed, if only the directory fsync failed: a rename that may
    /// not survive a crash is not an output to vouch for).
    pub fn finish(mut self) -> io::Result<PathBuf> {
        self.seal_chunk(true)?;
        if self.access != Access::OwnerOnly {
            use std::os::unix::fs::PermissionsExt;
            self.tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        self.tmp.as_file().sync_all()?;
        let path = self.path.clone();
        self.tmp.persist(&path).map_err(|e| e.error)?;
        if let Err(e) = sync_dir(crate::storage::parent_dir(&path)) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }
}

impl SealedWriter {
    /// Seals the last chunk and renames the file over the target, without the fsyncs of
    /// [`Self::finish`]: for scratch files a job deletes within seconds and never needs after a
    /// crash (the page cache may drop them to disk or not; either way they are sealed).
    pub fn finish_scratch(mut self) -> io::Result<PathBuf> {
        self.seal_chunk(true)?;
        let path = self.path.clone();
        self.tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }
}

impl Write for SealedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this sealed file failed"));
        }
        let take = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        // A full chunk is sealed at once, so the last chunk is always shorter than CHUNK.
        if self.buf.len() == CHUNK {
            self.seal_chunk(false)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Partial chunks stay buffered: only `finish` may seal the last one.
        Ok(())
    }
}

/// Reads a sealed file, authenticating each chunk before returning any of its bytes. Any change
/// to the file is an `InvalidData` error naming the file (never its contents); the bytes returned
/// before such an error are authentic but the file is not whole.
pub struct SealedReader<R = File> {
    inner: R,
    name: String,
    cipher: Aes256Gcm,
    header: [u8; HEADER],
    index: u64,
    /// Plaintext of the current chunk and how much of it was returned.
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    done: bool,
    /// The first error, returned again by every later read (no byte after a bad chunk is served).
    failed: Option<(io::ErrorKind, String)>,
}

impl SealedReader<File> {
    /// Opens a sealed file (a regular file, see [`crate::storage::open_regular`]) and checks its
    /// header: magic, version and that it was sealed under `key`.
    pub fn open(path: &Path, key: &StorageKey) -> io::Result<SealedReader<File>> {
        let file = crate::storage::open_regular(path)?;
        SealedReader::new(file, path, key)
    }
}

impl<R: Read> SealedReader<R> {
    /// Reads a sealed file from `inner`; `path` only names it in errors.
    pub fn new(mut inner: R, path: &Path, key: &StorageKey) -> io::Result<SealedReader<R>> {
        let mut header = [0u8; HEADER];
        let n = read_full(&mut inner, &mut header)?;
        if n < MAGIC.len() || &header[..MAGIC.len()] != MAGIC {
            return Err(invalid(path, "not a sealed file"));
        }
        if n < HEADER {
            return Err(invalid(path, "sealed file truncated (in its header)"));
        }
        if header[8] != VERSION || header[9] != CHUNK_LOG2 || header[10..12] != [0, 0] {
            return Err(invalid(path, &format!("sealed file of an unknown format (version {})", header[8])));
        }
        if header[12..12 + KEY_ID] != key.id() {
            return Err(invalid(path, "sealed under another storage key (is this node's storage key the right one?)"));
        }
        Ok(SealedReader {
            inner,
            name: name(path),
            cipher: key.file_cipher(&header[12 + KEY_ID..]),
            header,
            index: 0,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK + TAG)),
            pos: 0,
            done: false,
            failed: None,
        })
    }

    fn fail(&self, what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", self.name))
    }

    /// Reads and opens the next chunk into `buf`.
    fn next_chunk(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.pos = 0;
        self.buf.resize(CHUNK + TAG, 0);
        let n = read_full(&mut self.inner, &mut self.buf)?;
        // A full-size chunk is never the last one; a short one must be.
        let last = n < CHUNK + TAG;
        if n < TAG {
            return Err(self.fail(&format!("sealed file truncated (chunk {} is missing or cut)", self.index)));
        }
        let (body, tag) = self.buf[..n].split_at_mut(n - TAG);
        let tag = Tag::try_from(&*tag).expect("16 bytes");
        let aad = chunk_aad(&self.header, self.index, last);
        if self.cipher.decrypt_inout_detached(&nonce(self.index), &aad, body.into(), &tag).is_err() {
            let what = format!("sealed file damaged, cut or changed (chunk {} fails authentication)", self.index);
            return Err(self.fail(&what));
        }
        self.buf.truncate(n - TAG);
        self.pos = 0;
        self.index += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if let Some((kind, what)) = &self.failed {
                return Err(io::Error::new(*kind, what.clone()));
            }
            if self.done {
                return Ok(0);
            }
            if let Err(e) = self.next_chunk() {
                self.buf.clear();
                self.pos = 0;
                self.failed = Some((e.kind(), e.to_string()));
                return Err(e);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
