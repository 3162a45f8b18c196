//! Payload (labeled) PSI joins on the engine's side: the payload side's chosen columns as one
//! payload per key, and the requester's joined output.
//!
//! The protocol ([`consort_protocols::psi::payload`]) carries one opaque payload per distinct
//! key of the payload side. Here a payload is the key's rows, each with the chosen columns'
//! unescaped values:
//!
//! ```text
//! rows u32 ‖ for each row, for each chosen column: length u32 ‖ bytes     (big-endian)
//! ```
//!
//! A dataset with unique keys has one row per payload. A dataset registered with `--dedup` runs
//! the PSI on its distinct keys, but its payload for a key carries **every** row of that key (in
//! file order), so the requester gets one output row per pair of rows sharing a key.
//!
//! The requester writes its own rows (byte for byte as in its file) with the peer's values
//! appended as CSV fields (written with `csv-core`, quoted where needed), after a header of its
//! own header plus the peer's column names as the node names them; atomically (temp file, then
//! rename), sealed or plain like any output.

use std::collections::HashMap;
use std::path::Path;

use consort_protocols::psi::Payloads;

use crate::csv_rows::RowScanner;
use crate::dataset::{Dataset, RowSource};
use crate::error::DataError;
use crate::storage::AtRest;

/// Most rows of one key a payload may carry (a peer's payload claiming more is malformed).
pub const MAX_ROWS_PER_KEY: usize = 1 << 16;

/// The column positions of `columns` (by header name) in `dataset`.
pub fn column_positions(dataset: &Dataset, columns: &[String]) -> Result<Vec<usize>, DataError> {
    columns
        .iter()
        .map(|c| {
            dataset.columns.iter().position(|h| h.trim() == c.as_str()).ok_or_else(|| {
                DataError::Invalid(format!("dataset '{}' has no column '{}'", dataset.spec.name, shown(c)))
            })
        })
        .collect()
}

/// The payload of each kept row's key: the values of the columns at `at` of every row of that
/// key, in the dataset's order (so payload `i` belongs to item `i` of the PSI). Reads the file
/// once; fails if it changed since it was loaded.
pub(crate) fn collect_payloads(source: &RowSource, at: &[usize]) -> Result<Payloads, DataError> {
    source.check_unchanged()?;
    let n = source.starts.len();
    // Rows of a key beyond its first (only in `dedup` datasets): by file offset, the kept row.
    let repeat_of: HashMap<u64, u32> = source.repeats.iter().copied().collect();
    let mut firsts = Payloads::new();
    let mut extra: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    let mut next = 0usize;
    let mut scanner = RowScanner::open(&source.path)?;
    scanner.next_row()?; // the header
    let mut row_values = Vec::new();
    while let Some(row) = scanner.next_row()? {
        row_values.clear();
        for &c in at {
            if c >= row.len() {
                return Err(source.changed());
            }
            let v = row.field(c);
            row_values.extend_from_slice(&(v.len() as u32).to_be_bytes());
            row_values.extend_from_slice(v);
        }
        if next < n && source.starts[next] == row.start {
            firsts.push(&row_values);
            next += 1;
        } else if let Some(&k) = repeat_of.get(&row.start) {
            extra.entry(k).or_default().push(row_values.clone());
        } else {
            return Err(source.changed());
        }
    }
    source.check_unchanged()?;
    if next != n {
        return Err(source.changed());
    }
    let mut payloads = Payloads::new();
    let mut buf = Vec::new();
    for (k, first) in firsts.iter().enumerate() {
        let more = extra.get(&(k as u32)).map(Vec::as_slice).unwrap_or_default();
        if more.len() + 1 > MAX_ROWS_PER_KEY {
            return Err(DataError::file(
                &source.path,
                format!("more than {MAX_ROWS_PER_KEY} rows of one key for a payload join"),
            ));
        }
        buf.clear();
        buf.extend_from_slice(&((more.len() + 1) as u32).to_be_bytes());
        buf.extend_from_slice(first);
        for m in more {
            buf.extend_from_slice(m);
        }
        payloads.push(&buf);
    }
    Ok(payloads)
}

/// The rows of one payload, each with `columns` values; `None` if it is malformed.
pub fn decode_payload(bytes: &[u8], columns: usize) -> Option<Vec<Vec<&[u8]>>> {
    let take_u32 = |b: &mut &[u8]| -> Option<usize> {
        let (head, rest) = b.split_at_checked(4)?;
        *b = rest;
        Some(u32::from_be_bytes(head.try_into().ok()?) as usize)
    };
    let mut b = bytes;
    let rows = take_u32(&mut b)?;
    if rows == 0 || rows > MAX_ROWS_PER_KEY || rows.checked_mul(columns.checked_mul(4)?)? > b.len() {
        return None;
    }
    let mut out = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut row = Vec::with_capacity(columns);
        for _ in 0..columns {
            let len = take_u32(&mut b)?;
            let (v, rest) = b.split_at_checked(len)?;
            row.push(v);
            b = rest;
        }
        out.push(row);
    }
    b.is_empty().then_some(out)
}

/// Appends `,v1,v2,…` to `out`: the values as CSV fields, quoted where needed (csv-core).
pub fn append_fields(out: &mut Vec<u8>, values: &[&[u8]]) {
    out.push(b',');
    write_fields(out, values);
}

/// Appends `v1,v2,…` to `out`: the values as CSV fields, quoted where needed (csv-core).
pub(crate) fn write_fields(out: &mut Vec<u8>, values: &[&[u8]]) {
    let mut w = csv_core::Writer::new();
    let mut buf = [0u8; 4096];
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            let (_, n) = w.delimiter(&mut buf);
            out.extend_from_slice(&buf[..n]);
        }
        let mut input = *v;
        loop {
            let (result, nin, nout) = w.field(input, &mut buf);
            out.extend_from_slice(&buf[..nout]);
            input = &input[nin..];
            if result == csv_core::WriteResult::InputEmpty {
                break;
            }
        }
    }
    loop {
        let (result, n) = w.finish(&mut buf);
        out.extend_from_slice(&buf[..n]);
        if result == csv_core::WriteResult::InputEmpty {
            break;
        }
    }
}

/// Writes the requester's joined output: for each entry of `order` (own row indices in the
/// joint order) and each row of its payload, the own row followed by the peer's values; the
/// header is the own header followed by `peer_header`. Returns the rows written. The file work
/// runs on rayon.
pub async fn write_joined(
    dataset: &Dataset,
    order: &[u32],
    payloads: &Payloads,
    peer_header: &[String],
    out: &Path,
    at_rest: &AtRest,
) -> Result<u64, DataError> {
    write_joined_rows(dataset, JoinedRows { order, payloads, peer_header, row_index: false }, out, at_rest).await
}

/// What a joined output holds: the own rows `order` selects, each key's payload rows, the
/// peer's column names, and whether a `#row` column (the own row's index, between the own
/// fields and the peer's) is written for a several-peer merge ([`crate::multi_join`]).
pub struct JoinedRows<'a> {
    pub order: &'a [u32],
    pub payloads: &'a Payloads,
    pub peer_header: &'a [String],
    pub row_index: bool,
}

/// [`write_joined`] with the choices of [`JoinedRows`].
pub async fn write_joined_rows(
    dataset: &Dataset,
    rows: JoinedRows<'_>,
    out: &Path,
    at_rest: &AtRest,
) -> Result<u64, DataError> {
    let plan = joined_plan(dataset, &rows)?;
    let (out, at_rest) = (out.to_path_buf(), at_rest.clone());
    consort_protocols::cpu::run(move || plan.write(&out, &at_rest)).await
}

/// Name of the own-row index column of a joined output written for a merge.
pub const ROW_INDEX_COLUMN: &str = "#row";

pub(crate) fn joined_plan(dataset: &Dataset, j: &JoinedRows<'_>) -> Result<crate::dataset::OutputPlan, DataError> {
    let (order, payloads, peer_header) = (j.order, j.payloads, j.peer_header);
    if payloads.len() != order.len() {
        return Err(DataError::Invalid("the peer sent a payload count that does not match the intersection".into()));
    }
    let mut rows = Vec::with_capacity(order.len());
    let mut suffixes = Vec::with_capacity(order.len());
    for (&i, payload) in order.iter().zip(payloads.iter()) {
        let group = decode_payload(payload, peer_header.len())
            .ok_or_else(|| DataError::Invalid("the peer sent a malformed payload for a matched row".into()))?;
        for values in group {
            let mut s = Vec::new();
            if j.row_index {
                s.push(b',');
                s.extend_from_slice(i.to_string().as_bytes());
            }
            append_fields(&mut s, &values);
            rows.push(i);
            suffixes.push(s);
        }
    }
    let mut names: Vec<&[u8]> = peer_header.iter().map(|h| h.as_bytes()).collect();
    if j.row_index {
        names.insert(0, ROW_INDEX_COLUMN.as_bytes());
    }
    let mut header_suffix = Vec::new();
    append_fields(&mut header_suffix, &names);
    Ok(dataset.output_plan(&rows)?.with_suffixes(header_suffix, suffixes))
}

/// A column name as shown in messages (bounded).
fn shown(name: &str) -> String {
    name.chars().take(crate::error::MAX_NAME_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use consort_protocols::{Reveal, Role, memory_pair};

    use super::*;
    use crate::dataset::DatasetSpec;
    use crate::psi::{JobLimits, PayloadJob, PsiJob, PsiProtocol, run_psi};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Payload joins run over both protocols: every case below runs over each.
    const PROTOCOLS: [PsiProtocol; 2] = [PsiProtocol::Rr22, PsiProtocol::Ecdh];

    fn job(protocol: PsiProtocol, role: Role, reveal: Reveal, output: PathBuf, payload: PayloadJob) -> PsiJob {
        PsiJob {
            protocol,
            role,
            reveal,
            output: Some(output),
            at_rest: AtRest::Plain,
            progress: None,
            proofs: false,
            limits: JobLimits::default(),
            payload,
            join: crate::join::JoinType::Inner,
            columns: crate::psi::OutputColumns::Rows,
        }
    }

    fn records(text: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(false).from_reader(text);
        r.byte_records().map(|rec| rec.unwrap().iter().map(<[u8]>::to_vec).collect()).collect()
    }

    /// The plaintext join: each requester row (in any order; with `own_dedup` only the first row
    /// of each key) with each payload-side row of the same key, as (own fields ++ peer values);
    /// sorted.
    fn plaintext_join(own: &[u8], peer: &[u8], peer_columns: &[&str], own_dedup: bool) -> Vec<Vec<Vec<u8>>> {
        let (own, peer) = (records(own), records(peer));
        let at: Vec<usize> =
            peer_columns.iter().map(|c| peer[0].iter().position(|h| h == c.as_bytes()).unwrap()).collect();
        let id = |t: &[Vec<Vec<u8>>]| t[0].iter().position(|h| h == b"id").unwrap();
        let (own_id, peer_id) = (id(&own), id(&peer));
        let mut by_key: BTreeMap<Vec<u8>, Vec<Vec<Vec<u8>>>> = BTreeMap::new();
        for row in &peer[1..] {
            by_key.entry(row[peer_id].clone()).or_default().push(at.iter().map(|&c| row[c].clone()).collect());
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for row in &own[1..] {
            if own_dedup && !seen.insert(row[own_id].clone()) {
                continue;
            }
            for values in by_key.get(&row[own_id]).into_iter().flatten() {
                out.push(row.iter().cloned().chain(values.iter().cloned()).collect());
            }
        }
        out.sort();
        out
    }

    /// Runs a payload join of `own` (requester) against `peer` (responder, `dedup` as given) and
    /// checks the requester's table against the plaintext join.
    async fn check_join(own: &str, peer: &str, dedup: bool, reveal: Reveal) -> Vec<Vec<Vec<u8>>> {
        let mut first = None;
        for protocol in PROTOCOLS {
            let got = check_join_over(protocol, own, peer, (false, dedup), reveal).await;
            assert_eq!(*first.get_or_insert_with(|| got.clone()), got, "{protocol:?}: both protocols join alike");
        }
        first.unwrap()
    }

    /// [`check_join`] over one protocol, with `dedup` = (requester's, responder's).
    async fn check_join_over(
        protocol: PsiProtocol,
        own: &str,
        peer: &str,
        (own_dedup, dedup): (bool, bool),
        reveal: Reveal,
    ) -> Vec<Vec<Vec<u8>>> {
        let dir = tempfile::tempdir().unwrap();
        let mut spec_a = DatasetSpec::new("a", write(dir.path(), "a.csv", own), &["id"]);
        spec_a.dedup = own_dedup;
        let mut spec_b = DatasetSpec::new("b", write(dir.path(), "b.csv", peer), &["id"]);
        spec_b.dedup = dedup;
        let (a, b) = (Dataset::load(&spec_a).unwrap(), Dataset::load(&spec_b).unwrap());
        let (out_a, out_b) = (dir.path().join("out/a.csv"), dir.path().join("out/b.csv"));
        let columns = ["risk_tag", "score"];
        let receive = PayloadJob::Receive {
            header: columns.iter().map(|c| format!("peer.{c}")).collect(),
            max_bytes: 1 << 16,
            row_index: false,
        };
        let send = PayloadJob::Send { columns: columns.iter().map(|c| c.to_string()).collect() };
        let (ca, cb) = memory_pair(8);
        let (job_a, job_b) = (
            job(protocol, Role::Requester, reveal, out_a.clone(), receive),
            job(protocol, Role::Responder, reveal, out_b.clone(), send),
        );
        let (ra, rb) = tokio::join!(run_psi(&ca, &a, &job_a), run_psi(&cb, &b, &job_b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let text = std::fs::read(&out_a).unwrap();
        let mut got = records(&text);
        let header = got.remove(0);
        let own_header = &records(own.as_bytes())[0];
        assert_eq!(header[..own_header.len()], own_header[..]);
        assert_eq!(header[own_header.len()..], [b"peer.risk_tag".to_vec(), b"peer.score".to_vec()]);
        assert_eq!(ra.output_rows, got.len() as u64);
        got.sort();
        let expected = plaintext_join(own.as_bytes(), peer.as_bytes(), &columns, own_dedup);
        assert_eq!(got, expected, "{protocol:?}: the joined table differs from the plaintext join");
        match reveal {
            Reveal::Both => assert_eq!(rb.intersection, ra.intersection),
            Reveal::RequesterOnly => assert!(rb.intersection.is_none() && !out_b.exists()),
        }
        got
    }

    const OWN: &str = "id,name,city\nk1,Ann,\"Paris, FR\"\nk2,\"Bo \"\"B\"\"\",\"two\nlines\"\nk3,Cé,東京\nk9,x,\n";
    const PEER: &str = "score,id,risk_tag\n1,k1,\"high, very\"\n,k2,\"say \"\"hi\"\"\"\n3.5,k3,Zürich\n4,k4,low\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn payload_joins_match_a_plaintext_join_with_awkward_values() {
        for reveal in [Reveal::RequesterOnly, Reveal::Both] {
            let got = check_join(OWN, PEER, false, reveal).await;
            assert_eq!(got.len(), 3);
            // CRLF files, and a last line without a terminator on both sides.
            let crlf = |s: &str| s.replace('\n', "\r\n").trim_end().to_string();
            assert_eq!(check_join(&crlf(OWN), &crlf(PEER), false, reveal).await.len(), 3);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edge_cases_match_a_plaintext_join() {
        let reveal = Reveal::RequesterOnly;
        let peer_header = "id,risk_tag,score\n";
        let own_header = "id,v\n";
        let rows = |prefix: &str, r: std::ops::Range<u32>, own: bool| -> String {
            r.map(|i| if own { format!("{prefix}{i},o{i}\n") } else { format!("{prefix}{i},t{i},{i}\n") }).collect()
        };
        let cases = [
            (String::new(), String::new(), 0),
            (rows("k", 0..20, true), String::new(), 0),
            (String::new(), rows("k", 0..20, false), 0),
            (rows("k", 0..1, true), rows("k", 0..1, false), 1),
            (rows("k", 0..1, true), rows("k", 1..2, false), 0),
            (rows("k", 0..200, true), rows("j", 0..200, false), 0),
            (rows("k", 0..200, true), rows("k", 0..200, false), 200),
            (rows("k", 0..300, true), rows("k", 100..500, false), 200),
        ];
        for (own, peer, expect) in cases {
            let got = check_join(&format!("{own_header}{own}"), &format!("{peer_header}{peer}"), false, reveal).await;
            assert_eq!(got.len(), expect);
        }
    }

    /// A key on several payload-side rows (a `dedup` dataset): one output row per pair.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicate_keys_on_the_payload_side_give_one_row_per_pair() {
        let peer = "id,risk_tag,score\nk1,a,1\nk2,b,2\nk1,c,3\nk3,d,\nk1,\"e,f\",5\nk2,g,6\n";
        let own = "id,v\nk1,x\nk2,y\nk4,z\n";
        for reveal in [Reveal::RequesterOnly, Reveal::Both] {
            let got = check_join(own, peer, true, reveal).await;
            assert_eq!(got.len(), 5, "3 rows of k1 and 2 of k2");
        }
        // Duplicates on both sides: the requester's `dedup` keeps its first row of each key (as
        // in a plain PSI), joined with every payload-side row of that key.
        let own = "id,v\nk1,x\nk2,y\nk1,x2\nk4,z\nk2,y2\n";
        for protocol in PROTOCOLS {
            for reveal in [Reveal::RequesterOnly, Reveal::Both] {
                let got = check_join_over(protocol, own, peer, (true, true), reveal).await;
                assert_eq!(got.len(), 5, "{protocol:?}: k1 (x) × 3 and k2 (y) × 2");
            }
        }
    }

    /// A column the payload side does not have fails there before any protocol message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_column_fails_before_any_message() {
        for protocol in PROTOCOLS {
            let dir = tempfile::tempdir().unwrap();
            let spec = DatasetSpec::new("b", write(dir.path(), "b.csv", PEER), &["id"]);
            let b = Dataset::load(&spec).unwrap();
            let (ca, cb) = memory_pair(8);
            let send = PayloadJob::Send { columns: vec!["risk_tag".into(), "secret_col".into()] };
            let job_b = job(protocol, Role::Responder, Reveal::RequesterOnly, dir.path().join("o.csv"), send);
            let err = run_psi(&cb, &b, &job_b).await.unwrap_err().to_string();
            assert!(err.contains("no column 'secret_col'"), "{err}");
            drop(cb);
            assert!(consort_protocols::Channel::recv(&ca).await.is_err(), "no frame was sent");
        }
    }

    #[test]
    fn payloads_round_trip_and_malformed_ones_are_refused() {
        let rows: Vec<Vec<&[u8]>> = vec![vec![b"a,b", b""], vec!["é\"x\"\n".as_bytes(), b"2"]];
        let mut bytes = (rows.len() as u32).to_be_bytes().to_vec();
        for r in &rows {
            for v in r {
                bytes.extend_from_slice(&(v.len() as u32).to_be_bytes());
                bytes.extend_from_slice(v);
            }
        }
        assert_eq!(decode_payload(&bytes, 2), Some(rows));
        assert_eq!(decode_payload(&bytes, 3), None, "wrong column count");
        assert_eq!(decode_payload(&bytes[..bytes.len() - 1], 2), None, "truncated");
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_payload(&longer, 2), None, "trailing bytes");
        assert_eq!(decode_payload(&[0, 0, 0, 0], 1), None, "no rows");
        assert_eq!(decode_payload(&[0xff, 0xff, 0xff, 0xff], 1), None, "a huge row count");
        assert_eq!(decode_payload(&[], 1), None);
    }

    #[test]
    fn appended_fields_read_back_with_the_csv_crate() {
        let values: Vec<&[u8]> = vec![b"plain", b"", b"a,b", b"say \"hi\"", "Zürich\n東京".as_bytes(), b" sp "];
        let mut line = b"k1".to_vec();
        append_fields(&mut line, &values);
        line.push(b'\n');
        let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(&line[..]);
        let rec = r.byte_records().next().unwrap().unwrap();
        let got: Vec<&[u8]> = rec.iter().collect();
        assert_eq!(got[0], b"k1");
        assert_eq!(&got[1..], &values[..]);
    }
}
