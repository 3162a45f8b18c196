//! `consort psi` with several peers (`--peer p1 --peer p2 ... --multi left|inner`): the flags that
//! name the peers, and the run (`crate::multi`).

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Result;
use clap::Args;
use consort_api::proto::JobStatus;
use consort_engine::multi_join::MultiJoin;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::exit::Exit;
use super::status::status_json;
use crate::multi::{MultiPeer, MultiSpec};

/// The peers and datasets of a `consort psi` job: one peer, or several with `--multi`. In a job
/// file one peer (and its dataset) is a string, several an array.
#[derive(Args, Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PsiJobArgs {
    /// The local node's directory (the node must be running); this node is the requester.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The pinned peer (the responder). Repeat it, with --multi, to join several peers' columns
    /// in one job.
    #[arg(long, required = true)]
    #[serde(serialize_with = "one_or_many")]
    pub peer: Vec<String>,
    /// This node's dataset.
    #[arg(long)]
    pub dataset: String,
    /// The peer's dataset; with several peers, PEER:DATASET for each.
    #[arg(long, required = true)]
    #[serde(serialize_with = "one_or_many")]
    pub peer_dataset: Vec<String>,
}

fn one_or_many<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match v {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

impl PsiJobArgs {
    /// The one peer and its dataset of a two-party job.
    pub fn single(&self) -> Result<(&str, &str)> {
        match (&self.peer[..], &self.peer_dataset[..]) {
            ([peer], [dataset]) => Ok((peer, dataset)),
            ([_], _) => Err(Exit::Usage.wrap(anyhow::anyhow!("give one --peer-dataset for the one --peer"))),
            _ => Err(Exit::Usage.wrap(anyhow::anyhow!(
                "several --peer need --multi left|inner (one table with every peer's --peer-columns)"
            ))),
        }
    }
}

/// `--multi`'s values, listed in `--help`.
pub fn join_parser() -> impl clap::builder::TypedValueParser<Value = MultiJoin> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["left", "inner"])
        .map(|s| if s == "inner" { MultiJoin::Inner } else { MultiJoin::Left })
}

/// The several-peer job the flags describe: `--peer-dataset PEER:DATASET` once per peer,
/// `--peer-columns PEER:COL[,COL...]` (a column without `PEER:` belongs to the peer named last).
pub fn spec(job: &PsiJobArgs, peer_columns: &[String], join: MultiJoin, out: PathBuf) -> Result<MultiSpec> {
    let usage = |m: String| Err(Exit::Usage.wrap(anyhow::anyhow!(m)));
    let mut peers: Vec<MultiPeer> = job
        .peer
        .iter()
        .map(|p| MultiPeer { peer: p.clone(), peer_dataset: String::new(), columns: Vec::new() })
        .collect();
    let prefixed = |v: &str, peers: &[MultiPeer]| -> Option<(usize, String)> {
        let (name, rest) = v.split_once(':')?;
        peers.iter().position(|p| p.peer == name).map(|i| (i, rest.to_string()))
    };
    for d in &job.peer_dataset {
        let Some((i, dataset)) = prefixed(d, &peers) else {
            return usage(format!("--peer-dataset '{d}' does not start with one of the --peer names (PEER:DATASET)"));
        };
        if !peers[i].peer_dataset.is_empty() {
            return usage(format!("peer '{}' has two --peer-dataset", peers[i].peer));
        }
        peers[i].peer_dataset = dataset;
    }
    let mut current = None;
    for c in peer_columns {
        let column = match prefixed(c, &peers) {
            Some((i, column)) => {
                current = Some(i);
                column
            }
            None => c.clone(),
        };
        let Some(i) = current else {
            return usage(format!("--peer-columns '{c}' names no peer (PEER:COLUMN)"));
        };
        peers[i].columns.push(column);
    }
    for p in &peers {
        if let Err(e) = crate::job::psi::parse_params(&serde_json::json!({ "peer_columns": p.columns }).to_string()) {
            return Err(Exit::Usage.wrap(anyhow::anyhow!("peer '{}': {e}", p.peer)));
        }
    }
    let spec = MultiSpec { dataset: job.dataset.clone(), peers, join, out };
    spec.validate().map_err(|e| Exit::Usage.wrap(e))?;
    Ok(spec)
}

/// Runs a several-peer job: a progress bar per peer on stderr (hidden with `--json`), then a
/// summary or one JSON object.
pub async fn run(job: &PsiJobArgs, spec: MultiSpec, json: bool) -> Result<()> {
    let bars = MultiProgress::new();
    if json {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>12} {msg:<24} [{bar:30}] {pos}/{len} ({elapsed})")?
        .progress_chars("=> ");
    let per_peer: Vec<(String, ProgressBar)> = spec
        .peers
        .iter()
        .map(|p| {
            let bar = bars.add(ProgressBar::new(0).with_style(style.clone()).with_prefix(p.peer.clone()));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            (p.peer.clone(), bar)
        })
        .collect();
    let last: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let on_update = |peer: &str, s: &JobStatus| {
        if let Some((_, bar)) = per_peer.iter().find(|(p, _)| p == peer) {
            bar.set_message(if s.stage.is_empty() { s.job_state().to_string() } else { s.stage.clone() });
            bar.set_length(s.total);
            bar.set_position(s.done);
        }
        let mut last = last.lock().expect("not poisoned");
        match last.iter_mut().find(|(p, _)| p == peer) {
            Some(entry) => entry.1 = s.stage.clone(),
            None => last.push((peer.to_string(), s.stage.clone())),
        }
    };
    let result = crate::multi::run(&job.dir, &spec, &on_update).await;
    for (_, bar) in &per_peer {
        bar.finish_and_clear();
    }
    let peers_json = |children: &[crate::multi::Child], matched: Option<&[u64]>| -> Vec<serde_json::Value> {
        children
            .iter()
            .enumerate()
            .map(|(i, c)| {
                serde_json::json!({
                    "peer": c.peer,
                    "matched_rows": matched.map(|m| m[i]),
                    "job": status_json(&c.status),
                })
            })
            .collect()
    };
    match result {
        Ok(outcome) => {
            if json {
                super::print_json(&serde_json::json!({
                    "kind": "psi",
                    "multi": spec.join.name(),
                    "state": "done",
                    "dataset": spec.dataset,
                    "local_rows": outcome.local_rows,
                    "output": spec.out,
                    "output_rows": outcome.merge.rows,
                    "seconds": outcome.seconds,
                    "merge_seconds": outcome.merge_seconds,
                    "peers": peers_json(&outcome.children, Some(&outcome.merge.matched)),
                }))?;
            } else {
                println!(
                    "PSI job with {} peers ({} join) done in {:.2} s: {} rows of '{}' joined",
                    outcome.children.len(),
                    spec.join.name(),
                    outcome.seconds,
                    outcome.local_rows,
                    spec.dataset
                );
                for (c, m) in outcome.children.iter().zip(&outcome.merge.matched) {
                    let s = &c.status;
                    let stages: Vec<String> =
                        s.stages.iter().map(|st| format!("{} {:.2}s", st.name, st.seconds)).collect();
                    println!(
                        "  peer '{}': job {}, {m} rows matched, {} rows at the peer, {:.1} MB on the wire, {:.2} s ({})",
                        c.peer,
                        s.job_id,
                        s.peer_rows,
                        (s.wire_bytes_sent + s.wire_bytes_received) as f64 / 1e6,
                        s.seconds,
                        stages.join(", ")
                    );
                }
                println!(
                    "  wrote {} rows to {} (merge {:.2} s)",
                    outcome.merge.rows,
                    spec.out.display(),
                    outcome.merge_seconds
                );
            }
            Ok(())
        }
        Err(f) => {
            if json {
                super::print_json(&serde_json::json!({
                    "kind": "psi",
                    "multi": spec.join.name(),
                    "state": "failed",
                    "error": format!("{:#}", f.error),
                    "failed_peer": f.failed.as_ref().map(|c| &c.peer),
                    "peers": peers_json(&f.children, None),
                }))?;
            }
            let exit = match &f.failed {
                Some(c) if c.status.refused_by_peer || c.status.job_state() == consort_api::JobState::Refused => {
                    Exit::Refused
                }
                Some(_) => Exit::JobFailed,
                None => super::exit::classify(&f.error),
            };
            Err(exit.wrap(f.error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(peers: &[&str], datasets: &[&str]) -> PsiJobArgs {
        PsiJobArgs {
            dir: "/n".into(),
            peer: peers.iter().map(|s| s.to_string()).collect(),
            dataset: "customers".into(),
            peer_dataset: datasets.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_name_each_peer_s_dataset_and_columns() {
        let a = args(&["p1", "p2"], &["p2:scores", "p1:risk"]);
        let s = spec(&a, &strings(&["p1:risk_tag", "n", "p2:score"]), MultiJoin::Inner, "/o.csv".into()).unwrap();
        assert_eq!(
            s.peers,
            [
                MultiPeer { peer: "p1".into(), peer_dataset: "risk".into(), columns: strings(&["risk_tag", "n"]) },
                MultiPeer { peer: "p2".into(), peer_dataset: "scores".into(), columns: strings(&["score"]) },
            ]
        );
        // A column name may hold ':' when it does not start with a peer's name.
        let s = spec(&a, &strings(&["p1:a:b", "p2:c"]), MultiJoin::Left, "/o.csv".into()).unwrap();
        assert_eq!(s.peers[0].columns, ["a:b"]);
    }

    #[test]
    fn bad_flags_are_usage_errors_naming_what_is_wrong() {
        let two = args(&["p1", "p2"], &["p1:risk", "p2:scores"]);
        let cases: Vec<(PsiJobArgs, Vec<String>, &str)> = vec![
            (
                args(&["p1", "p2"], &["risk", "p2:scores"]),
                strings(&["p1:a", "p2:b"]),
                "does not start with one of the --peer",
            ),
            (args(&["p1", "p2"], &["p1:risk", "p1:x"]), strings(&["p1:a", "p2:b"]), "two --peer-dataset"),
            (args(&["p1", "p2"], &["p1:risk"]), strings(&["p1:a", "p2:b"]), "peer 'p2' has no --peer-dataset"),
            (two.clone(), strings(&["a", "p2:b"]), "names no peer"),
            (two.clone(), strings(&["p1:a"]), "peer 'p2' has no --peer-columns"),
            (two.clone(), strings(&["p1:a", "p1:a", "p2:b"]), "named twice"),
            (args(&["p1", "p1"], &["p1:risk"]), strings(&["p1:a"]), "named twice"),
        ];
        for (a, columns, expect) in cases {
            let e = spec(&a, &columns, MultiJoin::Left, "/o.csv".into()).unwrap_err();
            assert_eq!(super::super::exit::classify(&e), Exit::Usage);
            assert!(format!("{e:#}").contains(expect), "{expect}: {e:#}");
        }
        // Two-party: one peer and one dataset; several peers need --multi.
        assert_eq!(args(&["p1"], &["d"]).single().unwrap(), ("p1", "d"));
        assert!(format!("{:#}", two.single().unwrap_err()).contains("--multi"));
    }

    #[test]
    fn a_job_file_keeps_one_peer_a_string_and_several_an_array() {
        #[derive(serde::Serialize)]
        struct File {
            #[serde(flatten)]
            job: PsiJobArgs,
        }
        let one = toml::to_string(&File { job: args(&["p1"], &["d"]) }).unwrap();
        assert!(one.contains("peer = \"p1\"") && one.contains("peer-dataset = \"d\""), "{one}");
        let two = toml::to_string(&File { job: args(&["p1", "p2"], &["p1:a", "p2:b"]) }).unwrap();
        assert!(two.contains("peer = [\"p1\", \"p2\"]"), "{two}");
    }
}
