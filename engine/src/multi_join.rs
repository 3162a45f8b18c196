//! Several-peer payload joins, the requester's merge: one table from the pairwise joined
//! outputs of one dataset with several peers (`consort psi --multi`).
//!
//! Each pairwise job (an RR22 payload join, `--reveal requester-only`) writes its joined output
//! with the own row's index (`#row`, kept rows in file order) between the own fields and the
//! peer's values ([`crate::payload::JoinedRows::row_index`]). The merge reads those files (sealed
//! or plain), groups each peer's value rows by own row, and writes, for the own rows in file
//! order:
//!
//! - `left`: every own row; a peer without a match contributes empty fields;
//! - `inner`: only the own rows every peer matched.
//!
//! **Product rule.** An own row appears `Π_p max(1, m_p)` times (left) or `Π_p m_p` times
//! (inner), where `m_p` is the number of peer `p`'s rows of that key (more than one only on a
//! peer whose dataset keeps duplicate keys, `--dedup`): one output row per combination, peers in
//! the order given, each peer's rows in its file order. The header is the own header followed
//! by each peer's columns, named `PEER.COLUMN`. The output is written atomically (temp file,
//! then rename), sealed or plain as [`AtRest`] says; nothing is written on any error.
//!
//! The merge is local: no message crosses, and each peer learned only what its pairwise job
//! told it (the requester's set size; `docs/security.md`).

use std::path::{Path, PathBuf};

use crate::csv_rows::RowScanner;
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::payload::{ROW_INDEX_COLUMN, append_fields};
use crate::storage::AtRest;

/// How the pairwise results combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MultiJoin {
    /// Every own row; empty peer columns where a peer has no match.
    Left,
    /// Only the own rows every peer matched.
    Inner,
}

impl MultiJoin {
    pub fn name(self) -> &'static str {
        match self {
            MultiJoin::Left => "left",
            MultiJoin::Inner => "inner",
        }
    }
}

/// One peer's pairwise joined output (written with the `#row` column).
#[derive(Debug, Clone)]
pub struct Part {
    /// The peer's name on this node (the output's column prefix).
    pub peer: String,
    /// The peer's columns, in the order the pairwise job asked for them.
    pub columns: Vec<String>,
    /// The pairwise job's output file.
    pub file: PathBuf,
}

/// Most rows one merged table may have (the product rule can multiply rows).
pub const MAX_OUTPUT_ROWS: u64 = u32::MAX as u64;

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// Rows of the merged table (header not counted).
    pub rows: u64,
    /// Per part: own rows that peer matched.
    pub matched: Vec<u64>,
}

/// One peer's value rows grouped by own row: those of own row `i` are
/// `values[starts[i]..starts[i + 1]]`, each already encoded as `,v1,v2,…`.
struct Grouped {
    starts: Vec<u32>,
    values: Vec<Vec<u8>>,
}

impl Grouped {
    fn of(&self, i: usize) -> &[Vec<u8>] {
        &self.values[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

fn malformed(file: &Path, line: u64, what: &str) -> DataError {
    DataError::Row {
        path: file.to_path_buf(),
        line,
        column: None,
        message: format!("not a pairwise join output: {what}"),
    }
}

/// Reads one part. The own fields are not parsed: the `#row` index and the peer's values are
/// the last `1 + columns` fields of each record.
fn read_part(dataset: &Dataset, part: &Part, at_rest: &AtRest) -> Result<Grouped, DataError> {
    let file = &part.file;
    let n = dataset.len();
    let tail = 1 + part.columns.len();
    let mut rows = RowScanner::open_data(file, at_rest.key())?;
    match rows.next_row()? {
        None => return Err(malformed(file, 1, "no header")),
        Some(header) if header.len() < tail || header.field(header.len() - tail) != ROW_INDEX_COLUMN.as_bytes() => {
            return Err(malformed(file, 1, "no row index column"));
        }
        Some(_) => {}
    }
    let mut pairs: Vec<(u32, Vec<u8>)> = Vec::new();
    while let Some(row) = rows.next_row()? {
        if row.len() < tail {
            return Err(malformed(file, row.line, "too few fields"));
        }
        let at = row.len() - tail;
        let index = std::str::from_utf8(row.field(at))
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&i| (i as usize) < n)
            .ok_or_else(|| malformed(file, row.line, "a row index out of range"))?;
        let values: Vec<&[u8]> = (at + 1..row.len()).map(|c| row.field(c)).collect();
        let mut encoded = Vec::with_capacity(values.iter().map(|v| v.len() + 1).sum());
        append_fields(&mut encoded, &values);
        pairs.push((index, encoded));
    }
    if pairs.len() > u32::MAX as usize {
        return Err(malformed(file, 0, "more than 2^32 - 1 rows"));
    }
    // Stable: the rows of one key keep the order the pairwise job wrote them in.
    pairs.sort_by_key(|&(i, _)| i);
    let mut starts = vec![0u32; n + 1];
    for &(i, _) in &pairs {
        starts[i as usize + 1] += 1;
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    Ok(Grouped { starts, values: pairs.into_iter().map(|(_, v)| v).collect() })
}

/// Merges the pairwise outputs `parts` of `dataset` into one table at `out` (see the module
/// docs). Blocking file work: run it off the async runtime.
pub fn merge(
    dataset: &Dataset,
    parts: &[Part],
    join: MultiJoin,
    out: &Path,
    at_rest: &AtRest,
) -> Result<MergeReport, DataError> {
    if parts.is_empty() {
        return Err(DataError::Invalid("a several-peer join needs at least one peer".into()));
    }
    let grouped = parts.iter().map(|p| read_part(dataset, p, at_rest)).collect::<Result<Vec<_>, _>>()?;
    let empty: Vec<Vec<u8>> = parts
        .iter()
        .map(|p| {
            let mut e = Vec::new();
            append_fields(&mut e, &vec![&b""[..]; p.columns.len()]);
            e
        })
        .collect();
    let mut matched = vec![0u64; parts.len()];
    let (mut rows, mut suffixes) = (Vec::new(), Vec::new());
    let mut choice = vec![0usize; parts.len()];
    for i in 0..dataset.len() {
        let groups: Vec<&[Vec<u8>]> = grouped.iter().map(|g| g.of(i)).collect();
        for (m, g) in matched.iter_mut().zip(&groups) {
            *m += u64::from(!g.is_empty());
        }
        if join == MultiJoin::Inner && groups.iter().any(|g| g.is_empty()) {
            continue;
        }
        let radix: Vec<u64> = groups.iter().map(|g| g.len().max(1) as u64).collect();
        let count = radix.iter().try_fold(1u64, |acc, &r| acc.checked_mul(r));
        let count = match count {
            Some(c) if rows.len() as u64 + c <= MAX_OUTPUT_ROWS => c,
            _ => {
                return Err(DataError::Invalid(format!(
                    "the merged table would have more than {MAX_OUTPUT_ROWS} rows (duplicate keys on several peers multiply rows)"
                )));
            }
        };
        // Every combination of one row per peer (an unmatched peer: its empty fields), the
        // last peer varying fastest.
        for k in 0..count {
            let mut rest = k;
            for p in (0..groups.len()).rev() {
                choice[p] = (rest % radix[p]) as usize;
                rest /= radix[p];
            }
            let mut suffix = Vec::new();
            for (p, g) in groups.iter().enumerate() {
                suffix.extend_from_slice(if g.is_empty() { &empty[p] } else { &g[choice[p]] });
            }
            rows.push(i as u32);
            suffixes.push(suffix);
        }
    }
    let names: Vec<String> =
        parts.iter().flat_map(|p| p.columns.iter().map(move |c| format!("{}.{c}", p.peer))).collect();
    let names: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
    let mut header_suffix = Vec::new();
    append_fields(&mut header_suffix, &names);
    let written = dataset.output_plan(&rows)?.with_suffixes(header_suffix, suffixes).write(out, at_rest)?;
    Ok(MergeReport { rows: written, matched })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use consort_protocols::{Reveal, Role, memory_pair};

    use super::*;
    use crate::dataset::DatasetSpec;
    use crate::psi::{JobLimits, PayloadJob, PsiJob, PsiProtocol, run_psi};

    type Table = Vec<Vec<Vec<u8>>>;

    fn records(text: &[u8]) -> Table {
        let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(text);
        r.byte_records().map(|rec| rec.unwrap().iter().map(<[u8]>::to_vec).collect()).collect()
    }

    fn job(role: Role, output: PathBuf, payload: PayloadJob) -> PsiJob {
        PsiJob {
            protocol: PsiProtocol::Rr22,
            role,
            reveal: Reveal::RequesterOnly,
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

    /// The plaintext several-peer join: own rows in file order, each peer's rows of the key in
    /// file order, combinations with the last peer fastest.
    fn plaintext(own: &str, peers: &[(&str, &str, Vec<&str>)], join: MultiJoin) -> Table {
        let own = records(own.as_bytes());
        let own_id = own[0].iter().position(|h| h == b"id").unwrap();
        let mut header = own[0].clone();
        let mut by_peer = Vec::new();
        for (name, text, columns) in peers {
            let t = records(text.as_bytes());
            let id = t[0].iter().position(|h| h == b"id").unwrap();
            let at: Vec<usize> = columns.iter().map(|c| t[0].iter().position(|h| h == c.as_bytes()).unwrap()).collect();
            let mut map: BTreeMap<Vec<u8>, Vec<Vec<Vec<u8>>>> = BTreeMap::new();
            for row in &t[1..] {
                map.entry(row[id].clone()).or_default().push(at.iter().map(|&c| row[c].clone()).collect());
            }
            header.extend(columns.iter().map(|c| format!("{name}.{c}").into_bytes()));
            by_peer.push((map, columns.len()));
        }
        let mut out = vec![header];
        for row in &own[1..] {
            let mut partial: Vec<Vec<Vec<u8>>> = vec![row.clone()];
            for (map, width) in &by_peer {
                let found = map.get(&row[own_id]).cloned().unwrap_or_default();
                if found.is_empty() && join == MultiJoin::Inner {
                    partial.clear();
                }
                let choices = if found.is_empty() { vec![vec![Vec::new(); *width]] } else { found };
                partial = partial
                    .iter()
                    .flat_map(|p| choices.iter().map(move |c| p.iter().chain(c).cloned().collect()))
                    .collect();
            }
            out.extend(partial);
        }
        out
    }

    /// Runs one pairwise payload join per peer (RR22, requester-only, with the row index) and
    /// merges them; returns the merged table.
    async fn multi(own: &str, peers: &[(&str, &str, Vec<&str>)], join: MultiJoin) -> Table {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("own.csv"), own).unwrap();
        let a = Dataset::load(&DatasetSpec::new("own", dir.path().join("own.csv"), &["id"])).unwrap();
        let mut parts = Vec::new();
        for (name, text, columns) in peers {
            let file = dir.path().join(format!("{name}.csv"));
            std::fs::write(&file, text).unwrap();
            let mut spec = DatasetSpec::new(*name, file, &["id"]);
            spec.dedup = true;
            let b = Dataset::load(&spec).unwrap();
            let out = dir.path().join(format!("{name}-out.csv"));
            let receive = PayloadJob::Receive {
                header: columns.iter().map(|c| format!("{name}.{c}")).collect(),
                max_bytes: 1 << 16,
                row_index: true,
            };
            let send = PayloadJob::Send { columns: columns.iter().map(|c| c.to_string()).collect() };
            let (ca, cb) = memory_pair(8);
            let (ja, jb) =
                (job(Role::Requester, out.clone(), receive), job(Role::Responder, dir.path().join("unused"), send));
            let (ra, rb) = tokio::join!(run_psi(&ca, &a, &ja), run_psi(&cb, &b, &jb));
            ra.unwrap();
            rb.unwrap();
            parts.push(Part {
                peer: name.to_string(),
                columns: columns.iter().map(|c| c.to_string()).collect(),
                file: out,
            });
        }
        let out = dir.path().join("merged.csv");
        let report = merge(&a, &parts, join, &out, &AtRest::Plain).unwrap();
        let table = records(&std::fs::read(&out).unwrap());
        assert_eq!(report.rows as usize, table.len() - 1);
        table
    }

    async fn check(own: &str, peers: &[(&str, &str, Vec<&str>)]) -> [usize; 2] {
        let mut sizes = [0; 2];
        for (k, join) in [MultiJoin::Left, MultiJoin::Inner].into_iter().enumerate() {
            let got = multi(own, peers, join).await;
            assert_eq!(got, plaintext(own, peers, join), "{join:?} join differs from the plaintext join");
            sizes[k] = got.len() - 1;
        }
        sizes
    }

    const OWN: &str = "id,name\nk1,Ann\nk2,\"Bo, \"\"B\"\"\"\nk3,Cé\nk4,x\nk5,y\n";
    const RISK: &str = "id,risk_tag\nk1,\"high, very\"\nk3,東京\nk4,\nk9,low\n";
    const SCORE: &str = "score,id\n0.5,k1\n\"say \"\"hi\"\"\",k2\n0.7,k4\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_peers_match_the_plaintext_join_with_awkward_values() {
        let peers = [("p1", RISK, vec!["risk_tag"]), ("p2", SCORE, vec!["score"])];
        assert_eq!(check(OWN, &peers).await, [5, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicates_on_peers_follow_the_product_rule() {
        let risk = "id,risk_tag,n\nk1,a,1\nk2,b,2\nk1,c,3\nk1,d,4\n";
        let score = "id,score\nk1,s1\nk1,s2\nk2,s3\n";
        let peers = [("p1", risk, vec!["risk_tag", "n"]), ("p2", score, vec!["score"])];
        // k1: 3 x 2 rows, k2: 1 x 1, k3..k5: one row each (left) or none (inner).
        assert_eq!(check(OWN, &peers).await, [6 + 1 + 3, 7]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edge_cases_match_the_plaintext_join() {
        let none = "id,score\nz1,1\nz2,2\n";
        let peers = [("p1", RISK, vec!["risk_tag"]), ("p2", none, vec!["score"])];
        assert_eq!(check(OWN, &peers).await, [5, 0], "a peer without matches");
        let peers = [("p1", RISK, vec!["risk_tag"]), ("p2", SCORE, vec!["score"])];
        assert_eq!(check("id,name\n", &peers).await, [0, 0], "no own rows");
        let empty_peer = "id,score\n";
        let peers = [("p1", empty_peer, vec!["score"]), ("p2", SCORE, vec!["score"])];
        assert_eq!(check(OWN, &peers).await, [5, 0], "an empty peer");
        let same = "id,v\nk1,1\nk2,2\nk3,3\nk4,4\nk5,5\n";
        let peers = [("p1", same, vec!["v"]), ("p2", same, vec!["v"]), ("p3", same, vec!["v"])];
        assert_eq!(check(OWN, &peers).await, [5, 5], "identical sets, three peers");
        let peers = [("p1", "id,v\nk2,1\n", vec!["v"])];
        assert_eq!(check("id,name\nk2,b\n", &peers).await, [1, 1], "one item, one peer");
    }

    #[test]
    fn a_damaged_pairwise_output_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("own.csv"), OWN).unwrap();
        let a = Dataset::load(&DatasetSpec::new("own", dir.path().join("own.csv"), &["id"])).unwrap();
        let out = dir.path().join("merged.csv");
        for (text, what) in [
            ("", "no header"),
            ("id,name,p.v\nk1,Ann,1\n", "no row index column"),
            ("id,name,#row,p.v\nk1,Ann,9,1\n", "a row index out of range"),
            ("id,name,#row,p.v\nk1,Ann,x,1\n", "a row index out of range"),
            ("id,name,#row,p.v\n1\n", "too few fields"),
        ] {
            std::fs::write(dir.path().join("part.csv"), text).unwrap();
            let parts = [Part { peer: "p".into(), columns: vec!["v".into()], file: dir.path().join("part.csv") }];
            let e = merge(&a, &parts, MultiJoin::Left, &out, &AtRest::Plain).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
            assert!(!out.exists());
        }
    }
}
