use std::os::unix::fs::PermissionsExt;

use super::*;

fn key(byte: u8) -> StorageKey {
    StorageKey::from_bytes([byte; 32])
}

/// Plaintext that differs at every position (a moved chunk cannot decrypt to the same bytes).
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Seals `plain` to `path`, writing it in uneven pieces.
fn seal(path: &Path, key: &StorageKey, plain: &[u8]) {
    let mut w = SealedWriter::create(path, key, Access::OwnerOnly).unwrap();
    for piece in plain.chunks(10_007) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap();
}

fn unseal_bytes(bytes: &[u8], key: &StorageKey) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    SealedReader::new(bytes, Path::new("out.csv"), key)?.read_to_end(&mut out)?;
    Ok(out)
}

fn unseal(path: &Path, key: &StorageKey) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    SealedReader::open(path, key)?.read_to_end(&mut out)?;
    Ok(out)
}

const SIZES: [usize; 8] = [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 5];

#[test]
fn roundtrips_every_size_around_chunk_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    for len in SIZES {
        let path = dir.path().join(format!("f{len}"));
        let plain = data(len);
        seal(&path, &k, &plain);
        assert_eq!(unseal(&path, &k).unwrap(), plain, "{len} bytes");
        // Full chunks, then one short last chunk (empty when the length is a multiple of CHUNK).
        let expected = HEADER + len + TAG * (len / CHUNK + 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, expected, "{len} bytes");
        assert!(is_sealed(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), SIZES.len(), "no temp file left");
}

#[test]
fn small_reads_return_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (k, path, plain) = (key(1), dir.path().join("f"), data(2 * CHUNK + 3));
    seal(&path, &k, &plain);
    let mut r = SealedReader::open(&path, &k).unwrap();
    let (mut out, mut piece) = (Vec::new(), [0u8; 333]);
    loop {
        let n = r.read(&mut piece).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&piece[..n]);
    }
    assert_eq!(out, plain);
}

#[test]
fn identical_plaintexts_seal_differently() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1);
    seal(&dir.path().join("a"), &k, b"same");
    seal(&dir.path().join("b"), &k, b"same");
    assert_ne!(std::fs::read(dir.path().join("a")).unwrap(), std::fs::read(dir.path().join("b")).unwrap());
}

#[test]
fn every_single_byte_flip_fails() {
    let k = key(1);
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 1, 100] {
        let path = dir.path().join("f");
        seal(&path, &k, &data(len));
        let sealed = std::fs::read(&path).unwrap();
        for i in 0..sealed.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = sealed.clone();
                bad[i] ^= flip;
                assert!(unseal_bytes(&bad, &k).is_err(), "{len} bytes: flip {flip:#x} at {i} not detected");
            }
        }
    }
}

#[test]
fn byte_flips_in_a_multi_chunk_file_fail() {
    let k = key(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    seal(&path, &k, &data(3 * CHUNK + 5));
    let sealed = std::fs::read(&path).unwrap();
    // The header, and the first and last bytes of every chunk's body and tag.
    let mut positions: Vec<usize> = (0..HEADER).collect();
    for c in 0..4 {
        let start = HEADER + c * (CHUNK + TAG);
        let end = (start + CHUNK + TAG).min(sealed.len());
        positions.extend([start, start + 1, end - TAG - 1, end - TAG, end - 1]);
    }
    positions.extend((0..200).map(|i| (i * 7919 + 13) % sealed.len()));
    for i in positions {
        let mut bad = sealed.clone();
        bad[i] ^= 0x04;
        assert!(unseal_bytes(&bad, &k).is_err(), "flip at {i} not detected");
    }
}

#[test]
fn truncation_at_every_chunk_boundary_and_inside_chunks_fails() {
    let k = key(1);
    let dir = tempfile::tempdir().unwrap();
    for len in [0, CHUNK, 3 * CHUNK + 5] {
        let path = dir.path().join("f");
        seal(&path, &k, &data(len));
        let sealed = std::fs::read(&path).unwrap();
        let mut cuts: Vec<usize> = (0..=len / CHUNK + 1).map(|c| HEADER + c * (CHUNK + TAG)).collect();
        cuts.extend([0, 5, HEADER - 1, HEADER + 1, HEADER + TAG - 1, sealed.len() - 1]);
        for cut in cuts.into_iter().filter(|&c| c < sealed.len()) {
            let err = unseal_bytes(&sealed[..cut], &k).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{len} bytes cut at {cut}");
        }
    }
}

/// The sealed chunks of a file (the last one short).
fn chunks(sealed: &[u8]) -> Vec<&[u8]> {
    sealed[HEADER..].chunks(CHUNK + TAG).collect()
}

#[test]
fn reordered_swapped_and_appended_chunks_fail() {
    let k = key(1);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    seal(&a, &k, &data(3 * CHUNK + 5));
    seal(&b, &k, &data(3 * CHUNK + 5));
    let (sa, sb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (ca, cb) = (chunks(&sa), chunks(&sb));
    let build = |parts: &[&[u8]]| -> Vec<u8> {
        let mut v = sa[..HEADER].to_vec();
        parts.iter().for_each(|p| v.extend_from_slice(p));
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("chunks 0 and 1 swapped", build(&[ca[1], ca[0], ca[2], ca[3]])),
        ("chunk 1 from another file under the same key", build(&[ca[0], cb[1], ca[2], ca[3]])),
        ("last chunk from another file", build(&[ca[0], ca[1], ca[2], cb[3]])),
        ("a chunk appended after the last", build(&[ca[0], ca[1], ca[2], ca[3], ca[1]])),
        ("the last chunk appended again", build(&[ca[0], ca[1], ca[2], ca[3], ca[3]])),
        ("one byte appended", [sa.clone(), vec![0]].concat()),
        ("the last chunk dropped", build(&[ca[0], ca[1], ca[2]])),
        ("a middle chunk dropped", build(&[ca[0], ca[2], ca[3]])),
        ("another file's header", [&sb[..HEADER], &sa[HEADER..]].concat()),
    ];
    for (what, bytes) in cases {
        assert!(unseal_bytes(&bytes, &k).is_err(), "{what} not detected");
    }
    assert_eq!(unseal_bytes(&sa, &k).unwrap(), data(3 * CHUNK + 5));
}

#[test]
fn the_wrong_key_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret-out.csv");
    seal(&path, &key(1), b"id\nALICE-4711\n");
    let err = unseal(&path, &key(2)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(msg.starts_with("secret-out.csv: sealed under another storage key"), "{msg}");
    // A header claiming the other key's id still fails: the id is a hint, not the check.
    let mut forged = std::fs::read(&path).unwrap();
    forged[12..12 + KEY_ID].copy_from_slice(&key(2).id());
    let msg = unseal_bytes(&forged, &key(2)).unwrap_err().to_string();
    assert!(msg.contains("fails authentication") && !msg.contains("ALICE"), "{msg}");
    assert!(!msg.contains(&dir.path().display().to_string()), "no directory in errors: {msg}");
}

#[test]
fn reads_after_an_error_keep_failing() {
    let k = key(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    seal(&path, &k, &data(2 * CHUNK + 5));
    let mut bad = std::fs::read(&path).unwrap();
    bad[HEADER + CHUNK + TAG + 3] ^= 1;
    let mut r = SealedReader::new(&bad[..], Path::new("f"), &k).unwrap();
    let mut buf = vec![0u8; CHUNK];
    assert_eq!(r.read(&mut buf).unwrap(), CHUNK, "chunk 0 is intact");
    for _ in 0..3 {
        assert!(r.read(&mut buf).is_err());
    }
}

#[test]
fn plain_files_are_not_sealed_and_not_read_as_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.csv");
    std::fs::write(&path, b"id\n1\n").unwrap();
    assert!(!is_sealed(&path).unwrap());
    std::fs::write(&path, b"").unwrap();
    assert!(!is_sealed(&path).unwrap());
    let msg = unseal(&path, &key(1)).unwrap_err().to_string();
    assert_eq!(msg, "plain.csv: not a sealed file");
}

#[test]
fn an_unfinished_writer_leaves_nothing_and_finish_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let (k, path) = (key(1), dir.path().join("out"));
    seal(&path, &k, b"old");
    let mut w = SealedWriter::create(&path, &k, Access::OwnerOnly).unwrap();
    w.write_all(&data(CHUNK * 2)).unwrap();
    drop(w);
    assert_eq!(unseal(&path, &k).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
}

#[test]
fn key_files_roundtrip_owner_only_and_are_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storage.key");
    let k = StorageKey::generate().unwrap();
    k.create_file(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(StorageKey::load(&path).unwrap().id(), k.id());
    assert_eq!(k.create_file(&path).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    assert_ne!(StorageKey::generate().unwrap().id(), k.id());
    std::fs::write(&path, "zz".repeat(32)).unwrap();
    let msg = StorageKey::load(&path).unwrap_err().to_string();
    assert!(msg.contains("not a storage key") && !msg.contains("zz"), "{msg}");
    assert!(!format!("{k:?}").contains(&hex(&*k.bytes)), "Debug shows only the id");
}

/// Measures sealing against plain writing for a 10^6-row PSI output (run in release:
/// `cargo test --release -p consort-engine --lib -- --ignored --nocapture sealing_overhead`).
#[test]
#[ignore]
fn sealing_overhead_on_a_million_row_output() {
    use std::time::Instant;

    use crate::dataset::{Dataset, DatasetSpec};
    use crate::storage::{AtRest, read_data};
    use crate::synth::{PsiGenSpec, generate_psi};
    let dir = tempfile::tempdir().unwrap();
    let rows = 1_000_000u64;
    generate_psi(&PsiGenSpec { rows_a: rows, rows_b: 10, overlap: 0, seed: 1, out_dir: dir.path().to_path_buf() })
        .unwrap();
    let ds = Dataset::load(&DatasetSpec::new("a", dir.path().join("a.csv"), &["id"])).unwrap();
    let order: Vec<u32> = (0..rows as u32).rev().collect();
    let key = std::sync::Arc::new(StorageKey::generate().unwrap());
    let mut plain_bytes = 0;
    for (name, at_rest) in [("plain", AtRest::Plain), ("sealed", AtRest::Sealed(key.clone()))] {
        let out = dir.path().join(format!("{name}.csv"));
        let started = Instant::now();
        ds.write_rows(&order, &out, &at_rest).unwrap();
        let write_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let bytes = read_data(&out, Some(&key)).unwrap();
        let read_s = started.elapsed().as_secs_f64();
        plain_bytes = bytes.len();
        let mb = bytes.len() as f64 / 1e6;
        let on_disk = std::fs::metadata(&out).unwrap().len();
        println!(
            "{name}: {rows} rows, {mb:.1} MB plaintext, {on_disk} B on disk; write {write_s:.3} s ({:.0} MB/s), \
             read {read_s:.3} s ({:.0} MB/s)",
            mb / write_s,
            mb / read_s
        );
    }
    // The seal and unseal alone, in memory.
    let data = vec![7u8; plain_bytes];
    let path = dir.path().join("raw");
    let started = Instant::now();
    seal(&path, &key, &data);
    let seal_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let back = unseal(&path, &key).unwrap();
    let unseal_s = started.elapsed().as_secs_f64();
    assert_eq!(back.len(), data.len());
    let mb = plain_bytes as f64 / 1e6;
    println!("seal {:.0} MB/s, unseal {:.0} MB/s (incl. file write/read)", mb / seal_s, mb / unseal_s);
}
