//! The model evaluation report: how well a model's scores separate bads (label 1) from goods
//! (label 0), and whether the scored population has drifted from the training population.
//! Written as JSON ([`Report`], serde) and as one self-contained HTML page with four SVG charts
//! ([`render_html`]): no script, no stylesheet or font or image from elsewhere, nothing fetched.
//!
//! Plaintext and local: the party holding the labels runs it on its own scored file (LR and
//! SecureBoost scores reach only that party), so there is no protocol and no peer.
//!
//! # Definitions
//! `n` rows with scores `s` and labels `y ∈ {0, 1}`; `P` bads (`y = 1`), `N` goods (`y = 0`). A
//! higher score means "more likely bad" (a probability of default). Both classes must be present:
//! without bads or without goods AUC and KS are undefined, and the report is refused with an error
//! naming the counts (never NaN).
//! - **AUC** (Mann–Whitney): `(#{(b, g): s_b > s_g} + ½·#{(b, g): s_b = s_g}) / (P·N)` over
//!   every bad `b` and good `g`; computed exactly from counts (one sort, `O(n log n)`).
//! - **Gini** = `2·AUC − 1`.
//! - **KS** = `max_t |TPR(t) − FPR(t)|`, with `TPR(t)` (`FPR(t)`) the share of bads (goods) with
//!   score `≥ t`, over every distinct score `t` (rows with equal scores are never split).
//!   `ks_score` is the first (highest) `t` where the maximum is reached.
//! - **Deciles**: rows sorted by score, highest first; the row at position `i` (from 0) is nominally
//!   in decile `⌊10·i / n⌋ + 1`. Ties are kept together: a run of equal scores goes whole to the
//!   nominal decile of its first row, so a decile may hold more or fewer than `n/10` rows, or none
//!   (then its rates are `null`). Per decile: bad rate = bads / rows; **lift** = bad rate / overall
//!   bad rate (`P/n`); cumulative **gain** = bads in deciles 1..=k / `P`; cumulative lift =
//!   (bads / rows in deciles 1..=k) / overall bad rate.
//! - **Score bands**: with a points column (a scorecard's integer points), bands of `band_width`
//!   points aligned on multiples of it, `[k·w, (k+1)·w)`, from the lowest to the highest band
//!   holding a row (at most [`MAX_BANDS`]). Otherwise, on the score: if every score lies in
//!   `[0, 1]` (a probability), the ten bands `[0, 0.1), …, [0.8, 0.9), [0.9, 1]`; else ten bands
//!   of equal width between the lowest and the highest score, the last one closed.
//! - **PSI** between a baseline (expected, e.g. the training population scored by the same model)
//!   and the scored population (actual): `Σ_i (a_i − e_i)·ln(a_i / e_i)` over bins `i`, where
//!   `e_i`, `a_i` are the shares of baseline and scored rows in bin `i`. Bins are the baseline's
//!   score deciles: sorted ascending (`m` rows), cut points `c_k = b_(⌈k·m/10⌉)` (the k-th decile,
//!   1-based order statistic) for `k = 1..9`; equal cut points are merged and a cut point equal to
//!   the baseline's maximum dropped, giving bins `(−∞, c_1], (c_1, c_2], …, (c_last, +∞)` that each
//!   hold at least one baseline row. A share of 0 (a bin no scored row falls in) is replaced by
//!   [`PSI_EPSILON`] in the formula. Identical distributions give exactly 0; a constant baseline
//!   gives one bin and PSI 0.
//!
//! The charts (ROC, KS curve, score distribution by class, cumulative gain and lift by decile)
//! are drawn from at most [`MAX_CURVE_POINTS`] points of each curve; the figures are exact.

mod html;
mod input;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::DataError;
use crate::sealed::StorageKey;
use crate::storage::{Access, write_atomic};

pub use html::render_html;
pub use input::{Columns, Scored, read_scored};

/// A share of 0 in the PSI formula is replaced by this (the usual 0.0001): `ln(0)` is undefined.
pub const PSI_EPSILON: f64 = 1e-4;
/// Most score bands in a report (a points band width too small for the points' range is an error).
pub const MAX_BANDS: usize = 100;
/// Most points of a curve kept for the JSON and the charts.
pub const MAX_CURVE_POINTS: usize = 500;
/// Bins of the score distribution chart.
const DISTRIBUTION_BINS: usize = 20;
/// The number of deciles.
const DECILES: usize = 10;

/// Everything the report shows; its JSON form is the `--json` file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub score_column: String,
    pub label_column: String,
    pub rows: u64,
    pub bads: u64,
    pub goods: u64,
    pub bad_rate: f64,
    pub auc: f64,
    pub gini: f64,
    pub ks: f64,
    /// The score threshold where KS is reached (rows with score ≥ it).
    pub ks_score: f64,
    pub deciles: Vec<Decile>,
    pub bands: Bands,
    pub psi: Option<Psi>,
    /// ROC curve points `(FPR, TPR)` from `(0, 0)` to `(1, 1)`, at most [`MAX_CURVE_POINTS`].
    pub roc: Vec<[f64; 2]>,
    /// KS curve: `(share of rows with score ≥ t, TPR, FPR)`, at most [`MAX_CURVE_POINTS`].
    pub ks_curve: Vec<[f64; 3]>,
    pub distribution: Distribution,
}

/// One decile (1 = highest scores).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decile {
    pub decile: u32,
    pub rows: u64,
    pub bads: u64,
    pub goods: u64,
    pub min_score: Option<f64>,
    pub max_score: Option<f64>,
    pub bad_rate: Option<f64>,
    pub lift: Option<f64>,
    pub cumulative_rows: u64,
    pub cumulative_bads: u64,
    /// Share of all bads in deciles 1..=this one.
    pub cumulative_gain: f64,
    pub cumulative_lift: Option<f64>,
}

/// Bad rate by score band.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bands {
    /// `points`, `probability` or `score` (see the module doc).
    pub kind: &'static str,
    /// The column the bands are of.
    pub column: String,
    pub bands: Vec<Band>,
}

/// One band: rows with `lower ≤ value < upper` (the last band also holds `value = upper`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Band {
    pub lower: f64,
    pub upper: f64,
    pub rows: u64,
    pub bads: u64,
    pub bad_rate: Option<f64>,
    /// Share of all rows.
    pub share: f64,
}

/// Population stability between a baseline and the scored rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Psi {
    pub value: f64,
    pub epsilon: f64,
    pub baseline_rows: u64,
    pub rows: u64,
    pub bins: Vec<PsiBin>,
}

/// One PSI bin: scores in `(lower, upper]` (`None`: unbounded).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PsiBin {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    /// Share of baseline rows (expected).
    pub expected: f64,
    /// Share of scored rows (actual).
    pub actual: f64,
    /// `(a − e)·ln(a / e)` with the epsilon applied.
    pub contribution: f64,
}

/// Score histogram by class: bin `i` is `[edges[i], edges[i+1])` (the last closed); shares of each
/// class's rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Distribution {
    pub edges: Vec<f64>,
    pub bads: Vec<f64>,
    pub goods: Vec<f64>,
}

/// How to band points (the `--band-width` of a points column).
pub const DEFAULT_POINTS_BAND_WIDTH: f64 = 20.0;

/// The inputs of [`Report::compute`] besides scores and labels.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    pub score_column: &'a str,
    pub label_column: &'a str,
    /// A scorecard's points per row and their column (bands are then of points).
    pub points: Option<(&'a str, &'a [f64])>,
    /// Width of a points band (default [`DEFAULT_POINTS_BAND_WIDTH`]).
    pub band_width: Option<f64>,
    /// Baseline scores for PSI.
    pub baseline: Option<&'a [f64]>,
}

impl Report {
    /// The report of `scores` against `labels` (0 or 1). Errors: lengths differ, a label not 0/1,
    /// a non-finite score, one class absent, a bad band width.
    pub fn compute(scores: &[f64], labels: &[u8], options: &Options<'_>) -> Result<Report, DataError> {
        let sorted = sorted_desc(scores, labels)?;
        let (bads, goods) = class_counts(&sorted)?;
        let n = sorted.len() as u64;
        let groups = tie_groups(&sorted);
        let auc = mann_whitney(&groups, bads, goods);
        let (ks, ks_score) = ks_of(&groups, bads, goods);
        let bad_rate = bads as f64 / n as f64;
        let bands = match options.points {
            Some((column, points)) => {
                if points.len() != scores.len() {
                    return Err(invalid("the points and the scores differ in length"));
                }
                points_bands(column, points, labels, options.band_width.unwrap_or(DEFAULT_POINTS_BAND_WIDTH))?
            }
            None => score_bands(options.score_column, scores, labels),
        };
        let psi = match options.baseline {
            Some(baseline) => Some(psi(baseline, scores)?),
            None => None,
        };
        Ok(Report {
            score_column: options.score_column.to_string(),
            label_column: options.label_column.to_string(),
            rows: n,
            bads,
            goods,
            bad_rate,
            auc,
            gini: 2.0 * auc - 1.0,
            ks,
            ks_score,
            deciles: deciles(&sorted, &groups, bads),
            bands,
            psi,
            roc: roc_curve(&groups, bads, goods),
            ks_curve: ks_curve(&groups, n, bads, goods),
            distribution: distribution(&sorted, bads, goods),
        })
    }
}

fn invalid(message: impl Into<String>) -> DataError {
    DataError::Invalid(message.into())
}

/// `(score, label)` pairs, highest score first; checks lengths, labels and scores.
fn sorted_desc(scores: &[f64], labels: &[u8]) -> Result<Vec<(f64, u8)>, DataError> {
    if scores.len() != labels.len() {
        return Err(invalid("the scores and the labels differ in length"));
    }
    if let Some(i) = labels.iter().position(|&l| l > 1) {
        return Err(invalid(format!("row {}: the label must be 0 or 1", i + 1)));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(invalid(format!("row {}: the score is not a finite number", i + 1)));
    }
    let mut sorted: Vec<(f64, u8)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    sorted.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    Ok(sorted)
}

/// `(bads, goods)`; an error unless both are present.
fn class_counts(sorted: &[(f64, u8)]) -> Result<(u64, u64), DataError> {
    let bads = sorted.iter().filter(|r| r.1 == 1).count() as u64;
    let goods = sorted.len() as u64 - bads;
    if bads == 0 || goods == 0 {
        return Err(invalid(format!(
            "the labels have one class only ({bads} rows labelled 1, {goods} labelled 0): AUC, KS and lift need both"
        )));
    }
    Ok((bads, goods))
}

/// A run of equal scores in the sorted rows.
#[derive(Debug, Clone, Copy)]
struct Group {
    score: f64,
    /// Index of its first row in the sorted rows.
    start: usize,
    bads: u64,
    goods: u64,
}

fn tie_groups(sorted: &[(f64, u8)]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, &(s, l)) in sorted.iter().enumerate() {
        match groups.last_mut() {
            // `==` on finite floats: 0.0 and -0.0 are one score.
            Some(g) if g.score == s => {}
            _ => groups.push(Group { score: s, start: i, bads: 0, goods: 0 }),
        }
        let g = groups.last_mut().expect("pushed above");
        if l == 1 {
            g.bads += 1;
        } else {
            g.goods += 1;
        }
    }
    groups
}

/// Exact Mann–Whitney AUC from the tie groups (highest score first).
fn mann_whitney(groups: &[Group], bads: u64, goods: u64) -> f64 {
    // Twice the count of correctly ordered pairs, plus the tied pairs once: integer, exact.
    let (mut twice, mut bads_above) = (0u128, 0u128);
    for g in groups {
        twice += g.goods as u128 * (2 * bads_above + g.bads as u128);
        bads_above += g.bads as u128;
    }
    twice as f64 / (2.0 * bads as f64 * goods as f64)
}

/// AUC (Mann–Whitney, ties count one half) of `scores` (higher = more likely 1) against `labels`.
/// An error when a label is not 0/1, a score not finite, or one class is absent.
pub fn auc(scores: &[f64], labels: &[u8]) -> Result<f64, DataError> {
    let sorted = sorted_desc(scores, labels)?;
    let (bads, goods) = class_counts(&sorted)?;
    Ok(mann_whitney(&tie_groups(&sorted), bads, goods))
}

/// KS = max |TPR − FPR| over score thresholds; errors as [`auc`].
pub fn ks(scores: &[f64], labels: &[u8]) -> Result<f64, DataError> {
    let sorted = sorted_desc(scores, labels)?;
    let (bads, goods) = class_counts(&sorted)?;
    Ok(ks_of(&tie_groups(&sorted), bads, goods).0)
}

fn ks_of(groups: &[Group], bads: u64, goods: u64) -> (f64, f64) {
    let (mut tp, mut fp) = (0u64, 0u64);
    let (mut best, mut at) = (-1.0f64, groups[0].score);
    for g in groups {
        tp += g.bads;
        fp += g.goods;
        let gap = (tp as f64 / bads as f64 - fp as f64 / goods as f64).abs();
        if gap > best {
            (best, at) = (gap, g.score);
        }
    }
    (best, at)
}

/// Evenly spaced indices into `0..len`, first and last included, at most `max`.
fn sample(len: usize, max: usize) -> Vec<usize> {
    if len <= max {
        return (0..len).collect();
    }
    let mut idx: Vec<usize> = (0..max).map(|k| k * (len - 1) / (max - 1)).collect();
    idx.dedup();
    idx
}

/// `(threshold share, TPR, FPR)` after each tie group, from the origin.
fn cumulative(groups: &[Group]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::with_capacity(groups.len() + 1);
    let (mut rows, mut tp, mut fp) = (0, 0, 0);
    out.push((0, 0, 0));
    for g in groups {
        tp += g.bads;
        fp += g.goods;
        rows += g.bads + g.goods;
        out.push((rows, tp, fp));
    }
    out
}

fn roc_curve(groups: &[Group], bads: u64, goods: u64) -> Vec<[f64; 2]> {
    let cum = cumulative(groups);
    sample(cum.len(), MAX_CURVE_POINTS)
        .into_iter()
        .map(|i| [cum[i].2 as f64 / goods as f64, cum[i].1 as f64 / bads as f64])
        .collect()
}

fn ks_curve(groups: &[Group], n: u64, bads: u64, goods: u64) -> Vec<[f64; 3]> {
    let cum = cumulative(groups);
    sample(cum.len(), MAX_CURVE_POINTS)
        .into_iter()
        .map(|i| {
            let (rows, tp, fp) = cum[i];
            [rows as f64 / n as f64, tp as f64 / bads as f64, fp as f64 / goods as f64]
        })
        .collect()
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn deciles(sorted: &[(f64, u8)], groups: &[Group], bads: u64) -> Vec<Decile> {
    let n = sorted.len();
    let overall = bads as f64 / n as f64;
    let mut table: Vec<Decile> = (1..=DECILES as u32)
        .map(|decile| Decile {
            decile,
            rows: 0,
            bads: 0,
            goods: 0,
            min_score: None,
            max_score: None,
            bad_rate: None,
            lift: None,
            cumulative_rows: 0,
            cumulative_bads: 0,
            cumulative_gain: 0.0,
            cumulative_lift: None,
        })
        .collect();
    for g in groups {
        let d = &mut table[(g.start as u128 * DECILES as u128 / n as u128) as usize];
        d.rows += g.bads + g.goods;
        d.bads += g.bads;
        d.goods += g.goods;
        // Groups come highest score first.
        d.max_score.get_or_insert(g.score);
        d.min_score = Some(g.score);
    }
    let (mut rows, mut cum_bads) = (0, 0);
    for d in &mut table {
        rows += d.rows;
        cum_bads += d.bads;
        d.bad_rate = ratio(d.bads, d.rows);
        d.lift = d.bad_rate.map(|r| r / overall);
        d.cumulative_rows = rows;
        d.cumulative_bads = cum_bads;
        d.cumulative_gain = cum_bads as f64 / bads as f64;
        d.cumulative_lift = ratio(cum_bads, rows).map(|r| r / overall);
    }
    table
}

/// Counts rows into bands by `index(value)`; bands given by their edges.
fn band_table(edges: &[f64], values: &[f64], labels: &[u8], index: impl Fn(f64) -> usize) -> Vec<Band> {
    let k = edges.len() - 1;
    let (mut rows, mut bads) = (vec![0u64; k], vec![0u64; k]);
    for (&v, &l) in values.iter().zip(labels) {
        let i = index(v).min(k - 1);
        rows[i] += 1;
        bads[i] += l as u64;
    }
    let n = values.len() as f64;
    (0..k)
        .map(|i| Band {
            lower: edges[i],
            upper: edges[i + 1],
            rows: rows[i],
            bads: bads[i],
            bad_rate: ratio(bads[i], rows[i]),
            share: rows[i] as f64 / n,
        })
        .collect()
}

/// The band of `v` among `edges` (ascending): the number of inner edges `≤ v`.
fn edge_index(edges: &[f64], v: f64) -> usize {
    edges[1..edges.len() - 1].partition_point(|&e| e <= v)
}

fn score_bands(column: &str, scores: &[f64], labels: &[u8]) -> Bands {
    let (lo, hi) = min_max(scores);
    let probability = lo >= 0.0 && hi <= 1.0;
    let edges: Vec<f64> = if probability {
        (0..=10).map(|k| k as f64 / 10.0).collect()
    } else {
        (0..=10).map(|k| if k == 10 { hi } else { lo + (hi - lo) * k as f64 / 10.0 }).collect()
    };
    let bands = band_table(&edges, scores, labels, |v| edge_index(&edges, v));
    Bands { kind: if probability { "probability" } else { "score" }, column: column.to_string(), bands }
}

fn points_bands(column: &str, points: &[f64], labels: &[u8], width: f64) -> Result<Bands, DataError> {
    if !(width.is_finite() && width > 0.0) {
        return Err(invalid("the band width must be a positive number"));
    }
    if let Some(i) = points.iter().position(|p| !p.is_finite()) {
        return Err(invalid(format!("row {}: the points are not a finite number", i + 1)));
    }
    let (lo, hi) = min_max(points);
    let (first, last) = ((lo / width).floor(), (hi / width).floor());
    let count = last - first + 1.0;
    if count > MAX_BANDS as f64 {
        return Err(invalid(format!(
            "points from {lo} to {hi} make more than {MAX_BANDS} bands of width {width}; pass a larger band width"
        )));
    }
    let edges: Vec<f64> = (0..=count as usize).map(|k| (first + k as f64) * width).collect();
    let bands = band_table(&edges, points, labels, |v| ((v / width).floor() - first) as usize);
    Ok(Bands { kind: "points", column: column.to_string(), bands })
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn distribution(sorted: &[(f64, u8)], bads: u64, goods: u64) -> Distribution {
    let (hi, lo) = (sorted[0].0, sorted[sorted.len() - 1].0);
    let bins = if hi > lo { DISTRIBUTION_BINS } else { 1 };
    let edges: Vec<f64> =
        (0..=bins).map(|k| if k == bins { hi } else { lo + (hi - lo) * k as f64 / bins as f64 }).collect();
    let (mut b, mut g) = (vec![0u64; bins], vec![0u64; bins]);
    for &(s, l) in sorted {
        let i = edge_index(&edges, s).min(bins - 1);
        if l == 1 {
            b[i] += 1;
        } else {
            g[i] += 1;
        }
    }
    Distribution {
        edges,
        bads: b.iter().map(|&c| c as f64 / bads as f64).collect(),
        goods: g.iter().map(|&c| c as f64 / goods as f64).collect(),
    }
}

/// PSI of `actual` against `baseline` (see the module doc for the bins and the epsilon).
pub fn psi(baseline: &[f64], actual: &[f64]) -> Result<Psi, DataError> {
    if baseline.is_empty() || actual.is_empty() {
        return Err(invalid("PSI needs at least one baseline row and one scored row"));
    }
    if baseline.iter().chain(actual).any(|s| !s.is_finite()) {
        return Err(invalid("PSI: a score is not a finite number"));
    }
    let mut base = baseline.to_vec();
    base.sort_unstable_by(f64::total_cmp);
    let m = base.len();
    let max = base[m - 1];
    let mut cuts: Vec<f64> = (1..DECILES).map(|k| base[(k * m).div_ceil(DECILES) - 1]).collect();
    cuts.dedup();
    cuts.retain(|&c| c < max);
    // Bin of v: the number of cut points strictly below it, i.e. v in (c_{i-1}, c_i].
    let bin = |v: f64| cuts.partition_point(|&c| c < v);
    let k = cuts.len() + 1;
    let (mut e, mut a) = (vec![0u64; k], vec![0u64; k]);
    for &v in &base {
        e[bin(v)] += 1;
    }
    for &v in actual {
        a[bin(v)] += 1;
    }
    let bins: Vec<PsiBin> = (0..k)
        .map(|i| {
            let expected = e[i] as f64 / m as f64;
            let actual = a[i] as f64 / actual.len() as f64;
            let (ee, aa) = (expected.max(PSI_EPSILON), actual.max(PSI_EPSILON));
            let contribution = if ee == aa { 0.0 } else { (aa - ee) * (aa / ee).ln() };
            PsiBin {
                lower: i.checked_sub(1).map(|j| cuts[j]),
                upper: cuts.get(i).copied(),
                expected,
                actual,
                contribution,
            }
        })
        .collect();
    Ok(Psi {
        value: bins.iter().map(|b| b.contribution).sum(),
        epsilon: PSI_EPSILON,
        baseline_rows: m as u64,
        rows: actual.len() as u64,
        bins,
    })
}

/// Where [`build`] reads from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The scored file (CSV, plain or sealed): scores and labels.
    pub scored: PathBuf,
    /// Scored training rows for PSI (same score column; labels not needed).
    pub baseline: Option<PathBuf>,
    /// Score column; `None`: `probability` if the file has it, else `score`.
    pub score_column: Option<String>,
    pub label_column: String,
    pub points_column: Option<String>,
    pub band_width: Option<f64>,
}

/// Reads the files and computes the report. Errors name the file, line and column, never a value.
pub fn build(inputs: &Inputs, key: Option<&StorageKey>) -> Result<Report, DataError> {
    let columns = Columns {
        score: inputs.score_column.as_deref(),
        label: Some(&inputs.label_column),
        points: inputs.points_column.as_deref(),
    };
    let scored = read_scored(&inputs.scored, key, &columns)?;
    let baseline = match &inputs.baseline {
        Some(path) => {
            let columns = Columns { score: Some(&scored.score_column), label: None, points: None };
            Some(read_scored(path, key, &columns)?.scores)
        }
        None => None,
    };
    let labels = scored.labels.as_deref().expect("a label column was asked for");
    let options = Options {
        score_column: &scored.score_column,
        label_column: &inputs.label_column,
        points: inputs.points_column.as_deref().zip(scored.points.as_deref()),
        band_width: inputs.band_width,
        baseline: baseline.as_deref(),
    };
    Report::compute(&scored.scores, labels, &options).map_err(|e| match e {
        DataError::Invalid(message) => DataError::file(&inputs.scored, message),
        other => other,
    })
}

/// Writes the HTML page (and the JSON, if asked), each atomically (temp file, fsync, rename) and
/// readable by the owner only. Both are rendered before either is written; if the HTML cannot be
/// written after the JSON was, the JSON is removed.
pub fn write(report: &Report, html: &Path, json: Option<&Path>) -> Result<(), DataError> {
    let page = render_html(report)?;
    let json_text = match json {
        Some(_) => Some(serde_json::to_vec_pretty(report).map_err(|e| invalid(format!("report JSON: {e}")))?),
        None => None,
    };
    if let (Some(path), Some(text)) = (json, &json_text) {
        write_atomic(path, text, Access::OwnerOnly).map_err(|e| DataError::io(path, e))?;
    }
    if let Err(e) = write_atomic(html, page.as_bytes(), Access::OwnerOnly) {
        if let Some(path) = json {
            let _ = std::fs::remove_file(path);
        }
        return Err(DataError::io(html, e));
    }
    Ok(())
}

/// The usual reading of a PSI value (a convention, not a test): below 0.1 stable, 0.1 to 0.25
/// some shift, above 0.25 a significant shift.
pub fn psi_grade(value: f64) -> &'static str {
    if value < 0.1 {
        "stable"
    } else if value <= 0.25 {
        "some shift"
    } else {
        "significant shift"
    }
}
