//! The `bin` job on one party (issue 14 items 1–2): align (the LR jobs' PSI, revealed to both),
//! read the features with missing values kept (empty cells; their own bin 0), bin locally, run
//! the secure binning protocol ([`consort_protocols::mpc::binning`]: what each party learns is
//! there), then at A: WOE and IV of both parties' features, selection, and A's bins file; at B
//! its own bins file ([`file`]).
//!
//! - **Bins**: `--method quantile` (default): quantile edges of the party's own aligned values,
//!   at most `bins` value bins (fewer for features with fewer distinct values; a constant feature
//!   has one) plus bin 0 for missing values. `--method tree`: `fine_bins` quantile bins, then
//!   ChiMerge of adjacent bins on the event counts down to `bins` — A merges its own features in
//!   the clear and B's from the fine counts the protocol gives it, and tells B the merges.
//! - **WOE/IV**: [`consort_protocols::mpc::binning::woe_iv`] (WOE = ln(share of non-events /
//!   share of events), ½ added to both counts of every non-empty bin; an empty bin has WOE 0).
//! - **Selection** (A; [`select`]): a feature with IV below `min_iv` is dropped; then, with
//!   `max_corr`, features in descending IV order are kept unless one already kept *of the same
//!   party* correlates with it above `max_corr` in absolute value. A's pairs: Pearson correlation
//!   of the WOE-encoded rows, computed by A. B's pairs: Pearson correlation of B's bin indices
//!   (missing = 0), computed by B, which sends A the pairs above the bound (A learns those pairs
//!   and their correlation: documented in the protocol). Cross-party pairs are not measured:
//!   doing it exactly costs one HE product per (row, A feature, B feature) — 30× the whole
//!   binning at 10⁵ × (30 + 300) — so neither party learns them and both features are kept;
//!   the bins file says so.
use std::collections::HashMap;
use std::path::PathBuf;

use consort_protocols::he::KeySize;
use consort_protocols::mpc::Party;
use consort_protocols::mpc::binning::{
    self, BinConfig, BinCounts, BinInput, BinMethod, FeatureBins, Woe, chi_merge, value_correlations, woe_iv,
};
use consort_protocols::mpc::secureboost::BinnedFeatures;
use consort_protocols::psi::ecdh::EcdhEvidence;
use consort_protocols::{Channel, ProgressFn, Role, cpu};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::Dataset;
use crate::error::DataError;
use crate::lr::align::align;
use crate::lr::{ColumnChoice, LrError, Missing, Stages, check_label_side, load_features_as, party_of};
use crate::psi::{JobLimits, PsiProtocol};
use crate::storage::AtRest;

mod compare;
pub mod file;

pub use compare::check_against_plaintext;
pub use file::{BINS_FORMAT, Bin, BinnedFeature, BinsFile, Selection, ranges};

/// How bins are chosen (the CLI's `--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Quantile,
    Tree,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Quantile => "quantile",
            Method::Tree => "tree",
        }
    }
}

/// A bin job's parameters as they travel in the job request, validated by both parties with
/// [`BinParamsWire::config`] before anything is logged or allocated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinParamsWire {
    pub method: Method,
    /// Target value bins per feature (1..=128; the missing-value bin comes on top).
    pub bins: u32,
    /// `tree`: value bins of the first, fine pass (bins..=128).
    pub fine_bins: u32,
    /// Drop features whose IV is below this (A's selection).
    pub min_iv: Option<f64>,
    /// Drop a feature correlating above this with a kept one of higher IV (same party).
    pub max_corr: Option<f64>,
    /// Bits of A's OU key: 3072 (≈ 128-bit security, default) or 2048 (≈ 112-bit).
    pub key_bits: u32,
}

impl Default for BinParamsWire {
    fn default() -> Self {
        Self { method: Method::Quantile, bins: 10, fine_bins: 32, min_iv: None, max_corr: None, key_bits: 3072 }
    }
}

impl BinParamsWire {
    pub fn config(&self) -> Result<BinConfig, DataError> {
        let c = BinConfig {
            method: match self.method {
                Method::Quantile => BinMethod::Quantile,
                Method::Tree => BinMethod::Tree,
            },
            bins: self.bins,
            fine_bins: self.fine_bins,
            max_corr: self.max_corr,
            min_key_bits: 2048,
        };
        c.validate().map_err(|e| DataError::Invalid(e.to_string()))?;
        if self.min_iv.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(DataError::Invalid("min-iv must be a finite number ≥ 0".into()));
        }
        self.key_size()?;
        Ok(c)
    }

    fn key_size(&self) -> Result<KeySize, DataError> {
        match self.key_bits {
            2048 => Ok(KeySize::Bits2048),
            3072 => Ok(KeySize::Bits3072),
            _ => Err(DataError::Invalid("key bits must be 2048 or 3072".into())),
        }
    }
}

/// One party's side of a bin job.
#[derive(Clone)]
pub struct BinJob {
    /// Requester = party A (labels), responder = party B.
    pub role: Role,
    pub psi: PsiProtocol,
    pub columns: ColumnChoice,
    pub params: BinParamsWire,
    /// This party's bins file.
    pub out: PathBuf,
    pub at_rest: AtRest,
    pub job_id: String,
    pub peer: String,
    pub psi_progress: Option<ProgressFn>,
    pub limits: JobLimits,
}

/// One line of the IV summary (A).
#[derive(Debug, Clone, Serialize)]
pub struct IvLine {
    pub feature: String,
    pub owner: String,
    pub bins: u32,
    pub iv: f64,
    pub selected: bool,
    pub reason: String,
}

/// What one party's side of a bin job did.
#[derive(Debug, Clone, Serialize)]
pub struct BinReport {
    pub party: String,
    pub bins_id: String,
    pub method: String,
    pub local_rows: u64,
    pub peer_rows: u64,
    pub aligned_rows: u64,
    pub features: u64,
    pub peer_features: u64,
    /// A: features kept by the selection (both parties').
    pub selected: Option<u64>,
    /// A: per feature, IV and the selection's verdict, by descending IV.
    pub iv: Vec<IvLine>,
    pub output: PathBuf,
    pub stages: Vec<(String, f64)>,
    /// Seconds A spent encrypting, B summing, A decrypting, B correlating.
    pub he_seconds: [f64; 4],
    #[serde(skip)]
    pub ecdh_evidence: Option<EcdhEvidence>,
}

/// Runs this party's side of a bin job over `channel` and writes its bins file.
pub async fn run_bin<C: Channel>(channel: &C, dataset: &Dataset, job: &BinJob) -> Result<BinReport, LrError> {
    let party = party_of(job.role);
    let config = job.params.config()?;
    check_label_side(party, &job.columns)?;
    let mut stages = Stages::start();
    let aligned = align(channel, dataset, job.role, job.psi, job.psi_progress.clone(), job.limits).await?;
    stages.end("psi");
    let n = aligned.order.len();
    if n > binning::MAX_ROWS {
        return Err(DataError::Invalid(format!("{n} aligned rows; binning takes at most {}", binning::MAX_ROWS)).into());
    }
    let table = load_features_as(dataset, &aligned.order, &job.columns, Missing::Keep).await?;
    let d = table.names.len();
    let (edges, fine) = {
        let (values, max_bins) = (table.values, config.max_bins());
        cpu::run(move || {
            let columns: Vec<Vec<f64>> = (0..d).map(|j| (0..n).map(|i| values[i * d + j]).collect()).collect();
            let all: Vec<u32> = (0..n as u32).collect();
            BinnedFeatures::fit(&columns, n, &all, max_bins)
        })
        .await
    };
    stages.end("features");
    let key = match party {
        Party::A => Some(crate::secureboost::job::fresh_key(job.params.key_size()?).await),
        Party::B => None,
    };
    stages.end("keygen");
    let input = BinInput { party, features: fine.clone(), labels: table.labels.clone(), key };
    let out = binning::run(channel, input, &config).await?;
    stages.end("protocol");
    let t = out.timings;
    let mut file = BinsFile {
        format: BINS_FORMAT.into(),
        party: format!("{party:?}"),
        job_id: job.job_id.clone(),
        bins_id: String::new(),
        peer: job.peer.clone(),
        dataset: dataset.spec.name.clone(),
        key_columns: dataset.spec.keys.clone(),
        method: job.params.method.name().into(),
        bins: job.params.bins,
        fine_bins: (job.params.method == Method::Tree).then_some(job.params.fine_bins),
        rows: n as u64,
        label: None,
        events: None,
        non_events: None,
        woe_definition: None,
        selection: None,
        features: Vec::new(),
    };
    let (peer_maps, iv) = match party {
        Party::B => {
            // B's final bins: its fine bins merged as A said (identity with quantile).
            for (k, (name, (e, map))) in table.names.iter().zip(edges.iter().zip(&out.peer_maps)).enumerate() {
                let e = e.merged(map);
                let bins = (0..e.bins()).map(|j| Bin { bin: j, ..empty_bin() }).zip(ranges(&e.edges));
                file.features.push(BinnedFeature {
                    name: name.clone(),
                    owner: "self".into(),
                    index: k as u32,
                    bins: bins.map(|(b, r)| Bin { range: Some(r), ..b }).collect(),
                    edges: Some(e.edges),
                    iv: None,
                    selected: None,
                    reason: None,
                });
            }
            (out.peer_maps.clone(), Vec::new())
        }
        Party::A => {
            let labels = table.labels.expect("A reads its labels");
            let (names, params) = (table.names.clone(), job.params.clone());
            let peer = out.clone();
            let (f, iv) = cpu::run(move || a_side(&names, &edges, &fine, &labels, &peer, &params)).await;
            file.label = job.columns.label.clone();
            file.events = f.events;
            file.non_events = f.non_events;
            file.woe_definition = f.woe_definition;
            file.selection = f.selection;
            file.features = f.features;
            (out.peer_maps.clone(), iv)
        }
    };
    file.bins_id = bins_id(&job.job_id, n as u64, &peer_maps);
    stages.end("woe");
    let (path, f, at_rest) = (job.out.clone(), file.clone(), job.at_rest.clone());
    cpu::run(move || f.save(&path, &at_rest)).await?;
    stages.end("write");
    Ok(BinReport {
        party: file.party.clone(),
        bins_id: file.bins_id.clone(),
        method: file.method.clone(),
        local_rows: dataset.len() as u64,
        peer_rows: aligned.peer_rows,
        aligned_rows: n as u64,
        features: d as u64,
        peer_features: match party {
            Party::A => out.peer_counts.len() as u64,
            Party::B => 0,
        },
        selected: file.selection.as_ref().map(|s| s.selected),
        iv,
        output: job.out.clone(),
        stages: stages.into_vec(),
        he_seconds: [t.encrypt, t.sums, t.decrypt, t.correlations],
        ecdh_evidence: aligned.ecdh_evidence,
    })
}

fn empty_bin() -> Bin {
    Bin { bin: 0, range: None, count: None, events: None, non_events: None, woe: None, iv: None }
}

/// The id both files of a job share: hex of the first 16 bytes of a SHA-256 over what both know —
/// the job id, the aligned rows and B's merges (B's final bins).
fn bins_id(job_id: &str, rows: u64, peer_maps: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    h.update(b"consort-bins id v1\0");
    h.update((job_id.len() as u64).to_le_bytes());
    h.update(job_id.as_bytes());
    h.update(rows.to_le_bytes());
    h.update((peer_maps.len() as u64).to_le_bytes());
    for m in peer_maps {
        h.update((m.len() as u64).to_le_bytes());
        h.update(m);
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What A's side adds to its file.
struct ASide {
    events: Option<u64>,
    non_events: Option<u64>,
    woe_definition: Option<String>,
    selection: Option<Selection>,
    features: Vec<BinnedFeature>,
}

/// A feature at A before selection.
struct Scored {
    name: String,
    owner: Party,
    index: u32,
    edges: Option<Vec<f64>>,
    counts: BinCounts,
    woe: Woe,
}

/// A's own bins (merged with `tree`), WOE/IV of both parties' features, selection, A's file.
fn a_side(
    names: &[String],
    edges: &[FeatureBins],
    fine: &BinnedFeatures,
    labels: &[u8],
    peer: &binning::BinOutput,
    params: &BinParamsWire,
) -> (ASide, Vec<IvLine>) {
    let mut scored = Vec::new();
    let mut own_columns = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let c = BinCounts::of(&fine.columns[k], labels, fine.bins[k] as usize);
        let (e, column, counts) = match params.method {
            Method::Quantile => (edges[k].clone(), fine.columns[k].clone(), c),
            Method::Tree => {
                let map = chi_merge(&c, params.bins as usize);
                let col = fine.columns[k].iter().map(|&v| map[v as usize]).collect();
                (edges[k].merged(&map), col, c.merged(&map))
            }
        };
        let woe = woe_iv(&counts);
        own_columns.push(column);
        scored.push(Scored { name: name.clone(), owner: Party::A, index: k as u32, edges: Some(e.edges), counts, woe });
    }
    for (k, counts) in peer.peer_counts.iter().enumerate() {
        let woe = woe_iv(counts);
        scored.push(Scored {
            name: format!("peer:{k}"),
            owner: Party::B,
            index: k as u32,
            edges: None,
            counts: counts.clone(),
            woe,
        });
    }
    // A's own pairs: Pearson correlation of the WOE-encoded rows.
    let own_pairs: HashMap<(u32, u32), f64> = match params.max_corr {
        Some(_) if names.len() > 1 => {
            let encoded: Vec<Vec<f64>> = own_columns
                .iter()
                .zip(&scored)
                .map(|(col, s)| col.iter().map(|&v| s.woe.woe[v as usize]).collect())
                .collect();
            value_correlations(&encoded).into_iter().map(|(k, l, r)| ((k, l), r)).collect()
        }
        _ => HashMap::new(),
    };
    let peer_pairs: HashMap<(u32, u32), f64> = peer.peer_correlated.iter().map(|&(k, l, r)| ((k, l), r)).collect();
    let verdicts = select(&scored, params.min_iv, params.max_corr, &own_pairs, &peer_pairs);
    let events: u64 = labels.iter().map(|&y| u64::from(y)).sum();
    let mut features = Vec::new();
    let mut iv = Vec::new();
    for (s, (selected, reason)) in scored.iter().zip(&verdicts) {
        let rs = s.edges.as_deref().map(ranges);
        let bins = (0..s.counts.counts.len())
            .map(|j| Bin {
                bin: j as u32,
                range: rs.as_ref().map(|r| r[j].clone()),
                count: Some(s.counts.counts[j]),
                events: Some(s.counts.events[j]),
                non_events: Some(s.counts.counts[j] - s.counts.events[j]),
                woe: Some(s.woe.woe[j]),
                iv: Some(s.woe.iv_bins[j]),
            })
            .collect();
        let owner = if s.owner == Party::A { "self" } else { "peer" };
        features.push(BinnedFeature {
            name: s.name.clone(),
            owner: owner.into(),
            index: s.index,
            edges: s.edges.clone(),
            bins,
            iv: Some(s.woe.iv),
            selected: Some(*selected),
            reason: Some(reason.clone()),
        });
        iv.push(IvLine {
            feature: s.name.clone(),
            owner: owner.into(),
            bins: s.counts.counts.len() as u32,
            iv: s.woe.iv,
            selected: *selected,
            reason: reason.clone(),
        });
    }
    iv.sort_by(|a, b| b.iv.total_cmp(&a.iv));
    let selected = verdicts.iter().filter(|v| v.0).count() as u64;
    let side = ASide {
        events: Some(events),
        non_events: Some(labels.len() as u64 - events),
        woe_definition: Some(format!(
            "WOE = ln((non_events + {s}) / (N + {s}·k) ÷ (events + {s}) / (E + {s}·k)) per non-empty bin (k non-empty \
             bins, N and E the totals; {s} added to both counts of every non-empty bin so that bins with no events or \
             no non-events stay finite); an empty bin has WOE 0; IV = Σ (share of non-events − share of events)·WOE",
            s = binning::WOE_SMOOTHING
        )),
        selection: Some(Selection {
            min_iv: params.min_iv,
            max_corr: params.max_corr,
            correlation: "own features: Pearson on WOE-encoded rows (computed here); peer features: Pearson on the \
                          peer's bin indices (computed by the peer, pairs above max_corr sent here); pairs across the \
                          two parties: not computed"
                .into(),
            selected,
        }),
        features,
    };
    (side, iv)
}

/// The selection's verdict per feature (module docs): (kept, why).
fn select(
    scored: &[Scored],
    min_iv: Option<f64>,
    max_corr: Option<f64>,
    own_pairs: &HashMap<(u32, u32), f64>,
    peer_pairs: &HashMap<(u32, u32), f64>,
) -> Vec<(bool, String)> {
    let mut verdict: Vec<Option<(bool, String)>> = vec![None; scored.len()];
    for (i, s) in scored.iter().enumerate() {
        if let Some(min) = min_iv.filter(|&m| s.woe.iv < m) {
            verdict[i] = Some((false, format!("IV {:.4} below min-iv {min}", s.woe.iv)));
        }
    }
    let mut order: Vec<usize> = (0..scored.len()).filter(|&i| verdict[i].is_none()).collect();
    order.sort_by(|&a, &b| scored[b].woe.iv.total_cmp(&scored[a].woe.iv).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        let s = &scored[i];
        let clash = max_corr.and_then(|bound| {
            kept.iter().find_map(|&j| {
                let o = &scored[j];
                if o.owner != s.owner {
                    return None;
                }
                let key = (s.index.min(o.index), s.index.max(o.index));
                let r = if s.owner == Party::A { own_pairs.get(&key) } else { peer_pairs.get(&key) };
                r.filter(|r| r.abs() > bound).map(|&r| (j, r))
            })
        });
        verdict[i] = Some(match clash {
            Some((j, r)) => (false, format!("correlated with {} (r = {r:.3}), which has a higher IV", scored[j].name)),
            None => {
                kept.push(i);
                (true, "selected".into())
            }
        });
    }
    verdict.into_iter().map(|v| v.expect("every feature has a verdict")).collect()
}

#[cfg(test)]
mod tests;
