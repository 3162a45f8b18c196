//! Unbalanced PSI on the engine's side ([`consort_protocols::psi::unbalanced`] is the protocol):
//! the list owner's one-time setup, the files both sides keep, and the querier's output.
//!
//! # Files (always sealed under the node's storage key, whatever `encrypt_outputs` says: they hold
//! the OPRF key, or the list's tags and encrypted labels)
//!
//! ```text
//! key file  "ubalkey2" | setup parameters (85) | k (32) | created u64 | columns: count u32, then len u32 ‖ name
//! set file  "ubalset2" | setup parameters (85) | label columns (as in the key file) | records (n · record bytes, sorted by tag)
//! ```
//!
//! The owner keeps both (the key file is all a query needs, so answering never reads the list);
//! the querier keeps a set file per fetched list. Reading checks the seal (AES-GCM per chunk:
//! a flipped bit, a cut or a swapped file fails), the magic, the parameters, that the records
//! hash to the digest the setup id binds, and that the tags are sorted: a tampered store is
//! refused, never used.
//!
//! The magics end in the protocol version they were made for: version 2 changed the OPRF's output
//! (see the protocol's module docs), so a file of version 1 (`ubalkey1`, `ubalset1`) is refused
//! with a message to run the setup (owner) or the fetch (querier) again.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use consort_protocols::psi::Payloads;
use consort_protocols::psi::unbalanced::{OprfKey, OprfSet, QueryMatch, SetupParams, evaluate_set};
use zeroize::Zeroizing;

use crate::dataset::Dataset;
use crate::error::DataError;
use crate::sealed::{self, StorageKey};
use crate::storage::{AtRest, DataWriter, open_data};

pub const KEY_MAGIC: &[u8; 8] = b"ubalkey2";
pub const SET_MAGIC: &[u8; 8] = b"ubalset2";
/// Most label columns a setup may carry.
pub const MAX_LABEL_COLUMNS: usize = 64;

/// The owner's current setup of a dataset: its key and what it was evaluated with.
pub struct SetupKey {
    pub key: Arc<OprfKey>,
    pub params: SetupParams,
    /// Unix seconds of the setup (the query budget counts queries since).
    pub created: u64,
    /// The dataset's columns whose values are the labels (empty: none).
    pub columns: Vec<String>,
}

/// Setup: evaluates the OPRF on every key of `dataset` (its distinct keys; a key's label holds
/// every row of that key, as in payload joins) with a fresh key. CPU work on rayon; call it off
/// the async runtime.
pub fn evaluate(dataset: &Dataset, columns: &[String], query_budget: u64) -> Result<(SetupKey, OprfSet), DataError> {
    if columns.len() > MAX_LABEL_COLUMNS {
        return Err(DataError::Invalid(format!("a setup carries at most {MAX_LABEL_COLUMNS} label columns")));
    }
    let labels: Option<Payloads> = if columns.is_empty() {
        None
    } else {
        let at = crate::payload::column_positions(dataset, columns)?;
        Some(crate::payload::collect_payloads(&dataset.row_source(), &at)?)
    };
    let key = OprfKey::random();
    let set = evaluate_set(&key, &dataset.keys, labels.as_ref(), query_budget)
        .map_err(|e| DataError::Invalid(e.to_string()))?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok((SetupKey { key: Arc::new(key), params: set.params, created, columns: columns.to_vec() }, set))
}

fn sealed_writer(path: &Path, storage: &Arc<StorageKey>) -> Result<DataWriter, DataError> {
    DataWriter::create(path, &AtRest::Sealed(storage.clone())).map_err(|e| DataError::io(path, e))
}

/// Opens a file that must be sealed (a plain file at the path is refused, not trusted).
fn open_sealed(path: &Path, storage: &StorageKey, magic: &[u8; 8]) -> Result<Box<dyn Read + Send>, DataError> {
    let mut head = [0u8; 8];
    crate::storage::open_regular(path).and_then(|mut f| f.read_exact(&mut head)).map_err(|e| DataError::io(path, e))?;
    if &head != sealed::MAGIC {
        return Err(DataError::file(path, "not sealed under this node's storage key: refused"));
    }
    let mut r = open_data(path, Some(storage)).map_err(|e| DataError::io(path, e))?;
    let mut m = [0u8; 8];
    r.read_exact(&mut m).map_err(|e| DataError::io(path, e))?;
    if &m != magic {
        if m[..7] == magic[..7] {
            return Err(DataError::file(
                path,
                "made for an older unbalanced PSI version: run psi-setup (list owner) or psi-fetch (querier) again",
            ));
        }
        return Err(DataError::file(path, "not an unbalanced PSI file of this kind"));
    }
    Ok(r)
}

/// Writes the owner's key file (atomically: temp file, then rename).
pub fn write_key(path: &Path, setup: &SetupKey, storage: &Arc<StorageKey>) -> Result<(), DataError> {
    let mut body = Zeroizing::new(Vec::new());
    body.extend_from_slice(KEY_MAGIC);
    body.extend_from_slice(&setup.params.encode());
    body.extend_from_slice(&*setup.key.to_bytes());
    body.extend_from_slice(&setup.created.to_be_bytes());
    encode_columns(&mut body, &setup.columns);
    let mut w = sealed_writer(path, storage)?;
    w.write_all(&body).map_err(|e| DataError::io(path, e))?;
    w.finish().map_err(|e| DataError::io(path, e))?;
    Ok(())
}

/// Reads the owner's key file.
pub fn read_key(path: &Path, storage: &StorageKey) -> Result<SetupKey, DataError> {
    let r = open_sealed(path, storage, KEY_MAGIC)?;
    let mut body = Zeroizing::new(Vec::new());
    r.take(1 << 20).read_to_end(&mut body).map_err(|e| DataError::io(path, e))?;
    let bad = || DataError::file(path, "the unbalanced PSI key file is malformed");
    let p = SetupParams::ENCODED;
    if body.len() < p + 32 + 8 + 4 {
        return Err(bad());
    }
    let params = SetupParams::decode(&body[..p]).map_err(|_| bad())?;
    let key_bytes: Zeroizing<[u8; 32]> = Zeroizing::new(body[p..p + 32].try_into().expect("32 bytes"));
    let key = OprfKey::from_bytes(&key_bytes).ok_or_else(bad)?;
    if key.commitment() != params.commitment {
        return Err(bad());
    }
    let created = u64::from_be_bytes(body[p + 32..p + 40].try_into().expect("8 bytes"));
    let mut rest = &body[p + 40..];
    let columns = decode_columns(&mut rest).ok_or_else(bad)?;
    if !rest.is_empty() || columns.is_empty() != (params.label_width == 0) {
        return Err(bad());
    }
    Ok(SetupKey { key: Arc::new(key), params, created, columns })
}

fn encode_columns(out: &mut Vec<u8>, columns: &[String]) {
    out.extend_from_slice(&(columns.len() as u32).to_be_bytes());
    for c in columns {
        out.extend_from_slice(&(c.len() as u32).to_be_bytes());
        out.extend_from_slice(c.as_bytes());
    }
}

/// Reads the columns from the front of `bytes` (advancing it); `None` if malformed.
fn decode_columns(bytes: &mut &[u8]) -> Option<Vec<String>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = tail;
        Some(head)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    if count > MAX_LABEL_COLUMNS {
        return None;
    }
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        columns.push(String::from_utf8(take(len)?.to_vec()).ok()?);
    }
    Some(columns)
}

/// Writes a set file (the owner's evaluated list, or the querier's fetched copy) with the names of
/// its label columns, atomically.
pub fn write_set(path: &Path, set: &OprfSet, columns: &[String], storage: &Arc<StorageKey>) -> Result<(), DataError> {
    let mut w = sealed_writer(path, storage)?;
    let io = |e| DataError::io(path, e);
    w.write_all(SET_MAGIC).map_err(io)?;
    w.write_all(&set.params.encode()).map_err(io)?;
    let mut names = Vec::new();
    encode_columns(&mut names, columns);
    w.write_all(&names).map_err(io)?;
    w.write_all(&set.records).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(())
}

/// Reads and checks a set file (see the module docs): the set and its label columns' names.
pub fn read_set(path: &Path, storage: &StorageKey) -> Result<(OprfSet, Vec<String>), DataError> {
    let mut r = open_sealed(path, storage, SET_MAGIC)?;
    let mut head = [0u8; SetupParams::ENCODED];
    r.read_exact(&mut head).map_err(|e| DataError::io(path, e))?;
    let bad = |why: String| DataError::file(path, format!("the unbalanced PSI set is not usable: {why}"));
    let params = SetupParams::decode(&head).map_err(bad)?;
    let mut names = [0u8; 4];
    r.read_exact(&mut names).map_err(|e| DataError::io(path, e))?;
    let count = u32::from_be_bytes(names) as usize;
    if count > MAX_LABEL_COLUMNS {
        return Err(bad("too many label columns".into()));
    }
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        r.read_exact(&mut names).map_err(|e| DataError::io(path, e))?;
        let mut name = vec![0u8; (u32::from_be_bytes(names) as usize).min(1 << 10)];
        r.read_exact(&mut name).map_err(|e| DataError::io(path, e))?;
        columns.push(String::from_utf8(name).map_err(|_| bad("a label column is not UTF-8".into()))?);
    }
    if columns.is_empty() != (params.label_width == 0) {
        return Err(bad("label columns do not match the labels".into()));
    }
    let total = params.set_bytes().ok_or_else(|| bad("too large".into()))?;
    let mut records = Vec::with_capacity(usize::try_from(total).map_err(|_| bad("too large".into()))?);
    r.take(total + 1).read_to_end(&mut records).map_err(|e| DataError::io(path, e))?;
    Ok((OprfSet::new(params, records).map_err(bad)?, columns))
}

/// Writes the querier's output: its matched rows (in its file's order) followed by the labels'
/// columns, named as `label_header` says (a plain CSV of its rows when the set has no labels).
pub async fn write_matches(
    dataset: &Dataset,
    matches: &[QueryMatch],
    label_header: &[String],
    out: &Path,
    at_rest: &AtRest,
) -> Result<u64, DataError> {
    let order: Vec<u32> = matches.iter().map(|m| m.index).collect();
    if label_header.is_empty() {
        let (plan, out, at_rest) = (dataset.output_plan(&order)?, out.to_path_buf(), at_rest.clone());
        return consort_protocols::cpu::run(move || plan.write(&out, &at_rest)).await;
    }
    let mut labels = Payloads::new();
    for m in matches {
        labels.push(m.label.as_deref().ok_or_else(|| DataError::Invalid("a match without its label".into()))?);
    }
    crate::payload::write_joined(dataset, &order, &labels, label_header, out, at_rest).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::DatasetSpec;

    fn dataset(dir: &Path, text: &str) -> Dataset {
        let p = dir.join("list.csv");
        std::fs::write(&p, text).unwrap();
        Dataset::load(&DatasetSpec::new("list", p, &["id"])).unwrap()
    }

    #[test]
    fn stored_files_round_trip_and_tampering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(StorageKey::from_bytes([5; 32]));
        let d = dataset(dir.path(), "id,risk\na,\"high, very\"\nb,\nc,é\n");
        let (setup, set) = evaluate(&d, &["risk".to_string()], 1000).unwrap();
        let (kp, sp) = (dir.path().join("k"), dir.path().join("s"));
        write_key(&kp, &setup, &storage).unwrap();
        write_set(&sp, &set, &setup.columns, &storage).unwrap();
        let k = read_key(&kp, &storage).unwrap();
        assert_eq!(k.params, set.params);
        assert_eq!(k.columns, vec!["risk".to_string()]);
        assert_eq!(k.key.commitment(), setup.key.commitment());
        let (s, columns) = read_set(&sp, &storage).unwrap();
        assert_eq!(s.records, set.records);
        assert_eq!(columns, setup.columns);
        // Another storage key, a flipped bit, a plain copy, the wrong kind of file: refused.
        assert!(read_set(&sp, &StorageKey::from_bytes([6; 32])).is_err());
        let mut raw = std::fs::read(&sp).unwrap();
        let last = raw.len() - 20;
        raw[last] ^= 1;
        std::fs::write(&sp, &raw).unwrap();
        assert!(read_set(&sp, &storage).is_err());
        let mut plain = SET_MAGIC.to_vec();
        plain.extend_from_slice(&set.params.encode());
        plain.extend_from_slice(&0u32.to_be_bytes());
        plain.extend_from_slice(&set.records);
        std::fs::write(&sp, &plain).unwrap();
        assert!(read_set(&sp, &storage).unwrap_err().to_string().contains("not sealed"));
        assert!(read_set(&kp, &storage).unwrap_err().to_string().contains("not an unbalanced PSI file of this kind"));
        // A set file of protocol version 1 (another OPRF) is refused with what to do.
        let mut old = b"ubalset1".to_vec();
        old.extend_from_slice(&plain[8..]);
        let mut w = sealed_writer(&sp, &storage).unwrap();
        w.write_all(&old).unwrap();
        w.finish().unwrap();
        assert!(read_set(&sp, &storage).unwrap_err().to_string().contains("older unbalanced PSI version"));
        // A set whose records were changed and resealed does not hash to its id.
        let mut records = set.records.clone();
        records[0] ^= 1;
        let forged = OprfSet::new(set.params, records);
        assert!(forged.is_err());
    }
}
