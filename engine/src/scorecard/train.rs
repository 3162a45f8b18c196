//! The scorecard train job: align → read and bin the card features → encode (A: WOE, B: bin
//! indicators) → the LR protocol → points per bin → evaluate on the holdout → save.
use std::path::PathBuf;

use consort_protocols::mpc::Party;
use consort_protocols::mpc::lr::{self, LrConfig, LrFeatures, LrInput, LrOutput};
use consort_protocols::mpc::ot_mul::Matrix;
use consort_protocols::mpc::ot_mul::onehot::Groups;
use consort_protocols::{Channel, cpu};
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::file::{CARD_FORMAT, CardBin, CardFeature, Scaling, ScorecardFile};
use super::{CardParams, Encoding, Planned, plan_columns};
use crate::binning::BinsFile;
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::lr::align::align;
use crate::lr::{
    ColumnChoice, LrError, Missing, TrainJob, TrainReport, TrainingSummary, auc, ks, load_features_as, split,
};
use crate::lr::{Stages, check_label_side, party_of};

/// Runs this party's side of a scorecard train job (`job.params.scorecard` set) with this party's
/// bins file `bins` of the bin job the parameters name (checked by the caller:
/// [`super::prepare_requester`], [`super::check_responder`]), and writes its scorecard file.
pub async fn run_train_card<C: Channel, D: Channel>(
    channel: &C,
    dealer: Option<&D>,
    dataset: &Dataset,
    job: &TrainJob,
    bins: &BinsFile,
) -> Result<TrainReport, LrError> {
    let party = party_of(job.role);
    let config = job.params.config()?;
    let card = job.params.scorecard.as_ref().ok_or_else(|| DataError::Invalid("not a scorecard job".into()))?;
    check_label_side(party, &job.columns)?;
    if bins.bins_id != card.bins_id {
        return Err(DataError::Invalid("the bins file is not the one the job names".into()).into());
    }
    let planned = plan_columns(party == Party::A, card, bins)?;
    let mut stages = Stages::start();
    let aligned = align(channel, dataset, job.role, job.psi, job.psi_progress.clone(), job.limits).await?;
    stages.end("psi");
    let n = aligned.order.len();
    let names: Vec<String> = planned.iter().map(|p| p.name.clone()).collect();
    let choice = ColumnChoice { label: job.columns.label.clone(), features: Some(names) };
    let table = load_features_as(dataset, &aligned.order, &choice, Missing::Keep).await?;
    let (train, holdout) = split(n, job.params.holdout, job.params.split_seed);
    let onehot = onehot_groups(&planned, &config);
    let (bins_of_rows, features) = {
        let (p, values, c, leaves) = (planned.clone(), table.values, config.clone(), onehot.is_some());
        cpu::run(move || {
            let b = bin_rows(&p, &values, n);
            // B's bin indicators go to the LR as their leaves: the dense matrix (2.2 GB at
            // 10^5 × 300 features of 10 bins) was built, scanned and dropped while A waited.
            let f = if leaves {
                LrFeatures::Leaves { leaves: onehot_leaves(&p, &b, n), rows: n, bits: c.feature_bits }
            } else {
                encode(&p, &b, n, &c).into()
            };
            (b, f)
        })
        .await
    };
    stages.end("features");
    let input = LrInput { party, features, labels: table.labels.clone(), train, holdout: holdout.clone(), onehot };
    let out = match dealer {
        Some(d) => lr::train_with_dealer(channel, d, input, &config, job.progress.clone()).await?,
        None => lr::train(channel, input, &config, job.progress.clone()).await?,
    };
    stages.end("train");
    let mut file = card_file(job, dataset, &config, card, &planned, &out, party, n, holdout.len());
    // Evaluation: B's unrounded partial log-odds of the holdout rows to A (as LR's evaluation).
    let d = planned.len();
    let hb: Vec<u8> =
        holdout.iter().flat_map(|&i| bins_of_rows[i as usize * d..(i as usize + 1) * d].iter().copied()).collect();
    let own = file.partial_logits(&hb, holdout.len());
    if let Some(peer) = lr::exchange_partial_scores(channel, party, &own).await? {
        let labels = table.labels.as_ref().expect("party A has labels");
        let y: Vec<u8> = holdout.iter().map(|&i| labels[i as usize]).collect();
        let w0 = out.intercept.unwrap_or(0.0);
        let z: Vec<f64> = own.iter().zip(&peer).map(|(a, b)| a + b + w0).collect();
        file.training.auc = auc(&z, &y);
        file.training.ks = ks(&z, &y);
    }
    stages.end("evaluate");
    let (path, f, at_rest) = (job.model_out.clone(), file.clone(), job.at_rest.clone());
    cpu::run(move || f.save(&path, &at_rest)).await?;
    let t = &file.training;
    Ok(TrainReport {
        party: file.party.clone(),
        local_rows: dataset.len() as u64,
        peer_rows: aligned.peer_rows,
        aligned_rows: t.aligned_rows,
        train_rows: t.train_rows,
        holdout_rows: t.holdout_rows,
        features: matrix_cols(&planned) as u64,
        peer_features: out.peer_features as u64,
        epochs_run: t.epochs_run,
        weights_epoch: t.weights_epoch,
        stopped_early: t.stopped_early,
        sigmoid: file.sigmoid.clone(),
        holdout_loss: t.holdout_loss.clone(),
        auc: t.auc,
        ks: t.ks,
        model: PathBuf::from(&job.model_out),
        stages: stages.into_vec(),
        ecdh_evidence: aligned.ecdh_evidence,
    })
}

/// Whether B announces its indicators as one-hot groups (kept correlations). On since the
/// batched kernel (one expansion per (row, feature) per epoch for both products, every level of
/// 128 rows' trees in one cipher call): at 10^5 × (30 + 300) it cuts the bytes per epoch
/// 8.85 → 3.2 GB and the CPU per epoch below fresh OTs' (docs/architecture.md, scorecard cost
/// model). Kept as a switch: off, B's indicators go through fresh IKNP OTs as before.
const KEPT_ONEHOT: bool = true;

/// B's bin indicators as one-hot groups (one per feature with at least two bins; a one-bin
/// feature has no column), so that the LR products run on correlations kept across epochs
/// ([`consort_protocols::mpc::ot_mul::onehot`]); `None` for A's WOE columns, or when a feature has
/// more bins than a group allows.
pub(crate) fn onehot_groups(planned: &[Planned], config: &LrConfig) -> Option<Groups> {
    if !KEPT_ONEHOT {
        return None;
    }
    let mut sizes = Vec::new();
    for p in planned {
        match &p.encoding {
            Encoding::Woe(_) => return None,
            Encoding::Indicators { bins, .. } if *bins > 1 => sizes.push(bins - 1),
            Encoding::Indicators { .. } => {}
        }
    }
    Groups::new(&sizes, config.encode_feature(1.0)).ok()
}

fn matrix_cols(planned: &[Planned]) -> usize {
    planned.iter().map(Planned::columns).sum()
}

/// Each row's bin of every planned feature (row-major, `values` as read with missing kept).
pub(crate) fn bin_rows(planned: &[Planned], values: &[f64], n: usize) -> Vec<u8> {
    let d = planned.len();
    let edges: Vec<consort_protocols::mpc::binning::FeatureBins> =
        planned.iter().map(|p| consort_protocols::mpc::binning::FeatureBins { edges: p.edges.clone() }).collect();
    let mut out = vec![0u8; n * d];
    if d > 0 {
        out.par_chunks_mut(d).zip(values.par_chunks(d)).for_each(|(row, v)| {
            for ((o, e), &x) in row.iter_mut().zip(&edges).zip(v) {
                *o = e.bin(x);
            }
        });
    }
    out
}

/// The column of bin `b` among an indicator feature's k − 1 columns (bins 0..k but the
/// reference, in order); `None` for the reference bin (and a bin past the last): no column set.
fn indicator_column(b: u32, k: u32, reference: u32) -> Option<u32> {
    (b != reference && b < k).then(|| b - u32::from(b > reference))
}

/// The leaves of the one-hot matrix [`encode`] makes of indicator-only features (the groups of
/// [`onehot_groups`]: one per feature with at least two bins): per row and group 0 when the row
/// is in the reference bin, else its bin's column within the group + 1.
pub(crate) fn onehot_leaves(planned: &[Planned], bins: &[u8], n: usize) -> Zeroizing<Vec<u8>> {
    let d = planned.len();
    let groups: Vec<(usize, u32, u32)> = planned
        .iter()
        .enumerate()
        .filter_map(|(j, p)| match p.encoding {
            Encoding::Indicators { bins: k, reference } if k > 1 => Some((j, k, reference)),
            _ => None,
        })
        .collect();
    let g_n = groups.len();
    let mut out = Zeroizing::new(vec![0u8; n * g_n]);
    if g_n > 0 {
        out.par_chunks_mut(g_n).zip(bins.par_chunks(d.max(1))).for_each(|(leaves, bins)| {
            for (leaf, &(j, k, reference)) in leaves.iter_mut().zip(&groups) {
                *leaf = indicator_column(bins[j] as u32, k, reference).map_or(0, |c| c as u8 + 1);
            }
        });
    }
    out
}

/// The model's columns of every row, encoded ([`LrConfig::encode_feature`]).
pub(crate) fn encode(planned: &[Planned], bins: &[u8], n: usize, config: &LrConfig) -> Matrix {
    let (d, cols) = (planned.len(), matrix_cols(planned));
    let (one, zero) = (config.encode_feature(1.0), config.encode_feature(0.0));
    let woe: Vec<Vec<u64>> = planned
        .iter()
        .map(|p| match &p.encoding {
            Encoding::Woe(w) => w.iter().map(|&v| config.encode_feature(v)).collect(),
            Encoding::Indicators { .. } => Vec::new(),
        })
        .collect();
    // Rows in parallel: at 10^5 × 300 binned features this is a 2.4 GB matrix (one pass took
    // ~5 s, while the peer waited in the handshake).
    let mut data = vec![zero; n * cols];
    if cols > 0 {
        data.par_chunks_mut(cols).zip(bins.par_chunks(d.max(1))).for_each(|(row, bins)| {
            let mut at = 0;
            for ((j, p), &b) in planned.iter().enumerate().zip(bins) {
                let b = b as u32;
                match &p.encoding {
                    Encoding::Woe(_) => {
                        row[at] = woe[j][b as usize];
                        at += 1;
                    }
                    Encoding::Indicators { bins: k, reference } => {
                        if let Some(c) = indicator_column(b, *k, *reference) {
                            row[at + c as usize] = one;
                        }
                        at += *k as usize - 1;
                    }
                }
            }
        });
    }
    Matrix::new(data, n, cols, config.feature_bits)
}

/// The decoded value of every column (the plaintext mirror's input), for tests.
#[cfg(test)]
pub(crate) fn decoded(planned: &[Planned], bins: &[u8], n: usize, config: &LrConfig) -> Vec<f64> {
    let d = planned.len();
    let mut out = Vec::new();
    for i in 0..n {
        for (j, p) in planned.iter().enumerate() {
            let b = bins[i * d + j] as u32;
            match &p.encoding {
                Encoding::Woe(w) => out.push(config.decode_feature(config.encode_feature(w[b as usize]))),
                Encoding::Indicators { bins: k, reference } => {
                    out.extend((0..*k).filter(|c| c != reference).map(|c| if c == b { 1.0 } else { 0.0 }))
                }
            }
        }
    }
    out
}

/// The card features with their points from the weights of their columns (module docs).
pub(crate) fn card_features(planned: &[Planned], weights: &[f64], config: &LrConfig, factor: f64) -> Vec<CardFeature> {
    let mut col = 0;
    let points = |logit: f64| (-factor * logit).round() as i64;
    planned
        .iter()
        .map(|p| {
            let (weight, reference, bins) = match &p.encoding {
                Encoding::Woe(w) => {
                    let wt = weights[col];
                    col += 1;
                    let bins = w
                        .iter()
                        .enumerate()
                        .map(|(b, &v)| {
                            let enc = config.decode_feature(config.encode_feature(v));
                            let logit = wt * enc;
                            CardBin {
                                bin: b as u32,
                                range: p.ranges[b].clone(),
                                woe: Some(enc),
                                logit,
                                points: points(logit),
                            }
                        })
                        .collect();
                    (Some(wt), None, bins)
                }
                Encoding::Indicators { bins: k, reference } => {
                    let bins = (0..*k)
                        .map(|b| {
                            let logit = if b == *reference {
                                0.0
                            } else {
                                col += 1;
                                weights[col - 1]
                            };
                            CardBin {
                                bin: b,
                                range: p.ranges[b as usize].clone(),
                                woe: None,
                                logit,
                                points: points(logit),
                            }
                        })
                        .collect();
                    (None, Some(*reference), bins)
                }
            };
            let encoding = match p.encoding {
                Encoding::Woe(_) => "woe",
                Encoding::Indicators { .. } => "indicators",
            };
            CardFeature {
                name: p.name.clone(),
                index: p.index,
                encoding: encoding.into(),
                edges: p.edges.clone(),
                weight,
                reference_bin: reference,
                bins,
            }
        })
        .collect()
}

pub(crate) fn scaling(card: &CardParams) -> Scaling {
    Scaling {
        base_score: card.base_score,
        base_odds: card.base_odds,
        pdo: card.pdo,
        factor: card.factor(),
        offset: card.offset(),
        convention: "points = offset − factor·z, z the log-odds of the event (label 1): higher points = lower risk; \
                     base_score at good:bad odds base_odds; every pdo points double the good:bad odds"
            .into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn card_file(
    job: &TrainJob,
    dataset: &Dataset,
    config: &LrConfig,
    card: &CardParams,
    planned: &[Planned],
    out: &LrOutput,
    party: Party,
    rows: usize,
    holdout_rows: usize,
) -> ScorecardFile {
    let s = scaling(card);
    let base_points = out.intercept.map(|w0| (s.offset - s.factor * w0).round() as i64);
    ScorecardFile {
        format: CARD_FORMAT.into(),
        party: format!("{party:?}"),
        job_id: job.job_id.clone(),
        peer: job.peer.clone(),
        dataset: dataset.spec.name.clone(),
        key_columns: dataset.spec.keys.clone(),
        label: job.columns.label.clone(),
        bins_job: card.bins_job.clone(),
        bins_id: card.bins_id.clone(),
        features: card_features(planned, &out.weights, config, s.factor),
        scaling: s,
        intercept: out.intercept,
        base_points,
        feature_bits: config.feature_bits,
        feature_frac_bits: config.feature_frac_bits,
        sigmoid: config.sigmoid.name().into(),
        peer_features: out.peer_features as u64,
        training: TrainingSummary {
            params: job.params.clone(),
            aligned_rows: rows as u64,
            train_rows: (rows - holdout_rows) as u64,
            holdout_rows: holdout_rows as u64,
            epochs_run: out.epochs_run,
            weights_epoch: out.weights_epoch,
            stopped_early: out.stopped_early,
            holdout_loss: out.holdout_loss.clone(),
            auc: None,
            ks: None,
        },
    }
}
