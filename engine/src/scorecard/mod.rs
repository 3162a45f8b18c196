//! Credit scorecards (issue 14 item 3): joint logistic regression on the binned features of a
//! `bin` job ([`crate::binning`]), turned into integer points per bin, and scoring with them.
//!
//! # Encoding (why WOE for A, bin indicators for B)
//!
//! Party A (the label holder) knows the WOE of every bin, its own and B's (A's bins file). B must
//! learn nothing derived from the labels, so B's features cannot be replaced by WOE values B
//! would have to know. Hence:
//!
//! - **A's features**: each selected feature (A's bins file, `selected`) is one column, the WOE
//!   of the row's bin (A's edges; missing values are bin 0, with its own WOE).
//! - **B's features**: each of B's features that A's selection kept becomes one 0/1 column per
//!   bin except a *reference bin* (the bin with most rows in the bin job, chosen by A from its
//!   counts): the model's weight of a bin column is that bin's log-odds contribution relative to
//!   the reference bin. A 0/1 column costs one OT per entry (the narrow bit layout,
//!   [`consort_protocols::mpc::lr::LrConfig::narrow_bits`]), not twelve. An indicator model is
//!   strictly more flexible than WOE (a WOE column is one fixed combination of the indicators),
//!   so nothing is lost in fit; it has more parameters (bins − 1 per feature).
//! - The LR protocol is the existing dealer-free one ([`consort_protocols::mpc::lr`]); no new
//!   cryptography. Features are not standardized (the columns are already on a log-odds or 0/1
//!   scale, which the points need).
//!
//! # Learning rate
//!
//! With `taylor1` the loss is quadratic with Hessian ¼·E[x xᵀ] (x with the intercept's 1), whose
//! largest eigenvalue is at most ¼·E|x|²; gradient descent is stable for a rate below
//! 8 / E|x|². Indicator columns are not centred, so E|x|² grows with the number of B's features
//! (≈ 1 + Σ_A E[WOE²] + Σ_B (1 − share of the reference bin)): with 300 B features about 270,
//! which is why the LR default 0.5 diverges. Unless `--learning-rate` is given, the requester
//! sets `min(0.5, 4 / E|x|²)` (half the bound), computed from its bins file's counts, which
//! cover both parties' bins ([`CardParams::auto_rate`]).
//!
//! # Points
//!
//! factor = pdo / ln 2, offset = base_score − factor·ln(base_odds). With z the model's log-odds
//! of the event (label 1: default, "bad"), score = offset − factor·z: **higher points = lower
//! risk**, base_score at good:bad odds of base_odds, and every pdo points double the odds. Each
//! bin's points are round(−factor·(its contribution to z)) (A: weight·WOE; B: the bin column's
//! weight, 0 for the reference bin), A's base points round(offset − factor·intercept). The
//! integer total differs from offset − factor·z by at most ½ per feature plus ½. The
//! probability written at scoring is the model's, σ(z) from the unrounded log-odds (B sends its
//! partial log-odds as LR scoring does): with many features of small effect each bin's points
//! can round to 0 and the integer total lose most of the ranking (measured: 330 features after
//! one epoch), while z keeps it. `ScorecardFile::probability` gives the probability the integer
//! points imply, 1 / (1 + exp((points − offset) / factor)).
//!
//! # What each party learns
//!
//! Training: what [`consort_protocols::mpc::lr`] says for LR, plus B learns which of its features
//! A's selection kept (one label-derived bit per feature: the IV bound) and, for each kept
//! feature, the reference bin (the largest bin by rows, which B can count itself). Scoring: A
//! learns B's partial points and B's unrounded partial log-odds per scored row, as LR scoring
//! reveals B's partial scores. B's points per bin stay in B's scorecard file.
//!
//! # Files
//!
//! `params` lives here ([`CardParams`]); `file` (the scorecard file), `train` and `score` (the
//! job runners).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::binning::BinsFile;
use crate::error::DataError;
use crate::lr::LrParams;

mod file;
mod score;
mod train;

pub use file::{CARD_FORMAT, CardBin, CardFeature, Scaling, ScorecardFile, is_scorecard};
pub use score::{CardScoreJob, run_score_card};
pub use train::run_train_card;

/// At most this many of B's features in a scorecard (checked before anything is sized).
pub const MAX_CARD_FEATURES: usize = 1 << 16;
/// At most this many bins per feature (bin ids are bytes).
pub const MAX_CARD_BINS: u32 = 256;

/// One of B's features in the card, as A announces it: on the wire `[index, bins, reference]`
/// (job parameters are at most 8 KiB: about 600 of B's features fit (14 bytes each with 4-digit indices)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[u32; 3]", into = "[u32; 3]")]
pub struct PeerFeature {
    /// B's feature index K (its bins file).
    pub index: u32,
    /// Its bins, the missing-value bin included.
    pub bins: u32,
    /// The bin without an indicator column (0 points).
    pub reference: u32,
}

impl From<[u32; 3]> for PeerFeature {
    fn from([index, bins, reference]: [u32; 3]) -> Self {
        Self { index, bins, reference }
    }
}

impl From<PeerFeature> for [u32; 3] {
    fn from(f: PeerFeature) -> Self {
        [f.index, f.bins, f.reference]
    }
}

/// A scorecard job's parameters (inside [`LrParams`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardParams {
    pub base_score: f64,
    /// Good:bad odds at `base_score`.
    pub base_odds: f64,
    /// Points that double the odds.
    pub pdo: f64,
    /// The bin job whose files both parties use, and the id its two files share.
    #[serde(default)]
    pub bins_job: String,
    #[serde(default)]
    pub bins_id: String,
    /// B's features in the card, by increasing index.
    #[serde(default)]
    pub peer_features: Vec<PeerFeature>,
    /// Requester only, never sent: A's bins file (the plan reads it and fills the fields above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins_file: Option<PathBuf>,
    /// Requester only: no learning rate was given, pick the scorecard default (module docs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_rate: bool,
}

impl CardParams {
    pub fn new(base_score: f64, base_odds: f64, pdo: f64) -> Self {
        Self {
            base_score,
            base_odds,
            pdo,
            bins_job: String::new(),
            bins_id: String::new(),
            peer_features: Vec::new(),
            bins_file: None,
            auto_rate: false,
        }
    }

    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |m: &str| Err(DataError::Invalid(m.into()));
        if !(self.base_score.is_finite() && self.base_score.abs() <= 1e6) {
            return bad("the base score must be a finite number of at most 10^6 in magnitude");
        }
        if !(self.base_odds.is_finite() && self.base_odds > 0.0 && self.base_odds <= 1e9) {
            return bad("the base odds must be in (0, 10^9]");
        }
        if !(self.pdo.is_finite() && self.pdo > 0.0 && self.pdo <= 1e4) {
            return bad("pdo (points to double the odds) must be in (0, 10^4]");
        }
        if self.peer_features.len() > MAX_CARD_FEATURES {
            return bad("too many peer features in the scorecard");
        }
        for (i, f) in self.peer_features.iter().enumerate() {
            if !(1..=MAX_CARD_BINS).contains(&f.bins) || f.reference >= f.bins {
                return bad("a peer feature's bins or reference bin are out of range");
            }
            if i > 0 && self.peer_features[i - 1].index >= f.index {
                return bad("the peer features must be listed once each, by increasing index");
            }
        }
        Ok(())
    }

    /// pdo / ln 2.
    pub fn factor(&self) -> f64 {
        self.pdo / std::f64::consts::LN_2
    }

    /// base_score − factor·ln(base_odds).
    pub fn offset(&self) -> f64 {
        self.base_score - self.factor() * self.base_odds.ln()
    }
}

/// The requester's plan: reads its bins file (already loaded: `bins`), checks it is A's file of a
/// bin job with `peer` on `dataset`, and fills the parameters B needs: the bin job, its id, B's
/// selected features with their reference bins, and (with `auto_rate`) the learning rate.
pub fn prepare_requester(params: &mut LrParams, bins: &BinsFile, peer: &str, dataset: &str) -> Result<(), DataError> {
    let card = params.scorecard.as_mut().ok_or_else(|| DataError::Invalid("not a scorecard job".into()))?;
    if bins.party != "A" {
        return Err(DataError::Invalid(
            "the bins file is the responder's; pass party A's (the bin job's --out)".into(),
        ));
    }
    check_same_job(bins, peer, dataset)?;
    card.bins_job = bins.job_id.clone();
    card.bins_id = bins.bins_id.clone();
    let rows = bins.rows.max(1) as f64;
    let share = |b: &crate::binning::Bin| b.count.unwrap_or(0) as f64 / rows;
    let mut norm = 1.0; // the intercept's column
    card.peer_features.clear();
    for f in bins.features.iter().filter(|f| f.selected == Some(true)) {
        if f.owner == "peer" {
            let reference = f
                .bins
                .iter()
                .max_by(|x, y| x.count.unwrap_or(0).cmp(&y.count.unwrap_or(0)).then(y.bin.cmp(&x.bin)))
                .map_or(0, |b| b.bin);
            let r = f.bins.iter().find(|b| b.bin == reference).map_or(0.0, share);
            norm += 1.0 - r;
            card.peer_features.push(PeerFeature { index: f.index, bins: f.bins.len() as u32, reference });
        } else {
            norm += f.bins.iter().map(|b| share(b) * b.woe.unwrap_or(0.0).powi(2)).sum::<f64>();
        }
    }
    card.peer_features.sort_by_key(|f| f.index);
    card.bins_file = None;
    // Both requester-only fields are cleared: the peer refuses them.
    if std::mem::take(&mut card.auto_rate) {
        params.learning_rate = default_rate(norm);
    }
    params.config()?;
    let wire = serde_json::to_string(params).map_err(|e| DataError::Invalid(e.to_string()))?.len();
    if wire > MAX_WIRE_PARAMS {
        return Err(DataError::Invalid(format!(
            "{} of the peer's features selected: too many for one job's parameters (at most about 600; raise the bin \
             job's --min-iv)",
            card_len(params)
        )));
    }
    Ok(())
}

/// A job's parameters travel in at most 8 KiB (the node's envelope); the requester checks first.
const MAX_WIRE_PARAMS: usize = 8192;

fn card_len(params: &LrParams) -> usize {
    params.scorecard.as_ref().map_or(0, |c| c.peer_features.len())
}

/// The scorecard default learning rate for rows of mean squared norm `norm` (module docs).
pub fn default_rate(norm: f64) -> f64 {
    (4.0 / norm).min(0.5)
}

/// The responder's check of the bin job A names: B's own file of that job (`bins`), made with
/// `peer` on `dataset`, with the same bins id, and every announced feature one of B's with the
/// announced number of bins.
pub fn check_responder(card: &CardParams, bins: &BinsFile, peer: &str, dataset: &str) -> Result<(), DataError> {
    card.validate()?;
    if card.bins_file.is_some() || card.auto_rate {
        return Err(DataError::Invalid("the peer sent requester-only scorecard fields".into()));
    }
    if bins.party != "B" {
        return Err(DataError::Invalid("this node's file of the bin job is not a responder's bins file".into()));
    }
    check_same_job(bins, peer, dataset)?;
    if bins.bins_id != card.bins_id || bins.job_id != card.bins_job {
        return Err(DataError::Invalid(format!(
            "the peer's bins file is not from the same bin job as this node's (bins id {} here)",
            bins.bins_id
        )));
    }
    for f in &card.peer_features {
        let own = bins.features.iter().find(|g| g.owner == "self" && g.index == f.index);
        match own {
            Some(g) if g.bins.len() as u32 == f.bins => {}
            _ => return Err(DataError::Invalid("the peer names a feature or bin count this bins file lacks".into())),
        }
    }
    Ok(())
}

fn check_same_job(bins: &BinsFile, peer: &str, dataset: &str) -> Result<(), DataError> {
    if bins.peer != peer {
        return Err(DataError::Invalid(format!("the bins file is from a bin job with '{}', not '{peer}'", bins.peer)));
    }
    if bins.dataset != dataset {
        return Err(DataError::Invalid(format!(
            "the bins file was made on dataset '{}', not '{dataset}'",
            bins.dataset
        )));
    }
    Ok(())
}

/// How one of this party's card features turns a bin into a model column (or columns).
#[derive(Debug, Clone)]
pub(crate) enum Encoding {
    /// A: one column, the bin's WOE.
    Woe(Vec<f64>),
    /// B: one 0/1 column per bin but the reference.
    Indicators { bins: u32, reference: u32 },
}

/// One of this party's card features: its column, edges, bin ranges and encoding.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub name: String,
    pub index: u32,
    pub edges: Vec<f64>,
    pub ranges: Vec<String>,
    pub encoding: Encoding,
}

impl Planned {
    pub(crate) fn columns(&self) -> usize {
        match &self.encoding {
            Encoding::Woe(_) => 1,
            Encoding::Indicators { bins, .. } => *bins as usize - 1,
        }
    }
}

/// This party's card features from its bins file: A's own selected features (WOE), B's features
/// A announced (indicators).
pub(crate) fn plan_columns(is_a: bool, card: &CardParams, bins: &BinsFile) -> Result<Vec<Planned>, DataError> {
    let own = |f: &crate::binning::BinnedFeature| -> Result<(Vec<f64>, Vec<String>), DataError> {
        let edges = f.edges.clone().ok_or_else(|| DataError::Invalid("an own feature without edges".into()))?;
        if f.bins.len() != edges.len() + 2 || f.bins.len() > MAX_CARD_BINS as usize {
            return Err(DataError::Invalid("a feature's bins do not match its edges".into()));
        }
        Ok((edges.clone(), crate::binning::ranges(&edges)))
    };
    if is_a {
        bins.features
            .iter()
            .filter(|f| f.owner == "self" && f.selected == Some(true))
            .map(|f| {
                let (edges, ranges) = own(f)?;
                let woe = f.bins.iter().map(|b| b.woe.unwrap_or(0.0)).collect();
                Ok(Planned { name: f.name.clone(), index: f.index, edges, ranges, encoding: Encoding::Woe(woe) })
            })
            .collect()
    } else {
        card.peer_features
            .iter()
            .map(|p| {
                let f = bins
                    .features
                    .iter()
                    .find(|g| g.owner == "self" && g.index == p.index)
                    .ok_or_else(|| DataError::Invalid("the peer names a feature this bins file lacks".into()))?;
                let (edges, ranges) = own(f)?;
                if ranges.len() as u32 != p.bins {
                    return Err(DataError::Invalid("the peer names a bin count this bins file lacks".into()));
                }
                let encoding = Encoding::Indicators { bins: p.bins, reference: p.reference };
                Ok(Planned { name: f.name.clone(), index: f.index, edges, ranges, encoding })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
